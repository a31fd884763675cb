//! Event channels: a pending bit in shared memory and an eventfd per port.
//!
//! # The event page
//! Each domain has one memfd, mapped by itself and by every peer that talks
//! to it (the emulated hypervisor's view), laid out as:
//!
//! | offset | what |
//! |---|---|
//! | 0 | header: magic, version, domid, `alive` (cleared by the hypervisor when the domain goes), port count |
//! | 4096 | one 64-bit binding word per port (see [`Binding`]), written by the owner, by a peer only to bind to or close an interdomain channel, and by the hypervisor only to unbind channels to a domain that has gone (compare-and-swap) |
//! | 12288 | one 64-byte line per port: `pending`, `waiting`, `masked` |
//!
//! The per-port line is what the fast paths touch: `notify` writes the
//! peer's `pending` and reads its `waiting` (one cache line);
//! `poll` reads and clears the owner's `pending`. The binding words live
//! apart so that reading them (every `notify` reads its own) does not
//! bounce the line the peer keeps writing.
//!
//! # Wakeups without needless system calls
//! `notify` wakes the peer only when the peer has said it may be asleep:
//! a waiter raises `waiting` before its last check of `pending` and
//! sleeping. A pure polling exchange therefore costs no system call at
//! all; [`crate::HostedPlatform::event_stats`] counts the wakeups sent.
//! A waiter sleeps in one of two ways, and `waiting` counts each kind in
//! its own half:
//! - on the `pending` word itself, a futex on the shared page
//!   ([`EventChannels::block`], and [`EventChannels::block_any`] and
//!   [`HostedPlatform::block_set`] on up to 128 ports, through
//!   `futex_waitv`): high half, [`WAIT_FUTEX`] each. The notifier wakes
//!   it with `futex_wake` on the word it has just set, found through its
//!   own mapping of the peer's page: no descriptor, no lock, nothing
//!   fetched from the hypervisor. One system call each side, as a
//!   blocking `read` and a `write` of an eventfd, with shorter paths in
//!   the kernel than an eventfd behind epoll (no file to look up, no
//!   epoll callback, nothing to poll again on the way back: see
//!   `docs/benches.md`).
//! - on the port's eventfd, created by its owner and registered with the
//!   hypervisor so that peers can fetch it (`SCM_RIGHTS`; see
//!   [`crate::hypervisor`]): for a thread that sleeps in a wait of its own
//!   (an io_uring that polls the eventfd beside its I/O:
//!   [`HostedPlatform::wait_external`]), and for `block_any` and
//!   `block_set` on more than 128 ports (`ppoll`, `epoll`). Low half,
//!   [`WAIT_FD`] each. The notifier writes the eventfd.
//!
//! The handshake is Dekker's: the notifier does `pending = 1; read waiting`,
//! the waiter does `waiting += 1; read pending`, all four accesses
//! sequentially consistent. In the single total order of SeqCst operations
//! one of the two writes comes first, so at least one side sees the other's
//! write: either the waiter sees `pending` and does not sleep, or the
//! notifier sees `waiting` and wakes it. Neither wakeup can fall between
//! the waiter's last look and its sleep: the futex sleep reads `pending`
//! again in the kernel after queueing the thread (a word no longer 0
//! returns at once), and an eventfd stays readable until the waiter
//! drains it. A waiter stays announced for the whole of its wait, however
//! many times it wakes and sleeps again, and withdraws once, on its way
//! out. On x86 the SeqCst read-modify-writes are `xchg`/`lock xadd`,
//! which are full barriers, and SeqCst loads are plain loads: no separate
//! `mfence` is needed. The mask plays no part in it (see below).
//!
//! # Xen semantics kept
//! - Port 0 is never allocated.
//! - `bind_interdomain` succeeds only on a port that is unbound and offered
//!   to the binding domain; afterwards the new local port is marked pending
//!   (Xen does this because events sent to the unbound port were lost).
//! - Notifying an unbound port drops the event silently.
//! - Closing one end of an interdomain channel makes the other end unbound
//!   again (offered back to the closer).
//! - Events coalesce in the pending bit: a storm of notifies is one event,
//!   so it cannot queue up work in the receiver (XSA-391).
//! - Masking holds back upcalls only. `block` is `SCHEDOP_poll`, which
//!   returns for a pending port whether or not it is masked, so a masked
//!   port still wakes a waiter blocked on it; `mask` does not clear
//!   `pending` and `unmask` has nothing to deliver (the hosted platform has
//!   no upcalls, so the mask bit has no effect here).
//! - When a domain goes, however it ends (a clean exit, a crash,
//!   `SIGKILL`), every channel bound to it becomes unbound, offered to its
//!   domid again (Xen's `evtchn_destroy`): the hypervisor rewrites those
//!   binding words in the remaining domains' pages when it notices the
//!   departure, before the domid can come back. `notify` also delivers only
//!   to the incarnation of the peer the binding was made with (recorded
//!   when we bind, learned on the first notify when the peer bound to us,
//!   from the peer's port pointing back at ours), so a notify that raced
//!   with the departure cannot reach a new domain with the same domid.
//!
//! Everything a peer can write in these pages (including our own binding
//! words and lines) is validated when read; corrupt words make the
//! operation fail with an error, never a panic or an unbounded loop.

use std::fs::File;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use grant_tables::{Clock, DomId, EventChannels, PlatformError, Port};

use crate::domain::{lock, Domain, LocalPort, Peer};
use crate::hypervisor::{OP_PORT_CLEAR, OP_PORT_GET, OP_PORT_SET};
use crate::sys::{self, PAGE};
use crate::HostedPlatform;

/// Ports per domain (port 0 is never used).
pub const NR_PORTS: u32 = 1024;

const MAGIC: u64 = u64::from_le_bytes(*b"XHEVTCH1");
const VERSION: u32 = 1;
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_DOMID: usize = 12;
const H_ALIVE: usize = 16;
const H_NR_PORTS: usize = 20;

const BINDINGS_OFFSET: usize = PAGE;
const EVENTS_OFFSET: usize = BINDINGS_OFFSET + (NR_PORTS as usize * 8).next_multiple_of(PAGE);
const LINE: usize = 64;
const E_PENDING: usize = 0;
const E_WAITING: usize = 4;
const E_MASKED: usize = 8;

/// What a waiter sleeping on its port's eventfd adds to `waiting` (the low
/// half counts them; see the module docs).
pub(crate) const WAIT_FD: u32 = 1;
/// What a waiter sleeping on the futex of its port's `pending` word adds
/// to `waiting` (the high half counts them).
pub(crate) const WAIT_FUTEX: u32 = 1 << 16;
/// The low half of `waiting`: eventfd sleepers.
const FD_WAITERS: u32 = WAIT_FUTEX - 1;

/// Size of a domain's event page memfd.
pub(crate) const EVENT_PAGE_BYTES: usize = EVENTS_OFFSET + NR_PORTS as usize * LINE;

/// What a port is bound to, as its binding word says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binding {
    /// Not allocated.
    Free,
    /// Allocated and offered to `remote`, which may bind to it.
    Unbound {
        /// The domain that may bind.
        remote: u16,
    },
    /// Connected to `port` of `remote`.
    Interdomain {
        /// The other domain.
        remote: u16,
        /// Its port.
        port: u16,
    },
}

const ST_FREE: u64 = 0;
const ST_UNBOUND: u64 = 1;
const ST_INTERDOMAIN: u64 = 2;
const SEQ_MASK: u64 = 0xFF_FFFF;

impl Binding {
    /// Encodes: state in bits 56..64, a change counter in 32..56, domid in
    /// 16..32, port in 0..16. The counter makes every change of binding a
    /// new word, so caches keyed by the word notice rebinding.
    fn encode(self, seq: u32) -> u64 {
        let seq = (u64::from(seq) & SEQ_MASK) << 32;
        match self {
            Binding::Free => (ST_FREE << 56) | seq,
            Binding::Unbound { remote } => (ST_UNBOUND << 56) | seq | (u64::from(remote) << 16),
            Binding::Interdomain { remote, port } => {
                (ST_INTERDOMAIN << 56) | seq | (u64::from(remote) << 16) | u64::from(port)
            }
        }
    }

    /// Decodes a word (possibly written by a peer); `None` when corrupt.
    fn decode(w: u64) -> Option<(Binding, u32)> {
        let seq = ((w >> 32) & SEQ_MASK) as u32;
        let remote = ((w >> 16) & 0xFFFF) as u16;
        let port = (w & 0xFFFF) as u16;
        let b = match w >> 56 {
            ST_FREE => Binding::Free,
            ST_UNBOUND => Binding::Unbound { remote },
            ST_INTERDOMAIN if u32::from(port) < NR_PORTS && port != 0 => Binding::Interdomain { remote, port },
            _ => return None,
        };
        Some((b, seq))
    }
}

/// The change counter of a binding word.
fn seq_of(w: u64) -> u32 {
    ((w >> 32) & SEQ_MASK) as u32
}

/// Bits of [`bound_record`] that hold the incarnation (the hypervisor
/// numbers incarnations from 1 up; 2^40 of them are never reached).
const INCARNATION_BITS: u32 = 40;

/// What [`LocalPort::bound`] holds: the change counter of the binding word
/// and the incarnation of the peer that binding is with. Never 0.
pub(crate) fn bound_record(seq: u32, incarnation: u64) -> u64 {
    (u64::from(seq) << INCARNATION_BITS) | (incarnation & ((1 << INCARNATION_BITS) - 1))
}

/// A view of a mapped event page: its header, binding words and lines.
///
/// Holds a raw pointer; whoever builds it guarantees the mapping outlives
/// it (see [`EventView::new`]).
#[derive(Clone, Copy)]
pub(crate) struct EventView {
    base: NonNull<u8>,
}

// SAFETY: the view is an address of shared memory that is only accessed
// atomically.
unsafe impl Send for EventView {}
// SAFETY: as above.
unsafe impl Sync for EventView {}

/// One port's line.
pub(crate) struct EventLine<'a> {
    pub pending: &'a AtomicU32,
    pub waiting: &'a AtomicU32,
    pub masked: &'a AtomicU32,
}

impl EventView {
    /// Wraps a mapping of an event page.
    ///
    /// # Safety
    /// `base` must be the start of a readable and writable mapping of at
    /// least [`EVENT_PAGE_BYTES`] bytes that stays mapped for as long as the
    /// view (and every copy of it) is used, and that is only ever accessed
    /// atomically.
    pub(crate) unsafe fn new(base: NonNull<u8>) -> Self {
        EventView { base }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= EVENT_PAGE_BYTES);
        // SAFETY: every caller passes a constant or bounds-checked, 4-aligned
        // offset inside the page (the mapping is page-aligned and at least
        // EVENT_PAGE_BYTES long, per `new`); the memory is only accessed
        // atomically and outlives the view.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off + 8 <= EVENT_PAGE_BYTES);
        // SAFETY: as in `u32_at`, with an 8-aligned offset.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    pub(crate) fn alive(&self) -> &AtomicU32 {
        self.u32_at(H_ALIVE)
    }

    /// The binding word of `port`, if the port exists.
    pub(crate) fn binding(&self, port: u32) -> Option<&AtomicU64> {
        (port != 0 && port < NR_PORTS).then(|| self.u64_at(BINDINGS_OFFSET + port as usize * 8))
    }

    /// The line of `port`, if the port exists.
    pub(crate) fn line(&self, port: u32) -> Option<EventLine<'_>> {
        (port != 0 && port < NR_PORTS).then(|| {
            let off = EVENTS_OFFSET + port as usize * LINE;
            EventLine {
                pending: self.u32_at(off + E_PENDING),
                waiting: self.u32_at(off + E_WAITING),
                masked: self.u32_at(off + E_MASKED),
            }
        })
    }

    /// Writes the header of a new domain's page.
    pub(crate) fn init_header(&self, domid: DomId) {
        self.u64_at(H_MAGIC).store(MAGIC, Ordering::Relaxed);
        self.u32_at(H_VERSION).store(VERSION, Ordering::Relaxed);
        self.u32_at(H_DOMID).store(u32::from(domid.0), Ordering::Relaxed);
        self.u32_at(H_NR_PORTS).store(NR_PORTS, Ordering::Relaxed);
        self.alive().store(1, Ordering::Release);
    }

    /// Checks a peer's header (read once).
    pub(crate) fn check_header(&self, domid: DomId) -> Result<(), String> {
        let magic = self.u64_at(H_MAGIC).load(Ordering::Acquire);
        let version = self.u32_at(H_VERSION).load(Ordering::Acquire);
        let d = self.u32_at(H_DOMID).load(Ordering::Acquire);
        let n = self.u32_at(H_NR_PORTS).load(Ordering::Acquire);
        if magic != MAGIC || version != VERSION || n != NR_PORTS {
            return Err(format!(
                "event page has magic {magic:#x} version {version} with {n} ports; expected a version {VERSION} page with {NR_PORTS} ports"
            ));
        }
        if d != u32::from(domid.0) {
            return Err(format!("event page belongs to dom{d}, not {domid}"));
        }
        Ok(())
    }
}

/// Marks the domain whose event page `map` is as gone.
pub(crate) fn mark_dead(map: &sys::Mmap) {
    if map.len() >= EVENT_PAGE_BYTES {
        // SAFETY: `map` is a live, writable mapping of a whole event page,
        // accessed only atomically; the view does not outlive it.
        let view = unsafe { EventView::new(map.as_ptr()) };
        view.alive().store(0, Ordering::Release);
    }
}

/// The hypervisor's part of a domain's departure (Xen's `evtchn_destroy`):
/// every port in the event page `map` (of a domain still running) that is
/// bound to `departed` becomes unbound, offered to `departed` again.
/// Returns how many were.
///
/// Called with the registry locked, before `departed` can register again,
/// so no binding to a new incarnation exists yet. Each word is changed with
/// a compare-and-swap, so a port closed meanwhile by its owner stays closed.
pub(crate) fn unbind_departed(map: &sys::Mmap, departed: u16) -> usize {
    if map.len() < EVENT_PAGE_BYTES {
        return 0;
    }
    // SAFETY: `map` is a live, writable mapping of a whole event page,
    // accessed only atomically; the view does not outlive it.
    let view = unsafe { EventView::new(map.as_ptr()) };
    let mut reset = 0;
    for port in 1..NR_PORTS {
        let Some(word) = view.binding(port) else { continue };
        let cur = word.load(Ordering::Acquire);
        if let Some((Binding::Interdomain { remote, .. }, seq)) = Binding::decode(cur) {
            if remote == departed {
                let unbound = Binding::Unbound { remote }.encode(seq.wrapping_add(1));
                if word.compare_exchange(cur, unbound, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    reset += 1;
                }
            }
        }
    }
    reset
}

/// Counters of the slow paths of event channels, for tests and benches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// eventfd writes: wakeups sent to a (possibly) sleeping waiter.
    pub wakeups_sent: u64,
    /// Times `block` went to sleep on its eventfd.
    pub sleeps: u64,
}

fn os_err(op: &'static str, e: &std::io::Error) -> PlatformError {
    PlatformError::Os { op, code: e.raw_os_error().unwrap_or(libc::EIO) }
}

fn corrupt(port: Port) -> PlatformError {
    log::error!("event channel {port}: binding word is corrupt (written by a hostile peer?)");
    PlatformError::Os { op: "event channel: corrupt binding word in shared memory", code: libc::EIO }
}

impl Domain {
    fn own_binding(&self, port: Port) -> Result<&AtomicU64, PlatformError> {
        self.events.binding(port.0).ok_or(PlatformError::BadPort(port))
    }

    fn own_line(&self, port: Port) -> Result<EventLine<'_>, PlatformError> {
        self.events.line(port.0).ok_or(PlatformError::BadPort(port))
    }

    fn local(&self, port: Port) -> Result<&LocalPort, PlatformError> {
        self.ports.get(port.0 as usize).ok_or(PlatformError::BadPort(port))
    }

    /// The local state of an open port (this process's record, which a
    /// peer cannot change).
    #[inline]
    fn open_local(&self, port: Port) -> Result<&LocalPort, PlatformError> {
        match self.ports.get(port.0 as usize) {
            Some(l) if l.open.load(Ordering::Acquire) => Ok(l),
            _ => Err(PlatformError::BadPort(port)),
        }
    }

    /// The binding of an open port, checked against what this process
    /// recorded: a peer may only move it between unbound and bound to
    /// itself.
    #[inline]
    fn open_binding(&self, port: Port) -> Result<(Binding, u64, &LocalPort), PlatformError> {
        let local = self.open_local(port)?;
        let w = self.own_binding(port)?.load(Ordering::Acquire);
        let owner = local.remote.load(Ordering::Relaxed);
        match Binding::decode(w) {
            Some((b @ (Binding::Unbound { remote } | Binding::Interdomain { remote, .. }), _))
                if u32::from(remote) == owner =>
            {
                Ok((b, w, local))
            }
            _ => Err(corrupt(port)),
        }
    }

    /// Picks a free local port, gives it an eventfd registered with the
    /// hypervisor and resets its line. The caller holds `port_alloc` and
    /// publishes the binding word.
    fn prepare_port(&self) -> Result<(Port, Arc<File>), PlatformError> {
        let port = (1..NR_PORTS)
            .find(|&p| self.ports.get(p as usize).is_some_and(|l| !l.open.load(Ordering::Acquire)))
            .map(Port)
            .ok_or(PlatformError::NoFreePorts)?;
        let efd = sys::eventfd().map_err(|e| os_err("eventfd", &e))?;
        self.hv.call(OP_PORT_SET, 0, port.0, &[efd.as_fd()]).map_err(|e| os_err("registering an event channel with the hypervisor", &e))?;
        let line = self.own_line(port)?;
        line.pending.store(0, Ordering::Relaxed);
        line.waiting.store(0, Ordering::Relaxed);
        line.masked.store(0, Ordering::Relaxed);
        Ok((port, Arc::new(efd)))
    }

    fn next_seq(&self, port: Port) -> u32 {
        seq_of(self.own_binding(port).map_or(0, |b| b.load(Ordering::Acquire))).wrapping_add(1)
    }

    /// Publishes a prepared port. `incarnation` is that of the peer a
    /// binding is made with (0 for an unbound port).
    fn commit_port(
        &self,
        port: Port,
        efd: Arc<File>,
        remote: DomId,
        binding: Binding,
        incarnation: u64,
    ) -> Result<(), PlatformError> {
        let seq = self.next_seq(port);
        let local = self.local(port)?;
        let mut st = lock(&local.state);
        st.eventfd = Some(efd);
        st.wake = None;
        local.remote.store(u32::from(remote.0), Ordering::Relaxed);
        local.bound.store(if incarnation == 0 { 0 } else { bound_record(seq, incarnation) }, Ordering::Relaxed);
        // Release: the reset line is visible before the port is.
        self.own_binding(port)?.store(binding.encode(seq), Ordering::Release);
        local.open.store(true, Ordering::Release);
        Ok(())
    }

    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError> {
        if !remote.is_real() {
            return Err(PlatformError::BindRefused { remote, reason: "not a real domain id" });
        }
        let _alloc = lock(&self.port_alloc);
        let (port, efd) = self.prepare_port()?;
        self.commit_port(port, efd, remote, Binding::Unbound { remote: remote.0 }, 0)?;
        log::debug!("{}: {port} offered to {remote}", self.domid);
        Ok(port)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
        if !remote.is_real() {
            return Err(PlatformError::BindRefused { remote, reason: "not a real domain id" });
        }
        let rport = u16::try_from(remote_port.0)
            .ok()
            .filter(|&p| p != 0 && u32::from(p) < NR_PORTS)
            .ok_or(PlatformError::BindRefused { remote, reason: "no such port" })?;
        let peer = self.fresh_peer(remote).map_err(|e| {
            log::warn!("{}: cannot bind to {remote} {remote_port}: {e}", self.domid);
            PlatformError::BindRefused { remote, reason: "the domain does not exist" }
        })?;
        let rb = peer.events.binding(remote_port.0).ok_or(PlatformError::BindRefused { remote, reason: "no such port" })?;

        let _alloc = lock(&self.port_alloc);
        let (port, efd) = self.prepare_port()?;
        let local = u16::try_from(port.0).map_err(|_| PlatformError::NoFreePorts)?;
        self.commit_port(port, efd, remote, Binding::Interdomain { remote: remote.0, port: rport }, peer.incarnation)?;

        // Claim the remote port: only an unbound port offered to us, in one
        // compare-and-swap (the peer may close it meanwhile). Bounded.
        let mut cur = rb.load(Ordering::Acquire);
        let mut refusal = "the remote port kept changing";
        for _ in 0..16 {
            match Binding::decode(cur) {
                Some((Binding::Unbound { remote: offered }, seq)) if offered == self.domid.0 => {
                    let new = Binding::Interdomain { remote: self.domid.0, port: local }.encode(seq.wrapping_add(1));
                    match rb.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => {
                            refusal = "";
                            break;
                        }
                        Err(now) => cur = now,
                    }
                }
                Some((Binding::Unbound { .. }, _)) => {
                    refusal = "the port is offered to another domain";
                    break;
                }
                Some((Binding::Interdomain { .. }, _)) => {
                    refusal = "the port is already bound";
                    break;
                }
                Some((Binding::Free, _)) => {
                    refusal = "no such port (not allocated)";
                    break;
                }
                None => {
                    refusal = "the port's binding word is corrupt";
                    break;
                }
            }
        }
        if !refusal.is_empty() {
            self.release_port(port);
            return Err(PlatformError::BindRefused { remote, reason: refusal });
        }
        // Xen marks the new local port pending: events sent to the unbound
        // remote end before the bind were dropped.
        self.own_line(port)?.pending.store(1, Ordering::Release);
        log::debug!("{}: {port} bound to {remote} {remote_port}", self.domid);
        Ok(port)
    }

    /// Frees a local port: binding word, eventfd, registration.
    fn release_port(&self, port: Port) {
        let seq = self.next_seq(port);
        let Ok(local) = self.local(port) else { return };
        let mut st = lock(&local.state);
        local.open.store(false, Ordering::Release);
        local.bound.store(0, Ordering::Relaxed);
        if let Ok(b) = self.own_binding(port) {
            b.store(Binding::Free.encode(seq), Ordering::Release);
        }
        st.wake = None;
        // Wake a thread blocked on the port so it sees the port closed: on
        // its eventfd, and on its `pending` word, made non-zero first so
        // that a futex sleep that starts after this wake returns at once
        // (the line is reset when the port is allocated again).
        if let Some(efd) = st.eventfd.take() {
            if let Err(e) = sys::eventfd_signal(&efd) {
                log::warn!("{}: waking waiters of closed {port}: {e}", self.domid);
            }
        }
        if let Ok(line) = self.own_line(port) {
            line.pending.store(1, Ordering::SeqCst);
            if let Err(e) = sys::futex_wake(line.pending) {
                log::warn!("{}: waking waiters of closed {port}: {e}", self.domid);
            }
        }
        drop(st);
        if let Err(e) = self.hv.call(OP_PORT_CLEAR, 0, port.0, &[]) {
            log::warn!("{}: unregistering {port} from the hypervisor: {e}", self.domid);
        }
    }

    pub(crate) fn close_port(&self, port: Port) -> Result<(), PlatformError> {
        let _alloc = lock(&self.port_alloc);
        // A corrupt binding word still lets the port be closed.
        let binding = self.open_binding(port).map(|(b, _, _)| b);
        if let Err(PlatformError::BadPort(p)) = binding {
            return Err(PlatformError::BadPort(p));
        }
        if let Ok(Binding::Interdomain { remote, port: rport }) = binding {
            // The remote end becomes unbound, offered back to us; only if
            // it still points at this port.
            if let Ok(peer) = self.peer(DomId(remote)) {
                if let Some(rb) = peer.events.binding(u32::from(rport)) {
                    let cur = rb.load(Ordering::Acquire);
                    if let Some((Binding::Interdomain { remote: r, port: p }, seq)) = Binding::decode(cur) {
                        if r == self.domid.0 && u32::from(p) == port.0 {
                            let new = Binding::Unbound { remote: self.domid.0 }.encode(seq.wrapping_add(1));
                            let _ = rb.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        self.release_port(port);
        log::debug!("{}: {port} closed", self.domid);
        Ok(())
    }

    /// Ports open right now.
    pub(crate) fn open_ports(&self) -> Vec<Port> {
        (1..NR_PORTS)
            .filter(|&p| self.ports.get(p as usize).is_some_and(|l| l.open.load(Ordering::Acquire)))
            .map(Port)
            .collect()
    }

    #[inline]
    fn notify(&self, port: Port) -> Result<(), PlatformError> {
        let (remote, rport, word, local) = match self.open_binding(port)? {
            (Binding::Interdomain { remote, port }, w, local) => (remote, port, w, local),
            // Xen drops events sent on an unbound port.
            _ => return Ok(()),
        };
        let Some(peer) = self.peer_events(remote) else {
            // The peer is gone: nobody to notify.
            return Ok(());
        };
        // Only to the incarnation of the peer this binding was made with: a
        // domain that died and came back under the same domid is not it.
        if local.bound.load(Ordering::Acquire) != bound_record(seq_of(word), peer.incarnation)
            && !self.confirm_binding(port, local, word, rport, &peer)
        {
            return Ok(());
        }
        let Some(line) = peer.events.line(u32::from(rport)) else { return Err(corrupt(port)) };
        // Dekker, notifier side (see the module docs): publish the event,
        // then look for a sleeper. SeqCst on both so that this read cannot
        // be ordered before the write (store-load), pairing with `block`'s
        // `waiting` increment and re-read of `pending`. The mask is not
        // looked at: like Xen's SCHEDOP_poll, `block` returns for a pending
        // port whether or not it is masked.
        line.pending.swap(1, Ordering::SeqCst);
        let waiting = line.waiting.load(Ordering::SeqCst);
        if waiting != 0 {
            self.wake_sleepers(&line, waiting, local, word, remote, rport, peer.incarnation)?;
        }
        Ok(())
    }

    /// Slow path of `notify`: wakes the peer's threads that announced a
    /// sleep on the port (`waiting`, as read after setting `pending`): a
    /// futex wake on the `pending` word for those sleeping on it, an
    /// eventfd write for those sleeping on the eventfd (module docs).
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn wake_sleepers(
        &self,
        line: &EventLine<'_>,
        waiting: u32,
        local: &LocalPort,
        word: u64,
        remote: u16,
        rport: u16,
        incarnation: u64,
    ) -> Result<(), PlatformError> {
        if waiting >= WAIT_FUTEX {
            sys::futex_wake(line.pending).map_err(|e| os_err("futex wake of an event channel", &e))?;
            self.stats.wakeups_sent.fetch_add(1, Ordering::Relaxed);
        }
        if waiting & FD_WAITERS != 0 {
            self.wake_remote(local, word, remote, rport, incarnation)?;
        }
        Ok(())
    }

    /// Slow path of `notify` for a binding whose peer incarnation is not
    /// recorded yet (the peer bound to our port) or is no longer the one
    /// running. Returns whether to deliver.
    ///
    /// When the peer bound to our port it pointed its own port at ours
    /// first, so a live binding always points back: if the current
    /// incarnation's port does, the binding is with it and is recorded. If
    /// not, or if the recorded incarnation is gone, the domain we were bound
    /// to has died (the hypervisor resets such bindings when it notices;
    /// this covers a notify that read the word just before): the event is
    /// dropped and the port made unbound, offered to that domid again, as
    /// Xen does when it destroys the peer.
    #[cold]
    fn confirm_binding(&self, port: Port, local: &LocalPort, word: u64, rport: u16, peer: &Peer) -> bool {
        let seq = seq_of(word);
        let recorded = local.bound.load(Ordering::Acquire);
        let points_back = peer.events.binding(u32::from(rport)).map(|b| Binding::decode(b.load(Ordering::Acquire)));
        let points_back = matches!(
            points_back,
            Some(Some((Binding::Interdomain { remote, port: p }, _))) if remote == self.domid.0 && u32::from(p) == port.0
        );
        if (recorded == 0 || recorded >> INCARNATION_BITS != u64::from(seq)) && points_back {
            local.bound.store(bound_record(seq, peer.incarnation), Ordering::Release);
            return true;
        }
        log::info!(
            "{}: {port} was bound to {} port {rport}, which is gone (now incarnation {}): unbound",
            self.domid,
            peer.domid,
            peer.incarnation
        );
        if let Ok(b) = self.own_binding(port) {
            let unbound = Binding::Unbound { remote: peer.domid.0 }.encode(seq.wrapping_add(1));
            // Fails if the binding changed meanwhile (closed, or already
            // reset by the hypervisor): nothing to do then.
            let _ = b.compare_exchange(word, unbound, Ordering::AcqRel, Ordering::Relaxed);
        }
        false
    }

    /// Slow path of `notify`: writes the eventfd of the peer's port,
    /// fetching it from the hypervisor the first time for this binding (and
    /// only from the peer's `incarnation`).
    #[cold]
    fn wake_remote(&self, local: &LocalPort, word: u64, remote: u16, rport: u16, incarnation: u64) -> Result<(), PlatformError> {
        let mut st = lock(&local.state);
        let fd = match &st.wake {
            Some((w, fd)) if *w == word => fd.clone(),
            _ => match self.hv.call(OP_PORT_GET, remote, u32::from(rport), &[]) {
                // Another incarnation by now: the one we notified is gone.
                Ok(reply) if reply.incarnation != incarnation => return Ok(()),
                Ok(mut reply) if reply.fds.len() == 1 => {
                    let Some(fd) = reply.fds.pop() else { return Ok(()) };
                    sys::set_nonblocking(fd.as_fd()).map_err(|e| os_err("making a peer's eventfd non-blocking", &e))?;
                    let fd = Arc::new(File::from(fd));
                    st.wake = Some((word, fd.clone()));
                    fd
                }
                Ok(_) => {
                    log::warn!("{}: the hypervisor sent a bad reply for dom{remote} port {rport}", self.domid);
                    return Ok(());
                }
                // The peer closed its port or left: nobody to wake.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(os_err("fetching a peer's event channel from the hypervisor", &e)),
            },
        };
        drop(st);
        sys::eventfd_signal(&fd).map_err(|e| os_err("eventfd write", &e))?;
        self.stats.wakeups_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    #[inline]
    fn poll(&self, port: Port) -> Result<bool, PlatformError> {
        self.open_local(port)?;
        let line = self.own_line(port)?;
        // Read first, swap only when set: a spinning poller keeps the line
        // shared instead of stealing it from the notifier on every spin.
        if line.pending.load(Ordering::Relaxed) == 0 {
            return Ok(false);
        }
        // Acquire: what the notifier wrote before notifying is visible.
        Ok(line.pending.swap(0, Ordering::Acquire) != 0)
    }

    fn block(&self, port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError> {
        let line = self.own_line(port)?;
        self.open_binding(port)?;
        // The mask is not looked at: Xen's SCHEDOP_poll returns for a
        // pending port whether or not it is masked (masking only holds back
        // upcalls, which the hosted platform does not have).
        if line.pending.load(Ordering::Relaxed) != 0 && line.pending.swap(0, Ordering::Acquire) != 0 {
            return Ok(true);
        }
        let deadline = deadline_of(timeout_ns);
        // One system call per sleep, on the pending word itself: a notify
        // sets it, then wakes the futex (module docs).
        let woke = self.wait_pending(&[port], &[line], WAIT_FUTEX, deadline, |remaining, lines| {
            futex_wait_lines(lines, remaining)
        })?;
        Ok(woke.is_some())
    }

    /// The waiter's side of the handshake with notifiers (module docs),
    /// shared by [`Self::block`], [`Self::block_any`] and
    /// [`HostedPlatform::block_set`], which differ only in how they sleep:
    /// announce on every port's line (`lines`, those of `ports`) that we
    /// may sleep (`unit`: [`WAIT_FUTEX`] or [`WAIT_FD`], the kind of sleep),
    /// then, until a port is found pending: look at every pending bit,
    /// `sleep` for at most the time left (it returns on a wakeup or a
    /// timeout, and resets what its wakeup source needs reset; it is given
    /// the lines to look at), check that the ports are still open. Stays
    /// announced throughout and withdraws once, on the way out. Returns the
    /// first port found pending (its bit cleared), or `None` once
    /// `deadline` has passed. The caller looked at the pending bits once
    /// already (the fast path, without announcing).
    fn wait_pending(
        &self,
        ports: &[Port],
        lines: &[EventLine<'_>],
        unit: u32,
        deadline: Option<Option<Instant>>,
        mut sleep: impl FnMut(Option<Duration>, &[EventLine<'_>]) -> Result<(), PlatformError>,
    ) -> Result<Option<Port>, PlatformError> {
        let _announced = Announced::new(lines, unit);
        loop {
            // The waiter's look after announcing (Dekker).
            if let Some(p) = self.take_first_pending(ports)? {
                return Ok(Some(p));
            }
            let remaining = match deadline {
                None | Some(None) => None,
                Some(Some(dl)) => {
                    let now = Instant::now();
                    if now >= dl {
                        return Ok(None);
                    }
                    Some(dl - now)
                }
            };
            self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
            sleep(remaining, lines)?;
            // Closed while we slept? (Closing wakes us.)
            for &port in ports {
                self.open_binding(port)?;
            }
        }
    }

    /// The first of `ports` that is pending, its bit cleared. `SeqCst`
    /// reads: the waiter's side of the handshake (module docs). Every port
    /// is open (checked by the caller).
    fn take_first_pending(&self, ports: &[Port]) -> Result<Option<Port>, PlatformError> {
        for &port in ports {
            let line = self.own_line(port)?;
            // Read first, swap only when set (see `poll`).
            if line.pending.load(Ordering::SeqCst) != 0 && line.pending.swap(0, Ordering::SeqCst) != 0 {
                return Ok(Some(port));
            }
        }
        Ok(None)
    }

    /// `block` on several ports: the same handshake, run on every port's
    /// line, then one `futex_waitv` over their pending words (up to
    /// [`sys::FUTEX_WAITV_MAX`] ports, and a kernel that has it), else
    /// one `ppoll` over their eventfds.
    fn block_any(&self, ports: &[Port], timeout_ns: Option<u64>) -> Result<Option<Port>, PlatformError> {
        if ports.is_empty() {
            return Err(PlatformError::InvalidRequest {
                op: "block_any",
                reason: "no ports to wait on; pass at least one open port",
            });
        }
        for &port in ports {
            self.open_binding(port)?;
        }
        // The mask is not looked at (as in `block`).
        if let Some(p) = self.take_first_pending(ports)? {
            return Ok(Some(p));
        }
        let deadline = deadline_of(timeout_ns);
        let lines = ports.iter().map(|&p| self.own_line(p)).collect::<Result<Vec<_>, _>>()?;
        if ports.len() <= sys::FUTEX_WAITV_MAX && futex_waitv_works() {
            return self.wait_pending(ports, &lines, WAIT_FUTEX, deadline, |remaining, lines| {
                futex_wait_lines(lines, remaining)
            });
        }
        let mut efds = Vec::with_capacity(ports.len());
        for &port in ports {
            let st = lock(&self.local(port)?.state);
            efds.push(st.eventfd.clone().ok_or(PlatformError::BadPort(port))?);
        }
        self.wait_pending(ports, &lines, WAIT_FD, deadline, |remaining, _| {
            let fds: Vec<_> = efds.iter().map(|f| f.as_fd()).collect();
            let readable =
                sys::poll_readable(&fds, remaining).map_err(|e| os_err("waiting on event channel eventfds", &e))?;
            // `ppoll` is level-triggered: reset the counters it reported,
            // or the next sleep would return at once. Nothing is lost: the
            // pending bits, looked at again before the next sleep, are the
            // events; a notify after that look writes the eventfd again.
            for i in readable {
                if let Some(f) = efds.get(i) {
                    sys::eventfd_drain(f);
                }
            }
            Ok(())
        })
    }

    fn mask(&self, port: Port) -> Result<(), PlatformError> {
        self.open_binding(port)?;
        self.own_line(port)?.masked.store(1, Ordering::SeqCst);
        Ok(())
    }

    fn unmask(&self, port: Port) -> Result<(), PlatformError> {
        self.open_binding(port)?;
        // Nothing to deliver: a waiter in `block` was woken by the notify
        // whether or not the port was masked, and the pending bit stayed.
        self.own_line(port)?.masked.store(0, Ordering::SeqCst);
        Ok(())
    }
}

impl HostedPlatform {
    /// How many threads of domain `domid` have announced that they may
    /// sleep on its `port` (in `block`, `block_any`, a port set's or an
    /// external wait), read from its event page as `notify` reads it: while
    /// this is non-zero, a notify wakes them (a futex wake or an eventfd
    /// write, per the kind of sleep). For
    /// tests that need a peer to be waiting before they notify. `None` when
    /// the domain is not running or the port does not exist.
    pub fn waiters(&self, domid: DomId, port: Port) -> Option<u32> {
        let peer = self.inner.peer(domid).ok()?;
        let line = peer.events.line(port.0)?;
        let waiting = line.waiting.load(Ordering::SeqCst);
        Some((waiting & FD_WAITERS) + (waiting / WAIT_FUTEX))
    }
}

/// Where [`HostedPlatform`]'s clock starts: the first reading in this
/// process.
static CLOCK_ORIGIN: OnceLock<Instant> = OnceLock::new();

/// The host's monotonic clock (`CLOCK_MONOTONIC`, through [`Instant`]), in
/// nanoseconds since the first reading in this process: readings of
/// different processes are not comparable.
impl Clock for HostedPlatform {
    fn now_ns(&self) -> u64 {
        let origin = CLOCK_ORIGIN.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl EventChannels for HostedPlatform {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError> {
        self.inner.alloc_unbound(remote)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
        self.inner.bind_interdomain(remote, remote_port)
    }

    #[inline]
    fn notify(&self, port: Port) -> Result<(), PlatformError> {
        self.inner.notify(port)
    }

    fn mask(&self, port: Port) -> Result<(), PlatformError> {
        self.inner.mask(port)
    }

    fn unmask(&self, port: Port) -> Result<(), PlatformError> {
        self.inner.unmask(port)
    }

    #[inline]
    fn poll(&self, port: Port) -> Result<bool, PlatformError> {
        self.inner.poll(port)
    }

    fn block(&self, port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError> {
        self.inner.block(port, timeout_ns)
    }

    fn block_any(&self, ports: &[Port], timeout_ns: Option<u64>) -> Result<Option<Port>, PlatformError> {
        self.inner.block_any(ports, timeout_ns)
    }

    fn close(&self, port: Port) -> Result<(), PlatformError> {
        self.inner.close_port(port)
    }
}

/// Ports of this domain waited on together, again and again, by one
/// thread (a backend's data plane): a sleep is one `futex_waitv` on their
/// pending words, as in [`EventChannels::block_any`], or, for more ports
/// than that takes, one `epoll_wait` on an epoll instance watching their
/// eventfds, edge-triggered, built once with the set so that no counter is
/// read back ([`HostedPlatform::block_set`]), where `block_any` would
/// build a `ppoll` over every eventfd and then read each one that fired.
///
/// A set is tied to the ports' current eventfds: a port closed and
/// allocated again has a new one, and [`HostedPlatform::block_set`] then
/// fails with [`PlatformError::InvalidRequest`]; build the set again.
pub(crate) struct PortSet {
    ports: Vec<Port>,
    /// The ports' eventfds when the set was built: which allocation of
    /// each port the set is for.
    efds: Vec<Arc<File>>,
    /// For a set larger than one `futex_waitv` takes: an epoll instance
    /// watching the eventfds.
    epoll: Option<std::os::fd::OwnedFd>,
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortSet").field("ports", &self.ports).finish_non_exhaustive()
    }
}

impl PortSet {
    /// The ports, in the order given.
    pub(crate) fn ports(&self) -> &[Port] {
        &self.ports
    }
}

impl HostedPlatform {
    /// A set of open ports of this domain to wait on with
    /// [`Self::block_set`] (1 to [`NR_PORTS`] of them).
    pub(crate) fn port_set(&self, ports: &[Port]) -> Result<PortSet, PlatformError> {
        if ports.is_empty() || ports.len() >= NR_PORTS as usize {
            return Err(PlatformError::InvalidRequest { op: "port_set", reason: "give 1 to NR_PORTS - 1 open ports" });
        }
        let d = &*self.inner;
        let mut efds = Vec::with_capacity(ports.len());
        for &port in ports {
            d.open_binding(port)?;
            efds.push(lock(&d.local(port)?.state).eventfd.clone().ok_or(PlatformError::BadPort(port))?);
        }
        let epoll = if ports.len() <= sys::FUTEX_WAITV_MAX && futex_waitv_works() {
            None
        } else {
            let files: Vec<&File> = efds.iter().map(|f| &**f).collect();
            Some(sys::epoll_set(&files).map_err(|e| os_err("an epoll set of event channel eventfds", &e))?)
        };
        Ok(PortSet { ports: ports.to_vec(), efds, epoll })
    }

    /// [`EventChannels::block_any`] on a [`PortSet`]: returns the first
    /// port of the set found pending (its bit cleared), or `None` when
    /// `timeout_ns` passed. The same handshake with notifiers (module
    /// docs), one system call per sleep: `futex_waitv` on the ports'
    /// pending words, or for a set too large for it `epoll_wait`, where
    /// the eventfds are read only after a wakeup that found nothing pending
    /// (a peer writing an eventfd itself), so that a peer cannot saturate a
    /// counter and silence us.
    pub(crate) fn block_set(&self, set: &PortSet, timeout_ns: Option<u64>) -> Result<Option<Port>, PlatformError> {
        let d = &*self.inner;
        for (&port, efd) in set.ports.iter().zip(&set.efds) {
            d.open_binding(port)?;
            let same = lock(&d.local(port)?.state).eventfd.as_ref().is_some_and(|e| Arc::ptr_eq(e, efd));
            if !same {
                return Err(PlatformError::InvalidRequest {
                    op: "block_set",
                    reason: "a port of the set was closed and allocated again; build the set again",
                });
            }
        }
        if let Some(p) = d.take_first_pending(&set.ports)? {
            return Ok(Some(p));
        }
        let deadline = deadline_of(timeout_ns);
        let lines = set.ports.iter().map(|&p| d.own_line(p)).collect::<Result<Vec<_>, _>>()?;
        let Some(epoll) = &set.epoll else {
            return d.wait_pending(&set.ports, &lines, WAIT_FUTEX, deadline, |remaining, lines| {
                futex_wait_lines(lines, remaining)
            });
        };
        d.wait_pending(&set.ports, &lines, WAIT_FD, deadline, |remaining, lines| {
            let woken = sys::epoll_wait_one(epoll.as_fd(), remaining)
                .map_err(|e| os_err("waiting on an epoll set of event channel eventfds", &e))?;
            if woken && nothing_pending(lines) {
                for f in &set.efds {
                    sys::eventfd_drain(f);
                }
            }
            Ok(())
        })
    }
}

/// A port of this domain waited on inside a wait of the caller's own (an
/// io_uring that polls the port's eventfd beside its I/O), so that one
/// sleep covers both: see [`HostedPlatform::external_wait`] and
/// [`HostedPlatform::wait_external`].
#[derive(Debug)]
pub(crate) struct ExternalWait {
    port: Port,
    efd: Arc<File>,
}

impl ExternalWait {
    /// The port's eventfd: readable once a notifier has written it (the
    /// caller's wait must end when it becomes readable).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.efd.as_fd()
    }

    /// Resets the eventfd's counter, after a wakeup it caused and before
    /// the next [`HostedPlatform::wait_external`] (a counter left non-zero
    /// keeps the eventfd readable, so the next wait would return at once).
    pub(crate) fn drain(&self) {
        sys::eventfd_drain(&self.efd);
    }
}

impl HostedPlatform {
    /// Open `port`'s eventfd, for a thread that sleeps in a wait of its
    /// own ([`Self::wait_external`]).
    pub(crate) fn external_wait(&self, port: Port) -> Result<ExternalWait, PlatformError> {
        let d = &*self.inner;
        d.open_binding(port)?;
        let efd = lock(&d.local(port)?.state).eventfd.clone().ok_or(PlatformError::BadPort(port))?;
        Ok(ExternalWait { port, efd })
    }

    /// One sleep on `w`'s port inside the caller's own wait, with the
    /// waiter's side of the handshake with notifiers (module docs):
    /// announces that this thread may sleep, looks at the pending bit once
    /// more (set: clears it and returns `true` without sleeping), else calls
    /// `sleep`, which must return at the latest when the port's eventfd
    /// ([`ExternalWait::fd`]) becomes readable, then returns whether the
    /// port is pending now (its bit cleared) and withdraws. A port closed
    /// and allocated again (another eventfd) is an error.
    pub(crate) fn wait_external(
        &self,
        w: &ExternalWait,
        sleep: impl FnOnce() -> Result<(), PlatformError>,
    ) -> Result<bool, PlatformError> {
        let d = &*self.inner;
        d.open_binding(w.port)?;
        if !lock(&d.local(w.port)?.state).eventfd.as_ref().is_some_and(|e| Arc::ptr_eq(e, &w.efd)) {
            return Err(PlatformError::InvalidRequest {
                op: "wait_external",
                reason: "the port was closed and allocated again; ask for its external wait again",
            });
        }
        let lines = [d.own_line(w.port)?];
        let _announced = Announced::new(&lines, WAIT_FD);
        if d.take_first_pending(&[w.port])?.is_some() {
            return Ok(true);
        }
        d.stats.sleeps.fetch_add(1, Ordering::Relaxed);
        sleep()?;
        Ok(d.take_first_pending(&[w.port])?.is_some())
    }
}

/// When a wait of `timeout_ns` ends: `None` for no timeout, `Some(None)`
/// when the deadline does not fit the clock (a wait without end).
fn deadline_of(timeout_ns: Option<u64>) -> Option<Option<Instant>> {
    timeout_ns.map(|t| Instant::now().checked_add(Duration::from_nanos(t)))
}

/// A waiter's announcement on every line of a wait (module docs): adds
/// `unit` ([`WAIT_FUTEX`] or [`WAIT_FD`], the kind of sleep) to each line's
/// `waiting` when made, takes it back when dropped, on every way out.
/// SeqCst, so that the waiter's reads of `pending` that follow cannot be
/// ordered before the increments.
struct Announced<'l, 'a> {
    lines: &'l [EventLine<'a>],
    unit: u32,
}

impl<'l, 'a> Announced<'l, 'a> {
    fn new(lines: &'l [EventLine<'a>], unit: u32) -> Self {
        for l in lines {
            l.waiting.fetch_add(unit, Ordering::SeqCst);
        }
        Announced { lines, unit }
    }
}

impl Drop for Announced<'_, '_> {
    fn drop(&mut self) {
        for l in self.lines {
            l.waiting.fetch_sub(self.unit, Ordering::SeqCst);
        }
    }
}

/// Whether this kernel has `futex_waitv` (Linux 5.16), asked once per
/// process. Without it, a wait on several ports sleeps on their eventfds.
fn futex_waitv_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        // A word that is not 0 returns at once: EAGAIN, reported as `Ok`.
        let probe = AtomicU32::new(1);
        match sys::futex_wait_any(&[&probe], Some(Duration::ZERO)) {
            Ok(()) => true,
            Err(e) => {
                log::info!("futex_waitv is not available ({e}): waits on several event channels use their eventfds");
                false
            }
        }
    })
}

/// Sleeps on the pending words of `lines` (a futex wait on one, a
/// `futex_waitv` on several), for at most `remaining`.
fn futex_wait_lines(lines: &[EventLine<'_>], remaining: Option<Duration>) -> Result<(), PlatformError> {
    let r = match lines {
        [line] => sys::futex_wait(line.pending, 0, remaining),
        _ => {
            let words: Vec<&AtomicU32> = lines.iter().map(|l| l.pending).collect();
            sys::futex_wait_any(&words, remaining)
        }
    };
    r.map_err(|e| os_err("waiting on event channels", &e))
}

/// Whether no line has its pending bit set (after a wakeup: then the
/// wakeup came from an edge left over, or from a peer writing an eventfd
/// itself, and the eventfd counters are reset).
fn nothing_pending(lines: &[EventLine<'_>]) -> bool {
    lines.iter().all(|l| l.pending.load(Ordering::SeqCst) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An emulated hypervisor in a directory of its own (named after
    /// `tag`) with domains 1 and 2 joined.
    fn two_domains(tag: &str) -> (std::path::PathBuf, crate::HostedHypervisor, HostedPlatform, HostedPlatform) {
        let dir = std::env::temp_dir().join(format!("hosted-evtchn-{tag}-{}", std::process::id()));
        let hv = crate::HostedHypervisor::create(&dir).unwrap();
        let a = hv.join(DomId(1)).unwrap();
        let b = hv.join(DomId(2)).unwrap();
        (dir, hv, a, b)
    }

    #[test]
    fn binding_words_round_trip() {
        for b in [
            Binding::Free,
            Binding::Unbound { remote: 7 },
            Binding::Interdomain { remote: 0x7FEF, port: (NR_PORTS - 1) as u16 },
        ] {
            for seq in [0, 1, 0xFF_FFFF, 0x1FF_FFFF] {
                let (d, s) = Binding::decode(b.encode(seq)).expect("valid word");
                assert_eq!(d, b);
                assert_eq!(s, seq & 0xFF_FFFF);
            }
        }
        assert_eq!(Binding::decode(3 << 56), None);
        assert_eq!(Binding::decode((ST_INTERDOMAIN << 56) | u64::from(NR_PORTS)), None);
        assert_eq!(Binding::decode(ST_INTERDOMAIN << 56), None);
    }

    /// A peer that scribbles on our binding words and lines: every
    /// operation fails cleanly or ignores it, nothing panics.
    #[test]
    fn hostile_writes_to_our_event_page_are_contained() {
        let (dir, hv, a, b) = two_domains("unit");
        let pa = a.alloc_unbound(DomId(2)).unwrap();
        let pb = b.bind_interdomain(DomId(1), pa).unwrap();
        // B's view of A's event page, as the emulated hypervisor maps it.
        let a_page = b.inner.peer(DomId(1)).unwrap().events;
        let word = a_page.binding(pa.0).unwrap();
        let good = word.load(Ordering::Acquire);

        // Rebinding A's port to a third domain: refused as corrupt.
        word.store(Binding::Interdomain { remote: 3, port: 5 }.encode(9), Ordering::Release);
        assert!(matches!(a.notify(pa), Err(PlatformError::Os { .. })));
        for garbage in [u64::MAX, 0, ST_INTERDOMAIN << 56, (7 << 56) | 1] {
            word.store(garbage, Ordering::Release);
            assert!(a.notify(pa).is_err(), "{garbage:#x}");
            assert!(a.block(pa, Some(1_000)).is_err());
            assert!(!a.poll(pa).unwrap(), "poll only reads the pending bit");
        }
        word.store(good, Ordering::Release);
        a.notify(pa).unwrap();
        assert!(b.poll(pb).unwrap());

        // A free port made to look bound stays closed for A.
        let free = Port(pa.0 + 7);
        a_page.binding(free.0).unwrap().store(Binding::Interdomain { remote: 2, port: 1 }.encode(1), Ordering::Release);
        assert_eq!(a.poll(free), Err(PlatformError::BadPort(free)));
        assert_eq!(a.notify(free), Err(PlatformError::BadPort(free)));

        // A huge waiting count only costs A's peer a needless wakeup.
        let line = a_page.line(pa.0).unwrap();
        line.waiting.store(u32::MAX, Ordering::Release);
        line.pending.store(0xDEAD, Ordering::Release);
        b.notify(pb).unwrap();
        assert!(a.block(pa, Some(1_000_000)).unwrap());
        line.waiting.store(0, Ordering::Release);

        // A corrupt word does not stop A from closing the port.
        word.store(u64::MAX, Ordering::Release);
        a.close(pa).unwrap();
        assert_eq!(a.poll(pa), Err(PlatformError::BadPort(pa)));
        drop((a, b, hv));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An external wait: a notify already pending returns at once without
    /// sleeping; one sent while the caller sleeps in its own wait (here a
    /// `poll` on the eventfd, as the io_uring does) makes the eventfd
    /// readable and is reported; a port allocated again is refused.
    #[test]
    fn an_external_wait_sees_notifies_before_and_during_its_sleep() {
        let (dir, hv, a, b) = two_domains("ext");
        let pa = a.alloc_unbound(DomId(2)).unwrap();
        let pb = b.bind_interdomain(DomId(1), pa).unwrap();
        // Binding marks the new local port pending (as Xen does): clear it.
        let _ = b.poll(pb);
        let w = a.external_wait(pa).unwrap();
        let readable = |timeout: Option<Duration>| sys::poll_readable(&[w.fd()], timeout).unwrap();

        // Pending before: no sleep.
        b.notify(pb).unwrap();
        let mut slept = false;
        let pending = a.wait_external(&w, || {
            slept = true;
            Ok(())
        });
        assert!(pending.unwrap());
        assert!(!slept);

        // Nothing pending: the sleep runs, and a notify sent while this
        // thread is announced as a waiter writes the eventfd.
        let before = b.event_stats().wakeups_sent;
        let woke = a
            .wait_external(&w, || {
                assert_eq!(b.waiters(DomId(1), pa), Some(1));
                b.notify(pb).unwrap();
                assert_eq!(readable(Some(Duration::from_secs(5))), vec![0]);
                Ok(())
            })
            .unwrap();
        assert!(woke);
        assert_eq!(b.event_stats().wakeups_sent, before + 1);
        assert_eq!(b.waiters(DomId(1), pa), Some(0));
        w.drain();
        assert!(readable(Some(Duration::ZERO)).is_empty(), "drained");

        // Nothing comes: the sleep's own end, nothing pending.
        assert!(!a.wait_external(&w, || Ok(())).unwrap());

        // Closed and allocated again: another eventfd, refused.
        a.close(pa).unwrap();
        let again = a.alloc_unbound(DomId(2)).unwrap();
        assert_eq!(again, pa);
        assert!(matches!(a.wait_external(&w, || Ok(())), Err(PlatformError::InvalidRequest { .. })));
        drop((a, b, hv));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A thread asleep in `block` (on the futex of the pending word) and
    /// one asleep in an external wait (on the eventfd) on the same port are
    /// counted apart in `waiting`, and one notify wakes both: a futex wake
    /// and an eventfd write. The first to look takes the event.
    #[test]
    fn one_notify_wakes_a_futex_sleeper_and_an_eventfd_sleeper_alike() {
        let (dir, hv, a, b) = two_domains("both");
        let pa = a.alloc_unbound(DomId(2)).unwrap();
        let pb = b.bind_interdomain(DomId(1), pa).unwrap();
        let _ = b.poll(pb);
        let peer = b.inner.peer(DomId(1)).unwrap();
        let line = peer.events.line(pa.0).unwrap();
        let w = a.external_wait(pa).unwrap();
        let before = b.event_stats().wakeups_sent;
        std::thread::scope(|s| {
            let blocked = s.spawn(|| a.block(pa, Some(20_000_000_000)));
            let pending_after = a
                .wait_external(&w, || {
                    // Both announced: the blocked thread and this one.
                    let end = Instant::now() + Duration::from_secs(10);
                    while b.waiters(DomId(1), pa) != Some(2) && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    assert_eq!(line.waiting.load(Ordering::SeqCst), WAIT_FUTEX + WAIT_FD);
                    b.notify(pb).unwrap();
                    // The eventfd was written, and the blocked thread woke
                    // and took the event before this one looked.
                    assert_eq!(sys::poll_readable(&[w.fd()], Some(Duration::from_secs(5))).unwrap(), vec![0]);
                    assert_eq!(blocked.join().unwrap(), Ok(true));
                    Ok(())
                })
                .unwrap();
            assert!(!pending_after, "the event was taken once");
        });
        assert_eq!(b.event_stats().wakeups_sent, before + 2, "a futex wake and an eventfd write");
        assert_eq!(b.waiters(DomId(1), pa), Some(0), "both withdrew");
        w.drain();
        drop((peer, a, b, hv));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A port set wakes on a notify of any of its ports, and a port of it
    /// closed and allocated again is refused rather than waited on.
    #[test]
    fn a_port_set_wakes_on_each_port_and_refuses_a_port_allocated_again() {
        let (dir, hv, a, b) = two_domains("set");
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..3 {
            let p = a.alloc_unbound(DomId(2)).unwrap();
            theirs.push(b.bind_interdomain(DomId(1), p).unwrap());
            ours.push(p);
        }
        // Binding marks the new ports pending: take those first.
        for &p in &ours {
            a.poll(p).unwrap();
        }
        let set = a.port_set(&ours).unwrap();
        assert_eq!(a.block_set(&set, Some(20_000_000)).unwrap(), None, "nothing pending: a timeout");
        // Each port wakes a sleeper, whichever it is, and only once.
        for (i, &q) in theirs.iter().enumerate() {
            let (b2, port, target) = (b.clone(), q, ours[i]);
            let t = std::thread::spawn(move || {
                // Notify once the sleeper has announced itself on the port.
                let end = Instant::now() + Duration::from_secs(10);
                while b2.waiters(DomId(1), target).unwrap_or(0) == 0 && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(1));
                }
                b2.notify(port).unwrap();
            });
            assert_eq!(a.block_set(&set, Some(10_000_000_000)).unwrap(), Some(ours[i]));
            t.join().unwrap();
            assert!(!a.poll(ours[i]).unwrap(), "the pending bit was taken");
        }
        // A pending port is returned without sleeping.
        b.notify(theirs[2]).unwrap();
        assert_eq!(a.block_set(&set, Some(0)).unwrap(), Some(ours[2]));
        // A port closed and allocated again has a new eventfd: the set is
        // refused, not left waiting on the old one.
        a.close(ours[1]).unwrap();
        let again = a.alloc_unbound(DomId(2)).unwrap();
        assert_eq!(again, ours[1]);
        assert!(matches!(a.block_set(&set, Some(0)), Err(PlatformError::InvalidRequest { .. })));
        assert!(a.port_set(&[]).is_err());
        drop((set, a, b, hv));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A notify that read its binding word before the peer's departure was
    /// handled (simulated by writing the old word back) reaches neither a
    /// new incarnation of the peer's domid, whether the binding was made
    /// by us or by the peer, and whether or not we had notified before.
    #[test]
    fn notify_delivers_only_to_the_incarnation_bound_to() {
        let (dir, hv, a, b) = two_domains("inc");
        // pa: offered by A, bound by B, notified before B goes.
        let pa = a.alloc_unbound(DomId(2)).unwrap();
        let pb = b.bind_interdomain(DomId(1), pa).unwrap();
        a.notify(pa).unwrap();
        assert!(b.poll(pb).unwrap());
        // qa: offered by A, bound by B, never notified.
        let qa = a.alloc_unbound(DomId(2)).unwrap();
        let qb = b.bind_interdomain(DomId(1), qa).unwrap();
        // ra: A bound to B's port.
        let rb = b.alloc_unbound(DomId(1)).unwrap();
        let ra = a.bind_interdomain(DomId(2), rb).unwrap();
        let words: Vec<(Port, u64)> =
            [pa, qa, ra].iter().map(|&p| (p, a.inner.own_binding(p).unwrap().load(Ordering::Acquire))).collect();

        drop(b);
        let deadline = Instant::now() + Duration::from_secs(10);
        let b2 = loop {
            match hv.join(DomId(2)) {
                Ok(b2) => break b2,
                Err(crate::HostedError::DomidTaken(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("{e}"),
            }
        };
        // The new dom2's ports have the numbers the old one's had.
        let mut fresh = Vec::new();
        while fresh.len() < 3 {
            fresh.push(b2.alloc_unbound(DomId(1)).unwrap());
        }
        assert_eq!(fresh, vec![pb, qb, rb]);
        for (p, w) in words {
            a.inner.own_binding(p).unwrap().store(w, Ordering::Release);
            a.notify(p).unwrap();
            for &f in &fresh {
                assert!(!b2.poll(f).unwrap(), "notify on {p} reached the new dom2's {f}");
            }
            // And the stale binding was reset: unbound, offered to dom2.
            let now = a.inner.own_binding(p).unwrap().load(Ordering::Acquire);
            assert_eq!(Binding::decode(now).map(|(b, _)| b), Some(Binding::Unbound { remote: 2 }), "{p}");
        }
        // The new dom2 can bind A's ports again.
        let again = b2.bind_interdomain(DomId(1), pa).unwrap();
        assert!(b2.poll(again).unwrap());
        a.notify(pa).unwrap();
        assert!(b2.poll(again).unwrap());
        drop((a, b2, hv));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn layout_fits() {
        assert_eq!(EVENTS_OFFSET % PAGE, 0);
        assert_eq!(EVENT_PAGE_BYTES % PAGE, 0);
    }
}
