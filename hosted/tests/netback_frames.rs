//! The hosted netback against a ring-level frontend (netfront's protocol
//! layer on granted rings): the handshake's keys, frames both ways with
//! their bytes checked, multi-slot RX (large frames, the GSO extra, the XDP
//! headroom), scatter-gather TX, queues and event channels, the RX queue's
//! expiry.

#[path = "netback_common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use grant_tables::DomId;
use hosted::netback::ringfront::RingFrontConfig;
use hosted::netback::{FrameMeta, HostFrame, NetbackConfig};
use netfront::tx::TxStatus;
use netfront::tx::{Gso, GsoKind, TxChecksum, TxOffload};

const FE: DomId = DomId(1);

fn host_recv(w: &World) -> HostFrame {
    w.nb()
        .host_port()
        .recv_timeout(T)
        .expect("a frame on the host port")
}

#[test]
fn handshake_keys_and_state() {
    let mut w = World::new("keys", NetbackConfig::new().max_queues(4));
    let plat = w.domain(FE);
    let f = w.front(&plat, 0, RingFrontConfig::default());
    let be = World::be_path(FE, 0);
    for (k, v) in [
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-gso-tcpv6", "1"),
        ("feature-ipv6-csum-offload", "1"),
        ("feature-rx-copy", "1"),
        ("feature-rx-flip", "0"),
        ("feature-xdp-headroom", "1"),
        ("feature-split-event-channels", "1"),
        ("multi-queue-max-queues", "4"),
        ("state", "4"),
    ] {
        assert_eq!(w.read(&format!("{be}/{k}")).as_deref(), Some(v), "{k}");
    }
    assert_eq!(w.read(&format!("{be}/feature-ctrl-ring")), None);
    let st = w.wait_vif(FE, 0, 1);
    assert_eq!(st.queues, 1);
    assert!(st.request.sg && st.request.gso_tcpv4 && st.request.rx_notify);
    assert!(st.request.csum_ipv4 && st.request.csum_ipv6);
    assert_eq!(st.request.xdp_headroom, 0);
    assert!(matches!(
        st.request.queues[0].events,
        netfront::features::QueueEvents::Split { .. }
    ));
    let neg = f.negotiated().unwrap();
    assert!(neg.split_event_channels && neg.tx_sg && neg.tx_gso_tcpv4);
    assert!(st.disabled.is_none());
}

#[test]
fn frames_both_ways_with_their_bytes() {
    let mut w = World::new("both", NetbackConfig::new());
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    let me = mac(FE, 0);
    let host = w.nb().host_port();
    let mut seed = 0;
    for len in [14usize, 15, 60, 64, 127, 128, 129, 1000, 1514, 4096] {
        seed += 1;
        // Frontend to host.
        let out = frame(HOST_MAC, me, len, seed);
        f.send(&out).unwrap();
        let got = host_recv(&w);
        assert_eq!(got.data, out, "TX frame of {len} bytes");
        assert_eq!(got.meta, FrameMeta::default());
        let done = tx_done(&mut f, 1);
        assert_eq!(done[0].status, TxStatus::Okay);
        // Host to frontend (unicast: its address was learned).
        seed += 1;
        let back = frame(me, HOST_MAC, len, seed);
        host.send(&back).unwrap();
        let r = recv(&mut f);
        assert_eq!(r.data, back, "RX frame of {len} bytes");
        assert_eq!(r.frags, 1);
        assert_eq!(r.slots, 1);
        assert!(r.dropped.is_none());
    }
    // Broadcast from the host reaches the frontend.
    let b = frame(BCAST, HOST_MAC, 60, 99);
    host.send(&b).unwrap();
    assert_eq!(recv(&mut f).data, b);
    let st = w.wait_vif(FE, 0, 1);
    assert_eq!(st.tx_packets, 10);
    assert_eq!(st.rx_packets, 11);
    assert_eq!(st.tx_errors + st.rx_dropped, 0);
    // Nothing leaked in the backend.
    assert!(until(|| {
        let b = w.nb().frame_buffers().unwrap();
        b[0] == b[2] && b[1] == b[3]
    }));
}

#[test]
fn multi_slot_rx_and_the_gso_extra() {
    let mut w = World::new("rxsg", NetbackConfig::new());
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    let me = mac(FE, 0);
    f.send(&frame(HOST_MAC, me, 60, 1)).unwrap();
    host_recv(&w);
    let host = w.nb().host_port();
    for (i, len) in [4097usize, 8192, 9000, 20000, 65535, 65536 + 18]
        .into_iter()
        .enumerate()
    {
        let data = frame(me, HOST_MAC, len, 10 + i as u32);
        host.send(&data).unwrap();
        let r = recv(&mut f);
        assert_eq!(r.data.len(), len);
        assert!(r.data == data, "frame of {len} bytes differs");
        assert_eq!(r.frags, len.div_ceil(4096), "{len}");
        assert_eq!(r.slots as usize, len.div_ceil(4096));
        assert!(r.gso.is_none());
    }
    // A GSO frame with a blank checksum: the GSO extra, the flags.
    let tcp = tcp4_frame(me, HOST_MAC, 30000);
    host.send_frame(HostFrame {
        data: tcp.clone(),
        meta: FrameMeta {
            csum_blank: true,
            data_validated: true,
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                mss: 1448,
            }),
        },
    })
    .unwrap();
    let r = recv(&mut f);
    assert_eq!(r.data, tcp);
    assert_eq!(
        r.gso,
        Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1448
        })
    );
    assert!(r.csum_blank && r.data_validated);
    assert_eq!(r.slots as usize, tcp.len().div_ceil(4096) + 1);
}

#[test]
fn xdp_headroom_as_linux_lays_it_out() {
    let mut w = World::new("xdp", NetbackConfig::new());
    let plat = w.domain(FE);
    let mut cfg = RingFrontConfig::default();
    cfg.net.xdp_headroom = 256;
    let mut f = w.front(&plat, 0, cfg);
    assert_eq!(f.negotiated().unwrap().rx_headroom, 256);
    assert_eq!(w.wait_vif(FE, 0, 1).request.xdp_headroom, 256);
    let me = mac(FE, 0);
    f.send(&frame(HOST_MAC, me, 60, 1)).unwrap();
    host_recv(&w);
    let host = w.nb().host_port();
    for (i, len) in [60usize, 1514, 3840, 3841, 10000].into_iter().enumerate() {
        let data = frame(me, HOST_MAC, len, 20 + i as u32);
        host.send(&data).unwrap();
        let r = recv(&mut f);
        assert!(r.data == data, "frame of {len} bytes differs");
        let per = 4096 - 256;
        assert_eq!(r.frags, len.div_ceil(per), "{len}");
        // One XDP extra per packet.
        assert_eq!(r.slots as usize, len.div_ceil(per) + 1, "{len}");
    }
}

#[test]
fn scatter_gather_tx_and_offloads() {
    let mut w = World::new("txsg", NetbackConfig::new());
    let plat = w.domain(FE);
    let mut f = w.front(&plat, 0, RingFrontConfig::default());
    let me = mac(FE, 0);
    for (i, len) in [4097usize, 12000, 40000, 65535].into_iter().enumerate() {
        let data = frame(HOST_MAC, me, len, 30 + i as u32);
        f.send(&data).unwrap();
        let got = host_recv(&w);
        assert!(got.data == data, "TX frame of {len} bytes differs");
        assert_eq!(tx_done(&mut f, 1)[0].status, TxStatus::Okay);
    }
    // GSO with a partial checksum: the metadata reaches the host.
    let tcp = tcp4_frame(HOST_MAC, me, 20000);
    let off = TxOffload {
        checksum: TxChecksum::Partial,
        gso: Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1448,
        }),
    };
    f.send_with(0, &tcp, off).unwrap();
    let got = host_recv(&w);
    assert_eq!(got.data, tcp);
    assert!(got.meta.csum_blank && got.meta.data_validated);
    assert_eq!(
        got.meta.gso,
        Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1448
        })
    );
    assert_eq!(tx_done(&mut f, 1)[0].status, TxStatus::Okay);
    // A checksum-blank frame that is not TCP/UDP is answered as sent and
    // dropped (Linux's checksum_setup).
    let junk = frame(HOST_MAC, me, 100, 5);
    f.send_with(
        0,
        &junk,
        TxOffload {
            checksum: TxChecksum::Partial,
            gso: None,
        },
    )
    .unwrap();
    assert_eq!(tx_done(&mut f, 1)[0].status, TxStatus::Okay);
    assert!(until(|| w.nb().vif(FE, 0).unwrap().tx_dropped == 1));
    assert!(w
        .nb()
        .host_port()
        .recv_timeout(Duration::from_millis(100))
        .is_none());
}

#[test]
fn several_queues_shared_and_split_channels() {
    for split in [true, false] {
        let mut w = World::new(
            "queues",
            NetbackConfig::new()
                .max_queues(4)
                .split_event_channels(split),
        );
        let plat = w.domain(FE);
        let mut cfg = RingFrontConfig::default();
        cfg.net.max_queues = 3;
        let mut f = w.front(&plat, 0, cfg);
        assert_eq!(f.queues(), 3);
        let st = w.wait_vif(FE, 0, 1);
        assert_eq!(st.queues, 3);
        for q in &st.request.queues {
            assert_eq!(
                matches!(q.events, netfront::features::QueueEvents::Split { .. }),
                split
            );
        }
        let (tx, rx) = f.ports(0).unwrap();
        assert_eq!(tx != rx, split);
        let fe_dir = "/local/domain/1/device/vif/0";
        assert_eq!(
            w.read(&format!("{fe_dir}/multi-queue-num-queues"))
                .as_deref(),
            Some("3")
        );
        assert!(w.read(&format!("{fe_dir}/queue-2/tx-ring-ref")).is_some());
        assert!(w.read(&format!("{fe_dir}/tx-ring-ref")).is_none());
        let me = mac(FE, 0);
        for q in 0..3 {
            let data = frame(HOST_MAC, me, 200 + q, q as u32);
            f.send_with(q, &data, TxOffload::default()).unwrap();
            assert_eq!(host_recv(&w).data, data, "queue {q}");
        }
        // Frames of many flows spread over the queues; all arrive.
        let host = w.nb().host_port();
        let mut seen = [0usize; 3];
        for i in 0..60u32 {
            let mut d = frame(me, HOST_MAC, 100, i);
            // IPv4 with varying addresses, so that the flow hash varies.
            d[12] = 0x08;
            d[13] = 0x00;
            d[14 + 12..14 + 16].copy_from_slice(&i.to_be_bytes());
            host.send(&d).unwrap();
            let r = recv(&mut f);
            assert_eq!(r.data, d);
            seen[r.queue] += 1;
        }
        assert!(seen.iter().filter(|&&n| n > 0).count() >= 2, "{seen:?}");
    }
}

#[test]
fn queued_frames_expire_sooner_without_rx_notify() {
    for notify in [false, true] {
        let mut w = World::new("expire", NetbackConfig::new());
        let plat = w.domain(FE);
        let cfg = RingFrontConfig {
            rx_notify: notify,
            ..RingFrontConfig::default()
        };
        let mut f = w.front(&plat, 0, cfg);
        assert_eq!(w.wait_vif(FE, 0, 1).request.rx_notify, notify);
        let me = mac(FE, 0);
        f.send(&frame(HOST_MAC, me, 60, 1)).unwrap();
        host_recv(&w);
        // 256 buffers are posted; 300 frames: 44 wait for buffers.
        let host = w.nb().host_port();
        for i in 0..300 {
            host.send(&frame(me, HOST_MAC, 60, i)).unwrap();
        }
        assert!(until(|| w.nb().vif(FE, 0).unwrap().rx_packets == 256));
        std::thread::sleep(Duration::from_millis(300));
        let st = w.nb().vif(FE, 0).unwrap();
        if notify {
            // 10 s: still queued.
            assert_eq!(st.rx_dropped, 0);
        } else {
            // 30 ms: expired.
            assert_eq!(st.rx_dropped, 44);
        }
        // Reading the frames posts buffers again: the queued ones follow.
        let mut n = 0;
        while f
            .recv_timeout(Duration::from_millis(300), false)
            .unwrap()
            .is_some()
        {
            n += 1;
        }
        assert_eq!(n, if notify { 300 } else { 256 });
    }
}
