//! The xenstore daemon on a Unix socket: one thread, `poll(2)` over the
//! listener and every client, non-blocking I/O, per-connection buffers.
//!
//! Domains served over a [`Transport`] (a store ring) get a thread each.
//!
//! A client that stops reading cannot stall the daemon or grow it without
//! bound: its requests are no longer read once its pending output passes
//! the quota ([`Quotas::output_bytes`]), and watch events beyond it are
//! dropped. A transport thread takes output from the core only once the
//! peer accepted what it took before, and holds at most
//! `MAX_PENDING_INPUT` bytes of unconsumed requests. A client that sends
//! garbage or hangs up mid-message loses its own connection only.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use std::time::Duration;

use xenbus::wire::Errno;
use xenbus::{Transport, Wait};

use super::engine::{ConnId, Quotas, XenstoreCore};
use super::unix::{connect, connect_as, UnixXenstore};

/// Bytes read from a client per read call.
const READ_CHUNK: usize = 16 * 1024;
/// Unprocessed input kept per client before its socket is read again.
const MAX_PENDING_INPUT: usize = 64 * 1024;

struct Client {
    id: ConnId,
    stream: UnixStream,
    /// Bytes read but not yet consumed by the core.
    input: Vec<u8>,
}

struct Shared {
    core: Mutex<XenstoreCore>,
    stop: AtomicBool,
}

/// A running daemon; stops (and removes its socket) when dropped.
pub struct XenstoreDaemon {
    shared: Arc<Shared>,
    socket: PathBuf,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for XenstoreDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenstoreDaemon")
            .field("socket", &self.socket)
            .finish()
    }
}

impl XenstoreDaemon {
    /// Starts a daemon with default quotas listening on `socket` (an
    /// existing file there is replaced), serving on its own thread.
    pub fn spawn(socket: impl AsRef<Path>) -> io::Result<XenstoreDaemon> {
        XenstoreDaemon::spawn_with(socket, Quotas::default())
    }

    /// Starts a daemon with the given quotas.
    pub fn spawn_with(socket: impl AsRef<Path>, quotas: Quotas) -> io::Result<XenstoreDaemon> {
        let socket = socket.as_ref().to_path_buf();
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&socket)?;
        listener.set_nonblocking(true)?;
        let (wake, wake_rx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            core: Mutex::new(XenstoreCore::new(quotas)),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("xenstored".to_string())
            .spawn(move || serve(thread_shared, listener, wake_rx))?;
        log::info!("xenstored: listening on {}", socket.display());
        Ok(XenstoreDaemon {
            shared,
            socket,
            wake,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A client connection as dom0.
    pub fn connect(&self) -> io::Result<UnixXenstore> {
        connect(&self.socket)
    }

    /// A client connection as domain `domid`, introducing the domain first
    /// if needed (see [`connect_as`]).
    pub fn connect_as(&self, domid: u16) -> Result<UnixXenstore, super::ConnectError> {
        connect_as(&self.socket, domid)
    }

    /// Introduces a domain in-process (as dom0's `XS_INTRODUCE` would).
    pub fn introduce(&self, domid: u16) -> Result<(), Errno> {
        let r = self.core().introduce(domid, 0, 0);
        self.wake();
        r
    }

    /// Releases a domain in-process (as dom0's `XS_RELEASE` would): its
    /// connections are closed.
    pub fn release(&self, domid: u16) -> Result<(), Errno> {
        let r = self.core().release(domid);
        self.wake();
        r
    }

    /// Serves domain `domid` over `transport` (typically the daemon's end
    /// of the domain's store ring page, [`xenbus::StoreRing`] with
    /// [`xenbus::Side::Server`]) on a thread of its own, as xenstored
    /// serves a domain's ring. The domain is introduced if needed. The
    /// connection ends when the returned handle is dropped, when the
    /// domain is released, or when the peer breaks the transport.
    pub fn serve<T: Transport + Send + 'static>(
        &self,
        domid: u16,
        transport: T,
    ) -> Result<ServedConnection, Errno> {
        let id = {
            let mut core = self.core();
            core.introduce(domid, 0, 0)?;
            core.connect(domid)
        };
        self.wake();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Held::default());
        let (shared, stop2, held2) = (
            Arc::clone(&self.shared),
            Arc::clone(&stop),
            Arc::clone(&held),
        );
        let thread = std::thread::Builder::new()
            .name(format!("xenstored-dom{domid}"))
            .spawn(move || serve_transport(&shared, id, transport, &stop2, &held2))
            .map_err(|e| {
                log::error!("xenstored: cannot start a thread for dom{domid}: {e}");
                self.core().disconnect(id);
                Errno::ENOMEM
            })?;
        Ok(ServedConnection {
            stop,
            thread: Some(thread),
            id,
            held,
        })
    }

    /// Runs `f` on the daemon's state (tests: inspect the tree, check
    /// invariants). Output it generates is flushed afterwards.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut XenstoreCore) -> R) -> R {
        let r = f(&mut self.core());
        self.wake();
        r
    }

    fn core(&self) -> MutexGuard<'_, XenstoreCore> {
        // A panic while holding the lock would be a bug in the core; the
        // state is still the best there is, so keep serving.
        self.shared.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        // A full wake socket already guarantees a wake-up.
        let _ = (&self.wake).write(&[1]);
    }
}

impl Drop for XenstoreDaemon {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("xenstored: the server thread panicked");
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A domain served over a transport by [`XenstoreDaemon::serve`]; stops
/// serving when dropped.
pub struct ServedConnection {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    id: ConnId,
    held: Arc<Held>,
}

/// What a transport thread holds for its connection outside the core.
#[derive(Default)]
struct Held {
    input: AtomicUsize,
    output: AtomicUsize,
}

impl ServedConnection {
    /// The daemon's connection id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Bytes received from the peer that the core has not consumed yet
    /// (held back while the peer does not read its replies); at most
    /// `MAX_PENDING_INPUT` (64 KiB).
    pub fn buffered_input(&self) -> usize {
        self.held.input.load(Ordering::Relaxed)
    }

    /// Bytes taken from the core that the peer has not accepted yet. The
    /// thread takes more only once these are sent, so together with the
    /// core's [`XenstoreCore::output_len`] a connection's pending output
    /// stays near twice [`Quotas::output_bytes`].
    pub fn buffered_output(&self) -> usize {
        self.held.output.load(Ordering::Relaxed)
    }

    /// Whether the connection has ended (peer fault, release).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for ServedConnection {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("xenstored: a transport thread panicked");
            }
        }
    }
}

/// How long a transport thread waits for its peer before looking for
/// output produced by other connections (watch events).
const TRANSPORT_POLL: Duration = Duration::from_millis(2);

fn serve_transport<T: Transport>(
    shared: &Shared,
    id: ConnId,
    mut transport: T,
    stop: &AtomicBool,
    held: &Held,
) {
    let mut input: Vec<u8> = Vec::new();
    let mut output: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let reason = loop {
        if stop.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            break "stopped".to_string();
        }
        let mut moved = false;
        let room = MAX_PENDING_INPUT.saturating_sub(input.len()).min(buf.len());
        if room > 0 {
            let chunk = &mut buf[..room];
            match transport.recv(chunk, Wait::NoWait) {
                Ok(n) => {
                    input.extend_from_slice(chunk.get(..n).unwrap_or(chunk));
                    moved |= n > 0;
                }
                Err(e) => break format!("{e}"),
            }
        }
        {
            let mut core = lock(shared);
            if !input.is_empty() {
                match core.feed(id, &input) {
                    Ok(used) => {
                        input.drain(..used.min(input.len()));
                    }
                    Err(e) => break format!("{e}"),
                }
            }
            // Take more only once the peer accepted what was taken: the
            // backlog stays in the core, whose quota then stops reading
            // requests and drops watch events.
            if output.is_empty() {
                output = core.take_output(id);
            }
            if core.is_closing(id) && output.is_empty() {
                break "the domain was released".to_string();
            }
        }
        if !output.is_empty() {
            match transport.send(&output, Wait::NoWait) {
                Ok(n) => {
                    output.drain(..n.min(output.len()));
                    moved |= n > 0;
                }
                Err(e) => break format!("{e}"),
            }
        }
        held.input.store(input.len(), Ordering::Relaxed);
        held.output.store(output.len(), Ordering::Relaxed);
        if !moved {
            if input.len() < MAX_PENDING_INPUT {
                // Wake on the peer's signal, or soon anyway for events that
                // other connections produced for this one.
                let mut one = [0u8; 1];
                match transport.recv(&mut one, Wait::For(TRANSPORT_POLL)) {
                    Ok(n) => input.extend_from_slice(one.get(..n).unwrap_or(&[])),
                    Err(e) => break format!("{e}"),
                }
            } else {
                // The peer does not read its replies: read nothing more
                // until it does, and look again soon.
                std::thread::sleep(TRANSPORT_POLL);
            }
        }
    };
    log::info!(
        "xenstored: connection {} over its transport ends: {reason}",
        id.0
    );
    lock(shared).disconnect(id);
}

fn lock(shared: &Shared) -> MutexGuard<'_, XenstoreCore> {
    shared.core.lock().unwrap_or_else(|p| p.into_inner())
}

fn serve(shared: Arc<Shared>, listener: UnixListener, wake_rx: UnixStream) {
    let mut clients: Vec<Client> = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    while !shared.stop.load(Ordering::SeqCst) {
        // Build the poll set: wake socket, listener, then clients.
        let mut fds = Vec::with_capacity(2 + clients.len());
        fds.push(libc::pollfd {
            fd: wake_rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let mut timeout_ms = 1000;
        {
            let core = lock(&shared);
            for c in &clients {
                // Held-back input can be handled as soon as output drains.
                if !c.input.is_empty() && core.output_len(c.id) == 0 {
                    timeout_ms = 0;
                }
                let mut events = 0;
                if c.input.len() < MAX_PENDING_INPUT {
                    events |= libc::POLLIN;
                }
                if core.output_len(c.id) > 0 {
                    events |= libc::POLLOUT;
                }
                fds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events,
                    revents: 0,
                });
            }
        }
        // SAFETY: `fds` is a valid, initialised array of `fds.len()`
        // pollfd structures that outlives the call; the fds stay open
        // (owned by `wake_rx`, `listener` and `clients`) during it.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                log::error!("xenstored: poll failed: {err}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            continue;
        }
        if fds[0].revents != 0 {
            let mut sink = [0u8; 64];
            while matches!((&wake_rx).read(&mut sink), Ok(n) if n > 0) {}
        }
        if fds[1].revents != 0 {
            accept_all(&shared, &listener, &mut clients);
        }
        let mut dead: Vec<ConnId> = Vec::new();
        {
            let mut core = lock(&shared);
            for (i, c) in clients.iter_mut().enumerate() {
                let revents = fds.get(i + 2).map_or(0, |p| p.revents);
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                    && !read_client(&mut core, c, &mut buf)
                {
                    dead.push(c.id);
                    continue;
                }
                // Input held back while output was over quota.
                if !c.input.is_empty() && !consume(&mut core, c) {
                    dead.push(c.id);
                    continue;
                }
            }
            // Flush every client: requests of one client can produce watch
            // events for others.
            for c in clients.iter_mut() {
                if dead.contains(&c.id) {
                    continue;
                }
                if !flush(&mut core, c) || (core.is_closing(c.id) && core.output_len(c.id) == 0) {
                    dead.push(c.id);
                }
            }
            for id in &dead {
                core.disconnect(*id);
            }
        }
        clients.retain(|c| !dead.contains(&c.id));
    }
    log::info!("xenstored: stopping with {} client(s)", clients.len());
}

fn accept_all(shared: &Shared, listener: &UnixListener, clients: &mut Vec<Client>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nonblocking(true) {
                    log::warn!("xenstored: dropping a client: set_nonblocking failed: {e}");
                    continue;
                }
                let id = lock(shared).connect(0);
                clients.push(Client {
                    id,
                    stream,
                    input: Vec::new(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("xenstored: accept failed: {e}");
                return;
            }
        }
    }
}

/// Reads what the client sent and handles it. `false`: drop the client.
fn read_client(core: &mut XenstoreCore, c: &mut Client, buf: &mut [u8]) -> bool {
    loop {
        if c.input.len() >= MAX_PENDING_INPUT {
            return true;
        }
        match c.stream.read(buf) {
            Ok(0) => {
                log::debug!("xenstored: connection {} hung up", c.id.0);
                return false;
            }
            Ok(n) => {
                c.input.extend_from_slice(buf.get(..n).unwrap_or(buf));
                if !consume(core, c) {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("xenstored: connection {} read failed: {e}", c.id.0);
                return false;
            }
        }
    }
}

fn consume(core: &mut XenstoreCore, c: &mut Client) -> bool {
    match core.feed(c.id, &c.input) {
        Ok(used) => {
            c.input.drain(..used.min(c.input.len()));
            true
        }
        Err(e) => {
            log::warn!("xenstored: closing connection {}: {e}", c.id.0);
            false
        }
    }
}

/// Writes pending output. `false`: drop the client.
fn flush(core: &mut XenstoreCore, c: &mut Client) -> bool {
    let out = core.take_output(c.id);
    if out.is_empty() {
        return true;
    }
    let mut sent = 0;
    while sent < out.len() {
        match c.stream.write(&out[sent..]) {
            Ok(0) => return false,
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("xenstored: connection {} write failed: {e}", c.id.0);
                return false;
            }
        }
    }
    if sent < out.len() {
        core.unsend(c.id, out[sent..].to_vec());
    }
    true
}
