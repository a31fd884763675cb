//! The xenstore ring page (`struct xenstore_domain_interface`) as a
//! [`Transport`].
//!
//! A guest reaches xenstore through one shared page holding two 1 KiB byte
//! rings: `req` (guest to server) and `rsp` (server to guest), each with a
//! free-running producer and consumer index. [`StoreRing`] implements either
//! end ([`Side::Guest`] or [`Side::Server`]) over a raw page pointer and a
//! [`RingSignal`] (the event channel, or a test callback).
//!
//! Hostile-peer rules kept here:
//! - our own indices live in private copies; the page copy is only written,
//!   never trusted back (the peer can scribble on it);
//! - each peer index is acquire-loaded once per operation into a local and
//!   checked: `prod - cons > 1024` is a [`TransportError::PeerFault`] that
//!   breaks the transport for good, never a loop;
//! - bytes are copied out of the ring with volatile reads into the caller's
//!   buffer before the consumer index is released back to the peer, and
//!   are never read again; every index into the byte arrays is masked.

use alloc::format;
use core::mem::{offset_of, size_of};
use core::time::Duration;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use grant_tables::{EventChannels, Port};

use crate::transport::{Budget, Clock, Transport, TransportError, Wait};

/// Size of each byte ring (`XENSTORE_RING_SIZE`).
pub const XENSTORE_RING_SIZE: usize = 1024;
/// `XENSTORE_SERVER_FEATURE_RECONNECTION`: the server can reset the ring.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`: the page has the `error` field.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `connection` value in steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection` value while a reconnect is in progress.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `error`: no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// `MASK_XENSTORE_IDX`.
pub const fn mask_xenstore_idx(idx: u32) -> usize {
    (idx as usize) & (XENSTORE_RING_SIZE - 1)
}

/// The layout of the shared page (`struct xenstore_domain_interface`).
///
/// Documentation of the ABI and the source of the field offsets; the page
/// itself is never accessed through this type (the peer writes it
/// concurrently), only through volatile and atomic accesses at these
/// offsets.
#[repr(C)]
#[derive(Debug)]
pub struct XenstoreDomainInterface {
    /// Requests to the server.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and watch events to the guest.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Server's consumer index into `req`.
    pub req_cons: u32,
    /// Guest's producer index into `req`.
    pub req_prod: u32,
    /// Guest's consumer index into `rsp`.
    pub rsp_cons: u32,
    /// Server's producer index into `rsp`.
    pub rsp_prod: u32,
    /// `XENSTORE_SERVER_FEATURE_*` bits.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`.
    pub error: u32,
}

/// Bytes of the page the interface occupies.
pub const INTERFACE_SIZE: usize = size_of::<XenstoreDomainInterface>();

const REQ: usize = offset_of!(XenstoreDomainInterface, req);
const RSP: usize = offset_of!(XenstoreDomainInterface, rsp);
const REQ_CONS: usize = offset_of!(XenstoreDomainInterface, req_cons);
const REQ_PROD: usize = offset_of!(XenstoreDomainInterface, req_prod);
const RSP_CONS: usize = offset_of!(XenstoreDomainInterface, rsp_cons);
const RSP_PROD: usize = offset_of!(XenstoreDomainInterface, rsp_prod);
const SERVER_FEATURES: usize = offset_of!(XenstoreDomainInterface, server_features);
const CONNECTION: usize = offset_of!(XenstoreDomainInterface, connection);
const ERROR: usize = offset_of!(XenstoreDomainInterface, error);

const _: () =
    assert!(REQ == 0 && RSP == 1024 && REQ_CONS == 2048 && RSP_PROD == 2060 && ERROR == 2072);
const _: () = assert!(INTERFACE_SIZE == 2076);

/// Which end of the page this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The guest: produces into `req`, consumes `rsp`.
    Guest,
    /// The xenstore server: produces into `rsp`, consumes `req`.
    Server,
}

struct Layout {
    out_area: usize,
    out_prod: usize,
    out_cons: usize,
    in_area: usize,
    in_prod: usize,
    in_cons: usize,
}

impl Side {
    fn layout(self) -> Layout {
        match self {
            Side::Guest => Layout {
                out_area: REQ,
                out_prod: REQ_PROD,
                out_cons: REQ_CONS,
                in_area: RSP,
                in_prod: RSP_PROD,
                in_cons: RSP_CONS,
            },
            Side::Server => Layout {
                out_area: RSP,
                out_prod: RSP_PROD,
                out_cons: RSP_CONS,
                in_area: REQ,
                in_prod: REQ_PROD,
                in_cons: REQ_CONS,
            },
        }
    }
}

/// How a ring end tells its peer about new bytes and waits for the peer.
pub trait RingSignal {
    /// Tells the peer that indices moved.
    fn notify(&mut self) -> Result<(), TransportError>;
    /// Waits for the peer to signal. Returns `false` when the wait ran out
    /// (or the signal cannot block at all), `true` when signalled.
    fn wait(&mut self, wait: Wait) -> Result<bool, TransportError>;
}

/// A signal that can only notify, through a callback; it never blocks, so
/// every wait reports "ran out" at once. Suits tests and fuzzing, where the
/// callback runs the peer synchronously.
pub struct NotifyFn<F: FnMut()>(pub F);

impl<F: FnMut()> RingSignal for NotifyFn<F> {
    fn notify(&mut self) -> Result<(), TransportError> {
        (self.0)();
        Ok(())
    }
    fn wait(&mut self, _wait: Wait) -> Result<bool, TransportError> {
        Ok(false)
    }
}

/// A signal over an event channel of the platform.
pub struct EvtchnSignal<'a, E: EventChannels + ?Sized> {
    evtchn: &'a E,
    port: Port,
}

impl<'a, E: EventChannels + ?Sized> EvtchnSignal<'a, E> {
    /// Signals through `port` of `evtchn`.
    pub fn new(evtchn: &'a E, port: Port) -> Self {
        EvtchnSignal { evtchn, port }
    }
}

impl<E: EventChannels + ?Sized> RingSignal for EvtchnSignal<'_, E> {
    fn notify(&mut self) -> Result<(), TransportError> {
        self.evtchn
            .notify(self.port)
            .map_err(TransportError::Platform)
    }
    fn wait(&mut self, wait: Wait) -> Result<bool, TransportError> {
        let timeout_ns = match wait {
            Wait::NoWait => {
                return self
                    .evtchn
                    .poll(self.port)
                    .map_err(TransportError::Platform)
            }
            Wait::For(d) => Some(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            Wait::Forever => None,
        };
        self.evtchn
            .block(self.port, timeout_ns)
            .map_err(TransportError::Platform)
    }
}

/// A signal over an event channel, holding any pointer-like handle to the
/// platform (`Arc`, `Box`, `&`), for rings that move to another thread.
pub struct OwnedEvtchnSignal<P> {
    evtchn: P,
    port: Port,
}

impl<P> OwnedEvtchnSignal<P>
where
    P: core::ops::Deref,
    P::Target: EventChannels,
{
    /// Signals through `port` of the event channels behind `evtchn`.
    pub fn new(evtchn: P, port: Port) -> Self {
        OwnedEvtchnSignal { evtchn, port }
    }
}

impl<P> RingSignal for OwnedEvtchnSignal<P>
where
    P: core::ops::Deref,
    P::Target: EventChannels,
{
    fn notify(&mut self) -> Result<(), TransportError> {
        EvtchnSignal::new(&*self.evtchn, self.port).notify()
    }
    fn wait(&mut self, wait: Wait) -> Result<bool, TransportError> {
        EvtchnSignal::new(&*self.evtchn, self.port).wait(wait)
    }
}

/// One end of a xenstore ring page.
pub struct StoreRing<S: RingSignal> {
    page: NonNull<u8>,
    side: Side,
    signal: S,
    /// Private copy of our producer index (authoritative).
    out_prod: u32,
    /// Private copy of our consumer index (authoritative).
    in_cons: u32,
    broken: Option<TransportError>,
    /// Monotonic clock for timed waits (see [`StoreRing::set_clock`]).
    clock: Option<Clock>,
}

/// Without a clock, how many waits on the signal one timed `send` or `recv`
/// makes before it gives up (returns 0): each wake-up that brings no bytes
/// restarts the signal's wait, so a peer signalling without writing could
/// otherwise hold the call forever.
pub const MAX_EMPTY_WAKES_WITHOUT_CLOCK: u32 = 64;

// SAFETY: the page is plain shared memory; the contract of `StoreRing::new`
// makes the handle its only user in this domain, so moving it to another
// thread is fine when the signal can move too.
unsafe impl<S: RingSignal + Send> Send for StoreRing<S> {}

impl<S: RingSignal> StoreRing<S> {
    /// Attaches to a ring page as `side`.
    ///
    /// Our own indices are taken from the page once. A guest discards any
    /// stale replies left from before (as Linux does at boot) by moving its
    /// consumer index to the server's producer index.
    ///
    /// # Safety
    /// `page` must be 4-byte aligned and valid for reads and writes of
    /// [`INTERFACE_SIZE`] bytes for as long as the returned value lives;
    /// nothing in this domain may access those bytes except through this
    /// value, and never through Rust references (the peer writes them
    /// concurrently).
    pub unsafe fn new(page: NonNull<u8>, side: Side, signal: S) -> Self {
        let mut ring = StoreRing {
            page,
            side,
            signal,
            out_prod: 0,
            in_cons: 0,
            broken: None,
            clock: None,
        };
        let l = side.layout();
        ring.out_prod = ring.load(l.out_prod, Ordering::Relaxed);
        ring.in_cons = ring.load(l.in_cons, Ordering::Relaxed);
        if side == Side::Guest {
            let prod = ring.load(l.in_prod, Ordering::Acquire);
            if prod != ring.in_cons {
                log::warn!(
                    "xenstore ring: discarding stale replies (rsp_prod {prod}, rsp_cons {})",
                    ring.in_cons
                );
                ring.in_cons = prod;
                ring.store(l.in_cons, prod, Ordering::Release);
            }
        }
        ring
    }

    /// Gives the ring a monotonic clock: a timed `send` or `recv` then ends
    /// at its deadline however often the peer signals without moving bytes.
    /// Without one, such a call gives up after
    /// [`MAX_EMPTY_WAKES_WITHOUT_CLOCK`] waits.
    pub fn set_clock(&mut self, clock: impl Fn() -> Duration + Send + Sync + 'static) {
        self.clock = Some(alloc::boxed::Box::new(clock));
    }

    /// The budget of a `send` or `recv` that may wait as `wait` allows.
    fn budget(&self, wait: Wait) -> Budget {
        Budget::new(wait, self.now(), MAX_EMPTY_WAKES_WITHOUT_CLOCK)
    }

    fn now(&self) -> Option<Duration> {
        self.clock.as_ref().map(|c| c())
    }

    /// Initialises a fresh page for the server end: zero indices, the
    /// given feature bits, connected, no error. Call before the guest
    /// attaches.
    ///
    /// # Safety
    /// As for [`StoreRing::new`].
    pub unsafe fn init_server(page: NonNull<u8>, features: u32, signal: S) -> Self {
        // SAFETY: forwarded contract.
        let ring = unsafe { StoreRing::new(page, Side::Server, signal) };
        let mut ring = ring;
        for off in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD, CONNECTION, ERROR] {
            ring.store(off, 0, Ordering::Relaxed);
        }
        ring.store(SERVER_FEATURES, features, Ordering::Release);
        ring.out_prod = 0;
        ring.in_cons = 0;
        ring
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Why the transport stopped, if the peer broke the protocol.
    pub fn broken(&self) -> Option<&TransportError> {
        self.broken.as_ref()
    }

    /// The signal, e.g. to run a test peer.
    pub fn signal_mut(&mut self) -> &mut S {
        &mut self.signal
    }

    /// The server's feature bits, as read now.
    pub fn server_features(&self) -> u32 {
        self.load(SERVER_FEATURES, Ordering::Acquire)
    }

    /// The `error` field, as read now.
    pub fn error_field(&self) -> u32 {
        self.load(ERROR, Ordering::Acquire)
    }

    fn atomic(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= INTERFACE_SIZE);
        // SAFETY: `off` is one of the u32 field offsets of the interface
        // (4-byte aligned, in bounds, checked at compile time through
        // `offset_of!`); the page is 4-byte aligned and valid for
        // `INTERFACE_SIZE` bytes (contract of `new`). Only atomic accesses
        // are made to these words, by us and by the peer.
        unsafe { AtomicU32::from_ptr(self.page.as_ptr().add(off).cast::<u32>()) }
    }

    fn load(&self, off: usize, order: Ordering) -> u32 {
        self.atomic(off).load(order)
    }

    fn store(&mut self, off: usize, v: u32, order: Ordering) {
        self.atomic(off).store(v, order)
    }

    fn fail(&mut self, what: &'static str, detail: alloc::string::String) -> TransportError {
        let err = TransportError::PeerFault { what, detail };
        log::error!("xenstore ring ({:?} end): {err}", self.side);
        self.broken = Some(err.clone());
        err
    }

    fn check_usable(&self) -> Result<(), TransportError> {
        if let Some(err) = &self.broken {
            return Err(err.clone());
        }
        if self.side == Side::Guest {
            // A peer-written word, read once.
            let features = self.load(SERVER_FEATURES, Ordering::Acquire);
            if features & XENSTORE_SERVER_FEATURE_RECONNECTION != 0
                && self.load(CONNECTION, Ordering::Acquire) == XENSTORE_RECONNECT
            {
                return Err(TransportError::Reconnecting);
            }
        }
        Ok(())
    }

    /// Copies out as many available bytes as fit in `buf`, without waiting.
    fn try_recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let l = self.side.layout();
        // Acquire: the peer's bytes up to `prod` are visible after this load.
        let prod = self.load(l.in_prod, Ordering::Acquire);
        let avail = prod.wrapping_sub(self.in_cons);
        if avail as usize > XENSTORE_RING_SIZE {
            return Err(self.fail(
                "producer index more than a ring ahead of our consumer index",
                format!("prod {prod}, cons {}", self.in_cons),
            ));
        }
        let n = (avail as usize).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        for (i, out) in buf.iter_mut().take(n).enumerate() {
            let idx = mask_xenstore_idx(self.in_cons.wrapping_add(i as u32));
            // SAFETY: `idx < XENSTORE_RING_SIZE`, so `in_area + idx` is inside
            // the page (contract of `new`); a volatile byte read of shared
            // memory the peer may write concurrently.
            *out = unsafe { self.page.as_ptr().add(l.in_area + idx).read_volatile() };
        }
        self.in_cons = self.in_cons.wrapping_add(n as u32);
        // Release: our reads of the slots complete before the peer sees
        // them freed.
        self.store(l.in_cons, self.in_cons, Ordering::Release);
        Ok(n)
    }

    /// Copies in as many bytes as there is room for, without waiting.
    fn try_send(&mut self, data: &[u8]) -> Result<usize, TransportError> {
        let l = self.side.layout();
        // Acquire: the peer finished reading the slots up to `cons`.
        let cons = self.load(l.out_cons, Ordering::Acquire);
        let used = self.out_prod.wrapping_sub(cons);
        if used as usize > XENSTORE_RING_SIZE {
            return Err(self.fail(
                "consumer index behind our producer index by more than a ring",
                format!("prod {}, cons {cons}", self.out_prod),
            ));
        }
        let n = (XENSTORE_RING_SIZE - used as usize).min(data.len());
        if n == 0 {
            return Ok(0);
        }
        for (i, &b) in data.iter().take(n).enumerate() {
            let idx = mask_xenstore_idx(self.out_prod.wrapping_add(i as u32));
            // SAFETY: `idx < XENSTORE_RING_SIZE`, inside the page (contract
            // of `new`); a volatile byte write to a slot the peer has
            // released.
            unsafe { self.page.as_ptr().add(l.out_area + idx).write_volatile(b) };
        }
        self.out_prod = self.out_prod.wrapping_add(n as u32);
        // Release: the bytes are visible before the new producer index.
        self.store(l.out_prod, self.out_prod, Ordering::Release);
        Ok(n)
    }
}

impl<S: RingSignal> Transport for StoreRing<S> {
    fn send(&mut self, data: &[u8], wait: Wait) -> Result<usize, TransportError> {
        let mut budget = self.budget(wait);
        loop {
            self.check_usable()?;
            let n = self.try_send(data)?;
            if n > 0 || data.is_empty() {
                if n > 0 {
                    self.signal.notify()?;
                }
                return Ok(n);
            }
            if wait == Wait::NoWait {
                return Ok(0);
            }
            match budget.next(self.now()) {
                Some(w) if self.signal.wait(w)? => {}
                _ => return Ok(0),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8], wait: Wait) -> Result<usize, TransportError> {
        let mut budget = self.budget(wait);
        loop {
            self.check_usable()?;
            let n = self.try_recv(buf)?;
            if n > 0 || buf.is_empty() {
                if n > 0 {
                    // The peer may be waiting for room.
                    self.signal.notify()?;
                }
                return Ok(n);
            }
            if wait == Wait::NoWait {
                return Ok(0);
            }
            match budget.next(self.now()) {
                Some(w) if self.signal.wait(w)? => {}
                _ => return Ok(0),
            }
        }
    }
}

/// A zeroed, page-aligned 4 KiB allocation usable as a ring page in tests,
/// fuzzing and the hosted daemon. It is only ever accessed through the raw
/// pointer it hands out.
pub struct RingPage {
    ptr: NonNull<u8>,
}

const PAGE_LAYOUT: core::alloc::Layout = match core::alloc::Layout::from_size_align(4096, 4096) {
    Ok(l) => l,
    Err(_) => panic!("page layout"),
};

impl RingPage {
    /// A zeroed page; `None` when out of memory.
    pub fn new() -> Option<RingPage> {
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc::alloc_zeroed(PAGE_LAYOUT) };
        NonNull::new(raw).map(|ptr| RingPage { ptr })
    }

    /// The first byte of the page: 4096 bytes, page-aligned, valid until
    /// the `RingPage` is dropped.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Copies `bytes` into the page from `offset` (clipped to the page).
    pub fn fill(&self, offset: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let at = offset.saturating_add(i);
            if at >= 4096 {
                break;
            }
            // SAFETY: `at < 4096`, inside the allocation; raw volatile write,
            // no reference to the page is ever formed.
            unsafe { self.ptr.as_ptr().add(at).write_volatile(b) };
        }
    }

    /// Writes a native-endian `u32` field of the interface at `offset`
    /// (must be one of the index/feature offsets, 4-byte aligned).
    pub fn write_u32(&self, offset: usize, v: u32) {
        if offset % 4 != 0 || offset + 4 > INTERFACE_SIZE {
            return;
        }
        // SAFETY: aligned, in bounds (checked above); atomic access as the
        // ring does.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast::<u32>()) }
            .store(v, Ordering::Release);
    }

    /// Reads a `u32` field of the interface at `offset` (0 when the offset
    /// is not a field).
    pub fn read_u32(&self, offset: usize) -> u32 {
        if offset % 4 != 0 || offset + 4 > INTERFACE_SIZE {
            return 0;
        }
        // SAFETY: aligned, in bounds (checked above); atomic access.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast::<u32>()) }
            .load(Ordering::Acquire)
    }
}

impl Drop for RingPage {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout, freed once.
        unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), PAGE_LAYOUT) }
    }
}

// SAFETY: the page is plain heap memory accessed only through raw
// volatile/atomic accesses.
unsafe impl Send for RingPage {}
// SAFETY: as above; every access through `&RingPage` is atomic or volatile.
unsafe impl Sync for RingPage {}

/// Field offsets of the interface, for tests and fuzzers that play the
/// peer.
pub mod offsets {
    /// `req_cons`.
    pub const REQ_CONS: usize = super::REQ_CONS;
    /// `req_prod`.
    pub const REQ_PROD: usize = super::REQ_PROD;
    /// `rsp_cons`.
    pub const RSP_CONS: usize = super::RSP_CONS;
    /// `rsp_prod`.
    pub const RSP_PROD: usize = super::RSP_PROD;
    /// `server_features`.
    pub const SERVER_FEATURES: usize = super::SERVER_FEATURES;
    /// `connection`.
    pub const CONNECTION: usize = super::CONNECTION;
    /// `error`.
    pub const ERROR: usize = super::ERROR;
    /// `req` array.
    pub const REQ: usize = super::REQ;
    /// `rsp` array.
    pub const RSP: usize = super::RSP;
}
