//! Memory a device reads and writes by bus address.
//!
//! A DMA buffer is machine-contiguous memory (under Xen, machine frames
//! behind the IOMMU) that both the driver and the device access. The device
//! may write it at any time, so the driver reads it with volatile accesses
//! and validates what it reads, as it would any peer-written memory.

use core::ptr::NonNull;

use crate::mmio::check_access;
use crate::PciError;

/// What a DMA allocation must satisfy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaConstraints {
    /// Bytes wanted (at least one).
    pub len: usize,
    /// Alignment of the bus address (a power of two).
    pub align: usize,
    /// The device's address mask: every bus address of the buffer must be
    /// `<= addr_mask`. Of the form `2^n - 1` (`u64::MAX` for 64-bit
    /// devices; edu's is `(1 << 28) - 1`).
    pub addr_mask: u64,
}

impl DmaConstraints {
    /// Checked constraints: a nonzero length, a power-of-two alignment and
    /// a mask of the form `2^n - 1` with `n >= 12` (a page must fit).
    pub fn new(len: usize, align: usize, addr_mask: u64) -> Result<DmaConstraints, PciError> {
        let op = "alloc_dma";
        if len == 0 {
            return Err(PciError::InvalidRequest {
                op,
                reason: "a DMA buffer needs at least one byte",
            });
        }
        if !align.is_power_of_two() {
            return Err(PciError::InvalidRequest {
                op,
                reason: "the alignment must be a power of two",
            });
        }
        if addr_mask.wrapping_add(1) & addr_mask != 0 || addr_mask < 0xfff {
            return Err(PciError::InvalidRequest {
                op,
                reason: "the address mask must be 2^n - 1 with n >= 12, as DMA_BIT_MASK(n)",
            });
        }
        if len as u64 > addr_mask {
            return Err(PciError::DmaMaskUnsatisfiable { len, addr_mask });
        }
        Ok(DmaConstraints {
            len,
            align,
            addr_mask,
        })
    }

    /// Whether a buffer at `bus_addr` of at least `len` bytes meets the
    /// constraints (an allocator checks its result with this).
    pub fn fits(&self, bus_addr: u64) -> bool {
        let align = self.align as u64;
        bus_addr % align == 0
            && bus_addr
                .checked_add((self.len as u64).saturating_sub(1))
                .is_some_and(|last| last <= self.addr_mask)
    }
}

/// A buffer a device reads and writes by bus address.
///
/// Accesses are bounds-checked (and, for the integer accessors, aligned to
/// their width); integers are little-endian in memory, as PCI devices
/// expect. All accesses are volatile: the device may change the memory at
/// any time.
pub trait DmaBuffer {
    /// The address the device uses for the first byte.
    fn bus_addr(&self) -> u64;
    /// The length in bytes.
    fn len(&self) -> usize;
    /// Whether the buffer is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads a little-endian u16 at `offset` (2-aligned).
    fn read_u16(&self, offset: usize) -> Result<u16, PciError>;
    /// Reads a little-endian u32 at `offset` (4-aligned).
    fn read_u32(&self, offset: usize) -> Result<u32, PciError>;
    /// Reads a little-endian u64 at `offset` (8-aligned).
    fn read_u64(&self, offset: usize) -> Result<u64, PciError>;
    /// Writes a little-endian u16 at `offset` (2-aligned).
    fn write_u16(&self, offset: usize, value: u16) -> Result<(), PciError>;
    /// Writes a little-endian u32 at `offset` (4-aligned).
    fn write_u32(&self, offset: usize, value: u32) -> Result<(), PciError>;
    /// Writes a little-endian u64 at `offset` (8-aligned).
    fn write_u64(&self, offset: usize, value: u64) -> Result<(), PciError>;
    /// Copies `src` into the buffer at `offset`.
    fn write_from(&self, offset: usize, src: &[u8]) -> Result<(), PciError>;
    /// Copies bytes from the buffer at `offset` into `dst`.
    fn read_into(&self, offset: usize, dst: &mut [u8]) -> Result<(), PciError>;
    /// The buffer's first byte in this domain's address space, when the
    /// platform lets drivers lend DMA memory as slices (frames received
    /// and sent in place); `None` (the default) when it is reached only
    /// through the accessors above. A driver that lends it keeps to the
    /// contract of [`MemDma::new`] for the bytes it lends: no references
    /// to them while the device may access them.
    fn base_ptr(&self) -> Option<NonNull<u8>> {
        None
    }
    /// The bus address of the byte at `offset` (inside the buffer). A
    /// buffer whose bus range wraps past 2^64 (a platform bug) is
    /// [`PciError::InvalidRequest`].
    fn bus_addr_at(&self, offset: usize) -> Result<u64, PciError> {
        check_access("DMA", offset, 1, self.len())?;
        u64::try_from(offset)
            .ok()
            .and_then(|o| self.bus_addr().checked_add(o))
            .ok_or(PciError::InvalidRequest {
                op: "bus_addr_at",
                reason: "the DMA buffer's bus address plus the offset overflows 64 bits; the platform placed the buffer wrongly",
            })
    }
}

/// [`DmaBuffer`] over memory this domain has mapped, with volatile
/// accesses. It does not own the memory; a platform's buffer type wraps it
/// with whatever frees the memory.
#[derive(Debug)]
pub struct MemDma {
    base: NonNull<u8>,
    len: usize,
    bus_addr: u64,
}

// SAFETY: a pointer to memory the creator promised stays valid and is
// reached only through volatile accesses; moving it across threads does
// not change that. Not Sync, as for MemMmio.
unsafe impl Send for MemDma {}

impl MemDma {
    /// A buffer of `len` bytes at `base`, which the device sees at
    /// `bus_addr`.
    ///
    /// # Safety
    /// For as long as the value lives, `base..base + len` must be valid for
    /// volatile reads and writes, not be accessed through Rust references,
    /// and `base` must be 8-byte aligned. `bus_addr..bus_addr + len` must be
    /// where the device reaches the same memory.
    pub unsafe fn new(base: NonNull<u8>, len: usize, bus_addr: u64) -> MemDma {
        debug_assert!(
            base.as_ptr() as usize % 8 == 0,
            "DMA base must be 8-byte aligned"
        );
        MemDma {
            base,
            len,
            bus_addr,
        }
    }

    /// The first byte, in this domain's address space.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    fn ptr<T>(&self, offset: usize) -> Result<*mut T, PciError> {
        check_access("DMA", offset, core::mem::size_of::<T>(), self.len)?;
        // SAFETY: check_access proved offset + size_of::<T>() <= len.
        Ok(unsafe { self.base.as_ptr().add(offset) }.cast())
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), PciError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(PciError::OutOfBounds {
                region: "DMA",
                offset,
                len,
                size: self.len,
            });
        }
        Ok(())
    }
}

macro_rules! mem_dma_access {
    ($read:ident, $write:ident, $t:ty) => {
        fn $read(&self, offset: usize) -> Result<$t, PciError> {
            let p = self.ptr::<$t>(offset)?;
            // SAFETY: inside the buffer and aligned (checked; base
            // 8-aligned), valid for volatile reads per the contract.
            Ok(<$t>::from_le(unsafe { p.read_volatile() }))
        }
        fn $write(&self, offset: usize, value: $t) -> Result<(), PciError> {
            let p = self.ptr::<$t>(offset)?;
            // SAFETY: as for the read.
            unsafe { p.write_volatile(value.to_le()) };
            Ok(())
        }
    };
}

impl DmaBuffer for MemDma {
    fn bus_addr(&self) -> u64 {
        self.bus_addr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn base_ptr(&self) -> Option<NonNull<u8>> {
        Some(self.base)
    }
    mem_dma_access!(read_u16, write_u16, u16);
    mem_dma_access!(read_u32, write_u32, u32);
    mem_dma_access!(read_u64, write_u64, u64);

    fn write_from(&self, offset: usize, src: &[u8]) -> Result<(), PciError> {
        self.check_range(offset, src.len())?;
        for (i, b) in src.iter().enumerate() {
            // SAFETY: offset + i < offset + src.len() <= len (checked).
            unsafe { self.base.as_ptr().add(offset + i).write_volatile(*b) };
        }
        Ok(())
    }

    fn read_into(&self, offset: usize, dst: &mut [u8]) -> Result<(), PciError> {
        self.check_range(offset, dst.len())?;
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: offset + i < offset + dst.len() <= len (checked).
            *b = unsafe { self.base.as_ptr().add(offset + i).read_volatile() };
        }
        Ok(())
    }
}

/// A DMA buffer that owns its memory: a [`MemDma`] over it and the value
/// that keeps the memory alive (a platform's pages, with whatever must
/// happen before they are freed, such as leaving an IOMMU table, in that
/// value's `Drop`). Every access goes to the [`MemDma`]; the memory is lent
/// as slices ([`DmaBuffer::base_ptr`]) as `MemDma` lends it.
pub struct OwnedDma<K> {
    mem: MemDma,
    keeper: K,
}

impl<K> OwnedDma<K> {
    /// A buffer over `mem`, whose memory `keeper` keeps valid: `mem` was
    /// made (with [`MemDma::new`]'s contract) over memory that stays valid
    /// for as long as `keeper` lives.
    pub fn new(mem: MemDma, keeper: K) -> OwnedDma<K> {
        OwnedDma { mem, keeper }
    }

    /// What keeps the memory.
    pub fn keeper(&self) -> &K {
        &self.keeper
    }
}

impl<K> core::fmt::Debug for OwnedDma<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OwnedDma")
            .field("bus_addr", &self.mem.bus_addr)
            .field("len", &self.mem.len)
            .finish()
    }
}

impl<K> DmaBuffer for OwnedDma<K> {
    fn bus_addr(&self) -> u64 {
        self.mem.bus_addr()
    }
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn read_u16(&self, offset: usize) -> Result<u16, PciError> {
        self.mem.read_u16(offset)
    }
    fn read_u32(&self, offset: usize) -> Result<u32, PciError> {
        self.mem.read_u32(offset)
    }
    fn read_u64(&self, offset: usize) -> Result<u64, PciError> {
        self.mem.read_u64(offset)
    }
    fn write_u16(&self, offset: usize, value: u16) -> Result<(), PciError> {
        self.mem.write_u16(offset, value)
    }
    fn write_u32(&self, offset: usize, value: u32) -> Result<(), PciError> {
        self.mem.write_u32(offset, value)
    }
    fn write_u64(&self, offset: usize, value: u64) -> Result<(), PciError> {
        self.mem.write_u64(offset, value)
    }
    fn write_from(&self, offset: usize, src: &[u8]) -> Result<(), PciError> {
        self.mem.write_from(offset, src)
    }
    fn read_into(&self, offset: usize, dst: &mut [u8]) -> Result<(), PciError> {
        self.mem.read_into(offset, dst)
    }
    fn base_ptr(&self) -> Option<NonNull<u8>> {
        self.mem.base_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn constraints_are_checked() {
        assert!(DmaConstraints::new(0, 8, u64::MAX).is_err());
        assert!(DmaConstraints::new(8, 3, u64::MAX).is_err());
        assert!(DmaConstraints::new(8, 8, 0x0fff_fffe).is_err());
        assert!(matches!(
            DmaConstraints::new(1 << 29, 4096, (1 << 28) - 1),
            Err(PciError::DmaMaskUnsatisfiable { .. })
        ));
        let c = DmaConstraints::new(4096, 4096, (1 << 28) - 1).unwrap();
        assert!(c.fits(0x0fff_f000));
        assert!(!c.fits(0x1000_0000));
        assert!(!c.fits(0x0fff_f800));
        assert!(!c.fits(u64::MAX - 4095));
    }

    #[test]
    fn mem_dma_round_trips_and_checks_bounds() {
        let mut backing = vec![0u64; 2];
        let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives `d`, is 8-aligned, untouched meanwhile.
        let d = unsafe { MemDma::new(base, 16, 0x1000) };
        d.write_u32(4, 0x1122_3344).unwrap();
        d.write_from(8, &[1, 2, 3]).unwrap();
        let mut out = [0u8; 4];
        d.read_into(4, &mut out).unwrap();
        assert_eq!(out, [0x44, 0x33, 0x22, 0x11]);
        assert_eq!(d.read_u16(8).unwrap(), 0x0201);
        assert_eq!(d.bus_addr_at(15).unwrap(), 0x100f);
        assert!(d.bus_addr_at(16).is_err());
        assert!(matches!(
            d.write_from(14, &[0; 3]),
            Err(PciError::OutOfBounds { .. })
        ));
        assert!(matches!(
            d.read_into(usize::MAX, &mut out),
            Err(PciError::OutOfBounds { .. })
        ));
        assert!(matches!(d.read_u64(4), Err(PciError::Misaligned { .. })));
    }

    #[test]
    fn bus_address_overflow_is_an_error() {
        let mut backing = vec![0u64; 2];
        let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives `d`, is 8-aligned, untouched meanwhile.
        let d = unsafe { MemDma::new(base, 16, u64::MAX - 3) };
        assert_eq!(d.bus_addr_at(3).unwrap(), u64::MAX);
        assert!(matches!(
            d.bus_addr_at(4),
            Err(PciError::InvalidRequest { .. })
        ));
    }
}
