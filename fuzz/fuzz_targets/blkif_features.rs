//! blkfront's parsing of a hostile backend's xenstore keys, and the
//! negotiation built on it: no panic; parsed values always obey the
//! protocol's rules (sector size a power of two from 512 to 4096, capacity
//! addressable in bytes and whole logical sectors, maxima within what the
//! crate supports); the keys the frontend writes are complete and
//! consistent with the choice; requests planned for the result stay inside
//! the disk.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use blkfront::features::{
    DiskFeatures, FrontendConfig, Negotiated, QueueRing, RingChoice, RingFeatures,
    MAX_INDIRECT_SEGMENTS, MAX_QUEUES, MAX_RING_PAGE_ORDER,
};
use blkfront::{BlockIo, BlockOp, Plan, Segment};
use libfuzzer_sys::fuzz_target;

const KEYS: [&str; 14] = [
    "sectors",
    "sector-size",
    "physical-sector-size",
    "info",
    "feature-flush-cache",
    "feature-barrier",
    "feature-discard",
    "discard-granularity",
    "discard-alignment",
    "discard-secure",
    "feature-persistent",
    "feature-max-indirect-segments",
    "max-ring-page-order",
    "multi-queue-max-queues",
];

#[derive(Arbitrary, Debug)]
enum Value {
    /// Arbitrary text.
    Raw(String),
    /// A number as the backend would print it.
    Num(u64),
    /// A small number (booleans, orders, sizes).
    Small(u16),
    /// A power of two.
    Pow2(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    values: Vec<(u8, Value)>,
    queues: u8,
    order: u8,
    persistent: bool,
    indirect: u16,
    io_sector: u64,
    io_pages: u8,
}

fuzz_target!(|input: Input| {
    let mut dir = BTreeMap::new();
    for (k, v) in input.values.iter().take(64) {
        let key = KEYS[usize::from(*k) % KEYS.len()];
        let text = match v {
            Value::Raw(s) => s.clone(),
            Value::Num(n) => n.to_string(),
            Value::Small(n) => n.to_string(),
            Value::Pow2(p) => (1u64 << (p % 64)).to_string(),
        };
        dir.insert(key, text);
    }
    let read = |k: &str| dir.get(k).cloned();

    let rings = RingFeatures::parse(read);
    if let Ok(r) = &rings {
        assert!(r
            .max_ring_page_order
            .is_none_or(|o| o <= MAX_RING_PAGE_ORDER));
        assert!(r.max_queues.is_none_or(|q| (1..=MAX_QUEUES).contains(&q)));
    }
    let disk = DiskFeatures::parse(read);
    if let Ok(d) = &disk {
        assert!(d.sector_size.is_power_of_two());
        assert!((512..=4096).contains(&d.sector_size));
        assert!(d.physical_sector_size.is_power_of_two());
        assert!(d.physical_sector_size >= d.sector_size);
        assert!(d.sectors.checked_mul(512).is_some());
        assert_eq!(d.sectors % u64::from(d.sector_size / 512), 0);
        assert!(
            d.max_indirect_segments == 0
                || (12..=MAX_INDIRECT_SEGMENTS).contains(&d.max_indirect_segments)
        );
        if let Some(x) = d.discard {
            assert!(x.granularity >= d.sector_size);
            assert_eq!(x.granularity % d.sector_size, 0);
            assert!(x.alignment < x.granularity);
            assert_eq!(x.alignment % d.sector_size, 0);
            let _ = x.whole_extents(input.io_sector, u64::from(input.io_pages));
        }
        let again = DiskFeatures::read_sectors(read, d.sector_size);
        assert_eq!(again, Ok(d.sectors));
    }
    for r in [&rings.as_ref().err(), &disk.as_ref().err()]
        .into_iter()
        .flatten()
    {
        let msg = r.to_string();
        assert!(msg.contains(r.key));
        assert!(r.value.as_ref().is_none_or(|v| v.len() <= 40));
    }

    let config = FrontendConfig {
        queues: u32::from(input.queues % 80),
        max_ring_page_order: u32::from(input.order % 6),
        persistent: input.persistent,
        max_indirect_segments: u32::from(input.indirect),
    };
    let Ok(r) = rings else { return };
    let Ok(choice) = RingChoice::choose(&config, &r) else {
        assert!(config.validate().is_err());
        return;
    };
    assert!(choice.queues >= 1 && choice.queues <= config.queues);
    assert!(choice.ring_page_order <= config.max_ring_page_order);
    let refs: Vec<Vec<u32>> = (0..choice.queues)
        .map(|q| (0..choice.ring_pages()).map(|i| q * 100 + i).collect())
        .collect();
    let queue_rings: Vec<QueueRing<'_>> = refs
        .iter()
        .enumerate()
        .map(|(q, r)| QueueRing {
            ring_refs: r,
            event_channel: q as u32,
        })
        .collect();
    let keys = choice
        .frontend_keys(&queue_rings)
        .expect("consistent inputs");
    let per_queue = choice.ring_pages() as usize + 1;
    let expected = choice.queues as usize * per_queue
        + 2
        + usize::from(choice.write_ring_page_order)
        + usize::from(choice.queues > 1);
    assert_eq!(keys.len(), expected);
    assert!(keys
        .iter()
        .any(|k| k.path == "protocol" && k.value == "x86_64-abi"));

    let Ok(d) = disk else { return };
    let n = Negotiated::new(&config, &choice, &d);
    assert!(n.max_segments >= 11 && n.max_segments <= MAX_INDIRECT_SEGMENTS);
    assert!(n.max_indirect_pages() <= 8);
    let io = BlockIo {
        tag: 0,
        op: BlockOp::Read {
            sector: input.io_sector,
            segments: (0..input.io_pages)
                .map(|i| Segment {
                    gref: u32::from(i),
                    offset: 0,
                    len: 4096,
                })
                .collect(),
        },
    };
    if let Ok(p) = Plan::new(&io, &n) {
        let end = input.io_sector + u64::from(input.io_pages) * 8;
        assert!(end <= n.sectors);
        assert!(p
            .parts()
            .iter()
            .all(|x| x.nr_segments <= n.max_segments as usize));
    }
});
