//! The simulated harness: `iosched::sim`'s device model and workloads W1
//! to W3 in simulated time, and W4, the scheduler's own cost per request
//! on the real clock (`iosched::sim::overhead`), against no scheduler.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use iosched::sim::{self, DeviceModel, Scenario, SimOptions};
use iosched::{
    Completion, CostModel, CostPrior, Error, Nanos, PolicyKind, QueueConfig, QueueId, QueueView,
    Removal, Request, Scheduler, SubmitError,
};

use super::workload::{ClassMeasure, Measured};
use crate::harness::{Recorder, Throughput};

/// W1's real-time loads in a quick run, percent.
pub const LOADS_QUICK: [u64; 3] = [10, 50, 90];
/// W1's real-time loads in a full run, percent.
pub const LOADS_FULL: [u64; 9] = [10, 20, 30, 40, 50, 60, 70, 80, 90];
/// W3's reservations, percent of capacity (the stream uses 10 %): 50 %,
/// then twice too small and twice too large.
pub const W3_RESERVATIONS: [u64; 3] = [50, 5, 20];

/// A simulated workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimWorkload {
    /// W1 at this real-time load, percent.
    W1 {
        /// Offered real-time load, percent of capacity.
        load_pct: u64,
    },
    /// W2 with the bulk job, or the latency-critical reads alone.
    W2 {
        /// With the bulk job.
        bulk: bool,
    },
    /// W3 with this reservation, percent of capacity.
    W3 {
        /// The real-time queue's reservation, percent.
        reserved_pct: u64,
    },
}

impl SimWorkload {
    /// The entry-name part after the policy: `w1-90`, `w2`, `w2-alone`,
    /// `w3-r50`.
    pub fn prefix(self) -> String {
        match self {
            SimWorkload::W1 { load_pct } => format!("w1-{load_pct}"),
            SimWorkload::W2 { bulk: true } => "w2".into(),
            SimWorkload::W2 { bulk: false } => "w2-alone".into(),
            SimWorkload::W3 { reserved_pct } => format!("w3-r{reserved_pct}"),
        }
    }

    /// Its class labels, in order.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            SimWorkload::W1 { .. } => &["rt", "bulk"],
            SimWorkload::W2 { bulk: true } => &["lc", "bulk"],
            SimWorkload::W2 { bulk: false } => &["lc"],
            SimWorkload::W3 { .. } => &["rt", "be"],
        }
    }

    /// Every simulated workload of a run with these W1 loads.
    pub fn all(loads: &[u64]) -> Vec<SimWorkload> {
        let mut v: Vec<SimWorkload> = loads
            .iter()
            .map(|&load_pct| SimWorkload::W1 { load_pct })
            .collect();
        v.push(SimWorkload::W2 { bulk: true });
        v.push(SimWorkload::W2 { bulk: false });
        v.extend(
            W3_RESERVATIONS
                .iter()
                .map(|&reserved_pct| SimWorkload::W3 { reserved_pct }),
        );
        v
    }

    /// `iosched::sim`'s scenario, `warmup_ms` then `measure_ms` long.
    pub fn scenario(self, warmup_ms: u64, measure_ms: u64, seed: u64) -> Scenario {
        let opts = SimOptions {
            device: DeviceModel::default(),
            duration_ns: (warmup_ms + measure_ms) * 1_000_000,
            loads: &[],
            seed,
        };
        let mut sc = match self {
            SimWorkload::W1 { load_pct } => sim::w1(&opts, load_pct),
            SimWorkload::W2 { bulk } => sim::w2(&opts, bulk),
            SimWorkload::W3 { reserved_pct } => sim::w3(&opts, reserved_pct),
        };
        sc.warmup_ns = warmup_ms * 1_000_000;
        sc
    }
}

/// The simulated device, for the setup column.
pub fn device_setup() -> String {
    let d = DeviceModel::default();
    format!(
        "simulated device: {} us + {} ps/byte per request, {} at once, {}-slot ring",
        d.base_ns / 1000,
        d.ps_per_byte,
        d.concurrency,
        d.ring_slots
    )
}

/// Simulates `w` under `kind`.
pub fn simulate(
    kind: PolicyKind,
    w: SimWorkload,
    warmup_ms: u64,
    measure_ms: u64,
    seed: u64,
) -> Measured {
    let o = sim::simulate(kind, &w.scenario(warmup_ms, measure_ms, seed));
    let mut notes = Vec::new();
    if o.stranded > 0 {
        notes.push(format!(
            "{} requests never completed (a scheduler that loses requests)",
            o.stranded
        ));
    }
    if o.refused_submits > 0 {
        notes.push(format!("{} submissions refused", o.refused_submits));
    }
    if o.refused_queues > 0 {
        notes.push(format!(
            "{} queues refused by admission control (their streams ran as interactive)",
            o.refused_queues
        ));
    }
    Measured {
        classes: o
            .classes
            .iter()
            .map(|c| ClassMeasure {
                label: c.label.into(),
                latencies_ns: c.latencies_ns.clone(),
                with_deadline: c.with_deadline,
                misses: c.misses,
                window_bytes: c.window_bytes,
                expected: None,
            })
            .collect(),
        window_ns: o.window_ns,
        idle_wait_ns: Some(o.idle_wait_ns),
        held_wait_ns: Some(o.held_wait_ns),
        underused_wait_ns: Some(o.underused_wait_ns),
        refused_queues: Some(o.refused_queues),
        notes,
    }
}

/// Ring slots of W4's runs: a one-page blkif ring.
pub const W4_RING_SLOTS: usize = 32;
/// Requests per repetition of W4: short (a fraction of a millisecond), so
/// that most repetitions run without the core being taken away on a busy
/// machine, and the median says what the scheduler costs.
pub const W4_REQUESTS: u64 = 4_096;
/// Repetitions of W4 per policy in a quick and in a full run.
pub const W4_REPS_QUICK: usize = 101;
/// See [`W4_REPS_QUICK`].
pub const W4_REPS_FULL: usize = 401;

/// The calling thread's CPU time, ns (`CLOCK_THREAD_CPUTIME_ID`): time
/// the thread ran, without the time other processes had the core.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call;
    // clock_gettime writes only into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// What W4 measured for one policy: per repetition, ns per request on both
/// clocks, summarised by quartiles.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overhead {
    /// Each repetition's ns per request on the monotonic clock.
    pub wall: Vec<f64>,
    /// Each repetition's ns per request on the thread's CPU-time clock
    /// (no time lost to other processes).
    pub cpu: Vec<f64>,
}

/// The `q` quantile (0 to 1) of `v`, nearest rank; 0 when empty.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let i = ((s.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    s[i.min(s.len() - 1)]
}

impl Overhead {
    /// Median ns per request on the monotonic clock.
    pub fn wall_p50(&self) -> f64 {
        quantile(&self.wall, 0.5)
    }
    /// Median ns per request of CPU time.
    pub fn cpu_p50(&self) -> f64 {
        quantile(&self.cpu, 0.5)
    }
}

/// One repetition: a fresh scheduler of `kind` (`None`: [`Passthrough`]),
/// `requests` requests through `sim::overhead` (after its unmeasured
/// warm-up). Returns (monotonic, CPU) ns per request.
fn overhead_rep(
    kind: Option<PolicyKind>,
    requests: u64,
    base: Instant,
) -> Result<(f64, f64), String> {
    let mut s: Box<dyn Scheduler> = match kind {
        Some(k) => iosched::new_scheduler(k, iosched::SchedConfig::default()),
        None => Box::new(Passthrough::default()),
    };
    let mut cpu = [0u64; 2];
    let mut reads = 0usize;
    let mut clock = || {
        // Both clocks at the same two moments: CPU first at the start,
        // last at the end, so the CPU interval lies inside the wall one.
        if reads == 0 {
            cpu[0] = thread_cpu_ns();
            reads = 1;
            base.elapsed().as_nanos() as u64
        } else {
            let t = base.elapsed().as_nanos() as u64;
            cpu[1] = thread_cpu_ns();
            t
        }
    };
    let wall = sim::overhead(&mut *s, requests, W4_RING_SLOTS, &mut clock)
        .map_err(|e| format!("sim::overhead: {e}"))?;
    let cpu_ns = cpu[1].saturating_sub(cpu[0]) as f64 / requests.max(1) as f64;
    Ok((wall, cpu_ns))
}

/// W4 for every policy of `kinds` (`None`: no scheduler), interleaved:
/// repetition after repetition, each policy once in turn (the order
/// rotating), so that a change of the machine's load falls on all of them
/// alike. One unrecorded repetition of each first.
pub fn overhead_all(
    kinds: &[Option<PolicyKind>],
    reps: usize,
    requests: u64,
) -> Result<Vec<Overhead>, String> {
    let base = Instant::now();
    for &k in kinds {
        overhead_rep(k, requests, base)?;
    }
    let mut out = vec![Overhead::default(); kinds.len()];
    for rep in 0..reps {
        for j in 0..kinds.len() {
            let i = (rep + j) % kinds.len();
            let (wall, cpu) = overhead_rep(kinds[i], requests, base)?;
            out[i].wall.push(wall);
            out[i].cpu.push(cpu);
        }
    }
    Ok(out)
}

/// Records one policy's W4 into its entry: each repetition's monotonic
/// ns per request as a sample (the entry's p50 is their median), and the
/// submissions per second at the median.
pub fn record_overhead(o: &Overhead, rec: &mut Recorder) {
    for &ns in &o.wall {
        rec.record(ns.round().max(1.0) as u64);
    }
    let p50 = o.wall_p50();
    rec.throughput(Throughput {
        iops: (p50 > 0.0).then(|| 1e9 / p50),
        ..Throughput::default()
    });
}

/// No scheduler: requests go on the ring in arrival order with no
/// per-queue state, no cost model and no statistics, as a frontend without
/// a scheduler would put them; W4's baseline. (It implements the
/// [`Scheduler`] trait only so that `sim::overhead` drives it through the
/// same calls; it keeps each in-flight request's queue in a hash map, as a
/// frontend keeps a slot's request.)
#[derive(Debug)]
pub struct Passthrough {
    waiting: VecDeque<Request>,
    in_flight: HashMap<u64, QueueId>,
    queues: u32,
    cost: CostModel,
}

impl Default for Passthrough {
    fn default() -> Self {
        Passthrough {
            waiting: VecDeque::new(),
            in_flight: HashMap::new(),
            queues: 0,
            cost: CostModel::new(CostPrior::default()),
        }
    }
}

impl Scheduler for Passthrough {
    fn policy_name(&self) -> &'static str {
        "none"
    }

    fn create_queue(&mut self, config: QueueConfig, _now: Nanos) -> Result<QueueId, Error> {
        config.validate()?;
        self.queues += 1;
        Ok(QueueId(self.queues - 1))
    }

    fn change_queue(&mut self, q: QueueId, config: QueueConfig, _now: Nanos) -> Result<(), Error> {
        config.validate()?;
        if q.0 < self.queues {
            Ok(())
        } else {
            Err(Error::UnknownQueue(q))
        }
    }

    fn remove_queue(&mut self, q: QueueId, _now: Nanos) -> Result<Removal, Error> {
        if q.0 < self.queues {
            Ok(Removal::Removed)
        } else {
            Err(Error::UnknownQueue(q))
        }
    }

    fn submit(&mut self, request: Request, _now: Nanos) -> Result<(), SubmitError> {
        self.waiting.push_back(request);
        Ok(())
    }

    fn build_batch_into(&mut self, _now: Nanos, ring_room: usize, out: &mut Vec<u64>) -> usize {
        let n = ring_room.min(self.waiting.len());
        for r in self.waiting.drain(..n) {
            self.in_flight.insert(r.tag, r.queue);
            out.push(r.tag);
        }
        n
    }

    fn complete(&mut self, tag: u64, _now: Nanos) -> Result<Completion, Error> {
        let queue = self.in_flight.remove(&tag).ok_or(Error::UnknownTag(tag))?;
        Ok(Completion {
            queue,
            latency_ns: 0,
            lateness_ns: None,
            queue_removed: false,
        })
    }

    fn cancel(&mut self, tag: u64, _now: Nanos) -> Result<QueueId, Error> {
        if let Some(q) = self.in_flight.remove(&tag) {
            return Ok(q);
        }
        let i = self
            .waiting
            .iter()
            .position(|r| r.tag == tag)
            .ok_or(Error::UnknownTag(tag))?;
        self.waiting
            .remove(i)
            .map(|r| r.queue)
            .ok_or(Error::UnknownTag(tag))
    }

    fn pending(&self) -> usize {
        self.waiting.len()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn queue(&self, _queue: QueueId) -> Option<QueueView<'_>> {
        None
    }

    fn queue_ids(&self) -> Vec<QueueId> {
        (0..self.queues).map(QueueId).collect()
    }

    fn cost_model(&self) -> &CostModel {
        &self.cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iosched::Op;

    #[test]
    fn workloads_are_named_as_in_iosched_sim() {
        let names: Vec<String> = SimWorkload::all(&LOADS_QUICK)
            .iter()
            .map(|w| w.prefix())
            .collect();
        assert_eq!(
            names,
            ["w1-10", "w1-50", "w1-90", "w2", "w2-alone", "w3-r50", "w3-r5", "w3-r20"]
        );
    }

    #[test]
    fn scenarios_take_the_rounds_length_and_seed() {
        let sc = SimWorkload::W1 { load_pct: 50 }.scenario(100, 900, 7);
        assert_eq!(
            (sc.warmup_ns, sc.duration_ns, sc.seed),
            (100_000_000, 1_000_000_000, 7)
        );
        let m = simulate(
            PolicyKind::Fifo,
            SimWorkload::W2 { bulk: false },
            20,
            180,
            1,
        );
        assert_eq!(m.classes.len(), 1);
        let lc = m.class("lc").unwrap();
        // 2000 reads a second for 180 ms, jittered: about 360.
        assert!(
            (300..420).contains(&lc.latencies_ns.len()),
            "{}",
            lc.latencies_ns.len()
        );
        assert_eq!(lc.misses, 0);
        assert_eq!(m.idle_wait_ns, Some(0));
    }

    #[test]
    fn passthrough_is_fifo_and_hands_back_what_it_holds() {
        let mut p = Passthrough::default();
        let q = p.create_queue(QueueConfig::background(), 0).unwrap();
        for tag in 0..5 {
            let r = Request {
                queue: q,
                op: Op::Read,
                sector: tag,
                bytes: 4096,
                deadline: None,
                tag,
            };
            p.submit(r, 0).unwrap();
        }
        assert_eq!(p.build_batch(0, 3), vec![0, 1, 2]);
        assert_eq!((p.pending(), p.in_flight()), (2, 3));
        assert_eq!(p.complete(1, 5).unwrap().queue, q);
        assert_eq!(p.complete(1, 5), Err(Error::UnknownTag(1)));
        assert_eq!(p.cancel(4, 5), Ok(q));
        assert_eq!(p.cancel(0, 5), Ok(q));
        assert_eq!(p.build_batch(0, 8), vec![3]);
        assert_eq!(
            p.remove_queue(QueueId(9), 0),
            Err(Error::UnknownQueue(QueueId(9)))
        );
    }

    #[test]
    fn overhead_is_interleaved_and_recorded_per_repetition() {
        let kinds = [None, Some(PolicyKind::Apex)];
        let all = overhead_all(&kinds, 5, 2_000).unwrap();
        assert_eq!(all.len(), 2);
        for o in &all {
            assert_eq!((o.wall.len(), o.cpu.len()), (5, 5));
            assert!(o.wall_p50() > 0.0 && o.cpu_p50() > 0.0, "{o:?}");
            // CPU time never exceeds the wall time it was taken in (to the
            // clocks' resolution).
            for (w, c) in o.wall.iter().zip(&o.cpu) {
                assert!(*c <= *w * 1.2 + 50.0, "{o:?}");
            }
        }
        let mut rec = Recorder::new();
        record_overhead(&all[1], &mut rec);
        assert_eq!(rec.count(), 5);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.25), 2.0);
    }
}
