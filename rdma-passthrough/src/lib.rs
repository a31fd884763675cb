//! RDMA verbs for lightweight domains.
//!
//! **Not implemented yet.** This crate will hold an RDMA verbs layer that
//! lets a domain drive an RDMA-capable device it owns directly. The PCI
//! passthrough layer it builds on (pcifront, configuration space, BARs,
//! MSI/MSI-X, DMA buffers) lives in the `passthrough` crate. Nothing here
//! is functional today.
#![no_std]
