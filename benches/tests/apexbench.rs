//! Runs the APEX bench's simulated part in quick mode (the binary, as
//! `cargo xtask apexbench --quick --no-linux` does) and reads its JSON
//! back: every entry the issue names is there with its fields, the Linux
//! peers and our real path are listed as not measured with the reason, and
//! every target is evaluated.

use std::path::PathBuf;
use std::process::Command;

use benches::apex::report::ApexReport;
use benches::harness::Report;

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("apexbench-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The names the issue asks for, written out here rather than taken from
/// the bench.
fn expected_names() -> Vec<String> {
    let mut v = Vec::new();
    for p in ["apex", "fifo", "prio", "deadline"] {
        for load in [10, 50, 90] {
            for c in ["rt", "bulk", "total"] {
                v.push(format!("{p}-w1-{load}-{c}"));
            }
        }
        v.push(format!("{p}-w1-total"));
        for c in ["lc", "bulk", "total"] {
            v.push(format!("{p}-w2-{c}"));
        }
        for c in ["lc", "total"] {
            v.push(format!("{p}-w2-alone-{c}"));
        }
        for r in [50, 5, 20] {
            for c in ["rt", "be", "total"] {
                v.push(format!("{p}-w3-r{r}-{c}"));
            }
        }
        v.push(format!("{p}-w4-overhead"));
    }
    v.push("none-w4-overhead".into());
    v
}

#[test]
fn the_quick_simulated_run_writes_every_named_entry() {
    let dir = temp_dir();
    let json = dir.join("out/apexbench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_apexbench"))
        .args(["--quick", "--no-linux", "--json"])
        .arg(&json)
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let rep: ApexReport = serde_json::from_str(&text).unwrap();
    // The harness's reader takes the same file.
    let h: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(h.results.len(), rep.results.len());

    for name in expected_names() {
        let e = rep
            .get(&name)
            .unwrap_or_else(|| panic!("{name} missing from the JSON"));
        let r = &e.result;
        if name.ends_with("-overhead") {
            // W4: ns per request, and submissions per second.
            assert!(r.p50_ns > 0 && r.iters > 0, "{name}: {r:?}");
            assert!(e.extra.ns_per_req.unwrap() > 0.0, "{name}");
            assert!(e.extra.cpu_ns_per_req.unwrap() > 0.0, "{name}");
            assert!(r.iops.unwrap() > 0.0, "{name}");
        } else if name.ends_with("-total") {
            assert!(r.mb_s.unwrap() > 0.0, "{name}: {r:?}");
            assert!(r.p50_us.is_none(), "{name}: a total has no latency");
            assert!(e.extra.idle_wait_us.is_some(), "{name}");
            assert!(e.extra.underused_wait_us.is_some(), "{name}");
        } else if name.ends_with("-rt") || name.ends_with("-lc") {
            // Classes with deadlines: latency, misses, ratio.
            let misses = r.misses.unwrap_or_else(|| panic!("{name}: no misses"));
            let ratio = r.miss_ratio.unwrap();
            assert!(r.iters > 0, "{name}");
            assert!(misses <= r.iters, "{name}");
            assert!(
                (ratio - misses as f64 / r.iters as f64).abs() < 1e-9,
                "{name}"
            );
            let (p50, p99) = (r.p50_us.unwrap(), r.p99_us.unwrap());
            assert!(p50 > 0.0 && p50 <= p99, "{name}: {p50} {p99}");
            assert!((p99 - r.p99_ns as f64 / 1e3).abs() < 1e-6, "{name}");
        } else {
            // Bulk: no deadline, so no misses; latency and throughput.
            assert!(r.misses.is_none(), "{name}");
            assert!(r.p50_us.is_some() || r.iters == 0, "{name}");
            assert!(r.mb_s.is_some(), "{name}");
        }
        if name.contains("-w1-") && !name.contains("-w1-total") {
            assert!(e.extra.load_pct.is_some(), "{name}");
        }
    }
    // POLICY-w1-total is W1 at 90 %.
    for p in ["apex", "fifo", "prio", "deadline"] {
        let a = rep.get(&format!("{p}-w1-total")).unwrap();
        let b = rep.get(&format!("{p}-w1-90-total")).unwrap();
        assert_eq!(a.result.mb_s, b.result.mb_s, "{p}");
    }
    // FIFO serves the readers behind the bulk writer: W1 at 90 % misses.
    assert!(rep.get("fifo-w1-90-rt").unwrap().result.misses.unwrap() > 0);

    // Nothing else measured, and what is not measured says why.
    assert_eq!(rep.results.len(), expected_names().len());
    let linux: Vec<_> = rep
        .not_measured
        .iter()
        .filter(|n| n.name.starts_with("linux-"))
        .collect();
    for k in ["mq-deadline", "bfq", "kyber"] {
        for e in [
            "w1-90-rt",
            "w1-total",
            "w2-lc",
            "w2-alone-lc",
            "w3-rt",
            "w3-total",
        ] {
            let n = format!("linux-{k}-{e}");
            let m = linux
                .iter()
                .find(|x| x.name == n)
                .unwrap_or_else(|| panic!("{n}"));
            assert!(m.reason.contains("--no-linux"), "{m:?}");
        }
    }
    // Our real paths run on the loop device too: not with --no-linux.
    for p in ["apex-real-w2-lc", "fifo-real-w2-lc"] {
        let m = rep.not_measured.iter().find(|n| n.name == p);
        let m = m.unwrap_or_else(|| panic!("{p} not listed as not measured"));
        assert!(m.reason.contains("--no-linux"), "{m:?}");
    }

    // Every target: the simulated ones evaluated, the real path's not.
    assert_eq!(rep.checks.len(), 12, "{:?}", rep.checks);
    for c in &rep.checks {
        let real = c.what.contains("-real");
        assert_eq!(c.met.is_none(), real, "{c:?}");
        assert_eq!(c.why.is_some(), real, "{c:?}");
    }
    assert!(stdout.contains("targets (this run):"), "{stdout}");
    assert!(
        stdout.contains("W1 apex-w1-{10,50,90}-rt deadline misses (sim) = "),
        "{stdout}"
    );

    // The plot sits beside the JSON and has a line per simulated policy.
    let svg = std::fs::read_to_string(dir.join("out/apexbench.svg")).unwrap();
    for p in ["apex (sim)", "fifo (sim)", "prio (sim)", "deadline (sim)"] {
        assert!(svg.contains(p), "{p} not in the plot");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_explains_the_entries_the_linux_settings_and_the_missing_real_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_apexbench"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for s in [
        "apex-w1-90-rt",
        "linux-bfq-w2-lc",
        "none-w4-overhead",
        "--no-linux",
        "--quick",
        "low_latency=1",
        "fifo_batch=1",
        "read_lat_nsec",
        "prioclass=1",
        "rate_process=poisson",
        "apex-real",
        "Targets:",
    ] {
        assert!(help.contains(s), "{s} not in --help:\n{help}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_apexbench"))
        .args(["--only", "nope", "--no-linux"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no entry is named `nope`"));
}
