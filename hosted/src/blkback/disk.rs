//! The disk behind a blkback: a regular file or a block device, opened
//! with `O_DIRECT` (unless asked not to), its size in 512-byte sectors and
//! its sector sizes.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use blkfront::abi::SECTOR_SHIFT;

use super::BlkbackError;

/// The disk, shared by the handshake thread and every queue's worker.
#[derive(Debug)]
pub(crate) struct Disk {
    pub path: PathBuf,
    pub file: File,
    /// A block device (discard through `fallocate` works on both).
    pub block_device: bool,
    /// Size in 512-byte sectors, a whole number of logical sectors;
    /// changed by a resize.
    sectors: AtomicU64,
    /// Logical sector size, bytes.
    pub sector_size: u32,
    /// Physical sector size, bytes.
    pub physical_sector_size: u32,
}

impl Disk {
    /// Opens `path` (read-only when `read_only`), with `O_DIRECT` when
    /// `direct`.
    pub fn open(
        path: &Path,
        read_only: bool,
        direct: bool,
        sector_size: u32,
        physical_sector_size: u32,
    ) -> Result<Disk, BlkbackError> {
        let bad = |why: String| BlkbackError::Config(format!("disk {}: {why}", path.display()));
        if !sector_size.is_power_of_two() || !(512..=4096).contains(&sector_size) {
            return Err(bad(format!(
                "sector size {sector_size} is not a power of two from 512 to 4096"
            )));
        }
        if !physical_sector_size.is_power_of_two() || physical_sector_size < sector_size {
            return Err(bad(format!(
                "physical sector size {physical_sector_size} is not a power of two at least the sector size {sector_size}"
            )));
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path).map_err(|e| {
            bad(format!(
                "cannot open it{}: {e}; check the path and permissions (and that its filesystem supports O_DIRECT)",
                if direct { " with O_DIRECT" } else { "" }
            ))
        })?;
        let meta = file
            .metadata()
            .map_err(|e| bad(format!("cannot stat it: {e}")))?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            return Err(bad("not a regular file or a block device".into()));
        }
        let disk = Disk {
            path: path.to_path_buf(),
            file,
            block_device,
            sectors: AtomicU64::new(0),
            sector_size,
            physical_sector_size,
        };
        disk.refresh_size()?;
        Ok(disk)
    }

    /// The size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors.load(Ordering::Acquire)
    }

    /// Reads the size again (after the file or device changed size) and
    /// returns it: the bytes, rounded down to whole logical sectors, in
    /// 512-byte sectors.
    pub fn refresh_size(&self) -> Result<u64, BlkbackError> {
        let bytes = if self.block_device {
            use std::io::{Seek, SeekFrom};
            // Seeking a block device's end gives its size; a clone of the
            // descriptor shares the offset, which I/O here never uses
            // (every read and write names its offset).
            let mut f = self
                .file
                .try_clone()
                .map_err(|e| self.io_error("cloning its descriptor", e))?;
            f.seek(SeekFrom::End(0))
                .map_err(|e| self.io_error("reading its size", e))?
        } else {
            self.file
                .metadata()
                .map_err(|e| self.io_error("reading its size", e))?
                .len()
        };
        let sectors =
            bytes / u64::from(self.sector_size) * u64::from(self.sector_size >> SECTOR_SHIFT);
        self.sectors.store(sectors, Ordering::Release);
        Ok(sectors)
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> BlkbackError {
        BlkbackError::Config(format!("disk {}: {what}: {e}", self.path.display()))
    }

    /// The descriptor, for io_uring.
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}
