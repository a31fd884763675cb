//! Xen block frontend for lightweight domains.
//!
//! **Not implemented yet.** This crate will hold the blkif protocol
//! (`io/blkif.h`: read/write/flush/discard, indirect segments, persistent
//! grants, multi-queue), the block frontend, and the application-controlled
//! APEX-like I/O scheduler (service classes, bandwidth reservations,
//! deadlines, batch building, work conservation). It builds on
//! `grant-tables` and `xenbus`. Nothing here is functional today.
#![no_std]
