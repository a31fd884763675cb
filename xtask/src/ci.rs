//! `cargo xtask ci`: every check of the suite, on a fresh machine.
//!
//! It installs what it needs when missing (Debian's libxen-dev for Xen's
//! headers, the `x86_64-unknown-none` target, the nightly toolchain's Miri,
//! cargo-fuzz), then runs: clippy (also on the lwdom guest kernels), the
//! `no_std` builds of the driver crates, every test, Miri on the ring and
//! grant table unit tests and on lwdom's host unit tests, a short smoke
//! run of every fuzz target, and the Xen lab.
//!
//! Options: `--no-lab` skips the Xen lab; `--fuzz-seconds N` sets the smoke
//! time of each fuzz target (default 10).

use std::time::Instant;

use crate::setup::ensure_ci_tools;
use crate::util::{cargo, cargo_nightly, root, run as sh};

/// The crates that guest runtimes link: they must build without std.
const NO_STD_CRATES: &[&str] = &[
    "grant-tables",
    "xenbus",
    "netfront",
    "iosched",
    "blkfront",
    "passthrough",
    "rdma-passthrough",
    "lwdom",
];

struct Steps {
    done: Vec<(String, f64)>,
}

impl Steps {
    fn step(&mut self, name: &str, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        eprintln!("\n==> {name}");
        let t = Instant::now();
        let r = f();
        let secs = t.elapsed().as_secs_f64();
        match &r {
            Ok(()) => eprintln!("<== {name}: ok in {secs:.0} s"),
            Err(e) => eprintln!("<== {name}: FAILED in {secs:.0} s: {e}"),
        }
        r?;
        self.done.push((name.to_string(), secs));
        Ok(())
    }
}

/// Miri's flags for the unit tests: isolation off (the tests read the
/// clock), leaks allowed (the grant table leaks quarantined pages on
/// purpose: a peer may still map them, XSA-396).
const MIRIFLAGS: &str = "-Zmiri-disable-isolation -Zmiri-ignore-leaks";

/// `cargo xtask ci`: its options.
#[derive(Clone, Debug, clap::Args)]
pub struct CiArgs {
    /// Skip the Xen lab (it needs root, QEMU and Debian's mirror).
    #[arg(long)]
    pub no_lab: bool,
    /// How long each fuzz target's smoke run lasts, in seconds.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub fuzz_seconds: u64,
}

/// `cargo xtask fuzz`: its options.
#[derive(Clone, Debug, clap::Args)]
pub struct FuzzArgs {
    /// How long each target runs, in seconds.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub seconds: u64,
    /// The targets to run [default: every target in fuzz/Cargo.toml].
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
}

/// `cargo xtask ci`.
pub fn run(args: &CiArgs) -> Result<(), String> {
    let lab = !args.no_lab;
    let fuzz_seconds = args.fuzz_seconds;
    let start = Instant::now();
    let mut s = Steps { done: Vec::new() };
    s.step("install missing tools", ensure_ci_tools)?;
    s.step("clippy (all crates, all targets, warnings denied)", || {
        sh(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    s.step("clippy: lwdom guest kernels for x86_64-unknown-none, warnings denied", || {
        sh(cargo().args([
            "clippy",
            "-p",
            "lwdom",
            "--features",
            "guest",
            "--target",
            "x86_64-unknown-none",
            "--bins",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    s.step("no_std builds for x86_64-unknown-none", || {
        let mut c = cargo();
        c.args(["build", "--target", "x86_64-unknown-none"]);
        for k in NO_STD_CRATES {
            c.args(["-p", k]);
        }
        sh(&mut c)
    })?;
    s.step("tests (workspace)", || {
        sh(cargo()
            .args(["test", "--workspace"])
            .env("XEN_HEADERS_REQUIRED", "1"))
    })?;
    s.step("Miri: ring and grant table unit tests", || {
        sh(cargo_nightly()
            .args(["miri", "test", "-p", "grant-tables", "--lib"])
            .env("MIRIFLAGS", MIRIFLAGS))
    })?;
    // lwdom's host unit tests: the console byte rings, the heap's bump
    // allocator, the global cells, the lab protocol's layout. The guest
    // programs themselves only run on Xen (the lab).
    s.step("Miri: lwdom's host unit tests", || {
        sh(cargo_nightly()
            .args(["miri", "test", "-p", "lwdom", "--lib"])
            .env("MIRIFLAGS", MIRIFLAGS))
    })?;
    s.step("fuzz smoke (every target)", || {
        fuzz(&FuzzArgs {
            seconds: fuzz_seconds,
            targets: Vec::new(),
        })
    })?;
    if lab {
        s.step("Xen lab (real Xen under QEMU)", || {
            crate::lab::run(&crate::lab::LabArgs::default())
        })?;
    }
    eprintln!(
        "\nxtask ci: all steps passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    for (name, secs) in &s.done {
        eprintln!("  {secs:>6.0} s  {name}");
    }
    Ok(())
}

/// The fuzz targets, from `fuzz/Cargo.toml`.
pub fn fuzz_targets() -> Result<Vec<String>, String> {
    let manifest = root().join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let mut in_bin = false;
    let mut names = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_bin = l == "[[bin]]";
        } else if in_bin {
            if let Some(v) = l
                .strip_prefix("name")
                .map(str::trim)
                .and_then(|r| r.strip_prefix('='))
            {
                names.push(v.trim().trim_matches('"').to_string());
            }
        }
    }
    if names.is_empty() {
        return Err(format!(
            "no [[bin]] fuzz targets found in {}",
            manifest.display()
        ));
    }
    Ok(names)
}

/// `cargo xtask fuzz [--seconds N] [TARGET...]`.
pub fn fuzz(args: &FuzzArgs) -> Result<(), String> {
    let seconds = args.seconds;
    let chosen = args.targets.clone();
    let all = fuzz_targets()?;
    for c in &chosen {
        if !all.contains(c) {
            return Err(format!(
                "unknown fuzz target `{c}`; targets are: {}",
                all.join(", ")
            ));
        }
    }
    let targets = if chosen.is_empty() { all } else { chosen };
    let dir = root().join("fuzz");
    sh(cargo_nightly().current_dir(&dir).args(["fuzz", "build"]))?;
    // libFuzzer runs a target on one core: the targets run side by side,
    // one per core (at most 4), each for the full `seconds`.
    let jobs = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(targets.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<(String, String), String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(t) = targets.get(i) else { break };
                        let r = fuzz_one(&dir, t, seconds);
                        let failed = r.is_err();
                        mine.push(r);
                        if failed {
                            // Stop handing out targets: the others finish
                            // the one they run and the failure is reported.
                            next.store(targets.len(), std::sync::atomic::Ordering::Relaxed);
                            break;
                        }
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|_| vec![Err("a fuzz worker thread panicked".into())])
            })
            .collect()
    });
    let mut report = Vec::new();
    for r in results {
        report.push(r?);
    }
    eprintln!("fuzz: {} targets, no findings", report.len());
    Ok(())
}

/// Runs one fuzz target for `seconds`; its number of runs, or the failure
/// with the tail of libFuzzer's output and how to reproduce it.
fn fuzz_one(dir: &std::path::Path, t: &str, seconds: u64) -> Result<(String, String), String> {
    let out = cargo_nightly()
        .current_dir(dir)
        .args([
            "fuzz",
            "run",
            t,
            "--",
            &format!("-max_total_time={seconds}"),
        ])
        .output()
        .map_err(|e| format!("could not run cargo fuzz: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    let runs = err
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("Done ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    if !out.status.success() {
        let tail: Vec<&str> = err.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "fuzz target `{t}` found a failure:\n{}\nreproduce with: cd fuzz && cargo +nightly fuzz run {t} <artifact>",
            tail.join("\n")
        ));
    }
    eprintln!("fuzz {t}: {runs} runs in {seconds} s, no finding");
    Ok((t.to_string(), runs))
}
