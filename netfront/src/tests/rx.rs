use std::string::ToString;
use std::vec;
use std::vec::Vec;

use crate::abi::*;
use crate::csum::CsumAction;
use crate::rx::*;
use crate::tx::{Gso, GsoKind};

const RING: u32 = 256;

const SG_GSO: RxConfig = RxConfig {
    sg: true,
    gso_tcpv4: true,
    gso_tcpv6: true,
    headroom: 0,
};

/// A slab with `n` buffers posted from ring index `start`; buffer `i` is
/// `1000 + i` granted as `5000 + i`.
fn posted(start: RingIdx, n: u32) -> RxBuffers<u32> {
    let mut b = RxBuffers::new(RING).unwrap();
    for i in 0..n {
        let idx = start.wrapping_add(i);
        let req = b.post(idx, 5000 + i, 1000 + i).unwrap();
        assert_eq!(req.id, (idx % RING) as u16);
        assert_eq!(req.gref, 5000 + i);
    }
    b
}

/// What Linux's netback writes for one packet of `len` bytes from ring
/// index `cons` (`xenvif_rx_skb`): the first data slot, the extras, then
/// the other data slots; each data slot filled from `headroom` to the page
/// end, `offset` 0 and `status` the end of the data.
struct Netback {
    headroom: u16,
    flags0: u16,
    extras: Vec<NetifExtraInfo>,
}

impl Netback {
    fn plain() -> Self {
        Self {
            headroom: 0,
            flags0: 0,
            extras: Vec::new(),
        }
    }

    fn packet(&self, cons: RingIdx, len: usize) -> Vec<RxSlotBytes> {
        let h = usize::from(self.headroom);
        let mut slots = Vec::new();
        let mut left = len;
        let mut extras = self.extras.clone();
        let n_extras = extras.len();
        let mut slot = 0usize;
        while left > 0 || !extras.is_empty() {
            let idx = cons.wrapping_add(slot as u32);
            if slot != 0 && !extras.is_empty() {
                let mut e = extras.remove(0);
                if !extras.is_empty() {
                    e.flags |= XEN_NETIF_EXTRA_FLAG_MORE;
                }
                slots.push(RxSlotBytes::from_extra(&e));
            } else {
                let n = left.min(PAGE_SIZE - h);
                left -= n;
                let mut flags = if left > 0 { NETRXF_MORE_DATA } else { 0 };
                if slot == 0 {
                    flags |= self.flags0;
                    if n_extras > 0 {
                        flags |= NETRXF_EXTRA_INFO;
                    }
                }
                slots.push(RxSlotBytes::from_response(&NetifRxResponse {
                    id: (idx % RING) as u16,
                    offset: 0,
                    flags,
                    status: (h + n) as i16,
                }));
            }
            slot += 1;
        }
        slots
    }
}

fn reader(slots: &[RxSlotBytes], cons: RingIdx) -> impl FnMut(RingIdx) -> RxSlotBytes + '_ {
    move |idx| slots[idx.wrapping_sub(cons) as usize]
}

fn gso_extra(kind: u8, mss: u16) -> NetifExtraInfo {
    NetifExtraInfo::new_gso(
        0,
        ExtraGso {
            size: mss,
            type_: kind,
            pad: 0,
            features: 0,
        },
    )
}

fn xdp_extra(h: u16) -> NetifExtraInfo {
    NetifExtraInfo::new_xdp(
        0,
        ExtraXdp {
            headroom: h,
            pad: [0; 2],
        },
    )
}

fn frame(p: RxPacket<u32>) -> (u32, RxFrame<u32>, Vec<u32>) {
    let spare = p.spare.iter().map(|s| s.buf).collect();
    match p.kind {
        RxKind::Frame(f) => (p.slots, f, spare),
        RxKind::Dropped(d) => panic!("dropped: {d:?}"),
    }
}

#[test]
fn one_slot_frame() {
    let mut b = posted(0, 8);
    let slots = Netback {
        flags0: NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED,
        ..Netback::plain()
    }
    .packet(0, 60);
    let p = b
        .take_packet(0, 8, &SG_GSO, reader(&slots, 0))
        .unwrap()
        .unwrap();
    let (n, f, spare) = frame(p);
    assert_eq!(n, 1);
    assert!(spare.is_empty());
    assert_eq!(f.len, 60);
    assert_eq!(f.frags.len(), 1);
    let fr = f.frags.get(0).unwrap();
    assert_eq!(
        (fr.posted.buf, fr.posted.gref, fr.offset, fr.len),
        (1000, 5000, 0, 60)
    );
    assert!(f.csum_blank && f.data_validated);
    assert_eq!(
        f.checksum_action(),
        CsumAction::Complete {
            recompute_pseudo: false
        }
    );
    assert_eq!(b.posted(), 7, "the buffer left the slab");
    // Nothing published: nothing taken.
    assert_eq!(b.take_packet(1, 0, &SG_GSO, |_| unreachable!()), Ok(None));
}

#[test]
fn maximal_gso_frame_with_extras() {
    let mut b = posted(0, RING);
    let nb = Netback {
        headroom: 0,
        flags0: NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED,
        extras: vec![
            gso_extra(XEN_NETIF_GSO_TYPE_TCPV4, 1448),
            NetifExtraInfo::new_hash(
                0,
                ExtraHash {
                    type_: XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
                    algorithm: XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ,
                    value: [0x78, 0x56, 0x34, 0x12],
                },
            ),
        ],
    };
    let len = 65536 + 14;
    let slots = nb.packet(0, len);
    assert_eq!(slots.len(), 17 + 2);
    let (n, f, spare) = frame(
        b.take_packet(0, slots.len() as u32, &SG_GSO, reader(&slots, 0))
            .unwrap()
            .unwrap(),
    );
    assert_eq!(n, 19);
    assert_eq!(f.len, len);
    assert_eq!(f.frags.len(), 17);
    assert_eq!(
        f.gso,
        Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1448
        })
    );
    assert_eq!(
        f.hash,
        Some(RxHash {
            kind: XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
            algorithm: XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ,
            value: 0x1234_5678
        })
    );
    // Data slots are 0 and 3..19; the extras' buffers (slots 1 and 2) are
    // spare for reposting.
    let bufs: Vec<u32> = f.frags.iter().map(|x| x.posted.buf).collect();
    let mut want = vec![1000];
    want.extend(1003..1019);
    assert_eq!(bufs, want);
    assert_eq!(spare, [1001, 1002]);
    assert!(f.frags.iter().all(|x| x.offset == 0));
    assert_eq!(b.posted(), RING - 19);
}

#[test]
fn xdp_headroom_as_netback_lays_it_out() {
    let cfg = RxConfig {
        headroom: 256,
        ..SG_GSO
    };
    let nb = Netback {
        headroom: 256,
        flags0: 0,
        extras: vec![xdp_extra(256)],
    };
    // One slot: data at [256, 256 + 1514), status says 256 + 1514.
    let mut b = posted(0, 64);
    let slots = nb.packet(0, 1514);
    assert_eq!(slots[0].response().status, 256 + 1514);
    assert_eq!(slots[0].response().offset, 0);
    let (n, f, spare) = frame(
        b.take_packet(0, 64, &cfg, reader(&slots, 0))
            .unwrap()
            .unwrap(),
    );
    assert_eq!((n, f.len, spare.len()), (2, 1514, 1));
    let fr = f.frags.get(0).unwrap();
    assert_eq!((fr.offset, fr.len), (256, 1514));

    // Several slots: every data slot starts at the headroom.
    let mut b = posted(0, 64);
    let slots = nb.packet(0, 9000);
    let (_, f, _) = frame(
        b.take_packet(0, 64, &cfg, reader(&slots, 0))
            .unwrap()
            .unwrap(),
    );
    let lens: Vec<(u16, u16)> = f.frags.iter().map(|x| (x.offset, x.len)).collect();
    assert_eq!(lens, [(256, 3840), (256, 3840), (256, 1320)]);
    assert_eq!(f.len, 9000);

    // A maximal frame takes 18 data slots with this headroom: allowed.
    let mut b = posted(0, 64);
    let slots = nb.packet(0, MAX_RX_FRAME);
    let (_, f, _) = frame(
        b.take_packet(0, 64, &cfg, reader(&slots, 0))
            .unwrap()
            .unwrap(),
    );
    assert_eq!((f.frags.len(), f.len), (18, MAX_RX_FRAME));
}

#[test]
fn xdp_headroom_violations() {
    let cfg = RxConfig {
        headroom: 256,
        ..SG_GSO
    };
    let nb = Netback {
        headroom: 256,
        flags0: 0,
        extras: vec![xdp_extra(256)],
    };
    let check = |slots: Vec<RxSlotBytes>, cfg: RxConfig, want: RxViolation| {
        let mut b = posted(0, 16);
        assert_eq!(
            b.take_packet(0, slots.len() as u32, &cfg, reader(&slots, 0)),
            Err(want)
        );
        assert_eq!(b.posted(), 16, "nothing taken on a violation");
    };
    // Negotiated but missing.
    check(
        Netback::plain().packet(0, 100),
        cfg,
        RxViolation::MissingHeadroom { expected: 256 },
    );
    // Not the negotiated value.
    let other = Netback {
        extras: vec![xdp_extra(128)],
        ..Netback::plain()
    };
    check(
        other.packet(0, 100),
        cfg,
        RxViolation::BadHeadroom {
            got: 128,
            expected: 256,
        },
    );
    // Not negotiated at all.
    check(
        nb.packet(0, 100),
        SG_GSO,
        RxViolation::BadHeadroom {
            got: 256,
            expected: 0,
        },
    );
    // A non-zero offset, or a status inside the headroom.
    for (offset, status) in [(4u16, 356i16), (0, 255), (0, 4097)] {
        let mut slots = nb.packet(0, 100);
        let mut r = slots[0].response();
        r.offset = offset;
        r.status = status;
        slots[0] = RxSlotBytes::from_response(&r);
        check(
            slots,
            cfg,
            RxViolation::BadRange {
                idx: 0,
                offset,
                status,
            },
        );
    }
    // The status may be exactly the headroom (an empty slot) or the page end.
    let mut b = posted(0, 16);
    let mut slots = nb.packet(0, 100);
    let mut r = slots[0].response();
    r.status = 4096;
    slots[0] = RxSlotBytes::from_response(&r);
    let (_, f, _) = frame(
        b.take_packet(0, 2, &cfg, reader(&slots, 0))
            .unwrap()
            .unwrap(),
    );
    assert_eq!(f.len, 4096 - 256);
}

#[test]
fn negative_status_drops_the_packet_and_returns_every_buffer() {
    let mut b = posted(0, 32);
    let nb = Netback {
        extras: vec![gso_extra(XEN_NETIF_GSO_TYPE_TCPV6, 1400)],
        ..Netback::plain()
    };
    let mut slots = nb.packet(0, 9000);
    // A grant copy failed for the third slot (netback writes the copy's
    // status there).
    let mut r = slots[2].response();
    r.status = -12;
    slots[2] = RxSlotBytes::from_response(&r);
    let p = b
        .take_packet(0, 32, &SG_GSO, reader(&slots, 0))
        .unwrap()
        .unwrap();
    assert_eq!(p.slots, 4);
    assert_eq!(
        p.kind,
        RxKind::Dropped(RxDrop::BackendStatus { status: -12 })
    );
    let mut spare: Vec<u32> = p.spare.iter().map(|s| s.buf).collect();
    spare.sort_unstable();
    assert_eq!(spare, [1000, 1001, 1002, 1003]);
    // The next packet parses from where this one ended.
    let slots = Netback::plain().packet(4, 100);
    let (_, f, _) = frame(
        b.take_packet(4, 28, &SG_GSO, reader(&slots, 4))
            .unwrap()
            .unwrap(),
    );
    assert_eq!(f.frags.get(0).unwrap().posted.buf, 1004);
}

#[test]
fn runts_are_dropped() {
    let mut b = posted(0, 4);
    let slots = Netback::plain().packet(0, 13);
    let p = b
        .take_packet(0, 4, &SG_GSO, reader(&slots, 0))
        .unwrap()
        .unwrap();
    assert_eq!(p.kind, RxKind::Dropped(RxDrop::Runt { len: 13 }));
    assert_eq!(p.spare.len(), 1);
}

#[test]
fn chain_violations() {
    let check =
        |mut b: RxBuffers<u32>, slots: &[RxSlotBytes], cfg: &RxConfig, want: RxViolation| {
            let before = b.posted();
            let r = b.take_packet(10, slots.len() as u32, cfg, reader(slots, 10));
            assert_eq!(r, Err(want));
            assert_eq!(b.posted(), before, "nothing taken on a violation");
            let msg = want.to_string();
            assert!(msg.starts_with("backend fault"), "{msg}");
        };
    let one = Netback::plain().packet(10, 100);

    // A response where nothing was posted.
    check(
        posted(11, 4),
        &one,
        &SG_GSO,
        RxViolation::NotPosted { idx: 10 },
    );
    // A response id that is not its slot's.
    let mut slots = one.clone();
    let mut r = slots[0].response();
    r.id = 3;
    slots[0] = RxSlotBytes::from_response(&r);
    check(
        posted(10, 4),
        &slots,
        &SG_GSO,
        RxViolation::IdMismatch {
            idx: 10,
            expected: 10,
            got: 3,
        },
    );
    // Offset plus status beyond the page.
    let mut slots = one.clone();
    let mut r = slots[0].response();
    r.offset = 4000;
    slots[0] = RxSlotBytes::from_response(&r);
    check(
        posted(10, 4),
        &slots,
        &SG_GSO,
        RxViolation::BadRange {
            idx: 10,
            offset: 4000,
            status: 100,
        },
    );
    // A chain running past the published responses.
    let chain = Netback::plain().packet(10, 9000);
    check(
        posted(10, 8),
        &chain[..2],
        &SG_GSO,
        RxViolation::Truncated { slots: 2 },
    );
    let with_extra = Netback {
        extras: vec![gso_extra(XEN_NETIF_GSO_TYPE_TCPV4, 1000)],
        ..Netback::plain()
    }
    .packet(10, 100);
    check(
        posted(10, 8),
        &with_extra[..1],
        &SG_GSO,
        RxViolation::Truncated { slots: 1 },
    );
    // Multi-slot without SG.
    let nosg = RxConfig {
        sg: false,
        ..SG_GSO
    };
    check(
        posted(10, 8),
        &chain,
        &nosg,
        RxViolation::UnexpectedMultiSlot,
    );
}

#[test]
fn slot_count_limits() {
    // A chain of small slots: 18 data slots are fine, 19 only when the
    // first holds at most 256 bytes, 20 never.
    let chain = |n: usize, first: i16| -> Vec<RxSlotBytes> {
        (0..n)
            .map(|i| {
                RxSlotBytes::from_response(&NetifRxResponse {
                    id: i as u16,
                    offset: 0,
                    flags: if i + 1 < n { NETRXF_MORE_DATA } else { 0 },
                    status: if i == 0 { first } else { 100 },
                })
            })
            .collect()
    };
    let take = |slots: Vec<RxSlotBytes>| {
        let mut b = posted(0, 64);
        b.take_packet(0, 64, &SG_GSO, reader(&slots, 0))
            .map(|p| p.map(|p| p.slots))
    };
    assert_eq!(take(chain(18, 1000)), Ok(Some(18)));
    assert_eq!(
        take(chain(19, 1000)),
        Err(RxViolation::TooManySlots { max: 18 })
    );
    assert_eq!(take(chain(19, 256)), Ok(Some(19)));
    assert_eq!(
        take(chain(20, 256)),
        Err(RxViolation::TooManySlots { max: 19 })
    );
}

#[test]
fn extra_info_violations() {
    let with = |extras: Vec<NetifExtraInfo>| {
        Netback {
            extras,
            ..Netback::plain()
        }
        .packet(0, 100)
    };
    let take = |slots: Vec<RxSlotBytes>, cfg: RxConfig| {
        let mut b = posted(0, 16);
        let r = b.take_packet(0, slots.len() as u32, &cfg, reader(&slots, 0));
        if r.is_err() {
            assert_eq!(b.posted(), 16);
        }
        r.map(|p| p.map(|p| p.slots))
    };
    let raw = |type_: u8| NetifExtraInfo {
        type_,
        flags: 0,
        u: [0; 3],
    };
    for t in [
        XEN_NETIF_EXTRA_TYPE_NONE,
        XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
        XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
        6,
        255,
    ] {
        assert_eq!(
            take(with(vec![raw(t)]), SG_GSO),
            Err(RxViolation::BadExtraType { type_: t })
        );
    }
    let gso = gso_extra(XEN_NETIF_GSO_TYPE_TCPV4, 1000);
    assert_eq!(
        take(with(vec![gso, gso]), SG_GSO),
        Err(RxViolation::DuplicateExtra {
            type_: XEN_NETIF_EXTRA_TYPE_GSO
        })
    );
    for (t, mss) in [
        (XEN_NETIF_GSO_TYPE_TCPV4, 0),
        (XEN_NETIF_GSO_TYPE_NONE, 1000),
        (3, 1000),
    ] {
        assert_eq!(
            take(with(vec![gso_extra(t, mss)]), SG_GSO),
            Err(RxViolation::BadGso {
                size: mss,
                type_: t
            })
        );
    }
    let no_v4 = RxConfig {
        gso_tcpv4: false,
        ..SG_GSO
    };
    assert_eq!(
        take(with(vec![gso]), no_v4),
        Err(RxViolation::BadGso {
            size: 1000,
            type_: XEN_NETIF_GSO_TYPE_TCPV4
        })
    );
    // An endless chain of extras is bounded by the duplicate check.
    let mut more = gso;
    more.flags = XEN_NETIF_EXTRA_FLAG_MORE;
    let mut slots = Netback {
        extras: vec![gso],
        ..Netback::plain()
    }
    .packet(0, 100);
    slots.insert(1, RxSlotBytes::from_extra(&more));
    assert_eq!(
        take(slots, SG_GSO),
        Err(RxViolation::DuplicateExtra {
            type_: XEN_NETIF_EXTRA_TYPE_GSO
        })
    );
    // All three kinds at once are fine.
    let three = Netback {
        headroom: 64,
        flags0: 0,
        extras: vec![
            gso,
            NetifExtraInfo::new_hash(0, ExtraHash::default()),
            xdp_extra(64),
        ],
    }
    .packet(0, 100);
    let cfg = RxConfig {
        headroom: 64,
        ..SG_GSO
    };
    assert_eq!(take(three, cfg), Ok(Some(4)));
}

#[test]
fn packets_across_the_index_wrap() {
    let start = u32::MAX - 2;
    let mut b = posted(start, 16);
    let slots = Netback::plain().packet(start, 20000);
    assert_eq!(slots.len(), 5);
    let (n, f, _) = frame(
        b.take_packet(start, 16, &SG_GSO, reader(&slots, start))
            .unwrap()
            .unwrap(),
    );
    assert_eq!((n, f.len), (5, 20000));
}

#[test]
fn checksum_actions() {
    let mut f = RxFrame::<u32> {
        frags: Default::default(),
        len: 60,
        csum_blank: false,
        data_validated: false,
        gso: None,
        hash: None,
    };
    assert_eq!(f.checksum_action(), CsumAction::Verify);
    f.data_validated = true;
    assert_eq!(f.checksum_action(), CsumAction::Validated);
    f.gso = Some(Gso {
        kind: GsoKind::TcpV4,
        mss: 1000,
    });
    assert_eq!(
        f.checksum_action(),
        CsumAction::Complete {
            recompute_pseudo: true
        }
    );
    f.csum_blank = true;
    assert_eq!(
        f.checksum_action(),
        CsumAction::Complete {
            recompute_pseudo: false
        }
    );
}

#[test]
fn posting_and_draining() {
    assert!(RxBuffers::<u32>::new(0).is_none());
    assert!(RxBuffers::<u32>::new(100).is_none());
    assert!(RxBuffers::<u32>::new(65536).is_none());
    let mut b = posted(0, RING);
    assert_eq!(b.posted(), RING);
    // Posting over a posted slot is the driver's bug.
    let err = b.post(RING, 1, 77).unwrap_err();
    assert_eq!(err.error, RxPostError::SlotBusy { idx: RING });
    assert_eq!(err.buf, 77);
    let mut all: Vec<u32> = b.drain().into_iter().map(|p| p.buf).collect();
    all.sort_unstable();
    assert_eq!(all, (1000..1000 + RING).collect::<Vec<_>>());
    assert_eq!(b.posted(), 0);
    assert!(b.post(RING, 1, 77).is_ok());
}

#[test]
fn refill_policy() {
    let r = RxRefill::new(RING, &SG_GSO);
    // 64 KiB + headers in 4 KiB slots: 17, plus GSO and hash extras.
    assert_eq!(r.min_posted(), 19);
    assert_eq!(r.target(), RING);
    assert_eq!(r.to_post(0), RING);
    assert_eq!(r.to_post(RING), 0);
    assert_eq!(r.to_post(RING - 31), 0, "below a batch: wait");
    assert_eq!(r.to_post(RING - 32), 32);
    // Under the minimum, always refill.
    let small = RxRefill::new(16, &SG_GSO);
    assert_eq!(small.min_posted(), 16, "bounded by the ring");
    assert_eq!(small.to_post(15), 1);
    let xdp = RxRefill::new(
        RING,
        &RxConfig {
            headroom: 256,
            ..SG_GSO
        },
    );
    assert_eq!(xdp.min_posted(), 18 + 3);
    let nosg = RxRefill::new(
        RING,
        &RxConfig {
            sg: false,
            gso_tcpv4: false,
            gso_tcpv6: false,
            headroom: 0,
        },
    );
    assert_eq!(nosg.min_posted(), 2);
}

#[test]
fn producer_index_tracking() {
    let mut t = ProdTracker::new(100);
    assert_eq!(t.observe(100, 100, 256), Ok(0));
    assert_eq!(t.observe(110, 100, 256), Ok(10));
    assert_eq!(t.observe(110, 105, 251), Ok(5));
    assert_eq!(
        t.observe(109, 105, 251),
        Err(ProdViolation::Backwards {
            last: 110,
            new: 109
        })
    );
    assert_eq!(
        t.observe(400, 105, 251),
        Err(ProdViolation::TooFar {
            new: 400,
            cons: 105,
            limit: 251
        })
    );
    assert_eq!(t.last(), 110, "refused values are not taken");
    // Across the 2^32 wrap.
    let mut t = ProdTracker::new(u32::MAX - 5);
    assert_eq!(t.observe(3, u32::MAX - 5, 256), Ok(9));
    assert_eq!(
        t.observe(u32::MAX, u32::MAX - 5, 256),
        Err(ProdViolation::Backwards {
            last: 3,
            new: u32::MAX
        })
    );
    assert!(ProdViolation::Backwards { last: 1, new: 0 }
        .to_string()
        .contains("backwards"));
}

/// `take_next` as `take_packet`: the same outcome (the single frame being
/// the packet of its one fragment), the same slots read, the same buffers
/// left in the slab.
fn same_as_take_packet(slots: &[RxSlotBytes], cons: RingIdx, posted_n: u32, cfg: &RxConfig) {
    let avail = slots.len() as u32;
    let mut a = posted(cons, posted_n);
    let mut b = posted(cons, posted_n);
    let mut read_a = Vec::new();
    let mut read_b = Vec::new();
    let full = a.take_packet(cons, avail, cfg, |i| {
        read_a.push(i);
        slots[i.wrapping_sub(cons) as usize]
    });
    let quick = b.take_next(cons, avail, cfg, |i| {
        read_b.push(i);
        slots[i.wrapping_sub(cons) as usize]
    });
    assert_eq!(read_a, read_b, "the slots read");
    match (full, quick) {
        (Ok(None), Ok(None)) => {}
        (Err(x), Err(y)) => assert_eq!(x, y),
        (Ok(Some(p)), Ok(Some(RxNext::Packet(q)))) => assert_eq!(p, q),
        (
            Ok(Some(p)),
            Ok(Some(RxNext::Single {
                frag,
                csum_blank,
                data_validated,
            })),
        ) => {
            assert_eq!((p.slots, p.spare.len()), (1, 0));
            let RxKind::Frame(f) = p.kind else {
                panic!("take_packet dropped what take_next took as a frame")
            };
            assert_eq!(f.frags.len(), 1);
            assert_eq!(f.frags.get(0), Some(&frag));
            assert_eq!(f.len, usize::from(frag.len));
            assert_eq!(
                (f.csum_blank, f.data_validated),
                (csum_blank, data_validated)
            );
            assert_eq!((f.gso, f.hash), (None, None));
        }
        (x, y) => panic!("take_packet gave {x:?}, take_next {y:?}"),
    }
    assert_eq!(a.posted(), b.posted());
    for i in 0..RING {
        assert_eq!(a.posted_at(i), b.posted_at(i), "slot {i}");
    }
}

#[test]
fn take_next_one_slot_frames_and_the_rest() {
    let cfg = SG_GSO;
    // The short way: one-slot frames with each checksum flag.
    for flags0 in [
        0,
        NETRXF_DATA_VALIDATED,
        NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED,
    ] {
        for len in [14, 60, 1514, 4096] {
            let slots = Netback {
                flags0,
                ..Netback::plain()
            }
            .packet(7, len);
            same_as_take_packet(&slots, 7, 8, &cfg);
            let mut b = posted(7, 8);
            match b.take_next(7, slots.len() as u32, &cfg, reader(&slots, 7)) {
                Ok(Some(RxNext::Single { frag, .. })) => {
                    assert_eq!(
                        (frag.posted.buf, frag.offset, usize::from(frag.len)),
                        (1000, 0, len)
                    )
                }
                other => panic!("{len} bytes: {other:?}"),
            }
        }
    }
    // The long way: chains, extras, runts, drops, bad ids and ranges, a
    // slot not posted, a headroom.
    let chain = Netback::plain().packet(0, 9000);
    same_as_take_packet(&chain, 0, 8, &cfg);
    let gso = Netback {
        flags0: NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED,
        extras: vec![gso_extra(XEN_NETIF_GSO_TYPE_TCPV4, 1448)],
        ..Netback::plain()
    }
    .packet(0, 3000);
    same_as_take_packet(&gso, 0, 8, &cfg);
    let rsp = |id: u16, offset: u16, flags: u16, status: i16| {
        RxSlotBytes::from_response(&NetifRxResponse {
            id,
            offset,
            flags,
            status,
        })
    };
    for slots in [
        vec![rsp(0, 0, 0, 13)],
        vec![rsp(0, 0, 0, -1)],
        vec![rsp(3, 0, 0, 60)],
        vec![rsp(0, 4090, 0, 60)],
        vec![rsp(0, 0, NETRXF_MORE_DATA, 60)],
    ] {
        same_as_take_packet(&slots, 0, 8, &cfg);
    }
    // Not posted at all.
    same_as_take_packet(&[rsp(0, 0, 0, 60)], 0, 0, &cfg);
    // A negotiated headroom takes the long way (and wants its extra).
    let xdp = RxConfig {
        headroom: 256,
        ..cfg
    };
    same_as_take_packet(&[rsp(0, 0, 0, 316)], 0, 8, &xdp);
}

proptest::proptest! {
    /// Whatever the backend writes, `take_next` decides as `take_packet`.
    #[test]
    fn take_next_agrees_with_take_packet(
        cons in proptest::prelude::any::<u32>(),
        posted_n in 0u32..6,
        raw in proptest::collection::vec(
            (0u16..6, 0u16..4200, 0u16..16, -3i16..4200, proptest::prelude::any::<bool>()),
            0..6,
        ),
        sg in proptest::prelude::any::<bool>(),
        headroom in proptest::prop_oneof![proptest::strategy::Just(0u16), proptest::strategy::Just(256u16)],
    ) {
        let cfg = RxConfig { sg, headroom, ..SG_GSO };
        let slots: Vec<RxSlotBytes> = raw
            .iter()
            .enumerate()
            .map(|(i, &(id, offset, flags, status, own_id))| {
                let id = if own_id { (cons.wrapping_add(i as u32) % RING) as u16 } else { id };
                RxSlotBytes::from_response(&NetifRxResponse { id, offset: offset % 4100, flags, status })
            })
            .collect();
        same_as_take_packet(&slots, cons, posted_n, &cfg);
    }
}
