//! `cargo xtask`: everything beyond plain cargo.
//!
//! - `cargo xtask ci`: every test of the suite, installing what it needs.
//! - `cargo xtask fuzz [--seconds N]`: every fuzz target for N seconds.
//! - `cargo xtask lab [--scenario NAME] [--keep]`: the Xen lab.
//! - `cargo xtask pingpong [--quick] [--json FILE]`: the ping-pong bench.

mod ci;
mod lab;
mod pingpong;
mod setup;
mod util;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <command>\n\
         \n\
         commands:\n\
         \x20 ci                                   run every test (installs what it needs)\n\
         \x20 fuzz [--seconds N] [TARGET...]       run fuzz targets for N seconds each (default 10)\n\
         \x20 lab [--scenario NAME] [--keep]       run scenarios on real Xen under QEMU\n\
         \x20 pingpong [--quick] [--json FILE]     the ping-pong latency bench with its peers"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        return usage();
    };
    let result = match cmd.as_str() {
        "ci" => ci::run(rest),
        "fuzz" => ci::fuzz(rest),
        "lab" => lab::run(rest),
        "pingpong" => pingpong::run(rest),
        "-h" | "--help" | "help" => return usage(),
        other => {
            eprintln!("xtask: unknown command `{other}`");
            return usage();
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {cmd}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
