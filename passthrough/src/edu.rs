//! A driver for QEMU's educational PCI device (`edu`, QEMU 7.2): the
//! smallest proof that configuration access, BARs, MSI and DMA work.
//!
//! The device (QEMU's `docs/specs/edu.rst`): vendor 0x1234, device 0x11e8,
//! BAR0 of 1 MiB of registers, one MSI vector, a 28-bit DMA mask and a
//! 4096-byte buffer at device address 0x40000. [`Edu::open`] finds BAR0,
//! turns on memory decoding and bus mastering, checks the identification
//! register (0x010000ed) and the liveness register (reads back the inverse
//! of what was written) and, in [`IrqMode::Interrupt`], enables MSI: the
//! interrupt is an event channel the driver blocks on with a timeout. In
//! [`IrqMode::Polling`] it spins on the status registers instead.
//!
//! - [`Edu::factorial`]: the device computes `n!` (32 bits, wrapping); the
//!   result is checked against the driver's own computation.
//! - [`Edu::dma_to_device`] and [`Edu::dma_from_device`]: transfers between
//!   a [`DmaBuffer`] (allocated with [`Edu::alloc_dma`], below the 28-bit
//!   mask) and the device's buffer, each of at most [`MAX_TRANSFER`] bytes
//!   and ending before the buffer's last byte: QEMU 7.2 stops the machine
//!   on a transfer that reaches it (a full 4096 bytes, for one).
//! - [`Edu::dma_to_bus_address`]: a transfer to any bus address, for
//!   checking that the IOMMU keeps the device out of memory the domain
//!   does not own.
//!
//! # A device that lies
//! Everything read from the device is checked: a wrong identification or
//! liveness answer, configuration space that reads all-ones or whose
//! capability list loops, a factorial that is wrong or never finishes, a
//! transfer that never completes: each is a typed [`EduError`] and the
//! driver stops using the device ([`EduError::Broken`] from then on). A
//! transfer that completes with Received Master Abort set in the status
//! register (a DMA the IOMMU refused, as the hosted bus reports it) is
//! [`EduError::DmaAborted`], and the device stays usable. Under Xen with
//! QEMU 7.2 that bit is not set: the refused transfer moves nothing and
//! shows only in Xen's log (`xl dmesg`).

use core::fmt;

use grant_tables::Port;

use crate::config::{
    enable_memory_and_bus_master, update_command, BarKind, ConfigAccess, DeviceInfo,
    COMMAND_MASTER, STATUS,
};
use crate::dma::DmaBuffer;
use crate::mmio::Mmio;
use crate::{Bdf, PciError, PciPlatform};

/// The edu's vendor id.
pub const VENDOR_ID: u16 = 0x1234;
/// The edu's device id.
pub const DEVICE_ID: u16 = 0x11e8;
/// What the identification register of edu 1.0 reads.
pub const IDENTIFICATION: u32 = 0x0100_00ed;
/// The device's DMA address mask (28 bits).
pub const DMA_MASK: u64 = (1 << 28) - 1;
/// The most bytes one transfer moves (QEMU 7.2 fails a transfer that
/// reaches the end of its 4096-byte buffer).
pub const MAX_TRANSFER: usize = 2048;
/// Device address of the device's buffer.
pub const DEVICE_BUFFER: u64 = 0x40000;
/// Bytes of the device's buffer.
pub const DEVICE_BUFFER_LEN: usize = 4096;
/// How long [`Edu::factorial`] and the transfers wait by default: QEMU runs
/// a transfer 100 ms (of virtual time) after its command, and a guest
/// under TCG is slow.
pub const DEFAULT_TIMEOUT_NS: u64 = 5_000_000_000;

const REG_ID: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
const REG_FACTORIAL: usize = 0x08;
const REG_STATUS: usize = 0x20;
const REG_IRQ_STATUS: usize = 0x24;
const REG_IRQ_ACK: usize = 0x64;
const REG_DMA_SRC: usize = 0x80;
const REG_DMA_DST: usize = 0x88;
const REG_DMA_CNT: usize = 0x90;
const REG_DMA_CMD: usize = 0x98;
/// Registers the driver uses lie below this.
const REGS_LEN: u64 = 0x100;

const STATUS_COMPUTING: u32 = 0x01;
const STATUS_IRQFACT: u32 = 0x80;
const IRQ_FACTORIAL: u32 = 0x001;
const IRQ_DMA: u32 = 0x100;
const CMD_RUN: u64 = 0x1;
const CMD_TO_RAM: u64 = 0x2;
const CMD_IRQ: u64 = 0x4;

/// Configuration status: Received Target Abort.
const STATUS_RECEIVED_TARGET_ABORT: u16 = 1 << 12;
/// Configuration status: Received Master Abort.
const STATUS_RECEIVED_MASTER_ABORT: u16 = 1 << 13;

/// How the driver learns that the device finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqMode {
    /// MSI, delivered on an event channel the driver blocks on.
    Interrupt,
    /// Spinning on the status registers (MSI stays off).
    Polling,
}

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From RAM into the device's buffer.
    ToDevice,
    /// From the device's buffer into RAM.
    FromDevice,
}

/// Why an edu operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EduError {
    /// A PCI operation failed (configuration space, BAR, MSI, DMA memory).
    Pci(PciError),
    /// No edu among the platform's PCI devices.
    NotFound,
    /// The function at this address is not an edu.
    NotEdu {
        /// Its address.
        bdf: Bdf,
        /// Its vendor id.
        vendor: u16,
        /// Its device id.
        device: u16,
    },
    /// BAR0 is missing, not memory, or too small for the registers.
    BadBar0,
    /// The identification register is not 0x010000ed.
    WrongIdentification {
        /// What it read.
        found: u32,
    },
    /// The liveness register did not read back the inverse.
    LivenessFailed {
        /// What was written.
        wrote: u32,
        /// What it read back.
        read: u32,
    },
    /// The device computed a wrong factorial.
    WrongFactorial {
        /// The argument.
        n: u32,
        /// `n!` modulo 2^32.
        expected: u32,
        /// What the device said.
        found: u32,
    },
    /// A factorial did not finish in time.
    FactorialTimeout {
        /// How long the driver waited.
        waited_ns: u64,
        /// The status register at the end.
        status: u32,
    },
    /// A transfer did not complete in time.
    DmaTimeout {
        /// How long the driver waited.
        waited_ns: u64,
        /// The DMA command register at the end.
        command: u64,
    },
    /// A transfer's length or device offset is outside what the device
    /// accepts (1..=2048 bytes, ending before the buffer's last byte).
    BadTransfer {
        /// Offset in the device's buffer.
        device_offset: usize,
        /// Bytes asked for.
        len: usize,
    },
    /// A transfer's RAM side is above the device's 28-bit DMA mask (the
    /// device would cut the address and reach other memory).
    AboveDmaMask {
        /// The last bus address of the transfer.
        last: u64,
    },
    /// A transfer completed, but the device received an abort (the IOMMU
    /// refused its access): nothing moved. The device stays usable.
    DmaAborted {
        /// The configuration status register (its abort bits are cleared).
        status: u16,
    },
    /// The device answers all-ones: it is gone or hung.
    DeviceGone,
    /// The driver stopped using the device after an earlier error.
    Broken {
        /// That error.
        reason: &'static str,
    },
}

impl From<PciError> for EduError {
    fn from(e: PciError) -> Self {
        EduError::Pci(e)
    }
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EduError::Pci(e) => write!(f, "edu: {e}"),
            EduError::NotFound => write!(
                f,
                "edu: no device {VENDOR_ID:04x}:{DEVICE_ID:04x} among the domain's PCI devices; pass one through (xl pci-assignable-add, pci=[...])"
            ),
            EduError::NotEdu { bdf, vendor, device } => write!(
                f,
                "edu: {bdf} is {vendor:04x}:{device:04x}, not an edu ({VENDOR_ID:04x}:{DEVICE_ID:04x}); pick the right device"
            ),
            EduError::BadBar0 => write!(f, "edu: BAR0 is missing, not memory or smaller than the registers; the device is not an edu or is broken"),
            EduError::WrongIdentification { found } => write!(
                f,
                "edu: identification reads {found:#010x}, not {IDENTIFICATION:#010x}; the device is not an edu 1.0 or is broken, so it is not used"
            ),
            EduError::LivenessFailed { wrote, read } => write!(
                f,
                "edu: liveness check failed: wrote {wrote:#010x}, read {read:#010x} instead of its inverse; the device is not used"
            ),
            EduError::WrongFactorial { n, expected, found } => write!(
                f,
                "edu: the device says {n}! is {found:#x}, but it is {expected:#x} (mod 2^32); the device is not used"
            ),
            EduError::FactorialTimeout { waited_ns, status } => write!(
                f,
                "edu: the factorial did not finish within {} ms (status {status:#x}); the device is hung, so it is not used",
                waited_ns / 1_000_000
            ),
            EduError::DmaTimeout { waited_ns, command } => write!(
                f,
                "edu: a DMA did not complete within {} ms (command {command:#x}); the device is hung, so it is not used",
                waited_ns / 1_000_000
            ),
            EduError::BadTransfer { device_offset, len } => write!(
                f,
                "edu: a transfer of {len} byte(s) at buffer offset {device_offset} is refused: transfers are 1 to {MAX_TRANSFER} bytes and end before byte {} of the device's buffer (QEMU 7.2 stops on more)",
                DEVICE_BUFFER_LEN - 1
            ),
            EduError::AboveDmaMask { last } => write!(
                f,
                "edu: bus address {last:#x} is above the device's 28-bit DMA mask; allocate DMA buffers with Edu::alloc_dma"
            ),
            EduError::DmaAborted { status } => write!(
                f,
                "edu: the transfer was aborted (status {status:#06x}: the IOMMU refused the device's access); nothing moved, the device is still usable"
            ),
            EduError::DeviceGone => write!(f, "edu: the device answers all-ones: it is gone or hung; reset or re-attach it"),
            EduError::Broken { reason } => write!(f, "edu: the device was disabled after an earlier error ({reason})"),
        }
    }
}

impl core::error::Error for EduError {}

/// `n!` modulo 2^32, as the device computes it (QEMU's edu multiplies
/// `n * (n - 1) * ... * 1` in a `uint32_t`). From 34 on, `n!` holds the
/// factor 2 at least 32 times, so the result is 0 without looping up to
/// 4 billion times.
pub fn factorial_u32(n: u32) -> u32 {
    if n >= 34 {
        return 0;
    }
    (1..=n).fold(1u32, |acc, k| acc.wrapping_mul(k))
}

/// The device address of a transfer of `len` bytes at `device_offset` of
/// the device's buffer, if the device takes it: 1 to [`MAX_TRANSFER`]
/// bytes, ending before the buffer's last byte (QEMU 7.2's check).
pub fn check_transfer(device_offset: usize, len: usize) -> Result<u64, EduError> {
    let bad = EduError::BadTransfer { device_offset, len };
    let end = device_offset.checked_add(len).ok_or(bad.clone())?;
    if len == 0 || len > MAX_TRANSFER || end >= DEVICE_BUFFER_LEN {
        return Err(bad);
    }
    Ok(DEVICE_BUFFER + device_offset as u64)
}

/// Finds the first edu among the platform's devices.
pub fn find<P: PciPlatform>(platform: &P) -> Result<Bdf, EduError> {
    let cfg = platform.config();
    for bdf in platform.devices()? {
        let id = cfg.read32(bdf, 0)?;
        if id == (u32::from(DEVICE_ID) << 16) | u32::from(VENDOR_ID) {
            return Ok(bdf);
        }
    }
    Err(EduError::NotFound)
}

/// An open edu.
pub struct Edu<'p, P: PciPlatform> {
    platform: &'p P,
    bdf: Bdf,
    regs: P::Mmio,
    mode: IrqMode,
    port: Option<Port>,
    timeout_ns: u64,
    broken: Option<&'static str>,
}

impl<'p, P: PciPlatform> fmt::Debug for Edu<'p, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Edu")
            .field("bdf", &self.bdf)
            .field("mode", &self.mode)
            .field("port", &self.port)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<'p, P: PciPlatform> Edu<'p, P> {
    /// Opens the edu at `bdf`: checks its configuration space, maps BAR0,
    /// enables memory decoding and bus mastering, checks identification
    /// and liveness, and in [`IrqMode::Interrupt`] enables MSI.
    pub fn open(platform: &'p P, bdf: Bdf, mode: IrqMode) -> Result<Self, EduError> {
        let cfg = platform.config();
        let info = DeviceInfo::probe(cfg, bdf)?;
        if info.header.vendor_id != VENDOR_ID || info.header.device_id != DEVICE_ID {
            return Err(EduError::NotEdu {
                bdf,
                vendor: info.header.vendor_id,
                device: info.header.device_id,
            });
        }
        let bar = *info.bar(0).ok_or(EduError::BadBar0)?;
        if !matches!(bar.kind, BarKind::Memory32 | BarKind::Memory64) || bar.size < REGS_LEN {
            return Err(EduError::BadBar0);
        }
        if mode == IrqMode::Interrupt && info.msi.is_none() {
            return Err(EduError::Pci(PciError::Unsupported {
                bdf,
                what: "the edu has no MSI capability",
            }));
        }
        let regs = platform.map_bar(bdf, &bar)?;
        enable_memory_and_bus_master(cfg, bdf)?;
        let mut edu = Edu {
            platform,
            bdf,
            regs,
            mode,
            port: None,
            timeout_ns: DEFAULT_TIMEOUT_NS,
            broken: None,
        };
        edu.check_identification()?;
        edu.check_liveness()?;
        // Start from a known state: no factorial interrupt asked for, no
        // interrupt pending in the device.
        edu.regs.write32(REG_STATUS, 0)?;
        edu.regs.write32(REG_IRQ_ACK, u32::MAX)?;
        if mode == IrqMode::Interrupt {
            edu.port = Some(platform.enable_msi(bdf)?);
        }
        log::info!("edu at {bdf}: identification and liveness checked, {mode:?} mode");
        Ok(edu)
    }

    /// The device address of a transfer of `len` bytes at `device_offset` of
    /// the device's buffer, if the device takes it: 1 to [`MAX_TRANSFER`]
    /// bytes, ending before the buffer's last byte (QEMU 7.2's check).
    pub fn check_transfer(device_offset: usize, len: usize) -> Result<u64, EduError> {
        let bad = EduError::BadTransfer { device_offset, len };
        let end = device_offset.checked_add(len).ok_or(bad.clone())?;
        if len == 0 || len > MAX_TRANSFER || end >= DEVICE_BUFFER_LEN {
            return Err(bad);
        }
        Ok(DEVICE_BUFFER + device_offset as u64)
    }

    /// Finds the first edu and opens it.
    pub fn find_and_open(platform: &'p P, mode: IrqMode) -> Result<Self, EduError> {
        let bdf = find(platform)?;
        Self::open(platform, bdf, mode)
    }

    /// The device's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The MSI's event channel (in [`IrqMode::Interrupt`]).
    pub fn port(&self) -> Option<Port> {
        self.port
    }

    /// Sets how long factorials and transfers may take.
    pub fn set_timeout_ns(&mut self, ns: u64) {
        self.timeout_ns = ns;
    }

    /// Allocates a DMA buffer the device can reach (below its 28-bit
    /// mask), page-aligned.
    pub fn alloc_dma(&self, len: usize) -> Result<P::Dma, EduError> {
        Ok(self.platform.alloc_dma(len, 4096, DMA_MASK)?)
    }

    fn usable(&self) -> Result<(), EduError> {
        match self.broken {
            Some(reason) => Err(EduError::Broken { reason }),
            None => Ok(()),
        }
    }

    /// Records a fatal error: the device is not used any more.
    fn fail<T>(&mut self, e: EduError) -> Result<T, EduError> {
        let reason = match &e {
            EduError::WrongIdentification { .. } => "wrong identification",
            EduError::LivenessFailed { .. } => "liveness check failed",
            EduError::WrongFactorial { .. } => "wrong factorial",
            EduError::FactorialTimeout { .. } => "factorial never finished",
            EduError::DmaTimeout { .. } => "DMA never completed",
            EduError::DeviceGone => "device answers all-ones",
            _ => "device error",
        };
        log::error!("{} {e}", self.bdf);
        self.broken = Some(reason);
        if let Some(port) = self.port.take() {
            if let Err(e) = self.platform.disable_msi(self.bdf) {
                log::warn!(
                    "edu at {}: disabling MSI of a broken device ({port}): {e}",
                    self.bdf
                );
            }
        }
        Err(e)
    }

    /// Reads a 32-bit register; all-ones means the device is gone.
    fn read_reg(&mut self, offset: usize) -> Result<u32, EduError> {
        let v = self.regs.read32(offset)?;
        if v == u32::MAX {
            return self.fail(EduError::DeviceGone);
        }
        Ok(v)
    }

    /// Reads the identification register and checks it.
    pub fn check_identification(&mut self) -> Result<u32, EduError> {
        self.usable()?;
        let id = self.regs.read32(REG_ID)?;
        if id != IDENTIFICATION {
            return self.fail(if id == u32::MAX {
                EduError::DeviceGone
            } else {
                EduError::WrongIdentification { found: id }
            });
        }
        Ok(id)
    }

    /// Writes a few patterns to the liveness register and checks that each
    /// reads back inverted.
    pub fn check_liveness(&mut self) -> Result<(), EduError> {
        self.usable()?;
        for wrote in [0x1234_5678, 0xffff_ffff, 0, 0xa5a5_5a5a] {
            self.regs.write32(REG_LIVENESS, wrote)?;
            let read = self.regs.read32(REG_LIVENESS)?;
            if read != !wrote {
                return self.fail(EduError::LivenessFailed { wrote, read });
            }
        }
        Ok(())
    }

    /// Waits for interrupt status `bit` on the MSI's port, or (polling)
    /// until `done` says so; acknowledges the bit. `Ok(false)` on timeout.
    fn wait(
        &mut self,
        bit: u32,
        mut done: impl FnMut(&mut Self) -> Result<bool, EduError>,
    ) -> Result<bool, EduError> {
        let start = self.platform.now_ns();
        let deadline = start.saturating_add(self.timeout_ns);
        loop {
            let now = self.platform.now_ns();
            match self.port {
                Some(port) => {
                    let irq = self.read_reg(REG_IRQ_STATUS)?;
                    if irq & bit != 0 {
                        self.regs.write32(REG_IRQ_ACK, bit)?;
                        return Ok(true);
                    }
                    if now >= deadline {
                        return Ok(false);
                    }
                    // An MSI per raise; spurious wakeups loop.
                    self.platform
                        .block(port, Some(deadline - now))
                        .map_err(PciError::from)?;
                }
                None => {
                    if done(self)? {
                        // Polling: nothing was raised (no interrupt asked
                        // for), but acknowledge in case.
                        self.regs.write32(REG_IRQ_ACK, bit)?;
                        return Ok(true);
                    }
                    if now >= deadline {
                        return Ok(false);
                    }
                    core::hint::spin_loop();
                }
            }
        }
    }

    /// Has the device compute `n!` (modulo 2^32) and checks the result.
    pub fn factorial(&mut self, n: u32) -> Result<u32, EduError> {
        self.usable()?;
        let status = self.read_reg(REG_STATUS)?;
        if status & STATUS_COMPUTING != 0 {
            return self.fail(EduError::FactorialTimeout {
                waited_ns: 0,
                status,
            });
        }
        let want_irq = self.port.is_some();
        self.regs
            .write32(REG_STATUS, if want_irq { STATUS_IRQFACT } else { 0 })?;
        self.regs.write32(REG_FACTORIAL, n)?;
        let start = self.platform.now_ns();
        let finished = self.wait(IRQ_FACTORIAL, |edu| {
            Ok(edu.read_reg(REG_STATUS)? & STATUS_COMPUTING == 0)
        })?;
        let status = self.read_reg(REG_STATUS)?;
        if !finished || status & STATUS_COMPUTING != 0 {
            let waited_ns = self.platform.now_ns().saturating_sub(start);
            return self.fail(EduError::FactorialTimeout { waited_ns, status });
        }
        let found = self.regs.read32(REG_FACTORIAL)?;
        let expected = factorial_u32(n);
        if found != expected {
            return self.fail(EduError::WrongFactorial { n, expected, found });
        }
        Ok(found)
    }

    /// Copies `len` bytes at `offset` of `buf` into the device's buffer at
    /// `device_offset`.
    pub fn dma_to_device<D: DmaBuffer>(
        &mut self,
        buf: &D,
        offset: usize,
        device_offset: usize,
        len: usize,
    ) -> Result<(), EduError> {
        let bus = Self::ram_side(buf, offset, len)?;
        self.transfer(Direction::ToDevice, bus, device_offset, len)
    }

    /// Copies `len` bytes of the device's buffer at `device_offset` into
    /// `buf` at `offset`.
    pub fn dma_from_device<D: DmaBuffer>(
        &mut self,
        buf: &D,
        offset: usize,
        device_offset: usize,
        len: usize,
    ) -> Result<(), EduError> {
        let bus = Self::ram_side(buf, offset, len)?;
        self.transfer(Direction::FromDevice, bus, device_offset, len)
    }

    /// A transfer whose RAM side is the bus address `bus`, which need not
    /// belong to a buffer of this domain: for checking that the IOMMU
    /// isolates the device (a refused transfer moves nothing; see the
    /// module docs for how it is reported).
    pub fn dma_to_bus_address(
        &mut self,
        direction: Direction,
        bus: u64,
        device_offset: usize,
        len: usize,
    ) -> Result<(), EduError> {
        self.transfer(direction, bus, device_offset, len)
    }

    fn ram_side<D: DmaBuffer>(buf: &D, offset: usize, len: usize) -> Result<u64, EduError> {
        if offset.checked_add(len).is_none_or(|end| end > buf.len()) {
            return Err(EduError::Pci(PciError::OutOfBounds {
                region: "DMA",
                offset,
                len,
                size: buf.len(),
            }));
        }
        Ok(buf.bus_addr_at(offset)?)
    }

    fn transfer(
        &mut self,
        direction: Direction,
        bus: u64,
        device_offset: usize,
        len: usize,
    ) -> Result<(), EduError> {
        self.usable()?;
        let device = check_transfer(device_offset, len)?;
        let last = bus
            .checked_add(len as u64 - 1)
            .ok_or(EduError::AboveDmaMask { last: u64::MAX })?;
        if last > DMA_MASK {
            return Err(EduError::AboveDmaMask { last });
        }
        let command = self.regs.read64(REG_DMA_CMD)?;
        if command == u64::MAX {
            return self.fail(EduError::DeviceGone);
        }
        if command & CMD_RUN != 0 {
            return self.fail(EduError::DmaTimeout {
                waited_ns: 0,
                command,
            });
        }
        let (src, dst, dir) = match direction {
            Direction::ToDevice => (bus, device, 0),
            Direction::FromDevice => (device, bus, CMD_TO_RAM),
        };
        self.regs.write64(REG_DMA_SRC, src)?;
        self.regs.write64(REG_DMA_DST, dst)?;
        self.regs.write64(REG_DMA_CNT, len as u64)?;
        let irq = if self.port.is_some() { CMD_IRQ } else { 0 };
        let start = self.platform.now_ns();
        self.regs.write64(REG_DMA_CMD, CMD_RUN | dir | irq)?;
        let finished = self.wait(IRQ_DMA, |edu| {
            let c = edu.regs.read64(REG_DMA_CMD)?;
            Ok(c != u64::MAX && c & CMD_RUN == 0)
        })?;
        let command = self.regs.read64(REG_DMA_CMD)?;
        if !finished || command & CMD_RUN != 0 {
            let waited_ns = self.platform.now_ns().saturating_sub(start);
            if command == u64::MAX {
                return self.fail(EduError::DeviceGone);
            }
            return self.fail(EduError::DmaTimeout { waited_ns, command });
        }
        self.check_aborts()
    }

    /// Reports (and clears) an abort the device received during the
    /// transfer.
    fn check_aborts(&mut self) -> Result<(), EduError> {
        let cfg = self.platform.config();
        let status = cfg.read16(self.bdf, STATUS)?;
        if status == 0xffff {
            return self.fail(EduError::DeviceGone);
        }
        let aborts = status & (STATUS_RECEIVED_MASTER_ABORT | STATUS_RECEIVED_TARGET_ABORT);
        if aborts != 0 {
            // Write-1-to-clear.
            cfg.write16(self.bdf, STATUS, aborts)?;
            log::warn!(
                "edu at {}: a transfer was aborted (status {status:#06x})",
                self.bdf
            );
            return Err(EduError::DmaAborted { status });
        }
        Ok(())
    }
}

/// Disables MSI and bus mastering: the device cannot reach memory (or
/// interrupt) once its driver is gone.
impl<P: PciPlatform> Drop for Edu<'_, P> {
    fn drop(&mut self) {
        if self.port.take().is_some() {
            if let Err(e) = self.platform.disable_msi(self.bdf) {
                log::warn!("edu at {}: disabling MSI: {e}", self.bdf);
            }
        }
        if let Err(e) = update_command(self.platform.config(), self.bdf, 0, COMMAND_MASTER) {
            log::warn!("edu at {}: disabling bus mastering: {e}", self.bdf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factorial_wraps_like_the_device() {
        assert_eq!(factorial_u32(0), 1);
        assert_eq!(factorial_u32(10), 3_628_800);
        assert_eq!(factorial_u32(12), 479_001_600);
        assert_eq!(factorial_u32(13), 6_227_020_800u64 as u32);
        // 33! holds 2^31 and no more: not 0 modulo 2^32; 34! holds 2^32.
        let slow = |n: u32| (1..=n).fold(1u32, |a, k| a.wrapping_mul(k));
        for n in 0..=40 {
            assert_eq!(factorial_u32(n), slow(n), "{n}");
        }
        assert_ne!(factorial_u32(33), 0);
        assert_eq!(factorial_u32(34), 0);
        // Returns at once, where the loop would take billions of steps.
        assert_eq!(factorial_u32(u32::MAX), 0);
    }

    #[test]
    fn transfers_stay_inside_what_qemu_7_2_takes() {
        assert_eq!(check_transfer(0, 2048), Ok(0x40000));
        assert_eq!(check_transfer(2047, 2048), Ok(0x407ff));
        assert!(check_transfer(2048, 2048).is_err(), "reaches the last byte");
        assert!(check_transfer(0, 2049).is_err());
        assert!(check_transfer(0, 0).is_err());
        assert!(check_transfer(usize::MAX, 1).is_err());
    }
}
