//! The frontend keys as the backend reads them (strict numbers, Linux's
//! defaults and limits), and a connection refused over bad keys.

#[path = "netback_common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use grant_tables::DomId;
use hosted::netback::keys::{FrontendRequest, KeysError};
use hosted::netback::NetbackConfig;
use netfront::features::QueueEvents;

fn read(keys: &[(&str, &str)], max_queues: u32, xdp: bool) -> Result<FrontendRequest, KeysError> {
    let map: HashMap<String, String> = keys
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    FrontendRequest::read(&mut |k: &str| Ok(map.get(k).cloned()), max_queues, xdp)
}

const ONE: &[(&str, &str)] = &[
    ("tx-ring-ref", "8"),
    ("rx-ring-ref", "9"),
    ("event-channel", "3"),
    ("request-rx-copy", "1"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<(&str, &str)> = ONE.to_vec();
    for (k, val) in extra {
        v.retain(|(x, _)| x != k);
        v.push((k, val));
    }
    v
}

#[test]
fn defaults_flags_and_limits() {
    let r = read(ONE, 8, true).unwrap();
    assert_eq!(r.queues.len(), 1);
    assert_eq!(r.queues[0].tx_ring_ref, 8);
    assert_eq!(r.queues[0].events, QueueEvents::Shared(3));
    assert!(!r.rx_notify && !r.sg && !r.gso_tcpv4 && !r.gso_tcpv6 && !r.csum_ipv6);
    assert!(
        r.csum_ipv4,
        "IPv4 offload is on unless feature-no-csum-offload"
    );
    assert_eq!(r.xdp_headroom, 0);

    let r = read(
        &with(&[
            ("feature-sg", "1"),
            ("feature-rx-notify", "7"),
            ("feature-no-csum-offload", "1"),
            ("feature-ipv6-csum-offload", "1"),
            ("feature-gso-tcpv4", "junk"),
        ]),
        8,
        true,
    )
    .unwrap();
    assert!(r.sg && r.rx_notify && !r.csum_ipv4 && r.csum_ipv6);
    assert!(!r.gso_tcpv4, "a malformed flag reads as 0, as in Linux");
    // Lowered to XEN_NETIF_MAX_XDP_HEADROOM, then refused: no room left.
    match read(&with(&[("xdp-headroom", "100000")]), 8, true) {
        Err(KeysError::BadValue { value, .. }) => assert_eq!(value, "32767"),
        other => panic!("{other:?}"),
    }
    assert!(read(&with(&[("xdp-headroom", "4096")]), 8, true).is_err());
    assert_eq!(
        read(&with(&[("xdp-headroom", "4095")]), 8, true)
            .unwrap()
            .xdp_headroom,
        4095
    );
    assert_eq!(
        read(&with(&[("xdp-headroom", "256")]), 8, true)
            .unwrap()
            .xdp_headroom,
        256
    );
    // Not offered: not read.
    assert_eq!(
        read(&with(&[("xdp-headroom", "256")]), 8, false)
            .unwrap()
            .xdp_headroom,
        0
    );

    // Split channels, several queues.
    let keys = [
        ("multi-queue-num-queues", "2"),
        ("queue-0/tx-ring-ref", "10"),
        ("queue-0/rx-ring-ref", "11"),
        ("queue-0/event-channel-tx", "4"),
        ("queue-0/event-channel-rx", "5"),
        ("queue-1/tx-ring-ref", "12"),
        ("queue-1/rx-ring-ref", "13"),
        ("queue-1/event-channel", "6"),
        ("request-rx-copy", "1"),
    ];
    let r = read(&keys, 2, true).unwrap();
    assert_eq!(r.queues[0].events, QueueEvents::Split { tx: 4, rx: 5 });
    assert_eq!(r.queues[1].events, QueueEvents::Shared(6));
    assert_eq!(r.queues[1].rx_ring_ref, 13);
    assert!(matches!(
        read(&keys, 1, true),
        Err(KeysError::BadValue { .. })
    ));
}

#[test]
fn bad_keys_are_refused_with_the_key_named() {
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (with(&[("tx-ring-ref", "0x10")]), "tx-ring-ref"),
        (with(&[("tx-ring-ref", "-1")]), "tx-ring-ref"),
        (with(&[("rx-ring-ref", "99999999999")]), "rx-ring-ref"),
        (
            ONE.iter()
                .copied()
                .filter(|(k, _)| *k != "rx-ring-ref")
                .collect(),
            "rx-ring-ref",
        ),
        (
            ONE.iter()
                .copied()
                .filter(|(k, _)| *k != "event-channel")
                .collect(),
            "event-channel-tx",
        ),
        (with(&[("event-channel", "0")]), "event-channel"),
        (
            ONE.iter()
                .copied()
                .filter(|(k, _)| *k != "request-rx-copy")
                .collect(),
            "request-rx-copy",
        ),
        (with(&[("request-rx-copy", "0")]), "request-rx-copy"),
        (
            with(&[("multi-queue-num-queues", "0")]),
            "multi-queue-num-queues",
        ),
        (
            with(&[("multi-queue-num-queues", "9")]),
            "multi-queue-num-queues",
        ),
        (with(&[("ctrl-ring-ref", "20")]), "ctrl-ring-ref"),
    ];
    for (keys, key) in cases {
        let e = read(&keys, 8, true).expect_err(key);
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
    // A failing store is an error too, naming the key.
    let e = FrontendRequest::read(&mut |_| Err("store down".into()), 8, true).unwrap_err();
    assert!(e.to_string().contains("store down"));
}

#[test]
fn a_connection_with_bad_keys_is_refused() {
    const FE: DomId = DomId(1);
    let mut w = World::new("refuse", NetbackConfig::new());
    let _plat = w.domain(FE);
    w.plug(FE, 0);
    let be = World::be_path(FE, 0);
    assert!(until(
        || w.read(&format!("{be}/state")).as_deref() == Some("2")
    ));
    let mut xs = w.xs(FE);
    let fe = "/local/domain/1/device/vif/0";
    xs.write(&format!("{fe}/tx-ring-ref"), "ring").unwrap();
    xs.write(&format!("{fe}/rx-ring-ref"), "9").unwrap();
    xs.write(&format!("{fe}/event-channel"), "3").unwrap();
    xs.write(&format!("{fe}/request-rx-copy"), "1").unwrap();
    xs.write(&format!("{fe}/state"), "4").unwrap();
    assert!(until(
        || w.read(&format!("{be}/state")).as_deref() == Some("5")
    ));
    assert!(w.nb().vif(FE, 0).is_none());
    // Refs to grants that do not exist: refused too (the map fails).
    xs.write(&format!("{fe}/state"), "6").unwrap();
    assert!(until(
        || w.read(&format!("{be}/state")).as_deref() == Some("6")
    ));
    xs.write(&format!("{fe}/state"), "1").unwrap();
    assert!(until(
        || w.read(&format!("{be}/state")).as_deref() == Some("2")
    ));
    xs.write(&format!("{fe}/tx-ring-ref"), "4000").unwrap();
    xs.write(&format!("{fe}/state"), "4").unwrap();
    assert!(until(
        || w.read(&format!("{be}/state")).as_deref() == Some("5")
    ));
    std::thread::sleep(Duration::from_millis(20));
    assert!(w.nb().vifs().is_empty());
}
