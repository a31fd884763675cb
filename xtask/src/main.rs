//! `cargo xtask`: everything beyond plain cargo.
//!
//! - `cargo xtask ci`: every check of the suite, installing what it needs.
//! - `cargo xtask fuzz [--seconds N] [TARGET...]`: fuzz targets for N
//!   seconds each.
//! - `cargo xtask lab [--scenario NAME]... [--keep] [--prepare]`: the Xen
//!   lab.
//! - `cargo xtask pingpong [BENCH OPTIONS]`: the ping-pong bench.
//! - `cargo xtask blkbench [BENCH OPTIONS]`: the block bench against fio.
//!
//! `cargo xtask --help` and `cargo xtask <command> --help` explain each
//! command and its options (a bench's `--help` comes from the bench).

mod bench;
mod ci;
mod lab;
mod setup;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Everything beyond plain cargo: CI, the Xen lab, fuzzing and the benches.
#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every check of the suite, installing what it needs.
    ///
    /// Installs what is missing (libxen-dev, the x86_64-unknown-none target,
    /// nightly Miri, cargo-fuzz, the lab's packages), then runs clippy, the
    /// no_std builds, every test, Miri, a smoke run of every fuzz target and
    /// the Xen lab.
    Ci(ci::CiArgs),
    /// Runs fuzz targets for a while each.
    ///
    /// Uses cargo-fuzz on the nightly toolchain; a finding is reported with
    /// the command that reproduces it.
    Fuzz(ci::FuzzArgs),
    /// Runs lab scenarios on real Xen under QEMU (as root).
    ///
    /// lwdom guests on Debian's Xen 4.17 with a Linux 6.1 dom0, booted under
    /// QEMU without KVM; the image is cached under /var/cache/xen-suite-lab.
    Lab(lab::LabArgs),
    /// The ping-pong latency bench with its peers (`pingpong --help` explains them).
    ///
    /// Installs Xen's headers when missing, builds the bench in release mode
    /// and passes every option to it: `cargo xtask pingpong --help` lists its
    /// options and explains every entry.
    #[command(disable_help_flag = true)]
    Pingpong(bench::BenchArgs),
    /// The block bench: the hosted blkback against fio (`blkbench --help` explains it).
    ///
    /// Installs fio (and Xen's headers) when missing, builds the bench in
    /// release mode and passes every option to it: 4 KiB random reads and
    /// writes at depth 1 and 32, 1 MiB sequential ones, on a file under
    /// target/bench/ (`--size-mib N`, default 1024, created once).
    #[command(disable_help_flag = true)]
    Blkbench(bench::BenchArgs),
}

impl Cmd {
    fn name(&self) -> &'static str {
        match self {
            Cmd::Ci(_) => "ci",
            Cmd::Fuzz(_) => "fuzz",
            Cmd::Lab(_) => "lab",
            Cmd::Pingpong(_) => "pingpong",
            Cmd::Blkbench(_) => "blkbench",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Ci(a) => ci::run(a),
        Cmd::Fuzz(a) => ci::fuzz(a),
        Cmd::Lab(a) => lab::run(a),
        Cmd::Pingpong(a) => bench::run("pingpong", a),
        Cmd::Blkbench(a) => bench::run_blkbench(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {}: error: {e}", cli.cmd.name());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_parse_their_options() {
        let c = Cli::try_parse_from(["xtask", "ci", "--no-lab", "--fuzz-seconds", "3"]).unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Ci(ci::CiArgs {
                no_lab: true,
                fuzz_seconds: 3
            })
        ));
        let c = Cli::try_parse_from(["xtask", "fuzz", "--seconds", "5", "a", "b"]).unwrap();
        let Cmd::Fuzz(f) = c.cmd else {
            panic!("not fuzz")
        };
        assert_eq!(
            (f.seconds, f.targets),
            (5, vec!["a".to_string(), "b".into()])
        );
        let c = Cli::try_parse_from(["xtask", "lab", "--scenario", "boot,ring", "--keep"]).unwrap();
        let Cmd::Lab(l) = c.cmd else {
            panic!("not lab")
        };
        assert_eq!(l.scenario, ["boot", "ring"]);
        assert!(l.keep && !l.prepare);
        assert!(Cli::try_parse_from(["xtask", "ci", "--bogus"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "nope"]).is_err());
    }

    #[test]
    fn bench_options_pass_through_untouched_help_included() {
        let c =
            Cli::try_parse_from(["xtask", "pingpong", "--quick", "--help", "--only", "a"]).unwrap();
        let Cmd::Pingpong(b) = c.cmd else {
            panic!("not pingpong")
        };
        assert_eq!(b.args, ["--quick", "--help", "--only", "a"]);
        let c = Cli::try_parse_from(["xtask", "pingpong"]).unwrap();
        let Cmd::Pingpong(b) = c.cmd else {
            panic!("not pingpong")
        };
        assert!(b.args.is_empty());
        let c = Cli::try_parse_from(["xtask", "blkbench", "--quick", "--size-mib", "64"]).unwrap();
        let Cmd::Blkbench(b) = c.cmd else {
            panic!("not blkbench")
        };
        assert_eq!(b.args, ["--quick", "--size-mib", "64"]);
    }

    #[test]
    fn help_covers_every_command_and_lab_lists_its_scenarios() {
        let mut cmd = Cli::command();
        let help = cmd.render_long_help().to_string();
        for c in ["ci", "fuzz", "lab", "pingpong", "blkbench"] {
            assert!(help.contains(c), "{c} missing from:\n{help}");
        }
        let lab = Cli::try_parse_from(["xtask", "lab", "--help"])
            .unwrap_err()
            .to_string();
        assert!(
            lab.contains("--scenario") && lab.contains("negative control"),
            "{lab}"
        );
        let ci = Cli::try_parse_from(["xtask", "ci", "--help"])
            .unwrap_err()
            .to_string();
        assert!(
            ci.contains("--no-lab") && ci.contains("--fuzz-seconds"),
            "{ci}"
        );
    }
}
