//! The application's I/O scheduler: it decides, between the application and
//! a block ring, which waiting request goes on the ring next.
//!
//! Pure logic: no platform, no clock (the caller passes the current time in
//! nanoseconds on every call), `no_std` + `alloc`.
//!
//! # How a frontend uses it
//! The [`Scheduler`] trait is the whole interface:
//! - [`Scheduler::submit`] a [`Request`]: the queue it belongs to, the
//!   operation, the start sector, the size, an optional absolute deadline and
//!   an opaque `u64` tag the frontend uses to find its request again;
//! - whenever the ring has room (after submitting, after taking responses),
//!   [`Scheduler::build_batch`] with the free slots: it returns tags in ring
//!   order, which the frontend puts on the ring with one notify;
//! - for every response, [`Scheduler::complete`] with the tag: this feeds the
//!   cost model and the statistics;
//! - queues are created, changed and removed at run time
//!   ([`Scheduler::create_queue`], [`Scheduler::change_queue`],
//!   [`Scheduler::remove_queue`]), each with a [`QueueConfig`].
//!
//! ```
//! use iosched::{new_scheduler, Op, PolicyKind, QueueConfig, Request, Reservation,
//!               SchedConfig, Scheduler};
//!
//! let mut s = new_scheduler(PolicyKind::Apex, SchedConfig::default());
//! // A stream with 20 ms deadlines and 10 % of the device reserved.
//! let video = s
//!     .create_queue(
//!         QueueConfig::real_time(20_000_000, Reservation::share_permille(100, 2_000_000)),
//!         0,
//!     )
//!     .unwrap();
//! let logs = s.create_queue(QueueConfig::background(), 0).unwrap();
//! let read = Request { queue: video, op: Op::Read, sector: 0, bytes: 65536, deadline: None, tag: 1 };
//! let write = Request { queue: logs, op: Op::Write, sector: 64, bytes: 4096, deadline: None, tag: 2 };
//! s.submit(write, 0).unwrap();
//! s.submit(read, 0).unwrap();
//! // The ring has 32 free slots: the real-time read goes first.
//! assert_eq!(s.build_batch(0, 32), vec![1, 2]);
//! // Responses come back.
//! let done = s.complete(1, 150_000).unwrap();
//! assert_eq!(done.latency_ns, 150_000);
//! assert_eq!(s.queue(video).unwrap().stats.completed, 1);
//! ```
//!
//! **Several rings.** One scheduler instance serves one ring: it counts the
//! ring's in-flight work, and its cost model learns that ring's share of the
//! device. A frontend with several rings keeps one scheduler per ring
//! (`Box<dyn Scheduler + Send>` per ring, see [`new_scheduler`]), creates the
//! application's queues on each, and splits a queue's reservation across the
//! rings it uses. Tags need only be unique per scheduler. Nothing is shared
//! between instances, so each ring's scheduler runs under that ring's lock.
//!
//! # The policies
//! - [`Apex`] ([`apex`]): service classes, token-bucket reservations,
//!   deadlines, admission control, batch building with urgent, reservation
//!   and work-conserving passes. The module docs give the algorithm, its
//!   parameters and where it departs from APEX.
//! - [`Fifo`]: arrival order, nothing else.
//! - [`StrictPriority`]: class first (real-time, interactive, background),
//!   then the queue's priority, then arrival order.
//! - [`Deadline`] ([`deadline`]): in the manner of Linux's mq-deadline.
//!
//! # Time, units and bad input
//! Time is in ns from any origin; a `now` earlier than one already seen is
//! taken as the latest seen. Costs, tokens and reservations are in units of
//! amortized device time (1 unit = 1 ns of the whole device, see [`cost`]).
//! Refusals are [`Error`]s that change nothing; a refused submission hands
//! the request back ([`SubmitError`]). A deadline already in the past is
//! accepted: the request is as urgent as can be and counts as a miss if it
//! completes late. Removing a queue that still holds requests does not lose
//! them: the queue stops taking new ones, serves what it holds, and goes
//! away with its last completion ([`Removal::Draining`]). The scheduler
//! gives no ordering between requests: a caller that needs a write durable
//! before a flush waits for the write's completion before submitting the
//! flush, as blkif itself requires.
//!
//! # Simulation
//! [`sim`] drives any policy against a deterministic device model in
//! simulated time with the open-loop workloads of the APEX bench (W1 to
//! W3); W4, the scheduler's own cost per request, needs a real clock and is
//! measured by the bench program through [`sim::overhead`].
//!
//! # Limits
//! - The cost model does not know how many requests the device serves at
//!   once; a device that is kept below its concurrency looks slower to it
//!   (see [`cost`]), which makes APEX's batch-size bound stricter than it
//!   needs to be when real-time deadlines are short (see [`apex`]).
//! - A device that completes writes into a cache of its own and writes
//!   them back later keeps that backlog out of the scheduler's sight, and
//!   no cap on the work in flight drains it. APEX's best-effort throttle
//!   (see [`apex`]) answers with the rate: real-time completions that come
//!   late cut the rate at which best-effort work goes to the device. It
//!   learns only from requests that were already late, so it cannot save
//!   the ones caught in the stall that taught it; and a device that stalls
//!   whatever it is given (a shared disk whose other tenants flush) costs
//!   best-effort throughput under the throttle without any gain. Neither
//!   the bound nor the throttle ever leaves the device idle, so between
//!   the requests of a latency-sensitive stream a bulk write still reaches
//!   the device at almost every gap. APEX's isolation mode
//!   ([`ApexParams::isolation`], off by default) trades that work
//!   conservation for isolation: background work is held back while a
//!   latency-sensitive queue is active, for a bounded time, and
//!   [`Scheduler::next_wakeup`] tells the frontend when to build the next
//!   batch. Its adaptive form ([`ApexParams::adaptive_isolation`], also
//!   off by default) holds it back only while the latency-sensitive
//!   completions come close to their deadlines (a cap on background bytes
//!   in flight, cut by half when they do, grown back a step at a time when
//!   they recover); like the throttle it learns from requests already late,
//!   and on a shared disk whose stalls are not the background work's it
//!   holds that work back for nothing.
//! - No request merging.
#![no_std]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;

pub mod apex;
pub mod cost;
pub mod deadline;
mod engine;
mod error;
mod fifo;
mod prio;
pub mod sim;
pub mod stats;
mod tags;

pub use apex::{AdaptiveState, ApexParams, ApexPolicy, IsolationState, ThrottleState};
pub use cost::{CostModel, CostPrior};
pub use deadline::{DeadlineParams, DeadlinePolicy};
pub use engine::{Policy, Sched};
pub use error::{Error, SubmitError};
pub use fifo::FifoPolicy;
pub use prio::PrioPolicy;
pub use stats::{LogHistogram, QueueStats};
pub use tags::TagTable;

/// Time in nanoseconds, from an origin of the caller's choice.
pub type Nanos = u64;

pub(crate) const NS_PER_SEC: u64 = 1_000_000_000;

/// Largest reservation rate: 10^12 units/s, a thousand devices' worth.
pub const MAX_RATE: u64 = 1_000_000_000_000;
/// Largest bucket depth: 10^12 units, 1000 s of device time.
pub const MAX_DEPTH: u64 = 1_000_000_000_000;
/// Largest relative deadline: one hour.
pub const MAX_DEADLINE_NS: u64 = 3_600 * NS_PER_SEC;

/// A queue, as named by the scheduler that created it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub u32);

/// A block operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Flush the device's write cache.
    Flush,
    /// Discard (trim) a range.
    Discard,
}

impl Op {
    /// All operations, in index order.
    pub const ALL: [Op; 4] = [Op::Read, Op::Write, Op::Flush, Op::Discard];

    /// Index 0..4 (read, write, flush, discard).
    pub fn index(self) -> usize {
        match self {
            Op::Read => 0,
            Op::Write => 1,
            Op::Flush => 2,
            Op::Discard => 3,
        }
    }

    /// Whether it changes the disk (write, flush, discard).
    pub fn is_write(self) -> bool {
        !matches!(self, Op::Read)
    }
}

/// A request handed to the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The queue it belongs to.
    pub queue: QueueId,
    /// Operation.
    pub op: Op,
    /// Start sector (512-byte units), used by policies that batch sequential
    /// requests.
    pub sector: u64,
    /// Size in bytes (0 for a flush).
    pub bytes: u64,
    /// Absolute deadline in ns; `None` takes the queue's default relative
    /// deadline, if it has one.
    pub deadline: Option<Nanos>,
    /// The caller's tag, unique among the requests this scheduler holds.
    pub tag: u64,
}

/// A queue's service class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Per-request deadlines, earliest deadline first inside the queue.
    RealTime,
    /// Best effort, served before background work; FIFO inside.
    Interactive,
    /// Best effort, served last; FIFO inside.
    Background,
}

impl Class {
    /// All classes, in service order.
    pub const ALL: [Class; 3] = [Class::RealTime, Class::Interactive, Class::Background];
}

/// A reservation: a token bucket in cost units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reservation {
    /// Tokens earned per second (units of device time per second; 10^9 is
    /// the whole device).
    pub rate_per_sec: u64,
    /// Most tokens the bucket holds; also how far below zero the urgent pass
    /// may take it (the floor is `-depth`).
    pub depth: u64,
}

impl Reservation {
    /// No reservation.
    pub const NONE: Reservation = Reservation {
        rate_per_sec: 0,
        depth: 0,
    };

    /// A share of the device in per-mille (1000 = the whole device, 10^9
    /// units/s), with a bucket of `burst_ns` of device time.
    pub fn share_permille(permille: u64, burst_ns: u64) -> Self {
        Reservation {
            rate_per_sec: permille.saturating_mul(NS_PER_SEC / 1000),
            depth: burst_ns,
        }
    }
}

/// How a queue is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Service class.
    pub class: Class,
    /// Reservation (required, non-zero, for real-time queues).
    pub reservation: Reservation,
    /// Default relative deadline in ns, for requests that bring none
    /// (required for real-time queues).
    pub deadline_ns: Option<Nanos>,
    /// Priority inside the class for [`StrictPriority`] (higher first);
    /// ignored by the other policies.
    pub priority: u8,
}

impl QueueConfig {
    /// A real-time queue.
    pub fn real_time(deadline_ns: Nanos, reservation: Reservation) -> Self {
        Self {
            class: Class::RealTime,
            reservation,
            deadline_ns: Some(deadline_ns),
            priority: 0,
        }
    }

    /// An interactive best-effort queue without reservation.
    pub fn interactive() -> Self {
        Self {
            class: Class::Interactive,
            reservation: Reservation::NONE,
            deadline_ns: None,
            priority: 0,
        }
    }

    /// A background best-effort queue without reservation.
    pub fn background() -> Self {
        Self {
            class: Class::Background,
            reservation: Reservation::NONE,
            deadline_ns: None,
            priority: 0,
        }
    }

    /// The same with a reservation.
    pub fn with_reservation(mut self, r: Reservation) -> Self {
        self.reservation = r;
        self
    }

    /// The same with a default relative deadline.
    pub fn with_deadline(mut self, deadline_ns: Nanos) -> Self {
        self.deadline_ns = Some(deadline_ns);
        self
    }

    /// The same with a priority.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Checks the parameters (see [`Error`] for each refusal).
    pub fn validate(&self) -> Result<(), Error> {
        let r = self.reservation;
        if r.rate_per_sec > MAX_RATE {
            return Err(Error::RateTooLarge {
                rate: r.rate_per_sec,
            });
        }
        if r.depth > MAX_DEPTH {
            return Err(Error::DepthTooLarge { depth: r.depth });
        }
        if r.rate_per_sec == 0 && (r.depth != 0 || self.class == Class::RealTime) {
            return Err(Error::ZeroRate);
        }
        if r.rate_per_sec != 0 && r.depth == 0 {
            return Err(Error::ZeroDepth);
        }
        match self.deadline_ns {
            Some(0) => return Err(Error::ZeroDeadline),
            Some(d) if d > MAX_DEADLINE_NS => {
                return Err(Error::DeadlineTooLarge { deadline_ns: d })
            }
            None if self.class == Class::RealTime => return Err(Error::MissingDeadline),
            _ => {}
        }
        Ok(())
    }
}

/// What [`Scheduler::remove_queue`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The queue was empty and is gone.
    Removed,
    /// The queue still holds requests: it takes no new ones, its waiting
    /// requests are still dispatched, and it goes away with its last
    /// completion (its statistics can be read until then).
    Draining {
        /// Requests still waiting.
        pending: usize,
        /// Requests still in flight.
        in_flight: usize,
    },
}

/// Which pass of a batch took a request (counted in [`QueueStats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// APEX's urgent pass.
    Urgent,
    /// APEX's reservation pass.
    Reserved,
    /// APEX's work-conserving pass, or any other policy.
    Other,
}

/// What [`Scheduler::complete`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The request's queue.
    pub queue: QueueId,
    /// Submission to completion, ns.
    pub latency_ns: u64,
    /// By how much it missed its deadline (`None`: met, or no deadline).
    pub lateness_ns: Option<u64>,
    /// The queue was draining and this was its last request: it is gone.
    pub queue_removed: bool,
}

/// A look at one queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueView<'a> {
    /// Its configuration.
    pub config: &'a QueueConfig,
    /// Its statistics.
    pub stats: &'a QueueStats,
    /// Tokens in its bucket (between `token_floor` and the depth).
    pub tokens: i64,
    /// The lowest the bucket may go.
    pub token_floor: i64,
    /// Requests waiting.
    pub pending: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// Being removed.
    pub draining: bool,
}

/// Settings common to every policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedConfig {
    /// Starting point of the cost model.
    pub cost: CostPrior,
    /// Most requests held (waiting plus in flight).
    pub max_requests: usize,
    /// Most queues.
    pub max_queues: usize,
}

impl Default for SchedConfig {
    fn default() -> Self {
        Self {
            cost: CostPrior::default(),
            max_requests: 1 << 16,
            max_queues: 1024,
        }
    }
}

/// The scheduler a block frontend runs between the application and one ring.
pub trait Scheduler {
    /// The policy's short name (`apex`, `fifo`, `prio`, `deadline`).
    fn policy_name(&self) -> &'static str;

    /// Creates a queue. Refused on bad parameters or, for APEX's real-time
    /// queues, by admission control.
    fn create_queue(&mut self, config: QueueConfig, now: Nanos) -> Result<QueueId, Error>;

    /// Changes a queue's class, reservation, deadline or priority; its
    /// waiting requests move to their new place. Tokens are kept, clamped to
    /// the new depth.
    fn change_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
        now: Nanos,
    ) -> Result<(), Error>;

    /// Removes a queue, at once if it is empty, else after it drains (see
    /// [`Removal`]). Removing a draining queue again reports it again.
    fn remove_queue(&mut self, queue: QueueId, now: Nanos) -> Result<Removal, Error>;

    /// Takes a request; on refusal hands it back.
    fn submit(&mut self, request: Request, now: Nanos) -> Result<(), SubmitError>;

    /// Appends to `out` the tags of at most `ring_room` requests, in the
    /// order they go on the ring; returns how many. Each tag comes out once.
    fn build_batch_into(&mut self, now: Nanos, ring_room: usize, out: &mut Vec<u64>) -> usize;

    /// [`Scheduler::build_batch_into`] into a new vector.
    fn build_batch(&mut self, now: Nanos, ring_room: usize) -> Vec<u64> {
        let mut v = Vec::new();
        self.build_batch_into(now, ring_room, &mut v);
        v
    }

    /// A dispatched request completed.
    fn complete(&mut self, tag: u64, now: Nanos) -> Result<Completion, Error>;

    /// Takes a request back, for a frontend that must fail it (its ring
    /// broke, the application gave up on it). A waiting request leaves as if
    /// never submitted; an in-flight one is forgotten without feeding the
    /// cost model or the latency statistics. Either way its tag is free
    /// again, the queue's `cancelled` count goes up, and a draining queue
    /// that is left empty goes away. Returns the request's queue.
    fn cancel(&mut self, tag: u64, now: Nanos) -> Result<QueueId, Error>;

    /// Requests waiting (not yet dispatched).
    fn pending(&self) -> usize;

    /// Requests dispatched and not completed.
    fn in_flight(&self) -> usize;

    /// A look at one queue.
    fn queue(&self, queue: QueueId) -> Option<QueueView<'_>>;

    /// The live queues (draining ones included).
    fn queue_ids(&self) -> Vec<QueueId>;

    /// The cost model, e.g. to turn "N requests of S bytes per second" into a
    /// reservation rate ([`CostModel::rate_for`]).
    fn cost_model(&self) -> &CostModel;

    /// What APEX's best-effort throttle is doing (`None` for the other
    /// policies, and with the throttle off).
    fn throttle(&self) -> Option<ThrottleState> {
        None
    }

    /// What APEX's adaptive isolation is doing (`None` for the other
    /// policies, and with it off).
    fn adaptive(&self) -> Option<AdaptiveState> {
        None
    }

    /// When the scheduler wants [`Scheduler::build_batch`] called again
    /// although nothing may complete before then: `Some(t)` when its last
    /// batch held waiting work back on purpose while the ring had room
    /// (APEX's isolation mode, [`ApexParams::isolation`]), `t` being the
    /// earliest time that hold may end (the hold deadline, or the moment
    /// the latency-sensitive queues count as quiet). A frontend that
    /// sleeps waiting for completions wakes at `t` at the latest and builds
    /// a batch; held work is never held past its hold deadline by a
    /// scheduler that is asked. `None`: nothing is held on purpose (every
    /// policy but APEX in isolation mode), or nothing waits; completions
    /// alone drive the batches.
    fn next_wakeup(&self) -> Option<Nanos> {
        None
    }
}

/// APEX.
pub type Apex = Sched<ApexPolicy>;
/// First in, first out.
pub type Fifo = Sched<FifoPolicy>;
/// Strict priority.
pub type StrictPriority = Sched<PrioPolicy>;
/// mq-deadline-like.
pub type Deadline = Sched<DeadlinePolicy>;

/// The policy an application picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// [`Apex`].
    Apex,
    /// [`Fifo`].
    Fifo,
    /// [`StrictPriority`].
    Prio,
    /// [`Deadline`].
    Deadline,
}

impl PolicyKind {
    /// All of them.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Apex,
        PolicyKind::Fifo,
        PolicyKind::Prio,
        PolicyKind::Deadline,
    ];

    /// The short name, as in bench entries.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Apex => "apex",
            PolicyKind::Fifo => "fifo",
            PolicyKind::Prio => "prio",
            PolicyKind::Deadline => "deadline",
        }
    }
}

/// A scheduler of the given kind with default policy parameters.
pub fn new_scheduler(kind: PolicyKind, config: SchedConfig) -> Box<dyn Scheduler + Send> {
    match kind {
        PolicyKind::Apex => Box::new(Apex::new(config, ApexPolicy::default())),
        PolicyKind::Fifo => Box::new(Fifo::new(config, FifoPolicy::default())),
        PolicyKind::Prio => Box::new(StrictPriority::new(config, PrioPolicy::default())),
        PolicyKind::Deadline => Box::new(Deadline::new(config, DeadlinePolicy::default())),
    }
}
