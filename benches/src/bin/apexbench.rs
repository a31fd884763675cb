//! The APEX scheduler bench: `cargo xtask apexbench [--quick] [--json FILE]
//! [--svg FILE] [--only NAME]... [--no-linux]` (`--help` explains every
//! entry, the Linux peers' settings and the targets).
//!
//! Our I/O scheduler (`iosched`) against FIFO, strict priority and an
//! mq-deadline-like policy on a simulated device, and against Linux's
//! mq-deadline, bfq and kyber (fio on a loop device) with the same
//! workloads; see [`benches::apex`].

use std::process::ExitCode;

fn main() -> ExitCode {
    benches::apex::main_from(std::env::args_os())
}
