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
//!   quarantined: never returned to the free list, and the caller is told
//!   the page must not be reused either (XSA-396).
//!   [`GrantTable::end_access_with_page`] takes the page into the quarantine
//!   itself.
//! - A [`GrantRef`] is a move-only handle: ending access consumes it, so a
//!   ref cannot be used after it has been ended.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

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
        /// Refs lost to quarantine.
        quarantined: usize,
    },
    /// The frame does not fit the 32-bit `frame` field of a v1 entry.
    FrameTooLarge(Gfn),
    /// The domain id is reserved (`DOMID_SELF`, ...), not a real domain.
    BadDomain(DomId),
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::NoFreeRefs { capacity, quarantined } => write!(
                f,
                "no free grant refs ({capacity} in the table, {quarantined} quarantined); end unused grants or set up more grant frames"
            ),
            GrantError::FrameTooLarge(g) => write!(
                f,
                "frame {:#x} does not fit a v1 grant entry (32 bits); allocate shared pages below 16 TiB",
                g.0
            ),
            GrantError::BadDomain(d) => {
                write!(f, "cannot grant to reserved domain id {:#x}; name the peer's real domid", d.0)
            }
        }
    }
}

/// Ending a grant failed: the peer still maps the frame (or kept changing
/// the flags). The ref is quarantined; the page must not be reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndAccessError {
    /// The quarantined ref.
    pub gref: GrantRefNum,
    /// The flags seen last.
    pub flags: GrantFlags,
}

impl core::error::Error for GrantError {}
impl core::error::Error for EndAccessError {}

impl fmt::Display for EndAccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grant ref {} is still in use by the peer (flags {:?}); the ref and its page are quarantined and will never be reused",
            self.gref, self.flags
        )
    }
}

/// Something kept forever because a peer may still map it.
struct Quarantined {
    _gref: GrantRefNum,
    _page: Option<Box<dyn Send>>,
}

/// This domain's grant table.
pub struct GrantTable<F: GrantTableFrames> {
    frames: F,
    free: ArrayQueue<GrantRefNum>,
    quarantine: SegQueue<Quarantined>,
    quarantined: AtomicUsize,
    /// Unique per table, so a ref cannot be ended through another table.
    id: usize,
}

static NEXT_TABLE_ID: AtomicUsize = AtomicUsize::new(1);

impl<F: GrantTableFrames> Drop for GrantTable<F> {
    /// Quarantined pages may still be mapped by the peer: they are leaked,
    /// never freed or reused, even when the table goes away (XSA-396).
    fn drop(&mut self) {
        while let Some(q) = self.quarantine.pop() {
            core::mem::forget(q);
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

    /// Refs lost to quarantine.
    pub fn quarantined_count(&self) -> usize {
        self.quarantined.load(Ordering::Relaxed)
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

    /// Grants `domid` access to `frame`.
    pub fn grant_access(
        &self,
        domid: DomId,
        frame: Gfn,
        access: Access,
    ) -> Result<GrantRef, GrantError> {
        let frame32 = Self::check_args(domid, frame)?;
        let gref = self.free.pop().ok_or_else(|| self.no_free())?;
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
            match self.free.pop() {
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
    /// and the caller must never reuse the page (hand it to
    /// [`Self::end_access_with_page`] instead to have it kept here).
    ///
    /// # Panics
    /// If `grant` was handed out by another table: a programming error in
    /// this domain, never caused by the peer.
    pub fn end_access(&self, grant: GrantRef) -> Result<(), EndAccessError> {
        self.end_access_inner(grant, None)
    }

    /// Ends the peer's access and gives the page back when that succeeded.
    /// On failure the table keeps the page, and the ref, forever (even past
    /// the table's own drop: the page is leaked, never freed, since the
    /// peer may still map it).
    ///
    /// # Panics
    /// As [`Self::end_access`].
    pub fn end_access_with_page<P: Send + 'static>(
        &self,
        grant: GrantRef,
        page: P,
    ) -> Result<P, EndAccessError> {
        let mut slot = Some(page);
        match self.try_end(&grant) {
            Ok(()) => {
                self.release(grant);
                // `slot` was filled just above and nothing took it.
                Ok(slot.take().unwrap_or_else(|| unreachable!()))
            }
            Err(e) => {
                self.quarantine_ref(grant, slot.take().map(|p| Box::new(p) as Box<dyn Send>));
                Err(e)
            }
        }
    }

    fn end_access_inner(
        &self,
        grant: GrantRef,
        page: Option<Box<dyn Send>>,
    ) -> Result<(), EndAccessError> {
        match self.try_end(&grant) {
            Ok(()) => {
                self.release(grant);
                Ok(())
            }
            Err(e) => {
                self.quarantine_ref(grant, page);
                Err(e)
            }
        }
    }

    /// The compare-and-swap loop of `gnttab_end_foreign_access_ref_v1`,
    /// bounded.
    fn try_end(&self, grant: &GrantRef) -> Result<(), EndAccessError> {
        self.check_owner(grant);
        let head = self.head(grant.gref);
        let busy = GrantFlags::READING | GrantFlags::WRITING;
        let mut seen = head.load(Ordering::Acquire);
        for _ in 0..END_ACCESS_MAX_ATTEMPTS {
            let flags = GrantFlags::from_bits_retain(seen as u16);
            if flags.intersects(busy) {
                return Err(EndAccessError {
                    gref: grant.gref,
                    flags,
                });
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
        Err(EndAccessError {
            gref: grant.gref,
            flags: GrantFlags::from_bits_retain(seen as u16),
        })
    }

    fn release(&self, grant: GrantRef) {
        if self.free.push(grant.gref).is_err() {
            // Cannot happen: every ref out of the queue is unique and the
            // queue holds them all. Losing one ref is the safe failure.
            log::error!(
                "grant free list overflow releasing ref {}; ref dropped",
                grant.gref
            );
        }
    }

    fn quarantine_ref(&self, grant: GrantRef, page: Option<Box<dyn Send>>) {
        log::warn!(
            "grant ref {} still mapped by the peer at end of access: quarantined with its page",
            grant.gref
        );
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        self.quarantine.push(Quarantined {
            _gref: grant.gref,
            _page: page,
        });
    }
}
