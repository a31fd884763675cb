//! The bench commands (`cargo xtask pingpong`, and every bench added
//! beside it): install what the benches need when missing, build the bench
//! in release mode and run it with every option passed through (the
//! bench's own `--help` explains its options and entries).
//!
//! Relative `--json` and `--svg` paths are taken from where the user
//! stands, not from the workspace root the bench runs in; without
//! `--json` the results go to `target/bench/<bench>.json` and the plot
//! beside them.

use std::ffi::OsString;
use std::path::Path;

use crate::setup::{ensure_bench_deps, ensure_fio};
use crate::util::{cargo, run as sh, target_dir};

/// A bench command's arguments: all of them go to the bench.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// The bench's options (`--quick`, `--rounds N`, `--json FILE`,
    /// `--svg FILE`, `--only NAME`, `--help`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "BENCH OPTIONS"
    )]
    pub args: Vec<OsString>,
}

/// The options that name an output file.
const PATH_OPTIONS: [&str; 2] = ["--json", "--svg"];

/// The bench's arguments: output paths made absolute against `cwd`, and
/// `--json <out>/<bench>.json` added when no `--json` is given.
pub fn bench_args(bench: &str, args: &[OsString], cwd: &Path, out: &Path) -> Vec<OsString> {
    let abs = |p: &OsString| -> OsString { cwd.join(p).into_os_string() };
    let mut v = Vec::with_capacity(args.len() + 2);
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if let Some(opt) = PATH_OPTIONS.iter().find(|o| s == **o) {
            json |= *opt == "--json";
            v.push(a.clone());
            if let Some(p) = it.next() {
                v.push(abs(p));
            }
        } else if let Some((opt, p)) = PATH_OPTIONS
            .iter()
            .find_map(|o| s.strip_prefix(&format!("{o}=")).map(|p| (*o, p)))
        {
            json |= opt == "--json";
            let mut x = OsString::from(format!("{opt}="));
            x.push(abs(&OsString::from(p)));
            v.push(x);
        } else {
            v.push(a.clone());
        }
    }
    if !json {
        v.push("--json".into());
        v.push(out.join(format!("{bench}.json")).into_os_string());
    }
    v
}

/// `cargo xtask <bench> [BENCH OPTIONS]`: runs `benches`' binary `bench`.
pub fn run(bench: &str, args: &BenchArgs) -> Result<(), String> {
    ensure_bench_deps()?;
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "benches",
        "--bin",
        bench,
        "--",
    ]);
    c.args(bench_args(
        bench,
        &args.args,
        &cwd,
        &target_dir().join("bench"),
    ));
    sh(&mut c)
}

/// `cargo xtask blkbench [BENCH OPTIONS]`: installs fio when missing (the
/// bench's peer), then runs the bench.
pub fn run_blkbench(args: &BenchArgs) -> Result<(), String> {
    ensure_fio()?;
    run("blkbench", args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn output_paths_become_absolute_and_json_gets_a_default() {
        let cwd = Path::new("/home/u/src");
        let out = Path::new("/w/target/bench");
        assert_eq!(
            bench_args("pingpong", &os(&["--quick"]), cwd, out),
            os(&["--quick", "--json", "/w/target/bench/pingpong.json"])
        );
        assert_eq!(
            bench_args(
                "pingpong",
                &os(&["--json", "r.json", "--svg=docs/p.svg", "--only", "a,b"]),
                cwd,
                out
            ),
            os(&[
                "--json",
                "/home/u/src/r.json",
                "--svg=/home/u/src/docs/p.svg",
                "--only",
                "a,b"
            ])
        );
        assert_eq!(
            bench_args(
                "pingpong",
                &os(&["--json=/tmp/x.json", "--svg", "/tmp/y.svg"]),
                cwd,
                out
            ),
            os(&["--json=/tmp/x.json", "--svg", "/tmp/y.svg"])
        );
    }
}
