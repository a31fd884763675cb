//! The lightweight domain: a minimal x86-64 PV guest runtime.
//!
//! **Not implemented yet.** This crate will hold a `no_std` PV guest
//! runtime (Xen ELF notes, entry point, hypercall page, start_info, console
//! ring, event channels, page allocator, grant table frames, a xenstore
//! transport over the store ring) implementing the platform traits of
//! `grant-tables` with hypercalls.
#![no_std]
