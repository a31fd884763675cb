//! A quick look at the cost of the event channel fast paths (not a bench:
//! the benches crate measures properly). Ignored by default:
//! `cargo test --release -p hosted --test evtchn_perf -- --ignored --nocapture`

#[path = "platform_common/mod.rs"]
mod common;

use std::time::Instant;

use common::TestDir;
use grant_tables::{DomId, EventChannels};
use hosted::HostedHypervisor;

#[test]
#[ignore = "timing report, run by hand"]
fn polling_ping_pong_round_trip() {
    const ROUNDS: u32 = 200_000;
    let dir = TestDir::new("perf");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let a = hv.join(DomId(1)).unwrap();
    let b = hv.join(DomId(2)).unwrap();
    let pa = a.alloc_unbound(DomId(2)).unwrap();
    let pb = b.bind_interdomain(DomId(1), pa).unwrap();
    assert!(b.poll(pb).unwrap());

    // Uncontended costs, one thread.
    let t = Instant::now();
    for _ in 0..ROUNDS {
        a.notify(pa).unwrap();
    }
    let notify_ns = t.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    let t = Instant::now();
    let mut n = 0u32;
    for _ in 0..ROUNDS {
        n += u32::from(b.poll(pb).unwrap());
    }
    let poll_ns = t.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    assert_eq!(n, 1);
    println!("notify (peer polling, no sleeper): {notify_ns:.1} ns; poll (nothing pending): {poll_ns:.1} ns");

    let t = std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            while !b.poll(pb).unwrap() {
                std::hint::spin_loop();
            }
            b.notify(pb).unwrap();
        }
        b.event_stats()
    });
    let start = Instant::now();
    for _ in 0..ROUNDS {
        a.notify(pa).unwrap();
        while !a.poll(pa).unwrap() {
            std::hint::spin_loop();
        }
    }
    let rtt = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    let bs = t.join().unwrap();
    println!(
        "spinning ping-pong round trip: {rtt:.0} ns; eventfd writes: {} + {}",
        a.event_stats().wakeups_sent,
        bs.wakeups_sent
    );
    assert_eq!(a.event_stats().wakeups_sent + bs.wakeups_sent, 0);
}
