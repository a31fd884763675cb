//! The seam PCI drivers are generic over.
//!
//! A driver never maps memory or makes a hypercall itself: it asks a
//! [`PciPlatform`] for configuration access, BAR mappings, interrupts and
//! DMA buffers. `lwdom` implements it on Xen (pcifront for configuration
//! and MSI, `mmu_update` for BARs, machine-contiguous memory for DMA);
//! a hosted implementation backs it with device models in the host
//! process, so the drivers' logic is tested without Xen.

use alloc::vec::Vec;

use grant_tables::{Clock, EventChannels, Port};

use crate::config::{Bar, ConfigAccess};
use crate::dma::{DmaBuffer, DmaConstraints};
use crate::mmio::Mmio;
use crate::{Bdf, PciError};

/// Everything a PCI driver needs from the domain it runs in.
///
/// Interrupts are event channels: [`PciPlatform::enable_msi`] and
/// [`PciPlatform::enable_msix`] return ports that the driver polls or
/// blocks on with [`EventChannels`], and times out with [`Clock`].
pub trait PciPlatform: EventChannels + Clock {
    /// Configuration space access.
    type Config: ConfigAccess;
    /// A mapped BAR.
    type Mmio: Mmio;
    /// A DMA buffer; freed (returned to the platform) on drop.
    type Dma: DmaBuffer;

    /// The PCI functions passed through to this domain.
    fn devices(&self) -> Result<Vec<Bdf>, PciError>;

    /// Configuration space of the devices in [`PciPlatform::devices`].
    fn config(&self) -> &Self::Config;

    /// Maps a memory BAR (as decoded by
    /// [`read_bars`](crate::config::read_bars)) for register access. Fails
    /// for I/O BARs, unassigned BARs (address 0), and BARs the domain is not
    /// permitted to map. The mapping covers exactly `bar.size` bytes.
    fn map_bar(&self, bdf: Bdf, bar: &Bar) -> Result<Self::Mmio, PciError>;

    /// Enables MSI (one vector) and returns the event channel its
    /// interrupt arrives on. The driver sets bus mastering itself.
    fn enable_msi(&self, bdf: Bdf) -> Result<Port, PciError>;

    /// Disables MSI and closes its event channel.
    fn disable_msi(&self, bdf: Bdf) -> Result<(), PciError>;

    /// Enables MSI-X for the table entries in `entries` (distinct, each
    /// below the table size) and returns one event channel per entry, in
    /// the same order.
    fn enable_msix(&self, bdf: Bdf, entries: &[u16]) -> Result<Vec<Port>, PciError>;

    /// Disables MSI-X and closes its event channels.
    fn disable_msix(&self, bdf: Bdf) -> Result<(), PciError>;

    /// Allocates a zeroed, machine-contiguous DMA buffer meeting the
    /// constraints (see [`DmaConstraints`]); fails with
    /// [`PciError::DmaMaskUnsatisfiable`] when no memory below the mask
    /// can be found.
    fn alloc_dma_with(&self, constraints: DmaConstraints) -> Result<Self::Dma, PciError>;

    /// Allocates a zeroed, machine-contiguous DMA buffer of `len` bytes at a
    /// bus address aligned to `align`, every byte of it at or below
    /// `addr_mask` (the device's DMA mask, `2^n - 1`).
    fn alloc_dma(&self, len: usize, align: usize, addr_mask: u64) -> Result<Self::Dma, PciError> {
        self.alloc_dma_with(DmaConstraints::new(len, align, addr_mask)?)
    }
}

/// A shared reference to a platform is a platform: a driver can be lent
/// the domain's PCI platform while its owner keeps it (to read the pirqs
/// of the vectors it enabled, say).
impl<P: PciPlatform> PciPlatform for &P {
    type Config = P::Config;
    type Mmio = P::Mmio;
    type Dma = P::Dma;

    fn devices(&self) -> Result<Vec<Bdf>, PciError> {
        (**self).devices()
    }
    fn config(&self) -> &Self::Config {
        (**self).config()
    }
    fn map_bar(&self, bdf: Bdf, bar: &Bar) -> Result<Self::Mmio, PciError> {
        (**self).map_bar(bdf, bar)
    }
    fn enable_msi(&self, bdf: Bdf) -> Result<Port, PciError> {
        (**self).enable_msi(bdf)
    }
    fn disable_msi(&self, bdf: Bdf) -> Result<(), PciError> {
        (**self).disable_msi(bdf)
    }
    fn enable_msix(&self, bdf: Bdf, entries: &[u16]) -> Result<Vec<Port>, PciError> {
        (**self).enable_msix(bdf, entries)
    }
    fn disable_msix(&self, bdf: Bdf) -> Result<(), PciError> {
        (**self).disable_msix(bdf)
    }
    fn alloc_dma_with(&self, constraints: DmaConstraints) -> Result<Self::Dma, PciError> {
        (**self).alloc_dma_with(constraints)
    }
}

/// Checks the `entries` argument of [`PciPlatform::enable_msix`]: at
/// least one entry, no duplicates, each below `table_size`, and at most
/// `max` of them (pcifront carries 128). Implementations call this first.
pub fn check_msix_entries(entries: &[u16], table_size: u16, max: usize) -> Result<(), PciError> {
    let op = "enable_msix";
    if entries.is_empty() {
        return Err(PciError::InvalidRequest {
            op,
            reason: "ask for at least one MSI-X entry",
        });
    }
    if entries.len() > max {
        return Err(PciError::InvalidRequest {
            op,
            reason: "too many MSI-X entries for one request",
        });
    }
    for (i, e) in entries.iter().enumerate() {
        if *e >= table_size {
            return Err(PciError::InvalidRequest {
                op,
                reason: "an MSI-X entry is not below the device's table size",
            });
        }
        if entries[..i].contains(e) {
            return Err(PciError::InvalidRequest {
                op,
                reason: "an MSI-X entry is listed twice",
            });
        }
    }
    Ok(())
}
