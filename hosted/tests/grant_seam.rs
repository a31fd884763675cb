//! The shared pieces across two processes: a granted ring published as
//! blkfront publishes it and mapped by a backend through the backend seam,
//! a buffer pool read and written in place by the backend, and the seam's
//! per-operation statuses. The parent is dom1 (the frontend and the
//! hypervisor); a child process is dom2 (the backend).

#[path = "platform_common/mod.rs"]
mod common;

use common::{child_dir, hear, param, role, say, ChildDomain, TestDir};
use grant_tables::abi::{GntStatus, PAGE_SIZE};
use grant_tables::foreign::{ForeignGrants, ForeignMapping, MapOp};
use grant_tables::{
    map_back_ring, parse_ring_refs, Access, BufferPool, DomId, GrantedRing, PoolConfig, PoolMode, RingRefLayout,
};
use hosted::{HostedHypervisor, HostedPlatform};

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId(2);
const CHILD_TEST: &str = "child";

#[test]
fn child() {
    let Some(role) = role() else { return };
    let back = HostedPlatform::join(child_dir(), BACK).expect("child joins as dom2");
    match role.as_str() {
        "ring" => child_ring(&back),
        "pool" => child_pool(&back),
        other => panic!("unknown role {other}"),
    }
}

type Front = GrantedRing<HostedPlatform, [u64; 2], [u64; 2]>;

#[test]
fn a_granted_ring_published_mapped_and_taken_back_while_mapped() {
    let dir = TestDir::new("granted-ring");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(FRONT).unwrap();
    let gt = front.grant_table().clone();
    let (free, pages) = (gt.free_count(), front.pages_in_use());
    let mut ring = Front::new(&front, BACK, 2).unwrap();
    assert_eq!(front.pages_in_use(), pages + 4);
    let entries = ring.xenstore_entries("ring-ref", RingRefLayout::PageOrder).unwrap();
    let published: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for i in 0..300u64 {
        ring.put_request([i, i * 3]).unwrap();
    }
    ring.push_requests();
    let mut child = ChildDomain::spawn(CHILD_TEST, "ring", &dir, &[("ENTRIES", published.join(";"))]);
    child.expect("answered 300");
    let mut got = 0u64;
    while let Some(rsp) = ring.take_response().unwrap() {
        assert_eq!(rsp, [got, got * 3 + 1]);
        got += 1;
    }
    assert_eq!(got, 300);
    // Taken back while the backend still maps it: all four pages are kept.
    let err = ring.end().unwrap_err();
    assert_eq!(err.in_use, 4);
    assert_eq!(gt.stats().quarantined_allocations, 1);
    assert_eq!(front.pages_in_use(), pages + 4, "no page of a mapped ring is freed");
    assert_eq!(gt.retry_quarantined(), 0);
    child.send("unmap");
    child.expect("unmapped");
    child.finish();
    assert_eq!(gt.retry_quarantined(), 4);
    assert_eq!((gt.free_count(), front.pages_in_use()), (free, pages));
}

fn child_ring(back: &HostedPlatform) {
    let entries: Vec<(String, String)> = std::env::var("ENTRIES")
        .unwrap()
        .split(';')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let refs =
        parse_ring_refs::<()>("ring-ref", 4, |k| Ok(entries.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())))
            .unwrap();
    assert_eq!(refs.len(), 4);
    // A backend that accepts only two pages refuses the ring.
    assert!(parse_ring_refs::<()>("ring-ref", 1, |k| Ok(entries
        .iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.clone())))
    .is_err());
    let mut ring = map_back_ring::<_, [u64; 2], [u64; 2]>(back, FRONT, &refs).unwrap();
    let mut n = 0;
    while let Some(req) = ring.take_request().unwrap() {
        ring.put_response([req[0], req[1] + 1]).unwrap();
        n += 1;
    }
    ring.push_responses();
    say(&format!("answered {n}"));
    assert_eq!(hear(), "unmap");
    drop(ring);
    for &r in &refs {
        assert_eq!(back.pin_counts(FRONT, r), (0, 0));
    }
    say("unmapped");
}

#[test]
fn a_pool_buffer_is_read_and_written_in_place_by_the_backend() {
    let dir = TestDir::new("pool-in-place");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(FRONT).unwrap();
    let pool = BufferPool::new(
        &front,
        BACK,
        PoolConfig { pages: 4, buffer_size: 2048, access: Access::ReadWrite, mode: PoolMode::Untrusted },
    )
    .unwrap();
    let _first = pool.take().unwrap();
    let mut buf = pool.take().unwrap();
    assert_eq!(buf.offset(), 2048, "the second buffer is the second half of the first page");
    buf.write_at(0, b"request payload").unwrap();
    let mut child = ChildDomain::spawn(
        CHILD_TEST,
        "pool",
        &dir,
        &[("GREF", buf.gref().to_string()), ("OFFSET", buf.offset().to_string())],
    );
    child.expect("replied");
    let mut reply = [0u8; 13];
    buf.read_at(0, &mut reply).unwrap();
    assert_eq!(&reply, b"reply payload");
    child.finish();
    drop(buf);
    // Untrusted: the buffer came back zeroed.
    let again: Vec<_> = std::iter::from_fn(|| pool.take()).collect();
    let reused = again.iter().find(|b| b.offset() == 2048 && b.page() == 0).unwrap();
    let mut z = [1u8; 16];
    reused.read_at(0, &mut z).unwrap();
    assert_eq!(z, [0; 16]);
}

fn child_pool(back: &HostedPlatform) {
    let (gref, offset) = (param("GREF") as u32, param("OFFSET") as usize);
    let ops = [
        MapOp { granter: FRONT, gref, access: Access::ReadWrite },
        MapOp { granter: FRONT, gref: 1 << 30, access: Access::ReadOnly },
        MapOp { granter: DomId(9), gref, access: Access::ReadOnly },
        MapOp { granter: FRONT, gref: 3, access: Access::ReadOnly },
    ];
    let mut maps = Vec::new();
    back.map_batch(&ops, &mut maps);
    let statuses: Vec<GntStatus> =
        maps.iter().map(|m| m.as_ref().err().map_or(GntStatus::Okay, |e| e.status)).collect();
    assert_eq!(statuses, [GntStatus::Okay, GntStatus::BadGntref, GntStatus::BadDomain, GntStatus::GeneralError]);
    let mut maps: Vec<_> = maps.into_iter().filter_map(Result::ok).collect();
    let m = &maps[0];
    assert_eq!(m.len(), PAGE_SIZE);
    let mut got = [0u8; 15];
    m.read_at(offset, &mut got).unwrap();
    assert_eq!(&got, b"request payload");
    m.write_at(offset, b"reply payload").unwrap();
    let mut st = Vec::new();
    back.unmap_batch(&mut maps, &mut st);
    assert_eq!(st, [GntStatus::Okay]);
    say("replied");
}
