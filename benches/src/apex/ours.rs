//! Our real path: the blkfront driver (completion API, buffers from its
//! pool of persistent grants, sleeping on its event channel between
//! arrivals) with an iosched policy on its queue
//! (`apex-real`: APEX, `fifo-real`: FIFO), through the hosted blkback
//! (io_uring, `O_DIRECT`) onto the same loop device the Linux peers use,
//! its kernel scheduler set to `none`. Both domains run in this process on
//! the hosted platform: the frontend on the bench's thread, blkback's queue
//! worker on its own.
//!
//! The scheduler's cost model starts from the device's calibration (the
//! amortized time of 64 KiB and 256 KiB reads at depth 32, see
//! [`device_prior`]) and follows the completions from there. Each stream
//! of the workload gets a scheduler queue: the real-time (or
//! latency-critical) stream a real-time queue with its deadline and a
//! reservation of twice its need at the cost model's estimate (refused by
//! admission control: an interactive queue with the same deadline, noted),
//! the bulk stream a background queue. FIFO takes the same queues and
//! serves them in arrival order.
//!
//! The open-loop streams (W1's real-time readers, W2's latency-critical
//! reads, W3's real-time reads) are issued as fio issues the Linux peers'
//! ([`Pacing::Fio`], [`FioPacer`]): the same schedule (evenly spaced or
//! Poisson, each request's time the previous one's plus the next gap),
//! with fio's rate loop (ahead of schedule, wait for the stream's requests
//! in flight, then sleep to the next one; behind, issue at once), and the
//! latency counted from the issue to the completion taken, as fio's `lat`.
//! A note gives the same requests' latencies from their scheduled times,
//! which fio cannot. `APEXBENCH_PACING=open` issues them strictly open
//! loop instead (each at its scheduled time whatever is in flight, latency
//! from then, also when it waits for buffers: an open-loop stream holds
//! buffers for [`OPEN_LOOP_DEPTH`] requests, as fio's iodepth, or for 4096
//! pages when fewer: W1's 256 KiB reads get 64); the Linux peers' figures
//! are then not measured the same way.
//!
//! Every request carries its absolute deadline, counted from its issue
//! (from its scheduled time under `APEXBENCH_PACING=open`). The frontend
//! sleeps on its event channel whenever nothing completed, until the next
//! issue or response, and takes blkfront's device events
//! ([`take_events`]): on a shared machine a thread that spins or yields in
//! a loop is the one the kernel makes wait, and it takes a core from
//! blkback's worker. Each run notes how long the frontend's thread and
//! blkback's worker ran and waited for a core (`/proc/self/task/*/schedstat`).
//!
//! The scheduler runs inside [`Traced`], which records every request's
//! submission, dispatch and completion and the work in flight at its
//! dispatch: each run writes them to `trace.csv` in its scratch directory
//! and sums them up in a note ([`trace_summary`]). With
//! `APEXBENCH_BREAKDOWN=1` blkback also records each request's steps and
//! the run breaks the real-time reads' time on the ring into them
//! ([`breakdown`], `breakdown.csv`).
//!
//! Not done: the frontend is single-queue and unpinned.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blkfront::{Blkfront, DeviceConfig, DeviceEvent, Io, IoOptions, Mode, Span, Tag};
use grant_tables::Clock;
use grant_tables::DomId;
use hosted::blkback::{BackSteps, Blkback, BlkbackConfig, StepTrace, WaitMode};
use hosted::toolstack::{add_device, DeviceSpec};
use hosted::xenstore::{connect_as, XenstoreDaemon};
use hosted::{HostedHypervisor, HostedPlatform};
use iosched::{
    new_scheduler, Completion, CostModel, CostPrior, Nanos, Op, PolicyKind, QueueConfig, QueueId,
    QueueView, Removal, Request, Reservation, SchedConfig, Scheduler, SubmitError,
};

use super::fio::OPEN_LOOP_DEPTH;
use super::workload::{
    measure_class, stall_note, Arrival, Capacity, Device, Measured, RealPath, RealStream,
    RealWorkload, Workload,
};

const FRONT_PATH: &str = "device/vbd/51712";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// blkfront with one iosched policy: a [`RealPath`].
pub struct BlkfrontPath {
    kind: PolicyKind,
    name: String,
}

impl BlkfrontPath {
    /// The path with `kind` on blkfront's queue (`apex-real`, `fifo-real`).
    pub fn new(kind: PolicyKind) -> Self {
        BlkfrontPath {
            kind,
            name: format!("{}-real", kind.name()),
        }
    }
}

/// The hosted world of one run; removes its directory on drop (after the
/// frontend, which the run drops first).
struct World {
    _back: Blkback,
    /// blkback's per-request steps, when asked for ([`breakdown_on`]).
    steps: Option<Arc<StepTrace>>,
    daemon: XenstoreDaemon,
    hv: HostedHypervisor,
    dir: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The grants blkback may keep mapped: every page the frontend can lend
/// (its buffers and indirect pages for the largest workload, under the
/// 16384 of the grant table). At Linux's default of 1056 the bulk job's
/// 8192 pages would be mapped and unmapped for every request, and the
/// path would move a tenth of what the device can.
const PERSISTENT_GRANTS: usize = 16_384;

fn world(disk: &Path, breakdown: bool) -> Result<(World, HostedPlatform), String> {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("apexbench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(err)?;
    let hv = HostedHypervisor::create(&dir).map_err(err)?;
    let (fe, be) = (DomId(1), DomId(2));
    let front = hv.join(fe).map_err(err)?;
    let back_plat = hv.join(be).map_err(err)?;
    let daemon = XenstoreDaemon::spawn(dir.join("xenstored.sock")).map_err(err)?;
    let mut xs0 = connect_as(daemon.socket(), 0).map_err(err)?;
    let spec = DeviceSpec::new("vbd", fe, be, 51712);
    add_device(&mut xs0, &spec).map_err(err)?;
    let mut config = BlkbackConfig::new(disk);
    config.max_persistent_grants = PERSISTENT_GRANTS;
    config.wait = WaitMode::Event {
        spin: Duration::from_micros(100),
    };
    // blkback's steps on the platform's clock: its epoch is the
    // platform's origin (the frontend's trace uses that clock).
    let steps = breakdown.then(|| {
        let now = Instant::now();
        let origin = now
            .checked_sub(Duration::from_nanos(front.now_ns()))
            .unwrap_or(now);
        Arc::new(StepTrace::new(origin, 1 << 20))
    });
    config.trace = steps.clone();
    let back =
        Blkback::spawn(back_plat, daemon.socket(), &spec.backend_path(), config).map_err(err)?;
    Ok((
        World {
            _back: back,
            steps,
            daemon,
            hv,
            dir,
        },
        front,
    ))
}

/// One stream while it runs.
struct Live {
    queue: QueueId,
    /// Buffer sets not in flight.
    free: Vec<Vec<Span<HostedPlatform>>>,
    /// Arrivals (ns from the start) waiting for a buffer set.
    backlog: VecDeque<u64>,
    /// Next open-loop arrival, ns from the start.
    next_ns: u64,
    rng: u64,
    seq: u64,
    /// `(arrival, done, bytes)` ns from the start: the arrival is the
    /// issue under [`Pacing::Fio`], the scheduled time under
    /// [`Pacing::Open`].
    records: Vec<(u64, u64, u64)>,
    /// `(scheduled, done, bytes)` of the same requests.
    from_schedule: Vec<(u64, u64, u64)>,
    /// Under [`Pacing::Fio`], an open-loop stream's pace.
    pacer: Option<FioPacer>,
    /// Its requests in flight.
    out: usize,
}

impl Live {
    fn rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// How an open-loop stream issues its requests and where their latency
/// counts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// As fio's rate-limited jobs do (the Linux peers' figures come from
    /// fio): see [`FioPacer`]. Latency counts from the issue, as fio's
    /// `lat`. The default: the real path's figures are then measured as
    /// the Linux peers' are.
    Fio,
    /// Strictly open loop: each request arrives at its scheduled time,
    /// whatever is in flight, and its latency counts from then (the
    /// bench's own timer lateness included). `APEXBENCH_PACING=open`.
    Open,
}

/// `APEXBENCH_PACING`: `open` for [`Pacing::Open`], anything else (or
/// unset) [`Pacing::Fio`].
pub fn pacing() -> Pacing {
    match std::env::var("APEXBENCH_PACING")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("open") => Pacing::Open,
        _ => Pacing::Fio,
    }
}

/// fio's rate loop for one job (fio 3.x `rate_ddir` with the default
/// `io_submit_mode=inline`), so that our path issues its open-loop
/// streams at the moments fio would: the schedule is fio's (each
/// request's time is the previous one's plus the next gap, from the
/// start), and right after issuing a request fio looks at the next one's
/// time: already past (behind schedule), it is issued at once; ahead,
/// fio first waits for all of the job's requests in flight
/// (`io_u_quiesce`), then sleeps the time it had to go when it looked,
/// then issues. fio stamps a request's latency from the issue (after the
/// sleep), so neither the wait for the requests in flight nor its own
/// wake-up's lateness counts; with this pacer neither does ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FioPacer {
    /// The next request's scheduled time, ns from the start.
    next: u64,
    state: PaceState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PaceState {
    /// Issue when the scheduled time comes (at once: behind schedule).
    Ready,
    /// Waiting for the job's requests in flight; then sleep this long.
    Quiesce { sleep_ns: u64 },
    /// Sleeping until then.
    Sleep { until: u64 },
}

impl FioPacer {
    /// A job whose first request is due at once (fio's first
    /// `rate_next_io_time` is 0).
    pub fn new() -> Self {
        FioPacer {
            next: 0,
            state: PaceState::Ready,
        }
    }

    /// When the next request is to be issued, ns from the start (perhaps
    /// already past); `None` while the job waits for its requests in
    /// flight.
    pub fn due(&self) -> Option<u64> {
        match self.state {
            PaceState::Ready => Some(self.next),
            PaceState::Quiesce { .. } => None,
            PaceState::Sleep { until } => Some(until),
        }
    }

    /// A request was issued at `now`; `gap` is the gap from its scheduled
    /// time to the next one's. Returns its scheduled time.
    pub fn issued(&mut self, now: u64, gap: u64) -> u64 {
        let scheduled = self.next;
        self.next = self.next.saturating_add(gap);
        self.state = if self.next <= now {
            PaceState::Ready
        } else {
            PaceState::Quiesce {
                sleep_ns: self.next - now,
            }
        };
        scheduled
    }

    /// The job's last request in flight completed at `now`.
    pub fn drained(&mut self, now: u64) {
        if let PaceState::Quiesce { sleep_ns } = self.state {
            self.state = PaceState::Sleep {
                until: now.saturating_add(sleep_ns),
            };
        }
    }
}

impl Default for FioPacer {
    fn default() -> Self {
        Self::new()
    }
}

/// The gap to the next arrival of `a`, ns (`None`: closed loop).
fn gap_ns(a: Arrival, u: u64) -> Option<u64> {
    match a {
        Arrival::Fixed { per_sec } => Some((1e9 / per_sec.max(1e-3)) as u64),
        Arrival::Poisson { per_sec } => {
            // Uniform in (0, 1], then exponential.
            let x = ((u >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            Some((-x.ln() * 1e9 / per_sec.max(1e-3)) as u64)
        }
        Arrival::ClosedLoop { .. } => None,
    }
}

/// Takes blkfront's device events: one left queued makes every
/// [`Blkfront::wait`] return at once (it waits until a completion or an
/// event is queued), and the frontend's loop would spin instead of
/// sleeping: its thread then ran for half the run and took a core from
/// blkback's worker and the loop device (the real path's tail before).
/// An event that ends the device's service is an error.
fn take_events(bf: &mut Blkfront<HostedPlatform>) -> Result<(), String> {
    while let Some(e) = bf.next_event() {
        match e {
            DeviceEvent::Connected { .. } | DeviceEvent::Resized { .. } => {}
            DeviceEvent::FeatureLost(f) => log::warn!("apexbench: blkfront lost {f:?}"),
            other => return Err(format!("blkfront: {other:?} during the run")),
        }
    }
    Ok(())
}

/// Submits one request of stream `s` into one of `l`'s free buffer sets
/// (at the stream's next offset on a disk of `capacity` bytes), its
/// deadline counted from `arrival` (ns of the platform's clock).
fn submit_one(
    bf: &mut Blkfront<HostedPlatform>,
    l: &mut Live,
    s: &RealStream,
    capacity: u64,
    arrival: u64,
) -> Result<Tag, String> {
    let spans = l.free.pop().ok_or("no buffer set")?;
    let blocks = (capacity / s.bytes).max(1);
    let block = if s.sequential {
        l.seq = (l.seq + 1) % blocks;
        l.seq
    } else {
        l.rand() % blocks
    };
    let sector = block * s.bytes / 512;
    let io = if s.write {
        Io::Write { sector, spans }
    } else {
        Io::Read { sector, spans }
    };
    let mut opts = IoOptions::queue(0).class(l.queue);
    if let Some(d) = s.deadline_ns {
        opts = opts.deadline(arrival.saturating_add(d));
    }
    let tag = bf.submit(io, opts).map_err(|r| r.to_string())?;
    l.out += 1;
    Ok(tag)
}

impl RealPath for BlkfrontPath {
    fn name(&self) -> &str {
        &self.name
    }

    fn setup(&self, w: Workload) -> String {
        format!(
            "blkfront (event channel, 1 queue, persistent grants) with {} on its queue, through the hosted blkback (io_uring, O_DIRECT) onto the loop device, kernel scheduler none; cost model started from the device's calibration; {} stream: real-time queue, deadline {} ms times the device-floor scale, reservation twice its need, issued as fio issues its rate jobs and timed from the issue (APEXBENCH_PACING=open: strictly open loop); bulk: background queue",
            self.kind.name(),
            w.labels().first().copied().unwrap_or("rt"),
            w.deadline_ns() / 1_000_000
        )
    }

    fn run(
        &mut self,
        dev: &dyn Device,
        w: &RealWorkload,
        scratch: &Path,
    ) -> Result<Measured, String> {
        let notes = dev.set_scheduler("none", &[])?;
        let (world, plat) = world(dev.path(), breakdown_on())?;
        let result = run_on(self.kind, &world, plat, w, notes, scratch);
        let _ = &world.hv;
        drop(world);
        result
    }
}

fn run_on(
    kind: PolicyKind,
    world: &World,
    plat: HostedPlatform,
    w: &RealWorkload,
    mut notes: Vec<String>,
    scratch: &Path,
) -> Result<Measured, String> {
    let mut xs = connect_as(world.daemon.socket(), 1).map_err(err)?;
    let pace = pacing();
    let sets: Vec<usize> = w
        .streams
        .iter()
        .map(|s| match s.arrival {
            Arrival::ClosedLoop { depth } => depth as usize,
            // At most 4096 pages an open-loop stream (the grant table
            // holds 16384 and the bulk stream takes 8192).
            _ => (OPEN_LOOP_DEPTH as usize).min(4096 / (s.bytes as usize).div_ceil(4096).max(1)),
        })
        .collect();
    let pages: usize = w
        .streams
        .iter()
        .zip(&sets)
        .map(|(s, &n)| n * (s.bytes as usize).div_ceil(4096))
        .sum();
    let mut cfg = DeviceConfig::new(FRONT_PATH);
    // The frontend sleeps on its event channel between arrivals: on a
    // shared machine a thread that spins (or yields in a loop) is the one
    // the kernel makes wait, and every wait lands on the requests' latency.
    cfg.mode = Mode::Events;
    cfg.pool_pages = pages;
    cfg.indirect_pool_pages = sets.iter().sum::<usize>().max(64);
    let mut bf = Blkfront::new(Arc::new(plat), cfg).map_err(err)?;
    match bf.wait_connected(&mut xs, Some(Duration::from_secs(10))) {
        Ok(Some(_)) => {}
        Ok(None) => return Err("blkfront did not connect within 10 s".into()),
        Err(e) => return Err(format!("blkfront: {e}")),
    }
    take_events(&mut bf)?;
    let capacity = bf.capacity_bytes().ok_or("blkfront knows no capacity")?;
    // The scheduler and its queues.
    let prior = device_prior(&w.capacity);
    let config = SchedConfig {
        cost: prior,
        ..SchedConfig::default()
    };
    let mut sched: Box<dyn Scheduler + Send> = match kind {
        PolicyKind::Apex => {
            let mut params = iosched::ApexParams::default();
            if let Some(slack_permille) = slack_permille() {
                notes.push(format!(
                    "{}: APEX's slack share {slack_permille} per mille (APEXBENCH_SLACK_PERMILLE)",
                    w.workload.prefix()
                ));
                params.slack_permille = slack_permille;
            }
            if let Some((on, slow)) = throttle_switch() {
                notes.push(format!(
                    "{}: APEX's best-effort throttle {} (APEXBENCH_THROTTLE)",
                    w.workload.prefix(),
                    match (on, slow) {
                        (false, _) => "off",
                        (true, false) => "on",
                        (true, true) => "on, in slow start",
                    }
                ));
                params.throttle = on;
                params.throttle_slow_start = slow;
            }
            if let Some(a) = adaptive_switch() {
                notes.push(format!(
                    "{}: APEX's adaptive isolation {} (APEXBENCH_ISOLATION)",
                    w.workload.prefix(),
                    match a {
                        None => "off".to_string(),
                        Some(a) => format!(
                            "on: window step {} KiB, open at {} KiB, cut when over {} per mille of the completions pass the guard, held at most {:.1} ms",
                            a.adaptive_step_bytes / 1024,
                            a.adaptive_open_bytes / 1024,
                            a.adaptive_late_permille,
                            a.isolation_max_hold_ns as f64 / 1e6
                        ),
                    }
                ));
                match a {
                    None => params.adaptive_isolation = false,
                    Some(a) => {
                        params.isolation = false;
                        params.adaptive_isolation = true;
                        params.adaptive_step_bytes = a.adaptive_step_bytes;
                        params.adaptive_open_bytes = a.adaptive_open_bytes;
                        params.adaptive_late_permille = a.adaptive_late_permille;
                        params.isolation_max_hold_ns = a.isolation_max_hold_ns;
                        params.isolation_window_ns = a.isolation_window_ns;
                    }
                }
            } else if let Some(iso) = isolation_switch() {
                notes.push(format!(
                    "{}: APEX's isolation mode {} (APEXBENCH_ISOLATION)",
                    w.workload.prefix(),
                    match iso {
                        None => "off".to_string(),
                        Some((cap, hold, window)) => format!(
                            "on: background bytes in flight while a latency-sensitive queue is active at most {cap}, held at most {:.1} ms, anticipation window {:.1} ms",
                            hold as f64 / 1e6,
                            window as f64 / 1e6
                        ),
                    }
                ));
                match iso {
                    None => params.isolation = false,
                    Some((cap, hold, window)) => {
                        params.isolation = true;
                        params.isolation_be_bytes = cap;
                        params.isolation_max_hold_ns = hold;
                        params.isolation_window_ns = window;
                    }
                }
            }
            Box::new(iosched::Apex::new(config, iosched::ApexPolicy::new(params)))
        }
        _ => new_scheduler(kind, config),
    };
    let mut queues = Vec::new();
    for s in &w.streams {
        let config = match (s.real_time, s.deadline_ns, s.arrival.per_sec()) {
            (true, Some(d), Some(rate)) => {
                let op = if s.write { Op::Write } else { Op::Read };
                let need = sched.cost_model().rate_for(op, s.bytes, rate.ceil() as u64);
                let cost = sched.cost_model().rate_for(op, s.bytes, 1);
                QueueConfig::real_time(
                    d,
                    Reservation {
                        rate_per_sec: need.saturating_mul(2).max(1),
                        depth: cost.saturating_mul(4).max(1),
                    },
                )
            }
            (_, Some(d), _) => QueueConfig::interactive().with_deadline(d),
            _ => QueueConfig::background(),
        };
        let q = match sched.create_queue(config, 0) {
            Ok(q) => q,
            // Twice the need is more than admission control grants (a
            // real-time load near the device's capacity): all it grants.
            Err(iosched::Error::AdmissionRefused { available, .. })
                if available > 0 && config.class == iosched::Class::RealTime =>
            {
                notes.push(format!(
                    "{} {}: twice the stream's need was refused by admission control; its real-time queue reserves the {available} units/s granted",
                    w.workload.prefix(),
                    s.label
                ));
                let mut c = config;
                c.reservation.rate_per_sec = available;
                sched.create_queue(c, 0).map_err(err)?
            }
            Err(e) => {
                notes.push(format!(
                    "{} {}: the real-time queue was refused ({e}); it ran as an interactive queue",
                    w.workload.prefix(),
                    s.label
                ));
                let mut c = QueueConfig::interactive();
                c.deadline_ns = s.deadline_ns;
                sched.create_queue(c, 0).map_err(err)?
            }
        };
        queues.push(q);
    }
    let default = *queues.first().ok_or("a workload without streams")?;
    // Buffers.
    let mut live = Vec::new();
    for (i, (s, &n)) in w.streams.iter().zip(&sets).enumerate() {
        let per = (s.bytes as usize).div_ceil(4096);
        let mut free = Vec::with_capacity(n);
        for _ in 0..n {
            let set = (0..per)
                .map(|_| bf.buffer(0).map(Span::whole))
                .collect::<Option<Vec<_>>>()
                .ok_or("blkfront's pool ran out of buffers")?;
            free.push(set);
        }
        let mut l = Live {
            queue: queues[i],
            free,
            backlog: VecDeque::new(),
            next_ns: 0,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0x1000_0000_01B3),
            seq: 0,
            records: Vec::new(),
            from_schedule: Vec::new(),
            pacer: None,
            out: 0,
        };
        if s.arrival.per_sec().is_some() && pace == Pacing::Fio {
            l.pacer = Some(FioPacer::new());
        } else if let Some(g) = gap_ns(s.arrival, l.rand()) {
            l.next_ns = g;
        }
        live.push(l);
    }
    // Every buffer through the backend once before the clock starts, so
    // that blkback maps its grant (persistently) now, as a frontend that
    // has been running a while finds it: the hosted platform's first
    // mapping of the bulk job's thousands of pages takes longer than the
    // warm-up.
    let t = Instant::now();
    prewarm(&mut bf, &mut xs, &mut live)?;
    notes.push(format!(
        "{}: every buffer went through the backend once before the run ({:.0} ms: blkback mapped its grants)",
        w.workload.prefix(),
        t.elapsed().as_secs_f64() * 1e3
    ));
    if let Some(st) = &world.steps {
        // The pre-warming reads are not the run's.
        st.take();
    }
    let (sched, trace) = Traced::new(sched);
    bf.set_scheduler(0, Box::new(sched), default)
        .map_err(|_| "blkfront's queue was not idle for the scheduler".to_string())?;
    let waits0 = cpu_waits();
    let end_ns = (w.warmup_ms + w.measure_ms) * 1_000_000;
    // Per tag: (stream, the request's stamp, its scheduled time).
    let mut inflight: HashMap<Tag, (usize, u64, u64)> = HashMap::new();
    let t0 = Instant::now();
    // The platform's clock (the scheduler's) at the run's start: deadlines
    // count from each request's arrival, not from its submission.
    let plat0 = bf.platform().now_ns();
    let now_ns = |t0: Instant| t0.elapsed().as_nanos() as u64;
    let drain_deadline = end_ns + 30_000_000_000;
    loop {
        let now = now_ns(t0);
        if now >= end_ns && inflight.is_empty() {
            break;
        }
        if now >= drain_deadline {
            return Err(format!(
                "{} requests still in flight 30 s after the run's end",
                inflight.len()
            ));
        }
        // Arrivals.
        for (i, s) in w.streams.iter().enumerate() {
            let l = &mut live[i];
            if let Some(mut p) = l.pacer {
                // fio's pace: a request when it is due and a buffer set is
                // free (fio's depth), stamped as it goes.
                while !l.free.is_empty() {
                    let now = now_ns(t0);
                    if now >= end_ns || p.due().is_none_or(|d| d > now) {
                        break;
                    }
                    let u = l.rand();
                    let scheduled = p.issued(now, gap_ns(s.arrival, u).unwrap_or(1).max(1));
                    let tag = submit_one(&mut bf, l, s, capacity, plat0.saturating_add(now))?;
                    inflight.insert(tag, (i, now, scheduled));
                }
                l.pacer = Some(p);
                continue;
            }
            if now < end_ns {
                match s.arrival {
                    Arrival::ClosedLoop { .. } => {
                        while l.free.len() > l.backlog.len() {
                            l.backlog.push_back(now);
                        }
                    }
                    a => {
                        while l.next_ns <= now && l.next_ns < end_ns {
                            l.backlog.push_back(l.next_ns);
                            let u = l.rand();
                            l.next_ns += gap_ns(a, u).unwrap_or(1).max(1);
                        }
                    }
                }
            } else {
                l.backlog.clear();
            }
            while let (Some(&arrival), false) = (l.backlog.front(), l.free.is_empty()) {
                l.backlog.pop_front();
                let tag = submit_one(&mut bf, l, s, capacity, plat0.saturating_add(arrival))?;
                inflight.insert(tag, (i, arrival, arrival));
            }
        }
        bf.process().map_err(err)?;
        let mut any = false;
        while let Some(c) = bf.next_completion() {
            any = true;
            let done = now_ns(t0);
            c.result
                .map_err(|e| format!("{} failed: {e}", c.io.name()))?;
            let (i, stamp, scheduled) = inflight
                .remove(&c.tag)
                .ok_or_else(|| format!("a completion for unknown tag {}", c.tag))?;
            if c.held_spans != 0 {
                return Err(format!("{} pool buffers held back", c.held_spans));
            }
            let l = &mut live[i];
            let bytes = w.streams[i].bytes;
            l.records.push((stamp, done, bytes));
            l.from_schedule.push((scheduled, done, bytes));
            l.free.push(c.io.into_spans());
            l.out = l.out.saturating_sub(1);
            if l.out == 0 {
                if let Some(p) = l.pacer.as_mut() {
                    p.drained(done);
                }
            }
        }
        if !any {
            // Sleep until the next arrival or the next response.
            let now = now_ns(t0);
            let next = live
                .iter()
                .zip(&w.streams)
                .filter_map(|(l, s)| match l.pacer {
                    Some(p) => p.due(),
                    None if s.arrival.per_sec().is_some() => Some(l.next_ns),
                    None => None,
                })
                .filter(|&t| t < end_ns)
                .min()
                .unwrap_or(end_ns);
            // Nothing more to issue before the next completion (no
            // arrival left, or none with a free buffer): a whole slice,
            // which a response ends; the drain after the run used to
            // sleep 1 us at a time here, and a stall of the disk then
            // kept the frontend spinning for seconds.
            let left = if next > now {
                (next - now).clamp(1_000, 5_000_000)
            } else {
                5_000_000
            };
            if !inflight.is_empty() || next > now {
                bf.wait(&mut xs, Some(Duration::from_nanos(left)))
                    .map_err(err)?;
                take_events(&mut bf)?;
            }
        }
    }
    let waits1 = cpu_waits();
    let mut m = Measured {
        window_ns: w.measure_ms * 1_000_000,
        notes,
        ..Measured::default()
    };
    m.notes.push(format!(
        "{}: {}",
        w.workload.prefix(),
        cpu_wait_note(&waits0, &waits1, t0.elapsed().as_nanos() as u64)
    ));
    let window = (w.warmup_ms * 1_000_000, end_ns);
    for (s, l) in w.streams.iter().zip(&live) {
        let c = measure_class(
            s.label,
            &l.records,
            s.deadline_ns,
            window,
            s.arrival.per_sec(),
        );
        if let (Some(exp), Some(_)) = (c.expected, l.pacer) {
            // As the Linux peers' note says of fio.
            let got = c.latencies_ns.len() as f64;
            if got < 0.9 * exp {
                m.notes.push(format!(
                    "{} {}: issued {got:.0} of the {exp:.0} requests due in the window (fio's pace fell behind its schedule), so these latencies leave out the wait before issue",
                    w.workload.prefix(),
                    s.label
                ));
            }
            // The same requests' latencies from their scheduled times,
            // which fio cannot tell.
            let mut sch = measure_class(s.label, &l.from_schedule, s.deadline_ns, window, None);
            let n = sch.latencies_ns.len();
            m.notes.push(format!(
                "{} {}: issued as fio issues (APEXBENCH_PACING=open for strictly open loop); from the schedule instead of the issue (fio's pace included: ahead of schedule it sleeps the whole time it had to go after the wait for the requests in flight, so issues run late by design), the same requests' p50 {:.0} us, p99 {:.0} us, {} of {n} over the deadline",
                w.workload.prefix(),
                s.label,
                quantile(&mut sch.latencies_ns, 0.5) as f64 / 1e3,
                quantile(&mut sch.latencies_ns, 0.99) as f64 / 1e3,
                sch.misses,
            ));
        }
        m.classes.push(c);
    }
    let all: Vec<(u64, u64, u64)> = live
        .iter()
        .flat_map(|l| l.records.iter().copied())
        .collect();
    if let Some((s, l)) = w
        .streams
        .iter()
        .zip(&live)
        .find(|(s, _)| s.deadline_ns.is_some())
    {
        m.notes.extend(stall_note(
            &w.workload.prefix(),
            s.label,
            &all,
            &l.records,
            s.deadline_ns.unwrap_or(u64::MAX),
            window,
        ));
    }
    if let Ok(t) = trace.lock() {
        let path = scratch.join("trace.csv");
        if let Err(e) = write_trace(&path, &t.done) {
            log::warn!("apexbench: cannot write {}: {e}", path.display());
        }
        let from = plat0.saturating_add(w.warmup_ms * 1_000_000);
        m.notes.push(format!(
            "{}: {}",
            w.workload.prefix(),
            trace_summary(&t.done, default.0, from, plat0.saturating_add(end_ns))
        ));
    }
    if let (Some(st), Ok(t)) = (&world.steps, trace.lock()) {
        let back = st.take();
        let from = plat0.saturating_add(w.warmup_ms * 1_000_000);
        let (note, rows) = breakdown(
            &t.done,
            &back,
            default.0,
            from,
            plat0.saturating_add(end_ns),
        );
        m.notes.push(format!("{}: {note}", w.workload.prefix()));
        let path = scratch.join("breakdown.csv");
        if let Err(e) = write_breakdown(&path, &rows) {
            log::warn!("apexbench: cannot write {}: {e}", path.display());
        }
    }
    if let Some(sched) = bf.scheduler(0) {
        let cm = sched.cost_model();
        let (ra, rb) = cm.line(Op::Read);
        let (wa, wb) = cm.line(Op::Write);
        let (alpha, beta) = cm.drain_line();
        m.notes.push(format!(
            "{}: cost model after the run: read {} us + {} ps/B, write {} us + {} ps/B (started from the device's calibration: {} us + {} ps/B); drain line from {} real-time completions: {:.1} ms + {:.2} x the work in flight",
            w.workload.prefix(),
            ra / 1000,
            rb,
            wa / 1000,
            wb,
            prior.base_ns[0] / 1000,
            prior.ps_per_byte[0],
            cm.drain_samples(),
            alpha as f64 / 1e6,
            beta as f64 / 1e3
        ));
    }
    if let Some(a) = bf.scheduler(0).and_then(|s| s.adaptive()) {
        m.notes.push(format!(
            "{}: adaptive isolation after the run: {} cuts, {} steps up, window {}",
            w.workload.prefix(),
            a.cuts,
            a.grows,
            match a.window_bytes {
                Some(b) => format!("{} KiB", b / 1024),
                None => "open".into(),
            }
        ));
    }
    if let Some(t) = bf.scheduler(0).and_then(|s| s.throttle()) {
        m.notes.push(format!(
            "{}: best-effort throttle after the run: {} cuts by late real-time completions, {}",
            w.workload.prefix(),
            t.cuts,
            match t.rate_per_sec {
                Some(r) => format!(
                    "best-effort rate {:.0} ms of device time per s",
                    r as f64 / 1e6
                ),
                None => "open".into(),
            }
        ));
    }
    let _ = bf.close(&mut xs);
    Ok(m)
}

/// One request as [`Traced`] saw it, ns of the platform's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TraceRecord {
    /// Its scheduler queue.
    pub queue: u32,
    /// A write (else a read).
    pub write: bool,
    /// Size, bytes.
    pub bytes: u64,
    /// Handed to the scheduler.
    pub submitted: u64,
    /// Put on the ring (the scheduler's batch).
    pub dispatched: u64,
    /// Its response taken.
    pub done: u64,
    /// Bytes of writes in flight when it was put on the ring (those of
    /// its own batch before it included, itself not).
    pub writes_ahead: u64,
    /// Requests in flight then (itself not).
    pub ahead: u32,
    /// The cost model's estimate of the work in flight then, itself
    /// included (units: ns of device time).
    pub units_ahead: u64,
    /// Its place in the order requests went on the ring (from 1).
    pub seq: u64,
}

#[derive(Default)]
struct TraceState {
    open: HashMap<u64, TraceRecord>,
    write_bytes: u64,
    in_flight: u32,
    units: u64,
    dispatched: u64,
    done: Vec<TraceRecord>,
}

/// A scheduler that records, for every request, when it was submitted, put
/// on the ring and completed, and how much work was in flight when it went
/// on the ring: the per-request log the run's notes summarize (the
/// real-time reads' time on the ring against the bulk writes ahead of
/// them). Everything else is the wrapped scheduler's.
pub struct Traced {
    inner: Box<dyn Scheduler + Send>,
    log: Arc<Mutex<TraceState>>,
}

impl Traced {
    fn new(inner: Box<dyn Scheduler + Send>) -> (Self, Arc<Mutex<TraceState>>) {
        let log = Arc::new(Mutex::new(TraceState::default()));
        (
            Traced {
                inner,
                log: log.clone(),
            },
            log,
        )
    }
}

impl Scheduler for Traced {
    fn policy_name(&self) -> &'static str {
        self.inner.policy_name()
    }
    fn create_queue(&mut self, config: QueueConfig, now: Nanos) -> Result<QueueId, iosched::Error> {
        self.inner.create_queue(config, now)
    }
    fn change_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
        now: Nanos,
    ) -> Result<(), iosched::Error> {
        self.inner.change_queue(queue, config, now)
    }
    fn remove_queue(&mut self, queue: QueueId, now: Nanos) -> Result<Removal, iosched::Error> {
        self.inner.remove_queue(queue, now)
    }
    fn submit(&mut self, request: Request, now: Nanos) -> Result<(), SubmitError> {
        self.inner.submit(request, now)?;
        if let Ok(mut l) = self.log.lock() {
            l.open.insert(
                request.tag,
                TraceRecord {
                    queue: request.queue.0,
                    write: request.op == Op::Write,
                    bytes: request.bytes,
                    submitted: now,
                    ..TraceRecord::default()
                },
            );
        }
        Ok(())
    }
    fn build_batch_into(&mut self, now: Nanos, ring_room: usize, out: &mut Vec<u64>) -> usize {
        let start = out.len();
        let n = self.inner.build_batch_into(now, ring_room, out);
        if let Ok(mut l) = self.log.lock() {
            let l = &mut *l;
            for tag in &out[start..] {
                if let Some(r) = l.open.get_mut(tag) {
                    let op = if r.write { Op::Write } else { Op::Read };
                    let cost = self.inner.cost_model().estimate(op, r.bytes);
                    r.dispatched = now;
                    r.writes_ahead = l.write_bytes;
                    r.ahead = l.in_flight;
                    l.units = l.units.saturating_add(cost);
                    r.units_ahead = l.units;
                    if r.write {
                        l.write_bytes = l.write_bytes.saturating_add(r.bytes);
                    }
                    l.in_flight += 1;
                    l.dispatched += 1;
                    r.seq = l.dispatched;
                }
            }
        }
        n
    }
    fn complete(&mut self, tag: u64, now: Nanos) -> Result<Completion, iosched::Error> {
        if let Ok(mut l) = self.log.lock() {
            if let Some(mut r) = l.open.remove(&tag) {
                let op = if r.write { Op::Write } else { Op::Read };
                let cost = self.inner.cost_model().estimate(op, r.bytes);
                l.units = l.units.saturating_sub(cost);
                if r.write {
                    l.write_bytes = l.write_bytes.saturating_sub(r.bytes);
                }
                l.in_flight = l.in_flight.saturating_sub(1);
                r.done = now;
                l.done.push(r);
            }
        }
        self.inner.complete(tag, now)
    }
    fn cancel(&mut self, tag: u64, now: Nanos) -> Result<QueueId, iosched::Error> {
        if let Ok(mut l) = self.log.lock() {
            if let Some(r) = l.open.remove(&tag) {
                if r.dispatched != 0 {
                    let op = if r.write { Op::Write } else { Op::Read };
                    let cost = self.inner.cost_model().estimate(op, r.bytes);
                    l.units = l.units.saturating_sub(cost);
                    if r.write {
                        l.write_bytes = l.write_bytes.saturating_sub(r.bytes);
                    }
                    l.in_flight = l.in_flight.saturating_sub(1);
                }
            }
        }
        self.inner.cancel(tag, now)
    }
    fn pending(&self) -> usize {
        self.inner.pending()
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn queue(&self, queue: QueueId) -> Option<QueueView<'_>> {
        self.inner.queue(queue)
    }
    fn queue_ids(&self) -> Vec<QueueId> {
        self.inner.queue_ids()
    }
    fn cost_model(&self) -> &CostModel {
        self.inner.cost_model()
    }
    fn throttle(&self) -> Option<iosched::ThrottleState> {
        self.inner.throttle()
    }
    fn adaptive(&self) -> Option<iosched::AdaptiveState> {
        self.inner.adaptive()
    }
    fn next_wakeup(&self) -> Option<Nanos> {
        self.inner.next_wakeup()
    }
}

/// The nearest-rank quantile `q` of `v` (sorted here), ns; 0 when empty.
fn quantile(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The summary note of a trace: the real-time (or latency-critical) reads
/// of queue `rt` that arrived in the window `[from, to)`, grouped by the
/// bulk bytes in flight when they went on the ring: how many, their wait in
/// the scheduler and their time on the ring (put on the ring to response).
pub fn trace_summary(records: &[TraceRecord], rt: u32, from: u64, to: u64) -> String {
    const MIB: u64 = 1 << 20;
    let groups: [(u64, u64, &str); 5] = [
        (0, MIB, "<1"),
        (MIB, 4 * MIB, "1-4"),
        (4 * MIB, 8 * MIB, "4-8"),
        (8 * MIB, 16 * MIB, "8-16"),
        (16 * MIB, u64::MAX, ">=16"),
    ];
    let rts: Vec<&TraceRecord> = records
        .iter()
        .filter(|r| {
            r.queue == rt
                && !r.write
                && r.submitted >= from
                && r.submitted < to
                && r.dispatched != 0
        })
        .collect();
    let mut parts = Vec::new();
    for (lo, hi, name) in groups {
        let g: Vec<&&TraceRecord> = rts
            .iter()
            .filter(|r| r.writes_ahead >= lo && r.writes_ahead < hi)
            .collect();
        if g.is_empty() {
            continue;
        }
        let mut wait: Vec<u64> = g
            .iter()
            .map(|r| r.dispatched.saturating_sub(r.submitted))
            .collect();
        let mut ring: Vec<u64> = g
            .iter()
            .map(|r| r.done.saturating_sub(r.dispatched))
            .collect();
        let mut units: Vec<u64> = g.iter().map(|r| r.units_ahead).collect();
        parts.push(format!(
            "{name} MiB: {} reads, wait p50 {:.1} ms, on the ring p50 {:.1} p90 {:.1} ms, estimated work ahead p50 {:.1} ms",
            g.len(),
            quantile(&mut wait, 0.5) as f64 / 1e6,
            quantile(&mut ring, 0.5) as f64 / 1e6,
            quantile(&mut ring, 0.9) as f64 / 1e6,
            quantile(&mut units, 0.5) as f64 / 1e6,
        ));
    }
    if parts.is_empty() {
        return "no real-time read in the window".into();
    }
    format!(
        "real-time reads by bulk bytes in flight when they went on the ring: {}",
        parts.join("; ")
    )
}

/// One thread of this process as `/proc/self/task/*/schedstat` tells:
/// (name, ns it ran, ns it waited runnable for a core, times it ran).
type CpuWait = (String, u64, u64, u64);

/// The frontend's thread (the caller) and blkback's queue workers.
fn cpu_waits() -> Vec<CpuWait> {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc/self/task") else {
        return v;
    };
    for e in rd.flatten() {
        let tid = e.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        let name = if tid == me.to_string() {
            "frontend".to_string()
        } else if comm.starts_with("blkback-q") {
            comm.to_string()
        } else {
            continue;
        };
        let st = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
        let f: Vec<u64> = st
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [run, wait, slices] = f[..] {
            v.push((name, run, wait, slices));
        }
    }
    v.sort();
    v
}

/// What the threads of [`cpu_waits`] did between two readings, over
/// `span_ns`: how long each ran and waited for a core.
fn cpu_wait_note(a: &[CpuWait], b: &[CpuWait], span_ns: u64) -> String {
    let parts: Vec<String> = b
        .iter()
        .map(|(n, run, wait, slices)| {
            let (r0, w0, s0) = a
                .iter()
                .find(|x| &x.0 == n)
                .map_or((0, 0, 0), |x| (x.1, x.2, x.3));
            let k = slices.saturating_sub(s0).max(1);
            format!(
                "{n} ran {:.0} ms and waited {:.0} ms for a core over {k} wake-ups ({:.0} us each)",
                run.saturating_sub(r0) as f64 / 1e6,
                wait.saturating_sub(w0) as f64 / 1e6,
                wait.saturating_sub(w0) as f64 / 1e3 / k as f64
            )
        })
        .collect();
    format!(
        "threads over the run's {:.0} ms (schedstat): {}",
        span_ns as f64 / 1e6,
        if parts.is_empty() {
            "not readable".to_string()
        } else {
            parts.join("; ")
        }
    )
}

/// `APEXBENCH_BREAKDOWN`, when set to `1`, `on` or `yes`: blkback records
/// every request's steps ([`hosted::blkback::StepTrace`]) and each run of
/// our paths breaks the real-time (or latency-critical) reads' time on the
/// ring into them ([`breakdown`]), in a note and in `breakdown.csv`.
fn breakdown_on() -> bool {
    matches!(
        std::env::var("APEXBENCH_BREAKDOWN")
            .ok()
            .as_deref()
            .map(str::trim),
        Some("1" | "on" | "yes")
    )
}

/// One request's time on the ring, step by step, ns of the platform's
/// clock: the frontend's [`TraceRecord`] joined with blkback's
/// [`BackSteps`] of the same request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepRow {
    /// The frontend's record.
    pub front: TraceRecord,
    /// blkback's.
    pub back: BackSteps,
}

impl StepRow {
    /// The steps, ns: put on the ring (and notified) to taken off it by
    /// blkback; taken to submitted to the kernel; submitted to its
    /// completion seen by blkback; seen to the response published; the
    /// response published to the frontend taking it.
    pub fn steps(&self) -> [u64; 5] {
        let (f, b) = (&self.front, &self.back);
        [
            b.taken_ns.saturating_sub(f.dispatched),
            b.submitted_ns.saturating_sub(b.taken_ns),
            b.reaped_ns.saturating_sub(b.submitted_ns),
            b.pushed_ns.saturating_sub(b.reaped_ns),
            f.done.saturating_sub(b.pushed_ns),
        ]
    }
}

/// The names of [`StepRow::steps`].
pub const STEP_NAMES: [&str; 5] = [
    "ring->taken",
    "taken->submitted",
    "submitted->reaped",
    "reaped->pushed",
    "pushed->seen",
];

/// Joins the frontend's records with blkback's: the k-th request put on
/// the ring (by [`TraceRecord::seq`]) is the k-th blkback took off it (one
/// ring, taken in order). Returns a note on the reads of queue `rt` put
/// on the ring in `[from, to)` (each step's p50/p90/p99, and the median of
/// each step among the slowest 1 %), and every joined row.
pub fn breakdown(
    front: &[TraceRecord],
    back: &[BackSteps],
    rt: u32,
    from: u64,
    to: u64,
) -> (String, Vec<StepRow>) {
    let mut f: Vec<TraceRecord> = front.iter().copied().filter(|r| r.seq != 0).collect();
    f.sort_unstable_by_key(|r| r.seq);
    let mut b: Vec<BackSteps> = back.to_vec();
    b.sort_unstable_by_key(|s| s.taken_ns);
    let rows: Vec<StepRow> = f
        .iter()
        .zip(&b)
        .map(|(&front, &back)| StepRow { front, back })
        .collect();
    let mismatch = if f.len() != b.len() {
        format!(" (the frontend put {} requests on the ring, blkback recorded {}: the later ones are not joined)", f.len(), b.len())
    } else {
        String::new()
    };
    let sel: Vec<&StepRow> = rows
        .iter()
        .filter(|r| {
            r.front.queue == rt
                && !r.front.write
                && r.front.dispatched >= from
                && r.front.dispatched < to
        })
        .collect();
    if sel.is_empty() {
        return (
            format!("breakdown: no real-time read in the window{mismatch}"),
            rows,
        );
    }
    let mut total: Vec<u64> = sel
        .iter()
        .map(|r| r.front.done.saturating_sub(r.front.dispatched))
        .collect();
    let cut = quantile(&mut total, 0.99);
    let tail: Vec<&&StepRow> = sel
        .iter()
        .filter(|r| r.front.done.saturating_sub(r.front.dispatched) >= cut)
        .collect();
    let mut parts = Vec::new();
    for (i, name) in STEP_NAMES.iter().enumerate() {
        let mut v: Vec<u64> = sel.iter().map(|r| r.steps()[i]).collect();
        let mut t: Vec<u64> = tail.iter().map(|r| r.steps()[i]).collect();
        parts.push(format!(
            "{name} p50 {:.0} p90 {:.0} p99 {:.0} us (slowest 1 %: {:.0})",
            quantile(&mut v, 0.5) as f64 / 1e3,
            quantile(&mut v, 0.9) as f64 / 1e3,
            quantile(&mut v, 0.99) as f64 / 1e3,
            quantile(&mut t, 0.5) as f64 / 1e3,
        ));
    }
    let woke = sel.iter().filter(|r| r.back.woke_ns != 0).count();
    let slept = sel.iter().filter(|r| r.back.uring_sleeps != 0).count();
    (
        format!(
            "breakdown of {} real-time reads on the ring (p99 {:.0} us): {}; blkback slept on the event channel before taking {woke} of them and in the io_uring while {slept} were in flight{mismatch}",
            sel.len(),
            cut as f64 / 1e3,
            parts.join(", ")
        ),
        rows,
    )
}

/// Writes joined rows as CSV (times in ns of the platform's clock).
fn write_breakdown(path: &Path, rows: &[StepRow]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "queue,op,bytes,dispatched_ns,woke_ns,taken_ns,queued_ns,submitted_ns,uring_sleeps,reaped_ns,pushed_ns,wakeup_sent,done_ns")?;
    for r in rows {
        let (a, b) = (&r.front, &r.back);
        writeln!(
            f,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            a.queue,
            if a.write { "w" } else { "r" },
            a.bytes,
            a.dispatched,
            b.woke_ns,
            b.taken_ns,
            b.queued_ns,
            b.submitted_ns,
            b.uring_sleeps,
            b.reaped_ns,
            b.pushed_ns,
            u8::from(b.wakeup_sent),
            a.done
        )?;
    }
    f.flush()
}

/// Writes `records` as CSV (times in ns of the platform's clock).
fn write_trace(path: &Path, records: &[TraceRecord]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        f,
        "queue,op,bytes,submitted_ns,dispatched_ns,done_ns,writes_ahead_bytes,ahead,units_ahead"
    )?;
    for r in records {
        writeln!(
            f,
            "{},{},{},{},{},{},{},{},{}",
            r.queue,
            if r.write { "w" } else { "r" },
            r.bytes,
            r.submitted,
            r.dispatched,
            r.done,
            r.writes_ahead,
            r.ahead,
            r.units_ahead
        )?;
    }
    f.flush()
}

/// Reads into every buffer set of `live` once (the start of the disk,
/// FIFO, the queue's default scheduler) and waits for all of them.
fn prewarm(
    bf: &mut Blkfront<HostedPlatform>,
    xs: &mut hosted::xenstore::UnixXenstore,
    live: &mut [Live],
) -> Result<(), String> {
    let mut out: HashMap<Tag, usize> = HashMap::new();
    for (i, l) in live.iter_mut().enumerate() {
        for spans in l.free.drain(..) {
            let tag = bf
                .submit(Io::Read { sector: 0, spans }, IoOptions::queue(0))
                .map_err(|r| r.to_string())?;
            out.insert(tag, i);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "{} pre-warming reads still in flight after 60 s",
                out.len()
            ));
        }
        bf.wait(xs, Some(Duration::from_millis(10))).map_err(err)?;
        take_events(bf)?;
        while let Some(c) = bf.next_completion() {
            c.result
                .map_err(|e| format!("pre-warming {} failed: {e}", c.io.name()))?;
            let i = out
                .remove(&c.tag)
                .ok_or_else(|| format!("a completion for unknown tag {}", c.tag))?;
            if let Some(l) = live.get_mut(i) {
                l.free.push(c.io.into_spans());
            }
        }
    }
    Ok(())
}

/// `APEXBENCH_SLACK_PERMILLE` (1 to 1000), when set: APEX's
/// [`iosched::ApexParams::slack_permille`] on the real path instead of the
/// library's default (other values are ignored), to try the trade between the bulk work let in flight
/// and the real-time reads' margin on a given disk.
fn slack_permille() -> Option<u64> {
    std::env::var("APEXBENCH_SLACK_PERMILLE")
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|v| (1..=1000).contains(v))
}

/// `APEXBENCH_THROTTLE`, when set: `0`, `off` or `no` turns APEX's
/// best-effort throttle ([`iosched::ApexParams::throttle`]) off on the
/// real path, `1`, `on` or `yes` on (the default), `slow` on in slow start
/// ([`iosched::ApexParams::throttle_slow_start`]); other values are
/// ignored. Returns (on, slow start). With it off APEX bounds only the
/// work in flight, as before the throttle: the A/B of the throttle on the
/// same disk.
fn throttle_switch() -> Option<(bool, bool)> {
    match std::env::var("APEXBENCH_THROTTLE").ok()?.trim() {
        "0" | "off" | "no" => Some((false, false)),
        "1" | "on" | "yes" => Some((true, false)),
        "slow" => Some((true, true)),
        _ => None,
    }
}

/// `APEXBENCH_ISOLATION`, when set: `0`, `off` or `no` runs APEX without
/// its isolation mode ([`iosched::ApexParams::isolation`]), `1`, `on` or
/// `yes` with it and the library's parameters, and `on,KEY=N,...` with
/// some of them changed: `cap_kib` (background KiB in flight while a
/// latency-sensitive queue is active), `hold_ms` (longest hold),
/// `window_ms` (anticipation window). Other values are ignored. Returns
/// `Some(None)` for off, `Some(Some((cap bytes, hold ns, window ns)))` for
/// on: the A/B of the mode on the same disk.
fn isolation_switch() -> Option<Option<(u64, u64, u64)>> {
    parse_isolation(&std::env::var("APEXBENCH_ISOLATION").ok()?)
}

fn parse_isolation(v: &str) -> Option<Option<(u64, u64, u64)>> {
    let mut parts = v.trim().split(',');
    match parts.next()?.trim() {
        "0" | "off" | "no" => return Some(None),
        "1" | "on" | "yes" => {}
        _ => return None,
    }
    let d = iosched::ApexParams::default();
    let (mut cap, mut hold, mut window) = (
        d.isolation_be_bytes,
        d.isolation_max_hold_ns,
        d.isolation_window_ns,
    );
    for kv in parts {
        let (k, n) = key_number(kv)?;
        match k {
            "cap_kib" => cap = (n * 1024.0) as u64,
            "hold_ms" => hold = (n * 1e6) as u64,
            "window_ms" => window = (n * 1e6) as u64,
            _ => return None,
        }
    }
    Some(Some((cap, hold, window)))
}

/// One `KEY=N` of an `APEXBENCH_ISOLATION` list: the key, and N as a
/// finite, non-negative number; `None` for anything else.
fn key_number(kv: &str) -> Option<(&str, f64)> {
    let (k, n) = kv.split_once('=')?;
    let n: f64 = n
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    Some((k.trim(), n))
}

/// `APEXBENCH_ISOLATION=adaptive[,KEY=N,...]`: APEX's adaptive isolation
/// ([`iosched::ApexParams::adaptive_isolation`]) with the library's
/// parameters, some changed: `step_kib`, `open_kib`, `late_permille`,
/// `hold_ms`, `window_ms`; `adaptive_off` runs without it. Returns
/// `Some(None)` for off, `Some(Some(params))` for on, `None` when the
/// variable says nothing of it.
fn adaptive_switch() -> Option<Option<iosched::ApexParams>> {
    parse_adaptive(&std::env::var("APEXBENCH_ISOLATION").ok()?)
}

fn parse_adaptive(v: &str) -> Option<Option<iosched::ApexParams>> {
    let mut parts = v.trim().split(',');
    match parts.next()?.trim() {
        "adaptive_off" => return Some(None),
        "adaptive" => {}
        _ => return None,
    }
    let mut p = iosched::ApexParams {
        adaptive_isolation: true,
        ..iosched::ApexParams::default()
    };
    for kv in parts {
        let (k, n) = key_number(kv)?;
        match k {
            "step_kib" => p.adaptive_step_bytes = (n * 1024.0) as u64,
            "open_kib" => p.adaptive_open_bytes = (n * 1024.0) as u64,
            "late_permille" => p.adaptive_late_permille = n as u64,
            "hold_ms" => p.isolation_max_hold_ns = (n * 1e6) as u64,
            "window_ms" => p.isolation_window_ns = (n * 1e6) as u64,
            _ => return None,
        }
    }
    Some(Some(p))
}

/// The cost model's starting line from the device's measured capacity: the
/// amortized device time of a 64 KiB and of a 256 KiB random read at depth
/// 32, joined by a line (writes take the same until completions say
/// otherwise).
pub fn device_prior(cap: &Capacity) -> CostPrior {
    let mut prior = CostPrior::default();
    if cap.reads_64k <= 0.0 || cap.reads_256k <= 0.0 {
        return prior;
    }
    let t64 = 1e9 / cap.reads_64k;
    let t256 = 1e9 / cap.reads_256k;
    let per_byte_ns = ((t256 - t64) / (192.0 * 1024.0)).max(0.0);
    let base_ns = (t64 - per_byte_ns * 65536.0).max(1_000.0);
    for op in [Op::Read, Op::Write] {
        prior.base_ns[op.index()] = base_ns as u64;
        prior.ps_per_byte[op.index()] = (per_byte_ns * 1000.0) as u64;
    }
    prior
}

#[cfg(test)]
mod tests {
    use super::*;
    use iosched::CostModel;

    #[test]
    fn the_isolation_switch_parses_its_parameters() {
        let d = iosched::ApexParams::default();
        assert_eq!(parse_isolation("off"), Some(None));
        assert_eq!(
            parse_isolation("on"),
            Some(Some((
                d.isolation_be_bytes,
                d.isolation_max_hold_ns,
                d.isolation_window_ns
            )))
        );
        assert_eq!(
            parse_isolation("on,cap_kib=1024,hold_ms=20, window_ms=2.5"),
            Some(Some((1 << 20, 20_000_000, 2_500_000)))
        );
        assert_eq!(parse_isolation("on,depth=3"), None);
        assert_eq!(parse_isolation("on,hold_ms=-1"), None);
        assert_eq!(parse_isolation("maybe"), None);
        assert_eq!(parse_isolation("adaptive"), None);
        assert_eq!(parse_adaptive("on"), None);
        assert_eq!(parse_adaptive("adaptive_off"), Some(None));
        let a = parse_adaptive("adaptive,step_kib=512,late_permille=20")
            .flatten()
            .unwrap();
        assert!(a.adaptive_isolation && !a.isolation);
        assert_eq!(a.adaptive_step_bytes, 512 * 1024);
        assert_eq!(a.adaptive_late_permille, 20);
        assert_eq!(parse_adaptive("adaptive,depth=3"), None);
    }

    #[test]
    fn the_trace_records_the_work_ahead_of_each_request() {
        let (mut t, log) = Traced::new(new_scheduler(
            PolicyKind::Fifo,
            SchedConfig {
                cost: CostPrior::uniform(1_000_000, 0),
                ..SchedConfig::default()
            },
        ));
        let q = t.create_queue(QueueConfig::interactive(), 0).unwrap();
        let mk = |op, bytes, tag| Request {
            queue: q,
            op,
            sector: 0,
            bytes,
            deadline: None,
            tag,
        };
        t.submit(mk(Op::Write, 1 << 20, 1), 10).unwrap();
        t.submit(mk(Op::Write, 1 << 20, 2), 20).unwrap();
        t.submit(mk(Op::Read, 4096, 3), 30).unwrap();
        assert_eq!(t.build_batch(100, 32), vec![1, 2, 3]);
        for (tag, at) in [(1, 200), (2, 300), (3, 400)] {
            t.complete(tag, at).unwrap();
        }
        let l = log.lock().unwrap();
        assert!(l.open.is_empty());
        assert_eq!((l.write_bytes, l.in_flight, l.units), (0, 0, 0));
        let read = l.done.iter().find(|r| !r.write).unwrap();
        assert_eq!((read.submitted, read.dispatched, read.done), (30, 100, 400));
        // Two writes of 1 MiB and two requests ahead; three of the prior's
        // 1 ms of work in flight, itself included.
        assert_eq!((read.writes_ahead, read.ahead), (2 << 20, 2));
        assert_eq!(read.units_ahead, 3_000_000);
        let summary = trace_summary(&l.done, q.0, 0, 1000);
        assert!(summary.contains("1-4 MiB: 1 reads"), "{summary}");
        assert!(!summary.contains("<1 MiB"), "{summary}");
        // Outside the window: nothing.
        assert_eq!(
            trace_summary(&l.done, q.0, 1000, 2000),
            "no real-time read in the window"
        );
    }

    #[test]
    fn the_pacer_issues_as_fio_rate_loop_does() {
        // Schedule: 0, 500, 1000, 1500 (gaps of 500).
        let mut p = FioPacer::new();
        assert_eq!(p.due(), Some(0));
        // Issued at 10: the next (500) is ahead, so fio first waits for
        // what is in flight, then sleeps the 490 it had to go.
        assert_eq!(p.issued(10, 500), 0);
        assert_eq!(p.due(), None);
        p.drained(300);
        assert_eq!(p.due(), Some(790));
        // Issued late at 800 (its time was 500): 1000 is still ahead.
        assert_eq!(p.issued(800, 500), 500);
        assert_eq!(p.due(), None);
        // The read took long: drained at 1600, behind schedule, but fio
        // sleeps what it had to go when it looked (200).
        p.drained(1600);
        assert_eq!(p.due(), Some(1800));
        // Issued at 1800: the next (1500) is past, so it goes at once,
        // without waiting for the one in flight.
        assert_eq!(p.issued(1800, 500), 1000);
        assert_eq!(p.due(), Some(1500));
        assert_eq!(p.issued(1801, 500), 1500);
        // 2000 is ahead of 1801 again.
        assert_eq!(p.due(), None);
        // A drain while not waiting changes nothing.
        let mut q = FioPacer::new();
        q.drained(5);
        assert_eq!(q.due(), Some(0));
    }

    #[test]
    fn the_breakdown_joins_the_ends_in_ring_order() {
        let rec = |seq, queue, dispatched, done| TraceRecord {
            queue,
            write: false,
            bytes: 4096,
            dispatched,
            done,
            seq,
            ..TraceRecord::default()
        };
        let steps = |taken_ns, submitted_ns, reaped_ns, pushed_ns| BackSteps {
            taken_ns,
            submitted_ns,
            reaped_ns,
            pushed_ns,
            ..BackSteps::default()
        };
        // The frontend's records come in completion order; blkback's in
        // any order: both are joined by their place on the ring.
        let front = [
            rec(2, 0, 1_000, 9_000),
            rec(1, 0, 1_000, 2_000),
            rec(3, 1, 5_000, 6_000),
        ];
        let back = [
            steps(5_100, 5_200, 5_900, 5_950),
            steps(1_100, 1_200, 1_900, 1_950),
            steps(1_150, 1_300, 8_000, 8_900),
        ];
        let (note, rows) = breakdown(&front, &back, 0, 0, 10_000);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].steps(), [100, 100, 700, 50, 50]);
        assert_eq!(rows[1].steps(), [150, 150, 6_700, 900, 100]);
        assert_eq!(rows[2].front.queue, 1);
        // Queue 0's two reads; the slowest 1 % is the second.
        assert!(note.starts_with("breakdown of 2 real-time reads"), "{note}");
        assert!(
            note.contains("submitted->reaped p50 1 p90 7 p99 7 us (slowest 1 %: 7)"),
            "{note}"
        );
        assert!(!note.contains("not joined"), "{note}");
        let (note, _) = breakdown(&front, &back[..2], 0, 0, 10_000);
        assert!(note.contains("blkback recorded 2"), "{note}");
        let (note, _) = breakdown(&front, &back, 0, 20_000, 30_000);
        assert!(note.starts_with("breakdown: no real-time read"), "{note}");
    }

    #[test]
    fn the_cpu_wait_note_takes_the_difference() {
        let a = vec![("frontend".to_string(), 1_000_000, 2_000_000, 10)];
        let b = vec![
            ("blkback-q0".to_string(), 3_000_000, 1_000_000, 100),
            ("frontend".to_string(), 5_000_000, 4_000_000, 30),
        ];
        let n = cpu_wait_note(&a, &b, 2_000_000_000);
        assert!(n.contains("over the run's 2000 ms"), "{n}");
        assert!(
            n.contains(
                "blkback-q0 ran 3 ms and waited 1 ms for a core over 100 wake-ups (10 us each)"
            ),
            "{n}"
        );
        assert!(
            n.contains(
                "frontend ran 4 ms and waited 2 ms for a core over 20 wake-ups (100 us each)"
            ),
            "{n}"
        );
        assert!(cpu_wait_note(&a, &[], 1).contains("not readable"));
        // This thread is found (where the kernel keeps the counts).
        if Path::new("/proc/self/schedstat").exists() {
            assert!(cpu_waits().iter().any(|w| w.0 == "frontend"));
        }
    }

    #[test]
    fn the_prior_goes_through_the_calibration() {
        // 64 KiB reads: 2000/s (500 us each); 256 KiB: 1000/s (1 ms).
        let cap = Capacity {
            reads_256k: 1000.0,
            reads_64k: 2000.0,
            w1_deadline_reads: 0.0,
        };
        let m = CostModel::new(device_prior(&cap));
        for (bytes, ns) in [(65536, 500_000), (262144, 1_000_000)] {
            let est = m.estimate(Op::Read, bytes);
            assert!(est.abs_diff(ns) < 2_000, "{bytes}: {est}");
            assert_eq!(m.estimate(Op::Write, bytes), est);
        }
        // No calibration: the default prior.
        let none = Capacity {
            reads_256k: 0.0,
            reads_64k: 0.0,
            w1_deadline_reads: 0.0,
        };
        assert_eq!(device_prior(&none), CostPrior::default());
    }
}
