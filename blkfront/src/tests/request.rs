use std::string::ToString;
use std::vec;
use std::vec::Vec;

use super::{disk, pages};
use crate::abi::{op, BlkifRequestSegment, DiskInfo, SlotRequest};
use crate::request::*;

fn io(op: BlockOp) -> BlockIo {
    BlockIo { tag: 1, op }
}

fn read(sector: u64, segments: Vec<Segment>) -> BlockIo {
    io(BlockOp::Read { sector, segments })
}

fn write(sector: u64, segments: Vec<Segment>) -> BlockIo {
    io(BlockOp::Write { sector, segments })
}

#[test]
fn read_only_and_cdrom_disks_refuse_every_write() {
    for info in [DiskInfo::READONLY, DiskInfo::CDROM] {
        let mut d = disk();
        d.info = info;
        for op in [
            BlockOp::Write {
                sector: 0,
                segments: pages(1, 1),
            },
            BlockOp::Flush,
            BlockOp::Barrier,
            BlockOp::Discard {
                sector: 0,
                sectors: 8,
                secure: false,
            },
        ] {
            let name = op.name();
            assert_eq!(
                Plan::new(&io(op), &d),
                Err(IoError::ReadOnly { op: name }),
                "{info:?}"
            );
        }
        assert!(Plan::new(&read(0, pages(1, 1)), &d).is_ok());
    }
    // A removable disk is writable.
    let mut d = disk();
    d.info = DiskInfo::REMOVABLE;
    assert!(Plan::new(&write(0, pages(1, 1)), &d).is_ok());
    let msg = IoError::ReadOnly { op: "write" }.to_string();
    assert!(msg.contains("read-only"), "{msg}");
}

#[test]
fn flush_uses_flush_cache_or_else_barrier() {
    let mut d = disk();
    let p = Plan::new(&io(BlockOp::Flush), &d).unwrap();
    assert_eq!(p.parts()[0].op, op::FLUSH_DISKCACHE);
    assert_eq!(p.parts()[0].nr_segments, 0);
    d.flush_cache = false;
    let p = Plan::new(&io(BlockOp::Flush), &d).unwrap();
    assert_eq!(p.parts()[0].op, op::WRITE_BARRIER);
    let p = Plan::new(&io(BlockOp::Barrier), &d).unwrap();
    assert_eq!(p.parts()[0].op, op::WRITE_BARRIER);
    d.barrier = false;
    assert_eq!(
        Plan::new(&io(BlockOp::Flush), &d),
        Err(IoError::Unsupported { op: "flush" })
    );
    assert_eq!(
        Plan::new(&io(BlockOp::Barrier), &d),
        Err(IoError::Unsupported { op: "barrier" })
    );
}

#[test]
fn discard_checks() {
    let discard = |sector, sectors, secure| {
        io(BlockOp::Discard {
            sector,
            sectors,
            secure,
        })
    };
    let mut d = disk();
    d.sector_size = 4096;
    let p = Plan::new(&discard(8, 16, true), &d).unwrap();
    assert_eq!(p.parts().len(), 1);
    assert_eq!(p.parts()[0].op, op::DISCARD);
    assert_eq!(p.parts()[0].discard_sectors, 16);
    assert!(p.parts()[0].secure);
    assert_eq!(
        Plan::new(&discard(8, 0, false), &d),
        Err(IoError::Empty { op: "discard" })
    );
    assert_eq!(
        Plan::new(&discard(4, 8, false), &d),
        Err(IoError::MisalignedStart {
            sector: 4,
            sector_size: 4096
        })
    );
    assert_eq!(
        Plan::new(&discard(8, 12, false), &d),
        Err(IoError::MisalignedLength {
            sectors: 12,
            sector_size: 4096
        })
    );
    assert!(matches!(
        Plan::new(&discard(d.sectors - 8, 16, false), &d),
        Err(IoError::OutOfRange { .. })
    ));
    assert!(matches!(
        Plan::new(&discard(u64::MAX - 7, 16, false), &d),
        Err(IoError::OutOfRange { .. })
    ));
    assert!(Plan::new(&discard(d.sectors - 8, 8, false), &d).is_ok());

    d.discard.as_mut().unwrap().secure = false;
    assert_eq!(
        Plan::new(&discard(8, 8, true), &d),
        Err(IoError::Unsupported {
            op: "secure discard"
        })
    );
    assert!(Plan::new(&discard(8, 8, false), &d).is_ok());
    d.discard = None;
    assert_eq!(
        Plan::new(&discard(8, 8, false), &d),
        Err(IoError::Unsupported { op: "discard" })
    );
}

#[test]
fn alignment_against_the_logical_sector() {
    let mut d = disk();
    d.sector_size = 4096;
    let seg = |offset, len| Segment {
        gref: 3,
        offset,
        len,
    };
    assert!(Plan::new(&read(8, vec![seg(0, 4096)]), &d).is_ok());
    assert_eq!(
        Plan::new(&read(1, vec![seg(0, 4096)]), &d),
        Err(IoError::MisalignedStart {
            sector: 1,
            sector_size: 4096
        })
    );
    let bad = |d: &crate::features::Negotiated, segments, problem| {
        let e = Plan::new(&read(0, segments), d).unwrap_err();
        match e {
            IoError::BadSegment {
                problem: p, index, ..
            } => {
                assert_eq!(p, problem);
                assert_eq!(index, 1);
            }
            other => panic!("{other:?}"),
        }
    };
    bad(
        &d,
        vec![seg(0, 4096), seg(0, 512)],
        SegmentProblem::LengthNotSectorMultiple,
    );
    bad(&d, vec![seg(0, 4096), seg(0, 0)], SegmentProblem::Empty);

    // With 512-byte sectors, offsets are 512-aligned and stay in the page.
    let d = disk();
    bad(
        &d,
        vec![seg(0, 512), seg(256, 512)],
        SegmentProblem::OffsetNotSectorAligned,
    );
    bad(
        &d,
        vec![seg(0, 512), seg(3584, 1024)],
        SegmentProblem::CrossesPage,
    );
    // offset + len overflows u32.
    bad(
        &d,
        vec![seg(0, 512), seg(u32::MAX - 511, 1024)],
        SegmentProblem::CrossesPage,
    );
    bad(
        &d,
        vec![seg(0, 512), seg(u32::MAX - 1023, 1024)],
        SegmentProblem::CrossesPage,
    );
    let p = Plan::new(&read(3, vec![seg(3584, 512), seg(512, 1536)]), &d).unwrap();
    assert_eq!(p.parts().len(), 1);
    assert_eq!(
        Plan::new(&read(0, vec![]), &d),
        Err(IoError::Empty { op: "read" })
    );
}

#[test]
fn out_of_range_is_refused() {
    let d = disk();
    assert!(Plan::new(&read(d.sectors - 8, pages(1, 1)), &d).is_ok());
    assert_eq!(
        Plan::new(&read(d.sectors - 8, pages(2, 1)), &d),
        Err(IoError::OutOfRange {
            sector: d.sectors - 8,
            sectors: 16,
            disk_sectors: d.sectors
        })
    );
    assert!(matches!(
        Plan::new(&write(u64::MAX - 4, pages(1, 1)), &d),
        Err(IoError::OutOfRange { .. })
    ));
}

#[test]
fn direct_split_in_disk_order() {
    let d = disk();
    let p = Plan::new(&write(16, pages(30, 100)), &d).unwrap();
    let parts: Vec<(u64, usize, bool)> = p
        .parts()
        .iter()
        .map(|p| (p.sector, p.nr_segments, p.indirect()))
        .collect();
    assert_eq!(
        parts,
        vec![(16, 11, false), (16 + 88, 11, false), (16 + 176, 8, false)]
    );
    assert_eq!(p.indirect_pages(), 0);
    assert!(p.parts().iter().all(|p| p.op == op::WRITE));
}

#[test]
fn indirect_split() {
    let mut d = disk();
    d.max_segments = 256;
    let p = Plan::new(&read(0, pages(300, 1)), &d).unwrap();
    let parts: Vec<(u64, usize, bool, usize)> = p
        .parts()
        .iter()
        .map(|p| (p.sector, p.nr_segments, p.indirect(), p.indirect_pages()))
        .collect();
    assert_eq!(parts, vec![(0, 256, true, 1), (2048, 44, true, 1)]);
    assert_eq!(p.indirect_pages(), 2);

    // A small I/O stays direct even when indirect requests are allowed.
    let p = Plan::new(&read(0, pages(11, 1)), &d).unwrap();
    assert!(!p.parts()[0].indirect());
    let p = Plan::new(&read(0, pages(12, 1)), &d).unwrap();
    assert!(p.parts()[0].indirect());

    // 600 segments in one request take two indirect pages.
    d.max_segments = 4096;
    let p = Plan::new(&read(0, pages(600, 1)), &d).unwrap();
    assert_eq!(p.parts().len(), 1);
    assert_eq!(p.parts()[0].indirect_pages(), 2);
}

#[test]
fn indirect_page_contents() {
    let page = IndirectPage {
        gref: 9,
        segments: (0..3)
            .map(|i| BlkifRequestSegment {
                gref: 100 + i,
                first_sect: 1,
                last_sect: 7,
                _pad: [0; 2],
            })
            .collect(),
    };
    let mut bytes = vec![0xAAu8; 4100];
    page.write_to(&mut bytes).unwrap();
    assert_eq!(&bytes[0..4], &100u32.to_le_bytes());
    assert_eq!(bytes[4], 1);
    assert_eq!(bytes[5], 7);
    assert!(
        bytes[24..4096].iter().all(|&b| b == 0),
        "the rest is zeroed"
    );
    assert!(
        bytes[4096..].iter().all(|&b| b == 0xAA),
        "nothing past the page"
    );
    assert_eq!(IndirectPage::read_from(9, &bytes, 3).as_ref(), Some(&page));
    // Unaligned bytes read too (a copy, not a cast).
    assert_eq!(IndirectPage::read_from(9, &bytes[..], 3).unwrap(), page);
    let mut shifted = vec![0u8; 4097];
    shifted[1..].copy_from_slice(&bytes[..4096]);
    assert_eq!(IndirectPage::read_from(9, &shifted[1..], 3).unwrap(), page);
    assert_eq!(IndirectPage::read_from(9, &bytes, 513), None);
    assert_eq!(IndirectPage::read_from(9, &bytes[..16], 3), None);
    let mut small = [0u8; 100];
    assert_eq!(page.write_to(&mut small), Err(PageTooSmall { len: 100 }));
}

#[test]
fn encoded_requests_carry_the_plan() {
    let mut d = disk();
    d.max_segments = 64;
    let mut f = crate::InFlight::new(32, 0xCA00);
    let segments: Vec<Segment> = (0..70)
        .map(|i| Segment {
            gref: 1000 + i,
            offset: 512 * (i % 4),
            len: 512 * (1 + i % 4),
        })
        .collect();
    let reqs = f
        .submit(write(64, segments.clone()), &d, vec![555])
        .unwrap();
    assert_eq!(reqs.len(), 2);
    let SlotRequest::Indirect(r) = reqs[0].request else {
        panic!("{:?}", reqs[0].request)
    };
    assert_eq!(r.operation, op::INDIRECT);
    assert_eq!(r.indirect_op, op::WRITE);
    assert_eq!(r.nr_segments, 64);
    assert_eq!(r.sector_number, 64);
    assert_eq!(r.handle, 0xCA00);
    assert_eq!(r.indirect_grefs, [555, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(reqs[0].indirect_pages.len(), 1);
    assert_eq!(reqs[0].indirect_pages[0].gref, 555);
    let s = reqs[0].indirect_pages[0].segments[3];
    assert_eq!((s.gref, s.first_sect, s.last_sect), (1003, 3, 6));

    let SlotRequest::Rw(r) = reqs[1].request else {
        panic!("{:?}", reqs[1].request)
    };
    assert_eq!(r.operation, op::WRITE);
    assert_eq!(r.nr_segments, 6);
    let before: u64 = segments[..64].iter().map(|s| u64::from(s.len / 512)).sum();
    assert_eq!(r.sector_number, 64 + before);
    assert_eq!(
        (r.seg[0].gref, r.seg[0].first_sect, r.seg[0].last_sect),
        (1064, 0, 0)
    );
    assert!(r.seg[6..]
        .iter()
        .all(|s| *s == BlkifRequestSegment::default()));
    assert_ne!(reqs[0].request.id(), reqs[1].request.id());
}
