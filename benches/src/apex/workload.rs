//! The workloads of the real path, what a run measures, and the seam the
//! real paths implement ([`RealPath`]): fio under Linux's schedulers and
//! blkfront with ours.
//!
//! The simulated harness takes its workloads from `iosched::sim` (`w1`,
//! `w2`, `w3`); the real path runs the same ones on a loop device, sized
//! from the device's measured capacity instead of the model's: the same
//! request sizes, deadlines, classes and arrival processes, with the
//! real-time load a share of what this device can do.

use std::path::Path;

use iosched::sim::{
    BULK_BYTES, BULK_DEPTH, W1_PERIOD_NS, W1_READ_BYTES, W2_LC_DEADLINE_NS, W2_LC_MEAN_NS,
    W3_DEADLINE_NS, W3_READ_BYTES,
};

/// A workload of the bench, as the real path runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// W1, deadline streams, at this real-time load (percent of the
    /// device's read capacity).
    W1 {
        /// Offered real-time load, percent.
        load_pct: u64,
    },
    /// W2, isolation: the latency-critical reads beside the bulk job
    /// (`bulk`), or alone.
    W2 {
        /// With the bulk job.
        bulk: bool,
    },
    /// W3, work conservation: real-time reads at 10 % of capacity beside
    /// the bulk job. (The reservation variants of the simulation are
    /// APEX's; Linux's schedulers have no reservations, so the real path
    /// runs W3 once.)
    W3,
}

impl Workload {
    /// The entry-name part after the policy: `w1-90`, `w2`, `w2-alone`,
    /// `w3`.
    pub fn prefix(self) -> String {
        match self {
            Workload::W1 { load_pct } => format!("w1-{load_pct}"),
            Workload::W2 { bulk: true } => "w2".into(),
            Workload::W2 { bulk: false } => "w2-alone".into(),
            Workload::W3 => "w3".into(),
        }
    }

    /// The class labels of its streams, in order.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Workload::W1 { .. } => &["rt", "bulk"],
            Workload::W2 { bulk: true } => &["lc", "bulk"],
            Workload::W2 { bulk: false } => &["lc"],
            Workload::W3 => &["rt", "be"],
        }
    }

    /// The deadline of its real-time (or latency-critical) stream, ns.
    pub fn deadline_ns(self) -> u64 {
        match self {
            Workload::W1 { .. } => W1_PERIOD_NS,
            Workload::W2 { .. } => W2_LC_DEADLINE_NS,
            Workload::W3 => W3_DEADLINE_NS,
        }
    }

    /// Every workload of a run with these W1 loads.
    pub fn all(loads: &[u64]) -> Vec<Workload> {
        let mut v: Vec<Workload> = loads
            .iter()
            .map(|&load_pct| Workload::W1 { load_pct })
            .collect();
        v.extend([
            Workload::W2 { bulk: true },
            Workload::W2 { bulk: false },
            Workload::W3,
        ]);
        v
    }
}

/// When a stream's requests arrive. Open-loop rates are whole numbers of
/// requests per second (fio's `rate_iops` takes an integer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arrival {
    /// Evenly spaced, `per_sec` a second: W1's real-time readers, whose
    /// phases the simulation spreads evenly over the period, arrive
    /// together as one evenly spaced stream.
    Fixed {
        /// Requests per second.
        per_sec: f64,
    },
    /// A Poisson process of `per_sec` a second (the simulation jitters
    /// uniformly around the same mean).
    Poisson {
        /// Requests per second.
        per_sec: f64,
    },
    /// `depth` requests outstanding, a new one at each completion.
    ClosedLoop {
        /// Requests outstanding.
        depth: u32,
    },
}

impl Arrival {
    /// The open-loop rate, if it is one.
    pub fn per_sec(self) -> Option<f64> {
        match self {
            Arrival::Fixed { per_sec } | Arrival::Poisson { per_sec } => Some(per_sec),
            Arrival::ClosedLoop { .. } => None,
        }
    }
}

/// One stream of a real workload.
#[derive(Clone, Debug, PartialEq)]
pub struct RealStream {
    /// Class label (`rt`, `lc`, `bulk`, `be`).
    pub label: &'static str,
    /// Writes (else reads).
    pub write: bool,
    /// Request size, bytes.
    pub bytes: u64,
    /// Sequential offsets (else random).
    pub sequential: bool,
    /// Arrival process.
    pub arrival: Arrival,
    /// Relative deadline of each request, ns.
    pub deadline_ns: Option<u64>,
    /// The real-time class: Linux's `IOPRIO_CLASS_RT` for the kernel's
    /// schedulers, a real-time queue for ours.
    pub real_time: bool,
}

/// What the device can do, measured before the runs (scheduler `none`,
/// random reads at depth 32; W1's unit open loop, within its deadline).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Capacity {
    /// 256 KiB random reads per second at depth 32 (the cost model's
    /// starting line).
    pub reads_256k: f64,
    /// 64 KiB random reads per second at depth 32 (W3's unit of load).
    pub reads_64k: f64,
    /// 256 KiB random reads per second that arrive evenly spaced, alone on
    /// the device, and complete within W1's deadline (all but 1 %): W1's
    /// 100 % load (see [`Capacity::w1_reads`]). 0 when not measured.
    pub w1_deadline_reads: f64,
}

impl Capacity {
    /// W1's unit of load, reads per second: [`Capacity::w1_deadline_reads`]
    /// when measured, else the depth-32 rate. The depth-32 rate is what the
    /// device does with 32 reads always waiting, each for 32 of their
    /// service times (25 ms on the development VM's disk): more than W1's
    /// deadline, so 90 % of it, arriving open loop, is not served within
    /// the deadline even alone (fio alone on the loop device, 1153 reads/s
    /// evenly spaced against 1281/s at depth 32: 36 % over 20 ms; 640/s:
    /// none). W1's load is a share of what the device can serve within
    /// the deadline, the same for every policy and Linux scheduler.
    pub fn w1_reads(&self) -> f64 {
        if self.w1_deadline_reads > 0.0 {
            self.w1_deadline_reads
        } else {
            self.reads_256k
        }
    }
}

/// A workload ready to run: its streams and its length.
#[derive(Clone, Debug, PartialEq)]
pub struct RealWorkload {
    /// Which workload.
    pub workload: Workload,
    /// Its streams.
    pub streams: Vec<RealStream>,
    /// Warm-up, not measured, ms.
    pub warmup_ms: u64,
    /// Measured part, ms (the run lasts `warmup_ms + measure_ms`).
    pub measure_ms: u64,
    /// The device's measured capacity the workload was sized from (our
    /// path also starts its cost model from it).
    pub capacity: Capacity,
}

fn bulk(label: &'static str) -> RealStream {
    RealStream {
        label,
        write: true,
        bytes: BULK_BYTES,
        sequential: true,
        arrival: Arrival::ClosedLoop {
            depth: BULK_DEPTH as u32,
        },
        deadline_ns: None,
        real_time: false,
    }
}

impl RealWorkload {
    /// The workload's streams on a device of `cap`.
    pub fn new(workload: Workload, cap: &Capacity, warmup_ms: u64, measure_ms: u64) -> Self {
        let streams = match workload {
            Workload::W1 { load_pct } => vec![
                RealStream {
                    label: "rt",
                    write: false,
                    bytes: W1_READ_BYTES,
                    sequential: false,
                    arrival: Arrival::Fixed {
                        per_sec: (cap.w1_reads() * load_pct as f64 / 100.0).round().max(1.0),
                    },
                    deadline_ns: Some(W1_PERIOD_NS),
                    real_time: true,
                },
                bulk("bulk"),
            ],
            Workload::W2 { bulk: with_bulk } => {
                let mut v = vec![RealStream {
                    label: "lc",
                    write: false,
                    bytes: 4096,
                    sequential: false,
                    arrival: Arrival::Poisson {
                        per_sec: 1e9 / W2_LC_MEAN_NS as f64,
                    },
                    deadline_ns: Some(W2_LC_DEADLINE_NS),
                    real_time: true,
                }];
                if with_bulk {
                    v.push(bulk("bulk"));
                }
                v
            }
            Workload::W3 => vec![
                RealStream {
                    label: "rt",
                    write: false,
                    bytes: W3_READ_BYTES,
                    sequential: false,
                    arrival: Arrival::Poisson {
                        per_sec: (cap.reads_64k * 0.10).round().max(1.0),
                    },
                    deadline_ns: Some(W3_DEADLINE_NS),
                    real_time: true,
                },
                bulk("be"),
            ],
        };
        RealWorkload {
            workload,
            streams,
            warmup_ms,
            measure_ms,
            capacity: *cap,
        }
    }

    /// The same with every deadline multiplied by `scale` (at least 1):
    /// the real path's deadlines, set relative to the device's measured
    /// latency floor when the nominal ones are below it (see
    /// [`deadline_scale`]).
    pub fn with_deadline_scale(mut self, scale: f64) -> Self {
        let scale = if scale.is_finite() {
            scale.max(1.0)
        } else {
            1.0
        };
        for s in &mut self.streams {
            if let Some(d) = s.deadline_ns.as_mut() {
                *d = (*d as f64 * scale).round() as u64;
            }
        }
        self
    }

    /// The deadline of its real-time (or latency-critical) stream, ns.
    pub fn deadline_ns(&self) -> u64 {
        self.streams
            .iter()
            .find_map(|s| s.deadline_ns)
            .unwrap_or_else(|| self.workload.deadline_ns())
    }
}

/// The factor the real path's deadlines are multiplied by on a device
/// whose lone 4 KiB reads (W2's latency-critical stream alone, fio, no
/// kernel scheduler) have a median latency of `floor_p50_ns`: none (1)
/// when that median is at most a quarter of W2's 2 ms deadline, else what
/// takes W2's deadline to [`FLOOR_FACTOR`] times the floor's median. The
/// median, not a high percentile: on a shared disk one stall moves a short
/// run's p99 by a factor of ten (28 and 208 ms in two runs an hour apart
/// whose medians were both 9.5 ms). Every deadline of the real path, for
/// every policy and Linux scheduler alike, is scaled by it.
pub fn deadline_scale(floor_p50_ns: u64) -> f64 {
    (FLOOR_FACTOR * floor_p50_ns as f64 / W2_LC_DEADLINE_NS as f64).max(1.0)
}

/// W2's deadline on the real path, in multiples of the floor's median
/// (see [`deadline_scale`]).
pub const FLOOR_FACTOR: f64 = 4.0;

/// What one run measured for one class label.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassMeasure {
    /// The label.
    pub label: String,
    /// Latencies of the requests that arrived in the measured window,
    /// from arrival to completion, ns.
    pub latencies_ns: Vec<u64>,
    /// Of those, how many had a deadline.
    pub with_deadline: u64,
    /// And how many of those completed late.
    pub misses: u64,
    /// Bytes completed inside the window.
    pub window_bytes: u64,
    /// For an open-loop stream: requests that should have arrived in the
    /// window (rate times window); the latencies are honest only when
    /// about as many did.
    pub expected: Option<f64>,
}

/// What one run measured: per class, and the whole run's properties.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// Per label, in the workload's order.
    pub classes: Vec<ClassMeasure>,
    /// Length of the measured window, ns.
    pub window_ns: u64,
    /// Device idle while requests waited, ns (the simulation only: no
    /// real device tells).
    pub idle_wait_ns: Option<u64>,
    /// Device idle while the scheduler held requests back on purpose, with
    /// a wake-up time (APEX's isolation mode), ns (simulation only; not
    /// in `idle_wait_ns`).
    pub held_wait_ns: Option<u64>,
    /// Device below its concurrency while requests waited, ns
    /// (simulation only).
    pub underused_wait_ns: Option<u64>,
    /// Queues refused by admission control (simulation only).
    pub refused_queues: Option<usize>,
    /// Anything the reader of the figures should know.
    pub notes: Vec<String>,
}

impl Measured {
    /// The class with this label.
    pub fn class(&self, label: &str) -> Option<&ClassMeasure> {
        self.classes.iter().find(|c| c.label == label)
    }
}

/// A loop device a real path runs on.
pub trait Device {
    /// Its path, `/dev/loopN`.
    fn path(&self) -> &Path;
    /// Sets its kernel scheduler (`none`, `mq-deadline`, `bfq`, `kyber`)
    /// and that scheduler's tunables (files under `queue/iosched/`).
    /// Returns a note for each tunable the kernel took at another value
    /// than the one written (mq-deadline's times are whole jiffies, for
    /// example).
    fn set_scheduler(
        &self,
        sched: &str,
        tunables: &[(&str, String)],
    ) -> Result<Vec<String>, String>;
}

/// One way of serving the workloads on the real device: Linux's own
/// schedulers driven by fio (see [`super::fio`]), and blkfront with our
/// scheduler through the hosted blkback onto the same loop device, its
/// kernel scheduler set to `none` (see [`super::ours`]).
///
/// [`RealPath::run`] runs
/// one workload for its length, open loop (requests arrive at their
/// times whether or not earlier ones are done, and latency counts from
/// the arrival), and returns per class every latency, the deadline misses
/// and the bytes of the measured window.
pub trait RealPath {
    /// The policy part of its entries' names: `linux-bfq`, `apex-real`.
    fn name(&self) -> &str;
    /// How it is set up for this workload (shown by `--help` and in the
    /// table): scheduler, tunables, engine.
    fn setup(&self, workload: Workload) -> String;
    /// Runs one workload on `dev`; `scratch` is an empty directory for
    /// its files.
    fn run(
        &mut self,
        dev: &dyn Device,
        workload: &RealWorkload,
        scratch: &Path,
    ) -> Result<Measured, String>;
}

/// What our real paths are (the run's `real_path` note).
pub const OUR_PATH: &str = "apex-real and fifo-real: blkfront (event channel, one queue, \
persistent grants) with APEX or FIFO on its queue, through the hosted blkback (io_uring, O_DIRECT) \
onto the same loop device, its kernel scheduler set to `none`; the rate streams issued as fio \
issues its rate jobs and timed as fio times them, from the issue (benches/src/apex/ours.rs)";

/// Our real paths (`apex-real`, `fifo-real`), or why there are none.
pub fn our_paths() -> Result<Vec<Box<dyn RealPath>>, String> {
    Ok(vec![
        Box::new(super::ours::BlkfrontPath::new(iosched::PolicyKind::Apex)),
        Box::new(super::ours::BlkfrontPath::new(iosched::PolicyKind::Fifo)),
    ])
}

/// Measurements of one class from per-request records `(arrival ns,
/// completion ns, bytes)` relative to the run's start, for a window
/// `[warmup, warmup + measure)`: latency and deadline for the requests
/// that arrived in the window, bytes for those completed in it.
pub fn measure_class(
    label: &str,
    records: &[(u64, u64, u64)],
    deadline_ns: Option<u64>,
    window: (u64, u64),
    rate_per_sec: Option<f64>,
) -> ClassMeasure {
    let (w0, w1) = window;
    let mut c = ClassMeasure {
        label: label.into(),
        expected: rate_per_sec.map(|r| r * w1.saturating_sub(w0) as f64 / 1e9),
        ..ClassMeasure::default()
    };
    for &(arrival, done, bytes) in records {
        if arrival >= w0 && arrival < w1 {
            let lat = done.saturating_sub(arrival);
            c.latencies_ns.push(lat);
            if let Some(d) = deadline_ns {
                c.with_deadline += 1;
                if lat > d {
                    c.misses += 1;
                }
            }
        }
        if done >= w0 && done < w1 {
            c.window_bytes = c.window_bytes.saturating_add(bytes);
        }
    }
    c.latencies_ns.sort_unstable();
    c
}

/// The shortest stretch with requests outstanding and none completing
/// that [`stalls`] reports: 50 ms, more than twice the longest nominal
/// deadline of the bench (W1's 20 ms) and tens of times the service time
/// of one request on the loop device.
pub const STALL_NS: u64 = 50_000_000;

/// The stretches of a run, `(from, to)` in ns, of at least `min_ns` during
/// which requests were outstanding and none completed, from every
/// request's `(arrival, completion, bytes)` of every class: on this path
/// nothing the scheduler does changes them (a device that stops, or a
/// host that does not run the path). A stretch starts at the later of the
/// previous completion and the earliest arrival still outstanding.
pub fn stalls(records: &[(u64, u64, u64)], min_ns: u64) -> Vec<(u64, u64)> {
    let mut by_done: Vec<(u64, u64)> = records.iter().map(|&(a, d, _)| (d, a)).collect();
    by_done.sort_unstable();
    // Earliest arrival among the requests completing at or after each one.
    let mut suffix_min = vec![u64::MAX; by_done.len() + 1];
    for i in (0..by_done.len()).rev() {
        suffix_min[i] = suffix_min[i + 1].min(by_done[i].1);
    }
    let mut out = Vec::new();
    for i in 1..by_done.len() {
        let (prev, next) = (by_done[i - 1].0, by_done[i].0);
        let from = prev.max(suffix_min[i]);
        if next > from && next - from >= min_ns {
            out.push((from, next));
        }
    }
    out
}

/// A note on a run's stalls ([`stalls`] over every class's `records`) and
/// how many of the deadline misses of `class` (its `records` and
/// `deadline_ns`, requests arriving in `window`) overlapped one: `None`
/// when there was no stall in the window.
pub fn stall_note(
    prefix: &str,
    class: &str,
    all: &[(u64, u64, u64)],
    records: &[(u64, u64, u64)],
    deadline_ns: u64,
    window: (u64, u64),
) -> Option<String> {
    let st: Vec<(u64, u64)> = stalls(all, STALL_NS)
        .into_iter()
        .filter(|&(a, b)| b > window.0 && a < window.1)
        .collect();
    if st.is_empty() {
        return None;
    }
    let total: u64 = st
        .iter()
        .map(|&(a, b)| b.min(window.1) - a.max(window.0))
        .sum();
    let longest = st.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
    let (mut misses, mut met) = (0u64, 0u64);
    for &(arrival, done, _) in records {
        if arrival < window.0 || arrival >= window.1 || done.saturating_sub(arrival) <= deadline_ns
        {
            continue;
        }
        misses += 1;
        if st.iter().any(|&(a, b)| a < done && b > arrival) {
            met += 1;
        }
    }
    let span = window.1.saturating_sub(window.0).max(1);
    Some(format!(
        "{prefix}: {} {} of >= {} ms with requests outstanding and none completing ({:.0} ms, {:.0} % of the window; longest {:.0} ms, counted whole); {met} of the {misses} {class} deadline misses overlapped one",
        st.len(),
        if st.len() == 1 { "stretch" } else { "stretches" },
        STALL_NS / 1_000_000,
        total as f64 / 1e6,
        100.0 * total as f64 / span as f64,
        longest as f64 / 1e6,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_name_their_entries_as_the_simulation_does() {
        let all = Workload::all(&[10, 90]);
        let names: Vec<String> = all.iter().map(|w| w.prefix()).collect();
        assert_eq!(names, ["w1-10", "w1-90", "w2", "w2-alone", "w3"]);
        assert_eq!(Workload::W2 { bulk: false }.labels(), ["lc"]);
        assert_eq!(Workload::W3.labels(), ["rt", "be"]);
    }

    #[test]
    fn real_workloads_scale_with_the_device() {
        let cap = Capacity {
            reads_256k: 4000.0,
            reads_64k: 10000.0,
            w1_deadline_reads: 0.0,
        };
        let w = RealWorkload::new(Workload::W1 { load_pct: 90 }, &cap, 100, 1000);
        assert_eq!(w.streams.len(), 2);
        assert_eq!(w.streams[0].arrival, Arrival::Fixed { per_sec: 3600.0 });
        assert!(w.streams[0].real_time && !w.streams[1].real_time);
        assert_eq!(w.streams[1].arrival, Arrival::ClosedLoop { depth: 32 });
        let w = RealWorkload::new(Workload::W3, &cap, 100, 1000);
        assert_eq!(w.streams[0].arrival, Arrival::Poisson { per_sec: 1000.0 });
        assert_eq!(w.streams[0].deadline_ns, Some(10_000_000));
        let w = RealWorkload::new(Workload::W2 { bulk: false }, &cap, 100, 1000);
        assert_eq!(w.streams.len(), 1);
        assert_eq!(w.streams[0].arrival.per_sec(), Some(2000.0));
    }

    #[test]
    fn deadlines_scale_with_the_floor() {
        assert_eq!(deadline_scale(250_000), 1.0);
        assert_eq!(deadline_scale(500_000), 1.0);
        assert_eq!(deadline_scale(7_500_000), 15.0);
        let cap = Capacity {
            reads_256k: 1000.0,
            reads_64k: 3000.0,
            w1_deadline_reads: 0.0,
        };
        let w = RealWorkload::new(Workload::W2 { bulk: true }, &cap, 100, 1000)
            .with_deadline_scale(15.0);
        assert_eq!(w.streams[0].deadline_ns, Some(30_000_000));
        assert_eq!(w.streams[1].deadline_ns, None);
        assert_eq!(w.deadline_ns(), 30_000_000);
        let w = RealWorkload::new(Workload::W1 { load_pct: 10 }, &cap, 100, 1000)
            .with_deadline_scale(0.5);
        assert_eq!(w.deadline_ns(), W1_PERIOD_NS);
    }

    #[test]
    fn a_class_is_measured_inside_its_window() {
        // (arrival, done, bytes); window [100, 200).
        let recs = [
            (50, 120, 10),  // arrived before: bytes only
            (100, 150, 10), // 50 ns, on time
            (150, 260, 10), // 110 ns, late; done after the window
            (199, 205, 10), // 6 ns; done after
            (200, 210, 10), // arrived after
        ];
        let c = measure_class("rt", &recs, Some(100), (100, 200), Some(1e7));
        assert_eq!(c.latencies_ns, [6, 50, 110]);
        assert_eq!((c.with_deadline, c.misses), (3, 1));
        assert_eq!(c.window_bytes, 20);
        assert_eq!(c.expected, Some(1.0));
        let c = measure_class("bulk", &recs, None, (100, 200), None);
        assert_eq!((c.with_deadline, c.misses, c.expected), (0, 0, None));
    }

    #[test]
    fn stalls_are_stretches_with_work_outstanding_and_nothing_completing() {
        let ms = 1_000_000;
        // (arrival, done, bytes): completions every ms, then a 100 ms
        // stretch with two requests outstanding, then an idle 200 ms
        // (nothing outstanding: not a stall), then one more.
        let mut recs: Vec<(u64, u64, u64)> = (0..10).map(|i| (i * ms, (i + 1) * ms, 1)).collect();
        recs.push((10 * ms, 110 * ms, 1));
        recs.push((20 * ms, 111 * ms, 1));
        recs.push((311 * ms, 312 * ms, 1));
        assert_eq!(stalls(&recs, 50 * ms), [(10 * ms, 110 * ms)]);
        assert!(stalls(&recs, 101 * ms).is_empty());
        // The request of 91 ms misses a 50 ms deadline across the stall;
        // the 100 ms one too; nothing else misses.
        let note = stall_note("w1-10", "rt", &recs, &recs, 50 * ms, (0, 400 * ms))
            .expect("a stall in the window");
        assert!(note.contains("1 stretch of"), "{note}");
        assert!(note.contains("2 of the 2 rt deadline misses"), "{note}");
        assert!(stall_note("w1-10", "rt", &recs, &recs, 50 * ms, (200 * ms, 400 * ms)).is_none());
    }

    #[test]
    fn our_paths_are_apex_and_fifo_on_blkfront() {
        let ours = our_paths().expect("our paths are in the tree");
        let names: Vec<&str> = ours.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["apex-real", "fifo-real"]);
        let setup = ours[0].setup(Workload::W2 { bulk: true });
        assert!(
            setup.contains("apex") && setup.contains("blkback"),
            "{setup}"
        );
    }
}
