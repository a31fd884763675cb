//! Linux's Xen devices, `/dev/xen/evtchn` and `/dev/xen/gntdev`, through
//! their ioctls (`include/uapi/xen/evtchn.h`, `gntdev.h`).

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::time::Duration;

extern "C" {
    fn ioctl(fd: i32, req: u64, ...) -> i32;
    fn mmap(addr: *mut c_void, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut c_void;
    fn munmap(addr: *mut c_void, len: usize) -> i32;
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

const POLLIN: i16 = 1;
const PROT_READ: i32 = 1;
const PROT_WRITE: i32 = 2;
const MAP_SHARED: i32 = 1;

/// `_IOC(_IOC_NONE, ty, nr, size)`.
const fn ioc_none(ty: u8, nr: u8, size: usize) -> u64 {
    ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

const IOCTL_EVTCHN_BIND_INTERDOMAIN: u64 = ioc_none(b'E', 1, 8);
const IOCTL_EVTCHN_UNBIND: u64 = ioc_none(b'E', 3, 4);
const IOCTL_EVTCHN_NOTIFY: u64 = ioc_none(b'E', 4, 4);
const IOCTL_GNTDEV_MAP_GRANT_REF: u64 = ioc_none(b'G', 0, 24);
const IOCTL_GNTDEV_UNMAP_GRANT_REF: u64 = ioc_none(b'G', 1, 16);

fn open_rw(path: &str) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {path}: {e} (is the Xen module loaded in dom0?)")))
}

/// An interdomain event channel bound through `/dev/xen/evtchn`.
pub struct EventChannel {
    dev: File,
    /// The local port.
    pub port: u32,
}

impl EventChannel {
    /// Binds to `remote_port` of domain `domid`.
    pub fn bind(domid: u32, remote_port: u32) -> io::Result<Self> {
        let dev = open_rw("/dev/xen/evtchn")?;
        let arg = [domid, remote_port];
        // SAFETY: the ioctl reads a `struct ioctl_evtchn_bind_interdomain`
        // (two u32s) from `arg`, which lives across the call.
        let rc = unsafe { ioctl(dev.as_raw_fd(), IOCTL_EVTCHN_BIND_INTERDOMAIN, arg.as_ptr()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("binding to port {remote_port} of domain {domid}: {e}")));
        }
        Ok(EventChannel { dev, port: rc as u32 })
    }

    /// Notifies the remote end.
    pub fn notify(&self) -> io::Result<()> {
        let arg = self.port;
        // SAFETY: the ioctl reads a `struct ioctl_evtchn_notify` (one u32).
        let rc = unsafe { ioctl(self.dev.as_raw_fd(), IOCTL_EVTCHN_NOTIFY, &arg as *const u32) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for an event up to `timeout`; returns whether one came. The
    /// port is unmasked again before returning.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = PollFd { fd: self.dev.as_raw_fd(), events: POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { poll(&mut pfd, 1, ms) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if rc == 0 {
            return Ok(false);
        }
        let mut buf = [0u8; 4];
        self.dev.read_exact(&mut buf)?;
        // Writing the port back unmasks it.
        self.dev.write_all(&buf)?;
        Ok(true)
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        let arg = self.port;
        // SAFETY: the ioctl reads a `struct ioctl_evtchn_unbind` (one u32).
        unsafe { ioctl(self.dev.as_raw_fd(), IOCTL_EVTCHN_UNBIND, &arg as *const u32) };
    }
}

/// A foreign page mapped through `/dev/xen/gntdev`.
pub struct GrantMapping {
    dev: File,
    index: u64,
    ptr: Option<NonNull<u8>>,
}

#[repr(C)]
struct MapGrantRef {
    count: u32,
    pad: u32,
    index: u64,
    domid: u32,
    gref: u32,
}

impl GrantMapping {
    /// Maps grant `gref` of domain `domid`, read-write.
    pub fn map(domid: u32, gref: u32) -> io::Result<Self> {
        let dev = open_rw("/dev/xen/gntdev")?;
        let mut arg = MapGrantRef { count: 1, pad: 0, index: 0, domid, gref };
        // SAFETY: the ioctl reads and writes a `struct
        // ioctl_gntdev_map_grant_ref` with one ref, which `arg` is.
        let rc = unsafe { ioctl(dev.as_raw_fd(), IOCTL_GNTDEV_MAP_GRANT_REF, &mut arg as *mut MapGrantRef) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut m = GrantMapping { dev, index: arg.index, ptr: None };
        // SAFETY: mapping one page of the gntdev file at the offset the
        // ioctl returned; the kernel maps the grant now (Xen checks it).
        let p = unsafe { mmap(std::ptr::null_mut(), 4096, PROT_READ | PROT_WRITE, MAP_SHARED, m.dev.as_raw_fd(), arg.index as i64) };
        if p as isize == -1 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mapping grant {gref} of domain {domid}: {e}")));
        }
        m.ptr = NonNull::new(p.cast());
        Ok(m)
    }

    /// The mapped page.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr.expect("mapped")
    }

    /// Reads byte `off` (volatile: the granting domain may write it).
    pub fn read(&self, off: usize) -> u8 {
        assert!(off < 4096);
        // SAFETY: `off` is inside the mapped page.
        unsafe { self.ptr().as_ptr().add(off).read_volatile() }
    }

    /// Writes byte `off`.
    pub fn write(&self, off: usize, v: u8) {
        assert!(off < 4096);
        // SAFETY: `off` is inside the mapped, writable page.
        unsafe { self.ptr().as_ptr().add(off).write_volatile(v) }
    }

    /// Unmaps the page (the grant is released in Xen).
    pub fn unmap(mut self) -> io::Result<()> {
        self.release()
    }

    fn release(&mut self) -> io::Result<()> {
        if let Some(p) = self.ptr.take() {
            // SAFETY: `p` is the one-page mapping made in `map`; nothing
            // refers to it after this.
            if unsafe { munmap(p.as_ptr().cast(), 4096) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let arg: [u64; 2] = [self.index, 1];
            // SAFETY: the ioctl reads a `struct ioctl_gntdev_unmap_grant_ref`
            // (index u64, count u32, pad u32).
            if unsafe { ioctl(self.dev.as_raw_fd(), IOCTL_GNTDEV_UNMAP_GRANT_REF, arg.as_ptr()) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Parses a decimal argument.
pub fn arg_u32(args: &[String], i: usize, what: &str) -> Result<u32, String> {
    let s = args.get(i).ok_or_else(|| format!("missing argument {i}: {what}"))?;
    s.trim().parse().map_err(|e| format!("argument {i} ({what}) `{s}`: {e}"))
}
