//! Thin, checked wrappers over the Linux system calls the hosted platform
//! uses: sealed memfds, memory mappings, eventfds, futexes on shared memory
//! and `SOCK_SEQPACKET` Unix sockets that carry file descriptors
//! (`SCM_RIGHTS`).
//!
//! The calls go through `rustix`, whose wrappers are safe for everything
//! but the mappings: `mmap` and `munmap` stay `unsafe` because they can
//! replace or remove memory Rust code uses, and [`Mmap`] is where that is
//! proven. The rest of the crate deals in owned descriptors and [`Mmap`]
//! regions.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::event::{epoll, EventfdFlags, Timespec};
use rustix::fs::{FallocateFlags, MemfdFlags, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, Shutdown, SocketAddrUnix, SocketFlags, SocketType,
};
use rustix::thread::futex;

#[cfg(test)]
mod tests;

/// The page size of the emulated machine (and of the host: checked at start).
pub(crate) const PAGE: usize = 4096;

/// Seals every shared memfd carries: its size can never change, so a peer
/// that maps it can never be made to fault (`SIGBUS`) by the owner
/// truncating it.
const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// Checks that the host's page size is [`PAGE`]: the emulated frame numbers
/// are page indices of a memfd, and mappings are made page by page.
pub(crate) fn check_page_size() -> io::Result<()> {
    let size = rustix::param::page_size();
    if size == PAGE {
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
    if name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "memfd name has a NUL"));
    }
    let file = File::from(rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?);
    file.set_len(len)?;
    rustix::fs::fcntl_add_seals(&file, SIZE_SEALS | SealFlags::SEAL)?;
    Ok(file)
}

/// Checks that a memfd received from another process has a sealed size and
/// returns that size. A file whose size can change could be truncated under
/// our mappings and make us fault.
pub(crate) fn sealed_size(file: &File) -> io::Result<u64> {
    let seals = rustix::fs::fcntl_get_seals(file)?;
    if !seals.contains(SIZE_SEALS) {
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
    rustix::fs::fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, to_off(offset)?, to_off(len)?)?;
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

fn prot(writable: bool) -> ProtFlags {
    if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    }
}

/// Checks that a file offset or length fits the kernel's `off_t` (signed
/// 64 bits): a larger one would reach the kernel negative.
fn to_off(offset: u64) -> io::Result<u64> {
    i64::try_from(offset)
        .map(|_| offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))
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
        let p = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot(writable), MapFlags::SHARED, fd, off) }?;
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
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }?;
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
        unsafe {
            rustix::mm::mmap(
                self.ptr.as_ptr().add(at).cast(),
                len,
                prot(writable),
                MapFlags::SHARED | MapFlags::FIXED,
                fd,
                off,
            )
        }?;
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
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) } {
            log::error!("munmap of {} bytes at {:p} failed: {e}", self.len, self.ptr);
        }
    }
}

/// Creates a non-blocking eventfd.
pub(crate) fn eventfd() -> io::Result<File> {
    Ok(File::from(rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?))
}

/// Makes a descriptor received from another process non-blocking, so that
/// a peer that hands us something other than an eventfd cannot make a
/// write to it block.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)?;
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
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|f| PollFd::from_borrowed_fd(*f, PollFlags::IN)).collect();
    let ts = timeout.map(|t| Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        // Below 10^9: fits.
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    match rustix::event::poll(&mut pfds, ts.as_ref()) {
        Ok(_) => Ok(pfds.iter().enumerate().filter(|(_, p)| !p.revents().is_empty()).map(|(i, _)| i).collect()),
        Err(rustix::io::Errno::INTR) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Bytes of `sun_path` in Linux's `struct sockaddr_un` (see unix(7)); a
/// path must fit with its terminating NUL.
const SUN_PATH_LEN: usize = 108;

fn sockaddr(path: &Path) -> io::Result<SocketAddrUnix> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= SUN_PATH_LEN || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is longer than {} bytes (or has a NUL); use a shorter directory",
                path.display(),
                SUN_PATH_LEN - 1
            ),
        ));
    }
    Ok(SocketAddrUnix::new(path)?)
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

/// A listening `SOCK_SEQPACKET` socket bound to `path`.
pub(crate) fn seqpacket_listen(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    rustix::net::bind(&fd, &sockaddr(path)?)?;
    rustix::net::listen(&fd, 64)?;
    Ok(fd)
}

/// A `SOCK_SEQPACKET` socket connected to `path`.
pub(crate) fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    rustix::net::connect(&fd, &sockaddr(path)?)?;
    Ok(fd)
}

/// Accepts one connection.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::net::accept_with(listener, SocketFlags::CLOEXEC)?)
}

/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 4;

/// Bytes of control buffer for `MAX_FDS` descriptors, with the slack
/// `rustix` needs to align it for `cmsghdr`.
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS));

/// Sends one message with up to [`MAX_FDS`] descriptors.
pub(crate) fn send_msg(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors for one message"));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("control buffer too small"));
    }
    let n = rustix::net::sendmsg(sock, &[IoSlice::new(data)], &mut control, SendFlags::NOSIGNAL)?;
    if n != data.len() {
        return Err(io::Error::other("short sendmsg on a SOCK_SEQPACKET socket"));
    }
    Ok(())
}

/// Receives one message into `buf` and the descriptors that came with it
/// (owned, close-on-exec). Returns `Ok((0, []))` when the peer closed.
/// A message that does not fit `buf` or carried too many descriptors is an
/// error (the descriptors that did arrive are closed).
pub(crate) fn recv_msg(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(msg) => break msg,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // Every descriptor is owned from here on: those of a refused message
    // are closed when `fds` drops.
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message or its descriptors were truncated"));
    }
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message carried {} descriptors, more than the {MAX_FDS} one message may", fds.len()),
        ));
    }
    Ok((msg.bytes, fds))
}

/// Shuts a socket down both ways, waking a thread blocked on it.
pub(crate) fn shutdown(sock: BorrowedFd<'_>) {
    // A socket the peer already shut down reports ENOTCONN: nothing is
    // left to wake then, so the result does not matter.
    let _ = rustix::net::shutdown(sock, Shutdown::Both);
}

/// An edge-triggered epoll instance watching every one of `efds` for
/// readability (the event data is the descriptor's index).
pub(crate) fn epoll_set(efds: &[&File]) -> io::Result<OwnedFd> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for (i, efd) in efds.iter().enumerate() {
        epoll::add(&ep, efd, epoll::EventData::new_u64(i as u64), epoll::EventFlags::IN | epoll::EventFlags::ET)?;
    }
    Ok(ep)
}

/// Sleeps in `epoll_wait` on an epoll instance until it
/// reports an event or `timeout` passes (`None`: forever). Returns whether
/// an event came; an interrupted wait returns `false`.
pub(crate) fn epoll_wait_one(ep: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    // Capped at `epoll_wait`'s largest timeout (`i32::MAX` ms), which
    // rustix passes in milliseconds rounded up, so a short timeout still
    // sleeps rather than spins.
    const LONGEST: Duration = Duration::from_millis(i32::MAX as u64);
    let timeout = match timeout {
        None => None,
        Some(t) => Some(Timespec::try_from(t.min(LONGEST)).map_err(io::Error::other)?),
    };
    let mut ev = [MaybeUninit::<epoll::Event>::uninit(); 1];
    match epoll::wait(ep, &mut ev, timeout.as_ref()) {
        Ok((ready, _)) => Ok(!ready.is_empty()),
        Err(Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Converts a sleep's length for the kernel: `None` stays `None` (no end);
/// a length past what a `timespec` holds is no end either.
fn timespec_of(t: Option<Duration>) -> Option<Timespec> {
    t.and_then(|t| Timespec::try_from(t).ok())
}

/// Sleeps while `word` holds `expected`, until a [`futex_wake`] on the same
/// word (from any process that maps the same shared memory: the futex is
/// not private), a signal, or `timeout` (`None`: no end). The kernel reads
/// the word after queueing this thread, so a wake that follows a change of
/// the word cannot be missed: a word that no longer holds `expected`
/// returns at once. Every such end is `Ok`; the caller looks at the word.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timespec_of(timeout);
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Ok(()) | Err(Errno::AGAIN | Errno::INTR | Errno::TIMEDOUT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Most words one [`futex_wait_any`] waits on (the kernel's
/// `FUTEX_WAITV_MAX`).
pub(crate) const FUTEX_WAITV_MAX: usize = 128;

/// [`futex_wait`] on several words at once (`futex_waitv`, Linux 5.16):
/// sleeps while every word of `words` holds 0, until a wake on any of them,
/// a signal or `timeout`. At most [`FUTEX_WAITV_MAX`] words. `ENOSYS` from
/// an older kernel is returned as is (the caller sleeps another way).
pub(crate) fn futex_wait_any(words: &[&AtomicU32], timeout: Option<Duration>) -> io::Result<()> {
    if words.is_empty() || words.len() > FUTEX_WAITV_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "futex_waitv takes 1 to 128 words"));
    }
    let mut waits = [futex::Wait::new(); FUTEX_WAITV_MAX];
    for (w, word) in waits.iter_mut().zip(words) {
        w.val = 0;
        w.uaddr = futex::WaitPtr::new(word.as_ptr().cast());
        w.flags = futex::WaitFlags::SIZE_U32;
    }
    // `futex_waitv` takes an absolute deadline.
    let deadline = match timespec_of(timeout) {
        None => None,
        Some(t) => {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            let mut end = Timespec { tv_sec: now.tv_sec.saturating_add(t.tv_sec), tv_nsec: now.tv_nsec + t.tv_nsec };
            if end.tv_nsec >= 1_000_000_000 {
                end.tv_nsec -= 1_000_000_000;
                end.tv_sec = end.tv_sec.saturating_add(1);
            }
            Some(end)
        }
    };
    let waits = waits.get(..words.len()).unwrap_or(&[]);
    match futex::waitv(waits, futex::WaitvFlags::empty(), deadline.as_ref(), futex::ClockId::Monotonic) {
        Ok(_) | Err(Errno::AGAIN | Errno::INTR | Errno::TIMEDOUT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Wakes every thread (of any process) sleeping in [`futex_wait`] or
/// [`futex_wait_any`] on `word`. Returns how many woke.
pub(crate) fn futex_wake(word: &AtomicU32) -> io::Result<usize> {
    Ok(futex::wake(word, futex::Flags::empty(), i32::MAX as u32)?)
}
