//! Xen grant tables and shared rings for lightweight domains.
//!
//! This crate is the foundation every driver of the suite builds on:
//! - [`abi`]: Xen's grant table and ring ABI as zerocopy types, checked
//!   against Xen's own headers;
//! - [`GrantTable`]: granting frames to a peer and ending access safely
//!   against a peer that still maps them (XSA-396 quarantine);
//! - [`FrontRing`] and [`BackRing`]: `io/ring.h` shared rings that treat
//!   everything the peer writes as hostile;
//! - [`platform`]: the traits a domain implements for drivers (shareable
//!   pages, grant table frames, event channels, domid);
//! - [`emulated`]: Xen's checks on foreign grant access, for emulated
//!   hypervisors;
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
pub mod emulated;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod platform;
pub mod ring;
pub mod table;

pub use platform::{
    DomId, EventChannels, Gfn, GrantTableFrames, PageAllocator, Platform, PlatformError, Port,
    SharedPages,
};
pub use platform::Clock;
pub use ring::{BackRing, FrontRing, RawRingMemory, RingError, RingMemory};
pub use table::{Access, EndAccessError, GrantError, GrantRef, GrantTable};

// The fake platform sleeps on a condition variable and reads the host's
// clock.
#[cfg(any(test, feature = "fake"))]
extern crate std;

#[cfg(test)]
mod tests {
    mod ring;
    mod table;
}
