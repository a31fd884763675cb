//! Xenstore client and the xenbus handshake (frontend and backend ends).
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
//! - [`handshake`]: the handshake as one protocol seen from two ends: the
//!   [`Device`] trait a driver implements on either end, [`Connection`],
//!   events, errors, and the rule that keeps a restarted backend off the
//!   rings of an earlier connection;
//! - [`frontend`]: the frontend end, a poll-driven state machine
//!   ([`Frontend`]);
//! - [`backend`]: the backend end, for backends written with this suite
//!   ([`Backend`]).
//!
//! # Example: a device frontend
//! ```no_run
//! use core::time::Duration;
//! use xenbus::{
//!     ConnectStyle, Connection, Device, DeviceError, Frontend, FrontendConfig, HandshakeEvent,
//!     TeardownReason, Transaction, Transport, Xenstore, XsError,
//! };
//!
//! /// What one connection owns (a real driver: granted rings, channels).
//! struct Rings { ring_ref: u32, port: u32 }
//!
//! struct Vif { live: Option<Rings>, next_ref: u32 }
//!
//! impl<T: Transport> Device<T> for Vif {
//!     fn setup(&mut self, _xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
//!         // Allocate and grant fresh rings to `conn.peer`, allocate an
//!         // event channel: once per connection, outside the transaction.
//!         self.next_ref += 1;
//!         self.live = Some(Rings { ring_ref: self.next_ref, port: 3 });
//!         let _ = conn.number;
//!         Ok(())
//!     }
//!     fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
//!         // Only writes keys: may run again for the same connection.
//!         let Some(r) = &self.live else { return Ok(()) };
//!         tx.write(&conn.frontend_key("ring-ref"), r.ring_ref.to_string())?;
//!         tx.write(&conn.frontend_key("event-channel"), r.port.to_string())
//!     }
//!     fn teardown(&mut self, _conn: &Connection, _why: TeardownReason) {
//!         // End the grants, close the channel; keep in-flight requests
//!         // for the next connection when the backend was lost.
//!         self.live = None;
//!     }
//! }
//!
//! fn bring_up<T: Transport>(
//!     xs: &mut Xenstore<T>,
//!     clock: &mut dyn FnMut() -> Duration,
//! ) -> Result<(), xenbus::HandshakeError> {
//!     let mut fe = Frontend::new(FrontendConfig::new("device/vif/0", ConnectStyle::ConnectedAtOnce));
//!     let mut vif = Vif { live: None, next_ref: 7 };
//!     let conn = fe.run_until_connected(xs, clock, &mut vif)?;
//!     let _ = conn.peer;
//!     // Then, in the device's loop: a backend that goes away is reported
//!     // (after teardown) and the handshake reconnects by itself.
//!     loop {
//!         match fe.poll(xs, clock(), &mut vif)? {
//!             HandshakeEvent::Disconnected { .. } => { /* stop I/O */ }
//!             HandshakeEvent::Connected(_) => { /* re-issue, restart I/O */ }
//!             HandshakeEvent::Removed | HandshakeEvent::Closed => return Ok(()),
//!             _ => { /* serve the rings */ }
//!         }
//!     }
//! }
//! ```
#![no_std]

extern crate alloc;

pub mod backend;
pub mod client;
mod engine;
pub mod frontend;
pub mod handshake;
pub mod path;
pub mod ring;
pub mod state;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

pub use backend::{Backend, BackendConfig, BackendPhase, ConnectWhen};
pub use client::{Transaction, TxId, WatchEvent, Xenstore, XsError};
pub use frontend::{ConnectStyle, Frontend, FrontendConfig, FrontendPhase};
pub use handshake::{
    Connection, Device, DeviceError, End, HandshakeError, HandshakeEvent, HandshakePhase, PeerLoss,
    TeardownReason,
};
pub use path::{Perm, PermAccess};
pub use ring::{EvtchnSignal, OwnedEvtchnSignal, RingSignal, Side, StoreRing};
pub use state::XenbusState;
pub use transport::{Transport, TransportError, Wait};
pub use wire::{Decoder, Errno, Message, MsgType, UnknownErrno, WireError};
