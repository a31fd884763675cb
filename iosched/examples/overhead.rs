//! The scheduler's own cost per request (`sim::overhead`), for profiling:
//! `cargo run -p iosched --example overhead --release [-- POLICY [REQUESTS]]`.
use iosched::{new_scheduler, sim, PolicyKind, SchedConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "apex".into());
    let requests: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let Some(kind) = PolicyKind::ALL.into_iter().find(|k| k.name() == name) else {
        eprintln!("unknown policy {name}: one of apex, fifo, prio, deadline");
        std::process::exit(2);
    };
    let base = std::time::Instant::now();
    let mut clock = || base.elapsed().as_nanos() as u64;
    let mut s = new_scheduler(kind, SchedConfig::default());
    match sim::overhead(&mut *s, requests, 32, &mut clock) {
        Ok(ns) => println!("{name}: {ns:.0} ns per request over {requests} requests"),
        Err(e) => {
            eprintln!("sim::overhead: {e}");
            std::process::exit(1);
        }
    }
}
