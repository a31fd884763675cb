//! Xenstore client and the xenbus frontend handshake.
//!
//! **Not implemented yet.** This crate will hold the xenstore wire protocol
//! (`io/xs_wire.h`) over any byte transport (a Unix socket on the hosted
//! platform, the shared store ring page in a guest), watches, transactions
//! with retry, and the XenbusState handshake every device uses.
#![no_std]
