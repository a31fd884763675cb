//! The ping-pong latency bench: `cargo xtask pingpong [--quick]
//! [--rounds N] [--json FILE] [--svg FILE] [--only NAME]...`
//! (`--help` explains every entry).
//!
//! Every entry is measured in this run on this machine, the two ends pinned
//! to two cores, in interleaved rounds (see [`benches::harness`]); the table
//! gives the latency percentiles and every entry's p50 as a ratio of the
//! cache line's; the plot shows every entry's latency distribution.

use std::process::ExitCode;

use benches::harness::{Bench, Entry, Metric, Plan, Recorder, Round, Target};
use benches::{peers, pin};

const ABOUT: &str = "\
The ping-pong latency bench: one request/response round trip, both ends \
pinned to two cores, for our rings between two hosted domains (two processes \
connected through xenstore and the xenbus handshake exactly as a driver \
connects), for Ethernet frames through the hosted netback to an echo on the \
backend's side (and a one-way stream of frames), for RoCE v2 SEND and RDMA \
WRITE between two queue pairs in two processes over the hosted frame link, \
and for the peers, all measured in the same run.";

fn entries() -> Vec<Entry> {
    let mut v = vec![Entry::new(
        "cacheline",
        "one cache line bounced between the two cores: the physical limit of any shared-memory exchange",
        "threads",
        |r: Round, rec: &mut Recorder| peers::cacheline(r.iters, r.warmup, rec),
    )
    .msg_bytes(8)];
    v.extend(benches::ring::entries());
    v.extend(benches::net::entries());
    v.extend(benches::rdma::entries());
    v.extend([
        Entry::new(
            "udp-block",
            "UDP over loopback, each end sleeping in recv",
            "threads",
            |r: Round, rec: &mut Recorder| peers::udp(r.iters, r.warmup, false, rec),
        )
        .msg_bytes(peers::MSG),
        Entry::new(
            "udp-spin",
            "UDP over loopback, each end busy-polling a non-blocking socket",
            "threads",
            |r: Round, rec: &mut Recorder| peers::udp(r.iters, r.warmup, true, rec),
        )
        .msg_bytes(peers::MSG),
        Entry::new(
            "unix",
            "a connected Unix stream socket pair, blocking",
            "threads",
            |r: Round, rec: &mut Recorder| peers::unix(r.iters, r.warmup, rec),
        )
        .msg_bytes(peers::MSG),
        Entry::new(
            "pipe",
            "two pipes, one each way, blocking",
            "threads",
            |r: Round, rec: &mut Recorder| peers::pipe(r.iters, r.warmup, rec),
        )
        .msg_bytes(peers::MSG),
        Entry::new(
            "eventfd",
            "two eventfds, one each way, blocking reads: the kernel's cheapest wake-up between two threads",
            "threads",
            |r: Round, rec: &mut Recorder| peers::eventfd_pair(r.iters, r.warmup, rec),
        )
        .msg_bytes(8),
    ]);
    v.extend(benches::net::peer_entries());
    v
}

fn main() -> ExitCode {
    // The same binary is the netback process of the network entries.
    if let Ok(spec) = std::env::var(benches::net::NETBACK_ROLE_ENV) {
        return match benches::net::backend_main(&spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pingpong netback: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // The same binary is the RDMA entries' peer process.
    if let Ok(spec) = std::env::var(benches::rdma::RDMA_PEER_ROLE_ENV) {
        return match benches::rdma::peer_main(&spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pingpong RDMA peer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // The same binary is the ring's backend process (another domain).
    if let Ok(spec) = std::env::var(benches::ring::BACKEND_ROLE_ENV) {
        return match benches::ring::backend_main(&spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pingpong backend: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (a, b) = pin::pair();
    let mut bench = Bench::new("pingpong", "ping-pong round trips", ABOUT)
        .plans(
            Plan {
                iters: 20_000,
                warmup: 2_000,
                rounds: 1,
            },
            Plan {
                iters: 200_000,
                warmup: 20_000,
                rounds: 4,
            },
        )
        // Every round sets its entries up afresh and warms them up again.
        .min_warmup(1_000)
        .entries(entries())
        .peer("cacheline")
        .target(Target::at_most("ring-poll", "cacheline", 1.2))
        .target(Target::at_most("ring-poll", "c-ring-h", 1.1))
        .target(Target::at_most("ring-event", "eventfd", 1.2))
        .target(Target::at_most("netfront-poll-64", "c-ring-h", 2.5))
        .target(Target::at_most("netfront-poll-64", "udp-spin", 0.1))
        .target(Target::at_most("netfront-event-64", "eventfd", 1.2))
        .target(Target::at_most("rdma-send-64", "udp-spin", 0.1))
        .target(Target::at_most("rdma-send-64", "netfront-poll-64", 1.5))
        .target(Target::at_least("netfront-stream-1500", "memcpy", 0.5).on(Metric::GbitS))
        .target(Target::at_least("netfront-stream-1500", "udp-stream", 2.0).on(Metric::GbitS))
        .meta("cores", format!("{a},{b}"))
        .note(format!(
            "ends pinned to cores {a} and {b} of {}",
            pin::cpus()
        ));
    if pin::cpus() < 2 {
        bench = bench.note("warning: one core only: spinning entries will be slow and meaningless");
    }
    bench.main()
}
