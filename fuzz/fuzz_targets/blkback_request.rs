//! The hosted blkback's checks of a hostile frontend's requests: a ring
//! slot and up to 8 indirect pages of arbitrary bytes. No panic; every
//! refusal carries ERROR or EOPNOTSUPP (EOPNOTSUPP only for an unknown
//! operation) and the request's id; every accepted read or write has 1 to
//! the advertised maximum of segments, each a non-empty run of whole
//! 512-byte sectors inside one page, and lies inside the disk, aligned to
//! its logical sector size; a read-only disk accepts only reads.
#![no_main]

use arbitrary::Arbitrary;
use blkfront::abi::{op, status, BlkifRequest, BlkifRequestSegment};
use hosted::blkback::parse::{check_discard, classify, indirect_segments, Disk, Pending, RwKind};
use libfuzzer_sys::fuzz_target;
use zerocopy::FromBytes;

#[derive(Arbitrary, Debug)]
struct Input {
    slot: [u8; 112],
    pages: Vec<Vec<u8>>,
    sectors: u64,
    sector_shift: u8,
    read_only: bool,
    max_indirect: u16,
}

fuzz_target!(|input: Input| {
    let Ok(slot) = BlkifRequest::read_from_bytes(&input.slot[..]) else {
        return;
    };
    let disk = Disk {
        sectors: input.sectors,
        sector_size: 512 << (input.sector_shift % 4),
        read_only: input.read_only,
        max_indirect_segments: u32::from(input.max_indirect),
    };
    let pages: Vec<[BlkifRequestSegment; 512]> = input
        .pages
        .iter()
        .take(8)
        .map(|p| {
            let mut page = [BlkifRequestSegment::default(); 512];
            for (seg, chunk) in page.iter_mut().zip(p.chunks_exact(8)) {
                *seg = BlkifRequestSegment::read_from_bytes(chunk).unwrap_or_default();
            }
            page
        })
        .collect();
    let refused = |r: &hosted::blkback::parse::Reject| {
        assert!(r.status == status::ERROR || r.status == status::EOPNOTSUPP);
        if r.status == status::EOPNOTSUPP {
            assert!(!matches!(
                slot.operation,
                op::READ
                    | op::WRITE
                    | op::FLUSH_DISKCACHE
                    | op::WRITE_BARRIER
                    | op::INDIRECT
                    | op::DISCARD
            ));
        }
        assert_eq!(r.id, slot.id);
    };
    let rw = match classify(&slot, disk.max_indirect_segments) {
        Err(r) => return refused(&r),
        Ok(Pending::Discard(d)) => {
            match check_discard(&d, &disk) {
                Err(r) => refused(&r),
                Ok(x) => {
                    assert!(!disk.read_only);
                    assert!(
                        x.sector
                            .checked_add(x.sectors)
                            .is_some_and(|e| e <= disk.sectors)
                            || x.sectors == 0
                    );
                }
            }
            return;
        }
        Ok(Pending::Direct(rw)) => rw,
        Ok(Pending::Indirect {
            mut rw,
            nr_segments,
            pages: grefs,
        }) => {
            assert!(nr_segments >= 1 && nr_segments <= usize::from(input.max_indirect));
            assert_eq!(grefs.len(), nr_segments.div_ceil(512));
            if let Err(r) = indirect_segments(&mut rw, nr_segments, |p| pages.get(p).copied()) {
                return refused(&r);
            }
            assert_eq!(rw.segs.len(), nr_segments);
            rw
        }
    };
    for s in &rw.segs {
        assert!(s.len >= 512 && s.len % 512 == 0 && s.offset % 512 == 0);
        assert!(s.offset + s.len <= 4096);
    }
    assert!(!rw.segs.is_empty() || matches!(rw.kind, RwKind::Flush | RwKind::Barrier));
    match disk.check(&rw) {
        Err(r) => refused(&r),
        Ok(()) => {
            assert!(!disk.read_only || rw.kind == RwKind::Read);
            let n = rw.sectors();
            if n > 0 {
                assert!(rw.sector.checked_add(n).is_some_and(|e| e <= disk.sectors));
            }
            let per = u64::from(disk.sector_size / 512);
            assert_eq!(rw.sector % per, 0);
            assert!(rw.segs.iter().all(|s| u64::from(s.len / 512) % per == 0));
        }
    }
});
