//! A backend that dies with I/O in flight and comes back as a new instance
//! with other features: every I/O is re-issued (split for the new maximum
//! segments), completes once, and the disk holds exactly what was written;
//! no grant, page or ref is leaked.

mod common;

use std::collections::BTreeMap;

use blkfront::{Completion, DeviceEvent};
use common::backend::{BackConfig, BackInstance};
use common::memstore::MemConn;
use common::*;
use grant_tables::fake::FakePlatform;
use grant_tables::Platform;
use xenbus::{PeerLoss, Xenstore};

fn fe_key(w: &World, key: &str) -> Option<String> {
    w.store.read(&format!("{}/{key}", frontend_path()))
}

/// Drives until `n` completions are collected.
fn collect(
    dev: &mut Dev,
    xs: &mut Xenstore<MemConn>,
    back: &mut Option<BackInstance>,
    n: usize,
    events: &mut Vec<DeviceEvent>,
) -> Vec<Completion<FakePlatform>> {
    let mut out = Vec::new();
    drive(dev, xs, back, |d, _| {
        while let Some(c) = d.next_completion() {
            out.push(c);
        }
        while let Some(e) = d.next_event() {
            events.push(e);
        }
        out.len() >= n
    });
    out
}

/// What the application expects on the disk.
struct Expect {
    bytes: Vec<u8>,
}

impl Expect {
    fn write(&mut self, sector: u64, data: &[u8]) {
        self.bytes[sector as usize * 512..][..data.len()].copy_from_slice(data);
    }
}

fn restart_mid_io(remove_dir: bool) {
    let sectors = 16384;
    let w = World::new(sectors);
    let mut xs = w.front_xs();
    let mut cfg = w.config();
    cfg.features.queues = 2;
    cfg.pool_pages = 800;
    let mut dev = w.device(cfg);
    let baseline = dev.grant_stats().unwrap();
    // Backend A: two queues of one-page rings (32 slots each), 256
    // segments a request through indirect pages.
    let a_cfg = BackConfig {
        sectors,
        max_ring_page_order: Some(0),
        max_queues: Some(2),
        ..BackConfig::default()
    };
    let mut back = Some(w.backend(a_cfg));
    let mut events = connect(&mut dev, &mut xs, &mut back);
    assert_eq!(dev.rings(), 2);
    let first_refs = (
        fe_key(&w, "queue-0/ring-ref0"),
        fe_key(&w, "queue-1/ring-ref0"),
    );

    // A first batch completes normally.
    let mut expect = Expect {
        bytes: vec![0u8; sectors as usize * 512],
    };
    let mut tags = BTreeMap::new();
    let spans = pool_spans(&dev, 0, 16, 0, 1);
    expect.write(0, &span_bytes(&spans));
    tags.insert(dev.write(0, 0, spans).unwrap(), "early write");
    let done = collect(&mut dev, &mut xs, &mut back, 1, &mut events);
    assert_eq!(done[0].result, Ok(()));
    assert_eq!(done[0].reissued, 0);
    drop(done);

    // Backend A takes everything from now on and answers nothing.
    back.as_mut().unwrap().dev.hold = true;
    let mut pending = 0;
    // 64-segment writes (one indirect request each on A; six direct
    // requests each on B), on both queues.
    for k in 0..20u64 {
        let q = (k % 2) as usize;
        let sector = 128 + k * 512;
        let spans = pool_spans(&dev, q, 64, sector, 2 + k as u8);
        expect.write(sector, &span_bytes(&spans));
        tags.insert(dev.write(q, sector, spans).unwrap(), "big write");
        pending += 1;
    }
    // Small writes, more than a ring holds: some never reach the ring.
    for k in 0..40u64 {
        let sector = 12000 + k * 8;
        let spans = pool_spans(&dev, 0, 1, sector, 100 + k as u8);
        expect.write(sector, &span_bytes(&spans));
        tags.insert(dev.write(0, sector, spans).unwrap(), "small write");
        pending += 1;
    }
    // A read of what the early write put there.
    let read_tag = dev.read(1, 0, empty_spans(&dev, 1, 16)).unwrap();
    tags.insert(read_tag, "read");
    pending += 1;
    for _ in 0..5 {
        let _ = dev.poll(&mut xs);
        back.as_mut().unwrap().poll();
    }
    let held = back.as_ref().unwrap().dev.log.lock().unwrap().held;
    // Ring 0: 10 big and 22 small writes (full); ring 1: 10 big writes
    // and the read. 18 small writes wait in queue 0.
    assert_eq!(held, 43, "the requests A holds");
    assert_eq!(dev.waiting(0), 18);
    assert!(dev.next_completion().is_none());
    // Nothing A held reached the disk.
    assert!(w.disk.lock().unwrap()[128 * 512..][..4096] != expect.bytes[128 * 512..][..4096]);

    // A dies. Its mappings go with it.
    drop(back.take());
    if remove_dir {
        w.store.rm(&backend_path());
        for _ in 0..20 {
            let _ = dev.poll(&mut xs);
        }
        w.plug_backend();
    }
    // B: one queue, a four-page ring, no indirect requests (11 segments),
    // no persistent grants.
    let b_cfg = BackConfig {
        sectors,
        max_ring_page_order: Some(2),
        max_queues: Some(1),
        max_indirect: None,
        persistent: false,
        ..BackConfig::default()
    };
    back = Some(w.backend(b_cfg));
    let done = collect(&mut dev, &mut xs, &mut back, pending, &mut events);
    assert_eq!(done.len(), pending, "each I/O completes once");
    let mut seen = std::collections::BTreeSet::new();
    for c in &done {
        assert!(seen.insert(c.tag), "I/O {} completed twice", c.tag);
        assert!(tags.contains_key(&c.tag));
        assert_eq!(
            c.result,
            Ok(()),
            "{} {}: {:?}",
            tags[&c.tag],
            c.tag,
            c.result
        );
        assert_eq!(c.held_spans, 0);
    }
    // The read saw the early write.
    let read = done.iter().find(|c| c.tag == read_tag).unwrap();
    assert!(span_bytes(read.io.spans()) == expect.bytes[..16 * 4096]);
    assert_eq!(read.reissued, 1);
    // Every write landed, exactly as written.
    assert!(*w.disk.lock().unwrap() == expect.bytes, "the disk differs");
    // B got the I/Os re-split for 11 segments, on its single ring.
    {
        let log = back.as_ref().unwrap().dev.log.lock().unwrap();
        assert_eq!(log.max_segments, 11);
        assert_eq!(log.indirect, 0);
        assert_eq!(log.queues, vec![1]);
        assert_eq!(log.ring_pages, vec![4]);
        assert_eq!(log.frontend_persistent, vec!["1".to_string()]);
        // 20 writes of 64 segments in 6 requests each, 40 small, 2 reads.
        assert_eq!(log.ops.get(&blkfront::abi::op::WRITE), Some(&(20 * 6 + 40)));
    }
    let lost = events
        .iter()
        .find_map(|e| match e {
            DeviceEvent::Disconnected {
                connection,
                loss,
                reissue,
            } => Some((*connection, *loss, *reissue)),
            _ => None,
        })
        .expect("a Disconnected event");
    assert_eq!(lost.0, 1);
    assert_eq!(lost.2, 43, "I/Os that were on the rings");
    if remove_dir {
        assert_eq!(lost.1, PeerLoss::Gone);
    }
    let connections: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            DeviceEvent::Connected { connection, .. } => Some(*connection),
            _ => None,
        })
        .collect();
    assert_eq!(connections, vec![1, 2]);
    assert_eq!(dev.negotiated().unwrap().max_segments, 11);
    assert!(!dev.negotiated().unwrap().persistent);
    // New rings: the second connection's refs are not the first's.
    assert_ne!(fe_key(&w, "ring-ref0"), first_refs.0);
    assert_ne!(fe_key(&w, "ring-ref0"), first_refs.1);
    // The first connection's multi-queue keys are gone: B must not read
    // them.
    assert_eq!(fe_key(&w, "queue-0/ring-ref0"), None);
    assert_eq!(fe_key(&w, "queue-1"), None);
    assert_eq!(fe_key(&w, "multi-queue-num-queues"), None);
    assert_eq!(fe_key(&w, "ring-page-order").as_deref(), Some("2"));
    let stats = dev.stats();
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.reissued, 43);

    // Leak check: buffers back to the pools, then nothing but the pools
    // and the live ring is granted; after the device goes, nothing at all.
    drop(done);
    let _ = dev.poll(&mut xs);
    let g = dev.grant_stats().unwrap();
    assert_eq!(g.quarantined, 0, "{g:?}");
    assert_eq!(g.quarantined_allocations, 0, "{g:?}");
    // Two data pools of 800, the four-page ring, and the two indirect
    // pools of 64 made for A (the backend's domain did not change, so
    // pools stay granted for the next connection).
    assert_eq!(g.granted, 2 * 800 + 4 + 2 * 64, "{g:?}");
    for q in 0..2 {
        assert_eq!(
            dev.pool(q).unwrap().available(),
            800,
            "pool {q} has every buffer back"
        );
    }
    // The backend goes first (a device dropped while the backend still
    // maps its ring would leave the ring in quarantine, as it must).
    drop(back);
    let pages_before = w.front_pages();
    drop(dev);
    let g = w.front.grant_table().unwrap().stats();
    assert_eq!(g.granted, 0, "{g:?}");
    assert_eq!(g.quarantined, 0, "{g:?}");
    assert_eq!(g.free, baseline.free, "every ref is free again");
    assert!(w.front_pages() < pages_before);
    assert_eq!(w.front_pages(), 0, "every page of the device is freed");
}

#[test]
fn backend_restart_with_its_directory_intact() {
    restart_mid_io(false);
}

#[test]
fn backend_restart_with_its_directory_removed() {
    restart_mid_io(true);
}

#[test]
fn many_restarts_leak_nothing() {
    let w = World::new(1024);
    let mut xs = w.front_xs();
    let mut cfg = w.config();
    cfg.pool_pages = 64;
    let mut dev = w.device(cfg);
    let baseline = dev.grant_stats().unwrap();
    let mut back = Some(w.backend(BackConfig {
        sectors: 1024,
        ..BackConfig::default()
    }));
    connect(&mut dev, &mut xs, &mut back);
    let mut events = Vec::new();
    for round in 0..50u64 {
        // One I/O held by the dying instance, re-issued on the next.
        back.as_mut().unwrap().dev.hold = true;
        let sector = (round % 100) * 8;
        let spans = pool_spans(&dev, 0, 4, sector, round as u8);
        let data = span_bytes(&spans);
        let tag = dev.write(0, sector, spans).unwrap();
        for _ in 0..3 {
            let _ = dev.poll(&mut xs);
            back.as_mut().unwrap().poll();
        }
        drop(back.take());
        let cfg = BackConfig {
            sectors: 1024,
            max_indirect: if round % 2 == 0 { None } else { Some(64) },
            max_ring_page_order: Some((round % 5) as u32),
            ..BackConfig::default()
        };
        back = Some(w.backend(cfg));
        let done = collect(&mut dev, &mut xs, &mut back, 1, &mut events);
        assert_eq!(done[0].tag, tag);
        assert_eq!(done[0].result, Ok(()));
        assert!(w.disk.lock().unwrap()[sector as usize * 512..][..data.len()] == data[..]);
    }
    assert_eq!(dev.stats().connections, 51);
    let _ = dev.poll(&mut xs);
    let g = dev.grant_stats().unwrap();
    assert_eq!(g.quarantined, 0, "{g:?}");
    // An orderly close: the backend unmaps, the rings' grants end.
    dev.close(&mut xs).unwrap();
    drive(&mut dev, &mut xs, &mut back, |d, _| {
        let mut closed = false;
        while let Some(e) = d.next_event() {
            closed |= e == DeviceEvent::Closed;
        }
        closed
    });
    assert_eq!(dev.rings(), 0);
    assert!(dev.flush(0).is_err(), "a closed device takes no I/O");
    drop(dev);
    drop(back);
    let g = w.front.grant_table().unwrap().stats();
    assert_eq!((g.granted, g.quarantined), (0, 0), "{g:?}");
    assert_eq!(g.free, baseline.free);
    assert_eq!(w.front_pages(), 0);
}
