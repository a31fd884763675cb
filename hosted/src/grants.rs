//! Grant tables: this domain's table in shared memory, and the backend side
//! of grants (map, unmap, copy), checked the way Xen checks them.
//!
//! A domain's grant table is a memfd in Xen's exact v1 layout
//! ([`GrantEntryV1`]), mapped by its owner ([`HostedGrantFrames`], under a
//! [`grant_tables::GrantTable`]) and by every domain that maps or copies its
//! grants (the emulated hypervisor's view, a
//! [`grant_tables::emulated::ForeignTable`]).
//!
//! Mapping a grant ([`HostedPlatform::map_grant`]) pins the entry with
//! `ForeignTable::acquire` (checks `GTF_permit_access`, the entry's domid
//! and `GTF_readonly`, and sets `GTF_reading`, plus `GTF_writing` for a
//! writable mapping, in one compare-and-swap), then maps exactly the
//! granted page of the granting domain's memfd: `PROT_READ` only for a
//! read-only mapping, so a write faults. Like Xen, the mapping domain keeps
//! a pin count per entry: the flags are cleared only when the last mapping
//! (or copy) of the entry goes. While a mapping lives the granting domain's
//! `end_access` fails and quarantines the ref (XSA-396).

use std::collections::HashMap;
use std::fmt;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use grant_tables::abi::{GntCopyFlags, GntStatus, GnttabCopy, GrantEntryV1, GrantRefNum, DOMID_SELF, PAGE_SIZE};
use grant_tables::emulated::MapRefusal;
use grant_tables::ring::MAX_RING_PAGES;
use grant_tables::{Access, DomId, GrantTableFrames, RingMemory};

use crate::domain::{lock, Domain, Peer};
use crate::sys::{Mmap, PAGE};
use crate::HostedPlatform;

/// This domain's grant table, mapped from its memfd. Not `Clone`: the one
/// [`GrantTable`](grant_tables::GrantTable) built over it is the only
/// writer in this domain.
pub struct HostedGrantFrames {
    map: Arc<Mmap>,
    count: u32,
}

impl HostedGrantFrames {
    pub(crate) fn new(map: Mmap, count: u32) -> Self {
        debug_assert!(count as usize * std::mem::size_of::<GrantEntryV1>() <= map.len());
        HostedGrantFrames { map: Arc::new(map), count }
    }

    /// A copy of entry `gref` as it is now (for tests and diagnostics), read
    /// in the two 32-bit atomic loads the entry is written with.
    pub fn entry(&self, gref: GrantRefNum) -> Option<GrantEntryV1> {
        if gref >= self.count {
            return None;
        }
        let word = |w: usize| {
            // SAFETY: `gref < count` entries lie inside the mapping (checked
            // in `new`), 8-aligned, so word `w` (0 or 1) is an aligned u32
            // inside it; the entry is only ever accessed atomically.
            unsafe {
                AtomicU32::from_ptr(self.map.as_ptr().cast::<u32>().as_ptr().add(gref as usize * 2 + w))
                    .load(Ordering::Acquire)
            }
        };
        let head = word(0);
        Some(GrantEntryV1 {
            flags: head as u16,
            domid: (head >> 16) as u16,
            frame: word(1),
        })
    }
}

impl fmt::Debug for HostedGrantFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostedGrantFrames").field("entries", &self.count).finish()
    }
}

// SAFETY: `map` is a page-aligned shared mapping holding `count` 8-byte
// entries (checked in `new`), kept alive by the `Arc` for as long as any
// clone lives; the grant table built on top is the only writer in this
// domain, and the emulated hypervisor (peers) only changes `flags`
// atomically.
unsafe impl GrantTableFrames for HostedGrantFrames {
    fn entries(&self) -> NonNull<GrantEntryV1> {
        self.map.as_ptr().cast()
    }
    fn entry_count(&self) -> u32 {
        self.count
    }
}

/// Why mapping (or copying) a grant failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapFailure {
    /// The granting domain's entry refused the access (Xen's checks).
    Refused(MapRefusal),
    /// The granting domain is not running (or not usable).
    NoSuchDomain(String),
    /// The entry names a frame outside the granting domain's memory.
    BadFrame {
        /// The frame the entry holds.
        frame: u64,
        /// Frames the domain has.
        frames: u64,
    },
    /// No refs, or more than a ring may span.
    BadCount(usize),
    /// A system call failed.
    Os {
        /// What was being done.
        op: &'static str,
        /// errno.
        errno: i32,
    },
}

/// A failed map: who asked, which grant, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapError {
    /// The mapping domain.
    pub mapper: DomId,
    /// The granting domain.
    pub granter: DomId,
    /// The ref.
    pub gref: GrantRefNum,
    /// Why.
    pub failure: MapFailure,
}

impl MapError {
    /// The `GNTST_*` code Xen would have returned.
    pub fn status(&self) -> GntStatus {
        failure_status(&self.failure)
    }
}

fn failure_status(f: &MapFailure) -> GntStatus {
    match f {
        MapFailure::Refused(MapRefusal::OutOfRange) => GntStatus::BadGntref,
        MapFailure::Refused(_) => GntStatus::GeneralError,
        MapFailure::NoSuchDomain(_) => GntStatus::BadDomain,
        MapFailure::BadFrame { .. } => GntStatus::BadPage,
        MapFailure::BadCount(_) => GntStatus::GeneralError,
        MapFailure::Os { .. } => GntStatus::NoDeviceSpace,
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, g, r) = (self.mapper, self.granter, self.gref);
        match &self.failure {
            MapFailure::Refused(why) => write!(
                f,
                "{m} cannot map grant ref {r} of {g}: {why}; the ref the peer sent is wrong, ended, or not granted to {m}"
            ),
            MapFailure::NoSuchDomain(why) => write!(f, "{m} cannot map grant ref {r} of {g}: {why}"),
            MapFailure::BadFrame { frame, frames } => write!(
                f,
                "{m} cannot map grant ref {r} of {g}: the entry names frame {frame:#x} but {g} has {frames} frames; {g} wrote a bad grant entry"
            ),
            MapFailure::BadCount(n) => write!(
                f,
                "{m} cannot map {n} grant refs of {g} as one region (first ref {r}): give 1 to {MAX_RING_PAGES} refs"
            ),
            MapFailure::Os { op, errno } => write!(
                f,
                "{m} cannot map grant ref {r} of {g}: {op} failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

impl std::error::Error for MapError {}

/// One entry's pins by this domain (Xen's active entry pin count).
#[derive(Debug)]
struct Pin {
    /// Mappings and copies in progress (any access).
    count: u32,
    /// Of which writable.
    writers: u32,
    /// The frame as read at the first pin; later pins use it (Xen does not
    /// re-read the frame of an active entry).
    frame: u32,
}

/// Pins by this domain of other domains' grant entries, keyed by the
/// granting domain's incarnation and the ref.
#[derive(Default)]
pub(crate) struct PinTable {
    pins: Mutex<HashMap<(u64, GrantRefNum), Pin>>,
}

impl Domain {
    /// Pins `gref` of `peer` for `access` and returns its frame, checked to
    /// lie inside the peer's memory.
    fn pin(&self, peer: &Peer, gref: GrantRefNum, access: Access) -> Result<u64, MapFailure> {
        let mut pins = lock(&self.pins.pins);
        let key = (peer.incarnation, gref);
        let frame = peer.grants.acquire(gref, self.domid, access).map_err(MapFailure::Refused)?;
        let writable = u32::from(access == Access::ReadWrite);
        match pins.get_mut(&key) {
            Some(p) => {
                p.count = p.count.saturating_add(1);
                p.writers = p.writers.saturating_add(writable);
                Ok(u64::from(p.frame))
            }
            None => {
                if u64::from(frame) >= peer.mem_pages {
                    peer.grants.release(gref, access, false, false);
                    return Err(MapFailure::BadFrame { frame: u64::from(frame), frames: peer.mem_pages });
                }
                pins.insert(key, Pin { count: 1, writers: writable, frame });
                Ok(u64::from(frame))
            }
        }
    }

    /// Drops one pin; clears the entry's flags when no pin (or no writable
    /// pin) is left.
    fn unpin(&self, peer: &Peer, gref: GrantRefNum, access: Access) {
        let mut pins = lock(&self.pins.pins);
        let key = (peer.incarnation, gref);
        let Some(p) = pins.get_mut(&key) else {
            log::error!("{}: unpinning grant ref {gref} of {} that is not pinned", self.domid, peer.domid);
            return;
        };
        p.count = p.count.saturating_sub(1);
        if access == Access::ReadWrite {
            p.writers = p.writers.saturating_sub(1);
        }
        peer.grants.release(gref, access, p.count > 0, p.writers > 0);
        if p.count == 0 {
            pins.remove(&key);
        }
    }

    fn pin_counts(&self, peer: &Peer, gref: GrantRefNum) -> (u32, u32) {
        lock(&self.pins.pins).get(&(peer.incarnation, gref)).map_or((0, 0), |p| (p.count, p.writers))
    }
}

/// Granted pages of another domain, mapped contiguously in this process.
/// Unmapped, and the pins released, on drop.
pub struct MappedGrant {
    domain: Arc<Domain>,
    peer: Arc<Peer>,
    /// `None` only while dropping.
    map: Option<Mmap>,
    grefs: Vec<GrantRefNum>,
    access: Access,
}

impl fmt::Debug for MappedGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedGrant")
            .field("granter", &self.peer.domid)
            .field("grefs", &self.grefs)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl MappedGrant {
    /// The first byte. Valid for reads (and writes when mapped
    /// [`Access::ReadWrite`]) of [`Self::len`] bytes while `self` lives;
    /// the granting domain writes it concurrently, so access it with
    /// volatile or atomic operations only.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.map.as_ref().map_or(NonNull::dangling(), |m| m.as_ptr())
    }

    /// Length in bytes (pages mapped times the page size).
    pub fn len(&self) -> usize {
        self.grefs.len() * PAGE
    }

    /// Whether nothing is mapped (never, for a successful map).
    pub fn is_empty(&self) -> bool {
        self.grefs.is_empty()
    }

    /// The refs mapped, in address order.
    pub fn grefs(&self) -> &[GrantRefNum] {
        &self.grefs
    }

    /// The granting domain.
    pub fn granter(&self) -> DomId {
        self.peer.domid
    }

    /// How the pages are mapped.
    pub fn access(&self) -> Access {
        self.access
    }

    fn check_range(&self, offset: usize, len: usize) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        // SAFETY: `offset <= end <= self.len()`, inside the mapping.
        (end <= self.len()).then(|| unsafe { self.as_ptr().as_ptr().add(offset) })
    }

    /// Copies bytes out of the mapping (volatile reads). `None` if the range
    /// is outside it.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Option<()> {
        let p = self.check_range(offset, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `p + i` is inside the mapped, readable range (checked
            // above); a volatile read of memory the peer may write.
            *b = unsafe { p.add(i).read_volatile() };
        }
        Some(())
    }

    /// Copies bytes into the mapping (volatile writes). `None` if the range
    /// is outside it or the mapping is read-only.
    pub fn write(&self, offset: usize, data: &[u8]) -> Option<()> {
        if self.access != Access::ReadWrite {
            return None;
        }
        let p = self.check_range(offset, data.len())?;
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: `p + i` is inside the mapped range, which is writable
            // (checked above); a volatile write to shared memory.
            unsafe { p.add(i).write_volatile(b) };
        }
        Some(())
    }
}

impl Drop for MappedGrant {
    fn drop(&mut self) {
        // Unmap first, then unpin: once the granting domain sees the flags
        // clear, this process can no longer touch the pages.
        drop(self.map.take());
        for &gref in &self.grefs {
            self.domain.unpin(&self.peer, gref, self.access);
        }
    }
}

/// A writable mapping of a multi-page shared ring (1 to
/// [`MAX_RING_PAGES`] granted pages, contiguous), for
/// [`grant_tables::BackRing`].
#[derive(Debug)]
pub struct MappedRing {
    inner: MappedGrant,
}

impl MappedRing {
    /// The underlying mapping.
    pub fn mapping(&self) -> &MappedGrant {
        &self.inner
    }
}

// SAFETY: a `MappedRing` is always a read-write mapping of `len()` bytes,
// page-aligned (mmap), that lives as long as `self`; rings access it only
// atomically or volatilely.
unsafe impl RingMemory for MappedRing {
    fn ring_ptr(&self) -> NonNull<u8> {
        self.inner.as_ptr()
    }
    fn ring_len(&self) -> usize {
        self.inner.len()
    }
}

fn os_failure(op: &'static str, e: &std::io::Error) -> MapFailure {
    MapFailure::Os { op, errno: e.raw_os_error().unwrap_or(libc::EIO) }
}

impl HostedPlatform {
    fn map_error(&self, granter: DomId, gref: GrantRefNum, failure: MapFailure) -> MapError {
        let e = MapError { mapper: self.inner.domid, granter, gref, failure };
        log::debug!("{e}");
        e
    }

    /// Maps grant `gref` of domain `granter` (Xen's `GNTTABOP_map_grant_ref`
    /// with `GNTMAP_host_map`): one page, read-only when `access` is
    /// [`Access::ReadOnly`] (a write through it faults).
    pub fn map_grant(&self, granter: DomId, gref: GrantRefNum, access: Access) -> Result<MappedGrant, MapError> {
        self.map_grants(granter, &[gref], access)
    }

    /// Maps several grants of `granter` into one contiguous region, in the
    /// order given: address space is reserved, then each page mapped over
    /// it. All or nothing.
    pub fn map_grants(&self, granter: DomId, grefs: &[GrantRefNum], access: Access) -> Result<MappedGrant, MapError> {
        let first = grefs.first().copied().unwrap_or(0);
        if grefs.is_empty() || grefs.len() > 1024 {
            return Err(self.map_error(granter, first, MapFailure::BadCount(grefs.len())));
        }
        let d = &self.inner;
        let peer = d.peer(granter).map_err(|e| self.map_error(granter, first, MapFailure::NoSuchDomain(e)))?;
        let writable = access == Access::ReadWrite;
        if let [gref] = grefs {
            let frame = d.pin(&peer, *gref, access).map_err(|f| self.map_error(granter, *gref, f))?;
            return match Mmap::shared(peer.mem.as_fd(), frame * PAGE as u64, PAGE, writable) {
                Ok(map) => Ok(MappedGrant { domain: d.clone(), peer, map: Some(map), grefs: vec![*gref], access }),
                Err(e) => {
                    d.unpin(&peer, *gref, access);
                    Err(self.map_error(granter, *gref, os_failure("mmap of the granted page", &e)))
                }
            };
        }
        let region = Mmap::reserve(grefs.len() * PAGE)
            .map_err(|e| self.map_error(granter, first, os_failure("reserving address space", &e)))?;
        // Built up page by page: dropping it on failure unmaps the region and
        // releases the pins taken so far.
        let mut m = MappedGrant { domain: d.clone(), peer: peer.clone(), map: Some(region), grefs: Vec::new(), access };
        for (i, &gref) in grefs.iter().enumerate() {
            let frame = d.pin(&peer, gref, access).map_err(|f| self.map_error(granter, gref, f))?;
            let mapped = match &m.map {
                Some(region) => region.map_over(i * PAGE, peer.mem.as_fd(), frame * PAGE as u64, PAGE, writable),
                None => Err(std::io::Error::other("region missing")),
            };
            if let Err(e) = mapped {
                d.unpin(&peer, gref, access);
                return Err(self.map_error(granter, gref, os_failure("mmap of a granted page", &e)));
            }
            m.grefs.push(gref);
        }
        Ok(m)
    }

    /// Maps the pages of a shared ring granted by `granter` (read-write, 1 to
    /// [`MAX_RING_PAGES`] refs, in ring order) for a [`grant_tables::BackRing`].
    pub fn map_ring(&self, granter: DomId, grefs: &[GrantRefNum]) -> Result<MappedRing, MapError> {
        if grefs.is_empty() || grefs.len() > MAX_RING_PAGES {
            let first = grefs.first().copied().unwrap_or(0);
            return Err(self.map_error(granter, first, MapFailure::BadCount(grefs.len())));
        }
        Ok(MappedRing { inner: self.map_grants(granter, grefs, Access::ReadWrite)? })
    }

    /// Unmaps a grant (the same as dropping it).
    pub fn unmap(&self, mapping: MappedGrant) {
        drop(mapping);
    }

    /// This domain's pins of `gref` of `granter`: (all, writable). Zero when
    /// the domain is unknown.
    pub fn pin_counts(&self, granter: DomId, gref: GrantRefNum) -> (u32, u32) {
        match self.inner.peer(granter) {
            Ok(p) => self.inner.pin_counts(&p, gref),
            Err(_) => (0, 0),
        }
    }

    /// Xen's `GNTTABOP_copy`: each op copies `len` bytes between a granted
    /// page (`GNTCOPY_source_gref`/`GNTCOPY_dest_gref`: `u` is a ref in
    /// `domid`'s table, granted to this domain) or a frame of this domain's
    /// own memory (`domid` must then be `DOMID_SELF`). Each op gets its
    /// `GNTST_*` status; the return value is how many failed.
    ///
    /// Checks, in Xen's order: a frame side not named `DOMID_SELF` →
    /// `GNTST_permission_denied`; an unknown domain → `GNTST_bad_domain`;
    /// then each side is pinned for the copy (source read-only, destination
    /// writable; a ref outside the table → `GNTST_bad_gntref`, an ended,
    /// foreign or read-only grant → `GNTST_general_error`, a frame outside
    /// the memory → `GNTST_bad_page`); then offset + len beyond a page on
    /// either side → `GNTST_bad_copy_arg`. Pins are released after the copy
    /// (or the failure).
    pub fn grant_copy(&self, ops: &mut [GnttabCopy]) -> usize {
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

    fn copy_one(&self, op: &GnttabCopy) -> Result<(), GntStatus> {
        let d = &self.inner;
        let flags = GntCopyFlags::from_bits_retain(op.flags);
        let src_gref = flags.contains(GntCopyFlags::SOURCE_GREF);
        let dst_gref = flags.contains(GntCopyFlags::DEST_GREF);
        // Only DOMID_SELF may name a frame.
        if (!src_gref && op.source.domid != DOMID_SELF) || (!dst_gref && op.dest.domid != DOMID_SELF) {
            return Err(GntStatus::PermissionDenied);
        }
        let resolve = |domid: u16| -> Result<Arc<Peer>, GntStatus> {
            let domid = if domid == DOMID_SELF { d.domid } else { DomId(domid) };
            d.peer(domid).map_err(|_| GntStatus::BadDomain)
        };
        let src_peer = if src_gref { Some(resolve(op.source.domid)?) } else { None };
        let dst_peer = if dst_gref { Some(resolve(op.dest.domid)?) } else { None };

        let src = self.claim(src_peer.as_deref(), op.source.u, Access::ReadOnly)?;
        let dst = match self.claim(dst_peer.as_deref(), op.dest.u, Access::ReadWrite) {
            Ok(f) => f,
            Err(s) => {
                self.unclaim(src_peer.as_deref(), op.source.u, Access::ReadOnly);
                return Err(s);
            }
        };
        let result = self.copy_bytes(op, src_peer.as_deref(), src, dst_peer.as_deref(), dst);
        self.unclaim(dst_peer.as_deref(), op.dest.u, Access::ReadWrite);
        self.unclaim(src_peer.as_deref(), op.source.u, Access::ReadOnly);
        result
    }

    /// Pins one side of a copy; returns its frame.
    fn claim(&self, peer: Option<&Peer>, u: u64, access: Access) -> Result<u64, GntStatus> {
        let d = &self.inner;
        match peer {
            Some(p) => {
                let gref = GrantRefNum::try_from(u).map_err(|_| GntStatus::BadGntref)?;
                d.pin(p, gref, access).map_err(|f| failure_status(&f))
            }
            None if u < d.memory.pages() => Ok(u),
            None => Err(GntStatus::BadPage),
        }
    }

    fn unclaim(&self, peer: Option<&Peer>, u: u64, access: Access) {
        if let (Some(p), Ok(gref)) = (peer, GrantRefNum::try_from(u)) {
            self.inner.unpin(p, gref, access);
        }
    }

    fn copy_bytes(&self, op: &GnttabCopy, sp: Option<&Peer>, sf: u64, dp: Option<&Peer>, df: u64) -> Result<(), GntStatus> {
        let len = usize::from(op.len);
        let (so, dof) = (usize::from(op.source.offset), usize::from(op.dest.offset));
        if so + len > PAGE_SIZE || dof + len > PAGE_SIZE {
            return Err(GntStatus::BadCopyArg);
        }
        let own = self.inner.memory.file();
        let sfile = sp.map_or(own, |p| &p.mem);
        let dfile = dp.map_or(own, |p| &p.mem);
        let mut buf = [0u8; PAGE_SIZE];
        let chunk = &mut buf[..len];
        // The memfds are size-sealed and the frames were checked against
        // their sizes, so these reads and writes stay inside the files.
        sfile.read_exact_at(chunk, sf * PAGE as u64 + so as u64).map_err(|e| {
            log::error!("grant copy: reading frame {sf:#x}: {e}");
            GntStatus::GeneralError
        })?;
        dfile.write_all_at(chunk, df * PAGE as u64 + dof as u64).map_err(|e| {
            log::error!("grant copy: writing frame {df:#x}: {e}");
            GntStatus::GeneralError
        })?;
        Ok(())
    }
}
