//! Property tests of request splitting and re-issue, through the public API:
//! every byte range of an I/O lands in exactly one ring request, in order,
//! at the right sector, for any segments, sector size and maximum; and
//! after a disconnect the same holds for the re-split I/O.

use blkfront::abi::{op, status, BlkifResponse, DiskInfo, SlotRequest, SECTOR_SIZE};
use blkfront::{BlockIo, BlockOp, InFlight, IoStatus, Negotiated, RingRequest, Segment};
use proptest::prelude::*;

fn disk(sector_size: u32, max_segments: u32) -> Negotiated {
    Negotiated {
        sectors: 1 << 40,
        sector_size,
        physical_sector_size: sector_size,
        info: DiskInfo::empty(),
        flush_cache: true,
        barrier: false,
        discard: None,
        persistent: false,
        max_segments,
        queues: 1,
        ring_page_order: 4,
    }
}

/// A segment valid for `sector_size`: a whole number of logical sectors at a
/// 512-aligned offset inside the page.
fn segment(sector_size: u32) -> impl Strategy<Value = Segment> {
    let per_page = 4096 / sector_size;
    (1..=per_page, any::<u32>(), any::<u32>()).prop_map(move |(n, off, gref)| {
        let len = n * sector_size;
        let room = (4096 - len) / SECTOR_SIZE;
        Segment {
            gref,
            offset: (off % (room + 1)) * SECTOR_SIZE,
            len,
        }
    })
}

fn case() -> impl Strategy<Value = (u32, u32, u64, bool, Vec<Segment>)> {
    (0u32..4, 11u32..600, any::<u32>(), any::<bool>()).prop_flat_map(|(shift, max, start, w)| {
        let sector_size = 512 << shift;
        let per = u64::from(sector_size / 512);
        (
            Just(sector_size),
            Just(max),
            Just(u64::from(start) * per),
            Just(w),
            prop::collection::vec(segment(sector_size), 1..1500),
        )
    })
}

/// The wire segments of a request, in order, as (gref, first, last), and
/// its sector and operation.
fn wire(r: &RingRequest) -> (u64, u8, Vec<(u32, u8, u8)>) {
    match r.request {
        SlotRequest::Rw(w) => (
            w.sector_number,
            w.operation,
            w.seg[..w.nr_segments as usize]
                .iter()
                .map(|s| (s.gref, s.first_sect, s.last_sect))
                .collect(),
        ),
        SlotRequest::Indirect(i) => {
            let pages: Vec<u32> = r.indirect_pages.iter().map(|p| p.gref).collect();
            assert_eq!(
                &i.indirect_grefs[..pages.len()],
                &pages[..],
                "the slot names the pages it comes with"
            );
            assert!(i.indirect_grefs[pages.len()..].iter().all(|&g| g == 0));
            let segs: Vec<(u32, u8, u8)> = r
                .indirect_pages
                .iter()
                .flat_map(|p| {
                    p.segments
                        .iter()
                        .map(|s| (s.gref, s.first_sect, s.last_sect))
                })
                .collect();
            assert_eq!(segs.len(), usize::from(i.nr_segments));
            assert!(r.indirect_pages.iter().all(|p| p.segments.len() <= 512));
            (i.sector_number, i.indirect_op, segs)
        }
        SlotRequest::Discard(_) => panic!("a read or write became a discard"),
    }
}

/// Checks that `reqs` carry `segs` exactly once, in order, from `start`.
fn check_cover(reqs: &[RingRequest], start: u64, segs: &[Segment], max: u32, data_op: u8) {
    let mut at = start;
    let mut flat = Vec::new();
    for r in reqs {
        let (sector, operation, s) = wire(r);
        assert_eq!(operation, data_op);
        assert_eq!(sector, at, "each request starts where the previous ended");
        assert!(!s.is_empty() && s.len() <= max as usize);
        assert_eq!(
            matches!(r.request, SlotRequest::Indirect(_)),
            s.len() > 11,
            "direct up to 11 segments, indirect beyond"
        );
        at += s.iter().map(|&(_, f, l)| u64::from(l - f) + 1).sum::<u64>();
        flat.extend(s);
    }
    let want: Vec<(u32, u8, u8)> = segs
        .iter()
        .map(|s| {
            (
                s.gref,
                (s.offset / 512) as u8,
                ((s.offset + s.len) / 512 - 1) as u8,
            )
        })
        .collect();
    assert_eq!(flat, want, "every segment once, in order");
    let total: u64 = segs.iter().map(|s| u64::from(s.len / 512)).sum();
    assert_eq!(at, start + total);
    assert_eq!(reqs.len(), segs.len().div_ceil(max as usize));
}

fn indirect_pages_needed(segs: usize, max: u32) -> usize {
    let max = max as usize;
    let full = segs / max;
    let rest = segs % max;
    let per = |n: usize| if n > 11 { n.div_ceil(512) } else { 0 };
    full * per(max) + per(rest)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn split_covers_every_byte_once_in_order((sector_size, max, start, w, segs) in case()) {
        let dev = disk(sector_size, max);
        let pages = indirect_pages_needed(segs.len(), max);
        let mut f = InFlight::new(512, 1);
        let op_ = if w {
            BlockOp::Write { sector: start, segments: segs.clone() }
        } else {
            BlockOp::Read { sector: start, segments: segs.clone() }
        };
        let data_op = if w { op::WRITE } else { op::READ };
        let grefs: Vec<u32> = (0..pages as u32).map(|i| 90_000 + i).collect();
        let reqs = f.submit(BlockIo { tag: 1, op: op_.clone() }, &dev, grefs.clone()).unwrap();
        check_cover(&reqs, start, &segs, max, data_op);
        let used: Vec<u32> = reqs.iter().flat_map(|r| r.indirect_pages.iter().map(|p| p.gref)).collect();
        prop_assert_eq!(used, grefs, "each indirect page used once, in order");

        // Disconnect after some responses; re-issue on a connection with
        // another maximum: the same cover, and one completion.
        let answered = reqs.len() / 2;
        for r in &reqs[..answered] {
            let rsp = BlkifResponse { id: r.request.id(), operation: data_op, _pad0: 0, status: status::OKAY, _pad1: [0; 4] };
            prop_assert!(f.complete(&rsp).unwrap().done.is_none());
        }
        let drained = f.drain();
        prop_assert_eq!(drained.ios.len(), 1);
        prop_assert_eq!(&drained.ios[0].op, &op_);
        let max2 = if max > 11 { 11 } else { 64 };
        let dev2 = disk(sector_size, max2);
        let mut g = InFlight::new(512, 1);
        let pages2 = indirect_pages_needed(segs.len(), max2);
        let reqs2 = g.submit(drained.ios[0].clone(), &dev2, (0..pages2 as u32).collect()).unwrap();
        check_cover(&reqs2, start, &segs, max2, data_op);
        let mut done = 0;
        for r in &reqs2 {
            let rsp = BlkifResponse { id: r.request.id(), operation: data_op, _pad0: 0, status: status::OKAY, _pad1: [0; 4] };
            if let Some(d) = g.complete(&rsp).unwrap().done {
                prop_assert_eq!(d.status, IoStatus::Okay);
                done += 1;
            }
        }
        prop_assert_eq!(done, 1);
        prop_assert_eq!(g.in_flight(), 0);
    }
}
