//! What a lab guest does first and last: send `log` records to the
//! console, and leave its verdict on the console and in xenstore, where
//! dom0's check reads it.

use alloc::format;
use alloc::string::String;
use core::fmt::Display;

/// `log` records on the console, `Info` and above (the drivers, xenbus and
/// pcifront log through `log`).
pub struct ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            crate::println!("[{} {}] {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Sends `log` records to the console (a second call changes nothing).
pub fn log_to_console() {
    static LOGGER: ConsoleLogger = ConsoleLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Writes the outcome of the guest's run as `ok <figures>` or
/// `fail <why>` to the console (prefixed with `name`) and to the xenstore
/// key `key`; returns the run's error, or an error if the verdict could
/// not be written.
pub fn verdict<T: Display>(name: &str, key: &str, r: Result<T, String>) -> Result<(), String> {
    let verdict = match &r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("fail {e}"),
    };
    crate::println!("{name}: {verdict}");
    super::xs_write(key, &verdict).map_err(|e| format!("writing the verdict to {key}: {e}"))?;
    r.map(drop)
}

/// Milliseconds since `t` (a reading of [`super::time::now_ns`]).
pub fn ms_since(t: u64) -> u64 {
    super::time::now_ns().saturating_sub(t) / 1_000_000
}
