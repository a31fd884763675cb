//! netfront's RX side against a hostile backend: arbitrary response slots
//! (raw bytes, or responses and extras with arbitrary fields) and arbitrary
//! producer indices, consumed as the driver will consume them. Never
//! panics; a violation leaves every posted buffer in the slab; no buffer is
//! lost or duplicated; every frame lies within its pages.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netfront::abi::{NetifExtraInfo, NetifRxResponse, RxSlotBytes, PAGE_SIZE};
use netfront::rx::{ProdTracker, RxBuffers, RxConfig, RxKind, MAX_RX_DATA_SLOTS, MAX_RX_SLOTS};

#[derive(Arbitrary, Debug)]
enum Slot {
    Raw([u8; 8]),
    /// A data response; `own_id` puts the slot's own id in it.
    Rsp {
        own_id: bool,
        id: u16,
        offset: u16,
        flags: u16,
        status: i16,
    },
    Extra {
        type_: u8,
        flags: u8,
        u: [u16; 3],
    },
}

#[derive(Arbitrary, Debug)]
struct Round {
    /// Slots written at `cons + at`.
    writes: Vec<(u8, Slot)>,
    /// The producer index published: `cons + advance`, or any value.
    advance: u16,
    raw_prod: Option<u32>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ring_shift: u8,
    start: u32,
    sg: bool,
    gso: bool,
    headroom: u8,
    rounds: Vec<Round>,
}

fuzz_target!(|input: Input| {
    let ring: u32 = 1 << (1 + input.ring_shift % 8);
    let mask = ring - 1;
    let cfg = RxConfig {
        sg: input.sg,
        gso_tcpv4: input.gso,
        gso_tcpv6: input.gso,
        headroom: [0, 64, 256][usize::from(input.headroom % 3)],
    };
    let mut bufs: RxBuffers<u32> = RxBuffers::new(ring).unwrap();
    let mut slots = vec![RxSlotBytes::default(); ring as usize];
    let mut cons = input.start;
    let mut req_prod = input.start;
    // Every buffer is posted first; buffer n has grant 100 + n.
    for n in 0..ring {
        bufs.post(req_prod, 100 + n, n).unwrap();
        req_prod = req_prod.wrapping_add(1);
    }
    let mut tracker = ProdTracker::new(cons);

    for round in input.rounds {
        for (at, s) in round.writes {
            let idx = cons.wrapping_add(u32::from(at));
            let bytes = match s {
                Slot::Raw(b) => RxSlotBytes(b),
                Slot::Rsp { own_id, id, offset, flags, status } => {
                    RxSlotBytes::from_response(&NetifRxResponse {
                        id: if own_id { (idx & mask) as u16 } else { id },
                        offset,
                        flags,
                        status,
                    })
                }
                Slot::Extra { type_, flags, u } => {
                    RxSlotBytes::from_extra(&NetifExtraInfo { type_, flags, u })
                }
            };
            slots[(idx & mask) as usize] = bytes;
        }
        let prod = round
            .raw_prod
            .unwrap_or_else(|| cons.wrapping_add(u32::from(round.advance)));
        let outstanding = req_prod.wrapping_sub(cons);
        let Ok(mut avail) = tracker.observe(prod, cons, outstanding) else {
            return; // broken
        };
        assert!(avail <= ring);
        while avail > 0 {
            let before = bufs.posted();
            let read = |idx: u32| slots[(idx & mask) as usize];
            let p = match bufs.take_packet(cons, avail, &cfg, read) {
                Ok(Some(p)) => p,
                Ok(None) => unreachable!("responses were available"),
                Err(_) => {
                    assert_eq!(bufs.posted(), before, "a violation takes nothing");
                    return; // broken
                }
            };
            assert!(p.slots >= 1 && p.slots <= avail);
            assert!(p.slots as usize <= MAX_RX_SLOTS);
            let mut back: Vec<(u32, u32)> = p.spare.iter().map(|s| (s.gref, s.buf)).collect();
            if let RxKind::Frame(f) = &p.kind {
                assert!(f.frags.len() >= 1 && f.frags.len() <= MAX_RX_DATA_SLOTS);
                let mut len = 0;
                for fr in f.frags.iter() {
                    assert!(usize::from(fr.offset) + usize::from(fr.len) <= PAGE_SIZE);
                    assert!(fr.offset >= cfg.headroom);
                    len += usize::from(fr.len);
                    back.push((fr.posted.gref, fr.posted.buf));
                }
                assert_eq!(len, f.len);
                assert!(f.len >= 14);
            }
            assert_eq!(back.len(), p.slots as usize, "one buffer per consumed slot");
            assert_eq!(bufs.posted() + p.slots, before);
            // The driver reposts every buffer (frames after the application
            // returns them).
            for (gref, buf) in back {
                assert_eq!(gref, 100 + buf, "a buffer keeps its grant");
                bufs.post(req_prod, gref, buf).unwrap();
                req_prod = req_prod.wrapping_add(1);
            }
            cons = cons.wrapping_add(p.slots);
            avail -= p.slots;
        }
        assert_eq!(bufs.posted(), ring, "no buffer lost");
    }
    let mut all: Vec<u32> = bufs.drain().into_iter().map(|p| p.buf).collect();
    all.sort_unstable();
    assert_eq!(all, (0..ring).collect::<Vec<_>>(), "no buffer duplicated");
});
