//! The hosted blkback serving the test frontend on the hosted platform:
//! data integrity against the disk file, indirect requests, multi-page
//! rings, two queues, flush and barrier, discard as a punched hole,
//! read-only disks, persistent and per-request grants, polling mode.

#[path = "blkback_common/mod.rs"]
mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use blkfront::abi::{op, status, BlkifRequestSegment, DiskInfo};
use common::{pattern, Rig, BE, TIMEOUT};
use hosted::blkback::front::{discard_request, rw_request, whole_page, FrontConfig};
use hosted::blkback::{RejectReason, WaitMode};

fn ok(rsp: blkfront::abi::BlkifResponse, id: u64, operation: u8) {
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (id, operation, status::OKAY),
        "{rsp:?}"
    );
}

#[test]
fn advertised_keys_and_disk_description() {
    let mut r = Rig::with("keys", 16 << 20, &[], |c| c.max_queues = 3);
    let f = r.front(FrontConfig::default());
    assert_eq!(
        r.backend_key("feature-max-indirect-segments").as_deref(),
        Some("256")
    );
    assert_eq!(
        r.backend_key("multi-queue-max-queues").as_deref(),
        Some("3")
    );
    assert_eq!(r.backend_key("max-ring-page-order").as_deref(), Some("4"));
    assert_eq!(r.backend_key("feature-discard").as_deref(), Some("1"));
    assert_eq!(r.backend_key("discard-secure").as_deref(), Some("0"));
    assert_eq!(r.backend_key("feature-persistent").as_deref(), Some("1"));
    let d = f.disk().expect("disk keys");
    assert_eq!(d.sectors, (16 << 20) / 512);
    assert_eq!((d.sector_size, d.physical_sector_size), (512, 4096));
    assert!(d.flush_cache && d.barrier && d.persistent);
    assert_eq!(d.max_indirect_segments, 256);
    assert_eq!(d.info, DiskInfo::empty());
    assert!(d.discard.is_some_and(|x| !x.secure && x.alignment == 0));
}

#[test]
fn writes_land_in_the_file_and_reads_return_it() {
    let r = Rig::new("rw");
    let mut f = r.front(FrontConfig::default());
    // Three whole pages written at sector 64.
    let mut bufs = Vec::new();
    for i in 0..3 {
        let mut b = f.buffer().unwrap();
        b.write_at(0, &pattern(i, 4096)).unwrap();
        bufs.push(b);
    }
    let refs: Vec<_> = bufs.iter().collect();
    ok(f.pages(0, true, 7, 64, &refs).unwrap(), 7, op::WRITE);
    for i in 0..3u32 {
        assert_eq!(
            r.file_bytes(64 * 512 + u64::from(i) * 4096, 4096),
            pattern(i, 4096),
            "page {i}"
        );
    }
    // The file written behind the backend's back, read through the ring.
    r.write_file(1 << 20, &pattern(99, 8192));
    let a = f.buffer().unwrap();
    let b = f.buffer().unwrap();
    ok(
        f.pages(0, false, 8, (1 << 20) / 512, &[&a, &b]).unwrap(),
        8,
        op::READ,
    );
    let mut got = vec![0u8; 4096];
    a.read_at(0, &mut got).unwrap();
    assert_eq!(got, pattern(99, 8192)[..4096]);
    b.read_at(0, &mut got).unwrap();
    assert_eq!(got, pattern(99, 8192)[4096..]);
    // Partial pages: sectors 2..=5 of a page, 2 KiB at sector 8.
    let mut p = f.buffer().unwrap();
    p.write_at(0, &pattern(5, 4096)).unwrap();
    let seg = BlkifRequestSegment {
        gref: p.gref(),
        first_sect: 2,
        last_sect: 5,
        _pad: [0; 2],
    };
    ok(
        f.io(0, &rw_request(op::WRITE, 9, 8, &[seg])).unwrap(),
        9,
        op::WRITE,
    );
    assert_eq!(r.file_bytes(8 * 512, 2048), pattern(5, 4096)[1024..3072]);
    assert_eq!(r.file_bytes(7 * 512, 512), vec![0; 512], "nothing before");
    assert_eq!(r.file_bytes(12 * 512, 512), vec![0; 512], "nothing after");
    let s = r.back().stats();
    assert_eq!((s.reads, s.writes), (1, 2));
    assert!(s.persistent);
    // Persistent grants: each page mapped once, kept.
    assert_eq!(s.persistent_grants, 6);
}

#[test]
fn indirect_requests_move_a_mebibyte() {
    let r = Rig::new("indirect");
    let mut f = r.front(FrontConfig {
        pool_pages: 600,
        ..FrontConfig::default()
    });
    let mut bufs = Vec::new();
    for i in 0..256 {
        let mut b = f.buffer().unwrap();
        b.write_at(0, &pattern(1000 + i, 4096)).unwrap();
        bufs.push(b);
    }
    let refs: Vec<_> = bufs.iter().collect();
    ok(f.pages(0, true, 1, 2048, &refs).unwrap(), 1, op::WRITE);
    let file = r.file_bytes(2048 * 512, 1 << 20);
    for (i, chunk) in file.chunks(4096).enumerate() {
        assert_eq!(chunk, pattern(1000 + i as u32, 4096), "page {i}");
    }
    let back: Vec<_> = (0..256).map(|_| f.buffer().unwrap()).collect();
    let refs: Vec<_> = back.iter().collect();
    ok(f.pages(0, false, 2, 2048, &refs).unwrap(), 2, op::READ);
    let mut got = vec![0u8; 4096];
    for (i, b) in back.iter().enumerate() {
        b.read_at(0, &mut got).unwrap();
        assert_eq!(got, pattern(1000 + i as u32, 4096), "page {i} read back");
    }
    // Both went through a bounce buffer (256 segments, at least the
    // default 64).
    assert_eq!(r.back().stats().bounced, 2);
    // 257 segments is more than the backend offers.
    let segs: Vec<_> = back
        .iter()
        .chain(&bufs[..1])
        .map(|b| whole_page(b.gref()))
        .collect();
    let (req, _pages) = f.indirect(op::READ, 3, 0, &segs).unwrap();
    let rsp = f.io(0, &req).unwrap();
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (3, op::READ, status::ERROR)
    );
}

#[test]
fn a_multi_page_ring_holds_hundreds_in_flight() {
    let r = Rig::new("mpring");
    let mut f = r.front(FrontConfig {
        max_ring_page_order: 4,
        pool_pages: 400,
        ..FrontConfig::default()
    });
    assert_eq!(f.choice().unwrap().ring_page_order, 4);
    assert_eq!(f.queue(0).unwrap().ring.size(), 512);
    let mut bufs = Vec::new();
    for i in 0..400u64 {
        let mut b = f.buffer().unwrap();
        b.write_at(0, &(i.to_le_bytes().repeat(512))).unwrap();
        let req = rw_request(op::WRITE, i, i * 8, &[whole_page(b.gref())]);
        f.queue(0).unwrap().ring.put_request(req).unwrap();
        bufs.push(b);
    }
    let port = f.queue(0).unwrap().port;
    if f.queue(0).unwrap().ring.push_requests() {
        grant_tables::EventChannels::notify(f.platform(), port).unwrap();
    }
    let mut seen = vec![false; 400];
    for _ in 0..400 {
        let rsp = f.wait_response(0, TIMEOUT).unwrap();
        assert_eq!((rsp.operation, rsp.status), (op::WRITE, status::OKAY));
        assert!(
            !std::mem::replace(&mut seen[rsp.id as usize], true),
            "two responses for {}",
            rsp.id
        );
    }
    for i in [0u64, 199, 399] {
        assert_eq!(r.file_bytes(i * 4096, 4096), i.to_le_bytes().repeat(512));
    }
    // The 400 writes went to the kernel one per io_uring_enter
    // (`BlkbackConfig::submit_batch`), and came back as 400 completions.
    let a = r.back().stats().activity;
    assert_eq!((a.requests, a.sqes, a.cqes), (400, 400, 400), "{a:?}");
    assert!(a.submits >= a.sqes, "more than 1 entry per call: {a:?}");
    assert!(a.batches >= 1 && a.batches <= a.requests, "{a:?}");
    assert!(a.in_flight_sum >= a.submits, "{a:?}");
}

/// 300 writes pushed at once make one long pass of one-entry submissions:
/// with `stream_responses` the worker pushes the responses of those that
/// completed between two of the pass's submissions (counted as reaps
/// within a pass), without it only after the pass; every write comes back
/// once either way.
#[test]
fn responses_stream_out_between_the_submissions_of_a_pass() {
    for stream in [true, false] {
        let r = Rig::with(
            if stream { "stream" } else { "nostream" },
            16 << 20,
            &[],
            |c| c.stream_responses = stream,
        );
        let mut f = r.front(FrontConfig {
            max_ring_page_order: 4,
            pool_pages: 300,
            ..FrontConfig::default()
        });
        let port = f.queue(0).unwrap().port;
        let mut bufs = Vec::new();
        for i in 0..300u64 {
            let mut b = f.buffer().unwrap();
            b.write_at(0, &pattern(i as u32 + 7, 4096)).unwrap();
            let req = rw_request(op::WRITE, i, i * 8, &[whole_page(b.gref())]);
            f.queue(0).unwrap().ring.put_request(req).unwrap();
            bufs.push(b);
        }
        if f.queue(0).unwrap().ring.push_requests() {
            grant_tables::EventChannels::notify(f.platform(), port).unwrap();
        }
        let mut seen = vec![false; 300];
        for _ in 0..300 {
            let rsp = f.wait_response(0, TIMEOUT).unwrap();
            assert_eq!((rsp.operation, rsp.status), (op::WRITE, status::OKAY));
            assert!(
                !std::mem::replace(&mut seen[rsp.id as usize], true),
                "two responses for {}",
                rsp.id
            );
        }
        for i in [0u64, 150, 299] {
            assert_eq!(r.file_bytes(i * 4096, 4096), pattern(i as u32 + 7, 4096));
        }
        let a = r.back().stats().activity;
        assert_eq!((a.requests, a.cqes), (300, 300), "stream {stream}: {a:?}");
        if stream {
            assert!(
                a.mid_pass_reaps > 0 && a.mid_pass_reaps <= a.reaps,
                "no response pushed within the pass: {a:?}"
            );
        } else {
            assert_eq!(a.mid_pass_reaps, 0, "{a:?}");
        }
    }
}

/// 64 writes, then 64 reads of them, all in flight at once, through a
/// queue whose io_uring defers its completions (`defer_taskrun`, on
/// kernels that have it: the worker must ask for them, or they never
/// come) and through a plain one (never entered only to post
/// completions).
#[test]
fn deferred_and_plain_completions_all_come_back() {
    for defer in [true, false] {
        let r = Rig::with(
            if defer { "deferred" } else { "plain" },
            16 << 20,
            &[],
            |c| c.defer_taskrun = defer,
        );
        let mut f = r.front(FrontConfig {
            max_ring_page_order: 1,
            pool_pages: 128,
            ..FrontConfig::default()
        });
        let port = f.queue(0).unwrap().port;
        let mut bufs = Vec::new();
        for (pass, operation) in [(0u64, op::WRITE), (1, op::READ)] {
            for i in 0..64u64 {
                let mut b = f.buffer().unwrap();
                if operation == op::WRITE {
                    b.write_at(0, &pattern(i as u32 + 1, 4096)).unwrap();
                }
                let id = pass * 64 + i;
                let req = rw_request(operation, id, i * 8, &[whole_page(b.gref())]);
                f.queue(0).unwrap().ring.put_request(req).unwrap();
                bufs.push(b);
            }
            if f.queue(0).unwrap().ring.push_requests() {
                grant_tables::EventChannels::notify(f.platform(), port).unwrap();
            }
            let mut seen = [false; 64];
            for _ in 0..64 {
                let rsp = f.wait_response(0, TIMEOUT).unwrap();
                assert_eq!((rsp.operation, rsp.status), (operation, status::OKAY));
                let k = rsp.id.checked_sub(pass * 64).unwrap() as usize;
                assert!(
                    !std::mem::replace(&mut seen[k], true),
                    "two responses for {}",
                    rsp.id
                );
            }
        }
        for i in 0..64usize {
            let mut got = vec![0u8; 4096];
            bufs[64 + i].read_at(0, &mut got).unwrap();
            assert_eq!(got, pattern(i as u32 + 1, 4096), "defer {defer}: block {i}");
        }
        let a = r.back().stats().activity;
        assert_eq!((a.requests, a.cqes), (128, 128), "defer {defer}: {a:?}");
        if !defer {
            assert_eq!(a.taskruns, 0, "a plain ring has no deferred work: {a:?}");
        }
    }
}

#[test]
fn two_queues_each_with_its_ring_and_channel() {
    let r = Rig::new("mq");
    let mut f = r.front(FrontConfig {
        queues: 2,
        max_ring_page_order: 1,
        ..FrontConfig::default()
    });
    assert_eq!(f.queues(), 2);
    assert_eq!(r.back().stats().queues, 2);
    for q in 0..2usize {
        let mut b = f.buffer().unwrap();
        b.write_at(0, &pattern(q as u32, 4096)).unwrap();
        ok(
            f.pages(q, true, 10 + q as u64, q as u64 * 8, &[&b])
                .unwrap(),
            10 + q as u64,
            op::WRITE,
        );
    }
    // Each queue reads what the other wrote.
    for q in 0..2usize {
        let b = f.buffer().unwrap();
        let other = 1 - q;
        ok(
            f.pages(q, false, 20, other as u64 * 8, &[&b]).unwrap(),
            20,
            op::READ,
        );
        let mut got = vec![0u8; 4096];
        b.read_at(0, &mut got).unwrap();
        assert_eq!(got, pattern(other as u32, 4096));
    }
}

#[test]
fn flush_and_barrier() {
    let r = Rig::new("flush");
    let mut f = r.front(FrontConfig::default());
    ok(
        f.io(0, &rw_request(op::FLUSH_DISKCACHE, 1, 0, &[]))
            .unwrap(),
        1,
        op::FLUSH_DISKCACHE,
    );
    ok(
        f.io(0, &rw_request(op::WRITE_BARRIER, 2, 0, &[])).unwrap(),
        2,
        op::WRITE_BARRIER,
    );
    // A flush that carries data writes it after the flush.
    let mut b = f.buffer().unwrap();
    b.write_at(0, &pattern(3, 4096)).unwrap();
    ok(
        f.io(
            0,
            &rw_request(op::FLUSH_DISKCACHE, 3, 16, &[whole_page(b.gref())]),
        )
        .unwrap(),
        3,
        op::FLUSH_DISKCACHE,
    );
    assert_eq!(r.file_bytes(16 * 512, 4096), pattern(3, 4096));
    // A barrier behind writes in flight waits for them.
    let mut bufs = Vec::new();
    for i in 0..8u64 {
        let mut b = f.buffer().unwrap();
        b.write_at(0, &pattern(40 + i as u32, 4096)).unwrap();
        f.queue(0)
            .unwrap()
            .ring
            .put_request(rw_request(
                op::WRITE,
                100 + i,
                64 + i * 8,
                &[whole_page(b.gref())],
            ))
            .unwrap();
        bufs.push(b);
    }
    f.put(0, &rw_request(op::WRITE_BARRIER, 200, 0, &[]))
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..9 {
        let rsp = f.wait_response(0, TIMEOUT).unwrap();
        assert_eq!(rsp.status, status::OKAY);
        ids.push(rsp.id);
    }
    assert_eq!(
        ids.last(),
        Some(&200),
        "the barrier completes after the writes before it: {ids:?}"
    );
    assert_eq!(r.back().stats().flushes, 4);
}

#[test]
fn flush_on_a_disk_without_a_cache_is_not_supported() {
    let mut r = Rig::with("noflush", 1 << 20, &[], |c| c.flush = false);
    let mut f = r.front(FrontConfig::default());
    assert_eq!(r.backend_key("feature-flush-cache").as_deref(), Some("0"));
    assert_eq!(r.backend_key("feature-barrier").as_deref(), Some("0"));
    let rsp = f
        .io(0, &rw_request(op::FLUSH_DISKCACHE, 4, 0, &[]))
        .unwrap();
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (4, op::FLUSH_DISKCACHE, status::EOPNOTSUPP)
    );
}

#[test]
fn discard_punches_a_hole_that_reads_as_zeroes() {
    let r = Rig::with("discard", 4 << 20, &[], |_| {});
    let mut f = r.front(FrontConfig::default());
    let granularity = f.disk().unwrap().discard.unwrap().granularity;
    assert!(granularity >= 512);
    r.write_file(0, &pattern(7, 1 << 20));
    let before = std::fs::metadata(&r.disk).unwrap().blocks();
    ok(
        f.io(0, &discard_request(5, 256, 1024, false)).unwrap(),
        5,
        op::DISCARD,
    );
    assert_eq!(
        r.file_bytes(256 * 512, 512 * 1024),
        vec![0; 512 * 1024],
        "the discarded range reads as zeroes"
    );
    assert_eq!(
        r.file_bytes(255 * 512, 512),
        pattern(7, 1 << 20)[255 * 512..256 * 512],
        "before it is kept"
    );
    assert_eq!(
        r.file_bytes(1280 * 512, 512),
        pattern(7, 1 << 20)[1280 * 512..1281 * 512],
        "after it is kept"
    );
    let after = std::fs::metadata(&r.disk).unwrap().blocks();
    assert!(
        after + 1024 <= before,
        "no hole punched: {before} then {after} blocks"
    );
    assert_eq!(
        std::fs::metadata(&r.disk).unwrap().len(),
        4 << 20,
        "the size is kept"
    );
    // A secure discard is a plain one here; the disk range is checked.
    ok(
        f.io(0, &discard_request(6, 0, 8, true)).unwrap(),
        6,
        op::DISCARD,
    );
    let rsp = f.io(0, &discard_request(7, 8190, 16, false)).unwrap();
    assert_eq!((rsp.id, rsp.status), (7, status::ERROR));
    assert_eq!(r.back().stats().discards, 2);
}

#[test]
fn discard_disabled_by_the_toolstack() {
    let mut r = Rig::with("nodiscard", 1 << 20, &[("discard-enable", "0")], |_| {});
    let mut f = r.front(FrontConfig::default());
    assert_eq!(r.backend_key("feature-discard").as_deref(), Some("0"));
    assert!(f.disk().unwrap().discard.is_none());
    let rsp = f.io(0, &discard_request(1, 0, 8, false)).unwrap();
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (1, op::DISCARD, status::EOPNOTSUPP)
    );
}

#[test]
fn a_read_only_disk_refuses_writes_flushes_and_discards() {
    for (tag, nodes, cfg_ro) in [
        ("ro-cfg", vec![], true),
        ("ro-mode", vec![("mode", "r")], false),
    ] {
        let r = Rig::with(tag, 1 << 20, &nodes, |c| c.read_only = cfg_ro);
        r.write_file(0, &pattern(1, 4096));
        let mut f = r.front(FrontConfig::default());
        assert!(f.disk().unwrap().info.contains(DiskInfo::READONLY), "{tag}");
        let b = f.buffer().unwrap();
        ok(f.pages(0, false, 1, 0, &[&b]).unwrap(), 1, op::READ);
        let rsp = f.pages(0, true, 2, 0, &[&b]).unwrap();
        assert_eq!(
            (rsp.id, rsp.operation, rsp.status),
            (2, op::WRITE, status::ERROR),
            "{tag}"
        );
        let rsp = f
            .io(0, &rw_request(op::FLUSH_DISKCACHE, 3, 0, &[]))
            .unwrap();
        assert_eq!(rsp.status, status::ERROR, "{tag}");
        let rsp = f.io(0, &discard_request(4, 0, 8, false)).unwrap();
        assert_eq!(rsp.status, status::ERROR, "{tag}");
        assert_eq!(
            r.file_bytes(0, 4096),
            pattern(1, 4096),
            "{tag}: the disk is unchanged"
        );
        assert_eq!(
            r.back().stats().rejected.get(&RejectReason::ReadOnly),
            Some(&3),
            "{tag}"
        );
    }
}

#[test]
fn without_persistent_grants_pages_are_mapped_per_request() {
    let r = Rig::new("nopersist");
    let mut f = r.front(FrontConfig {
        persistent: false,
        ..FrontConfig::default()
    });
    assert!(!r.back().stats().persistent);
    let mut b = f.buffer().unwrap();
    b.write_at(0, &pattern(3, 4096)).unwrap();
    for i in 0..4 {
        ok(f.pages(0, true, i, 0, &[&b]).unwrap(), i, op::WRITE);
        // Unmapped by the time the response is seen.
        assert_eq!(r.back_plat.pin_counts(common::FE, b.gref()), (0, 0));
    }
    let s = r.back().stats();
    assert_eq!(s.persistent_grants, 0);
    assert_eq!(s.grant_maps, 4);
    assert_eq!(r.file_bytes(0, 4096), pattern(3, 4096));
    let _ = BE;
}

#[test]
fn polling_mode_serves_without_notifications() {
    let r = Rig::with("poll", 1 << 20, &[], |c| c.wait = WaitMode::Poll);
    let mut f = r.front(FrontConfig {
        event: false,
        ..FrontConfig::default()
    });
    let mut b = f.buffer().unwrap();
    for i in 0..200u64 {
        b.write_at(0, &i.to_le_bytes()).unwrap();
        ok(
            f.pages(0, true, i, (i % 64) * 8, &[&b]).unwrap(),
            i,
            op::WRITE,
        );
    }
    assert_eq!(&r.file_bytes(63 * 4096, 8)[..], &191u64.to_le_bytes());
    let _ = Duration::ZERO;
}

/// Spin mode with a trace: every read and write records its steps in
/// order, each after the one before; a worker that spins long enough
/// catches the next request and the completions without sleeping; the
/// worker thread is pinned where `pin_cpu` says.
#[test]
fn spin_mode_traces_each_request_and_pins_its_worker() {
    use std::sync::Arc;
    use std::time::Instant;
    let trace = Arc::new(hosted::blkback::StepTrace::new(Instant::now(), 1000));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = trace.clone();
    let r = Rig::with("spin", 1 << 20, &[], move |c| {
        c.wait = WaitMode::Spin {
            spin: Duration::from_millis(50),
        };
        c.pin_cpu = Some(1);
        c.trace = Some(t);
    });
    let mut f = r.front(FrontConfig {
        event: false,
        ..FrontConfig::default()
    });
    let mut b = f.buffer().unwrap();
    let n = 100u64;
    for i in 0..n {
        b.write_at(0, &i.to_le_bytes()).unwrap();
        let write = i % 2 == 0;
        let operation = if write { op::WRITE } else { op::READ };
        ok(
            f.pages(0, write, i, (i % 64) * 8, &[&b]).unwrap(),
            i,
            operation,
        );
    }
    let steps = trace.take();
    assert_eq!(steps.len(), n as usize, "one record per request");
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s.id, i as u64);
        assert!(s.taken_ns > 0, "{s:?}");
        assert!(s.taken_ns <= s.submitted_ns, "{s:?}");
        assert!(s.submitted_ns <= s.reaped_ns, "{s:?}");
        assert!(s.reaped_ns <= s.pushed_ns, "{s:?}");
        assert!(s.woke_ns == 0 || s.woke_ns <= s.taken_ns, "{s:?}");
    }
    // A 50 ms spin covers the gap between a response and the next request
    // (a thread kept off its core that long on a busy machine excepted).
    let slept = steps.iter().skip(1).filter(|s| s.woke_ns != 0).count();
    assert!(
        slept <= n as usize / 4,
        "{slept} of {n} requests found the worker asleep"
    );
    assert!(trace.take().is_empty(), "take empties the trace");
    // The worker is pinned to core 1 (of the online cores, modulo). Other
    // tests of this process run queue workers of their own, unpinned: one
    // of the threads of that name has exactly that core.
    let want = (1 % cores).to_string();
    let pinned = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|c| c.trim() == "blkback-q0")
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .any(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .is_some_and(|v| v.trim() == want)
        });
    assert!(pinned, "no blkback-q0 thread is pinned to core {want}");
}

/// With `uring_wakeups`, an idle queue sleeps in its io_uring, which polls
/// the event channel's eventfd: a request pushed while it sleeps wakes it
/// through the notification (the frontend's eventfd write, which the
/// io_uring's poll delivers), not at the end of the sleep's 10 ms timeout,
/// and its data lands.
#[test]
fn an_idle_queue_sleeping_in_its_io_uring_wakes_on_a_notification() {
    let r = Rig::with("uwake", 16 << 20, &[], |c| {
        c.uring_wakeups = true;
        c.wait = WaitMode::Event {
            spin: Duration::ZERO,
        };
    });
    let mut f = r.front(FrontConfig::default());
    let port = f.queue(0).unwrap().port;
    let sent = f.platform().event_stats().wakeups_sent;
    let before = r.back().stats().activity;
    let rounds = 20u64;
    for i in 0..rounds {
        // The worker (no spin) is asleep well before this.
        std::thread::sleep(Duration::from_millis(15));
        let mut b = f.buffer().unwrap();
        b.write_at(0, &pattern(i as u32 + 7, 4096)).unwrap();
        let req = rw_request(op::WRITE, i, i * 8, &[whole_page(b.gref())]);
        f.queue(0).unwrap().ring.put_request(req).unwrap();
        if f.queue(0).unwrap().ring.push_requests() {
            grant_tables::EventChannels::notify(f.platform(), port).unwrap();
        }
        ok(f.wait_response(0, TIMEOUT).unwrap(), i, op::WRITE);
        assert_eq!(r.file_bytes(i * 4096, 4096), pattern(i as u32 + 7, 4096));
    }
    let a = r.back().stats().activity;
    let woken = f.platform().event_stats().wakeups_sent - sent;
    assert!(
        woken >= rounds / 2,
        "{woken} wakeups for {rounds} requests: {a:?}"
    );
    assert!(a.ring_sleeps - before.ring_sleeps >= rounds / 2, "{a:?}");
    // Each request found the worker asleep in its io_uring (no spin, 15 ms
    // of quiet): the poll of the event channel, not the timeout, ended the
    // sleep that the request's notification interrupted.
    let notified = a.uring_notified - before.uring_notified;
    assert!(
        notified >= rounds / 2,
        "the io_uring's poll delivered {notified} notifications for {rounds} requests sent to a sleeping queue: the notifications did not wake it ({a:?})"
    );
}
