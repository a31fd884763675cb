//! What the entries that run a peer process share: a fresh directory for
//! a hosted hypervisor's files, and a guard that kills the peer on every
//! exit path.

use std::path::{Path, PathBuf};
use std::process::Child;

/// A new directory `pingpong-TAG-PID-N` under `/dev/shm` (memory-backed,
/// as the hosted platform's shared pages want), or the temporary
/// directory where there is no `/dev/shm`.
pub fn fresh_dir(tag: &str) -> Result<PathBuf, String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "pingpong-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Kills the child on every exit path.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
