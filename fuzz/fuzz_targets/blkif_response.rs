//! blkfront's in-flight tracker against arbitrary response bytes from a
//! hostile backend, interleaved with submissions and disconnects: no panic;
//! a response is accepted only if it answers a request in flight with the
//! operation sent and a known status, and an I/O is reported done only
//! when every one of its requests was answered, exactly once; any other
//! response disables the device for good; a drain hands back exactly the
//! unfinished I/Os, in submission order.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use blkfront::abi::{op, status, BlkifResponse, DiskInfo};
use blkfront::features::DiscardFeature;
use blkfront::{BlockIo, BlockOp, InFlight, Negotiated, Plan, ResponseError, Segment, SubmitError};
use libfuzzer_sys::fuzz_target;
use zerocopy::FromBytes;

#[derive(Arbitrary, Debug)]
enum Step {
    /// The application submits an I/O.
    Submit {
        kind: u8,
        sector: u16,
        /// (gref, offset in 512-byte units, length in logical sectors).
        segs: Vec<(u32, u8, u8)>,
        discard_sectors: u16,
        /// Give one indirect ref too many or too few.
        indirect_skew: i8,
    },
    /// The backend writes a response slot: arbitrary bytes.
    Raw([u8; 16]),
    /// The backend answers a request in flight (chosen by index), perhaps
    /// with another operation or status.
    Answer { pick: u8, op_delta: u8, status: i16 },
    /// The connection ends.
    Drain,
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u8,
    sector_shift: u8,
    max_segments: u16,
    features: u8,
    steps: Vec<Step>,
}

/// What the fuzzer expects of the tracker.
#[derive(Default)]
struct Model {
    /// id -> (tag, response operation, indirect refs).
    ids: BTreeMap<u64, (u64, u8, Vec<u32>)>,
    /// tag -> requests outstanding, in submission order of tags.
    pending: BTreeMap<u64, usize>,
    done: BTreeSet<u64>,
    broken: bool,
}

fuzz_target!(|input: Input| {
    let capacity = 1 + usize::from(input.capacity % 64);
    let sector_size = 512u32 << (input.sector_shift % 4);
    let f = input.features;
    let dev = Negotiated {
        sectors: 1 << 20,
        sector_size,
        physical_sector_size: sector_size,
        info: if f & 1 != 0 {
            DiskInfo::READONLY
        } else {
            DiskInfo::empty()
        },
        flush_cache: f & 2 != 0,
        barrier: f & 4 != 0,
        discard: (f & 8 != 0).then_some(DiscardFeature {
            granularity: sector_size,
            alignment: 0,
            secure: f & 16 != 0,
        }),
        persistent: false,
        max_segments: u32::from(input.max_segments).clamp(11, 4096),
        queues: 1,
        ring_page_order: 0,
    };
    let per = sector_size / 512;
    let mut t = InFlight::new(capacity, 0x1234);
    let mut m = Model::default();
    let mut next_tag = 0u64;
    let mut next_ref = 1_000_000u32;

    for step in input.steps.into_iter().take(256) {
        match step {
            Step::Submit {
                kind,
                sector,
                segs,
                discard_sectors,
                indirect_skew,
            } => {
                let segments: Vec<Segment> = segs
                    .iter()
                    .take(2000)
                    .map(|&(gref, off, n)| Segment {
                        gref,
                        offset: u32::from(off % 9) * 512,
                        len: u32::from(n % 9) * sector_size,
                    })
                    .collect();
                let sector = u64::from(sector) * u64::from(per);
                let op_ = match kind % 5 {
                    0 => BlockOp::Read { sector, segments },
                    1 => BlockOp::Write { sector, segments },
                    2 => BlockOp::Flush,
                    3 => BlockOp::Barrier,
                    _ => BlockOp::Discard {
                        sector,
                        sectors: u64::from(discard_sectors),
                        secure: kind & 8 != 0,
                    },
                };
                next_tag += 1;
                let io = BlockIo {
                    tag: next_tag,
                    op: op_,
                };
                let pages = Plan::new(&io, &dev)
                    .map(|p| p.indirect_pages())
                    .unwrap_or(0);
                let n = (pages as i64 + i64::from(indirect_skew.signum())).max(0) as usize;
                let grefs: Vec<u32> = (0..n as u32).map(|i| next_ref + i).collect();
                next_ref = next_ref.wrapping_add(n as u32);
                match t.submit(io.clone(), &dev, grefs.clone()) {
                    Ok(reqs) => {
                        assert!(!m.broken, "a disabled device took an I/O");
                        assert_eq!(n, pages);
                        assert!(!reqs.is_empty());
                        let mut used = Vec::new();
                        for r in &reqs {
                            let id = r.request.id();
                            assert!((id as usize) < capacity, "id {id} outside the slab");
                            let refs: Vec<u32> = r.indirect_pages.iter().map(|p| p.gref).collect();
                            used.extend(refs.iter().copied());
                            let prev = m
                                .ids
                                .insert(id, (next_tag, r.request.response_operation(), refs));
                            assert!(prev.is_none(), "id {id} given twice");
                        }
                        assert_eq!(used, grefs, "every indirect ref used once, in order");
                        m.pending.insert(next_tag, reqs.len());
                    }
                    Err(rej) => {
                        assert_eq!(rej.io, io, "a refused I/O comes back unchanged");
                        assert_eq!(rej.indirect_grefs, grefs, "and its refs with it");
                        if m.broken {
                            assert!(matches!(rej.error, SubmitError::Disabled(_)));
                        }
                    }
                }
            }
            Step::Raw(bytes) => {
                let Ok(rsp) = BlkifResponse::read_from_bytes(&bytes) else {
                    continue;
                };
                respond(&mut t, &mut m, &rsp, capacity);
            }
            Step::Answer {
                pick,
                op_delta,
                status,
            } => {
                let Some((&id, &(_, rop, _))) =
                    m.ids.iter().nth(usize::from(pick) % m.ids.len().max(1))
                else {
                    continue;
                };
                let rsp = BlkifResponse {
                    id,
                    operation: if op_delta % 4 == 0 {
                        rop.wrapping_add(op_delta / 4)
                    } else {
                        rop
                    },
                    _pad0: 0,
                    status: match status % 5 {
                        0 => status::OKAY,
                        1 => status::ERROR,
                        2 => status::EOPNOTSUPP,
                        3 => status,
                        _ => status::OKAY,
                    },
                    _pad1: [0; 4],
                };
                respond(&mut t, &mut m, &rsp, capacity);
            }
            Step::Drain => {
                let d = t.drain();
                let want: Vec<u64> = m.pending.keys().copied().collect();
                let got: Vec<u64> = d.ios.iter().map(|io| io.tag).collect();
                assert_eq!(got, want, "unfinished I/Os, in submission order");
                let mut refs: Vec<u32> = m.ids.values().flat_map(|v| v.2.iter().copied()).collect();
                let mut got_refs = d.indirect_grefs.clone();
                refs.sort_unstable();
                got_refs.sort_unstable();
                assert_eq!(got_refs, refs, "every held indirect ref handed back");
                m.ids.clear();
                m.pending.clear();
                assert_eq!(t.in_flight(), 0);
                assert_eq!(t.free(), capacity);
                assert_eq!(t.broken().is_some(), m.broken);
            }
        }
        assert_eq!(t.in_flight(), m.ids.len());
        assert_eq!(t.pending_ios(), m.pending.len());
    }
});

fn respond(t: &mut InFlight, m: &mut Model, rsp: &BlkifResponse, capacity: usize) {
    let known = matches!(
        rsp.status,
        status::OKAY | status::ERROR | status::EOPNOTSUPP
    );
    let expected = m.ids.get(&rsp.id).map(|v| v.1);
    let valid = !m.broken && expected == Some(rsp.operation) && known;
    match t.complete(rsp) {
        Ok(c) => {
            assert!(valid, "accepted a bad response {rsp:?}");
            let Some((tag, _, refs)) = m.ids.remove(&rsp.id) else {
                unreachable!("checked above");
            };
            assert_eq!(c.indirect_grefs, refs);
            if c.lost_feature.is_some() {
                assert!(matches!(
                    rsp.operation,
                    op::FLUSH_DISKCACHE | op::WRITE_BARRIER | op::DISCARD
                ));
                assert_ne!(rsp.status, status::OKAY);
            }
            let left = m.pending.get_mut(&tag).expect("tag pending");
            *left -= 1;
            match c.done {
                Some(d) => {
                    assert_eq!(*left, 0, "done before its last request");
                    assert_eq!(d.io.tag, tag);
                    assert!(m.done.insert(tag), "done twice");
                    m.pending.remove(&tag);
                }
                None => assert!(*left > 0, "last request answered but not done"),
            }
        }
        Err(e) => {
            assert!(!valid, "refused a valid response {rsp:?}: {e}");
            if !m.broken {
                match &e {
                    ResponseError::IdOutOfRange { id, .. } => assert!(*id >= capacity as u64),
                    ResponseError::NotInFlight { id } => assert!(!m.ids.contains_key(id)),
                    ResponseError::WrongOperation {
                        expected: x, got, ..
                    } => {
                        assert_eq!(Some(*x), expected);
                        assert_ne!(x, got);
                    }
                    ResponseError::UnknownStatus { .. } => assert!(!known),
                }
            }
            m.broken = true;
            assert!(t.broken().is_some());
        }
    }
}
