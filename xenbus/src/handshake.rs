//! The xenbus handshake as one protocol seen from its two ends: what both
//! ends share ([`Device`], [`Connection`], [`HandshakeEvent`],
//! [`HandshakeError`]) and the rules that keep a connection's resources
//! apart from every other connection's.
//!
//! [`crate::Frontend`] and [`crate::Backend`] each drive one end. A driver
//! gives either one its [`Device`], which the handshake calls at three
//! points:
//!
//! | step | frontend | backend |
//! |---|---|---|
//! | [`Device::setup`], outside any transaction | when the backend reaches InitWait: allocate and grant this connection's rings, allocate its event channels (the backend's feature keys are readable) | when the frontend has published: read its keys, map its rings, bind its event channels |
//! | [`Device::publish`], inside the transaction that writes the end's state | after `setup`: write `ring-ref`, `event-channel`, ... with Initialised or Connected | before `setup`: write the `feature-*` keys with InitWait |
//! | [`Device::teardown`] | the backend went away, or close, removal, failure: end the grants, close the channels, hand back in-flight requests | the frontend went away, or close, removal, failure: unmap, unbind |
//!
//! `publish` only writes keys: xenstore may make the transaction run again
//! (`EAGAIN`), and then it is called again for the same connection and
//! must write the same values. Everything with an effect outside xenstore
//! happens in `setup` and `teardown`, exactly once per connection.
//!
//! # Connections
//! Each end numbers its connections 1, 2, ... ([`Connection::number`]).
//! The frontend starts a new connection every time it publishes, the
//! backend every time it writes InitWait. `teardown` runs exactly once for
//! every `setup` that succeeded, before the next `setup`, so resources
//! never outlive their connection, and [`HandshakeEvent::Disconnected`]
//! names the connection it ended.
//!
//! # The reconnection rule: never attach to a ring of an earlier connection
//! The keys a frontend published stay in xenstore after the backend that
//! read them is gone. A backend that restarts while its directory stays
//! must not take them for a new publication: the frontend may already have
//! ended those grants, or still be using that ring with requests in
//! flight. Two rules together exclude it:
//!
//! - **Backend**: it writes InitWait only in a transaction that also reads
//!   the frontend's state and finds it below Initialised (absent, Unknown,
//!   Initialising, InitWait or Closed). If the frontend is at Initialised,
//!   Connected or Closing, what it shows was published for an earlier
//!   connection: the backend writes Closed instead and waits
//!   ([`crate::BackendPhase::WaitFrontendReset`]) until the frontend's
//!   state drops below Initialised, then offers again the same way. So any
//!   Initialised or Connected the backend sees while at InitWait was
//!   written after its InitWait.
//! - **Frontend**: a backend that goes Closing, Closed, disappears, or
//!   goes back to InitWait or Initialising ends the connection
//!   ([`HandshakeEvent::Disconnected`], after [`Device::teardown`]); the
//!   frontend writes Closed, then Initialising, and sets up and publishes a
//!   new connection when it sees InitWait. It never writes Initialised or
//!   Connected after dropping below Initialised without first publishing a
//!   new connection's keys.
//!
//! Hence every ring a backend maps was published for it, and the frontend
//! sees a [`HandshakeEvent::Disconnected`] then a
//! [`HandshakeEvent::Connected`] with new rings whenever the backend
//! instance changes while it is connected. The backend's detour through
//! Closed is what Linux's backends show when they are unbound, and Linux's
//! frontends answer it the same way (Closed, then reconnect at InitWait).

use alloc::string::String;
use core::fmt;
use core::time::Duration;

use grant_tables::DomId;

use crate::backend::BackendPhase;
use crate::client::{Transaction, Xenstore, XsError};
use crate::frontend::FrontendPhase;
use crate::state::XenbusState;
use crate::transport::Transport;

/// Which end of a split device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// The guest's end (netfront, blkfront).
    Frontend,
    /// The driver domain's end (netback, blkback).
    Backend,
}

impl End {
    /// The other end.
    pub fn peer(self) -> End {
        match self {
            End::Frontend => End::Backend,
            End::Backend => End::Frontend,
        }
    }

    /// `"frontend"` or `"backend"`: also the name of the toolstack's node
    /// that points at this end from the other end's directory.
    pub fn name(self) -> &'static str {
        match self {
            End::Frontend => "frontend",
            End::Backend => "backend",
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One connection between the two ends, as one end sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Connection {
    /// This end's number for the connection: 1 for the first, then one
    /// more for each new one. Resources set up for one number belong to
    /// it alone.
    pub number: u64,
    /// The frontend directory (on the frontend as configured, possibly
    /// relative to the domain's home; on the backend absolute, as the
    /// toolstack wrote it).
    pub frontend: String,
    /// The backend directory, absolute.
    pub backend: String,
    /// The other end's domain: on the frontend the backend's (grant the
    /// rings to it, allocate event channels for it), on the backend the
    /// frontend's (map its grants, bind to its event channels).
    pub peer: DomId,
}

impl Connection {
    /// `<frontend>/<key>`.
    pub fn frontend_key(&self, key: &str) -> String {
        crate::path::join(&self.frontend, key)
    }

    /// `<backend>/<key>`.
    pub fn backend_key(&self, key: &str) -> String {
        crate::path::join(&self.backend, key)
    }
}

/// What a driver does at each step of the handshake, on either end (see
/// the table in the [module docs](self)).
pub trait Device<T: Transport> {
    /// Sets up `conn`'s resources, outside any transaction. On the
    /// frontend: allocate and grant the rings, allocate the event
    /// channels, reading the backend's feature keys with `xs` if needed.
    /// On the backend: read the frontend's keys with `xs` (written by an
    /// untrusted peer: copy, then validate), map the rings, bind the event
    /// channels.
    ///
    /// On error, release whatever was set up before returning: no
    /// [`Device::teardown`] follows a failed setup. A frontend then fails
    /// with [`HandshakeError::Device`]; a backend writes Closing and
    /// reports [`HandshakeEvent::Refused`].
    fn setup(&mut self, xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError>;

    /// Writes this end's keys for `conn` into the transaction that also
    /// writes the end's state: the frontend's `ring-ref`, `event-channel`
    /// and requested features (after `setup`), the backend's `feature-*`
    /// keys (before `setup`). Only writes keys: it runs again, for the same
    /// connection, when the transaction is retried, and must write the
    /// same values each time.
    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        let _ = (tx, conn);
        Ok(())
    }

    /// Releases what [`Device::setup`] set up for `conn`, outside any
    /// transaction: on the frontend, end the grants (a grant the backend
    /// still maps is quarantined, never reused) and close the channels; on
    /// the backend, unmap and unbind. Requests in flight on `conn` will not
    /// be answered on it: with [`TeardownReason::PeerLost`] keep them to
    /// re-issue on the next connection (the handshake reconnects by
    /// itself); otherwise fail them.
    fn teardown(&mut self, conn: &Connection, reason: TeardownReason);
}

/// Why the other end was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerLoss {
    /// It is closing (unplug, error, or a restarted backend).
    Closing,
    /// It closed (or a restarted backend found our keys stale).
    Closed,
    /// Its state node disappeared (crash, or removal by the toolstack).
    Gone,
    /// It started over (InitWait or Initialising) while connected.
    Restarted,
}

impl fmt::Display for PeerLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerLoss::Closing => "it is closing",
            PeerLoss::Closed => "it closed",
            PeerLoss::Gone => "its nodes disappeared",
            PeerLoss::Restarted => "it started over",
        })
    }
}

/// Why [`Device::teardown`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TeardownReason {
    /// The other end went away; the handshake reconnects by itself (a
    /// [`HandshakeEvent::Disconnected`] follows). Keep in-flight requests
    /// for the next connection.
    PeerLost(PeerLoss),
    /// This end was closed ([`crate::Frontend::close`],
    /// [`crate::Backend::close`]) and the other end followed.
    Closed,
    /// The toolstack removed the device.
    Removed,
    /// The handshake failed (its error says why); nothing reconnects until
    /// it is restarted.
    Failed,
}

/// What a poll produced, on either end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeEvent {
    /// Nothing the driver must act on.
    Idle,
    /// Both ends are Connected on this connection: start (or resume) I/O,
    /// re-issuing what the previous connection left in flight.
    Connected(Connection),
    /// The other end went away: [`Device::teardown`] has run for this
    /// connection. The handshake reconnects by itself.
    Disconnected {
        /// The connection that ended.
        connection: u64,
        /// Why.
        loss: PeerLoss,
    },
    /// Backend only: [`Device::setup`] refused the frontend's keys; the
    /// backend wrote Closing and waits for the frontend to start over.
    Refused {
        /// The connection that was refused.
        connection: u64,
        /// What setup said.
        error: DeviceError,
    },
    /// This end's close completed ([`Device::teardown`] has run).
    Closed,
    /// The toolstack removed the device ([`Device::teardown`] has run);
    /// nothing more happens.
    Removed,
}

/// What [`Device::setup`] may fail with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// A xenstore operation failed.
    Store(XsError),
    /// The driver could not set the connection up (no grant refs, a bad
    /// key from the peer, ...); the message says what and what to do.
    Device(String),
}

impl From<XsError> for DeviceError {
    fn from(e: XsError) -> Self {
        DeviceError::Store(e)
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Store(e) => write!(f, "{e}"),
            DeviceError::Device(m) => f.write_str(m),
        }
    }
}

/// Where a handshake is, on either end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakePhase {
    /// A frontend's phase.
    Frontend(FrontendPhase),
    /// A backend's phase.
    Backend(BackendPhase),
}

impl HandshakePhase {
    /// Which end.
    pub fn end(self) -> End {
        match self {
            HandshakePhase::Frontend(_) => End::Frontend,
            HandshakePhase::Backend(_) => End::Backend,
        }
    }
}

impl fmt::Display for HandshakePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakePhase::Frontend(p) => write!(f, "{p}"),
            HandshakePhase::Backend(p) => write!(f, "{p}"),
        }
    }
}

/// Why a handshake failed, on either end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// A xenstore operation failed.
    Store(XsError),
    /// A wait ran out.
    Timeout {
        /// This end's directory.
        device: String,
        /// What it was waiting for.
        phase: HandshakePhase,
        /// The other end's state seen last (`None`: no state node).
        peer_state: Option<XenbusState>,
        /// How long it waited.
        waited: Duration,
    },
    /// A toolstack node has an unusable value.
    BadNode {
        /// The node.
        path: String,
        /// Why.
        reason: String,
    },
    /// The frontend's [`Device::setup`] failed.
    Device {
        /// This end's directory.
        device: String,
        /// The connection it was setting up.
        connection: u64,
        /// What setup said.
        error: DeviceError,
    },
    /// The transaction that writes this end's keys and state kept
    /// conflicting.
    TooManyConflicts {
        /// This end's directory.
        device: String,
    },
    /// `run_until_connected` stopped on an event other than Connected
    /// (the handshake itself carries on: a `Disconnected` is followed by a
    /// reconnection at the next polls).
    Stopped {
        /// This end's directory.
        device: String,
        /// The event.
        event: HandshakeEvent,
    },
}

impl HandshakeError {
    /// Whether the handshake kept its phase and the next poll retries
    /// (xenstore did not answer in time); other errors from `poll` leave it
    /// failed until restarted.
    pub fn is_transient(&self) -> bool {
        matches!(self, HandshakeError::Store(XsError::TimedOut { .. }))
    }
}

impl From<XsError> for HandshakeError {
    fn from(e: XsError) -> Self {
        HandshakeError::Store(e)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Store(e) => write!(f, "xenbus handshake: {e}"),
            HandshakeError::Timeout {
                device,
                phase,
                peer_state,
                waited,
            } => {
                let end = phase.end();
                write!(
                    f,
                    "xenbus {end} {device}: gave up {phase} after {waited:?} ({} state: ",
                    end.peer()
                )?;
                match peer_state {
                    Some(s) => write!(f, "{s}")?,
                    None => f.write_str("absent")?,
                }
                match end {
                    End::Frontend => f.write_str(
                        "); check that the backend driver runs and the toolstack set the device up, then restart the handshake",
                    ),
                    End::Backend => f.write_str(
                        "); check that the guest runs its frontend driver, then restart the handshake",
                    ),
                }
            }
            HandshakeError::BadNode { path, reason } => write!(
                f,
                "xenbus handshake: node {path} is unusable: {reason}; the toolstack must write it correctly"
            ),
            HandshakeError::Device {
                device,
                connection,
                error,
            } => write!(
                f,
                "xenbus frontend {device}: setting up connection {connection} failed: {error}; \
                 restart the handshake once the cause is fixed"
            ),
            HandshakeError::TooManyConflicts { device } => write!(
                f,
                "xenbus {device}: the transaction publishing the device's keys kept conflicting; retry later"
            ),
            HandshakeError::Stopped { device, event } => {
                write!(f, "xenbus {device}: stopped waiting for Connected: ")?;
                match event {
                    HandshakeEvent::Disconnected { connection, loss } => write!(
                        f,
                        "the other end was lost ({loss}) and connection {connection} torn down; \
                         poll again to reconnect"
                    ),
                    HandshakeEvent::Refused { connection, error } => write!(
                        f,
                        "the frontend's keys for connection {connection} were refused: {error}; \
                         poll again to wait for it to start over"
                    ),
                    HandshakeEvent::Closed => f.write_str("the device was closed"),
                    HandshakeEvent::Removed => f.write_str("the toolstack removed the device"),
                    HandshakeEvent::Idle | HandshakeEvent::Connected(_) => {
                        write!(f, "{event:?}")
                    }
                }
            }
        }
    }
}
