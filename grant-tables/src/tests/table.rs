//! Grant table unit tests: entry layout, free list, quarantine (XSA-396).

use alloc::vec::Vec;

use crate::abi::{GrantEntryV1, GrantFlags, GNTTAB_NR_RESERVED_ENTRIES};
use crate::emulated::MapRefusal;
use crate::fake::{FakeGrantFrames, FakeGrantPeer};
use crate::platform::{DomId, Gfn};
use crate::table::{Access, EndAccessError, GrantError, GrantTable};

const PEER: DomId = DomId(7);

/// Entries in the test tables: a page natively, fewer under Miri (which
/// interprets every free-list operation).
const ENTRIES: u32 = if cfg!(miri) { 40 } else { 512 };

fn table() -> (GrantTable<FakeGrantFrames>, FakeGrantPeer) {
    let frames = FakeGrantFrames::with_entries(ENTRIES).unwrap();
    let peer = frames.peer();
    (GrantTable::new(frames), peer)
}

#[test]
fn grant_writes_a_v1_entry() {
    let (t, frames) = table();
    let g = t
        .grant_access(PEER, Gfn(0x1234), Access::ReadWrite)
        .unwrap();
    assert!(g.raw() >= GNTTAB_NR_RESERVED_ENTRIES);
    assert_eq!(
        frames.entry(g.raw()).unwrap(),
        GrantEntryV1 {
            flags: 1,
            domid: 7,
            frame: 0x1234
        }
    );
    let r = t.grant_access(PEER, Gfn(0x99), Access::ReadOnly).unwrap();
    assert_eq!(
        frames.entry(r.raw()).unwrap().flags,
        (GrantFlags::PERMIT_ACCESS | GrantFlags::READONLY).bits()
    );
    t.end_access(g).unwrap();
    t.end_access(r).unwrap();
}

#[test]
fn ending_clears_the_entry_and_recycles_the_ref() {
    let (t, frames) = table();
    let before = t.free_count();
    let g = t.grant_access(PEER, Gfn(1), Access::ReadWrite).unwrap();
    let n = g.raw();
    assert_eq!(t.free_count(), before - 1);
    t.end_access(g).unwrap();
    assert_eq!(frames.entry(n).unwrap().flags, 0);
    assert_eq!(t.free_count(), before);
}

#[test]
fn refuses_reserved_domains_and_wide_frames() {
    let (t, _) = table();
    assert_eq!(
        t.grant_access(DomId(0x7FF0), Gfn(1), Access::ReadWrite),
        Err(GrantError::BadDomain(DomId(0x7FF0)))
    );
    assert_eq!(
        t.grant_access(PEER, Gfn(1 << 32), Access::ReadWrite),
        Err(GrantError::FrameTooLarge(Gfn(1 << 32)))
    );
}

#[test]
fn exhaustion_is_an_error_and_batches_are_all_or_nothing() {
    let (t, _) = table();
    let cap = t.free_count();
    assert_eq!(cap, (ENTRIES - GNTTAB_NR_RESERVED_ENTRIES) as usize);
    let frames: Vec<Gfn> = (0..cap as u64 - 2).map(Gfn).collect();
    let pool = t.grant_batch(PEER, &frames, Access::ReadWrite).unwrap();
    assert_eq!(t.free_count(), 2);
    // A batch of three cannot be met: nothing is taken.
    let err = t
        .grant_batch(PEER, &[Gfn(1), Gfn(2), Gfn(3)], Access::ReadWrite)
        .unwrap_err();
    assert!(matches!(err, GrantError::NoFreeRefs { .. }));
    assert_eq!(t.free_count(), 2);
    let a = t.grant_access(PEER, Gfn(1), Access::ReadOnly).unwrap();
    let b = t.grant_access(PEER, Gfn(2), Access::ReadOnly).unwrap();
    assert!(matches!(
        t.grant_access(PEER, Gfn(3), Access::ReadOnly),
        Err(GrantError::NoFreeRefs { .. })
    ));
    for g in pool.into_iter().chain([a, b]) {
        t.end_access(g).unwrap();
    }
    assert_eq!(t.free_count(), cap);
}

#[test]
fn a_peer_mapping_blocks_end_access_and_quarantines_forever() {
    let (t, frames) = table();
    let view = frames.foreign_view();
    let g = t.grant_access(PEER, Gfn(0x42), Access::ReadWrite).unwrap();
    let n = g.raw();
    // The peer maps it (the emulated hypervisor sets GTF_reading|writing).
    assert_eq!(view.acquire(n, PEER, Access::ReadWrite), Ok(0x42));
    assert!(t.in_use_by_peer(&g));
    let page = alloc::boxed::Box::new([0u8; 16]);
    let err = t.end_access_with_page(g, page).unwrap_err();
    assert_eq!(
        err,
        EndAccessError {
            gref: n,
            flags: GrantFlags::PERMIT_ACCESS | GrantFlags::READING | GrantFlags::WRITING
        }
    );
    assert_eq!(t.quarantined_count(), 1);
    // The entry is untouched: the peer's mapping stays valid.
    assert_eq!(frames.entry(n).unwrap().frame, 0x42);
    // Drain every ref: the quarantined one never comes back.
    let mut all = Vec::new();
    while let Ok(h) = t.grant_access(PEER, Gfn(1), Access::ReadOnly) {
        assert_ne!(h.raw(), n, "quarantined ref handed out again");
        all.push(h);
    }
    assert_eq!(
        all.len(),
        (ENTRIES - GNTTAB_NR_RESERVED_ENTRIES) as usize - 1
    );
    // Even after the peer unmaps, the ref stays out of circulation.
    view.release(n, Access::ReadWrite, false, false);
    for h in all {
        t.end_access(h).unwrap();
    }
    let mut again = Vec::new();
    while let Ok(h) = t.grant_access(PEER, Gfn(1), Access::ReadOnly) {
        assert_ne!(h.raw(), n);
        again.push(h);
    }
    for h in again {
        t.end_access(h).unwrap();
    }
}

#[test]
fn end_succeeds_once_the_peer_unmaps() {
    let (t, frames) = table();
    let view = frames.foreign_view();
    let g = t.grant_access(PEER, Gfn(5), Access::ReadOnly).unwrap();
    let n = g.raw();
    view.acquire(n, PEER, Access::ReadOnly).unwrap();
    assert!(t.flags_of(&g).contains(GrantFlags::READING));
    assert!(!t.flags_of(&g).contains(GrantFlags::WRITING));
    view.release(n, Access::ReadOnly, false, false);
    assert!(!t.in_use_by_peer(&g));
    assert_eq!(t.end_access_with_page(g, 5u32), Ok(5));
    // Ended: the peer can no longer map it.
    assert_eq!(
        view.acquire(n, PEER, Access::ReadOnly),
        Err(MapRefusal::NotGranted)
    );
}

#[test]
fn the_emulated_hypervisor_checks_like_xen() {
    let (t, frames) = table();
    let view = frames.foreign_view();
    let g = t.grant_access(PEER, Gfn(5), Access::ReadOnly).unwrap();
    assert_eq!(
        view.acquire(g.raw(), DomId(8), Access::ReadOnly),
        Err(MapRefusal::WrongDomain { granted_to: 7 })
    );
    assert_eq!(
        view.acquire(g.raw(), PEER, Access::ReadWrite),
        Err(MapRefusal::ReadOnly)
    );
    assert_eq!(
        view.acquire(100_000, PEER, Access::ReadOnly),
        Err(MapRefusal::OutOfRange)
    );
    assert_eq!(
        view.acquire(3, PEER, Access::ReadOnly),
        Err(MapRefusal::NotGranted)
    );
    t.end_access(g).unwrap();
}

#[test]
fn live_entries_at_start_up_are_never_handed_out() {
    let raw = FakeGrantFrames::with_entries(ENTRIES).unwrap();
    let frames = raw.peer();
    frames.poke_flags(20, GrantFlags::PERMIT_ACCESS.bits());
    let t = GrantTable::new(raw);
    assert_eq!(
        t.free_count(),
        (ENTRIES - GNTTAB_NR_RESERVED_ENTRIES) as usize - 1
    );
    let mut all = Vec::new();
    while let Ok(h) = t.grant_access(PEER, Gfn(1), Access::ReadOnly) {
        assert_ne!(h.raw(), 20);
        all.push(h);
    }
    for h in all {
        t.end_access(h).unwrap();
    }
}

#[test]
fn arbitrary_flag_words_never_let_a_busy_grant_end() {
    // Every word natively; under Miri, the interesting ones.
    let words: Vec<u16> = if cfg!(miri) {
        alloc::vec![0, 1, 5, 8, 9, 16, 17, 0x1d, 0xffe7, 0xffff]
    } else {
        (0..=u16::MAX).collect()
    };
    for flags in words {
        let (t, frames) = table();
        let g = t.grant_access(PEER, Gfn(1), Access::ReadWrite).unwrap();
        let n = g.raw();
        frames.poke_flags(n, flags);
        let busy = GrantFlags::from_bits_retain(flags)
            .intersects(GrantFlags::READING | GrantFlags::WRITING);
        let r = t.end_access(g);
        assert_eq!(r.is_err(), busy, "flags {flags:#x}");
        if !busy {
            assert_eq!(frames.entry(n).unwrap().flags, 0);
        }
    }
}

#[test]
fn refs_survive_moving_the_table_and_are_bound_to_it() {
    let (t, _) = table();
    let g = t.grant_access(PEER, Gfn(1), Access::ReadWrite).unwrap();
    let moved = alloc::boxed::Box::new(t);
    moved.end_access(g).unwrap();
    let (other, _) = table();
    let g = moved.grant_access(PEER, Gfn(1), Access::ReadWrite).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| other.flags_of(&g)));
    assert!(r.is_err(), "a ref was accepted by another table");
    moved.end_access(g).unwrap();
}

/// A driver generic over the platform grants through the platform's own
/// table; the peer's hypervisor view sees that grant and its frame.
#[test]
fn drivers_reach_the_domains_grant_table_through_the_platform() {
    use crate::fake::{FakeEventHub, FakePlatform};
    use crate::platform::{Platform, SharedPages};

    fn share_one_page<P: Platform>(p: &P, peer: DomId) -> (P::Pages, crate::table::GrantRef) {
        let pages = p.alloc_zeroed_pages(1).unwrap();
        let gref = p
            .grant_table()
            .unwrap()
            .grant_access(peer, pages.gfn(0).unwrap(), Access::ReadOnly)
            .unwrap();
        (pages, gref)
    }

    let frames = FakeGrantFrames::with_entries(32).unwrap();
    let peer_view = frames.foreign_view();
    let dom = FakePlatform::new(DomId(1), FakeEventHub::new(), frames);
    let free_before = dom.grant_table().unwrap().free_count();
    let (pages, gref) = share_one_page(&dom, DomId(0));
    // The same table every time: the ref was taken from it.
    assert_eq!(dom.grant_table().unwrap().free_count(), free_before - 1);
    let frame = peer_view.acquire(gref.raw(), DomId(0), Access::ReadOnly).unwrap();
    assert_eq!(u64::from(frame), pages.gfn(0).unwrap().0);
    assert_eq!(
        peer_view.acquire(gref.raw(), DomId(2), Access::ReadOnly),
        Err(MapRefusal::WrongDomain { granted_to: 0 })
    );
    peer_view.release(gref.raw(), Access::ReadOnly, false, false);
    dom.grant_table().unwrap().end_access(gref).unwrap();
}

/// A quarantined page is never freed, not even when the table goes away:
/// the peer may still map it.
#[test]
fn quarantined_pages_outlive_the_table() {
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicBool, Ordering};

    struct Page(Arc<AtomicBool>);
    impl Drop for Page {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let (t, frames) = table();
    let view = frames.foreign_view();
    let freed = Arc::new(AtomicBool::new(false));
    let g = t.grant_access(PEER, Gfn(7), Access::ReadOnly).unwrap();
    let n = g.raw();
    assert_eq!(view.acquire(n, PEER, Access::ReadOnly), Ok(7));
    assert!(t.end_access_with_page(g, Page(freed.clone())).is_err());
    drop(t);
    assert!(!freed.load(Ordering::SeqCst), "a page the peer maps was freed");
    // A page whose grant ends cleanly is handed back, and freed by its owner.
    let (t, _frames) = table();
    let freed2 = Arc::new(AtomicBool::new(false));
    let g = t.grant_access(PEER, Gfn(8), Access::ReadOnly).unwrap();
    drop(t.end_access_with_page(g, Page(freed2.clone())).unwrap());
    assert!(freed2.load(Ordering::SeqCst));
}

/// The peer's view keeps the entries alive on its own.
#[test]
fn a_foreign_view_outlives_the_frames_and_the_table() {
    let frames = FakeGrantFrames::with_entries(ENTRIES).unwrap();
    let view = frames.foreign_view();
    let table = GrantTable::new(frames);
    let g = table.grant_access(PEER, Gfn(3), Access::ReadOnly).unwrap();
    let n = g.raw();
    table.end_access(g).unwrap();
    drop(table);
    assert_eq!(
        view.acquire(n, PEER, Access::ReadOnly),
        Err(MapRefusal::NotGranted)
    );
    assert_eq!(
        FakeGrantFrames::with_entries(ENTRIES)
            .unwrap()
            .foreign_view()
            .acquire(9, PEER, Access::ReadOnly),
        Err(MapRefusal::NotGranted)
    );
}

/// End access racing a peer that maps and unmaps on another thread: an
/// `Ok` from `end_access` is only ever returned while no mapping is held
/// (the peer, while it holds one, sees its grant intact), and a refused end
/// quarantines the ref.
#[test]
fn end_access_racing_a_mapping_peer() {
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    extern crate std;

    let rounds: u32 = if cfg!(miri) { 4 } else { 2000 };
    let (t, frames) = table();
    let view = Arc::new(frames.foreign_view());
    let current = Arc::new(AtomicU32::new(u32::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let peer = {
        let (view, current, stop) = (view.clone(), current.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut mapped = 0u32;
            while !stop.load(Ordering::Acquire) {
                let n = current.load(Ordering::Acquire);
                if n == u32::MAX {
                    std::thread::yield_now();
                    continue;
                }
                if view.acquire(n, PEER, Access::ReadOnly).is_ok() {
                    mapped += 1;
                    // While mapped, the grant must stay live: an end access
                    // that succeeded now would have cleared the flags.
                    for _ in 0..4 {
                        let e = frames.entry(n).unwrap();
                        let f = GrantFlags::from_bits_retain(e.flags);
                        assert!(
                            f.contains(GrantFlags::PERMIT_ACCESS | GrantFlags::READING),
                            "grant {n} ended while mapped: flags {f:?}"
                        );
                    }
                    view.release(n, Access::ReadOnly, false, false);
                }
            }
            mapped
        })
    };
    let (mut ended, mut refused) = (0u32, 0u32);
    for _ in 0..rounds {
        let Ok(g) = t.grant_access(PEER, Gfn(0x99), Access::ReadOnly) else {
            break; // every ref quarantined: enough rounds
        };
        current.store(g.raw(), Ordering::Release);
        for _ in 0..8 {
            core::hint::spin_loop();
        }
        match t.end_access(g) {
            Ok(()) => ended += 1,
            Err(_) => refused += 1,
        }
        current.store(u32::MAX, Ordering::Release);
    }
    stop.store(true, Ordering::Release);
    // How often the peer got a mapping in depends on scheduling; the
    // checks are the peer's (inside its thread) and the quarantine count.
    let _mapped = peer.join().expect("the peer thread found a grant ended while mapped");
    assert_eq!(t.quarantined_count(), refused as usize);
    assert!(ended + refused > 0);
}

/// The fake platform's event channels follow Xen: a masked port still
/// collects events and a block on it returns for a pending event.
#[test]
fn fake_masked_ports_stay_pending_and_end_a_block() {
    use crate::fake::{FakeEventHub, FakePlatform};
    use crate::platform::EventChannels;

    let hub = FakeEventHub::new();
    let a = FakePlatform::new(DomId(1), hub.clone(), FakeGrantFrames::with_entries(16).unwrap());
    let b = FakePlatform::new(DomId(2), hub, FakeGrantFrames::with_entries(16).unwrap());
    let pa = a.alloc_unbound(DomId(2)).unwrap();
    let pb = b.bind_interdomain(DomId(1), pa).unwrap();
    a.mask(pa).unwrap();
    b.notify(pb).unwrap();
    b.notify(pb).unwrap();
    assert!(a.block(pa, Some(1_000)).unwrap(), "a masked pending port must end the block");
    assert!(!a.block(pa, Some(1_000)).unwrap(), "two notifies coalesce into one event");
    a.unmask(pa).unwrap();
    b.notify(pb).unwrap();
    assert!(a.poll(pa).unwrap());
}
