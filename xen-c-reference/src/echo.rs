//! The echo test protocol and its C reference peers.
//!
//! `DEFINE_RING_TYPES(echo, struct echo_request, struct echo_response)` in
//! C; [`EchoRequest`] and [`EchoResponse`] mirror the two structures
//! exactly. The request (64 bytes) is larger than the response (24 bytes),
//! so a ring entry is the size of the request.
//!
//! A front sends requests with ids 0, 1, 2, ... built by [`echo_request`];
//! the back answers each in place with [`echo_response`]; the front checks
//! each answer with [`echo_response_ok`]. The C peers ([`echo_back`],
//! [`echo_front`]) do the same with Xen's `io/ring.h` macros, so a Rust ring
//! can be run against either of them.

use core::ffi::c_void;
use std::fmt;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::Instant;

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::ffi;

/// Payload bytes in a request.
pub const ECHO_PAYLOAD_LEN: usize = 48;
/// [`EchoResponse::status`]: the request was intact.
pub const ECHO_STATUS_OK: i32 = 0;
/// [`EchoResponse::status`]: the request's payload was not the expected pattern.
pub const ECHO_STATUS_BAD_PAYLOAD: i32 = -1;

/// `struct echo_request`.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoRequest {
    /// Sequence number of the request.
    pub id: u64,
    /// [`echo_request_value`] of `id`.
    pub value: u64,
    /// [`echo_payload_byte`]`(id, i)` at index `i`.
    pub payload: [u8; ECHO_PAYLOAD_LEN],
}

/// `struct echo_response`.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct EchoResponse {
    /// The request's id.
    pub id: u64,
    /// [`echo_reply_value`] of the request's value.
    pub value: u64,
    /// [`ECHO_STATUS_OK`] or [`ECHO_STATUS_BAD_PAYLOAD`].
    pub status: i32,
    /// Padding, always 0.
    pub _pad: u32,
}

/// The value a front sends in request `id`.
pub const fn echo_request_value(id: u64) -> u64 {
    (id ^ 0xD1B5_4A32_D192_ED03).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The value a back answers for a request carrying `value`.
pub const fn echo_reply_value(value: u64) -> u64 {
    value.rotate_left(13) ^ 0x5A5A_5A5A_5A5A_5A5A
}

/// Byte `i` of the payload of request `id`.
pub const fn echo_payload_byte(id: u64, i: usize) -> u8 {
    id.wrapping_mul(7)
        .wrapping_add((i as u64).wrapping_mul(13))
        .wrapping_add(1) as u8
}

/// Request `id` as a front sends it.
pub fn echo_request(id: u64) -> EchoRequest {
    let mut req = EchoRequest {
        id,
        value: echo_request_value(id),
        payload: [0; ECHO_PAYLOAD_LEN],
    };
    for (i, b) in req.payload.iter_mut().enumerate() {
        *b = echo_payload_byte(id, i);
    }
    req
}

/// Whether `req` is an intact request (its payload matches its id).
pub fn echo_payload_ok(req: &EchoRequest) -> bool {
    req.payload
        .iter()
        .enumerate()
        .all(|(i, &b)| b == echo_payload_byte(req.id, i))
}

/// The back's answer to `req`.
pub fn echo_response(req: &EchoRequest) -> EchoResponse {
    EchoResponse {
        id: req.id,
        value: echo_reply_value(req.value),
        status: if echo_payload_ok(req) {
            ECHO_STATUS_OK
        } else {
            ECHO_STATUS_BAD_PAYLOAD
        },
        _pad: 0,
    }
}

/// Whether `rsp` is the correct answer to request `id`.
pub fn echo_response_ok(id: u64, rsp: &EchoResponse) -> bool {
    rsp.id == id
        && rsp.value == echo_reply_value(echo_request_value(id))
        && rsp.status == ECHO_STATUS_OK
}

/// The C peers' own message functions, to check the Rust mirror against.
pub mod c {
    use super::*;

    /// `c_echo_request_value`.
    pub fn request_value(id: u64) -> u64 {
        // SAFETY: a pure function of its argument.
        unsafe { ffi::c_echo_request_value(id) }
    }

    /// `c_echo_reply_value`.
    pub fn reply_value(value: u64) -> u64 {
        // SAFETY: a pure function of its argument.
        unsafe { ffi::c_echo_reply_value(value) }
    }

    /// `c_echo_payload_byte`.
    pub fn payload_byte(id: u64, i: u32) -> u8 {
        // SAFETY: a pure function of its arguments.
        unsafe { ffi::c_echo_payload_byte(id, i) }
    }

    /// `c_echo_make_request`: request `id` as the C front builds it.
    pub fn request(id: u64) -> EchoRequest {
        let mut req = EchoRequest::new_zeroed();
        // SAFETY: `req` is a valid, writable `struct echo_request`.
        unsafe { ffi::c_echo_make_request(id, &mut req) };
        req
    }

    /// `c_echo_make_response`: the C back's answer to `req`.
    pub fn response(req: &EchoRequest) -> EchoResponse {
        let mut rsp = EchoResponse::default();
        // SAFETY: `req` is readable and `rsp` writable, both with C's layout.
        unsafe { ffi::c_echo_make_response(req, &mut rsp) };
        rsp
    }

    /// `c_echo_response_ok`.
    pub fn response_ok(id: u64, rsp: &EchoResponse) -> bool {
        // SAFETY: `rsp` is a readable `struct echo_response`.
        unsafe { ffi::c_echo_response_ok(id, rsp) != 0 }
    }
}

/// `EchoParams::flags`: sleep on the event word when idle instead of spinning.
pub const ECHO_USE_EVENTS: u32 = 1;

/// What a C echo peer does (`struct c_echo_params`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoParams {
    /// Messages to exchange.
    pub count: u64,
    /// Budget for the whole run in nanoseconds; 0 means 60 s.
    pub timeout_ns: u64,
    /// Ring size in 4 KiB pages (1 to 16).
    pub pages: u32,
    /// The value of every ring index at start.
    pub start_idx: u32,
    /// Front: most requests outstanding; 0 means the ring size.
    pub max_in_flight: u32,
    /// Messages per push; 0 means one push per burst.
    pub batch: u32,
    /// Back: busy time per request in nanoseconds (a slow consumer).
    pub work_ns: u32,
    /// [`ECHO_USE_EVENTS`] or 0.
    pub flags: u32,
}

impl EchoParams {
    /// `count` messages on a `pages`-page ring starting at index
    /// `start_idx`, spin-polling, full ring in flight, one push per burst.
    pub fn new(pages: u32, start_idx: u32, count: u64) -> Self {
        EchoParams {
            count,
            timeout_ns: 0,
            pages,
            start_idx,
            max_in_flight: 0,
            batch: 0,
            work_ns: 0,
            flags: 0,
        }
    }
}

/// Counters of a C echo peer's run (`struct c_echo_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Requests answered (back) or responses checked (front).
    pub messages: u64,
    /// Messages that failed a check (wrong id, value, payload or status).
    pub errors: u64,
    /// Pushes that published at least one message.
    pub pushes: u64,
    /// Pushes whose `RING_PUSH_*_AND_CHECK_NOTIFY` said to notify the peer.
    pub notifies: u64,
    /// `RING_FINAL_CHECK_FOR_*` calls (each may arm the peer's notification).
    pub final_checks: u64,
    /// Final checks that found no work (the peer then waited or spun).
    pub sleeps: u64,
}

/// Two latched event words standing in for an event channel pair
/// (`struct c_echo_events`): the notifier stores 1, the sleeper swaps it
/// back to 0.
#[repr(C)]
#[derive(Debug, Default)]
pub struct EchoEvents {
    /// Pending notification for the front.
    pub to_front: AtomicU32,
    /// Pending notification for the back.
    pub to_back: AtomicU32,
}

impl EchoEvents {
    /// Sends an event to the front.
    pub fn notify_front(&self) {
        self.to_front.store(1, Ordering::SeqCst);
    }

    /// Sends an event to the back.
    pub fn notify_back(&self) {
        self.to_back.store(1, Ordering::SeqCst);
    }

    /// Waits for (and consumes) an event to the front.
    pub fn wait_front(&self, deadline: Instant, stop: &AtomicI32) -> Result<(), EchoError> {
        wait(&self.to_front, deadline, stop)
    }

    /// Waits for (and consumes) an event to the back.
    pub fn wait_back(&self, deadline: Instant, stop: &AtomicI32) -> Result<(), EchoError> {
        wait(&self.to_back, deadline, stop)
    }
}

fn wait(word: &AtomicU32, deadline: Instant, stop: &AtomicI32) -> Result<(), EchoError> {
    let mut spins = 0u32;
    // SeqCst swap: pairs with the notifier's SeqCst store; ring reads after
    // it see what was published before the notification.
    while word.swap(0, Ordering::SeqCst) == 0 {
        if stop.load(Ordering::Relaxed) != 0 {
            return Err(EchoError::Stopped);
        }
        if Instant::now() > deadline {
            return Err(EchoError::Timeout);
        }
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    Ok(())
}

/// Why a C peer gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoError {
    /// Its time budget ran out.
    Timeout,
    /// Its stop flag was set.
    Stopped,
    /// The other side published an impossible producer index.
    PeerOverflow,
    /// Bad parameters (pages not in 1..=16, or events requested without words).
    BadParams,
    /// An unknown code.
    Other(i64),
}

impl EchoError {
    fn from_code(code: i64) -> Self {
        match code {
            -1 => EchoError::Timeout,
            -2 => EchoError::Stopped,
            -3 => EchoError::PeerOverflow,
            -4 => EchoError::BadParams,
            c => EchoError::Other(c),
        }
    }
}

impl fmt::Display for EchoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EchoError::Timeout => write!(f, "timed out"),
            EchoError::Stopped => write!(f, "stopped"),
            EchoError::PeerOverflow => write!(f, "peer published an impossible producer index"),
            EchoError::BadParams => write!(f, "bad parameters"),
            EchoError::Other(c) => write!(f, "unknown failure code {c}"),
        }
    }
}

impl std::error::Error for EchoError {}

/// A failed C peer run, with the counters up to the failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoFailure {
    /// Why it stopped.
    pub error: EchoError,
    /// Counters so far.
    pub stats: EchoStats,
}

impl fmt::Display for EchoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} after {:?}", self.error, self.stats)
    }
}

impl std::error::Error for EchoFailure {}

fn outcome(code: i64, stats: EchoStats) -> Result<EchoStats, EchoFailure> {
    if code >= 0 {
        Ok(stats)
    } else {
        Err(EchoFailure {
            error: EchoError::from_code(code),
            stats,
        })
    }
}

/// Writes an empty echo ring header with every index at `start`:
/// `SHARED_RING_INIT`, then producers at `start` and event indices at
/// `start + 1`.
///
/// # Safety
/// `sring` must be valid for writes of 64 bytes and aligned to 8, and no
/// other thread may access those bytes during the call.
pub unsafe fn echo_sring_init(sring: *mut u8, start: u32) {
    // SAFETY: the caller guarantees the header is writable and not shared
    // during the call.
    unsafe { ffi::c_echo_sring_init(sring.cast::<c_void>(), start) }
}

/// Runs the C echo back end: serves `params.count` requests on the ring at
/// `sring`, attached at `params.start_idx`, answering each in place and
/// checking that ids arrive in order 0, 1, 2, ... with intact payloads.
/// `stats.errors` counts bad requests. With [`ECHO_USE_EVENTS`] it sleeps on
/// `events.to_back` when idle and notifies `events.to_front` when
/// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY` says so. Returns early if `stop`
/// becomes non-zero or the time budget runs out.
///
/// # Safety
/// `sring` must be page-aligned and valid for reads and writes of
/// `params.pages * 4096` bytes for the whole call, and hold an echo ring
/// initialised at `params.start_idx` (or be zero-filled, with start 0).
/// During the call only one front end may use the memory, through atomic or
/// volatile accesses, and nothing may hold a Rust reference to it.
pub unsafe fn echo_back(
    sring: *mut u8,
    params: &EchoParams,
    events: &EchoEvents,
    stop: &AtomicI32,
) -> Result<EchoStats, EchoFailure> {
    let mut stats = EchoStats::default();
    // SAFETY: the caller guarantees the ring memory; `params`, `events`,
    // `stop` and `stats` are valid for the call, and the C code touches the
    // event words and the stop flag only with atomic or volatile accesses
    // (they sit in `AtomicU32`/`AtomicI32`, so writes through the pointer
    // are allowed).
    let code = unsafe {
        ffi::c_echo_back(
            sring.cast::<c_void>(),
            params,
            core::ptr::from_ref(events).cast_mut(),
            stop.as_ptr(),
            &mut stats,
        )
    };
    outcome(code, stats)
}

/// Runs the C echo front end: initialises the ring at `sring` at
/// `params.start_idx` (`c_echo_sring_init`, then `FRONT_RING_ATTACH`),
/// sends requests 0 .. `params.count` with at most `params.max_in_flight`
/// outstanding, and checks every response (`stats.errors` counts bad ones).
/// With [`ECHO_USE_EVENTS`] it sleeps on `events.to_front` when idle and
/// notifies `events.to_back` when `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY` says
/// so.
///
/// # Safety
/// As [`echo_back`]; in addition, a back end may already be attached only
/// if the memory was zero-filled (start 0) or initialised with
/// [`echo_sring_init`] at the same start index.
pub unsafe fn echo_front(
    sring: *mut u8,
    params: &EchoParams,
    events: &EchoEvents,
    stop: &AtomicI32,
) -> Result<EchoStats, EchoFailure> {
    let mut stats = EchoStats::default();
    // SAFETY: as in `echo_back`.
    let code = unsafe {
        ffi::c_echo_front(
            sring.cast::<c_void>(),
            params,
            core::ptr::from_ref(events).cast_mut(),
            stop.as_ptr(),
            &mut stats,
        )
    };
    outcome(code, stats)
}

/// The C front of a latency ping-pong (`c_ring_pingpong_front`): one request
/// in flight, spin-polling, on a `pages`-page echo ring starting at index 0
/// (which it initialises). Runs `latencies_ns.len()` round trips and stores
/// each one's time in nanoseconds (`CLOCK_MONOTONIC`). Returns the number of
/// wrong responses. Gives up with [`EchoError::Timeout`] if the back makes
/// no progress for 10 s.
///
/// # Safety
/// `sring` must be page-aligned and valid for reads and writes of
/// `pages * 4096` bytes for the whole call; the only other user is one
/// [`pingpong_back`], which may start first only if the memory was
/// zero-filled or initialised with [`echo_sring_init`] at 0.
pub unsafe fn pingpong_front(
    sring: *mut u8,
    pages: u32,
    latencies_ns: &mut [u64],
) -> Result<u64, EchoError> {
    // SAFETY: the caller guarantees the ring memory; the latency buffer is
    // valid for `len` writes.
    let code = unsafe {
        ffi::c_ring_pingpong_front(
            sring.cast::<c_void>(),
            pages,
            latencies_ns.len() as u64,
            latencies_ns.as_mut_ptr(),
        )
    };
    if code >= 0 {
        Ok(code as u64)
    } else {
        Err(EchoError::from_code(code))
    }
}

/// The C back of a latency ping-pong (`c_ring_pingpong_back`): answers
/// `iters` requests, spin-polling, on a ring starting at index 0.
///
/// # Safety
/// As [`pingpong_front`]; the memory must be zero-filled or initialised
/// with [`echo_sring_init`] at 0 before this starts.
pub unsafe fn pingpong_back(sring: *mut u8, pages: u32, iters: u64) -> Result<(), EchoError> {
    // SAFETY: the caller guarantees the ring memory.
    let code = unsafe { ffi::c_ring_pingpong_back(sring.cast::<c_void>(), pages, iters) };
    if code >= 0 {
        Ok(())
    } else {
        Err(EchoError::from_code(code))
    }
}
