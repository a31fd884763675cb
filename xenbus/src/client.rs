//! The xenstore client: requests, replies, watches and transactions over
//! any [`Transport`].
//!
//! One request is in flight at a time. Watch events can arrive at any
//! moment, interleaved with replies; they are queued (bounded) and handed to
//! the caller through [`Xenstore::take_event`] and friends. Replies are
//! matched by request id and type; a reply that does not match is a
//! protocol error, a stale reply (from a request that timed out) is
//! dropped.
//!
//! Each request has one deadline ([`Xenstore::set_timeout`] from when it
//! is sent): watch events, stale replies and parts of messages that arrive
//! meanwhile do not extend it. Measuring it needs a monotonic clock
//! ([`Xenstore::set_clock`]); without one, the client cannot tell how long
//! a wait that ended early lasted and bounds instead the number of waits
//! per request ([`MAX_WAITS_WITHOUT_CLOCK`]).

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::path::{check_client_path, check_watch_path, Perm};
use crate::transport::{Budget, Clock, Transport, TransportError, Wait};
use crate::wire::{
    join_strings, parse_u32_strict, split_strings, u32_string, Decoder, Errno, Message, MsgType,
    XENSTORE_PAYLOAD_MAX,
};

/// Default time a reply may take.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most watch events queued before the oldest are dropped.
pub const MAX_QUEUED_EVENTS: usize = 4096;
/// How many times [`Xenstore::transaction`] runs its closure before giving
/// up on conflicts (by default; see [`Xenstore::set_transaction_attempts`]).
pub const MAX_TRANSACTION_ATTEMPTS: u32 = 32;
/// Most messages one [`Xenstore::pump_wait`] (or [`Xenstore::pump`])
/// handles; the rest stay for the next call.
pub const MAX_MESSAGES_PER_PUMP: usize = 256;
/// Without a clock, most waits on the transport one request (or one
/// [`Xenstore::pump_wait`]) makes: a daemon that keeps sending something
/// other than the reply then holds a request at most this many timeouts.
pub const MAX_WAITS_WITHOUT_CLOCK: u32 = 1024;

/// A transaction id (`tx_id` of the header); [`TxId::NONE`] outside
/// transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxId(pub u32);

impl TxId {
    /// No transaction.
    pub const NONE: TxId = TxId(0);
}

/// A watch firing: `path` changed (or is the watched path itself, for the
/// initial event sent on registration); `token` is the registrant's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed.
    pub path: String,
    /// The token given to [`Xenstore::watch`].
    pub token: String,
}

/// What went wrong with a xenstore operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XsError {
    /// The daemon refused the operation with an errno.
    Refused {
        /// The operation.
        op: MsgType,
        /// The path (or other argument) it was about.
        path: String,
        /// The errno name the daemon sent.
        errno: Errno,
    },
    /// No reply within the timeout.
    TimedOut {
        /// The operation.
        op: MsgType,
        /// Its path.
        path: String,
        /// The request's time limit ([`Xenstore::set_timeout`]).
        after: Duration,
    },
    /// The transport failed; the connection is unusable.
    Transport {
        /// The operation.
        op: MsgType,
        /// What the transport said.
        error: TransportError,
    },
    /// The daemon sent something that breaks the protocol; the connection
    /// is unusable.
    Protocol {
        /// The operation in progress.
        op: MsgType,
        /// What was wrong.
        detail: String,
    },
    /// The caller passed an argument the protocol cannot carry.
    BadArgument {
        /// The operation.
        op: MsgType,
        /// The argument.
        path: String,
        /// Why.
        reason: String,
    },
    /// The connection failed earlier and was not re-established.
    Broken {
        /// The first failure.
        cause: String,
    },
    /// [`Xenstore::transaction`] kept conflicting.
    TooManyConflicts {
        /// Attempts made.
        attempts: u32,
    },
}

impl XsError {
    /// The errno, when the daemon refused the operation.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            XsError::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether the daemon said the node does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(Errno::ENOENT)
    }

    /// Whether a transaction conflicted and may be retried.
    pub fn is_conflict(&self) -> bool {
        self.errno() == Some(Errno::EAGAIN)
    }

    /// Whether the connection is unusable after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            XsError::Transport { .. } | XsError::Protocol { .. } | XsError::Broken { .. }
        )
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsError::Refused { op, path, errno } => {
                write!(f, "xenstore {op} of {path:?} refused with {errno}: {}", errno.meaning())?;
                match errno {
                    Errno::ENOENT => write!(f, "; check the path, or create the node first"),
                    Errno::EACCES => write!(
                        f,
                        "; the node's permissions do not let this domain do that (ask its owner or dom0 to grant access)"
                    ),
                    Errno::EAGAIN => write!(f, "; run the transaction again"),
                    Errno::ENOSPC | Errno::EQUOTA => {
                        write!(f, "; remove nodes or watches this domain no longer needs")
                    }
                    Errno::EINVAL => write!(f, "; check the path syntax and the arguments"),
                    _ => Ok(()),
                }
            }
            XsError::TimedOut { op, path, after } => write!(
                f,
                "xenstore {op} of {path:?} got no reply within {after:?}: the daemon is stuck or gone; retry, or reconnect"
            ),
            XsError::Transport { op, error } => write!(f, "xenstore {op} failed: {error}"),
            XsError::Protocol { op, detail } => write!(
                f,
                "xenstore {op}: the daemon broke the protocol ({detail}); reconnect"
            ),
            XsError::BadArgument { op, path, reason } => {
                write!(f, "xenstore {op} of {path:?} not sent: {reason}; fix the argument")
            }
            XsError::Broken { cause } => {
                write!(f, "the xenstore connection failed earlier ({cause}); reconnect")
            }
            XsError::TooManyConflicts { attempts } => write!(
                f,
                "xenstore transaction still conflicting after {attempts} attempts: another writer keeps \
                 changing the same nodes; back off and retry later"
            ),
        }
    }
}

/// A xenstore client over a transport.
pub struct Xenstore<T: Transport> {
    transport: T,
    decoder: Decoder,
    rx: Vec<u8>,
    rx_pos: usize,
    next_req_id: u32,
    events: VecDeque<WatchEvent>,
    dropped_events: u64,
    timeout: Duration,
    broken: Option<String>,
    tx_attempts: u32,
    jitter: u32,
    clock: Option<Clock>,
    /// Transactions the daemon started for requests that had timed out:
    /// aborted before the next request so they do not hold a slot.
    orphans: Vec<u32>,
}

impl<T: Transport> fmt::Debug for Xenstore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Xenstore")
            .field("next_req_id", &self.next_req_id)
            .field("queued_events", &self.events.len())
            .field("broken", &self.broken)
            .finish()
    }
}

impl<T: Transport> Xenstore<T> {
    /// A client over `transport`, with [`DEFAULT_REPLY_TIMEOUT`].
    pub fn new(transport: T) -> Self {
        Xenstore {
            transport,
            decoder: Decoder::new(),
            rx: Vec::new(),
            rx_pos: 0,
            next_req_id: 1,
            events: VecDeque::new(),
            dropped_events: 0,
            timeout: DEFAULT_REPLY_TIMEOUT,
            broken: None,
            tx_attempts: MAX_TRANSACTION_ATTEMPTS,
            jitter: 0x9e37_79b9,
            clock: None,
            orphans: Vec::new(),
        }
    }

    /// Sets how long a request may wait for its reply, in all.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Gives the client a monotonic clock (any origin), so that each
    /// request ends at its deadline however the daemon spreads out what
    /// it sends. Without one, see [`MAX_WAITS_WITHOUT_CLOCK`].
    pub fn set_clock(&mut self, clock: impl Fn() -> Duration + Send + Sync + 'static) {
        self.clock = Some(alloc::boxed::Box::new(clock));
    }

    fn now(&self) -> Option<Duration> {
        self.clock.as_ref().map(|c| c())
    }

    /// Sets how many times [`Xenstore::transaction`] tries (at least 1).
    pub fn set_transaction_attempts(&mut self, attempts: u32) {
        self.tx_attempts = attempts.max(1);
    }

    /// The reply timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Why the connection is unusable, if it is.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Watch events dropped because the queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    // ---- plain operations (outside transactions) ----

    /// Reads a node's value.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.read_in(TxId::NONE, path)
    }

    /// Reads a node's value as UTF-8.
    pub fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        self.read_string_in(TxId::NONE, path)
    }

    /// Reads a node's value, `None` if it does not exist.
    pub fn try_read(&mut self, path: &str) -> Result<Option<Vec<u8>>, XsError> {
        not_found_is_none(self.read_in(TxId::NONE, path))
    }

    /// Writes a node's value, creating it (and missing parents).
    pub fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<(), XsError> {
        self.write_in(TxId::NONE, path, value.as_ref())
    }

    /// Creates a node with an empty value if it does not exist.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.simple_in(TxId::NONE, MsgType::Mkdir, path)
    }

    /// Removes a node and everything below it (fine if already absent).
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.simple_in(TxId::NONE, MsgType::Rm, path)
    }

    /// Lists a node's children (names, not paths).
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.directory_in(TxId::NONE, path)
    }

    /// Whether a node exists.
    pub fn exists(&mut self, path: &str) -> Result<bool, XsError> {
        Ok(self.try_read(path)?.is_some())
    }

    /// A node's permissions (owner first).
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, XsError> {
        self.get_perms_in(TxId::NONE, path)
    }

    /// Sets a node's permissions (owner first).
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.set_perms_in(TxId::NONE, path, perms)
    }

    /// Registers a watch on `path` (and everything below it). The daemon
    /// fires one event at once, then one per change. Events are tagged with
    /// `token`.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.watch_op(MsgType::Watch, path, token)
    }

    /// Like [`Xenstore::watch`], but a watch already registered with this
    /// path and token (`EEXIST`, e.g. after a request that timed out but
    /// reached the daemon) counts as success.
    pub fn ensure_watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        match self.watch(path, token) {
            Err(e) if e.errno() == Some(Errno::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Removes a watch registered with the same path and token, and the
    /// queued events it produced (other watches sharing the token keep
    /// theirs).
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.watch_op(MsgType::Unwatch, path, token)?;
        self.events
            .retain(|e| e.token != token || !crate::path::is_at_or_below(&e.path, path));
        Ok(())
    }

    /// Removes every watch of this connection.
    pub fn reset_watches(&mut self) -> Result<(), XsError> {
        self.request(MsgType::ResetWatches, TxId::NONE, Vec::new(), "")?;
        self.events.clear();
        Ok(())
    }

    /// `/local/domain/<domid>` as the daemon names it.
    pub fn get_domain_path(&mut self, domid: u16) -> Result<String, XsError> {
        let arg = u32_string(u32::from(domid));
        let payload = join_strings(&[arg.as_bytes()]);
        let reply = self.request(MsgType::GetDomainPath, TxId::NONE, payload, &arg)?;
        reply_string(MsgType::GetDomainPath, &reply)
    }

    /// Tells the daemon about a domain (dom0 only): its id, the frame of its
    /// store ring page and its store event channel port.
    pub fn introduce(&mut self, domid: u16, mfn: u64, port: u32) -> Result<(), XsError> {
        let id = u32_string(u32::from(domid));
        let mut mfn_s = String::new();
        let _ = fmt::Write::write_fmt(&mut mfn_s, format_args!("{mfn}"));
        let payload = join_strings(&[id.as_bytes(), mfn_s.as_bytes(), u32_string(port).as_bytes()]);
        self.request(MsgType::Introduce, TxId::NONE, payload, &id)
            .map(drop)
    }

    /// Tells the daemon a domain is gone (dom0 only).
    pub fn release(&mut self, domid: u16) -> Result<(), XsError> {
        let id = u32_string(u32::from(domid));
        let payload = join_strings(&[id.as_bytes()]);
        self.request(MsgType::Release, TxId::NONE, payload, &id)
            .map(drop)
    }

    /// Whether the daemon knows a domain.
    pub fn is_domain_introduced(&mut self, domid: u16) -> Result<bool, XsError> {
        let id = u32_string(u32::from(domid));
        let payload = join_strings(&[id.as_bytes()]);
        let reply = self.request(MsgType::IsDomainIntroduced, TxId::NONE, payload, &id)?;
        match reply.strip_suffix(&[0]).unwrap_or(&reply) {
            b"T" => Ok(true),
            b"F" => Ok(false),
            other => Err(self.protocol(
                MsgType::IsDomainIntroduced,
                format!(
                    "reply {:?} is neither T nor F",
                    String::from_utf8_lossy(other)
                ),
            )),
        }
    }

    /// Sends an `XS_CONTROL` command with arguments; returns the raw reply.
    pub fn control(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, XsError> {
        let what = args
            .first()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default();
        self.request(MsgType::Control, TxId::NONE, join_strings(args), &what)
    }

    // ---- transactions ----

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<TxId, XsError> {
        let reply = self.request(
            MsgType::TransactionStart,
            TxId::NONE,
            join_strings(&[b""]),
            "",
        )?;
        let id = reply.strip_suffix(&[0]).unwrap_or(&reply);
        match parse_u32_strict(id) {
            Some(id) if id != 0 => Ok(TxId(id)),
            _ => Err(self.protocol(
                MsgType::TransactionStart,
                format!(
                    "transaction id {:?} is not a non-zero decimal number",
                    String::from_utf8_lossy(id)
                ),
            )),
        }
    }

    /// Ends a transaction: commits it (`commit`) or aborts it. A commit that
    /// conflicted fails with `EAGAIN` ([`XsError::is_conflict`]).
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        let arg: &[u8] = if commit { b"T" } else { b"F" };
        self.request(MsgType::TransactionEnd, tx, join_strings(&[arg]), "")
            .map(drop)
    }

    /// Operations inside transaction `id` (from
    /// [`Xenstore::transaction_start`]), for callers that end it themselves.
    pub fn in_transaction(&mut self, id: TxId) -> Transaction<'_, T> {
        Transaction { xs: self, id }
    }

    /// Runs `f` inside a transaction and commits it, running it again (up to
    /// [`MAX_TRANSACTION_ATTEMPTS`] times by default) while the commit
    /// conflicts, with a short randomised back-off between attempts (spent
    /// waiting on the transport, so watch events keep being queued). If `f`
    /// fails, the transaction is aborted and the error returned. `f` must
    /// not have effects outside the transaction that cannot be repeated.
    pub fn transaction<R>(
        &mut self,
        mut f: impl FnMut(&mut Transaction<'_, T>) -> Result<R, XsError>,
    ) -> Result<R, XsError> {
        let attempts = self.tx_attempts;
        for attempt in 1..=attempts {
            if attempt > 1 {
                self.back_off(attempt)?;
            }
            let id = self.transaction_start()?;
            let result = f(&mut Transaction { xs: self, id });
            match result {
                Ok(value) => match self.transaction_end(id, true) {
                    Ok(()) => return Ok(value),
                    Err(e) if e.is_conflict() => {
                        log::debug!(
                            "xenstore transaction {} conflicted (attempt {attempt}), retrying",
                            id.0
                        );
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    if !e.is_fatal() {
                        if let Err(end) = self.transaction_end(id, false) {
                            log::warn!("aborting xenstore transaction {} failed: {end}", id.0);
                        }
                    }
                    if !e.is_conflict() {
                        return Err(e);
                    }
                }
            }
        }
        Err(XsError::TooManyConflicts { attempts })
    }

    /// Waits a pseudo-random time that grows with `attempt` (up to about
    /// 12 ms), queueing any watch events that arrive meanwhile.
    fn back_off(&mut self, attempt: u32) -> Result<(), XsError> {
        // xorshift32: cheap jitter so that contenders do not retry in step.
        let mut x = self.jitter ^ self.next_req_id;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.jitter = x;
        let ceiling_us = 100u32 << attempt.min(7);
        let wait = Duration::from_micros(u64::from(x % ceiling_us));
        self.pump_wait(Wait::For(wait)).map(drop)
    }

    // ---- watch events ----

    /// The oldest queued watch event.
    pub fn take_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }

    /// The oldest queued watch event with `token`.
    pub fn take_event_for(&mut self, token: &str) -> Option<WatchEvent> {
        let pos = self.events.iter().position(|e| e.token == token)?;
        self.events.remove(pos)
    }

    /// Removes every queued event with `token`; returns how many there were.
    pub fn drain_events_for(&mut self, token: &str) -> usize {
        let before = self.events.len();
        self.events.retain(|e| e.token != token);
        before - self.events.len()
    }

    /// How many events are queued.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// Reads whatever the transport has now without blocking, queueing
    /// watch events. Returns how many events were queued.
    pub fn pump(&mut self) -> Result<usize, XsError> {
        self.pump_wait(Wait::NoWait)
    }

    /// Waits (as `wait` allows, in all) until at least one message
    /// arrives, then queues the watch events available now, up to
    /// [`MAX_MESSAGES_PER_PUMP`] messages. Returns how many were queued.
    pub fn pump_wait(&mut self, wait: Wait) -> Result<usize, XsError> {
        self.check_broken()?;
        let mut queued = 0;
        let mut budget = Budget::new(wait, self.now(), MAX_WAITS_WITHOUT_CLOCK);
        for _ in 0..MAX_MESSAGES_PER_PUMP {
            let Some(msg) = self.next_message(&mut budget, MsgType::WatchEvent)? else {
                break;
            };
            if msg.msg_type == MsgType::WatchEvent {
                self.queue_event(&msg);
                queued += 1;
            } else {
                // Only a reply to a request that timed out can come now.
                self.stale_reply(&msg, 0);
            }
            budget = Budget::new(Wait::NoWait, None, MAX_WAITS_WITHOUT_CLOCK);
        }
        Ok(queued)
    }

    /// The next watch event: a queued one, or one that arrives within
    /// `wait`.
    pub fn wait_event(&mut self, wait: Wait) -> Result<Option<WatchEvent>, XsError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        self.pump_wait(wait)?;
        Ok(self.events.pop_front())
    }

    // ---- operations with a transaction id ----

    fn read_in(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>, XsError> {
        check_path(MsgType::Read, path)?;
        self.request(MsgType::Read, tx, join_strings(&[path]), path)
    }

    fn read_string_in(&mut self, tx: TxId, path: &str) -> Result<String, XsError> {
        let bytes = self.read_in(tx, path)?;
        String::from_utf8(bytes).map_err(|_| XsError::BadArgument {
            op: MsgType::Read,
            path: path.to_string(),
            reason: "the node's value is not UTF-8 text; read it as bytes".to_string(),
        })
    }

    fn write_in(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), XsError> {
        check_path(MsgType::Write, path)?;
        let mut payload = join_strings(&[path]);
        payload.extend_from_slice(value);
        self.request(MsgType::Write, tx, payload, path).map(drop)
    }

    fn simple_in(&mut self, tx: TxId, op: MsgType, path: &str) -> Result<(), XsError> {
        check_path(op, path)?;
        self.request(op, tx, join_strings(&[path]), path).map(drop)
    }

    fn directory_in(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError> {
        check_path(MsgType::Directory, path)?;
        match self.request(MsgType::Directory, tx, join_strings(&[path]), path) {
            Ok(reply) => self.names(MsgType::Directory, &reply),
            Err(e) if e.errno() == Some(Errno::E2BIG) => self.directory_parts(tx, path),
            Err(e) => Err(e),
        }
    }

    /// A listing too big for one reply, fetched with `XS_DIRECTORY_PART`.
    fn directory_parts(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError> {
        'restart: for _ in 0..MAX_TRANSACTION_ATTEMPTS {
            let mut names = Vec::new();
            let mut offset: usize = 0;
            let mut generation: Option<Vec<u8>> = None;
            // Each part carries at least one name, so this is bounded by
            // the number of children; the explicit bound guards against a
            // daemon that sends empty parts forever.
            for _ in 0..=XENSTORE_PAYLOAD_MAX * 64 {
                let off = u32_string(u32::try_from(offset).unwrap_or(u32::MAX));
                let payload = join_strings(&[path.as_bytes(), off.as_bytes()]);
                let reply = self.request(MsgType::DirectoryPart, tx, payload, path)?;
                let parts = split_strings(&reply)
                    .map_err(|e| self.protocol(MsgType::DirectoryPart, e.to_string()))?;
                let Some((gen, rest)) = parts.split_first() else {
                    return Err(self.protocol(MsgType::DirectoryPart, "empty reply".to_string()));
                };
                match &generation {
                    None => generation = Some(gen.to_vec()),
                    Some(g) if g.as_slice() != *gen => continue 'restart,
                    Some(_) => {}
                }
                let done = rest.last().is_some_and(|s| s.is_empty());
                let chunk = if done { &rest[..rest.len() - 1] } else { rest };
                if chunk.is_empty() && !done {
                    return Err(
                        self.protocol(MsgType::DirectoryPart, "a part with no names".to_string())
                    );
                }
                for name in chunk {
                    offset = offset.saturating_add(name.len() + 1);
                    names.push(self.utf8(MsgType::DirectoryPart, name)?);
                }
                if done {
                    return Ok(names);
                }
            }
            return Err(self.protocol(MsgType::DirectoryPart, "listing never finished".to_string()));
        }
        Err(XsError::TooManyConflicts {
            attempts: MAX_TRANSACTION_ATTEMPTS,
        })
    }

    fn get_perms_in(&mut self, tx: TxId, path: &str) -> Result<Vec<Perm>, XsError> {
        check_watch_path(path).map_err(|e| bad_arg(MsgType::GetPerms, path, e.to_string()))?;
        let reply = self.request(MsgType::GetPerms, tx, join_strings(&[path]), path)?;
        let parts =
            split_strings(&reply).map_err(|e| self.protocol(MsgType::GetPerms, e.to_string()))?;
        let mut perms = Vec::with_capacity(parts.len());
        for p in parts {
            match Perm::parse(p) {
                Some(perm) => perms.push(perm),
                None => {
                    return Err(self.protocol(
                        MsgType::GetPerms,
                        format!(
                            "permission {:?} is not <n|r|w|b><domid>",
                            String::from_utf8_lossy(p)
                        ),
                    ))
                }
            }
        }
        if perms.is_empty() {
            return Err(self.protocol(MsgType::GetPerms, "empty permission list".to_string()));
        }
        Ok(perms)
    }

    fn set_perms_in(&mut self, tx: TxId, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        check_watch_path(path).map_err(|e| bad_arg(MsgType::SetPerms, path, e.to_string()))?;
        if perms.is_empty() {
            return Err(bad_arg(
                MsgType::SetPerms,
                path,
                "a permission list needs at least the owner entry".to_string(),
            ));
        }
        let mut parts: Vec<String> = Vec::with_capacity(perms.len() + 1);
        parts.push(path.to_string());
        parts.extend(perms.iter().map(Perm::to_wire));
        self.request(MsgType::SetPerms, tx, join_strings(&parts), path)
            .map(drop)
    }

    fn watch_op(&mut self, op: MsgType, path: &str, token: &str) -> Result<(), XsError> {
        check_watch_path(path).map_err(|e| bad_arg(op, path, e.to_string()))?;
        if token.as_bytes().contains(&0) {
            return Err(bad_arg(
                op,
                path,
                "the token contains a NUL byte".to_string(),
            ));
        }
        self.request(op, TxId::NONE, join_strings(&[path, token]), path)
            .map(drop)
    }

    // ---- plumbing ----

    fn names(&mut self, op: MsgType, reply: &[u8]) -> Result<Vec<String>, XsError> {
        let parts = split_strings(reply).map_err(|e| self.protocol(op, e.to_string()))?;
        parts.into_iter().map(|p| self.utf8(op, p)).collect()
    }

    fn utf8(&mut self, op: MsgType, bytes: &[u8]) -> Result<String, XsError> {
        match core::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(self.protocol(op, "a name in the reply is not UTF-8".to_string())),
        }
    }

    fn protocol(&mut self, op: MsgType, detail: String) -> XsError {
        log::error!("xenstore protocol violation during {op}: {detail}");
        if self.broken.is_none() {
            self.broken = Some(format!("protocol violation during {op}: {detail}"));
        }
        XsError::Protocol { op, detail }
    }

    fn check_broken(&self) -> Result<(), XsError> {
        match &self.broken {
            Some(cause) => Err(XsError::Broken {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn transport_failed(&mut self, op: MsgType, error: TransportError) -> XsError {
        if self.broken.is_none() {
            self.broken = Some(error.to_string());
        }
        XsError::Transport { op, error }
    }

    fn queue_event(&mut self, msg: &Message) {
        let parsed = split_strings(&msg.payload).ok().and_then(|parts| {
            let path = core::str::from_utf8(parts.first()?).ok()?;
            let token = core::str::from_utf8(parts.get(1)?).ok()?;
            Some(WatchEvent {
                path: path.to_string(),
                token: token.to_string(),
            })
        });
        let Some(event) = parsed else {
            log::warn!(
                "xenstore: dropping a malformed watch event ({} bytes)",
                msg.payload.len()
            );
            return;
        };
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
            if self.dropped_events.is_power_of_two() {
                log::warn!(
                    "xenstore: watch event queue full, {} events dropped so far; take events more often",
                    self.dropped_events
                );
            }
        }
        self.events.push_back(event);
    }

    /// The next whole message, waiting as `budget` allows (in all, over
    /// every chunk).
    fn next_message(
        &mut self,
        budget: &mut Budget,
        op: MsgType,
    ) -> Result<Option<Message>, XsError> {
        loop {
            while self.rx_pos < self.rx.len() {
                let mut input = &self.rx[self.rx_pos..];
                let before = input.len();
                let result = self.decoder.decode(&mut input);
                self.rx_pos += before - input.len();
                match result {
                    Ok(Some(msg)) => return Ok(Some(msg)),
                    Ok(None) => {}
                    Err(e) if !e.is_fatal() => log::warn!("xenstore: {e}"),
                    Err(e) => return Err(self.protocol(op, e.to_string())),
                }
            }
            self.rx.clear();
            self.rx_pos = 0;
            let Some(wait) = budget.next(self.now()) else {
                return Ok(None);
            };
            let mut buf = [0u8; 1024];
            let n = match self.transport.recv(&mut buf, wait) {
                Ok(n) => n,
                Err(e) => return Err(self.transport_failed(op, e)),
            };
            if n == 0 {
                return Ok(None);
            }
            self.rx.extend_from_slice(buf.get(..n).unwrap_or(&buf));
        }
    }

    /// Aborts transactions whose start reply came after its request had
    /// timed out.
    fn abort_orphans(&mut self) {
        for id in core::mem::take(&mut self.orphans) {
            match self.request(MsgType::TransactionEnd, TxId(id), join_strings(&[b"F"]), "") {
                Ok(_) => log::debug!("xenstore: aborted orphaned transaction {id}"),
                Err(e) => log::warn!("xenstore: aborting orphaned transaction {id} failed: {e}"),
            }
        }
    }

    /// Notes a reply to an earlier request that is no longer awaited
    /// (`awaited` is the request being waited for, 0 when idle).
    fn stale_reply(&mut self, reply: &Message, awaited: u32) {
        log::warn!(
            "xenstore: dropping a {} reply to request {} while waiting for {awaited} (a late reply?)",
            reply.msg_type,
            reply.req_id
        );
        if reply.msg_type == MsgType::TransactionStart {
            let id = reply.payload.strip_suffix(&[0]).unwrap_or(&reply.payload);
            if let Some(id) = parse_u32_strict(id).filter(|&id| id != 0) {
                if self.orphans.len() < 64 {
                    self.orphans.push(id);
                }
            }
        }
    }

    /// Sends one request and waits for its reply payload.
    fn request(
        &mut self,
        op: MsgType,
        tx: TxId,
        payload: Vec<u8>,
        path: &str,
    ) -> Result<Vec<u8>, XsError> {
        self.check_broken()?;
        if !self.orphans.is_empty() {
            self.abort_orphans();
            self.check_broken()?;
        }
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(bad_arg(
                op,
                path,
                format!(
                    "the request payload is {} bytes, the protocol allows {XENSTORE_PAYLOAD_MAX}",
                    payload.len()
                ),
            ));
        }
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1);
        let msg = Message {
            msg_type: op,
            req_id,
            tx_id: tx.0,
            payload,
        };
        let bytes = msg.encode();
        // One deadline for the whole request: sending, and every message
        // that arrives before the reply.
        let mut budget = Budget::new(Wait::For(self.timeout), self.now(), MAX_WAITS_WITHOUT_CLOCK);
        let mut sent = 0;
        while sent < bytes.len() {
            let n = match budget.next(self.now()) {
                Some(wait) => match self.transport.send(&bytes[sent..], wait) {
                    Ok(n) => n,
                    Err(e) => return Err(self.transport_failed(op, e)),
                },
                None => 0,
            };
            if n == 0 {
                if sent > 0 {
                    // Half a message is on the wire: the stream is out of
                    // step for good.
                    self.broken = Some(format!("{op} stalled after {sent} bytes"));
                }
                return Err(XsError::TimedOut {
                    op,
                    path: path.to_string(),
                    after: self.timeout,
                });
            }
            sent += n;
        }
        loop {
            let Some(reply) = self.next_message(&mut budget, op)? else {
                return Err(XsError::TimedOut {
                    op,
                    path: path.to_string(),
                    after: self.timeout,
                });
            };
            if reply.msg_type == MsgType::WatchEvent {
                self.queue_event(&reply);
                continue;
            }
            if reply.req_id != req_id {
                self.stale_reply(&reply, req_id);
                continue;
            }
            if reply.msg_type == MsgType::Error {
                // Any name is a refusal: the stream is still in step, and
                // daemons do send names outside xsd_errors (EQUOTA).
                let errno = Errno::from_reply(&reply.payload);
                if let Errno::Unknown(name) = errno {
                    log::warn!("xenstore {op} of {path:?}: unknown error name {name:?}");
                }
                return Err(XsError::Refused {
                    op,
                    path: path.to_string(),
                    errno,
                });
            }
            if reply.msg_type != op {
                return Err(self.protocol(op, format!("the reply has type {}", reply.msg_type)));
            }
            return Ok(reply.payload);
        }
    }
}

fn not_found_is_none<V>(r: Result<V, XsError>) -> Result<Option<V>, XsError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn bad_arg(op: MsgType, path: &str, reason: String) -> XsError {
    XsError::BadArgument {
        op,
        path: path.to_string(),
        reason,
    }
}

fn check_path(op: MsgType, path: &str) -> Result<(), XsError> {
    if path.starts_with('@') {
        return Err(bad_arg(
            op,
            path,
            "special @ paths are only for watches and permissions".to_string(),
        ));
    }
    check_client_path(path).map_err(|e| bad_arg(op, path, e.to_string()))
}

fn reply_string(op: MsgType, reply: &[u8]) -> Result<String, XsError> {
    let body = reply.strip_suffix(&[0]).unwrap_or(reply);
    core::str::from_utf8(body)
        .map(|s| s.to_string())
        .map_err(|_| XsError::Protocol {
            op,
            detail: "reply is not UTF-8".to_string(),
        })
}

/// Operations inside a transaction started by [`Xenstore::transaction`].
pub struct Transaction<'a, T: Transport> {
    xs: &'a mut Xenstore<T>,
    id: TxId,
}

impl<T: Transport> Transaction<'_, T> {
    /// The transaction id.
    pub fn id(&self) -> TxId {
        self.id
    }

    /// Reads a node's value.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.xs.read_in(self.id, path)
    }

    /// Reads a node's value as UTF-8.
    pub fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        self.xs.read_string_in(self.id, path)
    }

    /// Reads a node's value, `None` if it does not exist.
    pub fn try_read(&mut self, path: &str) -> Result<Option<Vec<u8>>, XsError> {
        not_found_is_none(self.xs.read_in(self.id, path))
    }

    /// Writes a node's value.
    pub fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<(), XsError> {
        self.xs.write_in(self.id, path, value.as_ref())
    }

    /// Creates a node if it does not exist.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.xs.simple_in(self.id, MsgType::Mkdir, path)
    }

    /// Removes a node and everything below it.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.xs.simple_in(self.id, MsgType::Rm, path)
    }

    /// Lists a node's children.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.xs.directory_in(self.id, path)
    }

    /// A node's permissions.
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, XsError> {
        self.xs.get_perms_in(self.id, path)
    }

    /// Sets a node's permissions.
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.xs.set_perms_in(self.id, path, perms)
    }
}
