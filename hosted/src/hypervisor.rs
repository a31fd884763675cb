//! The emulated hypervisor's rendezvous: a Unix socket where domains
//! register their shared memory and find each other's.
//!
//! [`HostedHypervisor::create`] binds `<dir>/hypervisor.sock` and serves it
//! from background threads of the creating process (a test, a bench, or a
//! small launcher). Each domain ([`crate::HostedPlatform::join`]) opens one
//! connection, registers its domid with three memfds (its "physical
//! memory", its grant table and its event channel page), and keeps the
//! connection open for as long as it lives: when the connection closes the
//! domain is gone (however it ended: a clean exit, a crash or `SIGKILL`),
//! its domid is free again, its event page is marked dead so peers notice,
//! and every event channel of the remaining domains that was bound to it
//! becomes unbound, offered to that domid again (Xen's `evtchn_destroy`).
//!
//! Peers ask for another domain's memfds (`LOOKUP`) and for the eventfd of
//! one of its event channel ports (`PORT_GET`). Descriptors cross processes
//! as `SCM_RIGHTS` ancillary data on a `SOCK_SEQPACKET` socket. That was
//! chosen over `pidfd_getfd(2)`, which needs ptrace rights over the other
//! process (refused under Yama and in many containers), and over
//! `/proc/<pid>/fd`, which has the same problem; `SCM_RIGHTS` works between
//! any two processes that can reach the socket.
//!
//! The wire format is private to this crate: a 16-byte request
//! (`op, domid, port, 0` as little-endian u32) and a 16-byte reply
//! (`op, status` (0 or -errno), `incarnation` u64), each with up to four
//! descriptors. Everything a client sends is checked; a malformed request
//! gets `-EINVAL`, never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use grant_tables::DomId;

use crate::evtchn::{self, NR_PORTS};
use crate::sys;

/// The socket's file name inside the hypervisor directory.
pub const SOCKET_NAME: &str = "hypervisor.sock";

pub(crate) const OP_REGISTER: u32 = 1;
pub(crate) const OP_LOOKUP: u32 = 2;
pub(crate) const OP_PORT_SET: u32 = 3;
pub(crate) const OP_PORT_CLEAR: u32 = 4;
pub(crate) const OP_PORT_GET: u32 = 5;

const MSG_LEN: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data that is
    // still consistent (every update is a single insert or remove).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn encode_request(op: u32, domid: u16, port: u32) -> [u8; MSG_LEN] {
    let mut b = [0u8; MSG_LEN];
    b[0..4].copy_from_slice(&op.to_le_bytes());
    b[4..8].copy_from_slice(&u32::from(domid).to_le_bytes());
    b[8..12].copy_from_slice(&port.to_le_bytes());
    b
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn encode_reply(op: u32, status: i32, incarnation: u64) -> [u8; MSG_LEN] {
    let mut b = [0u8; MSG_LEN];
    b[0..4].copy_from_slice(&op.to_le_bytes());
    b[4..8].copy_from_slice(&status.to_le_bytes());
    b[8..16].copy_from_slice(&incarnation.to_le_bytes());
    b
}

/// One registered domain, as the hypervisor keeps it.
struct Registered {
    conn: u64,
    incarnation: u64,
    mem: OwnedFd,
    grants: OwnedFd,
    events: OwnedFd,
    /// The event page, to mark the domain dead when it goes.
    event_map: sys::Mmap,
    ports: HashMap<u32, OwnedFd>,
}

#[derive(Default)]
struct Registry {
    domains: HashMap<u16, Registered>,
}

struct Shared {
    registry: Mutex<Registry>,
    next_incarnation: AtomicU64,
    next_conn: AtomicU64,
    /// Readable once the hypervisor shuts down (never drained).
    stop: File,
    stopping: AtomicBool,
    conns: Mutex<Vec<(Arc<OwnedFd>, JoinHandle<()>)>>,
}

/// The emulated hypervisor: serves the rendezvous socket of a directory
/// until dropped.
///
/// Create one per test or bench run, in a fresh directory, then have each
/// domain join with [`crate::HostedPlatform::join`] (from any process that
/// can reach the directory) or [`HostedHypervisor::join`] (in this one).
pub struct HostedHypervisor {
    dir: PathBuf,
    socket: PathBuf,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl HostedHypervisor {
    /// Creates `dir` if needed and starts serving `<dir>/hypervisor.sock`.
    /// Fails if another hypervisor already serves that directory; a stale
    /// socket left by a dead one is replaced.
    pub fn create(dir: impl AsRef<Path>) -> io::Result<Self> {
        sys::check_page_size()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create hypervisor directory {}: {e}", dir.display()))
        })?;
        let socket = dir.join(SOCKET_NAME);
        if socket.exists() {
            if sys::seqpacket_connect(&socket).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("a hypervisor already serves {}; use another directory", socket.display()),
                ));
            }
            log::info!("removing stale hypervisor socket {}", socket.display());
            let _ = std::fs::remove_file(&socket);
        }
        let listener = sys::seqpacket_listen(&socket).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", socket.display()))
        })?;
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::default()),
            next_incarnation: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            stop: sys::eventfd()?,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept_thread = std::thread::Builder::new()
            .name("hosted-hypervisor".into())
            .spawn(move || accept_loop(&s, listener))?;
        log::info!("hosted hypervisor serving {}", socket.display());
        Ok(HostedHypervisor { dir, socket, shared, accept_thread: Some(accept_thread) })
    }

    /// The directory domains join with.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Joins domain `domid` from this process (see
    /// [`crate::HostedPlatform::join`]).
    pub fn join(&self, domid: DomId) -> Result<crate::HostedPlatform, crate::HostedError> {
        crate::HostedPlatform::join(&self.dir, domid)
    }

    /// The domids registered right now.
    pub fn domains(&self) -> Vec<DomId> {
        let mut v: Vec<DomId> = lock(&self.shared.registry).domains.keys().map(|&d| DomId(d)).collect();
        v.sort();
        v
    }
}

impl Drop for HostedHypervisor {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = sys::eventfd_signal(&self.shared.stop) {
            log::error!("cannot signal the hypervisor threads to stop: {e}");
        }
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for (sock, thread) in conns {
            sys::shutdown(sock.as_fd());
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Waits until `fd` or the stop eventfd is readable; `false` means stop.
fn wait_or_stop(shared: &Shared, fd: BorrowedFd<'_>) -> bool {
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return false;
        }
        let mut pfds = [
            libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: shared.stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `pfds` is an array of two valid pollfd structures that
        // outlives the call.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("hypervisor poll failed: {e}");
            return false;
        }
        if pfds[1].revents != 0 {
            return false;
        }
        if pfds[0].revents != 0 {
            return true;
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: OwnedFd) {
    while wait_or_stop(shared, listener.as_fd()) {
        let conn = match sys::accept(listener.as_fd()) {
            Ok(c) => Arc::new(c),
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::error!("hypervisor accept failed: {e}");
                continue;
            }
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        let c = conn.clone();
        match std::thread::Builder::new().name(format!("hosted-hv-conn{id}")).spawn(move || serve(&s, &c, id)) {
            Ok(t) => {
                let mut conns = lock(&shared.conns);
                // Forget threads that have finished, so a long run does not
                // accumulate handles.
                let (done, live): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut *conns).into_iter().partition(|(_, t)| t.is_finished());
                *conns = live;
                conns.push((conn, t));
                drop(conns);
                for (_, t) in done {
                    let _ = t.join();
                }
            }
            Err(e) => log::error!("cannot start a hypervisor connection thread: {e}"),
        }
    }
}

/// Serves one connection until it closes; then forgets the domain it
/// registered.
fn serve(shared: &Shared, conn: &OwnedFd, id: u64) {
    let mut registered: Option<u16> = None;
    let mut buf = [0u8; 64];
    while wait_or_stop(shared, conn.as_fd()) {
        let (n, fds) = match sys::recv_msg(conn.as_fd(), &mut buf) {
            Ok((0, _)) => break,
            Ok(m) => m,
            // Truncated: answered with -EINVAL below (n is not MSG_LEN).
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                log::warn!("hypervisor connection {id}: bad message: {e}");
                (0, Vec::new())
            }
            Err(e) => {
                log::warn!("hypervisor connection {id}: {e}");
                break;
            }
        };
        let op = if n >= 4 { le32(&buf, 0) } else { 0 };
        let (status, inc, out) = if n != MSG_LEN {
            (-libc::EINVAL, 0, Vec::new())
        } else {
            handle(shared, id, &mut registered, op, le32(&buf, 4), le32(&buf, 8), fds)
        };
        let out_fds: Vec<BorrowedFd<'_>> = out.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = sys::send_msg(conn.as_fd(), &encode_reply(op, status, inc), &out_fds) {
            log::warn!("hypervisor connection {id}: cannot reply: {e}");
            break;
        }
    }
    if let Some(domid) = registered {
        let mut reg = lock(&shared.registry);
        if reg.domains.get(&domid).is_some_and(|r| r.conn == id) {
            if let Some(r) = reg.domains.remove(&domid) {
                evtchn::mark_dead(&r.event_map);
                // As Xen does when it destroys a domain: channels bound to
                // it become unbound (offered to it again), whether it closed
                // them or died. Done before the domid can register again.
                let unbound: usize = reg.domains.values().map(|o| evtchn::unbind_departed(&o.event_map, domid)).sum();
                // And its grant mappings are released (Xen's
                // gnttab_release_mappings), whether it unmapped or died.
                let released: usize =
                    reg.domains.values().map(|o| crate::grants::release_departed(o.grants.as_fd(), DomId(domid))).sum();
                log::info!(
                    "dom{domid} left the hosted hypervisor ({unbound} channels to it unbound, {released} grant pins released)"
                );
            }
        }
    }
}

/// Handles one request; returns (status, incarnation, descriptors to send).
fn handle(
    shared: &Shared,
    conn: u64,
    registered: &mut Option<u16>,
    op: u32,
    domid: u32,
    port: u32,
    fds: Vec<OwnedFd>,
) -> (i32, u64, Vec<OwnedFd>) {
    let mut reg = lock(&shared.registry);
    let dup = |f: &OwnedFd| f.try_clone();
    match op {
        OP_REGISTER => {
            let Ok(domid) = u16::try_from(domid) else { return (-libc::EINVAL, 0, Vec::new()) };
            if registered.is_some() || !DomId(domid).is_real() || fds.len() != 3 {
                return (-libc::EINVAL, 0, Vec::new());
            }
            if reg.domains.contains_key(&domid) {
                return (-libc::EEXIST, 0, Vec::new());
            }
            let mut it = fds.into_iter();
            let (Some(mem), Some(grants), Some(events)) = (it.next(), it.next(), it.next()) else {
                return (-libc::EINVAL, 0, Vec::new());
            };
            let event_map = match check_registration(&mem, &grants, &events) {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("dom{domid} registration refused: {e}");
                    return (-libc::EINVAL, 0, Vec::new());
                }
            };
            let incarnation = shared.next_incarnation.fetch_add(1, Ordering::Relaxed);
            reg.domains.insert(
                domid,
                Registered { conn, incarnation, mem, grants, events, event_map, ports: HashMap::new() },
            );
            *registered = Some(domid);
            log::info!("dom{domid} joined the hosted hypervisor (incarnation {incarnation})");
            (0, incarnation, Vec::new())
        }
        OP_LOOKUP => {
            let Some(r) = u16::try_from(domid).ok().and_then(|d| reg.domains.get(&d)) else {
                return (-libc::ENOENT, 0, Vec::new());
            };
            match (dup(&r.mem), dup(&r.grants), dup(&r.events)) {
                (Ok(a), Ok(b), Ok(c)) => (0, r.incarnation, vec![a, b, c]),
                _ => (-libc::EMFILE, 0, Vec::new()),
            }
        }
        OP_PORT_SET | OP_PORT_CLEAR => {
            let Some(me) = *registered else { return (-libc::EPERM, 0, Vec::new()) };
            let Some(r) = reg.domains.get_mut(&me) else { return (-libc::EPERM, 0, Vec::new()) };
            if port == 0 || port >= NR_PORTS {
                return (-libc::EINVAL, 0, Vec::new());
            }
            if op == OP_PORT_CLEAR {
                r.ports.remove(&port);
                return (0, r.incarnation, Vec::new());
            }
            let mut fds = fds;
            if fds.len() != 1 {
                return (-libc::EINVAL, 0, Vec::new());
            }
            if let Some(fd) = fds.pop() {
                r.ports.insert(port, fd);
            }
            (0, r.incarnation, Vec::new())
        }
        OP_PORT_GET => {
            let Some(r) = u16::try_from(domid).ok().and_then(|d| reg.domains.get(&d)) else {
                return (-libc::ENOENT, 0, Vec::new());
            };
            match r.ports.get(&port).map(dup) {
                Some(Ok(fd)) => (0, r.incarnation, vec![fd]),
                Some(Err(_)) => (-libc::EMFILE, 0, Vec::new()),
                None => (-libc::ENOENT, 0, Vec::new()),
            }
        }
        _ => (-libc::EINVAL, 0, Vec::new()),
    }
}

/// Checks a registering domain's memfds are sealed and sized sensibly and
/// maps its event page header.
fn check_registration(mem: &OwnedFd, grants: &OwnedFd, events: &OwnedFd) -> io::Result<sys::Mmap> {
    for (what, fd) in [("memory", mem), ("grant table", grants), ("event page", events)] {
        let f = File::from(fd.try_clone()?);
        let size = sys::sealed_size(&f).map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
        if size == 0 || size % sys::PAGE as u64 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{what} is {size} bytes, not whole pages")));
        }
        if what == "event page" && size != evtchn::EVENT_PAGE_BYTES as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "event page has the wrong size"));
        }
    }
    sys::Mmap::shared(events.as_fd(), 0, evtchn::EVENT_PAGE_BYTES, true)
}

/// A domain's connection to the hypervisor.
pub(crate) struct HypervisorClient {
    sock: Mutex<OwnedFd>,
}

/// A reply: the incarnation of the domain it concerns and any descriptors.
pub(crate) struct Reply {
    pub incarnation: u64,
    pub fds: Vec<OwnedFd>,
}

impl HypervisorClient {
    pub(crate) fn connect(dir: &Path) -> io::Result<Self> {
        let path = dir.join(SOCKET_NAME);
        let sock = sys::seqpacket_connect(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reach the hosted hypervisor at {}: {e}; start one with HostedHypervisor::create",
                    path.display()
                ),
            )
        })?;
        Ok(HypervisorClient { sock: Mutex::new(sock) })
    }

    /// Sends one request and waits for its reply.
    pub(crate) fn call(&self, op: u32, domid: u16, port: u32, fds: &[BorrowedFd<'_>]) -> io::Result<Reply> {
        let sock = lock(&self.sock);
        sys::send_msg(sock.as_fd(), &encode_request(op, domid, port), fds)?;
        let mut buf = [0u8; 64];
        let (n, fds) = sys::recv_msg(sock.as_fd(), &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the hosted hypervisor went away"));
        }
        if n != MSG_LEN || le32(&buf, 0) != op {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed reply from the hosted hypervisor"));
        }
        let status = le32(&buf, 4) as i32;
        if status != 0 {
            return Err(io::Error::from_raw_os_error(-status));
        }
        let mut inc = [0u8; 8];
        inc.copy_from_slice(&buf[8..16]);
        Ok(Reply { incarnation: u64::from_le_bytes(inc), fds })
    }
}
