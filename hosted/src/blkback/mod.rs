//! A block backend for the hosted platform that serves blkfronts as
//! Linux 6.1's xen-blkback does, onto a real file or block device with
//! `O_DIRECT` through io_uring.
//!
//! # Starting one
//! ```no_run
//! use grant_tables::DomId;
//! use hosted::blkback::{Blkback, BlkbackConfig, Hostile, HostileMode, WaitMode};
//! use hosted::toolstack::{add_device, DeviceSpec};
//! # fn demo(hv: &hosted::HostedHypervisor, xs0: &mut hosted::xenstore::UnixXenstore,
//! #         socket: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! let spec = DeviceSpec::new("vbd", DomId(1), DomId(2), 51712);
//! add_device(xs0, &spec)?;                       // the toolstack's part
//! let mut config = BlkbackConfig::new("/var/tmp/disk.img");
//! config.wait = WaitMode::Poll;                  // or Event { spin }, Spin { spin }
//! config.hostile = Some(HostileMode { kind: Hostile::BadIds, after: 10 }); // tests only
//! let back = Blkback::spawn(hv.join(DomId(2))?, socket, &spec.backend_path(), config)?;
//! // ... a blkfront in dom1 connects to device/vbd/51712 ...
//! println!("{:?}", back.stats());
//! back.stop();                                    // as if the process died
//! # Ok(()) }
//! ```
//!
//! One thread runs the xenbus handshake ([`xenbus::Backend`]); each queue
//! of a connection has a worker thread of its own (see `queue`).
//!
//! # What it does, as xen-blkback does
//! - At probe, then InitWait: `feature-max-indirect-segments`
//!   ([`BlkbackConfig::max_indirect_segments`], 256 by default),
//!   `multi-queue-max-queues` (the host's CPUs by default),
//!   `max-ring-page-order` (4).
//! - When the frontend is Initialised or Connected, it reads the
//!   frontend's `protocol` (absent or `native` or `x86_64-abi`; anything
//!   else is refused: the 32-bit layout is not implemented),
//!   `feature-persistent`, `multi-queue-num-queues` (0 or above the
//!   maximum is fatal), `ring-page-order` (if present, `ring-ref0..N-1` are
//!   required even for order 0; above the maximum is fatal) and, per ring
//!   (flat for one queue, under `queue-N/` otherwise), `event-channel` and
//!   the ring refs; its own `mode` (no `w`: read-only) and
//!   `discard-enable`, and the frontend's `device-type` (`cdrom`: the
//!   `info` CD-ROM bit). The rings are attached at their current indices
//!   (more requests than the ring holds between them is fatal).
//! - Then, in one transaction: `feature-flush-cache` and `feature-barrier`
//!   ([`BlkbackConfig::flush`]), `feature-discard` with
//!   `discard-granularity` (the file system's block size),
//!   `discard-alignment` (0) and `discard-secure` (0), `feature-persistent`,
//!   `sectors`, `info`, `sector-size`, `physical-sector-size`; then
//!   Connected. [`Blkback::refresh_size`] re-reads the disk's size and
//!   rewrites `sectors` and `state` (the frontend's watch sees the resize).
//! - Requests: read, write, flush (an fdatasync through io_uring; with
//!   segments, the write follows the flush), barrier (waits for every
//!   request in flight, then as flush), discard (a punched hole,
//!   `fallocate(PUNCH_HOLE | KEEP_SIZE)`: the range reads as zeroes; a
//!   secure discard is done as a plain one, `discard-secure` being 0),
//!   indirect read and write. Malformed requests are answered as blkback
//!   answers them (see `parse`): `BLKIF_RSP_EOPNOTSUPP` for an unknown
//!   operation, `BLKIF_RSP_ERROR` for a bad segment count or segment,
//!   sectors out of range, a write to a read-only disk, a misaligned start
//!   or length, a grant that fails to map; each refusal ends the batch and
//!   costs [`BlkbackConfig::error_delay`] (1 ms). A flush, barrier or
//!   discard the disk cannot do is answered `EOPNOTSUPP` and the feature
//!   key is rewritten to 0. A ring whose frontend publishes more requests
//!   than it holds is halted until the connection ends.
//!
//! # Where it differs from xen-blkback
//! - The disk is named by the configuration, not by the hotplug script's
//!   `physical-device`; `params` is not read.
//! - Persistent grants are kept for the connection (up to
//!   [`BlkbackConfig::max_persistent_grants`] per queue, 1056 by default);
//!   unused ones are not purged after a while.
//! - The x86_32 ring layout (`protocol = x86_32-abi`) is refused.
//! - A refused request on a ring whose responses cannot be pushed (a
//!   halted ring) gets no response.
//!
//! # Hostile mode (tests only)
//! [`BlkbackConfig::hostile`] makes the backend misbehave in one
//! [`Hostile`] way after a number of honest responses per queue, so that
//! a frontend's tests can show it survives: see each variant.

mod device;
mod disk;
pub mod front;
pub mod parse;
mod queue;
pub mod trace;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use grant_tables::DomId;

use crate::domain::lock;
use crate::HostedPlatform;

pub use parse::RejectReason;
pub use trace::{BackSteps, StepTrace};

/// How a queue's worker waits for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// Spins on the ring and the io_uring; never sleeps (a core per
    /// queue; the frontend need not notify).
    Poll,
    /// Spins for `spin`, then sleeps (after asking the frontend to
    /// notify) in one `io_uring_enter` that a completion or the
    /// notification ends ([`BlkbackConfig::uring_wakeups`]). A
    /// worker seen losing its core while it spins does not spin for a
    /// while ([`blkfront::SpinGovernor`]).
    Event {
        /// How long to spin before sleeping (zero: sleep at once).
        spin: Duration,
    },
    /// As [`WaitMode::Event`], but every idle stretch spins for `spin`
    /// whatever happened before ([`blkfront::SpinGovernor::steady`]): on
    /// the ring for the next request, and on the io_uring's completion
    /// queue while I/O is in flight, with no system call (`io_uring_enter`
    /// only submits); then it sleeps as `Event` does, after asking the
    /// frontend to notify. For a worker with a core of its own
    /// ([`BlkbackConfig::pin_cpu`], a machine that is not oversubscribed)
    /// facing a frontend that spins too (blkfront's `Mode::Spin`): a
    /// request then costs neither end a notification or a wake-up.
    Spin {
        /// How long to spin before sleeping.
        spin: Duration,
    },
}

/// A way the backend misbehaves, for testing frontends (see
/// [`HostileMode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hostile {
    /// Responses carry an id the frontend never issued: the request's id
    /// with bit 40 flipped.
    BadIds,
    /// Each response is sent twice: the copy takes the slot of the next
    /// request taken off the ring (which then goes unanswered). Needs two
    /// requests in flight; with one, the copy waits for the next response.
    DuplicateResponses,
    /// Responses carry another operation than the request's: read and
    /// write swapped, any other operation answered as a read.
    WrongOperation,
    /// After a response, `rsp_prod` jumps two ring sizes ahead (more
    /// responses than requests); the ring is then left alone.
    IndexJump,
    /// Once every request taken is answered, one more response is
    /// published (for a request never made: the last id plus one); the
    /// ring is then left alone.
    UnsolicitedResponses,
    /// Responses carry a status that is none of OKAY, ERROR, EOPNOTSUPP
    /// ([`UNKNOWN_STATUS`]).
    UnknownStatus,
    /// Every grant mapped stays mapped after its request and after the
    /// connection ends (ring, persistent and per-request grants), until
    /// [`Blkback::release_kept_grants`] or the backend stops: the
    /// frontend's end of access must fail and quarantine the pages. Takes
    /// effect from the first request (`after` is not used).
    KeepGrantsMapped,
}

/// The status [`Hostile::UnknownStatus`] answers with.
pub const UNKNOWN_STATUS: i16 = 5;
/// The bit [`Hostile::BadIds`] flips in response ids.
pub const BAD_ID_BIT: u64 = 1 << 40;

fn wrong_operation(op: u8) -> u8 {
    use blkfront::abi::op;
    match op {
        op::READ => op::WRITE,
        _ => op::READ,
    }
}

/// A hostile mode: how, and after how many honest responses per queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostileMode {
    /// The misbehaviour.
    pub kind: Hostile,
    /// Honest responses first, on each queue of each connection.
    pub after: u64,
}

/// How a blkback is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkbackConfig {
    /// The file or block device to serve.
    pub disk: PathBuf,
    /// A read-only disk (`info` READONLY; writes, flushes and discards are
    /// refused). The backend directory's `mode` without `w` makes it
    /// read-only too.
    pub read_only: bool,
    /// Open the disk with `O_DIRECT` (default): I/O goes straight between
    /// the frontend's pages and the disk, not through the page cache.
    pub direct: bool,
    /// Logical sector size in bytes (`sector-size`): 512 (default) to
    /// 4096; requests must be aligned to it.
    pub sector_size: u32,
    /// Physical sector size (`physical-sector-size`), default 4096.
    pub physical_sector_size: u32,
    /// `multi-queue-max-queues` (default: the host's CPUs).
    pub max_queues: u32,
    /// `max-ring-page-order`, 0 to 4 (default 4).
    pub max_ring_page_order: u8,
    /// `feature-max-indirect-segments` (default 256).
    pub max_indirect_segments: u32,
    /// Offer `feature-persistent` (default on).
    pub persistent: bool,
    /// Most persistent grants kept mapped per queue (default 1056).
    pub max_persistent_grants: usize,
    /// The disk has a write cache to flush: `feature-flush-cache` and
    /// `feature-barrier` (default on).
    pub flush: bool,
    /// Offer `feature-discard` (default on; the backend directory's
    /// `discard-enable = 0` turns it off).
    pub discard: bool,
    /// The `info` REMOVABLE bit.
    pub removable: bool,
    /// Reads and writes of at least this many segments (default 64, that
    /// is 256 KiB of whole pages; 0: never) go through one of the queue's
    /// bounce buffers (8 of 1 MiB, on huge pages where the host allows,
    /// registered with the io_uring) instead of straight into the mapped
    /// grants, when one is free. One copy of the data, and the disk sees
    /// one contiguous buffer instead of one scattered page per segment:
    /// a virtual disk that costs per segment (a VM's virtio-blk device)
    /// then moves a 1 MiB request in a fraction of the time.
    pub bounce_min_segments: usize,
    /// How the queues wait for work (default: event mode, spinning 50 us).
    pub wait: WaitMode,
    /// Most submission entries handed to the kernel per `io_uring_enter`
    /// (default 1, as fio's `iodepth_batch_submit`; 0: all those a pass
    /// queued, in one call). io_uring
    /// plugs the block layer for a call that submits more than two
    /// entries: nothing reaches the disk until the call ends, so a pass
    /// that took 32 requests kept the disk idle while it submitted them
    /// (128 to 188 us on this project's VM) and then got their
    /// completions back together. Submitting each request (or pair) as it
    /// is ready keeps the disk busy while the rest are parsed and
    /// submitted. One
    /// entry per call did better than two at depth 32 in alternated
    /// quick runs at load 8 (blkfront's IOPS over fio's, medians of 3
    /// rounds: random writes 0.65 to 0.90, median 0.72, against 0.58 to
    /// 0.77, median 0.61; random reads 1.10 to 1.43 against 0.66 to 1.51).
    pub submit_batch: usize,
    /// Within a pass that takes several requests off the ring, look at
    /// the io_uring's completion queue after each `io_uring_enter` that
    /// submitted one (with [`BlkbackConfig::submit_batch`] above 0) and
    /// push the responses of what completed at once, instead of after the
    /// last request of the pass is submitted (default on). Each submit
    /// with the `IORING_SQ_TASKRUN` flag up posts the completions waiting
    /// as task work, so looking costs no system call. At depth the
    /// requests then go round as a stream rather than a herd: the
    /// frontend answers completions (and hands their successors over)
    /// while the worker still submits the rest of the pass, so the worker
    /// does not wait for the frontend's turnaround of a whole batch.
    /// A queue in a hostile mode does not stream.
    pub stream_responses: bool,
    /// With [`BlkbackConfig::stream_responses`], a push within a pass
    /// notifies the frontend at once when it asked (default off: the
    /// notification waits for the pass's end). A frontend that keeps
    /// looking at the ring sees streamed responses either way; off, one
    /// that sleeps is woken once per pass rather than once per push, each
    /// wake-up costing the worker an eventfd write or futex wake between
    /// two submissions.
    pub stream_notify: bool,
    /// Set the queues' io_uring up as fio does (default on):
    /// `COOP_TASKRUN`, `SINGLE_ISSUER`, `DEFER_TASKRUN` and the
    /// `IORING_SQ_TASKRUN` flag, so that completions wait until the worker
    /// asks for them instead of interrupting it one by one; older kernels
    /// get what they support. Off: a plain ring.
    pub defer_taskrun: bool,
    /// A kernel thread per queue polls the io_uring's submissions for
    /// this many milliseconds after the last (`IORING_SETUP_SQPOLL`), so
    /// that submitting costs the worker no system call (default 0: off;
    /// it excludes [`BlkbackConfig::defer_taskrun`]). The poller is one
    /// more spinning thread: on a machine with fewer cores than spinners
    /// it takes the CPU the two ends need.
    pub sqpoll_idle_ms: u32,
    /// In event mode, an idle queue sleeps in one `io_uring_enter` that
    /// either a completion or the frontend's notification ends (default
    /// on): the io_uring polls the event channel's eventfd beside the
    /// I/O, and the worker asks the frontend to notify
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`) before every sleep, with I/O in
    /// flight or not. New requests then reach the disk as soon as they
    /// are pushed, where a worker asleep on the io_uring alone saw them
    /// only at the next completion. Off: the worker sleeps on the event
    /// channel when no I/O is in flight and on the io_uring otherwise
    /// (looking at the ring again at least every 200 us).
    pub uring_wakeups: bool,
    /// Pause after each refused request (blkback's 1 ms).
    pub error_delay: Duration,
    /// A hostile mode, for tests (default none).
    pub hostile: Option<HostileMode>,
    /// Pins queue `k`'s worker thread to core `(cpu + k) % cores` (default
    /// none: the scheduler places it). With a frontend pinned to another
    /// core, two ends that spin each keep a core of their own.
    pub pin_cpu: Option<usize>,
    /// Records each request's timestamps (see [`StepTrace`]; default none).
    pub trace: Option<Arc<StepTrace>>,
}

impl BlkbackConfig {
    /// The defaults, serving `disk`.
    pub fn new(disk: impl Into<PathBuf>) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        BlkbackConfig {
            disk: disk.into(),
            read_only: false,
            direct: true,
            sector_size: 512,
            physical_sector_size: 4096,
            max_queues: u32::try_from(cpus).unwrap_or(1).max(1),
            max_ring_page_order: 4,
            max_indirect_segments: 256,
            persistent: true,
            max_persistent_grants: 1056,
            flush: true,
            discard: true,
            removable: false,
            bounce_min_segments: 64,
            wait: WaitMode::Event {
                spin: Duration::from_micros(50),
            },
            submit_batch: 1,
            stream_responses: true,
            stream_notify: false,
            defer_taskrun: true,
            sqpoll_idle_ms: 0,
            uring_wakeups: false,
            error_delay: Duration::from_millis(1),
            hostile: None,
            pin_cpu: None,
            trace: None,
        }
    }
}

/// Why a blkback could not start (or a connection failed).
#[derive(Debug)]
pub enum BlkbackError {
    /// The configuration or the disk is unusable.
    Config(String),
    /// Thread or xenstore trouble.
    Os(String),
}

impl fmt::Display for BlkbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlkbackError::Config(m) => write!(f, "blkback: {m}"),
            BlkbackError::Os(m) => write!(f, "blkback: {m}"),
        }
    }
}

impl std::error::Error for BlkbackError {}

/// What a blkback did so far ([`Blkback::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlkbackStats {
    /// Connections made.
    pub connections: u64,
    /// The live connection's number (the backend's count), if connected.
    pub connected: Option<u64>,
    /// Queues of the live connection.
    pub queues: u32,
    /// Whether the live connection uses persistent grants.
    pub persistent: bool,
    /// Requests taken off the rings.
    pub requests: u64,
    /// Reads, writes, flushes (and barriers), discards started.
    pub reads: u64,
    /// Writes started.
    pub writes: u64,
    /// Flushes and barriers started.
    pub flushes: u64,
    /// Discards started.
    pub discards: u64,
    /// Requests refused or failed, by reason.
    pub rejected: HashMap<RejectReason, u64>,
    /// Grant maps done (persistent and per request).
    pub grant_maps: u64,
    /// Reads and writes whose data went through a bounce buffer
    /// ([`BlkbackConfig::bounce_min_segments`]).
    pub bounced: u64,
    /// Persistent grants mapped now.
    pub persistent_grants: u64,
    /// Rings halted for bogus requests.
    pub ring_halts: u64,
    /// Hostile acts done.
    pub hostile_acts: u64,
    /// Grants the hostile mode keeps mapped after their connection.
    pub kept_grants: usize,
    /// The last error (a refused connection, a failed handshake).
    pub last_error: Option<String>,
    /// How the workers batched their work (over every queue).
    pub activity: Activity,
}

/// How the queues' workers batched their work, summed over every queue
/// and connection ([`BlkbackStats::activity`]): per request, how many
/// system calls and notifications it cost, and how many requests were in
/// flight at the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Requests taken off the rings (as [`BlkbackStats::requests`]).
    pub requests: u64,
    /// Passes that took at least one request off a ring.
    pub batches: u64,
    /// `io_uring_enter` calls that submitted I/O.
    pub submits: u64,
    /// Submission entries those calls handed to the kernel.
    pub sqes: u64,
    /// Nanoseconds spent in those calls, summed.
    pub submit_ns: u64,
    /// The requests in flight right after each of those calls, summed
    /// (divided by `submits`: the mean depth at the disk).
    pub in_flight_sum: u64,
    /// Passes that reaped at least one completion.
    pub reaps: u64,
    /// Completions reaped.
    pub cqes: u64,
    /// Sleeps in `io_uring_enter` waiting for a completion.
    pub uring_waits: u64,
    /// `io_uring_enter` calls made only to post completions waiting as
    /// deferred task work ([`BlkbackConfig::defer_taskrun`]).
    pub taskruns: u64,
    /// Reaps made within a pass that took requests, between two of its
    /// submissions ([`BlkbackConfig::stream_responses`]), that found
    /// completions (counted in `reaps` too).
    pub mid_pass_reaps: u64,
    /// Sleeps on the event channel (no I/O in flight).
    pub ring_sleeps: u64,
    /// Notifications the io_uring's poll of the event channel delivered
    /// ([`BlkbackConfig::uring_wakeups`]): each ended a sleep in
    /// `io_uring_enter`, or came while the worker was awake.
    pub uring_notified: u64,
    /// Notifications sent to the frontend.
    pub notifies: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    grant_maps: AtomicU64,
    pub(crate) bounced: AtomicU64,
    persistent_grants: AtomicU64,
    ring_halts: AtomicU64,
    hostile_acts: AtomicU64,
    batches: AtomicU64,
    submits: AtomicU64,
    sqes: AtomicU64,
    submit_ns: AtomicU64,
    in_flight_sum: AtomicU64,
    reaps: AtomicU64,
    cqes: AtomicU64,
    uring_waits: AtomicU64,
    pub(crate) taskruns: AtomicU64,
    pub(crate) mid_pass_reaps: AtomicU64,
    ring_sleeps: AtomicU64,
    uring_notified: AtomicU64,
    notifies: AtomicU64,
}

/// What the workers ask the handshake thread to write to xenstore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    /// The disk cannot flush: `feature-flush-cache` and `feature-barrier`
    /// become 0.
    NoFlush,
    /// The disk cannot discard: `feature-discard` becomes 0.
    NoDiscard,
    /// Re-read the size, rewrite `sectors` and `state`.
    Resize,
}

/// The state the handshake thread and the workers share.
struct Shared {
    config: BlkbackConfig,
    disk: disk::Disk,
    /// Read-only by configuration or by the backend directory's `mode`.
    read_only: AtomicBool,
    /// Discard offered on the live connection.
    discard: AtomicBool,
    stop: AtomicBool,
    stats: Counters,
    rejected: Mutex<HashMap<RejectReason, u64>>,
    controls: Mutex<Vec<Control>>,
    /// Mappings the hostile mode keeps after their connection.
    kept: Mutex<Vec<queue::Leftovers>>,
    last_error: Mutex<Option<String>>,
    /// (live connection number, queues, persistent).
    live: Mutex<Option<(u64, u32, bool)>>,
}

impl Shared {
    fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    fn discard_offered(&self) -> bool {
        self.discard.load(Ordering::Relaxed)
    }

    fn hostile_kind(&self) -> Option<Hostile> {
        self.config.hostile.map(|h| h.kind)
    }

    fn hostile_after(&self) -> u64 {
        self.config.hostile.map_or(0, |h| h.after)
    }

    fn control(&self, c: Control) {
        let mut v = lock(&self.controls);
        if !v.contains(&c) {
            v.push(c);
        }
    }

    fn count_reject(&self, r: RejectReason) {
        *lock(&self.rejected).entry(r).or_insert(0) += 1;
    }

    fn fail(&self, message: String) {
        log::error!("blkback {}: {message}", self.disk.path.display());
        *lock(&self.last_error) = Some(message);
    }
}

/// A running blkback: its handshake thread and, while connected, a worker
/// per queue. Dropping it stops it as if its process died (no state
/// written; the mappings go).
pub struct Blkback {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    domid: DomId,
}

impl fmt::Debug for Blkback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blkback")
            .field("domid", &self.domid)
            .field("disk", &self.shared.config.disk)
            .finish()
    }
}

impl Blkback {
    /// Opens the disk and starts serving the device whose backend
    /// directory is `backend` (absolute, written by the toolstack, e.g.
    /// [`crate::toolstack::DeviceSpec::backend_path`]), as domain
    /// `platform`, through the xenstore daemon at `xenstore`.
    pub fn spawn(
        platform: HostedPlatform,
        xenstore: &Path,
        backend: &str,
        config: BlkbackConfig,
    ) -> Result<Blkback, BlkbackError> {
        if config.max_ring_page_order > 4 {
            return Err(BlkbackError::Config(format!(
                "max_ring_page_order {} is above 4 (16 pages), the most a ring may span",
                config.max_ring_page_order
            )));
        }
        if config.max_queues == 0 {
            return Err(BlkbackError::Config("max_queues must be at least 1".into()));
        }
        let disk = disk::Disk::open(
            &config.disk,
            config.read_only,
            config.direct,
            config.sector_size,
            config.physical_sector_size,
        )?;
        let shared = Arc::new(Shared {
            read_only: AtomicBool::new(config.read_only),
            discard: AtomicBool::new(false),
            config,
            disk,
            stop: AtomicBool::new(false),
            stats: Counters::default(),
            rejected: Mutex::new(HashMap::new()),
            controls: Mutex::new(Vec::new()),
            kept: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
            live: Mutex::new(None),
        });
        let domid = grant_tables::Platform::domid(&platform);
        let xs = crate::xenstore::connect_as(xenstore, domid.0).map_err(|e| {
            BlkbackError::Os(format!(
                "connecting to xenstore at {}: {e}",
                xenstore.display()
            ))
        })?;
        let s = shared.clone();
        let backend = backend.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("blkback-{}", domid.0))
            .spawn(move || device::handshake_main(platform, s, xs, backend))
            .map_err(|e| BlkbackError::Os(format!("starting the handshake thread: {e}")))?;
        Ok(Blkback {
            shared,
            thread: Some(thread),
            domid,
        })
    }

    /// What it did so far.
    pub fn stats(&self) -> BlkbackStats {
        let c = &self.shared.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let live = *lock(&self.shared.live);
        BlkbackStats {
            connections: get(&c.connections),
            connected: live.map(|l| l.0),
            queues: live.map_or(0, |l| l.1),
            persistent: live.is_some_and(|l| l.2),
            requests: get(&c.requests),
            reads: get(&c.reads),
            writes: get(&c.writes),
            flushes: get(&c.flushes),
            discards: get(&c.discards),
            rejected: lock(&self.shared.rejected).clone(),
            grant_maps: get(&c.grant_maps),
            bounced: get(&c.bounced),
            persistent_grants: get(&c.persistent_grants),
            ring_halts: get(&c.ring_halts),
            hostile_acts: get(&c.hostile_acts),
            kept_grants: lock(&self.shared.kept)
                .iter()
                .map(|l| l.grants.len() + 1)
                .sum(),
            last_error: lock(&self.shared.last_error).clone(),
            activity: Activity {
                requests: get(&c.requests),
                batches: get(&c.batches),
                submits: get(&c.submits),
                sqes: get(&c.sqes),
                submit_ns: get(&c.submit_ns),
                in_flight_sum: get(&c.in_flight_sum),
                reaps: get(&c.reaps),
                cqes: get(&c.cqes),
                uring_waits: get(&c.uring_waits),
                taskruns: get(&c.taskruns),
                mid_pass_reaps: get(&c.mid_pass_reaps),
                ring_sleeps: get(&c.ring_sleeps),
                uring_notified: get(&c.uring_notified),
                notifies: get(&c.notifies),
            },
        }
    }

    /// Waits until the backend has made `n` connections and is connected
    /// (`false` after `timeout`).
    pub fn wait_connected(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if s.connections >= n && s.connected.is_some() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Re-reads the disk's size (after the file or device was resized) and,
    /// when connected, rewrites `sectors` and `state` so that the
    /// frontend's watch fires. Returns the new size in 512-byte sectors.
    pub fn refresh_size(&self) -> Result<u64, BlkbackError> {
        let sectors = self.shared.disk.refresh_size()?;
        self.shared.control(Control::Resize);
        Ok(sectors)
    }

    /// Unmaps what [`Hostile::KeepGrantsMapped`] kept. Returns how many
    /// mappings went.
    pub fn release_kept_grants(&self) -> usize {
        let kept: Vec<queue::Leftovers> = std::mem::take(&mut *lock(&self.shared.kept));
        kept.iter().map(|l| l.grants.len() + 1).sum()
    }

    /// The domain it runs as.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// Stops it as if its process died: the workers finish the I/O in
    /// flight and go, the mappings and channels are released, no state is
    /// written.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("blkback {}: the handshake thread panicked", self.domid);
            }
        }
        lock(&self.shared.kept).clear();
    }
}

impl Drop for Blkback {
    fn drop(&mut self) {
        self.halt();
    }
}
