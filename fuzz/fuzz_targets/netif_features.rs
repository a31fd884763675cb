//! netfront's feature negotiation on arbitrary backend and toolstack key
//! values (known keys with arbitrary values, and arbitrary configurations
//! and queue setups). Never panics; what it accepts is consistent with what
//! it read.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netfront::features::{
    frontend_keys, negotiate, BackendFeatures, FrontendInfo, NetConfig, QueueEvents, QueueSetup,
    DEFAULT_MTU,
};

const BACKEND_KEYS: &[&str] = &[
    "feature-sg",
    "feature-gso-tcpv4",
    "feature-gso-tcpv6",
    "feature-ipv6-csum-offload",
    "feature-rx-copy",
    "feature-split-event-channels",
    "multi-queue-max-queues",
    "feature-xdp-headroom",
    "feature-ctrl-ring",
    "feature-multicast-control",
    "feature-dynamic-multicast-control",
];
const FRONTEND_KEYS: &[&str] = &["mac", "trusted", "mtu"];

#[derive(Arbitrary, Debug)]
struct Input {
    backend: Vec<(u8, String)>,
    frontend: Vec<(u8, String)>,
    max_queues: u32,
    flags: u8,
    mtu: Option<u32>,
    xdp_headroom: u16,
    queues: Vec<(u32, u32, Option<u32>, u32)>,
}

fuzz_target!(|input: Input| {
    let be: BTreeMap<&str, String> = input
        .backend
        .into_iter()
        .map(|(k, v)| (BACKEND_KEYS[usize::from(k) % BACKEND_KEYS.len()], v))
        .collect();
    let fe: BTreeMap<&str, String> = input
        .frontend
        .into_iter()
        .map(|(k, v)| (FRONTEND_KEYS[usize::from(k) % FRONTEND_KEYS.len()], v))
        .collect();
    let Ok(b) = BackendFeatures::read(&mut |k: &str| be.get(k).cloned()) else {
        return;
    };
    if let Some(n) = b.max_queues {
        assert!(n >= 1);
        assert_eq!(be.get("multi-queue-max-queues"), Some(&n.to_string()));
    }
    assert_eq!(b.sg, be.get("feature-sg").map(String::as_str) == Some("1"));
    let Ok(f) = FrontendInfo::read(&mut |k: &str| fe.get(k).cloned()) else {
        return;
    };
    assert!(!f.mac.is_multicast() && !f.mac.is_zero());
    let fl = input.flags;
    let config = NetConfig {
        max_queues: input.max_queues,
        sg: fl & 1 != 0,
        gso_tcpv4: fl & 2 != 0,
        gso_tcpv6: fl & 4 != 0,
        csum_offload: fl & 8 != 0,
        ipv6_csum_offload: fl & 16 != 0,
        mtu: input.mtu,
        split_event_channels: fl & 32 != 0,
        xdp_headroom: input.xdp_headroom,
        trust_backend: fl & 64 != 0,
    };
    let Ok(n) = negotiate(&b, &f, &config) else {
        return;
    };
    assert!(b.rx_copy);
    assert!(n.queues >= 1 && n.queues <= config.max_queues);
    assert!(n.queues <= b.max_queues.unwrap_or(1));
    assert!(n.tx_sg || n.mtu <= DEFAULT_MTU);
    assert!(!n.tx_gso_tcpv4 || (n.tx_sg && n.tx_csum_ipv4));
    assert!(!n.rx_gso_tcpv6 || (n.rx_sg && n.rx_csum_ipv6));
    assert!(n.rx_headroom == 0 || b.xdp_headroom);

    let setups: Vec<QueueSetup> = input
        .queues
        .iter()
        .map(|&(tx, rx, split, port)| QueueSetup {
            tx_ring_ref: tx,
            rx_ring_ref: rx,
            events: match split {
                Some(other) => QueueEvents::Split {
                    tx: port,
                    rx: other,
                },
                None => QueueEvents::Shared(port),
            },
        })
        .collect();
    if let Ok(keys) = frontend_keys(&n, &setups) {
        assert_eq!(setups.len(), n.queues as usize);
        assert!(keys
            .iter()
            .any(|k| k.key == "request-rx-copy" && k.value == "1"));
        let refs = keys
            .iter()
            .filter(|k| k.key.ends_with("tx-ring-ref"))
            .count();
        assert_eq!(refs, setups.len());
        assert!(keys
            .iter()
            .all(|k| !k.key.is_empty() && !k.value.is_empty()));
    }
});
