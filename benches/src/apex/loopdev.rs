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

/// Makes `path` a file of [`IMAGE_BYTES`] of written data, unless it
/// already is one: not sparse (a hole reads back without touching the
/// disk, and a write into it allocates) and not preallocated
/// (`fallocate` leaves unwritten extents, whose first write converts
/// them in the file system's journal). Whether the file is written is
/// asked of the file system extent by extent (`FS_IOC_FIEMAP`); where it
/// cannot tell, allocated blocks covering the size are taken as written.
pub fn ensure_image(path: &Path) -> Result<(), String> {
    if let Ok(m) = std::fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        // Allocated blocks (512-byte units) cover the whole size...
        if m.len() == IMAGE_BYTES && m.blocks() * 512 >= IMAGE_BYTES {
            // ...and no extent is a hole or unwritten.
            match File::open(path).map(|f| not_written(&f, IMAGE_BYTES)) {
                Ok(Some(0)) | Ok(None) => return Ok(()),
                Ok(Some(n)) => log::warn!(
                    "{} has {n} bytes in holes or unwritten (preallocated) extents: writing it again",
                    path.display()
                ),
                Err(e) => log::warn!("cannot open {}: {e}", path.display()),
            }
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

/// `struct fiemap_extent` of `linux/fiemap.h`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// Extents asked for per `FS_IOC_FIEMAP` call.
const FIEMAP_BATCH: usize = 64;

/// `struct fiemap` of `linux/fiemap.h` with room for [`FIEMAP_BATCH`]
/// extents after it.
#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; FIEMAP_BATCH],
}

/// `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: u64 = 0xC020_660B;
/// Flush delayed allocations before mapping.
const FIEMAP_FLAG_SYNC: u32 = 1;
/// The file's last extent.
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Allocated but never written (reads back zeroes without the disk).
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;

/// How many of the first `len` bytes of `f` are not in written extents
/// (holes, or unwritten extents a preallocation leaves); `None` when the
/// file system does not say (no `FS_IOC_FIEMAP`).
fn not_written(f: &File, len: u64) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut written = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let mut map = Fiemap {
            start: pos,
            length: len - pos,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: FIEMAP_BATCH as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); FIEMAP_BATCH],
        };
        // SAFETY: `map` is a `struct fiemap` followed by room for
        // `extent_count` extents, as FS_IOC_FIEMAP requires; the kernel
        // writes at most that many, and `map` outlives the call.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP as _, &mut map as *mut Fiemap) };
        if rc != 0 {
            return None;
        }
        let n = (map.mapped_extents as usize).min(FIEMAP_BATCH);
        if n == 0 {
            break;
        }
        let mut last = false;
        for e in &map.extents[..n] {
            let from = e.logical.max(pos);
            let to = e.logical.saturating_add(e.length).min(len);
            if e.flags & FIEMAP_EXTENT_UNWRITTEN == 0 && to > from {
                written += to - from;
            }
            pos = pos.max(to);
            last |= e.flags & FIEMAP_EXTENT_LAST != 0;
        }
        if last {
            break;
        }
    }
    Some(len.saturating_sub(written))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn holes_and_preallocated_extents_are_not_written() {
        let dir = std::env::temp_dir().join(format!("apexbench-fiemap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 1u64 << 20;
        let path = dir.join("f");
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.set_len(len).unwrap();
        let Some(sparse) = not_written(&f, len) else {
            // This file system does not map extents: nothing to check.
            let _ = std::fs::remove_dir_all(&dir);
            return;
        };
        assert_eq!(sparse, len, "a sparse file is all hole");
        // SAFETY: a valid descriptor; fallocate has no memory arguments.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
        if rc == 0 {
            assert_eq!(
                not_written(&f, len),
                Some(len),
                "preallocated, never written"
            );
        }
        (&f).write_all(&vec![0x5au8; (len / 2) as usize]).unwrap();
        f.sync_all().unwrap();
        assert_eq!(not_written(&f, len), Some(len / 2), "half written");
        (&f).write_all(&vec![0xa5u8; (len / 2) as usize]).unwrap();
        f.sync_all().unwrap();
        assert_eq!(not_written(&f, len), Some(0), "all written");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
