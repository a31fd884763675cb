//! Xen's side of the grant protocol, for emulated hypervisors.
//!
//! The `hosted` platform and the [`crate::fake`] platform play the
//! hypervisor: when a backend maps or copies a foreign grant they must check
//! it the way Xen does (`GTF_permit_access`, the entry's domid, read-only)
//! and set `GTF_reading`/`GTF_writing` atomically, so that the granting
//! side's end-access compare-and-swap races with them exactly as on Xen.
//!
//! # Pin records
//! Xen keeps an *active entry* per granted ref in use: how many mappings
//! and copies pin it (and how many of those write), so that the flags clear
//! only when the last pin goes, and so that it can release every pin of a
//! domain that dies. [`ForeignTable::with_pins`] gives the view a pin record
//! per entry, in memory shared by every domain that maps the table (one
//! 64-bit word per entry: pin count, writer count, the pinning domain, and a
//! small lock naming its holder). [`ForeignTable::pin`] and
//! [`ForeignTable::unpin`] keep the counts and the flags together under the
//! entry's lock; [`ForeignTable::release_pins_of`] is the hypervisor's part
//! of a domain's death: every pin the dead domain held is dropped and the
//! flags cleared, so the granting domain can end access (Xen's
//! `gnttab_release_mappings`).
//!
//! The records live in memory the granting domain can also write (the
//! emulation's isolation is cooperative); a garbage record can make a pin
//! fail (bounded waits, then [`MapRefusal::Contended`]) but never makes the
//! mapping side loop forever or touch memory it was not granted.

use alloc::sync::Arc;
use core::any::Any;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::abi::{GntStatus, GrantEntryV1, GrantFlags, GTF_TYPE_MASK};
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
    /// The flags kept changing under us, or the entry's pin record stayed
    /// locked.
    Contended,
    /// The entry is pinned the most times a record can count.
    TooManyPins,
}

impl MapRefusal {
    /// The `GNTST_*` code Xen returns for this refusal.
    pub fn status(self) -> GntStatus {
        match self {
            MapRefusal::OutOfRange => GntStatus::BadGntref,
            MapRefusal::TooManyPins => GntStatus::NoDeviceSpace,
            _ => GntStatus::GeneralError,
        }
    }
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
            MapRefusal::Contended => write!(
                f,
                "grant entry flags kept changing or its pin record stayed locked; try again"
            ),
            MapRefusal::TooManyPins => write!(
                f,
                "grant entry is pinned by too many mappings; unmap some first"
            ),
        }
    }
}

impl core::error::Error for MapRefusal {}

/// One entry's pins, from its pin record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinCounts {
    /// Mappings and copies pinning the entry.
    pub pins: u16,
    /// Of which writable.
    pub writers: u16,
}

/// Why an unpin was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnpinError {
    /// The ref is outside the table.
    OutOfRange,
    /// The record holds no pin of that kind by that domain (a bookkeeping
    /// error, or a record the granting domain scribbled on).
    NotPinned,
    /// The record stayed locked.
    Contended,
}

impl core::fmt::Display for UnpinError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UnpinError::OutOfRange => write!(f, "grant ref is outside the granting domain's table"),
            UnpinError::NotPinned => write!(f, "the grant entry holds no such pin by this domain"),
            UnpinError::Contended => write!(f, "the grant entry's pin record stayed locked"),
        }
    }
}

impl core::error::Error for UnpinError {}

// A pin record: pins in bits 0..16, writers in 16..32, the pinning domain in
// 32..48, the lock holder's domid + 1 in 48..64 (0: unlocked).
const PINS: u64 = 0xFFFF;
const WRITERS_SHIFT: u32 = 16;
const PINNER_SHIFT: u32 = 32;
const HOLDER_SHIFT: u32 = 48;
const HOLDER: u64 = 0xFFFF << HOLDER_SHIFT;

fn rec_pins(r: u64) -> u16 {
    (r & PINS) as u16
}
fn rec_writers(r: u64) -> u16 {
    (r >> WRITERS_SHIFT) as u16
}
fn rec_pinner(r: u64) -> u16 {
    (r >> PINNER_SHIFT) as u16
}
fn rec_holder(r: u64) -> u16 {
    (r >> HOLDER_SHIFT) as u16
}
fn holder_tag(d: DomId) -> u64 {
    (u64::from(d.0) + 1) << HOLDER_SHIFT
}
fn record(pins: u16, writers: u16, pinner: u16) -> u64 {
    u64::from(pins) | u64::from(writers) << WRITERS_SHIFT | u64::from(pinner) << PINNER_SHIFT
}

/// How long to wait for a locked pin record: called with the attempt
/// number, it pauses (spins, yields) and says whether to try again.
pub type Backoff<'a> = &'a mut dyn FnMut(u32) -> bool;

/// A backoff for contexts without a scheduler: spins a bounded number of
/// times.
pub fn spin_backoff(attempt: u32) -> bool {
    core::hint::spin_loop();
    attempt < (1 << 20)
}

/// A view of a granting domain's table, as the emulated hypervisor sees it.
pub struct ForeignTable {
    entries: NonNull<GrantEntryV1>,
    /// One pin record per entry, when the table has them.
    pins: Option<NonNull<u64>>,
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
            pins: None,
            count,
            _owner: None,
        }
    }

    /// Wraps a mapped grant table with its pin records (see the module
    /// docs); `owner`, when given, keeps both mapped.
    ///
    /// # Safety
    /// `entries` must point to `count` 8-byte aligned grant entries and
    /// `pins` to `count` 8-byte aligned 64-bit words, both staying mapped
    /// for as long as the value (or `owner`) lives and only ever accessed
    /// atomically, by every domain that maps them.
    pub unsafe fn with_pins(
        entries: NonNull<GrantEntryV1>,
        pins: NonNull<u64>,
        count: u32,
        owner: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Self {
        ForeignTable {
            entries,
            pins: Some(pins),
            count,
            _owner: owner,
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
            pins: None,
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
            if f.contains(pin) {
                // Already pinned so (another mapping or copy): the granting
                // side's end of access fails while these bits stay set,
                // so there is nothing to write.
                return self.frame(gref).ok_or(MapRefusal::OutOfRange);
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
        if clear != 0 {
            head.fetch_and(!u32::from(clear), Ordering::AcqRel);
        }
    }

    fn pin_record(&self, gref: u32) -> Option<&AtomicU64> {
        let base = self.pins?;
        if gref >= self.count {
            return None;
        }
        // SAFETY: `gref < count` records, 8-aligned, live and only accessed
        // atomically (see `with_pins`).
        Some(unsafe { AtomicU64::from_ptr(base.as_ptr().add(gref as usize)) })
    }

    /// Whether the view keeps pin records.
    pub fn has_pin_records(&self) -> bool {
        self.pins.is_some()
    }

    /// The entry's pins now (zero without pin records).
    pub fn pin_counts(&self, gref: u32) -> PinCounts {
        self.pin_record(gref)
            .map(|r| {
                let v = r.load(Ordering::Acquire);
                PinCounts {
                    pins: rec_pins(v),
                    writers: rec_writers(v),
                }
            })
            .unwrap_or_default()
    }

    /// Takes the record's lock for `me`; returns the record as it was.
    fn lock_record(record: &AtomicU64, me: DomId, backoff: Backoff<'_>) -> Option<u64> {
        let tag = holder_tag(me);
        let mut attempt = 0u32;
        loop {
            let r = record.load(Ordering::Relaxed);
            // Acquire: what the previous holder did under the lock is
            // visible once we hold it.
            if r & HOLDER == 0
                && record
                    .compare_exchange_weak(r, r | tag, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(r);
            }
            if !backoff(attempt) {
                return None;
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// Pins `gref` for a mapping or copy by `mapper` (Xen's map or copy
    /// acquire): checks the entry like [`Self::acquire`], sets the flags,
    /// and counts the pin, all under the entry's pin record lock. Returns
    /// the granted frame. Without pin records this is [`Self::acquire`].
    pub fn pin(&self, gref: u32, mapper: DomId, access: Access) -> Result<u32, MapRefusal> {
        self.pin_with(gref, mapper, access, &mut spin_backoff)
    }

    /// [`Self::pin`] with a caller's wait for a locked record (a hosted
    /// platform yields to the scheduler).
    pub fn pin_with(
        &self,
        gref: u32,
        mapper: DomId,
        access: Access,
        backoff: Backoff<'_>,
    ) -> Result<u32, MapRefusal> {
        let head = self.head(gref).ok_or(MapRefusal::OutOfRange)?;
        let Some(rec) = self.pin_record(gref) else {
            return self.acquire(gref, mapper, access);
        };
        // Another domain's grant, or none: refuse without taking the lock.
        if (head.load(Ordering::Acquire) >> 16) as u16 != mapper.0 {
            return self.acquire(gref, mapper, access);
        }
        let r = Self::lock_record(rec, mapper, backoff).ok_or(MapRefusal::Contended)?;
        let (pins, writers) = (rec_pins(r), rec_writers(r));
        let writable = access == Access::ReadWrite;
        let refusal = if pins > 0 && rec_pinner(r) != mapper.0 {
            Some(MapRefusal::WrongDomain {
                granted_to: rec_pinner(r),
            })
        } else if pins == u16::MAX || (writable && writers == u16::MAX) {
            Some(MapRefusal::TooManyPins)
        } else {
            None
        };
        if let Some(why) = refusal {
            // Release: unlock, record unchanged.
            rec.store(r, Ordering::Release);
            return Err(why);
        }
        match self.acquire(gref, mapper, access) {
            Ok(frame) => {
                let w = writers + u16::from(writable);
                // Release: the counts and the flags set by `acquire` are
                // visible to the next holder; this store also unlocks.
                rec.store(record(pins + 1, w, mapper.0), Ordering::Release);
                Ok(frame)
            }
            Err(e) => {
                rec.store(r, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Drops one pin by `mapper` taken with `access`; clears `GTF_reading`
    /// (and `GTF_writing`) when no pin (no writable pin) is left. Without pin
    /// records this clears the flags [`Self::acquire`] set.
    pub fn unpin(&self, gref: u32, mapper: DomId, access: Access) -> Result<(), UnpinError> {
        self.unpin_with(gref, mapper, access, &mut spin_backoff)
    }

    /// [`Self::unpin`] with a caller's wait for a locked record.
    pub fn unpin_with(
        &self,
        gref: u32,
        mapper: DomId,
        access: Access,
        backoff: Backoff<'_>,
    ) -> Result<(), UnpinError> {
        if gref >= self.count {
            return Err(UnpinError::OutOfRange);
        }
        let Some(rec) = self.pin_record(gref) else {
            self.release(gref, access, false, false);
            return Ok(());
        };
        let r = Self::lock_record(rec, mapper, backoff).ok_or(UnpinError::Contended)?;
        let (pins, writers) = (rec_pins(r), rec_writers(r));
        let writable = access == Access::ReadWrite;
        if pins == 0 || rec_pinner(r) != mapper.0 || (writable && writers == 0) || writers > pins {
            rec.store(r, Ordering::Release);
            return Err(UnpinError::NotPinned);
        }
        let pins = pins - 1;
        let writers = writers - u16::from(writable);
        self.release(gref, access, pins > 0, writers > 0);
        let pinner = if pins > 0 { mapper.0 } else { 0 };
        // Release: the flags are cleared before the record (and its lock)
        // says so.
        rec.store(record(pins, writers, pinner), Ordering::Release);
        Ok(())
    }

    /// Releases every pin `departed` holds on this table and clears the
    /// flags of the entries it pinned: the hypervisor's part of a domain's
    /// death (Xen releases a dead domain's grant mappings). Records the dead
    /// domain left locked are taken over; records a live domain holds
    /// locked are waited for with `backoff` (and skipped, with an error
    /// logged, if that gives up). Returns how many entries were released.
    ///
    /// The caller makes sure `departed` cannot pin again meanwhile (it is
    /// dead, and its domid not reused until this returns).
    pub fn release_pins_of(&self, departed: DomId, backoff: Backoff<'_>) -> usize {
        let mut released = 0;
        let tag = holder_tag(departed);
        let busy = u32::from((GrantFlags::READING | GrantFlags::WRITING).bits());
        for gref in 0..self.count {
            let (Some(rec), Some(head)) = (self.pin_record(gref), self.head(gref)) else {
                continue;
            };
            let mut attempt = 0u32;
            loop {
                if attempt > (1 << 24) {
                    log::error!("grant ref {gref}: pin record kept changing; the pins of {departed} on it are not released");
                    break;
                }
                let r = rec.load(Ordering::Acquire);
                let holder = r & HOLDER;
                let pinned_by_it = rec_pins(r) > 0 && rec_pinner(r) == departed.0;
                if !pinned_by_it && holder != tag {
                    break;
                }
                if holder != 0 && holder != tag {
                    // A live domain holds the lock for a moment.
                    if !backoff(attempt) {
                        log::error!(
                            "grant ref {gref}: pin record stayed locked by dom{}; the pins of {departed} on it are not released",
                            rec_holder(r).wrapping_sub(1)
                        );
                        break;
                    }
                    attempt = attempt.saturating_add(1);
                    continue;
                }
                if !pinned_by_it && rec_pins(r) > 0 {
                    // Left locked by the dead domain while another domain's
                    // pins are counted (its pin was about to be refused):
                    // unlock, keep the other domain's pins.
                    if rec
                        .compare_exchange(r, r & !HOLDER, Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                    {
                        break;
                    }
                    attempt = attempt.saturating_add(1);
                    continue;
                }
                // Pinned by the dead domain (or left locked by it with no
                // pin counted, its flags possibly set): take the record,
                // clear the flags, clear the record.
                if rec
                    .compare_exchange(r, (r & !HOLDER) | tag, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    attempt = attempt.saturating_add(1);
                    continue;
                }
                head.fetch_and(!busy, Ordering::AcqRel);
                rec.store(0, Ordering::Release);
                released += 1;
                break;
            }
        }
        released
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
