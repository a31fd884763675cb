//! netfront's TX side: arbitrary frames laid out and submitted, and
//! arbitrary (hostile) responses, against a model of what is in flight.
//! Never panics; a packet completes exactly once, after all its request
//! slots are answered, with a token that was submitted; a refused response
//! changes nothing; ids stay below the ring size and are never in use
//! twice; aborting returns every outstanding token.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netfront::abi::{NetifTxResponse, NETIF_RSP_NULL, PAGE_SIZE};
use netfront::tx::{
    plan_tx, Gso, GsoKind, TxCaps, TxChecksum, TxOffload, TxPiece, TxQueue, TxSlot,
};

#[derive(Arbitrary, Debug)]
enum Op {
    Submit {
        pieces: Vec<(u8, u16, u16)>,
        csum: u8,
        gso: Option<(bool, u16)>,
        free: u16,
    },
    Publish,
    /// Any response at all.
    Respond {
        id: u16,
        status: i16,
    },
    /// A response for the `pick`th published id.
    Answer {
        pick: u16,
        status: i16,
    },
    Abort,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ring_shift: u8,
    caps: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let ring = 1u32 << (input.ring_shift % 9);
    let caps = TxCaps {
        sg: input.caps & 1 != 0,
        partial_csum: input.caps & 2 != 0,
        gso_tcpv4: input.caps & 4 != 0,
        gso_tcpv6: input.caps & 8 != 0,
    };
    let mut q: TxQueue<u32> = TxQueue::new(ring).unwrap();
    // Model: token -> request ids not yet answered; id -> token for
    // published ids; ids submitted but not published; extras published and
    // unanswered.
    let mut live: BTreeMap<u32, BTreeSet<u16>> = BTreeMap::new();
    let mut published: BTreeMap<u16, u32> = BTreeMap::new();
    let mut queued: Vec<(u16, u32)> = Vec::new();
    let mut queued_extras = 0u32;
    let mut extras = 0u32;
    let mut next_token = 0u32;

    for op in input.ops {
        match op {
            Op::Submit {
                pieces,
                csum,
                gso,
                free,
            } => {
                let grefs: Vec<Vec<u32>> = pieces
                    .iter()
                    .map(|&(n, _, _)| (0..1 + u32::from(n % 4)).map(|g| 8 + g).collect())
                    .collect();
                let tx: Vec<TxPiece<'_>> = pieces
                    .iter()
                    .zip(&grefs)
                    .map(|(&(_, off, len), g)| TxPiece {
                        grefs: g,
                        offset: usize::from(off),
                        len: usize::from(len),
                    })
                    .collect();
                let offload = TxOffload {
                    checksum: match csum % 3 {
                        0 => TxChecksum::Complete,
                        1 => TxChecksum::Validated,
                        _ => TxChecksum::Partial,
                    },
                    gso: gso.map(|(v6, mss)| Gso {
                        kind: if v6 { GsoKind::TcpV6 } else { GsoKind::TcpV4 },
                        mss,
                    }),
                };
                let Ok(plan) = plan_tx(&tx, &offload, &caps) else {
                    continue;
                };
                for c in plan.chunks() {
                    assert!(usize::from(c.offset) + usize::from(c.len) <= PAGE_SIZE);
                }
                let token = next_token;
                next_token += 1;
                let free_before = q.free_ids();
                match q.submit(&plan, token, u32::from(free)) {
                    Err(rej) => {
                        assert_eq!(rej.token, token);
                        assert_eq!(q.free_ids(), free_before);
                    }
                    Ok(slots) => {
                        assert_eq!(slots.len(), plan.slots());
                        let mut ids = BTreeSet::new();
                        for s in slots.iter() {
                            match s {
                                TxSlot::Request(r) => {
                                    assert!(u32::from(r.id) < ring);
                                    assert!(!published.contains_key(&r.id));
                                    assert!(queued.iter().all(|(i, _)| *i != r.id));
                                    assert!(ids.insert(r.id));
                                    queued.push((r.id, token));
                                }
                                TxSlot::Extra(_) => queued_extras += 1,
                            }
                        }
                        live.insert(token, ids);
                    }
                }
            }
            Op::Publish => {
                q.mark_published();
                for (id, t) in queued.drain(..) {
                    published.insert(id, t);
                }
                extras += std::mem::take(&mut queued_extras);
            }
            Op::Respond { id, status } => apply(
                &mut q,
                &mut live,
                &mut published,
                &mut extras,
                NetifTxResponse { id, status },
            ),
            Op::Answer { pick, status } => {
                if let Some((&id, _)) = published
                    .iter()
                    .nth(usize::from(pick) % published.len().max(1))
                {
                    apply(
                        &mut q,
                        &mut live,
                        &mut published,
                        &mut extras,
                        NetifTxResponse { id, status },
                    );
                }
            }
            Op::Abort => {
                let mut got = q.abort_all();
                got.sort_unstable();
                let want: Vec<u32> = live.keys().copied().collect();
                assert_eq!(got, want);
                live.clear();
                published.clear();
                queued.clear();
                queued_extras = 0;
                extras = 0;
            }
        }
        assert_eq!(q.in_flight(), live.len());
        let in_use: usize = live.values().map(BTreeSet::len).sum();
        assert_eq!(q.free_ids() + in_use, ring as usize);
    }
});

fn apply(
    q: &mut TxQueue<u32>,
    live: &mut BTreeMap<u32, BTreeSet<u16>>,
    published: &mut BTreeMap<u16, u32>,
    extras: &mut u32,
    rsp: NetifTxResponse,
) {
    let expect_ok = if rsp.status == NETIF_RSP_NULL {
        *extras > 0
    } else {
        published.contains_key(&rsp.id) && (-2..=0).contains(&rsp.status)
    };
    match q.complete(rsp) {
        Err(_) => assert!(!expect_ok, "refused a valid response {rsp:?}"),
        Ok(done) => {
            assert!(expect_ok, "accepted an invalid response {rsp:?}");
            if rsp.status == NETIF_RSP_NULL {
                *extras -= 1;
                assert!(done.is_none());
                return;
            }
            let token = published.remove(&rsp.id).unwrap();
            let ids = live.get_mut(&token).unwrap();
            assert!(ids.remove(&rsp.id));
            match done {
                Some(c) => {
                    assert_eq!(c.token, token);
                    assert!(ids.is_empty());
                    live.remove(&token);
                }
                None => assert!(!ids.is_empty()),
            }
        }
    }
}
