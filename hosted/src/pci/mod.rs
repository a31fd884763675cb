//! PCI passthrough on the hosted platform: a bus of device models in the
//! host process, behind [`passthrough::PciPlatform`], so PCI drivers run
//! and are tested without Xen.
//!
//! - [`HostedPci`]: the bus of one domain ([`HostedPlatform`]). Plug
//!   models in with [`HostedPci::plug`]; the driver then sees them through
//!   [`passthrough::PciPlatform`]: enumeration, configuration space,
//!   BARs, MSI and MSI-X as event channels, DMA buffers.
//! - [`DeviceModel`]: what a model implements: its configuration space
//!   (built with [`ConfigSpace`], BARs and capabilities included), MMIO
//!   read and write callbacks per BAR, and a tick for the work it
//!   scheduled. Every call gets a [`DeviceCtx`]: the clock, scheduling,
//!   DMA through the IOMMU, MSI/MSI-X and INTx.
//! - Each plugged device has a thread (`pci-<bdf>`) that runs the model's
//!   [`DeviceModel::tick`] when the model asked for it
//!   ([`DeviceCtx::schedule_at`]), so a device works while the driver is
//!   blocked. Calls into a model are serialised (one lock per device).
//!
//! # Configuration space
//! The bus applies the driver's writes through the model's write masks
//! (read-only bits stay, the status register's error bits are
//! write-1-to-clear, BAR sizing works). BARs are assigned at plug time as
//! firmware does (32-bit BARs from 0xe000_0000, 64-bit ones from 64 GiB),
//! aligned to their size. A function that is not plugged reads all-ones.
//!
//! # MMIO
//! [`HostedMmio`] is a [`Mmio`] whose accesses call the model (bounds and
//! alignment checked first). While the command register's memory space
//! bit is clear, reads return all-ones and writes are dropped, as on a
//! real bus. Accesses to an MSI-X table or pending bit array are served by
//! the bus, as QEMU's `msix` code does for its models. Both are read-only
//! to the driver, as Xen maps them for a PV domain (a write there faults
//! the domain): writes are dropped, logged and counted
//! ([`HostedPci::msix_table_writes`]), so a test sees a driver that would
//! not survive Xen.
//!
//! # Interrupts
//! [`PciPlatform::enable_msi`] and [`PciPlatform::enable_msix`] do what
//! xen-pciback does for `XEN_PCI_OP_enable_msi`/`_msix` (program the
//! capability and the table entries, enable), and bind each vector to an
//! event channel of the domain: a loopback pair, whose far end the bus
//! notifies when the model raises that vector. The driver blocks on the
//! near end with the same [`EventChannels`] calls as on any port. A masked
//! vector (MSI per-vector mask, MSI-X entry or function mask) sets its
//! pending bit instead and is delivered when unmasked. A device without
//! bus mastering enabled cannot send MSIs (nor DMA). INTx is recorded (the
//! line's level, [`HostedPci::intx_level`]) but not delivered: the
//! passthrough seam offers MSI and MSI-X only.
//!
//! # DMA and the IOMMU
//! [`PciPlatform::alloc_dma_with`] allocates pages of the domain's memory;
//! a page's bus address is its frame number times the page size (as for a
//! PV domain under Xen, whose IOMMU maps machine frames one to one). Each
//! buffer's pages are entered in the bus's IOMMU table while it lives; a
//! model's [`DeviceCtx::dma_read`]/[`DeviceCtx::dma_write`] reaches only
//! those. Any other bus address, even one of the domain's other pages, is
//! refused as VT-d refuses an address without a mapping: nothing moves,
//! the fault is recorded ([`HostedPci::iommu_faults`], as Xen logs VT-d
//! faults), and the function's status register gets Received Master Abort
//! (which a root complex reports to a device whose read it refused; here
//! writes set it too, so that a driver can see a refused transfer of
//! either direction; QEMU 7.2 sets neither, so under Xen the fault shows
//! only in Xen's log). Address masks are the driver's to honour when it
//! allocates (a buffer is placed wholly at or below its mask, or the
//! allocation fails); a model applies its own mask to the addresses it
//! is given, as edu does.

pub mod e1000e;
pub mod edu;
mod space;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use grant_tables::{
    shared_mem, Clock, DomId, EventChannels, PageAllocator, Platform, PlatformError, Port, SharedPages,
};
use passthrough::config::{Bar, BarKind, ConfigAccess, ConfigReg};
use passthrough::dma::{DmaConstraints, MemDma, OwnedDma};
use passthrough::mmio::{check_access, Mmio};
use passthrough::platform::check_msix_entries;
use passthrough::{Bdf, PciError, PciPlatform};

pub use space::{
    BarSpec, ConfigSpace, LayoutError, MsiLayout, MsixLayout, CAP_ID_MSI, CAP_ID_MSIX, COMMAND_BUS_MASTER,
    COMMAND_INTX_DISABLE, COMMAND_MEMORY, CONFIG_SPACE_PCI, CONFIG_SPACE_PCIE, STATUS_CAP_LIST,
    STATUS_RECEIVED_MASTER_ABORT,
};

use crate::domain::lock;
use crate::memory::{DomainMemory, HostedPages};
use crate::sys::PAGE;
use crate::{HostedError, HostedPlatform};

/// The MSI message address the bus programs (the x86 interrupt window).
const MSI_ADDRESS: u64 = 0xFEE0_0000;
/// Where 32-bit BARs are placed.
const MMIO32_BASE: u64 = 0xE000_0000;
const MMIO32_END: u64 = 0xFEC0_0000;
/// Where 64-bit BARs are placed.
const MMIO64_BASE: u64 = 0x10_0000_0000;
/// Faults kept in the log (the count goes on).
const FAULT_LOG: usize = 256;
/// MSI-X entries one `enable_msix` may ask for (what pcifront carries).
const MSIX_MAX_PER_REQUEST: usize = 128;

/// The bus and its BAR mappings are shared between threads (a driver's
/// queues, the device threads); DMA buffers move between them.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<HostedPci>();
    send_sync::<HostedMmio>();
    send::<HostedDma>();
};

/// A device model on the hosted PCI bus.
///
/// Calls are serialised per device. MMIO callbacks get the BAR index,
/// the offset in it, and the access size (1, 2, 4 or 8; aligned and in
/// bounds, checked by the bus); a read returns the value in the low
/// `size` bytes.
pub trait DeviceModel: Send {
    /// A short name for logs (`"edu"`).
    fn name(&self) -> &str;
    /// The configuration space at reset (called once, when plugged).
    fn config_space(&self) -> Result<ConfigSpace, LayoutError>;
    /// Reads `size` bytes at `offset` of BAR `bar`.
    fn mmio_read(&mut self, bar: u8, offset: u64, size: u8, dev: &mut DeviceCtx<'_>) -> u64;
    /// Writes `size` bytes at `offset` of BAR `bar`.
    fn mmio_write(&mut self, bar: u8, offset: u64, size: u8, value: u64, dev: &mut DeviceCtx<'_>);
    /// Runs the work that is due: called on the device's thread at or
    /// after the time the model last asked for with
    /// [`DeviceCtx::schedule_at`] (asking again from here re-arms it).
    fn tick(&mut self, dev: &mut DeviceCtx<'_>) {
        let _ = dev;
    }
    /// Sees (and may change) every configuration read the driver makes:
    /// `value` is what the configuration space holds. Hostile models lie
    /// here.
    fn config_read(&mut self, offset: usize, width: usize, value: u32) -> u32 {
        let _ = (offset, width);
        value
    }
    /// Called after the driver wrote configuration space (for models that
    /// react to the command register or their own capabilities).
    fn config_written(&mut self, offset: usize, width: usize, dev: &mut DeviceCtx<'_>) {
        let _ = (offset, width, dev);
    }
}

/// A DMA the hosted IOMMU refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// The device that tried it.
    pub bdf: Bdf,
    /// The first bus address of the transfer.
    pub addr: u64,
    /// Bytes asked for.
    pub len: u64,
    /// The first bus address that has no mapping.
    pub fault_addr: u64,
    /// Whether the device was writing (to memory) rather than reading.
    pub write: bool,
}

impl fmt::Display for DmaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IOMMU: DMA {} by {} of {} byte(s) at {:#x} refused: no mapping for bus address {:#x} (not a DMA buffer \
             of this domain)",
            if self.write { "write" } else { "read" },
            self.bdf,
            self.len,
            self.addr,
            self.fault_addr
        )
    }
}

/// Why a model's DMA did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// The command register's bus master bit is clear: the device cannot
    /// start a transaction.
    BusMasterDisabled,
    /// The IOMMU refused it (recorded in the bus's fault log).
    Refused(DmaFault),
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::BusMasterDisabled => {
                write!(f, "bus mastering is disabled in the command register; the driver must enable it before DMA")
            }
            DmaError::Refused(fault) => fault.fmt(f),
        }
    }
}

impl std::error::Error for DmaError {}

/// The hosted IOMMU: which bus pages devices may reach, and the faults.
struct Iommu {
    memory: Arc<DomainMemory>,
    /// First frame -> pages, for each live DMA buffer.
    maps: RwLock<BTreeMap<u64, u64>>,
    faults: Mutex<VecDeque<DmaFault>>,
    fault_count: AtomicU64,
}

impl Iommu {
    fn map(&self, first: u64, pages: u64) {
        self.maps.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(first, pages);
    }

    fn unmap(&self, first: u64) {
        self.maps.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&first);
    }

    /// The first page of `[addr, addr + len)` without a mapping, if any.
    fn unmapped(maps: &BTreeMap<u64, u64>, addr: u64, len: u64) -> Option<u64> {
        let page = PAGE as u64;
        let Some(last) = len.checked_sub(1).and_then(|l| addr.checked_add(l)) else {
            return if len == 0 { None } else { Some(addr) };
        };
        let mut frame = addr / page;
        while frame <= last / page {
            match maps.range(..=frame).next_back() {
                Some((&first, &n)) if frame < first.saturating_add(n) => frame = first.saturating_add(n),
                _ => return Some((frame * page).max(addr)),
            }
        }
        None
    }

    fn fault(&self, fault: DmaFault) -> DmaError {
        log::warn!("{fault}");
        self.fault_count.fetch_add(1, Ordering::Relaxed);
        let mut log = lock(&self.faults);
        if log.len() == FAULT_LOG {
            log.pop_front();
        }
        log.push_back(fault);
        DmaError::Refused(fault)
    }

    /// Runs `f` on the domain memory's base and size, with the mapping
    /// checked and held (a buffer cannot be unmapped meanwhile).
    fn access(
        &self,
        bdf: Bdf,
        addr: u64,
        len: u64,
        write: bool,
        f: impl FnOnce(NonNull<u8>, usize) -> Result<(), shared_mem::OutOfRange>,
    ) -> Result<(), DmaError> {
        let maps = self.maps.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(fault_addr) = Self::unmapped(&maps, addr, len) {
            drop(maps);
            return Err(self.fault(DmaFault { bdf, addr, len, fault_addr, write }));
        }
        let Some(whole) = self.memory.whole() else {
            drop(maps);
            return Err(self.fault(DmaFault { bdf, addr, len, fault_addr: addr, write }));
        };
        f(whole.as_ptr(), whole.len()).map_err(|_| {
            // Mapped pages lie inside the memory; this is a bug, refused
            // all the same.
            self.fault(DmaFault { bdf, addr, len, fault_addr: addr, write })
        })
    }
}

/// What a model's callbacks may do: the clock, scheduling, DMA and
/// interrupts. Interrupts raised here are delivered when the callback
/// returns.
pub struct DeviceCtx<'a> {
    bdf: Bdf,
    now: Instant,
    config: &'a mut ConfigSpace,
    iommu: &'a Iommu,
    next_tick: &'a mut Option<Instant>,
    irqs: &'a mut Vec<u16>,
    intx: &'a mut bool,
}

impl DeviceCtx<'_> {
    /// The device's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The time of this call.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Asks for [`DeviceModel::tick`] at `when` (or earlier, if an earlier
    /// tick is already asked for).
    pub fn schedule_at(&mut self, when: Instant) {
        if self.next_tick.is_none_or(|t| when < t) {
            *self.next_tick = Some(when);
        }
    }

    /// Asks for [`DeviceModel::tick`] after `delay`.
    pub fn schedule_in(&mut self, delay: Duration) {
        self.schedule_at(self.now + delay);
    }

    /// The function's configuration space (the model may set status bits
    /// or read its own capabilities).
    pub fn config(&mut self) -> &mut ConfigSpace {
        self.config
    }

    /// Whether MSI or MSI-X is enabled (a model that also has INTx uses it
    /// only when neither is).
    pub fn msi_enabled(&self) -> bool {
        self.config.msi_enabled_vectors().is_some()
            || self.config.msix_control().is_some_and(|c| c & space::MSIX_ENABLE != 0)
    }

    /// Raises MSI vector (or MSI-X table entry) `vector`.
    pub fn raise_msi(&mut self, vector: u16) {
        self.irqs.push(vector);
    }

    /// Sets the INTx line's level.
    pub fn set_intx(&mut self, level: bool) {
        *self.intx = level;
    }

    fn check_master(&self) -> Result<(), DmaError> {
        if self.config.command() & COMMAND_BUS_MASTER == 0 {
            log::warn!("{}: DMA attempted with bus mastering disabled; dropped", self.bdf);
            return Err(DmaError::BusMasterDisabled);
        }
        Ok(())
    }

    fn refused(&mut self, e: DmaError) -> DmaError {
        if matches!(e, DmaError::Refused(_)) {
            self.config.set_status_bits(STATUS_RECEIVED_MASTER_ABORT);
        }
        e
    }

    /// Reads `buf.len()` bytes of memory at bus address `addr` (a DMA
    /// read), through the IOMMU. All or nothing.
    pub fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.check_master()?;
        let len = buf.len() as u64;
        let r = self.iommu.access(self.bdf, addr, len, false, |base, size| {
            let off = usize::try_from(addr).unwrap_or(usize::MAX);
            // SAFETY: `base` is the domain's whole memory, mapped for the
            // life of `DomainMemory` (`size` bytes); the IOMMU's read lock
            // keeps the pages mapped to a live buffer for the copy; no Rust
            // reference points into domain memory (drivers use volatile
            // accesses); `read` checks the range against `size`.
            unsafe { shared_mem::read(base, size, off, buf) }
        });
        r.map_err(|e| self.refused(e))
    }

    /// Writes `data` to memory at bus address `addr` (a DMA write),
    /// through the IOMMU. All or nothing.
    pub fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        self.check_master()?;
        let len = data.len() as u64;
        let r = self.iommu.access(self.bdf, addr, len, true, |base, size| {
            let off = usize::try_from(addr).unwrap_or(usize::MAX);
            // SAFETY: as in `dma_read`, for writes.
            unsafe { shared_mem::write(base, size, off, data) }
        });
        r.map_err(|e| self.refused(e))
    }
}

/// An MSI or MSI-X vector's event channel: the end the bus notifies and
/// the end the driver waits on.
#[derive(Clone, Copy, Debug)]
struct VectorPorts {
    device: Port,
    driver: Port,
}

struct SlotState {
    model: Box<dyn DeviceModel>,
    config: ConfigSpace,
    /// MSI-X table entries: address low, address high, data, control.
    msix_table: Vec<[u32; 4]>,
    msix_pending: Vec<u64>,
    msi_ports: Vec<VectorPorts>,
    msix_ports: BTreeMap<u16, VectorPorts>,
    next_tick: Option<Instant>,
    intx: bool,
    stop: bool,
}

/// One plugged function.
struct Slot {
    bdf: Bdf,
    name: String,
    domain: HostedPlatform,
    iommu: Arc<Iommu>,
    state: Mutex<SlotState>,
    wake: Condvar,
    interrupts: AtomicU64,
    /// Driver writes to the MSI-X table or pending bit array (refused).
    msix_writes: AtomicU64,
}

impl Slot {
    /// Runs `f` with the model and a context, then delivers what it raised
    /// and wakes the device thread if the next tick moved earlier.
    fn call<R>(&self, st: &mut SlotState, f: impl FnOnce(&mut dyn DeviceModel, &mut DeviceCtx<'_>) -> R) -> R {
        let before = st.next_tick;
        let mut irqs = Vec::new();
        let SlotState { model, config, next_tick, intx, .. } = st;
        let mut ctx = DeviceCtx {
            bdf: self.bdf,
            now: Instant::now(),
            config,
            iommu: &self.iommu,
            next_tick,
            irqs: &mut irqs,
            intx,
        };
        let r = f(model.as_mut(), &mut ctx);
        for v in irqs {
            self.deliver(st, v);
        }
        if st.next_tick.is_some() && st.next_tick != before {
            self.wake.notify_all();
        }
        r
    }

    /// Sends vector `v` (or marks it pending while masked).
    fn deliver(&self, st: &mut SlotState, v: u16) {
        if st.config.command() & COMMAND_BUS_MASTER == 0 {
            log::warn!("{} {}: MSI {v} dropped: bus mastering is disabled", self.bdf, self.name);
            return;
        }
        if let Some(control) = st.config.msix_control().filter(|c| c & space::MSIX_ENABLE != 0) {
            let Some(entry) = st.msix_table.get(usize::from(v)) else {
                log::warn!("{} {}: MSI-X entry {v} does not exist; dropped", self.bdf, self.name);
                return;
            };
            if control & space::MSIX_FUNCTION_MASK != 0 || entry[3] & 1 != 0 {
                if let Some(w) = st.msix_pending.get_mut(usize::from(v / 64)) {
                    *w |= 1 << (v % 64);
                }
                return;
            }
            let port = st.msix_ports.get(&v).map(|p| p.device);
            self.send(port, v);
        } else if let Some(n) = st.config.msi_enabled_vectors() {
            if v >= u16::from(n) {
                log::warn!("{} {}: MSI vector {v} is not enabled ({n} are); dropped", self.bdf, self.name);
                return;
            }
            if st.config.msi_masked(v as u8) {
                st.config.set_msi_pending(v as u8, true);
                return;
            }
            let port = st.msi_ports.get(usize::from(v)).map(|p| p.device);
            self.send(port, v);
        } else {
            log::debug!("{} {}: MSI {v} raised with MSI and MSI-X disabled; dropped", self.bdf, self.name);
        }
    }

    fn send(&self, port: Option<Port>, v: u16) {
        let Some(port) = port else {
            log::debug!(
                "{} {}: vector {v} has no event channel (enabled without the platform); dropped",
                self.bdf,
                self.name
            );
            return;
        };
        match self.domain.notify(port) {
            Ok(()) => {
                self.interrupts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log::warn!("{} {}: delivering vector {v} on {port}: {e}", self.bdf, self.name),
        }
    }

    /// Delivers vectors that were pending while masked and are not any
    /// more.
    fn deliver_unmasked(&self, st: &mut SlotState) {
        let msi = st.config.msi_pending_unmasked();
        if msi != 0 && st.config.msi_enabled_vectors().is_some() {
            for v in 0..32u8 {
                if msi & (1 << v) != 0 {
                    st.config.set_msi_pending(v, false);
                    self.deliver(st, u16::from(v));
                }
            }
        }
        let Some(control) = st.config.msix_control() else {
            return;
        };
        if control & space::MSIX_ENABLE == 0 || control & space::MSIX_FUNCTION_MASK != 0 {
            return;
        }
        for v in 0..st.msix_table.len() {
            let (w, bit) = (v / 64, 1u64 << (v % 64));
            let pending = st.msix_pending.get(w).is_some_and(|p| p & bit != 0);
            if pending && st.msix_table[v][3] & 1 == 0 {
                st.msix_pending[w] &= !bit;
                self.deliver(st, v as u16);
            }
        }
    }

    /// The MSI-X table or PBA register at `offset` of `bar`, if it is one:
    /// (is the table, index of the dword).
    fn msix_region(st: &SlotState, bar: u8, offset: u64) -> Option<(bool, usize)> {
        let l = st.config.msix()?;
        let table = u64::from(l.table_offset);
        if bar == l.table_bar && (table..table + l.table_len()).contains(&offset) {
            return usize::try_from((offset - table) / 4).ok().map(|i| (true, i));
        }
        let pba = u64::from(l.pba_offset);
        if bar == l.pba_bar && (pba..pba + l.pba_len()).contains(&offset) {
            return usize::try_from((offset - pba) / 4).ok().map(|i| (false, i));
        }
        None
    }

    fn msix_read32(st: &SlotState, table: bool, dword: usize) -> u32 {
        if table {
            st.msix_table.get(dword / 4).map_or(u32::MAX, |e| e[dword % 4])
        } else {
            st.msix_pending.get(dword / 2).map_or(u32::MAX, |w| (w >> (32 * (dword % 2))) as u32)
        }
    }

    fn mmio_read(&self, bar: u8, offset: u64, size: u8) -> u64 {
        let mut st = lock(&self.state);
        if st.config.command() & COMMAND_MEMORY == 0 {
            return all_ones(size);
        }
        if let Some((table, dword)) = Self::msix_region(&st, bar, offset) {
            let low = Self::msix_read32(&st, table, dword);
            let v = if size == 8 {
                u64::from(low) | (u64::from(Self::msix_read32(&st, table, dword + 1)) << 32)
            } else {
                u64::from(low) >> (8 * (offset % 4))
            };
            return v & all_ones(size);
        }
        self.call(&mut st, |m, ctx| m.mmio_read(bar, offset, size, ctx)) & all_ones(size)
    }

    fn mmio_write(&self, bar: u8, offset: u64, size: u8, value: u64) {
        let mut st = lock(&self.state);
        if st.config.command() & COMMAND_MEMORY == 0 {
            log::debug!("{} {}: MMIO write with memory decoding off; dropped", self.bdf, self.name);
            return;
        }
        if let Some((table, _)) = Self::msix_region(&st, bar, offset) {
            // Xen maps the table and the pending bit array read-only into
            // a PV domain and programs entries itself (through pciback's
            // enable_msix): a driver write there would fault the domain.
            self.msix_writes.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "{} {}: write of {value:#x} to the MSI-X {} at BAR {bar} offset {offset:#x} refused: \
                 Xen maps it read-only for a PV domain (the domain would fault); use \
                 enable_msix/disable_msix and the event channel's mask instead",
                self.bdf,
                self.name,
                if table { "table" } else { "pending bit array" }
            );
            return;
        }
        self.call(&mut st, |m, ctx| m.mmio_write(bar, offset, size, value, ctx));
    }

    fn config_read(&self, offset: usize, width: usize) -> u32 {
        let mut st = lock(&self.state);
        let value = st.config.read(offset, width);
        st.model.config_read(offset, width, value)
    }

    fn config_write(&self, offset: usize, width: usize, value: u32) {
        let mut st = lock(&self.state);
        if st.config.write(offset, width, value) {
            self.call(&mut st, |m, ctx| m.config_written(offset, width, ctx));
            self.deliver_unmasked(&mut st);
        }
    }

    /// The device thread: runs ticks when they are due, until stopped.
    fn run(&self) {
        let mut st = lock(&self.state);
        loop {
            if st.stop {
                return;
            }
            let now = Instant::now();
            match st.next_tick {
                Some(t) if t <= now => {
                    st.next_tick = None;
                    self.call(&mut st, |m, ctx| m.tick(ctx));
                }
                Some(t) => {
                    st = self.wake.wait_timeout(st, t - now).unwrap_or_else(std::sync::PoisonError::into_inner).0;
                }
                None => st = self.wake.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner),
            }
        }
    }
}

fn all_ones(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

struct Bus {
    domain: HostedPlatform,
    iommu: Arc<Iommu>,
    slots: Mutex<BTreeMap<Bdf, Arc<Slot>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Next free addresses for 32- and 64-bit BARs.
    mmio: Mutex<(u64, u64)>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        for slot in lock(&self.slots).values() {
            lock(&slot.state).stop = true;
            slot.wake.notify_all();
        }
        for t in lock(&self.threads).drain(..) {
            if t.join().is_err() {
                log::error!("a hosted PCI device thread panicked");
            }
        }
    }
}

/// A hosted PCI bus of device models for one domain; implements
/// [`PciPlatform`] (and [`EventChannels`] and [`Clock`], as the domain's).
///
/// Cheap to clone; the device threads stop when the last clone goes.
#[derive(Clone)]
pub struct HostedPci {
    inner: Arc<Bus>,
}

impl fmt::Debug for HostedPci {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let devices: Vec<String> = lock(&self.inner.slots).values().map(|s| format!("{} {}", s.bdf, s.name)).collect();
        f.debug_struct("HostedPci").field("domain", &self.inner.domain.domid()).field("devices", &devices).finish()
    }
}

impl HostedPci {
    /// An empty bus for `domain`: its DMA buffers are the domain's pages,
    /// its interrupts the domain's event channels.
    pub fn new(domain: HostedPlatform) -> Self {
        let iommu = Arc::new(Iommu {
            memory: domain.inner.memory.clone(),
            maps: RwLock::new(BTreeMap::new()),
            faults: Mutex::new(VecDeque::new()),
            fault_count: AtomicU64::new(0),
        });
        HostedPci {
            inner: Arc::new(Bus {
                domain,
                iommu,
                slots: Mutex::new(BTreeMap::new()),
                threads: Mutex::new(Vec::new()),
                mmio: Mutex::new((MMIO32_BASE, MMIO64_BASE)),
            }),
        }
    }

    /// The domain the bus belongs to.
    pub fn domain(&self) -> &HostedPlatform {
        &self.inner.domain
    }

    /// Plugs `model` in at `bdf`: builds its configuration space, assigns
    /// its BARs and starts its thread.
    pub fn plug(&self, bdf: Bdf, model: impl DeviceModel + 'static) -> Result<(), HostedError> {
        let name = model.name().to_string();
        let mut config = model.config_space().map_err(|e| HostedError::Invalid(format!("{bdf} {name}: {e}")))?;
        let mut slots = lock(&self.inner.slots);
        if slots.contains_key(&bdf) {
            return Err(HostedError::Invalid(format!("{bdf} is taken; plug {name} at another address")));
        }
        {
            let mut next = lock(&self.inner.mmio);
            for i in 0..6 {
                let Some(spec) = config.bar(i) else { continue };
                let size = spec.size();
                let cursor = if matches!(spec, BarSpec::Memory32 { .. }) { &mut next.0 } else { &mut next.1 };
                let addr = cursor.next_multiple_of(size);
                let end =
                    addr.checked_add(size).filter(|&e| !matches!(spec, BarSpec::Memory32 { .. }) || e <= MMIO32_END);
                let Some(end) = end else {
                    return Err(HostedError::Invalid(format!("{bdf} {name}: no room for BAR{i} of {size:#x} bytes")));
                };
                config.set_bar_address(i, addr);
                *cursor = end;
            }
        }
        let entries = config.msix().map_or(0, |l| usize::from(l.table_size));
        // MSI-X entries start masked.
        let msix_table = vec![[0, 0, 0, 1]; entries];
        let slot = Arc::new(Slot {
            bdf,
            name: name.clone(),
            domain: self.inner.domain.clone(),
            iommu: self.inner.iommu.clone(),
            state: Mutex::new(SlotState {
                model: Box::new(model),
                config,
                msix_table,
                msix_pending: vec![0; entries.div_ceil(64)],
                msi_ports: Vec::new(),
                msix_ports: BTreeMap::new(),
                next_tick: None,
                intx: false,
                stop: false,
            }),
            wake: Condvar::new(),
            interrupts: AtomicU64::new(0),
            msix_writes: AtomicU64::new(0),
        });
        let runner = slot.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pci-{bdf}"))
            .spawn(move || runner.run())
            .map_err(|e| HostedError::Io { what: format!("starting the thread of {bdf} {name}"), source: e })?;
        lock(&self.inner.threads).push(thread);
        slots.insert(bdf, slot);
        log::info!("{}: plugged {name} at {bdf}", self.inner.domain.domid());
        Ok(())
    }

    fn slot(&self, bdf: Bdf) -> Result<Arc<Slot>, PciError> {
        lock(&self.inner.slots).get(&bdf).cloned().ok_or(PciError::DeviceGone { bdf })
    }

    /// Runs `bdf`'s [`DeviceModel::tick`] on its thread now: for models fed
    /// from outside the bus (a frame arriving on a host-side link), whose
    /// feeder queues the input where the model finds it, then kicks.
    pub fn kick(&self, bdf: Bdf) -> Result<(), PciError> {
        let slot = self.slot(bdf)?;
        lock(&slot.state).next_tick = Some(Instant::now());
        slot.wake.notify_all();
        Ok(())
    }

    /// DMA faults recorded by the IOMMU (the latest 256), oldest first.
    pub fn iommu_faults(&self) -> Vec<DmaFault> {
        lock(&self.inner.iommu.faults).iter().copied().collect()
    }

    /// DMA faults recorded since the bus was made.
    pub fn iommu_fault_count(&self) -> u64 {
        self.inner.iommu.fault_count.load(Ordering::Relaxed)
    }

    /// Interrupts delivered to event channels for `bdf`.
    pub fn interrupts_delivered(&self, bdf: Bdf) -> u64 {
        self.slot(bdf).map_or(0, |s| s.interrupts.load(Ordering::Relaxed))
    }

    /// Driver writes to the function's MSI-X table or pending bit array,
    /// all refused (see the module docs): a driver that makes any would
    /// fault on Xen.
    pub fn msix_table_writes(&self, bdf: Bdf) -> u64 {
        self.slot(bdf).map_or(0, |s| s.msix_writes.load(Ordering::Relaxed))
    }

    /// The level of `bdf`'s INTx line (`None`: not plugged).
    pub fn intx_level(&self, bdf: Bdf) -> Option<bool> {
        self.slot(bdf).ok().map(|s| lock(&s.state).intx)
    }

    fn loopback(&self) -> Result<VectorPorts, PciError> {
        let d = &self.inner.domain;
        let me = d.domid();
        let device = d.alloc_unbound(me)?;
        let driver = match d.bind_interdomain(me, device) {
            Ok(p) => p,
            Err(e) => {
                let _ = d.close(device);
                return Err(e.into());
            }
        };
        // A fresh binding is pending (as in Xen); no interrupt came yet.
        d.poll(driver)?;
        Ok(VectorPorts { device, driver })
    }

    fn close_ports(&self, ports: impl IntoIterator<Item = VectorPorts>) {
        for p in ports {
            for port in [p.driver, p.device] {
                if let Err(e) = self.inner.domain.close(port) {
                    log::warn!("closing interrupt channel {port}: {e}");
                }
            }
        }
    }
}

impl ConfigAccess for HostedPci {
    fn read(&self, bdf: Bdf, reg: ConfigReg) -> Result<u32, PciError> {
        let width = usize::from(reg.width().bytes());
        match lock(&self.inner.slots).get(&bdf).cloned() {
            Some(slot) => Ok(slot.config_read(usize::from(reg.offset()), width)),
            // Nothing answers: a master abort reads all-ones.
            None => Ok(reg.width().mask()),
        }
    }

    fn write(&self, bdf: Bdf, reg: ConfigReg, value: u32) -> Result<(), PciError> {
        let width = usize::from(reg.width().bytes());
        if let Some(slot) = lock(&self.inner.slots).get(&bdf).cloned() {
            slot.config_write(usize::from(reg.offset()), width, value & reg.width().mask());
        }
        Ok(())
    }
}

/// A BAR of a hosted device: every access calls the model.
pub struct HostedMmio {
    slot: Arc<Slot>,
    bar: u8,
    len: usize,
}

impl fmt::Debug for HostedMmio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostedMmio")
            .field("bdf", &self.slot.bdf)
            .field("bar", &self.bar)
            .field("len", &self.len)
            .finish()
    }
}

impl HostedMmio {
    fn read(&self, offset: usize, size: u8) -> Result<u64, PciError> {
        check_access("MMIO", offset, usize::from(size), self.len)?;
        Ok(self.slot.mmio_read(self.bar, offset as u64, size))
    }
    fn write(&self, offset: usize, size: u8, value: u64) -> Result<(), PciError> {
        check_access("MMIO", offset, usize::from(size), self.len)?;
        self.slot.mmio_write(self.bar, offset as u64, size, value);
        Ok(())
    }
}

impl Mmio for HostedMmio {
    fn len(&self) -> usize {
        self.len
    }
    fn read8(&self, offset: usize) -> Result<u8, PciError> {
        self.read(offset, 1).map(|v| v as u8)
    }
    fn read16(&self, offset: usize) -> Result<u16, PciError> {
        self.read(offset, 2).map(|v| v as u16)
    }
    fn read32(&self, offset: usize) -> Result<u32, PciError> {
        self.read(offset, 4).map(|v| v as u32)
    }
    fn read64(&self, offset: usize) -> Result<u64, PciError> {
        self.read(offset, 8)
    }
    fn write8(&self, offset: usize, value: u8) -> Result<(), PciError> {
        self.write(offset, 1, value.into())
    }
    fn write16(&self, offset: usize, value: u16) -> Result<(), PciError> {
        self.write(offset, 2, value.into())
    }
    fn write32(&self, offset: usize, value: u32) -> Result<(), PciError> {
        self.write(offset, 4, value.into())
    }
    fn write64(&self, offset: usize, value: u64) -> Result<(), PciError> {
        self.write(offset, 8, value)
    }
}

/// A DMA buffer of a hosted domain: its pages are in the IOMMU table while
/// it lives, and leave it before they are freed.
pub type HostedDma = OwnedDma<HostedDmaPages>;

/// The pages of a [`HostedDma`], in the IOMMU table until dropped.
pub struct HostedDmaPages {
    iommu: Arc<Iommu>,
    first_frame: u64,
    /// Declared last: freed after the IOMMU entry is gone (see `Drop`).
    _pages: HostedPages,
}

impl Drop for HostedDmaPages {
    fn drop(&mut self) {
        // Under the IOMMU's write lock: no model is copying to or from
        // these pages when they go back to the allocator.
        self.iommu.unmap(self.first_frame);
    }
}

impl Clock for HostedPci {
    fn now_ns(&self) -> u64 {
        self.inner.domain.now_ns()
    }
}

impl EventChannels for HostedPci {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError> {
        self.inner.domain.alloc_unbound(remote)
    }
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
        self.inner.domain.bind_interdomain(remote, remote_port)
    }
    fn notify(&self, port: Port) -> Result<(), PlatformError> {
        self.inner.domain.notify(port)
    }
    fn mask(&self, port: Port) -> Result<(), PlatformError> {
        self.inner.domain.mask(port)
    }
    fn unmask(&self, port: Port) -> Result<(), PlatformError> {
        self.inner.domain.unmask(port)
    }
    fn poll(&self, port: Port) -> Result<bool, PlatformError> {
        self.inner.domain.poll(port)
    }
    fn block(&self, port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError> {
        self.inner.domain.block(port, timeout_ns)
    }
    fn block_any(&self, ports: &[Port], timeout_ns: Option<u64>) -> Result<Option<Port>, PlatformError> {
        self.inner.domain.block_any(ports, timeout_ns)
    }
    fn close(&self, port: Port) -> Result<(), PlatformError> {
        self.inner.domain.close(port)
    }
}

impl PciPlatform for HostedPci {
    type Config = HostedPci;
    type Mmio = HostedMmio;
    type Dma = HostedDma;

    fn devices(&self) -> Result<Vec<Bdf>, PciError> {
        Ok(lock(&self.inner.slots).keys().copied().collect())
    }

    fn config(&self) -> &HostedPci {
        self
    }

    fn map_bar(&self, bdf: Bdf, bar: &Bar) -> Result<HostedMmio, PciError> {
        let slot = self.slot(bdf)?;
        let (spec, address) = {
            let st = lock(&slot.state);
            let i = usize::from(bar.index);
            (st.config.bar(i), st.config.bar_address(i))
        };
        let op = "map_bar";
        let Some(spec) = spec else {
            return Err(PciError::InvalidRequest { op, reason: "the device has no such memory BAR" });
        };
        let kind_ok = matches!(
            (spec, bar.kind),
            (BarSpec::Memory32 { .. }, BarKind::Memory32) | (BarSpec::Memory64 { .. }, BarKind::Memory64)
        );
        if !kind_ok || bar.size != spec.size() {
            return Err(PciError::InvalidRequest {
                op,
                reason: "the BAR's kind or size is not what the device decodes",
            });
        }
        if bar.address == 0 || Some(bar.address) != address {
            return Err(PciError::InvalidRequest {
                op,
                reason: "the BAR's address is unassigned or not the one the device decodes; re-read the BARs",
            });
        }
        let len =
            usize::try_from(bar.size).map_err(|_| PciError::InvalidRequest { op, reason: "the BAR is too large" })?;
        Ok(HostedMmio { slot, bar: bar.index, len })
    }

    fn enable_msi(&self, bdf: Bdf) -> Result<Port, PciError> {
        let slot = self.slot(bdf)?;
        let op = "enable_msi";
        {
            let st = lock(&slot.state);
            if st.config.msi().is_none() {
                return Err(PciError::Unsupported { bdf, what: "the device has no MSI capability" });
            }
            if !st.msi_ports.is_empty() || st.config.msi_enabled_vectors().is_some() {
                return Err(PciError::InvalidRequest { op, reason: "MSI is already enabled; disable it first" });
            }
            if st.config.msix_control().is_some_and(|c| c & space::MSIX_ENABLE != 0) {
                return Err(PciError::InvalidRequest { op, reason: "MSI-X is enabled; disable it first" });
            }
        }
        let ports = self.loopback()?;
        let mut st = lock(&slot.state);
        st.config.program_msi(1, MSI_ADDRESS, ports.device.0 as u16);
        st.msi_ports = vec![ports];
        log::debug!("{bdf}: MSI enabled on {}", ports.driver);
        Ok(ports.driver)
    }

    fn disable_msi(&self, bdf: Bdf) -> Result<(), PciError> {
        let slot = self.slot(bdf)?;
        let ports = {
            let mut st = lock(&slot.state);
            st.config.disable_msi();
            std::mem::take(&mut st.msi_ports)
        };
        self.close_ports(ports);
        Ok(())
    }

    fn enable_msix(&self, bdf: Bdf, entries: &[u16]) -> Result<Vec<Port>, PciError> {
        let slot = self.slot(bdf)?;
        let op = "enable_msix";
        {
            let st = lock(&slot.state);
            let Some(l) = st.config.msix() else {
                return Err(PciError::Unsupported { bdf, what: "the device has no MSI-X capability" });
            };
            check_msix_entries(entries, l.table_size, MSIX_MAX_PER_REQUEST)?;
            if !st.msix_ports.is_empty() || st.config.msix_control().is_some_and(|c| c & space::MSIX_ENABLE != 0) {
                return Err(PciError::InvalidRequest { op, reason: "MSI-X is already enabled; disable it first" });
            }
            if st.config.msi_enabled_vectors().is_some() {
                return Err(PciError::InvalidRequest { op, reason: "MSI is enabled; disable it first" });
            }
            // xen-pciback refuses (ENXIO) while memory decoding is off: the
            // table lives in a memory BAR it must be able to write.
            if st.config.command() & COMMAND_MEMORY == 0 {
                return Err(PciError::InvalidRequest {
                    op,
                    reason: "memory decoding is off (command register bit 1); enable memory space before MSI-X",
                });
            }
        }
        let mut made = Vec::with_capacity(entries.len());
        for _ in entries {
            match self.loopback() {
                Ok(p) => made.push(p),
                Err(e) => {
                    self.close_ports(made);
                    return Err(e);
                }
            }
        }
        let mut st = lock(&slot.state);
        for (&e, p) in entries.iter().zip(&made) {
            if let Some(entry) = st.msix_table.get_mut(usize::from(e)) {
                *entry = [MSI_ADDRESS as u32, (MSI_ADDRESS >> 32) as u32, p.device.0, 0];
            }
            st.msix_ports.insert(e, *p);
        }
        st.config.set_msix_control(true, false);
        slot.deliver_unmasked(&mut st);
        Ok(made.iter().map(|p| p.driver).collect())
    }

    fn disable_msix(&self, bdf: Bdf) -> Result<(), PciError> {
        let slot = self.slot(bdf)?;
        let ports = {
            let mut st = lock(&slot.state);
            st.config.set_msix_control(false, false);
            for e in st.msix_table.iter_mut() {
                e[3] |= 1;
            }
            std::mem::take(&mut st.msix_ports)
        };
        self.close_ports(ports.into_values());
        Ok(())
    }

    fn alloc_dma_with(&self, c: DmaConstraints) -> Result<HostedDma, PciError> {
        let page = PAGE as u64;
        let oom = PciError::DmaOutOfMemory { len: c.len };
        // Alignment beyond a page: allocate enough to start aligned.
        let extra = (c.align as u64).saturating_sub(page) / page;
        let used = c.len.div_ceil(PAGE) as u64;
        let count = usize::try_from(used + extra).map_err(|_| oom.clone())?;
        let pages = self.inner.domain.alloc_zeroed_pages(count).map_err(|e| match e {
            PlatformError::OutOfMemory { .. } => oom.clone(),
            other => PciError::Platform(other),
        })?;
        let first = pages.first_gfn().0;
        let start = (first * page).next_multiple_of((c.align as u64).max(page)) / page;
        let bus = start * page;
        if !c.fits(bus) {
            log::warn!(
                "a DMA buffer of {} bytes landed at bus address {bus:#x}, above the mask {:#x}",
                c.len,
                c.addr_mask
            );
            return Err(PciError::DmaMaskUnsatisfiable { len: c.len, addr_mask: c.addr_mask });
        }
        let offset = usize::try_from((start - first) * page).map_err(|_| oom.clone())?;
        // SAFETY: `pages` maps `count` pages; `offset + len` lies inside
        // them (`start - first <= extra`, and `used` pages follow); the
        // mapping is page-aligned, lives in `_pages` as long as the
        // `MemDma`, and is reached only through volatile accesses (the
        // driver's, here) and the IOMMU's copies; bus address `bus` is
        // frame `start`, the same memory.
        let base = unsafe { NonNull::new_unchecked(pages.as_ptr().as_ptr().add(offset)) };
        // SAFETY: as above.
        let mem = unsafe { MemDma::new(base, c.len, bus) };
        self.inner.iommu.map(start, used);
        Ok(OwnedDma::new(mem, HostedDmaPages { iommu: self.inner.iommu.clone(), first_frame: start, _pages: pages }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmapped_pages_are_found() {
        let mut maps = BTreeMap::new();
        maps.insert(10, 2);
        maps.insert(12, 1);
        let p = PAGE as u64;
        assert_eq!(Iommu::unmapped(&maps, 10 * p, 3 * p), None);
        assert_eq!(Iommu::unmapped(&maps, 10 * p + 5, 3 * p - 5), None);
        assert_eq!(Iommu::unmapped(&maps, 10 * p, 3 * p + 1), Some(13 * p));
        assert_eq!(Iommu::unmapped(&maps, 9 * p + 4095, 2), Some(9 * p + 4095));
        assert_eq!(Iommu::unmapped(&maps, u64::MAX, 2), Some(u64::MAX));
        assert_eq!(Iommu::unmapped(&maps, 0, 0), None);
    }
}
