//! The application's I/O scheduler decides the order on the ring: a
//! real-time request overtakes queued background requests under APEX,
//! and waits its turn under the default FIFO.

mod common;

use blkfront::IoOptions;
use common::backend::BackConfig;
use common::*;
use grant_tables::Clock;
use iosched::{new_scheduler, PolicyKind, QueueConfig, Reservation, SchedConfig};

/// Submits 100 background writes (32 go on the one-page ring at once, 68
/// wait), then one real-time write, and returns where the real-time write
/// came in the order the backend served the writes, and the scheduler's
/// count of completed real-time requests.
fn rt_position(apex: bool) -> (usize, u64) {
    let w = World::new(4096);
    let mut xs = w.front_xs();
    let mut cfg = w.config();
    cfg.pool_pages = 128;
    cfg.mode = blkfront::Mode::Polling;
    let mut dev = w.device(cfg);
    let mut back = Some(w.backend(BackConfig {
        sectors: 4096,
        max_ring_page_order: Some(0),
        ..BackConfig::default()
    }));
    connect(&mut dev, &mut xs, &mut back);
    let now = w.front.now_ns();
    let mut rt_class = None;
    if apex {
        let mut s = new_scheduler(PolicyKind::Apex, SchedConfig::default());
        let rt = s
            .create_queue(
                QueueConfig::real_time(20_000_000, Reservation::share_permille(100, 2_000_000)),
                now,
            )
            .unwrap();
        let bg = s.create_queue(QueueConfig::background(), now).unwrap();
        assert!(dev.set_scheduler(0, s, bg).is_ok());
        rt_class = Some(rt);
    }
    for k in 0..100u64 {
        let spans = pool_spans(&dev, 0, 1, k * 8, 1);
        dev.write(0, k * 8, spans).unwrap();
    }
    // The ring takes 32; the backend has not looked yet.
    dev.process().unwrap();
    assert_eq!(dev.waiting(0), 68);
    let spans = pool_spans(&dev, 0, 1, 2000, 2);
    let mut opts = IoOptions::queue(0);
    if let Some(rt) = rt_class {
        opts = opts.class(rt).deadline(w.front.now_ns() + 20_000_000);
    }
    let rt_tag = dev
        .submit(
            blkfront::Io::Write {
                sector: 2000,
                spans,
            },
            opts,
        )
        .unwrap();
    let mut done = 0;
    let mut rt_ok = false;
    drive(&mut dev, &mut xs, &mut back, |d, _| {
        while let Some(c) = d.next_completion() {
            assert_eq!(c.result, Ok(()));
            rt_ok |= c.tag == rt_tag;
            done += 1;
        }
        done == 101
    });
    assert!(rt_ok);
    let writes = back
        .as_ref()
        .unwrap()
        .dev
        .log
        .lock()
        .unwrap()
        .writes
        .clone();
    assert_eq!(writes.len(), 101);
    let pos = writes.iter().position(|w| w.0 == 2000).unwrap();
    let rt_done = rt_class
        .map(|q| dev.scheduler(0).unwrap().queue(q).unwrap().stats.completed)
        .unwrap_or(0);
    (pos, rt_done)
}

#[test]
fn a_real_time_request_overtakes_queued_background_requests() {
    let (pos, rt_done) = rt_position(true);
    // The 32 already on the ring go first; the real-time write leads the
    // next batch, ahead of the 68 background writes still queued.
    assert_eq!(pos, 32);
    assert_eq!(rt_done, 1);
}

#[test]
fn without_a_scheduler_requests_go_in_submission_order() {
    let (pos, _) = rt_position(false);
    assert_eq!(pos, 100);
}

#[test]
fn a_scheduler_is_only_swapped_on_an_idle_queue() {
    let w = World::new(1024);
    let mut xs = w.front_xs();
    let mut dev = w.device(w.config());
    let mut back = Some(w.backend(BackConfig {
        sectors: 1024,
        ..BackConfig::default()
    }));
    connect(&mut dev, &mut xs, &mut back);
    let tag = dev.flush(0).unwrap();
    let s = new_scheduler(PolicyKind::Deadline, SchedConfig::default());
    assert!(dev.set_scheduler(0, s, iosched::QueueId(0)).is_err());
    let mut done = false;
    drive(&mut dev, &mut xs, &mut back, |d, _| {
        done |= d.next_completion().is_some_and(|c| c.tag == tag);
        done
    });
    let mut s = new_scheduler(PolicyKind::Deadline, SchedConfig::default());
    let q = s.create_queue(QueueConfig::interactive(), 0).unwrap();
    assert!(dev.set_scheduler(0, s, q).is_ok());
    assert_eq!(dev.scheduler(0).unwrap().policy_name(), "deadline");
    // An unknown scheduler queue is refused, with the I/O handed back.
    let r = dev
        .submit(
            blkfront::Io::Flush,
            IoOptions::queue(0).class(iosched::QueueId(77)),
        )
        .unwrap_err();
    assert!(matches!(
        r.error,
        blkfront::Refusal::Scheduler(iosched::Error::UnknownQueue(_))
    ));
}
