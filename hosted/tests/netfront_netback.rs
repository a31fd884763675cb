//! The netfront driver against the hosted netback: a guest domain's
//! `NetfrontDevice` connected through xenstore to `hosted::netback`, frames
//! checked both ways through the backend's switch and its host port,
//! backend restarts (the link comes back by itself, no grant leaked), and
//! every hostile mode of the backend (the driver breaks cleanly with a
//! clear error, or keeps working, and never panics).

#[path = "netback_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use grant_tables::{DomId, Platform};
use hosted::netback::{Hostile, NetbackConfig, ServeMode};
use hosted::xenstore::UnixTransport;
use hosted::HostedPlatform;
use netfront::{DriverConfig, FrameDevice, FrameError, NetfrontDevice, RxFrame, TxFrame, WaitMode};

const FE: DomId = DomId(1);

type Dev = NetfrontDevice<HostedPlatform, UnixTransport>;

fn device(w: &mut World, config: DriverConfig) -> (Dev, HostedPlatform) {
    let plat = w.domain(FE);
    w.plug(FE, 0);
    let mut dev = NetfrontDevice::new(plat.clone(), w.xs(FE), "device/vif/0", config);
    dev.set_handshake_interval(2_000_000);
    dev.wait_up(10_000_000_000)
        .unwrap_or_else(|e| panic!("the vif did not come up: {e}; {:?}", dev.frontend().phase()));
    (dev, plat)
}

fn config() -> DriverConfig {
    let mut c = DriverConfig::default();
    c.net.mtu = Some(65535);
    c.wait = WaitMode::Event;
    c
}

/// Sends one frame to the host port; returns what the host got.
fn to_host(w: &World, dev: &mut Dev, data: &[u8]) -> Vec<u8> {
    let mut b = dev.tx_buffer(data.len()).unwrap().expect("a TX buffer");
    b.write_at(0, data).unwrap();
    dev.send(b).unwrap();
    let host = w.nb().host_port();
    let end = Instant::now() + T;
    loop {
        dev.poll().unwrap();
        if let Some(f) = host.recv_timeout(Duration::from_millis(5)) {
            return f.data;
        }
        assert!(Instant::now() < end, "the host got no frame");
    }
}

/// The host sends one frame to the guest; returns what the guest got.
fn from_host(w: &World, dev: &mut Dev, data: &[u8]) -> Vec<u8> {
    w.nb().host_port().send(data).unwrap();
    let end = Instant::now() + T;
    loop {
        if let Some(f) = dev.receive().unwrap() {
            let mut copy = vec![0u8; f.len()];
            f.read_at(0, &mut copy).unwrap();
            return copy;
        }
        assert!(Instant::now() < end, "the guest got no frame");
        dev.wait(Some(5_000_000)).unwrap();
    }
}

#[test]
fn frames_of_every_size_both_ways_through_netback() {
    let mut w = World::new("nf-nb-frames", NetbackConfig::new().mode(ServeMode::Event));
    let (mut dev, _plat) = device(&mut w, config());
    let me = mac(FE, 0);
    assert_eq!(dev.link().mac, me);
    let neg = *dev.nic().negotiated().unwrap();
    assert!(neg.tx_sg && neg.split_event_channels, "{neg:?}");
    let status = w.nb().vif(FE, 0).unwrap();
    assert!(
        status.request.sg,
        "netback read feature-sg: {:?}",
        status.request
    );
    // The host learns the guest's address from its first frame.
    let f = frame(HOST_MAC, me, 60, 0);
    assert_eq!(to_host(&w, &mut dev, &f), f);
    for (i, len) in [60usize, 61, 1514, 4096, 4097, 9014, 20000, 65535]
        .into_iter()
        .enumerate()
    {
        let out = frame(HOST_MAC, me, len, i as u32 + 1);
        assert_eq!(
            to_host(&w, &mut dev, &out),
            out,
            "guest to host, {len} bytes"
        );
        let back = frame(me, HOST_MAC, len, i as u32 + 100);
        assert_eq!(
            from_host(&w, &mut dev, &back),
            back,
            "host to guest, {len} bytes"
        );
    }
    let s = dev.nic().stats();
    assert_eq!((s.tx_errors, s.tx_dropped), (0, 0), "{s:?}");
    assert!(dev.nic().broken().is_none());
}

#[test]
fn multi_queue_and_polling_through_netback() {
    let mut w = World::new(
        "nf-nb-mq",
        NetbackConfig::new().mode(ServeMode::Poll).max_queues(4),
    );
    let mut cfg = config();
    cfg.net.max_queues = 2;
    cfg.wait = WaitMode::Poll;
    let (mut dev, _plat) = device(&mut w, cfg);
    assert_eq!(dev.nic().negotiated().unwrap().queues, 2);
    assert_eq!(w.nb().vif(FE, 0).unwrap().queues, 2);
    let me = mac(FE, 0);
    for q in 0..2u16 {
        for i in 0..20u32 {
            let out = frame(HOST_MAC, me, 100 + i as usize * 50, i);
            let mut b = dev.tx_buffer(out.len()).unwrap().unwrap();
            b.write_at(0, &out).unwrap();
            b.set_queue(q);
            dev.send(b).unwrap();
            let host = w.nb().host_port();
            let end = Instant::now() + T;
            let got = loop {
                dev.poll().unwrap();
                if let Some(f) = host.recv_timeout(Duration::from_millis(2)) {
                    break f.data;
                }
                assert!(Instant::now() < end);
            };
            assert_eq!(got, out, "queue {q} frame {i}");
        }
    }
    for i in 0..40u32 {
        let back = frame(me, HOST_MAC, 1514, i);
        assert_eq!(from_host(&w, &mut dev, &back), back);
    }
}

#[test]
fn backend_restart_mid_traffic_through_netback() {
    let mut w = World::new("nf-nb-restart", NetbackConfig::new().mode(ServeMode::Event));
    let (mut dev, plat) = device(&mut w, config());
    let me = mac(FE, 0);
    let table = Platform::grant_table(&plat).unwrap().clone();
    let f = frame(HOST_MAC, me, 500, 0);
    assert_eq!(to_host(&w, &mut dev, &f), f);
    let baseline = table.stats().granted;
    for round in 1..=5u32 {
        // Traffic in flight when the backend goes.
        for i in 0..8 {
            let out = frame(HOST_MAC, me, 1000, round * 100 + i);
            let mut b = dev.tx_buffer(out.len()).unwrap().unwrap();
            b.write_at(0, &out).unwrap();
            dev.send(b).unwrap();
        }
        let conn = dev.nic().connection().unwrap();
        w.restart_backend(NetbackConfig::new().mode(ServeMode::Event));
        w.nb().host_port().drain();
        // The link comes back by itself.
        let end = Instant::now() + T;
        while dev.nic().connection() == Some(conn) || !dev.nic().is_up() {
            dev.poll().unwrap();
            dev.wait(Some(2_000_000)).unwrap();
            assert!(
                Instant::now() < end,
                "round {round}: no reconnection ({:?})",
                dev.frontend().phase()
            );
        }
        w.wait_vif(FE, 0, 1);
        let out = frame(HOST_MAC, me, 1514, round);
        assert_eq!(to_host(&w, &mut dev, &out), out, "round {round}");
        let back = frame(me, HOST_MAC, 3000, round);
        assert_eq!(from_host(&w, &mut dev, &back), back, "round {round}");
        dev.poll().unwrap();
        let s = table.stats();
        assert_eq!(
            (s.granted, s.quarantined),
            (baseline, 0),
            "round {round}: {s:?}"
        );
    }
    let s = dev.nic().stats();
    assert_eq!(s.connections, 6);
    assert!(s.disconnections >= 5);
}

/// Traffic until the device breaks or `rounds` round trips pass; the
/// error, if it broke.
fn traffic(w: &World, dev: &mut Dev, rounds: u32) -> Option<String> {
    let me = mac(FE, 0);
    let host = w.nb().host_port();
    for i in 0..rounds {
        let out = frame(HOST_MAC, me, 200, i);
        let r = (|| -> Result<(), FrameError> {
            if let Some(mut b) = dev.tx_buffer(out.len())? {
                b.write_at(0, &out)?;
                dev.send(b)?;
            }
            let _ = host.send(&frame(me, HOST_MAC, 200, i));
            let end = Instant::now() + Duration::from_millis(300);
            while Instant::now() < end {
                dev.poll()?;
                if dev.receive()?.is_some() {
                    break;
                }
                dev.wait(Some(2_000_000))?;
            }
            let _ = host.recv_timeout(Duration::from_millis(1));
            Ok(())
        })();
        if let Err(e) = r {
            return Some(e.to_string());
        }
    }
    None
}

#[test]
fn every_hostile_backend_mode_is_survived() {
    for mode in Hostile::ALL {
        let mut w = World::new(
            "nf-nb-hostile",
            NetbackConfig::new().mode(ServeMode::Event).hostile(mode, 3),
        );
        let (mut dev, plat) = device(&mut w, config());
        let table = Platform::grant_table(&plat).unwrap().clone();
        let err = traffic(&w, &mut dev, 40);
        match mode {
            Hostile::EventStorm | Hostile::KeepGrantsMapped => {
                assert!(err.is_none(), "{mode:?}: the device broke: {err:?}");
            }
            _ => {
                let e = err.unwrap_or_else(|| panic!("{mode:?}: the device did not break"));
                let cause = dev.nic().broken().expect("broken").clone();
                assert!(cause.is_backend_fault(), "{mode:?}: {cause}");
                assert!(
                    e.contains("backend fault") || e.contains("peer fault"),
                    "{mode:?}: {e}"
                );
                // Every later call says so; none panics.
                assert!(matches!(dev.receive(), Err(FrameError::Broken(_))));
                assert!(matches!(dev.tx_buffer(100), Err(FrameError::Broken(_))));
            }
        }
        // The backend goes; whatever it kept mapped is quarantined, then
        // recovered once it lets go.
        let kept = w.nb().kept_grants();
        if mode == Hostile::KeepGrantsMapped {
            assert!(kept > 0, "the hostile backend kept nothing mapped");
        }
        w.nb.take().unwrap().stop();
        let end = Instant::now() + T;
        while dev.nic().connection().is_some() {
            let _ = dev.poll();
            let _ = dev.wait(Some(2_000_000));
            assert!(Instant::now() < end, "{mode:?}: the connection did not end");
        }
        let end = Instant::now() + T;
        loop {
            let _ = dev.poll();
            let s = table.stats();
            if s.granted == 0 && s.quarantined == 0 {
                break;
            }
            assert!(Instant::now() < end, "{mode:?}: grants left: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn orderly_close_through_netback() {
    let mut w = World::new("nf-nb-close", NetbackConfig::new().mode(ServeMode::Event));
    let (mut dev, plat) = device(&mut w, config());
    let me = mac(FE, 0);
    let f = frame(HOST_MAC, me, 800, 1);
    assert_eq!(to_host(&w, &mut dev, &f), f);
    dev.close(10_000_000_000).unwrap();
    assert!(!dev.link().up);
    let fe_state = w.read(&format!("/local/domain/{}/device/vif/0/state", FE.0));
    assert_eq!(fe_state.as_deref(), Some("6"));
    let table = Platform::grant_table(&plat).unwrap().clone();
    let end = Instant::now() + T;
    loop {
        table.retry_quarantined();
        let s = table.stats();
        if (s.granted, s.quarantined) == (0, 0) {
            break;
        }
        assert!(Instant::now() < end, "grants left after close: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether the TCP checksum of an IPv4 frame (no options) is right.
fn tcp4_checksum_ok(f: &[u8]) -> bool {
    let l4 = &f[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    netfront::csum::ones_complement_sum(&pseudo) == 0xFFFF
}

#[test]
fn checksum_and_gso_offloads_through_netback() {
    use netfront::tx::{Gso, GsoKind, TxChecksum, TxOffload};
    let mut w = World::new("nf-nb-offload", NetbackConfig::new().mode(ServeMode::Event));
    let (mut dev, _plat) = device(&mut w, config());
    let me = mac(FE, 0);
    let hello = frame(HOST_MAC, me, 60, 0);
    assert_eq!(to_host(&w, &mut dev, &hello), hello);

    // Guest to host: a 20000-byte TCP frame with a blank checksum and GSO.
    let big = tcp4_frame(HOST_MAC, me, 20000);
    let mut b = dev.tx_buffer(big.len()).unwrap().unwrap();
    b.write_at(0, &big).unwrap();
    let gso = Gso {
        kind: GsoKind::TcpV4,
        mss: 1448,
    };
    b.set_offload(TxOffload {
        checksum: TxChecksum::Partial,
        gso: Some(gso),
    });
    dev.send(b).unwrap();
    let host = w.nb().host_port();
    let end = Instant::now() + T;
    let got = loop {
        dev.poll().unwrap();
        if let Some(f) = host.recv_timeout(Duration::from_millis(5)) {
            break f;
        }
        assert!(Instant::now() < end, "the host got no frame");
    };
    assert_eq!(got.data.len(), big.len());
    assert_eq!(got.meta.gso, Some(gso));
    assert!(
        got.meta.csum_blank || tcp4_checksum_ok(&got.data),
        "{:?}",
        got.meta
    );

    // Host to guest: a blank checksum the driver completes in place.
    let part = tcp4_frame(me, HOST_MAC, 3000);
    assert!(!tcp4_checksum_ok(&part));
    host.send_frame(hosted::netback::HostFrame {
        data: part.clone(),
        meta: hosted::netback::FrameMeta {
            csum_blank: true,
            data_validated: true,
            gso: None,
        },
    })
    .unwrap();
    let end = Instant::now() + T;
    let rx = loop {
        if let Some(f) = dev.receive().unwrap() {
            break f;
        }
        assert!(Instant::now() < end, "the guest got no frame");
        dev.wait(Some(5_000_000)).unwrap();
    };
    assert!(rx.meta().checksum_ok);
    let mut copy = vec![0u8; rx.len()];
    rx.read_at(0, &mut copy).unwrap();
    assert!(
        tcp4_checksum_ok(&copy),
        "the driver did not complete the checksum"
    );
    assert_eq!(copy[..50], part[..50]);
    assert_eq!(copy[52..], part[52..]);
}

/// An idle data plane in event mode sleeps without a timeout when nothing
/// needs a look at a given time (no storm, no throttle, no queued frame):
/// over 350 ms of quiet it sleeps at most once (a sleep timed at 100 ms
/// made three or more), and a frame sent after that quiet still gets
/// through at once, the frontend's notify being what wakes it.
#[test]
fn an_idle_event_mode_backend_sleeps_untimed_and_still_wakes() {
    let mut w = World::new("nf-nb-idle", NetbackConfig::new().mode(ServeMode::Event));
    let (mut dev, _plat) = device(&mut w, config());
    let me = mac(FE, 0);
    let f = frame(HOST_MAC, me, 60, 1);
    assert_eq!(to_host(&w, &mut dev, &f), f);
    // Let the data plane go to sleep.
    std::thread::sleep(Duration::from_millis(50));
    let before = w.back.event_stats().sleeps;
    std::thread::sleep(Duration::from_millis(350));
    let slept = w.back.event_stats().sleeps - before;
    assert!(
        slept <= 1,
        "the idle data plane slept {slept} times in 350 ms: its sleeps are timed"
    );
    let g = frame(HOST_MAC, me, 61, 2);
    let t = Instant::now();
    assert_eq!(to_host(&w, &mut dev, &g), g);
    assert!(
        t.elapsed() < Duration::from_millis(90),
        "a frame after the quiet took {:?}: the notify did not wake the data plane",
        t.elapsed()
    );
}
