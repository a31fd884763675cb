//! The hosted platform: Xen's interfaces for Linux processes.
//!
//! **Not implemented yet.** This crate will implement the platform traits of
//! `grant-tables` for Linux processes (memfd-backed shareable memory, grant
//! tables in Xen's v1 layout in shared memory, event channels with a shared
//! pending bit and an eventfd), a xenstore daemon speaking `xs_wire` over a
//! Unix socket, and the backends tests and benches run against.
