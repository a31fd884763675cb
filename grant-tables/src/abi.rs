//! Xen's grant table and shared ring ABI (`public/grant_table.h`,
//! `public/io/ring.h`), as `#[repr(C)]` types with explicit padding.
//!
//! Every type here derives zerocopy's traits: the padding is spelled out so
//! that nothing uninitialised is ever written to memory a peer can read, and
//! any bit pattern a peer writes is a valid value. Sizes and field offsets are
//! checked against Xen's own headers by `tests/abi_layout.rs`.

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of a Xen page on x86.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A grant reference number (`grant_ref_t`).
pub type GrantRefNum = u32;
/// A grant map handle (`grant_handle_t`).
pub type GrantHandle = u32;
/// A ring index (`RING_IDX`): free-running, wraps at 2^32.
pub type RingIdx = u32;

/// `DOMID_SELF`: refers to the calling domain in hypercalls.
pub const DOMID_SELF: u16 = 0x7FF0;
/// The first domid that names no real domain (`DOMID_FIRST_RESERVED`).
pub const DOMID_FIRST_RESERVED: u16 = 0x7FF0;

/// Grant refs below this are reserved for the toolstack (console, xenstore).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// Grant entries of version 1 in one page.
pub const GRANT_ENTRIES_V1_PER_PAGE: usize = PAGE_SIZE / core::mem::size_of::<GrantEntryV1>();

/// One version-1 grant table entry (`grant_entry_v1_t`).
///
/// The granting domain writes `frame` and `domid`, then (after a write
/// barrier) `flags`. The hypervisor sets and clears `GTF_reading` and
/// `GTF_writing` in `flags` while a peer maps or copies the frame.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct GrantEntryV1 {
    /// `GTF_*` flags; see [`GrantFlags`].
    pub flags: u16,
    /// The domain allowed to access the frame.
    pub domid: u16,
    /// The granted frame number.
    pub frame: u32,
}

bitflags! {
    /// `GTF_*` flags of a grant entry.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GrantFlags: u16 {
        /// `GTF_permit_access`: the peer may map or copy the frame.
        const PERMIT_ACCESS = 1 << 0;
        /// `GTF_accept_transfer` (type field value 2).
        const ACCEPT_TRANSFER = 2;
        /// `GTF_readonly`: the peer may only read.
        const READONLY = 1 << 2;
        /// `GTF_reading`: set by Xen while the peer has the frame mapped or copies from it.
        const READING = 1 << 3;
        /// `GTF_writing`: set by Xen while the peer has the frame mapped writable or copies to it.
        const WRITING = 1 << 4;
        /// `GTF_PWT` cache attribute.
        const PWT = 1 << 5;
        /// `GTF_PCD` cache attribute.
        const PCD = 1 << 6;
        /// `GTF_PAT` cache attribute.
        const PAT = 1 << 7;
        /// `GTF_sub_page` (version 2 only).
        const SUB_PAGE = 1 << 8;
    }
}

/// `GTF_type_mask`: the entry's type field.
pub const GTF_TYPE_MASK: u16 = 3;

/// Grant table hypercall sub-ops (`GNTTABOP_*`).
#[allow(missing_docs)]
pub mod gnttabop {
    pub const MAP_GRANT_REF: u32 = 0;
    pub const UNMAP_GRANT_REF: u32 = 1;
    pub const SETUP_TABLE: u32 = 2;
    pub const DUMP_TABLE: u32 = 3;
    pub const TRANSFER: u32 = 4;
    pub const COPY: u32 = 5;
    pub const QUERY_SIZE: u32 = 6;
    pub const UNMAP_AND_REPLACE: u32 = 7;
    pub const SET_VERSION: u32 = 8;
    pub const GET_STATUS_FRAMES: u32 = 9;
    pub const GET_VERSION: u32 = 10;
}

bitflags! {
    /// `GNTMAP_*` flags of a map or unmap operation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GntMapFlags: u32 {
        /// `GNTMAP_device_map`.
        const DEVICE_MAP = 1 << 0;
        /// `GNTMAP_host_map`.
        const HOST_MAP = 1 << 1;
        /// `GNTMAP_readonly`.
        const READONLY = 1 << 2;
        /// `GNTMAP_application_map`.
        const APPLICATION_MAP = 1 << 3;
        /// `GNTMAP_contains_pte`.
        const CONTAINS_PTE = 1 << 4;
    }
}

bitflags! {
    /// `GNTCOPY_*` flags of a copy operation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GntCopyFlags: u16 {
        /// `GNTCOPY_source_gref`: the source is a grant ref, not a local frame.
        const SOURCE_GREF = 1 << 0;
        /// `GNTCOPY_dest_gref`: the destination is a grant ref, not a local frame.
        const DEST_GREF = 1 << 1;
    }
}

/// Grant operation status codes (`GNTST_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i16)]
#[allow(missing_docs)]
pub enum GntStatus {
    Okay = 0,
    GeneralError = -1,
    BadDomain = -2,
    BadGntref = -3,
    BadHandle = -4,
    BadVirtAddr = -5,
    BadDevAddr = -6,
    NoDeviceSpace = -7,
    PermissionDenied = -8,
    BadPage = -9,
    BadCopyArg = -10,
    AddressTooBig = -11,
    Eagain = -12,
    NoSpace = -13,
}

impl GntStatus {
    /// Decodes a raw status; unknown codes are `None`.
    pub fn from_raw(raw: i16) -> Option<Self> {
        use GntStatus::*;
        Some(match raw {
            0 => Okay,
            -1 => GeneralError,
            -2 => BadDomain,
            -3 => BadGntref,
            -4 => BadHandle,
            -5 => BadVirtAddr,
            -6 => BadDevAddr,
            -7 => NoDeviceSpace,
            -8 => PermissionDenied,
            -9 => BadPage,
            -10 => BadCopyArg,
            -11 => AddressTooBig,
            -12 => Eagain,
            -13 => NoSpace,
            _ => return None,
        })
    }

    /// The raw code.
    pub fn raw(self) -> i16 {
        self as i16
    }
}

/// `struct gnttab_map_grant_ref`.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct GnttabMapGrantRef {
    /// IN: where to map (meaning depends on `flags`).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: the grant ref in `dom`'s table.
    pub ref_: GrantRefNum,
    /// IN: the granting domain.
    pub dom: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// OUT: handle for unmapping.
    pub handle: GrantHandle,
    /// OUT: bus address for device maps.
    pub dev_bus_addr: u64,
}

/// `struct gnttab_unmap_grant_ref`.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct GnttabUnmapGrantRef {
    /// IN: the address the grant was mapped at.
    pub host_addr: u64,
    /// IN: the bus address for device maps.
    pub dev_bus_addr: u64,
    /// IN: the handle from the map operation.
    pub handle: GrantHandle,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding (C's implicit tail padding, made explicit).
    pub _pad: u16,
}

/// `struct gnttab_setup_table`.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct GnttabSetupTable {
    /// IN: the domain (normally `DOMID_SELF`).
    pub dom: u16,
    /// Padding.
    pub _pad0: u16,
    /// IN: how many grant table frames to set up.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad1: [u8; 6],
    /// IN: guest handle of an array of `xen_pfn_t` that receives the frames.
    pub frame_list: u64,
}

/// `struct gnttab_query_size`.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct GnttabQuerySize {
    /// IN: the domain (normally `DOMID_SELF`).
    pub dom: u16,
    /// Padding.
    pub _pad0: u16,
    /// OUT: frames in use.
    pub nr_frames: u32,
    /// OUT: the most frames the domain may have.
    pub max_nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad1: u16,
}

/// `struct gnttab_copy_ptr`: one side of a grant copy.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct GnttabCopyPtr {
    /// A grant ref (`GNTCOPY_*_gref`) or a local frame (`xen_pfn_t`).
    pub u: u64,
    /// The domain owning the ref or frame.
    pub domid: u16,
    /// Offset in the page.
    pub offset: u16,
    /// Padding.
    pub _pad: u32,
}

/// `struct gnttab_copy`.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct GnttabCopy {
    /// IN: where to copy from.
    pub source: GnttabCopyPtr,
    /// IN: where to copy to.
    pub dest: GnttabCopyPtr,
    /// IN: bytes to copy (may not cross a page boundary on either side).
    pub len: u16,
    /// IN: `GNTCOPY_*`.
    pub flags: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad: u16,
}

/// The header of a shared ring page (the first 64 bytes of `struct
/// NAME_sring` in `io/ring.h`); the entries follow it.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedRingHeader {
    /// Written by the front: requests produced.
    pub req_prod: RingIdx,
    /// Written by the back: notify me when `req_prod` passes this.
    pub req_event: RingIdx,
    /// Written by the back: responses produced.
    pub rsp_prod: RingIdx,
    /// Written by the front: notify me when `rsp_prod` passes this.
    pub rsp_event: RingIdx,
    /// The `pvt` union (netif's `smartpoll_active`, ...).
    pub pvt: [u8; 4],
    /// Padding to 64 bytes.
    pub _pad: [u8; 44],
}

/// Byte offset of the first ring entry in a shared ring page.
pub const SRING_HEADER_SIZE: usize = core::mem::size_of::<SharedRingHeader>();

const _: () = assert!(core::mem::size_of::<GrantEntryV1>() == 8);
const _: () = assert!(SRING_HEADER_SIZE == 64);
// Grant entries' `flags` and `domid` are accessed as one little-endian u32
// (`flags | domid << 16`), as Xen does on x86.
const _: () = assert!(cfg!(target_endian = "little"));
