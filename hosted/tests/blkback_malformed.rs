//! Malformed requests answered as Linux 6.1's xen-blkback answers them,
//! each refusal ending its batch after a 1 ms pause; a ring whose
//! frontend publishes more requests than it holds is halted while the
//! other queues go on.

#[path = "blkback_common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use blkfront::abi::{op, status, BlkifRequestSegment};
use common::{Rig, TIMEOUT};
use hosted::blkback::front::{indirect_request, rw_request, whole_page, FrontConfig, RingFrontend};
use hosted::blkback::RejectReason;

fn seg(gref: u32, first_sect: u8, last_sect: u8) -> BlkifRequestSegment {
    BlkifRequestSegment {
        gref,
        first_sect,
        last_sect,
        _pad: [0; 2],
    }
}

/// Sends `req` and checks the response's operation and status.
fn expect(f: &mut RingFrontend, req: &blkfront::abi::BlkifRequest, operation: u8, st: i16) {
    let rsp = f.io(0, req).unwrap();
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (req.id, operation, st),
        "request {req:?}"
    );
}

#[test]
fn each_malformed_request_gets_blkbacks_answer() {
    let r = Rig::with("malformed", 1 << 20, &[], |_| {});
    let mut f = r.front(FrontConfig::default());
    let b = f.buffer().unwrap();
    let g = b.gref();
    let e = status::ERROR;
    // Unknown operations: EOPNOTSUPP, with the request's own code.
    for (id, o) in [(1, op::RESERVED_1), (2, 7), (3, 0xff)] {
        expect(
            &mut f,
            &rw_request(o, id, 0, &[whole_page(g)]),
            o,
            status::EOPNOTSUPP,
        );
    }
    // Segment counts.
    expect(&mut f, &rw_request(op::READ, 10, 0, &[]), op::READ, e);
    expect(&mut f, &rw_request(op::WRITE, 11, 0, &[]), op::WRITE, e);
    let mut twelve = rw_request(op::READ, 12, 0, &[whole_page(g); 11]);
    twelve.nr_segments = 12;
    expect(&mut f, &twelve, op::READ, e);
    expect(
        &mut f,
        &indirect_request(op::READ, 13, 0, 0, &[g]),
        op::READ,
        e,
    );
    expect(
        &mut f,
        &indirect_request(op::WRITE, 14, 0, 257, &[g, g]),
        op::WRITE,
        e,
    );
    // An indirect request whose inner operation is not read or write.
    expect(
        &mut f,
        &indirect_request(op::FLUSH_DISKCACHE, 15, 0, 1, &[g]),
        op::FLUSH_DISKCACHE,
        e,
    );
    // Segments.
    expect(
        &mut f,
        &rw_request(op::READ, 20, 0, &[seg(g, 0, 8)]),
        op::READ,
        e,
    );
    expect(
        &mut f,
        &rw_request(op::READ, 21, 0, &[seg(g, 5, 4)]),
        op::READ,
        e,
    );
    // An indirect page holding a bad segment.
    let mut ind = f.buffer().unwrap();
    ind.write_at(
        0,
        zerocopy::IntoBytes::as_bytes(&[whole_page(g), seg(g, 3, 9)]),
    )
    .unwrap();
    expect(
        &mut f,
        &indirect_request(op::READ, 22, 0, 2, &[ind.gref()]),
        op::READ,
        e,
    );
    // Out of range, and an end that overflows.
    expect(
        &mut f,
        &rw_request(op::READ, 30, 2044, &[whole_page(g)]),
        op::READ,
        e,
    );
    expect(
        &mut f,
        &rw_request(op::WRITE, 31, u64::MAX - 3, &[whole_page(g)]),
        op::WRITE,
        e,
    );
    // Grants that fail to map: a data page, an indirect page.
    expect(
        &mut f,
        &rw_request(op::READ, 40, 0, &[whole_page(60_000)]),
        op::READ,
        e,
    );
    expect(
        &mut f,
        &indirect_request(op::READ, 41, 0, 1, &[60_001]),
        op::READ,
        e,
    );
    // After all that the ring still serves.
    expect(
        &mut f,
        &rw_request(op::READ, 50, 0, &[whole_page(g)]),
        op::READ,
        status::OKAY,
    );
    let s = r.back().stats();
    let n = |k| s.rejected.get(&k).copied().unwrap_or(0);
    assert_eq!(n(RejectReason::UnknownOperation), 3);
    assert_eq!(n(RejectReason::BadSegmentCount), 5);
    assert_eq!(n(RejectReason::BadIndirectOperation), 1);
    assert_eq!(n(RejectReason::BadSegment), 3);
    assert_eq!(n(RejectReason::OutOfRange), 2);
    assert_eq!(n(RejectReason::GrantMap), 2);
    assert_eq!(s.ring_halts, 0);
}

#[test]
fn misaligned_requests_on_a_4k_disk() {
    let r = Rig::with("misaligned", 1 << 20, &[], |c| c.sector_size = 4096);
    let mut f = r.front(FrontConfig::default());
    assert_eq!(f.disk().unwrap().sector_size, 4096);
    let g = f.buffer().unwrap().gref();
    expect(
        &mut f,
        &rw_request(op::READ, 1, 1, &[whole_page(g)]),
        op::READ,
        status::ERROR,
    );
    expect(
        &mut f,
        &rw_request(op::READ, 2, 8, &[seg(g, 0, 3)]),
        op::READ,
        status::ERROR,
    );
    expect(
        &mut f,
        &rw_request(op::READ, 3, 8, &[whole_page(g)]),
        op::READ,
        status::OKAY,
    );
    assert_eq!(
        r.back().stats().rejected.get(&RejectReason::Misaligned),
        Some(&2)
    );
}

#[test]
fn each_refusal_ends_the_batch_after_a_pause() {
    let r = Rig::with("delay", 1 << 20, &[], |_| {});
    let mut f = r.front(FrontConfig::default());
    let g = f.buffer().unwrap().gref();
    for i in 0..10 {
        f.queue(0)
            .unwrap()
            .ring
            .put_request(rw_request(op::READ, i, 0, &[seg(g, 4, 2)]))
            .unwrap();
    }
    let start = Instant::now();
    f.put(0, &rw_request(op::READ, 10, 0, &[whole_page(g)]))
        .unwrap();
    for i in 0..11 {
        let rsp = f.wait_response(0, TIMEOUT).unwrap();
        assert_eq!(rsp.id, i, "in ring order");
        assert_eq!(
            rsp.status,
            if i == 10 { status::OKAY } else { status::ERROR }
        );
    }
    assert!(
        start.elapsed() >= Duration::from_millis(10),
        "ten refusals took {:?}",
        start.elapsed()
    );
}

#[test]
fn ring_index_overflow_halts_that_ring_only() {
    let r = Rig::with("overflow", 1 << 20, &[], |_| {});
    let mut f = r.front(FrontConfig {
        queues: 2,
        ..FrontConfig::default()
    });
    let g = f.buffer().unwrap().gref();
    expect(
        &mut f,
        &rw_request(op::READ, 1, 0, &[whole_page(g)]),
        op::READ,
        status::OKAY,
    );
    // The frontend publishes req_prod far beyond what the ring holds.
    let q0 = f.queue(0).unwrap();
    let base = q0.ring.memory().as_ptr();
    // SAFETY: the ring's first page is mapped read-write while the ring
    // lives; `req_prod` is the aligned u32 at offset 0 of the header,
    // which both ends access atomically.
    let req_prod = unsafe { AtomicU32::from_ptr(base.as_ptr().cast::<u32>()) };
    req_prod.fetch_add(1000, Ordering::SeqCst);
    let port = q0.port;
    grant_tables::EventChannels::notify(f.platform(), port).unwrap();
    let end = Instant::now() + TIMEOUT;
    while r.back().stats().ring_halts == 0 {
        assert!(Instant::now() < end, "the ring was not halted");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        f.try_response(0).unwrap().is_none(),
        "nothing answered on the halted ring"
    );
    // Queue 1 goes on.
    let rsp = f
        .io(1, &rw_request(op::READ, 2, 0, &[whole_page(g)]))
        .unwrap();
    assert_eq!((rsp.id, rsp.status), (2, status::OKAY));
}
