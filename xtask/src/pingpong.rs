//! `cargo xtask pingpong [--quick] [--json FILE]`: builds the bench in
//! release mode and runs it. Every option is passed through.

use crate::util::{cargo, run as sh};

pub fn run(args: &[String]) -> Result<(), String> {
    crate::setup::ensure_bench_deps()?;
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "benches",
        "--bin",
        "pingpong",
        "--",
    ]);
    // A relative --json path is relative to where the user stands, not to
    // the workspace root the bench runs in.
    let mut it = args.iter();
    while let Some(a) = it.next() {
        c.arg(a);
        if a == "--json" {
            let f = it.next().ok_or("--json takes a file name")?;
            let p = std::path::Path::new(f);
            let abs = if p.is_absolute() {
                p.to_path_buf()
            } else {
                std::env::current_dir().map_err(|e| e.to_string())?.join(p)
            };
            c.arg(abs);
        }
    }
    sh(&mut c)
}
