//! Xen network frontend for lightweight domains.
//!
//! **Not implemented yet.** This crate will hold the netif protocol
//! (`io/netif.h`: tx/rx requests and responses, extra info slots, multi-queue),
//! the network frontend driving a `BackRing` peer (Linux's `xen-netback` on
//! real Xen, the `hosted` netback in tests), and a smoltcp `phy::Device`.
//! It builds on `grant-tables` (grants, shared rings, platform traits) and
//! `xenbus` (the frontend handshake). Nothing here is functional today.
#![no_std]
