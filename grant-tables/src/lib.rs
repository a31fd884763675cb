//! Xen grant tables and shared rings for lightweight domains.
//!
//! This crate is the foundation every driver of the suite builds on:
//! - [`abi`]: Xen's grant table and ring ABI as zerocopy types, checked
//!   against Xen's own headers;
//! - [`GrantTable`]: granting frames to a peer and ending access safely
//!   against a peer that still maps them (XSA-396 quarantine, retried with
//!   [`GrantTable::retry_quarantined`]);
//! - [`FrontRing`] and [`BackRing`]: `io/ring.h` shared rings that treat
//!   everything the peer writes as hostile;
//! - [`GrantedPages`], [`GrantedRing`] and [`BufferPool`]: the pieces every
//!   frontend shares: an allocation granted and ended as one, a ring
//!   granted to the backend (with its xenstore entries), and a pool of
//!   persistent grants lending zero-copy buffers;
//! - [`platform`]: the traits a domain implements for drivers (shareable
//!   pages, grant table frames, event channels, domid);
//! - [`foreign`]: the backend seam ([`ForeignGrants`]): map, unmap and copy
//!   another domain's grants in batches, with Xen's status per operation;
//!   [`map_back_ring`] and [`parse_ring_refs`] for a backend's rings;
//! - [`shared_mem`]: memory-speed copies into and out of shared memory;
//! - [`emulated`]: Xen's checks on foreign grant access and its pin
//!   records, for emulated hypervisors;
//! - `fake` (feature `fake`): an in-memory platform for tests and fuzzing.
//!
//! # Hostile peers
//! Everything another domain writes is untrusted. Peer indices are read once
//! and bounds-checked; peer slots are copied out once and never re-read; a
//! malformed index breaks the ring with a typed error instead of looping or
//! panicking.
#![no_std]

extern crate alloc;

pub mod abi;
pub mod cache;
pub mod emulated;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod foreign;
pub mod granted;
pub mod granted_ring;
pub mod platform;
pub mod pool;
pub mod ring;
pub mod shared_mem;
pub mod table;

pub use foreign::{ForeignError, ForeignGrants, ForeignMapping, MapOp, MappingAccessError};
pub use granted::GrantedPages;
pub use granted_ring::{
    map_back_ring, parse_ring_refs, ring_ref_entries, GrantedRing, GrantedRingError,
    MapBackRingError, RingRefLayout, RingRefsError,
};
pub use platform::{
    DomId, EventChannels, Gfn, GrantTableFrames, PageAllocator, Platform, PlatformError, Port,
    SharedPages,
};
pub use pool::{BufferPool, PoolBuffer, PoolConfig, PoolError, PoolMode};
pub use platform::Clock;
pub use ring::{BackRing, FrontRing, RawRingMemory, RingError, RingMemory};
pub use table::{Access, EndAccessError, GrantError, GrantRef, GrantStats, GrantTable};

// The fake platform sleeps on a condition variable and reads the host's
// clock.
#[cfg(any(test, feature = "fake"))]
extern crate std;

#[cfg(test)]
mod tests {
    mod foreign;
    mod pool;
    mod ring;
    mod table;
}
