//! The hostile modes do what they say, at the ring level (the tests that
//! show a frontend survives each belong to the frontend's own suite).

#[path = "blkback_common/mod.rs"]
mod common;

use std::time::Duration;

use blkfront::abi::{op, status};
use common::{Rig, FE, TIMEOUT};
use hosted::blkback::front::{rw_request, whole_page, FrontConfig, RingFrontend};
use hosted::blkback::{Hostile, HostileMode, BAD_ID_BIT, UNKNOWN_STATUS};

fn rig(tag: &str, kind: Hostile) -> (Rig, RingFrontend) {
    let r = Rig::with(tag, 1 << 20, &[], |c| {
        c.hostile = Some(HostileMode { kind, after: 1 })
    });
    let f = r.front(FrontConfig::default());
    (r, f)
}

/// One honest round trip first (`after: 1`).
fn honest(f: &mut RingFrontend, g: u32) {
    let rsp = f
        .io(0, &rw_request(op::READ, 1, 0, &[whole_page(g)]))
        .unwrap();
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (1, op::READ, status::OKAY)
    );
}

#[test]
fn bad_ids_wrong_operations_unknown_statuses() {
    for (kind, tag) in [
        (Hostile::BadIds, "h-ids"),
        (Hostile::WrongOperation, "h-op"),
        (Hostile::UnknownStatus, "h-st"),
    ] {
        let (r, mut f) = rig(tag, kind);
        let g = f.buffer().unwrap().gref();
        honest(&mut f, g);
        let rsp = f
            .io(0, &rw_request(op::READ, 2, 0, &[whole_page(g)]))
            .unwrap();
        let expected = match kind {
            Hostile::BadIds => (2 ^ BAD_ID_BIT, op::READ, status::OKAY),
            Hostile::WrongOperation => (2, op::WRITE, status::OKAY),
            _ => (2, op::READ, UNKNOWN_STATUS),
        };
        assert_eq!((rsp.id, rsp.operation, rsp.status), expected, "{kind:?}");
        assert_eq!(r.back().stats().hostile_acts, 1, "{kind:?}");
    }
}

#[test]
fn duplicate_responses() {
    let (_r, mut f) = rig("h-dup", Hostile::DuplicateResponses);
    let g = f.buffer().unwrap().gref();
    honest(&mut f, g);
    f.queue(0)
        .unwrap()
        .ring
        .put_request(rw_request(op::READ, 2, 0, &[whole_page(g)]))
        .unwrap();
    f.put(0, &rw_request(op::READ, 3, 8, &[whole_page(g)]))
        .unwrap();
    let a = f.wait_response(0, TIMEOUT).unwrap();
    let b = f.wait_response(0, TIMEOUT).unwrap();
    assert_eq!(a, b, "the same response twice");
    assert!(a.id == 2 || a.id == 3);
}

#[test]
fn index_jumps_and_unsolicited_responses_break_the_ring_protocol() {
    for (kind, tag) in [
        (Hostile::IndexJump, "h-jump"),
        (Hostile::UnsolicitedResponses, "h-extra"),
    ] {
        let (_r, mut f) = rig(tag, kind);
        let g = f.buffer().unwrap().gref();
        honest(&mut f, g);
        f.put(0, &rw_request(op::READ, 2, 0, &[whole_page(g)]))
            .unwrap();
        let mut results = Vec::new();
        let end = std::time::Instant::now() + TIMEOUT;
        while std::time::Instant::now() < end {
            match f.try_response(0) {
                Ok(Some(r)) => results.push(Ok(r)),
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => {
                    results.push(Err(e));
                    break;
                }
            }
        }
        let err = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .unwrap_or_else(|| panic!("{kind:?}: {results:?}"));
        assert!(err.contains("peer fault"), "{kind:?}: {err}");
    }
}

#[test]
fn grants_kept_mapped_after_the_connection_ends() {
    let (r, mut f) = rig("h-keep", Hostile::KeepGrantsMapped);
    let mut b = f.buffer().unwrap();
    b.write_at(0, &[7; 4096]).unwrap();
    let g = b.gref();
    let rsp = f.pages(0, true, 1, 0, &[&b]).unwrap();
    assert_eq!(rsp.status, status::OKAY);
    drop(b);
    let ring_ref = f.queue(0).unwrap().ring.grefs()[0];
    drop(f);
    // The frontend restarts; the backend keeps the old grants mapped.
    let _f2 = r.front(FrontConfig::default());
    assert!(r.back().wait_connected(2, TIMEOUT));
    assert_eq!(
        r.back_plat.pin_counts(FE, g).0,
        1,
        "the data page is still mapped"
    );
    assert_eq!(
        r.back_plat.pin_counts(FE, ring_ref).0,
        1,
        "the ring is still mapped"
    );
    let table = r.front_plat.grant_table().clone();
    let _ = table.retry_quarantined();
    assert!(
        table.stats().quarantined > 0,
        "the frontend cannot end those grants"
    );
    assert!(r.back().stats().kept_grants >= 2);
    assert!(r.back().release_kept_grants() >= 2);
    assert_eq!(r.back_plat.pin_counts(FE, g), (0, 0));
    let _ = table.retry_quarantined();
    assert_eq!(
        table.stats().quarantined,
        0,
        "ended once the backend let go"
    );
}
