//! `passthrough`'s [`PciPlatform`] on Xen: [`LwPci`].
//!
//! Configuration space and MSI/MSI-X go through pcifront
//! ([`passthrough::Pcifront`], connected to dom0's xen-pciback at
//! `device/pci/0`); BARs, DMA memory and pirqs are `rt::pci`'s. A pirq
//! that needs an end-of-interrupt gets it when its event is taken, so a
//! driver just polls or blocks on the port.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::ptr::NonNull;
use core::time::Duration;

use grant_tables::{Clock, DomId, EventChannels, PlatformError, Port};
use passthrough::config::DeviceInfo;
use passthrough::platform::check_msix_entries;
use passthrough::{
    Bar, Bdf, DmaConstraints, MemDma, MemMmio, Mmio, OwnedDma, PciError, PciPlatform, Pcifront,
    PcifrontConfig,
};
use xenbus::{
    ConnectStyle, Connection, Frontend, FrontendConfig, HandshakeEvent, Transport, Xenstore,
};

use super::pci::{alloc_dma, bind_pirq, map_mmio, DmaPages, MmioMapping, PirqBinding};
use super::platform::Lw;
use super::{events, time};

/// The xenstore directory of the domain's one PCI frontend.
pub const PCIFRONT_DIR: &str = "device/pci/0";

/// A mapped BAR: the window pages stay mapped while it lives.
#[derive(Debug)]
pub struct LwMmio {
    mem: MemMmio,
    _map: MmioMapping,
}

impl Mmio for LwMmio {
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn read8(&self, offset: usize) -> Result<u8, PciError> {
        self.mem.read8(offset)
    }
    fn read16(&self, offset: usize) -> Result<u16, PciError> {
        self.mem.read16(offset)
    }
    fn read32(&self, offset: usize) -> Result<u32, PciError> {
        self.mem.read32(offset)
    }
    fn read64(&self, offset: usize) -> Result<u64, PciError> {
        self.mem.read64(offset)
    }
    fn write8(&self, offset: usize, value: u8) -> Result<(), PciError> {
        self.mem.write8(offset, value)
    }
    fn write16(&self, offset: usize, value: u16) -> Result<(), PciError> {
        self.mem.write16(offset, value)
    }
    fn write32(&self, offset: usize, value: u32) -> Result<(), PciError> {
        self.mem.write32(offset, value)
    }
    fn write64(&self, offset: usize, value: u64) -> Result<(), PciError> {
        self.mem.write64(offset, value)
    }
}

/// A DMA buffer: pool pages, machine-contiguous below the device's mask,
/// lent to drivers in place (frames received and sent without a copy).
pub type LwDma = OwnedDma<DmaPages>;

/// The PCI devices passed through to this domain.
pub struct LwPci {
    front: Pcifront<Lw>,
    handshake: Frontend,
    connection: Connection,
    /// Per device, its MSI or MSI-X pirqs bound to event channels. One vCPU
    /// and no upcalls: never borrowed twice (see `rt`).
    irqs: RefCell<Vec<(Bdf, Vec<PirqBinding>)>>,
}

impl core::fmt::Debug for LwPci {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LwPci")
            .field("front", &self.front)
            .finish_non_exhaustive()
    }
}

fn platform_error(e: PlatformError) -> PciError {
    PciError::Platform(e)
}

impl LwPci {
    /// Connects pcifront to the backend (xenbus handshake at
    /// [`PCIFRONT_DIR`], each step bounded by `step_timeout`) and reads the
    /// devices it exports.
    pub fn connect<T: Transport>(
        xs: &mut Xenstore<T>,
        step_timeout: Duration,
    ) -> Result<LwPci, PciError> {
        let mut cfg = FrontendConfig::new(PCIFRONT_DIR, ConnectStyle::InitialisedFirst);
        cfg.step_timeout = step_timeout;
        let mut handshake = Frontend::new(cfg);
        let mut front = Pcifront::new(Arc::new(Lw), PcifrontConfig::default());
        let mut clock = || Duration::from_nanos(time::now_ns());
        let connection = handshake
            .run_until_connected(xs, &mut clock, &mut front)
            .map_err(|e| PciError::Xenbus {
                key: alloc::format!("{PCIFRONT_DIR}/state"),
                reason: alloc::format!("the pcifront handshake with xen-pciback failed: {e}"),
            })?;
        front.read_devices(xs, &connection)?;
        Ok(LwPci {
            front,
            handshake,
            connection,
            irqs: RefCell::new(Vec::new()),
        })
    }

    /// Closes pcifront: writes Closing and waits (at most `timeout`) for
    /// the backend to close, so that it unmaps the shared page before the
    /// page's grant ends. MSI/MSI-X bindings are dropped first.
    pub fn close_front<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        timeout: Duration,
    ) -> Result<(), PciError> {
        self.irqs.borrow_mut().clear();
        let now = || Duration::from_nanos(time::now_ns());
        let err = |e: xenbus::HandshakeError| PciError::Xenbus {
            key: alloc::format!("{PCIFRONT_DIR}/state"),
            reason: alloc::format!("closing pcifront: {e}"),
        };
        self.handshake.close(xs, now()).map_err(err)?;
        let until = now().saturating_add(timeout);
        loop {
            match self
                .handshake
                .poll(xs, now(), &mut self.front)
                .map_err(err)?
            {
                HandshakeEvent::Closed | HandshakeEvent::Removed => return Ok(()),
                _ if now() > until => {
                    return Err(PciError::Timeout {
                        op: "closing pcifront",
                        waited_ns: timeout.as_nanos() as u64,
                    });
                }
                _ => super::sleep_ns(20_000_000),
            }
        }
    }

    /// The frontend.
    pub fn front(&self) -> &Pcifront<Lw> {
        &self.front
    }

    /// The xenbus handshake (to close the device or follow the backend).
    pub fn handshake(&mut self) -> (&mut Frontend, &mut Pcifront<Lw>) {
        (&mut self.handshake, &mut self.front)
    }

    /// The connection the devices were read from.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The pirqs bound for `bdf` (MSI: one; MSI-X: one per entry).
    pub fn pirqs(&self, bdf: Bdf) -> Vec<(u32, Port, bool)> {
        self.irqs
            .borrow()
            .iter()
            .filter(|(b, _)| *b == bdf)
            .flat_map(|(_, v)| v.iter().map(|p| (p.pirq(), p.port(), p.needs_eoi())))
            .collect()
    }

    fn check_device(&self, bdf: Bdf) -> Result<(), PciError> {
        if self.front.devices().contains(&bdf) {
            Ok(())
        } else {
            Err(PciError::InvalidRequest {
                op: "pci",
                reason: "the device is not one pcifront exports to this domain",
            })
        }
    }

    fn bind_all(&self, bdf: Bdf, pirqs: &[u32]) -> Result<Vec<Port>, PciError> {
        let mut bound = Vec::with_capacity(pirqs.len());
        for &p in pirqs {
            // A failure drops (closes) what was bound so far.
            bound.push(bind_pirq(p).map_err(platform_error)?);
        }
        let ports = bound.iter().map(PirqBinding::port).collect();
        self.irqs.borrow_mut().push((bdf, bound));
        Ok(ports)
    }

    fn unbind(&self, bdf: Bdf) {
        self.irqs.borrow_mut().retain(|(b, _)| *b != bdf);
    }
}

impl EventChannels for LwPci {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError> {
        events::alloc_unbound(remote)
    }
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
        events::bind_interdomain(remote, remote_port)
    }
    fn notify(&self, port: Port) -> Result<(), PlatformError> {
        events::notify(port)
    }
    fn mask(&self, port: Port) -> Result<(), PlatformError> {
        events::mask(port)
    }
    fn unmask(&self, port: Port) -> Result<(), PlatformError> {
        events::unmask(port)
    }
    fn poll(&self, port: Port) -> Result<bool, PlatformError> {
        events::poll(port)
    }
    fn block(&self, port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError> {
        events::block(port, timeout_ns)
    }
    fn block_any(
        &self,
        ports: &[Port],
        timeout_ns: Option<u64>,
    ) -> Result<Option<Port>, PlatformError> {
        events::block_any(ports, timeout_ns)
    }
    fn close(&self, port: Port) -> Result<(), PlatformError> {
        events::close(port)
    }
}

impl Clock for LwPci {
    fn now_ns(&self) -> u64 {
        time::now_ns()
    }
}

impl PciPlatform for LwPci {
    type Config = Pcifront<Lw>;
    type Mmio = LwMmio;
    type Dma = LwDma;

    fn devices(&self) -> Result<Vec<Bdf>, PciError> {
        Ok(self.front.devices().to_vec())
    }

    fn config(&self) -> &Pcifront<Lw> {
        &self.front
    }

    /// Maps the BAR's frames uncached (`rt::pci::map_mmio`); Xen refuses
    /// frames the toolstack did not permit (`Platform(Os { code: -1 })`).
    fn map_bar(&self, bdf: Bdf, bar: &Bar) -> Result<LwMmio, PciError> {
        self.check_device(bdf)?;
        if !bar.is_memory() {
            return Err(PciError::Unsupported {
                bdf,
                what: "an I/O BAR (only memory BARs are mapped)",
            });
        }
        if bar.address == 0 || bar.size == 0 {
            return Err(PciError::BadConfig {
                bdf,
                offset: bar.offset(),
                reason: "the BAR is not assigned (address or size 0)",
            });
        }
        let map = map_mmio(bar.address, bar.size).map_err(platform_error)?;
        let len = map.len();
        // SAFETY: `map` keeps `len` bytes of device memory mapped at
        // `map.ptr()` for as long as it lives, and the `LwMmio` holds it.
        let mem = unsafe { MemMmio::new(map.ptr(), len) };
        Ok(LwMmio { mem, _map: map })
    }

    fn enable_msi(&self, bdf: Bdf) -> Result<Port, PciError> {
        self.check_device(bdf)?;
        let pirq = self.front.enable_msi(bdf)?;
        match self.bind_all(bdf, &[pirq.0]) {
            Ok(ports) => ports.first().copied().ok_or(PciError::BadResponse {
                op: "enable_msi",
                reason: "no pirq",
            }),
            Err(e) => {
                if let Err(d) = self.front.disable_msi(bdf) {
                    log::warn!("{bdf}: disabling MSI after a failed bind: {d}");
                }
                Err(e)
            }
        }
    }

    fn disable_msi(&self, bdf: Bdf) -> Result<(), PciError> {
        self.check_device(bdf)?;
        self.unbind(bdf);
        self.front.disable_msi(bdf)
    }

    fn enable_msix(&self, bdf: Bdf, entries: &[u16]) -> Result<Vec<Port>, PciError> {
        self.check_device(bdf)?;
        let info = DeviceInfo::probe(&self.front, bdf)?;
        let cap = info.msix.ok_or(PciError::Unsupported {
            bdf,
            what: "no MSI-X capability",
        })?;
        check_msix_entries(entries, cap.table_size, 128)?;
        let pirqs = self.front.enable_msix(bdf, entries)?;
        let pirqs: Vec<u32> = pirqs.iter().map(|p| p.0).collect();
        self.bind_all(bdf, &pirqs).inspect_err(|_| {
            if let Err(d) = self.front.disable_msix(bdf) {
                log::warn!("{bdf}: disabling MSI-X after a failed bind: {d}");
            }
        })
    }

    fn disable_msix(&self, bdf: Bdf) -> Result<(), PciError> {
        self.check_device(bdf)?;
        self.unbind(bdf);
        self.front.disable_msix(bdf)
    }

    /// Pool pages exchanged with Xen for a naturally aligned,
    /// machine-contiguous extent below the mask (`rt::pci::alloc_dma`):
    /// a power of two of pages of at least `len` and `align` bytes.
    fn alloc_dma_with(&self, c: DmaConstraints) -> Result<LwDma, PciError> {
        let bytes = c.len.max(c.align);
        let pages = alloc_dma(bytes, c.addr_mask).map_err(|e| match e {
            PlatformError::OutOfMemory { .. } => PciError::DmaOutOfMemory { len: c.len },
            // Xen has no free memory below the mask (-ENOMEM), or the mask
            // is too narrow for the size.
            PlatformError::Os { code: -12, .. } | PlatformError::InvalidRequest { .. } => {
                PciError::DmaMaskUnsatisfiable {
                    len: c.len,
                    addr_mask: c.addr_mask,
                }
            }
            e => PciError::Platform(e),
        })?;
        let bus = pages.bus_address();
        if !c.fits(bus) {
            return Err(PciError::DmaMaskUnsatisfiable {
                len: c.len,
                addr_mask: c.addr_mask,
            });
        }
        let base: NonNull<u8> = pages.ptr();
        // SAFETY: `pages` keeps at least `c.len` bytes (a power of two of
        // whole pages of at least `len` bytes) mapped at `base`,
        // page-aligned, for as long as it lives, and the `LwDma` holds it.
        let mem = unsafe { MemDma::new(base, c.len, bus) };
        Ok(OwnedDma::new(mem, pages))
    }
}
