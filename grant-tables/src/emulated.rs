//! Xen's side of the grant protocol, for emulated hypervisors.
//!
//! The `hosted` platform and the [`crate::fake`] platform play the
//! hypervisor: when a backend maps or copies a foreign grant they must check
//! it the way Xen does (`GTF_permit_access`, the entry's domid, read-only)
//! and set `GTF_reading`/`GTF_writing` atomically, so that the granting
//! side's end-access compare-and-swap races with them exactly as on Xen.

use alloc::sync::Arc;
use core::any::Any;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::abi::{GrantEntryV1, GrantFlags, GTF_TYPE_MASK};
use crate::platform::DomId;
use crate::table::Access;

/// Why a mapping was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapRefusal {
    /// The ref is outside the granting domain's table.
    OutOfRange,
    /// The entry is not a live access grant (ended, never granted, transfer).
    NotGranted,
    /// The entry grants another domain.
    WrongDomain {
        /// The domain the entry names.
        granted_to: u16,
    },
    /// A writable mapping of a read-only grant.
    ReadOnly,
    /// The flags kept changing under us.
    Contended,
}

impl core::fmt::Display for MapRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapRefusal::OutOfRange => write!(f, "grant ref is outside the granting domain's table"),
            MapRefusal::NotGranted => write!(
                f,
                "grant entry is not a live access grant (ended or never granted)"
            ),
            MapRefusal::WrongDomain { granted_to } => {
                write!(
                    f,
                    "grant entry is for domain {granted_to}, not the mapping domain"
                )
            }
            MapRefusal::ReadOnly => {
                write!(f, "grant is read-only but a writable mapping was asked for")
            }
            MapRefusal::Contended => write!(f, "grant entry flags kept changing; try again"),
        }
    }
}

impl core::error::Error for MapRefusal {}

/// A view of a granting domain's table, as the emulated hypervisor sees it.
pub struct ForeignTable {
    entries: NonNull<GrantEntryV1>,
    count: u32,
    /// What keeps the entries mapped, when the view owns a share of it.
    _owner: Option<Arc<dyn Any + Send + Sync>>,
}

// SAFETY: the table is shared memory accessed only atomically.
unsafe impl Send for ForeignTable {}
// SAFETY: as above.
unsafe impl Sync for ForeignTable {}

impl ForeignTable {
    /// Wraps a mapped grant table.
    ///
    /// # Safety
    /// `entries` must point to `count` 8-byte aligned grant entries that
    /// stay mapped for as long as the value lives and are only accessed
    /// atomically.
    pub unsafe fn new(entries: NonNull<GrantEntryV1>, count: u32) -> Self {
        ForeignTable {
            entries,
            count,
            _owner: None,
        }
    }

    /// Wraps a grant table whose memory `owner` keeps mapped: the view
    /// holds a share of `owner`, so the entries outlive it.
    ///
    /// # Safety
    /// `entries` must point to `count` 8-byte aligned grant entries that
    /// stay mapped for as long as `owner` lives and are only accessed
    /// atomically.
    pub unsafe fn owning(
        entries: NonNull<GrantEntryV1>,
        count: u32,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> Self {
        ForeignTable {
            entries,
            count,
            _owner: Some(owner),
        }
    }

    fn field<T>(&self, gref: u32, offset: usize) -> Option<*mut T> {
        if gref >= self.count {
            return None;
        }
        // SAFETY: `gref < count`, so the entry and its field at `offset`
        // (0, 2 or 4) are inside the mapping.
        Some(unsafe {
            self.entries
                .as_ptr()
                .add(gref as usize)
                .cast::<u8>()
                .add(offset)
                .cast::<T>()
        })
    }

    /// The entry's first word, `flags | domid << 16`: always accessed as one
    /// 32-bit atomic, so a compare-and-swap on the flags also checks the
    /// domid (Xen's `_set_status_v1`).
    fn head(&self, gref: u32) -> Option<&AtomicU32> {
        // SAFETY: an in-range, aligned u32 of live shared memory (see `new`).
        self.field::<u32>(gref, 0)
            .map(|p| unsafe { AtomicU32::from_ptr(p) })
    }

    fn frame(&self, gref: u32) -> Option<u32> {
        let f = self.field::<u32>(gref, 4)?;
        // SAFETY: an in-range, aligned u32 of live shared memory.
        Some(unsafe { AtomicU32::from_ptr(f) }.load(Ordering::Acquire))
    }

    /// Pins the entry for access by `requester` (a map, or the duration of a
    /// copy): checks it and sets `GTF_reading` (and `GTF_writing` for
    /// writable access) with one compare-and-swap over flags and domid, so
    /// an entry ended and re-granted to another domain meanwhile cannot be
    /// pinned. The frame is read only once pinned (the granter cannot end
    /// the grant then). Returns the granted frame.
    pub fn acquire(&self, gref: u32, requester: DomId, access: Access) -> Result<u32, MapRefusal> {
        let head = self.head(gref).ok_or(MapRefusal::OutOfRange)?;
        let mut seen = head.load(Ordering::Acquire);
        for _ in 0..64 {
            let flags = seen as u16;
            let domid = (seen >> 16) as u16;
            let f = GrantFlags::from_bits_retain(flags);
            if flags & GTF_TYPE_MASK != GrantFlags::PERMIT_ACCESS.bits() {
                return Err(MapRefusal::NotGranted);
            }
            if domid != requester.0 {
                return Err(MapRefusal::WrongDomain { granted_to: domid });
            }
            if access == Access::ReadWrite && f.contains(GrantFlags::READONLY) {
                return Err(MapRefusal::ReadOnly);
            }
            let mut pin = GrantFlags::READING;
            if access == Access::ReadWrite {
                pin |= GrantFlags::WRITING;
            }
            match head.compare_exchange(
                seen,
                seen | u32::from(pin.bits()),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return self.frame(gref).ok_or(MapRefusal::OutOfRange),
                Err(now) => seen = now,
            }
        }
        Err(MapRefusal::Contended)
    }

    /// Unpins an entry acquired with `access`: clears the bits `acquire`
    /// set. With `others_reading`/`others_writing` the caller says other
    /// mappings of the same entry remain (Xen keeps per-entry pin counts).
    pub fn release(&self, gref: u32, access: Access, others_reading: bool, others_writing: bool) {
        let Some(head) = self.head(gref) else {
            return;
        };
        let mut clear = 0u16;
        if !others_reading {
            clear |= GrantFlags::READING.bits();
        }
        if access == Access::ReadWrite && !others_writing {
            clear |= GrantFlags::WRITING.bits();
        }
        head.fetch_and(!u32::from(clear), Ordering::AcqRel);
    }

    /// Entries in the table.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}
