//! The frontend side of the xenbus handshake, shared by every device.
//!
//! A device's frontend lives at `device/<type>/<id>` (relative to the
//! domain's home). The toolstack writes `backend` (the backend's directory)
//! and `backend-id` there. The handshake is:
//!
//! 1. read `backend` and `backend-id`, watch `<backend>/state`, write our
//!    `state` = Initialising;
//! 2. when the backend reaches InitWait, publish the device's keys
//!    (`ring-ref`, `event-channel`, ...) and our new state in one
//!    transaction: Initialised ([`ConnectStyle::InitialisedFirst`], block
//!    style) or Connected ([`ConnectStyle::ConnectedAtOnce`], network
//!    style);
//! 3. when the backend reaches Connected, write Connected (if not yet) and
//!    report [`HandshakeEvent::Connected`];
//! 4. while connected, a backend that goes Closing, Closed, disappears or
//!    restarts (InitWait again) is reported as
//!    [`HandshakeEvent::Disconnected`]; we write Closed and wait for the
//!    backend to come back, then start again at 1 (re-reading `backend`
//!    and `backend-id`, which may have changed).
//!
//! [`Frontend`] is a state machine driven by [`Frontend::poll`]: it never
//! blocks beyond single xenstore requests, takes the current time from the
//! caller, and gives up on every wait after a deadline. It can be tested
//! without threads by polling it and a simulated backend in turn.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;
use core::time::Duration;

use grant_tables::DomId;

use crate::client::{Transaction, Xenstore, XsError};
use crate::path::check_absolute;
use crate::state::XenbusState;
use crate::transport::{Transport, Wait};
use crate::wire::{parse_u32_strict, Errno};

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

/// Where the backend is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// The frontend directory (as configured).
    pub frontend: String,
    /// The backend directory, absolute.
    pub backend: String,
    /// The backend's domain: grant the rings to it, bind the event channel
    /// to it.
    pub backend_id: DomId,
}

impl BackendInfo {
    /// `<frontend>/<key>`.
    pub fn frontend_key(&self, key: &str) -> String {
        crate::path::join(&self.frontend, key)
    }
    /// `<backend>/<key>`.
    pub fn backend_key(&self, key: &str) -> String {
        crate::path::join(&self.backend, key)
    }
}

/// Where the handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the toolstack's `backend`/`backend-id` nodes.
    FindBackend,
    /// Initialising written; waiting for the backend's InitWait.
    WaitBackendInitWait,
    /// Keys published; waiting for the backend's Connected.
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

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Phase::FindBackend => "waiting for the toolstack to write backend and backend-id",
            Phase::WaitBackendInitWait => "waiting for the backend to reach InitWait",
            Phase::WaitBackendConnected => "waiting for the backend to reach Connected",
            Phase::Connected => "connected",
            Phase::WaitBackendReturn => "waiting for the backend to come back",
            Phase::Closing => "waiting for the backend to close",
            Phase::Shut => "closed",
            Phase::Failed => "failed",
        };
        f.write_str(s)
    }
}

/// Why the connection to the backend was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The backend is closing (unplug or error).
    BackendClosing,
    /// The backend closed.
    BackendClosed,
    /// The backend's nodes disappeared (crash, or removal by the toolstack).
    BackendGone,
    /// The backend started over (InitWait or Initialising) while connected.
    BackendRestarted,
}

/// What a poll produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeEvent {
    /// Nothing the device must act on.
    Idle,
    /// Both ends are Connected: start I/O.
    Connected(BackendInfo),
    /// The backend went away: stop I/O and release what was published
    /// (grants, event channel). The handshake reconnects by itself when the
    /// backend returns, calling the publish callback again.
    Disconnected(DisconnectReason),
    /// [`Frontend::close`] completed.
    Closed,
    /// The toolstack removed the frontend's directory (the device was
    /// unplugged): stop I/O and release everything; nothing more happens.
    Removed,
}

/// What a device's publish callback may fail with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// A xenstore operation failed.
    Store(XsError),
    /// The device could not prepare what it publishes (grant, event
    /// channel...).
    Device(String),
}

impl From<XsError> for PublishError {
    fn from(e: XsError) -> Self {
        PublishError::Store(e)
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Store(e) => write!(f, "{e}"),
            PublishError::Device(m) => write!(f, "{m}"),
        }
    }
}

/// Why the handshake failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// A xenstore operation failed.
    Store(XsError),
    /// A wait ran out.
    Timeout {
        /// The frontend.
        frontend: String,
        /// What it was waiting for.
        phase: Phase,
        /// The last backend state seen (`None`: no state node).
        backend_state: Option<XenbusState>,
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
    /// The device's publish callback failed.
    Publish {
        /// The frontend.
        frontend: String,
        /// The error.
        error: PublishError,
    },
    /// The publish transaction kept conflicting.
    TooManyConflicts {
        /// The frontend.
        frontend: String,
    },
    /// A backend's wait ran out ([`crate::backend::Backend`]).
    BackendTimeout {
        /// The backend directory.
        backend: String,
        /// What it was waiting for.
        phase: crate::backend::BackendPhase,
        /// The last frontend state seen (`None`: no state node).
        frontend_state: Option<XenbusState>,
        /// How long it waited.
        waited: Duration,
    },
}

impl HandshakeError {
    /// Whether the handshake kept its phase and the next poll retries
    /// (xenstore did not answer in time); other errors leave it
    /// [`Phase::Failed`] until restarted.
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
            HandshakeError::Timeout { frontend, phase, backend_state, waited } => {
                write!(f, "xenbus handshake of {frontend}: gave up {phase} after {waited:?} (backend state: ")?;
                match backend_state {
                    Some(s) => write!(f, "{s}")?,
                    None => write!(f, "absent")?,
                }
                write!(f, "); check that the backend driver runs and the toolstack set the device up, then restart the handshake")
            }
            HandshakeError::BadNode { path, reason } => write!(
                f,
                "xenbus handshake: node {path} is unusable: {reason}; the toolstack must write it correctly"
            ),
            HandshakeError::Publish { frontend, error } => {
                write!(f, "xenbus handshake of {frontend}: publishing the device's keys failed: {error}")
            }
            HandshakeError::TooManyConflicts { frontend } => write!(
                f,
                "xenbus handshake of {frontend}: the publish transaction kept conflicting; retry later"
            ),
            HandshakeError::BackendTimeout { backend, phase, frontend_state, waited } => {
                write!(f, "xenbus backend {backend}: gave up {phase} after {waited:?} (frontend state: ")?;
                match frontend_state {
                    Some(s) => write!(f, "{s}")?,
                    None => write!(f, "absent")?,
                }
                write!(f, "); check that the guest runs its frontend driver, then restart the handshake")
            }
        }
    }
}

/// Most transitions one poll takes (each costs a few requests).
const MAX_STEPS_PER_POLL: usize = 4;

/// The frontend handshake of one device.
#[derive(Debug)]
pub struct Frontend {
    config: FrontendConfig,
    token: String,
    phase: Phase,
    backend: Option<BackendInfo>,
    /// The `<backend>/state` path we watch.
    watched_state: Option<String>,
    watching_backend_node: bool,
    deadline: Option<Duration>,
    phase_started: Duration,
    dirty: bool,
    last_backend_state: Option<XenbusState>,
    connections: u64,
}

enum BackendView {
    Absent,
    State(XenbusState),
}

impl BackendView {
    fn state(&self) -> Option<XenbusState> {
        match self {
            BackendView::Absent => None,
            BackendView::State(s) => Some(*s),
        }
    }
}

impl Frontend {
    /// A handshake that has not started; the first [`Frontend::poll`]
    /// starts it.
    pub fn new(config: FrontendConfig) -> Self {
        let token = format!("xenbus-frontend:{}", config.frontend);
        Frontend {
            config,
            token,
            phase: Phase::FindBackend,
            backend: None,
            watched_state: None,
            watching_backend_node: false,
            deadline: None,
            phase_started: Duration::ZERO,
            dirty: true,
            last_backend_state: None,
            connections: 0,
        }
    }

    /// Where the handshake is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The backend, once found.
    pub fn backend(&self) -> Option<&BackendInfo> {
        self.backend.as_ref()
    }

    /// The watch token this handshake uses.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How many times the handshake reached Connected.
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// The backend state seen last (`None`: absent or not read yet).
    pub fn last_backend_state(&self) -> Option<XenbusState> {
        self.last_backend_state
    }

    /// The configuration.
    pub fn config(&self) -> &FrontendConfig {
        &self.config
    }

    /// Starts over after [`Phase::Failed`] (or at any time): the next poll
    /// looks the backend up again.
    pub fn restart(&mut self) {
        self.phase = Phase::FindBackend;
        self.deadline = None;
        self.dirty = true;
    }

    /// Asks for an orderly close: writes Closing and waits (through
    /// [`Frontend::poll`]) for the backend to close, then writes Closed and
    /// reports [`HandshakeEvent::Closed`].
    pub fn close<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
    ) -> Result<(), HandshakeError> {
        self.write_state(xs, XenbusState::Closing)?;
        self.enter(Phase::Closing, now, Some(self.config.step_timeout));
        self.dirty = true;
        Ok(())
    }

    /// Unregisters the watches (call when the device is dropped).
    pub fn teardown<T: Transport>(&mut self, xs: &mut Xenstore<T>) -> Result<(), HandshakeError> {
        if let Some(path) = self.watched_state.take() {
            xs.unwatch(&path, &self.token)?;
        }
        if self.watching_backend_node {
            self.watching_backend_node = false;
            let node = self.fe_key("backend");
            xs.unwatch(&node, &self.token)?;
        }
        xs.drain_events_for(&self.token);
        Ok(())
    }

    /// Drives the handshake: reads pending watch events without blocking,
    /// re-evaluates the backend's state when something changed, and checks
    /// the deadline against `now` (any monotonic clock, the same for every
    /// call). `publish` writes the device's keys into the transaction
    /// (typically under [`BackendInfo::frontend_key`]); it may run more
    /// than once per connection (the transaction is retried on conflicts)
    /// and must write the same values each time.
    pub fn poll<T, F>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        mut publish: F,
    ) -> Result<HandshakeEvent, HandshakeError>
    where
        T: Transport,
        F: FnMut(&mut Transaction<'_, T>, &BackendInfo) -> Result<(), PublishError>,
    {
        if matches!(self.phase, Phase::Shut | Phase::Failed) {
            return Ok(HandshakeEvent::Idle);
        }
        xs.pump()?;
        if xs.drain_events_for(&self.token) > 0 {
            self.dirty = true;
        }
        for _ in 0..MAX_STEPS_PER_POLL {
            if !self.dirty {
                break;
            }
            self.dirty = false;
            let event = match self.step(xs, now, &mut publish) {
                Ok(e) => e,
                Err(e) if e.is_transient() => {
                    // A reply that came late: keep the phase and look
                    // again at the next poll.
                    log::warn!("{e}; will retry");
                    self.dirty = true;
                    return Err(e);
                }
                Err(e) => {
                    log::error!("{e}");
                    self.phase = Phase::Failed;
                    return Err(e);
                }
            };
            if event != HandshakeEvent::Idle {
                return Ok(event);
            }
        }
        if let Some(deadline) = self.deadline {
            if now >= deadline {
                let err = HandshakeError::Timeout {
                    frontend: self.config.frontend.clone(),
                    phase: self.phase,
                    backend_state: self.last_backend_state,
                    waited: now.saturating_sub(self.phase_started),
                };
                log::error!("{err}");
                self.phase = Phase::Failed;
                return Err(err);
            }
        }
        Ok(HandshakeEvent::Idle)
    }

    /// Polls until connected, waiting on the transport between polls.
    /// `clock` gives the current monotonic time. Disconnections on the way
    /// are absorbed (the handshake reconnects by itself).
    pub fn run_until_connected<T, F>(
        &mut self,
        xs: &mut Xenstore<T>,
        clock: &mut dyn FnMut() -> Duration,
        mut publish: F,
    ) -> Result<BackendInfo, HandshakeError>
    where
        T: Transport,
        F: FnMut(&mut Transaction<'_, T>, &BackendInfo) -> Result<(), PublishError>,
    {
        loop {
            let event = match self.poll(xs, clock(), &mut publish) {
                Ok(e) => e,
                // Retried at the next poll; the phase deadline still holds.
                Err(e) if e.is_transient() => HandshakeEvent::Idle,
                Err(e) => return Err(e),
            };
            match event {
                HandshakeEvent::Connected(info) => return Ok(info),
                HandshakeEvent::Idle | HandshakeEvent::Disconnected(_) => {}
                HandshakeEvent::Closed | HandshakeEvent::Removed => {
                    return Err(HandshakeError::BadNode {
                        path: self.config.frontend.clone(),
                        reason: "the device was closed or removed while connecting".to_string(),
                    })
                }
            }
            if self.dirty {
                continue;
            }
            let left = self
                .deadline
                .map_or(Duration::from_millis(100), |d| d.saturating_sub(clock()));
            let wait = left.clamp(Duration::from_millis(1), Duration::from_millis(100));
            xs.pump_wait(Wait::For(wait))?;
        }
    }

    // ---- internals ----

    fn fe_key(&self, key: &str) -> String {
        crate::path::join(&self.config.frontend, key)
    }

    fn enter(&mut self, phase: Phase, now: Duration, timeout: Option<Duration>) {
        log::debug!("xenbus {}: {}", self.config.frontend, phase);
        self.phase = phase;
        self.phase_started = now;
        self.deadline = timeout.map(|t| now.saturating_add(t));
    }

    fn write_state<T: Transport>(
        &self,
        xs: &mut Xenstore<T>,
        state: XenbusState,
    ) -> Result<(), XsError> {
        xs.write(&self.fe_key("state"), state.as_str())
    }

    /// Reads `backend` and `backend-id`; `None` while the toolstack has not
    /// written them.
    fn find_backend<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
    ) -> Result<Option<BackendInfo>, HandshakeError> {
        if !self.watching_backend_node {
            let node = self.fe_key("backend");
            xs.ensure_watch(&node, &self.token)?;
            self.watching_backend_node = true;
        }
        let be_node = self.fe_key("backend");
        let id_node = self.fe_key("backend-id");
        let Some(backend) = xs.try_read(&be_node)? else {
            return Ok(None);
        };
        let Some(backend_id) = xs.try_read(&id_node)? else {
            return Ok(None);
        };
        let backend = String::from_utf8(backend).map_err(|_| HandshakeError::BadNode {
            path: be_node.clone(),
            reason: "not UTF-8".to_string(),
        })?;
        check_absolute(&backend).map_err(|e| HandshakeError::BadNode {
            path: be_node.clone(),
            reason: format!("not an absolute path: {e}"),
        })?;
        let id = parse_u32_strict(&backend_id)
            .and_then(|v| u16::try_from(v).ok())
            .map(DomId)
            .filter(|d| d.is_real())
            .ok_or_else(|| HandshakeError::BadNode {
                path: id_node.clone(),
                reason: format!(
                    "{:?} is not a domain id",
                    String::from_utf8_lossy(&backend_id)
                ),
            })?;
        Ok(Some(BackendInfo {
            frontend: self.config.frontend.clone(),
            backend,
            backend_id: id,
        }))
    }

    fn read_backend_state<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
    ) -> Result<BackendView, HandshakeError> {
        let Some(info) = &self.backend else {
            return Ok(BackendView::Absent);
        };
        let path = info.backend_key("state");
        let view = match xs.read(&path) {
            Ok(v) => match XenbusState::parse(&v) {
                Ok(s) => BackendView::State(s),
                Err(e) => {
                    log::warn!(
                        "xenbus {}: backend {path}: {e}; treating it as Unknown",
                        self.config.frontend
                    );
                    BackendView::State(XenbusState::Unknown)
                }
            },
            Err(e) if e.errno() == Some(Errno::ENOENT) => BackendView::Absent,
            Err(e) if e.errno() == Some(Errno::EACCES) => {
                log::warn!("xenbus {}: backend {path} is not readable by this domain; treating it as absent", self.config.frontend);
                BackendView::Absent
            }
            Err(e) => return Err(e.into()),
        };
        let state = view.state();
        if state != self.last_backend_state {
            log::debug!("xenbus {}: backend state {:?}", self.config.frontend, state);
        }
        self.last_backend_state = state;
        Ok(view)
    }

    /// Starts a connection attempt: finds the backend, watches its state,
    /// writes Initialising.
    fn begin_attempt<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
    ) -> Result<bool, HandshakeError> {
        let Some(info) = self.find_backend(xs)? else {
            if self.phase != Phase::FindBackend {
                self.enter(Phase::FindBackend, now, Some(self.config.step_timeout));
            } else if self.deadline.is_none() {
                self.deadline = Some(now.saturating_add(self.config.step_timeout));
                self.phase_started = now;
            }
            return Ok(false);
        };
        let state_path = info.backend_key("state");
        if self.watched_state.as_deref() != Some(state_path.as_str()) {
            if let Some(old) = self.watched_state.take() {
                if let Err(e) = xs.unwatch(&old, &self.token) {
                    log::warn!(
                        "xenbus {}: dropping the old backend watch failed: {e}",
                        self.config.frontend
                    );
                }
            }
            xs.ensure_watch(&state_path, &self.token)?;
            self.watched_state = Some(state_path);
        }
        self.backend = Some(info);
        self.write_state(xs, XenbusState::Initialising)?;
        self.enter(
            Phase::WaitBackendInitWait,
            now,
            Some(self.config.step_timeout),
        );
        Ok(true)
    }

    fn publish<T, F>(&mut self, xs: &mut Xenstore<T>, publish: &mut F) -> Result<(), HandshakeError>
    where
        T: Transport,
        F: FnMut(&mut Transaction<'_, T>, &BackendInfo) -> Result<(), PublishError>,
    {
        let Some(info) = self.backend.clone() else {
            return Err(HandshakeError::BadNode {
                path: self.fe_key("backend"),
                reason: "not read yet".to_string(),
            });
        };
        let state = match self.config.style {
            ConnectStyle::InitialisedFirst => XenbusState::Initialised,
            ConnectStyle::ConnectedAtOnce => XenbusState::Connected,
        };
        let state_path = self.fe_key("state");
        let mut failure: Option<PublishError> = None;
        let result = xs.transaction(|tx| {
            failure = None;
            if let Err(e) = publish(tx, &info) {
                // Keep the device's own error; abort the transaction (and
                // retry it if the error is a conflict).
                let store = match &e {
                    PublishError::Store(s) => s.clone(),
                    PublishError::Device(m) => XsError::BadArgument {
                        op: crate::wire::MsgType::TransactionEnd,
                        path: info.frontend.clone(),
                        reason: m.clone(),
                    },
                };
                failure = Some(e);
                return Err(store);
            }
            tx.write(&state_path, state.as_str())
        });
        match result {
            Ok(()) => {
                log::info!(
                    "xenbus {}: published keys for backend {} ({}), state {}",
                    info.frontend,
                    info.backend,
                    info.backend_id,
                    state
                );
                Ok(())
            }
            Err(XsError::TooManyConflicts { .. }) => Err(HandshakeError::TooManyConflicts {
                frontend: info.frontend,
            }),
            Err(e) => {
                let error = failure.unwrap_or(PublishError::Store(e));
                Err(HandshakeError::Publish {
                    frontend: info.frontend.clone(),
                    error,
                })
            }
        }
    }

    fn lose_backend<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        reason: DisconnectReason,
    ) -> Result<HandshakeEvent, HandshakeError> {
        log::warn!(
            "xenbus {}: backend lost ({reason:?}); waiting for it to come back",
            self.config.frontend
        );
        self.write_state(xs, XenbusState::Closed)?;
        self.enter(
            Phase::WaitBackendReturn,
            now,
            Some(self.config.reconnect_timeout),
        );
        // Look at the backend again at once, whatever the reason: a backend
        // already Closed (or back at InitWait) does not write its state
        // again, and a Linux backend waits for our Initialising before it
        // moves; waiting for the next watch event would wait for ever.
        // The check is idempotent: a backend still Closing just keeps us
        // waiting for its next change.
        self.dirty = true;
        Ok(HandshakeEvent::Disconnected(reason))
    }

    /// Whether the toolstack removed the frontend directory: `backend` is
    /// gone and so is the directory.
    fn removed<T: Transport>(&self, xs: &mut Xenstore<T>) -> Result<bool, HandshakeError> {
        // Not being allowed to see our own nodes any more (a missing node
        // under a parent that is not ours) means the same as them being
        // gone.
        let gone = |r: Result<alloc::vec::Vec<u8>, XsError>| match r {
            Ok(_) => Ok(false),
            Err(e) if matches!(e.errno(), Some(Errno::ENOENT | Errno::EACCES)) => Ok(true),
            Err(e) => Err(HandshakeError::from(e)),
        };
        Ok(gone(xs.read(&self.fe_key("backend")))? && gone(xs.read(&self.config.frontend))?)
    }

    fn step<T, F>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        publish: &mut F,
    ) -> Result<HandshakeEvent, HandshakeError>
    where
        T: Transport,
        F: FnMut(&mut Transaction<'_, T>, &BackendInfo) -> Result<(), PublishError>,
    {
        if matches!(
            self.phase,
            Phase::WaitBackendInitWait
                | Phase::WaitBackendConnected
                | Phase::Connected
                | Phase::WaitBackendReturn
        ) && self.removed(xs)?
        {
            log::info!("xenbus {}: the device was removed", self.config.frontend);
            self.enter(Phase::Shut, now, None);
            return Ok(HandshakeEvent::Removed);
        }
        match self.phase {
            Phase::FindBackend => {
                if self.begin_attempt(xs, now)? {
                    self.dirty = true;
                }
                Ok(HandshakeEvent::Idle)
            }
            Phase::WaitBackendInitWait => {
                if let BackendView::State(XenbusState::InitWait) = self.read_backend_state(xs)? {
                    self.publish(xs, publish)?;
                    self.enter(
                        Phase::WaitBackendConnected,
                        now,
                        Some(self.config.step_timeout),
                    );
                    self.dirty = true;
                }
                Ok(HandshakeEvent::Idle)
            }
            Phase::WaitBackendConnected => match self.read_backend_state(xs)? {
                BackendView::State(XenbusState::Connected) => {
                    if self.config.style == ConnectStyle::InitialisedFirst {
                        self.write_state(xs, XenbusState::Connected)?;
                    }
                    self.enter(Phase::Connected, now, None);
                    self.connections += 1;
                    let info = self
                        .backend
                        .clone()
                        .ok_or_else(|| HandshakeError::BadNode {
                            path: self.fe_key("backend"),
                            reason: "lost track of the backend".to_string(),
                        })?;
                    log::info!(
                        "xenbus {}: connected to {} ({})",
                        info.frontend,
                        info.backend,
                        info.backend_id
                    );
                    Ok(HandshakeEvent::Connected(info))
                }
                BackendView::State(XenbusState::Closing) => {
                    self.lose_backend(xs, now, DisconnectReason::BackendClosing)
                }
                BackendView::State(XenbusState::Closed) => {
                    self.lose_backend(xs, now, DisconnectReason::BackendClosed)
                }
                BackendView::Absent => self.lose_backend(xs, now, DisconnectReason::BackendGone),
                BackendView::State(_) => Ok(HandshakeEvent::Idle),
            },
            Phase::Connected => match self.read_backend_state(xs)? {
                BackendView::State(XenbusState::Closing) => {
                    self.lose_backend(xs, now, DisconnectReason::BackendClosing)
                }
                BackendView::State(XenbusState::Closed) => {
                    self.lose_backend(xs, now, DisconnectReason::BackendClosed)
                }
                BackendView::Absent => self.lose_backend(xs, now, DisconnectReason::BackendGone),
                BackendView::State(XenbusState::InitWait | XenbusState::Initialising) => {
                    self.lose_backend(xs, now, DisconnectReason::BackendRestarted)
                }
                BackendView::State(_) => Ok(HandshakeEvent::Idle),
            },
            Phase::WaitBackendReturn => {
                // The backend path may have changed: look it up again.
                let Some(info) = self.find_backend(xs)? else {
                    return Ok(HandshakeEvent::Idle);
                };
                if self.backend.as_ref() != Some(&info) {
                    log::info!(
                        "xenbus {}: backend is now {} ({})",
                        info.frontend,
                        info.backend,
                        info.backend_id
                    );
                    // Watches the new state node and starts over.
                    if self.begin_attempt(xs, now)? {
                        self.dirty = true;
                    }
                    return Ok(HandshakeEvent::Idle);
                }
                match self.read_backend_state(xs)? {
                    BackendView::State(
                        XenbusState::InitWait
                        | XenbusState::Initialising
                        | XenbusState::Closed
                        | XenbusState::Unknown,
                    ) => {
                        if self.begin_attempt(xs, now)? {
                            self.dirty = true;
                        }
                        Ok(HandshakeEvent::Idle)
                    }
                    _ => Ok(HandshakeEvent::Idle),
                }
            }
            Phase::Closing => match self.read_backend_state(xs)? {
                BackendView::State(XenbusState::Closing | XenbusState::Closed)
                | BackendView::Absent => {
                    self.write_state(xs, XenbusState::Closed)?;
                    self.enter(Phase::Shut, now, None);
                    Ok(HandshakeEvent::Closed)
                }
                BackendView::State(_) => Ok(HandshakeEvent::Idle),
            },
            Phase::Shut | Phase::Failed => Ok(HandshakeEvent::Idle),
        }
    }
}
