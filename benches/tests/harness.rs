//! Runs small benches with fake entries through the harness, end to end:
//! arguments, rounds, histograms, JSON (parsed back with serde) and SVG.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use benches::harness::{
    Bench, Entry, Kind, Metric, Plan, Recorder, Report, Round, Target, Throughput,
};

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "benches-harness-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Records `round.iters` samples spread evenly over `base..base + 100`
/// (after `round.warmup` unrecorded ones, as a real entry would).
fn spread(base: u64) -> impl Fn(Round, &mut Recorder) -> Result<(), String> {
    move |round, rec| {
        for i in 0..round.warmup + round.iters {
            if i >= round.warmup {
                rec.record(base + (i - round.warmup) % 100);
            }
        }
        Ok(())
    }
}

fn latency_bench() -> Bench {
    Bench::new("fake", "fake round trips", "Two fake entries.")
        .plans(
            Plan {
                iters: 1_000,
                warmup: 10,
                rounds: 1,
            },
            Plan {
                iters: 4_000,
                warmup: 40,
                rounds: 2,
            },
        )
        .entry(
            Entry::new("fast-one", "records 100..199 ns", "one thread", spread(100)).msg_bytes(16),
        )
        .entry(Entry::new(
            "slow-one",
            "records 10000..10099 ns",
            "two threads",
            spread(10_000),
        ))
        .peer("fast-one")
        .target(Target::at_most("slow-one", "fast-one", 2.0))
        .target(Target::at_least("slow-one", "fast-one", 50.0))
        .meta("cores", "0,1")
}

#[test]
fn a_latency_bench_writes_json_with_every_entry_and_an_svg_naming_them() {
    let dir = temp_dir();
    let json = dir.join("out/fake.json");
    let bench = latency_bench();
    let args = bench
        .parse_from(["fake", "--rounds", "4", "--json", json.to_str().unwrap()])
        .unwrap();
    bench.run_and_write(&args).unwrap();

    let text = std::fs::read_to_string(&json).unwrap();
    let report: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(report.results.len(), 2);
    let fast = report.get("fast-one").expect("fast-one in the JSON");
    let slow = report.get("slow-one").expect("slow-one in the JSON");
    for r in [fast, slow] {
        assert_eq!(
            r.iters, 4_000,
            "{}: every measured sample, no warm-up",
            r.name
        );
        assert_eq!(r.round_p50_ns.len(), 4, "{}: one median per round", r.name);
        assert!(r.min_ns <= r.p50_ns && r.p50_ns <= r.p99_ns, "{r:?}");
        assert!(r.p99_ns <= r.p999_ns && r.p999_ns <= r.max_ns, "{r:?}");
    }
    assert_eq!((fast.min_ns, fast.p50_ns, fast.max_ns), (100, 149, 199));
    assert_eq!(fast.p99_ns, 198);
    assert!(fast.round_p50_ns.iter().all(|&p| p == 149));
    assert_eq!(fast.msg_bytes, Some(16));
    assert_eq!(slow.msg_bytes, None);
    // Above 2048 ns the histogram keeps 3 significant digits.
    assert!((10_000..=10_099 + 10).contains(&slow.p50_ns), "{slow:?}");
    assert_eq!(fast.setup, "one thread");
    assert_eq!(report.meta.get("rounds").map(String::as_str), Some("4"));
    assert_eq!(report.meta.get("iters").map(String::as_str), Some("4000"));
    assert_eq!(report.meta.get("warmup").map(String::as_str), Some("10"));
    assert_eq!(report.meta.get("cores").map(String::as_str), Some("0,1"));
    assert_eq!(report.targets.len(), 2);
    assert_eq!(report.targets[0].met, Some(false));
    assert_eq!(report.targets[1].met, Some(true));
    let ratio = report.targets[0].ratio.unwrap();
    assert!((ratio - slow.p50_ns as f64 / 149.0).abs() < 1e-9);

    // The raw JSON keeps the field names consumers read, and leaves the
    // unset optional ones out.
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let first = &raw["results"][0];
    for f in [
        "name", "p50_ns", "p99_ns", "p999_ns", "max_ns", "min_ns", "iters", "setup",
    ] {
        assert!(first.get(f).is_some(), "field {f} missing in {first}");
    }
    for f in [
        "iops",
        "mb_s",
        "gbit_s",
        "misses",
        "miss_ratio",
        "p50_us",
        "p99_us",
    ] {
        assert!(first.get(f).is_none(), "unset field {f} written in {first}");
    }
    assert!(raw["results"][1].get("msg_bytes").is_none());

    // The SVG lands beside the JSON by default and names every entry.
    let svg = std::fs::read_to_string(dir.join("out/fake.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    assert!(svg.contains("<text"));
    for name in ["fast-one", "slow-one", "fake round trips"] {
        assert!(svg.contains(name), "{name} not in the SVG");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn only_picks_entries_by_repeat_or_comma_and_refuses_unknown_names() {
    let dir = temp_dir();
    let bench = latency_bench();
    let j = dir.join("a.json");
    let svg = dir.join("plot/a-plot.svg");
    let args = bench
        .parse_from([
            "fake",
            "--quick",
            "--only",
            "slow-one",
            "--json",
            j.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ])
        .unwrap();
    assert!(args.quick);
    let report = bench.run_and_write(&args).unwrap();
    assert_eq!(report.results.len(), 1);
    assert_eq!(report.results[0].name, "slow-one");
    assert_eq!(report.results[0].iters, 1_000);
    assert_eq!(report.targets[0].met, None, "fast-one was not measured");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.contains("slow-one") && !plot.contains("fast-one"));

    let both = bench
        .parse_from(["fake", "--only", "slow-one,fast-one"])
        .unwrap();
    assert_eq!(both.only, ["slow-one", "fast-one"]);
    let both = bench
        .parse_from(["fake", "--only", "slow-one", "--only", "fast-one"])
        .unwrap();
    assert_eq!(both.only, ["slow-one", "fast-one"]);

    let bad = bench.parse_from(["fake", "--only", "nope"]).unwrap();
    let err = bench.run(&bad).err().expect("an unknown entry is refused");
    assert!(
        err.contains("nope") && err.contains("fast-one, slow-one"),
        "{err}"
    );
    assert!(bench.parse_from(["fake", "--rounds", "0"]).is_err());
    assert!(bench.parse_from(["fake", "--rounds", "101"]).is_err());
    assert!(bench.parse_from(["fake", "--bogus"]).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_explains_every_entry_option_and_target() {
    let bench = latency_bench();
    let err = bench.parse_from(["fake", "--help"]).err().unwrap();
    assert_eq!(err.exit_code(), 0);
    let help = err.to_string();
    for s in [
        "Two fake entries.",
        "--quick",
        "--rounds <N>",
        "--json <FILE>",
        "--svg <FILE>",
        "--only <NAME>",
        "fast-one",
        "records 100..199 ns",
        "setup: one thread; 16-byte messages",
        "slow-one",
        "setup: two threads",
        "slow-one / fast-one (p50) <= 2",
        "Sizes: --quick: 1000 samples",
    ] {
        assert!(help.contains(s), "`{s}` missing from --help:\n{help}");
    }
}

#[test]
fn a_failing_entry_fails_the_run_with_its_message() {
    let bench = Bench::new("broken", "broken", "A broken entry.").entry(Entry::new(
        "dies",
        "fails",
        "-",
        |_, _| Err("the peer went away".into()),
    ));
    let err = bench.run(&Default::default()).err().unwrap();
    assert!(
        err.contains("dies") && err.contains("the peer went away"),
        "{err}"
    );
}

#[test]
fn a_throughput_bench_reports_rates_misses_and_draws_bars() {
    let dir = temp_dir();
    let rate = |iops: u64| {
        move |r: Round, rec: &mut Recorder| {
            for i in 0..r.iters {
                rec.record(50_000 + i % 10);
            }
            // Round k does iops * (k + 1) operations in a second: the
            // median over 3 rounds is the second round's.
            let ops = iops * (r.index + 1);
            rec.throughput(
                Throughput::default()
                    .with_iops(ops, Duration::from_secs(1))
                    .with_mb_s(ops * 4096, Duration::from_secs(1)),
            );
            rec.misses(1, 100);
            Ok(())
        }
    };
    let bench = Bench::new("blkfake", "fake block I/O", "Fake throughput.")
        .kind(Kind::Throughput(Metric::Iops))
        .report_us(true)
        .plans(
            Plan {
                iters: 30,
                warmup: 0,
                rounds: 3,
            },
            Plan {
                iters: 30,
                warmup: 0,
                rounds: 3,
            },
        )
        .entry(Entry::new("disk-a", "fake disk a", "fake", rate(1000)))
        .entry(Entry::new("disk-b", "fake disk b", "fake", rate(3000)))
        .peer("disk-a")
        .target(Target::at_least("disk-b", "disk-a", 2.5));
    let j = dir.join("blk.json");
    let args = bench
        .parse_from(["blkfake", "--json", j.to_str().unwrap()])
        .unwrap();
    bench.run_and_write(&args).unwrap();
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    let a = report.get("disk-a").unwrap();
    let b = report.get("disk-b").unwrap();
    assert_eq!(a.iops, Some(2000.0));
    assert_eq!(b.iops, Some(6000.0));
    assert_eq!(b.mb_s, Some(6000.0 * 4096.0 / 1e6));
    assert_eq!(a.gbit_s, None);
    assert_eq!(a.misses, Some(3));
    assert_eq!(a.miss_ratio, Some(0.01));
    assert_eq!(a.p50_us, Some(a.p50_ns as f64 / 1e3));
    assert!(a.p99_us.is_some());
    assert_eq!(report.targets[0].metric, Metric::Iops);
    assert_eq!(report.targets[0].ratio, Some(3.0));
    assert_eq!(report.targets[0].met, Some(true));
    let svg = std::fs::read_to_string(dir.join("blk.svg")).unwrap();
    assert!(svg.contains("disk-a") && svg.contains("disk-b") && svg.contains("<rect"));
    std::fs::remove_dir_all(&dir).ok();
}
