//! Xenstore client and the xenbus frontend handshake.
//!
//! - [`wire`]: the `xs_wire.h` protocol: message types, errno names,
//!   limits, and a streaming [`wire::Decoder`] that never panics;
//! - [`path`]: path rules and node permissions, shared with daemons;
//! - [`transport`]: the byte [`Transport`] a client talks through;
//! - [`ring`]: the shared store ring page (`xenstore_domain_interface`) as a
//!   transport, safe against a hostile peer;
//! - [`client`]: the [`Xenstore`] client (read, write, directory, perms,
//!   watches with queued events, transactions with retry, domains);
//! - [`state`]: [`XenbusState`], parsed strictly;
//! - [`frontend`]: the handshake every device's frontend runs, as a
//!   poll-driven state machine ([`Frontend`]);
//! - [`backend`]: its mirror for backends written with this suite
//!   ([`Backend`]).
#![no_std]

extern crate alloc;

pub mod backend;
pub mod client;
pub mod frontend;
pub mod path;
pub mod ring;
pub mod state;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

pub use backend::{
    Backend, BackendConfig, BackendDevice, BackendEvent, BackendPhase, ConnectWhen, FrontendInfo, FrontendLoss,
};
pub use client::{Transaction, TxId, WatchEvent, XsError, Xenstore};
pub use frontend::{
    BackendInfo, ConnectStyle, DisconnectReason, Frontend, FrontendConfig, HandshakeError, HandshakeEvent, Phase,
    PublishError,
};
pub use path::{Perm, PermAccess};
pub use ring::{RingSignal, Side, StoreRing};
pub use state::XenbusState;
pub use transport::{Transport, TransportError, Wait};
pub use wire::{Decoder, Errno, Message, MsgType, WireError};
