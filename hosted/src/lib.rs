//! The hosted platform: Xen's interfaces for Linux processes (an emulated
//! hypervisor), on which tests, fuzzing and benchmarks run.
//!
//! - [`HostedHypervisor`]: the rendezvous. Create one in a fresh directory;
//!   domains join it from this process or any other.
//! - [`HostedPlatform`]: one domain. Implements [`grant_tables::Platform`]
//!   (shareable pages, event channels, grant table frames, domid, and a
//!   [`grant_tables::Clock`] on the host's monotonic clock) and the
//!   backend side of grants, [`grant_tables::ForeignGrants`]:
//!   [`HostedPlatform::map_grant`], [`HostedPlatform::map_ring`] and
//!   [`HostedPlatform::grant_copy`] (at memory speed).
//! - [`blkback`]: a block backend serving blkfronts as Linux 6.1's
//!   xen-blkback does, onto a file or block device with `O_DIRECT` through
//!   io_uring (with a hostile mode for frontend tests), and the ring-level
//!   test frontend its tests and the block bench use.
//! - [`netback`]: a network backend speaking netif as Linux's xen-netback
//!   does, with a software switch, a host port and an optional TAP device,
//!   for netfronts in other domains (and a hostile mode to test them).
//! - [`framelink`]: a frame device between two processes (domains sharing
//!   granted pages) or two threads, two rings of 2 KiB slots in shared
//!   memory, with seeded drop, duplication and reordering on demand: the
//!   link RDMA tests and benches run RoCE v2 over.
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
//! When a domain goes, whether it exits or is killed, the channels bound to
//! it become unbound (offered to its domid again) as in Xen's
//! `evtchn_destroy`, and events never reach a later domain with the same
//! domid. `block` and `block_any` are `SCHEDOP_poll` (on one port, on
//! several): they return for a pending port whether or not the port is
//! masked, and sleep on the ports' eventfds without spinning.
//!
//! # Where the emulation differs from Xen
//! - Isolation is cooperative: every domain receives its peers' memfds from
//!   the hypervisor socket, so a malicious process could map more than it
//!   was granted. The checks above are what this code does, and what the
//!   drivers under test see; they are not a sandbox.
//! - A domain that dies while mapping grants has its pins released by the
//!   hypervisor when its connection closes, as Xen releases a dead domain's
//!   mappings: the entries' `GTF_reading`/`GTF_writing` clear, and the
//!   granting domain's `retry_quarantined` ends them. Until the hypervisor
//!   notices (the process has exited), ending those grants fails safely.
//! - A notify racing with the peer closing and reallocating the same port
//!   can leave a spurious pending bit on the new port; drivers treat events
//!   as hints anyway.
//! - There are no upcalls, so the mask bit, which in Xen only holds back
//!   upcalls, is kept but changes nothing: events still become pending and
//!   wake `block`.
//! - A domain that dies is noticed when its hypervisor connection closes;
//!   until then its peers' channels stay bound to it and their events set
//!   pending bits nobody reads. Its domid cannot be reused before that.
//! - The hypervisor must outlive the domains' control operations (joining,
//!   looking up peers, allocating and binding ports, the first wakeup of a
//!   binding); established mappings and polling keep working without it.
//!
//! # Two processes as two domains
//! ```no_run
//! use grant_tables::{Access, DomId, EventChannels, PageAllocator, SharedPages};
//! use hosted::{HostedHypervisor, HostedPlatform};
//!
//! // Process A (the launcher) runs the hypervisor and is dom1.
//! let hv = HostedHypervisor::create("/dev/shm/my-run").expect("hypervisor");
//! let front = hv.join(DomId(1)).expect("dom1");
//! let page = front.alloc_zeroed_pages(1).expect("page");
//! let gfn = page.gfn(0).expect("one page");
//! let gref = front.grant_table().grant_access(DomId(2), gfn, Access::ReadWrite).expect("grant");
//! let port = front.alloc_unbound(DomId(2)).expect("port");
//! // ... tell process B `gref.raw()` and `port` (xenstore, argv, ...) ...
//!
//! // Process B joins the same directory as dom2, maps the grant and binds.
//! let back = HostedPlatform::join("/dev/shm/my-run", DomId(2)).expect("dom2");
//! let map = back.map_grant(DomId(1), gref.raw(), Access::ReadWrite).expect("map");
//! let local = back.bind_interdomain(DomId(1), port).expect("bind");
//! back.notify(local).expect("notify");
//! drop(map); // unmaps and releases GTF_reading/GTF_writing
//! ```

pub mod blkback;
mod domain;
mod evtchn;
pub mod framelink;
mod grants;
pub mod hypervisor;
mod memory;
pub mod netback;
pub mod pci;
mod sys;
pub mod toolstack;
pub mod xenstore;

pub use domain::{DomainConfig, HostedError, HostedPlatform, PeerStats};
pub use evtchn::{EventStats, NR_PORTS};
pub use grants::{HostedGrantFrames, MapError, MapFailure, MappedGrant, MappedRing};
pub use hypervisor::HostedHypervisor;
pub use memory::HostedPages;
pub use toolstack::{add_device, remove_device, DeviceSpec, ToolstackError};

/// Domains, mappings and pages move between threads (a backend's queues
/// run on their own threads).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<HostedPlatform>();
    send_sync::<MappedGrant>();
    send_sync::<MappedRing>();
    send_sync::<HostedPages>();
    send_sync::<HostedGrantFrames>();
    send_sync::<HostedHypervisor>();
};
