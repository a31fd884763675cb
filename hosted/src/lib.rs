//! The hosted platform: Xen's interfaces for Linux processes (an emulated
//! hypervisor), on which tests, fuzzing and benchmarks run.
//!
//! - [`HostedHypervisor`]: the rendezvous. Create one in a fresh directory;
//!   domains join it from this process or any other.
//! - [`HostedPlatform`]: one domain. Implements [`grant_tables::Platform`]
//!   (shareable pages, event channels, grant table frames, domid) and the
//!   backend side of grants: [`HostedPlatform::map_grant`],
//!   [`HostedPlatform::map_ring`] and [`HostedPlatform::grant_copy`].
//! - A domain's memory, grant table and event page are memfds (sealed
//!   against resizing) that peers map: a granted frame `n` is page `n` of
//!   the granting domain's memory memfd, and a backend maps exactly the
//!   granted pages.
//!
//! Xen's semantics are kept, not just its shape: grant maps and copies are
//! checked like Xen checks them and set `GTF_reading`/`GTF_writing` in the
//! granting domain's table (so XSA-396 can be reproduced), and event
//! channels have a pending bit in shared memory that polling reads without
//! a system call, with an eventfd written only for a waiter that may sleep.
//!
//! # Two processes as two domains
//! ```no_run
//! use grant_tables::{Access, DomId, EventChannels, PageAllocator, SharedPages};
//! use hosted::{HostedHypervisor, HostedPlatform};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Process A (the launcher) runs the hypervisor and is dom1.
//! let hv = HostedHypervisor::create("/dev/shm/my-run")?;
//! let front = hv.join(DomId(1))?;
//! let page = front.alloc_zeroed_pages(1)?;
//! let gref = front.grant_table().grant_access(DomId(2), page.gfn(0).unwrap(), Access::ReadWrite)?;
//! let port = front.alloc_unbound(DomId(2))?;
//! // ... tell process B `gref.raw()` and `port` (xenstore, argv, ...) ...
//!
//! // Process B joins the same directory as dom2 and maps the grant.
//! let back = HostedPlatform::join("/dev/shm/my-run", DomId(2))?;
//! let map = back.map_grant(DomId(1), gref.raw(), Access::ReadWrite)?;
//! let local = back.bind_interdomain(DomId(1), port)?;
//! back.notify(local)?;
//! # drop(map); Ok(()) }
//! ```

mod domain;
mod evtchn;
mod grants;
pub mod hypervisor;
mod memory;
mod sys;
pub mod toolstack;
pub mod xenstore;

pub use domain::{DomainConfig, HostedError, HostedPlatform};
pub use evtchn::{EventStats, NR_PORTS};
pub use grants::{HostedGrantFrames, MapError, MapFailure, MappedGrant, MappedRing};
pub use hypervisor::HostedHypervisor;
pub use memory::HostedPages;
pub use toolstack::{add_device, remove_device, DeviceSpec, ToolstackError};
