//! The grant table's quarantine and retries against a peer (through the
//! emulated hypervisor's pin records, and arbitrary flag words where the
//! peer's hypervisor writes): a grant the peer uses never ends, a
//! multi-page allocation is freed only once every one of its grants has
//! ended, a ref is handed out again only after an end that succeeded, and
//! the counts always add up.
#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arbitrary::Arbitrary;
use grant_tables::abi::{GrantFlags, GNTTAB_NR_RESERVED_ENTRIES};
use grant_tables::fake::FakeGrantFrames;
use grant_tables::{Access, DomId, Gfn, GrantRef, GrantTable};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Step {
    /// Grant an allocation of 1 to 4 pages.
    Grant { pages: u8, readonly: bool },
    /// The peer maps (pins) or unmaps a page of an allocation.
    Pin { alloc: u8, page: u8, write: bool },
    Unpin { alloc: u8, page: u8, write: bool },
    /// A hostile view writes a flag word.
    Poke { alloc: u8, page: u8, flags: u16 },
    /// The peer dies: its pins are released.
    PeerDies,
    /// End every grant of an allocation.
    End { alloc: u8 },
    Retry,
}

/// The pages of an allocation: dropping them sets `freed`.
struct Pages(Arc<AtomicBool>);
impl Drop for Pages {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Live {
    grants: Vec<GrantRef>,
    freed: Arc<AtomicBool>,
}

struct Held {
    refs: Vec<u32>,
    freed: Arc<AtomicBool>,
}

const PEER: DomId = DomId(3);

fuzz_target!(|steps: Vec<Step>| {
    let Ok(frames) = FakeGrantFrames::with_entries(64) else { return };
    let side = frames.peer();
    let view = side.foreign_view();
    let table = GrantTable::new(frames);
    let cap = (64 - GNTTAB_NR_RESERVED_ENTRIES) as usize;
    let busy = |r: u32| {
        GrantFlags::from_bits_retain(side.entry(r).map_or(0, |e| e.flags)).intersects(GrantFlags::READING | GrantFlags::WRITING)
    };
    let mut live: Vec<Live> = Vec::new();
    let mut held: Vec<Held> = Vec::new();
    let pick = |n: usize, i: u8| (n > 0).then(|| i as usize % n);
    for step in steps.into_iter().take(256) {
        match step {
            Step::Grant { pages, readonly } => {
                let n = usize::from(pages % 4) + 1;
                let access = if readonly { Access::ReadOnly } else { Access::ReadWrite };
                let gfns: Vec<Gfn> = (0..n as u64).map(|i| Gfn(0x100 + i)).collect();
                // Short of free refs, the table retries its quarantine
                // first: every held ref the peer let go of comes back.
                if table.free_count() < n {
                    for h in &mut held {
                        h.refs.retain(|&r| busy(r));
                    }
                }
                if let Ok(grants) = table.grant_batch(PEER, &gfns, access) {
                    for g in &grants {
                        let still_held = held.iter().any(|h| h.refs.contains(&g.raw()));
                        assert!(!still_held, "ref {} handed out while quarantined", g.raw());
                    }
                    live.push(Live { grants, freed: Arc::new(AtomicBool::new(false)) });
                }
            }
            Step::Pin { alloc, page, write } => {
                if let Some(a) = pick(live.len(), alloc) {
                    if let Some(p) = pick(live[a].grants.len(), page) {
                        let access = if write { Access::ReadWrite } else { Access::ReadOnly };
                        let r = live[a].grants[p].raw();
                        if view.pin_with(r, PEER, access, &mut |n| n < 16).is_ok() {
                            assert!(busy(r));
                        }
                    }
                }
            }
            Step::Unpin { alloc, page, write } => {
                if let Some(a) = pick(live.len(), alloc) {
                    if let Some(p) = pick(live[a].grants.len(), page) {
                        let access = if write { Access::ReadWrite } else { Access::ReadOnly };
                        let _ = view.unpin_with(live[a].grants[p].raw(), PEER, access, &mut |n| n < 16);
                    }
                } else if let Some(h) = pick(held.len(), alloc) {
                    if let Some(p) = pick(held[h].refs.len(), page) {
                        let access = if write { Access::ReadWrite } else { Access::ReadOnly };
                        let _ = view.unpin_with(held[h].refs[p], PEER, access, &mut |n| n < 16);
                    }
                }
            }
            Step::Poke { alloc, page, flags } => {
                if let Some(a) = pick(live.len(), alloc) {
                    if let Some(p) = pick(live[a].grants.len(), page) {
                        side.poke_flags(live[a].grants[p].raw(), flags);
                    }
                }
            }
            Step::PeerDies => {
                view.release_pins_of(PEER, &mut |n| n < 16);
            }
            Step::End { alloc } => {
                let Some(a) = pick(live.len(), alloc) else { continue };
                let l = live.swap_remove(a);
                let raw: Vec<u32> = l.grants.iter().map(GrantRef::raw).collect();
                let in_use: Vec<u32> = raw.iter().copied().filter(|&r| busy(r)).collect();
                match table.end_access_all(l.grants, Pages(l.freed.clone())) {
                    Ok(p) => {
                        assert!(in_use.is_empty(), "ended grants the peer uses: {in_use:?}");
                        drop(p);
                    }
                    Err(e) => {
                        assert_eq!(e.in_use, in_use.len());
                        assert!(!l.freed.load(Ordering::SeqCst), "pages the peer maps were freed");
                        held.push(Held { refs: in_use, freed: l.freed });
                    }
                }
                for r in raw {
                    if !held.iter().any(|h| h.refs.contains(&r)) {
                        assert!(!busy(r));
                        assert_eq!(side.entry(r).map(|e| e.flags), Some(0), "an ended ref is dead");
                    }
                }
            }
            Step::Retry => {
                let expect: usize = held.iter().map(|h| h.refs.iter().filter(|&&r| !busy(r)).count()).sum();
                assert_eq!(table.retry_quarantined(), expect);
                for h in &mut held {
                    h.refs.retain(|&r| busy(r));
                }
            }
        }
        // Allocations with refs left are whole; those without are freed.
        held.retain(|h| {
            if h.refs.is_empty() {
                assert!(h.freed.load(Ordering::SeqCst), "an allocation whose grants all ended was kept");
                false
            } else {
                assert!(!h.freed.load(Ordering::SeqCst), "an allocation was freed while the peer uses a page");
                true
            }
        });
        let s = table.stats();
        let granted: usize = live.iter().map(|l| l.grants.len()).sum();
        let quarantined: usize = held.iter().map(|h| h.refs.len()).sum();
        assert_eq!((s.granted, s.quarantined, s.quarantined_allocations), (granted, quarantined, held.len()));
        assert_eq!(s.free + s.granted + s.quarantined, cap);
    }
    // The peer goes away for good: every grant ends, every page is freed
    // (nothing is left for the table's drop to keep).
    view.release_pins_of(PEER, &mut |n| n < 16);
    let unbusy = |r: u32| {
        let f = side.entry(r).map_or(0, |e| e.flags);
        side.poke_flags(r, f & !(GrantFlags::READING | GrantFlags::WRITING).bits());
    };
    for r in held.iter().flat_map(|h| h.refs.iter().copied()).chain(live.iter().flat_map(|l| l.grants.iter().map(GrantRef::raw))) {
        unbusy(r);
    }
    for l in live {
        assert!(table.end_access_all(l.grants, Pages(l.freed)).is_ok());
    }
    table.retry_quarantined();
    assert!(held.iter().all(|h| h.freed.load(Ordering::SeqCst)));
    let s = table.stats();
    assert_eq!((s.free, s.granted, s.quarantined, s.quarantined_allocations), (cap, 0, 0, 0));
});
