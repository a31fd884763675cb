//! The bench harness every bench of the suite runs on.
//!
//! A bench is a [`Bench`]: a name, a one-paragraph description, its
//! [`Entry`]s (name, one-line description, setup text, and the function
//! that measures one round of the entry into a [`Recorder`]), the sizes of
//! a quick and a full run, the peers its table shows ratios against, and
//! its [`Target`]s. [`Bench::main`] does the rest:
//!
//! - arguments (`clap`): `--quick`, `--rounds N`, `--json FILE`,
//!   `--svg FILE`, `--only NAME` (repeatable, or a comma list), and a
//!   `--help` that explains every entry, the targets and the sizes;
//! - interleaved rounds: the measured samples are split into rounds run
//!   one after the other over all entries (entry 1, entry 2, ..., entry 1,
//!   entry 2, ...), so that a slow drift of the machine (another tenant,
//!   frequency) weighs on every entry alike instead of on whichever ran at
//!   the time; every round sets its entry up afresh and warms it up again,
//!   and the table shows the spread of the per-round medians;
//! - samples in an HDR histogram per entry (`hdrhistogram`, 3 significant
//!   digits): p50, p99, p99.9, max and min without keeping every sample;
//! - a progress line per entry (`indicatif`) when stdout is a terminal,
//!   plain log lines on stderr otherwise;
//! - the table on stdout, with the ratios against the peers and every
//!   target marked met or NOT met;
//! - JSON (`serde_json`, see [`report`]) and an SVG plot (`plotters`:
//!   latency CDFs on a log axis, or bars for throughput benches), by
//!   default `target/bench/<name>.json` and the same path with `.svg`.
//!
//! A bench binary is a few lines:
//!
//! ```no_run
//! use benches::harness::{Bench, Entry, Plan, Target};
//! let bench = Bench::new("demo", "demo round trips", "What the demo bench measures.")
//!     .plans(
//!         Plan { iters: 2_000, warmup: 200, rounds: 1 },
//!         Plan { iters: 20_000, warmup: 2_000, rounds: 4 },
//!     )
//!     .entry(Entry::new("noop", "an empty loop", "one thread", |round, rec| {
//!         for _ in 0..round.warmup + round.iters {
//!             let t = std::time::Instant::now();
//!             let dt = t.elapsed().as_nanos() as u64;
//!             rec.record(dt);
//!         }
//!         Ok(())
//!     }))
//!     .target(Target::at_most("noop", "noop", 1.0));
//! std::process::exit(match bench.main() { std::process::ExitCode::SUCCESS => 0, _ => 1 });
//! ```

mod plot;
mod progress;
mod recorder;
pub mod report;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{CommandFactory, FromArgMatches, Parser};
use hdrhistogram::Histogram;

pub use plot::{cdf_points, fmt_ns};
pub use recorder::{Recorder, Throughput, MAX_TRACKED_NS, SIGNIFICANT_DIGITS};
pub use report::{Cmp, EntryResult, Metric, Report, Target, TargetResult};

/// The options every bench takes.
#[derive(Clone, Debug, Default, Parser)]
pub struct Args {
    /// A short run: fewer samples per entry and fewer rounds. A smoke
    /// check, too noisy to quote.
    #[arg(long)]
    pub quick: bool,
    /// How many interleaved rounds (1 to 100) the measured samples are split
    /// into; each round sets every entry up afresh and warms it up again.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rounds: Option<u64>,
    /// Where to write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Where to write the plot as SVG [default: the JSON file's path, with
    /// `.svg`].
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Run only these entries, in the bench's order (repeat the option or
    /// give a comma-separated list).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub only: Vec<String>,
}

/// How many samples a run takes per entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Measured samples per entry, over all rounds (rounded up to a
    /// multiple of the rounds).
    pub iters: u64,
    /// Warm-up iterations per entry, split among the rounds.
    pub warmup: u64,
    /// Rounds when `--rounds` is not given.
    pub rounds: u64,
}

/// One round of one entry, as its measuring function receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// Which round (0-based).
    pub index: u64,
    /// Samples to record in this round.
    pub iters: u64,
    /// Iterations to run first without recording.
    pub warmup: u64,
}

/// What a bench measures, which decides its main metric and its plot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Latency: ratios and targets on p50; the plot is every entry's
    /// latency CDF on a log axis.
    Latency,
    /// Throughput: ratios and targets on this metric; the plot has one bar
    /// per entry.
    Throughput(Metric),
}

impl Kind {
    fn main_metric(self) -> Metric {
        match self {
            Kind::Latency => Metric::P50,
            Kind::Throughput(m) => m,
        }
    }
}

type RunFn = Box<dyn Fn(Round, &mut Recorder) -> Result<(), String>>;

/// One entry of a bench.
pub struct Entry {
    /// Its name, as in `--only`, the table and the JSON.
    pub name: String,
    /// One line on what it measures (shown by `--help`).
    pub about: String,
    /// How its ends run: threads or processes, cores, modes (shown by
    /// `--help`, the table and the JSON).
    pub setup: String,
    /// Message size in bytes, for entries that move messages.
    pub msg_bytes: Option<usize>,
    /// Entries that compare against each other (one workload through
    /// several paths) share a group: neighbours in the bench with the same
    /// group take turns going first, one round after another
    /// ([`Entry::group`]).
    pub group: Option<String>,
    run: RunFn,
}

impl Entry {
    /// An entry; `run` measures one round into the recorder and returns an
    /// error message when the entry cannot run.
    pub fn new(
        name: &str,
        about: &str,
        setup: &str,
        run: impl Fn(Round, &mut Recorder) -> Result<(), String> + 'static,
    ) -> Self {
        Entry {
            name: name.into(),
            about: about.into(),
            setup: setup.into(),
            msg_bytes: None,
            group: None,
            run: Box::new(run),
        }
    }

    /// Puts the entry in group `key`. Neighbouring entries of one group
    /// run in turn within a round, and each round starts the turn one
    /// entry later, so that over the rounds every entry of the group runs
    /// first, second and so on equally often: what runs just before (the
    /// disk's state after the previous entry, a cache, the machine's
    /// other work ramping up) then weighs on none of them alone.
    pub fn group(mut self, key: &str) -> Self {
        self.group = Some(key.into());
        self
    }

    /// Sets the message size.
    pub fn msg_bytes(mut self, n: usize) -> Self {
        self.msg_bytes = Some(n);
        self
    }
}

/// A bench: its entries, sizes, peers and targets.
pub struct Bench {
    name: String,
    title: String,
    about: String,
    kind: Kind,
    quick: Plan,
    full: Plan,
    min_warmup: u64,
    entries: Vec<Entry>,
    peers: Vec<String>,
    targets: Vec<Target>,
    meta: Vec<(String, String)>,
    notes: Vec<String>,
    report_us: bool,
    bin_name: Option<String>,
}

/// A finished run: the report and what the plot and table need besides.
pub struct Outcome {
    /// The results, as written to JSON.
    pub report: Report,
    hists: Vec<Histogram<u64>>,
    round_rates: Vec<Vec<f64>>,
}

/// Where the output goes when `--json` is not given:
/// `$CARGO_TARGET_DIR/bench/` when that is set, else `target/bench/`.
pub fn default_out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("bench")
}

/// The order in which round `round` runs `entries` (indices into it):
/// the bench's order, except that each run of neighbouring entries of one
/// [`Entry::group`] is rotated by `round`, so its entries take turns going
/// first.
fn round_order(entries: &[&Entry], round: u64) -> Vec<usize> {
    let mut order = Vec::with_capacity(entries.len());
    let mut start = 0;
    while start < entries.len() {
        let group = &entries[start].group;
        let len = match group {
            Some(g) => entries[start..]
                .iter()
                .take_while(|e| e.group.as_ref() == Some(g))
                .count(),
            None => 1,
        };
        let shift = (round % len as u64) as usize;
        order.extend((0..len).map(|i| start + (i + shift) % len));
        start += len;
    }
    order
}

impl Bench {
    /// A latency bench named `name` (file names, `cargo xtask <name>`);
    /// `title` heads its output and plot; `about` is its `--help` text.
    pub fn new(name: &str, title: &str, about: &str) -> Self {
        Bench {
            name: name.into(),
            title: title.into(),
            about: about.into(),
            kind: Kind::Latency,
            quick: Plan {
                iters: 2_000,
                warmup: 200,
                rounds: 1,
            },
            full: Plan {
                iters: 20_000,
                warmup: 2_000,
                rounds: 4,
            },
            min_warmup: 0,
            entries: Vec::new(),
            peers: Vec::new(),
            targets: Vec::new(),
            meta: Vec::new(),
            notes: Vec::new(),
            report_us: false,
            bin_name: None,
        }
    }

    /// Latency or throughput (default: latency).
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// The sizes of a `--quick` run and of a full one.
    pub fn plans(mut self, quick: Plan, full: Plan) -> Self {
        self.quick = quick;
        self.full = full;
        self
    }

    /// The fewest warm-up iterations of one round, however many rounds.
    pub fn min_warmup(mut self, n: u64) -> Self {
        self.min_warmup = n;
        self
    }

    /// Adds an entry.
    pub fn entry(mut self, e: Entry) -> Self {
        self.entries.push(e);
        self
    }

    /// Adds entries.
    pub fn entries(mut self, e: impl IntoIterator<Item = Entry>) -> Self {
        self.entries.extend(e);
        self
    }

    /// An entry the table shows every entry's ratio against (one column
    /// per peer).
    pub fn peer(mut self, name: &str) -> Self {
        self.peers.push(name.into());
        self
    }

    /// Adds a target.
    pub fn target(mut self, t: Target) -> Self {
        self.targets.push(t);
        self
    }

    /// A key and value for the JSON's `meta` (the harness adds `cpus`,
    /// `iters`, `rounds` and `warmup`).
    pub fn meta(mut self, key: &str, value: impl Into<String>) -> Self {
        self.meta.push((key.into(), value.into()));
        self
    }

    /// A line printed after the run's first line (how the ends are
    /// pinned, warnings about the machine).
    pub fn note(mut self, line: impl Into<String>) -> Self {
        self.notes.push(line.into());
        self
    }

    /// Also writes `p50_us` and `p99_us` in the JSON.
    pub fn report_us(mut self, on: bool) -> Self {
        self.report_us = on;
        self
    }

    /// The command name `--help` shows (default `cargo xtask <name>`).
    pub fn bin_name(mut self, name: &str) -> Self {
        self.bin_name = Some(name.into());
        self
    }

    /// The entries' names, in order.
    pub fn entry_names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The text `--help` ends with: every entry, the targets, the sizes.
    pub fn entries_help(&self) -> String {
        let w = self.entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
        let mut s = String::from("Entries (all run unless --only picks some):\n");
        for e in &self.entries {
            s.push_str(&format!("  {:<w$}  {}\n", e.name, e.about));
            let bytes = e
                .msg_bytes
                .map(|b| format!("; {b}-byte messages"))
                .unwrap_or_default();
            s.push_str(&format!("  {:<w$}  setup: {}{bytes}\n", "", e.setup));
        }
        if !self.peers.is_empty() {
            s.push_str(&format!(
                "\nThe table gives every entry's {} as a ratio of: {}.\n",
                self.kind.main_metric().name(),
                self.peers.join(", ")
            ));
        }
        if !self.targets.is_empty() {
            s.push_str("\nTargets (ratios in the same run; printed as met or NOT met):\n");
            for t in &self.targets {
                s.push_str(&format!("  {}\n", t.describe(self.kind.main_metric())));
            }
        }
        let plan = |p: &Plan| {
            format!(
                "{} samples per entry in {} round(s), {} warm-up iterations split among them",
                p.iters, p.rounds, p.warmup
            )
        };
        s.push_str(&format!(
            "\nSizes: --quick: {}; default: {}.\n",
            plan(&self.quick),
            plan(&self.full)
        ));
        s.push_str(&format!(
            "Output: the table on stdout; JSON at --json (default {}); SVG plot at --svg (default: beside the JSON).\n",
            default_out_dir().join(format!("{}.json", self.name)).display()
        ));
        s
    }

    fn command(&self) -> clap::Command {
        Args::command()
            .name(self.name.clone())
            .bin_name(
                self.bin_name
                    .clone()
                    .unwrap_or_else(|| format!("cargo xtask {}", self.name)),
            )
            .about(self.about.clone())
            .after_help(self.entries_help())
            .mut_arg("json", |a| {
                a.help(format!(
                    "Where to write the results as JSON [default: {}]",
                    default_out_dir()
                        .join(format!("{}.json", self.name))
                        .display()
                ))
            })
    }

    /// Parses the bench's arguments (`argv[0]` is the program).
    pub fn parse_from<I, T>(&self, argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let m = self.command().try_get_matches_from(argv)?;
        Args::from_arg_matches(&m)
    }

    /// Runs the bench with the process's arguments: parses them, measures,
    /// prints the table, writes the JSON and the plot.
    pub fn main(self) -> ExitCode {
        self.main_from(std::env::args_os())
    }

    /// [`Bench::main`] with the given arguments.
    pub fn main_from<I, T>(self, argv: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args = match self.parse_from(argv) {
            Ok(a) => a,
            Err(e) => {
                // --help lands here too, with a success code.
                let _ = e.print();
                return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
            }
        };
        match self.run_and_write(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}: {e}", self.name);
                ExitCode::FAILURE
            }
        }
    }

    /// Measures, prints the table and writes the JSON and the plot.
    /// Returns the report.
    pub fn run_and_write(&self, args: &Args) -> Result<Report, String> {
        let out = self.run(args)?;
        println!();
        print!(
            "{}",
            out.report
                .table(&self.peers, self.kind.main_metric(), &out.round_rates)
        );
        let json = args
            .json
            .clone()
            .unwrap_or_else(|| default_out_dir().join(format!("{}.json", self.name)));
        let svg = args
            .svg
            .clone()
            .unwrap_or_else(|| json.with_extension("svg"));
        write_file(&json, &out.report.to_json()?)?;
        println!("\nJSON written to {}", json.display());
        make_parent(&svg)?;
        self.plot(&svg, &out)?;
        println!("SVG plot written to {}", svg.display());
        Ok(out.report)
    }

    /// Draws the run's plot to `path`.
    pub fn plot(&self, path: &Path, out: &Outcome) -> Result<(), String> {
        match self.kind {
            Kind::Latency => {
                let series: Vec<(&EntryResult, &Histogram<u64>)> =
                    out.report.results.iter().zip(&out.hists).collect();
                plot::latency_cdf(path, &self.title, &series)
            }
            Kind::Throughput(m) => plot::bars(path, &self.title, m, &out.report.results),
        }
    }

    /// Measures the chosen entries, round after round; prints progress
    /// but not the table.
    pub fn run(&self, args: &Args) -> Result<Outcome, String> {
        for o in &args.only {
            if !self.entries.iter().any(|e| &e.name == o) {
                return Err(format!(
                    "no entry is named `{o}`; entries: {}",
                    self.entry_names().join(", ")
                ));
            }
        }
        let chosen: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| args.only.is_empty() || args.only.contains(&e.name))
            .collect();
        if chosen.is_empty() {
            return Err("the bench has no entries".into());
        }
        let plan = if args.quick { self.quick } else { self.full };
        let rounds = args.rounds.unwrap_or(plan.rounds).max(1);
        let per_round = plan.iters.div_ceil(rounds);
        let iters = per_round * rounds;
        let warmup = (plan.warmup / rounds).max(self.min_warmup);
        let mut first = format!(
            "{}: {iters} measured per entry in {rounds} round(s), each after {warmup} warm-up",
            self.title
        );
        if let Some((n, rest)) = self.notes.split_first() {
            first.push_str(&format!("; {n}"));
            println!("{first}");
            for r in rest {
                println!("{r}");
            }
        } else {
            println!("{first}");
        }

        let n = chosen.len();
        let progress =
            progress::Progress::new(chosen.iter().map(|e| e.name.clone()).collect(), rounds);
        let mut hists: Vec<Histogram<u64>> = (0..n).map(|_| recorder::new_histogram()).collect();
        let mut round_p50: Vec<Vec<u64>> = vec![Vec::new(); n];
        let mut rates: Vec<Vec<Throughput>> = vec![Vec::new(); n];
        let mut misses: Vec<Option<(u64, u64)>> = vec![None; n];
        for round in 0..rounds {
            progress.round(round);
            for k in round_order(&chosen, round) {
                let e = chosen[k];
                progress.start(k);
                let mut rec = Recorder::new();
                let t = Instant::now();
                let r = Round {
                    index: round,
                    iters: per_round,
                    warmup,
                };
                if let Err(err) = (e.run)(r, &mut rec) {
                    progress.failed(k, &err);
                    return Err(format!("entry `{}` failed: {err}", e.name));
                }
                let secs = t.elapsed().as_secs_f64();
                let p50 = rec.quantile(0.5);
                hists[k]
                    .add(rec.histogram())
                    .map_err(|x| format!("entry `{}`: adding up rounds: {x:?}", e.name))?;
                round_p50[k].push(p50);
                if let Some(t) = rec.rates() {
                    rates[k].push(t);
                }
                let (m, of) = rec.miss_counts();
                if of > 0 || m > 0 {
                    let acc = misses[k].get_or_insert((0, 0));
                    acc.0 = acc.0.saturating_add(m);
                    acc.1 = acc.1.saturating_add(of);
                }
                let what = match (rec.count(), self.kind) {
                    (0, Kind::Throughput(m)) => rec
                        .rates()
                        .and_then(|t| throughput_of(&t, m))
                        .map(|v| format!("{} {v:.1}", m.name()))
                        .unwrap_or_else(|| "done".into()),
                    _ => format!("p50 {p50:>7} ns"),
                };
                progress.done(k, &what, secs);
            }
        }
        progress.finish();

        let main = self.kind.main_metric();
        let mut results = Vec::with_capacity(n);
        let mut round_rates = Vec::with_capacity(n);
        for (k, e) in chosen.iter().enumerate() {
            let h = &hists[k];
            let q = |x: f64| {
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(x)
                }
            };
            let med = |f: fn(&Throughput) -> Option<f64>| {
                report::median(rates[k].iter().filter_map(f).collect())
            };
            let (p50, p99) = (q(0.5), q(0.99));
            results.push(EntryResult {
                name: e.name.clone(),
                p50_ns: p50,
                p99_ns: p99,
                p999_ns: q(0.999),
                max_ns: if h.is_empty() { 0 } else { h.max() },
                min_ns: if h.is_empty() { 0 } else { h.min() },
                iters: h.len(),
                msg_bytes: e.msg_bytes.map(|b| b as u64),
                setup: e.setup.clone(),
                round_p50_ns: round_p50[k].clone(),
                iops: med(|t| t.iops),
                mb_s: med(|t| t.mb_s),
                gbit_s: med(|t| t.gbit_s),
                misses: misses[k].map(|m| m.0),
                miss_ratio: misses[k].and_then(|(m, of)| (of > 0).then(|| m as f64 / of as f64)),
                p50_us: self.report_us.then(|| p50 as f64 / 1e3),
                p99_us: self.report_us.then(|| p99 as f64 / 1e3),
            });
            round_rates.push(
                rates[k]
                    .iter()
                    .filter_map(|t| throughput_of(t, main))
                    .collect(),
            );
        }
        let mut meta: BTreeMap<String, String> = BTreeMap::new();
        meta.insert("cpus".into(), crate::pin::cpus().to_string());
        meta.insert("iters".into(), iters.to_string());
        meta.insert("rounds".into(), rounds.to_string());
        meta.insert("warmup".into(), warmup.to_string());
        for (k, v) in &self.meta {
            meta.insert(k.clone(), v.clone());
        }
        let mut report = Report {
            results,
            meta,
            targets: Vec::new(),
        };
        report.targets = report.evaluate(&self.targets, main);
        Ok(Outcome {
            report,
            hists,
            round_rates,
        })
    }
}

fn throughput_of(t: &Throughput, m: Metric) -> Option<f64> {
    match m {
        Metric::Iops => t.iops,
        Metric::MbS => t.mb_s,
        Metric::GbitS => t.gbit_s,
        Metric::P50 | Metric::P99 | Metric::P999 => None,
    }
}

fn make_parent(path: &Path) -> Result<(), String> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => std::fs::create_dir_all(p)
            .map_err(|e| format!("cannot create the directory {}: {e}", p.display())),
        _ => Ok(()),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    make_parent(path)?;
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, group: Option<&str>) -> Entry {
        let e = Entry::new(name, "", "", |_, _| Ok(()));
        match group {
            Some(g) => e.group(g),
            None => e,
        }
    }

    #[test]
    fn a_group_takes_turns_going_first_and_others_keep_their_place() {
        let owned = [
            entry("solo", None),
            entry("a1", Some("a")),
            entry("a2", Some("a")),
            entry("a3", Some("a")),
            entry("b1", Some("b")),
            entry("b2", Some("b")),
            entry("tail", None),
        ];
        let entries: Vec<&Entry> = owned.iter().collect();
        let names = |round| -> Vec<&str> {
            round_order(&entries, round)
                .into_iter()
                .map(|k| entries[k].name.as_str())
                .collect()
        };
        assert_eq!(names(0), ["solo", "a1", "a2", "a3", "b1", "b2", "tail"]);
        assert_eq!(names(1), ["solo", "a2", "a3", "a1", "b2", "b1", "tail"]);
        assert_eq!(names(2), ["solo", "a3", "a1", "a2", "b1", "b2", "tail"]);
        // Over as many rounds as the group has entries, each of its entries
        // runs first once, and every round runs every entry once.
        let mut firsts: Vec<&str> = (0..3).map(|r| names(r)[1]).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, ["a1", "a2", "a3"]);
        for r in 0..6 {
            let mut o = round_order(&entries, r);
            o.sort_unstable();
            assert_eq!(o, (0..entries.len()).collect::<Vec<_>>());
        }
    }
}
