//! An in-memory platform for unit tests, fuzzing and examples (feature
//! `fake`): heap pages with made-up frame numbers, a heap grant table that a
//! simulated peer can map through [`crate::emulated::ForeignTable`], and
//! event channels between domains that share one [`FakeEventHub`].
//! A blocked waiter sleeps on a condition variable; time is the host's
//! monotonic clock, or a [`FakeClock`] that the test advances by hand.
//! Needs `std` (threads and the clock).

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use core::time::Duration;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::abi::{GrantEntryV1, PAGE_SIZE};
use crate::emulated::ForeignTable;
use crate::platform::{
    Clock, DomId, EventChannels, Gfn, GrantTableFrames, PageAllocator, Platform, PlatformError,
    Port, SharedPages,
};
use crate::ring::RingMemory;
use crate::table::GrantTable;

static NEXT_GFN: AtomicU64 = AtomicU64::new(0x1000);

/// Zeroed heap pages with made-up frame numbers.
pub struct FakePages {
    ptr: NonNull<u8>,
    pages: usize,
    first_gfn: u64,
}

// SAFETY: plain heap memory owned by this value.
unsafe impl Send for FakePages {}

impl FakePages {
    fn layout(pages: usize) -> Option<Layout> {
        Layout::from_size_align(pages.checked_mul(PAGE_SIZE)?, PAGE_SIZE).ok()
    }

    /// Allocates `pages` zeroed pages.
    pub fn new(pages: usize) -> Result<Self, PlatformError> {
        let layout = Self::layout(pages.max(1)).ok_or(PlatformError::OutOfMemory { pages })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(PlatformError::OutOfMemory { pages })?;
        // Every page allocated gets its own frame numbers (zero pages ask
        // for one page).
        let first_gfn = NEXT_GFN.fetch_add(pages.max(1) as u64, Ordering::Relaxed);
        Ok(FakePages {
            ptr,
            pages: pages.max(1),
            first_gfn,
        })
    }
}

impl Drop for FakePages {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.pages) {
            // SAFETY: allocated in `new` with this very layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

// SAFETY: page-aligned, zeroed, owned heap memory of `pages` pages.
unsafe impl SharedPages for FakePages {
    fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    fn page_count(&self) -> usize {
        self.pages
    }
    fn gfn(&self, index: usize) -> Option<Gfn> {
        (index < self.pages).then(|| Gfn(self.first_gfn + index as u64))
    }
}

// SAFETY: page-aligned heap memory valid for `pages * PAGE_SIZE` bytes while
// `self` lives; tests access it only through rings.
unsafe impl RingMemory for FakePages {
    fn ring_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    fn ring_len(&self) -> usize {
        self.pages * PAGE_SIZE
    }
}

/// A heap grant table. Not `Clone`: one [`GrantTable`] owns it (the
/// [`GrantTableFrames`] contract); tests and fuzzing look at it from the
/// peer's side through [`FakeGrantFrames::peer`].
pub struct FakeGrantFrames {
    mem: Arc<FakeGrantMem>,
}

/// The peer's (and its hypervisor's) side of a [`FakeGrantFrames`]: reads
/// entries, maps and copies grants, and can scribble on flags as a hostile
/// hypervisor view could. Keeps the entries alive.
#[derive(Clone)]
pub struct FakeGrantPeer {
    mem: Arc<FakeGrantMem>,
}

struct FakeGrantMem {
    ptr: NonNull<GrantEntryV1>,
    count: u32,
    _pages: FakePages,
}

// SAFETY: the entries are accessed only atomically.
unsafe impl Send for FakeGrantMem {}
// SAFETY: as above.
unsafe impl Sync for FakeGrantMem {}

impl FakeGrantFrames {
    /// A table of `frames` pages of v1 entries.
    pub fn new(frames: usize) -> Result<Self, PlatformError> {
        let per_page = (PAGE_SIZE / core::mem::size_of::<GrantEntryV1>()) as u32;
        Self::with_entries(
            u32::try_from(frames)
                .map_err(|_| PlatformError::OutOfMemory { pages: frames })?
                .saturating_mul(per_page),
        )
    }

    /// A table of exactly `count` entries (at least one page is allocated):
    /// small tables keep slow interpreters (Miri) fast.
    pub fn with_entries(count: u32) -> Result<Self, PlatformError> {
        let bytes = count as usize * core::mem::size_of::<GrantEntryV1>();
        let pages = FakePages::new(bytes.div_ceil(PAGE_SIZE).max(1))?;
        let ptr = pages.as_ptr().cast::<GrantEntryV1>();
        Ok(FakeGrantFrames {
            mem: Arc::new(FakeGrantMem {
                ptr,
                count,
                _pages: pages,
            }),
        })
    }

    /// A handle on these entries from the peer's side.
    pub fn peer(&self) -> FakeGrantPeer {
        FakeGrantPeer {
            mem: self.mem.clone(),
        }
    }

    /// The table as a peer's hypervisor sees it, to map and copy grants.
    pub fn foreign_view(&self) -> ForeignTable {
        self.peer().foreign_view()
    }
}

impl FakeGrantPeer {
    /// The table as the peer's hypervisor sees it, to map and copy grants;
    /// the view keeps the entries alive.
    pub fn foreign_view(&self) -> ForeignTable {
        let owner: Arc<dyn core::any::Any + Send + Sync> = self.mem.clone();
        // SAFETY: `count` aligned entries owned by `FakeGrantMem`, which the
        // view keeps alive through `owner`; everything accesses the entries
        // atomically.
        unsafe { ForeignTable::owning(self.mem.ptr, self.mem.count, owner) }
    }

    /// Overwrites an entry's flags, as a hostile or buggy hypervisor view
    /// could: for fuzzing end-access against arbitrary flag words.
    pub fn poke_flags(&self, gref: u32, flags: u16) {
        if let Some(a) = self.word(gref, 0) {
            // Flags and domid are one 32-bit word everywhere (see `table`).
            let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some((w & 0xFFFF_0000) | u32::from(flags))
            });
        }
    }

    /// Reads an entry (a copy, in the two 32-bit atomic loads the entry is
    /// written with).
    pub fn entry(&self, gref: u32) -> Option<GrantEntryV1> {
        let head = self.word(gref, 0)?.load(Ordering::Acquire);
        let frame = self.word(gref, 1)?.load(Ordering::Acquire);
        Some(GrantEntryV1 {
            flags: head as u16,
            domid: (head >> 16) as u16,
            frame,
        })
    }

    /// Word `word` (0: flags and domid, 1: frame) of entry `gref`.
    fn word(&self, gref: u32, word: usize) -> Option<&AtomicU32> {
        (gref < self.mem.count && word < 2).then(|| {
            // SAFETY: an in-range, 4-byte aligned word of a live entry (the
            // `Arc` keeps the memory), only ever accessed atomically.
            unsafe { AtomicU32::from_ptr(self.mem.ptr.as_ptr().add(gref as usize).cast::<u32>().add(word)) }
        })
    }
}

// SAFETY: `count` aligned entries that live as long as the `Arc`.
unsafe impl GrantTableFrames for FakeGrantFrames {
    fn entries(&self) -> NonNull<GrantEntryV1> {
        self.mem.ptr
    }
    fn entry_count(&self) -> u32 {
        self.mem.count
    }
}

const HUB_PORTS: usize = 256;

struct FakePort {
    owner: AtomicU32,
    /// `u32::MAX`: free.
    remote: AtomicU32,
    pending: AtomicBool,
    masked: AtomicBool,
}

const FREE: u32 = u32::MAX;
const UNBOUND: u32 = u32::MAX - 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The mutex guards no data (`()`): a panic while holding it leaves
    // nothing inconsistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the waiters in [`EventChannels::block_any`] sleep on. Notifies,
/// closes and advances of a [`FakeClock`] wake them.
///
/// A notifier takes the lock only when someone may be waiting: the waiter
/// raises `waiters` before its last look at the pending bits (and the
/// clock), the notifier sets the pending bit (or moves the clock) before it
/// reads `waiters`, all sequentially consistent. Either the waiter sees the
/// event, or the notifier sees the waiter; it then takes the lock, which
/// the waiter holds from its last look until it sleeps on the condition
/// variable, so the wakeup cannot fall between the two.
struct Wakeup {
    waiters: AtomicU32,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Wakeup {
    fn new() -> Arc<Self> {
        Arc::new(Wakeup {
            waiters: AtomicU32::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        })
    }

    /// Wakes every waiter; the event (pending bit, clock) is already
    /// published with a sequentially consistent write.
    fn wake_all(&self) {
        if self.waiters.load(Ordering::SeqCst) != 0 {
            drop(lock(&self.lock));
            self.cv.notify_all();
        }
    }
}

/// A clock that moves only when a test moves it: deterministic timeouts.
///
/// Give it to a hub ([`FakeEventHub::with_clock`]) and the hub's domains
/// read it as their [`Clock`]; a thread blocked in
/// [`EventChannels::block_any`] with a timeout then returns `None` only
/// once [`FakeClock::advance`] has moved the clock past its deadline, and
/// never because real time went by. It is also a [`Clock`] on its own, for
/// code that only needs time. Clones share one clock.
#[derive(Clone)]
pub struct FakeClock {
    shared: Arc<FakeClockShared>,
}

struct FakeClockShared {
    ns: AtomicU64,
    wakeup: Arc<Wakeup>,
}

impl FakeClock {
    /// A clock that reads 0.
    pub fn new() -> Self {
        Self::starting_at(0)
    }

    /// A clock that reads `ns`.
    pub fn starting_at(ns: u64) -> Self {
        FakeClock {
            shared: Arc::new(FakeClockShared {
                ns: AtomicU64::new(ns),
                wakeup: Wakeup::new(),
            }),
        }
    }

    /// Moves the clock forward by `ns` (it stops at `u64::MAX`) and wakes
    /// the threads blocked in the hubs that use it, so those whose deadline
    /// passed return.
    pub fn advance(&self, ns: u64) {
        // SeqCst: published before `wake_all` reads `waiters` (see `Wakeup`).
        let _ = self
            .shared
            .ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(t.saturating_add(ns)));
        self.shared.wakeup.wake_all();
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.shared.ns.load(Ordering::SeqCst)
    }
}

/// The host's monotonic clock, in nanoseconds since the value was made:
/// a [`Clock`] for tests that want real time.
#[derive(Clone, Copy, Debug)]
pub struct HostClock {
    origin: Instant,
}

impl HostClock {
    /// A clock that reads 0 now.
    pub fn new() -> Self {
        HostClock {
            origin: Instant::now(),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Where a hub's time comes from.
enum Time {
    Host(HostClock),
    Fake(FakeClock),
}

impl Time {
    fn now_ns(&self) -> u64 {
        match self {
            Time::Host(c) => c.now_ns(),
            Time::Fake(c) => c.now_ns(),
        }
    }
}

/// Event channel ports of every fake domain in a test, and the clock they
/// share.
pub struct FakeEventHub {
    ports: Vec<FakePort>,
    /// Who may bind to an unbound port.
    allowed: Vec<AtomicU32>,
    wakeup: Arc<Wakeup>,
    time: Time,
}

impl FakeEventHub {
    /// An empty hub whose domains read the host's monotonic clock: a
    /// timeout is real time.
    pub fn new() -> Arc<Self> {
        Self::build(Wakeup::new(), Time::Host(HostClock::new()))
    }

    /// An empty hub whose domains read `clock`: timeouts pass only when
    /// the test advances it (a wait with a timeout on a clock nobody
    /// advances lasts until an event comes).
    pub fn with_clock(clock: &FakeClock) -> Arc<Self> {
        Self::build(clock.shared.wakeup.clone(), Time::Fake(clock.clone()))
    }

    /// Threads blocked in [`EventChannels::block_any`] (or `block`) on
    /// this hub's domains, counted once they have read the clock for their
    /// deadline: a test advances a [`FakeClock`] or notifies once this says
    /// the waiter is there. Hubs sharing a clock count each other's
    /// waiters.
    pub fn waiters(&self) -> u32 {
        self.wakeup.waiters.load(Ordering::SeqCst)
    }

    fn build(wakeup: Arc<Wakeup>, time: Time) -> Arc<Self> {
        let ports = (0..HUB_PORTS)
            .map(|_| FakePort {
                owner: AtomicU32::new(FREE),
                remote: AtomicU32::new(FREE),
                pending: AtomicBool::new(false),
                masked: AtomicBool::new(false),
            })
            .collect();
        let allowed = (0..HUB_PORTS).map(|_| AtomicU32::new(FREE)).collect();
        Arc::new(FakeEventHub {
            ports,
            allowed,
            wakeup,
            time,
        })
    }

    fn claim(&self, owner: DomId) -> Result<u32, PlatformError> {
        for (i, p) in self.ports.iter().enumerate().skip(1) {
            if p.owner
                .compare_exchange(FREE, owner.0 as u32, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                p.pending.store(false, Ordering::Relaxed);
                p.masked.store(false, Ordering::Relaxed);
                return Ok(i as u32);
            }
        }
        Err(PlatformError::NoFreePorts)
    }

    fn port(&self, owner: DomId, port: Port) -> Result<&FakePort, PlatformError> {
        self.ports
            .get(port.0 as usize)
            .filter(|p| p.owner.load(Ordering::Acquire) == owner.0 as u32)
            .ok_or(PlatformError::BadPort(port))
    }

    /// The first of `ports` that is pending, its bit cleared; every port
    /// must be open for `owner`, whether or not one is pending.
    fn take_pending(&self, owner: DomId, ports: &[Port]) -> Result<Option<Port>, PlatformError> {
        // SeqCst, as every read here: the waiter's side of the handshake in
        // `Wakeup` (a close or a notify is seen, or wakes us).
        let open = |port: Port| {
            self.ports
                .get(port.0 as usize)
                .filter(|p| p.owner.load(Ordering::SeqCst) == u32::from(owner.0))
                .ok_or(PlatformError::BadPort(port))
        };
        for &port in ports {
            open(port)?;
        }
        for &port in ports {
            let p = open(port)?;
            // Read first, swap only when set.
            if p.pending.load(Ordering::SeqCst) && p.pending.swap(false, Ordering::SeqCst) {
                return Ok(Some(port));
            }
        }
        Ok(None)
    }
}

/// A fake domain.
pub struct FakePlatform {
    domid: DomId,
    hub: Arc<FakeEventHub>,
    grants: Arc<GrantTable<FakeGrantFrames>>,
}

impl FakePlatform {
    /// A domain `domid` whose event channels live in `hub` and whose grant
    /// table is `frames` (keep a [`FakeGrantFrames::foreign_view`] of them
    /// to play the peer's hypervisor).
    pub fn new(domid: DomId, hub: Arc<FakeEventHub>, frames: FakeGrantFrames) -> Self {
        FakePlatform {
            domid,
            hub,
            grants: Arc::new(GrantTable::new(frames)),
        }
    }
}

impl PageAllocator for FakePlatform {
    type Pages = FakePages;
    fn alloc_zeroed_pages(&self, count: usize) -> Result<FakePages, PlatformError> {
        FakePages::new(count)
    }
}

impl EventChannels for FakePlatform {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError> {
        let p = self.hub.claim(self.domid)?;
        self.hub.ports[p as usize]
            .remote
            .store(UNBOUND, Ordering::Release);
        self.hub.allowed[p as usize].store(remote.0 as u32, Ordering::Release);
        Ok(Port(p))
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
        let rp = self
            .hub
            .port(remote, remote_port)
            .map_err(|_| PlatformError::BindRefused {
                remote,
                reason: "no such port",
            })?;
        if self.hub.allowed[remote_port.0 as usize].load(Ordering::Acquire) != self.domid.0 as u32 {
            return Err(PlatformError::BindRefused {
                remote,
                reason: "port is not offered to this domain",
            });
        }
        let local = self.hub.claim(self.domid)?;
        if rp
            .remote
            .compare_exchange(UNBOUND, local, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.hub.ports[local as usize]
                .owner
                .store(FREE, Ordering::Release);
            return Err(PlatformError::BindRefused {
                remote,
                reason: "port is already bound",
            });
        }
        self.hub.ports[local as usize]
            .remote
            .store(remote_port.0, Ordering::Release);
        Ok(Port(local))
    }

    fn notify(&self, port: Port) -> Result<(), PlatformError> {
        let p = self.hub.port(self.domid, port)?;
        let remote = p.remote.load(Ordering::Acquire);
        if let Some(r) = self.hub.ports.get(remote as usize) {
            // SeqCst: the notifier's side of the handshake in `Wakeup`.
            r.pending.store(true, Ordering::SeqCst);
            self.hub.wakeup.wake_all();
        }
        Ok(())
    }

    fn mask(&self, port: Port) -> Result<(), PlatformError> {
        self.hub
            .port(self.domid, port)?
            .masked
            .store(true, Ordering::Release);
        Ok(())
    }

    fn unmask(&self, port: Port) -> Result<(), PlatformError> {
        self.hub
            .port(self.domid, port)?
            .masked
            .store(false, Ordering::Release);
        Ok(())
    }

    fn poll(&self, port: Port) -> Result<bool, PlatformError> {
        Ok(self
            .hub
            .port(self.domid, port)?
            .pending
            .swap(false, Ordering::AcqRel))
    }

    fn block(&self, port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError> {
        Ok(self.block_any(&[port], timeout_ns)?.is_some())
    }

    fn block_any(&self, ports: &[Port], timeout_ns: Option<u64>) -> Result<Option<Port>, PlatformError> {
        if ports.is_empty() {
            return Err(PlatformError::InvalidRequest {
                op: "block_any",
                reason: "no ports to wait on; pass at least one open port",
            });
        }
        // As Xen's SCHEDOP_poll: a pending port ends the wait, masked or
        // not (the mask only holds back upcalls).
        if let Some(p) = self.hub.take_pending(self.domid, ports)? {
            return Ok(Some(p));
        }
        let deadline = timeout_ns.map(|t| self.hub.time.now_ns().saturating_add(t));
        let w = &self.hub.wakeup;
        w.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = lock(&w.lock);
        let r = loop {
            // Also notices a port closed while we slept.
            match self.hub.take_pending(self.domid, ports) {
                Ok(None) => {}
                other => break other,
            }
            let now = self.hub.time.now_ns();
            let remaining = match deadline {
                Some(d) if now >= d => break Ok(None),
                Some(d) => Some(d - now),
                None => None,
            };
            guard = match (&self.hub.time, remaining) {
                (Time::Host(_), Some(ns)) => {
                    w.cv.wait_timeout(guard, Duration::from_nanos(ns))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                // A fake clock's deadline passes when the test advances it,
                // which wakes us.
                _ => w.cv.wait(guard).unwrap_or_else(PoisonError::into_inner),
            };
        };
        drop(guard);
        w.waiters.fetch_sub(1, Ordering::SeqCst);
        r
    }

    fn close(&self, port: Port) -> Result<(), PlatformError> {
        let p = self.hub.port(self.domid, port)?;
        let remote = p.remote.swap(FREE, Ordering::AcqRel);
        if let Some(r) = self.hub.ports.get(remote as usize) {
            let _ = r
                .remote
                .compare_exchange(port.0, UNBOUND, Ordering::AcqRel, Ordering::Acquire);
        }
        p.owner.store(FREE, Ordering::SeqCst);
        // A thread blocked on the port returns with an error.
        self.hub.wakeup.wake_all();
        Ok(())
    }
}

impl Clock for FakePlatform {
    /// The hub's clock: the host's, or the [`FakeClock`] the hub was made
    /// with.
    fn now_ns(&self) -> u64 {
        self.hub.time.now_ns()
    }
}

impl Platform for FakePlatform {
    type GrantFrames = FakeGrantFrames;
    fn domid(&self) -> DomId {
        self.domid
    }
    fn grant_table(&self) -> Result<&Arc<GrantTable<FakeGrantFrames>>, PlatformError> {
        Ok(&self.grants)
    }
}

#[cfg(test)]
#[path = "tests/fake_events.rs"]
mod event_tests;
