//! Xen block frontend for lightweight domains.
//!
//! This crate speaks Xen's `io/blkif.h` as Linux 6.1's xen-blkback expects
//! it, in two layers.
//!
//! The driver, [`Blkfront`] ([`device`]): one virtual disk, generic over the
//! platform ([`grant_tables::Platform`]) and the xenstore transport
//! ([`xenbus::Transport`]). It runs the xenbus handshake, sets up per
//! connection one granted ring (1 to 16 pages) and one event channel per
//! queue, negotiates persistent grants, indirect segments, multi-page rings
//! and multi-queue, and moves the application's I/Os (read, write, flush,
//! barrier, discard, secure discard) zero-copy, from pools of persistent
//! grants ([`buffer`]) or the application's own pages. It re-issues what was
//! in flight when a backend goes away and comes back, watches for resizes,
//! disables itself with a clear error on any protocol violation or stall,
//! and offers completion-based and blocking APIs, polling or event-driven.
//! The application's I/O scheduler ([`iosched`]) decides the order in which
//! waiting I/Os go on the rings ([`queue`]); without one, FIFO.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo<P: grant_tables::Platform, T: xenbus::Transport>(
//! #     platform: Arc<P>, xs: &mut xenbus::Xenstore<T>,
//! # ) -> Result<(), Box<dyn std::error::Error>> where P::Pages: 'static {
//! use blkfront::{Blkfront, DeviceConfig, Span};
//! let mut disk = Blkfront::new(platform, DeviceConfig::new("device/vbd/51712"))?;
//! disk.wait_connected(xs, None)?;
//! let mut buf = disk.buffer(0).expect("a pool buffer");
//! buf.write_at(0, &[0xab; 4096])?;
//! let spans = disk
//!     .write_blocking(xs, 0, 8, vec![Span::whole(buf)], None)
//!     .map_err(|e| e.to_string())?;
//! let back = disk
//!     .read_blocking(xs, 0, 8, spans, None)
//!     .map_err(|e| e.to_string())?;
//! # let _ = back; Ok(()) }
//! ```
//!
//! The protocol, as pure logic with no platform, xenstore or ring access
//! of its own:
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
//! - [`spin`]: how long an adaptive wait spins before it sleeps, shrunk to
//!   nothing while the thread is seen losing its core (a busy machine).
//!
//! Fuzz targets `blkif_response` and `blkif_features` (in the workspace's
//! `fuzz/`) feed these parsers arbitrary backend input; `blkfront_ring`
//! feeds the driver arbitrary response slots and indices on a live ring.
//!
//! # Not done
//! - Bouncing for an untrusted backend: [`grant_tables::PoolMode::Untrusted`]
//!   zeroes pool pages between uses (nothing but the payload is shared),
//!   but on a connection without persistent grants the application's own
//!   pages are granted as they are (whatever else they hold is visible).
//! - An I/O whose pool buffers were granted to an earlier backend's domain
//!   (the backend moved to another domain) fails with
//!   [`IoFailure::BackendChanged`] instead of being copied into new buffers.
//! - An I/O re-issued on a ring too small for it without indirect requests
//!   fails with [`IoFailure::TooLarge`] rather than being cut into several.
//! - One owner drives every queue ([`Blkfront`] takes `&mut self`): the
//!   queues spread I/O over rings, event channels and pools, not over
//!   threads; a multi-threaded application shares the device behind a
//!   lock.
//!
//! # Units
//! Sector numbers and counts are in 512-byte sectors everywhere, as on the
//! wire and in blkback's `sectors` key. The disk's logical sector size
//! (`sector-size`, 512 to 4096) constrains alignment: starts and lengths
//! are whole logical sectors.
#![no_std]

extern crate alloc;

pub mod abi;
pub mod buffer;
pub mod device;
pub mod error;
pub mod features;
pub mod inflight;
pub mod queue;
pub mod request;
pub mod spin;

pub use buffer::{Buffer, Span};
pub use device::{
    Blkfront, BlockingError, Completion, DeviceConfig, DeviceEvent, DeviceStats, Io, Mode, Refused,
    Tag,
};
pub use error::{DeviceError, IoFailure, Refusal};
pub use queue::IoOptions;

pub use features::{
    ConfigError, DiskFeatures, Feature, FeatureError, FrontendConfig, FrontendKey, Negotiated,
    QueueRing, RingChoice, RingFeatures,
};
pub use inflight::{Done, Drained, InFlight, IoStatus, Rejected, ResponseError, SubmitError};
pub use request::{BlockIo, BlockOp, IoError, Plan, RingRequest, Segment};
pub use spin::SpinGovernor;

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests;
