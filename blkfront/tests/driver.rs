//! The driver against an in-process backend on the fake platform:
//! negotiation and the keys written, data integrity through pool buffers
//! and through the application's own pages, indirect requests, ring
//! layouts, several queues, flush, barrier, discard, read-only disks,
//! alignment to the logical sector, and resizes.

mod common;

use blkfront::abi::{op, DiskInfo};
use blkfront::{Buffer, Completion, DeviceEvent, Feature, IoError, IoFailure, Refusal, Span};
use common::backend::{BackConfig, BackInstance};
use common::memstore::MemConn;
use common::*;
use grant_tables::fake::FakePlatform;
use grant_tables::{PageAllocator, PoolMode};
use std::time::{Duration, Instant};
use xenbus::Xenstore;

/// Drives until I/O `tag` completes; returns it.
fn finish(
    dev: &mut Dev,
    xs: &mut Xenstore<MemConn>,
    back: &mut Option<BackInstance>,
    tag: u64,
) -> Completion<FakePlatform> {
    let mut found = None;
    let mut others = Vec::new();
    drive(dev, xs, back, |d, _| {
        while let Some(c) = d.next_completion() {
            if c.tag == tag {
                found = Some(c);
            } else {
                others.push(c);
            }
        }
        found.is_some()
    });
    assert!(others.is_empty(), "unexpected completions {others:?}");
    found.unwrap()
}

/// Drives until every I/O of `tags` completes; returns them in `tags`'
/// order.
fn finish_all(
    dev: &mut Dev,
    xs: &mut Xenstore<MemConn>,
    back: &mut Option<BackInstance>,
    tags: &[u64],
) -> Vec<Completion<FakePlatform>> {
    let mut got = std::collections::BTreeMap::new();
    drive(dev, xs, back, |d, _| {
        while let Some(c) = d.next_completion() {
            assert!(tags.contains(&c.tag), "unexpected completion {c:?}");
            got.insert(c.tag, c);
        }
        got.len() == tags.len()
    });
    tags.iter().map(|t| got.remove(t).unwrap()).collect()
}

fn setup(cfg: BackConfig) -> (World, Dev, Xenstore<MemConn>, Option<BackInstance>) {
    setup_with(cfg, |c| c)
}

fn setup_with(
    cfg: BackConfig,
    f: impl FnOnce(blkfront::DeviceConfig) -> blkfront::DeviceConfig,
) -> (World, Dev, Xenstore<MemConn>, Option<BackInstance>) {
    let w = World::new(cfg.sectors);
    let mut xs = w.front_xs();
    let mut dev = w.device(f(w.config()));
    let mut back = Some(w.backend(cfg));
    connect(&mut dev, &mut xs, &mut back);
    (w, dev, xs, back)
}

fn fe_key(w: &World, key: &str) -> Option<String> {
    w.store.read(&format!("{}/{key}", frontend_path()))
}

#[test]
fn negotiation_writes_blkbacks_keys_and_reads_the_disk() {
    let w = World::new(8192);
    let mut xs = w.front_xs();
    let mut dev = w.device(w.config());
    let mut back = Some(w.backend(BackConfig::default()));
    let events = connect(&mut dev, &mut xs, &mut back);
    let Some(DeviceEvent::Connected { connection, disk }) = events.last() else {
        panic!("{events:?}");
    };
    assert_eq!(*connection, 1);
    assert_eq!(disk.sectors, 8192);
    assert_eq!(disk.sector_size, 512);
    assert_eq!(disk.physical_sector_size, 4096);
    assert!(disk.persistent);
    assert_eq!(disk.max_segments, 256);
    assert_eq!(disk.ring_page_order, 4);
    assert_eq!(disk.queues, 1);
    assert_eq!(dev.sectors(), Some(8192));
    assert_eq!(dev.capacity_bytes(), Some(8192 * 512));
    assert_eq!(dev.physical_sector_size(), Some(4096));
    assert_eq!(dev.read_only(), Some(false));
    // The keys blkback reads at Initialised.
    assert_eq!(fe_key(&w, "ring-page-order").as_deref(), Some("4"));
    for i in 0..16 {
        assert!(fe_key(&w, &format!("ring-ref{i}")).is_some(), "ring-ref{i}");
    }
    assert_eq!(fe_key(&w, "ring-ref16"), None);
    assert_eq!(fe_key(&w, "ring-ref"), None);
    assert_eq!(fe_key(&w, "protocol").as_deref(), Some("x86_64-abi"));
    assert_eq!(fe_key(&w, "feature-persistent").as_deref(), Some("1"));
    assert!(fe_key(&w, "event-channel").is_some());
    assert_eq!(fe_key(&w, "multi-queue-num-queues"), None);
    assert_eq!(fe_key(&w, "state").as_deref(), Some("4"));
    let log = back.as_ref().unwrap().dev.log.lock().unwrap().clone();
    assert_eq!(log.ring_pages, vec![16]);
    assert_eq!(log.protocol, vec!["x86_64-abi".to_string()]);
    assert_eq!(log.frontend_persistent, vec!["1".to_string()]);
}

#[test]
fn pool_buffers_round_trip_every_byte() {
    let (w, mut dev, mut xs, mut back) = setup(BackConfig::default());
    // Writes of 1, 3, 8 and 20 pages at various places.
    let mut expected = vec![0u8; 8192 * 512];
    for (n, sector, seed) in [(1usize, 0u64, 1u8), (3, 8, 2), (8, 1000, 3), (20, 4000, 4)] {
        let spans = pool_spans(&dev, 0, n, sector, seed);
        let bytes = span_bytes(&spans);
        expected[sector as usize * 512..][..bytes.len()].copy_from_slice(&bytes);
        let tag = dev.write(0, sector, spans).unwrap();
        let c = finish(&mut dev, &mut xs, &mut back, tag);
        assert_eq!(c.result, Ok(()), "{c:?}");
        assert_eq!(c.held_spans, 0);
    }
    assert!(*w.disk.lock().unwrap() == expected, "disk differs");
    // Read everything back in 32-page reads into fresh buffers.
    for chunk in 0..(8192 / 256) {
        let sector = chunk * 256;
        let spans = empty_spans(&dev, 0, 32);
        let tag = dev.read(0, sector, spans).unwrap();
        let c = finish(&mut dev, &mut xs, &mut back, tag);
        assert_eq!(c.result, Ok(()));
        let got = span_bytes(c.io.spans());
        assert!(
            got == expected[sector as usize * 512..][..got.len()],
            "sectors {sector}.. differ"
        );
    }
    // Sub-page spans: 1 KiB at offset 1 KiB of a buffer, to sector 2.
    let mut b = dev.buffer(0).unwrap();
    b.write_at(1024, &[0x5a; 1024]).unwrap();
    let tag = dev.write(0, 2, vec![Span::new(b, 1024, 1024)]).unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    assert!(w.disk.lock().unwrap()[1024..2048]
        .iter()
        .all(|&x| x == 0x5a));
    assert_eq!(dev.stats().failed, 0);
}

#[test]
fn large_ios_use_indirect_requests_with_pages_from_the_pool() {
    let (w, mut dev, mut xs, mut back) = setup_with(BackConfig::default(), |mut c| {
        c.pool_pages = 512;
        c
    });
    let spans = pool_spans(&dev, 0, 64, 512, 9);
    let bytes = span_bytes(&spans);
    let tag = dev.write(0, 512, spans).unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    assert!(w.disk.lock().unwrap()[512 * 512..][..bytes.len()] == bytes[..]);
    {
        let log = back.as_ref().unwrap().dev.log.lock().unwrap();
        assert_eq!(log.indirect, 1, "one indirect request");
        assert_eq!(log.max_segments, 64);
        assert_eq!(log.ops.get(&op::INDIRECT), Some(&1));
    }
    // 300 segments with a maximum of 256: two indirect requests.
    let spans = pool_spans(&dev, 0, 300, 0, 10);
    let bytes = span_bytes(&spans);
    let tag = dev.write(0, 0, spans).unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    assert!(w.disk.lock().unwrap()[..bytes.len()] == bytes[..]);
    let log = back.as_ref().unwrap().dev.log.lock().unwrap();
    assert_eq!(log.indirect, 3);
    assert_eq!(log.max_segments, 256);
    assert!(dev.stats().indirect_requests >= 3);
    // Every indirect page went back to its pool.
}

#[test]
fn without_indirect_requests_large_ios_are_split_into_direct_ones() {
    let cfg = BackConfig {
        max_indirect: None,
        ..BackConfig::default()
    };
    let (w, mut dev, mut xs, mut back) = setup(cfg);
    assert_eq!(dev.negotiated().unwrap().max_segments, 11);
    let spans = pool_spans(&dev, 0, 64, 100 * 8, 11);
    let bytes = span_bytes(&spans);
    let tag = dev.write(0, 800, spans).unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    assert!(w.disk.lock().unwrap()[800 * 512..][..bytes.len()] == bytes[..]);
    let log = back.as_ref().unwrap().dev.log.lock().unwrap();
    assert_eq!(log.indirect, 0);
    assert_eq!(log.max_segments, 11);
    // 64 = 5 * 11 + 9: six requests, in disk order.
    assert_eq!(log.ops.get(&op::WRITE), Some(&6));
    let starts: Vec<u64> = log.writes.iter().map(|w| w.0).collect();
    assert_eq!(starts, vec![800, 888, 976, 1064, 1152, 1240]);
}

#[test]
fn ring_layouts_follow_the_backends_maximum_order() {
    // Order 0 offered: ring-page-order 0 with ring-ref0, as blkback wants.
    let cfg = BackConfig {
        max_ring_page_order: Some(0),
        ..BackConfig::default()
    };
    let (w, dev, _xs, back) = setup(cfg);
    assert_eq!(fe_key(&w, "ring-page-order").as_deref(), Some("0"));
    assert!(fe_key(&w, "ring-ref0").is_some());
    assert_eq!(fe_key(&w, "ring-ref"), None);
    assert_eq!(dev.negotiated().unwrap().ring_size(), 32);
    assert_eq!(back.unwrap().dev.log.lock().unwrap().ring_pages, vec![1]);
    // No max-ring-page-order at all: the single ring-ref.
    let cfg = BackConfig {
        max_ring_page_order: None,
        ..BackConfig::default()
    };
    let (w, _dev, _xs, _back) = setup(cfg);
    assert!(fe_key(&w, "ring-ref").is_some());
    assert_eq!(fe_key(&w, "ring-page-order"), None);
    // Order 2 offered, 4 wished: 4 pages.
    let cfg = BackConfig {
        max_ring_page_order: Some(2),
        ..BackConfig::default()
    };
    let (w, dev, _xs, back) = setup(cfg);
    assert_eq!(fe_key(&w, "ring-page-order").as_deref(), Some("2"));
    assert!(fe_key(&w, "ring-ref3").is_some());
    assert_eq!(fe_key(&w, "ring-ref4"), None);
    assert_eq!(dev.negotiated().unwrap().ring_size(), 128);
    assert_eq!(back.unwrap().dev.log.lock().unwrap().ring_pages, vec![4]);
}

#[test]
fn several_queues_each_have_a_ring_a_channel_and_a_pool() {
    let cfg = BackConfig {
        max_queues: Some(4),
        ..BackConfig::default()
    };
    let (w, mut dev, mut xs, mut back) = setup_with(cfg, |mut c| {
        c.features.queues = 4;
        c.pool_pages = 16;
        c
    });
    assert_eq!(dev.rings(), 4);
    assert_eq!(dev.queues(), 4);
    assert_eq!(fe_key(&w, "multi-queue-num-queues").as_deref(), Some("4"));
    let mut channels = std::collections::BTreeSet::new();
    for q in 0..4 {
        assert!(fe_key(&w, &format!("queue-{q}/ring-ref0")).is_some());
        channels.insert(fe_key(&w, &format!("queue-{q}/event-channel")).unwrap());
    }
    assert_eq!(channels.len(), 4, "one event channel per queue");
    assert_eq!(fe_key(&w, "event-channel"), None);
    // Each queue's pool is its own grants.
    let mut refs = std::collections::BTreeSet::new();
    for q in 0..4 {
        refs.extend(dev.pool(q).unwrap().grefs());
    }
    assert_eq!(refs.len(), 64);
    // One write per queue, each on its own ring.
    let mut tags = Vec::new();
    for q in 0..4 {
        let spans = pool_spans(&dev, q, 2, 16 * q as u64, q as u8);
        tags.push(dev.write(q, 16 * q as u64, spans).unwrap());
    }
    for c in finish_all(&mut dev, &mut xs, &mut back, &tags) {
        assert_eq!(c.result, Ok(()));
    }
    let log = back.as_ref().unwrap().dev.log.lock().unwrap();
    assert_eq!(log.queues, vec![4]);
    for q in 0..4 {
        assert_eq!(log.per_queue.get(&q), Some(&1), "queue {q}");
    }
    for q in 0..4u64 {
        let disk = w.disk.lock().unwrap();
        assert!(disk[(16 * q as usize) * 512..][..8192] == page_pattern_n(q as u8, 16 * q, 2)[..]);
    }
}

fn page_pattern_n(seed: u8, sector: u64, pages: usize) -> Vec<u8> {
    (0..pages)
        .flat_map(|k| page_pattern(seed, sector + 8 * k as u64))
        .collect()
}

#[test]
fn fewer_queues_offered_than_wished() {
    let cfg = BackConfig {
        max_queues: Some(2),
        ..BackConfig::default()
    };
    let (w, mut dev, mut xs, mut back) = setup_with(cfg, |mut c| {
        c.features.queues = 4;
        c.pool_pages = 8;
        c
    });
    assert_eq!(dev.rings(), 2);
    assert_eq!(fe_key(&w, "multi-queue-num-queues").as_deref(), Some("2"));
    // Device queues 2 and 3 go on rings 0 and 1.
    let mut tags = Vec::new();
    for q in 0..4 {
        let spans = pool_spans(&dev, q, 1, 8 * q as u64, 1);
        tags.push(dev.write(q, 8 * q as u64, spans).unwrap());
    }
    for c in finish_all(&mut dev, &mut xs, &mut back, &tags) {
        assert_eq!(c.result, Ok(()));
    }
    let log = back.as_ref().unwrap().dev.log.lock().unwrap();
    assert_eq!(log.per_queue.get(&0), Some(&2));
    assert_eq!(log.per_queue.get(&1), Some(&2));
}

#[test]
fn flush_barrier_discard_and_secure_discard() {
    let (w, mut dev, mut xs, mut back) = setup(BackConfig::default());
    w.disk.lock().unwrap().fill(0xff);
    let tag = dev.flush(0).unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    let tag = dev
        .submit(blkfront::Io::Barrier, blkfront::IoOptions::queue(0))
        .unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    let tag = dev.discard(0, 64, 64, false).unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    let tag = dev.discard(0, 256, 8, true).unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    let disk = w.disk.lock().unwrap();
    assert!(disk[64 * 512..128 * 512].iter().all(|&b| b == 0));
    assert!(disk[256 * 512..264 * 512].iter().all(|&b| b == 0));
    assert!(disk[128 * 512..256 * 512].iter().all(|&b| b == 0xff));
    let log = back.as_ref().unwrap().dev.log.lock().unwrap();
    assert_eq!(log.ops.get(&op::FLUSH_DISKCACHE), Some(&1));
    assert_eq!(log.ops.get(&op::WRITE_BARRIER), Some(&1));
    assert_eq!(log.discards, vec![(64, 64, false), (256, 8, true)]);
}

#[test]
fn operations_the_backend_lacks_are_refused_before_the_ring() {
    let cfg = BackConfig {
        flush: false,
        barrier: false,
        discard: Some((4096, 0, false)),
        ..BackConfig::default()
    };
    let (_w, mut dev, _xs, back) = setup(cfg);
    let r = dev.flush(0).unwrap_err();
    assert_eq!(r.error, Refusal::Io(IoError::Unsupported { op: "flush" }));
    let r = dev.discard(0, 0, 8, true).unwrap_err();
    assert_eq!(
        r.error,
        Refusal::Io(IoError::Unsupported {
            op: "secure discard"
        })
    );
    assert!(back.unwrap().dev.log.lock().unwrap().ops.is_empty());
}

#[test]
fn a_flush_the_backend_refuses_turns_the_feature_off() {
    let (_w, mut dev, mut xs, mut back) = setup(BackConfig::default());
    back.as_mut().unwrap().dev.refuse_flush = true;
    let tag = dev.flush(0).unwrap();
    let c = finish(&mut dev, &mut xs, &mut back, tag);
    assert_eq!(c.result, Err(IoFailure::NotSupported));
    let mut events = Vec::new();
    while let Some(e) = dev.next_event() {
        events.push(e);
    }
    assert!(
        events.contains(&DeviceEvent::FeatureLost(Feature::FlushCache)),
        "{events:?}"
    );
    assert!(!dev.negotiated().unwrap().flush_cache);
    // A flush now goes as a barrier, which the backend has.
    let tag = dev.flush(0).unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    let log = back.as_ref().unwrap().dev.log.lock().unwrap();
    assert_eq!(log.ops.get(&op::WRITE_BARRIER), Some(&1));
}

#[test]
fn read_only_and_cdrom_disks_refuse_writes_before_the_ring() {
    for info in [DiskInfo::READONLY, DiskInfo::CDROM] {
        let cfg = BackConfig {
            info: info.bits(),
            ..BackConfig::default()
        };
        let (_w, mut dev, mut xs, mut back) = setup(cfg);
        assert_eq!(dev.read_only(), Some(true));
        assert_eq!(dev.info(), Some(info));
        let spans = pool_spans(&dev, 0, 1, 0, 0);
        let r = dev.write(0, 0, spans).unwrap_err();
        assert_eq!(r.error, Refusal::Io(IoError::ReadOnly { op: "write" }));
        assert_eq!(r.io.spans().len(), 1, "the buffers come back");
        let msg = r.to_string();
        assert!(msg.contains("read-only"), "{msg}");
        assert!(matches!(
            dev.flush(0).unwrap_err().error,
            Refusal::Io(IoError::ReadOnly { .. })
        ));
        assert!(matches!(
            dev.discard(0, 0, 8, false).unwrap_err().error,
            Refusal::Io(IoError::ReadOnly { .. })
        ));
        // Reads work.
        let tag = dev.read(0, 0, empty_spans(&dev, 0, 1)).unwrap();
        assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
        let log = back.as_ref().unwrap().dev.log.lock().unwrap();
        assert_eq!(log.ops.keys().copied().collect::<Vec<_>>(), vec![op::READ]);
    }
}

#[test]
fn alignment_is_checked_against_the_logical_sector() {
    let cfg = BackConfig {
        sector_size: 4096,
        physical_sector_size: 4096,
        ..BackConfig::default()
    };
    let (w, mut dev, mut xs, mut back) = setup(cfg);
    assert_eq!(dev.sector_size(), Some(4096));
    // A start that is not a whole 4 KiB sector.
    let r = dev.write(0, 4, pool_spans(&dev, 0, 1, 0, 0)).unwrap_err();
    assert!(matches!(
        r.error,
        Refusal::Io(IoError::MisalignedStart {
            sector: 4,
            sector_size: 4096
        })
    ));
    // A 512-byte span.
    let b = dev.buffer(0).unwrap();
    let r = dev.write(0, 8, vec![Span::new(b, 0, 512)]).unwrap_err();
    assert!(
        matches!(r.error, Refusal::Io(IoError::BadSegment { .. })),
        "{:?}",
        r.error
    );
    // A span past its buffer.
    let b = dev.buffer(0).unwrap();
    let r = dev.write(0, 8, vec![Span::new(b, 512, 4096)]).unwrap_err();
    assert!(matches!(r.error, Refusal::BadSpan { .. }));
    // Past the end of the disk.
    let r = dev
        .write(0, 8192, pool_spans(&dev, 0, 1, 0, 0))
        .unwrap_err();
    assert!(matches!(r.error, Refusal::Io(IoError::OutOfRange { .. })));
    // Aligned: fine.
    let tag = dev.write(0, 8, pool_spans(&dev, 0, 1, 8, 3)).unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    assert!(w.disk.lock().unwrap()[4096..8192] == page_pattern(3, 8)[..]);
    assert_eq!(
        back.as_ref().unwrap().dev.log.lock().unwrap().writes,
        vec![(8, 8)]
    );
}

#[test]
fn a_resize_is_seen_and_later_ios_use_the_new_size() {
    let (w, mut dev, mut xs, mut back) = setup(BackConfig::default());
    while dev.next_event().is_some() {}
    // Out of range now.
    assert!(dev.write(0, 8192, pool_spans(&dev, 0, 1, 0, 0)).is_err());
    // blkback's resize: sectors, then the state again.
    w.disk.lock().unwrap().resize(16384 * 512, 0);
    let be = backend_path();
    w.store.write(&format!("{be}/sectors"), "16384");
    w.store.write(&format!("{be}/state"), "4");
    let mut events = Vec::new();
    drive(&mut dev, &mut xs, &mut back, |d, _| {
        while let Some(e) = d.next_event() {
            events.push(e);
        }
        !events.is_empty()
    });
    assert_eq!(
        events,
        vec![DeviceEvent::Resized {
            old: 8192,
            new: 16384
        }]
    );
    assert_eq!(dev.sectors(), Some(16384));
    let tag = dev.write(0, 8192, pool_spans(&dev, 0, 1, 8192, 5)).unwrap();
    assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    assert!(dev.is_connected());
}

#[test]
fn the_applications_own_pages_are_granted_per_request() {
    let cfg = BackConfig {
        persistent: false,
        ..BackConfig::default()
    };
    let (w, mut dev, mut xs, mut back) = setup(cfg);
    assert!(!dev.negotiated().unwrap().persistent);
    let before = dev.grant_stats().unwrap();
    // Three pages; the span starts 1 KiB in and covers 8 KiB, crossing
    // two page boundaries.
    let pages = w.front.alloc_zeroed_pages(3).unwrap();
    let mut buf = Buffer::from_pages(pages);
    let data: Vec<u8> = (0..8192).map(|i| (i * 7 % 251) as u8).collect();
    buf.write_at(1024, &data).unwrap();
    let tag = dev.write(0, 40, vec![Span::new(buf, 1024, 8192)]).unwrap();
    let c = finish(&mut dev, &mut xs, &mut back, tag);
    assert_eq!(c.result, Ok(()));
    assert_eq!(c.held_spans, 0);
    assert!(w.disk.lock().unwrap()[40 * 512..][..8192] == data[..]);
    // The grants ended with the I/O.
    let after = dev.grant_stats().unwrap();
    assert_eq!(after.granted, before.granted);
    // Read it back into the same pages, elsewhere in them.
    let buf = c.io.into_spans().pop().unwrap().buffer;
    let tag = dev.read(0, 40, vec![Span::new(buf, 0, 8192)]).unwrap();
    let c = finish(&mut dev, &mut xs, &mut back, tag);
    assert_eq!(c.result, Ok(()));
    let got = span_bytes(c.io.spans());
    assert!(got == data);
    let log = back.as_ref().unwrap().dev.log.lock().unwrap();
    assert_eq!(log.persistent_maps, 0);
    // 3 segments for the write, 2 for the read.
    assert_eq!(log.transient_maps, 5);
    assert_eq!(dev.grant_stats().unwrap().granted, before.granted);
}

#[test]
fn own_pages_go_through_the_pool_when_the_backend_maps_persistently() {
    let (w, mut dev, mut xs, mut back) = setup_with(BackConfig::default(), |mut c| {
        c.pool_pages = 8;
        c
    });
    let before = dev.grant_stats().unwrap();
    let pages = w.front.alloc_zeroed_pages(2).unwrap();
    let mut buf = Buffer::from_pages(pages);
    let data: Vec<u8> = (0..6144).map(|i| (i % 253) as u8).collect();
    buf.write_at(512, &data).unwrap();
    let tag = dev.write(0, 16, vec![Span::new(buf, 512, 6144)]).unwrap();
    let c = finish(&mut dev, &mut xs, &mut back, tag);
    assert_eq!(c.result, Ok(()));
    assert_eq!(c.held_spans, 0, "the application's pages were never mapped");
    assert!(w.disk.lock().unwrap()[16 * 512..][..6144] == data[..]);
    // Read back into the same pages at another offset.
    let buf = c.io.into_spans().pop().unwrap().buffer;
    let tag = dev.read(0, 16, vec![Span::new(buf, 0, 6144)]).unwrap();
    let c = finish(&mut dev, &mut xs, &mut back, tag);
    assert_eq!(c.result, Ok(()));
    assert!(span_bytes(c.io.spans()) == data);
    // Only pool pages were granted, and all are back.
    let after = dev.grant_stats().unwrap();
    assert_eq!(after.granted, before.granted);
    assert_eq!(after.quarantined, 0);
    assert_eq!(dev.pool(0).unwrap().available(), 8);
    let log = back.as_ref().unwrap().dev.log.lock().unwrap();
    assert!(log.persistent_maps <= 8, "only pool pages are mapped");
    assert_eq!(log.transient_maps, 0);
}

#[test]
fn untrusted_pools_zero_buffers_between_uses() {
    let (_w, mut dev, mut xs, mut back) = setup_with(BackConfig::default(), |mut c| {
        c.pool_mode = PoolMode::Untrusted;
        c.pool_pages = 1;
        c
    });
    let spans = pool_spans(&dev, 0, 1, 0, 9);
    let tag = dev.write(0, 0, spans).unwrap();
    let c = finish(&mut dev, &mut xs, &mut back, tag);
    drop(c);
    // The one buffer came back zeroed.
    let b = dev.buffer(0).unwrap();
    let mut out = vec![1u8; 4096];
    b.read_at(0, &mut out).unwrap();
    assert!(out.iter().all(|&x| x == 0));
}

#[test]
fn submissions_before_the_first_connection_are_refused() {
    let w = World::new(64);
    let mut dev = w.device(w.config());
    let r = dev.flush(0).unwrap_err();
    assert_eq!(r.error, Refusal::NotConnected);
    assert!(dev.buffer(0).is_none());
    let r = dev
        .submit(blkfront::Io::Flush, blkfront::IoOptions::queue(3))
        .unwrap_err();
    assert_eq!(r.error, Refusal::NotConnected);
}

/// Adaptive and spin modes: a response that comes while `wait_io` spins is taken
/// without asking the backend for a notification (the shared `rsp_event`
/// stays put); one that does not come in the spin is asked for before the
/// wait sleeps. Polling mode never asks, event mode asks at once.
#[test]
fn wait_io_asks_for_a_notification_as_the_mode_says() {
    for (mode, asks_at_once, asks_after_spin) in [
        (blkfront::Mode::Polling, false, false),
        (blkfront::Mode::Events, true, true),
        (blkfront::Mode::Adaptive { spin_ns: 2_000_000 }, false, true),
        (blkfront::Mode::Spin { spin_ns: 2_000_000 }, false, true),
    ] {
        let (_w, mut dev, _xs, mut back) = setup_with(BackConfig::default(), |mut c| {
            c.mode = mode;
            c
        });
        let b = back.as_mut().unwrap();
        let event = |b: &BackInstance| b.dev.rsp_event(0).expect("ring header");
        // Nothing pending: at once, nothing asked.
        let before = event(b);
        let t0 = Instant::now();
        assert!(!dev.wait_io(Some(Duration::from_secs(5))).unwrap());
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(event(b), before, "{mode:?}");
        // The response is there when the wait starts.
        for k in 0..4 {
            let tag = dev
                .write(0, 8 * k, pool_spans(&dev, 0, 1, 8 * k, 1))
                .unwrap();
            dev.process().unwrap();
            b.poll();
            assert!(dev.wait_io(Some(Duration::from_secs(5))).unwrap());
            let c = dev.next_completion().unwrap();
            assert_eq!((c.tag, c.result), (tag, Ok(())), "{mode:?}");
        }
        // Asked: `rsp_event` is one past the responses taken.
        let armed = |dev: &Dev| dev.stats().responses as u32 + 1;
        assert_eq!(event(b) == armed(&dev), asks_at_once, "{mode:?}");
        // No response within the spin: the wait runs out on the clock,
        // having asked (or not) for a notification. (A thread kept off
        // its core past the timeout during the spin returns before it
        // asks: a few waits, as a busy machine may need.)
        let tag = dev.write(0, 64, pool_spans(&dev, 0, 1, 64, 2)).unwrap();
        for _ in 0..10 {
            let t0 = Instant::now();
            assert!(!dev.wait_io(Some(Duration::from_millis(20))).unwrap());
            assert!(t0.elapsed() >= Duration::from_millis(20), "{mode:?}");
            if event(b) == armed(&dev) {
                break;
            }
        }
        assert_eq!(event(b) == armed(&dev), asks_after_spin, "{mode:?}");
        b.poll();
        assert!(dev.wait_io(Some(Duration::from_secs(5))).unwrap());
        let c = dev.next_completion().unwrap();
        assert_eq!((c.tag, c.result), (tag, Ok(())), "{mode:?}");
        assert_eq!(dev.mode(), mode);
    }
}

#[test]
fn polling_mode_never_asks_for_notifications() {
    let (_w, mut dev, mut xs, mut back) = setup_with(BackConfig::default(), |mut c| {
        c.mode = blkfront::Mode::Polling;
        c
    });
    for k in 0..10 {
        let tag = dev
            .write(0, 8 * k, pool_spans(&dev, 0, 1, 8 * k, 1))
            .unwrap();
        assert_eq!(finish(&mut dev, &mut xs, &mut back, tag).result, Ok(()));
    }
    assert_eq!(dev.mode(), blkfront::Mode::Polling);
    assert_eq!(dev.stats().completed, 10);
}
