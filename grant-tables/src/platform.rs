//! The platform seam: what a driver needs from the domain it runs in.
//!
//! Drivers never make a hypercall or a syscall themselves. They are generic
//! over these traits, which the `hosted` crate implements for Linux processes
//! (an emulated hypervisor) and `lwdom` implements with hypercalls on real
//! Xen. [`crate::fake`] (feature `fake`) implements them in memory for unit
//! tests and fuzzing.

use alloc::sync::Arc;
use core::fmt;
use core::ptr::NonNull;

use crate::abi::GrantEntryV1;
use crate::table::GrantTable;

/// A domain id (`domid_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomId(pub u16);

impl DomId {
    /// Domain 0.
    pub const DOM0: DomId = DomId(0);

    /// Whether this names a real domain rather than a reserved id
    /// (`DOMID_SELF`, `DOMID_IO`, ...).
    pub fn is_real(self) -> bool {
        self.0 < crate::abi::DOMID_FIRST_RESERVED
    }
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dom{}", self.0)
    }
}

/// A guest frame number: what a grant entry's `frame` field holds (a GFN on
/// translated guests, an MFN on PV guests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gfn(pub u64);

/// An event channel port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u32);

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {}", self.0)
    }
}

/// Why a platform operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// No memory (or no frames) left for the request.
    OutOfMemory {
        /// Pages asked for.
        pages: usize,
    },
    /// The event channel port is not open in this domain.
    BadPort(Port),
    /// No free event channel ports are left.
    NoFreePorts,
    /// The remote domain or port does not exist or refuses the binding.
    BindRefused {
        /// The remote domain.
        remote: DomId,
        /// What the platform said.
        reason: &'static str,
    },
    /// A wait ran out of time.
    TimedOut,
    /// The request cannot be carried out as asked (for instance waiting
    /// on no ports, or on more ports than the platform can wait on at
    /// once).
    InvalidRequest {
        /// The operation asked for.
        op: &'static str,
        /// What is wrong with it and what to do instead.
        reason: &'static str,
    },
    /// The underlying hypercall or system call failed with this code.
    Os {
        /// The operation that failed.
        op: &'static str,
        /// errno or Xen error code (negative).
        code: i32,
    },
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformError::OutOfMemory { pages } => write!(
                f,
                "could not allocate {pages} shareable page(s): the domain is out of memory; free buffers or give the domain more memory"
            ),
            PlatformError::BadPort(p) => {
                write!(f, "event channel {p} is not open in this domain; bind or allocate it first")
            }
            PlatformError::NoFreePorts => write!(
                f,
                "no free event channel ports; close unused channels"
            ),
            PlatformError::BindRefused { remote, reason } => {
                write!(f, "binding an event channel to {remote} was refused: {reason}")
            }
            PlatformError::TimedOut => write!(f, "timed out waiting for an event"),
            PlatformError::InvalidRequest { op, reason } => write!(f, "{op}: {reason}"),
            PlatformError::Os { op, code } => write!(f, "{op} failed with error code {code}"),
        }
    }
}

impl core::error::Error for PlatformError {}

/// Whole pages that this domain can grant to a peer.
///
/// # Safety
/// Implementors guarantee that `as_ptr()` is page-aligned and valid for reads
/// and writes of `page_count() * PAGE_SIZE` bytes for as long as the value
/// lives, that the memory is not otherwise aliased by Rust references, that it
/// was zeroed when allocated (so it never carries stale data to a peer,
/// XSA-403), and that `gfn(i)` is the frame number that backs page `i`.
pub unsafe trait SharedPages: Send {
    /// The first byte of the first page.
    fn as_ptr(&self) -> NonNull<u8>;
    /// How many pages there are.
    fn page_count(&self) -> usize;
    /// The frame number of page `index`, or `None` when out of range.
    fn gfn(&self, index: usize) -> Option<Gfn>;
    /// The length in bytes.
    fn len_bytes(&self) -> usize {
        self.page_count() * crate::abi::PAGE_SIZE
    }
}

/// Allocation of shareable pages.
pub trait PageAllocator {
    /// The pages this allocator hands out; freed on drop.
    type Pages: SharedPages;
    /// Allocates `count` zeroed, page-aligned pages.
    fn alloc_zeroed_pages(&self, count: usize) -> Result<Self::Pages, PlatformError>;
}

/// This domain's own grant table, as mapped into its address space.
///
/// # Safety
/// Implementors guarantee that `entries()` points to `entry_count()`
/// consecutive, 8-byte aligned [`GrantEntryV1`] entries that stay mapped for
/// as long as the value lives, and that nothing else in this domain writes
/// them except through the [`crate::GrantTable`] built on top. The hypervisor
/// (or the emulated one) may write the `flags` field concurrently, so the
/// memory is only ever accessed atomically.
pub unsafe trait GrantTableFrames: Send + Sync {
    /// The first entry.
    fn entries(&self) -> NonNull<GrantEntryV1>;
    /// How many entries there are.
    fn entry_count(&self) -> u32;
}

/// Event channels: Xen's virtual interrupts.
pub trait EventChannels {
    /// Allocates an unbound port that `remote` may bind to.
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError>;
    /// Binds a local port to `remote`'s unbound `remote_port`.
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError>;
    /// Sets the pending bit of the peer's end and wakes it if it waits.
    fn notify(&self, port: Port) -> Result<(), PlatformError>;
    /// Masks the port. As in Xen, the mask only holds back upcalls (event
    /// callbacks): events still set the pending bit, and masking does not
    /// clear it, so [`EventChannels::poll`] and [`EventChannels::block`]
    /// see them as usual.
    fn mask(&self, port: Port) -> Result<(), PlatformError>;
    /// Unmasks the port.
    fn unmask(&self, port: Port) -> Result<(), PlatformError>;
    /// Tests and clears the port's pending bit without blocking (no syscall
    /// or hypercall where the platform allows).
    fn poll(&self, port: Port) -> Result<bool, PlatformError>;
    /// Blocks until the port is pending (then clears it and returns `true`)
    /// or `timeout_ns` passes (returns `false`). `None` waits forever.
    ///
    /// Like Xen's `SCHEDOP_poll`, this returns for a pending port whether or
    /// not it is masked.
    fn block(&self, port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError>;
    /// Blocks until at least one of `ports` is pending or `timeout_ns` passes.
    /// Returns the first pending port found (its pending bit cleared; others stay pending,
    /// so the next call returns at once) or `None` on timeout. Returns for masked ports too,
    /// as SCHEDOP_poll does. An empty slice or a port not open is an error.
    ///
    /// Ports are looked at in the order of the slice, so a port early in
    /// it that is always pending hides the later ones: a driver that
    /// serves several queues rotates the slice (or serves every pending
    /// port with [`EventChannels::poll`] after each wakeup). `None` waits
    /// forever. Every port must be open, even when one before it is
    /// pending ([`PlatformError::BadPort`] names the first that is not). A
    /// platform may limit how many ports one call waits on (`lwdom`: 128,
    /// Xen's limit for `SCHEDOP_poll`); more is
    /// [`PlatformError::InvalidRequest`], as is an empty slice.
    fn block_any(&self, ports: &[Port], timeout_ns: Option<u64>) -> Result<Option<Port>, PlatformError>;
    /// Closes the port.
    fn close(&self, port: Port) -> Result<(), PlatformError>;
}

/// A shared reference to event channels is event channels: a driver can
/// be lent a platform its owner keeps using.
impl<T: EventChannels + ?Sized> EventChannels for &T {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError> {
        (**self).alloc_unbound(remote)
    }
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
        (**self).bind_interdomain(remote, remote_port)
    }
    fn notify(&self, port: Port) -> Result<(), PlatformError> {
        (**self).notify(port)
    }
    fn mask(&self, port: Port) -> Result<(), PlatformError> {
        (**self).mask(port)
    }
    fn unmask(&self, port: Port) -> Result<(), PlatformError> {
        (**self).unmask(port)
    }
    fn poll(&self, port: Port) -> Result<bool, PlatformError> {
        (**self).poll(port)
    }
    fn block(&self, port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError> {
        (**self).block(port, timeout_ns)
    }
    fn block_any(&self, ports: &[Port], timeout_ns: Option<u64>) -> Result<Option<Port>, PlatformError> {
        (**self).block_any(ports, timeout_ns)
    }
    fn close(&self, port: Port) -> Result<(), PlatformError> {
        (**self).close(port)
    }
}

/// Monotonic time for timeouts, deadlines and deferred retries.
///
/// Each platform has one: the hosted platform reads the host's monotonic
/// clock, `lwdom` Xen's system time, and the fake platform either the
/// host's clock or a `fake::FakeClock` (feature `fake`) that tests advance by hand.
/// Times from different platforms (or different processes) are not
/// comparable; differences of one clock's readings are.
pub trait Clock {
    /// Monotonic nanoseconds since an arbitrary origin; never goes backwards.
    fn now_ns(&self) -> u64;
}

impl<T: Clock + ?Sized> Clock for &T {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// Everything a driver needs from its domain.
pub trait Platform: PageAllocator + EventChannels + Clock {
    /// The grant table frames type.
    type GrantFrames: GrantTableFrames;
    /// This domain's id.
    fn domid(&self) -> DomId;
    /// This domain's grant table: a domain has exactly one, shared by all
    /// its drivers (clone the `Arc` to keep it). The platform sets it up on
    /// first use where that takes a hypercall; an error says why it could
    /// not (for instance Xen refusing the frames).
    fn grant_table(&self) -> Result<&Arc<GrantTable<Self::GrantFrames>>, PlatformError>;
}
