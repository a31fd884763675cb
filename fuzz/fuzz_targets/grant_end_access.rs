//! Grant end-access against arbitrary flag words written where the peer's
//! hypervisor writes: a busy grant never ends, a quarantined ref never comes
//! back, and no sequence panics.
#![no_main]

use arbitrary::Arbitrary;
use grant_tables::abi::GrantFlags;
use grant_tables::fake::FakeGrantFrames;
use grant_tables::{Access, DomId, Gfn, GrantRef, GrantTable};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Step {
    Grant {
        frame: u32,
        readonly: bool,
    },
    /// The peer side writes a flag word into grant number `which`.
    Poke {
        which: u8,
        flags: u16,
    },
    /// The emulated hypervisor maps or unmaps (Xen's checks).
    Map {
        which: u8,
        write: bool,
    },
    Unmap {
        which: u8,
        write: bool,
    },
    End {
        which: u8,
    },
}

fuzz_target!(|steps: Vec<Step>| {
    let Ok(frames) = FakeGrantFrames::new(1) else {
        return;
    };
    let side = frames.peer();
    let table = GrantTable::new(frames);
    let view = side.foreign_view();
    let peer = DomId(3);
    let mut live: Vec<GrantRef> = Vec::new();
    let mut quarantined: Vec<u32> = Vec::new();
    for step in steps.into_iter().take(512) {
        match step {
            Step::Grant { frame, readonly } => {
                let access = if readonly {
                    Access::ReadOnly
                } else {
                    Access::ReadWrite
                };
                if let Ok(g) = table.grant_access(peer, Gfn(frame.into()), access) {
                    assert!(!quarantined.contains(&g.raw()), "quarantined ref reused");
                    live.push(g);
                }
            }
            Step::Poke { which, flags } => {
                if let Some(g) = live.get(which as usize % live.len().max(1)) {
                    side.poke_flags(g.raw(), flags);
                }
            }
            Step::Map { which, write } => {
                if let Some(g) = live.get(which as usize % live.len().max(1)) {
                    let access = if write {
                        Access::ReadWrite
                    } else {
                        Access::ReadOnly
                    };
                    let _ = view.acquire(g.raw(), peer, access);
                }
            }
            Step::Unmap { which, write } => {
                if let Some(g) = live.get(which as usize % live.len().max(1)) {
                    let access = if write {
                        Access::ReadWrite
                    } else {
                        Access::ReadOnly
                    };
                    view.release(g.raw(), access, false, false);
                }
            }
            Step::End { which } => {
                if live.is_empty() {
                    continue;
                }
                let g = live.swap_remove(which as usize % live.len());
                let n = g.raw();
                let before = side.entry(n).map(|e| e.flags).unwrap_or(0);
                let busy = GrantFlags::from_bits_retain(before)
                    .intersects(GrantFlags::READING | GrantFlags::WRITING);
                match table.end_access(g) {
                    Ok(()) => {
                        assert!(!busy, "ended a grant the peer still used");
                        assert_eq!(side.entry(n).map(|e| e.flags), Some(0));
                    }
                    Err(e) => {
                        assert!(busy);
                        assert_eq!(e.gref, n);
                        quarantined.push(n);
                    }
                }
            }
        }
    }
    assert_eq!(table.quarantined_count(), quarantined.len());
});
