//! An in-memory platform for unit tests, fuzzing and examples (feature
//! `fake`): heap pages with made-up frame numbers, a heap grant table that a
//! simulated peer can map through [`crate::emulated::ForeignTable`], and
//! event channels between domains that share one [`FakeEventHub`].
//! A blocked waiter sleeps on a condition variable; time is the host's
//! monotonic clock, or a [`FakeClock`] that the test advances by hand.
//! Needs `std` (threads and the clock).
//!
//! # The backend seam
//! Domains made with [`FakePlatform::with_grant_hub`] share a
//! [`FakeGrantHub`]: the fake machine's directory of grant tables and its
//! frame-to-memory map. Their pages are registered there, so a domain can
//! map, unmap and copy another's grants through
//! [`ForeignGrants`](crate::ForeignGrants) with Xen's checks and statuses,
//! and a backend runs against a frontend in one test process (and under
//! Miri). Limits of the fake: a multi-page mapping must name consecutive
//! frames of one allocation (a ring is one); a mapping keeps the memory it
//! maps alive even if its owner frees it (Xen would keep the page too).

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use core::time::Duration;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::abi::{
    GntCopyFlags, GntStatus, GnttabCopy, GrantEntryV1, GrantRefNum, DOMID_SELF, PAGE_SIZE,
};
use crate::emulated::ForeignTable;
use crate::foreign::{ForeignError, ForeignGrants, ForeignMapping, MapOp};
use crate::platform::{
    Clock, DomId, EventChannels, Gfn, GrantTableFrames, PageAllocator, Platform, PlatformError,
    Port, SharedPages,
};
use crate::ring::{RingMemory, MAX_RING_PAGES};
use crate::shared_mem;
use crate::table::{Access, GrantTable};

static NEXT_GFN: AtomicU64 = AtomicU64::new(0x1000);

/// A heap allocation of whole pages with its frame numbers; freed when the
/// last owner (the pages, or a mapping of them) goes.
struct FrameMem {
    ptr: NonNull<u8>,
    pages: usize,
    first_gfn: u64,
}

// SAFETY: plain heap memory owned by this value, only reached through raw
// pointers.
unsafe impl Send for FrameMem {}
// SAFETY: `&FrameMem` exposes only the address and sizes.
unsafe impl Sync for FrameMem {}

impl FrameMem {
    fn layout(pages: usize) -> Option<Layout> {
        Layout::from_size_align(pages.checked_mul(PAGE_SIZE)?, PAGE_SIZE).ok()
    }
}

impl Drop for FrameMem {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.pages) {
            // SAFETY: allocated in `FakePages::new` with this very layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// Zeroed heap pages with made-up frame numbers.
pub struct FakePages {
    mem: Arc<FrameMem>,
    /// The hub the frames are registered with, if any.
    hub: Option<Arc<FakeGrantHub>>,
}

impl FakePages {
    /// Allocates `pages` zeroed pages.
    pub fn new(pages: usize) -> Result<Self, PlatformError> {
        let layout = FrameMem::layout(pages.max(1)).ok_or(PlatformError::OutOfMemory { pages })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(PlatformError::OutOfMemory { pages })?;
        // Every page allocated gets its own frame numbers (zero pages ask
        // for one page).
        let first_gfn = NEXT_GFN.fetch_add(pages.max(1) as u64, Ordering::Relaxed);
        Ok(FakePages {
            mem: Arc::new(FrameMem {
                ptr,
                pages: pages.max(1),
                first_gfn,
            }),
            hub: None,
        })
    }

    /// Allocates `pages` zeroed pages of domain `owner`, registered in
    /// `hub` so that domains granted them can map them.
    pub fn new_in(
        pages: usize,
        hub: &Arc<FakeGrantHub>,
        owner: DomId,
    ) -> Result<Self, PlatformError> {
        let mut p = Self::new(pages)?;
        hub.register_frames(owner, &p.mem);
        p.hub = Some(hub.clone());
        Ok(p)
    }
}

impl Drop for FakePages {
    fn drop(&mut self) {
        if let Some(hub) = &self.hub {
            hub.unregister_frames(self.mem.first_gfn);
        }
    }
}

// SAFETY: page-aligned, zeroed, owned heap memory of `pages` pages, alive
// while `mem` is.
unsafe impl SharedPages for FakePages {
    fn as_ptr(&self) -> NonNull<u8> {
        self.mem.ptr
    }
    fn page_count(&self) -> usize {
        self.mem.pages
    }
    fn gfn(&self, index: usize) -> Option<Gfn> {
        (index < self.mem.pages).then(|| Gfn(self.mem.first_gfn + index as u64))
    }
}

// SAFETY: page-aligned heap memory valid for `pages * PAGE_SIZE` bytes while
// `self` lives; tests access it only through rings.
unsafe impl RingMemory for FakePages {
    fn ring_ptr(&self) -> NonNull<u8> {
        self.mem.ptr
    }
    fn ring_len(&self) -> usize {
        self.mem.pages * PAGE_SIZE
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

/// The entries, followed by one pin record per entry (see
/// [`crate::emulated`]).
struct FakeGrantMem {
    ptr: NonNull<GrantEntryV1>,
    pins: NonNull<u64>,
    count: u32,
    _pages: FakePages,
}

// SAFETY: the entries and pin records are accessed only atomically.
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
        // Entries, then as many 8-byte pin records.
        let pages = FakePages::new((2 * bytes).div_ceil(PAGE_SIZE).max(1))?;
        let ptr = pages.as_ptr().cast::<GrantEntryV1>();
        // SAFETY: `bytes` is inside the allocation of `2 * bytes` (rounded
        // up to pages), and a multiple of 8 from a page-aligned start.
        let pins = unsafe { pages.as_ptr().add(bytes) }.cast::<u64>();
        Ok(FakeGrantFrames {
            mem: Arc::new(FakeGrantMem {
                ptr,
                pins,
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
    /// The table as the peer's hypervisor sees it, with its pin records, to
    /// map and copy grants; the view keeps the entries alive.
    pub fn foreign_view(&self) -> ForeignTable {
        let owner: Arc<dyn core::any::Any + Send + Sync> = self.mem.clone();
        // SAFETY: `count` aligned entries and as many aligned pin records,
        // owned by `FakeGrantMem`, which the view keeps alive through
        // `owner`; everything accesses them atomically.
        unsafe { ForeignTable::with_pins(self.mem.ptr, self.mem.pins, self.mem.count, Some(owner)) }
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
            unsafe {
                AtomicU32::from_ptr(
                    self.mem
                        .ptr
                        .as_ptr()
                        .add(gref as usize)
                        .cast::<u32>()
                        .add(word),
                )
            }
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

/// A minimal spin lock (the fake has no OS to sleep on).
struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, which one thread
// holds at a time (the `locked` flag, acquired and released).
unsafe impl<T: Send> Sync for SpinLock<T> {}

struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> SpinLock<T> {
    const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    fn lock(&self) -> SpinGuard<'_, T> {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        SpinGuard { lock: self }
    }
}

impl<T> core::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock: no other reference to the value
        // exists until it is dropped.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> core::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only one.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

struct FrameRecord {
    pages: usize,
    owner: u16,
    mem: Weak<FrameMem>,
}

#[derive(Default)]
struct HubState {
    tables: BTreeMap<u16, Arc<ForeignTable>>,
    /// First frame of an allocation -> the allocation.
    frames: BTreeMap<u64, FrameRecord>,
}

/// The fake machine's directory of grant tables and frames, shared by the
/// domains of one test (see the module docs).
pub struct FakeGrantHub {
    state: SpinLock<HubState>,
}

impl FakeGrantHub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(FakeGrantHub {
            state: SpinLock::new(HubState {
                tables: BTreeMap::new(),
                frames: BTreeMap::new(),
            }),
        })
    }

    fn register_table(&self, domid: DomId, table: Arc<ForeignTable>) {
        self.state.lock().tables.insert(domid.0, table);
    }

    fn table(&self, domid: DomId) -> Option<Arc<ForeignTable>> {
        self.state.lock().tables.get(&domid.0).cloned()
    }

    fn register_frames(&self, owner: DomId, mem: &Arc<FrameMem>) {
        self.state.lock().frames.insert(
            mem.first_gfn,
            FrameRecord {
                pages: mem.pages,
                owner: owner.0,
                mem: Arc::downgrade(mem),
            },
        );
    }

    fn unregister_frames(&self, first_gfn: u64) {
        self.state.lock().frames.remove(&first_gfn);
    }

    /// The allocation holding frame `gfn` of domain `owner`, and the
    /// frame's page index in it: the fake machine's frame-to-memory lookup.
    fn frame(&self, owner: DomId, gfn: u64) -> Option<(Arc<FrameMem>, usize)> {
        let state = self.state.lock();
        let (&first, rec) = state.frames.range(..=gfn).next_back()?;
        let index = usize::try_from(gfn - first).ok()?;
        if rec.owner != owner.0 || index >= rec.pages {
            return None;
        }
        Some((rec.mem.upgrade()?, index))
    }

    /// Pages registered now (allocations of every domain in the hub).
    pub fn registered_pages(&self) -> usize {
        self.state.lock().frames.values().map(|r| r.pages).sum()
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
    /// The grant hub, for domains that map each other's grants.
    machine: Option<Arc<FakeGrantHub>>,
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
            machine: None,
        }
    }

    /// A domain that also joins `machine`: its grant table and pages are
    /// registered there, so the hub's other domains can map and copy its
    /// grants (and it theirs) through [`ForeignGrants`]. A domid registered
    /// twice replaces the first.
    pub fn with_grant_hub(
        domid: DomId,
        hub: Arc<FakeEventHub>,
        frames: FakeGrantFrames,
        machine: &Arc<FakeGrantHub>,
    ) -> Self {
        machine.register_table(domid, Arc::new(frames.foreign_view()));
        let mut p = Self::new(domid, hub, frames);
        p.machine = Some(machine.clone());
        p
    }
}

impl PageAllocator for FakePlatform {
    type Pages = FakePages;
    fn alloc_zeroed_pages(&self, count: usize) -> Result<FakePages, PlatformError> {
        match &self.machine {
            Some(m) => FakePages::new_in(count, m, self.domid),
            None => FakePages::new(count),
        }
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

/// Most pages one fake mapping may span.
const MAX_MAP_PAGES: usize = 1024;

/// Grants of another fake domain mapped into this one (its memory, shared:
/// the fake has one address space). Unpinned on drop.
pub struct FakeMapping {
    granter: DomId,
    grefs: Vec<GrantRefNum>,
    access: Access,
    ptr: NonNull<u8>,
    len: usize,
    /// One per page: unpinned when the mapping drops.
    _pins: Vec<Pin>,
    /// Keeps the mapped memory alive (dropped after the pins).
    _mem: Arc<FrameMem>,
}

// SAFETY: `ptr` points into `_mem`, which moves with the mapping; the
// memory is only reached through raw pointers.
unsafe impl Send for FakeMapping {}

impl core::fmt::Debug for FakeMapping {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FakeMapping")
            .field("granter", &self.granter)
            .field("grefs", &self.grefs)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

// SAFETY: `ptr..ptr + len` lies inside `_mem`'s allocation (checked when
// mapped), which lives as long as `self`; readable, and writable (heap
// memory) whatever `access` says; never referenced.
unsafe impl ForeignMapping for FakeMapping {
    fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn access(&self) -> Access {
        self.access
    }
    fn granter(&self) -> DomId {
        self.granter
    }
    fn grefs(&self) -> &[GrantRefNum] {
        &self.grefs
    }
}

/// A read-write fake mapping of a ring's pages.
#[derive(Debug)]
pub struct FakeRingMapping(FakeMapping);

impl FakeRingMapping {
    /// The mapping.
    pub fn mapping(&self) -> &FakeMapping {
        &self.0
    }
}

// SAFETY: a read-write `FakeMapping` of whole pages (page-aligned: frames
// start at page boundaries of a page-aligned allocation), valid while it
// lives, reached by rings only atomically or volatilely.
unsafe impl RingMemory for FakeRingMapping {
    fn ring_ptr(&self) -> NonNull<u8> {
        self.0.ptr
    }
    fn ring_len(&self) -> usize {
        self.0.len
    }
}

/// A pin held for the length of an operation; unpinned on drop.
struct Pin {
    table: Arc<ForeignTable>,
    gref: GrantRefNum,
    mapper: DomId,
    access: Access,
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Err(e) = self.table.unpin(self.gref, self.mapper, self.access) {
            log::error!("{}: unpinning grant ref {}: {e}", self.mapper, self.gref);
        }
    }
}

impl FakePlatform {
    fn machine_or(
        &self,
        granter: DomId,
        gref: GrantRefNum,
    ) -> Result<&Arc<FakeGrantHub>, ForeignError> {
        self.machine.as_ref().ok_or(ForeignError {
            granter,
            gref,
            status: GntStatus::BadDomain,
        })
    }

    /// Maps `refs` of `granter` as one region (consecutive frames of one
    /// allocation).
    fn map_pages(
        &self,
        granter: DomId,
        refs: &[GrantRefNum],
        access: Access,
    ) -> Result<FakeMapping, ForeignError> {
        let first = refs.first().copied().unwrap_or(0);
        let fail = |gref, status| ForeignError {
            granter,
            gref,
            status,
        };
        if refs.is_empty() || refs.len() > MAX_MAP_PAGES {
            return Err(fail(first, GntStatus::GeneralError));
        }
        let machine = self.machine_or(granter, first)?;
        let table = machine
            .table(granter)
            .ok_or(fail(first, GntStatus::BadDomain))?;
        let mut pins = Vec::with_capacity(refs.len());
        let mut frames = Vec::with_capacity(refs.len());
        for &gref in refs {
            let frame = table
                .pin(gref, self.domid, access)
                .map_err(|why| fail(gref, why.status()))?;
            pins.push(Pin {
                table: table.clone(),
                gref,
                mapper: self.domid,
                access,
            });
            frames.push(u64::from(frame));
        }
        let (mem, index) = machine
            .frame(granter, frames[0])
            .ok_or(fail(first, GntStatus::BadPage))?;
        for (i, (&f, &gref)) in frames.iter().zip(refs).enumerate() {
            if f != frames[0] + i as u64 || index + i >= mem.pages {
                log::warn!(
                    "{}: the fake platform maps only consecutive frames of one allocation as one region (ref {gref})",
                    self.domid
                );
                return Err(fail(gref, GntStatus::GeneralError));
            }
        }
        // SAFETY: `index + refs.len() <= mem.pages` (checked above), so the
        // offset is inside the allocation.
        let ptr = unsafe { mem.ptr.add(index * PAGE_SIZE) };
        Ok(FakeMapping {
            granter,
            grefs: refs.to_vec(),
            access,
            ptr,
            len: refs.len() * PAGE_SIZE,
            _pins: pins,
            _mem: mem,
        })
    }

    /// One side of a copy: its memory (pinned for the copy if a grant).
    fn copy_side(
        &self,
        domid: u16,
        u: u64,
        is_gref: bool,
        access: Access,
    ) -> Result<(Option<Pin>, Arc<FrameMem>, usize), GntStatus> {
        let machine = self.machine.as_ref().ok_or(GntStatus::BadDomain)?;
        if !is_gref {
            let (mem, index) = machine.frame(self.domid, u).ok_or(GntStatus::BadPage)?;
            return Ok((None, mem, index));
        }
        let owner = if domid == DOMID_SELF {
            self.domid
        } else {
            DomId(domid)
        };
        let table = machine.table(owner).ok_or(GntStatus::BadDomain)?;
        let gref = GrantRefNum::try_from(u).map_err(|_| GntStatus::BadGntref)?;
        let frame = table
            .pin(gref, self.domid, access)
            .map_err(|why| why.status())?;
        let pin = Pin {
            table,
            gref,
            mapper: self.domid,
            access,
        };
        let (mem, index) = machine
            .frame(owner, u64::from(frame))
            .ok_or(GntStatus::BadPage)?;
        Ok((Some(pin), mem, index))
    }

    fn copy_one(&self, op: &GnttabCopy) -> Result<(), GntStatus> {
        let flags = GntCopyFlags::from_bits_retain(op.flags);
        let src_gref = flags.contains(GntCopyFlags::SOURCE_GREF);
        let dst_gref = flags.contains(GntCopyFlags::DEST_GREF);
        if (!src_gref && op.source.domid != DOMID_SELF)
            || (!dst_gref && op.dest.domid != DOMID_SELF)
        {
            return Err(GntStatus::PermissionDenied);
        }
        let (_src_pin, src_mem, src_index) =
            self.copy_side(op.source.domid, op.source.u, src_gref, Access::ReadOnly)?;
        let (_dst_pin, dst_mem, dst_index) =
            self.copy_side(op.dest.domid, op.dest.u, dst_gref, Access::ReadWrite)?;
        let len = usize::from(op.len);
        let (so, dof) = (usize::from(op.source.offset), usize::from(op.dest.offset));
        if so + len > PAGE_SIZE || dof + len > PAGE_SIZE {
            return Err(GntStatus::BadCopyArg);
        }
        // SAFETY: both pages lie inside their allocations (`frame` checked
        // the index), alive while the `Arc`s are held; the offsets plus
        // `len` stay inside one page (checked above); the memory is never
        // referenced by Rust references; `shared_mem::copy` allows overlap.
        unsafe {
            let src = src_mem.ptr.add(src_index * PAGE_SIZE + so);
            let dst = dst_mem.ptr.add(dst_index * PAGE_SIZE + dof);
            shared_mem::copy(src, dst, len);
        }
        Ok(())
    }
}

impl ForeignGrants for FakePlatform {
    type Mapping = FakeMapping;
    type RingMapping = FakeRingMapping;

    fn map_batch(&self, ops: &[MapOp], out: &mut Vec<Result<FakeMapping, ForeignError>>) {
        for op in ops {
            out.push(self.map_pages(op.granter, &[op.gref], op.access));
        }
    }

    fn map_ring_pages(
        &self,
        granter: DomId,
        refs: &[GrantRefNum],
    ) -> Result<FakeRingMapping, ForeignError> {
        if refs.is_empty() || refs.len() > MAX_RING_PAGES {
            return Err(ForeignError {
                granter,
                gref: refs.first().copied().unwrap_or(0),
                status: GntStatus::GeneralError,
            });
        }
        self.map_pages(granter, refs, Access::ReadWrite)
            .map(FakeRingMapping)
    }

    fn copy_batch(&self, ops: &mut [GnttabCopy]) -> usize {
        let mut failed = 0;
        for op in ops.iter_mut() {
            let status = match self.copy_one(op) {
                Ok(()) => GntStatus::Okay,
                Err(s) => {
                    failed += 1;
                    s
                }
            };
            op.status = status.raw();
        }
        failed
    }
}

#[cfg(test)]
#[path = "tests/fake_events.rs"]
mod event_tests;
