//! The fake platform's event channels and clocks: `block_any` and `Clock`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::{FakeClock, FakeEventHub, FakeGrantFrames, FakePlatform, HostClock};
use crate::platform::{Clock, DomId, EventChannels, PlatformError, Port};

const A: DomId = DomId(1);
const B: DomId = DomId(2);
const SECOND: u64 = 1_000_000_000;

fn domain(id: DomId, hub: &Arc<FakeEventHub>) -> FakePlatform {
    FakePlatform::new(id, hub.clone(), FakeGrantFrames::with_entries(4).unwrap())
}

/// `n` channels from A to B: (A's ports, B's ports), nothing pending.
fn channels(a: &FakePlatform, b: &FakePlatform, n: usize) -> (Vec<Port>, Vec<Port>) {
    let mut pa = Vec::new();
    let mut pb = Vec::new();
    for _ in 0..n {
        let p = a.alloc_unbound(B).unwrap();
        pb.push(b.bind_interdomain(A, p).unwrap());
        pa.push(p);
    }
    (pa, pb)
}

/// Waits (bounded, real time) until `flag` is set.
fn until(flag: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !flag.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the other thread did not get there within 30 s"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn block_any_wakes_for_each_of_several_ports() {
    let hub = FakeEventHub::new();
    let a = Arc::new(domain(A, &hub));
    let b = domain(B, &hub);
    let (pa, pb) = channels(&a, &b, 4);
    for (i, &expected) in pb.iter().enumerate() {
        let ready = Arc::new(AtomicBool::new(false));
        let (a2, r2, p) = (a.clone(), ready.clone(), pa[i]);
        let notifier = thread::spawn(move || {
            until(&r2);
            // Give the waiter time to get to sleep.
            thread::sleep(Duration::from_millis(5));
            a2.notify(p).unwrap();
        });
        ready.store(true, Ordering::SeqCst);
        let t = Instant::now();
        assert_eq!(b.block_any(&pb, Some(30 * SECOND)).unwrap(), Some(expected));
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "woken by the notify, not the timeout"
        );
        notifier.join().unwrap();
    }
    // Nothing left pending.
    assert_eq!(b.block_any(&pb, Some(0)).unwrap(), None);
}

#[test]
fn the_first_pending_port_is_returned_and_the_others_stay_pending() {
    let hub = FakeEventHub::new();
    let (a, b) = (domain(A, &hub), domain(B, &hub));
    let (pa, pb) = channels(&a, &b, 3);
    a.notify(pa[2]).unwrap();
    a.notify(pa[0]).unwrap();
    assert_eq!(b.block_any(&pb, None).unwrap(), Some(pb[0]));
    assert_eq!(b.block_any(&pb, None).unwrap(), Some(pb[2]));
    assert_eq!(b.block_any(&pb, Some(0)).unwrap(), None);
    // The slice's order decides, not the port numbers.
    a.notify(pa[0]).unwrap();
    a.notify(pa[1]).unwrap();
    assert_eq!(b.block_any(&[pb[1], pb[0]], Some(0)).unwrap(), Some(pb[1]));
    assert!(b.poll(pb[0]).unwrap());
}

#[test]
fn block_any_returns_masked_pending_ports() {
    let hub = FakeEventHub::new();
    let a = Arc::new(domain(A, &hub));
    let b = domain(B, &hub);
    let (pa, pb) = channels(&a, &b, 2);
    for &p in &pb {
        b.mask(p).unwrap();
    }
    a.notify(pa[1]).unwrap();
    assert_eq!(
        b.block_any(&pb, Some(0)).unwrap(),
        Some(pb[1]),
        "pending while masked"
    );
    // And a notify wakes a waiter blocked on masked ports.
    let (a2, p) = (a.clone(), pa[0]);
    let notifier = thread::spawn(move || {
        thread::sleep(Duration::from_millis(5));
        a2.notify(p).unwrap();
    });
    assert_eq!(b.block_any(&pb, Some(30 * SECOND)).unwrap(), Some(pb[0]));
    notifier.join().unwrap();
}

#[test]
fn block_any_times_out_on_the_host_clock() {
    let hub = FakeEventHub::new();
    let (a, b) = (domain(A, &hub), domain(B, &hub));
    let (_pa, pb) = channels(&a, &b, 2);
    let t = Instant::now();
    assert_eq!(b.block_any(&pb, Some(20_000_000)).unwrap(), None);
    assert!(
        t.elapsed() >= Duration::from_millis(20),
        "returned early: {:?}",
        t.elapsed()
    );
    assert!(!b.block(pb[0], Some(1_000)).unwrap());
}

#[test]
fn block_any_times_out_only_when_the_fake_clock_passes_the_deadline() {
    let clock = FakeClock::starting_at(1_000);
    let hub = FakeEventHub::with_clock(&clock);
    let a = domain(A, &hub);
    let b = Arc::new(domain(B, &hub));
    let (_pa, pb) = channels(&a, &b, 2);
    assert_eq!(b.now_ns(), 1_000);
    // A zero timeout does not wait.
    assert_eq!(b.block_any(&pb, Some(0)).unwrap(), None);

    let done = Arc::new(AtomicBool::new(false));
    let (b2, d2, ports) = (b.clone(), done.clone(), pb.clone());
    let waiter = thread::spawn(move || {
        let r = b2.block_any(&ports, Some(500)).unwrap();
        d2.store(true, Ordering::SeqCst);
        (r, b2.now_ns())
    });
    // Once it waits (its deadline read: 1_500), real time passing does
    // not end the wait, nor does an advance short of the deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    while hub.waiters() == 0 {
        assert!(Instant::now() < deadline, "the waiter did not block within 30 s");
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(30));
    assert!(
        !done.load(Ordering::SeqCst),
        "timed out without the clock moving"
    );
    clock.advance(499);
    thread::sleep(Duration::from_millis(30));
    assert!(
        !done.load(Ordering::SeqCst),
        "timed out before the deadline"
    );
    clock.advance(1);
    let (r, at) = waiter.join().unwrap();
    assert_eq!(r, None);
    assert_eq!(at, 1_500);
}

#[test]
fn a_notify_racing_with_the_sleep_is_never_lost() {
    // Ping-pong between two threads that always block: a lost wakeup would
    // stall a round until its (long) timeout.
    let rounds = if cfg!(miri) { 30 } else { 5_000 };
    let hub = FakeEventHub::new();
    let a = Arc::new(domain(A, &hub));
    let b = Arc::new(domain(B, &hub));
    let (pa, pb) = channels(&a, &b, 3);
    let (b2, pb2) = (b.clone(), pb.clone());
    let t = Instant::now();
    let echo = thread::spawn(move || {
        for i in 0..rounds {
            let got = b2.block_any(&pb2, Some(60 * SECOND)).unwrap();
            assert_eq!(got, Some(pb2[i % 3]), "round {i}");
            b2.notify(pb2[(i + 1) % 3]).unwrap();
        }
    });
    for i in 0..rounds {
        a.notify(pa[i % 3]).unwrap();
        assert_eq!(
            a.block_any(&pa, Some(60 * SECOND)).unwrap(),
            Some(pa[(i + 1) % 3]),
            "round {i}"
        );
    }
    echo.join().unwrap();
    // A lost wakeup ends its round with `None` after the whole timeout,
    // failing the round's check above. Natively the whole run is quick too
    // (an interpreter on a loaded machine can take a minute for 30 rounds).
    if !cfg!(miri) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{rounds} rounds took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn bad_ports_are_errors() {
    let hub = FakeEventHub::new();
    let a = Arc::new(domain(A, &hub));
    let b = domain(B, &hub);
    let (pa, pb) = channels(&a, &b, 2);
    assert!(matches!(
        a.block_any(&[], Some(0)),
        Err(PlatformError::InvalidRequest { .. })
    ));
    assert!(matches!(
        a.block_any(&[], None),
        Err(PlatformError::InvalidRequest { .. })
    ));
    // B's port is not A's; port 0 and out-of-range ports are never open.
    for bad in [pb[0], Port(0), Port(100_000)] {
        assert_eq!(
            a.block_any(&[pa[0], bad], Some(0)),
            Err(PlatformError::BadPort(bad))
        );
    }
    // A pending port before a bad one is still an error (the whole list
    // is checked), and the event stays pending.
    b.notify(pb[0]).unwrap();
    assert_eq!(
        a.block_any(&[pa[0], pb[1]], None),
        Err(PlatformError::BadPort(pb[1]))
    );
    assert!(a.poll(pa[0]).unwrap());

    // Closing a port wakes its blocked waiter with an error.
    let (a2, ports) = (a.clone(), pa.clone());
    let waiter = thread::spawn(move || a2.block_any(&ports, None));
    thread::sleep(Duration::from_millis(20));
    a.close(pa[1]).unwrap();
    assert_eq!(waiter.join().unwrap(), Err(PlatformError::BadPort(pa[1])));
}

#[test]
fn clocks_are_monotonic() {
    let clock = FakeClock::new();
    assert_eq!(clock.now_ns(), 0);
    clock.advance(7);
    clock.advance(0);
    assert_eq!(clock.now_ns(), 7);
    clock.advance(u64::MAX);
    assert_eq!(clock.now_ns(), u64::MAX, "saturates, never wraps back");

    let host = HostClock::new();
    let hub = FakeEventHub::new();
    let dom = domain(A, &hub);
    let mut last = (host.now_ns(), dom.now_ns());
    let reads = if cfg!(miri) { 100 } else { 100_000 };
    for _ in 0..reads {
        let now = (host.now_ns(), dom.now_ns());
        assert!(now.0 >= last.0 && now.1 >= last.1, "{now:?} after {last:?}");
        last = now;
    }
    thread::sleep(Duration::from_millis(2));
    assert!(
        host.now_ns() >= last.0 + 2_000_000,
        "the host clock moves with real time"
    );
    assert!(dom.now_ns() >= last.1 + 2_000_000);
}
