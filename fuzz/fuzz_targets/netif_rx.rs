//! netfront's RX side against a hostile backend: arbitrary response slots
//! (raw bytes, responses and extras with arbitrary fields, or whole packets
//! laid out as Linux's netback lays them out) and arbitrary producer indices, consumed as the driver will consume them (every other packet through
//! the short way for one-slot frames, `RxBuffers::take_next`). Never
//! panics; a violation leaves every posted buffer in the slab; no buffer is
//! lost or duplicated; every frame lies within its pages.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netfront::abi::{
    ExtraGso, ExtraHash, ExtraXdp, NetifExtraInfo, NetifRxResponse, RxSlotBytes, NETRXF_EXTRA_INFO,
    NETRXF_MORE_DATA, PAGE_SIZE, XEN_NETIF_EXTRA_FLAG_MORE,
};
use netfront::rx::{
    ProdTracker, RxBuffers, RxConfig, RxFrame, RxKind, RxNext, RxPacket, MAX_RX_DATA_SLOTS,
    MAX_RX_SLOTS,
};
use netfront::InlineVec;

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
    /// A whole packet laid out as Linux's netback lays it out, from here.
    Packet {
        len: u16,
        flags: u16,
        gso: Option<(u8, u16)>,
        hash: bool,
        /// The XDP extra's headroom: `None` for the negotiated one.
        xdp: Option<Option<u16>>,
    },
}

/// The slots Linux's netback writes for one packet (`xenvif_rx_skb`): the
/// first data slot, the extras, the other data slots; data from `headroom`
/// to the page end, `offset` 0, `status` the end of the data.
fn netback_packet(
    start: u32,
    mask: u32,
    len: usize,
    headroom: u16,
    flags0: u16,
    mut extras: Vec<NetifExtraInfo>,
) -> Vec<(u32, RxSlotBytes)> {
    let h = usize::from(headroom).min(PAGE_SIZE - 1);
    let n_extras = extras.len();
    let mut out = Vec::new();
    let mut left = len;
    let mut i = 0u32;
    while (left > 0 || !extras.is_empty() || i == 0) && i < 64 {
        let idx = start.wrapping_add(i);
        if i != 0 && !extras.is_empty() {
            let mut e = extras.remove(0);
            if !extras.is_empty() {
                e.flags |= XEN_NETIF_EXTRA_FLAG_MORE;
            }
            out.push((idx, RxSlotBytes::from_extra(&e)));
        } else {
            let n = left.min(PAGE_SIZE - h);
            left -= n;
            let mut flags = if left > 0 { NETRXF_MORE_DATA } else { 0 };
            if i == 0 {
                flags |= flags0 & !(NETRXF_MORE_DATA | NETRXF_EXTRA_INFO);
                if n_extras > 0 {
                    flags |= NETRXF_EXTRA_INFO;
                }
            }
            out.push((
                idx,
                RxSlotBytes::from_response(&NetifRxResponse {
                    id: (idx & mask) as u16,
                    offset: 0,
                    flags,
                    status: (h + n) as i16,
                }),
            ));
        }
        i += 1;
    }
    out
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
            if let Slot::Packet {
                len,
                flags,
                gso,
                hash,
                xdp,
            } = s
            {
                let mut extras = Vec::new();
                if let Some((type_, size)) = gso {
                    extras.push(NetifExtraInfo::new_gso(
                        0,
                        ExtraGso {
                            size,
                            type_: type_ % 4,
                            pad: 0,
                            features: 0,
                        },
                    ));
                }
                if hash {
                    extras.push(NetifExtraInfo::new_hash(0, ExtraHash::default()));
                }
                let h = match xdp {
                    None => 0,
                    Some(h) => {
                        let h = h.unwrap_or(cfg.headroom);
                        extras.push(NetifExtraInfo::new_xdp(
                            0,
                            ExtraXdp {
                                headroom: h,
                                pad: [0; 2],
                            },
                        ));
                        h
                    }
                };
                for (i, b) in netback_packet(idx, mask, usize::from(len), h, flags, extras) {
                    slots[(i & mask) as usize] = b;
                }
                continue;
            }
            let bytes = match s {
                Slot::Raw(b) => RxSlotBytes(b),
                Slot::Rsp {
                    own_id,
                    id,
                    offset,
                    flags,
                    status,
                } => RxSlotBytes::from_response(&NetifRxResponse {
                    id: if own_id { (idx & mask) as u16 } else { id },
                    offset,
                    flags,
                    status,
                }),
                Slot::Extra { type_, flags, u } => {
                    RxSlotBytes::from_extra(&NetifExtraInfo { type_, flags, u })
                }
                Slot::Packet { .. } => continue,
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
            // Every other packet goes the driver's short way (`take_next`,
            // whose one-slot frame is the packet of its one fragment).
            let parsed = if cons & 1 == 1 {
                bufs.take_next(cons, avail, &cfg, read).map(|n| {
                    n.map(|n| match n {
                        RxNext::Packet(p) => p,
                        RxNext::Single {
                            frag,
                            csum_blank,
                            data_validated,
                        } => {
                            assert_eq!(cfg.headroom, 0, "no short way with a headroom");
                            let mut frags = InlineVec::new();
                            let len = usize::from(frag.len);
                            assert!(frags.push(frag).is_ok());
                            RxPacket {
                                slots: 1,
                                kind: RxKind::Frame(RxFrame {
                                    frags,
                                    len,
                                    csum_blank,
                                    data_validated,
                                    gso: None,
                                    hash: None,
                                }),
                                spare: InlineVec::new(),
                            }
                        }
                    })
                })
            } else {
                bufs.take_packet(cons, avail, &cfg, read)
            };
            let p = match parsed {
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
