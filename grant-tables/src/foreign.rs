//! The backend seam: mapping, unmapping and copying another domain's
//! grants.
//!
//! A backend (blkback, netback, a test's echo) is generic over
//! [`ForeignGrants`], which a platform implements with its hypervisor's
//! grant operations: `hosted` with its emulated hypervisor, the fake
//! platform in memory (so a backend's logic runs in unit tests and under
//! Miri), and a platform on real Xen with `GNTTABOP_map_grant_ref`,
//! `GNTTABOP_unmap_grant_ref` and `GNTTABOP_copy`. Operations come in
//! batches, as Xen's do, and every operation gets its own status, with Xen's
//! `GNTST_*` codes ([`GntStatus`]): one bad ref in a batch fails that
//! operation only.
//!
//! A mapping ([`ForeignMapping`]) is owned: dropping it unmaps the pages
//! and releases the pins that keep the granting domain from ending access.

use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use crate::abi::{GntStatus, GnttabCopy, GrantRefNum};
use crate::platform::DomId;
use crate::ring::RingMemory;
use crate::shared_mem::{self, OutOfRange};
use crate::table::Access;

/// One grant to map (`struct gnttab_map_grant_ref` with `GNTMAP_host_map`,
/// plus `GNTMAP_readonly` for [`Access::ReadOnly`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapOp {
    /// The domain that granted the page.
    pub granter: DomId,
    /// Its ref in the granter's table.
    pub gref: GrantRefNum,
    /// How to map it; a writable mapping of a read-only grant is refused.
    pub access: Access,
}

/// A failed grant operation: which grant, and Xen's status for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForeignError {
    /// The granting domain.
    pub granter: DomId,
    /// The ref that failed (the first that did, for a multi-page map).
    pub gref: GrantRefNum,
    /// Why, as Xen says it.
    pub status: GntStatus,
}

/// What a `GNTST_*` status means, in Xen's words (`GNTTABOP_error_msgs`).
pub fn status_text(status: GntStatus) -> &'static str {
    match status {
        GntStatus::Okay => "okay",
        GntStatus::GeneralError => "undefined error",
        GntStatus::BadDomain => "unrecognised domain id",
        GntStatus::BadGntref => "invalid grant reference",
        GntStatus::BadHandle => "invalid mapping handle",
        GntStatus::BadVirtAddr => "invalid virtual address",
        GntStatus::BadDevAddr => "invalid device address",
        GntStatus::NoDeviceSpace => "no spare translation slot in the I/O MMU",
        GntStatus::PermissionDenied => "permission denied",
        GntStatus::BadPage => "bad page",
        GntStatus::BadCopyArg => "copy arguments cross page boundary",
        GntStatus::AddressTooBig => "page address size too large",
        GntStatus::Eagain => "operation not done; try again",
        GntStatus::NoSpace => "out of space",
    }
}

impl fmt::Display for ForeignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grant ref {} of {}: {} (GNTST {}); the peer sent a bad or ended ref, or the grant is not for this domain",
            self.gref,
            self.granter,
            status_text(self.status),
            self.status.raw()
        )
    }
}

impl core::error::Error for ForeignError {}

/// Why a read or write through a mapping was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingAccessError {
    /// The range is outside the mapping.
    OutOfRange(OutOfRange),
    /// A write through a read-only mapping.
    ReadOnly,
}

impl fmt::Display for MappingAccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MappingAccessError::OutOfRange(r) => write!(f, "{r}"),
            MappingAccessError::ReadOnly => {
                write!(f, "the grant is mapped read-only; writes are refused")
            }
        }
    }
}

impl core::error::Error for MappingAccessError {}

impl From<OutOfRange> for MappingAccessError {
    fn from(r: OutOfRange) -> Self {
        MappingAccessError::OutOfRange(r)
    }
}

/// Granted pages of another domain, mapped contiguously into this one.
/// Unmapped, and the pins released, on drop.
///
/// # Safety
/// Implementors guarantee that `as_ptr()` is page-aligned and valid for
/// reads of `len()` bytes (and writes, when `access()` is
/// [`Access::ReadWrite`]) for as long as the value lives, and that no Rust
/// reference points into that memory (the granting domain writes it
/// concurrently).
pub unsafe trait ForeignMapping: Send {
    /// The first byte.
    fn as_ptr(&self) -> NonNull<u8>;
    /// Length in bytes (pages mapped times the page size).
    fn len(&self) -> usize;
    /// Whether nothing is mapped (never, for a successful map).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// How the pages are mapped.
    fn access(&self) -> Access;
    /// The granting domain.
    fn granter(&self) -> DomId;
    /// The refs mapped, in address order.
    fn grefs(&self) -> &[GrantRefNum];

    /// Copies bytes at `offset` out of the mapping (one `memcpy`; the
    /// granting domain may change them meanwhile: validate the copy).
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), MappingAccessError> {
        // SAFETY: readable for `len()` bytes while `self` lives and never
        // referenced (the trait's contract).
        unsafe { shared_mem::read(self.as_ptr(), self.len(), offset, buf) }.map_err(Into::into)
    }

    /// Copies `data` into the mapping at `offset`; refused for a read-only
    /// mapping.
    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), MappingAccessError> {
        if self.access() != Access::ReadWrite {
            return Err(MappingAccessError::ReadOnly);
        }
        // SAFETY: writable for `len()` bytes (a read-write mapping) while
        // `self` lives and never referenced (the trait's contract).
        unsafe { shared_mem::write(self.as_ptr(), self.len(), offset, data) }.map_err(Into::into)
    }
}

/// The grant operations of a backend: `GNTTABOP_map_grant_ref`,
/// `GNTTABOP_unmap_grant_ref` and `GNTTABOP_copy`, in batches with a status
/// per operation.
pub trait ForeignGrants {
    /// A mapping of one or more granted pages.
    type Mapping: ForeignMapping;
    /// A read-write mapping of the 1 to 16 pages of a shared ring, for a
    /// [`crate::BackRing`].
    type RingMapping: RingMemory + Send;

    /// Maps each operation's grant as its own one-page mapping, pushing one
    /// result per operation onto `out`, in order. A failure fails that
    /// operation only.
    fn map_batch(&self, ops: &[MapOp], out: &mut Vec<Result<Self::Mapping, ForeignError>>);

    /// Maps the pages of a shared ring granted by `granter`, read-write and
    /// contiguous, in ring order: all or nothing (the error names the first
    /// ref that failed).
    fn map_ring_pages(
        &self,
        granter: DomId,
        refs: &[GrantRefNum],
    ) -> Result<Self::RingMapping, ForeignError>;

    /// Unmaps every mapping in `mappings` (draining it), pushing one status
    /// per mapping onto `out`, in order. Dropping a mapping unmaps it too;
    /// this is the batched form, with Xen's statuses.
    fn unmap_batch(&self, mappings: &mut Vec<Self::Mapping>, out: &mut Vec<GntStatus>) {
        for m in mappings.drain(..) {
            drop(m);
            out.push(GntStatus::Okay);
        }
    }

    /// Xen's `GNTTABOP_copy`: each operation copies `len` bytes between a
    /// granted page (`GNTCOPY_source_gref` / `GNTCOPY_dest_gref`: a ref in
    /// the named domain's table, granted to this domain) and a frame of
    /// this domain (named with `DOMID_SELF`), and gets its `GNTST_*` status
    /// in its `status` field. Returns how many failed.
    fn copy_batch(&self, ops: &mut [GnttabCopy]) -> usize;
}
