//! Xen's side of the grant protocol, for emulated hypervisors.
//!
//! The `hosted` platform and the [`crate::fake`] platform play the
//! hypervisor: when a backend maps or copies a foreign grant they must check
//! it the way Xen does (`GTF_permit_access`, the entry's domid, read-only)
//! and set `GTF_reading`/`GTF_writing` atomically, so that the granting
//! side's end-access compare-and-swap races with them exactly as on Xen.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};

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

/// A view of a granting domain's table, as the emulated hypervisor sees it.
pub struct ForeignTable {
    entries: NonNull<GrantEntryV1>,
    count: u32,
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
        ForeignTable { entries, count }
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

    fn flags(&self, gref: u32) -> Option<&AtomicU16> {
        // SAFETY: an in-range, aligned u16 of live shared memory (see `new`).
        self.field::<u16>(gref, 0)
            .map(|p| unsafe { AtomicU16::from_ptr(p) })
    }

    /// Reads the granted frame and domid of an entry once.
    fn frame_and_domid(&self, gref: u32) -> Option<(u32, u16)> {
        let f = self.field::<u32>(gref, 4)?;
        let d = self.field::<u16>(gref, 2)?;
        // SAFETY: in-range, aligned fields of live shared memory.
        let (f, d) = unsafe { (AtomicU32::from_ptr(f), AtomicU16::from_ptr(d)) };
        Some((f.load(Ordering::Acquire), d.load(Ordering::Acquire)))
    }

    /// Pins the entry for access by `requester` (a map, or the duration of a
    /// copy): checks it and sets `GTF_reading` (and `GTF_writing` for
    /// writable access) atomically. Returns the granted frame.
    pub fn acquire(&self, gref: u32, requester: DomId, access: Access) -> Result<u32, MapRefusal> {
        let flags = self.flags(gref).ok_or(MapRefusal::OutOfRange)?;
        let mut seen = flags.load(Ordering::Acquire);
        for _ in 0..64 {
            let f = GrantFlags::from_bits_retain(seen);
            if seen & GTF_TYPE_MASK != GrantFlags::PERMIT_ACCESS.bits() {
                return Err(MapRefusal::NotGranted);
            }
            let (frame, domid) = self.frame_and_domid(gref).ok_or(MapRefusal::OutOfRange)?;
            if domid != requester.0 {
                return Err(MapRefusal::WrongDomain { granted_to: domid });
            }
            if access == Access::ReadWrite && f.contains(GrantFlags::READONLY) {
                return Err(MapRefusal::ReadOnly);
            }
            let mut new = f | GrantFlags::READING;
            if access == Access::ReadWrite {
                new |= GrantFlags::WRITING;
            }
            match flags.compare_exchange(seen, new.bits(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(frame),
                Err(now) => seen = now,
            }
        }
        Err(MapRefusal::Contended)
    }

    /// Unpins an entry acquired with `access`: clears the bits `acquire`
    /// set. With `others_reading`/`others_writing` the caller says other
    /// mappings of the same entry remain (Xen keeps per-entry pin counts).
    pub fn release(&self, gref: u32, access: Access, others_reading: bool, others_writing: bool) {
        let Some(flags) = self.flags(gref) else {
            return;
        };
        let mut clear = 0u16;
        if !others_reading {
            clear |= GrantFlags::READING.bits();
        }
        if access == Access::ReadWrite && !others_writing {
            clear |= GrantFlags::WRITING.bits();
        }
        flags.fetch_and(!clear, Ordering::AcqRel);
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
