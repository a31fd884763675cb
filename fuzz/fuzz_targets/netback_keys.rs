//! The hosted netback's reading of a frontend's xenstore keys, written by
//! a hostile frontend: arbitrary values (and absences) for every key it
//! reads. Never panics; what it accepts is usable: 1 to the offered number
//! of queues, each with ring refs and non-zero, distinct split ports, a
//! headroom that leaves room in a page, rx-copy asked for.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use hosted::netback::keys::FrontendRequest;
use libfuzzer_sys::fuzz_target;
use netfront::features::QueueEvents;

const KEYS: &[&str] = &[
    "multi-queue-num-queues",
    "tx-ring-ref",
    "rx-ring-ref",
    "event-channel",
    "event-channel-tx",
    "event-channel-rx",
    "queue-0/tx-ring-ref",
    "queue-0/rx-ring-ref",
    "queue-0/event-channel",
    "queue-0/event-channel-tx",
    "queue-0/event-channel-rx",
    "queue-1/tx-ring-ref",
    "queue-1/rx-ring-ref",
    "queue-1/event-channel",
    "queue-1/event-channel-tx",
    "queue-1/event-channel-rx",
    "ctrl-ring-ref",
    "event-channel-ctrl",
    "request-rx-copy",
    "feature-rx-notify",
    "feature-sg",
    "feature-gso-tcpv4",
    "feature-gso-tcpv6",
    "feature-no-csum-offload",
    "feature-ipv6-csum-offload",
    "xdp-headroom",
];

#[derive(Arbitrary, Debug)]
struct Input {
    max_queues: u8,
    xdp_offered: bool,
    /// (key index, value); a value of `None` makes the store fail.
    values: Vec<(u8, Option<String>)>,
}

fuzz_target!(|input: Input| {
    let mut map: HashMap<&str, Option<String>> = HashMap::new();
    for (k, v) in input.values {
        map.insert(KEYS[usize::from(k) % KEYS.len()], v);
    }
    let max = u32::from(input.max_queues % 4) + 1;
    let r = FrontendRequest::read(
        &mut |key: &str| match map.get(key) {
            None => Ok(None),
            Some(None) => Err("store failed".to_string()),
            Some(Some(v)) => Ok(Some(v.clone())),
        },
        max,
        input.xdp_offered,
    );
    if let Ok(req) = r {
        assert!(!req.queues.is_empty() && req.queues.len() as u32 <= max);
        for q in &req.queues {
            match q.events {
                QueueEvents::Shared(p) => assert_ne!(p, 0),
                QueueEvents::Split { tx, rx } => assert!(tx != 0 && rx != 0 && tx != rx),
            }
        }
        assert!(usize::from(req.xdp_headroom) < 4096);
        if !input.xdp_offered {
            assert_eq!(req.xdp_headroom, 0);
        }
    }
});
