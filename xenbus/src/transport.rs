//! The byte transport a [`crate::Xenstore`] client talks through.
//!
//! A Unix socket on the hosted platform, the shared store ring page
//! ([`crate::ring::StoreRing`]) in a guest. The client only needs to push
//! bytes and pull bytes, each with a bounded wait.

use alloc::string::String;
use core::fmt;
use core::time::Duration;

/// How long a transport operation may wait for the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Do not block: move what can be moved now.
    NoWait,
    /// Block at most this long.
    For(Duration),
    /// Block until something can be moved.
    Forever,
}

/// Why a transport failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// The peer closed the connection.
    Closed,
    /// The peer broke the shared ring protocol (an index out of range...).
    /// The transport is unusable for good.
    PeerFault {
        /// What the peer did.
        what: &'static str,
        /// The offending value(s), for the log.
        detail: String,
    },
    /// The server is resetting the ring (`XENSTORE_RECONNECT`); retry later.
    Reconnecting,
    /// The platform's event channel failed.
    Platform(grant_tables::PlatformError),
    /// The operating system or hypervisor refused an operation.
    Os {
        /// The operation.
        op: &'static str,
        /// errno or Xen error code.
        code: i32,
    },
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Closed => {
                write!(f, "the xenstore connection was closed by the peer; reconnect")
            }
            TransportError::PeerFault { what, detail } => write!(
                f,
                "the xenstore peer broke the ring protocol: {what} ({detail}); the connection is unusable"
            ),
            TransportError::Reconnecting => {
                write!(f, "the xenstore server is resetting the ring; retry after it finishes")
            }
            TransportError::Platform(e) => write!(f, "xenstore event channel: {e}"),
            TransportError::Os { op, code } => write!(f, "{op} failed with error code {code}"),
        }
    }
}

/// A bidirectional byte stream to a xenstore server.
///
/// Both operations move *some* bytes: `Ok(0)` means the wait ran out
/// before any byte could move (never "end of stream": that is
/// [`TransportError::Closed`]). Implementations must never panic on what
/// the peer does.
pub trait Transport {
    /// Sends a prefix of `data`, waiting as `wait` allows for room.
    /// Returns how many bytes were accepted.
    fn send(&mut self, data: &[u8], wait: Wait) -> Result<usize, TransportError>;

    /// Receives into a prefix of `buf`, waiting as `wait` allows for data.
    /// Returns how many bytes arrived.
    fn recv(&mut self, buf: &mut [u8], wait: Wait) -> Result<usize, TransportError>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn send(&mut self, data: &[u8], wait: Wait) -> Result<usize, TransportError> {
        (**self).send(data, wait)
    }
    fn recv(&mut self, buf: &mut [u8], wait: Wait) -> Result<usize, TransportError> {
        (**self).recv(buf, wait)
    }
}

impl<T: Transport + ?Sized> Transport for alloc::boxed::Box<T> {
    fn send(&mut self, data: &[u8], wait: Wait) -> Result<usize, TransportError> {
        (**self).send(data, wait)
    }
    fn recv(&mut self, buf: &mut [u8], wait: Wait) -> Result<usize, TransportError> {
        (**self).recv(buf, wait)
    }
}

/// A monotonic clock (any origin), for deadlines.
pub(crate) type Clock = alloc::boxed::Box<dyn Fn() -> Duration + Send + Sync>;

/// How much longer an operation may wait for the peer, in all: one
/// deadline on the clock, so that wake-ups that bring nothing do not extend
/// it, or, without a clock, a bounded number of waits.
pub(crate) struct Budget {
    wait: Wait,
    /// With a clock: when the wait ends.
    until: Option<Duration>,
    /// Without a clock: waits left.
    waits_left: u32,
}

impl Budget {
    /// A budget of `wait` from `now` (`None`: no clock, at most
    /// `max_waits` waits).
    pub(crate) fn new(wait: Wait, now: Option<Duration>, max_waits: u32) -> Budget {
        let until = match (wait, now) {
            (Wait::For(d), Some(now)) => Some(now.saturating_add(d)),
            _ => None,
        };
        Budget {
            wait,
            until,
            waits_left: max_waits,
        }
    }

    /// The next wait, `None` once the budget is spent.
    pub(crate) fn next(&mut self, now: Option<Duration>) -> Option<Wait> {
        match self.wait {
            Wait::NoWait => Some(Wait::NoWait),
            Wait::Forever => Some(Wait::Forever),
            Wait::For(d) => match (self.until, now) {
                (Some(until), Some(now)) => {
                    let left = until.saturating_sub(now);
                    (!left.is_zero()).then_some(Wait::For(left))
                }
                _ => {
                    self.waits_left = self.waits_left.checked_sub(1)?;
                    Some(Wait::For(d))
                }
            },
        }
    }
}
