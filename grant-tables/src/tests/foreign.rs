//! The backend seam on the fake platform: map, unmap and copy with Xen's
//! statuses, granted rings from both ends, and the xenstore entries of a
//! ring.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::abi::{
    GntCopyFlags, GntStatus, GnttabCopy, GnttabCopyPtr, GrantFlags, DOMID_SELF, PAGE_SIZE,
};
use crate::fake::{FakeEventHub, FakeGrantFrames, FakeGrantHub, FakePlatform};
use crate::foreign::{ForeignGrants, ForeignMapping, MapOp, MappingAccessError};
use crate::granted_ring::{
    map_back_ring, parse_ring_refs, ring_ref_entries, GrantedRing, GrantedRingError, RingRefLayout,
    RingRefsError,
};
use crate::platform::{DomId, PageAllocator, Platform, SharedPages};
use crate::table::Access;

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId(2);
const OTHER: DomId = DomId(3);

/// Entries per test table: small under Miri.
const ENTRIES: u32 = if cfg!(miri) { 48 } else { 512 };

fn machine() -> (FakePlatform, FakePlatform, alloc::sync::Arc<FakeGrantHub>) {
    let hub = FakeEventHub::new();
    let m = FakeGrantHub::new();
    let front = FakePlatform::with_grant_hub(
        FRONT,
        hub.clone(),
        FakeGrantFrames::with_entries(ENTRIES).unwrap(),
        &m,
    );
    let back = FakePlatform::with_grant_hub(
        BACK,
        hub,
        FakeGrantFrames::with_entries(ENTRIES).unwrap(),
        &m,
    );
    (front, back, m)
}

fn write_pages<P: SharedPages>(p: &P, byte: u8) {
    // SAFETY: the pages are ours, valid for `len_bytes`, not referenced.
    unsafe { crate::shared_mem::fill(p.as_ptr(), p.len_bytes(), 0, p.len_bytes(), byte) }.unwrap();
}

#[test]
fn map_batch_gives_each_op_xens_status() {
    let (front, back, _m) = machine();
    let gt = front.grant_table().unwrap();
    let rw_page = front.alloc_zeroed_pages(1).unwrap();
    let ro_page = front.alloc_zeroed_pages(1).unwrap();
    write_pages(&rw_page, 0xA1);
    write_pages(&ro_page, 0xB2);
    let rw = gt
        .grant_access(BACK, rw_page.gfn(0).unwrap(), Access::ReadWrite)
        .unwrap();
    let ro = gt
        .grant_access(BACK, ro_page.gfn(0).unwrap(), Access::ReadOnly)
        .unwrap();
    let other = gt
        .grant_access(OTHER, rw_page.gfn(0).unwrap(), Access::ReadWrite)
        .unwrap();
    let ended = gt
        .grant_access(BACK, rw_page.gfn(0).unwrap(), Access::ReadWrite)
        .unwrap();
    let ended_raw = ended.raw();
    gt.end_access(ended).unwrap();
    let op = |gref, access| MapOp {
        granter: FRONT,
        gref,
        access,
    };
    let ops = [
        op(rw.raw(), Access::ReadWrite),
        op(ro.raw(), Access::ReadOnly),
        op(other.raw(), Access::ReadOnly),
        op(ended_raw, Access::ReadOnly),
        op(ENTRIES, Access::ReadOnly),
        op(ro.raw(), Access::ReadWrite),
        MapOp {
            granter: DomId(9),
            gref: rw.raw(),
            access: Access::ReadOnly,
        },
    ];
    let mut out = Vec::new();
    back.map_batch(&ops, &mut out);
    let statuses: Vec<GntStatus> = out
        .iter()
        .map(|r| r.as_ref().err().map_or(GntStatus::Okay, |e| e.status))
        .collect();
    assert_eq!(
        statuses,
        [
            GntStatus::Okay,
            GntStatus::Okay,
            GntStatus::GeneralError,
            GntStatus::GeneralError,
            GntStatus::BadGntref,
            GntStatus::GeneralError,
            GntStatus::BadDomain,
        ]
    );
    let e = out[2].as_ref().unwrap_err();
    assert_eq!((e.granter, e.gref), (FRONT, other.raw()));
    assert!(e.to_string().contains("undefined error"), "{e}");
    let mut maps: Vec<_> = out.into_iter().filter_map(Result::ok).collect();
    assert_eq!(maps.len(), 2);
    let mut b = [0u8; 8];
    maps[0].read_at(PAGE_SIZE - 8, &mut b).unwrap();
    assert_eq!(b, [0xA1; 8]);
    maps[1].read_at(0, &mut b).unwrap();
    assert_eq!(b, [0xB2; 8]);
    assert_eq!(maps[1].write_at(0, &[1]), Err(MappingAccessError::ReadOnly));
    assert!(matches!(
        maps[0].read_at(PAGE_SIZE - 7, &mut b),
        Err(MappingAccessError::OutOfRange(_))
    ));
    maps[0].write_at(100, b"hello").unwrap();
    let mut got = [0u8; 5];
    // SAFETY: our own page, not referenced.
    unsafe { crate::shared_mem::read(rw_page.as_ptr(), PAGE_SIZE, 100, &mut got) }.unwrap();
    assert_eq!(
        &got, b"hello",
        "the backend's write reached the frontend's page"
    );
    // Mapped: the granter's flags say so and ending access is refused.
    assert!(gt.in_use_by_peer(&rw));
    assert_eq!(
        gt.flags_of(&ro),
        GrantFlags::PERMIT_ACCESS | GrantFlags::READONLY | GrantFlags::READING
    );
    assert!(
        !gt.in_use_by_peer(&other),
        "refused maps leave no flag behind"
    );
    let mut st = Vec::new();
    back.unmap_batch(&mut maps, &mut st);
    assert!(maps.is_empty());
    assert_eq!(st, [GntStatus::Okay, GntStatus::Okay]);
    for g in [rw, ro, other] {
        gt.end_access(g).unwrap();
    }
}

fn copy_op(
    source: GnttabCopyPtr,
    dest: GnttabCopyPtr,
    len: u16,
    flags: GntCopyFlags,
) -> GnttabCopy {
    GnttabCopy {
        source,
        dest,
        len,
        flags: flags.bits(),
        status: 1,
        _pad: 0,
    }
}

fn gref_ptr(dom: DomId, gref: u32, offset: u16) -> GnttabCopyPtr {
    GnttabCopyPtr {
        u: u64::from(gref),
        domid: dom.0,
        offset,
        _pad: 0,
    }
}

fn frame_ptr<P: SharedPages>(p: &P, offset: u16) -> GnttabCopyPtr {
    GnttabCopyPtr {
        u: p.gfn(0).unwrap().0,
        domid: DOMID_SELF,
        offset,
        _pad: 0,
    }
}

#[test]
fn copy_batch_copies_through_grants_with_xens_checks() {
    let (front, back, _m) = machine();
    let gt = front.grant_table().unwrap();
    let src = front.alloc_zeroed_pages(1).unwrap();
    let dst = front.alloc_zeroed_pages(1).unwrap();
    let pattern: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 251) as u8).collect();
    // SAFETY: our own page, not referenced.
    unsafe { crate::shared_mem::write(src.as_ptr(), PAGE_SIZE, 0, &pattern) }.unwrap();
    let g_src = gt
        .grant_access(BACK, src.gfn(0).unwrap(), Access::ReadOnly)
        .unwrap();
    let g_dst = gt
        .grant_access(BACK, dst.gfn(0).unwrap(), Access::ReadWrite)
        .unwrap();
    let local = back.alloc_zeroed_pages(1).unwrap();
    let foreign_frame = GnttabCopyPtr {
        u: src.gfn(0).unwrap().0,
        domid: DOMID_SELF,
        offset: 0,
        _pad: 0,
    };
    let (s, d, none) = (
        GntCopyFlags::SOURCE_GREF,
        GntCopyFlags::DEST_GREF,
        GntCopyFlags::empty(),
    );
    let mut ops = [
        copy_op(
            gref_ptr(FRONT, g_src.raw(), 100),
            frame_ptr(&local, 0),
            200,
            s,
        ),
        copy_op(
            frame_ptr(&local, 0),
            gref_ptr(FRONT, g_dst.raw(), 1000),
            200,
            d,
        ),
        copy_op(frame_ptr(&local, 0), gref_ptr(FRONT, g_src.raw(), 0), 8, d),
        copy_op(
            gref_ptr(FRONT, g_src.raw(), 4000),
            frame_ptr(&local, 0),
            200,
            s,
        ),
        copy_op(gref_ptr(FRONT, ENTRIES, 0), frame_ptr(&local, 0), 8, s),
        copy_op(
            GnttabCopyPtr {
                domid: BACK.0,
                ..frame_ptr(&local, 0)
            },
            gref_ptr(FRONT, g_dst.raw(), 0),
            8,
            d,
        ),
        copy_op(
            gref_ptr(DomId(9), g_src.raw(), 0),
            frame_ptr(&local, 0),
            8,
            s,
        ),
        // Another domain's frame named as our own.
        copy_op(foreign_frame, frame_ptr(&local, 0), 8, none),
        copy_op(frame_ptr(&local, 0), frame_ptr(&local, 2048), 2048, none),
    ];
    let failed = back.copy_batch(&mut ops);
    let want = [
        GntStatus::Okay,
        GntStatus::Okay,
        GntStatus::GeneralError,
        GntStatus::BadCopyArg,
        GntStatus::BadGntref,
        GntStatus::PermissionDenied,
        GntStatus::BadDomain,
        GntStatus::BadPage,
        GntStatus::Okay,
    ];
    for (i, (op, w)) in ops.iter().zip(want).enumerate() {
        assert_eq!(GntStatus::from_raw(op.status), Some(w), "op {i}");
    }
    assert_eq!(failed, 6);
    let mut got = [0u8; 200];
    // SAFETY: our own page, not referenced.
    unsafe { crate::shared_mem::read(dst.as_ptr(), PAGE_SIZE, 1000, &mut got) }.unwrap();
    assert_eq!(&got[..], &pattern[100..300]);
    // No pin left behind.
    assert!(!gt.in_use_by_peer(&g_src) && !gt.in_use_by_peer(&g_dst));
    gt.end_access(g_src).unwrap();
    gt.end_access(g_dst).unwrap();
}

type Front = GrantedRing<FakePlatform, [u64; 2], [u64; 2]>;

#[test]
fn a_granted_ring_from_both_ends_and_its_teardown_while_mapped() {
    let (front, back, m) = machine();
    let order = if cfg!(miri) { 1 } else { 2 };
    let pages = 1usize << order;
    let gt = front.grant_table().unwrap().clone();
    let before = gt.stats();
    let registered = m.registered_pages();
    let mut ring = Front::new(&front, BACK, order).unwrap();
    assert_eq!(
        (ring.order(), ring.page_count(), ring.peer()),
        (order, pages, BACK)
    );
    assert_eq!(m.registered_pages(), registered + pages);
    assert!(matches!(
        ring.xenstore_entries("ring-ref", RingRefLayout::Single),
        Err(GrantedRingError::SingleNeedsOnePage { .. })
    ));
    // Publish as blkfront does, read back as blkback does.
    let entries = ring
        .xenstore_entries("ring-ref", RingRefLayout::PageOrder)
        .unwrap();
    assert_eq!(entries.len(), pages + 1);
    assert_eq!(
        entries[0],
        ("ring-page-order".to_string(), order.to_string())
    );
    let store: BTreeMap<String, String> = entries.into_iter().collect();
    let refs = parse_ring_refs::<()>("ring-ref", 4, |k| Ok(store.get(k).cloned())).unwrap();
    assert_eq!(refs, ring.grefs());
    let n = if cfg!(miri) { 20 } else { 300 };
    for i in 0..n {
        ring.put_request([i, i * 3]).unwrap();
    }
    ring.push_requests();
    let mut back_ring = map_back_ring::<_, [u64; 2], [u64; 2]>(&back, FRONT, &refs).unwrap();
    let mut answered = 0;
    while let Some(req) = back_ring.take_request().unwrap() {
        back_ring.put_response([req[0], req[1] + 1]).unwrap();
        answered += 1;
    }
    back_ring.push_responses();
    assert_eq!(answered, n.min(u64::from(ring.size())));
    let mut got = 0u64;
    while let Some(rsp) = ring.take_response().unwrap() {
        assert_eq!(rsp, [got, got * 3 + 1]);
        got += 1;
    }
    assert_eq!(got, answered);
    // The frontend tears down while the backend still maps: the whole ring
    // is quarantined, no page freed.
    let err = ring.end().unwrap_err();
    assert_eq!(err.in_use, pages);
    assert_eq!(gt.stats().quarantined_allocations, 1);
    assert_eq!(
        m.registered_pages(),
        registered + pages,
        "no page of a mapped ring is freed"
    );
    assert_eq!(gt.retry_quarantined(), 0);
    drop(back_ring);
    assert_eq!(gt.retry_quarantined(), pages);
    assert_eq!(
        m.registered_pages(),
        registered,
        "freed once the backend let go"
    );
    let after = gt.stats();
    assert_eq!(
        (after.free, after.granted, after.quarantined),
        (before.free, 0, 0)
    );
}

#[test]
fn a_one_page_ring_publishes_either_layout() {
    let (front, back, _m) = machine();
    let ring = Front::new(&front, BACK, 0).unwrap();
    let r = ring.grefs()[0].to_string();
    assert_eq!(
        ring.xenstore_entries("tx-ring-ref", RingRefLayout::Single)
            .unwrap(),
        [("tx-ring-ref".to_string(), r.clone())]
    );
    assert_eq!(
        ring.xenstore_entries("ring-ref", RingRefLayout::PageOrder)
            .unwrap(),
        [
            ("ring-page-order".to_string(), "0".to_string()),
            ("ring-ref0".to_string(), r)
        ]
    );
    assert!(matches!(
        Front::new(&front, BACK, 5),
        Err(GrantedRingError::BadOrder(5))
    ));
    assert!(matches!(
        ring_ref_entries("ring-ref", &[1, 2, 3], RingRefLayout::PageOrder),
        Err(GrantedRingError::BadPageCount { pages: 3 })
    ));
    // A backend that is not granted the ring cannot map it.
    let stranger = FakePlatform::with_grant_hub(
        OTHER,
        FakeEventHub::new(),
        FakeGrantFrames::with_entries(16).unwrap(),
        &_m,
    );
    let e = stranger.map_ring_pages(FRONT, &ring.grefs()).unwrap_err();
    assert_eq!(e.status, GntStatus::GeneralError);
    assert!(back.map_ring_pages(FRONT, &[]).is_err());
    ring.end().unwrap();
}

fn parse(store: &[(&str, &str)], max: u8) -> Result<Vec<u32>, RingRefsError<&'static str>> {
    parse_ring_refs("ring-ref", max, |k| {
        if k == "fail" {
            return Err("transport down");
        }
        Ok(store
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string()))
    })
}

#[test]
fn ring_refs_from_the_frontend_are_checked() {
    assert_eq!(parse(&[("ring-ref", "8")], 0), Ok([8].to_vec()));
    assert_eq!(
        parse(
            &[
                ("ring-page-order", "1"),
                ("ring-ref0", "9"),
                ("ring-ref1", "4294967295")
            ],
            4
        ),
        Ok([9, u32::MAX].to_vec())
    );
    assert_eq!(
        parse(&[("ring-page-order", "0"), ("ring-ref0", "3")], 0),
        Ok([3].to_vec())
    );
    assert_eq!(
        parse(&[], 4),
        Err(RingRefsError::Missing("ring-ref".into()))
    );
    assert_eq!(
        parse(&[("ring-page-order", "2"), ("ring-ref0", "1")], 4),
        Err(RingRefsError::Missing("ring-ref1".into()))
    );
    assert_eq!(
        parse(&[("ring-page-order", "3")], 2),
        Err(RingRefsError::OrderTooLarge { order: 3, max: 2 })
    );
    assert_eq!(
        parse(&[("ring-page-order", "4294967295")], 4),
        Err(RingRefsError::OrderTooLarge {
            order: u32::MAX,
            max: 4
        })
    );
    for bad in [
        "",
        "-1",
        "+1",
        " 1",
        "1 ",
        "0x10",
        "4294967296",
        "99999999999",
        "1\0",
    ] {
        assert_eq!(
            parse(&[("ring-ref", bad)], 0),
            Err(RingRefsError::BadValue {
                key: "ring-ref".into(),
                value: bad.into()
            }),
            "{bad:?}"
        );
    }
    let e = parse_ring_refs("fail", 0, |_| Err::<Option<String>, _>("transport down")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "reading the frontend's ring-page-order: transport down"
    );
}
