//! The machinery both ends of the handshake run: finding the other end
//! through the toolstack's nodes, watching and reading its state, the
//! transaction that writes keys with a state, deadlines, the poll loop and
//! the blocking run loop. [`crate::Frontend`] and [`crate::Backend`] add
//! only their own state rules (`step`).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use grant_tables::DomId;

use crate::client::{Transaction, Xenstore, XsError};
use crate::handshake::{
    Connection, Device, End, HandshakeError, HandshakeEvent, HandshakePhase, TeardownReason,
};
use crate::path::check_absolute;
use crate::state::XenbusState;
use crate::transport::{Transport, Wait};
use crate::wire::{parse_u32_strict, Errno};

/// Most transitions one poll takes (each costs a few requests).
const MAX_STEPS_PER_POLL: usize = 4;

/// Longest single wait of [`run_until_connected`] (watch events end it
/// earlier).
const MAX_WAIT: Duration = Duration::from_millis(100);

/// A phase of one end's state machine.
pub(crate) trait PhaseKind: Copy + PartialEq + fmt::Display {
    /// The phase after an unrecoverable error.
    const FAILED: Self;
    /// Whether polling does anything (not shut, not failed).
    fn is_active(self) -> bool;
    /// The phase tagged with its end, for errors.
    fn tagged(self) -> HandshakePhase;
}

/// The other end, as the toolstack's nodes name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerNodes {
    /// Its directory, absolute.
    pub dir: String,
    /// Its domain.
    pub id: DomId,
}

/// The state both ends keep, and what they do alike.
#[derive(Debug)]
pub(crate) struct Core<P> {
    pub end: End,
    /// This end's directory.
    pub dir: String,
    pub token: String,
    pub phase: P,
    /// The other end, once found.
    pub peer: Option<PeerNodes>,
    /// The `<peer>/state` path we watch.
    watched_state: Option<String>,
    watching_peer_node: bool,
    pub deadline: Option<Duration>,
    pub phase_started: Duration,
    /// Something may have changed: step again.
    pub dirty: bool,
    pub last_peer_state: Option<XenbusState>,
    /// The last connection number handed out.
    numbered: u64,
    /// How many times this end reached Connected.
    pub connections: u64,
    /// The connection whose resources are set up.
    pub live: Option<Connection>,
}

/// One end's state machine, for the shared poll and run loops.
pub(crate) trait Machine<T: Transport, D: Device<T>> {
    type Phase: PhaseKind;
    fn core(&mut self) -> &mut Core<Self::Phase>;
    /// One evaluation of the current phase.
    fn step(
        &mut self,
        xs: &mut Xenstore<T>,
        now: Duration,
        device: &mut D,
    ) -> Result<HandshakeEvent, HandshakeError>;
}

impl<P: PhaseKind> Core<P> {
    pub fn new(end: End, dir: String, phase: P) -> Self {
        let token = format!("xenbus-{}:{dir}", end.name());
        Core {
            end,
            dir,
            token,
            phase,
            peer: None,
            watched_state: None,
            watching_peer_node: false,
            deadline: None,
            phase_started: Duration::ZERO,
            dirty: true,
            last_peer_state: None,
            numbered: 0,
            connections: 0,
            live: None,
        }
    }

    /// `<dir>/<key>`.
    pub fn key(&self, key: &str) -> String {
        crate::path::join(&self.dir, key)
    }

    pub fn enter(&mut self, phase: P, now: Duration, timeout: Option<Duration>) {
        log::debug!("xenbus {} {}: {}", self.end, self.dir, phase);
        self.phase = phase;
        self.phase_started = now;
        self.deadline = timeout.map(|t| now.saturating_add(t));
    }

    /// Starts the phase's deadline if it has none (a phase entered before
    /// its wait could be timed).
    pub fn arm_deadline(&mut self, now: Duration, timeout: Option<Duration>) {
        if self.deadline.is_none() {
            self.deadline = timeout.map(|t| now.saturating_add(t));
            self.phase_started = now;
        }
    }

    pub fn write_state<T: Transport>(
        &self,
        xs: &mut Xenstore<T>,
        state: XenbusState,
    ) -> Result<(), XsError> {
        xs.write(&self.key("state"), state.as_str())
    }

    /// Reads the toolstack's `<peer>` and `<peer>-id` nodes in our
    /// directory (watching the first); `None` while they are not written.
    pub fn find_peer<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
    ) -> Result<Option<PeerNodes>, HandshakeError> {
        let peer = self.end.peer().name();
        let dir_node = self.key(peer);
        if !self.watching_peer_node {
            xs.ensure_watch(&dir_node, &self.token)?;
            self.watching_peer_node = true;
        }
        let id_node = self.key(&format!("{peer}-id"));
        let Some(dir) = xs.try_read(&dir_node)? else {
            return Ok(None);
        };
        let Some(id) = xs.try_read(&id_node)? else {
            return Ok(None);
        };
        let dir = String::from_utf8(dir).map_err(|_| HandshakeError::BadNode {
            path: dir_node.clone(),
            reason: "not UTF-8".to_string(),
        })?;
        check_absolute(&dir).map_err(|e| HandshakeError::BadNode {
            path: dir_node.clone(),
            reason: format!("not an absolute path: {e}"),
        })?;
        let id = parse_u32_strict(&id)
            .and_then(|v| u16::try_from(v).ok())
            .map(DomId)
            .filter(|d| d.is_real())
            .ok_or_else(|| HandshakeError::BadNode {
                path: id_node.clone(),
                reason: format!("{:?} is not a domain id", String::from_utf8_lossy(&id)),
            })?;
        Ok(Some(PeerNodes { dir, id }))
    }

    /// Makes `peer` the other end and watches its state node (dropping the
    /// watch on a previous one).
    pub fn adopt_peer<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        peer: PeerNodes,
    ) -> Result<(), HandshakeError> {
        let state_path = crate::path::join(&peer.dir, "state");
        if self.watched_state.as_deref() != Some(state_path.as_str()) {
            if let Some(old) = self.watched_state.take() {
                if let Err(e) = xs.unwatch(&old, &self.token) {
                    log::warn!(
                        "xenbus {} {}: dropping the watch on {old} failed: {e}",
                        self.end,
                        self.dir
                    );
                }
            }
            xs.ensure_watch(&state_path, &self.token)?;
            self.watched_state = Some(state_path);
        }
        self.peer = Some(peer);
        Ok(())
    }

    /// The other end's state; `None` when absent or not readable by us.
    /// A value that is not a state is logged and read as Unknown.
    pub fn peer_state<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
    ) -> Result<Option<XenbusState>, HandshakeError> {
        let Some(peer) = &self.peer else {
            return Ok(None);
        };
        let path = crate::path::join(&peer.dir, "state");
        let state = self.parse_state(&path, xs.read(&path))?;
        if state != self.last_peer_state {
            log::debug!(
                "xenbus {} {}: {} state {state:?}",
                self.end,
                self.dir,
                self.end.peer()
            );
        }
        self.last_peer_state = state;
        Ok(state)
    }

    /// The other end's state read inside a transaction (so that what is
    /// written with it depends on it atomically).
    pub fn peer_state_in<T: Transport>(
        &self,
        tx: &mut Transaction<'_, T>,
    ) -> Result<Option<XenbusState>, XsError> {
        let Some(peer) = &self.peer else {
            return Ok(None);
        };
        let path = crate::path::join(&peer.dir, "state");
        self.parse_state(&path, tx.read(&path))
    }

    fn parse_state(
        &self,
        path: &str,
        read: Result<Vec<u8>, XsError>,
    ) -> Result<Option<XenbusState>, XsError> {
        match read {
            Ok(v) => Ok(Some(XenbusState::parse(&v).unwrap_or_else(|e| {
                log::warn!(
                    "xenbus {} {}: {} {path}: {e}; treating it as Unknown",
                    self.end,
                    self.dir,
                    self.end.peer()
                );
                XenbusState::Unknown
            }))),
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(None),
            Err(e) if e.errno() == Some(Errno::EACCES) => {
                log::warn!(
                    "xenbus {} {}: {path} is not readable by this domain; treating it as absent",
                    self.end,
                    self.dir
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the toolstack removed this end: the `<peer>` node is gone
    /// and so is the directory. Not being allowed to see our own nodes any
    /// more (a missing node under a parent that is not ours) counts as
    /// gone.
    pub fn removed<T: Transport>(&self, xs: &mut Xenstore<T>) -> Result<bool, HandshakeError> {
        let gone = |r: Result<Vec<u8>, XsError>| match r {
            Ok(_) => Ok(false),
            Err(e) if matches!(e.errno(), Some(Errno::ENOENT | Errno::EACCES)) => Ok(true),
            Err(e) => Err(HandshakeError::from(e)),
        };
        Ok(gone(xs.read(&self.key(self.end.peer().name())))? && gone(xs.read(&self.dir))?)
    }

    /// The connection that would come next with the current peer, not
    /// yet claimed ([`Core::claim`]).
    pub fn candidate(&self) -> Result<Connection, HandshakeError> {
        let Some(peer) = &self.peer else {
            return Err(HandshakeError::BadNode {
                path: self.key(self.end.peer().name()),
                reason: "not read yet".to_string(),
            });
        };
        let (frontend, backend) = match self.end {
            End::Frontend => (self.dir.clone(), peer.dir.clone()),
            End::Backend => (peer.dir.clone(), self.dir.clone()),
        };
        Ok(Connection {
            number: self.numbered.saturating_add(1),
            frontend,
            backend,
            peer: peer.id,
        })
    }

    /// Marks `conn`'s number as used: numbers are never handed out twice.
    pub fn claim(&mut self, conn: &Connection) {
        self.numbered = self.numbered.max(conn.number);
    }

    /// Runs [`Device::teardown`] for the live connection, if any; returns
    /// its number.
    pub fn teardown<T: Transport, D: Device<T>>(
        &mut self,
        device: &mut D,
        reason: TeardownReason,
    ) -> Option<u64> {
        let conn = self.live.take()?;
        log::debug!(
            "xenbus {} {}: tearing down connection {} ({reason:?})",
            self.end,
            self.dir,
            conn.number
        );
        device.teardown(&conn, reason);
        Some(conn.number)
    }

    /// Runs `f` in a transaction, retried on conflicts, with the
    /// handshake's error for too many of them.
    pub fn transact<T: Transport, R>(
        &self,
        xs: &mut Xenstore<T>,
        f: impl FnMut(&mut Transaction<'_, T>) -> Result<R, XsError>,
    ) -> Result<R, HandshakeError> {
        xs.transaction(f).map_err(|e| match e {
            XsError::TooManyConflicts { .. } => HandshakeError::TooManyConflicts {
                device: self.dir.clone(),
            },
            e => e.into(),
        })
    }

    /// Unregisters the watches.
    pub fn unwatch<T: Transport>(&mut self, xs: &mut Xenstore<T>) -> Result<(), HandshakeError> {
        if let Some(path) = self.watched_state.take() {
            xs.unwatch(&path, &self.token)?;
        }
        if self.watching_peer_node {
            self.watching_peer_node = false;
            xs.unwatch(&self.key(self.end.peer().name()), &self.token)?;
        }
        xs.drain_events_for(&self.token);
        Ok(())
    }

    /// Puts the handshake in the failed phase, releasing the live
    /// connection and withdrawing this end (Closed, best effort) so that
    /// the other end does not attach to what was released.
    fn fail<T: Transport, D: Device<T>>(&mut self, xs: &mut Xenstore<T>, device: &mut D) {
        self.phase = P::FAILED;
        self.deadline = None;
        if self.teardown(device, TeardownReason::Failed).is_some() {
            if let Err(e) = self.write_state(xs, XenbusState::Closed) {
                log::warn!(
                    "xenbus {} {}: writing Closed after the failure failed too: {e}",
                    self.end,
                    self.dir
                );
            }
        }
    }
}

/// Drives one end: reads pending watch events without blocking,
/// re-evaluates the phase when something changed, and checks the deadline
/// against `now`.
pub(crate) fn poll<M, T, D>(
    m: &mut M,
    xs: &mut Xenstore<T>,
    now: Duration,
    device: &mut D,
) -> Result<HandshakeEvent, HandshakeError>
where
    M: Machine<T, D>,
    T: Transport,
    D: Device<T>,
{
    if !m.core().phase.is_active() {
        return Ok(HandshakeEvent::Idle);
    }
    xs.pump()?;
    let core = m.core();
    if xs.drain_events_for(&core.token) > 0 {
        core.dirty = true;
    }
    for _ in 0..MAX_STEPS_PER_POLL {
        if !m.core().dirty {
            break;
        }
        m.core().dirty = false;
        match m.step(xs, now, device) {
            Ok(HandshakeEvent::Idle) => {}
            Ok(event) => return Ok(event),
            Err(e) if e.is_transient() => {
                // A reply that came late: keep the phase and look again at
                // the next poll.
                log::warn!("{e}; will retry");
                m.core().dirty = true;
                return Err(e);
            }
            Err(e) => {
                log::error!("{e}");
                m.core().fail(xs, device);
                return Err(e);
            }
        }
    }
    let core = m.core();
    if let Some(deadline) = core.deadline {
        if now >= deadline {
            let err = HandshakeError::Timeout {
                device: core.dir.clone(),
                phase: core.phase.tagged(),
                peer_state: core.last_peer_state,
                waited: now.saturating_sub(core.phase_started),
            };
            log::error!("{err}");
            core.fail(xs, device);
            return Err(err);
        }
    }
    Ok(HandshakeEvent::Idle)
}

/// Polls until connected, waiting on the transport between polls (never
/// past the phase's deadline). Any other event ends the wait with
/// [`HandshakeError::Stopped`]; late xenstore replies are retried.
pub(crate) fn run_until_connected<M, T, D>(
    m: &mut M,
    xs: &mut Xenstore<T>,
    clock: &mut dyn FnMut() -> Duration,
    device: &mut D,
) -> Result<Connection, HandshakeError>
where
    M: Machine<T, D>,
    T: Transport,
    D: Device<T>,
{
    loop {
        let event = match poll(m, xs, clock(), device) {
            Ok(e) => e,
            // Retried at the next poll; the phase deadline still holds.
            Err(e) if e.is_transient() => HandshakeEvent::Idle,
            Err(e) => return Err(e),
        };
        match event {
            HandshakeEvent::Idle => {}
            HandshakeEvent::Connected(conn) => return Ok(conn),
            event => {
                return Err(HandshakeError::Stopped {
                    device: m.core().dir.clone(),
                    event,
                })
            }
        }
        let core = m.core();
        if core.dirty {
            continue;
        }
        let wait = core
            .deadline
            .map_or(MAX_WAIT, |d| d.saturating_sub(clock()))
            .clamp(Duration::from_millis(1), MAX_WAIT);
        xs.pump_wait(Wait::For(wait))?;
    }
}
