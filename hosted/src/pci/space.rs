//! A device model's configuration space: the bytes a driver reads, which
//! bits it may write, and where the BARs and the MSI/MSI-X capabilities are.
//!
//! Built once by the model ([`ConfigSpace::new`] and the builder methods),
//! then owned by the bus, which applies the driver's writes through the
//! write masks as a PCI function does: read-only bits stay, write-1-to-clear
//! bits (the error bits of the status register) clear, BARs keep their
//! size alignment so that sizing (write all-ones, read back) works.

use std::fmt;

/// Bytes of a conventional PCI function's configuration space.
pub const CONFIG_SPACE_PCI: usize = 256;
/// Bytes of a PCI Express function's configuration space.
pub const CONFIG_SPACE_PCIE: usize = 4096;

/// Command register: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: the function may master the bus (DMA).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: legacy INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: a capability list is present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Status register: the function received a master abort (its DMA was
/// answered with Unsupported Request, as a root complex answers a DMA the
/// IOMMU refused).
pub const STATUS_RECEIVED_MASTER_ABORT: u16 = 1 << 13;
/// Status register bits that are write-1-to-clear.
const STATUS_W1C: u16 = 0xF900;

/// Offsets in the type 0 header.
pub(crate) const VENDOR_ID: usize = 0x00;
pub(crate) const COMMAND: usize = 0x04;
pub(crate) const STATUS: usize = 0x06;
const REVISION: usize = 0x08;
const CLASS_PROG: usize = 0x09;
const CACHE_LINE: usize = 0x0C;
const LATENCY: usize = 0x0D;
pub(crate) const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR: usize = 0x2C;
const SUBSYSTEM_ID: usize = 0x2E;
const CAP_PTR: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3C;
const INTERRUPT_PIN: usize = 0x3D;
/// The first byte after the type 0 header, where capabilities go.
const FIRST_CAP: usize = 0x40;

/// Capability id of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability id of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// MSI message control: enable.
const MSI_ENABLE: u16 = 1 << 0;
/// MSI message control: 64-bit address.
const MSI_64BIT: u16 = 1 << 7;
/// MSI message control: per-vector masking.
const MSI_PVM: u16 = 1 << 8;
/// MSI-X message control: function mask.
pub(crate) const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// MSI-X message control: enable.
pub(crate) const MSIX_ENABLE: u16 = 1 << 15;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarSpec {
    /// Memory below 4 GiB (one BAR slot).
    Memory32 {
        /// Bytes: a power of two, at least 16.
        size: u32,
        /// Prefetchable.
        prefetchable: bool,
    },
    /// Memory anywhere (two BAR slots: this one and the next).
    Memory64 {
        /// Bytes: a power of two, at least 16.
        size: u64,
        /// Prefetchable.
        prefetchable: bool,
    },
}

impl BarSpec {
    /// The BAR's size in bytes.
    pub fn size(self) -> u64 {
        match self {
            BarSpec::Memory32 { size, .. } => u64::from(size),
            BarSpec::Memory64 { size, .. } => size,
        }
    }
}

/// Where a function's MSI capability is and what it offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiLayout {
    /// Offset of the capability.
    pub offset: usize,
    /// Vectors the function can use (1, 2, 4, ..., 32).
    pub vectors: u8,
    /// 64-bit message address.
    pub is_64bit: bool,
    /// Per-vector mask and pending bits.
    pub per_vector_mask: bool,
}

impl MsiLayout {
    fn data_offset(&self) -> usize {
        self.offset + if self.is_64bit { 0x0C } else { 0x08 }
    }
    fn mask_offset(&self) -> usize {
        self.offset + if self.is_64bit { 0x10 } else { 0x0C }
    }
    fn pending_offset(&self) -> usize {
        self.mask_offset() + 4
    }
    fn len(&self) -> usize {
        match (self.is_64bit, self.per_vector_mask) {
            (false, false) => 0x0C,
            (true, false) => 0x10,
            (false, true) => 0x14,
            (true, true) => 0x18,
        }
    }
}

/// Where a function's MSI-X capability, table and pending bit array are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Offset of the capability.
    pub offset: usize,
    /// Entries in the table (1..=2048).
    pub table_size: u16,
    /// The BAR holding the table.
    pub table_bar: u8,
    /// Where the table starts in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// The BAR holding the pending bit array.
    pub pba_bar: u8,
    /// Where the pending bit array starts in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Bytes of the vector table (16 per entry).
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * 16
    }
    /// Bytes of the pending bit array (whole quadwords).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }
}

/// A mistake in building a configuration space (a bug in a device model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutError(pub String);

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device model configuration space: {}", self.0)
    }
}

impl std::error::Error for LayoutError {}

/// A function's configuration space with its write masks.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
    /// Bits a write may change.
    wmask: Vec<u8>,
    /// Bits a write of 1 clears.
    w1cmask: Vec<u8>,
    bars: [Option<BarSpec>; 6],
    msi: Option<MsiLayout>,
    msix: Option<MsixLayout>,
    /// Where the next capability goes, and the last one's next pointer.
    next_free: usize,
    last_cap: Option<usize>,
}

impl fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.read16(VENDOR_ID)))
            .field("device", &format_args!("{:#06x}", self.read16(VENDOR_ID + 2)))
            .field("len", &self.bytes.len())
            .field("bars", &self.bars)
            .field("msi", &self.msi)
            .field("msix", &self.msix)
            .finish()
    }
}

impl ConfigSpace {
    /// A type 0 header: `class` is the 24-bit class code (base class,
    /// subclass, programming interface), `len` [`CONFIG_SPACE_PCI`] or
    /// [`CONFIG_SPACE_PCIE`]. Subsystem ids default to QEMU's (0x1af4,
    /// 0x1100).
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8, len: usize) -> Result<Self, LayoutError> {
        if len != CONFIG_SPACE_PCI && len != CONFIG_SPACE_PCIE {
            return Err(LayoutError(format!("{len} bytes is neither 256 nor 4096")));
        }
        let mut s = ConfigSpace {
            bytes: vec![0; len],
            wmask: vec![0; len],
            w1cmask: vec![0; len],
            bars: [None; 6],
            msi: None,
            msix: None,
            next_free: FIRST_CAP,
            last_cap: None,
        };
        s.set16(VENDOR_ID, vendor);
        s.set16(VENDOR_ID + 2, device);
        s.bytes[REVISION] = revision;
        s.bytes[CLASS_PROG] = class as u8;
        s.bytes[CLASS_PROG + 1] = (class >> 8) as u8;
        s.bytes[CLASS_PROG + 2] = (class >> 16) as u8;
        s.set16(SUBSYSTEM_VENDOR, 0x1AF4);
        s.set16(SUBSYSTEM_ID, 0x1100);
        // Command: I/O, memory, bus master, parity, SERR, INTx disable.
        s.set_wmask16(COMMAND, 0x0547);
        s.set_w1cmask16(STATUS, STATUS_W1C);
        s.wmask[CACHE_LINE] = 0xFF;
        s.wmask[LATENCY] = 0xFF;
        s.wmask[INTERRUPT_LINE] = 0xFF;
        Ok(s)
    }

    /// Sets the subsystem vendor and id.
    pub fn with_subsystem(mut self, vendor: u16, id: u16) -> Self {
        self.set16(SUBSYSTEM_VENDOR, vendor);
        self.set16(SUBSYSTEM_ID, id);
        self
    }

    /// Sets the legacy interrupt pin (1 = INTA#).
    pub fn with_interrupt_pin(mut self, pin: u8) -> Self {
        self.bytes[INTERRUPT_PIN] = pin;
        self
    }

    /// Declares BAR `index`.
    pub fn with_bar(mut self, index: usize, spec: BarSpec) -> Result<Self, LayoutError> {
        let size = spec.size();
        if !size.is_power_of_two() || size < 16 {
            return Err(LayoutError(format!("BAR{index}: size {size:#x} is not a power of two of at least 16")));
        }
        let slots = if matches!(spec, BarSpec::Memory64 { .. }) { 2 } else { 1 };
        if index + slots > 6 || self.bars[index..index + slots].iter().any(Option::is_some) {
            return Err(LayoutError(format!("BAR{index}: no room (slot taken or past BAR5)")));
        }
        if index > 0 && matches!(self.bars[index - 1], Some(BarSpec::Memory64 { .. })) {
            return Err(LayoutError(format!("BAR{index}: is the upper half of a 64-bit BAR")));
        }
        let off = BAR0 + 4 * index;
        let (low_flags, prefetch) = match spec {
            BarSpec::Memory32 { prefetchable, .. } => (0u32, prefetchable),
            BarSpec::Memory64 { prefetchable, .. } => (0b100, prefetchable),
        };
        self.set32(off, low_flags | if prefetch { 0b1000 } else { 0 });
        let mask = !(size - 1);
        self.set_wmask32(off, (mask as u32) & !0xF);
        if slots == 2 {
            self.set_wmask32(off + 4, (mask >> 32) as u32);
        }
        self.bars[index] = Some(spec);
        Ok(self)
    }

    /// Appends a capability with this id and body (the bytes after the id
    /// and next pointer); returns its offset. The body is read-only to the
    /// driver unless `writable` (same length as the body) says otherwise.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: Option<&[u8]>) -> Result<usize, LayoutError> {
        let len = body.len() + 2;
        let off = self.next_free;
        let end = off + len;
        if end > CONFIG_SPACE_PCI {
            return Err(LayoutError(format!("capability {id:#04x} of {len} bytes does not fit below 0x100")));
        }
        if writable.is_some_and(|w| w.len() != body.len()) {
            return Err(LayoutError(format!("capability {id:#04x}: write mask length differs from the body's")));
        }
        self.bytes[off] = id;
        self.bytes[off + 1] = 0;
        self.bytes[off + 2..end].copy_from_slice(body);
        if let Some(w) = writable {
            self.wmask[off + 2..end].copy_from_slice(w);
        }
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = off as u8,
            None => self.bytes[CAP_PTR] = off as u8,
        }
        self.last_cap = Some(off);
        // Capabilities are dword aligned.
        self.next_free = end.next_multiple_of(4);
        let status = self.read16(STATUS) | STATUS_CAP_LIST;
        self.set16(STATUS, status);
        Ok(off)
    }

    /// Adds an MSI capability with `vectors` vectors (a power of two up to
    /// 32), a 32- or 64-bit address and optional per-vector masking.
    pub fn with_msi(mut self, vectors: u8, is_64bit: bool, per_vector_mask: bool) -> Result<Self, LayoutError> {
        if !vectors.is_power_of_two() || vectors > 32 {
            return Err(LayoutError(format!("MSI: {vectors} vectors is not a power of two up to 32")));
        }
        if self.msi.is_some() {
            return Err(LayoutError("MSI: the function already has an MSI capability".into()));
        }
        let mmc = vectors.trailing_zeros() as u16;
        let control = (mmc << 1) | if is_64bit { MSI_64BIT } else { 0 } | if per_vector_mask { MSI_PVM } else { 0 };
        let mut layout = MsiLayout { offset: 0, vectors, is_64bit, per_vector_mask };
        let body_len = layout.len() - 2;
        let mut body = vec![0u8; body_len];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        let mut w = vec![0u8; body_len];
        // Enable and multiple message enable.
        w[0] = 0x71;
        // Address (dword aligned) and data.
        w[2..6].copy_from_slice(&0xFFFF_FFFCu32.to_le_bytes());
        let data_at = layout.data_offset() - 2;
        if is_64bit {
            w[6..10].fill(0xFF);
        }
        w[data_at..data_at + 2].fill(0xFF);
        if per_vector_mask {
            let m = layout.mask_offset() - 2;
            let bits = if vectors == 32 { u32::MAX } else { (1u32 << vectors) - 1 };
            w[m..m + 4].copy_from_slice(&bits.to_le_bytes());
        }
        layout.offset = self.add_capability(CAP_ID_MSI, &body, Some(&w))?;
        self.msi = Some(layout);
        Ok(self)
    }

    /// Adds an MSI-X capability: `table_size` entries in BAR `table_bar`
    /// at `table_offset`, the pending bits in BAR `pba_bar` at
    /// `pba_offset`. The BARs must be declared first and hold the regions.
    pub fn with_msix(
        mut self,
        table_size: u16,
        (table_bar, table_offset): (u8, u32),
        (pba_bar, pba_offset): (u8, u32),
    ) -> Result<Self, LayoutError> {
        if table_size == 0 || table_size > 2048 {
            return Err(LayoutError(format!("MSI-X: {table_size} entries is not 1..=2048")));
        }
        if self.msix.is_some() {
            return Err(LayoutError("MSI-X: the function already has an MSI-X capability".into()));
        }
        let mut layout = MsixLayout { offset: 0, table_size, table_bar, table_offset, pba_bar, pba_offset };
        for (what, bar, off, len) in
            [("table", table_bar, table_offset, layout.table_len()), ("PBA", pba_bar, pba_offset, layout.pba_len())]
        {
            if off % 8 != 0 {
                return Err(LayoutError(format!("MSI-X: {what} offset {off:#x} is not 8-byte aligned")));
            }
            let size = self.bar(usize::from(bar)).map(BarSpec::size);
            if size.is_none_or(|s| u64::from(off) + len > s) {
                return Err(LayoutError(format!("MSI-X: {what} does not fit BAR{bar}")));
            }
        }
        let control = table_size - 1;
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(table_bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(pba_bar)).to_le_bytes());
        let mut w = [0u8; 10];
        // Function mask and enable.
        w[1] = 0xC0;
        layout.offset = self.add_capability(CAP_ID_MSIX, &body, Some(&w))?;
        self.msix = Some(layout);
        Ok(self)
    }

    /// The BAR declared at `index` (not the upper half of a 64-bit one).
    pub fn bar(&self, index: usize) -> Option<BarSpec> {
        self.bars.get(index).copied().flatten()
    }

    /// The MSI capability, if any.
    pub fn msi(&self) -> Option<MsiLayout> {
        self.msi
    }

    /// The MSI-X capability, if any.
    pub fn msix(&self) -> Option<MsixLayout> {
        self.msix
    }

    /// Bytes of configuration space.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false (a configuration space has at least 256 bytes).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Reads `width` (1, 2 or 4) bytes at `offset`, little-endian. Reads
    /// past the end or misaligned read as all-ones, as a master abort does.
    pub fn read(&self, offset: usize, width: usize) -> u32 {
        match self.range(offset, width) {
            Some(r) => r.rev().fold(0u32, |v, i| (v << 8) | u32::from(self.bytes[i])),
            None => all_ones(width),
        }
    }

    /// Writes `width` (1, 2 or 4) bytes at `offset` as a driver does:
    /// through the write masks. Out of range or misaligned writes are
    /// dropped. Returns whether the write was applied.
    pub fn write(&mut self, offset: usize, width: usize, value: u32) -> bool {
        let Some(r) = self.range(offset, width) else { return false };
        for (k, i) in r.enumerate() {
            let b = (value >> (8 * k)) as u8;
            let w = self.wmask[i];
            let c = self.w1cmask[i];
            self.bytes[i] = (self.bytes[i] & !w) | (b & w);
            self.bytes[i] &= !(b & c);
        }
        true
    }

    /// Overwrites raw bytes, ignoring the write masks: for models that
    /// change read-only fields (status bits) and for tests that build a
    /// broken configuration space (a capability loop).
    pub fn poke(&mut self, offset: usize, bytes: &[u8]) -> Result<(), LayoutError> {
        let end = offset.checked_add(bytes.len()).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(LayoutError(format!("poke of {} byte(s) at {offset:#x} is out of range", bytes.len())));
        };
        self.bytes[offset..end].copy_from_slice(bytes);
        Ok(())
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read16(COMMAND)
    }

    /// Sets bits of the status register (a device event such as a master
    /// abort); the driver clears them by writing 1s.
    pub fn set_status_bits(&mut self, bits: u16) {
        let s = self.read16(STATUS) | bits;
        self.set16(STATUS, s);
    }

    /// Whether MSI is enabled, and how many vectors the driver granted.
    pub fn msi_enabled_vectors(&self) -> Option<u8> {
        let l = self.msi?;
        let control = self.read16(l.offset + 2);
        if control & MSI_ENABLE == 0 {
            return None;
        }
        let mme = (control >> 4) & 7;
        Some(1u8.checked_shl(u32::from(mme)).unwrap_or(32).min(l.vectors))
    }

    /// Whether MSI vector `v` is masked (per-vector masking).
    pub fn msi_masked(&self, v: u8) -> bool {
        match self.msi {
            Some(l) if l.per_vector_mask && v < 32 => self.read32(l.mask_offset()) & (1 << v) != 0,
            _ => false,
        }
    }

    /// Sets or clears MSI vector `v`'s pending bit (per-vector masking).
    pub fn set_msi_pending(&mut self, v: u8, pending: bool) {
        if let Some(l) = self.msi.filter(|l| l.per_vector_mask && v < 32) {
            let p = self.read32(l.pending_offset());
            let p = if pending { p | (1 << v) } else { p & !(1 << v) };
            self.set32(l.pending_offset(), p);
        }
    }

    /// MSI vectors pending and now unmasked (to deliver after a write to
    /// the mask bits).
    pub fn msi_pending_unmasked(&self) -> u32 {
        match self.msi {
            Some(l) if l.per_vector_mask => self.read32(l.pending_offset()) & !self.read32(l.mask_offset()),
            _ => 0,
        }
    }

    /// Programs the MSI address and data and enables `vectors` vectors, as
    /// the backend does for the driver (`XEN_PCI_OP_enable_msi`).
    pub(crate) fn program_msi(&mut self, vectors: u8, address: u64, data: u16) -> bool {
        let Some(l) = self.msi else { return false };
        self.set32(l.offset + 4, address as u32);
        if l.is_64bit {
            self.set32(l.offset + 8, (address >> 32) as u32);
        }
        self.set16(l.data_offset(), data);
        let mme = vectors.max(1).trailing_zeros() as u16;
        let control = (self.read16(l.offset + 2) & !0x70) | (mme << 4) | MSI_ENABLE;
        self.set16(l.offset + 2, control);
        true
    }

    /// Clears the MSI enable bit.
    pub(crate) fn disable_msi(&mut self) {
        if let Some(l) = self.msi {
            let c = self.read16(l.offset + 2) & !MSI_ENABLE;
            self.set16(l.offset + 2, c);
        }
    }

    /// The MSI-X message control register, if the function has MSI-X.
    pub(crate) fn msix_control(&self) -> Option<u16> {
        self.msix.map(|l| self.read16(l.offset + 2))
    }

    /// Sets or clears MSI-X enable and function mask.
    pub(crate) fn set_msix_control(&mut self, enable: bool, function_mask: bool) {
        if let Some(l) = self.msix {
            let mut c = self.read16(l.offset + 2) & !(MSIX_ENABLE | MSIX_FUNCTION_MASK);
            if enable {
                c |= MSIX_ENABLE;
            }
            if function_mask {
                c |= MSIX_FUNCTION_MASK;
            }
            self.set16(l.offset + 2, c);
        }
    }

    /// The address BAR `index` is programmed with (memory BARs).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let spec = self.bar(index)?;
        let off = BAR0 + 4 * index;
        let low = u64::from(self.read32(off) & !0xF);
        Some(match spec {
            BarSpec::Memory32 { .. } => low,
            BarSpec::Memory64 { .. } => low | (u64::from(self.read32(off + 4)) << 32),
        })
    }

    /// Programs BAR `index` with `address` (as firmware does at boot).
    pub(crate) fn set_bar_address(&mut self, index: usize, address: u64) {
        let Some(spec) = self.bar(index) else { return };
        let off = BAR0 + 4 * index;
        let flags = self.read32(off) & 0xF;
        self.set32(off, (address as u32 & !0xF) | flags);
        if matches!(spec, BarSpec::Memory64 { .. }) {
            self.set32(off + 4, (address >> 32) as u32);
        }
    }

    fn range(&self, offset: usize, width: usize) -> Option<std::ops::Range<usize>> {
        if !matches!(width, 1 | 2 | 4) || offset % width != 0 {
            return None;
        }
        let end = offset.checked_add(width).filter(|&e| e <= self.bytes.len())?;
        Some(offset..end)
    }

    pub(crate) fn read16(&self, off: usize) -> u16 {
        self.read(off, 2) as u16
    }
    pub(crate) fn read32(&self, off: usize) -> u32 {
        self.read(off, 4)
    }
    fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn set_wmask16(&mut self, off: usize, v: u16) {
        self.wmask[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set_wmask32(&mut self, off: usize, v: u32) {
        self.wmask[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn set_w1cmask16(&mut self, off: usize, v: u16) {
        self.w1cmask[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
}

/// All-ones of `width` bytes (what a master-aborted read returns).
pub(crate) fn all_ones(width: usize) -> u32 {
    match width {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_sizing_and_read_only_fields() {
        let mut s = ConfigSpace::new(0x1234, 0x11e8, 0xFF_0000, 0x10, CONFIG_SPACE_PCI)
            .unwrap()
            .with_bar(0, BarSpec::Memory32 { size: 1 << 20, prefetchable: false })
            .unwrap();
        s.write(BAR0, 4, u32::MAX);
        assert_eq!(s.read(BAR0, 4), 0xFFF0_0000);
        s.write(VENDOR_ID, 4, 0);
        assert_eq!(s.read(VENDOR_ID, 4), 0x11e8_1234);
        s.set_status_bits(STATUS_RECEIVED_MASTER_ABORT);
        s.write(STATUS, 2, u32::from(STATUS_RECEIVED_MASTER_ABORT));
        assert_eq!(s.read16(STATUS) & STATUS_RECEIVED_MASTER_ABORT, 0);
        assert_eq!(s.read(0x101, 1), 0xFF);
        assert_eq!(s.read(0x02, 4), 0xFFFF_FFFF, "misaligned");
    }

    #[test]
    fn msi_capability_is_chained_and_programmable() {
        let mut s = ConfigSpace::new(1, 2, 0, 0, CONFIG_SPACE_PCI).unwrap().with_msi(4, true, true).unwrap();
        let l = s.msi().unwrap();
        assert_eq!(s.read(CAP_PTR, 1) as usize, l.offset);
        assert_eq!(s.read(l.offset, 1), u32::from(CAP_ID_MSI));
        assert_eq!(s.msi_enabled_vectors(), None);
        assert!(s.program_msi(2, 0xFEE0_0000, 0x40));
        assert_eq!(s.msi_enabled_vectors(), Some(2));
        s.write(l.mask_offset(), 4, 0b10);
        assert!(s.msi_masked(1) && !s.msi_masked(0));
        s.set_msi_pending(1, true);
        assert_eq!(s.msi_pending_unmasked(), 0);
        s.write(l.mask_offset(), 4, 0);
        assert_eq!(s.msi_pending_unmasked(), 0b10);
    }
}
