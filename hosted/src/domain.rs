//! A domain of the hosted platform: its memory, grant table, event channels
//! and its view of the peers it talks to.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use grant_tables::abi::{GrantEntryV1, GRANT_ENTRIES_V1_PER_PAGE};
use grant_tables::emulated::ForeignTable;
use grant_tables::{DomId, GrantTable, Platform, PlatformError};

use crate::evtchn::{EventStats, EventView, EVENT_PAGE_BYTES, NR_PORTS};
use crate::grants::{HostedGrantFrames, PinTable};
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
                write!(f, "{d} is already running on this hosted hypervisor; pick another domid or stop the other domain")
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
}

impl Peer {
    /// Checks and maps what the hypervisor handed over for `domid`.
    fn open(domid: DomId, incarnation: u64, mem: File, grants: File, events: File) -> Result<Peer, String> {
        let mem_size = sys::sealed_size(&mem).map_err(|e| format!("its memory: {e}"))?;
        let gnt_size = sys::sealed_size(&grants).map_err(|e| format!("its grant table: {e}"))?;
        let ev_size = sys::sealed_size(&events).map_err(|e| format!("its event page: {e}"))?;
        if mem_size % PAGE as u64 != 0 {
            return Err(format!("its memory is {mem_size} bytes, not whole pages"));
        }
        let entries = gnt_size / std::mem::size_of::<GrantEntryV1>() as u64;
        let entry_count = u32::try_from(entries).map_err(|_| "its grant table is too large".to_string())?;
        if gnt_size == 0 || gnt_size % PAGE as u64 != 0 {
            return Err(format!("its grant table is {gnt_size} bytes, not whole pages"));
        }
        if ev_size != EVENT_PAGE_BYTES as u64 {
            return Err(format!("its event page is {ev_size} bytes, expected {EVENT_PAGE_BYTES}"));
        }
        let gnt_len = usize::try_from(gnt_size).map_err(|_| "its grant table is too large".to_string())?;
        let grant_map = Mmap::shared(grants.as_fd(), 0, gnt_len, true).map_err(|e| format!("mapping its grant table: {e}"))?;
        let event_map =
            Mmap::shared(events.as_fd(), 0, EVENT_PAGE_BYTES, true).map_err(|e| format!("mapping its event page: {e}"))?;
        // SAFETY: `grant_map` maps `gnt_size` bytes of a size-sealed memfd,
        // page-aligned, i.e. `entry_count` aligned 8-byte entries; it lives
        // in this `Peer` and is dropped after `grants` (field order); the
        // entries are only accessed atomically.
        let table = unsafe { ForeignTable::new(grant_map.as_ptr().cast(), entry_count) };
        // SAFETY: `event_map` is a writable mapping of a whole event page of
        // a size-sealed memfd, kept alive by this `Peer` for as long as the
        // view is used (the domain keeps every `Peer` it made until it is
        // dropped), and accessed only atomically.
        let view = unsafe { EventView::new(event_map.as_ptr()) };
        view.check_header(domid)?;
        Ok(Peer {
            domid,
            incarnation,
            mem,
            mem_pages: mem_size / PAGE as u64,
            grants: table,
            _grant_map: grant_map,
            events: view,
            _event_map: event_map,
        })
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.events.alive().load(Ordering::Acquire) != 0
    }
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
    /// An edge-triggered epoll instance watching `eventfd`: waiters sleep
    /// in one `epoll_wait` and never need to read the counter.
    pub epoll: Option<Arc<std::os::fd::OwnedFd>>,
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
    /// Each peer by domid (null: not looked up yet), for the lock-free
    /// `notify` path. Points to a `Peer` kept in `peers` or `retired`.
    peer_events: Box<[AtomicPtr<Peer>]>,
    /// Peers replaced by a newer incarnation; kept so that pointers into
    /// their pages stay valid.
    retired: Mutex<Vec<Arc<Peer>>>,
    pub pins: PinTable,
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
        let peer = Peer::open(domid, reply.incarnation, File::from(m), File::from(g), File::from(e))
            .map_err(|e| format!("{domid} is not usable: {e}"))?;
        let peer = Arc::new(peer);
        if let Some(slot) = self.peer_events.get(usize::from(domid.0)) {
            slot.store(Arc::as_ptr(&peer).cast_mut(), Ordering::Release);
        }
        if let Some(old) = peers.insert(domid.0, peer.clone()) {
            lock(&self.retired).push(old);
        }
        log::debug!("{}: mapped {domid} (incarnation {})", self.domid, peer.incarnation);
        Ok(peer)
    }

    /// The current incarnation of `domid` (its event page and incarnation
    /// number) for `notify`: a lock-free lookup, with a slow path when it
    /// was never looked up or has died. `None` when the domain is not
    /// running.
    #[inline]
    pub(crate) fn peer_events(&self, domid: u16) -> Option<&Peer> {
        let slot = self.peer_events.get(usize::from(domid))?;
        if let Some(peer) = NonNull::new(slot.load(Ordering::Acquire)) {
            // SAFETY: the pointer was stored from an `Arc<Peer>`, and every
            // `Peer` is kept (in `peers` or `retired`) until this domain is
            // dropped, which cannot happen while `&self` lives.
            let peer = unsafe { peer.as_ref() };
            if peer.events.alive().load(Ordering::Relaxed) != 0 {
                return Some(peer);
            }
        }
        self.peer_events_slow(domid)
    }

    #[cold]
    fn peer_events_slow(&self, domid: u16) -> Option<&Peer> {
        match self.peer(DomId(domid)) {
            // SAFETY: `peer` returns a `Peer` held in `peers`, which is kept
            // (there or in `retired`) until this domain is dropped.
            Ok(p) => Some(unsafe { &*Arc::as_ptr(&p) }),
            Err(e) => {
                log::debug!("{}: no event page for dom{domid}: {e}", self.domid);
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
        let gnt_bytes = u64::from(config.grant_frames) * PAGE as u64;
        let mem = sys::sealed_memfd(&format!("dom{}-memory", domid.0), mem_bytes).map_err(io_err("creating domain memory"))?;
        let grant_file =
            sys::sealed_memfd(&format!("dom{}-grant-table", domid.0), gnt_bytes).map_err(io_err("creating the grant table"))?;
        let event_file = sys::sealed_memfd(&format!("dom{}-events", domid.0), EVENT_PAGE_BYTES as u64)
            .map_err(io_err("creating the event page"))?;

        let gnt_len = usize::try_from(gnt_bytes).map_err(|_| HostedError::Invalid("grant table too large".into()))?;
        let entry_count = u32::try_from(config.grant_frames as usize * GRANT_ENTRIES_V1_PER_PAGE)
            .map_err(|_| HostedError::Invalid("grant table too large".into()))?;
        let grant_map = Mmap::shared(grant_file.as_fd(), 0, gnt_len, true).map_err(io_err("mapping the grant table"))?;
        let frames = HostedGrantFrames::new(grant_map, entry_count);
        let event_map =
            Mmap::shared(event_file.as_fd(), 0, EVENT_PAGE_BYTES, true).map_err(io_err("mapping the event page"))?;
        // SAFETY: `event_map` is a writable mapping of a whole event page;
        // it is stored in the `Domain` next to every use of the view and
        // accessed only atomically.
        let events = unsafe { EventView::new(event_map.as_ptr()) };
        events.init_header(domid);

        let reply = hv
            .call(OP_REGISTER, domid.0, 0, &[mem.as_fd(), grant_file.as_fd(), event_file.as_fd()])
            .map_err(|e| {
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
            peer_events: (0..grant_tables::abi::DOMID_FIRST_RESERVED).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect(),
            retired: Mutex::new(Vec::new()),
            pins: PinTable::default(),
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
