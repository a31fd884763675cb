//! Xen network frontend for lightweight domains.
//!
//! This crate speaks Xen's netif protocol (`public/io/netif.h`) as Linux
//! 6.1's xen-netback speaks it, `no_std` + `alloc`, generic over the
//! platform ([`grant_tables::Platform`]) and the xenstore transport
//! ([`xenbus::Transport`]).
//!
//! # Using it
//! ```text
//! let xs = Xenstore::new(transport);                 // the domain's xenstore
//! let mut dev = NetfrontDevice::new(platform, xs, "device/vif/0", DriverConfig::default());
//! dev.wait_up(5_000_000_000)?;                       // handshake, negotiation
//! let mut tx = dev.tx_buffer(len)?.unwrap();         // a granted page, lent
//! tx.as_mut_slice().unwrap().copy_from_slice(frame); // written in place
//! dev.send(tx)?;                                     // its ref on the ring
//! while let Some(rx) = dev.receive()? {              // frames lent in place
//!     handle(rx.as_slice());                         // dropped: page recycled
//! }
//! dev.wait(Some(timeout_ns))?;                       // poll, event or adaptive
//! ```
//! or hand the device to smoltcp: `phy::SmolDevice::new(dev)`.
//!
//! # The driver
//! - [`NetfrontDevice`] (`driver`): the xenbus handshake
//!   ([`xenbus::ConnectStyle::ConnectedAtOnce`], as netback attaches only
//!   to a Connected frontend) around a [`Netfront`], as one
//!   [`FrameDevice`]. Its poll drives the handshake too, so after a backend
//!   restart the link comes back by itself.
//! - [`Netfront`] ([`nic`]): one vif's connections. Setting one up
//!   negotiates, grants a TX and an RX pool of pages once for the
//!   connection's life (zeroed, payload-only pages for an untrusted
//!   backend, XSA-403), makes each queue's rings and event channels and
//!   posts the RX ring full. Sends go zero-copy from the TX pool (SG
//!   chains, checksum and GSO offloads), completions recycle the pages
//!   after validation, received frames are lent in place (chains for
//!   multi-slot frames, partial checksums completed in place) and recycled
//!   when dropped, without granting again. Notifications go only where the
//!   ring asks (XSA-391); any protocol violation marks the device broken
//!   with a [`NetError`], never a panic. Implements [`xenbus::Device`].
//!   What a reconnection does to frames in flight (they fail, they are not
//!   re-sent) is in [`nic`].
//! - [`frame`]: the frame-device interface ([`FrameDevice`], [`TxFrame`],
//!   [`RxFrame`]) shared with a passed-through NIC and the hosted test
//!   link; [`buffers`]: netfront's buffers for it ([`TxBuf`],
//!   [`NetRxFrame`]).
//! - `phy` (feature `smoltcp`, default): a smoltcp `phy::Device` over any
//!   [`FrameDevice`], lending the device's buffers to smoltcp's tokens.
//! - `testing` (feature `testing`): an in-process test backend that plays
//!   netback on any platform with the backend seam, with hooks for hostile
//!   tests.
//!
//! # The protocol layer
//! Pure logic with no platform, ring or grant-table calls, tested and
//! fuzzed on its own:
//! - [`abi`]: the wire types (`netif_tx_request`, `netif_tx_response`,
//!   `netif_rx_request`, `netif_rx_response`, `netif_extra_info` and its
//!   union members) as zerocopy structs, the flag, extra-type, GSO-type and
//!   status constants, and the two slot shapes of each ring; layouts checked
//!   against Xen's header by `tests/abi_layout.rs`.
//! - [`features`]: negotiation. Strict parsing of the backend's feature keys
//!   and of the toolstack's `mac`, `trusted` and `mtu`; the frontend's choice
//!   given the application's [`features::NetConfig`]; the keys the frontend
//!   writes for its queues.
//! - [`tx`]: a frame (pieces in granted pages) laid out in ring slots under
//!   every rule netback enforces, TX ids from a slab below the ring size,
//!   and validation of TX responses against what is in flight.
//! - [`rx`]: the slab of posted RX buffers, how many to keep posted, the
//!   parser of RX response chains (multi-slot frames, extra-info chains,
//!   the XDP headroom exactly as netback lays it out), and the check that
//!   the backend's producer index never moves backwards.
//! - [`csum`]: completing the partial TCP/UDP checksum of a received frame,
//!   as Linux's `skb_checksum_setup` and `skb_checksum_help` do.
//!
//! Every input written by the backend (feature keys, response slots,
//! producer indices) is treated as hostile: it is read once, validated, and
//! a violation is a typed error (`TxViolation`, `RxViolation`,
//! `ProdViolation`, `FeatureError`) whose message says what the backend did;
//! the driver then marks the device broken. Nothing here panics on peer
//! data.
//!
//! # Not done
//! - No control ring (hashing, multicast control): never negotiated.
//! - TX frames are spread over queues by a hash of their IPv4 addresses and
//!   ports (or the application's choice); there is no XPS-like CPU mapping.
//! - smoltcp gets one slice per frame: frames larger than a page go through
//!   a heap copy in `phy` (never with the default MTU of 1500).
#![no_std]

extern crate alloc;

pub mod abi;
pub mod buffers;
pub mod csum;
mod driver;
mod error;
pub mod features;
pub mod frame;
mod inline;
pub mod nic;
#[cfg(feature = "smoltcp")]
pub mod phy;
mod queue;
pub mod rx;
mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tx;

pub use buffers::{NetRxFrame, RxMeta, TxBuf};
pub use driver::{NetfrontDevice, DEFAULT_HANDSHAKE_INTERVAL_NS, RECEIVES_PER_CLOCK};
pub use error::{NetError, RingKind};
pub use frame::{FrameDevice, FrameError, LinkInfo, RxFrame, TxFrame};
pub use inline::InlineVec;
pub use nic::{DriverConfig, Netfront, WaitMode};
pub use stats::NetStats;

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests;
