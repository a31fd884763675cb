//! An in-memory configuration space, for tests, fuzzing and device models.
//!
//! [`MemConfig`] holds one function's 4 KiB of configuration space and a
//! per-byte write mask: a write changes only the bits its mask allows, the
//! way hardware registers ignore writes to read-only bits. BARs are
//! modelled the same way ([`MemConfig::set_bar`] makes the address bits
//! above the size writable), so writing all ones and reading back sizes
//! them as on a real device. Every write is logged, so tests can check the
//! order of accesses.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::config::{BarKind, ConfigAccess, ConfigReg, BAR0, CONFIG_SPACE_SIZE};
use crate::{Bdf, PciError};

const SIZE: usize = CONFIG_SPACE_SIZE as usize;

struct State {
    data: Box<[u8; SIZE]>,
    writes: Vec<(u16, u8, u32)>,
}

/// One function's configuration space in memory (see the module docs).
pub struct MemConfig {
    bdf: Bdf,
    state: RefCell<State>,
    wmask: Box<[u8; SIZE]>,
    gone: core::cell::Cell<bool>,
}

impl MemConfig {
    /// A configuration space for `bdf` holding `data`, with nothing
    /// writable. Accesses to any other device fail with
    /// [`PciError::DeviceGone`] as an empty slot would.
    pub fn new(bdf: Bdf, data: [u8; SIZE]) -> MemConfig {
        MemConfig {
            bdf,
            state: RefCell::new(State {
                data: Box::new(data),
                writes: Vec::new(),
            }),
            wmask: Box::new([0; SIZE]),
            gone: core::cell::Cell::new(false),
        }
    }

    /// A configuration space from a byte slice (copied, zero-padded or
    /// truncated to 4 KiB) and a write mask (likewise).
    pub fn from_slices(bdf: Bdf, data: &[u8], wmask: &[u8]) -> MemConfig {
        let mut d = [0u8; SIZE];
        let n = data.len().min(SIZE);
        d[..n].copy_from_slice(&data[..n]);
        let mut c = MemConfig::new(bdf, d);
        let n = wmask.len().min(SIZE);
        c.wmask[..n].copy_from_slice(&wmask[..n]);
        c
    }

    /// Sets bytes at `offset` and makes the bits of `writable` writable.
    /// Panics when the range leaves the 4 KiB space (a test's own error).
    pub fn set(&mut self, offset: u16, bytes: &[u8], writable: &[u8]) {
        let o = usize::from(offset);
        self.state.get_mut().data[o..o + bytes.len()].copy_from_slice(bytes);
        self.wmask[o..o + writable.len()].copy_from_slice(writable);
    }

    /// Sets a little-endian u16 (read-only unless `writable` has bits).
    pub fn set16(&mut self, offset: u16, value: u16, writable: u16) {
        self.set(offset, &value.to_le_bytes(), &writable.to_le_bytes());
    }

    /// Sets a little-endian u32 (read-only unless `writable` has bits).
    pub fn set32(&mut self, offset: u16, value: u32, writable: u32) {
        self.set(offset, &value.to_le_bytes(), &writable.to_le_bytes());
    }

    /// Makes BAR `index` a BAR of `kind` at `address` of `size` bytes (a
    /// power of two, at least 16 for memory and 4 for I/O): the address
    /// bits at and above the size are writable, the rest read as the type
    /// bits. Panics on arguments that make no such BAR (a test's error).
    pub fn set_bar(
        &mut self,
        index: u8,
        kind: BarKind,
        prefetchable: bool,
        address: u64,
        size: u64,
    ) {
        assert!(size.is_power_of_two());
        let off = BAR0 + 4 * u16::from(index);
        let mask = !(size - 1);
        match kind {
            BarKind::Io => {
                self.set32(off, (address as u32 & !3) | 1, mask as u32 & !3);
            }
            BarKind::Memory32 => {
                let flags = if prefetchable { 0x8 } else { 0 };
                self.set32(off, (address as u32 & !0xf) | flags, mask as u32 & !0xf);
            }
            BarKind::Memory64 => {
                let flags = 0x4 | if prefetchable { 0x8 } else { 0 };
                self.set32(off, (address as u32 & !0xf) | flags, mask as u32 & !0xf);
                self.set32(off + 4, (address >> 32) as u32, (mask >> 32) as u32);
            }
        }
    }

    /// From now on every read returns all ones and writes are dropped, as
    /// when a device is surprise-removed.
    pub fn remove(&self) {
        self.gone.set(true);
    }

    /// The writes made so far: (offset, width in bytes, value).
    pub fn writes(&self) -> Vec<(u16, u8, u32)> {
        self.state.borrow().writes.clone()
    }

    /// Reads a value directly (no logging, no device check).
    pub fn peek32(&self, offset: u16) -> u32 {
        let o = usize::from(offset);
        let s = self.state.borrow();
        u32::from_le_bytes([s.data[o], s.data[o + 1], s.data[o + 2], s.data[o + 3]])
    }
}

impl ConfigAccess for MemConfig {
    fn read(&self, bdf: Bdf, reg: ConfigReg) -> Result<u32, PciError> {
        let w = usize::from(reg.width().bytes());
        if bdf != self.bdf || self.gone.get() {
            return Ok(reg.width().mask());
        }
        let o = usize::from(reg.offset());
        let s = self.state.borrow();
        let mut v = [0u8; 4];
        // ConfigReg guarantees o + w <= 4096.
        v[..w].copy_from_slice(&s.data[o..o + w]);
        Ok(u32::from_le_bytes(v))
    }

    fn write(&self, bdf: Bdf, reg: ConfigReg, value: u32) -> Result<(), PciError> {
        if bdf != self.bdf || self.gone.get() {
            return Ok(());
        }
        let w = usize::from(reg.width().bytes());
        let o = usize::from(reg.offset());
        let mut s = self.state.borrow_mut();
        s.writes.push((
            reg.offset(),
            reg.width().bytes(),
            value & reg.width().mask(),
        ));
        let bytes = value.to_le_bytes();
        for (i, b) in bytes.iter().take(w).enumerate() {
            let m = self.wmask[o + i];
            s.data[o + i] = (s.data[o + i] & !m) | (b & m);
        }
        Ok(())
    }
}
