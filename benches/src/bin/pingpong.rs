//! The ping-pong latency bench:
//! `cargo xtask pingpong [--quick] [--rounds N] [--json FILE] [--only NAME]...`.
//!
//! Every entry is measured in this run on this machine, the two ends pinned
//! to two cores; the table gives p50/p99 and ratios against the peers. The
//! measured round trips are split into rounds run one after the other over
//! all entries (entry 1, entry 2, ..., entry 1, entry 2, ...), so that a
//! slow drift of the machine (another tenant, frequency) weighs on every
//! entry alike instead of on whichever ran at the time; the table shows the
//! spread of the per-round medians.

use std::process::ExitCode;

use benches::stats::{summarize, to_json, Summary};
use benches::{peers, pin};

struct Args {
    quick: bool,
    rounds: Option<u64>,
    json: Option<String>,
    only: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        rounds: None,
        json: None,
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--quick" => a.quick = true,
            "--rounds" => {
                let n = it
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|&n| (1..=100).contains(&n))
                    .ok_or("--rounds takes a number from 1 to 100")?;
                a.rounds = Some(n);
            }
            "--json" => a.json = Some(it.next().ok_or("--json takes a file name")?),
            "--only" => a.only.push(it.next().ok_or("--only takes an entry name")?),
            other => {
                return Err(format!(
                    "unknown option `{other}` (options: --quick, --rounds N, --json FILE, --only NAME)"
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
    let (iters, warmup): (u64, u64) = if args.quick {
        (20_000, 2_000)
    } else {
        (200_000, 20_000)
    };
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 4 });
    let per_round = iters.div_ceil(rounds);
    let iters = per_round * rounds;
    // Every round sets its entries up afresh and warms them up again.
    let warmup = (warmup / rounds).max(1_000);
    let (a, b) = pin::pair();
    println!(
        "ping-pong round trips: {iters} measured per entry in {rounds} round(s), each after {warmup} warm-up; ends pinned to cores {a} and {b} of {}",
        pin::cpus()
    );
    if pin::cpus() < 2 {
        println!("warning: one core only: spinning entries will be slow and meaningless");
    }
    let chosen: Vec<Entry> = entries()
        .into_iter()
        .filter(|e| args.only.is_empty() || args.only.iter().any(|o| o == e.0))
        .collect();
    if chosen.is_empty() {
        eprintln!("pingpong: no entry matches --only {:?}", args.only);
        return ExitCode::from(2);
    }
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); chosen.len()];
    let mut round_p50: Vec<Vec<u64>> = vec![Vec::new(); chosen.len()];
    for round in 0..rounds {
        if rounds > 1 {
            eprintln!("round {} of {rounds}", round + 1);
        }
        for (k, (name, _, _, f)) in chosen.iter().enumerate() {
            eprint!("  measuring {name:<14}");
            let t = std::time::Instant::now();
            match f(per_round, warmup) {
                Ok(mut got) => {
                    let p50 = summarize(name, got.clone(), 0, "").p50_ns;
                    eprintln!(" p50 {p50:>7} ns  ({:.1} s)", t.elapsed().as_secs_f64());
                    round_p50[k].push(p50);
                    samples[k].append(&mut got);
                }
                Err(e) => {
                    eprintln!(" FAILED: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let results: Vec<Summary> = chosen
        .iter()
        .zip(samples)
        .map(|((name, bytes, setup, _), s)| summarize(name, s, *bytes, setup))
        .collect();
    let base = find(&results, "cacheline").map(|s| s.p50_ns).unwrap_or(0);
    println!(
        "\n{:<14} {:>9} {:>9} {:>9} {:>6} {:>12} {:>15}  setup",
        "entry", "p50 ns", "p99 ns", "min ns", "bytes", "p50/cacheline", "round p50s"
    );
    for (s, rp) in results.iter().zip(&round_p50) {
        let spread = format!(
            "{}..{}",
            rp.iter().min().copied().unwrap_or(0),
            rp.iter().max().copied().unwrap_or(0)
        );
        let r = if base > 0 {
            format!("{:.2}x", s.p50_ns as f64 / base as f64)
        } else {
            "-".into()
        };
        println!(
            "{:<14} {:>9} {:>9} {:>9} {:>6} {:>12} {:>15}  {}",
            s.name, s.p50_ns, s.p99_ns, s.min_ns, s.msg_bytes, r, spread, s.setup
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
            ("rounds", rounds.to_string()),
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
