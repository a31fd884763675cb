//! The blkif wire format of Xen's `io/blkif.h`, as zerocopy types.
//!
//! Layouts are those of x86_64 (the only ABI this suite speaks, written as
//! `protocol = "x86_64-abi"`); `tests/abi_layout.rs` checks every size,
//! alignment, field offset and constant against Xen's own header compiled
//! by the C compiler.
//!
//! A request slot of the shared ring holds one of several shapes: the
//! read/write request ([`BlkifRequest`], also used for flush and barrier),
//! the indirect request ([`BlkifRequestIndirect`]) and the discard request
//! ([`BlkifRequestDiscard`]). All begin with the operation byte and carry the
//! id at offset 8; the ring's slot type is the largest, [`BlkifRequest`]
//! (112 bytes), and responses are [`BlkifResponse`] (16 bytes).
//!
//! Units: every `sector_number` and every sector count on the wire is in
//! 512-byte sectors, whatever the disk's logical sector size (this is what
//! Linux's xen-blkback implements; the logical sector size only constrains
//! alignment). `first_sect`/`last_sect` of a segment are 512-byte sectors
//! within one 4 KiB page, inclusive.

use core::mem::size_of;

use bitflags::bitflags;
use grant_tables::abi::{GrantRefNum, PAGE_SIZE, SRING_HEADER_SIZE};
use grant_tables::ring::{entry_size, ring_entries};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// The size of a wire sector: every sector number and count is in these units.
pub const SECTOR_SIZE: u32 = 512;
/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;
/// 512-byte sectors in one 4 KiB page: `first_sect`/`last_sect` are below this.
pub const SECTORS_PER_PAGE: u32 = (PAGE_SIZE as u32) >> SECTOR_SHIFT;

/// The virtual device number carried in `handle` (`blkif_vdev_t`).
pub type BlkifVdev = u16;
/// A sector number on the wire (`blkif_sector_t`), in 512-byte units.
pub type BlkifSector = u64;

/// Operation codes (`BLKIF_OP_*`).
pub mod op {
    /// Read into the segments' pages.
    pub const READ: u8 = 0;
    /// Write from the segments' pages.
    pub const WRITE: u8 = 1;
    /// Wait for all in-flight requests, flush the disk's cache, then do the
    /// request (`feature-barrier`).
    pub const WRITE_BARRIER: u8 = 2;
    /// Flush the disk's write cache (`feature-flush-cache`).
    pub const FLUSH_DISKCACHE: u8 = 3;
    /// Reserved (once a vendor extension); never sent.
    pub const RESERVED_1: u8 = 4;
    /// Discard a sector range (`feature-discard`), a [`BlkifRequestDiscard`](super::BlkifRequestDiscard).
    pub const DISCARD: u8 = 5;
    /// A read or write whose segments live in indirect pages
    /// (`feature-max-indirect-segments`), a [`BlkifRequestIndirect`](super::BlkifRequestIndirect).
    pub const INDIRECT: u8 = 6;

    /// The C name of an operation code, for messages.
    pub fn name(op: u8) -> &'static str {
        match op {
            READ => "read",
            WRITE => "write",
            WRITE_BARRIER => "write-barrier",
            FLUSH_DISKCACHE => "flush-diskcache",
            RESERVED_1 => "reserved-1",
            DISCARD => "discard",
            INDIRECT => "indirect",
            _ => "unknown",
        }
    }
}

/// Response status codes (`BLKIF_RSP_*`).
pub mod status {
    /// The request succeeded.
    pub const OKAY: i16 = 0;
    /// The request failed (an I/O error, or a request the backend refused).
    pub const ERROR: i16 = -1;
    /// The backend does not support the operation.
    pub const EOPNOTSUPP: i16 = -2;
}

/// Segments a direct request carries (`BLKIF_MAX_SEGMENTS_PER_REQUEST`).
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Indirect pages one indirect request can name (`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`).
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segment descriptors in one indirect page (512).
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / size_of::<BlkifRequestSegment>();
/// The most segments one indirect request can describe on the wire (4096).
pub const MAX_INDIRECT_SEGMENTS_WIRE: usize =
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE;
/// `flag` of a discard request asking for a secure discard (`BLKIF_DISCARD_SECURE`).
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// `info` bit: the disk is a CD-ROM (`VDISK_CDROM`).
pub const VDISK_CDROM: u32 = 0x1;
/// `info` bit: the medium is removable (`VDISK_REMOVABLE`).
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `info` bit: the disk is read-only (`VDISK_READONLY`).
pub const VDISK_READONLY: u32 = 0x4;

bitflags! {
    /// The backend's `info` key: attributes of the disk.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DiskInfo: u32 {
        /// A CD-ROM: the frontend treats it as read-only.
        const CDROM = VDISK_CDROM;
        /// Removable medium.
        const REMOVABLE = VDISK_REMOVABLE;
        /// Read-only: writes, flushes and discards are refused.
        const READONLY = VDISK_READONLY;
    }
}

impl DiskInfo {
    /// Whether the disk refuses writes (read-only or CD-ROM).
    pub fn refuses_writes(self) -> bool {
        self.intersects(DiskInfo::READONLY | DiskInfo::CDROM)
    }
}

/// One segment: a granted page and the 512-byte sectors of it to transfer
/// (`struct blkif_request_segment`). Also the entry of an indirect page.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct BlkifRequestSegment {
    /// Grant reference of the data page.
    pub gref: GrantRefNum,
    /// First 512-byte sector of the page to transfer (inclusive).
    pub first_sect: u8,
    /// Last 512-byte sector of the page to transfer (inclusive), below 8.
    pub last_sect: u8,
    /// C padding.
    pub _pad: [u8; 2],
}

/// A read, write, flush or barrier request, and the ring's slot type
/// (`struct blkif_request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlkifRequest {
    /// `op::*`.
    pub operation: u8,
    /// Segments used in `seg`, at most 11 (0 for a flush or barrier without data).
    pub nr_segments: u8,
    /// The virtual device (`virtual-device` of the frontend's directory).
    pub handle: BlkifVdev,
    /// C padding.
    pub _pad0: [u8; 4],
    /// The frontend's request id, echoed in the response.
    pub id: u64,
    /// First 512-byte sector on the disk.
    pub sector_number: BlkifSector,
    /// The data segments, in disk order.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// A discard request (`struct blkif_request_discard`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlkifRequestDiscard {
    /// [`op::DISCARD`].
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or 0.
    pub flag: u8,
    /// The virtual device.
    pub handle: BlkifVdev,
    /// C padding.
    pub _pad0: [u8; 4],
    /// The frontend's request id, echoed in the response.
    pub id: u64,
    /// First 512-byte sector to discard.
    pub sector_number: BlkifSector,
    /// Number of 512-byte sectors to discard.
    pub nr_sectors: u64,
}

/// An indirect read or write: its segments are in indirect pages
/// (`struct blkif_request_indirect`, x86_64 layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlkifRequestIndirect {
    /// [`op::INDIRECT`].
    pub operation: u8,
    /// [`op::READ`] or [`op::WRITE`] (the response carries this one).
    pub indirect_op: u8,
    /// Segments described in the indirect pages.
    pub nr_segments: u16,
    /// C padding.
    pub _pad0: [u8; 4],
    /// The frontend's request id, echoed in the response.
    pub id: u64,
    /// First 512-byte sector on the disk.
    pub sector_number: BlkifSector,
    /// The virtual device.
    pub handle: BlkifVdev,
    /// C padding.
    pub _pad1: [u8; 2],
    /// Grant references of the indirect pages, `ceil(nr_segments / 512)` used.
    pub indirect_grefs: [GrantRefNum; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// C tail padding.
    pub _pad2: [u8; 4],
}

/// A response (`struct blkif_response`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlkifResponse {
    /// The id of the request it answers.
    pub id: u64,
    /// The request's operation (for an indirect request, its `indirect_op`).
    pub operation: u8,
    /// C padding.
    pub _pad0: u8,
    /// `status::*`.
    pub status: i16,
    /// C tail padding.
    pub _pad1: [u8; 4],
}

/// Size of a ring slot: the C union of request and response (112 bytes).
pub const RING_SLOT_SIZE: usize = entry_size::<BlkifRequest, BlkifResponse>();

const _: () = {
    assert!(size_of::<BlkifRequestSegment>() == 8);
    assert!(size_of::<BlkifRequest>() == 112);
    assert!(size_of::<BlkifRequestDiscard>() == 32);
    assert!(size_of::<BlkifRequestIndirect>() == 64);
    assert!(size_of::<BlkifResponse>() == 16);
    assert!(RING_SLOT_SIZE == 112);
    assert!(SEGMENTS_PER_INDIRECT_PAGE == 512);
    assert!(SRING_HEADER_SIZE == 64);
};

/// Request entries of a blkif ring of `2^order` pages (`__CONST_RING_SIZE`):
/// 32 for one page, 512 for sixteen. 0 for an order too large to address.
pub const fn ring_size(order: u32) -> u32 {
    if order > 16 {
        return 0;
    }
    ring_entries(PAGE_SIZE << order, RING_SLOT_SIZE)
}

/// A request shape that fits in a ring slot.
pub trait RequestShape: IntoBytes + Immutable + sealed::Sealed {}
impl RequestShape for BlkifRequest {}
impl RequestShape for BlkifRequestIndirect {}
impl RequestShape for BlkifRequestDiscard {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::BlkifRequest {}
    impl Sealed for super::BlkifRequestIndirect {}
    impl Sealed for super::BlkifRequestDiscard {}
}

impl BlkifRequest {
    /// The ring slot holding `shape`: its bytes, then zeroes up to the slot's size.
    pub fn from_shape<S: RequestShape>(shape: &S) -> BlkifRequest {
        let mut slot = BlkifRequest::new_zeroed();
        let src = shape.as_bytes();
        // Every shape is at most a slot (checked above), so the zip copies
        // all of `src`.
        for (d, s) in slot.as_mut_bytes().iter_mut().zip(src) {
            *d = *s;
        }
        slot
    }

    /// The slot's bytes read as an indirect request (a copy).
    pub fn as_indirect(&self) -> BlkifRequestIndirect {
        let (r, _) = BlkifRequestIndirect::read_from_prefix(self.as_bytes())
            .unwrap_or((BlkifRequestIndirect::new_zeroed(), &[]));
        r
    }

    /// The slot's bytes read as a discard request (a copy).
    pub fn as_discard(&self) -> BlkifRequestDiscard {
        let (r, _) = BlkifRequestDiscard::read_from_prefix(self.as_bytes())
            .unwrap_or((BlkifRequestDiscard::new_zeroed(), &[]));
        r
    }
}

/// The slot shapes a request can take, as built by [`crate::request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotRequest {
    /// Read, write, flush or barrier, segments in the slot.
    Rw(BlkifRequest),
    /// Read or write with segments in indirect pages.
    Indirect(BlkifRequestIndirect),
    /// Discard.
    Discard(BlkifRequestDiscard),
}

impl SlotRequest {
    /// The request as the ring's slot type, zero-padded.
    pub fn to_slot(&self) -> BlkifRequest {
        match self {
            SlotRequest::Rw(r) => *r,
            SlotRequest::Indirect(r) => BlkifRequest::from_shape(r),
            SlotRequest::Discard(r) => BlkifRequest::from_shape(r),
        }
    }

    /// The id the request carries.
    pub fn id(&self) -> u64 {
        match self {
            SlotRequest::Rw(r) => r.id,
            SlotRequest::Indirect(r) => r.id,
            SlotRequest::Discard(r) => r.id,
        }
    }

    /// The operation a matching response carries (an indirect request's
    /// inner operation).
    pub fn response_operation(&self) -> u8 {
        match self {
            SlotRequest::Rw(r) => r.operation,
            SlotRequest::Indirect(r) => r.indirect_op,
            SlotRequest::Discard(r) => r.operation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_follow_the_c_macro_arithmetic() {
        // (4096 * 2^order - 64) / 112, rounded down to a power of two.
        assert_eq!(ring_size(0), 32);
        assert_eq!(ring_size(1), 64);
        assert_eq!(ring_size(2), 128);
        assert_eq!(ring_size(3), 256);
        assert_eq!(ring_size(4), 512);
        assert_eq!(ring_size(17), 0);
    }

    #[test]
    fn shapes_round_trip_through_a_slot() {
        let mut ind = BlkifRequestIndirect::new_zeroed();
        ind.operation = op::INDIRECT;
        ind.indirect_op = op::WRITE;
        ind.nr_segments = 300;
        ind.id = 0x1122_3344_5566_7788;
        ind.sector_number = 99;
        ind.handle = 51712;
        ind.indirect_grefs = [1, 2, 3, 4, 5, 6, 7, 8];
        let slot = SlotRequest::Indirect(ind).to_slot();
        assert_eq!(slot.operation, op::INDIRECT);
        assert_eq!(slot.id, ind.id, "the id sits at offset 8 in every shape");
        assert_eq!(slot.as_indirect(), ind);
        assert!(slot.as_bytes()[64..].iter().all(|&b| b == 0));

        let mut d = BlkifRequestDiscard::new_zeroed();
        d.operation = op::DISCARD;
        d.flag = BLKIF_DISCARD_SECURE;
        d.id = 7;
        d.sector_number = 8;
        d.nr_sectors = 16;
        let slot = SlotRequest::Discard(d).to_slot();
        assert_eq!(slot.as_discard(), d);
        assert_eq!(slot.id, 7);
        assert!(slot.as_bytes()[32..].iter().all(|&b| b == 0));
    }

    #[test]
    fn disk_info_write_refusal() {
        assert!(!DiskInfo::empty().refuses_writes());
        assert!(!DiskInfo::REMOVABLE.refuses_writes());
        assert!(DiskInfo::READONLY.refuses_writes());
        assert!(DiskInfo::CDROM.refuses_writes());
        assert_eq!(DiskInfo::from_bits_retain(0x80).bits(), 0x80);
    }

    #[test]
    fn operation_names() {
        assert_eq!(op::name(op::FLUSH_DISKCACHE), "flush-diskcache");
        assert_eq!(op::name(200), "unknown");
    }
}
