//! PCI passthrough and RDMA verbs for lightweight domains.
//!
//! **Not implemented yet.** This crate will hold the pcifront protocol
//! (`io/pciif.h`), PCI configuration space access, BAR mapping, MSI/MSI-X
//! set-up and DMA addressing, and an RDMA verbs layer on top that lets the
//! domain drive an RDMA-capable device directly. Nothing here is functional
//! today.
#![no_std]
