//! The real path's device: one file behind a loop device with direct I/O
//! (`losetup --direct-io=on`), its kernel scheduler and tunables set per
//! run through sysfs, and always detached again (on drop, so also on an
//! error, a panic, or Ctrl-C, which the bench turns into an error).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::workload::Device;

/// Size of the backing file: 1 GiB.
pub const IMAGE_BYTES: u64 = 1 << 30;

/// A command's stdout, or an error naming the command and its stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why loop devices cannot be made here, if they cannot.
pub fn can_attach() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err("making a loop device needs root (run the bench as root, e.g. `sudo -E cargo xtask apexbench`)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err(
            "/dev/loop-control is missing: this kernel or container has no loop devices".into(),
        );
    }
    output(Command::new("losetup").arg("--version"))
        .map_err(|e| format!("losetup (util-linux) is needed: {e}"))?;
    Ok(())
}

/// Makes `path` a file of [`IMAGE_BYTES`] of written data (not sparse: a
/// hole reads back without touching the disk), unless it already is one.
pub fn ensure_image(path: &Path) -> Result<(), String> {
    if let Ok(m) = std::fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        // Allocated blocks (512-byte units) cover the whole size: written.
        if m.len() == IMAGE_BYTES && m.blocks() * 512 >= IMAGE_BYTES {
            return Ok(());
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    log::info!("writing the 1 GiB backing file {}", path.display());
    let mut f: File = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    // Incompressible-looking bytes (xorshift), one MiB at a time.
    let mut buf = vec![0u8; 1 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..IMAGE_BYTES / buf.len() as u64 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    f.sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", path.display()))
}

/// A loop device over the bench's file; detached when dropped.
#[derive(Debug)]
pub struct LoopDevice {
    dev: PathBuf,
    name: String,
    image: PathBuf,
    attached: bool,
}

impl LoopDevice {
    /// Detaches loop devices a killed earlier run left on `image`, then
    /// attaches a new one with direct I/O.
    pub fn attach(image: &Path) -> Result<Self, String> {
        let image = image
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", image.display()))?;
        let stale = output(Command::new("losetup").arg("-j").arg(&image))?;
        for line in stale.lines() {
            if let Some((dev, _)) = line.split_once(':') {
                log::warn!(
                    "detaching {dev}, left on {} by an earlier run",
                    image.display()
                );
                if let Err(e) = output(Command::new("losetup").args(["-d", dev])) {
                    log::warn!("{e}");
                }
            }
        }
        let out = output(
            Command::new("losetup")
                .args(["--direct-io=on", "-f", "--show"])
                .arg(&image),
        )?;
        let dev = PathBuf::from(out.trim());
        let name = dev
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n.starts_with("loop"))
            .ok_or_else(|| format!("losetup printed `{}`, not a loop device", out.trim()))?;
        let d = LoopDevice {
            dev,
            name,
            image,
            attached: true,
        };
        let dio = std::fs::read_to_string(d.sys("loop/dio")).unwrap_or_default();
        if dio.trim() != "1" {
            return Err(format!(
                "{} did not take direct I/O (loop/dio = {:?}): the file system under {} may not support O_DIRECT",
                d.dev.display(),
                dio.trim(),
                d.image.display()
            ));
        }
        Ok(d)
    }

    /// `/dev/loopN`.
    pub fn dev(&self) -> &Path {
        &self.dev
    }

    /// `loopN`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn sys(&self, rel: &str) -> PathBuf {
        Path::new("/sys/block").join(&self.name).join(rel)
    }

    /// Sets the kernel scheduler (`none`, `mq-deadline`, `bfq`, `kyber`)
    /// and then its tunables (files under `queue/iosched/`), reading each
    /// back: returns a note for each the kernel took at another value
    /// (it rounds mq-deadline's times to whole jiffies, for example).
    pub fn choose_scheduler(
        &self,
        sched: &str,
        tunables: &[(&str, String)],
    ) -> Result<Vec<String>, String> {
        let path = self.sys("queue/scheduler");
        std::fs::write(&path, sched)
            .map_err(|e| format!("cannot set {} to {sched}: {e}", path.display()))?;
        let now = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !now.contains(&format!("[{sched}]")) {
            return Err(format!(
                "{} reads `{}` after choosing {sched}: the kernel lacks that scheduler",
                path.display(),
                now.trim()
            ));
        }
        let mut notes = Vec::new();
        for (k, v) in tunables {
            let p = self.sys(&format!("queue/iosched/{k}"));
            std::fs::write(&p, v).map_err(|e| format!("cannot set {} to {v}: {e}", p.display()))?;
            let back = std::fs::read_to_string(&p)
                .map_err(|e| format!("cannot read {} back: {e}", p.display()))?;
            if back.trim() != v {
                notes.push(format!(
                    "{sched} {k}={v} was taken as {} by the kernel",
                    back.trim()
                ));
            }
        }
        Ok(notes)
    }

    /// Detaches the device (also done on drop).
    pub fn detach(&mut self) -> Result<(), String> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        let _ = std::fs::write(self.sys("queue/scheduler"), "none");
        output(Command::new("losetup").arg("-d").arg(&self.dev)).map(|_| ())
    }
}

impl Device for LoopDevice {
    fn path(&self) -> &Path {
        &self.dev
    }

    fn set_scheduler(
        &self,
        sched: &str,
        tunables: &[(&str, String)],
    ) -> Result<Vec<String>, String> {
        self.choose_scheduler(sched, tunables)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            eprintln!(
                "apexbench: could not detach {}: {e}; run `losetup -d {}` by hand",
                self.dev.display(),
                self.dev.display()
            );
        }
    }
}
