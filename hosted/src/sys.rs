//! Thin, checked wrappers over the Linux system calls the hosted platform
//! uses: sealed memfds, memory mappings, eventfds and `SOCK_SEQPACKET` Unix
//! sockets that carry file descriptors (`SCM_RIGHTS`).
//!
//! Every `unsafe` block of the crate that talks to the kernel lives here, so
//! the rest of the crate deals in owned descriptors and [`Mmap`] regions.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

/// The page size of the emulated machine (and of the host: checked at start).
pub(crate) const PAGE: usize = 4096;

/// Seals every shared memfd carries: its size can never change, so a peer
/// that maps it can never be made to fault (`SIGBUS`) by the owner
/// truncating it.
const SIZE_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Checks that the host's page size is [`PAGE`]: the emulated frame numbers
/// are page indices of a memfd, and mappings are made page by page.
pub(crate) fn check_page_size() -> io::Result<()> {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size == PAGE as libc::c_long {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("host page size is {size}, the hosted platform needs {PAGE}-byte pages"),
        ))
    }
}

/// Creates a memfd of `len` bytes whose size is sealed (it reads as zeros).
pub(crate) fn sealed_memfd(name: &str, len: u64) -> io::Result<File> {
    let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memfd name has a NUL"))?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the
    // call; memfd_create reads nothing else of ours.
    let fd = cvt(unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) })?;
    // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len)?;
    // SAFETY: F_ADD_SEALS takes an integer argument and `file` is open.
    cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS | libc::F_SEAL_SEAL) })?;
    Ok(file)
}

/// Checks that a memfd received from another process has a sealed size and
/// returns that size. A file whose size can change could be truncated under
/// our mappings and make us fault.
pub(crate) fn sealed_size(file: &File) -> io::Result<u64> {
    // SAFETY: F_GET_SEALS takes no argument beyond the open descriptor.
    let seals = cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) })?;
    if seals & SIZE_SEALS != SIZE_SEALS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "shared memory is not sealed against resizing (F_SEAL_SHRINK|F_SEAL_GROW)",
        ));
    }
    Ok(file.metadata()?.len())
}

/// Gives the pages `[offset, offset + len)` of a memfd back to the kernel;
/// they read as zeros afterwards.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: fallocate takes integers only; `file` is open.
    cvt(unsafe {
        libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len)
    })?;
    Ok(())
}

/// A memory mapping, unmapped on drop.
///
/// The region is shared with other processes, so the crate only ever
/// accesses it through raw pointers with atomic or volatile accesses, never
/// through Rust references.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an `Mmap` is an address range; the memory is only accessed
// atomically or volatilely (see the type's docs), which is sound from any
// thread.
unsafe impl Send for Mmap {}
// SAFETY: as above; `&Mmap` exposes only the address and length.
unsafe impl Sync for Mmap {}

fn prot(writable: bool) -> libc::c_int {
    if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    }
}

fn to_off(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))
}

impl Mmap {
    /// Maps `len` bytes of `fd` from `offset` (page-aligned), shared.
    /// `PROT_READ` only unless `writable`: writes then fault.
    ///
    /// The caller checks that the range lies inside the (sealed) file, or
    /// accesses past its end would raise `SIGBUS`.
    pub(crate) fn shared(fd: BorrowedFd<'_>, offset: u64, len: usize, writable: bool) -> io::Result<Self> {
        if len == 0 || offset % PAGE as u64 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty or unaligned mapping"));
        }
        let off = to_off(offset)?;
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED), so no
        // existing memory is affected; the arguments are plain integers and
        // an open descriptor.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot(writable), libc::MAP_SHARED, fd.as_raw_fd(), off) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned address 0"))?;
        Ok(Mmap { ptr, len })
    }

    /// Reserves `len` bytes of address space with no access (`PROT_NONE`),
    /// to map pages into with [`Mmap::map_over`].
    pub(crate) fn reserve(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty reservation"));
        }
        // SAFETY: a fresh anonymous mapping chosen by the kernel; it affects
        // no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned address 0"))?;
        Ok(Mmap { ptr, len })
    }

    /// Maps `len` bytes of `fd` from `offset` over bytes `[at, at + len)` of
    /// this region (`MAP_FIXED`), shared.
    pub(crate) fn map_over(
        &self,
        at: usize,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<()> {
        let end = at.checked_add(len).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 || end > self.len || at % PAGE != 0 || offset % PAGE as u64 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "mapping outside the reserved region"));
        }
        let off = to_off(offset)?;
        // SAFETY: `[at, at + len)` lies inside this region (checked above),
        // which this value owns and which holds no Rust object: replacing
        // its pages with MAP_FIXED affects nothing else. The address is
        // page-aligned because the region and `at` are.
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().add(at).cast(),
                len,
                prot(writable),
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The first byte.
    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: this value owns the mapping `[ptr, ptr + len)` and nothing
        // refers to it any more (every user holds the `Mmap` or something
        // that owns it).
        if unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) } != 0 {
            log::error!("munmap of {} bytes at {:p} failed: {}", self.len, self.ptr, io::Error::last_os_error());
        }
    }
}

/// Creates a non-blocking eventfd.
pub(crate) fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd takes integers only.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: eventfd just returned this descriptor; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Makes a descriptor received from another process non-blocking, so that
/// a peer that hands us something other than an eventfd cannot make a
/// write to it block.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take integers; `fd` is open.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Adds one to an eventfd's counter (wakes whoever polls it).
pub(crate) fn eventfd_signal(f: &File) -> io::Result<()> {
    match (&*f).write(&1u64.to_ne_bytes()) {
        Ok(8) => Ok(()),
        Ok(n) => Err(io::Error::other(format!("short eventfd write ({n} bytes)"))),
        // The counter is saturated: the reader is already woken.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resets an eventfd's counter to zero without blocking.
pub(crate) fn eventfd_drain(f: &File) {
    let mut buf = [0u8; 8];
    match (&*f).read(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => log::warn!("draining an eventfd failed: {e}"),
    }
}

/// Sleeps in `ppoll` until at least one of `fds` is readable or `timeout`
/// passes (`None`: forever). Returns the indices of the readable ones
/// (empty on a timeout or an interrupted wait). Level-triggered: a
/// readable eventfd stays readable until it is drained.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<usize>> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|f| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10^9: fits every c_long.
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfds` holds `pfds.len()` valid pollfd structures of open
    // descriptors (borrowed for the call), `tsp` is null or points to `ts`,
    // and the signal mask pointer is null (unchanged); all outlive the call.
    let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, tsp, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(Vec::new()) } else { Err(e) };
    }
    Ok(pfds.iter().enumerate().filter(|(_, p)| p.revents != 0).map(|(i, _)| i).collect())
}


fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is longer than {} bytes (or has a NUL); use a shorter directory",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = (size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    Ok((addr, len))
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes integers only.
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A listening `SOCK_SEQPACKET` socket bound to `path`.
pub(crate) fn seqpacket_listen(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    let (addr, len) = sockaddr(path)?;
    // SAFETY: `addr` is an initialised sockaddr_un of `len` bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })?;
    // SAFETY: listen takes integers only.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
    Ok(fd)
}

/// A `SOCK_SEQPACKET` socket connected to `path`.
pub(crate) fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    let (addr, len) = sockaddr(path)?;
    // SAFETY: `addr` is an initialised sockaddr_un of `len` bytes.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })?;
    Ok(fd)
}

/// Accepts one connection.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed (we do not want the peer's
    // address); the flags are integers.
    let fd = cvt(unsafe {
        libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
    })?;
    // SAFETY: accept4 just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 4;

/// Control buffer large enough for `MAX_FDS` descriptors, aligned for
/// `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

const _: () = assert!(size_of::<libc::cmsghdr>() + MAX_FDS * size_of::<libc::c_int>() <= 64);

/// Sends one message with up to [`MAX_FDS`] descriptors.
pub(crate) fn send_msg(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors for one message"));
    }
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = (fds.len() * size_of::<libc::c_int>()) as libc::c_uint;
        // SAFETY: CMSG_SPACE is pure arithmetic.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` points to `cbuf`, which holds `space <= 64` bytes
        // (checked by the const assertion above), so the first header and
        // its data fit; `cbuf` is aligned for cmsghdr and outlives this
        // block. The data is written unaligned-safely.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() {
                return Err(io::Error::other("control buffer too small"));
            }
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    // SAFETY: `msg` describes `data` (read-only for sendmsg) and `cbuf`,
    // both valid for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::other("short sendmsg on a SOCK_SEQPACKET socket"));
    }
    Ok(())
}

/// Receives one message into `buf` and the descriptors that came with it
/// (owned, close-on-exec). Returns `Ok((0, []))` when the peer closed.
/// A message that does not fit `buf` or carried too many descriptors is an
/// error (the descriptors that did arrive are closed).
pub(crate) fn recv_msg(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = MaybeUninit::<CmsgBuf>::zeroed();
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<CmsgBuf>() as _;
    let n = loop {
        // SAFETY: `msg` describes `buf` and `cbuf`, both writable and valid
        // for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_controllen` bytes of `cbuf` with
    // well-formed control messages; CMSG_FIRSTHDR/NXTHDR stay inside that
    // length, and each SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) /
    // sizeof(int)` descriptors that are now ours (read unaligned-safely).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..bytes / size_of::<libc::c_int>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message or its descriptors were truncated"));
    }
    Ok((n, fds))
}

/// Shuts a socket down both ways, waking a thread blocked on it.
pub(crate) fn shutdown(sock: BorrowedFd<'_>) {
    // SAFETY: shutdown takes integers only; `sock` is open.
    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
}

/// An edge-triggered epoll instance watching `efd` for readability.
pub(crate) fn epoll_for(efd: &File) -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes an integer flag.
    let ep = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: epoll_create1 just returned this descriptor; nothing else owns it.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: 0 };
    // SAFETY: both descriptors are open and `ev` is a valid epoll_event that
    // outlives the call.
    cvt(unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, efd.as_raw_fd(), &mut ev) })?;
    Ok(ep)
}

/// Sleeps in `epoll_wait` on a one-descriptor epoll instance until it
/// reports an event or `timeout` passes (`None`: forever). Returns whether
/// an event came; an interrupted wait returns `false`.
pub(crate) fn epoll_wait_one(ep: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = match timeout {
        None => -1,
        // Round up so a short timeout still sleeps rather than spins.
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: `ep` is open and `ev` is room for the one event asked for.
    let r = unsafe { libc::epoll_wait(ep.as_raw_fd(), &mut ev, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(r > 0)
}
