//! The block frontend: [`Blkfront`], one virtual disk.
//!
//! # Life of a device
//! [`Blkfront::new`] takes the platform, the device's xenstore directory
//! and the application's wishes ([`DeviceConfig`]). [`Blkfront::poll`]
//! drives everything: the xenbus handshake (as blkfront speaks it,
//! [`xenbus::ConnectStyle::InitialisedFirst`]), the rings, and the
//! application's I/Os. For each connection to a backend:
//!
//! 1. when the backend reaches InitWait, its transport keys are read
//!    (`max-ring-page-order`, `multi-queue-max-queues`), the rings are
//!    chosen ([`RingChoice`]), granted (`2^order` pages each, read-write)
//!    and each gets an event channel; the keys (`ring-page-order`,
//!    `ring-ref0..N`, `queue-N/...`, `event-channel`, `protocol`,
//!    `feature-persistent`, `multi-queue-num-queues`) are written with
//!    Initialised, before the frontend leaves Initialising: blkback reads
//!    them at Initialised;
//! 2. when the backend is Connected, the disk's keys are read
//!    ([`DiskFeatures`]), what this connection uses is fixed
//!    ([`Negotiated`], reported in [`DeviceEvent::Connected`]), and I/O
//!    flows; the backend's `sectors` is watched, so a resize is reported
//!    ([`DeviceEvent::Resized`]) and later I/Os are checked against the
//!    new size;
//! 3. when the backend goes away (it closes, crashes or restarts), the
//!    rings are taken back (a page the backend still maps stays in the
//!    grant table's quarantine, retried from every poll), every I/O that
//!    was on them is kept, and on the next connection (a new backend
//!    instance, possibly with other features) re-issued first, in its
//!    order, split anew for the new maximum segments
//!    ([`DeviceEvent::Disconnected`], [`DeviceEvent::Connected`]). A write
//!    re-issued whole writes the same data to the same sectors again, so
//!    nothing is lost or doubled in effect.
//!
//! # I/O
//! Completion-based: [`Blkfront::submit`] (or [`Blkfront::read`],
//! [`Blkfront::write`], [`Blkfront::flush`], ...) checks the I/O against
//! the disk (read-only or CD-ROM disks refuse writes, flushes and discards;
//! starts and lengths are whole logical sectors; the I/O lies inside the
//! disk), hands it to the queue's scheduler and returns its [`Tag`];
//! [`Blkfront::poll`] (or, without xenstore, [`Blkfront::process`]) puts
//! waiting I/Os on the rings and takes responses;
//! [`Blkfront::next_completion`] hands back each finished I/O with its
//! buffers. Blocking: [`Blkfront::read_blocking`],
//! [`Blkfront::write_blocking`], [`Blkfront::wait_for`] wait on the rings'
//! event channels ([`grant_tables::EventChannels::block_any`]) with the
//! platform's clock for the timeout.
//!
//! Buffers ([`crate::buffer`]): pool buffers ([`Blkfront::buffer`], one
//! pool of persistent grants per queue), zero-copy; or the application's
//! own pages, granted per request (zero-copy) when the connection has no
//! persistent grants, and copied through pool pages when it has (a backend
//! that maps persistently keeps its mappings, so the application's grants
//! could never end; Linux's blkfront copies likewise).
//!
//! # Modes
//! [`Mode::Polling`]: the application polls; the backend is never asked to
//! notify (the response event index is left alone). [`Mode::Events`]:
//! after taking responses the driver asks for a notification on the next
//! one (`RING_FINAL_CHECK_FOR_RESPONSES`) and [`Blkfront::wait`] sleeps on
//! the event channels. [`Mode::Adaptive`]: polling, but a wait
//! ([`Blkfront::wait`], [`Blkfront::wait_io`]) spins for a bounded time
//! taking responses and only then asks for a notification and sleeps, so a
//! response that comes soon costs neither a notification nor a wake-up,
//! and an idle device no CPU. [`Mode::Spin`]: the same, with every wait
//! spinning its whole budget whatever happened before (for a thread with a
//! core of its own). Either way, requests are followed by a
//! notification only when the ring's check says the backend asked for one.
//!
//! # Hostile backends
//! Every response is copied once and checked by [`crate::InFlight`] (id in
//! range and in flight, operation matching, status known); the ring checks
//! the producer index. A violation, a stalled backend (no response within
//! [`DeviceConfig::request_timeout`]) or bad disk keys disable the device
//! with a [`DeviceError`]: it is reported ([`DeviceEvent::Broken`]), every
//! I/O not done fails with [`IoFailure::Disabled`] (none is reported done
//! that the backend did not answer), the frontend closes the connection,
//! and later calls return the error. Nothing panics on backend input.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use grant_tables::abi::{GrantRefNum, PAGE_SIZE};
use grant_tables::{
    Access, BufferPool, DomId, GrantRef, GrantStats, GrantedRing, Platform, PlatformError,
    PoolConfig, PoolMode, Port, SharedPages,
};
use iosched::{Op, QueueId, Request, Scheduler, TagTable};
use xenbus::{
    ConnectStyle, Connection, Device, Frontend, FrontendPhase, HandshakeEvent, PeerLoss,
    TeardownReason, Transaction, Transport, Wait, Xenstore, XsError,
};
use zerocopy::IntoBytes;

use crate::abi::{BlkifRequest, BlkifResponse, BlkifVdev, DiskInfo, SECTOR_SHIFT};
use crate::buffer::{Buffer, Kind, Span};
use crate::error::{DeviceError, IoFailure, Refusal};
use crate::features::{
    DiskFeatures, Feature, FrontendConfig, FrontendKey, Negotiated, QueueRing, RingChoice,
    RingFeatures,
};
use crate::inflight::{InFlight, IoStatus, SubmitError as InFlightError};
use crate::queue::{IoOptions, IoQueue};
use crate::request::{BlockIo, BlockOp, Plan, Segment};
use crate::spin::SpinGovernor;

/// The driver's name for one submitted I/O, unique for the device's life.
pub type Tag = u64;

/// Longest sleep of the blocking calls between looks at xenstore (a
/// backend that goes away is noticed within it).
const MAX_BLOCK_SLICE: Duration = Duration::from_millis(5);

/// The spin governor of `mode` (spinning nothing unless adaptive).
fn governor(mode: Mode) -> SpinGovernor {
    match mode {
        Mode::Adaptive { spin_ns } => SpinGovernor::new(spin_ns),
        Mode::Spin { spin_ns } => SpinGovernor::steady(spin_ns),
        Mode::Polling | Mode::Events => SpinGovernor::new(0),
    }
}

/// `d` in nanoseconds, saturating.
fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Most final checks for responses per ring and call (a backend that keeps
/// producing cannot keep one call going, XSA-391).
const MAX_FINAL_CHECKS: usize = 4;

/// Polling, event-driven, or polling for a bounded time then sleeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The application polls; the backend is not asked to notify.
    /// [`Blkfront::wait_io`] spins until a completion comes.
    Polling,
    /// The backend is asked to notify on the next response after every
    /// poll; [`Blkfront::wait`] and [`Blkfront::wait_io`] sleep on the
    /// event channels.
    Events,
    /// Polling, except that [`Blkfront::wait`] and [`Blkfront::wait_io`]
    /// spin for up to `spin_ns` nanoseconds taking responses, then ask the
    /// backend for a notification and sleep as [`Mode::Events`] does. A
    /// response that comes while the driver spins costs no notification
    /// and no wake-up; an idle device costs no CPU after the spin. A wait
    /// that sees its thread lose the core while spinning (a busy machine),
    /// or spins that keep catching nothing, stop the spinning for a while
    /// ([`crate::spin::SpinGovernor`]).
    Adaptive {
        /// How long a wait spins before it sleeps.
        spin_ns: u64,
    },
    /// As [`Mode::Adaptive`], but every wait spins for up to `spin_ns`
    /// whatever happened before: no back-off when the thread loses its
    /// core or spins catch nothing ([`SpinGovernor::steady`]). For a
    /// thread with a core of its own (pinned, on a machine that is not
    /// oversubscribed), where a spin that sees the response saves the
    /// notification and the wake-up of every request; on a busy machine
    /// [`Mode::Adaptive`] is better.
    Spin {
        /// How long a wait spins before it sleeps.
        spin_ns: u64,
    },
}

/// What the application asks of the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The handshake: the frontend directory (`device/vbd/51712`, relative
    /// to the domain's home or absolute) and its timeouts. Its style is
    /// always [`ConnectStyle::InitialisedFirst`].
    pub handshake: xenbus::FrontendConfig,
    /// Queues, ring size, persistent grants, segments per request.
    pub features: FrontendConfig,
    /// Pages in each queue's pool of persistent grants (the buffers of
    /// [`Blkfront::buffer`]).
    pub pool_pages: usize,
    /// Pages in each ring's pool of indirect pages (used when the backend
    /// offers indirect requests): one request takes one page per 512
    /// segments.
    pub indirect_pool_pages: usize,
    /// [`PoolMode::Untrusted`] zeroes every pool page when it comes back
    /// (XSA-403: the backend sees nothing but the payload it is handed).
    pub pool_mode: PoolMode,
    /// Polling or event-driven.
    pub mode: Mode,
    /// A request without a response for this long disables the device.
    pub request_timeout: Duration,
}

impl DeviceConfig {
    /// The defaults for the device at `frontend`: one queue, 16-page rings,
    /// persistent grants, 256 segments a request, pools of 256 data pages
    /// and 64 indirect pages, trusted backend, event-driven, 30 s request
    /// timeout.
    pub fn new(frontend: impl Into<String>) -> Self {
        DeviceConfig {
            handshake: xenbus::FrontendConfig::new(frontend, ConnectStyle::InitialisedFirst),
            features: FrontendConfig::default(),
            pool_pages: 256,
            indirect_pool_pages: 64,
            pool_mode: PoolMode::Trusted,
            mode: Mode::Events,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// An I/O: what to do, with the buffers it reads into or writes from.
pub enum Io<P: Platform>
where
    P::Pages: 'static,
{
    /// Read from `sector` (512-byte units) into the spans, in order.
    Read {
        /// First 512-byte sector.
        sector: u64,
        /// Where the data lands.
        spans: Vec<Span<P>>,
    },
    /// Write the spans, in order, from `sector` on.
    Write {
        /// First 512-byte sector.
        sector: u64,
        /// The data.
        spans: Vec<Span<P>>,
    },
    /// Make completed writes durable (flush-cache, or a barrier where only
    /// that is offered).
    Flush,
    /// Write barrier: the backend drains what it has, flushes, then
    /// completes this.
    Barrier,
    /// Discard `sectors` 512-byte sectors from `sector`.
    Discard {
        /// First 512-byte sector.
        sector: u64,
        /// How many.
        sectors: u64,
        /// A secure discard (where the backend offers `discard-secure`).
        secure: bool,
    },
}

impl<P: Platform> fmt::Debug for Io<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Io::Read { sector, spans } => f
                .debug_struct("Read")
                .field("sector", sector)
                .field("spans", spans)
                .finish(),
            Io::Write { sector, spans } => f
                .debug_struct("Write")
                .field("sector", sector)
                .field("spans", spans)
                .finish(),
            Io::Flush => f.write_str("Flush"),
            Io::Barrier => f.write_str("Barrier"),
            Io::Discard {
                sector,
                sectors,
                secure,
            } => f
                .debug_struct("Discard")
                .field("sector", sector)
                .field("sectors", sectors)
                .field("secure", secure)
                .finish(),
        }
    }
}

impl<P: Platform> Io<P>
where
    P::Pages: 'static,
{
    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Io::Read { .. } => "read",
            Io::Write { .. } => "write",
            Io::Flush => "flush",
            Io::Barrier => "barrier",
            Io::Discard { secure: false, .. } => "discard",
            Io::Discard { secure: true, .. } => "secure discard",
        }
    }

    /// The spans (empty for flush, barrier and discard).
    pub fn spans(&self) -> &[Span<P>] {
        match self {
            Io::Read { spans, .. } | Io::Write { spans, .. } => spans,
            _ => &[],
        }
    }

    /// Takes the spans out.
    pub fn into_spans(self) -> Vec<Span<P>> {
        match self {
            Io::Read { spans, .. } | Io::Write { spans, .. } => spans,
            _ => Vec::new(),
        }
    }

    fn split(self) -> (IoKind, Vec<Span<P>>) {
        match self {
            Io::Read { sector, spans } => (IoKind::Read { sector }, spans),
            Io::Write { sector, spans } => (IoKind::Write { sector }, spans),
            Io::Flush => (IoKind::Flush, Vec::new()),
            Io::Barrier => (IoKind::Barrier, Vec::new()),
            Io::Discard {
                sector,
                sectors,
                secure,
            } => (
                IoKind::Discard {
                    sector,
                    sectors,
                    secure,
                },
                Vec::new(),
            ),
        }
    }

    fn join(kind: IoKind, spans: Vec<Span<P>>) -> Self {
        match kind {
            IoKind::Read { sector } => Io::Read { sector, spans },
            IoKind::Write { sector } => Io::Write { sector, spans },
            IoKind::Flush => Io::Flush,
            IoKind::Barrier => Io::Barrier,
            IoKind::Discard {
                sector,
                sectors,
                secure,
            } => Io::Discard {
                sector,
                sectors,
                secure,
            },
        }
    }
}

/// An I/O [`Blkfront::submit`] refused, handed back untouched.
pub struct Refused<P: Platform>
where
    P::Pages: 'static,
{
    /// Why.
    pub error: Refusal,
    /// The I/O, with its buffers.
    pub io: Io<P>,
}

impl<P: Platform> fmt::Debug for Refused<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("error", &self.error)
            .field("io", &self.io)
            .finish()
    }
}

impl<P: Platform> fmt::Display for Refused<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused: {}", self.io.name(), self.error)
    }
}

/// A finished I/O.
pub struct Completion<P: Platform>
where
    P::Pages: 'static,
{
    /// The tag [`Blkfront::submit`] returned.
    pub tag: Tag,
    /// The device queue it went through.
    pub queue: usize,
    /// `Ok` only when the backend answered success for every part of it.
    pub result: Result<(), IoFailure>,
    /// The I/O with its spans handed back (a read's data is in them),
    /// except spans whose pages stay in quarantine ([`Completion::held_spans`]).
    pub io: Io<P>,
    /// Spans of the application's own pages not handed back: the backend
    /// still mapped them when the I/O ended, so they stay in the grant
    /// table's quarantine (freed once the backend lets go), never reused.
    pub held_spans: usize,
    /// Submission to completion, ns of the platform's clock.
    pub latency_ns: u64,
    /// How many times it was re-issued on a new connection.
    pub reissued: u32,
}

impl<P: Platform> fmt::Debug for Completion<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("tag", &self.tag)
            .field("queue", &self.queue)
            .field("result", &self.result)
            .field("io", &self.io)
            .field("held_spans", &self.held_spans)
            .field("latency_ns", &self.latency_ns)
            .field("reissued", &self.reissued)
            .finish()
    }
}

/// What happened to the device, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// A connection is up; I/O flows (re-issued I/Os first).
    Connected {
        /// The handshake's connection number.
        connection: u64,
        /// What it uses.
        disk: Negotiated,
    },
    /// The backend went away; its I/Os wait for the next connection.
    Disconnected {
        /// The connection that ended.
        connection: u64,
        /// Why.
        loss: PeerLoss,
        /// I/Os that were on its rings and will be re-issued.
        reissue: usize,
    },
    /// The disk's size changed, in 512-byte sectors.
    Resized {
        /// The size before.
        old: u64,
        /// The size now.
        new: u64,
    },
    /// The backend answered that it does not support a feature; it is off.
    FeatureLost(Feature),
    /// The device is disabled.
    Broken(DeviceError),
    /// The device was closed ([`Blkfront::close`]) and the backend followed.
    Closed,
    /// The toolstack removed the device.
    Removed,
}

/// Counters of the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// I/Os submitted.
    pub submitted: u64,
    /// I/Os finished (with any result).
    pub completed: u64,
    /// I/Os finished with a failure.
    pub failed: u64,
    /// I/O re-issues on a new connection.
    pub reissued: u64,
    /// Ring requests put on the rings.
    pub requests: u64,
    /// Of which indirect requests.
    pub indirect_requests: u64,
    /// Responses taken.
    pub responses: u64,
    /// Notifications sent to the backend.
    pub notifications: u64,
    /// Connections that reached Connected.
    pub connections: u64,
}

/// Why a blocking call returned without success.
pub enum BlockingError<P: Platform>
where
    P::Pages: 'static,
{
    /// The I/O was refused before submission.
    Refused(Refused<P>),
    /// The I/O completed with a failure (its buffers are in the completion).
    Failed(Completion<P>),
    /// The wait ran out; the I/O is still in flight and completes later
    /// through [`Blkfront::next_completion`].
    TimedOut {
        /// The I/O.
        tag: Tag,
    },
    /// The device is disabled (the I/O completes with a failure through
    /// [`Blkfront::next_completion`]).
    Device(Box<DeviceError>),
    /// No such I/O is pending (it was handed back already, or never
    /// submitted).
    NoSuchIo {
        /// The tag asked for.
        tag: Tag,
    },
}

impl<P: Platform> fmt::Debug for BlockingError<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockingError::Refused(r) => f.debug_tuple("Refused").field(r).finish(),
            BlockingError::Failed(c) => f.debug_tuple("Failed").field(c).finish(),
            BlockingError::TimedOut { tag } => {
                f.debug_struct("TimedOut").field("tag", tag).finish()
            }
            BlockingError::Device(e) => f.debug_tuple("Device").field(e).finish(),
            BlockingError::NoSuchIo { tag } => {
                f.debug_struct("NoSuchIo").field("tag", tag).finish()
            }
        }
    }
}

impl<P: Platform> fmt::Display for BlockingError<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockingError::Refused(r) => write!(f, "{r}"),
            BlockingError::Failed(c) => match &c.result {
                Err(e) => write!(f, "blkfront: {} {} failed: {e}", c.io.name(), c.tag),
                Ok(()) => write!(f, "blkfront: {} {} succeeded", c.io.name(), c.tag),
            },
            BlockingError::TimedOut { tag } => write!(
                f,
                "blkfront: I/O {tag} is not done yet; it completes later through next_completion"
            ),
            BlockingError::Device(e) => write!(f, "{e}"),
            BlockingError::NoSuchIo { tag } => write!(
                f,
                "blkfront: no I/O {tag} is pending; it was handed back already or never submitted"
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Internal state.

#[derive(Clone, Copy, Debug)]
enum IoKind {
    Read {
        sector: u64,
    },
    Write {
        sector: u64,
    },
    Flush,
    Barrier,
    Discard {
        sector: u64,
        sectors: u64,
        secure: bool,
    },
}

impl IoKind {
    fn sched_op(self) -> Op {
        match self {
            IoKind::Read { .. } => Op::Read,
            IoKind::Write { .. } => Op::Write,
            IoKind::Flush | IoKind::Barrier => Op::Flush,
            IoKind::Discard { .. } => Op::Discard,
        }
    }

    fn sector(self) -> u64 {
        match self {
            IoKind::Read { sector } | IoKind::Write { sector } => sector,
            IoKind::Discard { sector, .. } => sector,
            IoKind::Flush | IoKind::Barrier => 0,
        }
    }

    fn reads(self) -> bool {
        matches!(self, IoKind::Read { .. })
    }
}

/// Grants of the pages of one span of the application's own pages.
struct PageGrants<F: grant_tables::GrantTableFrames> {
    table: Arc<grant_tables::GrantTable<F>>,
    peer: DomId,
    access: Access,
    /// Page index of `refs[0]` in the allocation.
    first: usize,
    refs: Vec<GrantRef>,
}

struct SpanSlot<P: Platform>
where
    P::Pages: 'static,
{
    /// `None` once its pages went to quarantine.
    span: Option<Span<P>>,
    grants: Option<PageGrants<P::GrantFrames>>,
    /// Pool pages the span's data goes through when the backend maps
    /// persistently (the application's pages are never handed to a backend
    /// that keeps its mappings), and the domain they are granted to.
    bounce: Vec<grant_tables::PoolBuffer<P>>,
    bounce_peer: Option<DomId>,
}

struct Entry<P: Platform>
where
    P::Pages: 'static,
{
    kind: IoKind,
    spans: Vec<SpanSlot<P>>,
    /// The application's vector of spans, emptied at submission and
    /// filled again at completion (no allocation per I/O for it).
    span_buf: Vec<Span<P>>,
    queue: usize,
    submitted_ns: u64,
    /// `(ring, since)` while its requests are on a ring.
    on_ring: Option<(usize, u64)>,
    reissued: u32,
    /// Its wire form and plan, made at submission when every span is a
    /// pool buffer (whose segments are final then) and kept for placing
    /// it on the ring of that same connection.
    prepared: Option<Prepared>,
}

/// An I/O's wire form and its split into requests, for one connection.
struct Prepared {
    /// The connection the plan was made for.
    disk: Negotiated,
    io: BlockIo,
    plan: Plan,
}

/// One ring of the live connection.
struct RingState<P: Platform>
where
    P::Pages: 'static,
{
    ring: GrantedRing<P, BlkifRequest, BlkifResponse>,
    port: Port,
    /// Created when the connection is up (its size is the ring's).
    inflight: Option<InFlight>,
    /// Indirect pages of requests on the ring, by grant ref.
    indirect: BTreeMap<GrantRefNum, grant_tables::PoolBuffer<P>>,
}

/// What [`Core::place`] did with an I/O.
enum Placed {
    /// Its requests are on the ring.
    OnRing,
    /// Not enough ring slots or indirect pages now: it stays first.
    Wait,
    /// It cannot go on this connection.
    Fail(IoFailure),
    /// No such I/O (already finished).
    Gone,
}

/// The device's state; the handshake's [`Device`].
struct Core<P: Platform>
where
    P::Pages: 'static,
{
    platform: Arc<P>,
    config: DeviceConfig,
    handle: BlkifVdev,
    /// The backend domain the pools are granted to.
    peer: Option<DomId>,
    /// Data pools, one per device queue.
    pools: Vec<BufferPool<P>>,
    /// Indirect page pools, one per ring index.
    indirect_pools: Vec<BufferPool<P>>,
    /// The live connection's choice and rings (set up, maybe not connected).
    choice: Option<RingChoice>,
    keys: Vec<FrontendKey>,
    /// Keys the previous connection published that this one does not
    /// write (removed by `publish`, so a backend never reads a stale
    /// `multi-queue-num-queues` or `queue-N/` directory).
    stale: Vec<String>,
    /// The paths of `keys`, kept after the connection ends.
    published: Vec<String>,
    rings: Vec<RingState<P>>,
    connected: bool,
    /// The disk as last negotiated.
    disk: Option<Negotiated>,
    ios: TagTable<Entry<P>>,
    queues: Vec<IoQueue>,
    completions: VecDeque<Completion<P>>,
    events: VecDeque<DeviceEvent>,
    broken: Option<DeviceError>,
    closed: bool,
    next_tag: Tag,
    next_timeout_check: u64,
    /// `<backend>/sectors` while watched.
    resize_watch: Option<String>,
    resize_token: String,
    stats: DeviceStats,
    /// How long adaptive waits spin.
    spin: SpinGovernor,
    /// Emptied span vectors of finished I/Os, reused by the next
    /// submissions (at most [`SPARE_SLOT_VECS`]).
    spare_slots: Vec<Vec<SpanSlot<P>>>,
}

/// How many emptied span vectors [`Core`] keeps for reuse: a ring's worth
/// of I/Os in flight on a few queues.
const SPARE_SLOT_VECS: usize = 256;

impl<P: Platform> Core<P>
where
    P::Pages: 'static,
{
    fn now(&self) -> u64 {
        self.platform.now_ns()
    }

    fn table(&self) -> Result<&Arc<grant_tables::GrantTable<P::GrantFrames>>, PlatformError> {
        self.platform.grant_table()
    }

    fn fail_device(&mut self, error: DeviceError) {
        if self.broken.is_some() {
            return;
        }
        log::error!("{error}");
        self.broken = Some(error.clone());
        self.events.push_back(DeviceEvent::Broken(error.clone()));
        self.fail_all(IoFailure::Disabled(Box::new(error)));
    }

    /// Finishes every I/O the device holds with `failure`.
    fn fail_all(&mut self, failure: IoFailure) {
        let now = self.now();
        for q in self.queues.iter_mut() {
            q.drain_all(now);
        }
        for r in self.rings.iter_mut() {
            r.indirect.clear();
        }
        let tags: Vec<Tag> = self.ios.sorted_tags();
        for tag in tags {
            if let Some(entry) = self.ios.remove(tag) {
                if let Some(q) = self.queues.get_mut(entry.queue) {
                    q.complete(tag, now);
                }
                self.finish_entry(tag, entry, Err(failure.clone()), now);
            }
        }
    }

    /// Ends the per-request grants of an I/O's pages and queues its
    /// completion.
    fn finish_entry(
        &mut self,
        tag: Tag,
        mut entry: Entry<P>,
        result: Result<(), IoFailure>,
        now: u64,
    ) {
        let mut held = 0;
        let copy_back = result.is_ok() && entry.kind.reads();
        for slot in entry.spans.iter_mut() {
            if copy_back {
                Self::unbounce(slot);
            }
            slot.bounce.clear();
            if !Self::end_grants(slot) {
                held += 1;
            }
        }
        let mut spans = entry.span_buf;
        spans.clear();
        spans.extend(entry.spans.drain(..).filter_map(|s| s.span));
        if self.spare_slots.len() < SPARE_SLOT_VECS {
            self.spare_slots.push(entry.spans);
        }
        self.stats.completed += 1;
        if result.is_err() {
            self.stats.failed += 1;
        }
        self.completions.push_back(Completion {
            tag,
            queue: entry.queue,
            result,
            io: Io::join(entry.kind, spans),
            held_spans: held,
            latency_ns: now.saturating_sub(entry.submitted_ns),
            reissued: entry.reissued,
        });
    }

    /// Ends a span's page grants. `false` when the backend still maps a
    /// page: the pages then stay in the grant table's quarantine (freed
    /// once it lets go) and the span is gone.
    fn end_grants(slot: &mut SpanSlot<P>) -> bool {
        let Some(g) = slot.grants.take() else {
            return true;
        };
        let Some(Span {
            buffer,
            offset,
            len,
        }) = slot.span.take()
        else {
            return false;
        };
        let pages = match buffer.kind {
            Kind::Pages(p) => p,
            kind => {
                // Grants are only ever made for the application's pages;
                // a pool buffer keeps its own.
                slot.span = Some(Span {
                    buffer: Buffer { kind },
                    offset,
                    len,
                });
                return true;
            }
        };
        match g.table.end_access_all(g.refs, pages) {
            Ok(pages) => {
                slot.span = Some(Span {
                    buffer: Buffer::from_pages(pages),
                    offset,
                    len,
                });
                true
            }
            Err(e) => {
                log::warn!("blkfront: a request's pages are still mapped by the backend: {e}");
                false
            }
        }
    }

    /// Copies a span of the application's pages into pool buffers of
    /// `pool` (for a write: its data; for a read: room), page by page.
    /// `Ok(false)`: the pool has too few buffers free now.
    fn bounce(
        slot: &mut SpanSlot<P>,
        pool: &BufferPool<P>,
        peer: DomId,
        write: bool,
    ) -> Result<bool, IoFailure> {
        if slot.bounce_peer == Some(peer) && !slot.bounce.is_empty() {
            return Ok(true);
        }
        slot.bounce.clear();
        slot.bounce_peer = None;
        let Some(span) = &slot.span else {
            return Ok(true);
        };
        let n = span.len.div_ceil(PAGE_SIZE);
        if n > pool.capacity() {
            return Err(IoFailure::TooLarge {
                needed: n,
                capacity: pool.capacity(),
            });
        }
        let mut bufs = Vec::with_capacity(n);
        let mut page = alloc::vec![0u8; PAGE_SIZE];
        for k in 0..n {
            let Some(mut b) = pool.take() else {
                return Ok(false);
            };
            if write {
                let len = (span.len - k * PAGE_SIZE).min(PAGE_SIZE);
                let chunk = &mut page[..len];
                // In bounds: checked at submission.
                let _ = span.buffer.read_at(span.offset + k * PAGE_SIZE, chunk);
                let _ = b.write_at(0, chunk);
            }
            bufs.push(b);
        }
        slot.bounce = bufs;
        slot.bounce_peer = Some(peer);
        Ok(true)
    }

    /// Copies what a read left in a span's bounce buffers into its pages.
    fn unbounce(slot: &mut SpanSlot<P>) {
        if slot.bounce.is_empty() {
            return;
        }
        let Some(span) = slot.span.as_mut() else {
            return;
        };
        let mut page = alloc::vec![0u8; PAGE_SIZE];
        for (k, b) in slot.bounce.iter().enumerate() {
            let len = (span.len - k * PAGE_SIZE).min(PAGE_SIZE);
            let chunk = &mut page[..len];
            let _ = b.read_at(0, chunk);
            let _ = span.buffer.write_at(span.offset + k * PAGE_SIZE, chunk);
        }
    }

    /// Makes sure the pages of an application span are granted to `peer`
    /// with `access` (pool buffers need nothing).
    fn ensure_grants(
        &self,
        slot: &mut SpanSlot<P>,
        peer: DomId,
        access: Access,
    ) -> Result<(), IoFailure> {
        let is_pages = matches!(
            slot.span.as_ref().map(|s| &s.buffer.kind),
            Some(Kind::Pages(_))
        );
        if !is_pages {
            return Ok(());
        }
        if let Some(g) = &slot.grants {
            if g.peer == peer && g.access == access {
                return Ok(());
            }
            // Granted to an earlier backend or with other rights: end and
            // grant again.
            if !Self::end_grants(slot) {
                return Err(IoFailure::BackendChanged);
            }
        }
        let Some(span) = &slot.span else {
            return Ok(());
        };
        let Kind::Pages(pages) = &span.buffer.kind else {
            return Ok(());
        };
        let (first, last) = span.page_range();
        let table = self.table().map_err(IoFailure::Platform)?.clone();
        let mut refs = Vec::with_capacity(last + 1 - first);
        for page in first..=last {
            let granted = match pages.gfn(page) {
                Some(gfn) => table.grant_access(peer, gfn, access),
                None => Err(grant_tables::GrantError::NoFrame { index: page }),
            };
            match granted {
                Ok(r) => refs.push(r),
                Err(e) => {
                    for r in refs {
                        // Not handed to the backend yet: cannot be mapped.
                        let _ = table.end_access(r);
                    }
                    return Err(IoFailure::Grant(e));
                }
            }
        }
        slot.grants = Some(PageGrants {
            table,
            peer,
            access,
            first,
            refs,
        });
        Ok(())
    }

    /// The wire segments of an I/O's spans (grant refs of ungranted pages
    /// as 0, for checking only).
    fn segments(spans: &[SpanSlot<P>]) -> Vec<Segment> {
        let mut out = Vec::new();
        for slot in spans {
            let Some(span) = &slot.span else { continue };
            if !slot.bounce.is_empty() {
                for (k, b) in slot.bounce.iter().enumerate() {
                    let len = (span.len - k * PAGE_SIZE).min(PAGE_SIZE);
                    out.push(Segment {
                        gref: b.gref(),
                        offset: u32::from(b.offset()),
                        len: len as u32,
                    });
                }
                continue;
            }
            match &span.buffer.kind {
                Kind::Pool { buf, .. } => out.push(Segment {
                    gref: buf.gref(),
                    // Inside the page-sized buffer (checked at submission).
                    offset: (usize::from(buf.offset()) + span.offset) as u32,
                    len: span.len as u32,
                }),
                Kind::Pages(_) => {
                    let (first, last) = span.page_range();
                    let end = span.offset + span.len;
                    for page in first..=last {
                        let start = span.offset.max(page * PAGE_SIZE);
                        let stop = end.min((page + 1) * PAGE_SIZE);
                        let gref = slot
                            .grants
                            .as_ref()
                            .and_then(|g| g.refs.get(page - g.first))
                            .map_or(0, GrantRef::raw);
                        out.push(Segment {
                            gref,
                            offset: (start - page * PAGE_SIZE) as u32,
                            len: (stop - start) as u32,
                        });
                    }
                }
            }
        }
        out
    }

    fn block_op(kind: IoKind, spans: &[SpanSlot<P>]) -> BlockOp {
        match kind {
            IoKind::Read { sector } => BlockOp::Read {
                sector,
                segments: Self::segments(spans),
            },
            IoKind::Write { sector } => BlockOp::Write {
                sector,
                segments: Self::segments(spans),
            },
            IoKind::Flush => BlockOp::Flush,
            IoKind::Barrier => BlockOp::Barrier,
            IoKind::Discard {
                sector,
                sectors,
                secure,
            } => BlockOp::Discard {
                sector,
                sectors,
                secure,
            },
        }
    }

    // ---- submission ----

    fn submit(&mut self, io: Io<P>, opts: IoOptions) -> Result<Tag, Refused<P>> {
        let refuse = |error, io| Err(Refused { error, io });
        if let Some(e) = &self.broken {
            return refuse(Refusal::Disabled(Box::new(e.clone())), io);
        }
        if self.closed {
            return refuse(Refusal::Closed, io);
        }
        let Some(disk) = self.disk else {
            return refuse(Refusal::NotConnected, io);
        };
        if opts.queue >= self.queues.len() {
            let queues = self.queues.len();
            return refuse(
                Refusal::NoSuchQueue {
                    queue: opts.queue,
                    queues,
                },
                io,
            );
        }
        for (index, s) in io.spans().iter().enumerate() {
            if !s.in_bounds() {
                let buffer_len = s.buffer.len();
                return refuse(
                    Refusal::BadSpan {
                        index,
                        offset: s.offset,
                        len: s.len,
                        buffer_len,
                    },
                    io,
                );
            }
        }
        let (kind, mut span_buf) = io.split();
        let mut slots = self.spare_slots.pop().unwrap_or_default();
        slots.clear();
        slots.extend(span_buf.drain(..).map(|s| SpanSlot {
            span: Some(s),
            grants: None,
            bounce: Vec::new(),
            bounce_peer: None,
        }));
        let tag = self.next_tag;
        let check = BlockIo {
            tag,
            op: Self::block_op(kind, &slots),
        };
        let back = |slots: Vec<SpanSlot<P>>| {
            Io::join(kind, slots.into_iter().filter_map(|s| s.span).collect())
        };
        let plan = match Plan::new(&check, &disk) {
            Ok(p) => p,
            Err(e) => return refuse(Refusal::Io(e), back(slots)),
        };
        let capacity = disk.ring_size() as usize;
        if plan.parts().len() > capacity {
            let needed = plan.parts().len();
            return refuse(Refusal::TooLarge { needed, capacity }, back(slots));
        }
        let bytes: u64 = slots
            .iter()
            .filter_map(|s| s.span.as_ref())
            .map(|s| s.len as u64)
            .sum();
        let now = self.now();
        let all_pooled = slots.iter().all(|s| {
            matches!(
                s.span,
                Some(Span {
                    buffer: Buffer {
                        kind: Kind::Pool { .. }
                    },
                    ..
                })
            )
        });
        let prepared = all_pooled.then_some(Prepared {
            disk,
            io: check,
            plan,
        });
        let queue = &mut self.queues[opts.queue];
        let request = Request {
            queue: opts.class.unwrap_or(queue.default_class()),
            op: kind.sched_op(),
            sector: kind.sector(),
            bytes,
            deadline: opts.deadline_ns,
            tag,
        };
        if let Err(e) = queue.submit(request, now) {
            return refuse(Refusal::Scheduler(e.error), back(slots));
        }
        self.next_tag += 1;
        self.stats.submitted += 1;
        self.ios.insert_new(
            tag,
            Entry {
                kind,
                spans: slots,
                queue: opts.queue,
                span_buf,
                submitted_ns: now,
                on_ring: None,
                reissued: 0,
                prepared,
            },
        );
        Ok(tag)
    }

    // ---- the rings ----

    /// Takes responses, puts waiting I/Os on the rings, checks timeouts.
    fn process(&mut self) -> Result<usize, DeviceError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        if !self.connected {
            return Ok(0);
        }
        let mut n = 0;
        for r in 0..self.rings.len() {
            n += self.reap(r, self.config.mode == Mode::Events);
            if let Some(e) = &self.broken {
                return Err(e.clone());
            }
        }
        // One reading of the clock serves the pass (a reading costs tens
        // of nanoseconds in a guest).
        let now = self.now();
        self.dispatch_at(now);
        self.check_timeouts(now);
        match &self.broken {
            Some(e) => Err(e.clone()),
            None => Ok(n),
        }
    }

    /// Takes the responses waiting on ring `r`; with `rearm`, asks for a
    /// notification on the next one. Returns how many were taken. The
    /// completions of one pass share one reading of the clock, taken at
    /// the first response.
    fn reap(&mut self, r: usize, rearm: bool) -> usize {
        let mut taken = 0;
        let mut checks = 0;
        let mut now = None;
        loop {
            let Some(state) = self.rings.get_mut(r) else {
                return taken;
            };
            match state.ring.take_response() {
                Ok(Some(rsp)) => {
                    taken += 1;
                    let at = match now {
                        Some(t) => t,
                        None => *now.insert(self.now()),
                    };
                    if !self.handle_response(r, &rsp, at) {
                        return taken;
                    }
                }
                Ok(None) => {
                    if !rearm || checks >= MAX_FINAL_CHECKS {
                        return taken;
                    }
                    checks += 1;
                    match state.ring.final_check_for_responses() {
                        Ok(true) => {}
                        Ok(false) => return taken,
                        Err(error) => {
                            self.fail_device(DeviceError::Ring { ring: r, error });
                            return taken;
                        }
                    }
                }
                Err(error) => {
                    self.fail_device(DeviceError::Ring { ring: r, error });
                    return taken;
                }
            }
        }
    }

    /// Checks and applies one response, seen at `now`. `false` when it
    /// disabled the device.
    fn handle_response(&mut self, r: usize, rsp: &BlkifResponse, now: u64) -> bool {
        self.stats.responses += 1;
        let outcome = match self.rings.get_mut(r).and_then(|s| s.inflight.as_mut()) {
            Some(inflight) => inflight.complete(rsp),
            // Responses before the connection is up answer nothing.
            None => Err(crate::inflight::ResponseError::NotInFlight { id: rsp.id }),
        };
        let c = match outcome {
            Ok(c) => c,
            Err(error) => {
                self.fail_device(DeviceError::BadResponse { ring: r, error });
                return false;
            }
        };
        if let Some(state) = self.rings.get_mut(r) {
            for g in &c.indirect_grefs {
                // Back to the pool.
                state.indirect.remove(g);
            }
        }
        if let Some(f) = c.lost_feature {
            if let Some(d) = self.disk.as_mut() {
                d.disable(f);
            }
            self.events.push_back(DeviceEvent::FeatureLost(f));
        }
        if let Some(done) = c.done {
            let tag = done.io.tag;
            let result = match done.status {
                IoStatus::Okay => Ok(()),
                IoStatus::Error => Err(IoFailure::Error),
                IoStatus::NotSupported => Err(IoFailure::NotSupported),
            };
            if let Some(entry) = self.ios.remove(tag) {
                if let Some(q) = self.queues.get_mut(entry.queue) {
                    q.complete(tag, now);
                }
                self.finish_entry(tag, entry, result, now);
            }
        }
        true
    }

    /// Puts waiting I/Os on the rings: device queue `q` feeds ring
    /// `q % rings`. One notification per ring, when the ring asks.
    fn dispatch(&mut self) {
        let now = self.now();
        self.dispatch_at(now);
    }

    /// [`Core::dispatch`] at `now`.
    fn dispatch_at(&mut self, now: u64) {
        let nrings = self.rings.len();
        let Some(disk) = self.disk else { return };
        if nrings == 0 || !self.connected || self.broken.is_some() {
            return;
        }
        for r in 0..nrings {
            let mut put = false;
            let mut q = r;
            while q < self.queues.len() {
                loop {
                    let room = self.rings[r].inflight.as_ref().map_or(0, InFlight::free);
                    if room == 0 {
                        break;
                    }
                    let Some(tag) = self.queues[q].peek(now, room) else {
                        break;
                    };
                    match self.place(r, tag, &disk, now) {
                        Placed::OnRing => {
                            self.queues[q].pop();
                            put = true;
                        }
                        Placed::Wait => break,
                        Placed::Gone => self.queues[q].pop(),
                        Placed::Fail(failure) => {
                            self.queues[q].pop();
                            if let Some(entry) = self.ios.remove(tag) {
                                log::warn!("blkfront: I/O {tag} cannot go on the ring: {failure}");
                                self.queues[q].complete(tag, now);
                                self.finish_entry(tag, entry, Err(failure), now);
                            }
                        }
                    }
                    if self.broken.is_some() {
                        return;
                    }
                }
                q += nrings;
            }
            if put {
                let state = &mut self.rings[r];
                if state.ring.push_requests() {
                    self.stats.notifications += 1;
                    if let Err(e) = self.platform.notify(state.port) {
                        self.fail_device(DeviceError::Platform(e));
                        return;
                    }
                }
            }
        }
    }

    /// Puts I/O `tag` on ring `r`, all its requests or none.
    fn place(&mut self, r: usize, tag: Tag, disk: &Negotiated, now: u64) -> Placed {
        let Some(peer) = self.peer else {
            return Placed::Wait;
        };
        let Some(mut entry) = self.ios.remove(tag) else {
            return Placed::Gone;
        };
        let placed = self.place_entry(r, tag, &mut entry, peer, disk, now);
        self.ios.insert_new(tag, entry);
        placed
    }

    fn place_entry(
        &mut self,
        r: usize,
        tag: Tag,
        entry: &mut Entry<P>,
        peer: DomId,
        disk: &Negotiated,
        now: u64,
    ) -> Placed {
        // Buffers: pool pages must be granted to this backend's domain.
        // The application's pages go through pool pages when the backend
        // maps persistently (it would keep them mapped, so their grants
        // could never end), else they are granted for this request:
        // read-only for a write.
        let access = if entry.kind.reads() {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        };
        let write = !entry.kind.reads();
        let mut all_pooled = true;
        for i in 0..entry.spans.len() {
            let slot = &mut entry.spans[i];
            let (pooled, pool_peer) = match &slot.span {
                Some(Span {
                    buffer:
                        Buffer {
                            kind: Kind::Pool { peer: p, .. },
                        },
                    ..
                }) => (true, Some(*p)),
                Some(_) => (false, None),
                None => continue,
            };
            if pooled {
                if pool_peer != Some(peer) {
                    return Placed::Fail(IoFailure::BackendChanged);
                }
                continue;
            }
            all_pooled = false;
            if disk.persistent || !slot.bounce.is_empty() {
                if slot.grants.is_some() && !Self::end_grants(slot) {
                    return Placed::Fail(IoFailure::BackendChanged);
                }
                let Some(pool) = self.pools.get(entry.queue) else {
                    return Placed::Wait;
                };
                match Self::bounce(slot, pool, peer, write) {
                    Ok(true) => continue,
                    Ok(false) => return Placed::Wait,
                    Err(f) => return Placed::Fail(f),
                }
            }
            if let Err(f) = self.ensure_grants(slot, peer, access) {
                return Placed::Fail(f);
            }
        }
        // The wire form and plan made at submission serve while the spans
        // are the pool buffers they were and the connection is the same.
        let reuse = all_pooled
            && entry
                .prepared
                .as_ref()
                .is_some_and(|p| p.disk == *disk && p.io.tag == tag);
        if !reuse {
            let io = BlockIo {
                tag,
                op: Self::block_op(entry.kind, &entry.spans),
            };
            let plan = match Plan::new(&io, disk) {
                Ok(p) => p,
                Err(e) => return Placed::Fail(IoFailure::Refused(e)),
            };
            entry.prepared = Some(Prepared {
                disk: *disk,
                io,
                plan,
            });
        }
        let Some(plan) = entry.prepared.as_ref().map(|p| &p.plan) else {
            return Placed::Wait;
        };
        let Some(state) = self.rings.get_mut(r) else {
            return Placed::Wait;
        };
        let Some(inflight) = state.inflight.as_mut() else {
            return Placed::Wait;
        };
        let needed = plan.parts().len();
        if needed > inflight.capacity() {
            return Placed::Fail(IoFailure::TooLarge {
                needed,
                capacity: inflight.capacity(),
            });
        }
        if needed > inflight.free() {
            return Placed::Wait;
        }
        let pages = plan.indirect_pages();
        let mut indirect = Vec::with_capacity(pages);
        if pages > 0 {
            let Some(pool) = self.indirect_pools.get(r) else {
                return Placed::Fail(IoFailure::Refused(crate::request::IoError::Unsupported {
                    op: "indirect request",
                }));
            };
            if pages > pool.capacity() {
                return Placed::Fail(IoFailure::TooLarge {
                    needed: pages,
                    capacity: pool.capacity(),
                });
            }
            for _ in 0..pages {
                match pool.take() {
                    Some(b) => indirect.push(b),
                    // Back to the pool on drop; wait for completions.
                    None => return Placed::Wait,
                }
            }
        }
        let grefs: Vec<GrantRefNum> = indirect.iter().map(|b| b.gref()).collect();
        let Some(Prepared { io, plan, .. }) = entry.prepared.take() else {
            return Placed::Wait;
        };
        let requests = match inflight.submit_planned(io, &plan, grefs) {
            Ok(reqs) => reqs,
            Err(rej) => {
                entry.prepared = Some(Prepared {
                    disk: *disk,
                    io: rej.io,
                    plan,
                });
                return match rej.error {
                    InFlightError::NoRoom { .. } => Placed::Wait,
                    InFlightError::Io(e) => Placed::Fail(IoFailure::Refused(e)),
                    InFlightError::TooLarge { needed, capacity } => {
                        Placed::Fail(IoFailure::TooLarge { needed, capacity })
                    }
                    InFlightError::Disabled(e) => {
                        Placed::Fail(IoFailure::Disabled(Box::new(DeviceError::BadResponse {
                            ring: r,
                            error: e,
                        })))
                    }
                    InFlightError::IndirectPages { needed, given } => {
                        log::error!(
                            "blkfront: I/O {tag} planned {needed} indirect pages, {given} given"
                        );
                        Placed::Wait
                    }
                };
            }
        };
        let mut ring_error = None;
        for req in &requests {
            for page in &req.indirect_pages {
                let Some(pos) = indirect.iter().position(|b| b.gref() == page.gref) else {
                    continue;
                };
                let mut buf = indirect.swap_remove(pos);
                let bytes = page.segments.as_bytes();
                // Descriptors, then zeroes: the page holds nothing else.
                let _ = buf.write_at(0, bytes);
                let _ = buf.fill(bytes.len(), buf.len().saturating_sub(bytes.len()), 0);
                state.indirect.insert(page.gref, buf);
            }
            if let Err(error) = state.ring.put_request(req.request.to_slot()) {
                // Cannot happen: the tracker's free ids are the ring's free
                // slots.
                ring_error = Some(error);
                break;
            }
            self.stats.requests += 1;
            if !req.indirect_pages.is_empty() {
                self.stats.indirect_requests += 1;
            }
        }
        entry.on_ring = Some((r, now));
        if let Some(error) = ring_error {
            self.fail_device(DeviceError::Ring { ring: r, error });
        }
        Placed::OnRing
    }

    /// How long a sleep may last before a scheduler that holds work back
    /// wants a batch built ([`iosched::Scheduler::next_wakeup`]): `ns`,
    /// or less. A wake-up already past is left to the next `process`
    /// (which builds the batch); it does not shorten the sleep.
    fn until_wakeup(&self, ns: u64) -> u64 {
        let now = self.now();
        self.queues
            .iter()
            .filter_map(IoQueue::next_wakeup)
            .filter(|&w| w > now)
            .map(|w| w - now)
            .fold(ns, u64::min)
    }

    /// Asks every ring for a notification on its next response, then
    /// sleeps on the rings' event channels for at most `ns` (not at all
    /// when a response is already there), and no longer than a scheduler
    /// that holds work back asks ([`Core::until_wakeup`]).
    fn block_rings(&mut self, ns: u64) -> Result<(), DeviceError> {
        let ns = self.until_wakeup(ns);
        for r in self.rings.iter_mut() {
            match r.ring.final_check_for_responses() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // Reported by the next poll.
                Err(_) => return Ok(()),
            }
        }
        let ports: Vec<Port> = self.rings.iter().map(|r| r.port).collect();
        if ports.is_empty() {
            return Ok(());
        }
        self.platform
            .block_any(&ports, Some(ns))
            .map(drop)
            .map_err(DeviceError::Platform)
    }

    fn check_timeouts(&mut self, now: u64) {
        if now < self.next_timeout_check {
            return;
        }
        let timeout = u64::try_from(self.config.request_timeout.as_nanos()).unwrap_or(u64::MAX);
        self.next_timeout_check = now.saturating_add((timeout / 8).max(1_000_000));
        // The oldest stalled I/O (the smallest tag) is reported.
        let stalled = self
            .ios
            .iter()
            .filter_map(|(tag, e)| {
                let (ring, since) = e.on_ring?;
                let waited = now.saturating_sub(since);
                (waited > timeout).then_some((tag, ring, waited))
            })
            .min_by_key(|&(tag, _, _)| tag)
            .map(|(tag, ring, waited_ns)| DeviceError::Stalled {
                ring,
                tag,
                waited_ns,
            });
        if let Some(e) = stalled {
            self.fail_device(e);
        }
    }

    // ---- connection ----

    /// The backend is Connected: reads the disk, starts I/O.
    fn on_connected<T: Transport>(&mut self, xs: &mut Xenstore<T>, conn: &Connection) {
        let Some(choice) = self.choice else {
            self.fail_device(DeviceError::Setup(
                "connected without rings set up".to_string(),
            ));
            return;
        };
        let mut xs_error = None;
        let parsed = DiskFeatures::parse(reader(xs, &conn.backend, &mut xs_error));
        if let Some(e) = xs_error {
            self.fail_device(DeviceError::Handshake(xenbus::HandshakeError::Store(e)));
            return;
        }
        let disk = match parsed {
            Ok(d) => d,
            Err(e) => {
                self.fail_device(DeviceError::BadFeature(e));
                return;
            }
        };
        let neg = Negotiated::new(&self.config.features, &choice, &disk);
        log::info!(
            "blkfront {}: connected to {} ({}): {} sectors of 512 bytes, sector-size {}, \
             physical {}, info {:#x}; backend offers flush {}, barrier {}, discard {}, \
             persistent {}, indirect segments {}; using {} queue(s) of {}-page rings, \
             persistent grants {}, {} segments per request",
            conn.frontend,
            conn.backend,
            conn.peer,
            disk.sectors,
            disk.sector_size,
            disk.physical_sector_size,
            disk.info.bits(),
            disk.flush_cache,
            disk.barrier,
            disk.discard.is_some(),
            disk.persistent,
            disk.max_indirect_segments,
            neg.queues,
            1u32 << neg.ring_page_order,
            neg.persistent,
            neg.max_segments
        );
        if let Some(old) = self.disk {
            if old.sectors != neg.sectors {
                self.events.push_back(DeviceEvent::Resized {
                    old: old.sectors,
                    new: neg.sectors,
                });
            }
        }
        // Indirect pages, one pool per ring, granted to this backend.
        if neg.indirect() {
            let pages = self
                .config
                .indirect_pool_pages
                .max(neg.max_indirect_pages());
            while self.indirect_pools.len() < self.rings.len() {
                let pool = BufferPool::new(
                    &*self.platform,
                    conn.peer,
                    PoolConfig {
                        pages,
                        buffer_size: PAGE_SIZE,
                        access: Access::ReadWrite,
                        mode: self.config.pool_mode,
                    },
                );
                match pool {
                    Ok(p) => self.indirect_pools.push(p),
                    Err(e) => {
                        self.fail_device(DeviceError::Setup(format!(
                            "cannot set up the indirect pages: {e}"
                        )));
                        return;
                    }
                }
            }
        }
        for state in self.rings.iter_mut() {
            state.inflight = Some(InFlight::new(state.ring.size() as usize, self.handle));
        }
        let watch = xenbus::path::join(&conn.backend, "sectors");
        match xs.ensure_watch(&watch, &self.resize_token) {
            Ok(()) => self.resize_watch = Some(watch),
            Err(e) => log::warn!(
                "blkfront {}: cannot watch {watch} ({e}); resizes are seen at the next connection",
                conn.frontend
            ),
        }
        self.disk = Some(neg);
        self.connected = true;
        self.stats.connections += 1;
        self.events.push_back(DeviceEvent::Connected {
            connection: conn.number,
            disk: neg,
        });
        self.dispatch();
    }

    /// Re-reads `sectors` when the backend changed it.
    fn check_resize<T: Transport>(&mut self, xs: &mut Xenstore<T>) {
        let mut fired = false;
        while xs.take_event_for(&self.resize_token).is_some() {
            fired = true;
        }
        if !fired || !self.connected {
            return;
        }
        let (Some(path), Some(disk)) = (&self.resize_watch, self.disk) else {
            return;
        };
        let backend = path.trim_end_matches("/sectors").to_string();
        let mut xs_error = None;
        let sectors =
            DiskFeatures::read_sectors(reader(xs, &backend, &mut xs_error), disk.sector_size);
        if let Some(e) = xs_error {
            log::warn!("blkfront: reading the disk's size after a change: {e}; will retry");
            return;
        }
        match sectors {
            Ok(s) if s != disk.sectors => {
                if let Some(d) = self.disk.as_mut() {
                    d.resize(s);
                }
                self.events.push_back(DeviceEvent::Resized {
                    old: disk.sectors,
                    new: s,
                });
            }
            Ok(_) => {}
            Err(e) => self.fail_device(DeviceError::BadFeature(e)),
        }
    }

    fn unwatch_resize<T: Transport>(&mut self, xs: &mut Xenstore<T>) {
        if let Some(path) = self.resize_watch.take() {
            if let Err(e) = xs.unwatch(&path, &self.resize_token) {
                log::debug!("blkfront: dropping the watch on {path}: {e}");
            }
            xs.drain_events_for(&self.resize_token);
        }
    }

    /// Releases the live connection's rings; returns the I/Os that were on
    /// them, per ring, in submission order.
    fn release_rings(&mut self) -> Vec<Tag> {
        let mut tags = Vec::new();
        for mut state in core::mem::take(&mut self.rings) {
            if let Some(mut inflight) = state.inflight.take() {
                tags.extend(inflight.drain().ios.into_iter().map(|io| io.tag));
            }
            state.indirect.clear();
            if let Err(e) = self.platform.close(state.port) {
                log::warn!("blkfront: closing {}: {e}", state.port);
            }
            if let Err(e) = state.ring.end() {
                log::warn!("blkfront: the backend still maps a ring page: {e}");
            }
        }
        self.keys.clear();
        self.choice = None;
        self.connected = false;
        tags
    }

    fn setup_rings(&mut self, choice: &RingChoice, peer: DomId) -> Result<(), DeviceError> {
        for _ in 0..choice.queues {
            let ring = GrantedRing::new(&*self.platform, peer, choice.ring_page_order as u8)
                .map_err(|e| DeviceError::Setup(format!("cannot set up a ring: {e}")))?;
            let port = self
                .platform
                .alloc_unbound(peer)
                .map_err(DeviceError::Platform)?;
            self.rings.push(RingState {
                ring,
                port,
                inflight: None,
                indirect: BTreeMap::new(),
            });
        }
        let refs: Vec<Vec<GrantRefNum>> = self.rings.iter().map(|r| r.ring.grefs()).collect();
        let rings: Vec<QueueRing<'_>> = refs
            .iter()
            .zip(&self.rings)
            .map(|(refs, r)| QueueRing {
                ring_refs: refs,
                event_channel: r.port.0,
            })
            .collect();
        self.keys = choice
            .frontend_keys(&rings)
            .map_err(|e| DeviceError::Setup(e.to_string()))?;
        let new: Vec<String> = self.keys.iter().map(|k| k.path.clone()).collect();
        let queue_dir = |p: &str| p.split_once('/').map(|(d, _)| d.to_string());
        let mut stale = Vec::new();
        for old in core::mem::replace(&mut self.published, new.clone()) {
            if new.contains(&old) {
                continue;
            }
            let gone = match queue_dir(&old) {
                Some(dir) if !new.iter().any(|n| queue_dir(n).as_ref() == Some(&dir)) => dir,
                _ => old,
            };
            if !stale.contains(&gone) {
                stale.push(gone);
            }
        }
        self.stale = stale;
        Ok(())
    }

    fn setup_pools(&mut self, peer: DomId) -> Result<(), DeviceError> {
        if self.peer == Some(peer) && self.pools.len() == self.queues.len() {
            return Ok(());
        }
        if self.peer.is_some() {
            log::info!("blkfront: the backend is now in {peer}; new buffer pools");
        }
        self.pools.clear();
        self.indirect_pools.clear();
        self.peer = None;
        for _ in 0..self.queues.len() {
            let pool = BufferPool::new(
                &*self.platform,
                peer,
                PoolConfig {
                    pages: self.config.pool_pages.max(1),
                    buffer_size: PAGE_SIZE,
                    access: Access::ReadWrite,
                    mode: self.config.pool_mode,
                },
            )
            .map_err(|e| DeviceError::Setup(format!("cannot set up the buffer pool: {e}")))?;
            self.pools.push(pool);
        }
        self.peer = Some(peer);
        Ok(())
    }
}

/// Reads keys of the backend directory `dir` for the feature parsers:
/// absent keys are `None`; the first other error is kept in `err`.
fn reader<'a, T: Transport>(
    xs: &'a mut Xenstore<T>,
    dir: &'a str,
    err: &'a mut Option<XsError>,
) -> impl FnMut(&str) -> Option<String> + 'a {
    move |key: &str| match xs.try_read(&xenbus::path::join(dir, key)) {
        Ok(Some(v)) => Some(String::from_utf8_lossy(&v).into_owned()),
        Ok(None) => None,
        Err(e) => {
            if err.is_none() {
                *err = Some(e);
            }
            None
        }
    }
}

impl<P: Platform, T: Transport> Device<T> for Core<P>
where
    P::Pages: 'static,
{
    fn setup(
        &mut self,
        xs: &mut Xenstore<T>,
        conn: &Connection,
    ) -> Result<(), xenbus::DeviceError> {
        let fail = |e: DeviceError| xenbus::DeviceError::Device(e.to_string());
        if let Some(e) = &self.broken {
            return Err(fail(e.clone()));
        }
        let mut xs_error = None;
        let features = RingFeatures::parse(reader(xs, &conn.backend, &mut xs_error));
        if let Some(e) = xs_error {
            return Err(xenbus::DeviceError::Store(e));
        }
        let features = features.map_err(|e| fail(DeviceError::BadFeature(e)))?;
        let choice = RingChoice::choose(&self.config.features, &features)
            .map_err(|e| fail(DeviceError::Setup(e.to_string())))?;
        self.setup_pools(conn.peer).map_err(fail)?;
        if let Err(e) = self.setup_rings(&choice, conn.peer) {
            let _ = self.release_rings();
            return Err(fail(e));
        }
        log::info!(
            "blkfront {}: backend {} offers max-ring-page-order {:?}, multi-queue-max-queues \
             {:?}; connection {} asks for {} queue(s) of {} page(s), persistent grants {}",
            conn.frontend,
            conn.backend,
            features.max_ring_page_order,
            features.max_queues,
            conn.number,
            choice.queues,
            choice.ring_pages(),
            choice.persistent
        );
        self.choice = Some(choice);
        Ok(())
    }

    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        for path in &self.stale {
            match tx.rm(&conn.frontend_key(path)) {
                Err(e) if e.is_not_found() => {}
                r => r?,
            }
        }
        for k in &self.keys {
            tx.write(&conn.frontend_key(&k.path), k.value.as_bytes())?;
        }
        Ok(())
    }

    fn teardown(&mut self, conn: &Connection, reason: TeardownReason) {
        // Responses the backend gave before it went still count.
        if self.connected && self.broken.is_none() {
            for r in 0..self.rings.len() {
                self.reap(r, false);
            }
        }
        let tags = self.release_rings();
        match reason {
            TeardownReason::PeerLost(loss) if self.broken.is_none() => {
                let mut per_queue: BTreeMap<usize, Vec<Tag>> = BTreeMap::new();
                let mut n = 0;
                for tag in tags {
                    if let Some(e) = self.ios.get_mut(tag) {
                        e.on_ring = None;
                        e.reissued += 1;
                        per_queue.entry(e.queue).or_default().push(tag);
                        n += 1;
                    }
                }
                for (q, tags) in per_queue {
                    if let Some(queue) = self.queues.get_mut(q) {
                        queue.requeue_front(tags);
                    }
                }
                self.stats.reissued += n as u64;
                log::warn!(
                    "blkfront {}: connection {} lost ({loss}); {n} I/O(s) will be re-issued",
                    conn.frontend,
                    conn.number
                );
                self.events.push_back(DeviceEvent::Disconnected {
                    connection: conn.number,
                    loss,
                    reissue: n,
                });
            }
            TeardownReason::PeerLost(_) => {}
            TeardownReason::Closed | TeardownReason::Removed => {
                self.closed = true;
                self.fail_all(IoFailure::Closed);
            }
            TeardownReason::Failed => {
                // The handshake's error is reported by poll, which
                // disables the device and fails the I/Os.
            }
        }
    }
}

// ---------------------------------------------------------------------------

/// A virtual disk: the block frontend of one xenbus device.
pub struct Blkfront<P: Platform>
where
    P::Pages: 'static,
{
    handshake: Frontend,
    core: Core<P>,
    close_sent: bool,
}

impl<P: Platform> fmt::Debug for Blkfront<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blkfront")
            .field("frontend", &self.core.config.handshake.frontend)
            .field("phase", &self.handshake.phase())
            .field("connected", &self.core.connected)
            .field("disk", &self.core.disk)
            .field("ios", &self.core.ios.len())
            .field("broken", &self.core.broken)
            .finish()
    }
}

impl<P: Platform> Blkfront<P>
where
    P::Pages: 'static,
{
    /// A device on `platform` as `config` asks; the first [`Blkfront::poll`]
    /// starts the handshake.
    pub fn new(platform: Arc<P>, mut config: DeviceConfig) -> Result<Self, crate::ConfigError> {
        config.features.validate()?;
        config.handshake.style = ConnectStyle::InitialisedFirst;
        // `handle` is the virtual device number: the directory's last part.
        let handle = config
            .handshake
            .frontend
            .rsplit('/')
            .next()
            .and_then(|s| s.parse::<BlkifVdev>().ok())
            .unwrap_or(0);
        let queues = (0..config.features.queues)
            .map(|_| IoQueue::fifo())
            .collect();
        let resize_token = format!("blkfront-resize:{}", config.handshake.frontend);
        let mode = config.mode;
        Ok(Blkfront {
            handshake: Frontend::new(config.handshake.clone()),
            core: Core {
                platform,
                config,
                handle,
                peer: None,
                pools: Vec::new(),
                indirect_pools: Vec::new(),
                choice: None,
                keys: Vec::new(),
                stale: Vec::new(),
                published: Vec::new(),
                rings: Vec::new(),
                connected: false,
                disk: None,
                ios: TagTable::new(),
                queues,
                completions: VecDeque::new(),
                events: VecDeque::new(),
                broken: None,
                closed: false,
                next_tag: 1,
                next_timeout_check: 0,
                spare_slots: Vec::new(),
                resize_watch: None,
                resize_token,
                stats: DeviceStats::default(),
                spin: governor(mode),
            },
            close_sent: false,
        })
    }

    /// Drives the device: the handshake (reading xenstore without
    /// blocking), resizes, the rings, and the grant table's quarantine.
    /// Completions and events are queued for [`Blkfront::next_completion`]
    /// and [`Blkfront::next_event`]. Returns the error that disabled the
    /// device, if one did (the handshake still closes in later polls).
    pub fn poll<T: Transport>(&mut self, xs: &mut Xenstore<T>) -> Result<(), DeviceError> {
        let now = Duration::from_nanos(self.core.now());
        match self.handshake.poll(xs, now, &mut self.core) {
            Ok(HandshakeEvent::Connected(conn)) => {
                if self.core.broken.is_none() {
                    self.core.on_connected(xs, &conn);
                }
            }
            Ok(HandshakeEvent::Disconnected { .. }) => self.core.unwatch_resize(xs),
            Ok(HandshakeEvent::Closed) => {
                self.core.unwatch_resize(xs);
                self.core.closed = true;
                self.core.fail_all(IoFailure::Closed);
                if self.core.broken.is_none() {
                    self.core.events.push_back(DeviceEvent::Closed);
                }
            }
            Ok(HandshakeEvent::Removed) => {
                self.core.unwatch_resize(xs);
                self.core.closed = true;
                self.core.fail_all(IoFailure::Closed);
                self.core.events.push_back(DeviceEvent::Removed);
            }
            Ok(HandshakeEvent::Idle | HandshakeEvent::Refused { .. }) => {}
            Err(e) if e.is_transient() => log::debug!("blkfront: {e}; retried at the next poll"),
            Err(e) => self.core.fail_device(DeviceError::Handshake(e)),
        }
        self.core.check_resize(xs);
        let r = self.core.process();
        if let Ok(table) = self.core.table() {
            table.retry_quarantined();
        }
        if self.core.broken.is_some() && !self.close_sent {
            self.close_sent = true;
            if matches!(
                self.handshake.phase(),
                FrontendPhase::WaitBackendConnected | FrontendPhase::Connected
            ) {
                if let Err(e) = self.handshake.close(xs, now) {
                    log::warn!("blkfront: closing the disabled device: {e}");
                }
            }
        }
        r.map(drop)
    }

    /// Drives the rings only (no xenstore): takes responses, puts waiting
    /// I/Os on the rings, checks request timeouts. The fast path between
    /// [`Blkfront::poll`]s. Returns how many responses it took.
    pub fn process(&mut self) -> Result<usize, DeviceError> {
        self.core.process()
    }

    /// Puts the I/Os waiting in the device queues on the rings and
    /// notifies the backend where a ring asks, without taking responses
    /// first (as [`Blkfront::process`] does): the quickest hand-over of
    /// just-submitted I/Os to a backend that is waiting for them, the
    /// responses left to the next [`Blkfront::process`] or
    /// [`Blkfront::wait_io`].
    pub fn dispatch(&mut self) -> Result<(), DeviceError> {
        if let Some(e) = &self.core.broken {
            return Err(e.clone());
        }
        self.core.dispatch();
        match &self.core.broken {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Asks for an orderly close: the backend is told, in-flight I/Os end
    /// (those the backend does not answer fail with [`IoFailure::Closed`])
    /// and [`DeviceEvent::Closed`] follows in a later poll.
    pub fn close<T: Transport>(&mut self, xs: &mut Xenstore<T>) -> Result<(), DeviceError> {
        let now = Duration::from_nanos(self.core.now());
        self.handshake
            .close(xs, now)
            .map_err(DeviceError::Handshake)
    }

    // ---- I/O ----

    /// Submits an I/O to device queue `opts.queue` (its scheduler decides
    /// when it goes on the ring). The next poll puts it on the ring.
    pub fn submit(&mut self, io: Io<P>, opts: IoOptions) -> Result<Tag, Refused<P>> {
        self.core.submit(io, opts)
    }

    /// Submits a read of `sector..` into `spans` on queue `queue`.
    pub fn read(
        &mut self,
        queue: usize,
        sector: u64,
        spans: Vec<Span<P>>,
    ) -> Result<Tag, Refused<P>> {
        self.submit(Io::Read { sector, spans }, IoOptions::queue(queue))
    }

    /// Submits a write of `spans` at `sector..` on queue `queue`.
    pub fn write(
        &mut self,
        queue: usize,
        sector: u64,
        spans: Vec<Span<P>>,
    ) -> Result<Tag, Refused<P>> {
        self.submit(Io::Write { sector, spans }, IoOptions::queue(queue))
    }

    /// Submits a flush on queue `queue`. A flush makes durable what
    /// completed before it was submitted: wait for the writes first.
    pub fn flush(&mut self, queue: usize) -> Result<Tag, Refused<P>> {
        self.submit(Io::Flush, IoOptions::queue(queue))
    }

    /// Submits a discard (secure where asked and offered).
    pub fn discard(
        &mut self,
        queue: usize,
        sector: u64,
        sectors: u64,
        secure: bool,
    ) -> Result<Tag, Refused<P>> {
        self.submit(
            Io::Discard {
                sector,
                sectors,
                secure,
            },
            IoOptions::queue(queue),
        )
    }

    /// The oldest finished I/O not yet handed back.
    pub fn next_completion(&mut self) -> Option<Completion<P>> {
        self.core.completions.pop_front()
    }

    /// The oldest device event not yet handed back.
    pub fn next_event(&mut self) -> Option<DeviceEvent> {
        self.core.events.pop_front()
    }

    /// I/Os submitted and not finished (waiting or on a ring).
    pub fn pending(&self) -> usize {
        self.core.ios.len()
    }

    /// I/Os waiting in device queue `queue` (in its scheduler or for ring
    /// room).
    pub fn waiting(&self, queue: usize) -> usize {
        self.core.queues.get(queue).map_or(0, IoQueue::waiting)
    }

    // ---- blocking ----

    /// Waits for a completion without looking at xenstore: the fast path
    /// of an application that drives the rings itself ([`Blkfront::submit`],
    /// [`Blkfront::process`], [`Blkfront::next_completion`]) and calls
    /// [`Blkfront::poll`] now and then for the handshake and resizes.
    ///
    /// Takes responses and puts waiting I/Os on the rings until a
    /// completion is queued or `timeout` passes (`None`: no limit; a
    /// backend that never answers is caught by
    /// [`DeviceConfig::request_timeout`]). How it waits is the mode's:
    /// spinning ([`Mode::Polling`]); sleeping on the rings' event channels
    /// after asking for a notification ([`Mode::Events`]); spinning for up
    /// to `spin_ns`, then sleeping ([`Mode::Adaptive`], [`Mode::Spin`]). A sleep lasts at
    /// most 5 ms before the rings are looked at again, and ends earlier
    /// when a queue's scheduler holds I/Os back and asks for a batch
    /// sooner ([`iosched::Scheduler::next_wakeup`]).
    ///
    /// Returns whether a completion is queued: `Ok(false)` when `timeout`
    /// passed, and at once when no I/O is pending or the device is not
    /// connected (connecting again needs [`Blkfront::poll`]).
    pub fn wait_io(&mut self, timeout: Option<Duration>) -> Result<bool, DeviceError> {
        let start = self.core.now();
        let deadline = timeout.map(|t| start.saturating_add(duration_ns(t)));
        let adaptive = matches!(
            self.core.config.mode,
            Mode::Adaptive { .. } | Mode::Spin { .. }
        );
        let mut spin_until = match self.core.config.mode {
            Mode::Polling => u64::MAX,
            Mode::Events => start,
            Mode::Adaptive { .. } | Mode::Spin { .. } => {
                start.saturating_add(self.core.spin.budget(start))
            }
        };
        // Adaptive: whether this wait's spin is still to be judged, and
        // when it last looked.
        let mut judge = adaptive && spin_until > start;
        let mut prev = start;
        loop {
            self.core.process()?;
            if !self.core.completions.is_empty() {
                if judge {
                    self.core.spin.caught();
                }
                return Ok(true);
            }
            if self.core.ios.is_empty() || !self.core.connected || self.core.closed {
                return Ok(false);
            }
            let now = self.core.now();
            let left = match deadline {
                Some(d) if now >= d => return Ok(false),
                Some(d) => d - now,
                None => u64::MAX,
            };
            if now < spin_until {
                if !(adaptive && self.core.spin.preempted(prev, now)) {
                    prev = now;
                    core::hint::spin_loop();
                    continue;
                }
                // Lost the core while spinning: sleep instead.
                spin_until = now;
                judge = false;
            }
            if judge {
                judge = false;
                self.core.spin.missed(now);
            }
            self.core
                .block_rings(left.min(duration_ns(MAX_BLOCK_SLICE)))?;
        }
    }

    /// Polls until something is queued for the application (a completion
    /// or an event) or `timeout` passes (`None`: no limit), sleeping on the
    /// rings' event channels in between. Returns whether something is
    /// queued.
    pub fn wait<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        timeout: Option<Duration>,
    ) -> Result<bool, DeviceError> {
        let deadline = self.deadline(timeout);
        loop {
            self.poll(xs)?;
            if !self.core.completions.is_empty() || !self.core.events.is_empty() {
                return Ok(true);
            }
            if !self.sleep(xs, deadline)? {
                return Ok(false);
            }
        }
    }

    /// Polls until the device is connected (or `timeout` passes). Returns
    /// the disk.
    pub fn wait_connected<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        timeout: Option<Duration>,
    ) -> Result<Option<Negotiated>, DeviceError> {
        let deadline = self.deadline(timeout);
        loop {
            self.poll(xs)?;
            if self.core.connected {
                return Ok(self.core.disk);
            }
            if !self.sleep(xs, deadline)? {
                return Ok(None);
            }
        }
    }

    /// Waits for I/O `tag` to finish and returns it (other completions stay
    /// queued). `None` as `timeout` waits as long as it takes.
    pub fn wait_for<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        tag: Tag,
        timeout: Option<Duration>,
    ) -> Result<Completion<P>, BlockingError<P>> {
        let deadline = self.deadline(timeout);
        loop {
            let polled = self.poll(xs);
            if let Some(pos) = self.core.completions.iter().position(|c| c.tag == tag) {
                if let Some(c) = self.core.completions.remove(pos) {
                    return Ok(c);
                }
            }
            polled.map_err(|e| BlockingError::Device(Box::new(e)))?;
            if !self.core.ios.contains(tag) {
                return Err(BlockingError::NoSuchIo { tag });
            }
            match self.sleep(xs, deadline) {
                Ok(true) => {}
                Ok(false) => return Err(BlockingError::TimedOut { tag }),
                Err(e) => return Err(BlockingError::Device(Box::new(e))),
            }
        }
    }

    /// Reads `sector..` into `spans` and waits; returns the spans with the
    /// data.
    pub fn read_blocking<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        queue: usize,
        sector: u64,
        spans: Vec<Span<P>>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Span<P>>, BlockingError<P>> {
        let tag = self
            .read(queue, sector, spans)
            .map_err(BlockingError::Refused)?;
        self.finish_blocking(xs, tag, timeout)
    }

    /// Writes `spans` at `sector..` and waits; returns the spans.
    pub fn write_blocking<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        queue: usize,
        sector: u64,
        spans: Vec<Span<P>>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Span<P>>, BlockingError<P>> {
        let tag = self
            .write(queue, sector, spans)
            .map_err(BlockingError::Refused)?;
        self.finish_blocking(xs, tag, timeout)
    }

    /// Flushes and waits.
    pub fn flush_blocking<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        queue: usize,
        timeout: Option<Duration>,
    ) -> Result<(), BlockingError<P>> {
        let tag = self.flush(queue).map_err(BlockingError::Refused)?;
        self.finish_blocking(xs, tag, timeout).map(drop)
    }

    fn finish_blocking<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        tag: Tag,
        timeout: Option<Duration>,
    ) -> Result<Vec<Span<P>>, BlockingError<P>> {
        let c = self.wait_for(xs, tag, timeout)?;
        match c.result {
            Ok(()) => Ok(c.io.into_spans()),
            Err(_) => Err(BlockingError::Failed(c)),
        }
    }

    fn deadline(&self, timeout: Option<Duration>) -> Option<u64> {
        timeout.map(|t| self.core.now().saturating_add(duration_ns(t)))
    }

    /// Sleeps until an event channel fires, xenstore has news, or a short
    /// slice passes; `false` once `deadline` has passed.
    fn sleep<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        deadline: Option<u64>,
    ) -> Result<bool, DeviceError> {
        let now = self.core.now();
        let left = match deadline {
            Some(d) if now >= d => return Ok(false),
            Some(d) => Duration::from_nanos(d - now),
            None => MAX_BLOCK_SLICE,
        };
        let slice = left.min(MAX_BLOCK_SLICE);
        if self.core.connected && self.core.broken.is_none() {
            if let Mode::Adaptive { .. } | Mode::Spin { .. } = self.core.config.mode {
                let budget = self.core.spin.budget(now);
                let end = now.saturating_add(budget).min(deadline.unwrap_or(u64::MAX));
                let mut prev = now;
                let mut missed = budget > 0;
                loop {
                    let t = self.core.now();
                    if t >= end {
                        break;
                    }
                    if self.core.spin.preempted(prev, t) {
                        missed = false;
                        break;
                    }
                    prev = t;
                    // An error is the next poll's to report.
                    if self.core.process().is_err()
                        || !self.core.completions.is_empty()
                        || !self.core.events.is_empty()
                    {
                        self.core.spin.caught();
                        return Ok(true);
                    }
                    core::hint::spin_loop();
                }
                if missed {
                    self.core.spin.missed(prev);
                }
            }
            self.core.block_rings(duration_ns(slice))?;
        } else {
            match xs.pump_wait(Wait::For(slice)) {
                Err(e) if e.is_fatal() => {
                    return Err(DeviceError::Handshake(xenbus::HandshakeError::Store(e)));
                }
                _ => {}
            }
        }
        Ok(true)
    }

    // ---- buffers and scheduling ----

    /// A buffer of queue `queue`'s pool of persistent grants (a 4 KiB
    /// page); `None` before the first connection or when every buffer is
    /// out.
    pub fn buffer(&self, queue: usize) -> Option<Buffer<P>> {
        let peer = self.core.peer?;
        let buf = self.core.pools.get(queue)?.take()?;
        Some(Buffer::pool(buf, peer))
    }

    /// Queue `queue`'s pool (`None` before the first connection).
    pub fn pool(&self, queue: usize) -> Option<&BufferPool<P>> {
        self.core.pools.get(queue)
    }

    /// Installs `scheduler` on device queue `queue`; `default_class` (a
    /// queue created on it) takes I/Os that name no scheduler queue. Only
    /// while the device queue is idle (nothing waits in it); otherwise the
    /// scheduler is handed back.
    pub fn set_scheduler(
        &mut self,
        queue: usize,
        scheduler: Box<dyn Scheduler + Send>,
        default_class: QueueId,
    ) -> Result<(), Box<dyn Scheduler + Send>> {
        let in_flight = self.core.ios.iter().any(|(_, e)| e.queue == queue);
        match self.core.queues.get_mut(queue) {
            Some(q) if q.is_idle() && !in_flight => {
                *q = IoQueue::with(scheduler, default_class);
                Ok(())
            }
            _ => Err(scheduler),
        }
    }

    /// Device queue `queue`'s scheduler: create, change and remove its
    /// queues, read their statistics.
    pub fn scheduler_mut(&mut self, queue: usize) -> Option<&mut (dyn Scheduler + Send)> {
        self.core.queues.get_mut(queue).map(IoQueue::scheduler_mut)
    }

    /// Device queue `queue`'s scheduler.
    pub fn scheduler(&self, queue: usize) -> Option<&(dyn Scheduler + Send)> {
        self.core.queues.get(queue).map(IoQueue::scheduler)
    }

    // ---- the disk ----

    /// What the connection uses (the last one's while disconnected);
    /// `None` before the first connection.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.core.disk.as_ref()
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> Option<u64> {
        self.core.disk.map(|d| d.sectors)
    }

    /// Size in bytes.
    pub fn capacity_bytes(&self) -> Option<u64> {
        self.core.disk.map(|d| d.sectors << SECTOR_SHIFT)
    }

    /// Logical sector size in bytes (`sector-size`).
    pub fn sector_size(&self) -> Option<u32> {
        self.core.disk.map(|d| d.sector_size)
    }

    /// Physical sector size in bytes (`physical-sector-size`).
    pub fn physical_sector_size(&self) -> Option<u32> {
        self.core.disk.map(|d| d.physical_sector_size)
    }

    /// The backend's `info` bits.
    pub fn info(&self) -> Option<DiskInfo> {
        self.core.disk.map(|d| d.info)
    }

    /// Whether the disk refuses writes (read-only or CD-ROM).
    pub fn read_only(&self) -> Option<bool> {
        self.core.disk.map(|d| d.read_only())
    }

    /// Whether I/O flows now.
    pub fn is_connected(&self) -> bool {
        self.core.connected
    }

    /// The error that disabled the device.
    pub fn broken(&self) -> Option<&DeviceError> {
        self.core.broken.as_ref()
    }

    /// Where the handshake is.
    pub fn phase(&self) -> FrontendPhase {
        self.handshake.phase()
    }

    /// Device queues (one scheduler and one pool each).
    pub fn queues(&self) -> usize {
        self.core.queues.len()
    }

    /// Rings of the live connection.
    pub fn rings(&self) -> usize {
        self.core.rings.len()
    }

    /// The event channels of the live connection's rings.
    pub fn ports(&self) -> Vec<Port> {
        self.core.rings.iter().map(|r| r.port).collect()
    }

    /// Polling, event-driven or adaptive.
    pub fn mode(&self) -> Mode {
        self.core.config.mode
    }

    /// Switches between polling, event-driven and adaptive.
    pub fn set_mode(&mut self, mode: Mode) {
        self.core.config.mode = mode;
        self.core.spin = governor(mode);
    }

    /// How many times an adaptive wait saw this thread lose its core while
    /// it spun (each time, waits stop spinning for a while; see
    /// [`crate::spin`]).
    pub fn spin_preemptions(&self) -> u64 {
        self.core.spin.preemptions()
    }

    /// The device's counters.
    pub fn stats(&self) -> DeviceStats {
        self.core.stats
    }

    /// The domain's grant table counts (shared by every device of the
    /// domain), for leak checks.
    pub fn grant_stats(&self) -> Result<GrantStats, PlatformError> {
        self.core.table().map(|t| t.stats())
    }

    /// The platform.
    pub fn platform(&self) -> &Arc<P> {
        &self.core.platform
    }
}

impl<P: Platform> Drop for Blkfront<P>
where
    P::Pages: 'static,
{
    /// Closes the event channels and ends the rings' grants (pages the
    /// backend still maps stay in quarantine). Call [`Blkfront::close`]
    /// and poll until [`DeviceEvent::Closed`] first for an orderly end.
    fn drop(&mut self) {
        if !self.core.ios.is_empty() {
            log::warn!(
                "blkfront: device dropped with {} I/O(s) not done",
                self.core.ios.len()
            );
            // Ends their page grants (quarantined while mapped).
            self.core.fail_all(IoFailure::Closed);
        }
        let _ = self.core.release_rings();
    }
}
