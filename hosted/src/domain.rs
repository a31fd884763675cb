//! A domain of the hosted platform: its memory, grant table, event channels
//! and its view of the peers it talks to.
//!
//! # Peers, and letting go of departed ones
//! A domain maps what it needs of each peer it talks to (a [`Peer`]: the
//! peer's grant table with its pin records, its event page, and, once a
//! grant copy needs it, its whole memory). When a peer departs and its domid
//! comes back as a new incarnation, the new one is looked up and the old
//! one retired; a retired (or dead) peer is dropped, with everything it
//! maps, once nothing uses it: mappings of its grants hold it
//! (`Arc<Peer>`), and the lock-free paths (`notify`, grant copy) reach
//! peers through a per-domid slot of raw pointers, protected by a small
//! read-side counter scheme: a reader counts itself in one of two counters
//! before loading a slot and uncounts when done ([`PeerGuard`]); a peer
//! unlinked from its slot is freed only after each counter has been seen at
//! zero since the unlinking, so no reader can still hold it. Pruning never
//! waits: it runs on lookups and through
//! [`HostedPlatform::release_departed_peers`], so a long-running backend
//! whose frontends restart keeps a bounded number of peers mapped.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::fd::AsFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use grant_tables::abi::{GrantEntryV1, GRANT_ENTRIES_V1_PER_PAGE};
use grant_tables::emulated::ForeignTable;
use grant_tables::{DomId, GrantTable, Platform, PlatformError};

use crate::evtchn::{EventStats, EventView, EVENT_PAGE_BYTES, NR_PORTS};
use crate::grants::HostedGrantFrames;
use crate::hypervisor::{HypervisorClient, OP_LOOKUP, OP_REGISTER};
use crate::memory::DomainMemory;
use crate::sys::{self, Mmap, PAGE};

/// Locks a mutex, ignoring poisoning: every structure behind these locks is
/// updated in single steps that leave it consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How big a domain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// Pages of shareable "physical memory" (the memfd is sparse: only pages
    /// in use take memory). Frame numbers are page indices below this.
    pub memory_pages: u32,
    /// Grant table frames (512 v1 entries each).
    pub grant_frames: u32,
}

impl Default for DomainConfig {
    /// 1 GiB of memory, 32 grant frames (16384 refs).
    fn default() -> Self {
        DomainConfig { memory_pages: 1 << 18, grant_frames: 32 }
    }
}

/// Why joining the hosted hypervisor failed.
#[derive(Debug)]
pub enum HostedError {
    /// A system call failed while setting the domain up.
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// Another live domain already has this domid.
    DomidTaken(DomId),
    /// The domid or the configuration is not usable.
    Invalid(String),
}

impl fmt::Display for HostedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostedError::Io { what, source } => write!(f, "{what}: {source}"),
            HostedError::DomidTaken(d) => {
                write!(
                    f,
                    "{d} is already running on this hosted hypervisor; pick another domid or stop the other domain"
                )
            }
            HostedError::Invalid(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for HostedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HostedError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> HostedError {
    let what = what.into();
    move |source| HostedError::Io { what, source }
}

/// The grant table memfd of a domain: its entries (Xen's v1 layout), then
/// one 8-byte pin record per entry (see `grant_tables::emulated`), so that
/// every domain that maps the table, and the hypervisor, share the pins.
pub(crate) fn grant_file_bytes(grant_frames: u32) -> u64 {
    2 * u64::from(grant_frames) * PAGE as u64
}

/// Peers mapped by a domain, live and retired (for the stats).
#[derive(Default)]
pub(crate) struct PeerCounts {
    /// `Peer` values alive (each holds its mappings).
    pub alive: AtomicUsize,
    /// Of which have their whole memory mapped (for grant copies).
    pub memory_mapped: AtomicUsize,
    /// Grant mappings (`MappedGrant`) alive.
    pub grant_mappings: AtomicUsize,
}

/// Another domain (or this one) as the emulated hypervisor sees it: its
/// memory memfd, its grant table and its event page, mapped here.
pub(crate) struct Peer {
    pub domid: DomId,
    /// Unique across the hypervisor's life: a domid that is reused by a new
    /// domain gets a new incarnation.
    pub incarnation: u64,
    pub mem: File,
    pub mem_pages: u64,
    /// Declared before `grant_map` so it is dropped first.
    pub grants: ForeignTable,
    _grant_map: Mmap,
    pub events: EventView,
    _event_map: Mmap,
    /// The whole memory, mapped writable on first use by a grant copy.
    memory: OnceLock<Option<Mmap>>,
    counts: Arc<PeerCounts>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.counts.alive.fetch_sub(1, Ordering::Relaxed);
        if matches!(self.memory.get(), Some(Some(_))) {
            self.counts.memory_mapped.fetch_sub(1, Ordering::Relaxed);
        }
        log::debug!("released {} (incarnation {})", self.domid, self.incarnation);
    }
}

impl Peer {
    /// Checks and maps what the hypervisor handed over for `domid`.
    fn open(
        domid: DomId,
        incarnation: u64,
        mem: File,
        grants: File,
        events: File,
        counts: &Arc<PeerCounts>,
    ) -> Result<Peer, String> {
        let mem_size = sys::sealed_size(&mem).map_err(|e| format!("its memory: {e}"))?;
        let gnt_size = sys::sealed_size(&grants).map_err(|e| format!("its grant table: {e}"))?;
        let ev_size = sys::sealed_size(&events).map_err(|e| format!("its event page: {e}"))?;
        if mem_size % PAGE as u64 != 0 {
            return Err(format!("its memory is {mem_size} bytes, not whole pages"));
        }
        // Entries, then as many 8-byte pin records.
        let entries = gnt_size / (2 * std::mem::size_of::<GrantEntryV1>() as u64);
        let entry_count = u32::try_from(entries).map_err(|_| "its grant table is too large".to_string())?;
        if gnt_size == 0 || gnt_size % (2 * PAGE as u64) != 0 {
            return Err(format!("its grant table is {gnt_size} bytes, not an even number of pages"));
        }
        if ev_size != EVENT_PAGE_BYTES as u64 {
            return Err(format!("its event page is {ev_size} bytes, expected {EVENT_PAGE_BYTES}"));
        }
        let gnt_len = usize::try_from(gnt_size).map_err(|_| "its grant table is too large".to_string())?;
        let grant_map =
            Mmap::shared(grants.as_fd(), 0, gnt_len, true).map_err(|e| format!("mapping its grant table: {e}"))?;
        let event_map = Mmap::shared(events.as_fd(), 0, EVENT_PAGE_BYTES, true)
            .map_err(|e| format!("mapping its event page: {e}"))?;
        // SAFETY: `grant_map` maps `gnt_size` bytes of a size-sealed memfd,
        // page-aligned: `entry_count` aligned 8-byte entries, then as many
        // aligned 8-byte pin records from byte `gnt_size / 2`; it lives in
        // this `Peer` and is dropped after `grants` (field order); entries
        // and records are only accessed atomically, by every domain.
        let table = unsafe {
            ForeignTable::with_pins(
                grant_map.as_ptr().cast(),
                grant_map.as_ptr().add(gnt_len / 2).cast(),
                entry_count,
                None,
            )
        };
        // SAFETY: `event_map` is a writable mapping of a whole event page of
        // a size-sealed memfd, kept alive by this `Peer`, which holds the
        // view and is dropped after it (field order); the page is accessed
        // only atomically.
        let view = unsafe { EventView::new(event_map.as_ptr()) };
        view.check_header(domid)?;
        counts.alive.fetch_add(1, Ordering::Relaxed);
        Ok(Peer {
            domid,
            incarnation,
            mem,
            mem_pages: mem_size / PAGE as u64,
            grants: table,
            _grant_map: grant_map,
            events: view,
            _event_map: event_map,
            memory: OnceLock::new(),
            counts: counts.clone(),
        })
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.events.alive().load(Ordering::Acquire) != 0
    }

    /// The peer's whole memory, mapped writable here once (for grant
    /// copies: no mapping per copy). `None` if it cannot be mapped.
    pub(crate) fn memory(&self) -> Option<&Mmap> {
        self.memory
            .get_or_init(|| {
                let len = usize::try_from(self.mem_pages).ok()?.checked_mul(PAGE)?;
                match Mmap::shared(self.mem.as_fd(), 0, len, true) {
                    Ok(m) => {
                        self.counts.memory_mapped.fetch_add(1, Ordering::Relaxed);
                        Some(m)
                    }
                    Err(e) => {
                        log::error!("mapping the memory of {} for grant copies: {e}", self.domid);
                        None
                    }
                }
            })
            .as_ref()
    }
}

/// A peer in use by a lock-free path: keeps it alive while held (see the
/// module docs). Derefs to the peer.
pub(crate) enum PeerGuard<'a> {
    /// Loaded from a slot, counted in `readers[parity]`.
    Counted { peer: &'a Peer, readers: &'a AtomicUsize },
    /// Held by an `Arc` (the slow path).
    Owned(Arc<Peer>),
}

impl Deref for PeerGuard<'_> {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        match self {
            PeerGuard::Counted { peer, .. } => peer,
            PeerGuard::Owned(p) => p,
        }
    }
}

impl Drop for PeerGuard<'_> {
    fn drop(&mut self) {
        if let PeerGuard::Counted { readers, .. } = self {
            // Release: every use of the peer happens before a pruner sees
            // the counter at zero (its load is SeqCst, so it acquires).
            readers.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Retired peers and the grace-period bookkeeping (see the module docs).
#[derive(Default)]
struct Retired {
    /// Advances at every prune.
    tick: u64,
    /// The tick at which each reader counter was last seen at zero.
    zero_seen: [u64; 2],
    /// Peers unlinked from their slot, with the tick they were retired at.
    peers: Vec<(Arc<Peer>, u64)>,
}

/// Per-port state private to the owning process: the authority on whether
/// the port is open and which domain it belongs to (the shared binding word
/// is checked against it, since peers can write that word).
#[derive(Default)]
pub(crate) struct LocalPort {
    /// Allocated (unbound or bound). Written under `port_alloc`.
    pub open: AtomicBool,
    /// The domain the port is offered to or bound to.
    pub remote: AtomicU32,
    /// Which incarnation of `remote` the binding is with, as
    /// [`crate::evtchn::bound_record`] packs it with the change counter of
    /// the binding word it was recorded for (0: not known yet). Recorded
    /// when this domain binds, learned on the first `notify` when the peer
    /// bound to us; `notify` delivers only to that incarnation.
    pub bound: AtomicU64,
    pub state: Mutex<LocalPortState>,
}

#[derive(Default)]
pub(crate) struct LocalPortState {
    /// This port's eventfd (peers write it to wake us).
    pub eventfd: Option<Arc<File>>,
    /// The peer port's eventfd, for the binding word it was fetched under.
    pub wake: Option<(u64, Arc<File>)>,
}

/// Slow-path counters.
#[derive(Default)]
pub(crate) struct Stats {
    pub wakeups_sent: AtomicU64,
    pub sleeps: AtomicU64,
}

/// Everything a domain owns. Shared by every clone of its
/// [`HostedPlatform`] and by the mappings it made.
pub(crate) struct Domain {
    pub domid: DomId,
    pub hv: HypervisorClient,
    pub memory: Arc<DomainMemory>,
    pub grant_table: Arc<GrantTable<HostedGrantFrames>>,
    pub events: EventView,
    _event_map: Mmap,
    pub ports: Box<[LocalPort]>,
    /// Serialises port allocation, binding and closing.
    pub port_alloc: Mutex<()>,
    pub peers: Mutex<HashMap<u16, Arc<Peer>>>,
    /// Each peer by domid (null: none), for the lock-free paths (`notify`,
    /// grant copy). Points to a `Peer` kept in `peers`; one unlinked from
    /// here moves to `retired` until no reader can hold it.
    peer_slots: Box<[AtomicPtr<Peer>]>,
    /// Readers of `peer_slots`, in two counters (see the module docs).
    readers: [AtomicUsize; 2],
    /// Which counter new readers use.
    reader_epoch: AtomicUsize,
    /// Peers unlinked from `peer_slots` and not yet freed. Locked after
    /// `peers` when both are.
    retired: Mutex<Retired>,
    pub peer_counts: Arc<PeerCounts>,
    pub stats: Stats,
}

impl Domain {
    /// The peer `domid` as cached (looked up the first time, or again if the
    /// cached one has died).
    pub(crate) fn peer(&self, domid: DomId) -> Result<Arc<Peer>, String> {
        let mut peers = lock(&self.peers);
        if let Some(p) = peers.get(&domid.0) {
            if p.is_alive() {
                return Ok(p.clone());
            }
        }
        self.lookup_locked(&mut peers, domid)
    }

    /// The peer `domid`, checked with the hypervisor to be the current
    /// incarnation (for control operations such as binding).
    pub(crate) fn fresh_peer(&self, domid: DomId) -> Result<Arc<Peer>, String> {
        if domid == self.domid {
            return self.peer(domid);
        }
        let mut peers = lock(&self.peers);
        self.lookup_locked(&mut peers, domid)
    }

    fn lookup_locked(&self, peers: &mut HashMap<u16, Arc<Peer>>, domid: DomId) -> Result<Arc<Peer>, String> {
        if !domid.is_real() {
            return Err(format!("{domid:?} is not a real domain id"));
        }
        let reply = self.hv.call(OP_LOOKUP, domid.0, 0, &[]).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOENT) {
                format!("{domid} is not running on this hosted hypervisor")
            } else {
                format!("asking the hypervisor for {domid}: {e}")
            }
        })?;
        if let Some(p) = peers.get(&domid.0) {
            if p.incarnation == reply.incarnation {
                return Ok(p.clone());
            }
        }
        let mut fds = reply.fds.into_iter();
        let (Some(m), Some(g), Some(e), None) = (fds.next(), fds.next(), fds.next(), fds.next()) else {
            return Err(format!("the hypervisor sent a malformed answer for {domid}"));
        };
        let peer = Peer::open(domid, reply.incarnation, File::from(m), File::from(g), File::from(e), &self.peer_counts)
            .map_err(|e| format!("{domid} is not usable: {e}"))?;
        let peer = Arc::new(peer);
        if let Some(slot) = self.peer_slots.get(usize::from(domid.0)) {
            // SeqCst: ordered before the reader counters a later prune reads.
            slot.store(Arc::as_ptr(&peer).cast_mut(), Ordering::SeqCst);
        }
        if let Some(old) = peers.insert(domid.0, peer.clone()) {
            self.retire(old);
        }
        log::debug!("{}: mapped {domid} (incarnation {})", self.domid, peer.incarnation);
        self.prune_locked(peers);
        Ok(peer)
    }

    /// Queues a peer unlinked from its slot (or never linked) for freeing.
    fn retire(&self, peer: Arc<Peer>) {
        let mut r = lock(&self.retired);
        let at = r.tick;
        r.peers.push((peer, at));
    }

    /// Unlinks dead peers and frees retired ones no reader can hold (see
    /// the module docs). Never waits. Returns how many were freed here
    /// (their mappings go with the last `Arc`, which a live mapping of
    /// their grants may still hold).
    fn prune_locked(&self, peers: &mut HashMap<u16, Arc<Peer>>) -> usize {
        let dead: Vec<u16> = peers.iter().filter(|(_, p)| !p.is_alive()).map(|(&d, _)| d).collect();
        for d in dead {
            if let Some(p) = peers.remove(&d) {
                if let Some(slot) = self.peer_slots.get(usize::from(d)) {
                    // Only if it still points to this peer; SeqCst as in
                    // `lookup_locked`.
                    let _ = slot.compare_exchange(
                        Arc::as_ptr(&p).cast_mut(),
                        std::ptr::null_mut(),
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
                self.retire(p);
            }
        }
        let mut r = lock(&self.retired);
        if r.peers.is_empty() {
            return 0;
        }
        r.tick += 1;
        let now = r.tick;
        // New readers use the other counter from now on, so the one they
        // used drains.
        self.reader_epoch.fetch_xor(1, Ordering::SeqCst);
        for (q, readers) in self.readers.iter().enumerate() {
            // SeqCst: after every unlink above and before (in the total
            // order) a later slot load by a reader that counted itself
            // after this load; zero means every reader counted before it
            // is done.
            if readers.load(Ordering::SeqCst) == 0 {
                r.zero_seen[q] = now;
            }
        }
        let [z0, z1] = r.zero_seen;
        let before = r.peers.len();
        // A peer retired at `at` is safe to free once both counters were
        // seen at zero after it was unlinked.
        r.peers.retain(|(_, at)| !(z0 > *at && z1 > *at));
        before - r.peers.len()
    }

    /// [`Self::prune_locked`] from the outside.
    pub(crate) fn prune(&self) -> usize {
        let mut peers = lock(&self.peers);
        self.prune_locked(&mut peers)
    }

    /// Peers kept: (in the lookup table, retired and not yet freed).
    pub(crate) fn peers_kept(&self) -> (usize, usize) {
        let current = lock(&self.peers).len();
        let retired = lock(&self.retired).peers.len();
        (current, retired)
    }

    /// The current incarnation of `domid`, for the lock-free paths
    /// (`notify`, grant copy): no lock and no system call when it was looked
    /// up before and is alive; a slow path otherwise. `None` when the
    /// domain is not running.
    #[inline]
    pub(crate) fn peer_fast(&self, domid: u16) -> Option<PeerGuard<'_>> {
        let slot = self.peer_slots.get(usize::from(domid))?;
        let readers = &self.readers[self.reader_epoch.load(Ordering::Relaxed) & 1];
        // SeqCst (a full barrier): counted before the slot is loaded, so a
        // pruner that sees this counter at zero after unlinking a peer knows
        // this reader cannot have loaded it.
        readers.fetch_add(1, Ordering::SeqCst);
        if let Some(peer) = NonNull::new(slot.load(Ordering::SeqCst)) {
            // SAFETY: the pointer was stored from an `Arc<Peer>` kept in
            // `peers`; once unlinked, that peer moves to `retired` and is
            // freed only after `readers` was seen at zero, which cannot
            // happen before the guard below drops (see the module docs).
            let peer = unsafe { peer.as_ref() };
            if peer.events.alive().load(Ordering::Relaxed) != 0 {
                return Some(PeerGuard::Counted { peer, readers });
            }
        }
        readers.fetch_sub(1, Ordering::Release);
        self.peer_fast_slow(domid)
    }

    /// Runs `f` with the current peers `a` and `b` (`None` for a domain
    /// not asked for or not running): [`Self::peer_fast`] for code that
    /// wants no guard values moved around (the grant copy's hot path).
    #[inline(always)]
    pub(crate) fn with_peers<R>(
        &self,
        a: Option<u16>,
        b: Option<u16>,
        f: impl FnOnce(Option<&Peer>, Option<&Peer>) -> R,
    ) -> R {
        self.with_peer(a, |pa| self.with_peer(b, |pb| f(pa, pb)))
    }

    #[inline(always)]
    fn with_peer<R>(&self, domid: Option<u16>, f: impl FnOnce(Option<&Peer>) -> R) -> R {
        /// Uncounts the reader, even if `f` panics.
        struct Uncount<'a>(&'a AtomicUsize);
        impl Drop for Uncount<'_> {
            fn drop(&mut self) {
                // Release: as in `PeerGuard::drop`.
                self.0.fetch_sub(1, Ordering::Release);
            }
        }
        let Some(domid) = domid else { return f(None) };
        let Some(slot) = self.peer_slots.get(usize::from(domid)) else { return f(None) };
        let readers = &self.readers[self.reader_epoch.load(Ordering::Relaxed) & 1];
        // SeqCst: as in `peer_fast`.
        readers.fetch_add(1, Ordering::SeqCst);
        let uncount = Uncount(readers);
        if let Some(peer) = NonNull::new(slot.load(Ordering::SeqCst)) {
            // SAFETY: as in `peer_fast`: kept alive until `readers` is seen
            // at zero, which cannot happen before `uncount` drops, after `f`.
            let peer = unsafe { peer.as_ref() };
            if peer.events.alive().load(Ordering::Relaxed) != 0 {
                return f(Some(peer));
            }
        }
        drop(uncount);
        match self.peer_fast_slow(domid) {
            Some(p) => f(Some(&p)),
            None => f(None),
        }
    }

    /// The peer `domid` for `notify` (see [`Self::peer_fast`]).
    #[inline]
    pub(crate) fn peer_events(&self, domid: u16) -> Option<PeerGuard<'_>> {
        self.peer_fast(domid)
    }

    #[cold]
    fn peer_fast_slow(&self, domid: u16) -> Option<PeerGuard<'_>> {
        match self.peer(DomId(domid)) {
            Ok(p) => Some(PeerGuard::Owned(p)),
            Err(e) => {
                log::debug!("{}: dom{domid} is not reachable: {e}", self.domid);
                None
            }
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // Close every channel so that the peers' ends become unbound, as
        // when Xen destroys a domain. (A domain that dies without this is
        // cleaned up by the hypervisor when its connection closes.)
        for port in self.open_ports() {
            if let Err(e) = self.close_port(port) {
                log::warn!("{}: closing {port} at exit: {e}", self.domid);
            }
        }
    }
}

/// A domain of the hosted platform: implements [`grant_tables::Platform`]
/// for drivers, plus the backend side of grants (map, unmap, copy).
///
/// Cheap to clone (all clones are the same domain); `Send` and `Sync`.
#[derive(Clone)]
pub struct HostedPlatform {
    pub(crate) inner: Arc<Domain>,
}

impl fmt::Debug for HostedPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostedPlatform").field("domid", &self.inner.domid).finish_non_exhaustive()
    }
}

impl HostedPlatform {
    /// Joins the hosted hypervisor serving `dir` as domain `domid`, with
    /// the default [`DomainConfig`].
    ///
    /// Any process that can reach `dir` may join: two processes that join
    /// the same directory as two domids can grant, map and notify each
    /// other. The domain lives until the last clone of the platform (and
    /// every mapping it made) is dropped, or the process exits.
    pub fn join(dir: impl AsRef<Path>, domid: DomId) -> Result<Self, HostedError> {
        Self::join_with(dir, domid, DomainConfig::default())
    }

    /// [`HostedPlatform::join`] with an explicit size.
    pub fn join_with(dir: impl AsRef<Path>, domid: DomId, config: DomainConfig) -> Result<Self, HostedError> {
        let dir = dir.as_ref();
        sys::check_page_size().map_err(io_err("checking the host page size"))?;
        if !domid.is_real() {
            return Err(HostedError::Invalid(format!("{:#x} is a reserved domain id, not a real one", domid.0)));
        }
        if config.memory_pages == 0 || config.grant_frames == 0 {
            return Err(HostedError::Invalid("a domain needs at least one memory page and one grant frame".into()));
        }
        let hv = HypervisorClient::connect(dir).map_err(io_err(format!("{domid} joining {}", dir.display())))?;
        let mem_bytes = u64::from(config.memory_pages) * PAGE as u64;
        let mem = sys::sealed_memfd(&format!("dom{}-memory", domid.0), mem_bytes)
            .map_err(io_err("creating domain memory"))?;
        let grant_file =
            sys::sealed_memfd(&format!("dom{}-grant-table", domid.0), grant_file_bytes(config.grant_frames))
                .map_err(io_err("creating the grant table"))?;
        let event_file = sys::sealed_memfd(&format!("dom{}-events", domid.0), EVENT_PAGE_BYTES as u64)
            .map_err(io_err("creating the event page"))?;

        let gnt_len = usize::try_from(grant_file_bytes(config.grant_frames))
            .map_err(|_| HostedError::Invalid("grant table too large".into()))?;
        let entry_count = u32::try_from(config.grant_frames as usize * GRANT_ENTRIES_V1_PER_PAGE)
            .map_err(|_| HostedError::Invalid("grant table too large".into()))?;
        let grant_map =
            Mmap::shared(grant_file.as_fd(), 0, gnt_len, true).map_err(io_err("mapping the grant table"))?;
        let frames = HostedGrantFrames::new(grant_map, entry_count);
        let event_map =
            Mmap::shared(event_file.as_fd(), 0, EVENT_PAGE_BYTES, true).map_err(io_err("mapping the event page"))?;
        // SAFETY: `event_map` is a writable mapping of a whole event page;
        // it is stored in the `Domain` next to every use of the view and
        // accessed only atomically.
        let events = unsafe { EventView::new(event_map.as_ptr()) };
        events.init_header(domid);

        let reply =
            hv.call(OP_REGISTER, domid.0, 0, &[mem.as_fd(), grant_file.as_fd(), event_file.as_fd()]).map_err(|e| {
                if e.raw_os_error() == Some(libc::EEXIST) {
                    HostedError::DomidTaken(domid)
                } else {
                    HostedError::Io { what: format!("registering {domid} with the hypervisor"), source: e }
                }
            })?;

        let memory = Arc::new(DomainMemory::new(mem, u64::from(config.memory_pages)));
        let domain = Domain {
            domid,
            hv,
            memory,
            grant_table: Arc::new(GrantTable::new(frames)),
            events,
            _event_map: event_map,
            ports: (0..NR_PORTS).map(|_| LocalPort::default()).collect(),
            port_alloc: Mutex::new(()),
            peers: Mutex::new(HashMap::new()),
            peer_slots: (0..grant_tables::abi::DOMID_FIRST_RESERVED)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            readers: [AtomicUsize::new(0), AtomicUsize::new(0)],
            reader_epoch: AtomicUsize::new(0),
            retired: Mutex::new(Retired::default()),
            peer_counts: Arc::new(PeerCounts::default()),
            stats: Stats::default(),
        };
        log::info!("{domid} joined {} (incarnation {})", dir.display(), reply.incarnation);
        Ok(HostedPlatform { inner: Arc::new(domain) })
    }

    /// This domain's grant table (one per domain; share it with
    /// `Arc::clone`).
    pub fn grant_table(&self) -> &Arc<GrantTable<HostedGrantFrames>> {
        &self.inner.grant_table
    }

    /// Counters of the event channel slow paths (eventfd writes, sleeps).
    pub fn event_stats(&self) -> EventStats {
        EventStats {
            wakeups_sent: self.inner.stats.wakeups_sent.load(Ordering::Relaxed),
            sleeps: self.inner.stats.sleeps.load(Ordering::Relaxed),
        }
    }

    /// Pages of "physical memory" (frame numbers are below this).
    pub fn memory_pages(&self) -> u64 {
        self.inner.memory.pages()
    }

    /// Pages allocated right now.
    pub fn pages_in_use(&self) -> u64 {
        self.inner.memory.in_use()
    }

    /// Whether domain `domid` is running on this hypervisor right now.
    pub fn domain_exists(&self, domid: DomId) -> bool {
        self.inner.fresh_peer(domid).is_ok()
    }

    /// Lets go of peers that departed: unlinks the dead ones and frees what
    /// no reader can still hold (their grant table, event page and memory
    /// mappings; a live mapping of one of their grants keeps that peer until
    /// it is unmapped). Lookups of new peers do this too; a long-running
    /// backend may call it from its poll loop. Never blocks on other
    /// threads. Returns how many peers were freed.
    pub fn release_departed_peers(&self) -> usize {
        self.inner.prune()
    }

    /// What this domain holds mapped of its peers.
    pub fn peer_stats(&self) -> PeerStats {
        let (current, retired) = self.inner.peers_kept();
        let c = &self.inner.peer_counts;
        PeerStats {
            current,
            retired,
            alive: c.alive.load(Ordering::Relaxed),
            memory_mapped: c.memory_mapped.load(Ordering::Relaxed),
            grant_mappings: c.grant_mappings.load(Ordering::Relaxed),
        }
    }
}

/// What a domain holds mapped of its peers ([`HostedPlatform::peer_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Peers in the lookup table (one per domid looked up, live or not yet
    /// noticed dead).
    pub current: usize,
    /// Peers unlinked (departed or replaced) and not yet freed.
    pub retired: usize,
    /// Peer views alive, each with its grant table and event page mapped
    /// (`current` + `retired` + those only mappings of their grants keep).
    pub alive: usize,
    /// Of which have their whole memory mapped (for grant copies).
    pub memory_mapped: usize,
    /// Grant mappings alive.
    pub grant_mappings: usize,
}

impl Platform for HostedPlatform {
    type GrantFrames = HostedGrantFrames;
    fn domid(&self) -> DomId {
        self.inner.domid
    }
    fn grant_table(&self) -> Result<&Arc<GrantTable<HostedGrantFrames>>, PlatformError> {
        Ok(&self.inner.grant_table)
    }
}
