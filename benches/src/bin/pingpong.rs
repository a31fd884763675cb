//! The ping-pong latency bench: `cargo xtask pingpong [--quick] [--json FILE]`.
//!
//! Every entry is measured in this run on this machine, the two ends pinned
//! to two cores; the table gives p50/p99 and ratios against the peers.

use std::process::ExitCode;

use benches::stats::{summarize, to_json, Summary};
use benches::{peers, pin};

struct Args {
    quick: bool,
    json: Option<String>,
    only: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        json: None,
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--quick" => a.quick = true,
            "--json" => a.json = Some(it.next().ok_or("--json takes a file name")?),
            "--only" => a.only.push(it.next().ok_or("--only takes an entry name")?),
            other => {
                return Err(format!(
                    "unknown option `{other}` (options: --quick, --json FILE, --only NAME)"
                ))
            }
        }
    }
    Ok(a)
}

type Entry = (
    &'static str,
    usize,
    &'static str,
    fn(u64, u64) -> Result<Vec<u64>, String>,
);

fn entries() -> Vec<Entry> {
    let mut v: Vec<Entry> = vec![("cacheline", 8, "threads", peers::cacheline)];
    v.extend(benches::ring::entries());
    v.extend([
        (
            "udp-block",
            peers::MSG,
            "threads",
            (|n, w| peers::udp(n, w, false)) as fn(u64, u64) -> _,
        ),
        ("udp-spin", peers::MSG, "threads", |n, w| {
            peers::udp(n, w, true)
        }),
        ("unix", peers::MSG, "threads", peers::unix),
        ("pipe", peers::MSG, "threads", peers::pipe),
        ("eventfd", 8, "threads", peers::eventfd_pair),
    ]);
    v
}

fn find<'a>(r: &'a [Summary], name: &str) -> Option<&'a Summary> {
    r.iter().find(|s| s.name == name)
}

fn ratio(r: &[Summary], a: &str, b: &str) -> Option<f64> {
    let (x, y) = (find(r, a)?, find(r, b)?);
    (y.p50_ns > 0).then(|| x.p50_ns as f64 / y.p50_ns as f64)
}

fn main() -> ExitCode {
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
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pingpong: {e}");
            return ExitCode::from(2);
        }
    };
    let (iters, warmup) = if args.quick {
        (20_000, 2_000)
    } else {
        (200_000, 20_000)
    };
    let (a, b) = pin::pair();
    println!(
        "ping-pong round trips: {iters} measured after {warmup} warm-up per entry; ends pinned to cores {a} and {b} of {}",
        pin::cpus()
    );
    if pin::cpus() < 2 {
        println!("warning: one core only: spinning entries will be slow and meaningless");
    }
    let mut results = Vec::new();
    for (name, bytes, setup, f) in entries() {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        eprint!("  measuring {name:<14}");
        let t = std::time::Instant::now();
        match f(iters, warmup) {
            Ok(samples) => {
                let s = summarize(name, samples, bytes, setup);
                eprintln!(
                    " p50 {:>7} ns  ({:.1} s)",
                    s.p50_ns,
                    t.elapsed().as_secs_f64()
                );
                results.push(s);
            }
            Err(e) => {
                eprintln!(" FAILED: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let base = find(&results, "cacheline").map(|s| s.p50_ns).unwrap_or(0);
    println!(
        "\n{:<14} {:>9} {:>9} {:>9} {:>6} {:>12}  setup",
        "entry", "p50 ns", "p99 ns", "min ns", "bytes", "p50/cacheline"
    );
    for s in &results {
        let r = if base > 0 {
            format!("{:.2}x", s.p50_ns as f64 / base as f64)
        } else {
            "-".into()
        };
        println!(
            "{:<14} {:>9} {:>9} {:>9} {:>6} {:>12}  {}",
            s.name, s.p50_ns, s.p99_ns, s.min_ns, s.msg_bytes, r, s.setup
        );
    }
    println!("\ntargets (p50 ratios, this run):");
    for (a, b, limit) in [
        ("ring-poll", "cacheline", 1.2),
        ("ring-poll", "c-ring-h", 1.1),
        ("ring-event", "eventfd", 1.2),
    ] {
        match ratio(&results, a, b) {
            Some(x) => println!(
                "  {a} / {b} = {x:.2} (target <= {limit}): {}",
                if x <= limit { "met" } else { "NOT met" }
            ),
            None => println!("  {a} / {b}: not measured in this run"),
        }
    }
    if let Some(path) = args.json {
        let meta = [
            ("cpus", pin::cpus().to_string()),
            ("cores", format!("{a},{b}")),
            ("iters", iters.to_string()),
            ("warmup", warmup.to_string()),
        ];
        if let Err(e) = std::fs::write(&path, to_json(&results, &meta)) {
            eprintln!("pingpong: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
        println!("\nJSON written to {path}");
    }
    ExitCode::SUCCESS
}
