//! PCI passthrough for lightweight domains.
//!
//! A domain that owns a PCI device (passed through by the toolstack) drives
//! it itself: it reads and writes the device's configuration space, maps its
//! BARs, takes its interrupts as event channels and hands it DMA buffers.
//! This crate holds what every PCI driver needs for that, independent of
//! where it runs:
//!
//! - [`Bdf`]: a device's address (segment, bus, device, function);
//! - [`PciError`]: every way an operation can fail, with what to do;
//! - [`config`]: the [`ConfigAccess`] trait, the configuration header, BAR
//!   decoding and sizing, the capability walk, MSI and MSI-X capabilities.
//!   Configuration space is written by the device and by the backend that
//!   forwards it, so every value is checked before it is used;
//! - [`mmio`]: the [`Mmio`] trait (bounds- and alignment-checked register
//!   access to a mapped BAR) and [`MemMmio`], its volatile implementation;
//! - [`dma`]: the [`DmaBuffer`] trait (memory a device reads and writes, by
//!   bus address) and [`DmaConstraints`] (length, alignment, address mask);
//! - [`platform`]: [`PciPlatform`], the seam drivers are generic over
//!   (enumeration, configuration access, BAR mapping, MSI/MSI-X as event
//!   channels, DMA allocation). `lwdom` implements it on Xen through
//!   pcifront; a hosted implementation backs it with device models;
//! - [`pcifront`]: the PCI frontend of a PV domain ([`Pcifront`]): the
//!   xenbus handshake with xen-pciback, device enumeration, configuration
//!   access and MSI/MSI-X over the [`pciif`] protocol (`io/pciif.h`),
//!   with every reply of the backend checked;
//! - [`memconfig`]: an in-memory configuration space
//!   ([`memconfig::MemConfig`]) for tests, fuzzing and device models.
//!
//! A device interrupt is an event channel [`Port`](grant_tables::Port): a
//! driver polls it or blocks on it with
//! [`EventChannels`](grant_tables::EventChannels), like any other event.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod bdf;
pub mod config;
pub mod dma;
pub mod e1000e;
pub mod edu;
mod error;
pub mod memconfig;
pub mod mmio;
pub mod pcifront;
pub mod pciif;
pub mod platform;
mod spin;

pub use bdf::Bdf;
pub use config::{
    Bar, BarKind, Capability, ConfigAccess, ConfigHeader, ConfigReg, DeviceInfo, ExtCapability,
    MsiCap, MsixCap, Width,
};
pub use dma::{DmaBuffer, DmaConstraints, MemDma, OwnedDma};
pub use error::{BackendErr, PciError};
pub use mmio::{MemMmio, Mmio};
pub use pcifront::{Pcifront, PcifrontConfig, Pirq};
pub use platform::PciPlatform;
