//! Requests taken off the ring, checked as Linux 6.1's xen-blkback checks
//! them (`dispatch_rw_block_io`, `xen_blkbk_parse_indirect`,
//! `xen_vbd_translate`, `dispatch_discard_io`, `dispatch_other_io`), as pure
//! functions of a local copy of the slot.
//!
//! Every value here was written by the frontend: the slot is copied out of
//! the ring once ([`grant_tables::BackRing::take_request`]) and an indirect
//! page once (into a local array), and only the copies are read. A request
//! that breaks a rule becomes a [`Reject`]: the response to send (the
//! request's id, the operation the response carries, `BLKIF_RSP_ERROR` or
//! `BLKIF_RSP_EOPNOTSUPP`) and the reason, for the log.
//!
//! The checks, in blkback's order:
//! 1. the operation: read, write, flush, barrier and indirect go on;
//!    discard goes to [`check_discard`]; anything else is answered
//!    `EOPNOTSUPP` with the request's own operation code;
//! 2. an indirect request's inner operation must be read or write;
//! 3. the segment count: 0 only for flush and barrier, at most 11 for a
//!    direct request, at most the backend's `feature-max-indirect-segments`
//!    for an indirect one;
//! 4. every segment: `last_sect < 8` and `first_sect <= last_sect` (for an
//!    indirect request, once its pages are copied: [`indirect_segments`]);
//! 5. the disk ([`Disk::check`]): no write, flush, barrier or discard to a
//!    read-only disk; the sectors inside the disk, without overflow;
//! 6. alignment: the start sector and every segment's length whole logical
//!    sectors.
//!
//! Failures at steps 2 to 6 (and a grant that fails to map, later) answer
//! `BLKIF_RSP_ERROR` with the request's id and the operation the response
//! carries (an indirect request's inner one).

use blkfront::abi::{
    op, status, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
    BLKIF_DISCARD_SECURE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST,
    SECTORS_PER_PAGE, SECTOR_SHIFT, SEGMENTS_PER_INDIRECT_PAGE,
};
use grant_tables::abi::GrantRefNum;
use grant_tables::ring::reinterpret;

/// What a read or write moves through one segment: a granted page and the
/// byte range of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// The page's grant ref.
    pub gref: GrantRefNum,
    /// Byte offset in the page (`first_sect * 512`).
    pub offset: u32,
    /// Byte length (`(last_sect - first_sect + 1) * 512`).
    pub len: u32,
}

/// The kind of a data request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwKind {
    /// Read into the segments.
    Read,
    /// Write the segments.
    Write,
    /// Flush the disk's cache, then write the segments (if any).
    Flush,
    /// Wait for every request in flight, flush, then write the segments
    /// (if any).
    Barrier,
}

impl RwKind {
    /// Whether the disk is written (or its cache flushed): refused on a
    /// read-only disk.
    pub fn writes(self) -> bool {
        !matches!(self, RwKind::Read)
    }
}

/// A data request (read, write, flush or barrier) whose slot passed the
/// checks that need no grant mapped. An indirect one still has its
/// segments to read from its pages ([`Pending::Indirect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rw {
    /// The frontend's id, echoed in the response.
    pub id: u64,
    /// The operation the response carries.
    pub rsp_op: u8,
    /// What to do.
    pub kind: RwKind,
    /// First 512-byte sector.
    pub sector: u64,
    /// The segments, in disk order.
    pub segs: Vec<Seg>,
}

impl Rw {
    /// 512-byte sectors moved.
    pub fn sectors(&self) -> u64 {
        self.segs
            .iter()
            .map(|s| u64::from(s.len >> SECTOR_SHIFT))
            .sum()
    }

    /// Bytes moved.
    pub fn bytes(&self) -> u64 {
        self.segs.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// A discard that passed its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discard {
    /// The frontend's id.
    pub id: u64,
    /// First 512-byte sector.
    pub sector: u64,
    /// 512-byte sectors to discard.
    pub sectors: u64,
}

/// A slot after the first checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// A direct request: segments in the slot, all checked.
    Direct(Rw),
    /// An indirect request: its pages must be mapped and copied, then
    /// [`indirect_segments`] checks them.
    Indirect {
        /// The request so far (no segments yet).
        rw: Rw,
        /// Segments announced.
        nr_segments: usize,
        /// The refs of the `ceil(nr_segments / 512)` indirect pages.
        pages: Vec<GrantRefNum>,
    },
    /// A discard (checked by [`check_discard`]).
    Discard(BlkifRequestDiscard),
}

/// A request refused: the response to send and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The request's id.
    pub id: u64,
    /// The operation the response carries.
    pub rsp_op: u8,
    /// `BLKIF_RSP_ERROR` or `BLKIF_RSP_EOPNOTSUPP`.
    pub status: i16,
    /// Why, for the log and the statistics.
    pub reason: RejectReason,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// An operation this backend does not know (`EOPNOTSUPP`).
    UnknownOperation,
    /// An indirect request whose inner operation is not read or write.
    BadIndirectOperation,
    /// 0 segments for a read or write, more than 11 in a direct request,
    /// or more than the maximum in an indirect one.
    BadSegmentCount,
    /// A segment with `last_sect >= 8` or `last_sect < first_sect`.
    BadSegment,
    /// A write, flush, barrier or discard to a read-only disk.
    ReadOnly,
    /// Sectors outside the disk (or an overflowing end).
    OutOfRange,
    /// A start or length that is not whole logical sectors.
    Misaligned,
    /// A grant (data or indirect page) that failed to map.
    GrantMap,
    /// Flush or barrier on a disk without a write cache to flush, or
    /// discard where it is not offered (`EOPNOTSUPP`).
    Unsupported,
    /// The disk failed the I/O.
    Io,
}

impl RejectReason {
    /// A short description, for the log.
    pub fn describe(self) -> &'static str {
        match self {
            RejectReason::UnknownOperation => "unknown operation",
            RejectReason::BadIndirectOperation => {
                "indirect request whose inner operation is not read or write"
            }
            RejectReason::BadSegmentCount => "bad number of segments",
            RejectReason::BadSegment => "segment with last_sect >= 8 or last_sect < first_sect",
            RejectReason::ReadOnly => "write to a read-only disk",
            RejectReason::OutOfRange => "sectors outside the disk",
            RejectReason::Misaligned => "start or length not a whole logical sector",
            RejectReason::GrantMap => "a grant failed to map",
            RejectReason::Unsupported => "operation not supported by the disk",
            RejectReason::Io => "I/O error on the disk",
        }
    }
}

/// What the checks need to know of the disk and the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size in bytes (a power of two, 512 to 4096).
    pub sector_size: u32,
    /// Read-only (or CD-ROM) disk.
    pub read_only: bool,
    /// `feature-max-indirect-segments` as advertised.
    pub max_indirect_segments: u32,
}

impl Disk {
    /// Steps 5 and 6 for a data request (`xen_vbd_translate`, then the
    /// alignment check).
    pub fn check(&self, rw: &Rw) -> Result<(), Reject> {
        let reject = |reason| Err(error(rw.id, rw.rsp_op, reason));
        if rw.kind.writes() && self.read_only {
            return reject(RejectReason::ReadOnly);
        }
        let nr = rw.sectors();
        if nr != 0 {
            match rw.sector.checked_add(nr) {
                Some(end) if end <= self.sectors => {}
                _ => return reject(RejectReason::OutOfRange),
            }
        }
        let mask = u64::from((self.sector_size >> SECTOR_SHIFT).max(1) - 1);
        for s in &rw.segs {
            if (rw.sector | u64::from(s.len >> SECTOR_SHIFT)) & mask != 0 {
                return reject(RejectReason::Misaligned);
            }
        }
        Ok(())
    }
}

fn error(id: u64, rsp_op: u8, reason: RejectReason) -> Reject {
    Reject {
        id,
        rsp_op,
        status: status::ERROR,
        reason,
    }
}

/// One wire segment, checked (step 4).
fn segment(s: &BlkifRequestSegment) -> Option<Seg> {
    let (first, last) = (u32::from(s.first_sect), u32::from(s.last_sect));
    if last >= SECTORS_PER_PAGE || last < first {
        return None;
    }
    Some(Seg {
        gref: s.gref,
        offset: first << SECTOR_SHIFT,
        len: (last - first + 1) << SECTOR_SHIFT,
    })
}

/// Steps 1 to 4 on a slot copied out of the ring.
pub fn classify(slot: &BlkifRequest, max_indirect_segments: u32) -> Result<Pending, Reject> {
    let (kind, rsp_op) = match slot.operation {
        op::READ => (RwKind::Read, op::READ),
        op::WRITE => (RwKind::Write, op::WRITE),
        op::FLUSH_DISKCACHE => (RwKind::Flush, op::FLUSH_DISKCACHE),
        op::WRITE_BARRIER => (RwKind::Barrier, op::WRITE_BARRIER),
        op::DISCARD => return Ok(Pending::Discard(reinterpret(slot))),
        op::INDIRECT => {
            let ind: BlkifRequestIndirect = reinterpret(slot);
            let kind = match ind.indirect_op {
                op::READ => RwKind::Read,
                op::WRITE => RwKind::Write,
                _ => {
                    return Err(error(
                        ind.id,
                        ind.indirect_op,
                        RejectReason::BadIndirectOperation,
                    ))
                }
            };
            let n = usize::from(ind.nr_segments);
            let max = usize::try_from(max_indirect_segments).unwrap_or(usize::MAX);
            if n == 0
                || n > max
                || n > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE
            {
                return Err(error(
                    ind.id,
                    ind.indirect_op,
                    RejectReason::BadSegmentCount,
                ));
            }
            let pages = n.div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
            let rw = Rw {
                id: ind.id,
                rsp_op: ind.indirect_op,
                kind,
                sector: ind.sector_number,
                segs: Vec::new(),
            };
            return Ok(Pending::Indirect {
                rw,
                nr_segments: n,
                pages: ind.indirect_grefs[..pages].to_vec(),
            });
        }
        other => {
            return Err(Reject {
                id: slot.id,
                rsp_op: other,
                status: status::EOPNOTSUPP,
                reason: RejectReason::UnknownOperation,
            })
        }
    };
    let n = usize::from(slot.nr_segments);
    let flush = matches!(kind, RwKind::Flush | RwKind::Barrier);
    if (n == 0 && !flush) || n > BLKIF_MAX_SEGMENTS_PER_REQUEST {
        return Err(error(slot.id, rsp_op, RejectReason::BadSegmentCount));
    }
    let mut segs = Vec::with_capacity(n);
    for s in &slot.seg[..n] {
        segs.push(segment(s).ok_or_else(|| error(slot.id, rsp_op, RejectReason::BadSegment))?);
    }
    Ok(Pending::Direct(Rw {
        id: slot.id,
        rsp_op,
        kind,
        sector: slot.sector_number,
        segs,
    }))
}

/// Step 4 for an indirect request: reads `nr_segments` segment
/// descriptors from `read_page(i)`, the local copy of indirect page `i`
/// (512 descriptors a page), and checks each.
pub fn indirect_segments(
    rw: &mut Rw,
    nr_segments: usize,
    mut read_page: impl FnMut(usize) -> Option<[BlkifRequestSegment; SEGMENTS_PER_INDIRECT_PAGE]>,
) -> Result<(), Reject> {
    let mut segs = Vec::with_capacity(nr_segments);
    let mut page = None;
    for n in 0..nr_segments {
        let (p, i) = (
            n / SEGMENTS_PER_INDIRECT_PAGE,
            n % SEGMENTS_PER_INDIRECT_PAGE,
        );
        if i == 0 {
            page = read_page(p);
        }
        let wire = page.as_ref().and_then(|pg| pg.get(i)).copied();
        let seg = wire.and_then(|w| segment(&w)).ok_or_else(|| {
            error(
                rw.id,
                rw.rsp_op,
                if wire.is_none() {
                    RejectReason::GrantMap
                } else {
                    RejectReason::BadSegment
                },
            )
        })?;
        segs.push(seg);
    }
    rw.segs = segs;
    Ok(())
}

/// The checks of a discard (`dispatch_discard_io`): the disk must take
/// writes and the range lie inside it. A secure discard is done as a plain
/// one: this backend does not offer `discard-secure`.
pub fn check_discard(d: &BlkifRequestDiscard, disk: &Disk) -> Result<Discard, Reject> {
    let reject = |reason| Err(error(d.id, op::DISCARD, reason));
    if disk.read_only {
        return reject(RejectReason::ReadOnly);
    }
    if d.nr_sectors != 0 {
        match d.sector_number.checked_add(d.nr_sectors) {
            Some(end) if end <= disk.sectors => {}
            _ => return reject(RejectReason::OutOfRange),
        }
    }
    if d.flag & BLKIF_DISCARD_SECURE != 0 {
        log::debug!(
            "blkback: secure discard of request {} done as a plain discard (discard-secure is 0)",
            d.id
        );
    }
    Ok(Discard {
        id: d.id,
        sector: d.sector_number,
        sectors: d.nr_sectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use blkfront::abi::BlkifRequestSegment as WireSeg;
    use zerocopy::FromZeros;

    fn rw(op: u8, sector: u64, segs: &[(u32, u8, u8)]) -> BlkifRequest {
        let mut r = BlkifRequest::new_zeroed();
        r.operation = op;
        r.id = 77;
        r.sector_number = sector;
        r.nr_segments = segs.len() as u8;
        for (i, &(gref, first_sect, last_sect)) in segs.iter().enumerate() {
            r.seg[i] = WireSeg {
                gref,
                first_sect,
                last_sect,
                _pad: [0; 2],
            };
        }
        r
    }

    const DISK: Disk = Disk {
        sectors: 1024,
        sector_size: 512,
        read_only: false,
        max_indirect_segments: 256,
    };

    fn reason(r: Result<Pending, Reject>) -> RejectReason {
        r.expect_err("refused").reason
    }

    #[test]
    fn direct_requests_check_segments() {
        let Ok(Pending::Direct(ok)) = classify(&rw(op::WRITE, 8, &[(5, 0, 7), (6, 2, 3)]), 256)
        else {
            panic!()
        };
        assert_eq!(
            ok.segs,
            [
                Seg {
                    gref: 5,
                    offset: 0,
                    len: 4096
                },
                Seg {
                    gref: 6,
                    offset: 1024,
                    len: 1024
                }
            ]
        );
        assert_eq!(ok.sectors(), 10);
        assert!(DISK.check(&ok).is_ok());
        assert_eq!(
            reason(classify(&rw(op::READ, 0, &[(5, 0, 8)]), 256)),
            RejectReason::BadSegment
        );
        assert_eq!(
            reason(classify(&rw(op::READ, 0, &[(5, 3, 2)]), 256)),
            RejectReason::BadSegment
        );
        assert_eq!(
            reason(classify(&rw(op::READ, 0, &[]), 256)),
            RejectReason::BadSegmentCount
        );
        let mut twelve = rw(op::READ, 0, &[(5, 0, 7)]);
        twelve.nr_segments = 12;
        assert_eq!(
            reason(classify(&twelve, 256)),
            RejectReason::BadSegmentCount
        );
        // Flush and barrier may carry no segment.
        assert!(matches!(
            classify(&rw(op::FLUSH_DISKCACHE, 0, &[]), 256),
            Ok(Pending::Direct(_))
        ));
        assert!(matches!(
            classify(&rw(op::WRITE_BARRIER, 0, &[]), 256),
            Ok(Pending::Direct(_))
        ));
    }

    #[test]
    fn unknown_operations_are_not_supported() {
        for o in [op::RESERVED_1, 7, 200] {
            let r = classify(&rw(o, 0, &[(1, 0, 7)]), 256).unwrap_err();
            assert_eq!((r.status, r.rsp_op, r.id), (status::EOPNOTSUPP, o, 77));
        }
    }

    #[test]
    fn disk_checks_range_read_only_and_alignment() {
        let Ok(Pending::Direct(w)) = classify(&rw(op::WRITE, 1020, &[(5, 0, 7)]), 256) else {
            panic!()
        };
        assert_eq!(DISK.check(&w).unwrap_err().reason, RejectReason::OutOfRange);
        let Ok(Pending::Direct(w)) = classify(&rw(op::WRITE, u64::MAX - 3, &[(5, 0, 7)]), 256)
        else {
            panic!()
        };
        assert_eq!(DISK.check(&w).unwrap_err().reason, RejectReason::OutOfRange);
        let Ok(Pending::Direct(w)) = classify(&rw(op::WRITE, 0, &[(5, 0, 7)]), 256) else {
            panic!()
        };
        let ro = Disk {
            read_only: true,
            ..DISK
        };
        assert_eq!(ro.check(&w).unwrap_err().reason, RejectReason::ReadOnly);
        let Ok(Pending::Direct(f)) = classify(&rw(op::FLUSH_DISKCACHE, 0, &[]), 256) else {
            panic!()
        };
        assert_eq!(ro.check(&f).unwrap_err().reason, RejectReason::ReadOnly);
        let Ok(Pending::Direct(r)) = classify(&rw(op::READ, 0, &[(5, 0, 7)]), 256) else {
            panic!()
        };
        assert!(ro.check(&r).is_ok());
        let big = Disk {
            sector_size: 4096,
            ..DISK
        };
        let Ok(Pending::Direct(r)) = classify(&rw(op::READ, 1, &[(5, 0, 7)]), 256) else {
            panic!()
        };
        assert_eq!(big.check(&r).unwrap_err().reason, RejectReason::Misaligned);
        let Ok(Pending::Direct(r)) = classify(&rw(op::READ, 8, &[(5, 0, 3)]), 256) else {
            panic!()
        };
        assert_eq!(big.check(&r).unwrap_err().reason, RejectReason::Misaligned);
        let Ok(Pending::Direct(r)) = classify(&rw(op::READ, 8, &[(5, 0, 7)]), 256) else {
            panic!()
        };
        assert!(big.check(&r).is_ok());
    }

    fn indirect(inner: u8, n: u16) -> BlkifRequest {
        let mut i = BlkifRequestIndirect::new_zeroed();
        i.operation = op::INDIRECT;
        i.indirect_op = inner;
        i.nr_segments = n;
        i.id = 9;
        i.indirect_grefs = [11, 12, 13, 14, 15, 16, 17, 18];
        BlkifRequest::from_shape(&i)
    }

    #[test]
    fn indirect_requests() {
        let r = classify(&indirect(op::FLUSH_DISKCACHE, 4), 256).unwrap_err();
        assert_eq!(
            (r.reason, r.rsp_op, r.status),
            (
                RejectReason::BadIndirectOperation,
                op::FLUSH_DISKCACHE,
                status::ERROR
            )
        );
        assert_eq!(
            reason(classify(&indirect(op::READ, 0), 256)),
            RejectReason::BadSegmentCount
        );
        assert_eq!(
            reason(classify(&indirect(op::READ, 257), 256)),
            RejectReason::BadSegmentCount
        );
        let Ok(Pending::Indirect {
            mut rw,
            nr_segments,
            pages,
        }) = classify(&indirect(op::WRITE, 513), 1024)
        else {
            panic!()
        };
        assert_eq!((nr_segments, pages), (513, vec![11, 12]));
        assert_eq!(rw.rsp_op, op::WRITE);
        let page = |p: usize| {
            Some(
                [WireSeg {
                    gref: p as u32,
                    first_sect: 0,
                    last_sect: 7,
                    _pad: [0; 2],
                }; 512],
            )
        };
        indirect_segments(&mut rw, nr_segments, page).unwrap();
        assert_eq!(rw.segs.len(), 513);
        assert_eq!(rw.segs[512].gref, 1);
        let bad = |_| {
            Some(
                [WireSeg {
                    gref: 1,
                    first_sect: 4,
                    last_sect: 3,
                    _pad: [0; 2],
                }; 512],
            )
        };
        assert_eq!(
            indirect_segments(&mut rw, 3, bad).unwrap_err().reason,
            RejectReason::BadSegment
        );
        assert_eq!(
            indirect_segments(&mut rw, 3, |_| None).unwrap_err().reason,
            RejectReason::GrantMap
        );
    }

    #[test]
    fn discards() {
        let mut d = BlkifRequestDiscard::new_zeroed();
        d.operation = op::DISCARD;
        d.id = 3;
        d.sector_number = 8;
        d.nr_sectors = 16;
        assert_eq!(
            check_discard(&d, &DISK).unwrap(),
            Discard {
                id: 3,
                sector: 8,
                sectors: 16
            }
        );
        let Ok(Pending::Discard(back)) = classify(&BlkifRequest::from_shape(&d), 256) else {
            panic!()
        };
        assert_eq!(back, d);
        assert_eq!(
            check_discard(
                &d,
                &Disk {
                    read_only: true,
                    ..DISK
                }
            )
            .unwrap_err()
            .reason,
            RejectReason::ReadOnly
        );
        d.nr_sectors = 1017;
        assert_eq!(
            check_discard(&d, &DISK).unwrap_err().reason,
            RejectReason::OutOfRange
        );
    }
}
