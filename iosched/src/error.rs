//! Errors of the scheduler: every refusal says what was wrong and what to do.

use core::fmt;

use crate::{QueueId, Request};

/// Why the scheduler refused an operation. Nothing changed when an error is
/// returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No queue has this id (never created, or removed and drained).
    UnknownQueue(QueueId),
    /// The queue is being removed: it serves what it holds but takes nothing
    /// new.
    QueueDraining(QueueId),
    /// A request with this tag is already pending or in flight.
    DuplicateTag(u64),
    /// No request with this tag is pending or in flight.
    UnknownTag(u64),
    /// The tag names a request that is still waiting in the scheduler: it was
    /// never handed out by a batch, so it cannot complete.
    NotDispatched(u64),
    /// A reservation has a depth but no rate, or a real-time queue has no
    /// reservation.
    ZeroRate,
    /// A reservation has a rate but a bucket depth of zero: it could never
    /// hold a token.
    ZeroDepth,
    /// A reservation rate above [`crate::MAX_RATE`] units per second.
    RateTooLarge {
        /// The rate asked for.
        rate: u64,
    },
    /// A bucket depth above [`crate::MAX_DEPTH`] units.
    DepthTooLarge {
        /// The depth asked for.
        depth: u64,
    },
    /// A relative deadline of zero.
    ZeroDeadline,
    /// A relative deadline above [`crate::MAX_DEADLINE_NS`].
    DeadlineTooLarge {
        /// The deadline asked for, in ns.
        deadline_ns: u64,
    },
    /// A real-time queue needs a default relative deadline.
    MissingDeadline,
    /// Admission control: the real-time reservations would exceed the
    /// configured share of the measured capacity.
    AdmissionRefused {
        /// Units per second asked for.
        requested: u64,
        /// Units per second still free for real-time reservations.
        available: u64,
    },
    /// The scheduler holds its maximum number of requests.
    TooManyRequests {
        /// The limit.
        limit: usize,
    },
    /// The scheduler holds its maximum number of queues.
    TooManyQueues {
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::UnknownQueue(q) => write!(
                f,
                "no I/O queue {}: create it with create_queue first (it may have been removed)",
                q.0
            ),
            Error::QueueDraining(q) => write!(
                f,
                "I/O queue {} is being removed and takes no new requests: submit to another queue",
                q.0
            ),
            Error::DuplicateTag(t) => write!(
                f,
                "request tag {t:#x} is already pending or in flight: use a tag not in use"
            ),
            Error::UnknownTag(t) => write!(
                f,
                "no request with tag {t:#x} is in flight: complete only tags handed out by build_batch, once"
            ),
            Error::NotDispatched(t) => write!(
                f,
                "request tag {t:#x} is still waiting in the scheduler and was never dispatched: it cannot complete"
            ),
            Error::ZeroRate => f.write_str(
                "reservation without a rate: give a rate in cost units per second (real-time queues need one)",
            ),
            Error::ZeroDepth => f.write_str(
                "reservation with a rate but a bucket depth of 0: give a depth of at least one request's cost",
            ),
            Error::RateTooLarge { rate } => write!(
                f,
                "reservation rate {rate} units/s is above the limit of {} (1000 devices' worth of time): lower it",
                crate::MAX_RATE
            ),
            Error::DepthTooLarge { depth } => write!(
                f,
                "bucket depth {depth} units is above the limit of {}: lower it",
                crate::MAX_DEPTH
            ),
            Error::ZeroDeadline => {
                f.write_str("relative deadline of 0 ns: give a positive deadline or none")
            }
            Error::DeadlineTooLarge { deadline_ns } => write!(
                f,
                "relative deadline {deadline_ns} ns is above the limit of {} ns: lower it or give none",
                crate::MAX_DEADLINE_NS
            ),
            Error::MissingDeadline => f.write_str(
                "a real-time queue needs a default relative deadline: set QueueConfig::deadline_ns",
            ),
            Error::AdmissionRefused {
                requested,
                available,
            } => write!(
                f,
                "real-time reservation of {requested} units/s refused: only {available} units/s are free \
                 under the real-time share; lower the rate, remove a real-time queue or raise the share"
            ),
            Error::TooManyRequests { limit } => write!(
                f,
                "the scheduler already holds {limit} requests: complete some before submitting more"
            ),
            Error::TooManyQueues { limit } => write!(
                f,
                "the scheduler already has {limit} queues: remove one first"
            ),
        }
    }
}

/// A refused submission: the error, and the request handed back untouched so
/// that it is never lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubmitError {
    /// Why it was refused.
    pub error: Error,
    /// The request, as submitted.
    pub request: Request,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request tag {:#x} refused: {}",
            self.request.tag, self.error
        )
    }
}
