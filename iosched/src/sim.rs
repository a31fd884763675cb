//! A deterministic simulation: any policy, a device model, open-loop
//! workloads, simulated time.
//!
//! # The device
//! [`DeviceModel`]: a ring of `ring_slots` slots in front of a device that
//! serves `concurrency` requests at once, first come first served in ring
//! order (or, with [`DeviceOrder::WritesFirst`], writes first: a device
//! whose own queue does not keep the ring's order), each taking
//! `base_ns + bytes * ps_per_byte / 1000` ns. No seeks, no caching, no
//! noise: the same inputs give the same figures on every machine.
//!
//! # The frontend
//! Every event (an arrival, a completion) is followed by a batch: the
//! scheduler is asked for as many requests as the ring has free slots, and
//! they go on the ring in the order given, as blkfront does after each
//! submission and each response.
//!
//! # Arrivals
//! Open loop: a stream's requests arrive at times fixed in advance
//! (periodic, or jittered uniformly between half and one and a half times
//! the mean interval), whether or not earlier ones have completed, and a
//! request's latency is measured from its arrival, so a slow scheduler cannot
//! hide its backlog (no coordinated omission). Bulk jobs are closed loop: a
//! fixed number of requests outstanding, a new one submitted at each
//! completion, as `fio --iodepth` does. Arrivals stop at the end of the run,
//! then everything submitted is drained and measured.
//!
//! # Measurement
//! Requests arriving during the warm-up (the first tenth of the run, while
//! the cost model calibrates) are served but not measured. Latency
//! percentiles are exact (sorted samples). Throughput counts the bytes
//! completed between the end of the warm-up and the end of the run. The run
//! also measures the time the device sat idle while the scheduler held
//! requests (`idle_wait`), and the time it served fewer requests than it
//! could while requests waited (`underused_wait`).
//!
//! # The workloads
//! See [`w1`], [`w2`], [`w3`] and [`overhead`]. Entries are named
//! `POLICY-wN-CLASS` as in the APEX bench: CLASS is `rt` (real-time readers),
//! `lc` (latency-critical reads), `bulk` or `be` (the saturating job), and
//! `total` (all classes, `mb_s` only); W1 puts the real-time load in percent
//! before the class (`apex-w1-90-rt`), W2's reads alone are `POLICY-w2-alone-lc`,
//! W3 puts the reservation in percent of capacity (`apex-w3-r50-rt`).

use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::fmt::Write as _;

use crate::{
    new_scheduler, CostPrior, Nanos, Op, PolicyKind, QueueConfig, Request, Reservation,
    SchedConfig, Scheduler,
};

const MS: u64 = 1_000_000;
const US: u64 = 1_000;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The simulated device and its ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceModel {
    /// Constant part of a request's service time, ns.
    pub base_ns: u64,
    /// Per-byte part of the service time, ps per byte.
    pub ps_per_byte: u64,
    /// Requests served at once.
    pub concurrency: usize,
    /// Ring slots (requests on the ring, in service or waiting for it).
    pub ring_slots: usize,
    /// The order in which the device starts the requests it holds.
    pub order: DeviceOrder,
}

/// The order in which a simulated device starts the requests it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceOrder {
    /// Ring order: the request put on the ring first starts first.
    #[default]
    Ring,
    /// Writes before reads, ring order within each: a device with a deep
    /// queue of its own that does not keep the ring's order (a host that
    /// flushes written data ahead of reads, an elevator): a read waits for
    /// every write the device holds, those put on the ring after it
    /// included, whatever order the scheduler chose.
    WritesFirst,
}

impl Default for DeviceModel {
    /// An SSD-like device: 100 µs per request, 500 MB/s per channel, four
    /// channels (2 GB/s in all), behind a one-page blkif ring of 32 slots.
    fn default() -> Self {
        Self {
            base_ns: 100 * US,
            ps_per_byte: 2000,
            concurrency: 4,
            ring_slots: 32,
            order: DeviceOrder::Ring,
        }
    }
}

impl DeviceModel {
    /// Service time of one request of `bytes`, ns.
    pub fn service_ns(&self, bytes: u64) -> u64 {
        let per_byte = (bytes as u128 * self.ps_per_byte as u128 / 1000).min(u64::MAX as u128);
        self.base_ns.saturating_add(per_byte as u64)
    }

    /// Share of the device one request of `bytes` uses, ns (its service time
    /// over the concurrency): the cost the scheduler's model should learn.
    pub fn amortized_ns(&self, bytes: u64) -> u64 {
        self.service_ns(bytes) / self.concurrency.max(1) as u64
    }

    /// The cost prior a calibration run on this device would give.
    pub fn prior(&self) -> CostPrior {
        let k = self.concurrency.max(1) as u64;
        CostPrior::uniform(self.base_ns / k, self.ps_per_byte / k)
    }
}

/// When a stream's requests arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrivals {
    /// Every `period_ns`, the first at `phase_ns`.
    Periodic {
        /// Interval, ns.
        period_ns: u64,
        /// First arrival, ns.
        phase_ns: u64,
    },
    /// Intervals drawn uniformly from `[mean/2, 3*mean/2]`.
    Jittered {
        /// Mean interval, ns.
        mean_ns: u64,
    },
    /// `depth` requests outstanding; a new one at each completion.
    ClosedLoop {
        /// Requests outstanding.
        depth: usize,
    },
}

/// One stream of requests, in a queue of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    /// Class label for the entries (`rt`, `lc`, `bulk`, `be`).
    pub label: &'static str,
    /// The queue it is submitted to.
    pub queue: QueueConfig,
    /// Operation.
    pub op: Op,
    /// Request size.
    pub bytes: u64,
    /// Arrival process.
    pub arrivals: Arrivals,
    /// Relative deadline given with each request (`None`: the queue's
    /// default, if any).
    pub deadline_ns: Option<u64>,
    /// Sequential sectors (else random).
    pub sequential: bool,
}

/// A run to simulate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The device.
    pub device: DeviceModel,
    /// The streams.
    pub streams: Vec<Stream>,
    /// When arrivals stop, ns.
    pub duration_ns: u64,
    /// Arrivals before this are not measured, ns.
    pub warmup_ns: u64,
    /// Seed of the jitter and sector draws.
    pub seed: u64,
}

/// Measurements of the streams sharing one label.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassOutcome {
    /// The label.
    pub label: &'static str,
    /// Latencies of the measured requests, sorted, ns.
    pub latencies_ns: Vec<u64>,
    /// Measured requests that had a deadline.
    pub with_deadline: u64,
    /// Of those, completed late.
    pub misses: u64,
    /// Bytes completed inside the measurement window.
    pub window_bytes: u64,
}

impl ClassOutcome {
    /// Exact quantile `num/den` of the latencies, ns.
    pub fn quantile(&self, num: u64, den: u64) -> u64 {
        if self.latencies_ns.is_empty() || den == 0 {
            return 0;
        }
        let n = self.latencies_ns.len() as u64;
        let rank = (n * num.min(den)).div_ceil(den).max(1);
        self.latencies_ns[(rank - 1) as usize]
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Per label, in the order labels first appear in the scenario.
    pub classes: Vec<ClassOutcome>,
    /// Length of the measurement window, ns.
    pub window_ns: u64,
    /// Device idle while the scheduler held requests, ns (in the window),
    /// not counting [`Outcome::held_wait_ns`].
    pub idle_wait_ns: u64,
    /// Device idle while the scheduler held requests back on purpose and
    /// had said until when ([`Scheduler::next_wakeup`]: APEX's isolation
    /// mode), ns (in the window).
    pub held_wait_ns: u64,
    /// Device serving fewer than its concurrency while the scheduler held
    /// requests, ns (in the window).
    pub underused_wait_ns: u64,
    /// Queues refused by admission control (their streams then ran in an
    /// interactive queue without reservation).
    pub refused_queues: usize,
    /// Submissions refused (should be 0).
    pub refused_submits: u64,
    /// Requests never completed when the events ran out (should be 0).
    pub stranded: usize,
    /// Requests completed in all.
    pub completed: u64,
}

impl Outcome {
    /// Throughput of the window in MB/s (10^6 bytes) over `classes`.
    pub fn mb_s(&self, classes: &[&ClassOutcome]) -> f64 {
        if self.window_ns == 0 {
            return 0.0;
        }
        let bytes: u64 = classes.iter().map(|c| c.window_bytes).sum();
        bytes as f64 * 1000.0 / self.window_ns as f64
    }

    /// The outcome of a label.
    pub fn class(&self, label: &str) -> Option<&ClassOutcome> {
        self.classes.iter().find(|c| c.label == label)
    }
}

/// xorshift64*: small, deterministic.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(usize),
    Done(u64),
    /// The scheduler asked for a batch at this time
    /// ([`Scheduler::next_wakeup`]).
    Wakeup,
}

#[derive(Clone, Copy, Debug)]
struct Info {
    stream: usize,
    arrival: Nanos,
    deadline: Option<Nanos>,
    bytes: u64,
    write: bool,
}

struct StreamState {
    cfg: usize,
    queue: crate::QueueId,
    class: usize,
    next_sector: u64,
    rng: Rng,
}

/// Runs `scenario` with a fresh scheduler of `kind` whose cost model starts
/// from the device's prior.
pub fn simulate(kind: PolicyKind, scenario: &Scenario) -> Outcome {
    let mut s = new_scheduler(
        kind,
        SchedConfig {
            cost: scenario.device.prior(),
            ..SchedConfig::default()
        },
    );
    simulate_with(&mut *s, scenario)
}

/// Runs `scenario` with the given scheduler (fresh, without queues).
pub fn simulate_with(sched: &mut dyn Scheduler, sc: &Scenario) -> Outcome {
    let dev = sc.device;
    let k = dev.concurrency.max(1);
    let mut out = Outcome {
        window_ns: sc.duration_ns.saturating_sub(sc.warmup_ns),
        ..Outcome::default()
    };
    let mut labels: Vec<&'static str> = Vec::new();
    let mut streams: Vec<StreamState> = Vec::new();
    let mut events: BinaryHeap<Reverse<(Nanos, u64, Event)>> = BinaryHeap::new();
    let mut ev_seq = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, t: Nanos, e: Event| {
        events.push(Reverse((t, ev_seq, e)));
        ev_seq += 1;
    };
    for (i, st) in sc.streams.iter().enumerate() {
        let q = match sched.create_queue(st.queue, 0) {
            Ok(q) => q,
            Err(e) => {
                log::info!("sim: stream {i} ({}) queue refused: {e}", st.label);
                out.refused_queues += 1;
                let mut fallback = QueueConfig::interactive();
                fallback.deadline_ns = st.queue.deadline_ns;
                match sched.create_queue(fallback, 0) {
                    Ok(q) => q,
                    Err(_) => continue,
                }
            }
        };
        let class = match labels.iter().position(|l| *l == st.label) {
            Some(c) => c,
            None => {
                labels.push(st.label);
                labels.len() - 1
            }
        };
        let mut rng = Rng::new(sc.seed ^ (i as u64).wrapping_mul(0x1000_0000_01B3));
        let start = rng.below(1 << 30) * 8;
        streams.push(StreamState {
            cfg: i,
            queue: q,
            class,
            next_sector: start,
            rng,
        });
        let idx = streams.len() - 1;
        match st.arrivals {
            Arrivals::Periodic { phase_ns, .. } => push(&mut events, phase_ns, Event::Arrive(idx)),
            Arrivals::Jittered { mean_ns } => {
                let t = streams[idx].rng.below(mean_ns.max(1));
                push(&mut events, t, Event::Arrive(idx));
            }
            Arrivals::ClosedLoop { depth } => {
                for _ in 0..depth {
                    push(&mut events, 0, Event::Arrive(idx));
                }
            }
        }
    }
    out.classes = labels
        .iter()
        .map(|l| ClassOutcome {
            label: l,
            ..ClassOutcome::default()
        })
        .collect();

    let mut infos: BTreeMap<u64, Info> = BTreeMap::new();
    let mut device_fifo: VecDeque<u64> = VecDeque::new();
    let mut busy = 0usize;
    let mut on_ring = 0usize;
    let mut next_tag = 0u64;
    let mut last_t = 0u64;
    let mut batch: Vec<u64> = Vec::new();
    let mut wake_at: Option<Nanos> = None;
    let (w0, w1) = (sc.warmup_ns, sc.duration_ns);

    while let Some(Reverse((t, _, ev))) = events.pop() {
        // Idle and under-use accounting over [last_t, t] clipped to the window.
        let (a, b) = (last_t.max(w0), t.min(w1));
        if b > a && sched.pending() > 0 {
            if busy == 0 {
                // A hold the scheduler announced (with its end) is
                // intentional and bounded; any other idle time is not.
                if sched.next_wakeup().is_some() {
                    out.held_wait_ns += b - a;
                } else {
                    out.idle_wait_ns += b - a;
                }
            }
            if busy < k {
                out.underused_wait_ns += b - a;
            }
        }
        last_t = t;
        let mut arrive = |s: usize,
                          t: Nanos,
                          sched: &mut dyn Scheduler,
                          streams: &mut Vec<StreamState>,
                          infos: &mut BTreeMap<u64, Info>,
                          out: &mut Outcome| {
            let Some(st) = streams.get_mut(s) else { return };
            let Some(cfg) = sc.streams.get(st.cfg) else {
                return;
            };
            let sectors = cfg.bytes.div_ceil(512).max(1);
            let sector = if cfg.sequential {
                let x = st.next_sector;
                st.next_sector = x.wrapping_add(sectors);
                x
            } else {
                st.rng.below(1 << 30) * 8
            };
            let deadline = cfg.deadline_ns.map(|d| t.saturating_add(d));
            let tag = next_tag;
            next_tag += 1;
            let req = Request {
                queue: st.queue,
                op: cfg.op,
                sector,
                bytes: cfg.bytes,
                deadline,
                tag,
            };
            match sched.submit(req, t) {
                Ok(()) => {
                    let deadline =
                        deadline.or_else(|| cfg.queue.deadline_ns.map(|d| t.saturating_add(d)));
                    infos.insert(
                        tag,
                        Info {
                            stream: s,
                            arrival: t,
                            deadline,
                            bytes: cfg.bytes,
                            write: cfg.op.is_write(),
                        },
                    );
                }
                Err(e) => {
                    log::warn!("sim: {e}");
                    out.refused_submits += 1;
                }
            }
        };
        match ev {
            Event::Arrive(s) => {
                if t < w1 {
                    arrive(s, t, sched, &mut streams, &mut infos, &mut out);
                    match streams
                        .get(s)
                        .and_then(|st| sc.streams.get(st.cfg))
                        .map(|c| c.arrivals)
                    {
                        Some(Arrivals::Periodic { period_ns, .. }) => push(
                            &mut events,
                            t.saturating_add(period_ns.max(1)),
                            Event::Arrive(s),
                        ),
                        Some(Arrivals::Jittered { mean_ns }) => {
                            let m = mean_ns.max(2);
                            let dt = m / 2 + streams[s].rng.below(m);
                            push(&mut events, t.saturating_add(dt.max(1)), Event::Arrive(s))
                        }
                        _ => {}
                    }
                }
            }
            Event::Done(tag) => {
                busy -= 1;
                on_ring -= 1;
                if let Err(e) = sched.complete(tag, t) {
                    log::error!("sim: completion refused: {e}");
                }
                out.completed += 1;
                if let Some(info) = infos.remove(&tag) {
                    let class = streams[info.stream].class;
                    let c = &mut out.classes[class];
                    if info.arrival >= w0 && info.arrival < w1 {
                        c.latencies_ns.push(t - info.arrival);
                        if let Some(d) = info.deadline {
                            c.with_deadline += 1;
                            if t > d {
                                c.misses += 1;
                            }
                        }
                    }
                    if t >= w0 && t < w1 {
                        c.window_bytes += info.bytes;
                    }
                    if t < w1
                        && matches!(
                            streams
                                .get(info.stream)
                                .and_then(|st| sc.streams.get(st.cfg))
                                .map(|c| c.arrivals),
                            Some(Arrivals::ClosedLoop { .. })
                        )
                    {
                        arrive(info.stream, t, sched, &mut streams, &mut infos, &mut out);
                    }
                }
            }
            Event::Wakeup => {
                if wake_at == Some(t) {
                    wake_at = None;
                }
            }
        }
        // The frontend fills the ring, and the device starts what it can.
        let room = dev.ring_slots.saturating_sub(on_ring);
        batch.clear();
        sched.build_batch_into(t, room, &mut batch);
        for &tag in &batch {
            device_fifo.push_back(tag);
            on_ring += 1;
        }
        // The frontend honours the scheduler's wake-up: one event at the
        // earliest time asked for.
        if let Some(w) = sched.next_wakeup() {
            let w = w.max(t.saturating_add(1));
            if wake_at.is_none_or(|x| w < x || x <= t) {
                wake_at = Some(w);
                push(&mut events, w, Event::Wakeup);
            }
        }
        while busy < k {
            let next = match dev.order {
                DeviceOrder::Ring => device_fifo.pop_front(),
                DeviceOrder::WritesFirst => {
                    let w = device_fifo
                        .iter()
                        .position(|t| infos.get(t).is_some_and(|i| i.write));
                    match w {
                        Some(i) => device_fifo.remove(i),
                        None => device_fifo.pop_front(),
                    }
                }
            };
            let Some(tag) = next else {
                break;
            };
            let bytes = infos.get(&tag).map_or(0, |i| i.bytes);
            busy += 1;
            push(
                &mut events,
                t.saturating_add(dev.service_ns(bytes)),
                Event::Done(tag),
            );
        }
    }
    out.stranded = sched.pending() + sched.in_flight();
    for c in &mut out.classes {
        c.latencies_ns.sort_unstable();
    }
    out
}

/// Options of a full simulated bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// The device.
    pub device: DeviceModel,
    /// Simulated length of each run, ns.
    pub duration_ns: u64,
    /// W1's real-time loads, percent of capacity.
    pub loads: &'static [u64],
    /// Seed.
    pub seed: u64,
}

impl SimOptions {
    /// 10 s per run, loads 10 % to 90 % in steps of 10.
    pub fn full() -> Self {
        Self {
            device: DeviceModel::default(),
            duration_ns: 10_000 * MS,
            loads: &[10, 20, 30, 40, 50, 60, 70, 80, 90],
            seed: 1,
        }
    }

    /// 2 s per run, loads 10, 50 and 90 %.
    pub fn quick() -> Self {
        Self {
            duration_ns: 2_000 * MS,
            loads: &[10, 50, 90],
            ..Self::full()
        }
    }
}

/// W1's real-time stream: 256 KiB reads every 20 ms, deadline one period.
pub const W1_PERIOD_NS: u64 = 20 * MS;
/// W1's read size.
pub const W1_READ_BYTES: u64 = 256 * KIB;
/// The bulk job of W1 to W3: 1 MiB sequential writes, 32 outstanding.
pub const BULK_BYTES: u64 = MIB;
/// The bulk job's depth.
pub const BULK_DEPTH: usize = 32;

fn bulk_stream(label: &'static str) -> Stream {
    Stream {
        label,
        queue: QueueConfig::background(),
        op: Op::Write,
        bytes: BULK_BYTES,
        arrivals: Arrivals::ClosedLoop { depth: BULK_DEPTH },
        deadline_ns: None,
        sequential: true,
    }
}

fn scenario(opts: &SimOptions, streams: Vec<Stream>) -> Scenario {
    Scenario {
        device: opts.device,
        streams,
        duration_ns: opts.duration_ns,
        warmup_ns: opts.duration_ns / 10,
        seed: opts.seed,
    }
}

/// Number of W1 readers for `load_pct` percent of capacity.
pub fn w1_readers(device: &DeviceModel, load_pct: u64) -> u64 {
    let per_reader = device.amortized_ns(W1_READ_BYTES).max(1);
    (load_pct * W1_PERIOD_NS / 100 / per_reader).max(1)
}

/// W1, deadline streams: periodic real-time readers (256 KiB every 20 ms,
/// deadline one period, phases spread over the period, one real-time queue
/// each with a reservation of exactly its need) beside a bulk writer (1 MiB,
/// depth 32, background). The number of readers sets the real-time load.
pub fn w1(opts: &SimOptions, load_pct: u64) -> Scenario {
    let d = opts.device;
    let n = w1_readers(&d, load_pct);
    let cost = d.prior().base_ns[0] + W1_READ_BYTES * d.prior().ps_per_byte[0] / 1000;
    let rate = cost * (1_000_000_000 / W1_PERIOD_NS);
    let mut streams: Vec<Stream> = (0..n)
        .map(|i| Stream {
            label: "rt",
            queue: QueueConfig::real_time(
                W1_PERIOD_NS,
                Reservation {
                    rate_per_sec: rate,
                    depth: 2 * cost,
                },
            ),
            op: Op::Read,
            bytes: W1_READ_BYTES,
            arrivals: Arrivals::Periodic {
                period_ns: W1_PERIOD_NS,
                phase_ns: i * W1_PERIOD_NS / n,
            },
            deadline_ns: None,
            sequential: false,
        })
        .collect();
    streams.push(bulk_stream("bulk"));
    scenario(opts, streams)
}

/// W2's latency-critical reads: 4 KiB random, 2000 per second (jittered),
/// deadline 2 ms.
pub const W2_LC_MEAN_NS: u64 = 500 * US;
/// W2's latency-critical deadline.
pub const W2_LC_DEADLINE_NS: u64 = 2 * MS;

/// W2, isolation: 4 KiB random reads at a fixed rate in a real-time queue
/// (the latency-critical class, reserved at twice its need), beside the
/// bulk writer (`with_bulk`) or alone.
pub fn w2(opts: &SimOptions, with_bulk: bool) -> Scenario {
    let d = opts.device;
    let prior = d.prior();
    let cost = prior.base_ns[0] + 4 * KIB * prior.ps_per_byte[0] / 1000;
    let per_sec = 1_000_000_000 / W2_LC_MEAN_NS;
    let mut streams = vec![Stream {
        label: "lc",
        queue: QueueConfig::real_time(
            W2_LC_DEADLINE_NS,
            Reservation {
                rate_per_sec: 2 * cost * per_sec,
                depth: 4 * cost,
            },
        ),
        op: Op::Read,
        bytes: 4 * KIB,
        arrivals: Arrivals::Jittered {
            mean_ns: W2_LC_MEAN_NS,
        },
        deadline_ns: None,
        sequential: false,
    }];
    if with_bulk {
        streams.push(bulk_stream("bulk"));
    }
    scenario(opts, streams)
}

/// W3's real-time stream: 64 KiB reads at 10 % of capacity (jittered),
/// deadline 10 ms.
pub const W3_READ_BYTES: u64 = 64 * KIB;
/// W3's deadline.
pub const W3_DEADLINE_NS: u64 = 10 * MS;

/// W3, work conservation: a real-time queue reserved `reserved_pct` of
/// capacity that uses 10 %, beside the bulk writer (background, label
/// `be`). The bench runs 50 % (used at a fifth) and 5 % and 20 % (twice too
/// small and twice too large).
pub fn w3(opts: &SimOptions, reserved_pct: u64) -> Scenario {
    let d = opts.device;
    let per_req = d.amortized_ns(W3_READ_BYTES).max(1);
    // 10 % of 10^9 units per second.
    let mean_ns = per_req * 10;
    let rate = reserved_pct * 10_000_000;
    let streams = vec![
        Stream {
            label: "rt",
            queue: QueueConfig::real_time(
                W3_DEADLINE_NS,
                Reservation {
                    rate_per_sec: rate.max(1),
                    depth: (rate / 100).max(per_req),
                },
            ),
            op: Op::Read,
            bytes: W3_READ_BYTES,
            arrivals: Arrivals::Jittered { mean_ns },
            deadline_ns: None,
            sequential: false,
        },
        bulk_stream("be"),
    ];
    scenario(opts, streams)
}

/// One line of the bench's results.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// `POLICY-wN-CLASS`.
    pub name: String,
    /// Median latency, µs (0 for `total`).
    pub p50_us: f64,
    /// 99th percentile latency, µs (0 for `total`).
    pub p99_us: f64,
    /// Measured requests.
    pub completed: u64,
    /// Deadline misses.
    pub misses: u64,
    /// Misses over requests with a deadline.
    pub miss_ratio: f64,
    /// Throughput, MB/s.
    pub mb_s: f64,
    /// Device idle while requests waited, µs (`total` entries), not
    /// counting `held_wait_us`.
    pub idle_wait_us: f64,
    /// Device idle while the scheduler held requests back on purpose, with
    /// a wake-up time (APEX's isolation mode), µs (`total` entries).
    pub held_wait_us: f64,
    /// Device below its concurrency while requests waited, µs (`total`
    /// entries).
    pub underused_wait_us: f64,
    /// Queues refused by admission control (`total` entries).
    pub refused_queues: usize,
}

/// Entries of one run: one per label, then `PREFIX-total`.
pub fn entries(prefix: &str, o: &Outcome) -> Vec<Entry> {
    let mut v: Vec<Entry> = o
        .classes
        .iter()
        .map(|c| Entry {
            name: format!("{prefix}-{}", c.label),
            p50_us: c.quantile(1, 2) as f64 / 1000.0,
            p99_us: c.quantile(99, 100) as f64 / 1000.0,
            completed: c.latencies_ns.len() as u64,
            misses: c.misses,
            miss_ratio: if c.with_deadline == 0 {
                0.0
            } else {
                c.misses as f64 / c.with_deadline as f64
            },
            mb_s: o.mb_s(&[c]),
            idle_wait_us: 0.0,
            held_wait_us: 0.0,
            underused_wait_us: 0.0,
            refused_queues: 0,
        })
        .collect();
    let all: Vec<&ClassOutcome> = o.classes.iter().collect();
    let with_deadline: u64 = o.classes.iter().map(|c| c.with_deadline).sum();
    let misses: u64 = o.classes.iter().map(|c| c.misses).sum();
    v.push(Entry {
        name: format!("{prefix}-total"),
        p50_us: 0.0,
        p99_us: 0.0,
        completed: o.classes.iter().map(|c| c.latencies_ns.len() as u64).sum(),
        misses,
        miss_ratio: if with_deadline == 0 {
            0.0
        } else {
            misses as f64 / with_deadline as f64
        },
        mb_s: o.mb_s(&all),
        idle_wait_us: o.idle_wait_ns as f64 / 1000.0,
        held_wait_us: o.held_wait_ns as f64 / 1000.0,
        underused_wait_us: o.underused_wait_ns as f64 / 1000.0,
        refused_queues: o.refused_queues,
    });
    v
}

/// The whole simulated bench (W1 to W3) for `policies`. W1's run at 90 %
/// load is also given as `POLICY-w1-total`.
pub fn run_all(opts: &SimOptions, policies: &[PolicyKind]) -> Vec<Entry> {
    let mut v = Vec::new();
    for &p in policies {
        let name = p.name();
        for &load in opts.loads {
            let o = simulate(p, &w1(opts, load));
            let es = entries(&format!("{name}-w1-{load}"), &o);
            if load == 90 {
                if let Some(t) = es.iter().find(|e| e.name.ends_with("-total")) {
                    let mut t = t.clone();
                    t.name = format!("{name}-w1-total");
                    v.push(t);
                }
            }
            v.extend(es);
        }
        v.extend(entries(
            &format!("{name}-w2"),
            &simulate(p, &w2(opts, true)),
        ));
        let alone = simulate(p, &w2(opts, false));
        for mut e in entries(&format!("{name}-w2-alone"), &alone) {
            if !e.name.ends_with("-total") {
                v.push(e);
            } else {
                e.name = format!("{name}-w2-alone-total");
                v.push(e);
            }
        }
        for r in [50, 5, 20] {
            v.extend(entries(
                &format!("{name}-w3-r{r}"),
                &simulate(p, &w3(opts, r)),
            ));
        }
    }
    v
}

/// A text table of entries.
pub fn table(entries: &[Entry]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:>10} {:>10} {:>8} {:>8} {:>7} {:>9} {:>10} {:>10} {:>10}",
        "entry",
        "p50 us",
        "p99 us",
        "done",
        "misses",
        "miss %",
        "MB/s",
        "idle us",
        "held us",
        "under us"
    );
    for e in entries {
        let _ = writeln!(
            s,
            "{:<24} {:>10.1} {:>10.1} {:>8} {:>8} {:>7.2} {:>9.1} {:>10.0} {:>10.0} {:>10.0}",
            e.name,
            e.p50_us,
            e.p99_us,
            e.completed,
            e.misses,
            e.miss_ratio * 100.0,
            e.mb_s,
            e.idle_wait_us,
            e.held_wait_us,
            e.underused_wait_us
        );
    }
    s
}

/// Entries as JSON: `{"results":[{"name":..,"p50_us":..,...}]}`.
pub fn json(entries: &[Entry]) -> String {
    let mut s = String::from("{\"results\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"name\":\"{}\",\"p50_us\":{:.3},\"p99_us\":{:.3},\"completed\":{},\"misses\":{},\
             \"miss_ratio\":{:.6},\"mb_s\":{:.3},\"idle_wait_us\":{:.3},\"held_wait_us\":{:.3},\
             \"underused_wait_us\":{:.3},\"refused_queues\":{}}}",
            e.name,
            e.p50_us,
            e.p99_us,
            e.completed,
            e.misses,
            e.miss_ratio,
            e.mb_s,
            e.idle_wait_us,
            e.held_wait_us,
            e.underused_wait_us,
            e.refused_queues
        );
    }
    s.push_str("]}");
    s
}

/// W4's hook: the scheduler's own cost per request, measured with the
/// caller's clock (ns; the bench passes a monotonic clock, tests a fake
/// one). Runs `requests` requests through `sched` in rounds of `ring_slots`:
/// submit a ring's worth (in three queues: real-time, interactive,
/// background), build batches until all are out, complete them all. Returns
/// the clock's ns per request. The scheduler should be fresh.
///
/// The clock starts after a warm-up of [`OVERHEAD_WARMUP_RINGS`] rings' worth
/// of requests through the same calls, unmeasured: the scheduler's tables
/// then have the size a running frontend's have, and the figure is the
/// steady state's (a frontend creates its scheduler once).
pub fn overhead(
    sched: &mut dyn Scheduler,
    requests: u64,
    ring_slots: usize,
    clock: &mut dyn FnMut() -> u64,
) -> Result<f64, crate::Error> {
    let slots = ring_slots.max(1) as u64;
    let qs = [
        sched.create_queue(
            QueueConfig::real_time(10 * MS, Reservation::share_permille(100, 10 * MS)),
            0,
        )?,
        sched.create_queue(QueueConfig::interactive(), 0)?,
        sched.create_queue(QueueConfig::background(), 0)?,
    ];
    let mut batch = Vec::with_capacity(ring_slots);
    let mut sim_now = 0u64;
    let mut tag = 0u64;
    let warmup = slots.saturating_mul(OVERHEAD_WARMUP_RINGS);
    overhead_rounds(
        sched,
        &qs,
        warmup,
        ring_slots,
        &mut batch,
        &mut sim_now,
        &mut tag,
    )?;
    let start = clock();
    overhead_rounds(
        sched,
        &qs,
        requests,
        ring_slots,
        &mut batch,
        &mut sim_now,
        &mut tag,
    )?;
    let elapsed = clock().saturating_sub(start);
    Ok(elapsed as f64 / requests.max(1) as f64)
}

/// Rings' worth of requests [`overhead`] runs before it starts the clock.
pub const OVERHEAD_WARMUP_RINGS: u64 = 8;

/// `requests` requests through `sched` in rounds of a ring's worth.
fn overhead_rounds(
    sched: &mut dyn Scheduler,
    qs: &[crate::QueueId; 3],
    requests: u64,
    ring_slots: usize,
    batch: &mut Vec<u64>,
    sim_now: &mut u64,
    tag: &mut u64,
) -> Result<(), crate::Error> {
    let slots = ring_slots.max(1) as u64;
    let end = tag.saturating_add(requests);
    while *tag < end {
        let round = slots.min(end - *tag);
        for i in 0..round {
            let q = qs[(*tag % 3) as usize];
            sched
                .submit(
                    Request {
                        queue: q,
                        op: if i % 2 == 0 { Op::Read } else { Op::Write },
                        sector: *tag * 8,
                        bytes: 4096,
                        deadline: None,
                        tag: *tag,
                    },
                    *sim_now,
                )
                .map_err(|e| e.error)?;
            *tag += 1;
        }
        batch.clear();
        while sched.pending() > 0 {
            if sched.build_batch_into(*sim_now, ring_slots.max(1), batch) == 0 {
                break;
            }
        }
        *sim_now += 10 * US;
        for &t in batch.iter() {
            sched.complete(t, *sim_now)?;
        }
        // Whatever a policy held back goes in the next round.
        while sched.pending() > 0 {
            batch.clear();
            *sim_now += 10 * US;
            if sched.build_batch_into(*sim_now, ring_slots.max(1), batch) == 0 {
                break;
            }
            for &t in batch.iter() {
                sched.complete(t, *sim_now)?;
            }
        }
    }
    Ok(())
}
