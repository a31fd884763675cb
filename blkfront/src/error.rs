//! The driver's errors: what disabled the device, why an I/O failed, why a
//! submission was refused. Each message says what happened and what to do.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;

use grant_tables::{GrantError, PlatformError, RingError};
use xenbus::HandshakeError;

use crate::features::FeatureError;
use crate::inflight::ResponseError;
use crate::request::IoError;

/// Why the device is disabled (or could not be set up). Once disabled,
/// every call returns the same error; I/Os not done fail with
/// [`IoFailure::Disabled`] and nothing is reported done that the backend
/// did not answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// A response broke the protocol (bad id, duplicate, wrong operation,
    /// unknown status).
    BadResponse {
        /// The ring it came on.
        ring: usize,
        /// What was wrong.
        error: ResponseError,
    },
    /// The backend broke the shared ring (its response producer index
    /// jumped past the requests published).
    Ring {
        /// The ring.
        ring: usize,
        /// What was wrong.
        error: RingError,
    },
    /// A backend key breaks the protocol.
    BadFeature(FeatureError),
    /// A request got no response within the request timeout: the backend
    /// stalls.
    Stalled {
        /// The ring.
        ring: usize,
        /// The I/O.
        tag: u64,
        /// How long it waited, in ns.
        waited_ns: u64,
    },
    /// The xenbus handshake failed (a backend that never came back, a bad
    /// toolstack node, xenstore errors).
    Handshake(HandshakeError),
    /// The platform refused an operation.
    Platform(PlatformError),
    /// The connection's resources could not be set up.
    Setup(String),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::BadResponse { ring, error } => {
                write!(f, "blkfront: ring {ring}: {error}")
            }
            DeviceError::Ring { ring, error } => write!(
                f,
                "blkfront: ring {ring}: {error}; the device is disabled: reattach the disk to a \
                 working backend"
            ),
            DeviceError::BadFeature(e) => write!(f, "{e}"),
            DeviceError::Stalled {
                ring,
                tag,
                waited_ns,
            } => write!(
                f,
                "blkfront: ring {ring}: I/O {tag} got no response in {} ms; the backend stalls, so \
                 the device is disabled and its I/Os fail (not done); check the backend, then \
                 reattach the disk (or raise the request timeout for a slow disk)",
                waited_ns / 1_000_000
            ),
            DeviceError::Handshake(e) => write!(f, "blkfront: {e}"),
            DeviceError::Platform(e) => write!(f, "blkfront: {e}"),
            DeviceError::Setup(m) => write!(f, "blkfront: {m}"),
        }
    }
}

impl core::error::Error for DeviceError {}

/// Why an I/O did not complete successfully. Only [`IoFailure::Error`] and
/// [`IoFailure::NotSupported`] come from the backend; the others mean the
/// I/O did not (or not knowingly) take effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoFailure {
    /// The backend answered `BLKIF_RSP_ERROR`: the data is not known to be
    /// written or read.
    Error,
    /// The backend answered that it does not support the operation; the
    /// feature is now off.
    NotSupported,
    /// The connection it was re-issued on refuses it (the disk became
    /// read-only or smaller, or lost the feature).
    Refused(IoError),
    /// It needs more ring requests than the connection's ring has slots
    /// (re-issued on a smaller ring without indirect requests).
    TooLarge {
        /// Requests needed.
        needed: usize,
        /// Slots of the ring.
        capacity: usize,
    },
    /// Its pool buffers are granted to the domain of an earlier backend,
    /// not to this connection's: take new buffers and submit it again.
    BackendChanged,
    /// Granting the application's pages to the backend failed.
    Grant(GrantError),
    /// The platform refused an operation the I/O needed.
    Platform(PlatformError),
    /// The device was disabled before the I/O completed.
    Disabled(Box<DeviceError>),
    /// The device was closed (or removed) before the I/O completed.
    Closed,
}

impl fmt::Display for IoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoFailure::Error => write!(
                f,
                "the backend reported an I/O error; the data is not known to be written or read"
            ),
            IoFailure::NotSupported => write!(
                f,
                "the backend does not support this operation; it is turned off for the device"
            ),
            IoFailure::Refused(e) => write!(f, "refused on the new connection: {e}"),
            IoFailure::TooLarge { needed, capacity } => write!(
                f,
                "the I/O needs {needed} ring requests but the ring has {capacity} slots; \
                 submit it in smaller I/Os"
            ),
            IoFailure::BackendChanged => write!(
                f,
                "its pool buffers are granted to an earlier backend's domain; take buffers \
                 from the device again and resubmit"
            ),
            IoFailure::Grant(e) => write!(f, "granting its pages failed: {e}"),
            IoFailure::Platform(e) => write!(f, "{e}"),
            IoFailure::Disabled(e) => write!(f, "not done: the device was disabled: {e}"),
            IoFailure::Closed => write!(f, "not done: the device was closed"),
        }
    }
}

/// Why [`crate::Blkfront::submit`] refused an I/O (nothing of it reached
/// the scheduler or the ring).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The device is disabled.
    Disabled(Box<DeviceError>),
    /// The device was closed or removed.
    Closed,
    /// The device never connected: the disk's size and features are not
    /// known yet. Poll until [`crate::DeviceEvent::Connected`].
    NotConnected,
    /// The I/O breaks the disk's rules (read-only disk, alignment to the
    /// logical sector, past the end, unsupported operation).
    Io(IoError),
    /// A span reaches past the end of its buffer.
    BadSpan {
        /// Its index in the I/O.
        index: usize,
        /// Its offset.
        offset: usize,
        /// Its length.
        len: usize,
        /// The buffer's length.
        buffer_len: usize,
    },
    /// No such device queue.
    NoSuchQueue {
        /// The queue asked for.
        queue: usize,
        /// Queues of the device.
        queues: usize,
    },
    /// The I/O needs more ring requests than a ring has slots.
    TooLarge {
        /// Requests needed.
        needed: usize,
        /// Slots of the ring.
        capacity: usize,
    },
    /// The scheduler refused it (unknown scheduler queue, too many
    /// requests held, ...).
    Scheduler(iosched::Error),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Disabled(e) => write!(f, "blkfront: device disabled: {e}"),
            Refusal::Closed => write!(f, "blkfront: the device is closed"),
            Refusal::NotConnected => write!(
                f,
                "blkfront: the disk has not connected yet, so its size and features are unknown; \
                 poll the device until it reports Connected"
            ),
            Refusal::Io(e) => write!(f, "{e}"),
            Refusal::BadSpan {
                index,
                offset,
                len,
                buffer_len,
            } => write!(
                f,
                "blkfront: span {index} ({len} bytes at {offset}) reaches past the end of its \
                 {buffer_len}-byte buffer"
            ),
            Refusal::NoSuchQueue { queue, queues } => write!(
                f,
                "blkfront: no queue {queue}: the device has queues 0 to {}",
                queues.saturating_sub(1)
            ),
            Refusal::TooLarge { needed, capacity } => write!(
                f,
                "blkfront: the I/O needs {needed} ring requests but a ring has {capacity} slots; \
                 split it into smaller I/Os"
            ),
            Refusal::Scheduler(e) => write!(f, "blkfront: the I/O scheduler refused it: {e}"),
        }
    }
}

impl core::error::Error for Refusal {}
