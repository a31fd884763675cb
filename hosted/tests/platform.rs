//! The hosted platform as a whole: joining, memory, domain lifecycle, and a
//! shared ring driven by event channels (domains as threads here; the
//! multi-process tests are in `grants.rs` and `evtchn.rs`).

#[path = "platform_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::TestDir;
use grant_tables::{Access, BackRing, DomId, EventChannels, FrontRing, PageAllocator, Platform, SharedPages};
use hosted::{DomainConfig, HostedError, HostedHypervisor, HostedPlatform, MapFailure};

const A: DomId = DomId(1);
const B: DomId = DomId(2);

#[test]
fn joining_checks_domids_and_the_hypervisor() {
    let dir = TestDir::new("join");
    let err = HostedPlatform::join(&dir.0, A).unwrap_err();
    assert!(matches!(err, HostedError::Io { .. }), "{err}");
    assert!(err.to_string().contains("HostedHypervisor::create"), "{err}");

    let hv = HostedHypervisor::create(&dir.0).unwrap();
    assert!(HostedHypervisor::create(&dir.0).is_err(), "one hypervisor per directory");
    let a = hv.join(A).unwrap();
    assert_eq!(a.domid(), A);
    assert!(matches!(hv.join(A), Err(HostedError::DomidTaken(A))));
    assert!(matches!(hv.join(DomId(0x7FF0)), Err(HostedError::Invalid(_))));
    let bad = DomainConfig { memory_pages: 0, grant_frames: 1 };
    assert!(matches!(HostedPlatform::join_with(&dir.0, B, bad), Err(HostedError::Invalid(_))));
    assert_eq!(hv.domains(), vec![A]);

    // A domain that leaves frees its domid.
    drop(a);
    wait_until(|| hv.domains().is_empty());
    let again = hv.join(A).unwrap();
    assert_eq!(again.domid(), A);
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "condition not reached in 10 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn pages_are_zeroed_and_frames_are_memfd_pages() {
    let dir = TestDir::new("pages");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let cfg = DomainConfig { memory_pages: 64, grant_frames: 1 };
    let a = HostedPlatform::join_with(&dir.0, A, cfg).unwrap();
    let b = hv.join(B).unwrap();
    assert_eq!(a.memory_pages(), 64);

    let p = a.alloc_zeroed_pages(3).unwrap();
    assert_eq!(p.page_count(), 3);
    assert_eq!(p.as_ptr().as_ptr() as usize % 4096, 0);
    let g0 = p.gfn(0).unwrap().0;
    assert_eq!(p.gfn(2).unwrap().0, g0 + 2);
    assert_eq!(p.gfn(3), None);
    for i in 0..p.len_bytes() {
        // SAFETY: inside our own mapping of `len_bytes` bytes.
        unsafe { p.as_ptr().as_ptr().add(i).write_volatile(0xEE) };
    }
    // The peer maps exactly the granted frame (the middle page).
    let g = a.grant_table().grant_access(B, p.gfn(1).unwrap(), Access::ReadOnly).unwrap();
    let m = b.map_grant(A, g.raw(), Access::ReadOnly).unwrap();
    let mut buf = [0u8; 4096];
    m.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0xEE));
    drop(m);
    a.grant_table().end_access(g).unwrap();
    drop(p);
    assert_eq!(a.pages_in_use(), 0);

    // Freed pages come back zeroed.
    let q = a.alloc_zeroed_pages(64).unwrap();
    for i in 0..q.len_bytes() {
        // SAFETY: inside our own mapping.
        assert_eq!(unsafe { q.as_ptr().as_ptr().add(i).read_volatile() }, 0, "stale byte at {i}");
    }
    assert!(matches!(a.alloc_zeroed_pages(1), Err(grant_tables::PlatformError::OutOfMemory { pages: 1 })));
    drop(q);
    // Fragmented frees coalesce.
    let parts: Vec<_> = (0..8).map(|_| a.alloc_zeroed_pages(8).unwrap()).collect();
    drop(parts);
    assert_eq!(a.alloc_zeroed_pages(64).unwrap().page_count(), 64);
}

#[test]
fn a_departed_domain_is_noticed_and_its_domid_can_come_back() {
    let dir = TestDir::new("lifecycle");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let a = hv.join(A).unwrap();
    let b = hv.join(B).unwrap();
    let pb = b.alloc_unbound(A).unwrap();
    let pa = a.bind_interdomain(B, pb).unwrap();
    let page = b.alloc_zeroed_pages(1).unwrap();
    let g = b.grant_table().grant_access(A, page.gfn(0).unwrap(), Access::ReadOnly).unwrap();
    drop(a.map_grant(B, g.raw(), Access::ReadOnly).unwrap());
    assert!(a.domain_exists(B));

    // B goes away (without ending its grant: its table goes with it).
    let _ = g;
    drop(page);
    drop(b);
    wait_until(|| !a.domain_exists(B));
    a.notify(pa).expect("notifying a departed domain is harmless");
    let e = a.map_grant(B, 8, Access::ReadOnly).unwrap_err();
    assert!(matches!(e.failure, MapFailure::NoSuchDomain(_)), "{e}");

    // A new dom2 joins: A maps the new incarnation's grants.
    let b2 = hv.join(B).unwrap();
    let page2 = b2.alloc_zeroed_pages(1).unwrap();
    // SAFETY: inside our own one-page mapping.
    unsafe { page2.as_ptr().as_ptr().write_volatile(0x2B) };
    let g2 = b2.grant_table().grant_access(A, page2.gfn(0).unwrap(), Access::ReadOnly).unwrap();
    let m = a.map_grant(B, g2.raw(), Access::ReadOnly).unwrap();
    let mut x = [0u8; 1];
    m.read(0, &mut x).unwrap();
    assert_eq!(x, [0x2B]);
    drop(m);
    b2.grant_table().end_access(g2).unwrap();
    // And event channels to it work.
    let p2 = b2.alloc_unbound(A).unwrap();
    let q2 = a.bind_interdomain(B, p2).unwrap();
    a.notify(q2).unwrap();
    assert!(b2.block(p2, Some(1_000_000_000)).unwrap());
}

/// A front and a back ring between two domains (threads), each side
/// blocking on its event channel between messages: a lost wakeup would
/// hang a side until its timeout and fail the test.
#[test]
fn ring_ping_pong_with_blocking_event_channels_loses_no_wakeup() {
    const ROUNDS: u64 = 5_000;
    let dir = TestDir::new("ring-pp");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(A).unwrap();
    let back = hv.join(B).unwrap();
    let pages = front.alloc_zeroed_pages(2).unwrap();
    let refs: Vec<_> = (0..2)
        .map(|i| front.grant_table().grant_access(B, pages.gfn(i).unwrap(), Access::ReadWrite).unwrap())
        .collect();
    let raw: Vec<u32> = refs.iter().map(|r| r.raw()).collect();
    let fport = front.alloc_unbound(B).unwrap();
    let mut ring: FrontRing<u64, u64, _> = FrontRing::init(pages).unwrap();

    let back_thread = std::thread::spawn(move || {
        let bport = back.bind_interdomain(A, fport).unwrap();
        let mem = back.map_ring(A, &raw).unwrap();
        let mut ring: BackRing<u64, u64, _> = BackRing::attach(mem, 0).unwrap();
        let mut served = 0;
        while served < ROUNDS {
            while let Some(req) = ring.take_request().unwrap() {
                ring.put_response(req + 1).unwrap();
                served += 1;
            }
            if ring.push_responses() {
                back.notify(bport).unwrap();
            }
            if served < ROUNDS && !ring.final_check_for_requests().unwrap() {
                assert!(back.block(bport, Some(10_000_000_000)).unwrap(), "back: lost wakeup after {served}");
            }
        }
        back.event_stats()
    });

    for i in 0..ROUNDS {
        ring.put_request(i).unwrap();
        if ring.push_requests() {
            front.notify(fport).unwrap();
        }
        loop {
            if let Some(rsp) = ring.take_response().unwrap() {
                assert_eq!(rsp, i + 1);
                break;
            }
            if !ring.final_check_for_responses().unwrap() {
                assert!(front.block(fport, Some(10_000_000_000)).unwrap(), "front: lost wakeup at {i}");
            }
        }
    }
    let back_stats = back_thread.join().unwrap();
    // Blocking both ways costs eventfd writes, but never more than one per
    // notify.
    assert!(front.event_stats().wakeups_sent <= ROUNDS);
    assert!(back_stats.wakeups_sent <= ROUNDS);
    let mem = ring.into_memory();
    for r in refs {
        front.grant_table().end_access(r).unwrap();
    }
    drop(mem);
}

/// Reads the clock through the `Platform` seam, as a driver does.
fn now<P: Platform>(p: &P) -> u64 {
    p.now_ns()
}

#[test]
fn the_clock_is_monotonic_and_moves_with_real_time() {
    let dir = TestDir::new("clock");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let a = hv.join(A).unwrap();
    let b = hv.join(B).unwrap();
    let threads: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|d| {
            std::thread::spawn(move || {
                let mut last = now(&d);
                for _ in 0..200_000 {
                    let t = now(&d);
                    assert!(t >= last, "the clock went back from {last} to {t}");
                    last = t;
                }
                last
            })
        })
        .collect();
    let ends: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // One clock per process: the two domains read the same one.
    let t0 = now(&a);
    assert!(ends.iter().all(|&e| e <= t0), "{ends:?} then {t0}");
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    let dt = now(&b) - t0;
    assert!(dt >= 20_000_000, "20 ms of sleep moved the clock {dt} ns");
    assert!(u128::from(dt) <= start.elapsed().as_nanos() + 1_000_000, "the clock ran ahead: {dt} ns");
}
