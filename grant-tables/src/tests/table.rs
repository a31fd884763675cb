//! Grant table unit tests: entry layout, free list, quarantine (XSA-396).

use alloc::string::ToString;
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

/// A page whose drop is observed: tells when the table frees it.
#[derive(Debug)]
struct Page(alloc::sync::Arc<core::sync::atomic::AtomicBool>);

impl Drop for Page {
    fn drop(&mut self) {
        self.0.store(true, core::sync::atomic::Ordering::SeqCst);
    }
}

fn page() -> (Page, alloc::sync::Arc<core::sync::atomic::AtomicBool>) {
    let flag = alloc::sync::Arc::new(core::sync::atomic::AtomicBool::new(false));
    (Page(flag.clone()), flag)
}

fn freed(flag: &core::sync::atomic::AtomicBool) -> bool {
    flag.load(core::sync::atomic::Ordering::SeqCst)
}

#[test]
fn a_peer_mapping_quarantines_until_a_retry_after_the_unmap() {
    let (t, frames) = table();
    let view = frames.foreign_view();
    let cap = t.free_count();
    let g = t.grant_access(PEER, Gfn(0x42), Access::ReadWrite).unwrap();
    let n = g.raw();
    // The peer maps it (the emulated hypervisor sets GTF_reading|writing).
    assert_eq!(view.pin(n, PEER, Access::ReadWrite), Ok(0x42));
    assert!(t.in_use_by_peer(&g));
    let (pg, pg_freed) = page();
    let err = t.end_access_with_page(g, pg).unwrap_err();
    assert_eq!(
        err,
        EndAccessError {
            gref: n,
            flags: GrantFlags::PERMIT_ACCESS | GrantFlags::READING | GrantFlags::WRITING,
            in_use: 1,
        }
    );
    let s = t.stats();
    assert_eq!(
        (s.quarantined, s.quarantined_allocations, s.granted),
        (1, 1, 0)
    );
    // The entry is untouched: the peer's mapping stays valid.
    assert_eq!(frames.entry(n).unwrap().frame, 0x42);
    // Retrying while it is mapped recovers nothing.
    assert_eq!(t.retry_quarantined(), 0);
    assert!(!freed(&pg_freed), "a page the peer maps was freed");
    // Drain every ref (grant_access retries the quarantine by itself when
    // the free list is empty): the quarantined one never comes back.
    let mut all = Vec::new();
    while let Ok(h) = t.grant_access(PEER, Gfn(1), Access::ReadOnly) {
        assert_ne!(h.raw(), n, "quarantined ref handed out while mapped");
        all.push(h);
    }
    assert_eq!(all.len(), cap - 1);
    assert_eq!(t.stats().granted, cap - 1);
    // The peer unmaps: the ref is still out until a retry ends it.
    view.unpin(n, PEER, Access::ReadWrite).unwrap();
    assert_eq!(
        frames.entry(n).unwrap().flags,
        GrantFlags::PERMIT_ACCESS.bits()
    );
    assert_eq!(t.quarantined_count(), 1);
    assert_eq!(t.retry_quarantined(), 1);
    assert!(freed(&pg_freed), "the page is freed once its grant ended");
    assert_eq!(
        frames.entry(n).unwrap().flags,
        0,
        "the retry ended the grant"
    );
    let s = t.stats();
    assert_eq!(
        (
            s.quarantined,
            s.quarantined_allocations,
            s.recovered,
            s.free
        ),
        (0, 0, 1, 1)
    );
    // And now it is handed out again.
    let again = t.grant_access(PEER, Gfn(2), Access::ReadOnly).unwrap();
    assert_eq!(again.raw(), n);
    for h in all.into_iter().chain([again]) {
        t.end_access(h).unwrap();
    }
    let s = t.stats();
    assert_eq!(
        (s.free, s.granted, s.quarantined, s.quarantined_total),
        (cap, 0, 0, 1)
    );
}

/// A multi-page allocation whose grants end partly stays whole in the
/// quarantine until its last grant ends; the refs that did end are reused
/// at once.
#[test]
fn a_partly_ended_allocation_stays_whole_until_its_last_grant_ends() {
    let (t, frames) = table();
    let view = frames.foreign_view();
    let cap = t.free_count();
    let grants = t
        .grant_batch(
            PEER,
            &[Gfn(10), Gfn(11), Gfn(12), Gfn(13)],
            Access::ReadWrite,
        )
        .unwrap();
    let raw: Vec<u32> = grants.iter().map(|g| g.raw()).collect();
    view.pin(raw[1], PEER, Access::ReadOnly).unwrap();
    view.pin(raw[3], PEER, Access::ReadWrite).unwrap();
    let (pg, pg_freed) = page();
    let err = t.end_access_all(grants, pg).unwrap_err();
    assert_eq!((err.gref, err.in_use), (raw[1], 2));
    assert!(err.to_string().contains("1 more refs"), "{err}");
    let s = t.stats();
    assert_eq!(
        (s.free, s.granted, s.quarantined, s.quarantined_allocations),
        (cap - 2, 0, 2, 1)
    );
    for r in [raw[0], raw[2]] {
        assert_eq!(frames.entry(r).unwrap().flags, 0, "ended refs are dead");
    }
    view.unpin(raw[3], PEER, Access::ReadWrite).unwrap();
    assert_eq!(t.retry_quarantined(), 1);
    assert!(
        !freed(&pg_freed),
        "one page is still mapped: the allocation stays whole"
    );
    assert_eq!(t.stats().quarantined, 1);
    view.unpin(raw[1], PEER, Access::ReadOnly).unwrap();
    assert_eq!(t.retry_quarantined(), 1);
    assert!(freed(&pg_freed));
    let s = t.stats();
    assert_eq!(
        (
            s.free,
            s.quarantined,
            s.quarantined_allocations,
            s.recovered
        ),
        (cap, 0, 0, 2)
    );
}

/// Pin records count mappings and copies per entry; the flags clear with
/// the last pin (the last writable pin for `GTF_writing`); a dead
/// domain's pins are released all at once.
#[test]
fn pin_records_count_pins_and_release_a_dead_domains() {
    use crate::emulated::{spin_backoff, PinCounts, UnpinError};
    let (t, frames) = table();
    let view = frames.foreign_view();
    let g = t.grant_access(PEER, Gfn(9), Access::ReadWrite).unwrap();
    let n = g.raw();
    let flags = || GrantFlags::from_bits_retain(frames.entry(n).unwrap().flags);
    view.pin(n, PEER, Access::ReadWrite).unwrap();
    view.pin(n, PEER, Access::ReadOnly).unwrap();
    view.pin(n, PEER, Access::ReadWrite).unwrap();
    assert_eq!(
        view.pin_counts(n),
        PinCounts {
            pins: 3,
            writers: 2
        }
    );
    assert_eq!(
        view.pin(n, DomId(8), Access::ReadOnly),
        Err(MapRefusal::WrongDomain { granted_to: 7 })
    );
    assert_eq!(
        view.unpin(n, DomId(8), Access::ReadOnly),
        Err(UnpinError::NotPinned)
    );
    view.unpin(n, PEER, Access::ReadWrite).unwrap();
    assert!(flags().contains(GrantFlags::WRITING), "one writer left");
    view.unpin(n, PEER, Access::ReadWrite).unwrap();
    assert_eq!(flags(), GrantFlags::PERMIT_ACCESS | GrantFlags::READING);
    assert_eq!(
        view.unpin(n, PEER, Access::ReadWrite),
        Err(UnpinError::NotPinned)
    );
    // The mapper dies holding one read pin and two write pins.
    view.pin(n, PEER, Access::ReadWrite).unwrap();
    view.pin(n, PEER, Access::ReadWrite).unwrap();
    assert!(t.end_access(g).is_err());
    assert_eq!(
        view.release_pins_of(DomId(8), &mut spin_backoff),
        0,
        "nothing of dom8's"
    );
    assert_eq!(view.release_pins_of(PEER, &mut spin_backoff), 1);
    assert_eq!(view.pin_counts(n), PinCounts::default());
    assert_eq!(
        flags(),
        GrantFlags::PERMIT_ACCESS,
        "Xen's release clears reading and writing"
    );
    assert_eq!(t.retry_quarantined(), 1);
    assert_eq!(flags(), GrantFlags::empty());
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
    let frame = peer_view
        .acquire(gref.raw(), DomId(0), Access::ReadOnly)
        .unwrap();
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
    assert!(
        !freed.load(Ordering::SeqCst),
        "a page the peer maps was freed"
    );
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
    let _mapped = peer
        .join()
        .expect("the peer thread found a grant ended while mapped");
    // Refused ends are quarantined; some may have been recovered since (a
    // grant retries the quarantine when the free list runs dry).
    let s = t.stats();
    assert_eq!(s.quarantined_total, u64::from(refused));
    assert_eq!(s.quarantined as u64 + s.recovered, u64::from(refused));
    assert!(ended + refused > 0);
}

/// The fake platform's event channels follow Xen: a masked port still
/// collects events and a block on it returns for a pending event.
#[test]
fn fake_masked_ports_stay_pending_and_end_a_block() {
    use crate::fake::{FakeEventHub, FakePlatform};
    use crate::platform::EventChannels;

    let hub = FakeEventHub::new();
    let a = FakePlatform::new(
        DomId(1),
        hub.clone(),
        FakeGrantFrames::with_entries(16).unwrap(),
    );
    let b = FakePlatform::new(DomId(2), hub, FakeGrantFrames::with_entries(16).unwrap());
    let pa = a.alloc_unbound(DomId(2)).unwrap();
    let pb = b.bind_interdomain(DomId(1), pa).unwrap();
    a.mask(pa).unwrap();
    b.notify(pb).unwrap();
    b.notify(pb).unwrap();
    assert!(
        a.block(pa, Some(1_000)).unwrap(),
        "a masked pending port must end the block"
    );
    assert!(
        !a.block(pa, Some(1_000)).unwrap(),
        "two notifies coalesce into one event"
    );
    a.unmask(pa).unwrap();
    b.notify(pb).unwrap();
    assert!(a.poll(pa).unwrap());
}
