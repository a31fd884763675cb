//! PCI configuration space: access, the header, BARs and capabilities.
//!
//! Configuration space is written by the device and, under Xen, forwarded
//! (and filtered) by the PCI backend: both may be faulty or hostile. Every
//! value read here is checked before it is used: capability pointers are
//! bounded, aligned and loop-checked, BARs must be aligned and must not
//! overlap, MSI-X tables must lie inside their BAR, and all-ones reads mean
//! the device is gone. A violation is a [`PciError`], never a panic.

use alloc::vec::Vec;

use crate::{Bdf, PciError};

/// Vendor ID register.
pub const VENDOR_ID: u16 = 0x00;
/// Device ID register.
pub const DEVICE_ID: u16 = 0x02;
/// Command register.
pub const COMMAND: u16 = 0x04;
/// Status register.
pub const STATUS: u16 = 0x06;
/// Revision ID register (the class code follows in 0x09..0x0c).
pub const REVISION_ID: u16 = 0x08;
/// Header type register.
pub const HEADER_TYPE: u16 = 0x0e;
/// The first BAR.
pub const BAR0: u16 = 0x10;
/// Subsystem vendor ID (header type 0).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Subsystem ID (header type 0).
pub const SUBSYSTEM_ID: u16 = 0x2e;
/// Capabilities pointer.
pub const CAPABILITY_LIST: u16 = 0x34;
/// Interrupt line register.
pub const INTERRUPT_LINE: u16 = 0x3c;
/// Interrupt pin register.
pub const INTERRUPT_PIN: u16 = 0x3d;

/// COMMAND: respond to I/O space accesses.
pub const COMMAND_IO: u16 = 1 << 0;
/// COMMAND: respond to memory space accesses.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// COMMAND: the device may master the bus (DMA, MSI writes).
pub const COMMAND_MASTER: u16 = 1 << 2;
/// COMMAND: INTx emulation disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// STATUS: the device has a capability list at [`CAPABILITY_LIST`].
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability ID of PCI Express.
pub const CAP_ID_EXP: u8 = 0x10;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// Size of a PCI Express function's configuration space.
pub const CONFIG_SPACE_SIZE: u16 = 4096;
/// Most capabilities the standard list can hold: 48 dwords lie between
/// 0x40 and 0x100 (Linux's `PCI_FIND_CAP_TTL`).
pub const MAX_CAPABILITIES: usize = 48;

/// The width of a configuration access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    /// One byte.
    Byte,
    /// Two bytes.
    Word,
    /// Four bytes.
    Dword,
}

impl Width {
    /// The width in bytes.
    pub const fn bytes(self) -> u8 {
        match self {
            Width::Byte => 1,
            Width::Word => 2,
            Width::Dword => 4,
        }
    }

    /// The width of `bytes` bytes, if it is 1, 2 or 4.
    pub const fn from_bytes(bytes: u32) -> Option<Width> {
        match bytes {
            1 => Some(Width::Byte),
            2 => Some(Width::Word),
            4 => Some(Width::Dword),
            _ => None,
        }
    }

    /// The mask of the width's bits in a `u32`.
    pub const fn mask(self) -> u32 {
        match self {
            Width::Byte => 0xff,
            Width::Word => 0xffff,
            Width::Dword => 0xffff_ffff,
        }
    }
}

/// A checked configuration register: an offset below 4096 aligned to its
/// width. Implementations of [`ConfigAccess`] receive only these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConfigReg {
    offset: u16,
    width: Width,
}

impl ConfigReg {
    /// The register at `offset` of `width`, or
    /// [`PciError::BadConfigOffset`] when it is out of range or misaligned.
    pub const fn new(offset: u16, width: Width) -> Result<ConfigReg, PciError> {
        let w = width.bytes() as u16;
        if offset >= CONFIG_SPACE_SIZE || offset % w != 0 {
            return Err(PciError::BadConfigOffset {
                offset,
                width: width.bytes(),
            });
        }
        Ok(ConfigReg { offset, width })
    }

    /// The offset.
    pub const fn offset(self) -> u16 {
        self.offset
    }

    /// The width.
    pub const fn width(self) -> Width {
        self.width
    }
}

/// Access to PCI configuration space.
///
/// Implementors provide [`ConfigAccess::read`] and [`ConfigAccess::write`]
/// for checked registers; the width-specific methods check the offset and
/// call them. pcifront implements this over `io/pciif.h`; a hosted
/// platform over its device models.
pub trait ConfigAccess {
    /// Reads the register; the value is in the low `reg.width()` bytes
    /// (implementations mask the rest to zero).
    fn read(&self, bdf: Bdf, reg: ConfigReg) -> Result<u32, PciError>;
    /// Writes the low `reg.width()` bytes of `value` to the register.
    fn write(&self, bdf: Bdf, reg: ConfigReg, value: u32) -> Result<(), PciError>;

    /// Reads a byte at `offset`.
    fn read8(&self, bdf: Bdf, offset: u16) -> Result<u8, PciError> {
        let v = self.read(bdf, ConfigReg::new(offset, Width::Byte)?)?;
        Ok((v & 0xff) as u8)
    }
    /// Reads a 16-bit word at `offset` (2-aligned).
    fn read16(&self, bdf: Bdf, offset: u16) -> Result<u16, PciError> {
        let v = self.read(bdf, ConfigReg::new(offset, Width::Word)?)?;
        Ok((v & 0xffff) as u16)
    }
    /// Reads a 32-bit dword at `offset` (4-aligned).
    fn read32(&self, bdf: Bdf, offset: u16) -> Result<u32, PciError> {
        self.read(bdf, ConfigReg::new(offset, Width::Dword)?)
    }
    /// Writes a byte at `offset`.
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) -> Result<(), PciError> {
        self.write(bdf, ConfigReg::new(offset, Width::Byte)?, u32::from(value))
    }
    /// Writes a 16-bit word at `offset` (2-aligned).
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) -> Result<(), PciError> {
        self.write(bdf, ConfigReg::new(offset, Width::Word)?, u32::from(value))
    }
    /// Writes a 32-bit dword at `offset` (4-aligned).
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) -> Result<(), PciError> {
        self.write(bdf, ConfigReg::new(offset, Width::Dword)?, value)
    }
}

impl<C: ConfigAccess + ?Sized> ConfigAccess for &C {
    fn read(&self, bdf: Bdf, reg: ConfigReg) -> Result<u32, PciError> {
        (**self).read(bdf, reg)
    }
    fn write(&self, bdf: Bdf, reg: ConfigReg, value: u32) -> Result<(), PciError> {
        (**self).write(bdf, reg, value)
    }
}

/// Sets and clears bits of the COMMAND register (read, modify, write).
pub fn update_command<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    set: u16,
    clear: u16,
) -> Result<u16, PciError> {
    let old = cfg.read16(bdf, COMMAND)?;
    if old == 0xffff {
        return Err(PciError::DeviceGone { bdf });
    }
    let new = (old & !clear) | set;
    if new != old {
        cfg.write16(bdf, COMMAND, new)?;
    }
    Ok(new)
}

/// Lets the device master the bus (needed for DMA and MSI) and decode
/// memory accesses to its BARs.
pub fn enable_memory_and_bus_master<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
) -> Result<(), PciError> {
    update_command(cfg, bdf, COMMAND_MEMORY | COMMAND_MASTER, 0).map(|_| ())
}

/// A snapshot of the configuration header's identification and control
/// fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// COMMAND at the time of the snapshot.
    pub command: u16,
    /// STATUS at the time of the snapshot.
    pub status: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class in bits 23:16, subclass in 15:8,
    /// programming interface in 7:0.
    pub class: u32,
    /// Header type with the multi-function bit masked off (0: endpoint,
    /// 1: PCI-PCI bridge, 2: CardBus bridge).
    pub header_type: u8,
    /// Whether the device has more than one function.
    pub multifunction: bool,
    /// Subsystem vendor ID (0 for bridges).
    pub subsystem_vendor_id: u16,
    /// Subsystem ID (0 for bridges).
    pub subsystem_id: u16,
    /// Interrupt pin: 0 none, 1..=4 INTA..INTD.
    pub interrupt_pin: u8,
    /// Interrupt line (firmware-assigned; informational).
    pub interrupt_line: u8,
}

impl ConfigHeader {
    /// Reads the header of `bdf`.
    ///
    /// Fails with [`PciError::DeviceGone`] when the vendor ID reads all
    /// ones (or zero), and [`PciError::BadConfig`] for an undefined header
    /// type or interrupt pin.
    pub fn read<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> Result<ConfigHeader, PciError> {
        let id = cfg.read32(bdf, VENDOR_ID)?;
        let vendor_id = (id & 0xffff) as u16;
        if vendor_id == 0xffff || vendor_id == 0 {
            return Err(PciError::DeviceGone { bdf });
        }
        let cmd_status = cfg.read32(bdf, COMMAND)?;
        let class_rev = cfg.read32(bdf, REVISION_ID)?;
        let raw_type = cfg.read8(bdf, HEADER_TYPE)?;
        let header_type = raw_type & 0x7f;
        if header_type > 2 {
            return Err(PciError::BadConfig {
                bdf,
                offset: HEADER_TYPE,
                reason: "header type is not 0, 1 or 2",
            });
        }
        let (subsystem_vendor_id, subsystem_id) = if header_type == 0 {
            let sub = cfg.read32(bdf, SUBSYSTEM_VENDOR_ID)?;
            ((sub & 0xffff) as u16, (sub >> 16) as u16)
        } else {
            (0, 0)
        };
        let intr = cfg.read16(bdf, INTERRUPT_LINE)?;
        let interrupt_pin = (intr >> 8) as u8;
        if interrupt_pin > 4 {
            return Err(PciError::BadConfig {
                bdf,
                offset: INTERRUPT_PIN,
                reason: "interrupt pin is above 4 (INTD)",
            });
        }
        Ok(ConfigHeader {
            vendor_id,
            device_id: (id >> 16) as u16,
            command: (cmd_status & 0xffff) as u16,
            status: (cmd_status >> 16) as u16,
            revision: (class_rev & 0xff) as u8,
            class: class_rev >> 8,
            header_type,
            multifunction: raw_type & 0x80 != 0,
            subsystem_vendor_id,
            subsystem_id,
            interrupt_pin,
            interrupt_line: (intr & 0xff) as u8,
        })
    }

    /// How many BARs this header type has (6 for endpoints, 2 for PCI-PCI
    /// bridges, 0 for CardBus bridges).
    pub const fn bar_count(&self) -> u8 {
        match self.header_type {
            0 => 6,
            1 => 2,
            _ => 0,
        }
    }
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// Memory space, 32-bit address.
    Memory32,
    /// Memory space, 64-bit address (the BAR and the next slot).
    Memory64,
    /// I/O port space.
    Io,
}

/// A decoded, sized Base Address Register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bar {
    /// The BAR's index (0..6); a 64-bit BAR also uses `index + 1`.
    pub index: u8,
    /// What it decodes.
    pub kind: BarKind,
    /// Whether the memory is prefetchable.
    pub prefetchable: bool,
    /// The bus address (or I/O port) assigned to it; 0 when unassigned.
    pub address: u64,
    /// The size in bytes, a power of two.
    pub size: u64,
}

impl Bar {
    /// The configuration offset of the BAR's (low) register.
    pub const fn offset(&self) -> u16 {
        BAR0 + 4 * self.index as u16
    }

    /// Whether it decodes memory (rather than I/O ports).
    pub const fn is_memory(&self) -> bool {
        !matches!(self.kind, BarKind::Io)
    }

    /// Whether `[address, address + size)` of `self` and `other` overlap
    /// in the same space. Unassigned BARs (address 0) overlap nothing.
    pub fn overlaps(&self, other: &Bar) -> bool {
        if self.is_memory() != other.is_memory() || self.address == 0 || other.address == 0 {
            return false;
        }
        // Ends are checked not to overflow when the BAR is decoded.
        let (a0, a1) = (self.address, self.address.saturating_add(self.size));
        let (b0, b1) = (other.address, other.address.saturating_add(other.size));
        a0 < b1 && b0 < a1
    }
}

/// The size encoded by a BAR's read-back after writing all ones: the
/// lowest address bit that sticks. `None` when no bit sticks (the BAR is
/// not implemented).
fn bar_size(mask: u64) -> Option<u64> {
    if mask == 0 {
        None
    } else {
        Some(mask & mask.wrapping_neg())
    }
}

/// Reads and sizes all BARs of `bdf`, as Linux does: memory and I/O
/// decoding are turned off in COMMAND while each BAR is written with all
/// ones and read back, then the BAR and COMMAND are restored (also when
/// a check fails).
///
/// Unimplemented BARs are left out. Fails for a 64-bit BAR in the last
/// slot, a reserved memory type, an address not aligned to the size, a
/// range that wraps, overlapping BARs, or a device that reads all ones.
pub fn read_bars<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    header: &ConfigHeader,
) -> Result<Vec<Bar>, PciError> {
    let count = header.bar_count();
    if count == 0 {
        return Ok(Vec::new());
    }
    let command = cfg.read16(bdf, COMMAND)?;
    if command == 0xffff {
        return Err(PciError::DeviceGone { bdf });
    }
    let decode = COMMAND_IO | COMMAND_MEMORY;
    if command & decode != 0 {
        cfg.write16(bdf, COMMAND, command & !decode)?;
    }
    let result = size_bars(cfg, bdf, count);
    let restored = if command & decode != 0 {
        cfg.write16(bdf, COMMAND, command)
    } else {
        Ok(())
    };
    let bars = result?;
    restored?;
    for (i, a) in bars.iter().enumerate() {
        for b in bars.iter().skip(i + 1) {
            if a.overlaps(b) {
                return Err(PciError::BarOverlap {
                    bdf,
                    first: a.index,
                    second: b.index,
                });
            }
        }
    }
    Ok(bars)
}

/// Writes all ones to the register at `offset`, reads the result, and
/// restores the original value. Returns (original, read-back).
fn probe_reg<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    offset: u16,
) -> Result<(u32, u32), PciError> {
    let orig = cfg.read32(bdf, offset)?;
    cfg.write32(bdf, offset, 0xffff_ffff)?;
    let sized = cfg.read32(bdf, offset);
    let restore = cfg.write32(bdf, offset, orig);
    let sized = sized?;
    restore?;
    Ok((orig, sized))
}

fn size_bars<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, count: u8) -> Result<Vec<Bar>, PciError> {
    let mut bars = Vec::new();
    let mut index = 0u8;
    while index < count {
        let offset = BAR0 + 4 * u16::from(index);
        let (orig, sized) = probe_reg(cfg, bdf, offset)?;
        if orig == 0xffff_ffff {
            return Err(PciError::DeviceGone { bdf });
        }
        let bad = |reason| PciError::BadConfig {
            bdf,
            offset,
            reason,
        };
        let this = index;
        index += 1;
        if orig & 1 == 1 {
            // I/O space: bits 31:2 are the address. Devices that decode 16
            // bits of port address may read the upper half back as zero.
            let mut mask = u64::from(sized & !0x3);
            if sized >> 16 == 0 {
                mask &= 0xffff;
            }
            let Some(size) = bar_size(mask) else { continue };
            let address = u64::from(orig & !0x3);
            if address & (size - 1) != 0 {
                return Err(bad("I/O BAR address is not aligned to its size"));
            }
            if address
                .checked_add(size)
                .is_none_or(|end| end > 0x1_0000_0000)
            {
                return Err(bad("I/O BAR range wraps"));
            }
            bars.push(Bar {
                index: this,
                kind: BarKind::Io,
                prefetchable: false,
                address,
                size,
            });
            continue;
        }
        let prefetchable = orig & 0x8 != 0;
        let (kind, address, mask) = match (orig >> 1) & 0x3 {
            0b00 | 0b01 => (
                BarKind::Memory32,
                u64::from(orig & !0xf),
                u64::from(sized & !0xf),
            ),
            0b10 => {
                if index >= count {
                    return Err(bad("64-bit BAR in the last slot has no upper half"));
                }
                let (orig_hi, sized_hi) = probe_reg(cfg, bdf, offset + 4)?;
                index += 1;
                let address = u64::from(orig_hi) << 32 | u64::from(orig & !0xf);
                let mask = u64::from(sized_hi) << 32 | u64::from(sized & !0xf);
                (BarKind::Memory64, address, mask)
            }
            _ => return Err(bad("memory BAR has the reserved type 11b")),
        };
        let Some(size) = bar_size(mask) else { continue };
        if kind == BarKind::Memory32 && mask >> 32 != 0 {
            return Err(bad("32-bit BAR reads back upper address bits"));
        }
        if address & (size - 1) != 0 {
            return Err(bad("memory BAR address is not aligned to its size"));
        }
        if address.checked_add(size).is_none() {
            return Err(bad("memory BAR range wraps around the address space"));
        }
        bars.push(Bar {
            index: this,
            kind,
            prefetchable,
            address,
            size,
        });
    }
    Ok(bars)
}

/// One entry of the standard capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Capability {
    /// The capability ID (`CAP_ID_*`).
    pub id: u8,
    /// Its configuration offset (0x40..0x100, dword-aligned).
    pub offset: u8,
}

/// Walks the standard capability list of `bdf`, starting at the pointer at
/// 0x34 (only when STATUS says there is a list).
///
/// The two low bits of each pointer are reserved and masked off (as the
/// specification asks of software). Each pointer must then be 0 (the end)
/// or lie in 0x40..0x100; a pointer seen twice is a [`PciError::CapabilityLoop`],
/// and more than [`MAX_CAPABILITIES`] entries is
/// [`PciError::TooManyCapabilities`]. An entry reading all ones means the
/// device is gone.
pub fn capabilities<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
) -> Result<Vec<Capability>, PciError> {
    let status = cfg.read16(bdf, STATUS)?;
    if status == 0xffff {
        return Err(PciError::DeviceGone { bdf });
    }
    let mut caps = Vec::new();
    if status & STATUS_CAP_LIST == 0 {
        return Ok(caps);
    }
    let mut visited: u64 = 0;
    let mut at = CAPABILITY_LIST;
    let mut ptr = cfg.read8(bdf, CAPABILITY_LIST)? & CAP_PTR_MASK;
    while ptr != 0 {
        if ptr < 0x40 {
            return Err(PciError::BadConfig {
                bdf,
                offset: at,
                reason: "capability pointer is below 0x40",
            });
        }
        let slot = (ptr - 0x40) / 4;
        if visited & (1u64 << slot) != 0 {
            return Err(PciError::CapabilityLoop {
                bdf,
                offset: u16::from(ptr),
            });
        }
        visited |= 1u64 << slot;
        if caps.len() >= MAX_CAPABILITIES {
            return Err(PciError::TooManyCapabilities {
                bdf,
                limit: MAX_CAPABILITIES,
            });
        }
        let entry = cfg.read16(bdf, u16::from(ptr))?;
        if entry == 0xffff {
            return Err(PciError::DeviceGone { bdf });
        }
        caps.push(Capability {
            id: (entry & 0xff) as u8,
            offset: ptr,
        });
        at = u16::from(ptr) + 1;
        ptr = (entry >> 8) as u8 & CAP_PTR_MASK;
    }
    Ok(caps)
}

/// The bits of a capability pointer that address a dword (the two low bits
/// are reserved).
const CAP_PTR_MASK: u8 = 0xfc;

/// One entry of the PCI Express extended capability list (0x100 and up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtCapability {
    /// The extended capability ID (1: AER, 3: serial number, ...).
    pub id: u16,
    /// Its version.
    pub version: u8,
    /// Its configuration offset (0x100..0x1000, dword-aligned).
    pub offset: u16,
}

/// Most extended capabilities there can be: one per dword from 0x100 to
/// 0x1000.
pub const MAX_EXT_CAPABILITIES: usize = (CONFIG_SPACE_SIZE as usize - 0x100) / 4;

/// Walks the PCI Express extended capability list from 0x100 (call it for
/// PCI Express functions only: those with a [`CAP_ID_EXP`] capability).
///
/// A header of zero at 0x100 means no extended capabilities; so does all
/// ones (a conventional function, or extended space the platform or the
/// backend does not reach) unless the vendor ID reads all ones too: then
/// the device is gone ([`PciError::DeviceGone`]). Further on, an all-ones
/// header of a present device is [`PciError::BadConfig`]. The two low bits
/// of each next pointer are reserved and masked off; the pointer must then
/// be 0 (the end) or lie in 0x100..0x1000 and not be seen twice
/// ([`PciError::CapabilityLoop`]).
pub fn extended_capabilities<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
) -> Result<Vec<ExtCapability>, PciError> {
    let mut caps = Vec::new();
    let mut visited = [0u64; MAX_EXT_CAPABILITIES.div_ceil(64)];
    let mut at: u16 = 0x100;
    loop {
        let header = cfg.read32(bdf, at)?;
        if header == 0xffff_ffff {
            if cfg.read16(bdf, VENDOR_ID)? == 0xffff {
                return Err(PciError::DeviceGone { bdf });
            }
            if at == 0x100 {
                return Ok(caps);
            }
            return Err(PciError::BadConfig {
                bdf,
                offset: at,
                reason: "an extended capability header reads all ones",
            });
        }
        if header == 0 && at == 0x100 {
            return Ok(caps);
        }
        let slot = usize::from((at - 0x100) / 4);
        let (word, bit) = (slot / 64, slot % 64);
        // `at` is checked to lie in 0x100..0x1000 below, so `word` is in
        // range; `get_mut` keeps that from being a panic if it were not.
        let Some(w) = visited.get_mut(word) else {
            return Err(PciError::BadConfig {
                bdf,
                offset: at,
                reason: "extended capability outside 0x100..0x1000",
            });
        };
        if *w & (1u64 << bit) != 0 {
            return Err(PciError::CapabilityLoop { bdf, offset: at });
        }
        *w |= 1u64 << bit;
        if caps.len() >= MAX_EXT_CAPABILITIES {
            return Err(PciError::TooManyCapabilities {
                bdf,
                limit: MAX_EXT_CAPABILITIES,
            });
        }
        caps.push(ExtCapability {
            id: (header & 0xffff) as u16,
            version: ((header >> 16) & 0xf) as u8,
            offset: at,
        });
        let next = (header >> 20) as u16 & 0xffc;
        if next == 0 {
            return Ok(caps);
        }
        if !(0x100..CONFIG_SPACE_SIZE).contains(&next) {
            return Err(PciError::BadConfig {
                bdf,
                offset: at + 2,
                reason: "extended capability pointer is outside 0x100..0x1000",
            });
        }
        at = next;
    }
}

/// An MSI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsiCap {
    /// The capability's configuration offset.
    pub offset: u8,
    /// Message control at the time of parsing.
    pub control: u16,
    /// How many vectors the device can request (1, 2, 4, ..., 32).
    pub max_vectors: u8,
    /// Whether the message address is 64 bits.
    pub is_64bit: bool,
    /// Whether the device can mask vectors individually.
    pub per_vector_masking: bool,
}

impl MsiCap {
    /// Parses the MSI capability at `cap`.
    pub fn read<C: ConfigAccess + ?Sized>(
        cfg: &C,
        bdf: Bdf,
        cap: Capability,
    ) -> Result<MsiCap, PciError> {
        let control = cfg.read16(bdf, u16::from(cap.offset) + 2)?;
        if control == 0xffff {
            return Err(PciError::DeviceGone { bdf });
        }
        let mmc = (control >> 1) & 0x7;
        if mmc > 5 {
            return Err(PciError::BadConfig {
                bdf,
                offset: u16::from(cap.offset) + 2,
                reason: "MSI multiple message capable is above 32 vectors",
            });
        }
        Ok(MsiCap {
            offset: cap.offset,
            control,
            max_vectors: 1 << mmc,
            is_64bit: control & (1 << 7) != 0,
            per_vector_masking: control & (1 << 8) != 0,
        })
    }

    /// Whether MSI was enabled when parsed.
    pub const fn enabled(&self) -> bool {
        self.control & 1 != 0
    }
}

/// An MSI-X capability: where its table and pending-bit array live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsixCap {
    /// The capability's configuration offset.
    pub offset: u8,
    /// Message control at the time of parsing.
    pub control: u16,
    /// Number of table entries (1..=2048).
    pub table_size: u16,
    /// The BAR (index) holding the table.
    pub table_bir: u8,
    /// The table's byte offset in that BAR (8-aligned).
    pub table_offset: u32,
    /// The BAR (index) holding the pending-bit array.
    pub pba_bir: u8,
    /// The PBA's byte offset in that BAR (8-aligned).
    pub pba_offset: u32,
}

/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

impl MsixCap {
    /// Parses the MSI-X capability at `cap`. BIRs above 5 are rejected;
    /// [`MsixCap::check_bars`] checks the placement against the BARs.
    pub fn read<C: ConfigAccess + ?Sized>(
        cfg: &C,
        bdf: Bdf,
        cap: Capability,
    ) -> Result<MsixCap, PciError> {
        let base = u16::from(cap.offset);
        let control = cfg.read16(bdf, base + 2)?;
        let table = cfg.read32(bdf, base + 4)?;
        let pba = cfg.read32(bdf, base + 8)?;
        if control == 0xffff && table == 0xffff_ffff && pba == 0xffff_ffff {
            return Err(PciError::DeviceGone { bdf });
        }
        let (table_bir, pba_bir) = ((table & 7) as u8, (pba & 7) as u8);
        if table_bir > 5 {
            return Err(PciError::BadConfig {
                bdf,
                offset: base + 4,
                reason: "MSI-X table BIR is above 5",
            });
        }
        if pba_bir > 5 {
            return Err(PciError::BadConfig {
                bdf,
                offset: base + 8,
                reason: "MSI-X PBA BIR is above 5",
            });
        }
        Ok(MsixCap {
            offset: cap.offset,
            control,
            table_size: (control & 0x7ff) + 1,
            table_bir,
            table_offset: table & !7,
            pba_bir,
            pba_offset: pba & !7,
        })
    }

    /// Whether MSI-X was enabled when parsed.
    pub const fn enabled(&self) -> bool {
        self.control & (1 << 15) != 0
    }

    /// Bytes the table spans.
    pub const fn table_len(&self) -> u64 {
        self.table_size as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes the pending-bit array spans (one bit per entry, in qwords).
    pub const fn pba_len(&self) -> u64 {
        (self.table_size as u64).div_ceil(64) * 8
    }

    /// Checks that the table and the PBA each lie inside an implemented
    /// memory BAR of `bars`.
    pub fn check_bars(&self, bdf: Bdf, bars: &[Bar]) -> Result<(), PciError> {
        let base = u16::from(self.offset);
        let inside = |bir: u8, offset: u32, len: u64, reg: u16, what: &'static str| {
            let bar = bars.iter().find(|b| b.index == bir && b.is_memory());
            let fits = bar.is_some_and(|b| {
                u64::from(offset)
                    .checked_add(len)
                    .is_some_and(|end| end <= b.size)
            });
            if fits {
                Ok(())
            } else {
                Err(PciError::BadConfig {
                    bdf,
                    offset: reg,
                    reason: what,
                })
            }
        };
        inside(
            self.table_bir,
            self.table_offset,
            self.table_len(),
            base + 4,
            "MSI-X table does not lie inside an implemented memory BAR",
        )?;
        inside(
            self.pba_bir,
            self.pba_offset,
            self.pba_len(),
            base + 8,
            "MSI-X PBA does not lie inside an implemented memory BAR",
        )
    }
}

/// Everything parsed from a device's configuration space at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device.
    pub bdf: Bdf,
    /// The header.
    pub header: ConfigHeader,
    /// The implemented BARs, sized.
    pub bars: Vec<Bar>,
    /// The standard capability list.
    pub capabilities: Vec<Capability>,
    /// The MSI capability, if any.
    pub msi: Option<MsiCap>,
    /// The MSI-X capability, if any (placement checked against `bars`).
    pub msix: Option<MsixCap>,
}

impl DeviceInfo {
    /// Reads the header, sizes the BARs, walks the capabilities and parses
    /// MSI and MSI-X. Sizing the BARs briefly turns off decoding, so call
    /// this before the device is in use.
    pub fn probe<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf) -> Result<DeviceInfo, PciError> {
        let header = ConfigHeader::read(cfg, bdf)?;
        let bars = read_bars(cfg, bdf, &header)?;
        let caps = capabilities(cfg, bdf)?;
        let mut msi = None;
        let mut msix = None;
        for cap in &caps {
            match cap.id {
                CAP_ID_MSI if msi.is_none() => msi = Some(MsiCap::read(cfg, bdf, *cap)?),
                CAP_ID_MSIX if msix.is_none() => {
                    let m = MsixCap::read(cfg, bdf, *cap)?;
                    m.check_bars(bdf, &bars)?;
                    msix = Some(m);
                }
                _ => {}
            }
        }
        Ok(DeviceInfo {
            bdf,
            header,
            bars,
            capabilities: caps,
            msi,
            msix,
        })
    }

    /// The BAR with this index, if implemented.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The capability with this ID, if present (the first one).
    pub fn capability(&self, id: u8) -> Option<Capability> {
        self.capabilities.iter().copied().find(|c| c.id == id)
    }
}

#[cfg(test)]
mod tests;
