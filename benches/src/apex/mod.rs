//! The APEX scheduler bench (`cargo xtask apexbench`): our I/O scheduler
//! against the alternatives, in two harnesses with the same workloads.
//!
//! - **Simulated** ([`sim`]): `iosched::sim`'s deterministic device model
//!   in simulated time, W1 to W3 for each policy (`apex`, `fifo`, `prio`,
//!   `deadline`), and W4, the scheduler's own cost per request on the
//!   monotonic clock, against no scheduler (`none`).
//! - **Real** ([`workload::RealPath`]): one 1 GiB file behind a loop device
//!   with direct I/O ([`loopdev`]); Linux's `mq-deadline`, `bfq` and
//!   `kyber` driven by fio with the same workloads ([`fio`]); and blkfront
//!   with APEX or FIFO on its queue through the hosted blkback onto the same
//!   loop device (`apex-real`, `fifo-real`, [`ours`]).
//!
//! Entries are named `POLICY-wN-CLASS`: W1's sweep puts the real-time load
//! in percent before the class (`apex-w1-90-rt`), `POLICY-wN-total` is the
//! whole run's throughput (`POLICY-w1-total`: W1 at 90 %), W2's reads alone
//! are `POLICY-w2-alone-lc`, the simulation's W3 puts the reservation
//! before the class (`apex-w3-r50-rt`), W4 is `POLICY-w4-overhead`.
//!
//! Each entry runs on [`crate::harness`]: a round is one run of its
//! workload (the plan's `iters` are milliseconds measured, its `warmup`
//! milliseconds before them), shared by all the entries of that run.

pub mod fio;
pub mod loopdev;
pub mod ours;
pub mod report;
pub mod sim;
pub mod slice;
pub mod workload;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::Cmp;
use clap::{CommandFactory, FromArgMatches, Parser};
use iosched::PolicyKind;
use report::RoundRatios;

use crate::harness::{self, default_out_dir, Bench, Entry, Kind, Metric, Plan, Recorder, Round};
use report::{ApexEntry, ApexReport, Extra, NotMeasured};
use sim::SimWorkload;
use workload::{Capacity, Measured, RealPath, RealWorkload, Workload};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether Ctrl-C (SIGINT) or SIGTERM arrived: the running fio is killed,
/// the entry fails, and the bench cleans up (the loop device is detached)
/// and exits.
pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Turns SIGINT and SIGTERM into [`interrupted`].
pub fn install_interrupt_handler() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; the function pointer has the signature
        // `signal` expects. fio, started later, gets the default
        // dispositions back at exec.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// The bench's name: `cargo xtask apexbench`, `apexbench.json`.
pub const NAME: &str = "apexbench";

/// The policies of the simulated harness, in table order.
pub const SIM_POLICIES: [PolicyKind; 4] = PolicyKind::ALL;

const ABOUT: &str = "\
The APEX scheduler bench: our application-controlled I/O scheduler (iosched's APEX) against FIFO, \
strict priority and an mq-deadline-like policy in a deterministic simulation, and Linux's own \
schedulers (mq-deadline, bfq, kyber, driven by fio) on a loop device, with the same open-loop \
workloads: W1 deadline streams beside a bulk writer with the real-time load swept from 10 to 90 %, \
W2 isolation of latency-critical reads, W3 work conservation, W4 the scheduler's cost per request.";

/// The bench's own options besides the harness's.
#[derive(Clone, Debug, Parser)]
pub struct ApexArgs {
    /// The harness's options.
    #[command(flatten)]
    pub common: harness::Args,
    /// Skip the real path (the loop device and fio): the simulation and W4
    /// only. Without it, the Linux peers need root, loop devices and fio.
    #[arg(long)]
    pub no_linux: bool,
}

/// The sizes of a quick and a full run: `iters` are milliseconds measured
/// per run, `warmup` milliseconds before them.
pub fn plans() -> (Plan, Plan) {
    (
        Plan {
            iters: 1_800,
            warmup: 200,
            rounds: 1,
        },
        Plan {
            iters: 9_000,
            warmup: 1_000,
            rounds: 1,
        },
    )
}

/// `APEXBENCH_W1_READS` (256 KiB reads per second, positive), when set:
/// W1's 100 % load on the real path instead of the probe's, which moves
/// severalfold between runs on a disk that stalls; for an A/B of two
/// settings at the same load.
fn fixed_w1_reads() -> Option<f64> {
    std::env::var("APEXBENCH_W1_READS")
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// Where the real path's device is: it holds `apexbench.img`, 1 GiB.
pub fn image_path() -> PathBuf {
    default_out_dir().join("apexbench.img")
}

enum RealState {
    NotTried,
    Ready {
        dev: loopdev::LoopDevice,
        cap: Capacity,
        /// The real path's deadlines' factor ([`workload::deadline_scale`]).
        scale: f64,
    },
    Unavailable(String),
}

type Cached = Result<Rc<Measured>, String>;

/// What the entries share: one run feeds every entry named after it.
struct Ctx {
    no_linux: bool,
    quick: bool,
    sim: HashMap<(PolicyKind, SimWorkload, u64), Rc<Measured>>,
    paths: Vec<Box<dyn RealPath>>,
    real: RealState,
    real_runs: HashMap<(usize, Workload, u64), Cached>,
    unmeasured: BTreeMap<String, String>,
    extras: BTreeMap<String, Extra>,
    /// W4, per round: every policy's figures, measured interleaved.
    w4: HashMap<u64, Rc<Vec<sim::Overhead>>>,
    notes: Vec<String>,
    meta: BTreeMap<String, String>,
    scratch: PathBuf,
}

/// Where one entry's figures come from.
#[derive(Clone, Copy, Debug)]
enum Source {
    Sim(PolicyKind, SimWorkload),
    Real(usize, Workload),
}

impl Ctx {
    fn sim(&mut self, kind: PolicyKind, w: SimWorkload, r: Round) -> Rc<Measured> {
        self.sim
            .entry((kind, w, r.index))
            .or_insert_with(|| Rc::new(sim::simulate(kind, w, r.warmup, r.iters, 1 + r.index)))
            .clone()
    }

    /// Attaches the loop device and measures its capacity, once.
    fn prepare_real(&mut self, r: Round) {
        if !matches!(self.real, RealState::NotTried) {
            return;
        }
        let res = (|| -> Result<(loopdev::LoopDevice, Capacity, Floor), String> {
            if self.no_linux {
                return Err("--no-linux".into());
            }
            loopdev::can_attach()?;
            let fio = fio::version()?;
            self.meta.insert("fio".into(), fio);
            let image = image_path();
            loopdev::ensure_image(&image)?;
            let dev = loopdev::LoopDevice::attach(&image)?;
            eprintln!(
                "apexbench: {} attached to {} (direct I/O); it is detached at the end",
                dev.dev().display(),
                image.display()
            );
            dev.choose_scheduler("none", &[])?;
            let ms = if self.quick { 1_000 } else { 3_000 }.max(r.iters / 3);
            let dir = self.scratch.join("calibrate");
            fresh_dir(&dir)?;
            let reads_256k = fio::calibrate(dev.dev(), 256 * 1024, ms, &dir)?;
            let reads_64k = fio::calibrate(dev.dev(), 64 * 1024, ms, &dir)?;
            let cap = Capacity {
                reads_256k,
                reads_64k,
                w1_deadline_reads: 0.0,
            };
            // The device's own floor: W2's reads alone under fio, no
            // kernel scheduler.
            let dir = self.scratch.join("floor");
            fresh_dir(&dir)?;
            let rw = RealWorkload::new(Workload::W2 { bulk: false }, &cap, 200, ms);
            let m = fio::FioPeer::new(fio::KernelSched::None).run(&dev, &rw, &dir)?;
            let lat = m
                .class("lc")
                .map(|c| c.latencies_ns.clone())
                .unwrap_or_default();
            if lat.is_empty() {
                return Err("the floor run (fio, 4 KiB reads alone) completed no read".into());
            }
            let floor = Floor {
                p50_ns: sorted_quantile(&lat, 0.50),
                p99_ns: sorted_quantile(&lat, 0.99),
            };
            // W1's unit of load: what the device serves within W1's
            // deadline, reads alone, open loop.
            let dir = self.scratch.join("w1-capacity");
            fresh_dir(&dir)?;
            let cap_w1;
            let scale = workload::deadline_scale(floor.p50_ns);
            let line = match fixed_w1_reads() {
                Some(w1) => {
                    cap_w1 = w1;
                    format!("W1's 100 % load: {w1:.0} x 256 KiB reads/s, fixed by APEXBENCH_W1_READS (not probed)")
                }
                None => {
                    let (w1, probes) = probe_w1_capacity(&dev, &cap, scale, ms, &dir)?;
                    cap_w1 = w1;
                    format!(
                        "W1's 100 % load: {w1:.0} x 256 KiB reads/s, the highest rate of those tried (fio alone, scheduler none, evenly spaced) with at most 1 % over W1's deadline: {probes}"
                    )
                }
            };
            let w1 = cap_w1;
            eprintln!("apexbench: {line}");
            self.notes.push(line);
            let cap = Capacity {
                w1_deadline_reads: w1,
                ..cap
            };
            Ok((dev, cap, floor))
        })();
        self.real = match res {
            Ok((dev, cap, floor)) => {
                let scale = workload::deadline_scale(floor.p50_ns);
                let d = |w: Workload| {
                    RealWorkload::new(w, &cap, 0, 1)
                        .with_deadline_scale(scale)
                        .deadline_ns() as f64
                        / 1e6
                };
                let line = format!(
                    "device floor: W2's 4 KiB reads alone under fio, scheduler none: p50 {:.2} ms, p99 {:.2} ms; the real path's deadlines are scaled by {scale:.2} (W1 {:.0} ms, W2 {:.1} ms, W3 {:.0} ms; the simulation keeps 20, 2 and 10 ms)",
                    floor.p50_ns as f64 / 1e6,
                    floor.p99_ns as f64 / 1e6,
                    d(Workload::W1 { load_pct: 90 }),
                    d(Workload::W2 { bulk: true }),
                    d(Workload::W3),
                );
                eprintln!("apexbench: {line}");
                self.notes.push(line);
                self.meta.insert(
                    "loop_floor_p99_us".into(),
                    format!("{:.0}", floor.p99_ns as f64 / 1e3),
                );
                self.meta
                    .insert("real_deadline_scale".into(), format!("{scale:.2}"));
                let line = format!(
                    "loop device capacity (scheduler none, random reads at depth 32): {:.0} x 256 KiB/s ({:.0} MB/s), {:.0} x 64 KiB/s",
                    cap.reads_256k,
                    cap.reads_256k * 262_144.0 / 1e6,
                    cap.reads_64k
                );
                eprintln!("apexbench: {line}");
                self.notes.push(line);
                self.meta.insert(
                    "loop_reads_256k_per_s".into(),
                    format!("{:.0}", cap.reads_256k),
                );
                self.meta.insert(
                    "loop_reads_64k_per_s".into(),
                    format!("{:.0}", cap.reads_64k),
                );
                self.meta.insert(
                    "loop_w1_reads_per_s".into(),
                    format!("{:.0}", cap.w1_reads()),
                );
                self.meta
                    .insert("loop_device".into(), dev.dev().display().to_string());
                RealState::Ready { dev, cap, scale }
            }
            Err(e) => {
                let why = if e == "--no-linux" {
                    "skipped (--no-linux)".to_string()
                } else {
                    format!("loop device or fio unavailable: {e}")
                };
                if e != "--no-linux" {
                    eprintln!("apexbench: the Linux peers are not run: {why}");
                }
                RealState::Unavailable(why)
            }
        };
    }

    /// One real run; the outer error stops the bench (interrupted), the
    /// inner one marks the entry not measured.
    fn real(&mut self, path: usize, w: Workload, r: Round) -> Result<Cached, String> {
        if let Some(c) = self.real_runs.get(&(path, w, r.index)) {
            return Ok(c.clone());
        }
        self.prepare_real(r);
        let res = match &self.real {
            RealState::Ready { dev, cap, scale } => {
                let rw = RealWorkload::new(w, cap, r.warmup, r.iters).with_deadline_scale(*scale);
                let name = self.paths[path].name().to_string();
                let dir = self
                    .scratch
                    .join(format!("{name}-{}-r{}", w.prefix(), r.index));
                fresh_dir(&dir)
                    .and_then(|_| self.paths[path].run(dev, &rw, &dir))
                    .map(|m| {
                        // The interleaved rounds' runs say which round.
                        let round = if r.index >= 1_000 {
                            format!("round {}: ", r.index - 999)
                        } else {
                            String::new()
                        };
                        for n in &m.notes {
                            let n = format!("{name}: {round}{n}");
                            if !self.notes.contains(&n) {
                                self.notes.push(n);
                            }
                        }
                        Rc::new(m)
                    })
                    .map_err(|e| format!("{name} {}: {e}", w.prefix()))
            }
            RealState::Unavailable(why) => Err(why.clone()),
            RealState::NotTried => Err("not prepared".into()),
        };
        if interrupted() {
            return Err("interrupted".into());
        }
        if let Err(e) = &res {
            if !matches!(self.real, RealState::Unavailable(_)) {
                eprintln!("apexbench: {e}");
            }
        }
        self.real_runs.insert((path, w, r.index), res.clone());
        Ok(res)
    }

    fn measure(&mut self, src: Source, r: Round) -> Result<Cached, String> {
        if interrupted() {
            return Err("interrupted".into());
        }
        match src {
            Source::Sim(k, w) => Ok(Ok(self.sim(k, w, r))),
            Source::Real(p, w) => self.real(p, w, r),
        }
    }
}

/// The device's latency floor: W2's reads alone, fio, no kernel scheduler.
/// The shares of the depth-32 read rate W1's capacity probe tries, in
/// turn, until one meets W1's deadline.
const W1_PROBE_SHARES: [f64; 8] = [1.0, 0.85, 0.7, 0.55, 0.4, 0.3, 0.2, 0.1];

/// W1's real-time reads alone on `dev` (fio, scheduler none, evenly
/// spaced, deadline scaled by `scale`) at falling shares of the depth-32
/// rate, `ms` measured each: the first rate with at most 1 % of the reads
/// over the deadline and fio on its schedule (else the last tried), and
/// what each probe gave.
fn probe_w1_capacity(
    dev: &loopdev::LoopDevice,
    cap: &Capacity,
    scale: f64,
    ms: u64,
    dir: &std::path::Path,
) -> Result<(f64, String), String> {
    let mut tried = Vec::new();
    let mut rate = cap.reads_256k;
    for share in W1_PROBE_SHARES {
        rate = (cap.reads_256k * share).round().max(1.0);
        let probe = Capacity {
            w1_deadline_reads: rate,
            ..*cap
        };
        let mut rw = RealWorkload::new(Workload::W1 { load_pct: 100 }, &probe, 200, ms)
            .with_deadline_scale(scale);
        rw.streams.retain(|s| s.real_time);
        let sub = dir.join(format!("{rate:.0}"));
        fresh_dir(&sub)?;
        let m = fio::FioPeer::new(fio::KernelSched::None).run(dev, &rw, &sub)?;
        let c = m
            .class("rt")
            .ok_or("the W1 probe measured no real-time class")?;
        let done = c.latencies_ns.len() as f64;
        let on_schedule = c.expected.is_none_or(|e| done >= 0.9 * e);
        let ratio = c.misses as f64 / c.with_deadline.max(1) as f64;
        tried.push(format!(
            "{rate:.0}/s {:.1} % late{}",
            100.0 * ratio,
            if on_schedule {
                ""
            } else {
                " (fio behind schedule)"
            }
        ));
        if on_schedule && ratio <= 0.01 && c.with_deadline > 0 {
            break;
        }
    }
    Ok((rate, tried.join(", ")))
}

struct Floor {
    p50_ns: u64,
    p99_ns: u64,
}

/// The `q` quantile of sorted `v` (nearest rank, at least the first).
fn sorted_quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn fresh_dir(dir: &std::path::Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn record_class(rec: &mut Recorder, m: &Measured, label: &str) -> Result<(), String> {
    let c = m
        .class(label)
        .ok_or_else(|| format!("the run has no class `{label}`"))?;
    rec.record_all(&c.latencies_ns);
    if c.with_deadline > 0 {
        rec.misses(c.misses, c.with_deadline);
    }
    rec.throughput(
        harness::Throughput::default().with_mb_s(c.window_bytes, Duration::from_nanos(m.window_ns)),
    );
    Ok(())
}

fn record_total(rec: &mut Recorder, m: &Measured) {
    let with: u64 = m.classes.iter().map(|c| c.with_deadline).sum();
    let misses: u64 = m.classes.iter().map(|c| c.misses).sum();
    if with > 0 {
        rec.misses(misses, with);
    }
    let bytes: u64 = m.classes.iter().map(|c| c.window_bytes).sum();
    rec.throughput(
        harness::Throughput::default().with_mb_s(bytes, Duration::from_nanos(m.window_ns)),
    );
}

fn total_extra(m: &Measured, load_pct: Option<u64>) -> Extra {
    Extra {
        load_pct,
        idle_wait_us: m.idle_wait_ns.map(|n| n as f64 / 1e3),
        held_wait_us: m.held_wait_ns.map(|n| n as f64 / 1e3),
        underused_wait_us: m.underused_wait_ns.map(|n| n as f64 / 1e3),
        refused_queues: m.refused_queues,
        note: (!m.notes.is_empty()).then(|| m.notes.join("; ")),
        ..Extra::default()
    }
}

/// An entry fed by a shared run: one class (`Some(label)`) or the total.
fn run_entry(
    ctx: &Rc<RefCell<Ctx>>,
    name: String,
    about: String,
    setup: String,
    src: Source,
    label: Option<&'static str>,
    load_pct: Option<u64>,
) -> Entry {
    let ctx = ctx.clone();
    let n = name.clone();
    Entry::new(
        &name,
        &about,
        &setup,
        move |r: Round, rec: &mut Recorder| {
            let got = ctx.borrow_mut().measure(src, r)?;
            let m = match got {
                Ok(m) => m,
                Err(why) => {
                    ctx.borrow_mut().unmeasured.insert(n.clone(), why);
                    return Ok(());
                }
            };
            let extra = match label {
                Some(l) => {
                    record_class(rec, &m, l)?;
                    Extra {
                        load_pct,
                        ..Extra::default()
                    }
                }
                None => {
                    record_total(rec, &m);
                    total_extra(&m, load_pct)
                }
            };
            ctx.borrow_mut().extras.insert(n.clone(), extra);
            Ok(())
        },
    )
}

fn class_about(label: &str, w: &str) -> String {
    let what = match label {
        "rt" if w.starts_with("W1") => {
            "the real-time readers (256 KiB every 20 ms each, deadline one period)"
        }
        "rt" => "the real-time reads (64 KiB at 10 % of capacity, deadline 10 ms)",
        "lc" => "the latency-critical reads (4 KiB, 2000/s, deadline 2 ms)",
        "bulk" | "be" => "the bulk writer (1 MiB sequential, depth 32)",
        _ => "all classes: throughput",
    };
    format!("{w}: {what}")
}

fn workload_about(prefix: &str) -> String {
    if let Some(load) = prefix
        .strip_prefix("w1-")
        .and_then(|l| l.parse::<u64>().ok())
    {
        return format!("W1 at {load} % real-time load");
    }
    match prefix {
        "w2" => "W2 with the bulk job".into(),
        "w2-alone" => "W2, the reads alone".into(),
        "w3" => "W3".into(),
        p => match p.strip_prefix("w3-r") {
            Some(r) => format!("W3, reservation {r} % (used: 10 %)"),
            None => p.into(),
        },
    }
}

/// One run's entries: (name prefix, labels, source, W1 load, setup text).
type Work = (String, &'static [&'static str], Source, Option<u64>, String);

fn group(ctx: &Rc<RefCell<Ctx>>, v: &mut Vec<Entry>, policy: &str, works: Vec<Work>) {
    for (prefix, labels, src, load, setup) in works {
        let about = workload_about(&prefix);
        for &l in labels {
            v.push(run_entry(
                ctx,
                format!("{policy}-{prefix}-{l}"),
                class_about(l, &about),
                setup.clone(),
                src,
                Some(l),
                load,
            ));
        }
        v.push(run_entry(
            ctx,
            format!("{policy}-{prefix}-total"),
            class_about("total", &about),
            setup.clone(),
            src,
            None,
            load,
        ));
        if load == Some(90) {
            v.push(run_entry(
                ctx,
                format!("{policy}-w1-total"),
                "W1's total throughput at 90 % real-time load (the same run as w1-90-total)".into(),
                setup,
                src,
                None,
                load,
            ));
        }
    }
}

/// Every entry of a run (in table order) over the shared context.
fn entries(ctx: &Rc<RefCell<Ctx>>, loads: &[u64]) -> Vec<Entry> {
    let mut v = Vec::new();
    let dev = sim::device_setup();
    for kind in SIM_POLICIES {
        let works = SimWorkload::all(loads)
            .into_iter()
            .map(|w| {
                let load = match w {
                    SimWorkload::W1 { load_pct } => Some(load_pct),
                    _ => None,
                };
                (
                    w.prefix(),
                    w.labels(),
                    Source::Sim(kind, w),
                    load,
                    dev.clone(),
                )
            })
            .collect();
        group(ctx, &mut v, kind.name(), works);
    }
    let w4_about =
        "W4: the scheduler's own cost, ns per request on the monotonic clock, median of \
short repetitions interleaved with the other policies' (sim::overhead: rounds of a 32-slot ring's \
worth of 4 KiB requests in 3 queues submitted, batched and completed, after a warm-up); \
submissions per second at the median as iops";
    let kinds: Vec<Option<PolicyKind>> = [None]
        .into_iter()
        .chain(SIM_POLICIES.iter().copied().map(Some))
        .collect();
    for (ki, &kind) in kinds.iter().enumerate() {
        let name = format!("{}-w4-overhead", kind.map_or("none", |k| k.name()));
        let setup = match kind {
            None => "no scheduler: a FIFO list, requests straight onto the ring".to_string(),
            Some(k) => format!(
                "iosched {} behind the Scheduler trait, one thread",
                k.name()
            ),
        };
        let c = ctx.clone();
        let n = name.clone();
        let kinds = kinds.clone();
        v.push(Entry::new(
            &name,
            w4_about,
            &setup,
            move |r: Round, rec: &mut Recorder| {
                if interrupted() {
                    return Err("interrupted".into());
                }
                let cached = c.borrow().w4.get(&r.index).cloned();
                let all = match cached {
                    Some(a) => a,
                    None => {
                        let reps = if c.borrow().quick {
                            sim::W4_REPS_QUICK
                        } else {
                            sim::W4_REPS_FULL
                        };
                        let a = Rc::new(sim::overhead_all(&kinds, reps, sim::W4_REQUESTS)?);
                        c.borrow_mut().w4.insert(r.index, a.clone());
                        a
                    }
                };
                let o = all.get(ki).ok_or("W4 measured no such policy")?;
                sim::record_overhead(o, rec);
                c.borrow_mut().extras.insert(
                    n.clone(),
                    Extra {
                        ns_per_req: Some(o.wall_p50()),
                        ns_per_req_p25: Some(sim::quantile(&o.wall, 0.25)),
                        ns_per_req_p75: Some(sim::quantile(&o.wall, 0.75)),
                        cpu_ns_per_req: Some(o.cpu_p50()),
                        cpu_ns_per_req_p25: Some(sim::quantile(&o.cpu, 0.25)),
                        cpu_ns_per_req_p75: Some(sim::quantile(&o.cpu, 0.75)),
                        reps: Some(o.wall.len()),
                        ..Extra::default()
                    },
                );
                Ok(())
            },
        ));
    }
    let paths: Vec<(usize, String, Vec<Work>)> = ctx
        .borrow()
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let works = Workload::all(loads)
                .into_iter()
                .map(|w| {
                    let load = match w {
                        Workload::W1 { load_pct } => Some(load_pct),
                        _ => None,
                    };
                    (w.prefix(), w.labels(), Source::Real(i, w), load, p.setup(w))
                })
                .collect();
            (i, p.name().to_string(), works)
        })
        .collect();
    for (_, name, works) in paths {
        group(ctx, &mut v, &name, works);
    }
    v
}

fn build(args: &ApexArgs, loads: &[u64]) -> (Bench, Rc<RefCell<Ctx>>) {
    let mut paths: Vec<Box<dyn RealPath>> = fio::KernelSched::ALL
        .iter()
        .chain([&fio::KernelSched::None])
        .map(|&s| Box::new(fio::FioPeer::new(s)) as Box<dyn RealPath>)
        .collect();
    if let Ok(ours) = workload::our_paths() {
        paths.extend(ours);
    }
    let ctx = Rc::new(RefCell::new(Ctx {
        no_linux: args.no_linux,
        quick: args.common.quick,
        sim: HashMap::new(),
        paths,
        real: RealState::NotTried,
        real_runs: HashMap::new(),
        unmeasured: BTreeMap::new(),
        extras: BTreeMap::new(),
        w4: HashMap::new(),
        notes: Vec::new(),
        meta: BTreeMap::new(),
        scratch: default_out_dir().join("apexbench-runs"),
    }));
    let (quick, full) = plans();
    let bench = Bench::new(
        NAME,
        "APEX scheduler bench (samples: ms of simulated or device time per run)",
        ABOUT,
    )
    .kind(Kind::Throughput(Metric::MbS))
    .plans(quick, full)
    .report_us(true)
    .entries(entries(&ctx, loads))
    .meta("sim_device", sim::device_setup())
    .meta("w1_loads_pct", format!("{loads:?}"))
    .note(
        "a round is one run of a workload: iters = ms measured, warm-up = ms before them; \
         every entry of the same run shares it",
    );
    (bench, ctx)
}

fn help_text(bench: &Bench) -> String {
    let mut s = bench.entries_help();
    let (q, f) = plans();
    s.push_str(&format!(
        "\nIn this bench a sample is a millisecond of run time: every run (a workload under one \
policy) lasts {} ms in a quick run ({} ms warm-up, not measured) and {} ms in a full one ({} ms \
warm-up); every entry named after the same run shares it. A quick run sweeps W1 at {:?} % \
(entries of other loads are absent then).\n",
        q.warmup + q.iters,
        q.warmup,
        f.warmup + f.iters,
        f.warmup,
        sim::LOADS_QUICK
    ));
    s.push_str("\nLinux peers (fio, io_uring, direct I/O, on a loop device over a 1 GiB file under target/bench/, as root):\n");
    for k in fio::KernelSched::ALL {
        s.push_str(&format!("  {}:\n", k.entry_name()));
        for w in [
            Workload::W1 { load_pct: 90 },
            Workload::W2 { bulk: true },
            Workload::W3,
        ] {
            let t: Vec<String> = k
                .tunables(w)
                .iter()
                .map(|(a, b)| format!("{a}={b}"))
                .collect();
            s.push_str(&format!(
                "    {}: {}\n",
                w.prefix().trim_end_matches("-90"),
                t.join(" ")
            ));
        }
    }
    s.push_str(
        "  The real-time/latency-critical job: prioclass=1 prio=0 cmdprio_percentage=100 \
cmdprio_class=1 cmdprio=0 (checked on every request from fio's log); the bulk job prioclass=2 prio=4. \
Open loop: W1's readers with rate_iops and rate_process=linear (fixed rate: evenly spaced, as the \
simulation's phase-spread periodic readers), W2 and W3 with rate_process=poisson; depth 256 so fio \
keeps to the schedule (the bench says when it could not). Latencies come from fio's per-request log. \
W1's load is a share of the highest rate of 256 KiB random reads the device serves alone, open loop, \
within W1's deadline (all but 1 %; probed at falling shares of its depth-32 rate before the runs), \
W3's a share of its 64 KiB rate at depth 32.\n",
    );
    s.push_str(&format!("\n{}\n", workload::OUR_PATH));
    s.push_str(
        "\nEnvironment (real path): APEXBENCH_ISOLATION=on|off|on,cap_kib=N,hold_ms=N,window_ms=N \
(APEX's isolation mode) or adaptive|adaptive_off|adaptive,step_kib=N,open_kib=N,late_permille=N,hold_ms=N \
(its adaptive isolation), APEXBENCH_THROTTLE=0|1|slow, APEXBENCH_SLACK_PERMILLE=N, \
APEXBENCH_W1_READS=N (W1's 100 % fixed, no probe), APEXBENCH_PACING=open (our rate streams \
strictly open loop instead of fio's pace), APEXBENCH_BREAKDOWN=1 (blkback's per-request steps), \
APEXBENCH_SLICE_US=N (a CPU slice for every thread of both paths). Only the W2 part: \
--only apex-real-w2-lc,apex-real-w2-bulk,apex-real-w2-alone-lc,linux-bfq-w2-lc,linux-bfq-w2-alone-lc \
(the loop device is calibrated first; APEXBENCH_W1_READS skips W1's probe).\n",
    );
    s.push_str(
        "\nTargets: W1: apex misses no deadline up to 90 % real-time load, in both harnesses, while \
its total throughput is >= 0.95x fifo's; W2: the latency-critical p99 under the bulk job <= 2x its \
p99 alone, and lower than every Linux scheduler's; W3: no idle device while requests wait; W4: \
<= 1 us of scheduler time per request.\n",
    );
    s
}

fn command(bench: &Bench) -> clap::Command {
    ApexArgs::command()
        .name(NAME)
        .bin_name(format!("cargo xtask {NAME}"))
        .about(ABOUT)
        .after_help(help_text(bench))
        .mut_arg("json", |a| {
            a.help(format!(
                "Where to write the results as JSON [default: {}]",
                default_out_dir().join(format!("{NAME}.json")).display()
            ))
        })
}

/// Parses the bench's arguments (`argv[0]` is the program).
pub fn parse_from<I, T>(argv: I) -> Result<ApexArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let (bench, _) = build(
        &ApexArgs {
            common: harness::Args::default(),
            no_linux: true,
        },
        &sim::LOADS_FULL,
    );
    let m = command(&bench).try_get_matches_from(argv)?;
    ApexArgs::from_arg_matches(&m)
}

/// Runs the bench: measures, prints the tables and targets, writes the
/// JSON and the plot, detaches the loop device. Returns the report.
pub fn run(args: &ApexArgs) -> Result<ApexReport, String> {
    let loads: &[u64] = if args.common.quick {
        &sim::LOADS_QUICK
    } else {
        &sim::LOADS_FULL
    };
    let (bench, ctx) = build(args, loads);
    // Before any thread or process of the runs starts: they inherit it.
    let slice_line = match slice::requested_us() {
        None => "CPU slice: the kernel's default for every thread (APEXBENCH_SLICE_US unset)".to_string(),
        Some(us) => match slice::request(us) {
            Ok(ns) => format!(
                "CPU slice: {:.2} ms asked of the kernel for every thread of both real paths (fio and its jobs; blkback's workers and the frontend) and kept (APEXBENCH_SLICE_US)",
                ns as f64 / 1e6
            ),
            Err(e) => format!("CPU slice: {us} us asked for every thread, not kept ({e}): the kernel's default"),
        },
    };
    eprintln!("apexbench: {slice_line}");
    {
        let mut c = ctx.borrow_mut();
        c.notes.push(slice_line.clone());
        c.meta.insert("cpu_slice".into(), slice_line);
    }
    let outcome = bench.run(&args.common);
    // The real path's comparisons again, in interleaved rounds.
    let paired = if outcome.is_ok() {
        paired_rounds(&mut ctx.borrow_mut())
    } else {
        Vec::new()
    };
    // Detach the loop device whatever happened.
    let real_state = std::mem::replace(&mut ctx.borrow_mut().real, RealState::NotTried);
    if let RealState::Ready { mut dev, .. } = real_state {
        match dev.detach() {
            Ok(()) => eprintln!("apexbench: {} detached", dev.dev().display()),
            Err(e) => eprintln!("apexbench: {e}"),
        }
    }
    let outcome = outcome?;
    let c = ctx.borrow();
    let mut meta = outcome.report.meta.clone();
    meta.extend(c.meta.clone());
    meta.insert(
        "kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    );
    meta.insert("real_path".into(), workload::OUR_PATH.into());
    let mut results = Vec::new();
    let mut not_measured = Vec::new();
    for r in outcome.report.results {
        if let Some(why) = c.unmeasured.get(&r.name) {
            not_measured.push(NotMeasured {
                name: r.name.clone(),
                reason: why.clone(),
            });
            continue;
        }
        let extra = c.extras.get(&r.name).cloned().unwrap_or_default();
        results.push(ApexEntry::new(r, extra));
    }
    if let Err(why) = workload::our_paths() {
        for p in ["apex-real", "fifo-real"] {
            not_measured.push(NotMeasured {
                name: format!("{p}-*"),
                reason: why.clone(),
            });
        }
    }
    let mut rep = ApexReport {
        results,
        meta,
        targets: Vec::new(),
        checks: Vec::new(),
        not_measured,
        notes: c.notes.clone(),
        rounds: paired,
    };
    report::evaluate(&mut rep, loads);
    println!();
    print!("{}", report::render(&rep, loads));
    let json = args
        .common
        .json
        .clone()
        .unwrap_or_else(|| default_out_dir().join(format!("{NAME}.json")));
    let svg = args
        .common
        .svg
        .clone()
        .unwrap_or_else(|| json.with_extension("svg"));
    report::write_json(&json, &rep)?;
    println!("\nJSON written to {}", json.display());
    if report::miss_curves(&rep).is_empty() {
        println!("no SVG plot: no W1 entry was measured");
    } else {
        report::plot(&svg, &rep)?;
        println!("SVG plot written to {}", svg.display());
    }
    Ok(rep)
}

/// `APEXBENCH_ROUNDS`: how many interleaved rounds of the real path's
/// comparisons follow the entries (default 5; 0 for none).
fn rounds_wanted() -> u64 {
    std::env::var("APEXBENCH_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(5)
        .min(50)
}

/// The real path's comparisons on a shared disk, as the block bench makes
/// its own: after the entries, `APEXBENCH_ROUNDS` rounds in which the
/// sides of each comparison run back to back, taking turns going first
/// (W1 at 90 %: APEX and FIFO, total MB/s; W2 with the bulk job: APEX and
/// each Linux scheduler, the latency-critical reads' p99), each run
/// shorter than an entry's (1 s measured in a quick run, 3 s in a full
/// one, after 200 ms). A comparison runs only when both its sides'
/// entries were measured in this run (so `--only` chooses them too).
fn paired_rounds(c: &mut Ctx) -> Vec<RoundRatios> {
    if !matches!(c.real, RealState::Ready { .. }) {
        return Vec::new();
    }
    let n = rounds_wanted();
    let (iters, warmup) = if c.quick { (1_000, 200) } else { (3_000, 200) };
    let idx = |c: &Ctx, name: &str| c.paths.iter().position(|p| p.name() == name);
    let measured = |c: &Ctx, p: usize, w: Workload| {
        c.real_runs
            .iter()
            .any(|(&(q, v, _), r)| q == p && v == w && r.is_ok())
    };
    let mut out = Vec::new();
    let Some(apex) = idx(c, "apex-real") else {
        return out;
    };
    // Per comparison: the workload, the other side, and the ratio.
    type Ratio = fn(&Measured, &Measured) -> Result<f64, String>;
    let total: Ratio = |a, b| {
        let mb = |m: &Measured| {
            m.classes.iter().map(|c| c.window_bytes).sum::<u64>() as f64 * 1e3
                / m.window_ns.max(1) as f64
        };
        let y = mb(b);
        if y > 0.0 {
            Ok(mb(a) / y)
        } else {
            Err("the other side moved nothing".into())
        }
    };
    let lc_p99: Ratio = |a, b| {
        let p99 = |m: &Measured| {
            let lat = &m.class("lc").ok_or("no lc class")?.latencies_ns;
            if lat.is_empty() {
                return Err("no lc read completed".to_string());
            }
            let mut v = lat.clone();
            v.sort_unstable();
            Ok(sorted_quantile(&v, 0.99) as f64)
        };
        let (x, y) = (p99(a)?, p99(b)?);
        if y > 0.0 {
            Ok(x / y)
        } else {
            Err("the other side's p99 is 0".into())
        }
    };
    let mut plans: Vec<(Workload, usize, RoundRatios, Ratio)> = Vec::new();
    let w1 = Workload::W1 { load_pct: 90 };
    if let Some(fifo) = idx(c, "fifo-real") {
        if measured(c, apex, w1) && measured(c, fifo, w1) {
            plans.push((
                w1,
                fifo,
                RoundRatios {
                    workload: "W1".into(),
                    what: "apex-real-w1-total / fifo-real-w1-total at 90 % (MB/s)".into(),
                    cmp: Cmp::AtLeast,
                    limit: 0.95,
                    strict: false,
                    ratios: Vec::new(),
                    first: Vec::new(),
                    failed: Vec::new(),
                },
                total,
            ));
        }
    }
    let w2 = Workload::W2 { bulk: true };
    for s in fio::KernelSched::ALL {
        let name = fio::FioPeer::new(s).name().to_string();
        let Some(l) = idx(c, &name) else { continue };
        if measured(c, apex, w2) && measured(c, l, w2) {
            plans.push((
                w2,
                l,
                RoundRatios {
                    workload: "W2".into(),
                    what: format!("apex-real-w2-lc / {name}-w2-lc (p99)"),
                    cmp: Cmp::AtMost,
                    limit: 1.0,
                    strict: true,
                    ratios: Vec::new(),
                    first: Vec::new(),
                    failed: Vec::new(),
                },
                lc_p99,
            ));
        }
    }
    if plans.is_empty() || n == 0 {
        return out;
    }
    eprintln!(
        "apexbench: {n} interleaved rounds of the real path's comparisons ({} ms measured per run)",
        iters
    );
    for k in 0..n {
        if interrupted() {
            break;
        }
        let round = Round {
            index: 1_000 + k,
            iters,
            warmup,
        };
        // Per workload: APEX first in even rounds, last in odd ones (a W2
        // round's APEX run serves every Linux scheduler's comparison).
        let mut works: Vec<Workload> = plans.iter().map(|p| p.0).collect();
        works.dedup();
        for w in works {
            let others: Vec<usize> = plans.iter().filter(|p| p.0 == w).map(|p| p.1).collect();
            let mut seq = others.clone();
            if k % 2 == 0 {
                seq.insert(0, apex);
            } else {
                seq.push(apex);
            }
            let mut got: HashMap<usize, Result<Rc<Measured>, String>> = HashMap::new();
            for p in seq {
                let r = c.real(p, w, round).and_then(|r| r);
                got.insert(p, r);
            }
            for (_, other, rr, ratio) in plans.iter_mut().filter(|p| p.0 == w) {
                let first = if k % 2 == 0 {
                    "apex-real".to_string()
                } else {
                    c.paths[*other].name().to_string()
                };
                let res = match (&got[&apex], &got[other]) {
                    (Ok(a), Ok(b)) => ratio(a, b),
                    (Err(e), _) | (_, Err(e)) => Err(e.clone()),
                };
                match res {
                    Ok(r) => {
                        eprintln!("  round {}: {} = {r:.2} ({first} first)", k + 1, rr.what);
                        rr.ratios.push(r);
                        rr.first.push(first);
                    }
                    Err(e) => rr.failed.push(format!("round {}: {e}", k + 1)),
                }
            }
        }
    }
    out.extend(plans.into_iter().map(|p| p.2));
    out
}

/// `main` of the bench binary.
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    install_interrupt_handler();
    match run(&args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}
