//! The backend side of the xenbus handshake, for backends written with
//! this suite (the hosted netback/blkback, benches' peers).
//!
//! The toolstack creates the backend directory
//! (`/local/domain/<be>/backend/<type>/<fe>/<id>`) with `frontend` and
//! `frontend-id`. The handshake follows Linux's backends:
//!
//! 1. read `frontend` and `frontend-id`, watch `<frontend>/state`, write
//!    the device's feature keys ([`BackendDevice::advertise`]) and
//!    `state` = InitWait in one transaction;
//! 2. when the frontend is ready ([`ConnectWhen`]), let the device read the
//!    frontend's keys and map its rings ([`BackendDevice::connect`]), then
//!    write Connected and report [`BackendEvent::Connected`];
//! 3. a frontend that goes Closing is answered with Closing, one that goes
//!    Closed (or disappears) with Closed, both reported as
//!    [`BackendEvent::Disconnected`]; a frontend that starts over
//!    (Initialising) while we are Closed gets InitWait again, and the
//!    cycle repeats;
//! 4. the toolstack removing the backend directory is
//!    [`BackendEvent::Removed`].
//!
//! Like [`crate::Frontend`], [`Backend`] is a poll-driven state machine:
//! the caller passes the time and calls [`Backend::poll`] when the
//! transport has something (or periodically).

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;
use core::time::Duration;

use grant_tables::DomId;

use crate::client::{Transaction, Xenstore, XsError};
use crate::frontend::{HandshakeError, PublishError};
use crate::path::check_absolute;
use crate::state::XenbusState;
use crate::transport::{Transport, Wait};
use crate::wire::{parse_u32_strict, Errno};

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

/// Where the frontend is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendInfo {
    /// The backend directory.
    pub backend: String,
    /// The frontend directory, absolute.
    pub frontend: String,
    /// The frontend's domain: map its grants, bind to its event channel.
    pub frontend_id: DomId,
}

impl FrontendInfo {
    /// `<frontend>/<key>`.
    pub fn frontend_key(&self, key: &str) -> String {
        crate::path::join(&self.frontend, key)
    }
    /// `<backend>/<key>`.
    pub fn backend_key(&self, key: &str) -> String {
        crate::path::join(&self.backend, key)
    }
}

/// What a backend device does during the handshake.
pub trait BackendDevice<T: Transport> {
    /// Writes the backend's feature keys (`feature-*`,
    /// `max-ring-page-order`, ...) in the transaction that also writes
    /// InitWait. May run more than once (the transaction is retried on
    /// conflicts).
    fn advertise(
        &mut self,
        tx: &mut Transaction<'_, T>,
        info: &FrontendInfo,
    ) -> Result<(), PublishError> {
        let _ = (tx, info);
        Ok(())
    }

    /// Reads the frontend's keys (`ring-ref`, `event-channel`, ...) and
    /// connects: maps the rings, binds the event channel. Everything read
    /// here is written by the (untrusted) frontend: validate it. On error
    /// the backend goes Closing and waits for the frontend to start over.
    fn connect(&mut self, xs: &mut Xenstore<T>, info: &FrontendInfo) -> Result<(), PublishError>;

    /// Releases what `connect` set up (unmap, unbind). Called before the
    /// backend reports [`BackendEvent::Disconnected`] or
    /// [`BackendEvent::Removed`] after a connection.
    fn disconnect(&mut self, info: &FrontendInfo);
}

/// Where the backend handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendPhase {
    /// Waiting for the toolstack's `frontend`/`frontend-id` nodes.
    FindFrontend,
    /// InitWait written; waiting for the frontend to be ready.
    WaitFrontend,
    /// Connected.
    Connected,
    /// Closing written (the frontend is closing, or connecting failed);
    /// waiting for the frontend to close.
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

/// Why a backend lost its frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendLoss {
    /// The frontend is closing.
    Closing,
    /// The frontend closed.
    Closed,
    /// The frontend's state node disappeared.
    Gone,
    /// The frontend started over (Initialising) while connected.
    Restarted,
}

/// What a backend poll produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendEvent {
    /// Nothing to act on.
    Idle,
    /// Connected: serve the rings.
    Connected(FrontendInfo),
    /// The frontend went away; [`BackendDevice::disconnect`] has run.
    Disconnected(FrontendLoss),
    /// [`BackendDevice::connect`] failed (bad keys from the frontend...);
    /// the backend is Closing and waits for the frontend to start over.
    ConnectFailed(PublishError),
    /// [`Backend::close`] completed.
    Closed,
    /// The toolstack removed the backend directory.
    Removed,
}

/// The backend handshake of one device.
#[derive(Debug)]
pub struct Backend {
    config: BackendConfig,
    token: String,
    phase: BackendPhase,
    info: Option<FrontendInfo>,
    watched: Option<String>,
    watching_self: bool,
    connected: bool,
    deadline: Option<Duration>,
    phase_started: Duration,
    dirty: bool,
    last_frontend_state: Option<XenbusState>,
    connections: u64,
}

/// Most transitions one poll takes.
const MAX_STEPS_PER_POLL: usize = 4;

impl Backend {
    /// A handshake that starts at the first poll.
    pub fn new(config: BackendConfig) -> Self {
        let token = format!("xenbus-backend:{}", config.backend);
        Backend {
            config,
            token,
            phase: BackendPhase::FindFrontend,
            info: None,
            watched: None,
            watching_self: false,
            connected: false,
            deadline: None,
            phase_started: Duration::ZERO,
            dirty: true,
            last_frontend_state: None,
            connections: 0,
        }
    }

    /// Where the handshake is.
    pub fn phase(&self) -> BackendPhase {
        self.phase
    }

    /// The frontend, once found.
    pub fn frontend(&self) -> Option<&FrontendInfo> {
        self.info.as_ref()
    }

    /// How many times the backend connected.
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// The watch token this handshake uses.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The frontend state seen last (`None`: absent or not read yet).
    pub fn last_frontend_state(&self) -> Option<XenbusState> {
        self.last_frontend_state
    }

    /// Starts over after [`BackendPhase::Failed`].
    pub fn restart(&mut self) {
        self.phase = BackendPhase::FindFrontend;
        self.deadline = None;
        self.dirty = true;
    }

    /// Asks for an orderly shutdown (unplug): writes Closing and waits for
    /// the frontend to close; then [`BackendEvent::Closed`].
    pub fn close<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
    ) -> Result<(), HandshakeError> {
        self.write_state(xs, XenbusState::Closing)?;
        self.enter(
            BackendPhase::ShuttingDown,
            now,
            self.config.frontend_timeout,
        );
        self.dirty = true;
        Ok(())
    }

    /// Unregisters the watches.
    pub fn teardown<T: Transport>(&mut self, xs: &mut Xenstore<T>) -> Result<(), HandshakeError> {
        if let Some(p) = self.watched.take() {
            xs.unwatch(&p, &self.token)?;
        }
        if self.watching_self {
            self.watching_self = false;
            xs.unwatch(&self.be_key("frontend"), &self.token)?;
        }
        xs.drain_events_for(&self.token);
        Ok(())
    }

    /// Drives the handshake (see [`crate::Frontend::poll`] for the
    /// contract on `now`).
    pub fn poll<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
    ) -> Result<BackendEvent, HandshakeError>
    where
        T: Transport,
        D: BackendDevice<T>,
    {
        if matches!(self.phase, BackendPhase::Shut | BackendPhase::Failed) {
            return Ok(BackendEvent::Idle);
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
            match self.step(xs, now, device) {
                Ok(BackendEvent::Idle) => {}
                Ok(e) => return Ok(e),
                Err(e) if e.is_transient() => {
                    log::warn!("{e}; will retry");
                    self.dirty = true;
                    return Err(e);
                }
                Err(e) => {
                    log::error!("{e}");
                    self.phase = BackendPhase::Failed;
                    return Err(e);
                }
            }
        }
        if let Some(deadline) = self.deadline {
            if now >= deadline {
                let err = HandshakeError::BackendTimeout {
                    backend: self.config.backend.clone(),
                    phase: self.phase,
                    frontend_state: self.last_frontend_state,
                    waited: now.saturating_sub(self.phase_started),
                };
                log::error!("{err}");
                self.phase = BackendPhase::Failed;
                return Err(err);
            }
        }
        Ok(BackendEvent::Idle)
    }

    /// Polls until connected, waiting on the transport between polls.
    pub fn run_until_connected<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        clock: &mut dyn FnMut() -> Duration,
        device: &mut D,
    ) -> Result<FrontendInfo, HandshakeError>
    where
        T: Transport,
        D: BackendDevice<T>,
    {
        loop {
            let event = match self.poll(xs, clock(), device) {
                Ok(e) => e,
                // Retried at the next poll; the phase deadline still holds.
                Err(e) if e.is_transient() => BackendEvent::Idle,
                Err(e) => return Err(e),
            };
            match event {
                BackendEvent::Connected(info) => return Ok(info),
                BackendEvent::Closed | BackendEvent::Removed => {
                    return Err(HandshakeError::BadNode {
                        path: self.config.backend.clone(),
                        reason: "the device was closed or removed while connecting".to_string(),
                    })
                }
                _ => {}
            }
            if !self.dirty {
                xs.pump_wait(Wait::For(Duration::from_millis(100)))?;
            }
        }
    }

    // ---- internals ----

    fn be_key(&self, key: &str) -> String {
        crate::path::join(&self.config.backend, key)
    }

    fn enter(&mut self, phase: BackendPhase, now: Duration, timeout: Option<Duration>) {
        log::debug!("xenbus backend {}: {}", self.config.backend, phase);
        self.phase = phase;
        self.phase_started = now;
        self.deadline = timeout.map(|t| now.saturating_add(t));
    }

    fn write_state<T: Transport>(
        &self,
        xs: &mut Xenstore<T>,
        state: XenbusState,
    ) -> Result<(), XsError> {
        xs.write(&self.be_key("state"), state.as_str())
    }

    fn find_frontend<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
    ) -> Result<Option<FrontendInfo>, HandshakeError> {
        if !self.watching_self {
            xs.ensure_watch(&self.be_key("frontend"), &self.token)?;
            self.watching_self = true;
        }
        let fe_node = self.be_key("frontend");
        let id_node = self.be_key("frontend-id");
        let Some(fe) = xs.try_read(&fe_node)? else {
            return Ok(None);
        };
        let Some(id) = xs.try_read(&id_node)? else {
            return Ok(None);
        };
        let frontend = String::from_utf8(fe).map_err(|_| HandshakeError::BadNode {
            path: fe_node.clone(),
            reason: "not UTF-8".to_string(),
        })?;
        check_absolute(&frontend).map_err(|e| HandshakeError::BadNode {
            path: fe_node.clone(),
            reason: format!("not an absolute path: {e}"),
        })?;
        let frontend_id = parse_u32_strict(&id)
            .and_then(|v| u16::try_from(v).ok())
            .map(DomId)
            .filter(|d| d.is_real())
            .ok_or_else(|| HandshakeError::BadNode {
                path: id_node.clone(),
                reason: format!("{:?} is not a domain id", String::from_utf8_lossy(&id)),
            })?;
        Ok(Some(FrontendInfo {
            backend: self.config.backend.clone(),
            frontend,
            frontend_id,
        }))
    }

    /// The frontend's state; `None` when absent or unreadable.
    fn frontend_state<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
    ) -> Result<Option<XenbusState>, HandshakeError> {
        let Some(info) = &self.info else {
            return Ok(None);
        };
        let path = info.frontend_key("state");
        let state = match xs.read(&path) {
            Ok(v) => Some(XenbusState::parse(&v).unwrap_or_else(|e| {
                log::warn!(
                    "xenbus backend {}: frontend {path}: {e}; treating it as Unknown",
                    self.config.backend
                );
                XenbusState::Unknown
            })),
            Err(e) if matches!(e.errno(), Some(Errno::ENOENT | Errno::EACCES)) => None,
            Err(e) => return Err(e.into()),
        };
        self.last_frontend_state = state;
        Ok(state)
    }

    /// Whether the toolstack removed the backend directory.
    fn removed<T: Transport>(&self, xs: &mut Xenstore<T>) -> Result<bool, HandshakeError> {
        let gone = |r: Result<alloc::vec::Vec<u8>, XsError>| match r {
            Ok(_) => Ok(false),
            Err(e) if matches!(e.errno(), Some(Errno::ENOENT | Errno::EACCES)) => Ok(true),
            Err(e) => Err(HandshakeError::from(e)),
        };
        Ok(gone(xs.read(&self.be_key("frontend")))? && gone(xs.read(&self.config.backend))?)
    }

    /// Watches the frontend's state, advertises, writes InitWait.
    fn offer<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
    ) -> Result<bool, HandshakeError>
    where
        T: Transport,
        D: BackendDevice<T>,
    {
        let Some(info) = self.find_frontend(xs)? else {
            if self.phase != BackendPhase::FindFrontend {
                self.enter(
                    BackendPhase::FindFrontend,
                    now,
                    self.config.frontend_timeout,
                );
            } else if self.deadline.is_none() {
                self.deadline = self.config.frontend_timeout.map(|t| now.saturating_add(t));
                self.phase_started = now;
            }
            return Ok(false);
        };
        let state_path = info.frontend_key("state");
        if self.watched.as_deref() != Some(state_path.as_str()) {
            if let Some(old) = self.watched.take() {
                if let Err(e) = xs.unwatch(&old, &self.token) {
                    log::warn!(
                        "xenbus backend {}: dropping the old frontend watch failed: {e}",
                        self.config.backend
                    );
                }
            }
            xs.ensure_watch(&state_path, &self.token)?;
            self.watched = Some(state_path);
        }
        let mut failure: Option<PublishError> = None;
        let state_node = self.be_key("state");
        let result = xs.transaction(|tx| {
            failure = None;
            if let Err(e) = device.advertise(tx, &info) {
                let store = match &e {
                    PublishError::Store(s) => s.clone(),
                    PublishError::Device(m) => XsError::BadArgument {
                        op: crate::wire::MsgType::TransactionEnd,
                        path: info.backend.clone(),
                        reason: m.clone(),
                    },
                };
                failure = Some(e);
                return Err(store);
            }
            tx.write(&state_node, XenbusState::InitWait.as_str())
        });
        if let Err(e) = result {
            let error = failure.unwrap_or(PublishError::Store(e));
            return Err(HandshakeError::Publish {
                frontend: info.frontend,
                error,
            });
        }
        self.info = Some(info);
        self.enter(
            BackendPhase::WaitFrontend,
            now,
            self.config.frontend_timeout,
        );
        Ok(true)
    }

    fn lose<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
        state: XenbusState,
        loss: FrontendLoss,
    ) -> Result<BackendEvent, HandshakeError>
    where
        T: Transport,
        D: BackendDevice<T>,
    {
        let was_connected = core::mem::replace(&mut self.connected, false);
        if was_connected {
            if let Some(info) = &self.info {
                device.disconnect(info);
            }
        }
        self.write_state(xs, state)?;
        let phase = if state == XenbusState::Closing {
            BackendPhase::Closing
        } else {
            BackendPhase::Closed
        };
        self.enter(phase, now, None);
        self.dirty = true;
        if was_connected {
            log::info!(
                "xenbus backend {}: frontend lost ({loss:?})",
                self.config.backend
            );
            Ok(BackendEvent::Disconnected(loss))
        } else {
            Ok(BackendEvent::Idle)
        }
    }

    fn step<T, D>(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
    ) -> Result<BackendEvent, HandshakeError>
    where
        T: Transport,
        D: BackendDevice<T>,
    {
        if self.phase != BackendPhase::FindFrontend && self.removed(xs)? {
            if core::mem::replace(&mut self.connected, false) {
                if let Some(info) = &self.info {
                    device.disconnect(info);
                }
            }
            log::info!(
                "xenbus backend {}: the device was removed",
                self.config.backend
            );
            self.enter(BackendPhase::Shut, now, None);
            return Ok(BackendEvent::Removed);
        }
        match self.phase {
            BackendPhase::FindFrontend => {
                if self.offer(xs, now, device)? {
                    self.dirty = true;
                }
                Ok(BackendEvent::Idle)
            }
            BackendPhase::WaitFrontend => {
                let state = self.frontend_state(xs)?;
                let ready = match self.config.connect_when {
                    ConnectWhen::FrontendInitialised => {
                        matches!(
                            state,
                            Some(XenbusState::Initialised | XenbusState::Connected)
                        )
                    }
                    ConnectWhen::FrontendConnected => state == Some(XenbusState::Connected),
                };
                if ready {
                    let Some(info) = self.info.clone() else {
                        return Ok(BackendEvent::Idle);
                    };
                    if let Err(e) = device.connect(xs, &info) {
                        log::warn!(
                            "xenbus backend {}: connecting failed: {e}; closing",
                            self.config.backend
                        );
                        self.write_state(xs, XenbusState::Closing)?;
                        self.enter(BackendPhase::Closing, now, None);
                        return Ok(BackendEvent::ConnectFailed(e));
                    }
                    self.connected = true;
                    if let Err(e) = self.write_state(xs, XenbusState::Connected) {
                        self.connected = false;
                        device.disconnect(&info);
                        return Err(e.into());
                    }
                    self.connections += 1;
                    self.enter(BackendPhase::Connected, now, None);
                    log::info!(
                        "xenbus backend {}: connected to {} ({})",
                        info.backend,
                        info.frontend,
                        info.frontend_id
                    );
                    return Ok(BackendEvent::Connected(info));
                }
                match state {
                    Some(XenbusState::Closing) => {
                        self.lose(xs, now, device, XenbusState::Closing, FrontendLoss::Closing)
                    }
                    Some(XenbusState::Closed) => {
                        self.lose(xs, now, device, XenbusState::Closed, FrontendLoss::Closed)
                    }
                    _ => Ok(BackendEvent::Idle),
                }
            }
            BackendPhase::Connected => match self.frontend_state(xs)? {
                Some(XenbusState::Closing) => {
                    self.lose(xs, now, device, XenbusState::Closing, FrontendLoss::Closing)
                }
                Some(XenbusState::Closed) => {
                    self.lose(xs, now, device, XenbusState::Closed, FrontendLoss::Closed)
                }
                None => self.lose(xs, now, device, XenbusState::Closed, FrontendLoss::Gone),
                Some(XenbusState::Initialising) => self.lose(
                    xs,
                    now,
                    device,
                    XenbusState::Closed,
                    FrontendLoss::Restarted,
                ),
                Some(_) => Ok(BackendEvent::Idle),
            },
            BackendPhase::Closing => match self.frontend_state(xs)? {
                Some(XenbusState::Closed) | None => {
                    self.write_state(xs, XenbusState::Closed)?;
                    self.enter(BackendPhase::Closed, now, None);
                    self.dirty = true;
                    Ok(BackendEvent::Idle)
                }
                Some(XenbusState::Initialising) => {
                    self.enter(BackendPhase::Closed, now, None);
                    self.dirty = true;
                    Ok(BackendEvent::Idle)
                }
                Some(_) => Ok(BackendEvent::Idle),
            },
            BackendPhase::Closed => match self.frontend_state(xs)? {
                Some(
                    XenbusState::Initialising | XenbusState::Initialised | XenbusState::Connected,
                ) => {
                    // The frontend starts over: offer again (the frontend
                    // path may have changed).
                    if self.offer(xs, now, device)? {
                        self.dirty = true;
                    }
                    Ok(BackendEvent::Idle)
                }
                _ => Ok(BackendEvent::Idle),
            },
            BackendPhase::ShuttingDown => match self.frontend_state(xs)? {
                Some(XenbusState::Closing | XenbusState::Closed) | None => {
                    if core::mem::replace(&mut self.connected, false) {
                        if let Some(info) = &self.info {
                            device.disconnect(info);
                        }
                    }
                    self.write_state(xs, XenbusState::Closed)?;
                    self.enter(BackendPhase::Shut, now, None);
                    Ok(BackendEvent::Closed)
                }
                Some(_) => Ok(BackendEvent::Idle),
            },
            BackendPhase::Shut | BackendPhase::Failed => Ok(BackendEvent::Idle),
        }
    }
}
