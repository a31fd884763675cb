//! A writer for the `newc` cpio format, the format Linux unpacks as an
//! initramfs. Archives can be concatenated: the kernel unpacks them in turn,
//! later entries replacing earlier ones.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Writes one newc archive.
pub struct CpioWriter<W: Write> {
    out: BufWriter<W>,
    next_ino: u32,
    written: u64,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out: BufWriter::with_capacity(1 << 20, out),
            next_ino: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            let zeros = [0u8; 4];
            self.out.write_all(&zeros[..4 - rem])?;
            self.written += (4 - rem) as u64;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &str,
        mode: u32,
        mtime: u64,
        size: u64,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let size32 = u32::try_from(size).map_err(|_| {
            io::Error::other(format!(
                "{name}: {size} bytes is too large for a newc archive"
            ))
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & 0o170000 == S_IFDIR { 2 } else { 1 };
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino,
            mode,
            0,
            0,
            nlink,
            mtime as u32,
            size32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.write_all(hdr.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.written += hdr.len() as u64 + name.len() as u64 + 1;
        self.pad()
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, S_IFDIR | perm, 0, 0, (0, 0))
    }

    /// Adds a regular file with the given contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.header(name, S_IFREG | perm, 0, data.len() as u64, (0, 0))?;
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        self.pad()
    }

    /// Adds the tree under `root` (not `root` itself), entries named
    /// relative to it, directories before their contents.
    pub fn tree(&mut self, root: &Path) -> io::Result<()> {
        self.tree_at(root, "")
    }

    fn tree_at(&mut self, dir: &Path, prefix: &str) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let fname = e.file_name();
            let fname = fname.to_string_lossy();
            let name = if prefix.is_empty() {
                fname.to_string()
            } else {
                format!("{prefix}/{fname}")
            };
            let path = e.path();
            let md = fs::symlink_metadata(&path)?;
            let ft = md.file_type();
            let mode = md.mode();
            let mtime = md.mtime().max(0) as u64;
            if ft.is_dir() {
                self.header(&name, mode, mtime, 0, (0, 0))?;
                self.tree_at(&path, &name)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)?;
                let t = target.as_os_str().as_encoded_bytes();
                self.header(&name, mode, mtime, t.len() as u64, (0, 0))?;
                self.out.write_all(t)?;
                self.written += t.len() as u64;
                self.pad()?;
            } else if ft.is_file() {
                let data = fs::read(&path)?;
                self.header(&name, mode, mtime, data.len() as u64, (0, 0))?;
                self.out.write_all(&data)?;
                self.written += data.len() as u64;
                self.pad()?;
            } else if ft.is_char_device() || ft.is_block_device() {
                let rdev = md.rdev();
                let major = (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)) as u32;
                let minor = (((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)) as u32;
                self.header(&name, mode, mtime, 0, (major, minor))?;
            } else {
                // FIFOs and sockets carry no data.
                self.header(&name, mode, mtime, 0, (0, 0))?;
            }
        }
        Ok(())
    }

    /// Writes the trailer and flushes.
    pub fn finish(mut self) -> io::Result<()> {
        self.header("TRAILER!!!", 0, 0, 0, (0, 0))?;
        // Pad the archive to 512 bytes, as cpio(1) does.
        let rem = (self.written % 512) as usize;
        if rem != 0 {
            self.out.write_all(&vec![0u8; 512 - rem])?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::CpioWriter;

    fn field(hdr: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&hdr[6 + 8 * i..14 + 8 * i]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    #[test]
    fn newc_entries_are_aligned_and_end_with_the_trailer() {
        let mut out = Vec::new();
        let mut w = CpioWriter::new(&mut out);
        w.dir("lab", 0o755).unwrap();
        w.file("lab/x", 0o644, b"hello").unwrap();
        w.finish().unwrap();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(field(&out, 1), 0o040755);
        assert_eq!(field(&out, 11), 4); // "lab" + NUL
                                        // Second entry: header at a 4-byte boundary after "lab\0" (110 + 4).
        let second = (110 + 4usize).next_multiple_of(4);
        assert_eq!(&out[second..second + 6], b"070701");
        assert_eq!(field(&out[second..], 1), 0o100644);
        assert_eq!(field(&out[second..], 6), 5);
        let name_end = second + 110 + 6;
        let data = name_end.next_multiple_of(4);
        assert_eq!(&out[data..data + 5], b"hello");
        let trailer = (data + 5).next_multiple_of(4);
        assert_eq!(&out[trailer + 110..trailer + 120], b"TRAILER!!!");
        assert_eq!(out.len() % 512, 0);
    }
}
