//! A driver for the Intel 82574L Gigabit Ethernet controller, as QEMU 7.2's
//! `e1000e` device models it, passed through to the domain: the domain
//! drives the NIC itself, with no other domain on its data path.
//!
//! # What it does
//! - **Bring-up** ([`E1000e::new`]): checks the device's identity and BAR
//!   0, enables memory decoding and bus mastering, maps the registers,
//!   resets the device (`CTRL.RST`, a bounded wait for it to clear,
//!   interrupts masked and their causes cleared), reads the MAC address
//!   from receive address 0 (or, when that is not valid, from EEPROM words
//!   0-2 through `EERD`), sets the link up (`CTRL.SLU`, auto-negotiated
//!   speed) and waits a bounded time for `STATUS.LU`.
//! - **Rings in DMA memory** (`PciPlatform::alloc_dma`, within the
//!   device's address mask): one RX and one TX ring of 16-byte descriptors,
//!   frame buffers of 2048 bytes, two per DMA page. Every RX buffer is
//!   posted at bring-up and re-posted when the frame lent in it is dropped.
//!   RX uses extended descriptors, TX legacy descriptors, or a context and
//!   a data descriptor for checksum offload: [`desc`] says why.
//! - **Interrupts**: MSI-X with one vector each for RX queue 0, TX queue 0
//!   and the other causes (link changes), mapped through `IVAR`; `EIAC`
//!   clears the queue causes from `ICR` when their message is sent, and
//!   the driver re-enables the vectors (`IMS`) before it sleeps, so that an
//!   interrupt is never lost between its last look and the sleep. Each
//!   vector is an event channel ([`E1000e::ports`]). The driver does not
//!   use the 82574's auto-mask (`CTRL_EXT.EIAME` with `IAM`): QEMU 7.2
//!   clears `IAM` rather than `IMS` there, and re-arming `IMS` itself works
//!   whether or not a device auto-masks. In
//!   [`IrqMode::Polling`] every interrupt is masked and `wait` polls the
//!   rings; the mode can change at any time ([`E1000e::set_mode`]).
//! - **Checksum offload**: RX (`RXCSUM` IPv4 and TCP/UDP) gives each
//!   frame the device's verdicts ([`E1000eRxFrame::checksum`]); TX inserts
//!   the IPv4 header and TCP/UDP checksums a frame asks for
//!   ([`E1000eTxFrame::set_checksum`]). The smoltcp adaptor computes its
//!   own checksums and asks for neither.
//! - **Frames lent in place**: [`E1000e`] implements netfront's
//!   [`FrameDevice`](netfront::frame::FrameDevice), so smoltcp (through
//!   `netfront::phy::SmolDevice`) runs over it unchanged. See [`frames`].
//!
//! # A hostile device
//! Everything the device writes (descriptor write-backs, head registers,
//! register values) is checked against the driver's own state
//! ([`ring`], [`desc::parse_rx`]): an impossible length, a write-back
//! without end-of-packet, contradictory status bits, a done bit on a
//! descriptor never posted, or a head register outside the posted part of
//! its ring breaks the device: it is disabled (interrupts masked, receiver
//! and transmitter off, bus mastering off) and every later call returns
//! [`FrameError::Broken`](netfront::frame::FrameError::Broken) with the
//! reason. No loop runs longer than a ring's size or a timeout of the
//! platform's clock.
//!
//! # Not done
//! - One queue each way (the 82574 has two); no RSS, no TSO, no VLAN
//!   offload, no jumbo frames (frames up to 1514 bytes).
//! - No interrupt moderation settings beyond the device's defaults.
//! - A broken device stays broken; recovering needs a new [`E1000e`]
//!   (which resets the device).

pub mod desc;
mod driver;
pub mod frames;
pub mod regs;
pub mod ring;

pub use desc::{DescError, RxChecksum, TxChecksum};
pub use driver::{
    Config, E1000e, E1000eError, IrqMode, Stats, MAX_FRAME, MSIX_OTHER, MSIX_RX, MSIX_TX,
};
pub use frames::{E1000eRxFrame, E1000eTxFrame};
