//! The driver's errors: what broke a connection, or kept one from being set
//! up.

use core::fmt;

use grant_tables::{GrantedRingError, PlatformError, PoolError, RingError};

use crate::features::{FeatureError, KeysError};
use crate::rx::{ProdViolation, RxPostError, RxViolation};
use crate::tx::TxViolation;

/// Which ring of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingKind {
    /// The transmit ring.
    Tx,
    /// The receive ring.
    Rx,
}

impl fmt::Display for RingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingKind::Tx => "TX",
            RingKind::Rx => "RX",
        })
    }
}

/// Why the device is broken, or a connection could not be set up.
///
/// The `Tx`, `Rx`, `Prod` and `Ring` variants are the backend's faults
/// (protocol violations): the device stops using the connection and reports
/// the error until the backend goes away and a new connection is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetError {
    /// A TX response broke the protocol.
    Tx {
        /// The queue.
        queue: u16,
        /// What the backend did.
        violation: TxViolation,
    },
    /// An RX response chain broke the protocol.
    Rx {
        /// The queue.
        queue: u16,
        /// What the backend did.
        violation: RxViolation,
    },
    /// A response producer index moved backwards.
    Prod {
        /// The queue.
        queue: u16,
        /// The ring.
        ring: RingKind,
        /// What the backend did.
        violation: ProdViolation,
    },
    /// A shared ring broke (the backend published more responses than
    /// requests outstanding).
    Ring {
        /// The queue.
        queue: u16,
        /// The ring.
        ring: RingKind,
        /// The ring's error.
        error: RingError,
    },
    /// The platform failed (event channels, pages).
    Platform {
        /// What the driver was doing.
        op: &'static str,
        /// The platform's error.
        error: PlatformError,
    },
    /// Negotiation failed (a malformed key, no rx-copy, a bad configuration).
    Feature(FeatureError),
    /// The frontend's keys could not be built.
    Keys(KeysError),
    /// A buffer pool could not be made.
    Pool(PoolError),
    /// A ring could not be made.
    RingSetup(GrantedRingError),
    /// The driver's own bookkeeping is inconsistent (a bug, not the
    /// backend's fault).
    Internal(&'static str),
}

impl From<FeatureError> for NetError {
    fn from(e: FeatureError) -> Self {
        NetError::Feature(e)
    }
}

impl From<KeysError> for NetError {
    fn from(e: KeysError) -> Self {
        NetError::Keys(e)
    }
}

impl From<PoolError> for NetError {
    fn from(e: PoolError) -> Self {
        NetError::Pool(e)
    }
}

impl From<GrantedRingError> for NetError {
    fn from(e: GrantedRingError) -> Self {
        NetError::RingSetup(e)
    }
}

impl From<RxPostError> for NetError {
    fn from(_: RxPostError) -> Self {
        NetError::Internal("an RX buffer was posted into a slot that still holds one")
    }
}

impl NetError {
    /// Whether the backend caused it (a protocol violation).
    pub fn is_backend_fault(&self) -> bool {
        match self {
            NetError::Tx { .. } | NetError::Rx { .. } | NetError::Prod { .. } => true,
            NetError::Ring { error, .. } => error.is_peer_fault(),
            _ => false,
        }
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Tx { queue, violation } => write!(f, "queue {queue}: {violation}"),
            NetError::Rx { queue, violation } => write!(f, "queue {queue}: {violation}"),
            NetError::Prod {
                queue,
                ring,
                violation,
            } => write!(f, "queue {queue} {ring} ring: {violation}"),
            NetError::Ring { queue, ring, error } => {
                write!(f, "queue {queue} {ring} ring: {error}")
            }
            NetError::Platform { op, error } => write!(
                f,
                "{op} failed: {error}; the platform refused a resource the device needs"
            ),
            NetError::Feature(e) => write!(f, "negotiation failed: {e}"),
            NetError::Keys(e) => write!(f, "cannot publish the frontend's keys: {e}"),
            NetError::Pool(e) => write!(f, "{e}"),
            NetError::RingSetup(e) => write!(f, "{e}"),
            NetError::Internal(what) => write!(
                f,
                "netfront internal error: {what}; this is a bug in the driver, please report it"
            ),
        }
    }
}

impl core::error::Error for NetError {}
