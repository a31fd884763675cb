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

/// A scheduler that notes when each of its batches went out (the platform's
/// clock) and how many requests it took.
struct Noted {
    inner: Box<dyn iosched::Scheduler + Send>,
    batches: std::sync::Arc<std::sync::Mutex<Vec<(u64, usize)>>>,
}

impl iosched::Scheduler for Noted {
    fn policy_name(&self) -> &'static str {
        self.inner.policy_name()
    }
    fn create_queue(
        &mut self,
        config: QueueConfig,
        now: iosched::Nanos,
    ) -> Result<iosched::QueueId, iosched::Error> {
        self.inner.create_queue(config, now)
    }
    fn change_queue(
        &mut self,
        queue: iosched::QueueId,
        config: QueueConfig,
        now: iosched::Nanos,
    ) -> Result<(), iosched::Error> {
        self.inner.change_queue(queue, config, now)
    }
    fn remove_queue(
        &mut self,
        queue: iosched::QueueId,
        now: iosched::Nanos,
    ) -> Result<iosched::Removal, iosched::Error> {
        self.inner.remove_queue(queue, now)
    }
    fn submit(
        &mut self,
        request: iosched::Request,
        now: iosched::Nanos,
    ) -> Result<(), iosched::SubmitError> {
        self.inner.submit(request, now)
    }
    fn build_batch_into(&mut self, now: iosched::Nanos, room: usize, out: &mut Vec<u64>) -> usize {
        let n = self.inner.build_batch_into(now, room, out);
        if n > 0 {
            self.batches.lock().unwrap().push((now, n));
        }
        n
    }
    fn complete(
        &mut self,
        tag: u64,
        now: iosched::Nanos,
    ) -> Result<iosched::Completion, iosched::Error> {
        self.inner.complete(tag, now)
    }
    fn cancel(
        &mut self,
        tag: u64,
        now: iosched::Nanos,
    ) -> Result<iosched::QueueId, iosched::Error> {
        self.inner.cancel(tag, now)
    }
    fn pending(&self) -> usize {
        self.inner.pending()
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn queue(&self, queue: iosched::QueueId) -> Option<iosched::QueueView<'_>> {
        self.inner.queue(queue)
    }
    fn queue_ids(&self) -> Vec<iosched::QueueId> {
        self.inner.queue_ids()
    }
    fn cost_model(&self) -> &iosched::CostModel {
        self.inner.cost_model()
    }
    fn next_wakeup(&self) -> Option<iosched::Nanos> {
        self.inner.next_wakeup()
    }
}

/// APEX in isolation mode holds a background write back while an
/// interactive queue is active, with nothing in flight; the driver's
/// blocking wait honours the wake-up the scheduler gives and puts the
/// write on the ring at its hold deadline, not at the end of one of its
/// 5 ms sleeps. On a fake clock that a thread moves on in 50 us steps, so
/// that the times are exact: the wait starts with the hold, so its sleeps
/// alone would end at 5, 10 and 15 ms, and the 11 ms deadline would be
/// served at 15.
#[test]
fn a_held_background_write_goes_at_its_hold_deadline_during_a_wait() {
    const HOLD_NS: u64 = 11_000_000;
    const STEP_NS: u64 = 50_000;
    let w = World::with_fake_clock(4096);
    let clock = w.clock.clone().unwrap();
    let mut xs = w.front_xs();
    let mut cfg = w.config();
    cfg.pool_pages = 16;
    cfg.mode = blkfront::Mode::Events;
    let mut dev = w.device(cfg);
    let mut back = Some(w.backend(BackConfig {
        sectors: 4096,
        ..BackConfig::default()
    }));
    connect(&mut dev, &mut xs, &mut back);
    let now = w.front.now_ns();
    let params = iosched::ApexParams {
        isolation: true,
        isolation_window_ns: 10_000_000_000,
        isolation_max_hold_ns: HOLD_NS,
        ..iosched::ApexParams::default()
    };
    let mut s = iosched::Apex::new(SchedConfig::default(), iosched::ApexPolicy::new(params));
    let ia = iosched::Scheduler::create_queue(&mut s, QueueConfig::interactive(), now).unwrap();
    let bg = iosched::Scheduler::create_queue(&mut s, QueueConfig::background(), now).unwrap();
    let batches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = Noted {
        inner: Box::new(s),
        batches: batches.clone(),
    };
    assert!(dev.set_scheduler(0, Box::new(noted), bg).is_ok());
    // The interactive queue is active: one write through it.
    let spans = pool_spans(&dev, 0, 1, 8, 1);
    let tag = dev
        .submit(
            blkfront::Io::Write { sector: 8, spans },
            IoOptions::queue(0).class(ia),
        )
        .unwrap();
    drive(&mut dev, &mut xs, &mut back, |d, _| {
        d.next_completion().is_some_and(|c| c.tag == tag)
    });
    // A background write: held, with nothing in flight.
    let spans = pool_spans(&dev, 0, 1, 16, 2);
    let t0 = w.front.now_ns();
    dev.write(0, 16, spans).unwrap();
    dev.process().unwrap();
    assert_eq!(
        dev.waiting(0),
        1,
        "isolation mode holds the background write"
    );
    let wake = dev
        .scheduler(0)
        .unwrap()
        .next_wakeup()
        .expect("a wake-up time");
    assert_eq!(wake, t0 + HOLD_NS);
    let before = batches.lock().unwrap().len();
    // Time moves on while the driver waits; no backend runs, so the wait
    // ends by its timeout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (clock, stop) = (clock.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                clock.advance(STEP_NS);
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        })
    };
    let waited = dev.wait_io(Some(std::time::Duration::from_millis(20)));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    ticker.join().unwrap();
    assert!(!waited.unwrap());
    assert_eq!(dev.waiting(0), 0, "the held write went on the ring");
    let b = batches.lock().unwrap().clone();
    assert_eq!(b.len(), before + 1);
    let (at, n) = b[before];
    assert_eq!(n, 1);
    assert!(at >= wake, "went at {at}, before its wake-up {wake}");
    // At its wake-up (give or take a few steps of the clock), not at the
    // end of the 5 ms sleep that covers it.
    assert!(
        at < wake + 20 * STEP_NS,
        "went {} us after its wake-up",
        (at - wake) / 1000
    );
    // And it completes.
    drive(&mut dev, &mut xs, &mut back, |d, _| {
        d.next_completion().is_some()
    });
}
