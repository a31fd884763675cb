use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use super::{keys, reader};
use crate::abi::DiskInfo;
use crate::features::*;

/// What Linux 6.1's blkback writes for a 64 MiB loop device.
const BLKBACK: &[(&str, &str)] = &[
    ("feature-max-indirect-segments", "256"),
    ("multi-queue-max-queues", "2"),
    ("max-ring-page-order", "4"),
    ("feature-flush-cache", "1"),
    ("feature-discard", "1"),
    ("discard-granularity", "4096"),
    ("discard-alignment", "0"),
    ("discard-secure", "0"),
    ("feature-persistent", "1"),
    ("sectors", "131072"),
    ("info", "0"),
    ("sector-size", "512"),
    ("physical-sector-size", "512"),
];

fn with(overrides: &[(&str, Option<&str>)]) -> Result<DiskFeatures, FeatureError> {
    let mut map = keys(BLKBACK);
    for (k, v) in overrides {
        match v {
            Some(v) => map.insert(k.to_string(), v.to_string()),
            None => map.remove(*k),
        };
    }
    DiskFeatures::parse(reader(&map))
}

fn problem(r: Result<DiskFeatures, FeatureError>, key: &str) -> Problem {
    let e = r.expect_err("the keys must be refused");
    assert_eq!(e.key, key, "error names the wrong key: {e}");
    e.problem
}

#[test]
fn blkback_keys_parse() {
    let d = with(&[]).unwrap();
    assert_eq!(d.sectors, 131072);
    assert_eq!(d.sector_size, 512);
    assert_eq!(d.physical_sector_size, 512);
    assert_eq!(d.info, DiskInfo::empty());
    assert!(d.flush_cache);
    assert!(!d.barrier);
    assert_eq!(
        d.discard,
        Some(DiscardFeature {
            granularity: 4096,
            alignment: 0,
            secure: false
        })
    );
    assert!(d.persistent);
    assert_eq!(d.max_indirect_segments, 256);

    let r = RingFeatures::parse(reader(&keys(BLKBACK))).unwrap();
    assert_eq!(r.max_ring_page_order, Some(4));
    assert_eq!(r.max_queues, Some(2));
}

#[test]
fn required_keys_must_be_present() {
    for key in ["sectors", "sector-size", "info"] {
        assert_eq!(problem(with(&[(key, None)]), key), Problem::Missing);
    }
}

#[test]
fn optional_keys_default_to_not_offered() {
    let map = keys(&[("sectors", "8"), ("sector-size", "512"), ("info", "4")]);
    let d = DiskFeatures::parse(reader(&map)).unwrap();
    assert_eq!(d.physical_sector_size, 512);
    assert!(d.info.refuses_writes());
    assert!(!d.flush_cache && !d.barrier && !d.persistent);
    assert_eq!(d.discard, None);
    assert_eq!(d.max_indirect_segments, 0);
    let r = RingFeatures::parse(reader(&map)).unwrap();
    assert_eq!(r.max_ring_page_order, None);
    assert_eq!(r.max_queues, None);
}

#[test]
fn sector_size_must_be_a_power_of_two_from_512_to_4096() {
    assert_eq!(
        problem(with(&[("sector-size", Some("1000"))]), "sector-size"),
        Problem::NotPowerOfTwo
    );
    for bad in ["256", "8192", "0"] {
        let p = problem(with(&[("sector-size", Some(bad))]), "sector-size");
        assert!(
            matches!(
                p,
                Problem::OutOfRange {
                    min: 512,
                    max: 4096
                } | Problem::NotPowerOfTwo
            ),
            "{bad}: {p:?}"
        );
    }
    let d = with(&[
        ("sector-size", Some("4096")),
        ("physical-sector-size", Some("4096")),
    ])
    .unwrap();
    assert_eq!(d.sector_size, 4096);
}

#[test]
fn numbers_are_parsed_strictly() {
    for bad in [
        "", " 512", "512 ", "+512", "-1", "512\n", "0x200", "5l2", "512\0", "٥١٢",
    ] {
        assert_eq!(
            problem(with(&[("sectors", Some(bad))]), "sectors"),
            Problem::NotANumber,
            "{bad:?}"
        );
    }
    // Leading zeros are still a decimal number.
    assert_eq!(with(&[("sectors", Some("00008"))]).unwrap().sectors, 8);
    assert!(matches!(
        problem(
            with(&[("sectors", Some("18446744073709551616"))]),
            "sectors"
        ),
        Problem::TooLarge { .. }
    ));
    assert!(matches!(
        problem(with(&[("sectors", Some(&"9".repeat(5000)))]), "sectors"),
        Problem::TooLarge { .. }
    ));
    assert!(matches!(
        problem(with(&[("info", Some("4294967296"))]), "info"),
        Problem::TooLarge { max } if max == u64::from(u32::MAX)
    ));
}

#[test]
fn capacity_must_fit_in_bytes_and_whole_logical_sectors() {
    let max = (u64::MAX >> 9).to_string();
    assert_eq!(
        with(&[("sectors", Some(&max))]).unwrap().sectors,
        u64::MAX >> 9
    );
    let over = ((u64::MAX >> 9) + 1).to_string();
    assert!(matches!(
        problem(with(&[("sectors", Some(&over))]), "sectors"),
        Problem::TooLarge { .. }
    ));
    let p = problem(
        with(&[
            ("sector-size", Some("4096")),
            ("physical-sector-size", None),
            ("sectors", Some("9")),
        ]),
        "sectors",
    );
    assert!(matches!(p, Problem::NotMultipleOf { of: 8, .. }), "{p:?}");
}

#[test]
fn booleans_are_0_or_1() {
    for bad in ["2", "true", "", "01", " 1"] {
        assert_eq!(
            problem(
                with(&[("feature-flush-cache", Some(bad))]),
                "feature-flush-cache"
            ),
            Problem::NotABoolean,
            "{bad:?}"
        );
    }
    assert!(
        !with(&[("feature-flush-cache", Some("0"))])
            .unwrap()
            .flush_cache
    );
    assert!(with(&[("feature-barrier", Some("1"))]).unwrap().barrier);
}

#[test]
fn physical_sector_size_is_a_power_of_two_not_below_the_logical() {
    assert_eq!(
        problem(
            with(&[("physical-sector-size", Some("1536"))]),
            "physical-sector-size"
        ),
        Problem::NotPowerOfTwo
    );
    assert!(matches!(
        problem(
            with(&[
                ("sector-size", Some("4096")),
                ("physical-sector-size", Some("512"))
            ]),
            "physical-sector-size"
        ),
        Problem::OutOfRange { min: 4096, .. }
    ));
    assert_eq!(
        with(&[
            ("physical-sector-size", None),
            ("sector-size", Some("2048"))
        ])
        .unwrap()
        .physical_sector_size,
        2048
    );
}

#[test]
fn discard_parameters() {
    // Defaults: the logical sector, aligned at 0.
    let d = with(&[
        ("discard-granularity", None),
        ("discard-alignment", None),
        ("discard-secure", Some("1")),
    ])
    .unwrap();
    assert_eq!(
        d.discard,
        Some(DiscardFeature {
            granularity: 512,
            alignment: 0,
            secure: true
        })
    );
    // Granularity 0 means the default too.
    let d = with(&[("discard-granularity", Some("0"))]).unwrap();
    assert_eq!(d.discard.unwrap().granularity, 512);
    // An alignment past one extent is reduced modulo the granularity.
    let d = with(&[("discard-alignment", Some("9216"))]).unwrap();
    assert_eq!(d.discard.unwrap().alignment, 1024);
    assert!(matches!(
        problem(
            with(&[("discard-granularity", Some("1000"))]),
            "discard-granularity"
        ),
        Problem::NotMultipleOf { of: 512, .. }
    ));
    assert!(matches!(
        problem(
            with(&[("discard-alignment", Some("100"))]),
            "discard-alignment"
        ),
        Problem::NotMultipleOf { of: 512, .. }
    ));
    // Without feature-discard the parameters are not read at all.
    let d = with(&[
        ("feature-discard", Some("0")),
        ("discard-granularity", Some("garbage")),
    ])
    .unwrap();
    assert_eq!(d.discard, None);
}

#[test]
fn whole_discard_extents() {
    let d = DiscardFeature {
        granularity: 4096,
        alignment: 1024,
        secure: false,
    };
    // Extents start at bytes 1024 + k * 4096, i.e. sectors 2 + 8k.
    assert_eq!(d.whole_extents(0, 100), Some((2, 96)));
    assert_eq!(d.whole_extents(2, 8), Some((2, 8)));
    assert_eq!(d.whole_extents(3, 8), None);
    assert_eq!(d.whole_extents(3, 16), Some((10, 8)));
    assert_eq!(d.whole_extents(0, 1), None);
    assert_eq!(d.whole_extents(u64::MAX, 1), None);
}

#[test]
fn indirect_segments_are_clamped() {
    let n = |v: &str| {
        with(&[("feature-max-indirect-segments", Some(v))])
            .unwrap()
            .max_indirect_segments
    };
    assert_eq!(n("4000000"), MAX_INDIRECT_SEGMENTS);
    assert_eq!(n("4096"), 4096);
    assert_eq!(n("12"), 12);
    assert_eq!(n("11"), 0, "no more than a direct request: not used");
    assert_eq!(n("0"), 0);
}

#[test]
fn ring_features_are_clamped() {
    let r = |pairs: &[(&str, &str)]| RingFeatures::parse(reader(&keys(pairs)));
    let f = r(&[
        ("max-ring-page-order", "10"),
        ("multi-queue-max-queues", "100000"),
    ])
    .unwrap();
    assert_eq!(f.max_ring_page_order, Some(MAX_RING_PAGE_ORDER));
    assert_eq!(f.max_queues, Some(MAX_QUEUES));
    let f = r(&[("multi-queue-max-queues", "0")]).unwrap();
    assert_eq!(f.max_queues, Some(1));
    let e = r(&[("max-ring-page-order", "four")]).unwrap_err();
    assert_eq!(e.key, "max-ring-page-order");
    assert_eq!(e.problem, Problem::NotANumber);
}

#[test]
fn errors_name_the_key_the_value_and_the_rule() {
    let e = with(&[("sector-size", Some("1000"))]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("`sector-size`"), "{msg}");
    assert!(msg.contains("\"1000\""), "{msg}");
    assert!(msg.contains("not a power of two"), "{msg}");
    // A hostile value is not copied into the message in full.
    let long = "x".repeat(10_000);
    let e = with(&[("sectors", Some(&long))]).unwrap_err();
    assert_eq!(e.value.as_deref().map(str::len), Some(40));
    // Nor cut inside a character.
    let wide = "é".repeat(100);
    let e = with(&[("info", Some(&wide))]).unwrap_err();
    assert_eq!(e.value.unwrap().chars().count(), 20);
}

#[test]
fn resize_rereads_sectors_with_the_same_checks() {
    let map = keys(&[("sectors", "262144")]);
    assert_eq!(DiskFeatures::read_sectors(reader(&map), 4096), Ok(262144));
    let map = keys(&[("sectors", "262145")]);
    assert!(DiskFeatures::read_sectors(reader(&map), 4096).is_err());
    let map = keys(&[]);
    assert_eq!(
        DiskFeatures::read_sectors(reader(&map), 512)
            .unwrap_err()
            .problem,
        Problem::Missing
    );
}

fn choose(config: FrontendConfig, backend: &[(&str, &str)]) -> RingChoice {
    let f = RingFeatures::parse(reader(&keys(backend))).unwrap();
    RingChoice::choose(&config, &f).unwrap()
}

fn key_list(choice: &RingChoice, rings: &[QueueRing<'_>]) -> Vec<(String, String)> {
    choice
        .frontend_keys(rings)
        .unwrap()
        .into_iter()
        .map(|k| (k.path, k.value))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn keys_for_a_backend_without_multi_page_rings() {
    let c = choose(FrontendConfig::default(), &[]);
    assert_eq!(c.queues, 1);
    assert_eq!(c.ring_page_order, 0);
    assert!(!c.write_ring_page_order);
    assert_eq!(c.ring_size(), 32);
    let refs = [8];
    let got = key_list(
        &c,
        &[QueueRing {
            ring_refs: &refs,
            event_channel: 5,
        }],
    );
    assert_eq!(
        got,
        pairs(&[
            ("ring-ref", "8"),
            ("event-channel", "5"),
            ("protocol", "x86_64-abi"),
            ("feature-persistent", "1"),
        ])
    );
}

#[test]
fn keys_for_a_multi_page_ring() {
    let config = FrontendConfig {
        max_ring_page_order: 2,
        persistent: false,
        ..FrontendConfig::default()
    };
    let c = choose(config, &[("max-ring-page-order", "4")]);
    assert_eq!(c.ring_page_order, 2);
    assert_eq!(c.ring_pages(), 4);
    assert_eq!(c.ring_size(), 128);
    let refs = [10, 11, 12, 13];
    let got = key_list(
        &c,
        &[QueueRing {
            ring_refs: &refs,
            event_channel: 9,
        }],
    );
    assert_eq!(
        got,
        pairs(&[
            ("ring-page-order", "2"),
            ("ring-ref0", "10"),
            ("ring-ref1", "11"),
            ("ring-ref2", "12"),
            ("ring-ref3", "13"),
            ("event-channel", "9"),
            ("protocol", "x86_64-abi"),
            ("feature-persistent", "0"),
        ])
    );
}

#[test]
fn ring_ref0_even_for_order_0_when_ring_page_order_is_written() {
    let config = FrontendConfig {
        max_ring_page_order: 0,
        ..FrontendConfig::default()
    };
    let c = choose(config, &[("max-ring-page-order", "4")]);
    assert!(c.write_ring_page_order);
    let refs = [77];
    let got = key_list(
        &c,
        &[QueueRing {
            ring_refs: &refs,
            event_channel: 3,
        }],
    );
    assert_eq!(got[0], ("ring-page-order".to_string(), "0".to_string()));
    assert_eq!(got[1], ("ring-ref0".to_string(), "77".to_string()));
    assert!(!got.iter().any(|(k, _)| k == "ring-ref"));
}

#[test]
fn keys_for_several_queues() {
    let config = FrontendConfig {
        queues: 4,
        max_ring_page_order: 1,
        ..FrontendConfig::default()
    };
    // The backend allows 2 queues: the smaller wins.
    let c = choose(
        config,
        &[
            ("max-ring-page-order", "1"),
            ("multi-queue-max-queues", "2"),
        ],
    );
    assert_eq!(c.queues, 2);
    let (a, b) = ([1, 2], [3, 4]);
    let got = key_list(
        &c,
        &[
            QueueRing {
                ring_refs: &a,
                event_channel: 20,
            },
            QueueRing {
                ring_refs: &b,
                event_channel: 21,
            },
        ],
    );
    assert_eq!(
        got,
        pairs(&[
            ("ring-page-order", "1"),
            ("multi-queue-num-queues", "2"),
            ("queue-0/ring-ref0", "1"),
            ("queue-0/ring-ref1", "2"),
            ("queue-0/event-channel", "20"),
            ("queue-1/ring-ref0", "3"),
            ("queue-1/ring-ref1", "4"),
            ("queue-1/event-channel", "21"),
            ("protocol", "x86_64-abi"),
            ("feature-persistent", "1"),
        ])
    );
    // No flat ring keys beside the queue directories.
    assert!(!got
        .iter()
        .any(|(k, _)| k.starts_with("ring-ref") || k == "event-channel"));
}

#[test]
fn without_multi_queue_one_queue_is_used() {
    let config = FrontendConfig {
        queues: 8,
        ..FrontendConfig::default()
    };
    let c = choose(config, &[("max-ring-page-order", "4")]);
    assert_eq!(c.queues, 1);
    assert_eq!(c.ring_page_order, 4);
}

#[test]
fn frontend_keys_check_their_inputs() {
    let c = choose(FrontendConfig::default(), &[("max-ring-page-order", "1")]);
    let one = [1];
    let two = [1, 2];
    assert_eq!(
        c.frontend_keys(&[]),
        Err(ConfigError::QueueCount {
            expected: 1,
            got: 0
        })
    );
    assert_eq!(
        c.frontend_keys(&[QueueRing {
            ring_refs: &one,
            event_channel: 1
        }]),
        Err(ConfigError::RingRefCount {
            queue: 0,
            expected: 2,
            got: 1
        })
    );
    assert!(c
        .frontend_keys(&[QueueRing {
            ring_refs: &two,
            event_channel: 1
        }])
        .is_ok());
}

#[test]
fn config_is_validated() {
    let f = RingFeatures {
        max_ring_page_order: Some(4),
        max_queues: Some(4),
    };
    for (config, field) in [
        (
            FrontendConfig {
                queues: 0,
                ..FrontendConfig::default()
            },
            "queues",
        ),
        (
            FrontendConfig {
                queues: MAX_QUEUES + 1,
                ..FrontendConfig::default()
            },
            "queues",
        ),
        (
            FrontendConfig {
                max_ring_page_order: 5,
                ..FrontendConfig::default()
            },
            "max_ring_page_order",
        ),
        (
            FrontendConfig {
                max_indirect_segments: 4097,
                ..FrontendConfig::default()
            },
            "max_indirect_segments",
        ),
    ] {
        match RingChoice::choose(&config, &f) {
            Err(ConfigError::OutOfRange { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let msg = format!(
        "{}",
        RingChoice::choose(
            &FrontendConfig {
                queues: 0,
                ..FrontendConfig::default()
            },
            &f
        )
        .unwrap_err()
    );
    assert!(msg.contains("`queues` = 0"), "{msg}");
}

#[test]
fn negotiation_takes_the_smaller_of_both_sides() {
    let disk = with(&[]).unwrap();
    let rings = choose(FrontendConfig::default(), BLKBACK);
    let n = Negotiated::new(&FrontendConfig::default(), &rings, &disk);
    assert_eq!(n.max_segments, 256);
    assert!(n.indirect());
    assert_eq!(n.max_indirect_pages(), 1);
    assert!(n.persistent);
    assert_eq!(n.ring_page_order, 4);
    assert_eq!(n.ring_size(), 512);
    assert_eq!(n.capacity_bytes(), 64 << 20);

    let config = FrontendConfig {
        max_indirect_segments: 64,
        persistent: false,
        ..FrontendConfig::default()
    };
    let rings = choose(config, BLKBACK);
    let n = Negotiated::new(&config, &rings, &disk);
    assert_eq!(n.max_segments, 64);
    assert!(!n.persistent, "persistent only if both sides offer it");

    // No indirect on either side: 11 segments, direct only.
    let config = FrontendConfig {
        max_indirect_segments: 0,
        ..FrontendConfig::default()
    };
    let n = Negotiated::new(&config, &rings, &disk);
    assert_eq!(n.max_segments, 11);
    assert!(!n.indirect());
    assert_eq!(n.max_indirect_pages(), 0);
    let disk = with(&[
        ("feature-max-indirect-segments", None),
        ("feature-persistent", Some("0")),
    ])
    .unwrap();
    let n = Negotiated::new(&FrontendConfig::default(), &rings, &disk);
    assert_eq!(n.max_segments, 11);
    assert!(!n.persistent);

    let disk = with(&[("feature-max-indirect-segments", Some("4096"))]).unwrap();
    let config = FrontendConfig {
        max_indirect_segments: 4096,
        ..FrontendConfig::default()
    };
    let n = Negotiated::new(&config, &rings, &disk);
    assert_eq!(n.max_indirect_pages(), 8);
}

#[test]
fn features_can_be_lost_and_the_disk_resized() {
    let disk = with(&[("feature-barrier", Some("1"))]).unwrap();
    let rings = choose(FrontendConfig::default(), BLKBACK);
    let mut n = Negotiated::new(&FrontendConfig::default(), &rings, &disk);
    assert!(n.flush_cache && n.barrier && n.discard.is_some());
    n.disable(Feature::FlushCache);
    assert!(!n.flush_cache && n.barrier);
    n.disable(Feature::Barrier);
    assert!(!n.barrier);
    n.disable(Feature::Discard);
    assert!(n.discard.is_none());
    n.resize(262144);
    assert_eq!(n.capacity_bytes(), 128 << 20);
}
