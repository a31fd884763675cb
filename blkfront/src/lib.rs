//! Xen block frontend for lightweight domains: the blkif protocol layer.
//!
//! This crate speaks Xen's `io/blkif.h` as Linux 6.1's xen-blkback expects
//! it. What exists today is the protocol, as pure logic with no platform,
//! xenstore or ring access of its own:
//!
//! - [`abi`]: the wire types (`blkif_request`, `blkif_request_indirect`,
//!   `blkif_request_discard`, `blkif_response`, `blkif_request_segment`) as
//!   zerocopy structs in their x86_64 layout, the operation and status
//!   codes, the `info` bits, ring sizes; checked against Xen's header by
//!   `tests/abi_layout.rs`.
//! - [`features`]: the backend's keys parsed strictly (a hostile backend's
//!   value is a [`FeatureError`] naming the key and the rule it breaks;
//!   absurd maxima are clamped with a log line), the frontend's choice of
//!   queues, ring order, persistent grants and indirect segments for the
//!   application's [`FrontendConfig`], and the keys the frontend writes
//!   (`ring-ref` or `ring-page-order` with `ring-ref0..N`, `queue-N/` for
//!   several queues, `event-channel`, `protocol`, `feature-persistent`,
//!   `multi-queue-num-queues`).
//! - [`request`]: an application I/O ([`BlockIo`]: read, write, flush,
//!   barrier, discard, secure discard) checked before it reaches the ring
//!   (read-only disks, features offered, logical-sector alignment, segment
//!   bounds, disk range) and split into direct or indirect requests.
//! - [`inflight`]: the slab of requests in flight on one ring (id = slab
//!   index), each response checked as Linux 6.1's hardened blkfront checks
//!   it (id in range and in flight, operation matching, status known; a
//!   violation disables the device), features turned off on `EOPNOTSUPP`,
//!   and every unfinished I/O handed back whole, in submission order, when
//!   the connection ends, to be split anew for the next one.
//!
//! Fuzz targets `blkif_response` and `blkif_features` (in the workspace's
//! `fuzz/`) feed these parsers arbitrary backend input.
//!
//! # Not here yet: the driver
//! The driver assembles these parts on the driver core of the grant-tables
//! and xenbus crates, and is the next step. It will add: the granted rings
//! (one per queue, `2^order` pages) and their event channels, set up per
//! connection and published with [`RingChoice::frontend_keys`]; the xenbus
//! handshake (ring features read at `InitWait`, keys written before
//! `Initialised`, disk features read at `Connected`, the `sectors` watch for
//! resizes, reconnect to a new backend instance with [`InFlight::drain`]
//! and re-submission); the buffers (a pool of persistent grants, granted
//! writable, or the application's own pages granted per request, and
//! zeroed indirect pages), with bouncing for an untrusted backend
//! (XSA-403); putting [`RingRequest`]s on the ring and taking responses off
//! it (copy once, then [`InFlight::complete`]); notification, polling and
//! event-driven modes; completion-based and blocking APIs for the
//! application; and the I/O scheduler between the application and the
//! rings.
//!
//! # Units
//! Sector numbers and counts are in 512-byte sectors everywhere, as on the
//! wire and in blkback's `sectors` key. The disk's logical sector size
//! (`sector-size`, 512 to 4096) constrains alignment: starts and lengths
//! are whole logical sectors.
#![no_std]

extern crate alloc;

pub mod abi;
pub mod features;
pub mod inflight;
pub mod request;

pub use features::{
    ConfigError, DiskFeatures, Feature, FeatureError, FrontendConfig, FrontendKey, Negotiated,
    QueueRing, RingChoice, RingFeatures,
};
pub use inflight::{
    Completion, Done, Drained, InFlight, IoStatus, Rejected, ResponseError, SubmitError,
};
pub use request::{BlockIo, BlockOp, IoError, Plan, RingRequest, Segment};

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests;
