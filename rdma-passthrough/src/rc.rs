//! The reliable-connected transport of one queue pair, as a pure state
//! machine: it is fed received frames ([`QueuePair::receive`], or
//! [`QueuePair::receive_packet`] with the memory regions of a verbs
//! context) and time ([`QueuePair::on_time`], or [`QueuePair::timeout`]
//! when the caller runs the retransmission timer itself), and emits frames
//! ([`QueuePair::transmit`]) and completions
//! ([`QueuePair::poll_completion`]). It owns no device and no clock.
//!
//! # What it does (IBA vol. 1, chapter 9)
//! - **Requester.** Posted work requests wait in a send queue and are
//!   turned into packets in order. SEND and RDMA WRITE (with or without
//!   immediate data) are segmented to the path MTU into first/middle/last
//!   or only packets with consecutive PSNs; the last packet asks for an
//!   acknowledgement (AckReq), unless the work request was posted
//!   unsignaled ([`QueuePair::post_send_unsignaled`]): then only every
//!   [`QueuePair::set_ack_req_interval`]-th such message asks, and the
//!   responder's one ACK of the latest PSN covers those before it; a
//!   resend always asks on its last packet. An RDMA READ is one request packet that reserves one
//!   PSN for each response packet it will get back; compare-and-swap and
//!   fetch-and-add are one packet each. At most `max_rd_atomic` READ and
//!   atomic requests are in flight: the send queue waits behind the next
//!   one until an earlier one completes. Sent packets stay queued until
//!   acknowledged. An ACK acknowledges every packet up to its PSN
//!   (coalesced ACKs) and completes the work requests it covers; a READ
//!   response or atomic acknowledge implicitly acknowledges every earlier
//!   request. READ responses (first/middle/last/only, each a full path MTU
//!   but the last) are reassembled in PSN order into the request's buffer;
//!   a duplicate response is dropped, and a gap (a lost response), or an
//!   ACK beyond a READ or atomic that has not been answered, re-issues the
//!   READ for the bytes still missing (from the PSN of the first missing
//!   response) and resends what follows (go-back-N). A PSN sequence error
//!   NAK acknowledges what precedes it and resends from its PSN. An RNR NAK
//!   stops sending for the RNR timer it names (IBA table 45,
//!   [`rnr_timer_ns`]) and counts an RNR retry (`rnr_retry` 7 is
//!   infinite); exhausting them fails the request with
//!   [`Status::RnrRetryExceeded`]. The local ACK timer
//!   (4.096 µs × 2^`timeout`, [`QpTimers`]) resends everything
//!   unacknowledged when it expires; after `retry_cnt` expiries without
//!   progress the queue pair enters the error state and its work requests
//!   complete with [`Status::RetryExceeded`]. Other NAKs complete the
//!   request with an error and move the queue pair to the error state.
//! - **Responder.** It checks the destination QP and the P_Key, then the
//!   PSN against the expected PSN: a duplicate (behind) is not executed
//!   again: a duplicate SEND or WRITE is answered with an ACK of the last
//!   PSN received, a duplicate READ is executed again from its own PSN with
//!   the RETH it carries (the READ must lie inside one still remembered),
//!   a duplicate atomic gets the original result again from a replay cache
//!   (never executed twice). A packet ahead is answered with one PSN
//!   sequence error NAK (not one per packet) and dropped until the
//!   expected PSN arrives. In sequence, it checks the opcode sequence (a
//!   message in progress continues with middle or last packets of the same
//!   operation), lengths (first and middle packets carry exactly the path
//!   MTU; no packet carries more), and for RDMA WRITE, READ and atomics the
//!   R_Key, the region's permission (remote write, read or atomic) and the
//!   whole transfer's bounds with checked arithmetic before any byte is
//!   read or written (a zero-length WRITE or READ names no memory and is
//!   not checked); atomics need an 8-byte aligned address. The
//!   responder keeps `max_dest_rd_atomic` READ and atomic requests (a ring:
//!   the oldest is forgotten) and answers a request beyond that many
//!   unanswered ones with an invalid request NAK. Invalid requests and
//!   access errors are answered with the NAK the specification names and
//!   move the queue pair to the error state. A SEND (or WRITE with
//!   immediate) that finds no posted receive gets an RNR NAK carrying the
//!   `min_rnr_timer` of [`QpTimers`]. Responses leave in PSN order; a
//!   SEND or WRITE is acknowledged only when it asks (AckReq) or is a
//!   duplicate, as `rdma_rxe`'s responder does, and ACKs are coalesced:
//!   consecutive packets received between two calls to `transmit` are
//!   acknowledged by one ACK.
//! - **Memory.** Remote accesses go through a [`RegionTable`]: the queue
//!   pair's own regions ([`QueuePair::register`]) or the caller's (a verbs
//!   context's memory regions). Nothing outside a region's bytes is ever
//!   read or written. Atomics treat the 8 bytes as a little-endian `u64`,
//!   as the x86 hosts this runs on store one.
//!
//! # What it does not do yet
//! End-to-end credits (ACKs carry "no credits" and credits received are
//! ignored), SEND with invalidate (answered with an invalid request NAK),
//! fences and solicited events, automatic path migration, the SQD state.
//! The retransmission timer starts from the last time the queue pair was
//! told (`on_time` or `receive_packet`'s caller), not from the moment a
//! frame left the device.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use crate::headers::{
    Aeth, AtomicAckEth, AtomicEth, Bth, ImmDt, NakCode, Reth, Syndrome, CREDITS_INVALID, QPN_MASK,
};
use crate::opcode::{Opcode, Operation, Position};
use crate::packet::{
    build, frame_len, parse, set_ack_req, Endpoints, Packet, ParseError, TransportHeaders,
};
use crate::psn::Psn;

/// The most packets (and READ or atomic requests) a requester keeps
/// unacknowledged (well inside the 2^23 PSN window).
pub const MAX_OUTSTANDING: usize = 4096;
/// The most PSNs one RDMA READ may reserve (response packets): a quarter
/// of the PSN window, so a READ of 2^30 bytes at a 256-byte path MTU.
pub const MAX_READ_PSNS: u32 = 1 << 22;
/// The most PSNs the requester keeps unacknowledged, READ responses
/// included (half the window less one quarter, so a PSN is never
/// ambiguous).
const MAX_PSN_SPAN: u32 = 1 << 22;
/// The largest `max_rd_atomic` and `max_dest_rd_atomic` this transport
/// supports (as `rdma_rxe`'s limit of outstanding READ and atomic
/// requests).
pub const MAX_RD_ATOMIC: u8 = 128;
/// Spare buffers a queue pair keeps ([`QueuePair::recycle`]): received
/// SENDs' data, acknowledged requests' frames, posted messages once
/// segmented.
const RECYCLE_KEEP: usize = 8;
/// The largest capacity of a buffer [`QueuePair::recycle`] keeps.
pub const RECYCLE_MAX_BYTES: usize = 64 * 1024;
/// The largest message (2^31 bytes).
pub const MAX_MESSAGE: usize = 1 << 31;

/// A queue pair's fixed attributes (what `ibv_modify_qp` sets on the way
/// to RTS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpConfig {
    /// This queue pair's number (24 bits).
    pub qpn: u32,
    /// The remote queue pair's number.
    pub dest_qpn: u32,
    /// The partition key both ends use.
    pub pkey: u16,
    /// Path MTU in bytes: 256, 512, 1024, 2048 or 4096.
    pub pmtu: usize,
    /// The first PSN this queue pair sends.
    pub send_psn: Psn,
    /// The first PSN this queue pair expects.
    pub recv_psn: Psn,
    /// Timeouts without progress before the queue pair gives up (the
    /// `retry_cnt` of [`QpTimers`] replaces it when those are set).
    pub retry_limit: u32,
    /// Addresses of this end (source) and the remote end (destination).
    pub endpoints: Endpoints,
}

/// The timers and retry counts of a queue pair (the `timeout`,
/// `retry_cnt`, `rnr_retry` and `min_rnr_timer` attributes of
/// `ibv_modify_qp`), set with [`QueuePair::set_timers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpTimers {
    /// Local ACK timeout, encoded: 4.096 µs × 2^`timeout`; 0 means no
    /// timer (infinite), 1..=31 otherwise.
    pub timeout: u8,
    /// Retransmissions after local ACK timeouts without progress (0..=7).
    pub retry_cnt: u8,
    /// Retries after RNR NAKs (0..=6; 7 means retry forever).
    pub rnr_retry: u8,
    /// The RNR timer this end's RNR NAKs ask for, encoded (0..=31, IBA
    /// table 45, see [`rnr_timer_ns`]).
    pub min_rnr_timer: u8,
}

impl QpTimers {
    /// The local ACK timeout in nanoseconds, `None` when disabled.
    pub const fn ack_timeout_ns(&self) -> Option<u64> {
        if self.timeout == 0 || self.timeout > 31 {
            None
        } else {
            Some(4096u64 << self.timeout)
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.timeout > 31 {
            return Err(ConfigError::BadTimer("timeout (0..=31)"));
        }
        if self.retry_cnt > 7 {
            return Err(ConfigError::BadTimer("retry_cnt (0..=7)"));
        }
        if self.rnr_retry > 7 {
            return Err(ConfigError::BadTimer("rnr_retry (0..=7)"));
        }
        if self.min_rnr_timer > 31 {
            return Err(ConfigError::BadTimer("min_rnr_timer (0..=31)"));
        }
        Ok(())
    }
}

/// The RNR NAK timer values of IBA table 45, in units of 10 µs, indexed by
/// the 5-bit encoding.
const RNR_TIMER_10US: [u64; 32] = [
    65536, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536,
    2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152,
];

/// The time an encoded RNR timer (0..=31, higher bits ignored) stands for,
/// in nanoseconds: 0 is 655.36 ms, 1 is 0.01 ms, ... 31 is 491.52 ms.
pub const fn rnr_timer_ns(code: u8) -> u64 {
    RNR_TIMER_10US[(code & 0x1f) as usize] * 10_000
}

/// What remote peers may do with a memory region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteAccess {
    /// RDMA WRITE.
    pub write: bool,
    /// RDMA READ.
    pub read: bool,
    /// Compare-and-swap and fetch-and-add.
    pub atomic: bool,
}

/// A memory region remote peers may access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// The virtual address of the first byte, as the remote peer names it.
    pub va: u64,
    /// The remote key.
    pub rkey: u32,
    /// Whether remote peers may write it.
    pub remote_write: bool,
    /// The region's bytes.
    pub data: Vec<u8>,
}

/// A region found by its remote key.
pub struct RegionRef<'a> {
    /// The virtual address of its first byte.
    pub va: u64,
    /// What remote peers may do with it.
    pub access: RemoteAccess,
    /// Its bytes.
    pub data: &'a mut [u8],
}

/// Where the responder finds the memory an R_Key names.
pub trait RegionTable {
    /// The region `rkey` names, if there is one this queue pair may use.
    fn lookup(&mut self, rkey: u32) -> Option<RegionRef<'_>>;

    /// Places `payload`, the bytes of a received SEND that start at
    /// `offset` in its message, in the buffer of the receive the queue
    /// pair knows as `wr_id` (the `wr_id` it was posted with): the
    /// responder calls it for each packet of a message it accepted, after
    /// its checks (PSN, opcode sequence, the receive's length), so that
    /// the bytes go from the received frame to their place once. `false`
    /// (the default): this table does not place receives; the queue pair
    /// keeps the bytes and hands them over in the completion's
    /// [`CompletionKind::Recv`] `data`. A table that answers `true` for
    /// the first packet of a message is given every packet of it, and
    /// reports a placement it could not make in its own completion; the
    /// completion's `data` is then empty and `len` the message's length.
    fn place_recv(&mut self, _wr_id: u64, _offset: usize, _payload: &[u8]) -> bool {
        false
    }
}

/// The queue pair's own regions.
struct OwnRegions<'a> {
    regions: &'a mut [MemoryRegion],
    access: &'a [RemoteAccess],
}

impl RegionTable for OwnRegions<'_> {
    fn lookup(&mut self, rkey: u32) -> Option<RegionRef<'_>> {
        let i = self.regions.iter().position(|r| r.rkey == rkey)?;
        let access = self.access.get(i).copied().unwrap_or_default();
        let r = self.regions.get_mut(i)?;
        Some(RegionRef {
            va: r.va,
            access,
            data: &mut r.data,
        })
    }
}

/// A send work request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// SEND, optionally with immediate data.
    Send {
        /// The message.
        data: Vec<u8>,
        /// Immediate data.
        imm: Option<[u8; 4]>,
    },
    /// RDMA WRITE, optionally with immediate data.
    Write {
        /// The bytes to write.
        data: Vec<u8>,
        /// The remote address.
        va: u64,
        /// The remote key.
        rkey: u32,
        /// Immediate data (consumes a receive at the remote end).
        imm: Option<[u8; 4]>,
    },
    /// RDMA READ of `len` bytes; the bytes arrive in the completion
    /// ([`CompletionKind::Read`]).
    Read {
        /// The remote address.
        va: u64,
        /// The remote key.
        rkey: u32,
        /// Bytes to read.
        len: u32,
    },
    /// Atomic compare-and-swap of the 8 bytes at `va` (8-byte aligned):
    /// if they equal `compare` they become `swap`. The completion carries
    /// the original value ([`CompletionKind::Atomic`]).
    CompareSwap {
        /// The remote address.
        va: u64,
        /// The remote key.
        rkey: u32,
        /// The value to compare with.
        compare: u64,
        /// The value stored when equal.
        swap: u64,
    },
    /// Atomic fetch-and-add of `add` to the 8 bytes at `va` (8-byte
    /// aligned, wrapping). The completion carries the original value.
    FetchAdd {
        /// The remote address.
        va: u64,
        /// The remote key.
        rkey: u32,
        /// The addend.
        add: u64,
    },
}

impl SendOp {
    fn is_rd_atomic(&self) -> bool {
        matches!(
            self,
            SendOp::Read { .. } | SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }
        )
    }

    /// Outstanding entries (packets, or one READ or atomic request) and
    /// PSNs it takes.
    fn footprint(&self, pmtu: usize) -> (usize, u32) {
        match self {
            SendOp::Send { data, .. } | SendOp::Write { data, .. } => {
                let n = data.len().div_ceil(pmtu).max(1);
                (n, u32::try_from(n).unwrap_or(u32::MAX))
            }
            SendOp::Read { len, .. } => (1, read_span(*len as usize, pmtu)),
            SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. } => (1, 1),
        }
    }
}

/// The response packets (and PSNs) of a READ of `len` bytes.
fn read_span(len: usize, pmtu: usize) -> u32 {
    u32::try_from(len.div_ceil(pmtu).max(1)).unwrap_or(u32::MAX)
}

/// How a work request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// It completed.
    Success,
    /// The remote end answered with this NAK.
    RemoteNak(NakCode),
    /// No progress after the retry limit.
    RetryExceeded,
    /// The remote end kept answering "receiver not ready" beyond the RNR
    /// retry count.
    RnrRetryExceeded,
    /// A received message was longer than the posted receive buffer.
    LocalLength,
    /// The queue pair entered the error state before it completed.
    Flushed,
}

/// What completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompletionKind {
    /// A SEND this end posted.
    Send,
    /// An RDMA WRITE this end posted.
    Write,
    /// A receive: a SEND arrived (`data`, `len` its length).
    Recv {
        /// The received message (SEND); empty when the region table placed
        /// it ([`RegionTable::place_recv`]).
        data: Vec<u8>,
        /// Bytes received.
        len: usize,
        /// Immediate data.
        imm: Option<[u8; 4]>,
    },
    /// A receive consumed by an RDMA WRITE with immediate: `len` bytes were
    /// written into a memory region, none into the receive buffer.
    RecvRdmaWithImm {
        /// Bytes the WRITE carried.
        len: usize,
        /// Immediate data.
        imm: [u8; 4],
    },
    /// An RDMA READ this end posted, with the bytes read (empty when it
    /// failed).
    Read {
        /// The bytes read.
        data: Vec<u8>,
    },
    /// A compare-and-swap or fetch-and-add this end posted.
    Atomic {
        /// The value the remote location held before (0 when it failed).
        orig: u64,
    },
}

/// A completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The work request's id.
    pub wr_id: u64,
    /// How it ended.
    pub status: Status,
    /// What it was.
    pub kind: CompletionKind,
}

/// Why a queue pair's configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The path MTU is not 256, 512, 1024, 2048 or 4096.
    BadPmtu(usize),
    /// A queue pair number does not fit in 24 bits.
    QpnTooLarge,
    /// A timer or retry count out of its range (named).
    BadTimer(&'static str),
    /// `max_rd_atomic` or `max_dest_rd_atomic` above [`MAX_RD_ATOMIC`].
    TooManyRdAtomic(u8),
    /// The send PSN can change only before anything was sent.
    AlreadySending,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::BadPmtu(m) => {
                write!(f, "path MTU {m} is not one of 256, 512, 1024, 2048 or 4096")
            }
            ConfigError::QpnTooLarge => write!(f, "queue pair numbers have 24 bits"),
            ConfigError::BadTimer(what) => write!(f, "{what} is out of range"),
            ConfigError::TooManyRdAtomic(n) => write!(
                f,
                "{n} outstanding READ/atomic requests asked; at most {MAX_RD_ATOMIC} are supported"
            ),
            ConfigError::AlreadySending => write!(
                f,
                "the send PSN cannot change after packets were sent; set it before posting"
            ),
        }
    }
}

/// Why a work request could not be posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostError {
    /// The queue pair is in the error state.
    QpError,
    /// Too many packets unacknowledged; poll completions first.
    Full,
    /// The message is larger than a message may be (2^31 bytes), or a READ
    /// needs more than [`MAX_READ_PSNS`] response packets.
    TooLong,
    /// A READ or atomic on a queue pair whose `max_rd_atomic` is 0.
    RdAtomicDisabled,
}

impl core::fmt::Display for PostError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PostError::QpError => write!(f, "the queue pair is in the error state; reset it"),
            PostError::Full => write!(
                f,
                "too many packets unacknowledged; wait for completions before posting more"
            ),
            PostError::TooLong => write!(
                f,
                "the message exceeds 2^31 bytes (or the READ its response packets); split it"
            ),
            PostError::RdAtomicDisabled => write!(
                f,
                "max_rd_atomic is 0: set it above 0 before posting READ or atomic requests"
            ),
        }
    }
}

/// Counters of what the queue pair dropped or answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames that failed to parse.
    pub malformed: u64,
    /// Packets for another QP or with another P_Key.
    pub misaddressed: u64,
    /// Duplicate requests (not executed again) and duplicate READ
    /// responses.
    pub duplicates: u64,
    /// Requests ahead of the expected PSN (dropped), and READ responses
    /// after a gap.
    pub out_of_sequence: u64,
    /// ACKs that acknowledged nothing new or PSNs never sent, and
    /// responses to requests never sent.
    pub stale_acks: u64,
    /// READ responses or atomic acknowledges with the wrong opcode, length
    /// or syndrome for the request they answer (dropped).
    pub bad_responses: u64,
    /// ACKs sent.
    pub acks_sent: u64,
    /// NAKs sent.
    pub naks_sent: u64,
    /// RNR NAKs received.
    pub rnr_naks: u64,
    /// Packets sent again.
    pub retransmitted: u64,
    /// Expiries of the local ACK timer.
    pub timeouts: u64,
    /// READs re-issued (or go-back-N resends) because a response was
    /// missing.
    pub implied_naks: u64,
    /// READ requests served (duplicates included).
    pub reads_served: u64,
    /// Atomic requests executed.
    pub atomics_executed: u64,
    /// Duplicate atomics answered from the replay cache.
    pub atomic_replays: u64,
    /// The last parse error seen.
    pub last_parse_error: Option<ParseError>,
}

/// What an outstanding request waits for.
enum Wait {
    /// An ACK (SEND and RDMA WRITE packets).
    Ack,
    /// READ responses; `data` holds the bytes received so far.
    Read {
        va: u64,
        rkey: u32,
        len: u32,
        data: Vec<u8>,
    },
    /// An atomic acknowledge.
    Atomic,
}

struct Outstanding {
    psn: Psn,
    /// PSNs it occupies: a READ's response packets, 1 otherwise.
    span: u32,
    frame: Vec<u8>,
    /// Set on the last packet of a work request.
    completes: Option<(u64, CompletionKind)>,
    wait: Wait,
}

impl Outstanding {
    fn last_psn(&self) -> Psn {
        self.psn.add(self.span.saturating_sub(1))
    }

    fn is_rd_atomic(&self) -> bool {
        !matches!(self.wait, Wait::Ack)
    }
}

/// The responder's message in progress.
enum InProgress {
    None,
    Send {
        wr_id: u64,
        /// The bytes received, when the region table does not place them
        /// ([`RegionTable::place_recv`]).
        buf: Vec<u8>,
        cap: usize,
        /// Bytes received so far.
        len: usize,
        /// Whether the region table places the bytes (asked at the first
        /// packet).
        placed: Option<bool>,
    },
    Write {
        rkey: u32,
        va: u64,
        remaining: usize,
        total: usize,
    },
}

/// A response waiting to leave, in PSN order.
enum Resp {
    /// An ACK of this PSN (coalesced with the ACKs after it).
    Ack(Psn),
    /// A NAK or RNR NAK.
    Nak(Psn, Syndrome),
    /// A READ response or atomic acknowledge of the request at `tag`;
    /// `ends` on its last packet.
    Frame {
        frame: Vec<u8>,
        tag: Psn,
        ends: bool,
    },
}

/// A request packet waiting to leave.
enum TxItem {
    /// The frame of the outstanding request at this PSN (kept once, in
    /// `outstanding`, for retransmission too). Skipped when that request
    /// was acknowledged before it left.
    Request(Psn),
    /// A frame of its own (a READ request rebuilt for the bytes missing).
    Frame(Vec<u8>),
}

/// A READ or atomic request the responder remembers for duplicates.
#[derive(Clone, Copy)]
struct Resource {
    psn: Psn,
    span: u32,
    /// `Some(original value)` for an atomic.
    atomic: Option<u64>,
}

/// One reliable-connected queue pair (requester and responder sides).
pub struct QueuePair {
    cfg: QpConfig,
    timers: QpTimers,
    /// A local ACK timeout of any length ([`QueuePair::set_ack_timeout_ns`]),
    /// in place of the encoded one of `timers`.
    ack_timeout: Option<u64>,
    retry_limit: u32,
    max_rd_atomic: u8,
    max_dest_rd_atomic: u8,
    error: bool,
    now: u64,
    // Requester.
    next_psn: Psn,
    sent_any: bool,
    /// Work requests waiting to be segmented, with whether their
    /// completion is waited for (see [`QueuePair::post_send_unsignaled`]).
    sq: VecDeque<(u64, SendOp, bool)>,
    /// At most this many messages in a row leave without asking for an
    /// ACK ([`QueuePair::set_ack_req_interval`]); 1: every message asks.
    ack_req_interval: u32,
    /// Messages sent since the last one that asked for an ACK.
    unrequested: u32,
    outstanding: VecDeque<Outstanding>,
    retries: u32,
    rnr_retries: u32,
    ack_deadline: Option<u64>,
    rnr_deadline: Option<u64>,
    rewound: Option<Psn>,
    // Responder.
    expected_psn: Psn,
    msn: u32,
    nak_sent: bool,
    resp: VecDeque<Resp>,
    resources: VecDeque<Resource>,
    in_progress: InProgress,
    recv_queue: VecDeque<(u64, usize)>,
    /// Spare buffers (received SENDs given back with
    /// [`QueuePair::recycle`], frames of acknowledged requests, messages
    /// once segmented), reused for the next ones.
    spare: Vec<Vec<u8>>,
    regions: Vec<MemoryRegion>,
    region_access: Vec<RemoteAccess>,
    // Output.
    tx: VecDeque<TxItem>,
    /// The last frame sent was a request that left while a response
    /// waited: the response goes next (when both streams are backlogged
    /// they alternate). A request that left with no response waiting
    /// gives the responses no turn: the next request posted goes first
    /// again.
    response_turn: bool,
    completions: VecDeque<Completion>,
    /// Completions taken by [`QueuePair::poll_completion`].
    completions_taken: u64,
    /// RDMA WRITE packets whose bytes were placed in a region.
    writes_placed: u64,
    stats: Stats,
}

impl QueuePair {
    /// A queue pair ready to send and receive (the RTS state).
    pub fn new(cfg: QpConfig) -> Result<QueuePair, ConfigError> {
        if !matches!(cfg.pmtu, 256 | 512 | 1024 | 2048 | 4096) {
            return Err(ConfigError::BadPmtu(cfg.pmtu));
        }
        if cfg.qpn > QPN_MASK || cfg.dest_qpn > QPN_MASK {
            return Err(ConfigError::QpnTooLarge);
        }
        Ok(QueuePair {
            timers: QpTimers {
                timeout: 0,
                retry_cnt: u8::try_from(cfg.retry_limit.min(7)).unwrap_or(7),
                rnr_retry: 7,
                min_rnr_timer: 1,
            },
            ack_timeout: None,
            retry_limit: cfg.retry_limit,
            max_rd_atomic: 16,
            max_dest_rd_atomic: 16,
            error: false,
            now: 0,
            next_psn: cfg.send_psn,
            sent_any: false,
            sq: VecDeque::new(),
            ack_req_interval: 1,
            unrequested: 0,
            outstanding: VecDeque::new(),
            retries: 0,
            rnr_retries: 0,
            ack_deadline: None,
            rnr_deadline: None,
            rewound: None,
            expected_psn: cfg.recv_psn,
            msn: 0,
            nak_sent: false,
            resp: VecDeque::new(),
            resources: VecDeque::new(),
            in_progress: InProgress::None,
            recv_queue: VecDeque::new(),
            spare: Vec::new(),
            regions: Vec::new(),
            region_access: Vec::new(),
            tx: VecDeque::new(),
            response_turn: false,
            completions: VecDeque::new(),
            completions_taken: 0,
            writes_placed: 0,
            stats: Stats::default(),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &QpConfig {
        &self.cfg
    }

    /// Sets the timers and retry counts (replacing `retry_limit`). Until
    /// called, there is no local ACK timer (the caller calls
    /// [`QueuePair::timeout`]), RNR retries are infinite and RNR NAKs ask
    /// for 0.01 ms.
    pub fn set_timers(&mut self, timers: QpTimers) -> Result<(), ConfigError> {
        timers.check()?;
        self.timers = timers;
        self.ack_timeout = None;
        self.retry_limit = u32::from(timers.retry_cnt);
        if self.ack_deadline.is_some() {
            self.restart_timer();
        }
        Ok(())
    }

    /// Sets the local ACK timeout to exactly `ns` nanoseconds (at least
    /// 1), a length the encoded `timeout` of [`QpTimers`] may not have;
    /// the retry counts stay. [`QueuePair::set_timers`] replaces it.
    pub fn set_ack_timeout_ns(&mut self, ns: u64) {
        self.ack_timeout = Some(ns.max(1));
        if self.ack_deadline.is_some() {
            self.restart_timer();
        }
    }

    /// The local ACK timeout in nanoseconds, `None` when there is none.
    pub fn ack_timeout_ns(&self) -> Option<u64> {
        self.ack_timeout.or(self.timers.ack_timeout_ns())
    }

    /// The timers.
    pub fn timers(&self) -> QpTimers {
        self.timers
    }

    /// Sets how many READ and atomic requests this end keeps in flight
    /// (`max_rd_atomic`, default 16) and serves at once for the remote end
    /// (`max_dest_rd_atomic`, default 16).
    pub fn set_rd_atomic(
        &mut self,
        max_rd_atomic: u8,
        max_dest_rd_atomic: u8,
    ) -> Result<(), ConfigError> {
        for n in [max_rd_atomic, max_dest_rd_atomic] {
            if n > MAX_RD_ATOMIC {
                return Err(ConfigError::TooManyRdAtomic(n));
            }
        }
        self.max_rd_atomic = max_rd_atomic;
        self.max_dest_rd_atomic = max_dest_rd_atomic;
        while self.resources.len() > usize::from(max_dest_rd_atomic) {
            self.resources.pop_front();
        }
        self.pump_sq();
        Ok(())
    }

    /// Sets the first PSN to send (the RTR→RTS transition's `sq_psn`);
    /// refused once a packet was sent.
    pub fn set_send_psn(&mut self, psn: Psn) -> Result<(), ConfigError> {
        if self.sent_any {
            return Err(ConfigError::AlreadySending);
        }
        self.next_psn = psn;
        self.cfg.send_psn = psn;
        Ok(())
    }

    /// Whether the queue pair is in the error state.
    pub fn is_error(&self) -> bool {
        self.error
    }

    /// Moves the queue pair to the error state (`ibv_modify_qp` to ERR):
    /// every work request not completed completes with
    /// [`Status::Flushed`].
    pub fn enter_error(&mut self) {
        if !self.error {
            self.fail(Status::Flushed);
            self.resp.clear();
        }
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Registers a memory region remote peers may write (if its
    /// `remote_write` says so); returns its index.
    pub fn register(&mut self, region: MemoryRegion) -> usize {
        let access = RemoteAccess {
            write: region.remote_write,
            read: false,
            atomic: false,
        };
        self.register_with_access(region, access)
    }

    /// Registers a memory region with the given remote access (its
    /// `remote_write` is set from `access.write`); returns its index.
    pub fn register_with_access(
        &mut self,
        mut region: MemoryRegion,
        access: RemoteAccess,
    ) -> usize {
        region.remote_write = access.write;
        self.regions.push(region);
        self.region_access.push(access);
        self.regions.len() - 1
    }

    /// A registered region.
    pub fn region(&self, index: usize) -> Option<&MemoryRegion> {
        self.regions.get(index)
    }

    /// Posts a receive buffer of `len` bytes.
    pub fn post_recv(&mut self, wr_id: u64, len: usize) {
        if self.error {
            self.completions.push_back(Completion {
                wr_id,
                status: Status::Flushed,
                kind: CompletionKind::Recv {
                    data: Vec::new(),
                    len: 0,
                    imm: None,
                },
            });
            return;
        }
        self.recv_queue.push_back((wr_id, len));
    }

    /// The next completion.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        let c = self.completions.pop_front();
        self.completions_taken += u64::from(c.is_some());
        c
    }

    /// Whether completions wait to be taken.
    #[inline]
    pub fn completions_waiting(&self) -> bool {
        !self.completions.is_empty()
    }

    /// Completions made so far (taken or waiting): a count a driver reads
    /// around every frame it hands over, to learn that one made a
    /// completion.
    #[inline]
    pub fn completions_made(&self) -> u64 {
        self.completions_taken + self.completions.len() as u64
    }

    /// RDMA WRITE packets whose bytes this responder placed in a region so
    /// far (what an application polling its memory waits for, with no
    /// completion to tell it).
    #[inline]
    pub fn writes_placed(&self) -> u64 {
        self.writes_placed
    }

    /// Posts a work request: it joins the send queue and is turned into
    /// packets as soon as the limits on unacknowledged packets and on READ
    /// and atomic requests allow. The last packet of its message asks for
    /// an acknowledgement (AckReq).
    pub fn post_send(&mut self, wr_id: u64, op: SendOp) -> Result<(), PostError> {
        self.post(wr_id, op, true)
    }

    /// Posts a work request whose completion nobody waits for soon (a
    /// verbs send posted unsignaled): as [`QueuePair::post_send`], but a
    /// SEND or RDMA WRITE may leave without asking for an ACK, so that
    /// the responder acknowledges several messages with one ACK of the
    /// latest PSN (IBA 9.7.5.1: an ACK acknowledges every packet before
    /// it). Every [`QueuePair::set_ack_req_interval`]-th message still
    /// asks, as does every message posted with [`QueuePair::post_send`],
    /// every READ and atomic, and the last packet of every
    /// retransmission. The completion comes, as ever, when an ACK covers
    /// the message; one posted last, with nothing after it asking, is
    /// covered after the local ACK timeout (its resend asks).
    pub fn post_send_unsignaled(&mut self, wr_id: u64, op: SendOp) -> Result<(), PostError> {
        self.post(wr_id, op, false)
    }

    /// At most `n` messages posted with [`QueuePair::post_send_unsignaled`]
    /// in a row leave without asking for an ACK (the `n`-th asks); 0 and 1
    /// (the default) make every message ask, as `rdma_rxe` and the
    /// hardware NICs do. A verbs context sets half its send queue's depth,
    /// so that unsignaled sends never fill the queue waiting for an ACK.
    pub fn set_ack_req_interval(&mut self, n: u32) {
        self.ack_req_interval = n.max(1);
    }

    /// The interval [`QueuePair::set_ack_req_interval`] set.
    pub fn ack_req_interval(&self) -> u32 {
        self.ack_req_interval
    }

    fn post(&mut self, wr_id: u64, op: SendOp, signaled: bool) -> Result<(), PostError> {
        if self.error {
            return Err(PostError::QpError);
        }
        match &op {
            SendOp::Send { data, .. } | SendOp::Write { data, .. } => {
                if data.len() > MAX_MESSAGE {
                    return Err(PostError::TooLong);
                }
            }
            SendOp::Read { len, .. } => {
                if *len as usize > MAX_MESSAGE
                    || read_span(*len as usize, self.cfg.pmtu) > MAX_READ_PSNS
                {
                    return Err(PostError::TooLong);
                }
            }
            SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. } => {}
        }
        if op.is_rd_atomic() && self.max_rd_atomic == 0 {
            return Err(PostError::RdAtomicDisabled);
        }
        let pmtu = self.cfg.pmtu;
        let queued: usize = self.sq.iter().map(|(_, o, _)| o.footprint(pmtu).0).sum();
        let (entries, _) = op.footprint(pmtu);
        if self.outstanding.len() + queued + entries > MAX_OUTSTANDING {
            return Err(PostError::Full);
        }
        if self.sq.is_empty() && self.admits(&op) {
            // Nothing queued ahead and room for it: packets at once,
            // without a turn through the send queue.
            self.segment(wr_id, op, signaled);
            return Ok(());
        }
        self.sq.push_back((wr_id, op, signaled));
        self.pump_sq();
        Ok(())
    }

    /// Posts a SEND (`remote` is `None`) or an RDMA WRITE (`remote` is its
    /// address and key) whose bytes are `data`, borrowed: the fast path of
    /// a verbs send with one scatter/gather entry. With nothing queued
    /// ahead and room for it, the message is segmented at once, each
    /// packet's frame built straight from `data` (no gather into a buffer
    /// of its own); otherwise `data` is copied into a spare buffer and the
    /// work request joins the send queue as [`QueuePair::post_send`]'s
    /// would. Either way the frames, the completion and the errors are
    /// those of [`QueuePair::post_send`] (`signaled`) or
    /// [`QueuePair::post_send_unsignaled`] given the same message as a
    /// [`SendOp`].
    pub fn post_message(
        &mut self,
        wr_id: u64,
        data: &[u8],
        remote: Option<(u64, u32)>,
        imm: Option<[u8; 4]>,
        signaled: bool,
    ) -> Result<(), PostError> {
        if self.error {
            return Err(PostError::QpError);
        }
        if data.len() > MAX_MESSAGE {
            return Err(PostError::TooLong);
        }
        if self.sq.is_empty() {
            // The footprint of a SEND or WRITE (`SendOp::footprint`).
            let entries = data.len().div_ceil(self.cfg.pmtu).max(1);
            if self.outstanding.len() + entries > MAX_OUTSTANDING {
                return Err(PostError::Full);
            }
            let span = u32::try_from(entries).unwrap_or(u32::MAX);
            if self.admits_span(entries, span) {
                self.sent_any = true;
                self.segment_message(wr_id, data, remote, imm, signaled);
                return Ok(());
            }
        }
        let mut buf = self.take_buffer();
        buf.extend_from_slice(data);
        let op = match remote {
            None => SendOp::Send { data: buf, imm },
            Some((va, rkey)) => SendOp::Write {
                data: buf,
                va,
                rkey,
                imm,
            },
        };
        self.post(wr_id, op, signaled)
    }

    /// Whether the queue pair may have a frame to send: a cheap hint (one
    /// look at each output queue) that is never `false` when
    /// [`QueuePair::next_frame_len`] is `Some`; it may be `true` when the
    /// only requests queued were acknowledged before they left.
    #[inline]
    pub fn may_have_output(&self) -> bool {
        !self.tx.is_empty() || !self.resp.is_empty()
    }

    /// Work requests posted and not yet turned into packets.
    pub fn send_queue_len(&self) -> usize {
        self.sq.len()
    }

    /// Gives back a buffer: the `data` of a receive completion once read,
    /// so that later SENDs are received without allocating. Keeps a few,
    /// each at most [`RECYCLE_MAX_BYTES`] of capacity; drops the others.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < RECYCLE_KEEP && buf.capacity() <= RECYCLE_MAX_BYTES {
            self.spare.push(buf);
        }
    }

    /// An empty buffer, one given back before when there is one: what to
    /// gather a message into before posting it (the queue pair takes the
    /// buffer back once the message is segmented), without allocating.
    pub fn take_buffer(&mut self) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b
    }

    /// Turns queued work requests into packets while the limits allow.
    fn pump_sq(&mut self) {
        while let Some((_, op, _)) = self.sq.front() {
            if self.error || !self.admits(op) {
                return;
            }
            let Some((wr_id, op, signaled)) = self.sq.pop_front() else {
                return;
            };
            self.segment(wr_id, op, signaled);
        }
    }

    /// Whether the limits on unacknowledged packets, on the PSN span in
    /// flight and on outstanding READ and atomic requests let `op` be
    /// turned into packets now.
    fn admits(&self, op: &SendOp) -> bool {
        let (entries, span) = op.footprint(self.cfg.pmtu);
        if !self.admits_span(entries, span) {
            return false;
        }
        if op.is_rd_atomic() {
            let busy = self.outstanding.iter().filter(|o| o.is_rd_atomic()).count();
            if busy >= usize::from(self.max_rd_atomic) {
                return false;
            }
        }
        true
    }

    /// Whether `entries` more outstanding packets taking `span` PSNs fit
    /// the limits on unacknowledged packets and on the PSN span in flight.
    #[inline]
    fn admits_span(&self, entries: usize, span: u32) -> bool {
        if let Some(first) = self.outstanding.front() {
            let in_flight = self.next_psn.forward_from(first.psn);
            if self.outstanding.len() + entries > MAX_OUTSTANDING
                || in_flight.saturating_add(span) > MAX_PSN_SPAN
            {
                return false;
            }
        }
        true
    }

    fn segment(&mut self, wr_id: u64, op: SendOp, signaled: bool) {
        self.sent_any = true;
        match op {
            SendOp::Read { va, rkey, len } => {
                let psn = self.next_psn;
                let span = read_span(len as usize, self.cfg.pmtu);
                self.next_psn = psn.add(span);
                let frame = self.read_request(psn, va, rkey, len);
                self.queue_request(Outstanding {
                    psn,
                    span,
                    frame,
                    completes: Some((wr_id, CompletionKind::Read { data: Vec::new() })),
                    wait: Wait::Read {
                        va,
                        rkey,
                        len,
                        data: Vec::new(),
                    },
                });
            }
            SendOp::CompareSwap {
                va,
                rkey,
                compare,
                swap,
            } => self.atomic_request(wr_id, Opcode::CompareSwap, va, rkey, swap, compare),
            SendOp::FetchAdd { va, rkey, add } => {
                self.atomic_request(wr_id, Opcode::FetchAdd, va, rkey, add, 0)
            }
            SendOp::Send { data, imm } => {
                self.segment_message(wr_id, &data, None, imm, signaled);
                self.recycle(data);
            }
            SendOp::Write {
                data,
                va,
                rkey,
                imm,
            } => {
                self.segment_message(wr_id, &data, Some((va, rkey)), imm, signaled);
                self.recycle(data);
            }
        }
    }

    fn queue_request(&mut self, o: Outstanding) {
        self.tx.push_back(TxItem::Request(o.psn));
        self.outstanding.push_back(o);
        if self.ack_deadline.is_none() && self.rnr_deadline.is_none() {
            self.restart_timer();
        }
    }

    fn read_request(&self, psn: Psn, va: u64, rkey: u32, len: u32) -> Vec<u8> {
        let mut h = TransportHeaders::new(self.bth(Opcode::RdmaReadRequest, psn));
        h.bth.ack_req = true;
        h.reth = Some(Reth {
            va,
            rkey,
            dma_len: len,
        });
        self.frame(&h, &[])
    }

    fn atomic_request(
        &mut self,
        wr_id: u64,
        opcode: Opcode,
        va: u64,
        rkey: u32,
        swap_add: u64,
        compare: u64,
    ) {
        let psn = self.next_psn;
        self.next_psn = psn.next();
        let mut h = TransportHeaders::new(self.bth(opcode, psn));
        h.bth.ack_req = true;
        h.atomic_eth = Some(AtomicEth {
            va,
            rkey,
            swap_add,
            compare,
        });
        let frame = self.frame(&h, &[]);
        self.queue_request(Outstanding {
            psn,
            span: 1,
            frame,
            completes: Some((wr_id, CompletionKind::Atomic { orig: 0 })),
            wait: Wait::Atomic,
        });
    }

    /// Segments a SEND (`remote` is `None`) or an RDMA WRITE.
    fn segment_message(
        &mut self,
        wr_id: u64,
        data: &[u8],
        remote: Option<(u64, u32)>,
        imm: Option<[u8; 4]>,
        signaled: bool,
    ) {
        let pmtu = self.cfg.pmtu;
        // Whether the message's last packet asks for an ACK.
        let ask = signaled || self.unrequested.saturating_add(1) >= self.ack_req_interval;
        self.unrequested = if ask { 0 } else { self.unrequested + 1 };
        let packets = data.len().div_ceil(pmtu).max(1);
        let kind = if remote.is_some() {
            CompletionKind::Write
        } else {
            CompletionKind::Send
        };
        for i in 0..packets {
            let start = i * pmtu;
            let chunk = data
                .get(start..(start + pmtu).min(data.len()))
                .unwrap_or(&[]);
            let position = match (i == 0, i + 1 == packets) {
                (true, true) => Position::Only,
                (true, false) => Position::First,
                (false, false) => Position::Middle,
                (false, true) => Position::Last,
            };
            let psn = self.next_psn;
            self.next_psn = psn.next();
            let opcode = match (remote.is_some(), position, imm.is_some()) {
                (false, Position::First, _) => Opcode::SendFirst,
                (false, Position::Middle, _) => Opcode::SendMiddle,
                (false, Position::Last, false) => Opcode::SendLast,
                (false, Position::Last, true) => Opcode::SendLastWithImmediate,
                (false, Position::Only, false) => Opcode::SendOnly,
                (false, Position::Only, true) => Opcode::SendOnlyWithImmediate,
                (true, Position::First, _) => Opcode::RdmaWriteFirst,
                (true, Position::Middle, _) => Opcode::RdmaWriteMiddle,
                (true, Position::Last, false) => Opcode::RdmaWriteLast,
                (true, Position::Last, true) => Opcode::RdmaWriteLastWithImmediate,
                (true, Position::Only, false) => Opcode::RdmaWriteOnly,
                (true, Position::Only, true) => Opcode::RdmaWriteOnlyWithImmediate,
            };
            let mut h = TransportHeaders::new(self.bth(opcode, psn));
            h.bth.ack_req = position.ends_message() && ask;
            if let (Some((va, rkey)), true) = (remote, position.starts_message()) {
                // post_send bounded the length by 2^31.
                h.reth = Some(Reth {
                    va,
                    rkey,
                    dma_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
                });
            }
            if position.ends_message() {
                h.imm = imm.map(ImmDt);
            }
            let frame = self.request_frame(&h, chunk);
            let completes = position.ends_message().then(|| (wr_id, kind.clone()));
            self.queue_request(Outstanding {
                psn,
                span: 1,
                frame,
                completes,
                wait: Wait::Ack,
            });
        }
    }

    /// The next frame to send. Responses (ACKs, NAKs, READ responses and
    /// atomic acknowledges) leave in PSN order, and requests and
    /// retransmissions in theirs. A request goes first, unless the last
    /// frame sent was a request that left while a response waited: then
    /// that response goes. So a request posted after frames were received
    /// (the pong of a ping, or the next ping after a pong) leaves before
    /// the acknowledgement they asked for, which nothing waits on, round
    /// after round; and when both streams are backlogged they take turns,
    /// neither holding up the other for long. Allocates the frame; a
    /// driver with a transmit buffer of its own uses
    /// [`QueuePair::next_frame_len`] and [`QueuePair::emit_into`] instead.
    pub fn transmit(&mut self) -> Option<Vec<u8>> {
        if let (Some(Resp::Frame { .. }), false) = (self.resp.front(), self.request_next()) {
            if let Some(Resp::Frame { frame, .. }) = self.resp.pop_front() {
                self.response_turn = false;
                return Some(frame);
            }
        }
        let len = self.next_frame_len()?;
        let mut out = vec![0u8; len];
        let n = self.emit_into(&mut out)?;
        out.truncate(n);
        Some(out)
    }

    /// The outstanding request at `psn`, if not acknowledged yet.
    fn outstanding_at(&self, psn: Psn) -> Option<&Outstanding> {
        let first = self.outstanding.front()?.psn;
        // Requests are in PSN order; a READ occupies several PSNs, so the
        // index is at most the distance from the first.
        let dist = usize::try_from(psn.forward_from(first)).ok()?;
        if dist >= MAX_PSN_SPAN as usize {
            return None;
        }
        let guess = dist.min(self.outstanding.len().saturating_sub(1));
        if self.outstanding.get(guess).is_some_and(|o| o.psn == psn) {
            return self.outstanding.get(guess);
        }
        self.outstanding.iter().find(|o| o.psn == psn)
    }

    /// The length of the frame [`QueuePair::emit_into`] writes next, or
    /// `None` when nothing waits.
    pub fn next_frame_len(&self) -> Option<usize> {
        self.next_choice().map(|(_, len)| len)
    }

    /// What leaves next: `(true, length)` for a request, `(false,
    /// length)` for a response (see [`QueuePair::transmit`] for the
    /// order), `None` when nothing waits. One look at each queue: what
    /// [`QueuePair::next_frame_len`] and [`QueuePair::emit_into`] both go
    /// by.
    #[inline]
    fn next_choice(&self) -> Option<(bool, usize)> {
        if self.resp.is_empty() || !self.response_turn {
            if let Some(len) = self.next_request_len() {
                return Some((true, len));
            }
        }
        match self.resp.front() {
            Some(Resp::Ack(_) | Resp::Nak(..)) => Some((false, frame_len(Opcode::Acknowledge, 0)?)),
            Some(Resp::Frame { frame, .. }) => Some((false, frame.len())),
            None => None,
        }
    }

    /// The length of the next request frame (requests acknowledged before
    /// they left are skipped).
    #[inline]
    fn next_request_len(&self) -> Option<usize> {
        // The front is nearly always the one (a request not acknowledged
        // yet): no walk of the queue.
        match self.tx.front()? {
            TxItem::Request(psn) => {
                if let Some(o) = self.outstanding_at(*psn) {
                    return Some(o.frame.len());
                }
            }
            TxItem::Frame(f) => return Some(f.len()),
        }
        self.tx.iter().skip(1).find_map(|t| match t {
            TxItem::Request(psn) => self.outstanding_at(*psn).map(|o| o.frame.len()),
            TxItem::Frame(f) => Some(f.len()),
        })
    }

    /// Whether the next frame is a request (see [`QueuePair::transmit`]).
    fn request_next(&self) -> bool {
        self.next_choice().is_some_and(|(request, _)| request)
    }

    /// Writes the next frame to send (see [`QueuePair::transmit`] for the
    /// order) into `out`, without allocating; returns its length. `None`
    /// when nothing waits, or when `out` is shorter than
    /// [`QueuePair::next_frame_len`] (the frame then stays queued).
    pub fn emit_into(&mut self, out: &mut [u8]) -> Option<usize> {
        let (request, len) = self.next_choice()?;
        let out = out.get_mut(..len)?;
        if request {
            while let Some(t) = self.tx.pop_front() {
                match t {
                    TxItem::Request(psn) => {
                        if let Some(o) = self.outstanding_at(psn) {
                            out.copy_from_slice(&o.frame);
                            self.response_turn = !self.resp.is_empty();
                            return Some(len);
                        }
                    }
                    TxItem::Frame(f) => {
                        out.copy_from_slice(&f);
                        self.response_turn = !self.resp.is_empty();
                        return Some(len);
                    }
                }
            }
            return None;
        }
        if let Some(r) = self.resp.pop_front() {
            self.response_turn = false;
            return match r {
                Resp::Ack(psn) => {
                    self.stats.acks_sent += 1;
                    self.ack_into(
                        psn,
                        Syndrome::Ack {
                            credits: CREDITS_INVALID,
                        },
                        out,
                    )
                }
                Resp::Nak(psn, syndrome) => {
                    self.stats.naks_sent += 1;
                    self.ack_into(psn, syndrome, out)
                }
                Resp::Frame { frame, .. } => {
                    out.copy_from_slice(&frame);
                    Some(len)
                }
            };
        }
        None
    }

    /// The retransmission timer fired now: after an RNR NAK, the RNR wait
    /// is over and the packets are resent; otherwise every unacknowledged
    /// packet is resent, or the queue pair gives up after the retry limit.
    pub fn timeout(&mut self) {
        if self.error {
            return;
        }
        if self.outstanding.is_empty() {
            self.rnr_deadline = None;
            self.ack_deadline = None;
            return;
        }
        if self.rnr_deadline.take().is_some() {
            self.resend_all();
            return;
        }
        self.stats.timeouts += 1;
        self.retries += 1;
        if self.retries > self.retry_limit {
            log::warn!(
                "QP {:#x}: no acknowledgement after {} retries; entering the error state",
                self.cfg.qpn,
                self.retry_limit
            );
            self.fail(Status::RetryExceeded);
            return;
        }
        self.resend_all();
    }

    /// Time passed: `now_ns` is the caller's monotonic clock. Fires the
    /// RNR wait or the local ACK timer when due.
    pub fn on_time(&mut self, now_ns: u64) {
        self.now = self.now.max(now_ns);
        if self.error {
            return;
        }
        if let Some(d) = self.rnr_deadline {
            if self.now >= d {
                self.timeout();
            }
            return;
        }
        if let Some(d) = self.ack_deadline {
            if self.now >= d {
                self.timeout();
            }
        }
    }

    /// Brings the queue pair's clock to `now_ns` without running a timer
    /// (a timer found due runs at the next [`QueuePair::on_time`]): work
    /// posted next arms its timers from this time.
    #[inline]
    pub fn advance_time(&mut self, now_ns: u64) {
        self.now = self.now.max(now_ns);
    }

    /// When [`QueuePair::on_time`] next has work, in the caller's clock
    /// (nanoseconds); `None` when no timer runs.
    #[inline]
    pub fn next_deadline(&self) -> Option<u64> {
        if self.error {
            return None;
        }
        self.rnr_deadline.or(self.ack_deadline)
    }

    fn restart_timer(&mut self) {
        self.ack_deadline = if self.outstanding.is_empty() {
            None
        } else {
            self.ack_timeout_ns().map(|t| self.now.saturating_add(t))
        };
    }

    /// Handles a received frame (the caller's private copy), with the
    /// queue pair's own memory regions. Malformed or misaddressed frames
    /// are dropped and counted.
    pub fn receive(&mut self, frame: &[u8]) {
        if self.error {
            return;
        }
        let p = match parse(frame) {
            Ok(p) => p,
            Err(e) => {
                log::debug!("QP {:#x}: dropping a malformed frame: {e}", self.cfg.qpn);
                self.stats.malformed += 1;
                self.stats.last_parse_error = Some(e);
                return;
            }
        };
        let mut regions = core::mem::take(&mut self.regions);
        let access = core::mem::take(&mut self.region_access);
        let mut own = OwnRegions {
            regions: &mut regions,
            access: &access,
        };
        self.receive_packet(&p, &mut own);
        self.regions = regions;
        self.region_access = access;
    }

    /// Handles a parsed packet (from the caller's private copy of a frame),
    /// with remote accesses going to `mem`. Misaddressed packets are
    /// dropped and counted.
    pub fn receive_packet(&mut self, p: &Packet<'_>, mem: &mut dyn RegionTable) {
        if self.error {
            return;
        }
        let bth = p.headers.bth;
        if bth.dest_qp != self.cfg.qpn || bth.pkey != self.cfg.pkey {
            self.stats.misaddressed += 1;
            return;
        }
        if bth.opcode.layout().is_request() {
            self.respond(&p.headers, p.payload, mem);
        } else {
            self.on_response(&p.headers, p.payload);
            self.pump_sq();
        }
    }

    fn bth(&self, opcode: Opcode, psn: Psn) -> Bth {
        Bth {
            opcode,
            solicited: false,
            mig_req: false,
            pad: 0,
            pkey: self.cfg.pkey,
            fecn: false,
            becn: false,
            dest_qp: self.cfg.dest_qpn & QPN_MASK,
            ack_req: false,
            psn,
        }
    }

    fn frame(&self, h: &TransportHeaders, payload: &[u8]) -> Vec<u8> {
        self.frame_in(Vec::new(), h, payload)
    }

    /// A request's frame, in a spare buffer when there is one.
    fn request_frame(&mut self, h: &TransportHeaders, payload: &[u8]) -> Vec<u8> {
        // Not emptied first: `frame_in` sets the length, `build` the bytes.
        let buf = self.spare.pop().unwrap_or_default();
        self.frame_in(buf, h, payload)
    }

    /// Builds a frame in `out` (emptied first).
    fn frame_in(&self, mut out: Vec<u8>, h: &TransportHeaders, payload: &[u8]) -> Vec<u8> {
        // `build` zeroes what it does not write: no zeroing here too.
        out.resize(frame_len(h.bth.opcode, payload.len()).unwrap_or(0), 0);
        match build(&self.cfg.endpoints, h, payload, &mut out) {
            Ok(n) => out.truncate(n),
            // The headers are this module's own and the payload at most a
            // path MTU: building cannot fail.
            Err(e) => {
                log::error!("QP {:#x}: cannot build a frame: {e}", self.cfg.qpn);
                out.clear();
            }
        }
        out
    }

    /// Builds an ACK or NAK into `out` (at least the length
    /// [`frame_len`] gives for an Acknowledge).
    fn ack_into(&self, psn: Psn, syndrome: Syndrome, out: &mut [u8]) -> Option<usize> {
        let mut h = TransportHeaders::new(self.bth(Opcode::Acknowledge, psn));
        h.aeth = Some(Aeth {
            syndrome,
            msn: self.msn & 0x00ff_ffff,
        });
        match build(&self.cfg.endpoints, &h, &[], out) {
            Ok(n) => Some(n),
            // The headers are this module's own: building cannot fail.
            Err(e) => {
                log::error!(
                    "QP {:#x}: cannot build an acknowledgement: {e}",
                    self.cfg.qpn
                );
                None
            }
        }
    }

    /// The frame that resends `o`: its own, or for a READ partly answered a
    /// new request for the bytes still missing, from the PSN of the first
    /// missing response.
    fn resend_frame(&self, o: &Outstanding) -> TxItem {
        match &o.wait {
            Wait::Read {
                va,
                rkey,
                len,
                data,
            } if !data.is_empty() => {
                let got = data.len();
                let psn = o.psn.add(u32::try_from(got / self.cfg.pmtu).unwrap_or(0));
                let rest = (*len as usize).saturating_sub(got);
                TxItem::Frame(self.read_request(
                    psn,
                    va.wrapping_add(got as u64),
                    *rkey,
                    u32::try_from(rest).unwrap_or(0),
                ))
            }
            _ => TxItem::Request(o.psn),
        }
    }

    fn resend_all(&mut self) {
        self.stats.retransmitted += self.outstanding.len() as u64;
        // The last packet resent asks for an ACK (it may have left without
        // asking: a message posted unsignaled), so that the resend is
        // answered even when nothing follows it.
        if let Some(o) = self.outstanding.back_mut() {
            if matches!(o.wait, Wait::Ack) && !set_ack_req(&mut o.frame) {
                log::error!(
                    "QP {:#x}: cannot set AckReq on a resent frame",
                    self.cfg.qpn
                );
            }
        }
        // Resent packets replace anything still queued from before.
        let frames: Vec<TxItem> = self
            .outstanding
            .iter()
            .map(|o| self.resend_frame(o))
            .collect();
        self.tx.clear();
        self.tx.extend(frames);
        self.restart_timer();
    }

    /// Enters the error state: requests stop, every work request not
    /// completed completes (`status` for the oldest outstanding one). The
    /// responses already queued (they precede the NAK that may follow, in
    /// PSN order) still leave.
    fn fail(&mut self, status: Status) {
        self.error = true;
        self.tx.clear();
        self.ack_deadline = None;
        self.rnr_deadline = None;
        let mut first = true;
        for o in self.outstanding.drain(..) {
            if let Some((wr_id, kind)) = o.completes {
                let status = if first { status } else { Status::Flushed };
                first = false;
                self.completions.push_back(Completion {
                    wr_id,
                    status,
                    kind,
                });
            }
        }
        for (wr_id, op, _) in self.sq.drain(..) {
            let kind = match op {
                SendOp::Send { .. } => CompletionKind::Send,
                SendOp::Write { .. } => CompletionKind::Write,
                SendOp::Read { .. } => CompletionKind::Read { data: Vec::new() },
                SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. } => {
                    CompletionKind::Atomic { orig: 0 }
                }
            };
            self.completions.push_back(Completion {
                wr_id,
                status: Status::Flushed,
                kind,
            });
        }
        let recv = |wr_id| Completion {
            wr_id,
            status: Status::Flushed,
            kind: CompletionKind::Recv {
                data: Vec::new(),
                len: 0,
                imm: None,
            },
        };
        if let InProgress::Send { wr_id, .. } =
            core::mem::replace(&mut self.in_progress, InProgress::None)
        {
            self.completions.push_back(recv(wr_id));
        }
        for (wr_id, _) in self.recv_queue.drain(..) {
            self.completions.push_back(recv(wr_id));
        }
    }

    /// Progress: the retry counts start again and the timer restarts.
    fn progress(&mut self) {
        self.retries = 0;
        self.rnr_retries = 0;
        self.rewound = None;
        self.restart_timer();
    }

    /// Acknowledges every outstanding packet up to and including `psn`.
    /// Returns whether anything was, and whether it stopped at a READ or
    /// atomic the acknowledgement reaches but cannot complete (its
    /// response was lost).
    fn ack_through(&mut self, psn: Psn) -> (bool, bool) {
        let mut progressed = false;
        let mut blocked = false;
        while let Some(o) = self.outstanding.front() {
            if o.is_rd_atomic() {
                blocked = o.psn.diff(psn) <= 0;
                break;
            }
            if o.last_psn().diff(psn) > 0 {
                break;
            }
            if let Some(o) = self.outstanding.pop_front() {
                if let Some((wr_id, kind)) = o.completes {
                    self.completions.push_back(Completion {
                        wr_id,
                        status: Status::Success,
                        kind,
                    });
                }
                self.recycle(o.frame);
            }
            progressed = true;
        }
        if progressed {
            self.progress();
        }
        (progressed, blocked)
    }

    /// A response is missing (a gap in READ responses, or an ACK beyond an
    /// unanswered READ or atomic): resend from the oldest outstanding
    /// request, once per position until progress.
    fn implied_nak(&mut self) {
        let Some(front) = self.outstanding.front() else {
            return;
        };
        let at = match &front.wait {
            Wait::Read { data, .. } => front
                .psn
                .add(u32::try_from(data.len() / self.cfg.pmtu).unwrap_or(0)),
            _ => front.psn,
        };
        if self.rewound == Some(at) {
            return;
        }
        self.rewound = Some(at);
        self.stats.implied_naks += 1;
        self.resend_all();
    }

    fn on_response(&mut self, h: &TransportHeaders, payload: &[u8]) {
        let psn = h.bth.psn;
        // A response must name a PSN this end sent: from one before the
        // oldest outstanding packet up to the last one sent.
        let last_sent = self.next_psn.sub(1);
        let oldest = self.outstanding.front().map_or(self.next_psn, |o| o.psn);
        let in_range = psn.diff(oldest) >= -1 && psn.diff(last_sent) <= 0;
        if !in_range {
            self.stats.stale_acks += 1;
            return;
        }
        match h.bth.opcode.layout().operation {
            Operation::Acknowledge => match h.aeth {
                Some(aeth) => self.on_ack(psn, aeth.syndrome),
                None => self.stats.bad_responses += 1,
            },
            Operation::RdmaReadResponse => self.on_read_response(h, payload),
            Operation::AtomicAcknowledge => self.on_atomic_ack(h),
            _ => self.stats.stale_acks += 1,
        }
    }

    fn on_ack(&mut self, psn: Psn, syndrome: Syndrome) {
        match syndrome {
            Syndrome::Ack { .. } => {
                let (progressed, blocked) = self.ack_through(psn);
                if blocked {
                    self.implied_nak();
                } else if !progressed {
                    self.stats.stale_acks += 1;
                }
            }
            Syndrome::Nak(NakCode::PsnSequenceError) => {
                self.ack_through(psn.sub(1));
                self.resend_all();
            }
            Syndrome::RnrNak { timer } => {
                self.stats.rnr_naks += 1;
                self.ack_through(psn.sub(1));
                if self.timers.rnr_retry != 7
                    && self.rnr_retries >= u32::from(self.timers.rnr_retry)
                {
                    log::warn!(
                        "QP {:#x}: receiver not ready after {} RNR retries; entering the error state",
                        self.cfg.qpn,
                        self.timers.rnr_retry
                    );
                    self.fail(Status::RnrRetryExceeded);
                    return;
                }
                self.rnr_retries += 1;
                // Nothing leaves until the RNR timer expires.
                self.tx.clear();
                self.ack_deadline = None;
                self.rnr_deadline = Some(self.now.saturating_add(rnr_timer_ns(timer)));
            }
            Syndrome::Nak(code) => {
                log::warn!(
                    "QP {:#x}: remote NAK {code:?}; entering the error state",
                    self.cfg.qpn
                );
                self.ack_through(psn.sub(1));
                self.fail(Status::RemoteNak(code));
            }
        }
    }

    /// The outstanding request a response with PSN `q` answers: the first
    /// whose PSNs reach `q`, if `q` is inside its range.
    fn answered(&self, q: Psn) -> Option<usize> {
        let idx = self
            .outstanding
            .iter()
            .position(|o| q.diff(o.last_psn()) <= 0)?;
        let o = self.outstanding.get(idx)?;
        (q.diff(o.psn) >= 0).then_some(idx)
    }

    fn on_read_response(&mut self, h: &TransportHeaders, payload: &[u8]) {
        let q = h.bth.psn;
        let pmtu = self.cfg.pmtu;
        let Some(idx) = self.answered(q) else {
            self.stats.stale_acks += 1;
            return;
        };
        let Some(o) = self.outstanding.get(idx) else {
            return;
        };
        let Wait::Read { len, data, .. } = &o.wait else {
            self.stats.stale_acks += 1;
            return;
        };
        // Earlier requests are implicitly acknowledged, unless one still
        // waits for its own response: that one was lost.
        if self.outstanding.iter().take(idx).any(|o| o.is_rd_atomic()) {
            self.stats.out_of_sequence += 1;
            self.implied_nak();
            return;
        }
        let got = data.len();
        let expected = o.psn.add(u32::try_from(got / pmtu).unwrap_or(0));
        let d = q.diff(expected);
        if d < 0 {
            self.stats.duplicates += 1;
            return;
        }
        if d > 0 {
            self.stats.out_of_sequence += 1;
            self.implied_nak();
            return;
        }
        let remaining = (*len as usize).saturating_sub(got);
        let last = remaining <= pmtu;
        let want = match (got == 0, last) {
            (true, true) => Opcode::RdmaReadResponseOnly,
            (true, false) => Opcode::RdmaReadResponseFirst,
            (false, false) => Opcode::RdmaReadResponseMiddle,
            (false, true) => Opcode::RdmaReadResponseLast,
        };
        // A READ re-issued for its missing part is answered as a new one
        // (first or only) from that PSN.
        let fresh = if last {
            Opcode::RdmaReadResponseOnly
        } else {
            Opcode::RdmaReadResponseFirst
        };
        let want_len = if last { remaining } else { pmtu };
        let ack_ok = h
            .aeth
            .is_none_or(|a| matches!(a.syndrome, Syndrome::Ack { .. }));
        if (h.bth.opcode != want && h.bth.opcode != fresh) || payload.len() != want_len || !ack_ok {
            self.stats.bad_responses += 1;
            return;
        }
        let first_psn = o.psn;
        self.ack_through(first_psn.sub(1));
        let Some(front) = self.outstanding.front_mut() else {
            return;
        };
        if let Wait::Read { data, .. } = &mut front.wait {
            data.extend_from_slice(payload);
        }
        if last {
            if let Some(o) = self.outstanding.pop_front() {
                if let (Some((wr_id, _)), Wait::Read { data, .. }) = (o.completes, o.wait) {
                    self.completions.push_back(Completion {
                        wr_id,
                        status: Status::Success,
                        kind: CompletionKind::Read { data },
                    });
                }
            }
        }
        self.progress();
    }

    fn on_atomic_ack(&mut self, h: &TransportHeaders) {
        let q = h.bth.psn;
        let (Some(idx), Some(ack), Some(aeth)) = (self.answered(q), h.atomic_ack_eth, h.aeth)
        else {
            self.stats.stale_acks += 1;
            return;
        };
        if !matches!(
            self.outstanding.get(idx).map(|o| &o.wait),
            Some(Wait::Atomic)
        ) {
            self.stats.stale_acks += 1;
            return;
        }
        if !matches!(aeth.syndrome, Syndrome::Ack { .. }) {
            self.stats.bad_responses += 1;
            return;
        }
        if self.outstanding.iter().take(idx).any(|o| o.is_rd_atomic()) {
            self.stats.out_of_sequence += 1;
            self.implied_nak();
            return;
        }
        self.ack_through(q.sub(1));
        if let Some(o) = self.outstanding.pop_front() {
            if let Some((wr_id, _)) = o.completes {
                self.completions.push_back(Completion {
                    wr_id,
                    status: Status::Success,
                    kind: CompletionKind::Atomic { orig: ack.orig },
                });
            }
        }
        self.progress();
    }

    // Responder.

    fn queue_ack(&mut self, psn: Psn) {
        if let Some(Resp::Ack(p)) = self.resp.back_mut() {
            *p = psn;
        } else {
            self.resp.push_back(Resp::Ack(psn));
        }
    }

    fn queue_nak(&mut self, psn: Psn, syndrome: Syndrome) {
        // A NAK acknowledges what precedes it.
        if let Some(Resp::Ack(_)) = self.resp.back() {
            self.resp.pop_back();
        }
        self.resp.push_back(Resp::Nak(psn, syndrome));
    }

    fn nak(&mut self, psn: Psn, code: NakCode) {
        log::warn!(
            "QP {:#x}: answering PSN {psn} with NAK {code:?}",
            self.cfg.qpn
        );
        if code != NakCode::PsnSequenceError {
            // Invalid requests and access errors end the connection.
            self.fail(Status::Flushed);
        }
        self.queue_nak(psn, Syndrome::Nak(code));
    }

    /// Receiver not ready: one RNR NAK, and later packets are dropped
    /// silently (no sequence NAKs) until the requester resends this one.
    fn rnr_nak(&mut self, psn: Psn) {
        self.queue_nak(
            psn,
            Syndrome::RnrNak {
                timer: self.timers.min_rnr_timer,
            },
        );
        self.nak_sent = true;
    }

    /// READ responses and atomic acknowledges queued and not yet sent, by
    /// request.
    fn unanswered_rd_atomic(&self) -> usize {
        self.resp
            .iter()
            .filter(|r| matches!(r, Resp::Frame { ends: true, .. }))
            .count()
    }

    fn remember(&mut self, r: Resource) {
        if self.max_dest_rd_atomic == 0 {
            return;
        }
        while self.resources.len() >= usize::from(self.max_dest_rd_atomic) {
            self.resources.pop_front();
        }
        self.resources.push_back(r);
    }

    fn respond(&mut self, h: &TransportHeaders, payload: &[u8], mem: &mut dyn RegionTable) {
        let bth = h.bth;
        let d = bth.psn.diff(self.expected_psn);
        if d < 0 {
            self.stats.duplicates += 1;
            self.duplicate(h, mem);
            return;
        }
        if d > 0 {
            self.stats.out_of_sequence += 1;
            if !self.nak_sent {
                self.nak_sent = true;
                self.queue_nak(self.expected_psn, Syndrome::Nak(NakCode::PsnSequenceError));
            }
            return;
        }
        let layout = bth.opcode.layout();
        let pmtu = self.cfg.pmtu;
        let full = matches!(layout.position, Position::First | Position::Middle);
        if (full && payload.len() != pmtu) || payload.len() > pmtu {
            return self.nak(bth.psn, NakCode::InvalidRequest);
        }
        // The opcode must continue the message in progress, or start one.
        let continues = matches!(layout.position, Position::Middle | Position::Last);
        let ok = match (&self.in_progress, layout.operation) {
            (InProgress::None, Operation::Send | Operation::RdmaWrite) => !continues,
            (InProgress::None, Operation::RdmaReadRequest | Operation::Atomic) => true,
            (InProgress::Send { .. }, Operation::Send) => continues,
            (InProgress::Write { .. }, Operation::RdmaWrite) => continues,
            _ => false,
        };
        if !ok || layout.ieth {
            return self.nak(bth.psn, NakCode::InvalidRequest);
        }
        if layout.imm && layout.operation == Operation::RdmaWrite && self.recv_queue.is_empty() {
            // RDMA WRITE with immediate consumes a receive: not ready.
            self.rnr_nak(bth.psn);
            return;
        }
        let mut span = 1;
        match layout.operation {
            Operation::Send => {
                if let InProgress::None = self.in_progress {
                    let Some((wr_id, cap)) = self.recv_queue.pop_front() else {
                        // No receive posted: receiver not ready.
                        self.rnr_nak(bth.psn);
                        return;
                    };
                    let mut buf = self.spare.pop().unwrap_or_default();
                    buf.clear();
                    self.in_progress = InProgress::Send {
                        wr_id,
                        buf,
                        cap,
                        len: 0,
                        placed: None,
                    };
                }
                let InProgress::Send {
                    wr_id,
                    buf,
                    cap,
                    len,
                    placed,
                } = &mut self.in_progress
                else {
                    return;
                };
                if len.saturating_add(payload.len()) > *cap {
                    let wr_id = *wr_id;
                    self.in_progress = InProgress::None;
                    self.completions.push_back(Completion {
                        wr_id,
                        status: Status::LocalLength,
                        kind: CompletionKind::Recv {
                            data: Vec::new(),
                            len: 0,
                            imm: None,
                        },
                    });
                    return self.nak(bth.psn, NakCode::InvalidRequest);
                }
                match placed {
                    None => {
                        let p = mem.place_recv(*wr_id, *len, payload);
                        *placed = Some(p);
                        if !p {
                            buf.extend_from_slice(payload);
                        }
                    }
                    // The table took the message's first packet: it takes
                    // them all (and reports its own failures).
                    Some(true) => {
                        mem.place_recv(*wr_id, *len, payload);
                    }
                    Some(false) => buf.extend_from_slice(payload),
                }
                *len += payload.len();
            }
            Operation::RdmaWrite => {
                if let Some(reth) = h.reth {
                    let len = reth.dma_len as usize;
                    // A zero-length WRITE names no memory: its key is not
                    // checked, as the specification says.
                    let need = |a: RemoteAccess| a.write;
                    if len > 0 && remote_slice(mem, reth.rkey, reth.va, len, need).is_none() {
                        return self.nak(bth.psn, NakCode::RemoteAccessError);
                    }
                    self.in_progress = InProgress::Write {
                        rkey: reth.rkey,
                        va: reth.va,
                        remaining: len,
                        total: len,
                    };
                }
                let InProgress::Write {
                    rkey,
                    va,
                    remaining,
                    ..
                } = &mut self.in_progress
                else {
                    return;
                };
                let last = layout.position.ends_message();
                if payload.len() > *remaining || (last && payload.len() != *remaining) {
                    return self.nak(bth.psn, NakCode::InvalidRequest);
                }
                let (rkey, at) = (*rkey, *va);
                *va = va.wrapping_add(payload.len() as u64);
                *remaining -= payload.len();
                // The region may have gone since the first packet: look
                // again, and write only inside it.
                if !payload.is_empty() {
                    match remote_slice(mem, rkey, at, payload.len(), |a| a.write) {
                        Some(dst) => {
                            dst.copy_from_slice(payload);
                            self.writes_placed += 1;
                        }
                        None => return self.nak(bth.psn, NakCode::RemoteAccessError),
                    }
                }
            }
            Operation::RdmaReadRequest => {
                let Some(reth) = h.reth else {
                    return self.nak(bth.psn, NakCode::InvalidRequest);
                };
                if let Err(code) = self.admit_rd_atomic() {
                    return self.nak(bth.psn, code);
                }
                // MSN counts the READ as completed with its responses.
                self.msn = (self.msn + 1) & 0x00ff_ffff;
                match self.serve_read(bth.psn, &reth, bth.psn, mem) {
                    Ok(n) => span = n,
                    Err(code) => return self.nak(bth.psn, code),
                }
                self.remember(Resource {
                    psn: bth.psn,
                    span,
                    atomic: None,
                });
            }
            Operation::Atomic => {
                let Some(ae) = h.atomic_eth else {
                    return self.nak(bth.psn, NakCode::InvalidRequest);
                };
                if let Err(code) = self.admit_rd_atomic() {
                    return self.nak(bth.psn, code);
                }
                if ae.va % 8 != 0 {
                    return self.nak(bth.psn, NakCode::InvalidRequest);
                }
                let Some(slot) = remote_slice(mem, ae.rkey, ae.va, 8, |a| a.atomic) else {
                    return self.nak(bth.psn, NakCode::RemoteAccessError);
                };
                let mut w = [0u8; 8];
                w.copy_from_slice(slot);
                let orig = u64::from_le_bytes(w);
                let new = if bth.opcode == Opcode::CompareSwap {
                    if orig == ae.compare {
                        ae.swap_add
                    } else {
                        orig
                    }
                } else {
                    orig.wrapping_add(ae.swap_add)
                };
                slot.copy_from_slice(&new.to_le_bytes());
                self.stats.atomics_executed += 1;
                self.msn = (self.msn + 1) & 0x00ff_ffff;
                self.queue_atomic_ack(bth.psn, orig);
                self.remember(Resource {
                    psn: bth.psn,
                    span: 1,
                    atomic: Some(orig),
                });
            }
            _ => return self.nak(bth.psn, NakCode::InvalidRequest),
        }
        // Accepted.
        self.expected_psn = bth.psn.add(span);
        self.nak_sent = false;
        let plain = matches!(layout.operation, Operation::Send | Operation::RdmaWrite);
        if plain && layout.position.ends_message() {
            self.msn = (self.msn + 1) & 0x00ff_ffff;
            let done = core::mem::replace(&mut self.in_progress, InProgress::None);
            match done {
                InProgress::Send {
                    wr_id, buf, len, ..
                } => {
                    self.completions.push_back(Completion {
                        wr_id,
                        status: Status::Success,
                        kind: CompletionKind::Recv {
                            data: buf,
                            len,
                            imm: h.imm.map(|i| i.0),
                        },
                    });
                }
                InProgress::Write { total, .. } => {
                    if let Some(imm) = h.imm {
                        // RDMA WRITE with immediate consumes a receive.
                        if let Some((wr_id, _)) = self.recv_queue.pop_front() {
                            self.completions.push_back(Completion {
                                wr_id,
                                status: Status::Success,
                                kind: CompletionKind::RecvRdmaWithImm {
                                    len: total,
                                    imm: imm.0,
                                },
                            });
                        }
                    }
                }
                InProgress::None => {}
            }
        }
        if plain && bth.ack_req {
            self.queue_ack(bth.psn);
        }
    }

    /// Whether the responder may take one more READ or atomic request.
    fn admit_rd_atomic(&self) -> Result<(), NakCode> {
        if self.unanswered_rd_atomic() >= usize::from(self.max_dest_rd_atomic) {
            log::warn!(
                "QP {:#x}: more than max_dest_rd_atomic ({}) READ/atomic requests outstanding",
                self.cfg.qpn,
                self.max_dest_rd_atomic
            );
            return Err(NakCode::InvalidRequest);
        }
        Ok(())
    }

    /// Queues the responses of a READ starting at `psn`, tagged with the
    /// PSN of the request it (re)executes; returns their count.
    fn serve_read(
        &mut self,
        psn: Psn,
        reth: &Reth,
        tag: Psn,
        mem: &mut dyn RegionTable,
    ) -> Result<u32, NakCode> {
        let len = reth.dma_len as usize;
        let pmtu = self.cfg.pmtu;
        let span = read_span(len, pmtu);
        if span > MAX_READ_PSNS {
            return Err(NakCode::InvalidRequest);
        }
        let src: &[u8] = if len == 0 {
            &[]
        } else {
            remote_slice(mem, reth.rkey, reth.va, len, |a| a.read)
                .ok_or(NakCode::RemoteAccessError)?
        };
        self.stats.reads_served += 1;
        for i in 0..span {
            let start = i as usize * pmtu;
            let chunk = src.get(start..(start + pmtu).min(len)).unwrap_or(&[]);
            let opcode = match (i == 0, i + 1 == span) {
                (true, true) => Opcode::RdmaReadResponseOnly,
                (true, false) => Opcode::RdmaReadResponseFirst,
                (false, false) => Opcode::RdmaReadResponseMiddle,
                (false, true) => Opcode::RdmaReadResponseLast,
            };
            let mut h = TransportHeaders::new(self.bth(opcode, psn.add(i)));
            if opcode.layout().aeth {
                h.aeth = Some(Aeth {
                    syndrome: Syndrome::Ack {
                        credits: CREDITS_INVALID,
                    },
                    msn: self.msn,
                });
            }
            let frame = self.frame(&h, chunk);
            self.resp.push_back(Resp::Frame {
                frame,
                tag,
                ends: i + 1 == span,
            });
        }
        Ok(span)
    }

    fn queue_atomic_ack(&mut self, psn: Psn, orig: u64) {
        let mut h = TransportHeaders::new(self.bth(Opcode::AtomicAcknowledge, psn));
        h.aeth = Some(Aeth {
            syndrome: Syndrome::Ack {
                credits: CREDITS_INVALID,
            },
            msn: self.msn,
        });
        h.atomic_ack_eth = Some(AtomicAckEth { orig });
        let frame = self.frame(&h, &[]);
        self.resp.push_back(Resp::Frame {
            frame,
            tag: psn,
            ends: true,
        });
    }

    /// A request behind the expected PSN: executed already.
    fn duplicate(&mut self, h: &TransportHeaders, mem: &mut dyn RegionTable) {
        let q = h.bth.psn;
        let found = self
            .resources
            .iter()
            .rev()
            .find(|r| q.in_window(r.psn, r.span))
            .copied();
        match h.bth.opcode.layout().operation {
            Operation::RdmaReadRequest => {
                let (Some(r), Some(reth)) = (found, h.reth) else {
                    // Forgotten, or never a READ: nothing to answer.
                    return;
                };
                // The READ again, from its own PSN, inside the original.
                let room = r.span - q.forward_from(r.psn);
                if r.atomic.is_some() || read_span(reth.dma_len as usize, self.cfg.pmtu) > room {
                    self.stats.bad_responses += 1;
                    return;
                }
                self.resp
                    .retain(|x| !matches!(x, Resp::Frame { tag, .. } if *tag == r.psn));
                if let Err(code) = self.serve_read(q, &reth, r.psn, mem) {
                    self.nak(q, code);
                }
            }
            Operation::Atomic => {
                let Some(Resource {
                    psn,
                    atomic: Some(orig),
                    ..
                }) = found.filter(|r| r.psn == q)
                else {
                    return;
                };
                self.stats.atomic_replays += 1;
                self.resp
                    .retain(|x| !matches!(x, Resp::Frame { tag, .. } if *tag == psn));
                self.queue_atomic_ack(psn, orig);
            }
            _ => self.queue_ack(self.expected_psn.sub(1)),
        }
    }
}

/// The bytes `[va, va + len)` of the region `rkey` names, if the region
/// exists, `allowed` accepts its access, and the range lies inside it
/// (checked arithmetic).
fn remote_slice(
    mem: &mut dyn RegionTable,
    rkey: u32,
    va: u64,
    len: usize,
    allowed: impl Fn(RemoteAccess) -> bool,
) -> Option<&mut [u8]> {
    let r = mem.lookup(rkey)?;
    if !allowed(r.access) {
        return None;
    }
    let offset = usize::try_from(va.checked_sub(r.va)?).ok()?;
    let end = offset.checked_add(len)?;
    r.data.get_mut(offset..end)
}
