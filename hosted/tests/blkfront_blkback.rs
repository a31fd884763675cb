//! blkfront against the hosted blkback: two domains on the hosted
//! platform (the frontend in this thread, blkback in its own threads, an
//! io_uring onto a file opened with O_DIRECT), connected through the
//! xenstore daemon. Data integrity with persistent grants, indirect
//! requests and several queues; the application's pages granted per
//! request; flush and discard; a read-only disk; a resize; a backend that
//! dies with I/O in flight and a new instance with other features; the
//! blocking API; every hostile mode of blkback.

#[path = "blkback_common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blkfront::inflight::ResponseError;
use blkfront::{
    Blkfront, Buffer, Completion, DeviceConfig, DeviceError, DeviceEvent, IoError, IoFailure, Mode,
    Refusal, Span,
};
use common::{pattern, Rig, FE, FRONT_PATH, TIMEOUT};
use grant_tables::{PageAllocator, RingError};
use hosted::blkback::{Blkback, BlkbackConfig, Hostile, HostileMode};
use hosted::xenstore::{connect_as, UnixXenstore};
use hosted::HostedPlatform;
use xenbus::FrontendPhase;

type Dev = Blkfront<HostedPlatform>;

fn device(r: &Rig, f: impl FnOnce(&mut DeviceConfig)) -> (Dev, UnixXenstore) {
    let mut xs = connect_as(r.daemon.socket(), FE.0).expect("dom1 xenstore");
    let mut cfg = DeviceConfig::new(FRONT_PATH);
    f(&mut cfg);
    let mut dev = Blkfront::new(Arc::new(r.front_plat.clone()), cfg).expect("device");
    dev.wait_connected(&mut xs, Some(TIMEOUT))
        .expect("no device error")
        .expect("connected in time");
    (dev, xs)
}

/// Waits until every I/O of `tags` completed; returns them by tag.
fn wait_all(
    dev: &mut Dev,
    xs: &mut UnixXenstore,
    tags: &[u64],
) -> BTreeMap<u64, Completion<HostedPlatform>> {
    let end = Instant::now() + TIMEOUT;
    let mut got = BTreeMap::new();
    while got.len() < tags.len() {
        assert!(Instant::now() < end, "{} of {} done", got.len(), tags.len());
        let _ = dev.wait(xs, Some(Duration::from_millis(100)));
        while let Some(c) = dev.next_completion() {
            assert!(tags.contains(&c.tag), "unexpected {c:?}");
            assert!(got.insert(c.tag, c).is_none(), "completed twice");
        }
    }
    got
}

fn pool_span(dev: &Dev, q: usize, data: &[u8]) -> Span<HostedPlatform> {
    let mut b = dev.buffer(q).expect("a pool buffer");
    b.write_at(0, data).unwrap();
    Span::new(b, 0, data.len())
}

fn span_bytes(spans: &[Span<HostedPlatform>]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in spans {
        let mut b = vec![0u8; s.len];
        s.buffer.read_at(s.offset, &mut b).unwrap();
        out.extend(b);
    }
    out
}

#[test]
fn data_integrity_with_persistent_grants_indirect_requests_and_two_queues() {
    let r = Rig::new("bf-integrity");
    let (mut dev, mut xs) = device(&r, |c| {
        c.features.queues = 2;
        c.pool_pages = 1024;
    });
    let neg = *dev.negotiated().unwrap();
    assert!(neg.persistent);
    assert_eq!(neg.max_segments, 256);
    assert_eq!(neg.ring_page_order, 4);
    assert_eq!(neg.queues, 2);
    assert_eq!(dev.rings(), 2);
    assert_eq!(dev.sectors(), Some((16 << 20) / 512));
    // 48 writes of 1 to 64 pages, back to back on the disk, all in flight
    // at once on both queues.
    let mut expected = vec![0u8; 16 << 20];
    let mut tags = Vec::new();
    let mut sector = 0u64;
    for k in 0..48u32 {
        let pages = 1 + (k as usize * 37) % 64;
        let q = (k % 2) as usize;
        let spans: Vec<_> = (0..pages)
            .map(|p| pool_span(&dev, q, &pattern(k * 100 + p as u32, 4096)))
            .collect();
        let data = span_bytes(&spans);
        expected[sector as usize * 512..][..data.len()].copy_from_slice(&data);
        tags.push(dev.write(q, sector, spans).unwrap());
        sector += pages as u64 * 8;
    }
    for (_, c) in wait_all(&mut dev, &mut xs, &tags) {
        assert_eq!(c.result, Ok(()), "{c:?}");
    }
    let used = sector as usize * 512;
    assert!(
        r.file_bytes(0, used) == expected[..used],
        "the file differs"
    );
    // Read it all back in 256 KiB reads into fresh buffers.
    let mut tags = Vec::new();
    let mut at = BTreeMap::new();
    for chunk in 0..(used / (64 * 4096)) {
        let spans: Vec<_> = (0..64)
            .map(|_| Span::whole(dev.buffer(chunk % 2).unwrap()))
            .collect();
        let s = chunk as u64 * 512;
        let t = dev.read(chunk % 2, s, spans).unwrap();
        at.insert(t, s);
        tags.push(t);
    }
    for (t, c) in wait_all(&mut dev, &mut xs, &tags) {
        assert_eq!(c.result, Ok(()));
        let s = at[&t] as usize * 512;
        assert!(
            span_bytes(c.io.spans()) == expected[s..s + 64 * 4096],
            "read at {s}"
        );
    }
    let st = r.back().stats();
    assert!(st.persistent);
    assert_eq!(st.queues, 2);
    assert!(st.persistent_grants > 0);
    // The 64-page reads (and the larger writes) went through bounce
    // buffers, and their data above is whole.
    assert!(st.bounced >= 16, "{st:?}");
    assert!(dev.stats().indirect_requests > 0);
    assert_eq!(dev.stats().failed, 0);
}

#[test]
fn the_applications_pages_granted_per_request() {
    let r = Rig::with("bf-own", 4 << 20, &[], |c| c.persistent = false);
    let (mut dev, mut xs) = device(&r, |_| {});
    assert!(!dev.negotiated().unwrap().persistent);
    let before = dev.grant_stats().unwrap();
    let mut buf = Buffer::from_pages(r.front_plat.alloc_zeroed_pages(4).unwrap());
    let data = pattern(7, 12288);
    buf.write_at(2048, &data).unwrap();
    let spans = dev
        .write_blocking(
            &mut xs,
            0,
            64,
            vec![Span::new(buf, 2048, 12288)],
            Some(TIMEOUT),
        )
        .unwrap();
    assert_eq!(r.file_bytes(64 * 512, 12288), data);
    let buf = spans.into_iter().next().unwrap().buffer;
    let back = dev
        .read_blocking(
            &mut xs,
            0,
            64,
            vec![Span::new(buf, 0, 12288)],
            Some(TIMEOUT),
        )
        .unwrap();
    assert_eq!(span_bytes(&back), data);
    let after = dev.grant_stats().unwrap();
    assert_eq!(
        after.granted, before.granted,
        "the per-request grants ended"
    );
    assert_eq!(after.quarantined, 0);
    let st = r.back().stats();
    assert_eq!(st.persistent_grants, 0);
    assert!(st.grant_maps >= 7, "{st:?}");
}

#[test]
fn flush_and_discard_punch_a_hole() {
    let r = Rig::new("bf-discard");
    let (mut dev, mut xs) = device(&r, |_| {});
    let spans: Vec<_> = (0..16)
        .map(|p| pool_span(&dev, 0, &pattern(p, 4096)))
        .collect();
    dev.write_blocking(&mut xs, 0, 0, spans, Some(TIMEOUT))
        .unwrap();
    dev.flush_blocking(&mut xs, 0, Some(TIMEOUT)).unwrap();
    let disc = dev.negotiated().unwrap().discard.expect("discard offered");
    // Discard whole extents in the middle.
    let g = u64::from(disc.granularity / 512);
    let tag = dev.discard(0, 4 * g, 4 * g, false).unwrap();
    let c = dev.wait_for(&mut xs, tag, Some(TIMEOUT)).unwrap();
    assert_eq!(c.result, Ok(()));
    let hole = r.file_bytes(4 * g * 512, (4 * g * 512) as usize);
    assert!(
        hole.iter().all(|&b| b == 0),
        "the discarded range reads as zeroes"
    );
    assert_eq!(r.file_bytes(0, 4096), pattern(0, 4096));
    let st = r.back().stats();
    assert!(st.flushes >= 1 && st.discards >= 1, "{st:?}");
}

#[test]
fn a_read_only_disk_refuses_writes_before_the_ring() {
    let r = Rig::with("bf-ro", 1 << 20, &[], |c| c.read_only = true);
    let (mut dev, mut xs) = device(&r, |_| {});
    assert_eq!(dev.read_only(), Some(true));
    let s = pool_span(&dev, 0, &[1u8; 4096]);
    let refused = dev.write(0, 0, vec![s]).unwrap_err();
    assert_eq!(
        refused.error,
        Refusal::Io(IoError::ReadOnly { op: "write" })
    );
    assert!(dev.flush(0).is_err());
    let back = dev
        .read_blocking(
            &mut xs,
            0,
            0,
            vec![Span::whole(dev.buffer(0).unwrap())],
            Some(TIMEOUT),
        )
        .unwrap();
    assert_eq!(back.len(), 1);
    let st = r.back().stats();
    assert_eq!(st.writes, 0);
    assert_eq!(st.reads, 1);
}

#[test]
fn a_resize_is_seen() {
    let r = Rig::with("bf-resize", 1 << 20, &[], |_| {});
    let (mut dev, mut xs) = device(&r, |_| {});
    while dev.next_event().is_some() {}
    std::fs::OpenOptions::new()
        .write(true)
        .open(&r.disk)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    assert_eq!(r.back().refresh_size().unwrap(), (3 << 20) / 512);
    let end = Instant::now() + TIMEOUT;
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e| matches!(e, DeviceEvent::Resized { .. }))
    {
        assert!(Instant::now() < end, "no resize seen: {events:?}");
        let _ = dev.wait(&mut xs, Some(Duration::from_millis(50)));
        while let Some(e) = dev.next_event() {
            events.push(e);
        }
    }
    assert!(events.contains(&DeviceEvent::Resized {
        old: 2048,
        new: 6144
    }));
    // The new space is usable.
    let s = pool_span(&dev, 0, &pattern(3, 4096));
    dev.write_blocking(&mut xs, 0, 6000, vec![s], Some(TIMEOUT))
        .unwrap();
    assert_eq!(r.file_bytes(6000 * 512, 4096), pattern(3, 4096));
}

#[test]
fn a_backend_that_dies_with_io_in_flight_and_a_new_instance_with_other_features() {
    let mut r = Rig::with("bf-restart", 16 << 20, &[], |c| c.max_queues = 2);
    let (mut dev, mut xs) = device(&r, |c| {
        c.features.queues = 2;
        c.pool_pages = 1200;
    });
    let baseline_free = dev.grant_stats().unwrap().free;
    assert_eq!(dev.negotiated().unwrap().max_segments, 256);
    // The backend dies (its directory stays, so the frontend cannot tell
    // yet)...
    r.back.take().unwrap().stop();
    // ...and 32 writes of 64 pages go on the rings nobody serves now.
    let mut expected = Vec::new();
    let mut tags = Vec::new();
    for k in 0..32u32 {
        let q = (k % 2) as usize;
        let spans: Vec<_> = (0..64)
            .map(|p| pool_span(&dev, q, &pattern(k * 1000 + p, 4096)))
            .collect();
        expected.extend(span_bytes(&spans));
        tags.push(dev.write(q, u64::from(k) * 512, spans).unwrap());
    }
    dev.process().unwrap();
    assert_eq!(dev.stats().requests, 32, "all on the rings");
    std::thread::sleep(Duration::from_millis(20));
    assert!(dev.next_completion().is_none());
    // A new instance: one queue, two-page rings, 32 segments a request,
    // no persistent grants. Each write is re-issued in two requests.
    let mut config = BlkbackConfig::new(&r.disk);
    config.max_queues = 1;
    config.max_ring_page_order = 1;
    config.max_indirect_segments = 32;
    config.persistent = false;
    r.back = Some(
        Blkback::spawn(
            r.back_plat.clone(),
            r.daemon.socket(),
            &r.spec.backend_path(),
            config,
        )
        .unwrap(),
    );
    let done = wait_all(&mut dev, &mut xs, &tags);
    let reissued: u32 = done.values().map(|c| c.reissued).sum();
    for c in done.values() {
        assert_eq!(c.result, Ok(()), "{c:?}");
        assert_eq!(c.held_spans, 0);
    }
    assert!(
        r.file_bytes(0, expected.len()) == expected,
        "the file differs"
    );
    let neg = *dev.negotiated().unwrap();
    assert_eq!(neg.max_segments, 32);
    assert_eq!(neg.queues, 1);
    assert!(!neg.persistent);
    assert_eq!(dev.stats().connections, 2);
    assert_eq!(reissued, 32, "every write was re-issued on the new backend");
    // 32 indirect requests on the dead rings, then 64 of 32 segments.
    assert_eq!(dev.stats().requests, 32 + 64);
    assert_eq!(r.back().stats().writes, 64);
    // No leak: buffers back, an orderly close, the device gone.
    drop(done);
    dev.close(&mut xs).unwrap();
    let end = Instant::now() + TIMEOUT;
    while dev.phase() != FrontendPhase::Shut {
        assert!(
            Instant::now() < end,
            "close did not finish: {:?}",
            dev.phase()
        );
        let _ = dev.wait(&mut xs, Some(Duration::from_millis(20)));
    }
    drop(dev);
    let table = grant_tables::Platform::grant_table(&r.front_plat)
        .unwrap()
        .clone();
    table.retry_quarantined();
    let g = table.stats();
    assert_eq!((g.granted, g.quarantined), (0, 0), "{g:?}");
    assert_eq!(g.free, baseline_free + 2 * 1200 + 2 * 64 + 2 * 16, "{g:?}");
}

#[test]
fn blocking_io_in_event_and_polling_modes() {
    for (mode, tag) in [
        (Mode::Events, "bf-block-ev"),
        (Mode::Polling, "bf-block-poll"),
    ] {
        let r = Rig::new(tag);
        let (mut dev, mut xs) = device(&r, |c| c.mode = mode);
        for k in 0..50u32 {
            let data = pattern(k, 8192);
            let spans = vec![
                pool_span(&dev, 0, &data[..4096]),
                pool_span(&dev, 0, &data[4096..]),
            ];
            dev.write_blocking(&mut xs, 0, u64::from(k) * 16, spans, Some(TIMEOUT))
                .unwrap();
            let spans = vec![
                Span::whole(dev.buffer(0).unwrap()),
                Span::whole(dev.buffer(0).unwrap()),
            ];
            let back = dev
                .read_blocking(&mut xs, 0, u64::from(k) * 16, spans, Some(TIMEOUT))
                .unwrap();
            assert_eq!(span_bytes(&back), data, "{mode:?} round {k}");
        }
        let s = dev.stats();
        assert!(s.notifications <= s.requests, "{s:?}");
    }
}

/// Connects to a blkback that turns `kind` after `after` honest responses,
/// runs reads until the device is disabled; returns the error.
fn hostile(kind: Hostile, after: u64, tag: &str) -> DeviceError {
    let r = Rig::with(tag, 1 << 20, &[], |c| {
        c.hostile = Some(HostileMode { kind, after })
    });
    // A backend that stops answering is caught by the request timeout.
    let (mut dev, mut xs) = device(&r, |c| c.request_timeout = Duration::from_secs(1));
    let end = Instant::now() + TIMEOUT;
    let mut ok = 0;
    let mut failed = 0;
    let mut tags = Vec::new();
    while dev.broken().is_none() {
        assert!(Instant::now() < end, "{kind:?}: not disabled");
        if tags.len() < 40 {
            for k in 0..4 {
                let spans = vec![Span::whole(dev.buffer(0).unwrap())];
                tags.push(dev.read(0, 8 * k, spans).unwrap());
            }
        }
        let _ = dev.wait(&mut xs, Some(Duration::from_millis(20)));
        while let Some(c) = dev.next_completion() {
            match c.result {
                Ok(()) => ok += 1,
                Err(IoFailure::Disabled(_)) => failed += 1,
                other => panic!("{kind:?}: {other:?}"),
            }
        }
    }
    while let Some(c) = dev.next_completion() {
        assert!(matches!(c.result, Err(IoFailure::Disabled(_)) | Ok(())));
        if c.result.is_err() {
            failed += 1;
        } else {
            ok += 1;
        }
    }
    assert_eq!(ok + failed, tags.len(), "{kind:?}: every I/O ended once");
    if !matches!(kind, Hostile::IndexJump | Hostile::UnsolicitedResponses) {
        // (A jumped index is seen with the responses published with it,
        // before any of them is read.)
        assert!(
            ok as u64 >= after,
            "{kind:?}: the honest responses completed"
        );
    }
    let err = dev.broken().unwrap().clone();
    assert!(dev.flush(0).is_err());
    assert!(r.back().stats().hostile_acts >= 1);
    // The frontend withdraws; the backend follows.
    let end = Instant::now() + TIMEOUT;
    while dev.phase() != FrontendPhase::Shut {
        assert!(
            Instant::now() < end,
            "{kind:?}: no close: {:?}",
            dev.phase()
        );
        let _ = dev.wait(&mut xs, Some(Duration::from_millis(20)));
    }
    err
}

#[test]
fn every_hostile_mode_disables_the_device_cleanly() {
    let e = hostile(Hostile::BadIds, 3, "bf-h-ids");
    assert!(
        matches!(
            e,
            DeviceError::BadResponse {
                error: ResponseError::IdOutOfRange { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = hostile(Hostile::DuplicateResponses, 2, "bf-h-dup");
    assert!(
        matches!(
            e,
            DeviceError::BadResponse {
                error: ResponseError::NotInFlight { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = hostile(Hostile::WrongOperation, 1, "bf-h-op");
    assert!(
        matches!(
            e,
            DeviceError::BadResponse {
                error: ResponseError::WrongOperation { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = hostile(Hostile::UnknownStatus, 1, "bf-h-st");
    assert!(
        matches!(
            e,
            DeviceError::BadResponse {
                error: ResponseError::UnknownStatus { status: 5, .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = hostile(Hostile::IndexJump, 2, "bf-h-jump");
    assert!(
        matches!(
            e,
            DeviceError::Ring {
                error: RingError::ResponseOverflow { .. },
                ..
            }
        ),
        "{e:?}"
    );
    // A response for the id after the last one: an id not in flight, or
    // a producer index showing more responses than requests; or, when
    // that id is in flight with the same operation, a response no check
    // can tell from a genuine one (as in Linux): the backend then leaves
    // the ring alone and the request timeout catches the stall.
    let e = hostile(Hostile::UnsolicitedResponses, 0, "bf-h-extra");
    assert!(
        matches!(
            e,
            DeviceError::Ring {
                error: RingError::ResponseOverflow { .. },
                ..
            } | DeviceError::BadResponse {
                error: ResponseError::NotInFlight { .. } | ResponseError::IdOutOfRange { .. },
                ..
            } | DeviceError::Stalled { .. }
        ),
        "{e:?}"
    );
}

#[test]
fn grants_a_backend_keeps_mapped_are_quarantined_then_recovered() {
    let r = Rig::with("bf-keep", 1 << 20, &[], |c| {
        c.hostile = Some(HostileMode {
            kind: Hostile::KeepGrantsMapped,
            after: 0,
        })
    });
    let (mut dev, mut xs) = device(&r, |c| c.pool_pages = 16);
    let s = pool_span(&dev, 0, &pattern(1, 4096));
    dev.write_blocking(&mut xs, 0, 0, vec![s], Some(TIMEOUT))
        .unwrap();
    dev.close(&mut xs).unwrap();
    let end = Instant::now() + TIMEOUT;
    while dev.phase() != FrontendPhase::Shut {
        assert!(Instant::now() < end);
        let _ = dev.wait(&mut xs, Some(Duration::from_millis(20)));
    }
    drop(dev);
    let table = grant_tables::Platform::grant_table(&r.front_plat)
        .unwrap()
        .clone();
    let g = table.stats();
    assert!(
        g.quarantined >= 2,
        "the ring and the data page stay quarantined: {g:?}"
    );
    assert!(r.back().release_kept_grants() >= 2);
    table.retry_quarantined();
    let g = table.stats();
    assert_eq!(
        (g.granted, g.quarantined, g.quarantined_allocations),
        (0, 0, 0),
        "{g:?}"
    );
}
