//! Shared rings with the exact semantics of Xen's `io/ring.h`.
//!
//! A shared ring is one or more contiguous pages: a 64-byte header of four
//! free-running indices ([`SharedRingHeader`]) followed by `nr_ents` entries,
//! each the size of the larger of the request and response types (a C union),
//! where `nr_ents` is the largest power of two that fits. The front produces
//! requests and consumes responses; the back does the opposite; each writes a
//! response into the slot of a request it has consumed.
//!
//! Rules kept here (see the crate docs for the hostile-peer rules):
//! - own slots are written in place with one volatile write of the whole
//!   entry (no staging copy); entry types implement `IntoBytes`, so no
//!   uninitialised padding reaches the peer;
//! - the peer's producer index is acquire-loaded once per poll into a local
//!   snapshot and checked: more responses than requests we published, or
//!   more requests than the ring can hold, is a [`RingError`] that leaves the
//!   ring [broken](FrontRing::is_broken) for good, never a loop or a panic;
//! - peer slots are copied out with one volatile read into a local value
//!   (types implement `FromBytes`: every bit pattern is a valid value), and
//!   the shared slot is never read again;
//! - our producer index is release-stored after the slots it covers, and a
//!   full fence separates publishing from reading the peer's event index
//!   (the notification-suppression handshake).
//!
//! # Slots of several shapes
//! Protocols put different structures in one slot: netif's TX ring carries
//! a `netif_tx_request` or, in the slot after it, a `netif_extra_info`;
//! blkif's request slot holds a `blkif_request`, a `blkif_request_indirect`
//! or a `blkif_request_discard`. Each end can write or read a slot as any
//! zerocopy type no larger than the ring's request (or response) type:
//! [`FrontRing::put_request_as`], [`BackRing::take_request_as`],
//! [`BackRing::put_response_as`] and [`FrontRing::take_response_as`]. The
//! size is checked when the call is compiled (a larger type does not
//! build), no `unsafe` is needed, and reads keep the copy-then-validate
//! rule: the slot's first `size_of::<T>()` bytes are copied out once into a
//! `T` (every bit pattern is a valid `T`), and the caller validates the
//! copy. A write of a smaller type leaves the rest of the slot as it was.
//!
//! When the slot's shape is only known from its contents (blkif's
//! `operation`), copy the slot out once as the request type (or as a type
//! holding its common header and the largest variant) and reinterpret the
//! local copy with [`reinterpret`]; never read the shared slot a second
//! time to decide.
//!
//! # Hot path
//! The polling paths compile to a few loads and compares: the region's
//! address is read from the [`RingMemory`] once, when the ring is built,
//! the entry size and copy unit are constants of the entry types, and the
//! fault paths are kept out of line. Pushes demote the published slots'
//! cache lines (x86 CLDEMOTE) only on processors that have the
//! instruction, asked once with CPUID. When the front consumes a response
//! it prefetches for write (x86 PREFETCHW) the slot its next request goes
//! into, which the back held last: the line comes back while the caller
//! handles the response, not while the next push waits for it.

use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;
#[cfg(all(target_arch = "x86_64", not(miri)))]
use core::sync::atomic::AtomicU8;
use core::sync::atomic::{fence, AtomicU32, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::abi::{RingIdx, PAGE_SIZE, SRING_HEADER_SIZE};
use crate::cache::prefetch_line_for_write;

/// Most pages a ring may span (`max-ring-page-order` 4).
pub const MAX_RING_PAGES: usize = 16;

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// Memory that holds a shared ring: contiguous, page-aligned, 1 to 16 pages.
///
/// # Safety
/// Implementors guarantee that `ring_ptr()` is page-aligned, valid for reads
/// and writes of `ring_len()` bytes for as long as the value lives, and never
/// accessed through Rust references (the peer writes it concurrently).
/// `ring_ptr()` and `ring_len()` return the same values on every call for
/// as long as the value lives, wherever it is moved (the memory is not
/// inside the value): rings read them once, when they are built.
pub unsafe trait RingMemory {
    /// The first byte of the ring.
    fn ring_ptr(&self) -> NonNull<u8>;
    /// The length in bytes.
    fn ring_len(&self) -> usize;
}

/// A raw memory region that holds a ring, for callers that manage the memory
/// themselves (a page mapped from a peer, say).
#[derive(Debug)]
pub struct RawRingMemory {
    ptr: NonNull<u8>,
    len: usize,
}

impl RawRingMemory {
    /// Wraps a raw region.
    ///
    /// # Safety
    /// `ptr` must be page-aligned and valid for reads and writes of `len`
    /// bytes for as long as the returned value (and any ring built on it)
    /// lives, and must not be accessed through Rust references meanwhile.
    pub unsafe fn new(ptr: NonNull<u8>, len: usize) -> Self {
        RawRingMemory { ptr, len }
    }
}

// SAFETY: the contract of `RawRingMemory::new` is exactly the contract of
// `RingMemory`.
unsafe impl RingMemory for RawRingMemory {
    fn ring_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    fn ring_len(&self) -> usize {
        self.len
    }
}

// SAFETY: the region is plain memory shared with another domain; moving the
// handle to another thread does not change who may access it.
unsafe impl Send for RawRingMemory {}

/// Why a ring operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The memory is not a whole number of pages between 1 and 16, or is not
    /// page-aligned.
    BadRegion {
        /// The region's length in bytes.
        len: usize,
        /// Its address.
        addr: usize,
    },
    /// The entry type cannot live in a ring (zero-sized, or aligned above 64).
    BadEntryType {
        /// Size of the larger entry.
        size: usize,
        /// Largest alignment.
        align: usize,
    },
    /// No free slot: the front has `size` requests outstanding.
    Full,
    /// The back tried to answer with no consumed request left to answer.
    NoRequestToAnswer,
    /// Peer fault: the back published more responses than the front had
    /// published requests for. The ring is broken.
    ResponseOverflow {
        /// The back's `rsp_prod` as read.
        rsp_prod: RingIdx,
        /// Our consumer index.
        rsp_cons: RingIdx,
        /// Requests we had published and not yet seen answered.
        outstanding: u32,
    },
    /// Peer fault: the front published more requests than the ring can hold.
    /// The ring is broken.
    RequestOverflow {
        /// The front's `req_prod` as read.
        req_prod: RingIdx,
        /// Our consumer index.
        req_cons: RingIdx,
        /// Our private response producer.
        rsp_prod_pvt: RingIdx,
        /// Ring size.
        size: u32,
    },
}

impl RingError {
    /// Whether the error is the peer's fault (the ring is then broken).
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            RingError::ResponseOverflow { .. } | RingError::RequestOverflow { .. }
        )
    }
}

impl core::error::Error for RingError {}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::BadRegion { len, addr } => write!(
                f,
                "ring memory at {addr:#x} of {len} bytes is not 1 to {MAX_RING_PAGES} whole, page-aligned pages; allocate the ring with the platform's page allocator"
            ),
            RingError::BadEntryType { size, align } => write!(
                f,
                "ring entry of {size} bytes aligned to {align} cannot live in a ring (must be non-empty and aligned to at most 64)"
            ),
            RingError::Full => write!(f, "the ring is full; consume responses before producing more requests"),
            RingError::NoRequestToAnswer => write!(
                f,
                "no consumed request is waiting for a response; take a request before pushing a response"
            ),
            RingError::ResponseOverflow { rsp_prod, rsp_cons, outstanding } => write!(
                f,
                "peer fault: back end published rsp_prod={rsp_prod} but only {outstanding} request(s) from rsp_cons={rsp_cons} were outstanding; the ring is broken, reset the device"
            ),
            RingError::RequestOverflow { req_prod, req_cons, rsp_prod_pvt, size } => write!(
                f,
                "peer fault: front end published req_prod={req_prod} (req_cons={req_cons}, rsp_prod_pvt={rsp_prod_pvt}) which is more than the {size} slots of the ring; the ring is broken, reset the device"
            ),
        }
    }
}

/// Runs `$copy(off, t)` over `0..$len` bytes in chunks of type `t`: `u64`
/// while 8 bytes are left and `$unit >= 8`, then `u32`, `u16` and `u8`
/// likewise, so every chunk is aligned for its type within a
/// `$unit`-aligned slot. `$unit` is a constant of the ring's types, so the
/// chunks unroll into a few moves.
macro_rules! copy_in_units {
    ($unit:expr, $len:expr, |$off:ident, $t:ident| $copy:block) => {{
        let unit: usize = $unit;
        let len: usize = $len;
        let mut $off = 0usize;
        copy_in_units!(@step u64, 8, unit, len, $off, $t, $copy);
        copy_in_units!(@step u32, 4, unit, len, $off, $t, $copy);
        copy_in_units!(@step u16, 2, unit, len, $off, $t, $copy);
        copy_in_units!(@step u8, 1, unit, len, $off, $t, $copy);
    }};
    (@step $ty:ty, $size:expr, $unit:ident, $len:ident, $off:ident, $t:ident, $copy:block) => {
        if $unit >= $size {
            #[allow(non_camel_case_types)]
            type $t = $ty;
            while $len - $off >= $size {
                $copy
                $off += $size;
            }
        }
    };
}

/// Ring geometry shared by both ends: the memory, entry size and count.
struct RingCore<M: RingMemory> {
    mem: M,
    /// `mem.ring_ptr()`, read once (the [`RingMemory`] contract keeps it
    /// fixed for the life of `mem`).
    base: NonNull<u8>,
    nr_ents: u32,
    entry_size: usize,
    /// Whether published slots are demoted towards the shared cache (only
    /// ever true on processors with CLDEMOTE).
    demote: bool,
}

// SAFETY: `base` points into the memory `mem` owns or borrows, which moves
// with `mem` (the `RingMemory` contract); sending the core sends `mem`,
// hence `M: Send`.
unsafe impl<M: RingMemory + Send> Send for RingCore<M> {}
// SAFETY: through `&RingCore` the region is only touched atomically (the
// header indices); slot copies need the `&mut` of a ring end. Sharing is
// then as safe as sharing `mem`, hence `M: Sync`.
unsafe impl<M: RingMemory + Sync> Sync for RingCore<M> {}

/// Most cache lines one push demotes (a hint; larger batches are left to
/// the ordinary coherence traffic).
const MAX_DEMOTED_LINES: usize = 64;

/// Size of the cache line `demote_line` and
/// [`crate::cache::prefetch_line_for_write`] act on.
const CACHE_LINE: usize = 64;

/// Most cache lines prefetched for the next request (a hint; blkif's
/// 112-byte requests span at most three).
const MAX_PREFETCHED_LINES: usize = 4;

/// Asks the processor to move the cache line holding `p` from this core's
/// private caches to the cache shared with the other cores (x86's
/// CLDEMOTE), so that the peer polling for it reads it from there instead
/// of snooping it out of this core. A hint: no architectural effect.
#[inline(always)]
fn demote_line(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: `0f 1c /0` with a `[rax]` operand is CLDEMOTE, a cache hint
    // that neither reads nor writes memory architecturally and changes no
    // register or flag; processors without CLDEMOTE execute the encoding as
    // a hint NOP (the reserved-NOP space 0f 18..0f 1f). `p` points into the
    // ring region, which is mapped (the callers take it from `slot`), and
    // the asm touches no stack.
    unsafe {
        core::arch::asm!(
            ".byte 0x0f, 0x1c, 0x00",
            in("rax") p,
            options(nostack, preserves_flags, readonly)
        );
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}

/// Whether this processor has CLDEMOTE (CPUID leaf 7, ECX bit 25). Asked
/// once and remembered: processors without it execute the encoding as a
/// NOP, which still costs a slot in the push path, so the demotion is
/// skipped altogether there.
pub fn cache_demote_supported() -> bool {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        /// 0: not asked yet; 1: absent; 2: present.
        static KNOWN: AtomicU8 = AtomicU8::new(0);
        match KNOWN.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                let has = cpuid_has_cldemote();
                KNOWN.store(if has { 2 } else { 1 }, Ordering::Relaxed);
                has
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    false
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
#[cold]
fn cpuid_has_cldemote() -> bool {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: CPUID exists on every x86-64 processor and only reads
    // identification registers (older toolchains declare the intrinsics
    // `unsafe`, newer ones safe).
    #[allow(unused_unsafe)]
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf < 7 {
        return false;
    }
    // SAFETY: as above; leaf 7 exists (checked against the highest leaf).
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    leaf7.ecx & (1 << 25) != 0
}

/// Largest power of two not above `x` (`__RD32`); 0 for 0.
pub const fn round_down_pow2(x: u32) -> u32 {
    if x == 0 {
        0
    } else {
        1 << (31 - x.leading_zeros())
    }
}

/// Size in bytes of one ring entry for requests `Req` and responses `Rsp`:
/// the size of their C union.
pub const fn entry_size<Req, Rsp>() -> usize {
    let size = if size_of::<Req>() > size_of::<Rsp>() {
        size_of::<Req>()
    } else {
        size_of::<Rsp>()
    };
    let align = if align_of::<Req>() > align_of::<Rsp>() {
        align_of::<Req>()
    } else {
        align_of::<Rsp>()
    };
    size.div_ceil(align) * align
}

/// The widest copy unit (8, 4, 2 or 1 bytes) every slot of a ring with
/// `entry_size`-byte entries is aligned to: the region is page-aligned and
/// the header is 64 bytes, so a slot is as aligned as the entry size allows.
pub const fn slot_unit(entry_size: usize) -> usize {
    let tz = entry_size.trailing_zeros();
    1 << if tz > 3 { 3 } else { tz }
}

/// Number of entries in a ring of `ring_bytes` bytes whose entries are
/// `entry_size` bytes (`__CONST_RING_SIZE`).
pub const fn ring_entries(ring_bytes: usize, entry_size: usize) -> u32 {
    if ring_bytes <= SRING_HEADER_SIZE || entry_size == 0 {
        return 0;
    }
    let n = (ring_bytes - SRING_HEADER_SIZE) / entry_size;
    let n = if n > u32::MAX as usize {
        u32::MAX
    } else {
        n as u32
    };
    round_down_pow2(n)
}

/// Reinterprets a slot already copied out as `S` (the ring's request or
/// response type, or a type holding a protocol's common header) as another
/// shape `T` of that slot, no larger than `S` (checked when compiled): the
/// first `size_of::<T>()` bytes of the copy become a `T`. Works on the
/// local copy only, so deciding a slot's shape from its contents and then
/// reading it as that shape never reads the peer's memory twice. Every bit
/// pattern is a valid `T`; the caller validates it.
///
/// ```
/// use grant_tables::ring::reinterpret;
/// // A request slot copied out as a 16-byte union-like type, read as its
/// // 8-byte header.
/// let slot: [u32; 4] = [7, 9, 0, 0];
/// let header: [u32; 2] = reinterpret(&slot);
/// assert_eq!(header, [7, 9]);
/// ```
#[inline]
pub fn reinterpret<T: FromBytes, S: IntoBytes + Immutable>(copy: &S) -> T {
    const {
        assert!(
            size_of::<T>() <= size_of::<S>(),
            "reinterpret: the target type is larger than the slot copy"
        )
    };
    // The prefix always fits (checked above); the zeroed fallback is never
    // taken and keeps this free of panics.
    T::read_from_prefix(copy.as_bytes())
        .map(|(t, _)| t)
        .unwrap_or_else(|_| T::new_zeroed())
}

impl<M: RingMemory> RingCore<M> {
    fn new<Req, Rsp>(mem: M) -> Result<Self, RingError> {
        let len = mem.ring_len();
        let addr = mem.ring_ptr().as_ptr() as usize;
        let pages = len / PAGE_SIZE;
        if len % PAGE_SIZE != 0 || !(1..=MAX_RING_PAGES).contains(&pages) || addr % PAGE_SIZE != 0 {
            return Err(RingError::BadRegion { len, addr });
        }
        let align = align_of::<Req>().max(align_of::<Rsp>());
        let entry_size = entry_size::<Req, Rsp>();
        let nr_ents = ring_entries(len, entry_size);
        if entry_size == 0 || align > SRING_HEADER_SIZE || nr_ents == 0 {
            return Err(RingError::BadEntryType {
                size: entry_size,
                align,
            });
        }
        Ok(RingCore {
            base: mem.ring_ptr(),
            mem,
            nr_ents,
            entry_size,
            demote: cache_demote_supported(),
        })
    }

    /// One of the four header indices.
    #[inline(always)]
    fn index(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset <= RSP_EVENT && offset % 4 == 0);
        // SAFETY: `base` is the region's start (read once in `new`; the
        // `RingMemory` contract keeps it valid and fixed while `mem` lives),
        // page-aligned and at least one page long, so `offset` (0..=12, a
        // multiple of 4) names an aligned u32 inside it. The region is only
        // ever accessed atomically or volatilely, never through a `&`/`&mut`
        // to plain data, and it outlives `&self`.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    /// Pointer to the slot of free-running index `idx`. `entry` is
    /// `self.entry_size`, passed as the callers' constant so that the
    /// offset is a shift for power-of-two entries.
    #[inline(always)]
    fn slot(&self, idx: RingIdx, entry: usize) -> *mut u8 {
        debug_assert_eq!(entry, self.entry_size);
        let i = (idx & (self.nr_ents - 1)) as usize;
        // SAFETY: `i < nr_ents` and `ring_entries` made
        // `SRING_HEADER_SIZE + nr_ents * entry_size <= ring_len`, so the
        // offset stays inside the region that starts at `base`.
        unsafe { self.base.as_ptr().add(SRING_HEADER_SIZE + i * entry) }
    }

    /// Prefetches for write the cache lines holding the first `len` bytes
    /// of the slot of `idx`, at most [`MAX_PREFETCHED_LINES`] of them (see
    /// [`prefetch_line_for_write`]).
    #[inline(always)]
    fn prefetch_for_write(&self, idx: RingIdx, entry: usize, len: usize) {
        let start = self.slot(idx, entry);
        let end = start as usize + len.min(entry);
        // The first byte of the line holding the slot's start: still inside
        // the region (slots start at or after offset 64 of the page-aligned
        // region); `wrapping_*` because a hint needs no in-bounds proof.
        let mut line = start.wrapping_sub(start as usize & (CACHE_LINE - 1));
        let mut n = 0;
        while (line as usize) < end && n < MAX_PREFETCHED_LINES {
            prefetch_line_for_write(line);
            line = line.wrapping_add(CACHE_LINE);
            n += 1;
        }
    }

    /// `RING_PUSH_*_AND_CHECK_NOTIFY`: publishes our producer index at
    /// `prod` (from `old` to `new`) and says whether the peer's event index
    /// at `event` asks for a notification.
    #[inline(always)]
    fn push(&self, prod: usize, event: usize, old: RingIdx, new: RingIdx) -> bool {
        if old == new {
            return false;
        }
        // Release: the slots written before are visible to the peer before
        // it sees the new producer index (xen_wmb).
        self.index(prod).store(new, Ordering::Release);
        // Full fence: the peer sees the new producer index before we read
        // its event index (xen_mb), pairing with the fence in its final
        // check.
        fence(Ordering::SeqCst);
        let event = self.index(event).load(Ordering::Relaxed);
        // The peer reads these slots next: hand their lines to the shared
        // cache now, after the fence, so that its read does not have to
        // fetch them from this core.
        self.demote_slots(old, new);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Demotes the cache lines of the slots `from..to` just published (see
    /// [`demote_line`]), at most [`MAX_DEMOTED_LINES`] of them.
    #[inline(always)]
    fn demote_slots(&self, from: RingIdx, to: RingIdx) {
        if self.demote {
            self.demote_slots_now(from, to);
        }
    }

    #[inline(never)]
    fn demote_slots_now(&self, from: RingIdx, to: RingIdx) {
        let mut left = MAX_DEMOTED_LINES;
        let mut idx = from;
        let mut last_line = usize::MAX;
        while idx != to && left > 0 {
            let start = self.slot(idx, self.entry_size) as usize;
            let mut line = start & !(CACHE_LINE - 1);
            while line < start + self.entry_size && left > 0 {
                if line != last_line {
                    // `line` is the first byte of a line holding part of the
                    // slot, inside the region (slots start at offset 64 and
                    // the region is page-aligned).
                    demote_line(line as *const u8);
                    last_line = line;
                    left -= 1;
                }
                line += CACHE_LINE;
            }
            idx = idx.wrapping_add(1);
        }
    }

    /// Writes our own slot in place, in volatile stores of the widest unit
    /// the slot's alignment allows (a byte-wise volatile store of a large
    /// request would cost one store per byte).
    ///
    /// `unit` is [`slot_unit`] of this ring's entry size, a constant of the
    /// caller's types.
    #[inline(always)]
    fn write_slot<T: IntoBytes + Immutable>(
        &self,
        idx: RingIdx,
        value: &T,
        entry: usize,
        unit: usize,
    ) {
        debug_assert_eq!(unit, slot_unit(self.entry_size));
        debug_assert!(size_of::<T>() <= entry);
        let dst = self.slot(idx, entry);
        let src = value.as_bytes();
        copy_in_units!(unit, src.len(), |off, t| {
            let mut w = [0u8; size_of::<t>()];
            w.copy_from_slice(&src[off..off + size_of::<t>()]);
            // SAFETY: `dst + off` is inside the slot (`off + size_of::<t>()
            // <= size_of::<T>() <= entry_size`, and the slot is inside the
            // region, see `slot`) and aligned for `t` (the slot is
            // `unit`-aligned, `unit >= size_of::<t>()`, and `off` is a
            // multiple of `size_of::<t>()`). The peer may read the slot
            // concurrently; only volatile stores touch it.
            unsafe { dst.add(off).cast::<t>().write_volatile(t::from_ne_bytes(w)) }
        });
    }

    /// Copies a peer slot out, in volatile loads of the widest unit the
    /// slot's alignment allows; the shared slot is not read again.
    #[inline(always)]
    fn read_slot<T: FromBytes>(&self, idx: RingIdx, entry: usize, unit: usize) -> T {
        debug_assert_eq!(unit, slot_unit(self.entry_size));
        debug_assert!(size_of::<T>() <= entry);
        let src = self.slot(idx, entry);
        let mut out = T::new_zeroed();
        let dst = (&mut out as *mut T).cast::<u8>();
        let len = size_of::<T>();
        copy_in_units!(unit, len, |off, t| {
            // SAFETY: `src + off` is inside the slot and aligned for `t`, as
            // in `write_slot`; the peer may write it concurrently, so the
            // load is volatile. `dst + off` is inside `out` (`off +
            // size_of::<t>() <= len`), written unaligned because `T` may be
            // less aligned than `t`; `T: FromBytes` makes any bytes a valid
            // `T`.
            unsafe {
                let v = src.add(off).cast::<t>().read_volatile();
                dst.add(off).cast::<t>().write_unaligned(v);
            }
        });
        out
    }

    /// SHARED_RING_INIT with every index at `idx` (0 for a fresh ring).
    fn init_shared(&self, idx: RingIdx) {
        let base = self.base.as_ptr();
        // Zero the private union and padding (bytes 16..64).
        for off in 16..SRING_HEADER_SIZE {
            // SAFETY: `off < 64 <= ring_len`; a volatile byte write to
            // memory the peer may read.
            unsafe { base.add(off).write_volatile(0) }
        }
        self.index(REQ_PROD).store(idx, Ordering::Relaxed);
        self.index(RSP_PROD).store(idx, Ordering::Relaxed);
        self.index(REQ_EVENT)
            .store(idx.wrapping_add(1), Ordering::Relaxed);
        // Release: the whole header is visible before the ring is advertised
        // (the caller publishes its grant ref after this).
        self.index(RSP_EVENT)
            .store(idx.wrapping_add(1), Ordering::Release);
    }
}

/// The error a broken ring repeats (kept out of line: the polling paths
/// stay small).
#[cold]
#[inline(never)]
fn broken_error(e: &RingError) -> RingError {
    e.clone()
}

/// Marks a ring broken by a peer's fault, logs why and returns the error.
#[cold]
#[inline(never)]
fn break_ring(broken: &mut Option<RingError>, e: RingError) -> RingError {
    log::error!("{e}");
    *broken = Some(e.clone());
    e
}

/// The front end of a shared ring: produces `Req`, consumes `Rsp`.
pub struct FrontRing<Req, Rsp, M: RingMemory> {
    core: RingCore<M>,
    req_prod_pvt: RingIdx,
    /// The last `req_prod` we published.
    req_prod_pub: RingIdx,
    rsp_cons: RingIdx,
    /// Snapshot of the peer's `rsp_prod` from the last validated read.
    rsp_prod_seen: RingIdx,
    broken: Option<RingError>,
    _types: PhantomData<fn(Req) -> Rsp>,
}

impl<Req, Rsp, M> FrontRing<Req, Rsp, M>
where
    Req: IntoBytes + Immutable,
    Rsp: FromBytes,
    M: RingMemory,
{
    /// Entry size of this ring (see [`entry_size`]).
    const ENTRY: usize = entry_size::<Req, Rsp>();
    /// Copy unit of this ring's slots (see [`slot_unit`]).
    const UNIT: usize = slot_unit(Self::ENTRY);

    /// Initialises the shared header (`SHARED_RING_INIT`) and attaches
    /// (`FRONT_RING_INIT`).
    pub fn init(mem: M) -> Result<Self, RingError> {
        Self::init_at(mem, 0)
    }

    /// Initialises the shared header with every index at `idx` and attaches
    /// there: a fresh ring whose indices start at `idx` (useful to exercise
    /// wrap-around at 2^32).
    pub fn init_at(mem: M, idx: RingIdx) -> Result<Self, RingError> {
        let core = RingCore::new::<Req, Rsp>(mem)?;
        core.init_shared(idx);
        Ok(Self::with_core(core, idx))
    }

    /// Attaches to a ring whose header is already live, with our private
    /// indices at `idx` (`FRONT_RING_ATTACH`), e.g. after a reconnect.
    pub fn attach(mem: M, idx: RingIdx) -> Result<Self, RingError> {
        let core = RingCore::new::<Req, Rsp>(mem)?;
        Ok(Self::with_core(core, idx))
    }

    fn with_core(core: RingCore<M>, idx: RingIdx) -> Self {
        FrontRing {
            core,
            req_prod_pvt: idx,
            req_prod_pub: idx,
            rsp_cons: idx,
            rsp_prod_seen: idx,
            broken: None,
            _types: PhantomData,
        }
    }

    /// Entries in the ring (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.core.nr_ents
    }

    /// Free request slots (`RING_FREE_REQUESTS`).
    pub fn free_requests(&self) -> u32 {
        self.core.nr_ents - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Whether no request slot is free (`RING_FULL`).
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Our private request producer.
    pub fn req_prod_pvt(&self) -> RingIdx {
        self.req_prod_pvt
    }

    /// Our response consumer.
    pub fn rsp_cons(&self) -> RingIdx {
        self.rsp_cons
    }

    /// Whether a push demotes the published slots' cache lines to the
    /// cache shared between cores (x86 CLDEMOTE; on by default where the
    /// processor has it, see [`cache_demote_supported`]). Demoting saves
    /// the peer a cross-core fetch when it runs on another core; turn it
    /// off when both ends share one core. Asking for it on a processor
    /// without CLDEMOTE leaves it off.
    pub fn set_cache_demote(&mut self, on: bool) {
        self.core.demote = on && cache_demote_supported();
    }

    /// Whether pushes demote the published slots' cache lines.
    pub fn cache_demote(&self) -> bool {
        self.core.demote
    }

    /// The peer fault that broke the ring, if any.
    pub fn is_broken(&self) -> Option<&RingError> {
        self.broken.as_ref()
    }

    /// The memory the ring lives in.
    pub fn memory(&self) -> &M {
        &self.core.mem
    }

    /// Takes the memory back.
    pub fn into_memory(self) -> M {
        self.core.mem
    }

    #[inline(always)]
    fn check_broken(&self) -> Result<(), RingError> {
        match &self.broken {
            Some(e) => Err(broken_error(e)),
            None => Ok(()),
        }
    }

    /// Writes `req` into the next free slot in place and returns its ring
    /// index. Not visible to the back until [`Self::push_requests`].
    #[inline(always)]
    pub fn put_request(&mut self, req: Req) -> Result<RingIdx, RingError> {
        self.put_request_as(&req)
    }

    /// Writes `value` into the next free request slot in place, as the
    /// protocol's other shape of a request slot (netif's
    /// `netif_extra_info` after a `netif_tx_request`, blkif's discard or
    /// indirect request), and returns its ring index. Bytes of the slot
    /// beyond `size_of::<T>()` keep what they held. Not visible to the back
    /// until [`Self::push_requests`].
    ///
    /// `T` must be no larger than `Req`; a larger type fails to compile:
    ///
    /// ```compile_fail,E0080
    /// # use grant_tables::{FrontRing, RawRingMemory};
    /// fn put(ring: &mut FrontRing<[u8; 12], [u8; 4], RawRingMemory>) {
    ///     let _ = ring.put_request_as(&[0u64; 2]); // 16 bytes > 12
    /// }
    /// # let mut mem = vec![0u8; 8192];
    /// # let p = (mem.as_mut_ptr() as usize + 4095) & !4095;
    /// # let raw = unsafe { RawRingMemory::new(core::ptr::NonNull::new(p as *mut u8).unwrap(), 4096) };
    /// # put(&mut FrontRing::init(raw).unwrap());
    /// ```
    ///
    /// ```
    /// # use grant_tables::{FrontRing, RawRingMemory};
    /// fn put(ring: &mut FrontRing<[u8; 12], [u8; 4], RawRingMemory>) {
    ///     let _ = ring.put_request_as(&[0u32; 2]); // 8 bytes <= 12
    /// }
    /// # let mut mem = vec![0u8; 8192];
    /// # let p = (mem.as_mut_ptr() as usize + 4095) & !4095;
    /// # let raw = unsafe { RawRingMemory::new(core::ptr::NonNull::new(p as *mut u8).unwrap(), 4096) };
    /// # put(&mut FrontRing::init(raw).unwrap());
    /// ```
    #[inline(always)]
    pub fn put_request_as<T: IntoBytes + Immutable>(
        &mut self,
        value: &T,
    ) -> Result<RingIdx, RingError> {
        const {
            assert!(
                size_of::<T>() <= size_of::<Req>(),
                "put_request_as: the type is larger than the ring's request type"
            )
        };
        self.check_broken()?;
        if self.is_full() {
            return Err(RingError::Full);
        }
        let idx = self.req_prod_pvt;
        self.core.write_slot(idx, value, Self::ENTRY, Self::UNIT);
        self.req_prod_pvt = idx.wrapping_add(1);
        Ok(idx)
    }

    /// Publishes the requests put so far and says whether the back asked to
    /// be notified (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    #[inline(always)]
    pub fn push_requests(&mut self) -> bool {
        let (old, new) = (self.req_prod_pub, self.req_prod_pvt);
        self.req_prod_pub = new;
        self.core.push(REQ_PROD, REQ_EVENT, old, new)
    }

    /// Reads the back's `rsp_prod` once, validates it, and returns how many
    /// responses are waiting.
    #[inline(always)]
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        self.check_broken()?;
        self.read_rsp_prod()
    }

    /// [`Self::unconsumed_responses`] on a ring known not to be broken.
    #[inline(always)]
    fn read_rsp_prod(&mut self) -> Result<u32, RingError> {
        // Acquire: slot reads after this see what the back wrote before
        // publishing rsp_prod (xen_rmb).
        let rsp_prod = self.core.index(RSP_PROD).load(Ordering::Acquire);
        let avail = rsp_prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.req_prod_pub.wrapping_sub(self.rsp_cons);
        if avail > outstanding {
            return Err(break_ring(
                &mut self.broken,
                RingError::ResponseOverflow {
                    rsp_prod,
                    rsp_cons: self.rsp_cons,
                    outstanding,
                },
            ));
        }
        self.rsp_prod_seen = rsp_prod;
        Ok(avail)
    }

    /// Copies out the next response, if any. Reads the back's producer index
    /// only when the last validated snapshot is used up.
    #[inline(always)]
    pub fn take_response(&mut self) -> Result<Option<Rsp>, RingError> {
        self.take_response_as::<Rsp>()
    }

    /// Consumes the next response slot, if any, copying out its first
    /// `size_of::<T>()` bytes once as a `T`: a response slot of another
    /// shape than `Rsp`. The copy is the caller's to validate; the shared
    /// slot is not read again. `T` must be no larger than `Rsp` (checked
    /// when compiled).
    #[inline(always)]
    pub fn take_response_as<T: FromBytes>(&mut self) -> Result<Option<T>, RingError> {
        const {
            assert!(
                size_of::<T>() <= size_of::<Rsp>(),
                "take_response_as: the type is larger than the ring's response type"
            )
        };
        self.check_broken()?;
        if self.rsp_cons == self.rsp_prod_seen && self.read_rsp_prod()? == 0 {
            return Ok(None);
        }
        let rsp = self
            .core
            .read_slot::<T>(self.rsp_cons, Self::ENTRY, Self::UNIT);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        // A slot is free now: the next request goes into the slot at
        // `req_prod_pvt` (the oldest consumed one). Ask for its line in a
        // writable state while the caller handles this response, so that
        // the next push does not wait for it (see `prefetch_for_write`).
        self.core
            .prefetch_for_write(self.req_prod_pvt, Self::ENTRY, size_of::<Req>());
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: if no response waits, asks the back
    /// to notify on the next one, then checks once more (closing the race
    /// with a response published meanwhile). `true` means work is waiting.
    #[inline]
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.core
            .index(RSP_EVENT)
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        // Full fence: the back sees our rsp_event before we re-read rsp_prod
        // (xen_mb), pairing with the fence in its push.
        fence(Ordering::SeqCst);
        Ok(self.read_rsp_prod()? > 0)
    }
}

/// The back end of a shared ring: consumes `Req`, produces `Rsp`.
pub struct BackRing<Req, Rsp, M: RingMemory> {
    core: RingCore<M>,
    rsp_prod_pvt: RingIdx,
    /// The last `rsp_prod` we published.
    rsp_prod_pub: RingIdx,
    req_cons: RingIdx,
    /// Snapshot of the peer's `req_prod` from the last validated read.
    req_prod_seen: RingIdx,
    broken: Option<RingError>,
    _types: PhantomData<fn(Rsp) -> Req>,
}

impl<Req, Rsp, M> BackRing<Req, Rsp, M>
where
    Req: FromBytes,
    Rsp: IntoBytes + Immutable,
    M: RingMemory,
{
    /// Entry size of this ring (see [`entry_size`]).
    const ENTRY: usize = entry_size::<Req, Rsp>();
    /// Copy unit of this ring's slots (see [`slot_unit`]).
    const UNIT: usize = slot_unit(Self::ENTRY);

    /// Attaches to a ring the front initialised (`BACK_RING_INIT`).
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::attach(mem, 0)
    }

    /// Attaches with our private indices at `idx` (`BACK_RING_ATTACH`).
    pub fn attach(mem: M, idx: RingIdx) -> Result<Self, RingError> {
        let core = RingCore::new::<Req, Rsp>(mem)?;
        Ok(BackRing {
            core,
            rsp_prod_pvt: idx,
            rsp_prod_pub: idx,
            req_cons: idx,
            req_prod_seen: idx,
            broken: None,
            _types: PhantomData,
        })
    }

    /// Entries in the ring (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.core.nr_ents
    }

    /// Our request consumer.
    pub fn req_cons(&self) -> RingIdx {
        self.req_cons
    }

    /// Our private response producer.
    pub fn rsp_prod_pvt(&self) -> RingIdx {
        self.rsp_prod_pvt
    }

    /// Whether a push demotes the published slots' cache lines to the
    /// cache shared between cores (x86 CLDEMOTE; on by default where the
    /// processor has it, see [`cache_demote_supported`]). Demoting saves
    /// the peer a cross-core fetch when it runs on another core; turn it
    /// off when both ends share one core. Asking for it on a processor
    /// without CLDEMOTE leaves it off.
    pub fn set_cache_demote(&mut self, on: bool) {
        self.core.demote = on && cache_demote_supported();
    }

    /// Whether pushes demote the published slots' cache lines.
    pub fn cache_demote(&self) -> bool {
        self.core.demote
    }

    /// The peer fault that broke the ring, if any.
    pub fn is_broken(&self) -> Option<&RingError> {
        self.broken.as_ref()
    }

    /// The memory the ring lives in.
    pub fn memory(&self) -> &M {
        &self.core.mem
    }

    /// Takes the memory back.
    pub fn into_memory(self) -> M {
        self.core.mem
    }

    #[inline(always)]
    fn check_broken(&self) -> Result<(), RingError> {
        match &self.broken {
            Some(e) => Err(broken_error(e)),
            None => Ok(()),
        }
    }

    /// Reads the front's `req_prod` once, validates it, and returns how many
    /// requests are waiting.
    #[inline(always)]
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        self.check_broken()?;
        self.read_req_prod()
    }

    /// [`Self::unconsumed_requests`] on a ring known not to be broken.
    #[inline(always)]
    fn read_req_prod(&mut self) -> Result<u32, RingError> {
        // Acquire: slot reads after this see what the front wrote before
        // publishing req_prod (xen_rmb).
        let req_prod = self.core.index(REQ_PROD).load(Ordering::Acquire);
        let avail = req_prod.wrapping_sub(self.req_cons);
        // Slots not holding a consumed-but-unanswered request.
        let room = self.core.nr_ents - self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        if avail > room {
            return Err(break_ring(
                &mut self.broken,
                RingError::RequestOverflow {
                    req_prod,
                    req_cons: self.req_cons,
                    rsp_prod_pvt: self.rsp_prod_pvt,
                    size: self.core.nr_ents,
                },
            ));
        }
        self.req_prod_seen = req_prod;
        Ok(avail)
    }

    /// Copies out the next request, if any.
    #[inline(always)]
    pub fn take_request(&mut self) -> Result<Option<Req>, RingError> {
        self.take_request_as::<Req>()
    }

    /// Consumes the next request slot, if any, copying out its first
    /// `size_of::<T>()` bytes once as a `T`: a request slot of another shape
    /// than `Req` (netif's `netif_extra_info` after a `netif_tx_request`
    /// that announced it). The copy is the caller's to validate; the shared
    /// slot is not read again. `T` must be no larger than `Req` (checked
    /// when compiled):
    ///
    /// ```compile_fail,E0080
    /// # use grant_tables::{BackRing, RawRingMemory};
    /// fn take(ring: &mut BackRing<[u8; 12], [u8; 4], RawRingMemory>) {
    ///     let _ = ring.take_request_as::<[u8; 13]>(); // 13 bytes > 12
    /// }
    /// # let mut mem = vec![0u8; 8192];
    /// # let p = (mem.as_mut_ptr() as usize + 4095) & !4095;
    /// # let raw = unsafe { RawRingMemory::new(core::ptr::NonNull::new(p as *mut u8).unwrap(), 4096) };
    /// # take(&mut BackRing::new(raw).unwrap());
    /// ```
    #[inline(always)]
    pub fn take_request_as<T: FromBytes>(&mut self) -> Result<Option<T>, RingError> {
        const {
            assert!(
                size_of::<T>() <= size_of::<Req>(),
                "take_request_as: the type is larger than the ring's request type"
            )
        };
        self.check_broken()?;
        if self.req_cons == self.req_prod_seen && self.read_req_prod()? == 0 {
            return Ok(None);
        }
        let req = self
            .core
            .read_slot::<T>(self.req_cons, Self::ENTRY, Self::UNIT);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Writes `rsp` in place into the slot of the oldest unanswered request
    /// and returns its ring index. Not visible until
    /// [`Self::push_responses`].
    #[inline(always)]
    pub fn put_response(&mut self, rsp: Rsp) -> Result<RingIdx, RingError> {
        self.put_response_as(&rsp)
    }

    /// Writes `value` in place into the slot of the oldest unanswered
    /// request, as another shape of a response slot than `Rsp`, and returns
    /// its ring index. Bytes of the slot beyond `size_of::<T>()` keep what
    /// they held (the answered request's bytes, which the front wrote). Not
    /// visible until [`Self::push_responses`]. `T` must be no larger than
    /// `Rsp` (checked when compiled).
    #[inline(always)]
    pub fn put_response_as<T: IntoBytes + Immutable>(
        &mut self,
        value: &T,
    ) -> Result<RingIdx, RingError> {
        const {
            assert!(
                size_of::<T>() <= size_of::<Rsp>(),
                "put_response_as: the type is larger than the ring's response type"
            )
        };
        self.check_broken()?;
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::NoRequestToAnswer);
        }
        let idx = self.rsp_prod_pvt;
        self.core.write_slot(idx, value, Self::ENTRY, Self::UNIT);
        self.rsp_prod_pvt = idx.wrapping_add(1);
        Ok(idx)
    }

    /// Publishes the responses put so far and says whether the front asked
    /// to be notified (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    #[inline(always)]
    pub fn push_responses(&mut self) -> bool {
        let (old, new) = (self.rsp_prod_pub, self.rsp_prod_pvt);
        self.rsp_prod_pub = new;
        self.core.push(RSP_PROD, RSP_EVENT, old, new)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: if no request waits, asks the front
    /// to notify on the next one, then checks once more. `true` means work
    /// is waiting.
    #[inline]
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.core
            .index(REQ_EVENT)
            .store(self.req_cons.wrapping_add(1), Ordering::Relaxed);
        // Full fence: the front sees our req_event before we re-read
        // req_prod (xen_mb), pairing with the fence in its push.
        fence(Ordering::SeqCst);
        Ok(self.read_req_prod()? > 0)
    }
}
