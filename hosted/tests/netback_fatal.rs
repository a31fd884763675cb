//! The TX checks of Linux 6.1's netback, driven with raw ring slots: each
//! fatal frontend error disables the vif (no more responses, no xenstore
//! state change), each malformed packet Linux answers with
//! `NETIF_RSP_ERROR` is answered so (and the vif keeps working), extra-info
//! slots get `NETIF_RSP_NULL`, and the slot counts are Linux's.

#[path = "netback_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use grant_tables::DomId;
use hosted::netback::ringfront::{RingFront, RingFrontConfig};
use hosted::netback::NetbackConfig;
use netfront::abi::*;

const FE: DomId = DomId(1);

fn req(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> TxSlotBytes {
    TxSlotBytes::from_request(&NetifTxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    })
}

fn extra(type_: u8, flags: u8, u: [u16; 3]) -> TxSlotBytes {
    TxSlotBytes::from_extra(&NetifExtraInfo { type_, flags, u })
}

fn gso(size: u16, type_: u8) -> TxSlotBytes {
    TxSlotBytes::from_extra(&NetifExtraInfo::new_gso(
        0,
        ExtraGso {
            size,
            type_,
            pad: 0,
            features: 0,
        },
    ))
}

/// Responses published on queue 0 within `wait`, until `n` came.
fn responses(f: &mut RingFront, n: usize, wait: Duration) -> Vec<NetifTxResponse> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    loop {
        out.extend(f.take_tx_raw(0).unwrap());
        if out.len() >= n || Instant::now() >= end {
            return out;
        }
        let _ = f.block_tx(Duration::from_millis(10));
    }
}

/// A packet of `n` request slots from a buffer holding a frame: the first
/// slot `first` bytes at offset 0, the others 50 bytes each after it.
fn chain(g: u32, n: u16, first: u16) -> Vec<TxSlotBytes> {
    let total = first + 50 * (n - 1);
    let mut v = Vec::new();
    for i in 0..n {
        let more = if i + 1 < n { NETTXF_MORE_DATA } else { 0 };
        if i == 0 {
            v.push(req(g, 0, more, 0, total));
        } else {
            v.push(req(g, first + 50 * (i - 1), more, i, 50));
        }
    }
    v
}

type Build = fn(&mut RingFront, u32) -> Vec<TxSlotBytes>;

#[test]
fn fatal_errors_disable_the_vif() {
    let cases: Vec<(&str, Build, &str)> = vec![
        (
            "more slots than queued",
            |_, g| vec![req(g, 0, NETTXF_MORE_DATA, 0, 100)],
            "more slots than the 0 queued",
        ),
        (
            "fatal_skb_slots",
            |_, g| {
                let mut v = vec![req(g, 0, NETTXF_MORE_DATA, 0, 220)];
                for i in 1..=21u16 {
                    v.push(req(g, 0, if i < 21 { NETTXF_MORE_DATA } else { 0 }, i, 10));
                }
                v
            },
            "malicious frontend using 20 slots, threshold 20",
        ),
        (
            "a later slot crosses its page",
            |_, g| vec![req(g, 0, NETTXF_MORE_DATA, 0, 200), req(g, 4000, 0, 1, 100)],
            "cross page boundary, offset 4000, size 100",
        ),
        (
            "the first slot crosses its page",
            |_, g| vec![req(g, 4000, 0, 0, 200)],
            "cross page boundary, offset 4000, size 200",
        ),
        (
            "missing extra",
            |_, g| vec![req(g, 0, NETTXF_EXTRA_INFO, 0, 60)],
            "missing extra info",
        ),
        (
            "extra type 0",
            |_, g| vec![req(g, 0, NETTXF_EXTRA_INFO, 0, 60), extra(0, 0, [0; 3])],
            "invalid extra type 0",
        ),
        (
            "extra type 6",
            |_, g| vec![req(g, 0, NETTXF_EXTRA_INFO, 0, 60), extra(6, 0, [0; 3])],
            "invalid extra type 6",
        ),
        (
            "GSO size 0",
            |_, g| {
                vec![
                    req(g, 0, NETTXF_EXTRA_INFO, 0, 60),
                    gso(0, XEN_NETIF_GSO_TYPE_TCPV4),
                ]
            },
            "GSO size must not be zero",
        ),
        (
            "GSO type 3",
            |_, g| vec![req(g, 0, NETTXF_EXTRA_INFO, 0, 60), gso(1448, 3)],
            "bad GSO type 3",
        ),
        (
            "an extra chain running out",
            |_, g| {
                vec![
                    req(g, 0, NETTXF_EXTRA_INFO, 0, 60),
                    TxSlotBytes::from_extra(&NetifExtraInfo::new_gso(
                        XEN_NETIF_EXTRA_FLAG_MORE,
                        ExtraGso {
                            size: 1448,
                            type_: 1,
                            pad: 0,
                            features: 0,
                        },
                    )),
                ]
            },
            "missing extra info",
        ),
        (
            "more requests than the ring",
            |_, _| Vec::new(),
            "impossible number of TX requests",
        ),
    ];
    let mut w = World::new("fatal", NetbackConfig::new());
    let plat = w.domain(FE);
    let host = w.nb().host_port();
    for (devid, (name, build, why)) in cases.into_iter().enumerate() {
        let devid = devid as u32;
        let mut f = w.front(&plat, devid, RingFrontConfig::default());
        let g = f
            .raw_buffer(&frame(HOST_MAC, mac(FE, devid), 4096, devid))
            .unwrap();
        let slots = build(&mut f, g);
        if slots.is_empty() {
            let p = f.tx_req_prod(0).unwrap();
            f.force_tx_req_prod(0, p.wrapping_add(257)).unwrap();
        } else {
            f.send_raw(0, &slots).unwrap();
        }
        assert!(
            until(|| w.nb().vif(FE, devid).unwrap().disabled.is_some()),
            "{name}: the vif was not disabled"
        );
        let reason = w.nb().vif(FE, devid).unwrap().disabled.unwrap();
        assert!(reason.contains(why), "{name}: {reason}");
        // No state change, no responses, nothing forwarded, nothing served.
        let be = World::be_path(FE, devid);
        assert_eq!(
            w.read(&format!("{be}/state")).as_deref(),
            Some("4"),
            "{name}"
        );
        assert!(
            responses(&mut f, 1, Duration::from_millis(100)).is_empty(),
            "{name}"
        );
        if name != "more requests than the ring" {
            f.send_raw(0, &[req(g, 0, 0, 100, 60)]).unwrap();
            assert!(
                responses(&mut f, 1, Duration::from_millis(200)).is_empty(),
                "{name}"
            );
        }
        assert!(
            host.recv_timeout(Duration::from_millis(50)).is_none(),
            "{name}"
        );
        host.send(&frame(mac(FE, devid), HOST_MAC, 60, 1)).unwrap();
        assert!(
            f.recv_timeout(Duration::from_millis(200), false)
                .unwrap()
                .is_none(),
            "{name}"
        );
        assert_eq!(w.nb().vif(FE, devid).unwrap().tx_packets, 0, "{name}");
    }
}

#[test]
fn malformed_packets_are_answered_with_errors() {
    let mut w = World::new("errors", NetbackConfig::new());
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    let me = mac(FE, 0);
    let data = frame(HOST_MAC, me, 4096, 3);
    let g = f.raw_buffer(&data).unwrap();
    let host = w.nb().host_port();

    let cases: Vec<(&str, Vec<TxSlotBytes>)> = vec![
        ("20 slots", chain(g, 20, 100)),
        ("21 slots", chain(g, 21, 100)),
        (
            "a slot larger than what remains",
            vec![req(g, 0, NETTXF_MORE_DATA, 0, 100), req(g, 100, 0, 1, 200)],
        ),
        ("a 10-byte packet", vec![req(g, 0, 0, 0, 10)]),
        (
            "a first slot of 10 bytes",
            vec![req(g, 0, NETTXF_MORE_DATA, 0, 100), req(g, 10, 0, 1, 90)],
        ),
    ];
    let mut id_base = 0u16;
    for (name, mut slots) in cases {
        // Distinct ids per case.
        for s in &mut slots {
            let mut r = s.request();
            r.id += id_base;
            *s = TxSlotBytes::from_request(&r);
        }
        let n = slots.len();
        f.send_raw(0, &slots).unwrap();
        let rsp = responses(&mut f, n, T);
        assert_eq!(rsp.len(), n, "{name}");
        for (i, r) in rsp.iter().enumerate() {
            assert_eq!(r.status, NETIF_RSP_ERROR, "{name}: slot {i}");
            assert_eq!(r.id, id_base + i as u16, "{name}: slot {i}");
        }
        id_base += 32;
        assert!(
            host.recv_timeout(Duration::from_millis(20)).is_none(),
            "{name}"
        );
    }
    let st = w.nb().vif(FE, 0).unwrap();
    assert!(st.disabled.is_none());
    assert_eq!(st.tx_errors, 5);

    // 19 slots are accepted, as Linux accepts them; the frame is the
    // concatenation of the slots.
    let mut slots = chain(g, 19, 100);
    for s in &mut slots {
        let mut r = s.request();
        r.id += 200;
        *s = TxSlotBytes::from_request(&r);
    }
    f.send_raw(0, &slots).unwrap();
    let rsp = responses(&mut f, 19, T);
    assert_eq!(rsp.len(), 19);
    assert!(rsp.iter().all(|r| r.status == NETIF_RSP_OKAY));
    assert_eq!(
        host.recv_timeout(T).unwrap().data,
        data[..100 + 18 * 50].to_vec()
    );

    // Extra-info slots get NULL responses right after the first request's.
    let tcp = tcp4_frame(HOST_MAC, me, 3000);
    let gt = f.raw_buffer(&tcp).unwrap();
    f.send_raw(
        0,
        &[
            req(
                gt,
                0,
                NETTXF_EXTRA_INFO | NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED,
                7,
                3000,
            ),
            gso(1448, XEN_NETIF_GSO_TYPE_TCPV4),
        ],
    )
    .unwrap();
    let rsp = responses(&mut f, 2, T);
    assert_eq!(rsp.len(), 2);
    assert_eq!((rsp[0].id, rsp[0].status), (7, NETIF_RSP_OKAY));
    assert_eq!(rsp[1].status, NETIF_RSP_NULL);
    let got = host.recv_timeout(T).unwrap();
    assert_eq!(got.data, tcp);
    assert_eq!(got.meta.gso.map(|g| g.mss), Some(1448));

    // Multicast filter updates: 64 addresses, the 65th refused; removing
    // one makes room.
    let mcast = |i: u16, ty: u8| {
        let addr = [0x01, 0x00, 0x5e, 0, (i >> 8) as u8, i as u8];
        vec![
            req(g, 0, NETTXF_EXTRA_INFO, 300 + i, 60),
            TxSlotBytes::from_extra(&NetifExtraInfo::new_mcast(ty, 0, ExtraMcast { addr })),
        ]
    };
    for i in 0..65u16 {
        f.send_raw(0, &mcast(i, XEN_NETIF_EXTRA_TYPE_MCAST_ADD))
            .unwrap();
        let rsp = responses(&mut f, 2, T);
        let want = if i < 64 {
            NETIF_RSP_OKAY
        } else {
            NETIF_RSP_ERROR
        };
        assert_eq!((rsp[0].id, rsp[0].status), (300 + i, want), "add {i}");
        assert_eq!(rsp[1].status, NETIF_RSP_NULL);
    }
    f.send_raw(0, &mcast(0, XEN_NETIF_EXTRA_TYPE_MCAST_DEL))
        .unwrap();
    assert_eq!(responses(&mut f, 2, T)[0].status, NETIF_RSP_OKAY);
    f.send_raw(0, &mcast(64, XEN_NETIF_EXTRA_TYPE_MCAST_ADD))
        .unwrap();
    assert_eq!(responses(&mut f, 2, T)[0].status, NETIF_RSP_OKAY);

    // Still served.
    assert!(w.nb().vif(FE, 0).unwrap().disabled.is_none());
    f.send_raw(0, &[req(g, 0, 0, 999, 60)]).unwrap();
    assert_eq!(responses(&mut f, 1, T)[0].status, NETIF_RSP_OKAY);
    assert_eq!(host.recv_timeout(T).unwrap().data, data[..60].to_vec());
}

#[test]
fn a_lower_fatal_skb_slots_still_never_goes_below_18() {
    let mut w = World::new("fatal18", NetbackConfig::new().fatal_skb_slots(5));
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    let g = f.raw_buffer(&frame(HOST_MAC, mac(FE, 0), 4096, 1)).unwrap();
    // 19 slots: accepted even though 5 was asked for.
    f.send_raw(0, &chain(g, 19, 100)).unwrap();
    let rsp = responses(&mut f, 19, T);
    assert!(rsp.len() == 19 && rsp.iter().all(|r| r.status == NETIF_RSP_OKAY));
    // 22 slots: fatal at 18 after the first.
    let mut v = chain(g, 21, 100);
    let mut last = v[20].request();
    last.flags |= NETTXF_MORE_DATA;
    v[20] = TxSlotBytes::from_request(&last);
    v.push(req(g, 0, 0, 21, 50));
    f.send_raw(0, &v).unwrap();
    assert!(until(|| w.nb().vif(FE, 0).unwrap().disabled.is_some()));
    let reason = w.nb().vif(FE, 0).unwrap().disabled.unwrap();
    assert!(reason.contains("threshold 18"), "{reason}");
}

#[test]
fn a_frontend_signalling_without_work_is_throttled() {
    let mut w = World::new("spurious", NetbackConfig::new());
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    let (tx, _) = f.ports(0).unwrap();
    for _ in 0..40 {
        grant_tables::EventChannels::notify(&plat, tx).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let st = w.nb().vif(FE, 0).unwrap();
    assert!(st.spurious_events >= 5, "{st:?}");
    assert!(st.disabled.is_none());
    // Real work is still served (once the throttle has passed at worst).
    let data = frame(HOST_MAC, mac(FE, 0), 60, 1);
    f.send(&data).unwrap();
    assert_eq!(w.nb().host_port().recv_timeout(T).unwrap().data, data);
}
