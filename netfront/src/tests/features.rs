use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::features::*;

/// A key source over a map.
fn keys(pairs: &[(&str, &str)]) -> impl FnMut(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

/// What Linux 6.1's netback advertises by default (2 dom0 CPUs).
const LINUX_NETBACK: &[(&str, &str)] = &[
    ("feature-sg", "1"),
    ("feature-gso-tcpv4", "1"),
    ("feature-gso-tcpv6", "1"),
    ("feature-ipv6-csum-offload", "1"),
    ("feature-rx-copy", "1"),
    ("feature-rx-flip", "0"),
    ("feature-multicast-control", "1"),
    ("feature-dynamic-multicast-control", "1"),
    ("feature-split-event-channels", "1"),
    ("multi-queue-max-queues", "2"),
    ("feature-xdp-headroom", "1"),
    ("feature-ctrl-ring", "1"),
];

const FRONTEND: &[(&str, &str)] = &[("mac", "00:16:3e:5a:0b:Cd")];

fn backend(pairs: &[(&str, &str)]) -> Result<BackendFeatures, FeatureError> {
    BackendFeatures::read(&mut keys(pairs))
}

fn frontend() -> FrontendInfo {
    FrontendInfo::read(&mut keys(FRONTEND)).unwrap()
}

/// `base` with `key` set to `value`.
fn with(
    base: &'static [(&'static str, &'static str)],
    key: &'static str,
    value: &'static str,
) -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<_> = base.iter().copied().filter(|(k, _)| *k != key).collect();
    v.push((key, value));
    v
}

fn leak(s: &str) -> &'static str {
    std::boxed::Box::leak(s.to_string().into_boxed_str())
}

#[test]
fn linux_netback_defaults_parse() {
    let b = backend(LINUX_NETBACK).unwrap();
    assert_eq!(
        b,
        BackendFeatures {
            sg: true,
            gso_tcpv4: true,
            gso_tcpv6: true,
            ipv6_csum_offload: true,
            rx_copy: true,
            split_event_channels: true,
            max_queues: Some(2),
            xdp_headroom: true,
            ctrl_ring: true,
            multicast_control: true,
            dynamic_multicast_control: true,
        }
    );
}

#[test]
fn absent_keys_are_off() {
    let b = backend(&[("feature-rx-copy", "1")]).unwrap();
    assert!(b.rx_copy);
    assert!(!b.sg && !b.gso_tcpv4 && !b.split_event_channels && !b.xdp_headroom);
    assert_eq!(b.max_queues, None);
}

#[test]
fn malformed_booleans_are_refused_with_the_key_and_value() {
    for bad in ["2", "", " 1", "1 ", "01", "true", "-1", "1\n", "+1"] {
        let err = backend(&with(LINUX_NETBACK, "feature-sg", bad)).unwrap_err();
        match &err {
            FeatureError::BadValue { dir, key, .. } => {
                assert_eq!(*dir, KeyDir::Backend);
                assert_eq!(*key, "feature-sg");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("feature-sg"), "{msg}");
    }
}

#[test]
fn queue_counts_are_parsed_strictly() {
    for (v, ok) in [
        ("1", Some(1)),
        ("8", Some(8)),
        ("65535", Some(65535)),
        ("0", None),
        ("65536", None),
        ("4294967296", None),
        ("007", None),
        ("8 ", None),
        ("0x8", None),
        ("", None),
        ("99999999999999999999", None),
    ] {
        let r = backend(&with(LINUX_NETBACK, "multi-queue-max-queues", v));
        match ok {
            Some(n) => assert_eq!(r.unwrap().max_queues, Some(n), "{v:?}"),
            None => assert!(
                matches!(
                    r,
                    Err(FeatureError::BadValue {
                        key: "multi-queue-max-queues",
                        ..
                    })
                ),
                "{v:?}: {r:?}"
            ),
        }
    }
}

#[test]
fn overlong_values_are_refused_unparsed() {
    let long: &'static str = leak(&"1".repeat(MAX_VALUE_LEN + 1));
    let err = backend(&with(LINUX_NETBACK, "feature-gso-tcpv4", long)).unwrap_err();
    let FeatureError::BadValue { value, .. } = err else {
        panic!("{err:?}")
    };
    // The message shows a bounded preview, not the whole value.
    assert!(value.chars().count() <= 33, "{value}");
}

#[test]
fn decimal_parser() {
    assert_eq!(parse_decimal("0"), Some(0));
    assert_eq!(parse_decimal("4294967295"), Some(u32::MAX));
    assert_eq!(parse_decimal("4294967296"), None);
    assert_eq!(parse_decimal("00"), None);
    assert_eq!(parse_decimal("-0"), None);
    assert_eq!(parse_decimal("1e3"), None);
    assert_eq!(parse_decimal("١"), None); // a non-ASCII digit
}

#[test]
fn read_failures_are_reported() {
    let mut src = FallibleKeys(|k: &str| {
        if k == "feature-gso-tcpv6" {
            Err("connection reset".to_string())
        } else {
            Ok(Some("1".to_string()))
        }
    });
    let err = BackendFeatures::read(&mut src).unwrap_err();
    assert_eq!(
        err,
        FeatureError::Read(KeyReadError {
            key: "feature-gso-tcpv6".into(),
            reason: "connection reset".into()
        })
    );
}

#[test]
fn mac_parsing() {
    assert_eq!(
        MacAddr::parse("00:16:3e:5a:0b:Cd"),
        Some(MacAddr([0x00, 0x16, 0x3e, 0x5a, 0x0b, 0xcd]))
    );
    assert_eq!(
        MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]).to_string(),
        "aa:bb:cc:dd:ee:ff"
    );
    for bad in [
        "",
        "00:16:3e:5a:0b",
        "00:16:3e:5a:0b:cd:",
        "0:16:3e:5a:0b:cd",
        "00-16-3e-5a-0b-cd",
        "00:16:3e:5a:0b:cg",
        "00:16:3e:5a:0bcd ",
        " 00:16:3e:5a:0b:c",
        "001:6:3e:5a:0b:cd",
    ] {
        assert_eq!(MacAddr::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn frontend_keys_are_read_and_checked() {
    let f = FrontendInfo::read(&mut keys(&[
        ("mac", "00:16:3e:00:00:01"),
        ("trusted", "0"),
        ("mtu", "9000"),
    ]))
    .unwrap();
    assert_eq!(f.mac, MacAddr([0, 0x16, 0x3e, 0, 0, 1]));
    assert!(!f.trusted);
    assert_eq!(f.mtu, Some(9000));

    let f = frontend();
    assert!(f.trusted, "trusted defaults to 1 as libxl writes it");
    assert_eq!(f.mtu, None);

    assert_eq!(
        FrontendInfo::read(&mut keys(&[])),
        Err(FeatureError::MissingMac)
    );
    for bad in [
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
        "nonsense",
    ] {
        let r = FrontendInfo::read(&mut keys(&[("mac", bad)]));
        assert!(
            matches!(
                r,
                Err(FeatureError::BadValue {
                    key: "mac",
                    dir: KeyDir::Frontend,
                    ..
                })
            ),
            "{bad}: {r:?}"
        );
    }
    for (k, v) in [
        ("trusted", "yes"),
        ("mtu", "67"),
        ("mtu", "65536"),
        ("mtu", "1500x"),
    ] {
        let r = FrontendInfo::read(&mut keys(&[("mac", "00:16:3e:00:00:01"), (k, v)]));
        assert!(
            matches!(r, Err(FeatureError::BadValue { .. })),
            "{k}={v}: {r:?}"
        );
    }
}

fn get<'a>(keys: &'a [FrontendKey], k: &str) -> Option<&'a str> {
    keys.iter().find(|x| x.key == k).map(|x| x.value.as_str())
}

#[test]
fn full_offload_against_linux_netback() {
    let b = backend(LINUX_NETBACK).unwrap();
    let config = NetConfig {
        max_queues: 4,
        xdp_headroom: 256,
        ..NetConfig::default()
    };
    let n = negotiate(&b, &frontend(), &config).unwrap();
    assert_eq!(n.queues, 2, "min(application's 4, backend's 2)");
    assert!(n.write_num_queues && n.split_event_channels);
    assert!(n.tx_sg && n.rx_sg && n.tx_gso_tcpv4 && n.tx_gso_tcpv6);
    assert!(n.rx_gso_tcpv4 && n.rx_gso_tcpv6 && n.rx_csum_ipv4 && n.rx_csum_ipv6);
    assert!(n.tx_csum_ipv4 && n.tx_csum_ipv6);
    assert_eq!(n.mtu, 1500);
    assert_eq!((n.write_xdp_headroom, n.rx_headroom), (true, 256));
    assert!(!n.untrusted_backend);

    let q = [
        QueueSetup {
            tx_ring_ref: 10,
            rx_ring_ref: 11,
            events: QueueEvents::Split { tx: 5, rx: 6 },
        },
        QueueSetup {
            tx_ring_ref: 12,
            rx_ring_ref: 13,
            events: QueueEvents::Split { tx: 7, rx: 8 },
        },
    ];
    let k = frontend_keys(&n, &q).unwrap();
    let listed: Vec<(&str, &str)> = k
        .iter()
        .map(|x| (x.key.as_str(), x.value.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("multi-queue-num-queues", "2"),
            ("queue-0/tx-ring-ref", "10"),
            ("queue-0/rx-ring-ref", "11"),
            ("queue-0/event-channel-tx", "5"),
            ("queue-0/event-channel-rx", "6"),
            ("queue-1/tx-ring-ref", "12"),
            ("queue-1/rx-ring-ref", "13"),
            ("queue-1/event-channel-tx", "7"),
            ("queue-1/event-channel-rx", "8"),
            ("request-rx-copy", "1"),
            ("feature-rx-notify", "1"),
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-gso-tcpv6", "1"),
            ("feature-ipv6-csum-offload", "1"),
            ("xdp-headroom", "256"),
        ]
    );
}

#[test]
fn one_queue_writes_flat_keys_and_a_shared_channel() {
    let b = backend(LINUX_NETBACK).unwrap();
    let config = NetConfig {
        split_event_channels: false,
        ..NetConfig::default()
    };
    let n = negotiate(&b, &frontend(), &config).unwrap();
    assert_eq!(n.queues, 1);
    assert!(!n.split_event_channels);
    let k = frontend_keys(
        &n,
        &[QueueSetup {
            tx_ring_ref: 8,
            rx_ring_ref: 9,
            events: QueueEvents::Shared(3),
        }],
    )
    .unwrap();
    assert_eq!(get(&k, "multi-queue-num-queues"), Some("1"));
    assert_eq!(get(&k, "tx-ring-ref"), Some("8"));
    assert_eq!(get(&k, "rx-ring-ref"), Some("9"));
    assert_eq!(get(&k, "event-channel"), Some("3"));
    assert!(k.iter().all(|x| !x.key.starts_with("queue-")));
    assert_eq!(get(&k, "event-channel-tx"), None);
    // Split channels were not negotiated: refused.
    let err = frontend_keys(
        &n,
        &[QueueSetup {
            tx_ring_ref: 8,
            rx_ring_ref: 9,
            events: QueueEvents::Split { tx: 3, rx: 4 },
        }],
    )
    .unwrap_err();
    assert_eq!(err, KeysError::SplitNotNegotiated { queue: 0 });
}

#[test]
fn a_backend_without_multi_queue_gets_no_queue_count() {
    let b = backend(&[("feature-rx-copy", "1"), ("feature-sg", "1")]).unwrap();
    let n = negotiate(
        &b,
        &frontend(),
        &NetConfig {
            max_queues: 8,
            ..NetConfig::default()
        },
    )
    .unwrap();
    assert_eq!(n.queues, 1);
    assert!(!n.write_num_queues);
    let k = frontend_keys(
        &n,
        &[QueueSetup {
            tx_ring_ref: 8,
            rx_ring_ref: 9,
            events: QueueEvents::Shared(3),
        }],
    )
    .unwrap();
    assert_eq!(get(&k, "multi-queue-num-queues"), None);
    assert_eq!(
        get(&k, "xdp-headroom"),
        None,
        "backend lacks feature-xdp-headroom"
    );
    // Without the backend's GSO and IPv6 checksum offload, TX has neither,
    // but the frontend still offers to receive them.
    assert!(!n.tx_gso_tcpv4 && !n.tx_gso_tcpv6 && !n.tx_csum_ipv6);
    assert!(n.rx_gso_tcpv4 && n.rx_csum_ipv6);
}

#[test]
fn offloads_off_write_no_csum_offload() {
    let b = backend(LINUX_NETBACK).unwrap();
    let config = NetConfig {
        csum_offload: false,
        ipv6_csum_offload: false,
        ..NetConfig::default()
    };
    let n = negotiate(&b, &frontend(), &config).unwrap();
    // GSO needs checksum offload in the same direction.
    assert!(!n.tx_gso_tcpv4 && !n.tx_gso_tcpv6 && !n.rx_gso_tcpv4 && !n.rx_gso_tcpv6);
    assert!(!n.rx_csum_ipv4 && !n.rx_csum_ipv6 && !n.tx_csum_ipv4 && !n.tx_csum_ipv6);
    let k = frontend_keys(
        &n,
        &[QueueSetup {
            tx_ring_ref: 8,
            rx_ring_ref: 9,
            events: QueueEvents::Shared(3),
        }],
    )
    .unwrap();
    assert_eq!(get(&k, "feature-no-csum-offload"), Some("1"));
    assert_eq!(get(&k, "feature-ipv6-csum-offload"), Some("0"));
    assert_eq!(get(&k, "feature-gso-tcpv4"), Some("0"));
    assert_eq!(get(&k, "feature-gso-tcpv6"), Some("0"));
    assert_eq!(
        get(&k, "xdp-headroom"),
        Some("0"),
        "written as Linux does when offered"
    );
}

#[test]
fn mtu_follows_scatter_gather() {
    let fe = FrontendInfo {
        mtu: Some(9000),
        ..frontend()
    };
    // With SG on both sides, the toolstack's MTU is taken.
    let b = backend(LINUX_NETBACK).unwrap();
    assert_eq!(negotiate(&b, &fe, &NetConfig::default()).unwrap().mtu, 9000);
    // The application's wins over the toolstack's.
    let c = NetConfig {
        mtu: Some(65535),
        ..NetConfig::default()
    };
    assert_eq!(negotiate(&b, &fe, &c).unwrap().mtu, 65535);
    // Without the backend's feature-sg: lowered to 1500.
    let nosg = backend(&with(LINUX_NETBACK, "feature-sg", "0")).unwrap();
    let n = negotiate(&nosg, &fe, &NetConfig::default()).unwrap();
    assert_eq!(n.mtu, 1500);
    assert!(!n.tx_sg && n.rx_sg && !n.tx_gso_tcpv4);
    // Without SG in the configuration: 1500, and feature-sg=0 written.
    let c = NetConfig {
        sg: false,
        ..NetConfig::default()
    };
    let n = negotiate(&b, &fe, &c).unwrap();
    assert_eq!(n.mtu, 1500);
    assert!(!n.rx_sg && !n.rx_gso_tcpv4);
    let k = frontend_keys(
        &n,
        &[QueueSetup {
            tx_ring_ref: 8,
            rx_ring_ref: 9,
            events: QueueEvents::Shared(3),
        }],
    )
    .unwrap();
    assert_eq!(get(&k, "feature-sg"), Some("0"));
}

#[test]
fn trust_comes_from_the_toolstack_or_the_application() {
    let b = backend(LINUX_NETBACK).unwrap();
    let untrusted = FrontendInfo {
        trusted: false,
        ..frontend()
    };
    assert!(
        negotiate(&b, &untrusted, &NetConfig::default())
            .unwrap()
            .untrusted_backend
    );
    let c = NetConfig {
        trust_backend: false,
        ..NetConfig::default()
    };
    assert!(negotiate(&b, &frontend(), &c).unwrap().untrusted_backend);
}

#[test]
fn impossible_configurations_and_backends_are_refused() {
    let b = backend(LINUX_NETBACK).unwrap();
    for c in [
        NetConfig {
            max_queues: 0,
            ..NetConfig::default()
        },
        NetConfig {
            max_queues: MAX_QUEUES + 1,
            ..NetConfig::default()
        },
        NetConfig {
            xdp_headroom: MAX_RX_HEADROOM + 1,
            ..NetConfig::default()
        },
        NetConfig {
            mtu: Some(65536),
            ..NetConfig::default()
        },
        NetConfig {
            mtu: Some(67),
            ..NetConfig::default()
        },
    ] {
        assert!(
            matches!(negotiate(&b, &frontend(), &c), Err(FeatureError::Config(_))),
            "{c:?}"
        );
    }
    let flip = backend(&with(LINUX_NETBACK, "feature-rx-copy", "0")).unwrap();
    assert_eq!(
        negotiate(&flip, &frontend(), &NetConfig::default()),
        Err(FeatureError::NoRxCopy)
    );
}

#[test]
fn bad_queue_setups_are_refused() {
    let b = backend(LINUX_NETBACK).unwrap();
    let n = negotiate(
        &b,
        &frontend(),
        &NetConfig {
            max_queues: 2,
            ..NetConfig::default()
        },
    )
    .unwrap();
    let good = QueueSetup {
        tx_ring_ref: 8,
        rx_ring_ref: 9,
        events: QueueEvents::Split { tx: 1, rx: 2 },
    };
    assert_eq!(
        frontend_keys(&n, &[good]),
        Err(KeysError::QueueCount {
            expected: 2,
            given: 1
        })
    );
    let same_port = QueueSetup {
        events: QueueEvents::Split { tx: 4, rx: 4 },
        ..good
    };
    assert_eq!(
        frontend_keys(&n, &[good, same_port]),
        Err(KeysError::BadPort { queue: 1 })
    );
    let port0 = QueueSetup {
        events: QueueEvents::Shared(0),
        ..good
    };
    assert_eq!(
        frontend_keys(&n, &[port0, good]),
        Err(KeysError::BadPort { queue: 0 })
    );
    let reserved = QueueSetup {
        tx_ring_ref: 7,
        ..good
    };
    assert_eq!(
        frontend_keys(&n, &[good, reserved]),
        Err(KeysError::BadRingRef { queue: 1 })
    );
    assert!(frontend_keys(&n, &[good, good]).is_ok());
}
