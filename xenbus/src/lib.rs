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
//!
//! # Example: a device frontend
//! ```no_run
//! use core::time::Duration;
//! use xenbus::{ConnectStyle, Frontend, FrontendConfig, HandshakeEvent, Transport, Xenstore};
//!
//! fn bring_up<T: Transport>(
//!     xs: &mut Xenstore<T>,
//!     clock: &mut dyn FnMut() -> Duration,
//! ) -> Result<(), xenbus::HandshakeError> {
//!     let mut fe = Frontend::new(FrontendConfig::new("device/vif/0", ConnectStyle::ConnectedAtOnce));
//!     // Grant the rings to the backend and allocate the event channel
//!     // (once per backend), then publish them; the handshake writes the
//!     // state in the same transaction.
//!     let info = fe.run_until_connected(xs, clock, |tx, be| {
//!         tx.write(&be.frontend_key("tx-ring-ref"), "8")?;
//!         tx.write(&be.frontend_key("rx-ring-ref"), "9")?;
//!         tx.write(&be.frontend_key("event-channel"), "3")?;
//!         Ok(())
//!     })?;
//!     let _ = info.backend_id;
//!     // Then, in the device's loop: a backend that goes away is reported
//!     // and the handshake reconnects by itself.
//!     loop {
//!         match fe.poll(xs, clock(), |tx, be| tx.write(&be.frontend_key("tx-ring-ref"), "8").map_err(Into::into))? {
//!             HandshakeEvent::Disconnected(_) => { /* stop I/O, end the grants */ }
//!             HandshakeEvent::Connected(_) => { /* restart I/O */ }
//!             HandshakeEvent::Removed | HandshakeEvent::Closed => return Ok(()),
//!             HandshakeEvent::Idle => { /* serve the rings */ }
//!         }
//!     }
//! }
//! ```
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
    Backend, BackendConfig, BackendDevice, BackendEvent, BackendPhase, ConnectWhen, FrontendInfo,
    FrontendLoss,
};
pub use client::{Transaction, TxId, WatchEvent, Xenstore, XsError};
pub use frontend::{
    BackendInfo, ConnectStyle, DisconnectReason, Frontend, FrontendConfig, HandshakeError,
    HandshakeEvent, Phase, PublishError,
};
pub use path::{Perm, PermAccess};
pub use ring::{EvtchnSignal, OwnedEvtchnSignal, RingSignal, Side, StoreRing};
pub use state::XenbusState;
pub use transport::{Transport, TransportError, Wait};
pub use wire::{Decoder, Errno, Message, MsgType, UnknownErrno, WireError};
