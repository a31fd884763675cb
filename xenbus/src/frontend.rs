//! The frontend end of the xenbus handshake, shared by every device.
//!
//! A device's frontend lives at `device/<type>/<id>` (relative to the
//! domain's home). The toolstack writes `backend` (the backend's directory)
//! and `backend-id` there. The handshake is:
//!
//! 1. read `backend` and `backend-id`, watch `<backend>/state`, write our
//!    `state` = Initialising;
//! 2. when the backend reaches InitWait (or Initialised, where
//!    xen-pciback waits), start a new connection: the
//!    device sets up its resources ([`Device::setup`]: rings, grants, event
//!    channels), then publishes their keys ([`Device::publish`]) in the
//!    transaction that writes our new state: Initialised
//!    ([`ConnectStyle::InitialisedFirst`], block style) or Connected
//!    ([`ConnectStyle::ConnectedAtOnce`], network style);
//! 3. when the backend reaches Connected, write Connected (if not yet) and
//!    report [`HandshakeEvent::Connected`];
//! 4. a backend that goes Closing, Closed, disappears, or starts over
//!    (InitWait or Initialising) ends the connection: the device tears it
//!    down ([`Device::teardown`]), we report
//!    [`HandshakeEvent::Disconnected`], write Closed and wait for the
//!    backend to come back, then start again at 1 (re-reading `backend`
//!    and `backend-id`, which may have changed) with a new connection.
//!
//! The rule that keeps a restarted backend off the previous connection's
//! rings is in [`crate::handshake`].
//!
//! [`Frontend`] is a state machine driven by [`Frontend::poll`]: it never
//! blocks beyond single xenstore requests, takes the current time from the
//! caller, and gives up on every wait after a deadline. It can be tested
//! without threads by polling it and a simulated backend in turn.

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

/// Which state the frontend announces together with its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectStyle {
    /// Initialised with the keys, Connected once the backend is Connected
    /// (blkfront: blkback connects when it sees Initialised).
    InitialisedFirst,
    /// Connected with the keys (netfront: netback connects when it sees the
    /// frontend Connected).
    ConnectedAtOnce,
}

/// Handshake parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    /// The frontend directory, e.g. `device/vbd/51712`.
    pub frontend: String,
    /// Which state accompanies the published keys.
    pub style: ConnectStyle,
    /// Longest wait for each backend step while connecting.
    pub step_timeout: Duration,
    /// Longest wait for a backend that went away to come back.
    pub reconnect_timeout: Duration,
}

impl FrontendConfig {
    /// A configuration with 10 s steps and a 60 s reconnect window.
    pub fn new(frontend: impl Into<String>, style: ConnectStyle) -> Self {
        FrontendConfig {
            frontend: frontend.into(),
            style,
            step_timeout: Duration::from_secs(10),
            reconnect_timeout: Duration::from_secs(60),
        }
    }
}

/// Where the frontend handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendPhase {
    /// Waiting for the toolstack's `backend`/`backend-id` nodes.
    FindBackend,
    /// Initialising written; waiting for the backend's InitWait.
    WaitBackendInitWait,
    /// Connection set up and its keys published; waiting for the backend's
    /// Connected.
    WaitBackendConnected,
    /// Connected: I/O may flow.
    Connected,
    /// Disconnected (Closed written); waiting for the backend to return.
    WaitBackendReturn,
    /// [`Frontend::close`] was called; waiting for the backend to close.
    Closing,
    /// Closed on request, or the device was removed; nothing more happens.
    Shut,
    /// A wait ran out or an unrecoverable error happened; call
    /// [`Frontend::restart`] to try again.
    Failed,
}

impl fmt::Display for FrontendPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FrontendPhase::FindBackend => {
                "waiting for the toolstack to write backend and backend-id"
            }
            FrontendPhase::WaitBackendInitWait => "waiting for the backend to reach InitWait",
            FrontendPhase::WaitBackendConnected => "waiting for the backend to reach Connected",
            FrontendPhase::Connected => "connected",
            FrontendPhase::WaitBackendReturn => "waiting for the backend to come back",
            FrontendPhase::Closing => "waiting for the backend to close",
            FrontendPhase::Shut => "closed",
            FrontendPhase::Failed => "failed",
        };
        f.write_str(s)
    }
}

impl PhaseKind for FrontendPhase {
    const FAILED: Self = FrontendPhase::Failed;
    fn is_active(self) -> bool {
        !matches!(self, FrontendPhase::Shut | FrontendPhase::Failed)
    }
    fn tagged(self) -> HandshakePhase {
        HandshakePhase::Frontend(self)
    }
}

/// The frontend handshake of one device.
#[derive(Debug)]
pub struct Frontend {
    config: FrontendConfig,
    core: Core<FrontendPhase>,
}

impl Frontend {
    /// A handshake that has not started; the first [`Frontend::poll`]
    /// starts it.
    pub fn new(config: FrontendConfig) -> Self {
        let core = Core::new(
            End::Frontend,
            config.frontend.clone(),
            FrontendPhase::FindBackend,
        );
        Frontend { config, core }
    }

    /// Where the handshake is.
    pub fn phase(&self) -> FrontendPhase {
        self.core.phase
    }

    /// The connection whose resources are set up (published, or
    /// connected), if any.
    pub fn connection(&self) -> Option<&Connection> {
        self.core.live.as_ref()
    }

    /// The watch token this handshake uses.
    pub fn token(&self) -> &str {
        &self.core.token
    }

    /// How many times the handshake reached Connected.
    pub fn connections(&self) -> u64 {
        self.core.connections
    }

    /// The backend state seen last (`None`: absent or not read yet).
    pub fn last_backend_state(&self) -> Option<XenbusState> {
        self.core.last_peer_state
    }

    /// The configuration.
    pub fn config(&self) -> &FrontendConfig {
        &self.config
    }

    /// Starts over after [`FrontendPhase::Failed`] (a failed handshake has
    /// already torn its connection down): the next poll looks the backend
    /// up again. Does nothing in other phases.
    pub fn restart(&mut self) {
        if self.core.phase == FrontendPhase::Failed {
            self.core.phase = FrontendPhase::FindBackend;
            self.core.deadline = None;
            self.core.dirty = true;
        }
    }

    /// Asks for an orderly close: writes Closing and waits (through
    /// [`Frontend::poll`]) for the backend to close, then tears the
    /// connection down, writes Closed and reports
    /// [`HandshakeEvent::Closed`].
    pub fn close<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
    ) -> Result<(), HandshakeError> {
        self.core.write_state(xs, XenbusState::Closing)?;
        self.core
            .enter(FrontendPhase::Closing, now, Some(self.config.step_timeout));
        self.core.dirty = true;
        Ok(())
    }

    /// Unregisters the watches (call when the device is dropped).
    pub fn unwatch<T: Transport>(&mut self, xs: &mut Xenstore<T>) -> Result<(), HandshakeError> {
        self.core.unwatch(xs)
    }

    /// Drives the handshake: reads pending watch events without blocking,
    /// re-evaluates the backend's state when something changed, calls the
    /// device's steps ([`Device`]) as the handshake reaches them, and
    /// checks the deadline against `now` (any monotonic clock, the same for
    /// every call). An error other than a transient one
    /// ([`HandshakeError::is_transient`]) leaves the handshake
    /// [`FrontendPhase::Failed`], its connection torn down.
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

    /// Polls until connected, waiting on the transport between polls.
    /// `clock` gives the current monotonic time. Any other event ends the
    /// wait as [`HandshakeError::Stopped`]: after a `Disconnected` the
    /// handshake carries on, so call again to wait for the reconnection.
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

    /// The state published with the keys.
    fn publish_state(&self) -> XenbusState {
        match self.config.style {
            ConnectStyle::InitialisedFirst => XenbusState::Initialised,
            ConnectStyle::ConnectedAtOnce => XenbusState::Connected,
        }
    }

    /// Starts a connection attempt: finds the backend, watches its state,
    /// writes Initialising.
    fn begin_attempt<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
    ) -> Result<(), HandshakeError> {
        let Some(peer) = self.core.find_peer(xs)? else {
            if self.core.phase != FrontendPhase::FindBackend {
                self.core.enter(
                    FrontendPhase::FindBackend,
                    now,
                    Some(self.config.step_timeout),
                );
            } else {
                self.core.arm_deadline(now, Some(self.config.step_timeout));
            }
            return Ok(());
        };
        self.core.adopt_peer(xs, peer)?;
        self.core.write_state(xs, XenbusState::Initialising)?;
        self.core.enter(
            FrontendPhase::WaitBackendInitWait,
            now,
            Some(self.config.step_timeout),
        );
        self.core.dirty = true;
        Ok(())
    }

    /// The backend is at InitWait: sets up a new connection (or keeps the
    /// one set up by a poll whose publish did not complete) and publishes
    /// it with our state.
    fn connect<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
    ) -> Result<(), HandshakeError>
    where
        T: Transport,
        D: Device<T>,
    {
        let conn = match &self.core.live {
            Some(conn) => conn.clone(),
            None => {
                let conn = self.core.candidate()?;
                self.core.claim(&conn);
                device
                    .setup(xs, &conn)
                    .map_err(|error| HandshakeError::Device {
                        device: self.core.dir.clone(),
                        connection: conn.number,
                        error,
                    })?;
                self.core.live = Some(conn.clone());
                conn
            }
        };
        let state = self.publish_state();
        let state_path = self.core.key("state");
        self.core.transact(xs, |tx| {
            device.publish(tx, &conn)?;
            tx.write(&state_path, state.as_str())
        })?;
        log::info!(
            "xenbus {}: published connection {} for backend {} ({}), state {state}",
            conn.frontend,
            conn.number,
            conn.backend,
            conn.peer,
        );
        self.core.enter(
            FrontendPhase::WaitBackendConnected,
            now,
            Some(self.config.step_timeout),
        );
        self.core.dirty = true;
        Ok(())
    }

    /// The backend went away: tears the connection down, writes Closed and
    /// waits for the backend to come back.
    fn lose<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
        loss: PeerLoss,
    ) -> Result<HandshakeEvent, HandshakeError>
    where
        T: Transport,
        D: Device<T>,
    {
        log::warn!(
            "xenbus {}: backend lost ({loss}); waiting for it to come back",
            self.config.frontend
        );
        let ended = self.core.teardown(device, TeardownReason::PeerLost(loss));
        self.core.write_state(xs, XenbusState::Closed)?;
        self.core.enter(
            FrontendPhase::WaitBackendReturn,
            now,
            Some(self.config.reconnect_timeout),
        );
        // Look at the backend again at once, whatever the reason: a backend
        // already Closed (or back at InitWait) does not write its state
        // again, and a Linux backend waits for our Initialising before it
        // moves; waiting for the next watch event would wait for ever.
        // The check is idempotent: a backend still Closing just keeps us
        // waiting for its next change.
        self.core.dirty = true;
        Ok(match ended {
            Some(connection) => HandshakeEvent::Disconnected { connection, loss },
            None => HandshakeEvent::Idle,
        })
    }
}

impl<T: Transport, D: Device<T>> Machine<T, D> for Frontend {
    type Phase = FrontendPhase;

    fn core(&mut self) -> &mut Core<FrontendPhase> {
        &mut self.core
    }

    fn step(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
    ) -> Result<HandshakeEvent, HandshakeError> {
        use FrontendPhase as P;
        use XenbusState as S;
        if matches!(
            self.core.phase,
            P::WaitBackendInitWait | P::WaitBackendConnected | P::Connected | P::WaitBackendReturn
        ) && self.core.removed(xs)?
        {
            log::info!("xenbus {}: the device was removed", self.config.frontend);
            self.core.teardown(device, TeardownReason::Removed);
            self.core.enter(P::Shut, now, None);
            return Ok(HandshakeEvent::Removed);
        }
        match self.core.phase {
            P::FindBackend => {
                self.begin_attempt(xs, now)?;
                Ok(HandshakeEvent::Idle)
            }
            P::WaitBackendInitWait => {
                // Most backends wait at InitWait for the frontend's keys;
                // xen-pciback goes on to Initialised by itself once the
                // toolstack's device list is read, and waits there.
                if matches!(
                    self.core.peer_state(xs)?,
                    Some(S::InitWait | S::Initialised)
                ) {
                    self.connect(xs, now, device)?;
                }
                Ok(HandshakeEvent::Idle)
            }
            P::WaitBackendConnected => match self.core.peer_state(xs)? {
                Some(S::Connected) => {
                    if self.config.style == ConnectStyle::InitialisedFirst {
                        self.core.write_state(xs, S::Connected)?;
                    }
                    let Some(conn) = self.core.live.clone() else {
                        return Err(HandshakeError::BadNode {
                            path: self.core.key("backend"),
                            reason: "connected without a connection set up".into(),
                        });
                    };
                    self.core.enter(P::Connected, now, None);
                    self.core.connections += 1;
                    log::info!(
                        "xenbus {}: connection {} to {} ({}) is up",
                        conn.frontend,
                        conn.number,
                        conn.backend,
                        conn.peer
                    );
                    Ok(HandshakeEvent::Connected(conn))
                }
                Some(S::Closing) => self.lose(xs, now, device, PeerLoss::Closing),
                Some(S::Closed) => self.lose(xs, now, device, PeerLoss::Closed),
                None => self.lose(xs, now, device, PeerLoss::Gone),
                Some(_) => Ok(HandshakeEvent::Idle),
            },
            P::Connected => match self.core.peer_state(xs)? {
                Some(S::Closing) => self.lose(xs, now, device, PeerLoss::Closing),
                Some(S::Closed) => self.lose(xs, now, device, PeerLoss::Closed),
                None => self.lose(xs, now, device, PeerLoss::Gone),
                Some(S::InitWait | S::Initialising) => {
                    self.lose(xs, now, device, PeerLoss::Restarted)
                }
                Some(_) => Ok(HandshakeEvent::Idle),
            },
            P::WaitBackendReturn => {
                // The backend path may have changed: look it up again.
                let Some(peer) = self.core.find_peer(xs)? else {
                    return Ok(HandshakeEvent::Idle);
                };
                if self.core.peer.as_ref() != Some(&peer) {
                    log::info!(
                        "xenbus {}: backend is now {} ({})",
                        self.config.frontend,
                        peer.dir,
                        peer.id
                    );
                    // Watches the new state node and starts over.
                    self.begin_attempt(xs, now)?;
                    return Ok(HandshakeEvent::Idle);
                }
                if matches!(
                    self.core.peer_state(xs)?,
                    Some(S::InitWait | S::Initialised | S::Initialising | S::Closed | S::Unknown)
                ) {
                    self.begin_attempt(xs, now)?;
                }
                Ok(HandshakeEvent::Idle)
            }
            P::Closing => match self.core.peer_state(xs)? {
                Some(S::Closing | S::Closed) | None => {
                    self.core.teardown(device, TeardownReason::Closed);
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
