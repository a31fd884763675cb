//! QEMU's educational PCI device (`edu`), as QEMU 7.2 implements it
//! (`hw/misc/edu.c`, `docs/specs/edu.rst`).
//!
//! Vendor 0x1234, device 0x11e8, revision 0x10, class "other" (0xff);
//! BAR0 is 1 MiB of 32-bit MMIO; one MSI vector (64-bit address, no
//! per-vector masking) and INTA#. Registers in BAR0:
//!
//! | offset | access | what |
//! |---|---|---|
//! | 0x00 | RO | identification, 0x010000ed (version 1.0) |
//! | 0x04 | RW | liveness: reads back the bitwise inverse of what was written |
//! | 0x08 | RW | factorial: write n, read n! (32 bits, wrapping) once status bit 0x01 clears; ignored while computing |
//! | 0x20 | RW | status: 0x01 computing (RO), 0x80 raise interrupt 0x01 when the factorial is done |
//! | 0x24 | RO | interrupt status: 0x01 factorial, 0x100 DMA |
//! | 0x60 | WO | raise interrupt: ORs the value into the interrupt status |
//! | 0x64 | WO | acknowledge interrupt: clears the value's bits |
//! | 0x80, 0x88, 0x90 | RW | DMA source, destination, count |
//! | 0x98 | RW | DMA command: 0x01 start, 0x02 direction (0 RAM to device, 1 device to RAM), 0x04 raise interrupt 0x100 when done |
//!
//! Registers below 0x80 take 4-byte accesses only, those from 0x80 4 or
//! 8 bytes; other sizes read all-ones and writes are dropped. The DMA
//! registers ignore writes while a transfer runs. The device's buffer is
//! 4096 bytes at device address 0x40000; the RAM side of a transfer is a
//! bus address cut to the device's 28-bit DMA mask (QEMU "clamps" it, and
//! logs that it did), then translated by the IOMMU.
//!
//! While MSI is enabled, every raise with a non-zero interrupt status
//! sends the MSI; otherwise INTA# follows the interrupt status.
//!
//! # QEMU 7.2's range check, and what this model does instead
//! QEMU 7.2 checks the device side of a transfer with
//! `start <= addr < end && addr + cnt > addr && start <= addr + cnt < end`
//! (`end` = 0x41000): a transfer that reaches the buffer's last byte (a full
//! 4096 bytes, or any transfer ending at 0x41000) or of 0 bytes fails it,
//! and QEMU 7.2 then stops the whole virtual machine (`hw_error`); later
//! QEMU versions accept transfers ending at 0x41000. This model applies
//! QEMU 7.2's check, and a transfer that fails it breaks the device instead
//! of aborting: the failure is logged and recorded ([`EduMonitor::failure`]),
//! the transfer does not happen, its interrupt never comes, and the device
//! answers every register read with all-ones from then on, as a device that
//! fell off the bus. A driver that keeps its transfers to 2048 bytes at
//! most, and inside the buffer, never sees it.
//!
//! # DMA the IOMMU refuses
//! A transfer whose RAM side the hosted IOMMU refuses moves nothing (a
//! refused read leaves the device buffer unchanged), is recorded as a fault
//! by the bus (which also sets Received Master Abort in the status
//! register, see [`super`]), and otherwise completes as in QEMU: the run bit
//! clears and the completion interrupt comes.
//!
//! # Timing
//! QEMU computes the factorial on a thread and runs a transfer 100 ms of
//! virtual time after the command; this model does both on the bus's
//! device thread after [`EduTiming`]'s delays (1 ms each by default), so a
//! driver must wait for the status register or the interrupt.
//!
//! # Hostile variants
//! [`EduFaults`] makes the device lie, for driver tests: a wrong
//! identification, a factorial that never finishes, a transfer that never
//! completes, a configuration space of all-ones, a capability list that
//! loops.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::space::{BarSpec, ConfigSpace, LayoutError, CONFIG_SPACE_PCI};
use super::{DeviceCtx, DeviceModel};
use crate::domain::lock;

/// The edu's vendor id (QEMU's).
pub const EDU_VENDOR_ID: u16 = 0x1234;
/// The edu's device id.
pub const EDU_DEVICE_ID: u16 = 0x11E8;
/// What the identification register reads.
pub const EDU_IDENTIFICATION: u32 = 0x0100_00ED;
/// Bytes of BAR0.
pub const EDU_BAR0_SIZE: u32 = 1 << 20;
/// The device's DMA address mask: 28 bits.
pub const EDU_DMA_MASK: u64 = (1 << 28) - 1;
/// Device address of the DMA buffer.
pub const EDU_DMA_BUFFER: u64 = 0x40000;
/// Bytes of the DMA buffer.
pub const EDU_DMA_BUFFER_LEN: u64 = 4096;

const REG_ID: u64 = 0x00;
const REG_LIVENESS: u64 = 0x04;
const REG_FACTORIAL: u64 = 0x08;
const REG_STATUS: u64 = 0x20;
const REG_IRQ_STATUS: u64 = 0x24;
const REG_IRQ_RAISE: u64 = 0x60;
const REG_IRQ_ACK: u64 = 0x64;
const REG_DMA_SRC: u64 = 0x80;
const REG_DMA_DST: u64 = 0x88;
const REG_DMA_CNT: u64 = 0x90;
const REG_DMA_CMD: u64 = 0x98;

const STATUS_COMPUTING: u32 = 0x01;
const STATUS_IRQFACT: u32 = 0x80;
const IRQ_FACTORIAL: u32 = 0x001;
const IRQ_DMA: u32 = 0x100;
const DMA_RUN: u64 = 0x1;
const DMA_TO_RAM: u64 = 0x2;
const DMA_IRQ: u64 = 0x4;

/// How long the device takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EduTiming {
    /// From writing the factorial register to the result.
    pub factorial: Duration,
    /// From the DMA command to the transfer.
    pub dma: Duration,
}

impl Default for EduTiming {
    fn default() -> Self {
        EduTiming { factorial: Duration::from_millis(1), dma: Duration::from_millis(1) }
    }
}

/// Ways to make the device lie (all off by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EduFaults {
    /// The identification register reads this instead.
    pub identification: Option<u32>,
    /// The liveness register reads back what was written, not its inverse.
    pub liveness_echo: bool,
    /// A factorial never finishes: status bit 0x01 stays set.
    pub factorial_never_done: bool,
    /// A transfer never completes: the run bit stays set, no interrupt.
    pub dma_never_completes: bool,
    /// Every configuration space read returns all-ones.
    pub config_all_ones: bool,
    /// The MSI capability's next pointer points at itself.
    pub capability_loop: bool,
}

/// Why the model broke (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EduFailure {
    /// A transfer outside the device's buffer, which QEMU 7.2 answers by
    /// stopping the machine.
    DmaOutOfRange {
        /// Device-side address of the transfer.
        addr: u64,
        /// Bytes asked for.
        count: u64,
    },
}

impl std::fmt::Display for EduFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EduFailure::DmaOutOfRange { addr, count } => write!(
                f,
                "edu: DMA of {count} byte(s) at device address {addr:#x} is outside the buffer as QEMU 7.2 checks it \
                 ([{EDU_DMA_BUFFER:#x}, {:#x}), ending before its last byte, at least 1 byte); QEMU 7.2 stops the \
                 machine here; keep transfers to at most 2048 bytes inside the buffer",
                EDU_DMA_BUFFER + EDU_DMA_BUFFER_LEN
            ),
        }
    }
}

/// What a test can see of a model after it was plugged.
#[derive(Debug, Default)]
pub struct EduMonitor {
    state: Mutex<MonitorState>,
}

#[derive(Debug, Default)]
struct MonitorState {
    failure: Option<EduFailure>,
    factorials: u64,
    transfers: u64,
    refused_transfers: u64,
    clamped: u64,
}

impl EduMonitor {
    /// Why the device broke, if it did.
    pub fn failure(&self) -> Option<EduFailure> {
        lock(&self.state).failure.clone()
    }
    /// Factorials computed.
    pub fn factorials(&self) -> u64 {
        lock(&self.state).factorials
    }
    /// Transfers completed (including refused ones).
    pub fn transfers(&self) -> u64 {
        lock(&self.state).transfers
    }
    /// Transfers whose RAM side the IOMMU refused.
    pub fn refused_transfers(&self) -> u64 {
        lock(&self.state).refused_transfers
    }
    /// Transfers whose RAM address had bits above the DMA mask.
    pub fn clamped_addresses(&self) -> u64 {
        lock(&self.state).clamped
    }
}

#[derive(Clone, Copy, Default)]
struct DmaRegs {
    src: u64,
    dst: u64,
    cnt: u64,
    cmd: u64,
}

/// The edu device model; plug it into a [`super::HostedPci`].
pub struct EduModel {
    timing: EduTiming,
    faults: EduFaults,
    monitor: Arc<EduMonitor>,
    liveness: u32,
    fact: u32,
    status: u32,
    irq_status: u32,
    dma: DmaRegs,
    buffer: Box<[u8; EDU_DMA_BUFFER_LEN as usize]>,
    fact_due: Option<Instant>,
    dma_due: Option<Instant>,
    broken: bool,
}

impl EduModel {
    /// A well-behaved edu with the default timing.
    pub fn new() -> Self {
        Self::with(EduTiming::default(), EduFaults::default())
    }

    /// An edu with this timing and these lies.
    pub fn with(timing: EduTiming, faults: EduFaults) -> Self {
        EduModel {
            timing,
            faults,
            monitor: Arc::new(EduMonitor::default()),
            liveness: 0,
            fact: 0,
            status: 0,
            irq_status: 0,
            dma: DmaRegs::default(),
            buffer: Box::new([0; EDU_DMA_BUFFER_LEN as usize]),
            fact_due: None,
            dma_due: None,
            broken: false,
        }
    }

    /// What a test can observe of the model once it is plugged.
    pub fn monitor(&self) -> Arc<EduMonitor> {
        self.monitor.clone()
    }

    fn raise(&mut self, bits: u32, dev: &mut DeviceCtx<'_>) {
        self.irq_status |= bits;
        if self.irq_status != 0 {
            if dev.msi_enabled() {
                dev.raise_msi(0);
            } else {
                dev.set_intx(true);
            }
        }
    }

    fn lower(&mut self, bits: u32, dev: &mut DeviceCtx<'_>) {
        self.irq_status &= !bits;
        if self.irq_status == 0 && !dev.msi_enabled() {
            dev.set_intx(false);
        }
    }

    fn finish_factorial(&mut self, dev: &mut DeviceCtx<'_>) {
        let mut n = self.fact;
        let mut r: u32 = 1;
        while n > 0 {
            r = r.wrapping_mul(n);
            n -= 1;
        }
        self.fact = r;
        self.status &= !STATUS_COMPUTING;
        lock(&self.monitor.state).factorials += 1;
        if self.status & STATUS_IRQFACT != 0 {
            self.raise(IRQ_FACTORIAL, dev);
        }
    }

    /// QEMU 7.2's `edu_check_range` for the device side of a transfer:
    /// the offset into the buffer, or `None` where QEMU 7.2 aborts.
    fn buffer_range(addr: u64, count: u64) -> Option<std::ops::Range<usize>> {
        let start = EDU_DMA_BUFFER;
        let end = EDU_DMA_BUFFER + EDU_DMA_BUFFER_LEN;
        let end1 = addr.wrapping_add(count);
        let within = |a: u64| start <= a && a < end;
        if within(addr) && end1 > addr && within(end1) {
            let off = usize::try_from(addr - start).ok()?;
            let len = usize::try_from(count).ok()?;
            Some(off..off + len)
        } else {
            None
        }
    }

    fn run_dma(&mut self, dev: &mut DeviceCtx<'_>) {
        if self.dma.cmd & DMA_RUN == 0 {
            return;
        }
        let to_ram = self.dma.cmd & DMA_TO_RAM != 0;
        let (device_addr, ram_addr) = if to_ram { (self.dma.src, self.dma.dst) } else { (self.dma.dst, self.dma.src) };
        let Some(range) = Self::buffer_range(device_addr, self.dma.cnt) else {
            let failure = EduFailure::DmaOutOfRange { addr: device_addr, count: self.dma.cnt };
            log::error!("{failure}");
            lock(&self.monitor.state).failure = Some(failure);
            self.broken = true;
            return;
        };
        let clamped = ram_addr & EDU_DMA_MASK;
        if clamped != ram_addr {
            log::warn!("edu: clamping DMA address {ram_addr:#x} to {clamped:#x} (28-bit DMA mask)");
            lock(&self.monitor.state).clamped += 1;
        }
        let result = if to_ram {
            dev.dma_write(clamped, &self.buffer[range])
        } else {
            let mut tmp = vec![0u8; range.len()];
            let r = dev.dma_read(clamped, &mut tmp);
            if r.is_ok() {
                self.buffer[range].copy_from_slice(&tmp);
            }
            r
        };
        {
            let mut m = lock(&self.monitor.state);
            m.transfers += 1;
            if let Err(e) = result {
                log::warn!("edu: DMA {} {clamped:#x} failed: {e}", if to_ram { "to" } else { "from" });
                m.refused_transfers += 1;
            }
        }
        self.dma.cmd &= !DMA_RUN;
        if self.dma.cmd & DMA_IRQ != 0 {
            self.raise(IRQ_DMA, dev);
        }
    }
}

impl Default for EduModel {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceModel for EduModel {
    fn name(&self) -> &str {
        "edu"
    }

    fn config_space(&self) -> Result<ConfigSpace, LayoutError> {
        let mut space = ConfigSpace::new(EDU_VENDOR_ID, EDU_DEVICE_ID, 0xFF_0000, 0x10, CONFIG_SPACE_PCI)?
            .with_interrupt_pin(1)
            .with_bar(0, BarSpec::Memory32 { size: EDU_BAR0_SIZE, prefetchable: false })?
            .with_msi(1, true, false)?;
        if self.faults.capability_loop {
            if let Some(msi) = space.msi() {
                space.poke(msi.offset + 1, &[msi.offset as u8])?;
            }
        }
        Ok(space)
    }

    fn config_read(&mut self, _offset: usize, width: usize, value: u32) -> u32 {
        if self.faults.config_all_ones {
            super::space::all_ones(width)
        } else {
            value
        }
    }

    fn mmio_read(&mut self, bar: u8, offset: u64, size: u8, _dev: &mut DeviceCtx<'_>) -> u64 {
        let none = u64::MAX;
        if bar != 0 || self.broken {
            return none;
        }
        if (offset < 0x80 && size != 4) || (offset >= 0x80 && size != 4 && size != 8) {
            return none;
        }
        match offset {
            REG_ID => u64::from(self.faults.identification.unwrap_or(EDU_IDENTIFICATION)),
            REG_LIVENESS => u64::from(self.liveness),
            REG_FACTORIAL => u64::from(self.fact),
            REG_STATUS => u64::from(self.status),
            REG_IRQ_STATUS => u64::from(self.irq_status),
            REG_DMA_SRC => self.dma.src,
            REG_DMA_DST => self.dma.dst,
            REG_DMA_CNT => self.dma.cnt,
            REG_DMA_CMD => self.dma.cmd,
            _ => none,
        }
    }

    fn mmio_write(&mut self, bar: u8, offset: u64, size: u8, value: u64, dev: &mut DeviceCtx<'_>) {
        if bar != 0 || self.broken {
            return;
        }
        if (offset < 0x80 && size != 4) || (offset >= 0x80 && size != 4 && size != 8) {
            return;
        }
        let v32 = value as u32;
        let dma_running = self.dma.cmd & DMA_RUN != 0;
        match offset {
            REG_LIVENESS => self.liveness = if self.faults.liveness_echo { v32 } else { !v32 },
            REG_FACTORIAL => {
                if self.status & STATUS_COMPUTING == 0 {
                    self.fact = v32;
                    self.status |= STATUS_COMPUTING;
                    if !self.faults.factorial_never_done {
                        let due = dev.now() + self.timing.factorial;
                        self.fact_due = Some(due);
                        dev.schedule_at(due);
                    }
                }
            }
            REG_STATUS => {
                if v32 & STATUS_IRQFACT != 0 {
                    self.status |= STATUS_IRQFACT;
                } else {
                    self.status &= !STATUS_IRQFACT;
                }
            }
            REG_IRQ_RAISE => self.raise(v32, dev),
            REG_IRQ_ACK => self.lower(v32, dev),
            REG_DMA_SRC if !dma_running => self.dma.src = value,
            REG_DMA_DST if !dma_running => self.dma.dst = value,
            REG_DMA_CNT if !dma_running => self.dma.cnt = value,
            REG_DMA_CMD if !dma_running && value & DMA_RUN != 0 => {
                self.dma.cmd = value;
                if !self.faults.dma_never_completes {
                    let due = dev.now() + self.timing.dma;
                    self.dma_due = Some(due);
                    dev.schedule_at(due);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, dev: &mut DeviceCtx<'_>) {
        if self.broken {
            return;
        }
        let now = dev.now();
        if let Some(due) = self.fact_due {
            if due <= now {
                self.fact_due = None;
                self.finish_factorial(dev);
            } else {
                dev.schedule_at(due);
            }
        }
        if let Some(due) = self.dma_due {
            if due <= now {
                self.dma_due = None;
                self.run_dma(dev);
            } else {
                dev.schedule_at(due);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_7_2_range_check() {
        assert_eq!(EduModel::buffer_range(0x40000, 2048), Some(0..2048));
        assert_eq!(EduModel::buffer_range(0x40800, 2047), Some(2048..4095));
        // Reaching the last byte, or nothing at all: QEMU 7.2 aborts.
        assert_eq!(EduModel::buffer_range(0x40000, 4096), None);
        assert_eq!(EduModel::buffer_range(0x40800, 2048), None);
        assert_eq!(EduModel::buffer_range(0x40000, 0), None);
        assert_eq!(EduModel::buffer_range(0x3FFFF, 2), None);
        assert_eq!(EduModel::buffer_range(0x40000, u64::MAX), None);
    }
}
