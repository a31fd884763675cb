//! This domain's grant table: granting frames to peers and taking them back.
//!
//! - Refs come from a lock-free free list (O(1) allocate and release), so one
//!   table can serve every queue of every device from any thread.
//! - [`GrantTable::grant_access`] writes `frame` and `domid` first and only
//!   then, with release ordering, the flags that make the entry live: Xen
//!   must never see `GTF_permit_access` on a half-written entry.
//! - [`GrantTable::end_access`] clears the flags with a compare-and-swap that
//!   succeeds only while neither `GTF_reading` nor `GTF_writing` is set. If
//!   the peer still maps the frame (or keeps the flags moving), the ref is
//!   quarantined: kept out of the free list, and the caller is told the page
//!   must not be reused either (XSA-396).
//! - A quarantined ref is retried, not lost: Xen releases a dead peer's
//!   mappings (and a live peer may unmap late), after which the end of
//!   access succeeds. [`GrantTable::retry_quarantined`] tries every
//!   quarantined ref again; a driver calls it from its poll loop, as Linux
//!   retries deferred ends from a timer. [`GrantTable::grant_access`] also
//!   retries once by itself when the free list runs dry. A ref goes back to
//!   the free list only after an end of access that succeeded.
//! - Pages travel with their grants: [`GrantTable::end_access_with_page`]
//!   and, for a multi-page allocation (a ring, a buffer pool),
//!   [`GrantTable::end_access_all`] take the owning value and keep it, whole,
//!   in the quarantine until every one of its grants has ended; only then is
//!   it dropped (freed). Refs that did end are released at once. Drivers
//!   never need to leak (`mem::forget`) a page to keep it from a peer.
//! - A [`GrantRef`] is a move-only handle: ending access consumes it, so a
//!   ref cannot be used after it has been ended.
//! - [`GrantTable::stats`] counts refs free, granted and quarantined, and the
//!   refs recovered by retries, so a leak shows up as numbers.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_queue::{ArrayQueue, SegQueue};

use crate::abi::{GrantFlags, GrantRefNum, GNTTAB_NR_RESERVED_ENTRIES};
use crate::platform::{DomId, Gfn, GrantTableFrames};

/// How many times `end_access` retries its compare-and-swap when the flags
/// change under it before it gives up and quarantines. A peer that maps and
/// unmaps in a tight loop cannot keep us spinning.
pub const END_ACCESS_MAX_ATTEMPTS: u32 = 64;

/// Whether the peer may write the granted frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// The peer may read and write.
    ReadWrite,
    /// The peer may only read (`GTF_readonly`).
    ReadOnly,
}

/// A live grant: move-only, consumed by ending access.
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a grant that is dropped without end_access stays open to the peer"]
pub struct GrantRef {
    gref: GrantRefNum,
    table: usize,
}

impl GrantRef {
    /// The raw ref number, to hand to the peer (through a ring or xenstore).
    pub fn raw(&self) -> GrantRefNum {
        self.gref
    }
}

/// Why granting failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// Every ref is in use or quarantined.
    NoFreeRefs {
        /// Refs in the table.
        capacity: u32,
        /// Refs in quarantine (the peer still maps them).
        quarantined: usize,
    },
    /// The frame does not fit the 32-bit `frame` field of a v1 entry.
    FrameTooLarge(Gfn),
    /// The domain id is reserved (`DOMID_SELF`, ...), not a real domain.
    BadDomain(DomId),
    /// The pages to grant have no frame number for page `index` (a platform
    /// whose [`crate::SharedPages`] are inconsistent).
    NoFrame {
        /// The page without a frame.
        index: usize,
    },
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::NoFreeRefs { capacity, quarantined } => write!(
                f,
                "no free grant refs ({capacity} in the table, {quarantined} quarantined while a peer maps them); end unused grants, call retry_quarantined once peers unmap, or set up more grant frames"
            ),
            GrantError::FrameTooLarge(g) => write!(
                f,
                "frame {:#x} does not fit a v1 grant entry (32 bits); allocate shared pages below 16 TiB",
                g.0
            ),
            GrantError::BadDomain(d) => {
                write!(f, "cannot grant to reserved domain id {:#x}; name the peer's real domid", d.0)
            }
            GrantError::NoFrame { index } => write!(
                f,
                "page {index} of the allocation has no frame number; the platform's page allocator is inconsistent"
            ),
        }
    }
}

/// Ending a grant failed: the peer still maps the frame (or kept changing
/// the flags). The ref, and the page when the table was given it, are
/// quarantined until [`GrantTable::retry_quarantined`] ends them; the caller
/// must not reuse a page it kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndAccessError {
    /// The (first) quarantined ref.
    pub gref: GrantRefNum,
    /// Its flags, as seen last.
    pub flags: GrantFlags,
    /// How many refs of the allocation the peer still uses (1 for a single
    /// grant); the others ended and were released.
    pub in_use: usize,
}

impl core::error::Error for GrantError {}
impl core::error::Error for EndAccessError {}

impl fmt::Display for EndAccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grant ref {} is still in use by the peer (flags {:?})",
            self.gref, self.flags
        )?;
        if self.in_use > 1 {
            write!(f, ", with {} more refs of the same pages", self.in_use - 1)?;
        }
        write!(
            f,
            "; the refs and their pages are quarantined until the peer lets go (retry with retry_quarantined)"
        )
    }
}

/// Counts of a grant table, for monitoring and leak checks. Every ref above
/// the reserved ones is free, granted or quarantined (or was live at
/// start-up and is never handed out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantStats {
    /// Refs in the table, reserved ones included.
    pub capacity: u32,
    /// Refs ready to hand out.
    pub free: usize,
    /// Refs granted and not ended.
    pub granted: usize,
    /// Refs whose end of access was refused and waits for a retry.
    pub quarantined: usize,
    /// Page allocations the quarantine holds (freed when their last ref
    /// ends).
    pub quarantined_allocations: usize,
    /// Refs quarantined since the table was made.
    pub quarantined_total: u64,
    /// Refs a retry ended and released since the table was made.
    pub recovered: u64,
}

/// Refs whose end was refused, with the pages they share.
struct Held {
    refs: Vec<GrantRefNum>,
    page: Option<Box<dyn Send>>,
}

/// This domain's grant table.
pub struct GrantTable<F: GrantTableFrames> {
    frames: F,
    free: ArrayQueue<GrantRefNum>,
    quarantine: SegQueue<Held>,
    quarantined: AtomicUsize,
    held_pages: AtomicUsize,
    granted: AtomicUsize,
    quarantined_total: AtomicU64,
    recovered: AtomicU64,
    /// Unique per table, so a ref cannot be ended through another table.
    id: usize,
}

static NEXT_TABLE_ID: AtomicUsize = AtomicUsize::new(1);

impl<F: GrantTableFrames> Drop for GrantTable<F> {
    /// A last retry; pages still in quarantine after it may still be mapped
    /// by the peer: they are leaked, never freed or reused (XSA-396).
    fn drop(&mut self) {
        self.retry_quarantined();
        let mut leaked = 0usize;
        while let Some(held) = self.quarantine.pop() {
            if let Some(page) = held.page {
                // Leaked on purpose: the peer may still map the page, so
                // freeing it would hand the peer's mapping to whoever
                // allocates it next.
                let _: &mut dyn Send = Box::leak(page);
                leaked += 1;
            }
        }
        if leaked > 0 {
            log::warn!(
                "grant table dropped with {leaked} page allocation(s) still mapped by peers: leaked, never freed"
            );
        }
    }
}

impl<F: GrantTableFrames> GrantTable<F> {
    /// Builds the table over `frames`. Every entry above the reserved ones
    /// must be unused (flags 0); entries that are not are left alone and
    /// never handed out.
    pub fn new(frames: F) -> Self {
        let count = frames.entry_count();
        let cap = (count.saturating_sub(GNTTAB_NR_RESERVED_ENTRIES) as usize).max(1);
        let free = ArrayQueue::new(cap);
        let table = GrantTable {
            frames,
            free,
            quarantine: SegQueue::new(),
            quarantined: AtomicUsize::new(0),
            held_pages: AtomicUsize::new(0),
            granted: AtomicUsize::new(0),
            quarantined_total: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
        };
        for gref in GNTTAB_NR_RESERVED_ENTRIES..count {
            if table.flags_now(gref) == 0 {
                // Cannot fail: the queue holds every non-reserved ref.
                let _ = table.free.push(gref);
            } else {
                log::warn!("grant ref {gref} is live at start-up; it will not be handed out");
            }
        }
        table
    }

    fn id(&self) -> usize {
        self.id
    }

    /// Refs in the table (reserved ones included).
    pub fn capacity(&self) -> u32 {
        self.frames.entry_count()
    }

    /// Refs ready to hand out.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Refs in quarantine now (their end of access was refused and has not
    /// succeeded on a retry yet).
    pub fn quarantined_count(&self) -> usize {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Refs granted and not ended.
    pub fn granted_count(&self) -> usize {
        self.granted.load(Ordering::Relaxed)
    }

    /// The table's counts.
    pub fn stats(&self) -> GrantStats {
        GrantStats {
            capacity: self.capacity(),
            free: self.free_count(),
            granted: self.granted_count(),
            quarantined: self.quarantined_count(),
            quarantined_allocations: self.held_pages.load(Ordering::Relaxed),
            quarantined_total: self.quarantined_total.load(Ordering::Relaxed),
            recovered: self.recovered.load(Ordering::Relaxed),
        }
    }

    fn entry_ptr(&self, gref: GrantRefNum) -> *mut u8 {
        assert!(
            gref < self.frames.entry_count(),
            "grant ref {gref} outside the table"
        );
        // SAFETY: `gref < entry_count`, and `GrantTableFrames` guarantees that
        // many consecutive entries.
        unsafe {
            self.frames
                .entries()
                .as_ptr()
                .add(gref as usize)
                .cast::<u8>()
        }
    }

    /// The entry's first word: `flags | domid << 16`. Flags and domid are
    /// always accessed together through this 32-bit atomic, as Xen does,
    /// so a compare-and-swap on the flags also checks who the grant is for.
    fn head(&self, gref: GrantRefNum) -> &AtomicU32 {
        // SAFETY: `entry_ptr` is an 8-byte aligned, live entry whose first
        // four bytes are `flags` and `domid` (little-endian, checked at
        // compile time in `abi`). The hypervisor writes them concurrently,
        // so they are only ever accessed as this one atomic word; it lives
        // as long as `self.frames`.
        unsafe { AtomicU32::from_ptr(self.entry_ptr(gref).cast::<u32>()) }
    }

    fn flags_now(&self, gref: GrantRefNum) -> u16 {
        self.head(gref).load(Ordering::Acquire) as u16
    }

    fn frame(&self, gref: GrantRefNum) -> &AtomicU32 {
        // SAFETY: as in `flags`; `frame` is at byte offset 4, 4-aligned.
        unsafe { AtomicU32::from_ptr(self.entry_ptr(gref).add(4).cast::<u32>()) }
    }

    fn write_entry(&self, gref: GrantRefNum, domid: DomId, frame: u32, access: Access) {
        self.frame(gref).store(frame, Ordering::Relaxed);
        let mut flags = GrantFlags::PERMIT_ACCESS;
        if access == Access::ReadOnly {
            flags |= GrantFlags::READONLY;
        }
        // Release: the frame is visible before the entry becomes live (Xen
        // reads flags and domid first and trusts the frame once
        // permit_access is set). Flags and domid go in one store.
        self.head(gref).store(
            u32::from(flags.bits()) | u32::from(domid.0) << 16,
            Ordering::Release,
        );
    }

    fn check_args(domid: DomId, frame: Gfn) -> Result<u32, GrantError> {
        if !domid.is_real() {
            return Err(GrantError::BadDomain(domid));
        }
        u32::try_from(frame.0).map_err(|_| GrantError::FrameTooLarge(frame))
    }

    fn no_free(&self) -> GrantError {
        GrantError::NoFreeRefs {
            capacity: self.capacity(),
            quarantined: self.quarantined_count(),
        }
    }

    /// A free ref; when none is left and some are quarantined, retries the
    /// quarantine once first.
    fn pop_free(&self) -> Option<GrantRefNum> {
        if let Some(g) = self.free.pop() {
            return Some(g);
        }
        if self.quarantined_count() > 0 && self.retry_quarantined() > 0 {
            return self.free.pop();
        }
        None
    }

    /// Grants `domid` access to `frame`.
    pub fn grant_access(
        &self,
        domid: DomId,
        frame: Gfn,
        access: Access,
    ) -> Result<GrantRef, GrantError> {
        let frame32 = Self::check_args(domid, frame)?;
        let gref = self.pop_free().ok_or_else(|| self.no_free())?;
        self.granted.fetch_add(1, Ordering::Relaxed);
        self.write_entry(gref, domid, frame32, access);
        Ok(GrantRef {
            gref,
            table: self.id(),
        })
    }

    /// Grants `domid` access to every frame in `frames`, all or nothing:
    /// a pool of persistent grants for a device.
    pub fn grant_batch(
        &self,
        domid: DomId,
        frames: &[Gfn],
        access: Access,
    ) -> Result<Vec<GrantRef>, GrantError> {
        let mut checked = Vec::with_capacity(frames.len());
        for &f in frames {
            checked.push(Self::check_args(domid, f)?);
        }
        let mut refs = Vec::with_capacity(frames.len());
        for _ in 0..frames.len() {
            match self.pop_free() {
                Some(g) => refs.push(g),
                None => {
                    for g in refs {
                        // Cannot fail: these came out of the queue just now.
                        let _ = self.free.push(g);
                    }
                    return Err(self.no_free());
                }
            }
        }
        self.granted.fetch_add(refs.len(), Ordering::Relaxed);
        Ok(refs
            .into_iter()
            .zip(checked)
            .map(|(gref, frame)| {
                self.write_entry(gref, domid, frame, access);
                GrantRef {
                    gref,
                    table: self.id(),
                }
            })
            .collect())
    }

    /// The entry's flags as they are now.
    pub fn flags_of(&self, grant: &GrantRef) -> GrantFlags {
        self.check_owner(grant);
        GrantFlags::from_bits_retain(self.flags_now(grant.gref))
    }

    /// Whether the peer maps (or is copying) the frame right now.
    pub fn in_use_by_peer(&self, grant: &GrantRef) -> bool {
        self.flags_of(grant)
            .intersects(GrantFlags::READING | GrantFlags::WRITING)
    }

    fn check_owner(&self, grant: &GrantRef) {
        assert_eq!(
            grant.table,
            self.id(),
            "grant ref {} belongs to another grant table",
            grant.gref
        );
    }

    /// Ends the peer's access. On success the ref goes back to the free
    /// list and the page may be reused. On failure the ref is quarantined
    /// (until a retry ends it) and the caller must not reuse the page;
    /// prefer [`Self::end_access_with_page`], which keeps the page too.
    ///
    /// # Panics
    /// If `grant` was handed out by another table: a programming error in
    /// this domain, never caused by the peer.
    pub fn end_access(&self, grant: GrantRef) -> Result<(), EndAccessError> {
        self.end_one::<()>(grant, None).map(|_| ())
    }

    /// Ends the peer's access and gives the page back when that succeeded.
    /// On failure the table keeps the page with the ref until a retry ends
    /// the grant, and then drops (frees) it.
    ///
    /// # Panics
    /// As [`Self::end_access`].
    pub fn end_access_with_page<P: Send + 'static>(
        &self,
        grant: GrantRef,
        page: P,
    ) -> Result<P, EndAccessError> {
        self.end_one(grant, Some(page))
            // `end_one` hands back the `Some` it was given.
            .map(|p| p.unwrap_or_else(|| unreachable!()))
    }

    fn end_one<P: Send + 'static>(
        &self,
        grant: GrantRef,
        page: Option<P>,
    ) -> Result<Option<P>, EndAccessError> {
        self.check_owner(&grant);
        match self.try_end(grant.gref) {
            Ok(()) => {
                self.granted.fetch_sub(1, Ordering::Relaxed);
                self.push_free(grant.gref);
                Ok(page)
            }
            Err(flags) => Err(self.hold(alloc::vec![grant.gref], page, flags)),
        }
    }

    /// Ends every grant of a multi-page allocation (a ring, a buffer pool)
    /// and gives the owning value back when all ended. Grants that end are
    /// released at once; if any is refused, `pages` stays whole in the
    /// quarantine with the refused refs, and is dropped (freed) only when a
    /// retry has ended the last of them.
    ///
    /// # Panics
    /// If any grant was handed out by another table (checked before any is
    /// ended).
    pub fn end_access_all<P: Send + 'static>(
        &self,
        grants: Vec<GrantRef>,
        pages: P,
    ) -> Result<P, EndAccessError> {
        for g in &grants {
            self.check_owner(g);
        }
        let mut refused: Vec<GrantRefNum> = Vec::new();
        let mut first_flags = GrantFlags::empty();
        let mut ended = 0usize;
        for g in grants {
            match self.try_end(g.gref) {
                Ok(()) => {
                    ended += 1;
                    self.push_free(g.gref);
                }
                Err(flags) => {
                    if refused.is_empty() {
                        first_flags = flags;
                    }
                    refused.push(g.gref);
                }
            }
        }
        self.granted.fetch_sub(ended, Ordering::Relaxed);
        if refused.is_empty() {
            return Ok(pages);
        }
        Err(self.hold(refused, Some(pages), first_flags))
    }

    /// Quarantines `refused` (granted refs whose end was refused; the first
    /// one's flags were `flags`) with the pages they share.
    fn hold<P: Send + 'static>(
        &self,
        refused: Vec<GrantRefNum>,
        page: Option<P>,
        flags: GrantFlags,
    ) -> EndAccessError {
        let gref = refused.first().copied().unwrap_or(0);
        let in_use = refused.len();
        log::warn!(
            "grant ref {gref} still in use by the peer at end of access ({in_use} ref(s) of the allocation): quarantined with its pages until a retry ends them"
        );
        self.granted.fetch_sub(in_use, Ordering::Relaxed);
        self.quarantined.fetch_add(in_use, Ordering::Relaxed);
        self.quarantined_total
            .fetch_add(in_use as u64, Ordering::Relaxed);
        let page = page.map(|p| {
            self.held_pages.fetch_add(1, Ordering::Relaxed);
            Box::new(p) as Box<dyn Send>
        });
        self.quarantine.push(Held {
            refs: refused,
            page,
        });
        EndAccessError {
            gref,
            flags,
            in_use,
        }
    }

    /// Tries to end every quarantined ref again. Refs whose peer has let go
    /// (unmapped, or died and had its mappings released) are ended and go
    /// back to the free list; an allocation whose last ref ends is dropped
    /// (its pages freed). Returns how many refs were recovered.
    ///
    /// Call it from a driver's poll loop or timer; it is cheap when the
    /// quarantine is empty (one atomic load), and safe from any thread.
    pub fn retry_quarantined(&self) -> usize {
        if self.quarantined_count() == 0 {
            return 0;
        }
        let mut recovered = 0usize;
        // Each entry present now is tried once; entries pushed meanwhile
        // (or pushed back below) wait for the next call.
        for _ in 0..self.quarantine.len() {
            let Some(mut held) = self.quarantine.pop() else {
                break;
            };
            held.refs.retain(|&gref| match self.try_end(gref) {
                Ok(()) => {
                    self.push_free(gref);
                    recovered += 1;
                    false
                }
                Err(_) => true,
            });
            if held.refs.is_empty() {
                if held.page.is_some() {
                    self.held_pages.fetch_sub(1, Ordering::Relaxed);
                }
                // Every grant on the pages has ended: they may be freed.
                drop(held);
            } else {
                self.quarantine.push(held);
            }
        }
        if recovered > 0 {
            self.quarantined.fetch_sub(recovered, Ordering::Relaxed);
            self.recovered
                .fetch_add(recovered as u64, Ordering::Relaxed);
            log::info!("{recovered} quarantined grant ref(s) ended and recovered");
        }
        recovered
    }

    /// The compare-and-swap loop of `gnttab_end_foreign_access_ref_v1`,
    /// bounded. On failure, the flags seen last.
    fn try_end(&self, gref: GrantRefNum) -> Result<(), GrantFlags> {
        let head = self.head(gref);
        let busy = GrantFlags::READING | GrantFlags::WRITING;
        let mut seen = head.load(Ordering::Acquire);
        for _ in 0..END_ACCESS_MAX_ATTEMPTS {
            let flags = GrantFlags::from_bits_retain(seen as u16);
            if flags.intersects(busy) {
                return Err(flags);
            }
            // Clear the flags, keep the domid. AcqRel: on success, later
            // reuse of the page happens after the entry is dead; we read the
            // flags Xen last wrote.
            match head.compare_exchange(
                seen,
                seen & 0xFFFF_0000,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => seen = now,
            }
        }
        Err(GrantFlags::from_bits_retain(seen as u16))
    }

    fn push_free(&self, gref: GrantRefNum) {
        if self.free.push(gref).is_err() {
            // Cannot happen: every ref out of the queue is unique and the
            // queue holds them all. Losing one ref is the safe failure.
            log::error!("grant free list overflow releasing ref {gref}; ref dropped");
        }
    }
}
