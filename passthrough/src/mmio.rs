//! Register access to a mapped BAR.

use core::ptr::NonNull;

use crate::PciError;

/// Checks an access of `width` bytes at `offset` into a region of `size`
/// bytes: inside the region and aligned to the width.
pub fn check_access(
    region: &'static str,
    offset: usize,
    width: usize,
    size: usize,
) -> Result<(), PciError> {
    let end = offset.checked_add(width);
    if end.is_none_or(|end| end > size) {
        return Err(PciError::OutOfBounds {
            region,
            offset,
            len: width,
            size,
        });
    }
    if width != 0 && offset % width != 0 {
        return Err(PciError::Misaligned {
            region,
            offset,
            align: width,
        });
    }
    Ok(())
}

/// A device's memory-mapped registers (one BAR, or part of one).
///
/// Every access is bounds- and alignment-checked: an offset outside the
/// region or not aligned to the access width is an error, never a stray
/// access. Values are in the CPU's byte order (PCI registers are
/// little-endian, as x86 is).
pub trait Mmio {
    /// The region's length in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads a byte at `offset`.
    fn read8(&self, offset: usize) -> Result<u8, PciError>;
    /// Reads 16 bits at `offset` (2-aligned).
    fn read16(&self, offset: usize) -> Result<u16, PciError>;
    /// Reads 32 bits at `offset` (4-aligned).
    fn read32(&self, offset: usize) -> Result<u32, PciError>;
    /// Reads 64 bits at `offset` (8-aligned).
    fn read64(&self, offset: usize) -> Result<u64, PciError>;
    /// Writes a byte at `offset`.
    fn write8(&self, offset: usize, value: u8) -> Result<(), PciError>;
    /// Writes 16 bits at `offset` (2-aligned).
    fn write16(&self, offset: usize, value: u16) -> Result<(), PciError>;
    /// Writes 32 bits at `offset` (4-aligned).
    fn write32(&self, offset: usize, value: u32) -> Result<(), PciError>;
    /// Writes 64 bits at `offset` (8-aligned).
    fn write64(&self, offset: usize, value: u64) -> Result<(), PciError>;
}

/// [`Mmio`] over a mapped region, with volatile accesses.
///
/// It does not own the mapping: whoever maps the BAR keeps it mapped for as
/// long as this lives (see [`MemMmio::new`]).
#[derive(Debug)]
pub struct MemMmio {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: MemMmio is a pointer to device registers (or memory standing in
// for them) that the creator promised stay mapped and are reached only
// through volatile accesses; moving it to another thread changes nothing
// about that. It is not Sync: two threads writing the same registers need
// the driver's own synchronization.
unsafe impl Send for MemMmio {}

impl MemMmio {
    /// Register access to `len` bytes at `base`.
    ///
    /// # Safety
    /// For as long as the value lives, `base..base + len` must be mapped,
    /// valid for volatile reads and writes of 1, 2, 4 and 8 bytes at
    /// offsets aligned to the width, and not accessed through Rust
    /// references (only volatile accesses, here or by the device). `base`
    /// must be 8-byte aligned (a BAR mapping is page-aligned). Device
    /// registers must be mapped uncacheable.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> MemMmio {
        debug_assert!(
            base.as_ptr() as usize % 8 == 0,
            "MMIO base must be 8-byte aligned"
        );
        MemMmio { base, len }
    }

    /// The first byte of the region.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    fn ptr<T>(&self, offset: usize) -> Result<*mut T, PciError> {
        check_access("MMIO", offset, core::mem::size_of::<T>(), self.len)?;
        // SAFETY: check_access proved offset + size_of::<T>() <= len, so the
        // result lies inside the region the constructor's contract covers.
        Ok(unsafe { self.base.as_ptr().add(offset) }.cast())
    }
}

macro_rules! mem_mmio_access {
    ($read:ident, $write:ident, $t:ty) => {
        fn $read(&self, offset: usize) -> Result<$t, PciError> {
            let p = self.ptr::<$t>(offset)?;
            // SAFETY: `p` is inside the region and aligned (checked by
            // `ptr`, base 8-aligned per the constructor's contract), which
            // the contract makes valid for volatile reads.
            Ok(unsafe { p.read_volatile() })
        }
        fn $write(&self, offset: usize, value: $t) -> Result<(), PciError> {
            let p = self.ptr::<$t>(offset)?;
            // SAFETY: as for the read: inside, aligned, and valid for
            // volatile writes per the contract.
            unsafe { p.write_volatile(value) };
            Ok(())
        }
    };
}

impl Mmio for MemMmio {
    fn len(&self) -> usize {
        self.len
    }
    mem_mmio_access!(read8, write8, u8);
    mem_mmio_access!(read16, write16, u16);
    mem_mmio_access!(read32, write32, u32);
    mem_mmio_access!(read64, write64, u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn mem_mmio_checks_bounds_and_alignment() {
        let mut backing = vec![0u64; 4];
        let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives `m`, is 8-aligned, and is not touched
        // through references while `m` is used.
        let m = unsafe { MemMmio::new(base, 32) };
        m.write32(4, 0xdead_beef).unwrap();
        m.write64(8, 0x0102_0304_0506_0708).unwrap();
        m.write8(31, 0xaa).unwrap();
        assert_eq!(m.read32(4).unwrap(), 0xdead_beef);
        assert_eq!(m.read16(6).unwrap(), 0xdead);
        assert_eq!(m.read8(8).unwrap(), 0x08);
        assert_eq!(m.read64(8).unwrap(), 0x0102_0304_0506_0708);
        assert!(matches!(
            m.read32(32),
            Err(PciError::OutOfBounds { offset: 32, .. })
        ));
        assert!(matches!(m.read64(28), Err(PciError::OutOfBounds { .. })));
        assert!(matches!(
            m.read32(usize::MAX - 1),
            Err(PciError::OutOfBounds { .. })
        ));
        assert!(matches!(
            m.write16(3, 0),
            Err(PciError::Misaligned { align: 2, .. })
        ));
        assert!(matches!(m.read64(4), Err(PciError::Misaligned { .. })));
        assert_eq!(backing[3] >> 56, 0xaa);
    }
}
