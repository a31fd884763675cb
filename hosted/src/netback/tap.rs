//! The TAP attachment: a Linux TAP device (`/dev/net/tun`, `IFF_TAP |
//! IFF_NO_PI`) as a port of the switch, so hosted domains reach the host's
//! network stack.
//!
//! Frames the switch sends to the TAP port are written to the device
//! (without blocking: a full device queue drops the frame); a reader thread
//! reads the device and hands each frame to the data plane. Frames with a
//! blank checksum are completed before they are written; GSO frames are
//! dropped (the device is opened without `IFF_VNET_HDR`, so it cannot
//! carry their metadata). Creating a TAP device needs `CAP_NET_ADMIN`.

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use grant_tables::{EventChannels, Port};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};

use super::dataplane::Cmd;
use crate::HostedPlatform;

/// `TUNSETIFF` (`_IOW('T', 202, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `SIOCGIFFLAGS`.
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
/// `SIOCSIFFLAGS`.
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_UP: libc::c_short = 0x0001;

/// How to attach a TAP device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// The interface name (at most 15 bytes); an existing persistent TAP
    /// device of that name is attached, otherwise one is created (and goes
    /// when the backend stops).
    pub name: String,
    /// Bring the interface up.
    pub up: bool,
}

impl TapConfig {
    /// A TAP device named `name`, brought up.
    pub fn new(name: &str) -> Self {
        TapConfig {
            name: name.into(),
            up: true,
        }
    }
}

/// An `ifreq` as the two ioctls use it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_short) -> io::Result<IfReq> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 15 || b.contains(&0) || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name (1 to 15 bytes, no '/' or NUL)"),
        ));
    }
    let mut r = IfReq {
        name: [0; 16],
        flags,
        _pad: [0; 22],
    };
    r.name[..b.len()].copy_from_slice(b);
    Ok(r)
}

fn ioctl(fd: &impl AsRawFd, req: libc::c_ulong, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor; the three requests used here take
    // a `struct ifreq` (40 bytes on x86-64: a 16-byte name and a 24-byte
    // union whose first member used here is a `short` of flags), which
    // `IfReq` is, writable for the call (the kernel writes the name or the
    // flags back).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, (ifr as *mut IfReq).cast::<c_void>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

/// An open TAP device.
pub(crate) struct Tap {
    file: Arc<File>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    name: String,
}

impl Tap {
    /// Opens (or creates) the device.
    pub fn open(cfg: &TapConfig) -> io::Result<Tap> {
        let fd = rustix::fs::open(
            "/dev/net/tun",
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("opening /dev/net/tun: {e}"),
            )
        })?;
        let file = File::from(fd);
        let mut r = ifreq(&cfg.name, IFF_TAP | IFF_NO_PI)?;
        ioctl(&file, TUNSETIFF, &mut r).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "TUNSETIFF {}: {e} (creating a TAP device needs CAP_NET_ADMIN)",
                    cfg.name
                ),
            )
        })?;
        if cfg.up {
            let sock = rustix::net::socket(
                rustix::net::AddressFamily::INET,
                rustix::net::SocketType::DGRAM,
                None,
            )?;
            let mut q = ifreq(&cfg.name, 0)?;
            ioctl(&sock, SIOCGIFFLAGS, &mut q)?;
            q.flags |= IFF_UP;
            ioctl(&sock, SIOCSIFFLAGS, &mut q)
                .map_err(|e| io::Error::new(e.kind(), format!("bringing {} up: {e}", cfg.name)))?;
        }
        Ok(Tap {
            file: Arc::new(file),
            stop: Arc::new(AtomicBool::new(false)),
            reader: None,
            name: cfg.name.clone(),
        })
    }

    /// Starts the thread that reads frames from the device into `cmds`,
    /// waking the data plane through `wake`.
    pub fn start_reader(
        &mut self,
        plat: HostedPlatform,
        cmds: mpsc::Sender<Cmd>,
        wake: Port,
    ) -> io::Result<()> {
        let file = self.file.clone();
        let stop = self.stop.clone();
        let h = std::thread::Builder::new()
            .name(format!("netback-tap-{}", self.name))
            .spawn(move || {
                let mut buf = vec![0u8; 65536 + 64];
                while !stop.load(Ordering::Relaxed) {
                    let mut fds = [PollFd::new(&*file, PollFlags::IN)];
                    let ts = Timespec {
                        tv_sec: 0,
                        tv_nsec: 100_000_000,
                    };
                    match rustix::event::poll(&mut fds, Some(&ts)) {
                        Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                        Ok(_) => {}
                        Err(e) => {
                            log::error!(
                                "netback: polling the TAP device failed: {e}; TAP reader stops"
                            );
                            return;
                        }
                    }
                    loop {
                        match rustix::io::read(&*file, &mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if cmds.send(Cmd::Tap(buf[..n].to_vec())).is_err() {
                                    return;
                                }
                                let _ = plat.notify(wake);
                            }
                            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => break,
                            Err(e) => {
                                log::error!(
                                    "netback: reading the TAP device failed: {e}; TAP reader stops"
                                );
                                return;
                            }
                        }
                    }
                }
            })?;
        self.reader = Some(h);
        Ok(())
    }

    /// Writes one frame; `false` when the device did not take it.
    pub fn write(&self, frame: &[u8]) -> bool {
        matches!(rustix::io::write(&*self.file, frame), Ok(n) if n == frame.len())
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}
