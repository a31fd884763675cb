//! PCI passthrough on a PV domain: the plain logic behind `rt::pci`,
//! tested on the host (and under Miri).
//!
//! A PV domain sees machine addresses: a BAR holds the machine address of
//! the device's registers, which the domain maps into its own address space
//! page by page (Xen checks each frame against the I/O memory the toolstack
//! permitted); and the bus address of one of the domain's pages is its
//! machine frame, because Xen's IOMMU tables for a PV domain map each of
//! its writable pages at its machine address (`bfn == mfn`). A device that
//! needs more than a page of contiguous memory, or memory below an address
//! mask, gets pages exchanged by Xen (`XENMEM_exchange`) for one naturally
//! aligned, machine-contiguous extent below the mask.
//!
//! This module computes and checks: the frames of a machine address range
//! ([`frames_of`]), the page table entry of an uncached MMIO mapping
//! ([`mmio_pte`]), the order and address width of an exchange
//! ([`exchange_order`], [`address_bits`]) and whether what Xen returned
//! meets them ([`check_extent`]), a frame the domain does not own (the
//! target of the lab's stray DMA, [`foreign_frame`]), and the page bitmaps
//! of the runtime's windows ([`PageBitmap`]).

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// Bytes in a page.
pub const PAGE: u64 = 4096;
/// Bits of a page offset.
pub const PAGE_SHIFT: u32 = 12;

/// x86-64 page table entry bits.
pub mod pte {
    /// Present.
    pub const PRESENT: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User (Xen sets it for a 64-bit PV kernel anyway).
    pub const USER: u64 = 1 << 2;
    /// Page-level write-through.
    pub const PWT: u64 = 1 << 3;
    /// Page-level cache disable.
    pub const PCD: u64 = 1 << 4;
    /// Accessed.
    pub const ACCESSED: u64 = 1 << 5;
    /// Dirty.
    pub const DIRTY: u64 = 1 << 6;
    /// Bits 12 to 51: the frame.
    pub const FRAME: u64 = 0x000F_FFFF_FFFF_F000;
}

/// Highest machine frame a PTE can name (52-bit physical addresses).
pub const MAX_MFN: u64 = pte::FRAME >> PAGE_SHIFT;

/// Largest exchange order asked of Xen: Xen's default limit for a domain
/// with I/O memory (`domu_max_order`, 9: 2 MiB).
pub const MAX_EXCHANGE_ORDER: u32 = 9;

/// What is wrong with a request, before any hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// An empty range.
    Empty,
    /// The range's end overflows, or a frame is beyond 52-bit physical
    /// addresses.
    OutOfRange {
        /// The range's start.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// More pages than the runtime maps or exchanges at once.
    TooLarge {
        /// Pages asked for.
        pages: u64,
        /// The most allowed.
        max: u64,
    },
    /// An address mask that is not `2^n - 1` with `n` from 13 to 64.
    BadMask(u64),
    /// What Xen returned is not what was asked for.
    BadExtent {
        /// The extent's first frame.
        base: u64,
        /// Its order.
        order: u32,
        /// The address width asked for.
        bits: u32,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PlanError::Empty => write!(f, "an empty range: give a length of at least one byte"),
            PlanError::OutOfRange { addr, len } => write!(
                f,
                "the range {addr:#x} + {len:#x} ends beyond 52-bit machine addresses: a BAR read from config space is wrong, or was not sized"
            ),
            PlanError::TooLarge { pages, max } => {
                write!(f, "{pages} pages asked for, at most {max} at once: map or allocate in smaller pieces")
            }
            PlanError::BadMask(m) => write!(
                f,
                "address mask {m:#x} is not 2^n - 1 with n from 13 to 64: give the device's DMA mask (edu: 0x0fff_ffff)"
            ),
            PlanError::BadExtent { base, order, bits } => write!(
                f,
                "Xen returned the extent at frame {base:#x} for an exchange of order {order} below {bits} address bits, which is not aligned or not below the mask"
            ),
        }
    }
}

/// The machine frames covering a range of machine addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRange {
    /// The first frame.
    pub first: u64,
    /// How many frames.
    pub count: u64,
    /// The range's offset into the first frame.
    pub offset: u64,
}

/// The frames covering `len` bytes at machine address `addr`.
pub fn frames_of(addr: u64, len: u64) -> Result<FrameRange, PlanError> {
    if len == 0 {
        return Err(PlanError::Empty);
    }
    let last = addr
        .checked_add(len - 1)
        .ok_or(PlanError::OutOfRange { addr, len })?;
    let (first, end) = (addr >> PAGE_SHIFT, last >> PAGE_SHIFT);
    if end > MAX_MFN {
        return Err(PlanError::OutOfRange { addr, len });
    }
    Ok(FrameRange {
        first,
        count: end - first + 1,
        offset: addr & (PAGE - 1),
    })
}

/// The page table entry mapping machine frame `mfn` uncached and writable:
/// PCD and PWT select PAT entry 3, which is UC in the PAT Xen programs
/// (and in the power-on default), as device registers need.
pub fn mmio_pte(mfn: u64) -> Result<u64, PlanError> {
    if mfn > MAX_MFN {
        return Err(PlanError::OutOfRange {
            addr: mfn.saturating_mul(PAGE),
            len: PAGE,
        });
    }
    Ok((mfn << PAGE_SHIFT)
        | pte::PRESENT
        | pte::RW
        | pte::USER
        | pte::PWT
        | pte::PCD
        | pte::ACCESSED
        | pte::DIRTY)
}

/// The page table entry mapping one of the domain's own pages, write-back
/// and writable (as the domain builder maps them).
pub fn ram_pte(mfn: u64) -> Result<u64, PlanError> {
    if mfn > MAX_MFN {
        return Err(PlanError::OutOfRange {
            addr: mfn.saturating_mul(PAGE),
            len: PAGE,
        });
    }
    Ok((mfn << PAGE_SHIFT) | pte::PRESENT | pte::RW | pte::USER | pte::ACCESSED | pte::DIRTY)
}

/// The address width of a DMA mask `2^n - 1` (`n` from 13 to 64).
pub fn address_bits(mask: u64) -> Result<u32, PlanError> {
    let bits = 64 - mask.leading_zeros();
    let full = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    if mask != full || bits <= PAGE_SHIFT {
        return Err(PlanError::BadMask(mask));
    }
    Ok(bits)
}

/// The smallest exchange order (an extent of `2^order` pages) holding
/// `pages` pages.
pub fn exchange_order(pages: u64) -> Result<u32, PlanError> {
    if pages == 0 {
        return Err(PlanError::Empty);
    }
    let max = 1u64 << MAX_EXCHANGE_ORDER;
    if pages > max {
        return Err(PlanError::TooLarge { pages, max });
    }
    Ok(pages.next_power_of_two().trailing_zeros())
}

/// Checks an extent Xen returned: `2^order` frames from `base`, aligned to
/// their size, the last one ending at or below `2^bits`.
pub fn check_extent(base: u64, order: u32, bits: u32) -> Result<(), PlanError> {
    let bad = PlanError::BadExtent { base, order, bits };
    if order > MAX_EXCHANGE_ORDER || bits <= PAGE_SHIFT || bits > 64 {
        return Err(bad);
    }
    let count = 1u64 << order;
    if base & (count - 1) != 0 {
        return Err(bad);
    }
    // The last frame's bytes all below 2^bits, and the frame a PTE can name.
    let last = base.checked_add(count - 1).ok_or(bad)?;
    if last > MAX_MFN || (bits < 64 && last >> (bits - PAGE_SHIFT) != 0) {
        return Err(bad);
    }
    Ok(())
}

/// The bus address of byte `offset` of machine frame `mfn` (a PV domain's
/// IOMMU maps its pages at their machine addresses).
pub fn bus_address(mfn: u64, offset: u64) -> u64 {
    (mfn << PAGE_SHIFT) | (offset & (PAGE - 1))
}

/// Whether machine frame `mfn` is the domain's: the machine-to-physical
/// table names a pfn below `nr_pages` whose P2M entry is `mfn` again.
pub fn owns_frame(
    mfn: u64,
    nr_pages: u64,
    m2p: impl Fn(u64) -> u64,
    p2m: impl Fn(u64) -> u64,
) -> bool {
    let pfn = m2p(mfn);
    pfn < nr_pages && p2m(pfn) == mfn
}

/// The first frame in `from..to` that `owned` says is not the domain's.
pub fn foreign_frame(from: u64, to: u64, owned: impl Fn(u64) -> bool) -> Option<u64> {
    (from..to).find(|&f| !owned(f))
}

/// One bit per page of a window of `64 * W` pages: in use. Atomic words, so
/// that a static bitmap never hands out `&mut`; allocation is first fit
/// of contiguous pages.
pub struct PageBitmap<const W: usize> {
    words: [AtomicU64; W],
}

impl<const W: usize> Default for PageBitmap<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const W: usize> PageBitmap<W> {
    /// Pages in the window.
    pub const PAGES: usize = 64 * W;

    /// All pages free.
    pub const fn new() -> Self {
        PageBitmap {
            words: [const { AtomicU64::new(0) }; W],
        }
    }

    fn is_used(&self, i: usize) -> bool {
        self.words[i / 64].load(Ordering::Relaxed) & (1 << (i % 64)) != 0
    }

    /// Marks the first run of `count` free pages as used and returns its
    /// first page; `None` if there is no such run (or `count` is 0).
    pub fn alloc(&self, count: usize) -> Option<usize> {
        if count == 0 || count > Self::PAGES {
            return None;
        }
        let mut start = 0;
        while start + count <= Self::PAGES {
            match (start..start + count).find(|&i| self.is_used(i)) {
                Some(busy) => start = busy + 1,
                None => {
                    for i in start..start + count {
                        self.words[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
                    }
                    return Some(start);
                }
            }
        }
        None
    }

    /// Marks `count` pages from `first` as free; pages beyond the window
    /// are ignored.
    pub fn free(&self, first: usize, count: usize) {
        for i in first..first.saturating_add(count).min(Self::PAGES) {
            self.words[i / 64].fetch_and(!(1 << (i % 64)), Ordering::Relaxed);
        }
    }

    /// Pages in use.
    pub fn used(&self) -> usize {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_a_range() {
        assert_eq!(
            frames_of(0xfea0_0000, 0x10_0000),
            Ok(FrameRange {
                first: 0xfea00,
                count: 256,
                offset: 0
            })
        );
        // Unaligned, crossing a page boundary.
        assert_eq!(
            frames_of(0x1ff8, 16),
            Ok(FrameRange {
                first: 1,
                count: 2,
                offset: 0xff8
            })
        );
        assert_eq!(
            frames_of(0x1000, 1),
            Ok(FrameRange {
                first: 1,
                count: 1,
                offset: 0
            })
        );
        assert_eq!(frames_of(0x1000, 0), Err(PlanError::Empty));
        assert_eq!(
            frames_of(u64::MAX - 10, 100),
            Err(PlanError::OutOfRange {
                addr: u64::MAX - 10,
                len: 100
            })
        );
        assert!(frames_of(1 << 52, 1).is_err());
        assert!(frames_of((1 << 52) - PAGE, PAGE).is_ok());
    }

    #[test]
    fn ptes() {
        let p = mmio_pte(0xfea00).unwrap();
        assert_eq!(p & pte::FRAME, 0xfea0_0000);
        assert_eq!(
            p & (pte::PCD | pte::PWT),
            pte::PCD | pte::PWT,
            "MMIO is uncached"
        );
        assert_ne!(p & pte::PRESENT, 0);
        assert_ne!(p & pte::RW, 0);
        let r = ram_pte(0x1234).unwrap();
        assert_eq!(r & (pte::PCD | pte::PWT), 0, "RAM is write-back");
        assert_eq!(r, 0x0123_4067, "the bits the domain builder uses");
        assert!(mmio_pte(MAX_MFN + 1).is_err());
        assert!(ram_pte(u64::MAX).is_err());
    }

    #[test]
    fn masks() {
        assert_eq!(address_bits(0x0fff_ffff), Ok(28));
        assert_eq!(address_bits(u32::MAX as u64), Ok(32));
        assert_eq!(address_bits(u64::MAX), Ok(64));
        assert_eq!(address_bits(0x1fff), Ok(13));
        for bad in [0, 0xfff, 0x0fff_fffe, 0x1000_0000, 0xf0ff_ffff] {
            assert_eq!(address_bits(bad), Err(PlanError::BadMask(bad)), "{bad:#x}");
        }
    }

    #[test]
    fn orders() {
        assert_eq!(exchange_order(1), Ok(0));
        assert_eq!(exchange_order(2), Ok(1));
        assert_eq!(exchange_order(3), Ok(2));
        assert_eq!(exchange_order(512), Ok(9));
        assert_eq!(exchange_order(0), Err(PlanError::Empty));
        assert_eq!(
            exchange_order(513),
            Err(PlanError::TooLarge {
                pages: 513,
                max: 512
            })
        );
    }

    #[test]
    fn extents() {
        // Two frames at 0x8000 (aligned to 2) end at 0x800_2000 < 2^28.
        assert_eq!(check_extent(0x8000, 1, 28), Ok(()));
        // Misaligned for order 1.
        assert!(check_extent(0x8001, 1, 28).is_err());
        // The last frame just below 2^28, and one past it.
        assert_eq!(check_extent(0xffff, 0, 28), Ok(()));
        assert!(check_extent(0x1_0000, 0, 28).is_err());
        assert!(check_extent(0xfffe, 2, 28).is_err());
        assert_eq!(check_extent(MAX_MFN, 0, 64), Ok(()));
        assert!(check_extent(MAX_MFN + 1, 0, 64).is_err());
        assert!(check_extent(u64::MAX, 0, 64).is_err());
        assert!(check_extent(0, 0, 12).is_err());
        assert!(check_extent(0, 10, 28).is_err());
    }

    #[test]
    fn bus_addresses() {
        assert_eq!(bus_address(0x1234, 0x56), 0x123_4056);
        assert_eq!(
            bus_address(0x1234, 0x1056),
            0x123_4056,
            "the offset stays in the page"
        );
    }

    #[test]
    fn ownership_and_foreign_frames() {
        // The domain owns frames 100..110 as pfns 0..10.
        let m2p = |mfn: u64| {
            if (100..110).contains(&mfn) {
                mfn - 100
            } else if mfn == 7 {
                3
            } else {
                u64::MAX
            }
        };
        let p2m = |pfn: u64| pfn + 100;
        let owned = |mfn| owns_frame(mfn, 10, m2p, p2m);
        assert!(owned(100) && owned(109));
        assert!(!owned(110));
        // Frame 7 claims pfn 3, whose frame is 103: not ours.
        assert!(!owned(7));
        assert_eq!(foreign_frame(100, 200, owned), Some(110));
        assert_eq!(foreign_frame(100, 110, owned), None);
        assert_eq!(foreign_frame(5, 6, owned), Some(5));
    }

    #[test]
    fn bitmap_first_fit_and_free() {
        let b = PageBitmap::<2>::new();
        assert_eq!(PageBitmap::<2>::PAGES, 128);
        assert_eq!(b.alloc(0), None);
        assert_eq!(b.alloc(129), None);
        assert_eq!(b.alloc(10), Some(0));
        assert_eq!(b.alloc(60), Some(10));
        // Crosses the word boundary.
        assert_eq!(b.alloc(10), Some(70));
        assert_eq!(b.used(), 80);
        b.free(10, 60);
        assert_eq!(b.alloc(5), Some(10));
        assert_eq!(b.alloc(56), None, "15..71 runs into 70..80");
        assert_eq!(b.alloc(55), Some(15));
        assert_eq!(b.alloc(48), Some(80));
        assert_eq!(b.alloc(1), None);
        b.free(0, 1000);
        assert_eq!(b.used(), 0);
        assert_eq!(b.alloc(128), Some(0));
    }
}
