//! The backend end of the xenbus handshake, for backends written with
//! this suite (the hosted netback/blkback, benches' peers).
//!
//! The toolstack creates the backend directory
//! (`/local/domain/<be>/backend/<type>/<fe>/<id>`) with `frontend` and
//! `frontend-id`. The handshake follows Linux's backends:
//!
//! 1. read `frontend` and `frontend-id`, watch `<frontend>/state`; in one
//!    transaction, check that the frontend has not published keys already
//!    (its state is below Initialised) and write the device's feature keys
//!    ([`Device::publish`]) with `state` = InitWait. A frontend already at
//!    Initialised, Connected or Closing shows keys of an earlier connection
//!    (this backend restarted while its directory stayed): write Closed
//!    instead, and offer again once the frontend dropped below Initialised
//!    (the rule is in [`crate::handshake`]);
//! 2. when the frontend is ready ([`ConnectWhen`]), let the device read the
//!    frontend's keys and map its rings ([`Device::setup`]), then write
//!    Connected and report [`HandshakeEvent::Connected`]; a setup that
//!    refuses the keys writes Closing ([`HandshakeEvent::Refused`]);
//! 3. a frontend that goes Closing is answered with Closing, one that goes
//!    Closed (or disappears) with Closed, both reported as
//!    [`HandshakeEvent::Disconnected`] after [`Device::teardown`]; a
//!    frontend that starts over (Initialising) while we are Closed gets
//!    InitWait again, and the cycle repeats;
//! 4. the toolstack removing the backend directory is
//!    [`HandshakeEvent::Removed`].
//!
//! Like [`crate::Frontend`], [`Backend`] is a poll-driven state machine:
//! the caller passes the time and calls [`Backend::poll`] when the
//! transport has something (or periodically).

use alloc::string::String;
use core::fmt;
use core::time::Duration;

use crate::client::Xenstore;
use crate::engine::{self, Core, Machine, PhaseKind};
use crate::handshake::{
    Connection, Device, End, HandshakeError, HandshakeEvent, HandshakePhase, PeerLoss,
    TeardownReason,
};
use crate::state::XenbusState;
use crate::transport::Transport;

/// Which frontend state makes the backend connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectWhen {
    /// Initialised or Connected (blkback).
    FrontendInitialised,
    /// Connected only (netback).
    FrontendConnected,
}

/// Backend handshake parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// The backend directory, absolute.
    pub backend: String,
    /// When to connect.
    pub connect_when: ConnectWhen,
    /// Longest wait for the toolstack's `frontend` nodes and for a
    /// frontend to become ready; `None` waits for the guest as long as it
    /// takes (a guest may boot slowly).
    pub frontend_timeout: Option<Duration>,
}

impl BackendConfig {
    /// A configuration that waits for the frontend without a deadline.
    pub fn new(backend: impl Into<String>, connect_when: ConnectWhen) -> Self {
        BackendConfig {
            backend: backend.into(),
            connect_when,
            frontend_timeout: None,
        }
    }
}

/// Where the backend handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendPhase {
    /// Waiting for the toolstack's `frontend`/`frontend-id` nodes.
    FindFrontend,
    /// InitWait written; waiting for the frontend to publish its keys.
    WaitFrontend,
    /// Closed written because the frontend showed keys published before
    /// our InitWait (for an earlier connection); waiting for its state to
    /// drop below Initialised.
    WaitFrontendReset,
    /// Connected.
    Connected,
    /// Closing written (the frontend is closing, or its keys were
    /// refused); waiting for the frontend to close.
    Closing,
    /// Closed; waiting for the frontend to start over.
    Closed,
    /// [`Backend::close`] was called; waiting for the frontend to close.
    ShuttingDown,
    /// Closed on request, or removed; nothing more happens.
    Shut,
    /// A deadline passed or an unrecoverable error happened.
    Failed,
}

impl fmt::Display for BackendPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            BackendPhase::FindFrontend => {
                "waiting for the toolstack to write frontend and frontend-id"
            }
            BackendPhase::WaitFrontend => "waiting for the frontend to publish its keys",
            BackendPhase::WaitFrontendReset => {
                "waiting for the frontend to drop the keys of an earlier connection"
            }
            BackendPhase::Connected => "connected",
            BackendPhase::Closing => "waiting for the frontend to close",
            BackendPhase::Closed => "closed, waiting for the frontend to start over",
            BackendPhase::ShuttingDown => "shutting down, waiting for the frontend to close",
            BackendPhase::Shut => "shut",
            BackendPhase::Failed => "failed",
        };
        f.write_str(s)
    }
}

impl PhaseKind for BackendPhase {
    const FAILED: Self = BackendPhase::Failed;
    fn is_active(self) -> bool {
        !matches!(self, BackendPhase::Shut | BackendPhase::Failed)
    }
    fn tagged(self) -> HandshakePhase {
        HandshakePhase::Backend(self)
    }
}

/// Whether a frontend in `state` may publish for an InitWait written now:
/// it has not published (below Initialised). Initialised, Connected and
/// Closing (and the reconfiguration states) show an earlier connection.
fn publishes_after_us(state: Option<XenbusState>) -> bool {
    use XenbusState as S;
    matches!(
        state,
        None | Some(S::Unknown | S::Initialising | S::InitWait | S::Closed)
    )
}

/// The backend handshake of one device.
#[derive(Debug)]
pub struct Backend {
    config: BackendConfig,
    core: Core<BackendPhase>,
    /// The connection offered with our InitWait, until set up.
    offered: Option<Connection>,
}

impl Backend {
    /// A handshake that starts at the first poll.
    pub fn new(config: BackendConfig) -> Self {
        let core = Core::new(
            End::Backend,
            config.backend.clone(),
            BackendPhase::FindFrontend,
        );
        Backend {
            config,
            core,
            offered: None,
        }
    }

    /// Where the handshake is.
    pub fn phase(&self) -> BackendPhase {
        self.core.phase
    }

    /// The connection set up (connected), if any.
    pub fn connection(&self) -> Option<&Connection> {
        self.core.live.as_ref()
    }

    /// How many times the backend connected.
    pub fn connections(&self) -> u64 {
        self.core.connections
    }

    /// The watch token this handshake uses.
    pub fn token(&self) -> &str {
        &self.core.token
    }

    /// The frontend state seen last (`None`: absent or not read yet).
    pub fn last_frontend_state(&self) -> Option<XenbusState> {
        self.core.last_peer_state
    }

    /// The configuration.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Starts over after [`BackendPhase::Failed`] (a failed handshake has
    /// already torn its connection down). Does nothing in other phases.
    pub fn restart(&mut self) {
        if self.core.phase == BackendPhase::Failed {
            self.core.phase = BackendPhase::FindFrontend;
            self.core.deadline = None;
            self.core.dirty = true;
        }
    }

    /// Asks for an orderly shutdown (unplug): writes Closing and waits for
    /// the frontend to close; then tears the connection down and reports
    /// [`HandshakeEvent::Closed`].
    pub fn close<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
    ) -> Result<(), HandshakeError> {
        self.core.write_state(xs, XenbusState::Closing)?;
        self.core.enter(
            BackendPhase::ShuttingDown,
            now,
            self.config.frontend_timeout,
        );
        self.core.dirty = true;
        Ok(())
    }

    /// Unregisters the watches.
    pub fn unwatch<T: Transport>(&mut self, xs: &mut Xenstore<T>) -> Result<(), HandshakeError> {
        self.core.unwatch(xs)
    }

    /// Drives the handshake (see [`crate::Frontend::poll`] for the
    /// contract on `now` and errors).
    pub fn poll<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
    ) -> Result<HandshakeEvent, HandshakeError>
    where
        T: Transport,
        D: Device<T>,
    {
        engine::poll(self, xs, now, device)
    }

    /// Polls until connected, waiting on the transport between polls (see
    /// [`crate::Frontend::run_until_connected`]).
    pub fn run_until_connected<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        clock: &mut dyn FnMut() -> Duration,
        device: &mut D,
    ) -> Result<Connection, HandshakeError>
    where
        T: Transport,
        D: Device<T>,
    {
        engine::run_until_connected(self, xs, clock, device)
    }

    // ---- internals ----

    /// Finds the frontend, watches its state and, in one transaction,
    /// either offers a new connection (feature keys and InitWait) or, when
    /// the frontend shows keys of an earlier connection, writes Closed and
    /// waits for it to drop them.
    fn offer<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
    ) -> Result<(), HandshakeError>
    where
        T: Transport,
        D: Device<T>,
    {
        let timeout = self.config.frontend_timeout;
        let Some(peer) = self.core.find_peer(xs)? else {
            if self.core.phase != BackendPhase::FindFrontend {
                self.core.enter(BackendPhase::FindFrontend, now, timeout);
            } else {
                self.core.arm_deadline(now, timeout);
            }
            return Ok(());
        };
        self.core.adopt_peer(xs, peer)?;
        let conn = self.core.candidate()?;
        let state_path = self.core.key("state");
        let core = &self.core;
        let offered = core.transact(xs, |tx| {
            let frontend = core.peer_state_in(tx)?;
            if publishes_after_us(frontend) {
                device.publish(tx, &conn)?;
                tx.write(&state_path, XenbusState::InitWait.as_str())?;
                return Ok(Ok(()));
            }
            let ours = tx.try_read(&state_path)?;
            if ours.as_deref() != Some(XenbusState::Closed.as_str().as_bytes()) {
                tx.write(&state_path, XenbusState::Closed.as_str())?;
            }
            Ok(Err(frontend))
        })?;
        match offered {
            Ok(()) => {
                self.core.claim(&conn);
                log::debug!(
                    "xenbus backend {}: offered connection {} to {} ({})",
                    conn.backend,
                    conn.number,
                    conn.frontend,
                    conn.peer
                );
                self.offered = Some(conn);
                self.core.enter(BackendPhase::WaitFrontend, now, timeout);
            }
            Err(frontend) => {
                if self.core.phase != BackendPhase::WaitFrontendReset {
                    log::info!(
                        "xenbus backend {}: frontend {} is {frontend:?}, published before our \
                         InitWait: Closed written, waiting for it to start over",
                        conn.backend,
                        conn.frontend
                    );
                    self.core
                        .enter(BackendPhase::WaitFrontendReset, now, timeout);
                }
            }
        }
        Ok(())
    }

    /// The frontend is ready: sets the offered connection up and writes
    /// Connected, or refuses it (Closing).
    fn connect<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
    ) -> Result<HandshakeEvent, HandshakeError>
    where
        T: Transport,
        D: Device<T>,
    {
        let Some(conn) = self.offered.take() else {
            return Err(HandshakeError::BadNode {
                path: self.core.key("frontend"),
                reason: "the frontend is ready but no connection was offered".into(),
            });
        };
        if let Err(error) = device.setup(xs, &conn) {
            log::warn!(
                "xenbus backend {}: connection {} refused: {error}; closing",
                conn.backend,
                conn.number
            );
            self.core.write_state(xs, XenbusState::Closing)?;
            self.core.enter(BackendPhase::Closing, now, None);
            return Ok(HandshakeEvent::Refused {
                connection: conn.number,
                error,
            });
        }
        self.core.live = Some(conn.clone());
        // On failure the poll loop tears the connection down.
        self.core.write_state(xs, XenbusState::Connected)?;
        self.core.connections += 1;
        self.core.enter(BackendPhase::Connected, now, None);
        log::info!(
            "xenbus backend {}: connection {} to {} ({}) is up",
            conn.backend,
            conn.number,
            conn.frontend,
            conn.peer
        );
        Ok(HandshakeEvent::Connected(conn))
    }

    /// The frontend went away: tears the connection down and answers with
    /// `state` (Closing or Closed).
    fn lose<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
        state: XenbusState,
        loss: PeerLoss,
    ) -> Result<HandshakeEvent, HandshakeError>
    where
        T: Transport,
        D: Device<T>,
    {
        let ended = self.core.teardown(device, TeardownReason::PeerLost(loss));
        self.core.write_state(xs, state)?;
        let phase = if state == XenbusState::Closing {
            BackendPhase::Closing
        } else {
            BackendPhase::Closed
        };
        self.core.enter(phase, now, None);
        self.core.dirty = true;
        Ok(match ended {
            Some(connection) => {
                log::info!(
                    "xenbus backend {}: frontend lost ({loss}), connection {connection} ended",
                    self.config.backend
                );
                HandshakeEvent::Disconnected { connection, loss }
            }
            None => HandshakeEvent::Idle,
        })
    }
}

impl<T: Transport, D: Device<T>> Machine<T, D> for Backend {
    type Phase = BackendPhase;

    fn core(&mut self) -> &mut Core<BackendPhase> {
        &mut self.core
    }

    fn step(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
    ) -> Result<HandshakeEvent, HandshakeError> {
        use BackendPhase as P;
        use XenbusState as S;
        if self.core.phase != P::FindFrontend && self.core.removed(xs)? {
            log::info!(
                "xenbus backend {}: the device was removed",
                self.config.backend
            );
            self.core.teardown(device, TeardownReason::Removed);
            self.offered = None;
            self.core.enter(P::Shut, now, None);
            return Ok(HandshakeEvent::Removed);
        }
        match self.core.phase {
            P::FindFrontend | P::WaitFrontendReset => {
                self.offer(xs, now, device)?;
                self.core.dirty = self.core.phase == P::WaitFrontend;
                Ok(HandshakeEvent::Idle)
            }
            P::WaitFrontend => {
                let state = self.core.peer_state(xs)?;
                let ready = match self.config.connect_when {
                    ConnectWhen::FrontendInitialised => {
                        matches!(state, Some(S::Initialised | S::Connected))
                    }
                    ConnectWhen::FrontendConnected => state == Some(S::Connected),
                };
                if ready {
                    return self.connect(xs, now, device);
                }
                if state == Some(S::Closing) {
                    // Going away before it connected: answer in kind.
                    self.offered = None;
                    self.core.write_state(xs, S::Closing)?;
                    self.core.enter(P::Closing, now, None);
                    self.core.dirty = true;
                }
                Ok(HandshakeEvent::Idle)
            }
            P::Connected => match self.core.peer_state(xs)? {
                Some(S::Closing) => self.lose(xs, now, device, S::Closing, PeerLoss::Closing),
                Some(S::Closed) => self.lose(xs, now, device, S::Closed, PeerLoss::Closed),
                None => self.lose(xs, now, device, S::Closed, PeerLoss::Gone),
                Some(S::Initialising) => self.lose(xs, now, device, S::Closed, PeerLoss::Restarted),
                Some(_) => Ok(HandshakeEvent::Idle),
            },
            P::Closing => match self.core.peer_state(xs)? {
                Some(S::Closed) | None => {
                    self.core.write_state(xs, S::Closed)?;
                    self.core.enter(P::Closed, now, None);
                    self.core.dirty = true;
                    Ok(HandshakeEvent::Idle)
                }
                Some(S::Initialising) => {
                    self.core.enter(P::Closed, now, None);
                    self.core.dirty = true;
                    Ok(HandshakeEvent::Idle)
                }
                Some(_) => Ok(HandshakeEvent::Idle),
            },
            P::Closed => {
                // The frontend starts over: offer again (the frontend path
                // may have changed; the offer checks its state again).
                if self.core.peer_state(xs)? == Some(S::Initialising) {
                    self.offer(xs, now, device)?;
                    self.core.dirty = self.core.phase == P::WaitFrontend;
                }
                Ok(HandshakeEvent::Idle)
            }
            P::ShuttingDown => match self.core.peer_state(xs)? {
                Some(S::Closing | S::Closed) | None => {
                    self.core.teardown(device, TeardownReason::Closed);
                    self.offered = None;
                    self.core.write_state(xs, S::Closed)?;
                    self.core.enter(P::Shut, now, None);
                    Ok(HandshakeEvent::Closed)
                }
                Some(_) => Ok(HandshakeEvent::Idle),
            },
            P::Shut | P::Failed => Ok(HandshakeEvent::Idle),
        }
    }
}
