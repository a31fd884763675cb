use std::string::ToString;
use std::vec;
use std::vec::Vec;

use super::{disk, pages, response};
use crate::abi::{op, status, SlotRequest};
use crate::features::Feature;
use crate::inflight::*;
use crate::request::{BlockIo, BlockOp, IoError, Segment};

fn write(tag: u64, sector: u64, segments: Vec<Segment>) -> BlockIo {
    BlockIo {
        tag,
        op: BlockOp::Write { sector, segments },
    }
}

fn read(tag: u64, sector: u64, segments: Vec<Segment>) -> BlockIo {
    BlockIo {
        tag,
        op: BlockOp::Read { sector, segments },
    }
}

fn ok(id: u64, operation: u8) -> crate::abi::BlkifResponse {
    response(id, operation, status::OKAY)
}

#[test]
fn a_request_completes_once() {
    let d = disk();
    let mut f = InFlight::new(32, 0);
    let reqs = f.submit(read(7, 0, pages(2, 1)), &d, vec![]).unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!((f.in_flight(), f.free(), f.pending_ios()), (1, 31, 1));
    let id = reqs[0].request.id();
    let c = f.complete(&ok(id, op::READ)).unwrap();
    let done = c.done.unwrap();
    assert_eq!(done.io.tag, 7);
    assert_eq!(done.status, IoStatus::Okay);
    assert_eq!(c.lost_feature, None);
    assert_eq!((f.in_flight(), f.free(), f.pending_ios()), (0, 32, 0));
    // The same response again names nothing in flight.
    assert_eq!(
        f.complete(&ok(id, op::READ)),
        Err(ResponseError::NotInFlight { id })
    );
    assert!(f.broken().is_some());
}

#[test]
fn freed_ids_are_reused_last() {
    let d = disk();
    let mut f = InFlight::new(4, 0);
    let a = f.submit(read(1, 0, pages(1, 1)), &d, vec![]).unwrap()[0]
        .request
        .id();
    f.complete(&ok(a, op::READ)).unwrap();
    let ids: Vec<u64> = (0..4)
        .map(|t| {
            f.submit(read(t, 0, pages(1, 1)), &d, vec![]).unwrap()[0]
                .request
                .id()
        })
        .collect();
    assert_eq!(ids, vec![1, 2, 3, a], "the freed id comes back last");
}

#[test]
fn id_out_of_range_disables_the_device() {
    let d = disk();
    let mut f = InFlight::new(32, 0);
    f.submit(read(1, 0, pages(1, 1)), &d, vec![]).unwrap();
    for id in [32, u64::MAX, 1 << 40] {
        let mut f2 = InFlight::new(32, 0);
        assert_eq!(
            f2.complete(&ok(id, op::READ)),
            Err(ResponseError::IdOutOfRange { id, capacity: 32 })
        );
    }
    let e = f.complete(&ok(32, op::READ)).unwrap_err();
    assert!(e.to_string().contains("disabled"), "{e}");
    // Disabled: the same error from now on, and no more submissions.
    assert_eq!(f.complete(&ok(0, op::READ)), Err(e.clone()));
    let r = f
        .submit(read(2, 0, pages(1, 1)), &d, vec![4, 5])
        .unwrap_err();
    assert_eq!(r.error, SubmitError::Disabled(e));
    assert_eq!(r.indirect_grefs, vec![4, 5], "the refs come back");
    assert_eq!(r.io.tag, 2);
    // What was in flight is not lost: it comes back for re-issue.
    let drained = f.drain();
    assert_eq!(drained.ios.len(), 1);
    assert_eq!(drained.ios[0].tag, 1);
    assert!(
        f.broken().is_some(),
        "a drain does not re-enable the device"
    );
}

#[test]
fn made_up_id_within_range() {
    let d = disk();
    let mut f = InFlight::new(32, 0);
    f.submit(read(1, 0, pages(1, 1)), &d, vec![]).unwrap();
    assert_eq!(
        f.complete(&ok(5, op::READ)),
        Err(ResponseError::NotInFlight { id: 5 })
    );
}

#[test]
fn operation_must_match() {
    let mut d = disk();
    d.max_segments = 64;
    let mut f = InFlight::new(32, 0);
    let reqs = f.submit(write(1, 0, pages(20, 1)), &d, vec![9]).unwrap();
    let id = reqs[0].request.id();
    assert!(matches!(reqs[0].request, SlotRequest::Indirect(_)));
    // An indirect request is answered with its inner operation, not INDIRECT.
    assert_eq!(
        f.complete(&ok(id, op::INDIRECT)),
        Err(ResponseError::WrongOperation {
            id,
            expected: op::WRITE,
            got: op::INDIRECT
        })
    );
    let mut f = InFlight::new(32, 0);
    let reqs = f.submit(write(1, 0, pages(20, 1)), &d, vec![9]).unwrap();
    let id = reqs[0].request.id();
    assert_eq!(
        f.complete(&ok(id, op::READ)),
        Err(ResponseError::WrongOperation {
            id,
            expected: op::WRITE,
            got: op::READ
        })
    );
    let mut f = InFlight::new(32, 0);
    let reqs = f.submit(write(1, 0, pages(20, 1)), &d, vec![9]).unwrap();
    let c = f.complete(&ok(reqs[0].request.id(), op::WRITE)).unwrap();
    assert_eq!(c.indirect_grefs, vec![9]);
    assert_eq!(c.done.unwrap().status, IoStatus::Okay);
}

#[test]
fn unknown_status_disables_the_device() {
    let d = disk();
    for bad in [1, -3, i16::MIN, i16::MAX] {
        let mut f = InFlight::new(32, 0);
        let id = f.submit(read(1, 0, pages(1, 1)), &d, vec![]).unwrap()[0]
            .request
            .id();
        assert_eq!(
            f.complete(&response(id, op::READ, bad)),
            Err(ResponseError::UnknownStatus { id, status: bad })
        );
        assert_eq!(f.in_flight(), 1, "nothing is completed by a bad response");
    }
}

#[test]
fn errors_are_reported_not_hidden() {
    let d = disk();
    let mut f = InFlight::new(32, 0);
    let reqs = f.submit(write(1, 0, pages(30, 1)), &d, vec![]).unwrap();
    assert_eq!(reqs.len(), 3);
    let ids: Vec<u64> = reqs.iter().map(|r| r.request.id()).collect();
    // Out of order, one failed: done only at the last, with the worst status.
    assert!(f.complete(&ok(ids[2], op::WRITE)).unwrap().done.is_none());
    assert!(f
        .complete(&response(ids[0], op::WRITE, status::ERROR))
        .unwrap()
        .done
        .is_none());
    let done = f.complete(&ok(ids[1], op::WRITE)).unwrap().done.unwrap();
    assert_eq!(done.status, IoStatus::Error);
    assert_eq!(done.io.tag, 1);
    assert!(f.broken().is_none(), "an I/O error is not a protocol error");
}

#[test]
fn unsupported_flush_barrier_and_discard_turn_the_feature_off() {
    let d = disk();
    let cases = [
        (
            BlockOp::Flush,
            status::EOPNOTSUPP,
            Some(Feature::FlushCache),
        ),
        (BlockOp::Flush, status::ERROR, Some(Feature::FlushCache)),
        (BlockOp::Barrier, status::EOPNOTSUPP, Some(Feature::Barrier)),
        (BlockOp::Barrier, status::ERROR, Some(Feature::Barrier)),
        (BlockOp::Flush, status::OKAY, None),
        (
            BlockOp::Discard {
                sector: 0,
                sectors: 8,
                secure: false,
            },
            status::EOPNOTSUPP,
            Some(Feature::Discard),
        ),
        (
            BlockOp::Discard {
                sector: 0,
                sectors: 8,
                secure: false,
            },
            status::ERROR,
            None,
        ),
    ];
    for (op_, st, lost) in cases {
        let mut dev = d;
        let mut f = InFlight::new(32, 0);
        let reqs = f
            .submit(
                BlockIo {
                    tag: 3,
                    op: op_.clone(),
                },
                &dev,
                vec![],
            )
            .unwrap();
        let r = &reqs[0].request;
        let c = f
            .complete(&response(r.id(), r.response_operation(), st))
            .unwrap();
        assert_eq!(c.lost_feature, lost, "{op_:?} {st}");
        let want = match (st, lost) {
            (status::OKAY, _) => IoStatus::Okay,
            (_, Some(_)) => IoStatus::NotSupported,
            _ => IoStatus::Error,
        };
        assert_eq!(c.done.unwrap().status, want, "{op_:?} {st}");
        if let Some(feature) = lost {
            dev.disable(feature);
            let again = f.submit(
                BlockIo {
                    tag: 4,
                    op: op_.clone(),
                },
                &dev,
                vec![],
            );
            if feature != Feature::FlushCache {
                assert!(matches!(
                    again.unwrap_err().error,
                    SubmitError::Io(IoError::Unsupported { .. })
                ));
            } else {
                // A flush falls back on the barrier, which is still offered.
                assert_eq!(
                    again.unwrap()[0].request.response_operation(),
                    op::WRITE_BARRIER
                );
            }
        }
    }
}

#[test]
fn refusals_change_nothing_and_give_everything_back() {
    let mut d = disk();
    d.max_segments = 64;
    let mut f = InFlight::new(4, 0);
    // With 64 segments a request, 55 pages are one indirect request.
    let r = f.submit(write(1, 0, pages(55, 1)), &d, vec![]).unwrap_err();
    assert_eq!(
        r.error,
        SubmitError::IndirectPages {
            needed: 1,
            given: 0
        }
    );
    // With direct requests only, 5 requests on a 4-slot ring: never fits.
    d.max_segments = 11;
    let r = f.submit(write(1, 0, pages(55, 1)), &d, vec![]).unwrap_err();
    assert_eq!(
        r.error,
        SubmitError::TooLarge {
            needed: 5,
            capacity: 4
        }
    );
    f.submit(write(2, 0, pages(22, 1)), &d, vec![]).unwrap();
    let r = f.submit(write(3, 0, pages(33, 1)), &d, vec![]).unwrap_err();
    assert_eq!(r.error, SubmitError::NoRoom { needed: 3, free: 2 });
    assert_eq!(r.io, write(3, 0, pages(33, 1)));
    d.max_segments = 64;
    let r = f.submit(write(4, 0, pages(20, 1)), &d, vec![]).unwrap_err();
    assert_eq!(
        r.error,
        SubmitError::IndirectPages {
            needed: 1,
            given: 0
        }
    );
    let r = f.submit(write(4, 0, pages(2, 1)), &d, vec![7]).unwrap_err();
    assert_eq!(
        r.error,
        SubmitError::IndirectPages {
            needed: 0,
            given: 1
        }
    );
    assert_eq!(r.indirect_grefs, vec![7]);
    let r = f
        .submit(write(5, 1 << 40, pages(1, 1)), &d, vec![])
        .unwrap_err();
    assert!(matches!(
        r.error,
        SubmitError::Io(IoError::OutOfRange { .. })
    ));
    assert_eq!((f.in_flight(), f.pending_ios()), (2, 1));
}

#[test]
fn drain_hands_back_unfinished_ios_whole_in_submission_order() {
    let mut d = disk();
    d.max_segments = 32;
    let mut f = InFlight::new(32, 0);
    let a = f
        .submit(write(10, 0, pages(50, 1)), &d, vec![500, 501])
        .unwrap();
    let b = f.submit(read(11, 1000, pages(3, 100)), &d, vec![]).unwrap();
    let c = f
        .submit(write(12, 2000, pages(5, 200)), &d, vec![])
        .unwrap();
    assert_eq!(a.len(), 2);
    // The read finished; the first part of the write finished.
    assert!(f
        .complete(&ok(b[0].request.id(), op::READ))
        .unwrap()
        .done
        .is_some());
    let first = f.complete(&ok(a[0].request.id(), op::WRITE)).unwrap();
    assert_eq!(first.indirect_grefs, vec![500]);
    assert!(first.done.is_none());

    let drained = f.drain();
    let tags: Vec<u64> = drained.ios.iter().map(|io| io.tag).collect();
    assert_eq!(tags, vec![10, 12], "unfinished I/Os, in submission order");
    assert_eq!(
        drained.ios[0],
        write(10, 0, pages(50, 1)),
        "whole, unchanged"
    );
    assert_eq!(drained.indirect_grefs, vec![501]);
    assert_eq!((f.in_flight(), f.pending_ios(), f.free()), (0, 0, 32));
    // Responses for the old connection's requests are refused now.
    assert!(f.complete(&ok(c[0].request.id(), op::WRITE)).is_err());

    // The new connection allows only direct requests: the write is split
    // into 5 requests and completes once, covering the same 50 pages.
    let mut d2 = disk();
    d2.max_segments = 11;
    let mut g = InFlight::new(32, 0);
    let mut done = Vec::new();
    let mut covered = Vec::new();
    for io in drained.ios {
        let reqs = g.submit(io, &d2, vec![]).unwrap();
        for r in &reqs {
            let SlotRequest::Rw(w) = r.request else {
                panic!("{:?}", r.request)
            };
            covered.extend(w.seg[..w.nr_segments as usize].iter().map(|s| s.gref));
        }
        for r in reqs {
            if let Some(dn) = g
                .complete(&ok(r.request.id(), r.request.response_operation()))
                .unwrap()
                .done
            {
                done.push(dn.io.tag);
            }
        }
    }
    assert_eq!(done, vec![10, 12]);
    let want: Vec<u32> = (1..51).chain(200..205).collect();
    assert_eq!(covered, want);
}
