//! Xen network frontend for lightweight domains: the netif protocol layer.
//!
//! This crate speaks Xen's netif protocol (`public/io/netif.h`) as Linux
//! 6.1's xen-netback speaks it. What exists today is the protocol layer, as
//! pure logic with no platform, ring or grant-table calls, so that it is
//! tested (and fuzzed) on its own and the driver is assembled on it:
//!
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
//! # Not here yet: the driver
//! The next step assembles the driver on this layer and on the driver core
//! of `grant-tables` and `xenbus` (granted rings, the persistent-grant buffer
//! pool, the per-connection handshake, the platform's clock and many-port
//! wait). It will add:
//! - the frontend itself: per-queue TX and RX rings, event channels (split
//!   or shared), the xenbus handshake writing [`features::frontend_keys`],
//!   reconnect after a backend restart (posted buffers and in-flight packets
//!   completed or failed, no grant leaked), polling, event-driven and
//!   adaptive modes, notifying only when the ring asks for it (XSA-391);
//! - zero-copy buffers: TX frames written in place into pooled, persistently
//!   granted pages, RX frames lent to the application in place and
//!   reposted without re-granting, payload-only pages for an untrusted
//!   backend (XSA-403);
//! - the frame-device interface shared with the passed-through NIC (lend a
//!   TX buffer, receive frames lent in place, poll or wait);
//! - a smoltcp `phy::Device` on that interface (feature `smoltcp`).
#![no_std]

extern crate alloc;

pub mod abi;
pub mod csum;
pub mod features;
mod inline;
pub mod rx;
pub mod tx;

pub use inline::InlineVec;

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests;
