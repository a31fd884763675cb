//! Grant tables: this domain's table in shared memory, and the backend side
//! of grants (map, unmap, copy), checked the way Xen checks them.
//!
//! A domain's grant table is a memfd in Xen's exact v1 layout
//! ([`GrantEntryV1`]) followed by one pin record per entry, mapped by its
//! owner ([`HostedGrantFrames`], under a [`grant_tables::GrantTable`]) and
//! by every domain that maps or copies its grants (the emulated
//! hypervisor's view, a [`grant_tables::emulated::ForeignTable`]).
//!
//! Mapping a grant ([`HostedPlatform::map_grant`]) pins the entry with
//! `ForeignTable::pin_with` (checks `GTF_permit_access`, the entry's domid
//! and `GTF_readonly`, sets `GTF_reading`, plus `GTF_writing` for a writable
//! mapping, and counts the pin in the entry's shared pin record, as Xen's
//! active entries do), then maps exactly the granted page of the granting
//! domain's memfd: `PROT_READ` only for a read-only mapping, so a write
//! faults. The flags clear only when the last mapping (or copy) of the entry
//! goes. While a mapping lives the granting domain's `end_access` fails and
//! quarantines the ref (XSA-396). When a mapping domain dies, however it
//! dies, the hypervisor releases its pins ([`release_departed`]) as Xen
//! releases a dead domain's mappings, so the granting domain's retries end
//! those grants.
//!
//! A grant copy ([`HostedPlatform::grant_copy`]) runs at memory speed: the
//! peer is found without a lock or a system call, the entry is pinned for
//! the copy with a few atomic operations on its shared pin record, and the
//! bytes move with one `memmove` through a mapping of the peer's whole
//! memory made once per peer.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use grant_tables::abi::{GntCopyFlags, GntStatus, GnttabCopy, GrantEntryV1, GrantRefNum, DOMID_SELF, PAGE_SIZE};
use grant_tables::emulated::{ForeignTable, MapRefusal};
use grant_tables::foreign::{ForeignError, ForeignGrants, ForeignMapping, MapOp};
use grant_tables::ring::MAX_RING_PAGES;
use grant_tables::{shared_mem, Access, DomId, GrantTableFrames, RingMemory};

use crate::domain::{Domain, Peer};
use crate::sys::{self, Mmap, PAGE};
use crate::HostedPlatform;

/// How the hosted platform waits for a locked pin record: spins briefly,
/// then yields to the scheduler; gives up after about 200 000 yields (a
/// record held that long is garbage, not a live holder).
pub(crate) fn yield_backoff(attempt: u32) -> bool {
    if attempt < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    attempt < 200_000
}

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
        Some(GrantEntryV1 { flags: head as u16, domid: (head >> 16) as u16, frame: word(1) })
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
        MapFailure::Refused(why) => why.status(),
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

impl Domain {
    /// Pins `gref` of `peer` for `access` and returns its frame, checked to
    /// lie inside the peer's memory.
    #[inline]
    pub(crate) fn pin(&self, peer: &Peer, gref: GrantRefNum, access: Access) -> Result<u64, MapFailure> {
        let frame = peer.grants.pin_with(gref, self.domid, access, &mut yield_backoff).map_err(MapFailure::Refused)?;
        let frame = u64::from(frame);
        if frame >= peer.mem_pages {
            self.unpin(peer, gref, access);
            return Err(MapFailure::BadFrame { frame, frames: peer.mem_pages });
        }
        Ok(frame)
    }

    /// Drops one pin; the flags clear with the last pin (the last writable
    /// pin for `GTF_writing`).
    #[inline]
    pub(crate) fn unpin(&self, peer: &Peer, gref: GrantRefNum, access: Access) {
        if let Err(e) = peer.grants.unpin_with(gref, self.domid, access, &mut yield_backoff) {
            log::error!("{}: unpinning grant ref {gref} of {}: {e}", self.domid, peer.domid);
        }
    }
}

/// The hypervisor's release of a departed domain's pins on one remaining
/// domain's grant table (the memfd `grants`): every entry `departed`
/// pinned is unpinned and its `GTF_reading`/`GTF_writing` cleared, as Xen
/// releases a dead domain's grant mappings, so the granting domain can end
/// access. Returns how many entries were released.
pub(crate) fn release_departed(grants: BorrowedFd<'_>, departed: DomId) -> usize {
    let file = match grants.try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            log::error!("releasing the grant pins of {departed}: {e}");
            return 0;
        }
    };
    let size = match sys::sealed_size(&file) {
        Ok(s) => s,
        Err(e) => {
            log::error!("releasing the grant pins of {departed}: a grant table: {e}");
            return 0;
        }
    };
    let entries = size / (2 * std::mem::size_of::<GrantEntryV1>() as u64);
    let (Ok(len), Ok(count)) = (usize::try_from(size), u32::try_from(entries)) else { return 0 };
    if len == 0 || size % (2 * PAGE as u64) != 0 {
        return 0;
    }
    let map = match Mmap::shared(file.as_fd(), 0, len, true) {
        Ok(m) => m,
        Err(e) => {
            log::error!("releasing the grant pins of {departed}: mapping a grant table: {e}");
            return 0;
        }
    };
    // SAFETY: `map` maps the whole size-sealed table: `count` aligned
    // entries, then `count` aligned pin records from `len / 2`; it outlives
    // the view (dropped at the end of this function, after it); entries and
    // records are only accessed atomically.
    let table = unsafe { ForeignTable::with_pins(map.as_ptr().cast(), map.as_ptr().add(len / 2).cast(), count, None) };
    table.release_pins_of(departed, &mut yield_backoff)
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

impl MappedGrant {
    fn new(domain: &Arc<Domain>, peer: Arc<Peer>, map: Mmap, access: Access) -> Self {
        domain.peer_counts.grant_mappings.fetch_add(1, Ordering::Relaxed);
        MappedGrant { domain: domain.clone(), peer, map: Some(map), grefs: Vec::new(), access }
    }
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

    /// Copies bytes out of the mapping (one `memcpy`; the granting domain
    /// may change them meanwhile: validate the copy). `None` if the range
    /// is outside it.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Option<()> {
        self.read_at(offset, buf).ok()
    }

    /// Copies bytes into the mapping (one `memcpy`). `None` if the range is
    /// outside it or the mapping is read-only.
    pub fn write(&self, offset: usize, data: &[u8]) -> Option<()> {
        self.write_at(offset, data).ok()
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
        self.domain.peer_counts.grant_mappings.fetch_sub(1, Ordering::Relaxed);
    }
}

// SAFETY: `as_ptr()` is the start of a page-aligned mapping of `len()`
// bytes (`PROT_READ`, plus `PROT_WRITE` for a read-write mapping) owned by
// `self`; it is reached only through raw pointers.
unsafe impl ForeignMapping for MappedGrant {
    fn as_ptr(&self) -> NonNull<u8> {
        MappedGrant::as_ptr(self)
    }
    fn len(&self) -> usize {
        MappedGrant::len(self)
    }
    fn access(&self) -> Access {
        self.access
    }
    fn granter(&self) -> DomId {
        self.peer.domid
    }
    fn grefs(&self) -> &[GrantRefNum] {
        &self.grefs
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
                Ok(map) => {
                    let mut m = MappedGrant::new(d, peer, map, access);
                    m.grefs.push(*gref);
                    Ok(m)
                }
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
        let mut m = MappedGrant::new(d, peer.clone(), region, access);
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

    /// The pins of `gref` of `granter` (all, writable), from the entry's
    /// shared pin record. Zero when the domain is unknown.
    pub fn pin_counts(&self, granter: DomId, gref: GrantRefNum) -> (u32, u32) {
        match self.inner.peer(granter) {
            Ok(p) => {
                let c = p.grants.pin_counts(gref);
                (u32::from(c.pins), u32::from(c.writers))
            }
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
        self.grant_copy_noting(ops, &mut None)
    }

    /// [`Self::grant_copy`] that also notes where the first op's source
    /// bytes were read in this process (`first_src`, left as it was when
    /// that op failed): a hint for prefetching the same place later (a
    /// backend that sees a frontend reuse its buffers), never to be read
    /// or written through (the grant may end at any time).
    pub(crate) fn grant_copy_noting(&self, ops: &mut [GnttabCopy], first_src: &mut Option<usize>) -> usize {
        let mut failed = 0;
        for (i, op) in ops.iter_mut().enumerate() {
            let status = match self.copy_one(op) {
                Ok(src) => {
                    if i == 0 {
                        *first_src = Some(src);
                    }
                    GntStatus::Okay
                }
                Err(s) => {
                    failed += 1;
                    s
                }
            };
            op.status = status.raw();
        }
        failed
    }

    /// One copy; returns the address of the source bytes.
    #[inline]
    fn copy_one(&self, op: &GnttabCopy) -> Result<usize, GntStatus> {
        let d = &*self.inner;
        let flags = GntCopyFlags::from_bits_retain(op.flags);
        let src_gref = flags.contains(GntCopyFlags::SOURCE_GREF);
        let dst_gref = flags.contains(GntCopyFlags::DEST_GREF);
        // Only DOMID_SELF may name a frame.
        if (!src_gref && op.source.domid != DOMID_SELF) || (!dst_gref && op.dest.domid != DOMID_SELF) {
            return Err(GntStatus::PermissionDenied);
        }
        let granter =
            |domid: u16, is_gref: bool| is_gref.then_some(if domid == DOMID_SELF { d.domid.0 } else { domid });
        d.with_peers(granter(op.source.domid, src_gref), granter(op.dest.domid, dst_gref), |src_peer, dst_peer| {
            let src = self.copy_side(src_peer, op.source.u, src_gref, Access::ReadOnly)?;
            let dst = self.copy_side(dst_peer, op.dest.u, dst_gref, Access::ReadWrite)?;
            let len = usize::from(op.len);
            let (so, dof) = (usize::from(op.source.offset), usize::from(op.dest.offset));
            if so + len > PAGE_SIZE || dof + len > PAGE_SIZE {
                return Err(GntStatus::BadCopyArg);
            }
            // SAFETY: each side's `page` is a whole page inside a live
            // shared mapping of a domain's memory (its frame was checked
            // against the memfd's size; the peer, held for the call, or the
            // domain keeps the mapping), and `offset + len <= PAGE_SIZE` on
            // both (checked above); the memory is never referenced by Rust
            // references; `copy` allows overlap (a copy within one page).
            unsafe { shared_mem::copy(src.page.add(so), dst.page.add(dof), len) };
            Ok(src.page.as_ptr() as usize + so)
            // The sides drop here: the pins go after the copy.
        })
    }

    /// One side of a copy: the page (pinned for the copy when it is a
    /// grant of `peer`).
    #[inline(always)]
    fn copy_side<'a>(
        &'a self,
        peer: Option<&'a Peer>,
        u: u64,
        is_gref: bool,
        access: Access,
    ) -> Result<CopySide<'a>, GntStatus> {
        let d = &*self.inner;
        if !is_gref {
            let frame = usize::try_from(u).map_err(|_| GntStatus::BadPage)?;
            if u >= d.memory.pages() {
                return Err(GntStatus::BadPage);
            }
            let mem = d.memory.whole().ok_or(GntStatus::GeneralError)?;
            // SAFETY: `frame < pages`, and the whole mapping spans every page.
            let page = unsafe { mem.as_ptr().add(frame * PAGE) };
            return Ok(CopySide { page, pin: None, domain: d });
        }
        let peer = peer.ok_or(GntStatus::BadDomain)?;
        let gref = GrantRefNum::try_from(u).map_err(|_| GntStatus::BadGntref)?;
        let frame = d.pin(peer, gref, access).map_err(|f| failure_status(&f))?;
        // From here the side unpins on drop, failed or not.
        let mut side = CopySide { page: NonNull::dangling(), pin: Some((peer, gref, access)), domain: d };
        let base = peer.memory().ok_or(GntStatus::GeneralError)?.as_ptr();
        // `frame < mem_pages` (checked by `pin`), which fits `usize` since
        // the memory is mapped.
        let frame = usize::try_from(frame).map_err(|_| GntStatus::BadPage)?;
        // SAFETY: `frame < mem_pages`, and the mapping, kept by the peer
        // (alive for the copy), spans all of them.
        side.page = unsafe { base.add(frame * PAGE) };
        Ok(side)
    }
}

/// One side of a grant copy: a page of a domain's memory, mapped here, and
/// the pin that keeps it granted while the copy runs (unpinned on drop).
struct CopySide<'a> {
    page: NonNull<u8>,
    pin: Option<(&'a Peer, GrantRefNum, Access)>,
    domain: &'a Domain,
}

impl Drop for CopySide<'_> {
    fn drop(&mut self) {
        if let Some((peer, gref, access)) = self.pin {
            self.domain.unpin(peer, gref, access);
        }
    }
}

impl ForeignGrants for HostedPlatform {
    type Mapping = MappedGrant;
    type RingMapping = MappedRing;

    fn map_batch(&self, ops: &[MapOp], out: &mut Vec<Result<MappedGrant, ForeignError>>) {
        for op in ops {
            out.push(self.map_grant(op.granter, op.gref, op.access).map_err(|e| ForeignError {
                granter: e.granter,
                gref: e.gref,
                status: e.status(),
            }));
        }
    }

    fn map_ring_pages(&self, granter: DomId, refs: &[GrantRefNum]) -> Result<MappedRing, ForeignError> {
        self.map_ring(granter, refs).map_err(|e| ForeignError { granter: e.granter, gref: e.gref, status: e.status() })
    }

    fn copy_batch(&self, ops: &mut [GnttabCopy]) -> usize {
        self.grant_copy(ops)
    }
}
