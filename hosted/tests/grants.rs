//! Grant map, unmap and copy across processes: the parent is dom1 (the
//! granting frontend, and the hypervisor), a child process is dom2 (the
//! backend that maps).

#[path = "platform_common/mod.rs"]
mod common;

use std::os::unix::process::ExitStatusExt;

use common::{child_dir, hear, param, role, say, ChildDomain, TestDir};
use grant_tables::abi::{GntCopyFlags, GntStatus, GnttabCopy, GnttabCopyPtr, GrantFlags, DOMID_SELF, PAGE_SIZE};
use grant_tables::emulated::MapRefusal;
use grant_tables::{Access, BackRing, DomId, FrontRing, GrantError, GrantRef, PageAllocator, SharedPages};
use hosted::{HostedHypervisor, HostedPages, HostedPlatform, MapFailure};

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId(2);
const CHILD_TEST: &str = "child";

fn fill(pages: &HostedPages, byte: u8) {
    let p = pages.as_ptr().as_ptr();
    for i in 0..pages.len_bytes() {
        // SAFETY: inside our own mapping of `len_bytes` bytes.
        unsafe { p.add(i).write_volatile(byte) };
    }
}

fn byte_at(pages: &HostedPages, off: usize) -> u8 {
    assert!(off < pages.len_bytes());
    // SAFETY: inside our own mapping (checked).
    unsafe { pages.as_ptr().as_ptr().add(off).read_volatile() }
}

fn flags(front: &HostedPlatform, g: &GrantRef) -> GrantFlags {
    front.grant_table().flags_of(g)
}

fn busy() -> GrantFlags {
    GrantFlags::READING | GrantFlags::WRITING
}

/// The child entry point: runs the role the parent asked for.
#[test]
fn child() {
    let Some(role) = role() else { return };
    let back = HostedPlatform::join(child_dir(), BACK).expect("child joins as dom2");
    match role.as_str() {
        "map_checks" => child_map_checks(&back),
        "ro_write" => child_ro_write(&back),
        "pins" => child_pins(&back),
        "copy" => child_copy(&back),
        "xsa396" => child_xsa396(&back),
        "ring" => child_ring(&back),
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn map_checks_refuse_wrong_domain_ended_out_of_range_and_readonly() {
    let dir = TestDir::new("map-checks");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(FRONT).unwrap();
    let gt = front.grant_table();
    let rw_page = front.alloc_zeroed_pages(1).unwrap();
    let ro_page = front.alloc_zeroed_pages(1).unwrap();
    let other_page = front.alloc_zeroed_pages(1).unwrap();
    fill(&rw_page, 0xA1);
    fill(&ro_page, 0xB2);
    let rw = gt.grant_access(BACK, rw_page.gfn(0).unwrap(), Access::ReadWrite).unwrap();
    let ro = gt.grant_access(BACK, ro_page.gfn(0).unwrap(), Access::ReadOnly).unwrap();
    let other = gt.grant_access(DomId(3), other_page.gfn(0).unwrap(), Access::ReadWrite).unwrap();
    let ended = gt.grant_access(BACK, other_page.gfn(0).unwrap(), Access::ReadWrite).unwrap();
    let ended_raw = ended.raw();
    gt.end_access(ended).unwrap();

    let mut child = ChildDomain::spawn(
        CHILD_TEST,
        "map_checks",
        &dir,
        &[
            ("RW", rw.raw().to_string()),
            ("RO", ro.raw().to_string()),
            ("OTHER", other.raw().to_string()),
            ("ENDED", ended_raw.to_string()),
            ("CAPACITY", gt.capacity().to_string()),
        ],
    );
    child.expect("mapped");
    // While mapped: the hypervisor set the flags in our table.
    assert_eq!(flags(&front, &rw), GrantFlags::PERMIT_ACCESS | busy());
    assert_eq!(flags(&front, &ro), GrantFlags::PERMIT_ACCESS | GrantFlags::READONLY | GrantFlags::READING);
    assert_eq!(flags(&front, &other), GrantFlags::PERMIT_ACCESS, "refused maps leave no flag behind");
    assert_eq!(byte_at(&rw_page, 7), 0x5C, "the child's write through the mapping reached our page");
    child.send("unmap");
    child.expect("unmapped");
    assert_eq!(flags(&front, &rw), GrantFlags::PERMIT_ACCESS);
    assert_eq!(flags(&front, &ro), GrantFlags::PERMIT_ACCESS | GrantFlags::READONLY);
    child.finish();
    gt.end_access(rw).unwrap();
    gt.end_access(ro).unwrap();
    gt.end_access(other).unwrap();
}

fn child_map_checks(back: &HostedPlatform) {
    let (rw, ro, other, ended, cap) =
        (param("RW") as u32, param("RO") as u32, param("OTHER") as u32, param("ENDED") as u32, param("CAPACITY") as u32);

    // Foreign: granted to dom3.
    let e = back.map_grant(FRONT, other, Access::ReadWrite).unwrap_err();
    assert_eq!(e.failure, MapFailure::Refused(MapRefusal::WrongDomain { granted_to: 3 }));
    assert_eq!(e.status(), GntStatus::GeneralError);
    let msg = e.to_string();
    assert!(msg.contains(&format!("grant ref {other}")) && msg.contains("dom1") && msg.contains("dom2"), "{msg}");
    // Ended.
    let e = back.map_grant(FRONT, ended, Access::ReadOnly).unwrap_err();
    assert_eq!(e.failure, MapFailure::Refused(MapRefusal::NotGranted));
    assert!(e.to_string().contains(&format!("grant ref {ended}")), "{e}");
    // Out of range.
    for bad in [cap, cap + 1, u32::MAX] {
        let e = back.map_grant(FRONT, bad, Access::ReadOnly).unwrap_err();
        assert_eq!(e.failure, MapFailure::Refused(MapRefusal::OutOfRange));
        assert_eq!(e.status(), GntStatus::BadGntref);
    }
    // Writable map of a read-only grant.
    let e = back.map_grant(FRONT, ro, Access::ReadWrite).unwrap_err();
    assert_eq!(e.failure, MapFailure::Refused(MapRefusal::ReadOnly));
    // A domain that is not running.
    let e = back.map_grant(DomId(9), rw, Access::ReadOnly).unwrap_err();
    assert!(matches!(e.failure, MapFailure::NoSuchDomain(_)), "{e}");
    assert_eq!(e.status(), GntStatus::BadDomain);

    let m_rw = back.map_grant(FRONT, rw, Access::ReadWrite).unwrap();
    let m_ro = back.map_grant(FRONT, ro, Access::ReadOnly).unwrap();
    assert_eq!(m_rw.len(), PAGE_SIZE);
    let mut b = [0u8; 16];
    m_rw.read(0, &mut b).unwrap();
    assert_eq!(b, [0xA1; 16]);
    m_ro.read(PAGE_SIZE - 16, &mut b).unwrap();
    assert_eq!(b, [0xB2; 16]);
    assert!(m_ro.write(0, &[1]).is_none(), "read-only mapping refuses writes");
    assert!(m_rw.read(PAGE_SIZE - 1, &mut b).is_none(), "reads past the page are refused");
    m_rw.write(7, &[0x5C]).unwrap();
    assert_eq!(back.pin_counts(FRONT, rw), (1, 1));
    assert_eq!(back.pin_counts(FRONT, ro), (1, 0));
    say("mapped");
    assert_eq!(hear(), "unmap");
    back.unmap(m_rw);
    drop(m_ro);
    assert_eq!(back.pin_counts(FRONT, rw), (0, 0));
    say("unmapped");
}

#[test]
fn read_only_grant_is_mapped_read_only_so_a_write_faults() {
    let dir = TestDir::new("ro-fault");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(FRONT).unwrap();
    let page = front.alloc_zeroed_pages(1).unwrap();
    fill(&page, 0x42);
    let g = front.grant_table().grant_access(BACK, page.gfn(0).unwrap(), Access::ReadOnly).unwrap();
    let mut child = ChildDomain::spawn(CHILD_TEST, "ro_write", &dir, &[("GREF", g.raw().to_string())]);
    child.expect("read ok; writing");
    let status = child.wait();
    assert_eq!(status.signal(), Some(libc::SIGSEGV), "the write must fault, got {status:?}");
    assert_eq!(byte_at(&page, 0), 0x42, "the page is unchanged");
    // The dead backend never unmapped; the hypervisor releases its pins
    // when it notices the death (as Xen does), so the end of access
    // succeeds, at once or on a retry once the quarantine is retried.
    let gt = front.grant_table();
    let pages_before = front.pages_in_use();
    if gt.end_access_with_page(g, page).is_err() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gt.retry_quarantined() == 0 {
            assert!(std::time::Instant::now() < deadline, "the dead backend's pins were never released");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    assert_eq!(front.pages_in_use(), pages_before - 1, "the page is freed once the grant ended");
    assert_eq!(gt.quarantined_count(), 0);
}

fn child_ro_write(back: &HostedPlatform) {
    let m = back.map_grant(FRONT, param("GREF") as u32, Access::ReadOnly).unwrap();
    // SAFETY: inside the one-page mapping; a volatile read.
    assert_eq!(unsafe { m.as_ptr().as_ptr().read_volatile() }, 0x42);
    say("read ok; writing");
    // SAFETY: the mapping is valid for reads of one page; it is mapped
    // PROT_READ, so this write is expected to kill the process with SIGSEGV.
    unsafe { m.as_ptr().as_ptr().write_volatile(1) };
    panic!("a write to a read-only grant mapping did not fault");
}

#[test]
fn pin_counts_keep_flags_until_the_last_unmap() {
    let dir = TestDir::new("pins");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(FRONT).unwrap();
    let page = front.alloc_zeroed_pages(1).unwrap();
    fill(&page, 0x33);
    let g = front.grant_table().grant_access(BACK, page.gfn(0).unwrap(), Access::ReadWrite).unwrap();
    let mut child = ChildDomain::spawn(CHILD_TEST, "pins", &dir, &[("GREF", g.raw().to_string())]);
    child.expect("rw+ro");
    assert_eq!(flags(&front, &g), GrantFlags::PERMIT_ACCESS | busy());
    child.send("next");
    child.expect("copied");
    assert_eq!(flags(&front, &g), GrantFlags::PERMIT_ACCESS | busy(), "a copy does not drop the mappings' flags");
    child.send("next");
    child.expect("ro");
    assert_eq!(flags(&front, &g), GrantFlags::PERMIT_ACCESS | GrantFlags::READING, "writing cleared with the last writer");
    assert!(front.grant_table().in_use_by_peer(&g));
    child.send("next");
    child.expect("none");
    assert_eq!(flags(&front, &g), GrantFlags::PERMIT_ACCESS);
    child.finish();
    front.grant_table().end_access(g).expect("ends once nothing maps it");
}

fn child_pins(back: &HostedPlatform) {
    let g = param("GREF") as u32;
    let a = back.map_grant(FRONT, g, Access::ReadWrite).unwrap();
    let b = back.map_grant(FRONT, g, Access::ReadOnly).unwrap();
    let c = back.map_grant(FRONT, g, Access::ReadWrite).unwrap();
    assert_eq!(back.pin_counts(FRONT, g), (3, 2));
    assert_ne!(a.as_ptr(), c.as_ptr(), "each map is its own mapping");
    a.write(0, &[9]).unwrap();
    let mut x = [0u8; 1];
    b.read(0, &mut x).unwrap();
    assert_eq!(x, [9], "both mappings are the same page");
    say("rw+ro");
    assert_eq!(hear(), "next");
    // A copy pins and unpins the same entry while it is mapped.
    let local = back.alloc_zeroed_pages(1).unwrap();
    let mut op = [copy_op(gref_ptr(FRONT, g, 0), frame_ptr(&local, 0), 64, GntCopyFlags::SOURCE_GREF)];
    assert_eq!(back.grant_copy(&mut op), 0);
    assert_eq!(op[0].status, GntStatus::Okay.raw());
    assert_eq!(back.pin_counts(FRONT, g), (3, 2));
    say("copied");
    assert_eq!(hear(), "next");
    drop(a);
    drop(c);
    assert_eq!(back.pin_counts(FRONT, g), (1, 0));
    say("ro");
    assert_eq!(hear(), "next");
    drop(b);
    assert_eq!(back.pin_counts(FRONT, g), (0, 0));
    say("none");
}

fn gref_ptr(dom: DomId, gref: u32, offset: u16) -> GnttabCopyPtr {
    GnttabCopyPtr { u: u64::from(gref), domid: dom.0, offset, _pad: 0 }
}

fn frame_ptr(pages: &HostedPages, offset: u16) -> GnttabCopyPtr {
    GnttabCopyPtr { u: pages.gfn(0).unwrap().0, domid: DOMID_SELF, offset, _pad: 0 }
}

fn copy_op(source: GnttabCopyPtr, dest: GnttabCopyPtr, len: u16, flags: GntCopyFlags) -> GnttabCopy {
    GnttabCopy { source, dest, len, flags: flags.bits(), status: 1, _pad: 0 }
}

#[test]
fn grant_copy_checks_each_op_with_xen_status_codes() {
    let dir = TestDir::new("copy");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(FRONT).unwrap();
    let gt = front.grant_table();
    let src = front.alloc_zeroed_pages(1).unwrap();
    let dst = front.alloc_zeroed_pages(1).unwrap();
    let ro_dst = front.alloc_zeroed_pages(1).unwrap();
    for i in 0..PAGE_SIZE {
        // SAFETY: inside our own one-page mapping.
        unsafe { src.as_ptr().as_ptr().add(i).write_volatile((i % 251) as u8) };
    }
    let g_src = gt.grant_access(BACK, src.gfn(0).unwrap(), Access::ReadOnly).unwrap();
    let g_dst = gt.grant_access(BACK, dst.gfn(0).unwrap(), Access::ReadWrite).unwrap();
    let g_ro = gt.grant_access(BACK, ro_dst.gfn(0).unwrap(), Access::ReadOnly).unwrap();
    let g_other = gt.grant_access(DomId(3), dst.gfn(0).unwrap(), Access::ReadWrite).unwrap();
    let ended = gt.grant_access(BACK, dst.gfn(0).unwrap(), Access::ReadWrite).unwrap();
    let ended_raw = ended.raw();
    gt.end_access(ended).unwrap();
    let mut child = ChildDomain::spawn(
        CHILD_TEST,
        "copy",
        &dir,
        &[
            ("SRC", g_src.raw().to_string()),
            ("DST", g_dst.raw().to_string()),
            ("RO", g_ro.raw().to_string()),
            ("OTHER", g_other.raw().to_string()),
            ("ENDED", ended_raw.to_string()),
            ("CAPACITY", gt.capacity().to_string()),
        ],
    );
    child.expect("done");
    // The child copied our bytes 100..300 into its page and back into our
    // destination at offset 1000.
    for i in 0..200 {
        assert_eq!(byte_at(&dst, 1000 + i), ((100 + i) % 251) as u8);
    }
    assert_eq!(byte_at(&dst, 999), 0);
    assert_eq!(byte_at(&dst, 1200), 0);
    assert!(
        (0..PAGE_SIZE).all(|i| byte_at(&ro_dst, i) == 0),
        "nothing was written through the read-only grant"
    );
    // No pin left behind by any op, failed or not.
    for g in [&g_src, &g_dst, &g_ro, &g_other] {
        assert!(!flags(&front, g).intersects(busy()), "{:?}", flags(&front, g));
    }
    child.finish();
    for g in [g_src, g_dst, g_ro, g_other] {
        gt.end_access(g).unwrap();
    }
}

fn child_copy(back: &HostedPlatform) {
    let (src, dst, ro, other, ended, cap) = (
        param("SRC") as u32,
        param("DST") as u32,
        param("RO") as u32,
        param("OTHER") as u32,
        param("ENDED") as u32,
        param("CAPACITY") as u32,
    );
    let local = back.alloc_zeroed_pages(1).unwrap();
    let s = GntCopyFlags::SOURCE_GREF;
    let d = GntCopyFlags::DEST_GREF;
    let none = GntCopyFlags::empty();
    let mut ops = vec![
        // 0: their granted page -> our frame.
        copy_op(gref_ptr(FRONT, src, 100), frame_ptr(&local, 0), 200, s),
        // 1: our frame -> their granted page.
        copy_op(frame_ptr(&local, 0), gref_ptr(FRONT, dst, 1000), 200, d),
        // 2: writing through a read-only grant.
        copy_op(frame_ptr(&local, 0), gref_ptr(FRONT, ro, 0), 8, d),
        // 3-5: past the end of a page, on either side.
        copy_op(gref_ptr(FRONT, src, 4000), frame_ptr(&local, 0), 200, s),
        copy_op(frame_ptr(&local, 0), gref_ptr(FRONT, dst, 4095), 2, d),
        copy_op(gref_ptr(FRONT, src, 0), frame_ptr(&local, 0), 4097, s),
        // 6: ref outside the table.
        copy_op(gref_ptr(FRONT, cap, 0), frame_ptr(&local, 0), 8, s),
        // 7: ended ref.
        copy_op(gref_ptr(FRONT, ended, 0), frame_ptr(&local, 0), 8, s),
        // 8: ref granted to dom3.
        copy_op(frame_ptr(&local, 0), gref_ptr(FRONT, other, 0), 8, d),
        // 9: a frame side named by a domid other than DOMID_SELF.
        copy_op(GnttabCopyPtr { u: local.gfn(0).unwrap().0, domid: BACK.0, offset: 0, _pad: 0 }, gref_ptr(FRONT, dst, 0), 8, d),
        // 10: a domain that is not running.
        copy_op(gref_ptr(DomId(9), src, 0), frame_ptr(&local, 0), 8, s),
        // 11: our own frame out of range.
        copy_op(GnttabCopyPtr { u: 1 << 40, domid: DOMID_SELF, offset: 0, _pad: 0 }, frame_ptr(&local, 0), 8, none),
        // 12: a whole page, frame to frame within our memory.
        copy_op(frame_ptr(&local, 0), frame_ptr(&local, 0), 4096, none),
    ];
    let failed = back.grant_copy(&mut ops);
    let want = [
        GntStatus::Okay,
        GntStatus::Okay,
        GntStatus::GeneralError,
        GntStatus::BadCopyArg,
        GntStatus::BadCopyArg,
        GntStatus::BadCopyArg,
        GntStatus::BadGntref,
        GntStatus::GeneralError,
        GntStatus::GeneralError,
        GntStatus::PermissionDenied,
        GntStatus::BadDomain,
        GntStatus::BadPage,
        GntStatus::Okay,
    ];
    for (i, (op, w)) in ops.iter().zip(want).enumerate() {
        assert_eq!(GntStatus::from_raw(op.status), Some(w), "op {i}");
    }
    assert_eq!(failed, want.iter().filter(|&&w| w != GntStatus::Okay).count());
    for i in 0..200 {
        // SAFETY: inside our own one-page mapping.
        let b = unsafe { local.as_ptr().as_ptr().add(i).read_volatile() };
        assert_eq!(b, ((100 + i) % 251) as u8);
    }
    for g in [src, dst, ro, other] {
        assert_eq!(back.pin_counts(FRONT, g), (0, 0));
    }
    say("done");
}

#[test]
fn xsa396_ending_a_mapped_grant_quarantines_ref_and_page_until_the_unmap() {
    let dir = TestDir::new("xsa396");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(FRONT).unwrap();
    let gt = front.grant_table();
    let page = front.alloc_zeroed_pages(1).unwrap();
    fill(&page, 0x77);
    let gfn = page.gfn(0).unwrap();
    let g = gt.grant_access(BACK, gfn, Access::ReadWrite).unwrap();
    let q = g.raw();
    let mut child = ChildDomain::spawn(CHILD_TEST, "xsa396", &dir, &[("GREF", q.to_string())]);
    child.expect("mapped");

    // The peer still maps the page: ending access must fail, and the table
    // keeps both the ref and the page.
    let err = gt.end_access_with_page(g, page).unwrap_err();
    assert_eq!(err.gref, q);
    assert!(err.flags.contains(GrantFlags::READING | GrantFlags::WRITING), "{err}");
    assert_eq!(gt.quarantined_count(), 1);
    assert_eq!(front.pages_in_use(), 1, "the quarantined page is kept, not freed");

    // Grant every remaining ref: the quarantined one never comes back.
    let spare = front.alloc_zeroed_pages(1).unwrap();
    let mut live = Vec::new();
    loop {
        match gt.grant_access(BACK, spare.gfn(0).unwrap(), Access::ReadOnly) {
            Ok(r) => {
                assert_ne!(r.raw(), q, "the quarantined ref was handed out again");
                live.push(r);
            }
            Err(GrantError::NoFreeRefs { quarantined, .. }) => {
                assert_eq!(quarantined, 1);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(live.len() as u32, gt.capacity() - 8 - 1, "every ref but the reserved and quarantined ones");
    for r in live {
        gt.end_access(r).unwrap();
    }
    // Nor is the page's frame handed out again.
    let many = front.alloc_zeroed_pages(64).unwrap();
    assert!((0..64).all(|i| many.gfn(i) != Some(gfn)));
    drop(many);

    // The peer's view of the page is intact.
    child.send("check");
    child.expect("intact");
    child.send("unmap");
    child.expect("unmapped");
    // Unmapped: the ref stays out until a retry ends it; then it and its
    // page come back.
    assert_eq!(gt.quarantined_count(), 1, "only a successful end releases a ref");
    let in_use = front.pages_in_use();
    assert_eq!(gt.retry_quarantined(), 1);
    assert_eq!(gt.quarantined_count(), 0);
    assert_eq!(front.pages_in_use(), in_use - 1, "the page is freed once its grant ended");

    // After the unmap, a fresh grant maps, unmaps and ends normally.
    let fresh = gt.grant_access(BACK, spare.gfn(0).unwrap(), Access::ReadWrite).unwrap();
    child.send(&format!("map {}", fresh.raw()));
    child.expect("mapped");
    assert!(gt.in_use_by_peer(&fresh));
    child.send("unmap");
    child.expect("unmapped");
    gt.end_access(fresh).expect("a grant nobody maps ends");
    child.finish();
}

fn child_xsa396(back: &HostedPlatform) {
    let mut m = Some(back.map_grant(FRONT, param("GREF") as u32, Access::ReadWrite).unwrap());
    say("mapped");
    loop {
        let cmd = hear();
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["check"] => {
                let mut b = [0u8; PAGE_SIZE];
                m.as_ref().unwrap().read(0, &mut b).unwrap();
                assert!(b.iter().all(|&x| x == 0x77));
                say("intact");
            }
            ["unmap"] => {
                m = None;
                say("unmapped");
            }
            ["map", g] => {
                m = Some(back.map_grant(FRONT, g.parse().unwrap(), Access::ReadWrite).unwrap());
                say("mapped");
            }
            [] => return,
            _ => panic!("unknown command {cmd:?}"),
        }
    }
}

#[test]
fn multi_page_ring_maps_refs_contiguously_for_a_back_ring() {
    const PAGES: usize = 4;
    let dir = TestDir::new("ring");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(FRONT).unwrap();
    let ring_pages = front.alloc_zeroed_pages(PAGES).unwrap();
    let refs: Vec<GrantRef> = (0..PAGES)
        .map(|i| front.grant_table().grant_access(BACK, ring_pages.gfn(i).unwrap(), Access::ReadWrite).unwrap())
        .collect();
    let list = refs.iter().map(|r| r.raw().to_string()).collect::<Vec<_>>().join(",");
    let mut ring: FrontRing<[u64; 2], [u64; 2], HostedPages> = FrontRing::init(ring_pages).unwrap();
    for i in 0..300u64 {
        ring.put_request([i, i * 3]).unwrap();
    }
    let _ = ring.push_requests();
    let mut child = ChildDomain::spawn(CHILD_TEST, "ring", &dir, &[("REFS", list)]);
    child.expect("answered 300");
    let mut got = 0u64;
    while let Some(rsp) = ring.take_response().unwrap() {
        assert_eq!(rsp, [got, got * 3 + 1]);
        got += 1;
    }
    assert_eq!(got, 300);
    child.send("unmap");
    child.expect("unmapped");
    child.finish();
    let mem = ring.into_memory();
    for r in refs {
        front.grant_table().end_access(r).unwrap();
    }
    drop(mem);
}

fn child_ring(back: &HostedPlatform) {
    let refs: Vec<u32> = std::env::var("REFS").unwrap().split(',').map(|s| s.parse().unwrap()).collect();
    assert!(back.map_ring(FRONT, &[]).is_err());
    assert!(back.map_ring(FRONT, &[refs[0]; 17]).is_err());
    let mem = back.map_ring(FRONT, &refs).unwrap();
    assert_eq!(mem.mapping().len(), refs.len() * PAGE_SIZE);
    let mut ring: BackRing<[u64; 2], [u64; 2], _> = BackRing::attach(mem, 0).unwrap();
    assert_eq!(ring.size(), 512);
    let mut n = 0;
    while let Some(req) = ring.take_request().unwrap() {
        ring.put_response([req[0], req[1] + 1]).unwrap();
        n += 1;
    }
    let _ = ring.push_responses();
    say(&format!("answered {n}"));
    assert_eq!(hear(), "unmap");
    drop(ring);
    for &r in &refs {
        assert_eq!(back.pin_counts(FRONT, r), (0, 0));
    }
    say("unmapped");
}
