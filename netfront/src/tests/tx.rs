use std::vec::Vec;

use proptest::prelude::*;

use crate::abi::*;
use crate::tx::*;

const ALL: TxCaps = TxCaps {
    sg: true,
    partial_csum: true,
    gso_tcpv4: true,
    gso_tcpv6: true,
};

fn piece(grefs: &[u32], offset: usize, len: usize) -> TxPiece<'_> {
    TxPiece { grefs, offset, len }
}

fn requests(slots: &TxSlots) -> Vec<NetifTxRequest> {
    slots
        .iter()
        .filter_map(|s| match s {
            TxSlot::Request(r) => Some(*r),
            TxSlot::Extra(_) => None,
        })
        .collect()
}

#[test]
fn one_slot_frame() {
    let plan = plan_tx(&[piece(&[100], 64, 60)], &TxOffload::default(), &ALL).unwrap();
    assert_eq!((plan.len(), plan.requests(), plan.slots()), (60, 1, 1));
    let mut q = TxQueue::new(256).unwrap();
    let slots = q.submit(&plan, "frame", 256).unwrap();
    assert_eq!(slots.len(), 1);
    let TxSlot::Request(r) = *slots.get(0).unwrap() else {
        panic!()
    };
    assert_eq!(
        r,
        NetifTxRequest {
            gref: 100,
            offset: 64,
            flags: 0,
            id: r.id,
            size: 60
        }
    );
    assert!(r.id < 256);
    assert_eq!(slots.get(0).unwrap().to_bytes().request(), r);
}

#[test]
fn pieces_crossing_pages_are_split_or_refused() {
    // A buffer of two granted pages: a piece from 4000 to 4200 becomes two
    // slots, one per page.
    let grefs = [7, 8];
    let plan = plan_tx(&[piece(&grefs, 4000, 200)], &TxOffload::default(), &ALL).unwrap();
    let chunks: Vec<_> = plan.chunks().copied().collect();
    assert_eq!(
        chunks,
        [
            TxChunk {
                gref: 7,
                offset: 4000,
                len: 96
            },
            TxChunk {
                gref: 8,
                offset: 0,
                len: 104
            }
        ]
    );
    // The same piece with only the first page's grant: refused.
    let err = plan_tx(
        &[piece(&grefs[..1], 4000, 200)],
        &TxOffload::default(),
        &ALL,
    )
    .unwrap_err();
    assert_eq!(
        err,
        TxBuildError::PieceCrossesPage {
            piece: 0,
            pages_needed: 2,
            grefs: 1
        }
    );
    // An offset into a later page uses that page's grant.
    let plan = plan_tx(
        &[piece(&grefs, 4096 + 10, 100)],
        &TxOffload::default(),
        &ALL,
    )
    .unwrap();
    assert_eq!(
        plan.chunks().next(),
        Some(&TxChunk {
            gref: 8,
            offset: 10,
            len: 100
        })
    );
    // A piece ending exactly at a page end needs no next page.
    assert!(plan_tx(&[piece(&[1], 4096 - 100, 100)], &TxOffload::default(), &ALL).is_ok());
    // An absurd offset does not overflow.
    assert!(matches!(
        plan_tx(
            &[piece(&[1], usize::MAX - 5, 100)],
            &TxOffload::default(),
            &ALL
        ),
        Err(TxBuildError::PieceCrossesPage { piece: 0, .. })
    ));
}

#[test]
fn chains_set_more_data_and_the_total_size() {
    let plan = plan_tx(
        &[
            piece(&[1], 0, 54),
            piece(&[2], 100, 1000),
            piece(&[], 0, 0), // empty pieces are skipped
            piece(&[3, 4], 3000, 2000),
        ],
        &TxOffload::default(),
        &ALL,
    )
    .unwrap();
    let mut q = TxQueue::new(256).unwrap();
    let slots = q.submit(&plan, (), 256).unwrap();
    let r = requests(&slots);
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].size, 3054, "the first slot carries the frame's size");
    assert_eq!(
        r.iter().skip(1).map(|r| r.size).collect::<Vec<_>>(),
        [1000, 1096, 904]
    );
    assert_eq!(
        r.iter().map(|r| r.flags).collect::<Vec<_>>(),
        [NETTXF_MORE_DATA, NETTXF_MORE_DATA, NETTXF_MORE_DATA, 0]
    );
    let mut ids: Vec<u16> = r.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "one distinct id per request slot");
}

#[test]
fn limits_netback_enforces() {
    let o = TxOffload::default();
    // 18 slots are fine, 19 are not.
    let grefs: Vec<u32> = (10..40).collect();
    let p18: Vec<_> = (0..18).map(|i| piece(&grefs[i..i + 1], 0, 100)).collect();
    assert_eq!(plan_tx(&p18, &o, &ALL).unwrap().requests(), 18);
    let p19: Vec<_> = (0..19).map(|i| piece(&grefs[i..i + 1], 0, 100)).collect();
    assert_eq!(
        plan_tx(&p19, &o, &ALL),
        Err(TxBuildError::TooManySlots { needed: 19 })
    );
    // A 65535-byte frame in 17 pages (page aligned) fits; one byte more
    // does not fit the wire format.
    assert_eq!(
        plan_tx(&[piece(&grefs[..16], 0, 65535)], &o, &ALL)
            .unwrap()
            .requests(),
        16
    );
    assert_eq!(
        plan_tx(&[piece(&grefs[..17], 0, 65536)], &o, &ALL),
        Err(TxBuildError::TooLarge { len: 65536 })
    );
    // A misaligned 64 KiB frame needs 17 slots: still fine.
    assert_eq!(
        plan_tx(&[piece(&grefs[..17], 100, 65535)], &o, &ALL)
            .unwrap()
            .requests(),
        17
    );
    // Short frames and short first slots.
    assert_eq!(
        plan_tx(&[piece(&[1], 0, 13)], &o, &ALL),
        Err(TxBuildError::TooShort { len: 13 })
    );
    assert_eq!(
        plan_tx(&[piece(&[1, 2], 4090, 60)], &o, &ALL),
        Err(TxBuildError::FirstSlotShort { len: 6 })
    );
    assert_eq!(
        plan_tx(&[piece(&[1], 0, 10), piece(&[2], 0, 50)], &o, &ALL),
        Err(TxBuildError::FirstSlotShort { len: 10 })
    );
    // Without scatter-gather only one slot.
    let nosg = TxCaps { sg: false, ..ALL };
    assert!(plan_tx(&[piece(&[1], 0, 1514)], &o, &nosg).is_ok());
    assert_eq!(
        plan_tx(&[piece(&[1, 2], 4000, 1514)], &o, &nosg),
        Err(TxBuildError::NeedsScatterGather { needed: 2 })
    );
}

#[test]
fn checksum_flags() {
    let p = [piece(&[1], 0, 100)];
    let flags = |c| {
        let plan = plan_tx(
            &p,
            &TxOffload {
                checksum: c,
                gso: None,
            },
            &ALL,
        )
        .unwrap();
        let mut q = TxQueue::new(16).unwrap();
        requests(&q.submit(&plan, (), 16).unwrap())[0].flags
    };
    assert_eq!(flags(TxChecksum::Complete), 0);
    assert_eq!(flags(TxChecksum::Validated), NETTXF_DATA_VALIDATED);
    assert_eq!(
        flags(TxChecksum::Partial),
        NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED
    );
    let nocsum = TxCaps {
        partial_csum: false,
        ..ALL
    };
    assert_eq!(
        plan_tx(
            &p,
            &TxOffload {
                checksum: TxChecksum::Partial,
                gso: None
            },
            &nocsum
        ),
        Err(TxBuildError::PartialChecksumNotNegotiated)
    );
}

#[test]
fn gso_adds_an_extra_after_the_first_slot() {
    let grefs = [1, 2, 3];
    let off = TxOffload {
        checksum: TxChecksum::Partial,
        gso: Some(Gso {
            kind: GsoKind::TcpV6,
            mss: 1440,
        }),
    };
    let plan = plan_tx(&[piece(&grefs, 0, 9000)], &off, &ALL).unwrap();
    assert_eq!((plan.requests(), plan.slots()), (3, 4));
    let mut q = TxQueue::new(256).unwrap();
    let slots = q.submit(&plan, (), 256).unwrap();
    let kinds: Vec<bool> = slots
        .iter()
        .map(|s| matches!(s, TxSlot::Extra(_)))
        .collect();
    assert_eq!(kinds, [false, true, false, false]);
    let TxSlot::Request(first) = *slots.get(0).unwrap() else {
        panic!()
    };
    assert_eq!(
        first.flags,
        NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED | NETTXF_EXTRA_INFO | NETTXF_MORE_DATA
    );
    let TxSlot::Extra(e) = *slots.get(1).unwrap() else {
        panic!()
    };
    assert_eq!((e.type_, e.flags), (XEN_NETIF_EXTRA_TYPE_GSO, 0));
    assert_eq!(
        e.gso(),
        ExtraGso {
            size: 1440,
            type_: XEN_NETIF_GSO_TYPE_TCPV6,
            pad: 0,
            features: 0
        }
    );
    // The extra's slot bytes: type, flags, size (LE), type, pad, features,
    // then 4 unused bytes.
    assert_eq!(
        slots.get(1).unwrap().to_bytes().0,
        [1, 0, 0xA0, 0x05, 2, 0, 0, 0, 0, 0, 0, 0]
    );

    let p = [piece(&grefs, 0, 9000)];
    let bad = |o: TxOffload, caps: TxCaps| plan_tx(&p, &o, &caps).unwrap_err();
    assert_eq!(
        bad(
            TxOffload {
                checksum: TxChecksum::Validated,
                ..off
            },
            ALL
        ),
        TxBuildError::GsoNeedsPartialChecksum
    );
    assert_eq!(
        bad(
            TxOffload {
                gso: Some(Gso {
                    kind: GsoKind::TcpV4,
                    mss: 0
                }),
                ..off
            },
            ALL
        ),
        TxBuildError::GsoZeroMss
    );
    assert_eq!(
        bad(
            off,
            TxCaps {
                gso_tcpv6: false,
                ..ALL
            }
        ),
        TxBuildError::GsoNotNegotiated {
            kind: GsoKind::TcpV6
        }
    );
}

fn rsp(id: u16, status: i16) -> NetifTxResponse {
    NetifTxResponse { id, status }
}

#[test]
fn completion_after_every_slot_is_answered() {
    let grefs = [1, 2, 3];
    let off = TxOffload {
        checksum: TxChecksum::Partial,
        gso: Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1460,
        }),
    };
    let plan = plan_tx(&[piece(&grefs, 0, 9000)], &off, &ALL).unwrap();
    let mut q = TxQueue::new(256).unwrap();
    let slots = q.submit(&plan, 42u32, 256).unwrap();
    let ids: Vec<u16> = requests(&slots).iter().map(|r| r.id).collect();

    // Not yet published: a response for these ids is a violation.
    assert_eq!(
        q.complete(rsp(ids[0], NETIF_RSP_OKAY)),
        Err(TxViolation::NotInFlight { id: ids[0] })
    );
    q.mark_published();
    assert_eq!(q.in_flight(), 1);

    // Netback answers the first slot, NULL for the extra, then the rest,
    // possibly out of order.
    assert_eq!(q.complete(rsp(ids[0], NETIF_RSP_OKAY)), Ok(None));
    assert_eq!(q.complete(rsp(0xFFFF, NETIF_RSP_NULL)), Ok(None));
    assert_eq!(q.complete(rsp(ids[2], NETIF_RSP_OKAY)), Ok(None));
    assert_eq!(
        q.complete(rsp(ids[1], NETIF_RSP_OKAY)),
        Ok(Some(TxCompletion {
            token: 42,
            status: TxStatus::Okay
        }))
    );
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.free_ids(), 256);
    // Answering again: not in flight.
    assert_eq!(
        q.complete(rsp(ids[1], NETIF_RSP_OKAY)),
        Err(TxViolation::NotInFlight { id: ids[1] })
    );
    // A second NULL: no extra is unanswered.
    assert_eq!(
        q.complete(rsp(0, NETIF_RSP_NULL)),
        Err(TxViolation::UnexpectedNull)
    );
}

#[test]
fn the_worst_status_wins() {
    let mut q = TxQueue::new(64).unwrap();
    let plan = plan_tx(
        &[piece(&[1], 0, 100), piece(&[2], 0, 100)],
        &TxOffload::default(),
        &ALL,
    )
    .unwrap();
    let slots = q.submit(&plan, 'a', 64).unwrap();
    q.mark_published();
    let ids: Vec<u16> = requests(&slots).iter().map(|r| r.id).collect();
    assert_eq!(q.complete(rsp(ids[0], NETIF_RSP_ERROR)), Ok(None));
    assert_eq!(
        q.complete(rsp(ids[1], NETIF_RSP_OKAY)),
        Ok(Some(TxCompletion {
            token: 'a',
            status: TxStatus::Error
        }))
    );
    let slots = q.submit(&plan, 'b', 64).unwrap();
    q.mark_published();
    let ids: Vec<u16> = requests(&slots).iter().map(|r| r.id).collect();
    assert_eq!(q.complete(rsp(ids[1], NETIF_RSP_DROPPED)), Ok(None));
    assert_eq!(
        q.complete(rsp(ids[0], NETIF_RSP_OKAY)),
        Ok(Some(TxCompletion {
            token: 'b',
            status: TxStatus::Dropped
        }))
    );
}

#[test]
fn hostile_responses_are_violations() {
    let mut q = TxQueue::new(256).unwrap();
    let plan = plan_tx(&[piece(&[1], 0, 100)], &TxOffload::default(), &ALL).unwrap();
    let slots = q.submit(&plan, (), 256).unwrap();
    q.mark_published();
    let id = requests(&slots)[0].id;
    assert_eq!(
        q.complete(rsp(256, NETIF_RSP_OKAY)),
        Err(TxViolation::IdOutOfRange {
            id: 256,
            ring_size: 256
        })
    );
    let other = (id + 1) % 256;
    assert_eq!(
        q.complete(rsp(other, NETIF_RSP_OKAY)),
        Err(TxViolation::NotInFlight { id: other })
    );
    assert_eq!(
        q.complete(rsp(id, -3)),
        Err(TxViolation::UnknownStatus { id, status: -3 })
    );
    assert_eq!(
        q.complete(rsp(id, 2)),
        Err(TxViolation::UnknownStatus { id, status: 2 })
    );
    // The packet is still in flight after the refused answers.
    assert_eq!(q.in_flight(), 1);
    assert!(q.complete(rsp(id, NETIF_RSP_OKAY)).unwrap().is_some());
}

#[test]
fn submit_refuses_without_room_and_changes_nothing() {
    let mut q = TxQueue::new(4).unwrap();
    let plan = plan_tx(&[piece(&[1, 2, 3], 0, 9000)], &TxOffload::default(), &ALL).unwrap();
    let err = q.submit(&plan, 7, 2).unwrap_err();
    assert_eq!(err.error, TxSubmitError::RingFull { needed: 3, free: 2 });
    assert_eq!(err.token, 7);
    assert_eq!((q.in_flight(), q.free_ids()), (0, 4));
    q.submit(&plan, 1, 4).unwrap();
    let err = q.submit(&plan, 8, 100).unwrap_err();
    assert_eq!(err.error, TxSubmitError::NoIds { needed: 3, free: 1 });
    assert_eq!(err.token, 8);
}

#[test]
fn abort_returns_every_token_and_resets() {
    let mut q = TxQueue::new(32).unwrap();
    let plan = plan_tx(&[piece(&[1], 0, 100)], &TxOffload::default(), &ALL).unwrap();
    let mut ids = Vec::new();
    for t in 0..5 {
        ids.push(requests(&q.submit(&plan, t, 32).unwrap())[0].id);
        if t < 3 {
            q.mark_published();
        }
    }
    let mut tokens = q.abort_all();
    tokens.sort_unstable();
    assert_eq!(tokens, [0, 1, 2, 3, 4]);
    assert_eq!((q.in_flight(), q.free_ids()), (0, 32));
    // Old ids are not in flight any more.
    assert_eq!(
        q.complete(rsp(ids[0], NETIF_RSP_OKAY)),
        Err(TxViolation::NotInFlight { id: ids[0] })
    );
}

#[test]
fn ids_cycle_through_the_ring() {
    // Many packets through a small ring: ids stay below the ring size and
    // are never handed out twice while in flight.
    let mut q = TxQueue::new(8).unwrap();
    let plan = plan_tx(
        &[piece(&[1], 0, 100), piece(&[2], 0, 100)],
        &TxOffload::default(),
        &ALL,
    )
    .unwrap();
    let mut live: Vec<(u16, u16)> = Vec::new();
    for n in 0..1000u32 {
        if q.free_ids() < 2 {
            let (a, b) = live.remove(0);
            assert_eq!(q.complete(rsp(b, NETIF_RSP_OKAY)), Ok(None));
            assert!(q.complete(rsp(a, NETIF_RSP_OKAY)).unwrap().is_some());
        }
        let slots = q.submit(&plan, n, 8).unwrap();
        q.mark_published();
        let r = requests(&slots);
        for x in &r {
            assert!(x.id < 8);
            assert!(live.iter().all(|(a, b)| *a != x.id && *b != x.id));
        }
        live.push((r[0].id, r[1].id));
    }
}

/// Where each frame byte lives: (grant, offset in its page).
fn byte_map(pieces: &[(Vec<u32>, usize, usize)]) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    for (grefs, off, len) in pieces {
        for b in *off..*off + *len {
            out.push((grefs[b / PAGE_SIZE], b % PAGE_SIZE));
        }
    }
    out
}

fn arb_pieces() -> impl Strategy<Value = Vec<(Vec<u32>, usize, usize)>> {
    prop::collection::vec(
        (0usize..3 * PAGE_SIZE, 0usize..9000).prop_flat_map(|(off, len)| {
            let pages = (off + len).div_ceil(PAGE_SIZE).max(1);
            (
                prop::collection::vec(8u32..100_000, pages),
                Just(off),
                Just(len),
            )
        }),
        1..8,
    )
}

proptest! {
    #[test]
    fn plans_keep_every_byte_once_and_slots_within_pages(pieces in arb_pieces()) {
        let tx: Vec<TxPiece<'_>> = pieces
            .iter()
            .map(|(g, o, l)| TxPiece { grefs: g, offset: *o, len: *l })
            .collect();
        let total: usize = pieces.iter().map(|p| p.2).sum();
        match plan_tx(&tx, &TxOffload::default(), &ALL) {
            Ok(plan) => {
                let mut got = Vec::new();
                for c in plan.chunks() {
                    prop_assert!(c.len > 0);
                    prop_assert!(usize::from(c.offset) + usize::from(c.len) <= PAGE_SIZE);
                    for b in 0..usize::from(c.len) {
                        got.push((c.gref, usize::from(c.offset) + b));
                    }
                }
                prop_assert_eq!(got, byte_map(&pieces));
                prop_assert_eq!(plan.len(), total);
                prop_assert!(plan.requests() <= MAX_TX_REQUESTS);

                // The slots a queue makes carry the same chunks.
                let mut q = TxQueue::new(256).unwrap();
                let slots = q.submit(&plan, (), 256).unwrap();
                let r = requests(&slots);
                prop_assert_eq!(usize::from(r[0].size), total);
                for (i, (req, c)) in r.iter().zip(plan.chunks()).enumerate() {
                    prop_assert_eq!((req.gref, req.offset), (c.gref, c.offset));
                    if i > 0 {
                        prop_assert_eq!(req.size, c.len);
                    }
                    prop_assert_eq!(req.flags & NETTXF_MORE_DATA != 0, i + 1 < r.len());
                }
            }
            Err(TxBuildError::TooShort { len }) => prop_assert!(len < ETH_HLEN && len == total),
            Err(TxBuildError::TooLarge { len }) => prop_assert!(len > XEN_NETIF_MAX_TX_SIZE),
            Err(TxBuildError::TooManySlots { needed }) => prop_assert!(needed > MAX_TX_REQUESTS),
            Err(TxBuildError::FirstSlotShort { len }) => prop_assert!(len < ETH_HLEN),
            Err(e) => prop_assert!(false, "unexpected {:?}", e),
        }
    }
}

proptest! {
    /// `plan_single` says yes exactly to the one-page frames without GSO
    /// that `plan_tx` plans as one request slot, with the same chunk and
    /// flags; and `submit_single` writes the request `submit` writes and
    /// leaves the same state (the same ids, the same completion).
    #[test]
    fn the_single_slot_way_matches_plan_and_submit(
        gref in 0u32..1000,
        offset in 0usize..4200,
        len in 0usize..4200,
        checksum in prop_oneof![
            Just(TxChecksum::Complete),
            Just(TxChecksum::Validated),
            Just(TxChecksum::Partial)
        ],
        gso in any::<bool>(),
        partial_csum in any::<bool>(),
        before in 0usize..5,
    ) {
        let caps = TxCaps { partial_csum, ..ALL };
        let offload = TxOffload {
            checksum,
            gso: gso.then_some(Gso { kind: GsoKind::TcpV4, mss: 1448 }),
        };
        let grefs = [gref];
        let plan = plan_tx(&[piece(&grefs, offset, len)], &offload, &caps);
        let single = plan_single(gref, offset, len, &offload, &caps);
        match (&plan, single) {
            (Ok(p), Some((chunk, flags))) => {
                prop_assert_eq!((p.requests(), p.slots()), (1, 1));
                prop_assert_eq!(p.chunks().next(), Some(&chunk));
                let mut a = TxQueue::new(8).unwrap();
                let mut b = TxQueue::new(8).unwrap();
                // Some packets in flight first, so that ids are not fresh.
                for i in 0..before {
                    let ra = a.submit(p, i, 8).unwrap();
                    let rb = b.submit_single(chunk, flags, i, 8).unwrap();
                    prop_assert_eq!(requests(&ra), std::vec![rb]);
                }
                a.mark_published();
                b.mark_published();
                let sa = a.submit(p, 99, 8).unwrap();
                let rb = b.submit_single(chunk, flags, 99, 8).unwrap();
                prop_assert_eq!(requests(&sa), std::vec![rb]);
                prop_assert_eq!((a.in_flight(), a.free_ids()), (b.in_flight(), b.free_ids()));
                a.mark_published();
                b.mark_published();
                let ok = NetifTxResponse { id: rb.id, status: NETIF_RSP_OKAY };
                let ca = a.complete(ok).unwrap().map(|c| (c.token, c.status));
                let cb = b.complete(ok).unwrap().map(|c| (c.token, c.status));
                prop_assert_eq!(ca, cb);
                prop_assert_eq!(cb.map(|c| c.0), Some(99));
            }
            // Refused or laid out otherwise: the long way decides.
            (Err(_), None) => {}
            (Ok(p), None) => prop_assert!(p.slots() > 1 || p.requests() > 1 || gso || len > 4096 - offset.min(4096)),
            (Err(e), Some(s)) => prop_assert!(false, "plan_tx refused ({}) what plan_single took: {:?}", e, s),
        }
    }
}

#[test]
fn submit_single_refuses_without_room_and_changes_nothing() {
    let chunk = TxChunk {
        gref: 1,
        offset: 0,
        len: 60,
    };
    let mut q = TxQueue::new(2).unwrap();
    let e = q.submit_single(chunk, 0, "a", 0).unwrap_err();
    assert_eq!(e.token, "a");
    assert!(matches!(
        e.error,
        TxSubmitError::RingFull { needed: 1, free: 0 }
    ));
    q.submit_single(chunk, 0, "b", 2).unwrap();
    q.submit_single(chunk, 0, "c", 2).unwrap();
    let e = q.submit_single(chunk, 0, "d", 2).unwrap_err();
    assert_eq!(e.token, "d");
    assert!(matches!(
        e.error,
        TxSubmitError::NoIds { needed: 1, free: 0 }
    ));
    assert_eq!((q.in_flight(), q.free_ids()), (2, 0));
}
