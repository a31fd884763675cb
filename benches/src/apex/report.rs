//! The bench's results: JSON (the harness's entry form plus a few fields),
//! the targets marked met or NOT met, the tables, and the plot of
//! W1's miss ratio against the offered real-time load.
//!
//! The JSON is the harness's (`benches::harness::Report` reads it) with
//! these additions: per entry `load_pct`, `idle_wait_us`,
//! `underused_wait_us`, `refused_queues`, `ns_per_req` and `note` where
//! they apply; at the top, `checks` (every target, met or not or not
//! measured, with the reason), `not_measured` (entries that could not run
//! and why) and `notes`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::fio::KernelSched;
use super::sim::{LOADS_FULL, W3_RESERVATIONS};
use super::SIM_POLICIES;
use crate::harness::{Cmp, EntryResult, Metric, Report, TargetResult};

/// The fields an entry has beyond the harness's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Extra {
    /// W1's offered real-time load, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_pct: Option<u64>,
    /// Simulation, `total` entries: device idle while requests waited, µs
    /// (an accidental idle: not counting `held_wait_us`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_wait_us: Option<f64>,
    /// Simulation, `total` entries: device idle while the scheduler held
    /// requests back on purpose and had said until when (APEX's isolation
    /// mode), µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_wait_us: Option<f64>,
    /// Simulation, `total` entries: device below its concurrency while
    /// requests waited, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underused_wait_us: Option<f64>,
    /// Simulation, `total` entries: queues refused by admission control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_queues: Option<usize>,
    /// W4: median over the repetitions of the scheduler time per request
    /// on the monotonic clock, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_per_req: Option<f64>,
    /// W4: first quartile of the same, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_per_req_p25: Option<f64>,
    /// W4: third quartile of the same, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_per_req_p75: Option<f64>,
    /// W4: median scheduler time per request on the thread's CPU-time
    /// clock, ns (what the scheduler costs when other processes take the
    /// core part of the time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ns_per_req: Option<f64>,
    /// W4: first quartile of the CPU time per request, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ns_per_req_p25: Option<f64>,
    /// W4: third quartile of the CPU time per request, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ns_per_req_p75: Option<f64>,
    /// W4: repetitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reps: Option<usize>,
    /// What the reader should know about this entry's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One entry: the harness's result and the extra fields, side by side in
/// one JSON object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApexEntry {
    /// The harness's fields.
    #[serde(flatten)]
    pub result: EntryResult,
    /// This bench's.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ApexEntry {
    /// Joins the two; `p50_us`/`p99_us` are dropped for entries without
    /// latency samples (`total`).
    pub fn new(mut result: EntryResult, extra: Extra) -> Self {
        if result.iters == 0 {
            result.p50_us = None;
            result.p99_us = None;
        }
        ApexEntry { result, extra }
    }
}

/// A target of the issue in this run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `W1` to `W4`.
    pub workload: String,
    /// What is compared.
    pub what: String,
    /// The measured value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The target, e.g. `<= 2`.
    pub target: String,
    /// Met, not met, or absent when not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    /// Why it was not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// One comparison of the real path judged on interleaved rounds: the two
/// sides run back to back in every round, taking turns going first, and
/// the target is judged on the median of the round-by-round ratios (as
/// the block bench does on a shared disk).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRatios {
    /// `W1` or `W2`.
    pub workload: String,
    /// What is compared, `a / b (metric)`.
    pub what: String,
    /// How the ratio is judged.
    pub cmp: Cmp,
    /// Against what.
    pub limit: f64,
    /// The ratio must be strictly below (or above) the limit ("lower
    /// than every Linux scheduler's").
    #[serde(default)]
    pub strict: bool,
    /// One ratio per round, in order.
    pub ratios: Vec<f64>,
    /// Per round, which side went first.
    pub first: Vec<String>,
    /// Rounds that gave no ratio, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

impl RoundRatios {
    /// The median of the ratios (the mean of the two middle ones for an
    /// even count); `None` without any.
    pub fn median(&self) -> Option<f64> {
        let mut v: Vec<f64> = self
            .ratios
            .iter()
            .copied()
            .filter(|r| r.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    /// The smallest and largest ratio.
    pub fn range(&self) -> Option<(f64, f64)> {
        let v = self.ratios.iter().copied().filter(|r| r.is_finite());
        let lo = v.clone().min_by(f64::total_cmp)?;
        let hi = v.max_by(f64::total_cmp)?;
        Some((lo, hi))
    }

    /// Whether the median meets the target.
    pub fn met(&self) -> Option<bool> {
        self.median().map(|m| match (self.cmp, self.strict) {
            (Cmp::AtMost, false) => m <= self.limit,
            (Cmp::AtMost, true) => m < self.limit,
            (Cmp::AtLeast, false) => m >= self.limit,
            (Cmp::AtLeast, true) => m > self.limit,
        })
    }

    /// The target as text, `< 1` or `>= 0.95`.
    pub fn target(&self) -> String {
        let op = match (self.cmp, self.strict) {
            (Cmp::AtMost, true) => "<",
            (Cmp::AtLeast, true) => ">",
            (c, false) => c.symbol(),
        };
        format!("{op} {}", self.limit)
    }

    /// As a target check.
    pub fn check(&self) -> Check {
        let n = self.ratios.len();
        Check {
            workload: self.workload.clone(),
            what: format!("{}, median of {n} interleaved rounds", self.what),
            value: self.median(),
            target: self.target(),
            met: self.met(),
            why: self.median().is_none().then(|| {
                if self.failed.is_empty() {
                    "no round gave a ratio".to_string()
                } else {
                    self.failed.join("; ")
                }
            }),
        }
    }
}

/// An entry (or a family, `apex-real-*`) the run could not measure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotMeasured {
    /// The entry's name, or a pattern.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// The whole run, as written to the JSON file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApexReport {
    /// One per measured entry, in the bench's order.
    pub results: Vec<ApexEntry>,
    /// How the run was made.
    pub meta: BTreeMap<String, String>,
    /// The ratio targets, in the harness's form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetResult>,
    /// Every target of the issue.
    pub checks: Vec<Check>,
    /// What could not be measured.
    pub not_measured: Vec<NotMeasured>,
    /// Notes on the run (device capacity, fio falling behind, ...).
    pub notes: Vec<String>,
    /// The real path's comparisons judged on interleaved rounds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<RoundRatios>,
}

impl ApexReport {
    /// The named entry.
    pub fn get(&self, name: &str) -> Option<&ApexEntry> {
        self.results.iter().find(|e| e.result.name == name)
    }

    /// The harness's view of the same results.
    pub fn harness_report(&self) -> Report {
        Report {
            results: self.results.iter().map(|e| e.result.clone()).collect(),
            meta: self.meta.clone(),
            targets: self.targets.clone(),
        }
    }

    fn why_missing(&self, name: &str) -> String {
        if let Some(n) = self.not_measured.iter().find(|n| n.name == name) {
            return n.reason.clone();
        }
        for p in ["apex-real", "fifo-real"] {
            if name.starts_with(p) {
                return format!("{p} was not measured in this run");
            }
        }
        format!("{name} is not in this run")
    }

    fn metric(&self, name: &str, m: Metric) -> Result<f64, String> {
        let e = self.get(name).ok_or_else(|| self.why_missing(name))?;
        m.of(&e.result)
            .ok_or_else(|| format!("{name} has no {}", m.name()))
    }
}

fn ratio_check(
    rep: &ApexReport,
    workload: &str,
    a: &str,
    b: &str,
    metric: Metric,
    cmp: Cmp,
    limit: f64,
) -> (Check, TargetResult) {
    let got = rep
        .metric(a, metric)
        .and_then(|x| rep.metric(b, metric).map(|y| (x, y)))
        .and_then(|(x, y)| {
            if y > 0.0 {
                Ok(x / y)
            } else {
                Err(format!("{b}'s {} is 0", metric.name()))
            }
        });
    let met = got.as_ref().ok().map(|&r| match cmp {
        Cmp::AtMost => r <= limit,
        Cmp::AtLeast => r >= limit,
    });
    (
        Check {
            workload: workload.into(),
            what: format!("{a} / {b} ({})", metric.name()),
            value: got.as_ref().ok().copied(),
            target: format!("{} {limit}", cmp.symbol()),
            met,
            why: got.err(),
        },
        TargetResult {
            a: a.into(),
            b: b.into(),
            metric,
            cmp,
            limit,
            ratio: None,
            met,
        },
    )
}

/// Total misses of `names`' entries, or why one is missing.
fn misses_of(rep: &ApexReport, names: &[String]) -> Result<f64, String> {
    let mut total = 0u64;
    for n in names {
        let e = rep.get(n).ok_or_else(|| rep.why_missing(n))?;
        total += e
            .result
            .misses
            .ok_or_else(|| format!("{n} counted no deadlines"))?;
    }
    Ok(total as f64)
}

fn zero_check(workload: &str, what: String, got: Result<f64, String>) -> Check {
    Check {
        workload: workload.into(),
        what,
        value: got.as_ref().ok().copied(),
        target: "= 0".into(),
        met: got.as_ref().ok().map(|&v| v == 0.0),
        why: got.err(),
    }
}

fn push_ratio(checks: &mut Vec<Check>, targets: &mut Vec<TargetResult>, c: (Check, TargetResult)) {
    let mut t = c.1;
    t.ratio = c.0.value;
    t.met = c.0.met;
    checks.push(c.0);
    targets.push(t);
}

/// Evaluates the targets into `rep.checks` (and the ratio ones
/// into `rep.targets`, the harness's form).
pub fn evaluate(rep: &mut ApexReport, loads: &[u64]) {
    let mut checks = Vec::new();
    let mut targets = Vec::new();
    let loads_text = format!(
        "{{{}}}",
        loads
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut zeros = Vec::new();
    for (policy, harness) in [("apex", "sim"), ("apex-real", "loop device")] {
        let names: Vec<String> = loads
            .iter()
            .filter(|&&l| l <= 90)
            .map(|l| format!("{policy}-w1-{l}-rt"))
            .collect();
        zeros.push(zero_check(
            "W1",
            format!("{policy}-w1-{loads_text}-rt deadline misses ({harness})"),
            misses_of(rep, &names),
        ));
    }
    let w1_sim = zeros.remove(0);
    let w1_real = zeros.remove(0);
    checks.push(w1_sim);
    push_ratio(
        &mut checks,
        &mut targets,
        ratio_check(
            rep,
            "W1",
            "apex-w1-total",
            "fifo-w1-total",
            Metric::MbS,
            Cmp::AtLeast,
            0.95,
        ),
    );
    checks.push(w1_real);
    push_ratio(
        &mut checks,
        &mut targets,
        ratio_check(
            rep,
            "W1",
            "apex-real-w1-total",
            "fifo-real-w1-total",
            Metric::MbS,
            Cmp::AtLeast,
            0.95,
        ),
    );
    for p in ["apex", "apex-real"] {
        push_ratio(
            &mut checks,
            &mut targets,
            ratio_check(
                rep,
                "W2",
                &format!("{p}-w2-lc"),
                &format!("{p}-w2-alone-lc"),
                Metric::P99,
                Cmp::AtMost,
                2.0,
            ),
        );
    }
    for k in KernelSched::ALL {
        // "Lower than": a strict comparison, so the limit is just below 1.
        let (mut c, t) = ratio_check(
            rep,
            "W2",
            "apex-real-w2-lc",
            &format!("{}-w2-lc", k.entry_name()),
            Metric::P99,
            Cmp::AtMost,
            1.0,
        );
        c.target = "< 1".into();
        c.met = c.value.map(|v| v < 1.0);
        push_ratio(&mut checks, &mut targets, (c, t));
    }
    let idle: Result<f64, String> = W3_RESERVATIONS.iter().try_fold(0.0, |acc, r| {
        let n = format!("apex-w3-r{r}-total");
        let e = rep.get(&n).ok_or_else(|| rep.why_missing(&n))?;
        e.extra
            .idle_wait_us
            .map(|v| acc + v)
            .ok_or_else(|| format!("{n} has no idle time"))
    });
    checks.push(Check {
        what: "apex-w3-r{50,5,20}-total device idle while requests waited, us (sim)".into(),
        ..zero_check("W3", String::new(), idle)
    });
    let w4 = rep
        .metric("apex-w4-overhead", Metric::P50)
        .map_err(|e| e.to_string());
    checks.push(Check {
        workload: "W4".into(),
        what: "apex-w4-overhead, ns of scheduler time per request on the monotonic clock (median of the repetitions)"
            .into(),
        value: w4.as_ref().ok().copied(),
        target: "<= 1000".into(),
        met: w4.as_ref().ok().map(|&v| v <= 1000.0),
        why: w4.err(),
    });
    let cpu = rep
        .get("apex-w4-overhead")
        .ok_or_else(|| rep.why_missing("apex-w4-overhead"))
        .and_then(|e| {
            e.extra
                .cpu_ns_per_req
                .ok_or_else(|| "no CPU time measured".to_string())
        });
    checks.push(Check {
        workload: "W4".into(),
        what:
            "apex-w4-overhead, ns of the thread's CPU time per request (median of the repetitions)"
                .into(),
        value: cpu.as_ref().ok().copied(),
        target: "<= 1000".into(),
        met: cpu.as_ref().ok().map(|&v| v <= 1000.0),
        why: cpu.err(),
    });
    for r in &rep.rounds {
        checks.push(r.check());
    }
    rep.checks = checks;
    rep.targets = targets;
}

/// Columns padded to their widest cell, the first left-aligned.
fn layout(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0usize; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == 0 {
                line.push_str(&format!("{cell:<w$}", w = width[i]));
            } else {
                line.push_str(&format!("  {cell:>w$}", w = width[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The policies with entries in this run, in table order: the simulated
/// ones, then the real path's.
fn policies(rep: &ApexReport) -> (Vec<String>, Vec<String>) {
    let sim: Vec<String> = SIM_POLICIES.iter().map(|p| p.name().to_string()).collect();
    let mut real: Vec<String> = KernelSched::ALL.iter().map(|k| k.entry_name()).collect();
    real.push(KernelSched::None.entry_name());
    real.extend(["apex-real".to_string(), "fifo-real".to_string()]);
    let has = |p: &String| {
        rep.results
            .iter()
            .any(|e| e.result.name.starts_with(&format!("{p}-w")))
    };
    (
        sim.into_iter().filter(has).collect(),
        real.into_iter().filter(has).collect(),
    )
}

/// Every entry, one line each.
pub fn entry_table(rep: &ApexReport) -> String {
    let mut rows = vec![[
        "entry", "p50 us", "p99 us", "done", "misses", "miss %", "MB/s", "",
    ]
    .map(String::from)
    .to_vec()];
    for e in &rep.results {
        let r = &e.result;
        let x = &e.extra;
        let mut more = Vec::new();
        if let Some(ns) = x.ns_per_req {
            more.push(format!("{ns:.0} ns/req"));
            if let Some(c) = x.cpu_ns_per_req {
                more.push(format!("{c:.0} ns/req CPU"));
            }
            if let Some(i) = r.iops {
                more.push(format!("{:.2} M submissions/s", i / 1e6));
            }
        }
        if let Some(i) = x.idle_wait_us {
            more.push(format!("idle {i:.0} us"));
        }
        if let Some(h) = x.held_wait_us.filter(|&h| h > 0.0) {
            more.push(format!("held {h:.0} us"));
        }
        if let Some(u) = x.underused_wait_us {
            more.push(format!("under {u:.0} us"));
        }
        if let Some(q) = x.refused_queues.filter(|&q| q > 0) {
            more.push(format!("{q} queues refused"));
        }
        let lat = r.iters > 0 && x.ns_per_req.is_none();
        rows.push(vec![
            r.name.clone(),
            if lat { f(r.p50_us, 1) } else { "-".into() },
            if lat { f(r.p99_us, 1) } else { "-".into() },
            if r.iters > 0 {
                r.iters.to_string()
            } else {
                "-".into()
            },
            r.misses.map_or("-".into(), |m| m.to_string()),
            f(r.miss_ratio.map(|m| m * 100.0), 2),
            if x.ns_per_req.is_some() {
                "-".into()
            } else {
                f(r.mb_s, 1)
            },
            more.join(", "),
        ]);
    }
    layout(&rows)
}

/// The summary tables, the targets, and what was not measured.
pub fn render(rep: &ApexReport, loads: &[u64]) -> String {
    let mut s = entry_table(rep);
    let (sim, real) = policies(rep);
    let all: Vec<&String> = sim.iter().chain(real.iter()).collect();
    let get = |n: String| rep.get(&n).map(|e| &e.result);

    let _ = writeln!(
        s,
        "\nW1: real-time readers' deadline miss % by offered real-time load (sim: the model device; linux-*: the loop device), and total MB/s at 90 %"
    );
    let mut head = vec!["load".to_string()];
    head.extend(all.iter().map(|p| p.to_string()));
    let mut rows = vec![head];
    for l in loads {
        let mut row = vec![format!("{l} %")];
        for p in &all {
            row.push(f(
                get(format!("{p}-w1-{l}-rt")).and_then(|r| r.miss_ratio.map(|m| m * 100.0)),
                2,
            ));
        }
        rows.push(row);
    }
    let mut row = vec!["MB/s @90".to_string()];
    for p in &all {
        row.push(f(get(format!("{p}-w1-total")).and_then(|r| r.mb_s), 0));
    }
    rows.push(row);
    s.push_str(&layout(&rows));

    let _ = writeln!(
        s,
        "\nW2: latency-critical 4 KiB reads (2000/s, deadline 2 ms) alone and beside the bulk writer"
    );
    let mut rows = vec![[
        "policy",
        "p99 alone us",
        "p99 w/ bulk us",
        "ratio",
        "lc miss %",
        "bulk MB/s",
    ]
    .map(String::from)
    .to_vec()];
    for p in &all {
        let alone = get(format!("{p}-w2-alone-lc"));
        let with = get(format!("{p}-w2-lc"));
        let ratio = match (alone, with) {
            (Some(a), Some(w)) if a.p99_ns > 0 => Some(w.p99_ns as f64 / a.p99_ns as f64),
            _ => None,
        };
        rows.push(vec![
            p.to_string(),
            f(alone.and_then(|r| r.p99_us), 1),
            f(with.and_then(|r| r.p99_us), 1),
            f(ratio, 2),
            f(with.and_then(|r| r.miss_ratio.map(|m| m * 100.0)), 2),
            f(get(format!("{p}-w2-bulk")).and_then(|r| r.mb_s), 0),
        ]);
    }
    s.push_str(&layout(&rows));

    let _ = writeln!(
        s,
        "\nW3: real-time reads at 10 % of capacity beside the bulk writer; sim: reservation 50 %, 5 % (2x too small), 20 % (2x too large); idle/held/under = device idle by accident / idle on purpose, with a wake-up time (APEX's isolation mode) / below its concurrency while requests waited (sim only)"
    );
    let mut rows = vec![[
        "run",
        "rt p99 us",
        "rt miss %",
        "idle us",
        "held us",
        "under us",
        "total MB/s",
    ]
    .map(String::from)
    .to_vec()];
    let mut w3 = Vec::new();
    for p in &sim {
        for r in W3_RESERVATIONS {
            w3.push(format!("{p}-w3-r{r}"));
        }
    }
    for p in &real {
        w3.push(format!("{p}-w3"));
    }
    for run in w3 {
        let t = rep.get(&format!("{run}-total"));
        let rt = get(format!("{run}-rt"));
        if t.is_none() && rt.is_none() {
            continue;
        }
        rows.push(vec![
            run.clone(),
            f(rt.and_then(|r| r.p99_us), 1),
            f(rt.and_then(|r| r.miss_ratio.map(|m| m * 100.0)), 2),
            f(t.and_then(|e| e.extra.idle_wait_us), 0),
            f(t.and_then(|e| e.extra.held_wait_us), 0),
            f(t.and_then(|e| e.extra.underused_wait_us), 0),
            f(t.and_then(|e| e.result.mb_s), 0),
        ]);
    }
    s.push_str(&layout(&rows));

    let _ = writeln!(
        s,
        "\nW4: scheduler time per request (sim::overhead: 32-slot ring, 4 KiB requests in 3 queues), median and quartiles of short repetitions interleaved across the policies, on the monotonic clock and on the thread's CPU-time clock (which leaves out time other processes had the core)"
    );
    let none = rep.get("none-w4-overhead").and_then(|e| e.extra.ns_per_req);
    let none_cpu = rep
        .get("none-w4-overhead")
        .and_then(|e| e.extra.cpu_ns_per_req);
    let mut rows = vec![[
        "policy",
        "p50 ns/req",
        "p25-p75",
        "x none",
        "CPU ns/req",
        "CPU p25-p75",
        "x none",
        "M submissions/s",
        "reps",
    ]
    .map(String::from)
    .to_vec()];
    let range = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{a:.0}-{b:.0}"),
        _ => "-".to_string(),
    };
    for p in std::iter::once("none".to_string()).chain(sim.iter().cloned()) {
        let Some(e) = rep.get(&format!("{p}-w4-overhead")) else {
            continue;
        };
        let x = &e.extra;
        let p50 = x.ns_per_req;
        rows.push(vec![
            p,
            f(p50, 0),
            range(x.ns_per_req_p25, x.ns_per_req_p75),
            f(p50.zip(none).map(|(m, n)| m / n), 2),
            f(x.cpu_ns_per_req, 0),
            range(x.cpu_ns_per_req_p25, x.cpu_ns_per_req_p75),
            f(x.cpu_ns_per_req.zip(none_cpu).map(|(m, n)| m / n), 2),
            f(e.result.iops.map(|i| i / 1e6), 2),
            x.reps.map_or("-".to_string(), |r| r.to_string()),
        ]);
    }
    s.push_str(&layout(&rows));

    if !rep.rounds.is_empty() {
        let _ = writeln!(
            s,
            "\nReal path, interleaved rounds (the two sides back to back in every round, taking turns going first; judged on the median ratio)"
        );
        for r in &rep.rounds {
            let rounds: Vec<String> = r
                .ratios
                .iter()
                .zip(&r.first)
                .map(|(x, f)| format!("{} ({f} first)", fmt_value(*x)))
                .collect();
            let _ = writeln!(s, "  {} {}: {}", r.workload, r.what, rounds.join(", "));
            if let (Some(m), Some((lo, hi))) = (r.median(), r.range()) {
                let _ = writeln!(
                    s,
                    "    median {} (range {} to {}), target {}: {}",
                    fmt_value(m),
                    fmt_value(lo),
                    fmt_value(hi),
                    r.target(),
                    if r.met() == Some(true) {
                        "met"
                    } else {
                        "NOT met"
                    }
                );
            }
            for f in &r.failed {
                let _ = writeln!(s, "    {f}");
            }
        }
    }
    let _ = writeln!(s, "\ntargets (this run):");
    for c in &rep.checks {
        let _ = match (c.value, c.met) {
            (Some(v), Some(met)) => writeln!(
                s,
                "  {} {} = {} (target {}): {}",
                c.workload,
                c.what,
                fmt_value(v),
                c.target,
                if met { "met" } else { "NOT met" }
            ),
            _ => writeln!(
                s,
                "  {} {} (target {}): not measured: {}",
                c.workload,
                c.what,
                c.target,
                c.why.as_deref().unwrap_or("?")
            ),
        };
    }
    if !rep.notes.is_empty() {
        let _ = writeln!(s, "\nnotes:");
        for n in &rep.notes {
            let _ = writeln!(s, "  {n}");
        }
    }
    if !rep.not_measured.is_empty() {
        let _ = writeln!(s, "\nnot measured:");
        let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for n in &rep.not_measured {
            by_reason.entry(&n.reason).or_default().push(&n.name);
        }
        for (why, names) in by_reason {
            let shown = if names.len() > 4 {
                format!("{} entries ({}, ...)", names.len(), names[..3].join(", "))
            } else {
                names.join(", ")
            };
            let _ = writeln!(s, "  {shown}: {why}");
        }
    }
    s
}

fn fmt_value(v: f64) -> String {
    if (v == v.trunc() && v.abs() < 1e15) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes the report as one line of JSON.
pub fn write_json(path: &Path, rep: &ApexReport) -> Result<(), String> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let text = serde_json::to_string(rep)
        .map_err(|e| format!("cannot encode the results as JSON: {e}"))?
        + "\n";
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One line of the plot: the policy, whether it is simulated, and its
/// points (load %, miss ratio).
pub type Curve = (String, bool, Vec<(f64, f64)>);

/// The curves of the plot: per policy, (load %, miss ratio) of W1's
/// real-time class, for the policies with W1 entries.
pub fn miss_curves(rep: &ApexReport) -> Vec<Curve> {
    let (sim, real) = policies(rep);
    let mut out = Vec::new();
    for (p, is_sim) in sim
        .iter()
        .map(|p| (p, true))
        .chain(real.iter().map(|p| (p, false)))
    {
        let pts: Vec<(f64, f64)> = LOADS_FULL
            .iter()
            .filter_map(|l| {
                let e = rep.get(&format!("{p}-w1-{l}-rt"))?;
                Some((*l as f64, e.result.miss_ratio?))
            })
            .collect();
        if !pts.is_empty() {
            out.push((p.clone(), is_sim, pts));
        }
    }
    out
}

const COLOURS: [(u8, u8, u8); 8] = [
    (0x1f, 0x77, 0xb4),
    (0xff, 0x7f, 0x0e),
    (0x2c, 0xa0, 0x2c),
    (0xd6, 0x27, 0x28),
    (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b),
    (0xe3, 0x77, 0xc2),
    (0x7f, 0x7f, 0x7f),
];

/// The SVG plot: W1's deadline miss ratio against the offered real-time
/// load, one line per policy (simulated: circles, each line narrower
/// than the one before so coinciding lines stay visible; on the loop
/// device: triangles).
pub fn plot(path: &Path, rep: &ApexReport) -> Result<(), String> {
    let e = |x: String| format!("cannot draw the plot {}: {x}", path.display());
    let curves = miss_curves(rep);
    if curves.is_empty() {
        return Err(e("no W1 entry was measured".into()));
    }
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|x| e(x.to_string()))?;
    }
    let root = SVGBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "W1: deadline misses of the real-time readers against offered real-time load",
            ("sans-serif", 20),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..100.0, -0.02..1.05)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("offered real-time load, % of capacity")
        .y_desc("miss ratio (deadline = one 20 ms period)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    // Lines that coincide (several policies missing nothing) stay
    // visible: each simulated line is drawn narrower than the one before
    // it, with smaller markers, so coinciding ones show as nested bands.
    let n_sim = curves.iter().filter(|c| c.1).count() as u32;
    for (i, (name, is_sim, pts)) in curves.into_iter().enumerate() {
        let (r, g, b) = COLOURS[i % COLOURS.len()];
        let colour = RGBColor(r, g, b);
        let rank = n_sim.saturating_sub(i as u32 + 1);
        let (width, size) = if is_sim {
            (2 + 2 * rank, 4 + 2 * rank)
        } else {
            (2, 6)
        };
        let label = if is_sim {
            format!("{name} (sim)")
        } else {
            format!("{name} (loop device)")
        };
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(width)))
            .map_err(|x| e(x.to_string()))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(width.min(6)))
            });
        if is_sim {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, size, colour.filled())))
                .map_err(|x| e(x.to_string()))?;
        } else {
            chart
                .draw_series(
                    pts.iter()
                        .map(|&p| TriangleMarker::new(p, size, colour.filled())),
                )
                .map_err(|x| e(x.to_string()))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, p99_ns: u64, misses: Option<u64>, mb_s: Option<f64>) -> ApexEntry {
        ApexEntry::new(
            EntryResult {
                name: name.into(),
                p50_ns: p99_ns / 2,
                p99_ns,
                p999_ns: p99_ns,
                max_ns: p99_ns,
                min_ns: 1,
                iters: if p99_ns > 0 { 10 } else { 0 },
                msg_bytes: None,
                setup: String::new(),
                round_p50_ns: vec![],
                iops: None,
                mb_s,
                gbit_s: None,
                misses,
                miss_ratio: misses.map(|m| m as f64 / 10.0),
                p50_us: Some(p99_ns as f64 / 2000.0),
                p99_us: Some(p99_ns as f64 / 1000.0),
            },
            Extra::default(),
        )
    }

    fn report(results: Vec<ApexEntry>) -> ApexReport {
        ApexReport {
            results,
            meta: BTreeMap::new(),
            targets: vec![],
            checks: vec![],
            not_measured: vec![],
            notes: vec![],
            rounds: Vec::new(),
        }
    }

    #[test]
    fn round_ratios_are_judged_on_their_median() {
        let mut r = RoundRatios {
            workload: "W1".into(),
            what: "a / b (MB/s)".into(),
            cmp: Cmp::AtLeast,
            limit: 0.95,
            strict: false,
            ratios: vec![0.5, 1.2, 0.97],
            first: vec!["a".into(), "b".into(), "a".into()],
            failed: Vec::new(),
        };
        assert_eq!(r.median(), Some(0.97));
        assert_eq!(r.range(), Some((0.5, 1.2)));
        assert_eq!(r.met(), Some(true));
        r.ratios.push(0.6);
        assert_eq!(r.median(), Some((0.6 + 0.97) / 2.0));
        assert_eq!(r.met(), Some(false));
        let c = r.check();
        assert_eq!(c.met, Some(false));
        assert!(
            c.what.contains("median of 4 interleaved rounds"),
            "{}",
            c.what
        );
        r.ratios.clear();
        r.failed.push("round 1: fio failed".into());
        let c = r.check();
        assert_eq!((c.value, c.met), (None, None));
        assert_eq!(c.why.as_deref(), Some("round 1: fio failed"));
        // "Lower than": a median of exactly 1 is not met.
        let w2 = RoundRatios {
            cmp: Cmp::AtMost,
            limit: 1.0,
            strict: true,
            ratios: vec![1.0, 0.5, 2.0],
            ..r
        };
        assert_eq!((w2.median(), w2.met()), (Some(1.0), Some(false)));
        assert_eq!(w2.check().target, "< 1");
    }

    #[test]
    fn targets_are_met_not_met_or_not_measured_with_a_reason() {
        let mut results = vec![
            entry("apex-w1-10-rt", 1000, Some(0), None),
            entry("apex-w1-90-rt", 1000, Some(0), None),
            entry("apex-w1-total", 0, None, Some(960.0)),
            entry("fifo-w1-total", 0, None, Some(1000.0)),
            entry("apex-w2-lc", 3000, Some(0), None),
            entry("apex-w2-alone-lc", 1000, Some(0), None),
            entry("apex-w4-overhead", 800, None, None),
        ];
        for r in W3_RESERVATIONS {
            let mut t = entry(&format!("apex-w3-r{r}-total"), 0, None, Some(1.0));
            t.extra.idle_wait_us = Some(0.0);
            results.push(t);
        }
        let mut rep = report(results);
        evaluate(&mut rep, &[10, 90]);
        let find = |w: &str| rep.checks.iter().find(|c| c.what.starts_with(w)).unwrap();
        let c = find("apex-w1-{10,90}-rt");
        assert_eq!((c.value, c.met), (Some(0.0), Some(true)));
        let c = find("apex-w1-total / fifo-w1-total");
        assert_eq!(c.met, Some(true));
        assert!((c.value.unwrap() - 0.96).abs() < 1e-9);
        let c = find("apex-w2-lc / apex-w2-alone-lc");
        assert_eq!((c.value, c.met), (Some(3.0), Some(false)));
        let c = find("apex-real-w2-lc / linux-bfq-w2-lc");
        assert_eq!(c.met, None);
        assert!(c.why.as_deref().unwrap().contains("not measured"), "{c:?}");
        let c = find("apex-w3-");
        assert_eq!(c.met, Some(true));
        let c = find("apex-w4-overhead");
        assert_eq!((c.value, c.met), (Some(400.0), Some(true)));
        // The harness's form carries the ratio targets.
        let t = rep.targets.iter().find(|t| t.a == "apex-w2-lc").unwrap();
        assert_eq!((t.ratio, t.met), (Some(3.0), Some(false)));
        let text = render(&rep, &[10, 90]);
        assert!(text.contains("(target <= 2): NOT met"), "{text}");
        assert!(text.contains("(target >= 0.95): met"), "{text}");
        assert!(text.contains("not measured: apex-real"), "{text}");
    }

    #[test]
    fn a_miss_fails_w1_and_a_missing_load_is_not_measured() {
        let mut rep = report(vec![
            entry("apex-w1-10-rt", 1000, Some(0), None),
            entry("apex-w1-90-rt", 1000, Some(2), None),
        ]);
        evaluate(&mut rep, &[10, 90]);
        assert_eq!(rep.checks[0].met, Some(false));
        assert_eq!(rep.checks[0].value, Some(2.0));
        let mut rep = report(vec![entry("apex-w1-10-rt", 1000, Some(0), None)]);
        evaluate(&mut rep, &[10, 90]);
        assert_eq!(rep.checks[0].met, None);
        assert!(rep.checks[0]
            .why
            .as_deref()
            .unwrap()
            .contains("apex-w1-90-rt"));
    }

    #[test]
    fn json_round_trips_and_the_harness_reads_it() {
        let mut e = entry("apex-w1-90-total", 0, Some(0), Some(1700.0));
        e.extra.idle_wait_us = Some(0.0);
        e.extra.load_pct = Some(90);
        let rep = report(vec![e]);
        let text = serde_json::to_string(&rep).unwrap();
        assert!(
            text.contains("\"load_pct\":90") && text.contains("\"mb_s\":1700.0"),
            "{text}"
        );
        assert!(!text.contains("p50_us"), "no latency for a total: {text}");
        let back: ApexReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rep);
        let h: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(h.results[0].name, "apex-w1-90-total");
    }

    #[test]
    fn the_plot_has_a_line_per_policy_with_w1_entries() {
        let rep = report(vec![
            entry("apex-w1-10-rt", 1000, Some(0), None),
            entry("apex-w1-90-rt", 1000, Some(0), None),
            entry("fifo-w1-10-rt", 1000, Some(10), None),
            entry("linux-bfq-w1-10-rt", 1000, Some(5), None),
        ]);
        let c = miss_curves(&rep);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].2, vec![(10.0, 0.0), (90.0, 0.0)]);
        assert_eq!(c[2], ("linux-bfq".to_string(), false, vec![(10.0, 0.5)]));
        let dir = std::env::temp_dir().join(format!("apexbench-plot-{}", std::process::id()));
        let p = dir.join("p.svg");
        plot(&p, &rep).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        for n in ["apex (sim)", "fifo (sim)", "linux-bfq (loop device)"] {
            assert!(svg.contains(n), "{n}");
        }
        std::fs::remove_dir_all(&dir).ok();
        assert!(plot(&p, &report(vec![])).is_err());
    }
}
