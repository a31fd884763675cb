//! The client side on the hosted platform: a [`Transport`] over a Unix
//! socket, and helpers to connect as dom0 or as another domain.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use xenbus::{Transport, TransportError, Wait, Xenstore, XsError};

use super::engine::CONNECT_AS_COMMAND;

/// A xenstore client over a Unix socket.
pub type UnixXenstore = Xenstore<UnixTransport>;

/// A [`Transport`] over a connected Unix stream socket.
#[derive(Debug)]
pub struct UnixTransport {
    stream: UnixStream,
    /// The mode the socket is in, to avoid a system call per operation.
    mode: Option<Mode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    NonBlocking,
    Blocking(Option<Duration>),
}

impl UnixTransport {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        UnixTransport { stream, mode: None }
    }

    /// Connects to a daemon's socket.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(UnixTransport::new(UnixStream::connect(path)?))
    }

    /// The underlying stream (tests use it to send raw bytes).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    fn set_mode(&mut self, wait: Wait) -> io::Result<()> {
        let mode = match wait {
            Wait::NoWait => Mode::NonBlocking,
            // A zero timeout means "forever" to the socket API.
            Wait::For(d) => Mode::Blocking(Some(d.max(Duration::from_micros(1)))),
            Wait::Forever => Mode::Blocking(None),
        };
        if self.mode == Some(mode) {
            return Ok(());
        }
        match mode {
            Mode::NonBlocking => self.stream.set_nonblocking(true)?,
            Mode::Blocking(t) => {
                self.stream.set_nonblocking(false)?;
                // Set both so that the cached mode holds for either
                // direction.
                self.stream.set_read_timeout(t)?;
                self.stream.set_write_timeout(t)?;
            }
        }
        self.mode = Some(mode);
        Ok(())
    }
}

fn map_err(op: &'static str, e: &io::Error) -> Result<usize, TransportError> {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(0),
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => Err(TransportError::Closed),
        _ => Err(TransportError::Os {
            op,
            code: e.raw_os_error().unwrap_or(-1),
        }),
    }
}

impl Transport for UnixTransport {
    fn send(&mut self, data: &[u8], wait: Wait) -> Result<usize, TransportError> {
        if data.is_empty() {
            return Ok(0);
        }
        self.set_mode(wait).map_err(|e| TransportError::Os {
            op: "configure socket",
            code: e.raw_os_error().unwrap_or(-1),
        })?;
        loop {
            match self.stream.write(data) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return map_err("write to the xenstore socket", &e),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8], wait: Wait) -> Result<usize, TransportError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.set_mode(wait).map_err(|e| TransportError::Os {
            op: "configure socket",
            code: e.raw_os_error().unwrap_or(-1),
        })?;
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return map_err("read from the xenstore socket", &e),
            }
        }
    }
}

/// Why connecting as a domain failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The socket could not be reached.
    Io(io::Error),
    /// The daemon refused a step.
    Store(XsError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(
                f,
                "cannot reach the xenstore socket: {e}; is the daemon running?"
            ),
            ConnectError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

impl From<XsError> for ConnectError {
    fn from(e: XsError) -> Self {
        ConnectError::Store(e)
    }
}

/// Connects to the daemon at `path` as dom0. The client measures each
/// request's deadline on the monotonic clock.
pub fn connect(path: impl AsRef<Path>) -> io::Result<UnixXenstore> {
    let mut xs = Xenstore::new(UnixTransport::connect(path)?);
    let origin = std::time::Instant::now();
    xs.set_clock(move || origin.elapsed());
    Ok(xs)
}

/// Connects to the daemon at `path` as domain `domid`: introduces the
/// domain if the daemon does not know it yet, then turns the (initially
/// dom0) connection into the domain's with the `hosted-connect-as`
/// control command. For `domid` 0 this is [`connect`].
pub fn connect_as(path: impl AsRef<Path>, domid: u16) -> Result<UnixXenstore, ConnectError> {
    let mut xs = connect(path)?;
    if domid == 0 {
        return Ok(xs);
    }
    if !xs.is_domain_introduced(domid)? {
        xs.introduce(domid, 0, 0)?;
    }
    let id = xenbus::wire::u32_string(u32::from(domid));
    xs.control(&[CONNECT_AS_COMMAND.as_bytes(), id.as_bytes()])?;
    Ok(xs)
}
