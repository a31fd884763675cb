//! Application I/O, checked and split into ring requests.
//!
//! A [`BlockIo`] is what the application asks for: a read or write of a run
//! of 512-byte sectors into or from buffer segments (each a granted page, a
//! byte offset in it and a byte length), a flush, a barrier, or a discard.
//! [`Plan::new`] checks it against the connection ([`Negotiated`]) before
//! anything reaches the ring:
//! - a write, flush, barrier or discard to a read-only or CD-ROM disk is
//!   refused ([`IoError::ReadOnly`]);
//! - an operation the backend does not offer is refused ([`IoError::Unsupported`]);
//! - the start and every length must be whole logical sectors
//!   (`sector-size`), as blkback checks; segment offsets must be whole
//!   512-byte sectors and a segment must stay inside its 4 KiB page (the wire
//!   carries `first_sect..=last_sect` in 512-byte units within the page);
//! - the I/O must lie inside the disk.
//!
//! A read or write is then split, in disk order, into requests of at most
//! the connection's maximum segments: a direct request (segments in the
//! slot) for up to 11, an indirect request (segments in indirect pages, 512
//! a page, whose grant refs the caller supplies) beyond. Each segment lands
//! in exactly one request; a request's sector is where the previous one
//! ended. Flush, barrier and discard are one request each.
//!
//! [`crate::inflight::InFlight::submit`] does the encoding, with ids from its slab.

use alloc::vec::Vec;
use core::fmt;

use grant_tables::abi::{GrantRefNum, PAGE_SIZE};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::abi::{
    op, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment, BlkifVdev,
    SlotRequest, BLKIF_DISCARD_SECURE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, SECTOR_SHIFT, SECTOR_SIZE, SEGMENTS_PER_INDIRECT_PAGE,
};
use crate::features::Negotiated;

/// A buffer segment: part of one granted 4 KiB page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Grant ref of the page (granted to the backend: writable for reads,
    /// and for every page under persistent grants).
    pub gref: GrantRefNum,
    /// Byte offset in the page: a multiple of 512.
    pub offset: u32,
    /// Byte length: a non-zero multiple of the logical sector size, with
    /// `offset + len <= 4096`.
    pub len: u32,
}

impl Segment {
    /// The segment as it goes on the wire. Only for checked segments.
    fn to_wire(self) -> BlkifRequestSegment {
        let first = self.offset >> SECTOR_SHIFT;
        let last = ((self.offset + self.len) >> SECTOR_SHIFT).saturating_sub(1);
        BlkifRequestSegment {
            gref: self.gref,
            // Both are below 8 for a checked segment.
            first_sect: first as u8,
            last_sect: last as u8,
            _pad: [0; 2],
        }
    }
}

/// What the application asks of the disk. Sectors are 512-byte sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockOp {
    /// Read from `sector` on into the segments, in order.
    Read {
        /// First 512-byte sector.
        sector: u64,
        /// Buffers, filled in order.
        segments: Vec<Segment>,
    },
    /// Write the segments, in order, from `sector` on.
    Write {
        /// First 512-byte sector.
        sector: u64,
        /// Buffers, written in order.
        segments: Vec<Segment>,
    },
    /// Make completed writes durable (flush-cache; barrier when only that
    /// is offered, as a barrier also flushes).
    Flush,
    /// Wait for every request in flight, then flush (write-barrier).
    Barrier,
    /// Discard `sectors` sectors from `sector` on.
    Discard {
        /// First 512-byte sector.
        sector: u64,
        /// Number of 512-byte sectors.
        sectors: u64,
        /// A secure discard (only where the backend offers `discard-secure`).
        secure: bool,
    },
}

impl BlockOp {
    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            BlockOp::Read { .. } => "read",
            BlockOp::Write { .. } => "write",
            BlockOp::Flush => "flush",
            BlockOp::Barrier => "barrier",
            BlockOp::Discard { secure: false, .. } => "discard",
            BlockOp::Discard { secure: true, .. } => "secure discard",
        }
    }

    /// The data segments (empty for flush, barrier and discard).
    pub fn segments(&self) -> &[Segment] {
        match self {
            BlockOp::Read { segments, .. } | BlockOp::Write { segments, .. } => segments,
            _ => &[],
        }
    }
}

/// One application I/O, with a tag of the application's choosing that
/// comes back with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockIo {
    /// The application's tag.
    pub tag: u64,
    /// What to do.
    pub op: BlockOp,
}

/// What is wrong with one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentProblem {
    /// Zero bytes.
    Empty,
    /// The offset is not a multiple of 512.
    OffsetNotSectorAligned,
    /// The length is not a multiple of the logical sector size.
    LengthNotSectorMultiple,
    /// `offset + len` is past the end of the 4 KiB page.
    CrossesPage,
}

/// Why an I/O is refused before it reaches the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The disk is read-only or a CD-ROM.
    ReadOnly {
        /// The refused operation.
        op: &'static str,
    },
    /// The backend does not offer the operation (or stopped offering it).
    Unsupported {
        /// The refused operation.
        op: &'static str,
    },
    /// A read or write without segments, or a discard of 0 sectors.
    Empty {
        /// The operation.
        op: &'static str,
    },
    /// The start is not a whole logical sector.
    MisalignedStart {
        /// The start, in 512-byte sectors.
        sector: u64,
        /// The logical sector size in bytes.
        sector_size: u32,
    },
    /// A discard's length is not a whole number of logical sectors.
    MisalignedLength {
        /// The length, in 512-byte sectors.
        sectors: u64,
        /// The logical sector size in bytes.
        sector_size: u32,
    },
    /// A segment breaks the segment rules.
    BadSegment {
        /// Its index in the I/O.
        index: usize,
        /// Its byte offset.
        offset: u32,
        /// Its byte length.
        len: u32,
        /// What is wrong.
        problem: SegmentProblem,
        /// The logical sector size in bytes.
        sector_size: u32,
    },
    /// The I/O reaches past the end of the disk (or its end overflows).
    OutOfRange {
        /// Start, in 512-byte sectors.
        sector: u64,
        /// Length, in 512-byte sectors.
        sectors: u64,
        /// Size of the disk, in 512-byte sectors.
        disk_sectors: u64,
    },
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::ReadOnly { op } => write!(
                f,
                "blkfront: {op} refused: the disk is read-only (the backend's info marks it \
                 read-only or a CD-ROM); attach it writable to write to it"
            ),
            IoError::Unsupported { op } => write!(
                f,
                "blkfront: {op} refused: the backend does not offer it (or answered that it is \
                 not supported); check the disk's features before asking"
            ),
            IoError::Empty { op } => {
                write!(f, "blkfront: empty {op} refused: give at least one sector")
            }
            IoError::MisalignedStart {
                sector,
                sector_size,
            } => write!(
                f,
                "blkfront: I/O at 512-byte sector {sector} refused: the disk's logical sector is \
                 {sector_size} bytes, so the start must be a multiple of {}",
                sector_size >> SECTOR_SHIFT
            ),
            IoError::MisalignedLength {
                sectors,
                sector_size,
            } => write!(
                f,
                "blkfront: I/O of {sectors} 512-byte sectors refused: the length must be a \
                 multiple of the logical sector ({sector_size} bytes)"
            ),
            IoError::BadSegment {
                index,
                offset,
                len,
                problem,
                sector_size,
            } => {
                write!(
                    f,
                    "blkfront: segment {index} (offset {offset}, {len} bytes) refused: "
                )?;
                match problem {
                    SegmentProblem::Empty => write!(f, "it is empty"),
                    SegmentProblem::OffsetNotSectorAligned => {
                        write!(f, "its offset must be a multiple of 512")
                    }
                    SegmentProblem::LengthNotSectorMultiple => write!(
                        f,
                        "its length must be a multiple of the logical sector ({sector_size} bytes)"
                    ),
                    SegmentProblem::CrossesPage => {
                        write!(f, "it must end inside its 4096-byte page")
                    }
                }
            }
            IoError::OutOfRange {
                sector,
                sectors,
                disk_sectors,
            } => write!(
                f,
                "blkfront: I/O of {sectors} sectors at sector {sector} refused: the disk has \
                 {disk_sectors} 512-byte sectors"
            ),
        }
    }
}

impl core::error::Error for IoError {}

/// One ring request of a [`Plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// Wire operation: `op::READ`, `op::WRITE`, `op::FLUSH_DISKCACHE`,
    /// `op::WRITE_BARRIER` or `op::DISCARD` (an indirect request carries
    /// READ or WRITE inside `op::INDIRECT`).
    pub op: u8,
    /// First 512-byte sector.
    pub sector: u64,
    /// Segments it carries (0 for flush, barrier and discard).
    pub nr_segments: usize,
    /// Sectors a discard covers (0 otherwise).
    pub discard_sectors: u64,
    /// A secure discard.
    pub secure: bool,
}

impl Part {
    /// Whether it goes as an indirect request.
    pub fn indirect(&self) -> bool {
        self.nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST
    }

    /// Indirect pages it needs.
    pub fn indirect_pages(&self) -> usize {
        if self.indirect() {
            self.nr_segments.div_ceil(SEGMENTS_PER_INDIRECT_PAGE)
        } else {
            0
        }
    }

    /// The operation its response must carry.
    pub fn response_op(&self) -> u8 {
        self.op
    }
}

/// A checked I/O, split into ring requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    parts: Vec<Part>,
    max_segments: usize,
    indirect_pages: usize,
}

impl Plan {
    /// Checks `io` against the connection and splits it.
    pub fn new(io: &BlockIo, dev: &Negotiated) -> Result<Plan, IoError> {
        let name = io.op.name();
        let lbs = dev.sector_size.max(SECTOR_SIZE);
        let per_logical = u64::from(lbs >> SECTOR_SHIFT);
        let max_segments = (dev.max_segments as usize).clamp(
            BLKIF_MAX_SEGMENTS_PER_REQUEST,
            BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE,
        );
        let single = |op, sector, discard_sectors, secure| Plan {
            parts: alloc::vec![Part {
                op,
                sector,
                nr_segments: 0,
                discard_sectors,
                secure,
            }],
            max_segments,
            indirect_pages: 0,
        };
        let in_range = |sector: u64, sectors: u64| match sector.checked_add(sectors) {
            Some(end) if end <= dev.sectors => Ok(()),
            _ => Err(IoError::OutOfRange {
                sector,
                sectors,
                disk_sectors: dev.sectors,
            }),
        };
        let aligned_start = |sector: u64| {
            if sector % per_logical != 0 {
                Err(IoError::MisalignedStart {
                    sector,
                    sector_size: lbs,
                })
            } else {
                Ok(())
            }
        };

        let (write, sector, segments) = match &io.op {
            BlockOp::Read { sector, segments } => (false, *sector, segments),
            BlockOp::Write { sector, segments } => (true, *sector, segments),
            BlockOp::Flush => {
                if dev.read_only() {
                    return Err(IoError::ReadOnly { op: name });
                }
                let op = if dev.flush_cache {
                    op::FLUSH_DISKCACHE
                } else if dev.barrier {
                    op::WRITE_BARRIER
                } else {
                    return Err(IoError::Unsupported { op: name });
                };
                return Ok(single(op, 0, 0, false));
            }
            BlockOp::Barrier => {
                if dev.read_only() {
                    return Err(IoError::ReadOnly { op: name });
                }
                if !dev.barrier {
                    return Err(IoError::Unsupported { op: name });
                }
                return Ok(single(op::WRITE_BARRIER, 0, 0, false));
            }
            BlockOp::Discard {
                sector,
                sectors,
                secure,
            } => {
                if dev.read_only() {
                    return Err(IoError::ReadOnly { op: name });
                }
                match dev.discard {
                    Some(d) if d.secure || !secure => {}
                    _ => return Err(IoError::Unsupported { op: name }),
                }
                if *sectors == 0 {
                    return Err(IoError::Empty { op: name });
                }
                aligned_start(*sector)?;
                if sectors % per_logical != 0 {
                    return Err(IoError::MisalignedLength {
                        sectors: *sectors,
                        sector_size: lbs,
                    });
                }
                in_range(*sector, *sectors)?;
                return Ok(single(op::DISCARD, *sector, *sectors, *secure));
            }
        };

        if write && dev.read_only() {
            return Err(IoError::ReadOnly { op: name });
        }
        if segments.is_empty() {
            return Err(IoError::Empty { op: name });
        }
        aligned_start(sector)?;
        let mut total: u64 = 0;
        for (index, s) in segments.iter().enumerate() {
            let bad = |problem| IoError::BadSegment {
                index,
                offset: s.offset,
                len: s.len,
                problem,
                sector_size: lbs,
            };
            if s.len == 0 {
                return Err(bad(SegmentProblem::Empty));
            }
            if s.offset % SECTOR_SIZE != 0 {
                return Err(bad(SegmentProblem::OffsetNotSectorAligned));
            }
            if s.len % lbs != 0 {
                return Err(bad(SegmentProblem::LengthNotSectorMultiple));
            }
            match s.offset.checked_add(s.len) {
                Some(end) if end as usize <= PAGE_SIZE => {}
                _ => return Err(bad(SegmentProblem::CrossesPage)),
            }
            // At most 8 sectors a segment: no overflow before 2^61 segments.
            total = total.saturating_add(u64::from(s.len >> SECTOR_SHIFT));
        }
        in_range(sector, total)?;

        let data_op = if write { op::WRITE } else { op::READ };
        let mut parts = Vec::with_capacity(segments.len().div_ceil(max_segments));
        let mut at = sector;
        let mut indirect_pages = 0;
        for chunk in segments.chunks(max_segments) {
            let part = Part {
                op: data_op,
                sector: at,
                nr_segments: chunk.len(),
                discard_sectors: 0,
                secure: false,
            };
            indirect_pages += part.indirect_pages();
            parts.push(part);
            // Inside the disk (checked above), so no overflow.
            at += chunk
                .iter()
                .map(|s| u64::from(s.len >> SECTOR_SHIFT))
                .sum::<u64>();
        }
        Ok(Plan {
            parts,
            max_segments,
            indirect_pages,
        })
    }

    /// The ring requests, in disk order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Indirect pages all parts need together.
    pub fn indirect_pages(&self) -> usize {
        self.indirect_pages
    }

    /// Encodes every part, taking ids from `ids` and indirect pages from
    /// `grefs` (exactly [`Plan::indirect_pages`] of them). `segments` are
    /// the I/O's segments, as given to [`Plan::new`].
    pub(crate) fn encode(
        &self,
        segments: &[Segment],
        handle: BlkifVdev,
        ids: &[u64],
        grefs: &[GrantRefNum],
    ) -> Vec<RingRequest> {
        let mut out = Vec::with_capacity(self.parts.len());
        let mut chunks = segments.chunks(self.max_segments);
        let mut grefs = grefs.iter().copied();
        for (part, &id) in self.parts.iter().zip(ids) {
            let chunk = if part.nr_segments > 0 {
                chunks.next().unwrap_or(&[])
            } else {
                &[]
            };
            out.push(encode_part(part, chunk, handle, id, &mut grefs));
        }
        out
    }
}

fn encode_part(
    part: &Part,
    chunk: &[Segment],
    handle: BlkifVdev,
    id: u64,
    grefs: &mut impl Iterator<Item = GrantRefNum>,
) -> RingRequest {
    if part.op == op::DISCARD {
        let mut d = BlkifRequestDiscard::new_zeroed();
        d.operation = op::DISCARD;
        d.flag = if part.secure { BLKIF_DISCARD_SECURE } else { 0 };
        d.handle = handle;
        d.id = id;
        d.sector_number = part.sector;
        d.nr_sectors = part.discard_sectors;
        return RingRequest {
            request: SlotRequest::Discard(d),
            indirect_pages: Vec::new(),
        };
    }
    if part.indirect() {
        let mut r = BlkifRequestIndirect::new_zeroed();
        r.operation = op::INDIRECT;
        r.indirect_op = part.op;
        // At most 4096 segments (the clamp in Plan::new).
        r.nr_segments = chunk.len() as u16;
        r.id = id;
        r.sector_number = part.sector;
        r.handle = handle;
        let mut pages = Vec::with_capacity(part.indirect_pages());
        for (slot, segs) in r
            .indirect_grefs
            .iter_mut()
            .zip(chunk.chunks(SEGMENTS_PER_INDIRECT_PAGE))
        {
            let gref = grefs.next().unwrap_or(0);
            *slot = gref;
            pages.push(IndirectPage {
                gref,
                segments: segs.iter().map(|s| s.to_wire()).collect(),
            });
        }
        return RingRequest {
            request: SlotRequest::Indirect(r),
            indirect_pages: pages,
        };
    }
    let mut r = BlkifRequest::new_zeroed();
    r.operation = part.op;
    // At most 11 segments here.
    r.nr_segments = chunk.len() as u8;
    r.handle = handle;
    r.id = id;
    r.sector_number = part.sector;
    for (w, s) in r.seg.iter_mut().zip(chunk) {
        *w = s.to_wire();
    }
    RingRequest {
        request: SlotRequest::Rw(r),
        indirect_pages: Vec::new(),
    }
}

/// An indirect page's contents: the segment descriptors to write into the
/// granted page before the request goes on the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndirectPage {
    /// The page's grant ref (also in the request's `indirect_grefs`).
    pub gref: GrantRefNum,
    /// Up to 512 descriptors.
    pub segments: Vec<BlkifRequestSegment>,
}

/// `write_to` was given less than a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTooSmall {
    /// Bytes given.
    pub len: usize,
}

impl fmt::Display for PageTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "blkfront: an indirect page needs {PAGE_SIZE} bytes, {} given",
            self.len
        )
    }
}

impl core::error::Error for PageTooSmall {}

impl IndirectPage {
    /// Writes the descriptors at the start of `page` and zeroes the rest of
    /// its first 4096 bytes (nothing but the descriptors is shared).
    pub fn write_to(&self, page: &mut [u8]) -> Result<(), PageTooSmall> {
        let len = page.len();
        let page = page.get_mut(..PAGE_SIZE).ok_or(PageTooSmall { len })?;
        let bytes = self
            .segments
            .as_bytes()
            .iter()
            .chain(core::iter::repeat(&0));
        for (d, s) in page.iter_mut().zip(bytes) {
            *d = *s;
        }
        Ok(())
    }

    /// Reads `count` descriptors (at most 512) from a page's bytes, as a
    /// backend does. `None` if the page is too short.
    pub fn read_from(gref: GrantRefNum, page: &[u8], count: usize) -> Option<IndirectPage> {
        if count > SEGMENTS_PER_INDIRECT_PAGE {
            return None;
        }
        let size = core::mem::size_of::<BlkifRequestSegment>();
        let bytes = page.get(..count * size)?;
        let segments = bytes
            .chunks_exact(size)
            .filter_map(|c| BlkifRequestSegment::read_from_bytes(c).ok())
            .collect();
        Some(IndirectPage { gref, segments })
    }
}

/// One request for the ring: the slot, and for an indirect request the
/// pages to fill first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingRequest {
    /// The slot, in its shape ([`SlotRequest::to_slot`] gives the ring's type).
    pub request: SlotRequest,
    /// The indirect pages to write (empty for a direct request).
    pub indirect_pages: Vec<IndirectPage>,
}
