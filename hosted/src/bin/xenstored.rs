//! The hosted xenstore daemon as a standalone program.
//!
//! ```text
//! xenstored --socket PATH [--verbose]
//! ```
//!
//! Serves `xs_wire` on the Unix socket `PATH` until SIGINT or SIGTERM, then
//! removes the socket. Connections start as dom0; see
//! `hosted::xenstore` for connecting as another domain.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hosted::xenstore::XenstoreDaemon;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(std::io::stderr(), "[{}] {}", record.level(), record.args());
        }
    }
    fn flush(&self) {}
}

fn usage() -> ! {
    eprintln!("usage: xenstored --socket PATH [--verbose]");
    std::process::exit(2);
}

fn main() {
    let mut socket = None;
    let mut level = log::LevelFilter::Info;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = Some(args.next().unwrap_or_else(|| usage())),
            "--verbose" | "-v" => level = log::LevelFilter::Debug,
            "--help" | "-h" => usage(),
            other => {
                eprintln!("xenstored: unknown argument {other:?}");
                usage();
            }
        }
    }
    let Some(socket) = socket else { usage() };
    let logger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; the function pointer has the signature
        // `signal` expects.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
    let daemon = match XenstoreDaemon::spawn(&socket) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("xenstored: cannot listen on {socket}: {e}; check the directory exists and is writable");
            std::process::exit(1);
        }
    };
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(daemon);
}
