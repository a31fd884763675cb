//! The blocking API with the backend in another thread: the device sleeps
//! on its event channels (block_any) and wakes on the backend's
//! notifications; waits end on the platform's clock.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use blkfront::{BlockingError, Mode};
use common::backend::{BackConfig, BackInstance};
use common::*;

struct Runner {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<BackInstance>>,
}

impl Runner {
    fn start(mut back: BackInstance) -> Runner {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let (s, p) = (stop.clone(), pause.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                if !p.load(Ordering::Acquire) {
                    back.poll();
                }
                thread::sleep(Duration::from_micros(200));
            }
            back
        });
        Runner {
            stop,
            pause,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> BackInstance {
        self.stop.store(true, Ordering::Release);
        self.handle.take().unwrap().join().unwrap()
    }
}

fn blocking_round_trip(mode: Mode) {
    let w = World::new(4096);
    let mut xs = w.front_xs();
    let mut cfg = w.config();
    cfg.mode = mode;
    let mut dev = w.device(cfg);
    let runner = Runner::start(w.backend(BackConfig {
        sectors: 4096,
        ..BackConfig::default()
    }));
    let disk = dev
        .wait_connected(&mut xs, Some(Duration::from_secs(10)))
        .unwrap()
        .expect("connected");
    assert_eq!(disk.sectors, 4096);
    for round in 0..20u64 {
        let sector = round * 64;
        let spans = pool_spans(&dev, 0, 8, sector, round as u8);
        let data = span_bytes(&spans);
        let spans = dev
            .write_blocking(&mut xs, 0, sector, spans, Some(Duration::from_secs(10)))
            .unwrap();
        drop(spans);
        let back = dev
            .read_blocking(
                &mut xs,
                0,
                sector,
                empty_spans(&dev, 0, 8),
                Some(Duration::from_secs(10)),
            )
            .unwrap();
        assert!(span_bytes(&back) == data, "round {round}");
    }
    dev.flush_blocking(&mut xs, 0, Some(Duration::from_secs(10)))
        .unwrap();

    // The backend pauses: a bounded wait runs out on the clock, the I/O
    // stays in flight and completes once the backend is back.
    runner.pause.store(true, Ordering::Release);
    thread::sleep(Duration::from_millis(5));
    let spans = pool_spans(&dev, 0, 1, 0, 9);
    let tag = dev.write(0, 0, spans).unwrap();
    let t0 = Instant::now();
    let r = dev.wait_for(&mut xs, tag, Some(Duration::from_millis(50)));
    assert!(
        matches!(r, Err(BlockingError::TimedOut { tag: t }) if t == tag),
        "{r:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert!(t0.elapsed() < Duration::from_secs(5));
    runner.pause.store(false, Ordering::Release);
    let c = dev
        .wait_for(&mut xs, tag, Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(c.result, Ok(()));
    let r = dev.wait_for(&mut xs, tag, Some(Duration::from_millis(1)));
    assert!(matches!(r, Err(BlockingError::NoSuchIo { .. })));
    let stats = dev.stats();
    assert!(
        stats.notifications <= stats.requests,
        "a notification only when the backend asks: {stats:?}"
    );
    let _ = runner.finish();
}

#[test]
fn blocking_reads_and_writes_in_event_mode() {
    blocking_round_trip(Mode::Events);
}

#[test]
fn blocking_reads_and_writes_in_polling_mode() {
    blocking_round_trip(Mode::Polling);
}

#[test]
fn blocking_reads_and_writes_in_adaptive_mode() {
    blocking_round_trip(Mode::Adaptive { spin_ns: 100_000 });
}

/// `wait_io` (no xenstore) with the backend in another thread, in every
/// mode: I/Os complete, data round-trips, a paused backend runs the wait
/// out on the clock.
#[test]
fn wait_io_in_every_mode() {
    for mode in [
        Mode::Polling,
        Mode::Events,
        Mode::Adaptive { spin_ns: 50_000 },
    ] {
        let w = World::new(1024);
        let mut xs = w.front_xs();
        let mut cfg = w.config();
        cfg.mode = mode;
        let mut dev = w.device(cfg);
        let runner = Runner::start(w.backend(BackConfig {
            sectors: 1024,
            ..BackConfig::default()
        }));
        dev.wait_connected(&mut xs, Some(Duration::from_secs(10)))
            .unwrap()
            .unwrap();
        // Nothing pending: at once.
        let t0 = Instant::now();
        assert!(!dev.wait_io(Some(Duration::from_secs(10))).unwrap());
        assert!(t0.elapsed() < Duration::from_secs(5), "{mode:?}");
        for round in 0..10u64 {
            let sector = round * 16;
            let spans = pool_spans(&dev, 0, 8, sector, round as u8 + 1);
            let data = span_bytes(&spans);
            let tag = dev.write(0, sector, spans).unwrap();
            assert!(dev.wait_io(Some(Duration::from_secs(10))).unwrap());
            let c = dev.next_completion().unwrap();
            assert_eq!((c.tag, c.result), (tag, Ok(())), "{mode:?}");
            let tag = dev.read(0, sector, empty_spans(&dev, 0, 8)).unwrap();
            assert!(dev.wait_io(Some(Duration::from_secs(10))).unwrap());
            let c = dev.next_completion().unwrap();
            assert_eq!((c.tag, &c.result), (tag, &Ok(())), "{mode:?}");
            assert!(span_bytes(c.io.spans()) == data, "{mode:?} round {round}");
        }
        runner.pause.store(true, Ordering::Release);
        thread::sleep(Duration::from_millis(5));
        let tag = dev.write(0, 0, pool_spans(&dev, 0, 1, 0, 7)).unwrap();
        let t0 = Instant::now();
        assert!(!dev.wait_io(Some(Duration::from_millis(30))).unwrap());
        assert!(t0.elapsed() >= Duration::from_millis(30), "{mode:?}");
        assert!(dev.next_completion().is_none());
        runner.pause.store(false, Ordering::Release);
        assert!(dev.wait_io(Some(Duration::from_secs(10))).unwrap());
        let c = dev.next_completion().unwrap();
        assert_eq!((c.tag, c.result), (tag, Ok(())), "{mode:?}");
        let _ = runner.finish();
    }
}

#[test]
fn wait_returns_when_a_completion_is_queued() {
    let w = World::new(1024);
    let mut xs = w.front_xs();
    let mut dev = w.device(w.config());
    let runner = Runner::start(w.backend(BackConfig {
        sectors: 1024,
        ..BackConfig::default()
    }));
    dev.wait_connected(&mut xs, Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    while dev.next_event().is_some() {}
    let tag = dev.read(0, 0, empty_spans(&dev, 0, 2)).unwrap();
    assert!(dev.wait(&mut xs, Some(Duration::from_secs(10))).unwrap());
    let c = dev.next_completion().unwrap();
    assert_eq!(c.tag, tag);
    // Nothing pending: the wait runs out.
    assert!(!dev.wait(&mut xs, Some(Duration::from_millis(20))).unwrap());
    let _ = runner.finish();
}
