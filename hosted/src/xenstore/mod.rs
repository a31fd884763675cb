//! A xenstore daemon for the hosted platform.
//!
//! It speaks `xs_wire` over a Unix socket, so the same [`xenbus::Xenstore`]
//! client talks to it and to a real `oxenstored`/`xenstored` in the lab.
//!
//! - [`XenstoreDaemon::spawn`] starts it on a thread (stopped on drop);
//!   the `xenstored` binary runs it standalone (`--socket PATH`).
//! - Every socket connection starts as dom0 (privileged). A test connects
//!   "as domain N" with [`connect_as`] (or [`XenstoreDaemon::connect_as`]):
//!   dom0 introduces N (`XS_INTRODUCE`) if needed, then the connection
//!   sends `XS_CONTROL hosted-connect-as N` and is domain N, unprivileged,
//!   from then on (see [`engine`] for the rules).
//! - [`XenstoreDaemon::serve`] serves a domain over any
//!   [`xenbus::Transport`], typically the daemon's end of the domain's
//!   store ring page, as xenstored does for real guests ([`ThreadSignal`]
//!   links the two ends of a ring inside one process).
//! - [`XenstoreCore`] is the socket-free request handling, for fuzzing and
//!   in-process use.
//!
//! The semantics are xenstored's: permissions, watches (with the initial
//! event, children, special `@introduceDomain`/`@releaseDomain`),
//! optimistic transactions (`EAGAIN` on conflict), domain introduction and
//! release, quotas for unprivileged domains. Bad input from one client
//! costs that client an error reply or its connection, never the daemon.

pub mod engine;
pub mod ring;
pub mod server;
pub mod store;
pub mod unix;

pub use engine::{ConnFault, ConnId, Quotas, XenstoreCore, CONNECT_AS_COMMAND};
pub use ring::ThreadSignal;
pub use server::{ServedConnection, XenstoreDaemon};
pub use unix::{connect, connect_as, ConnectError, UnixTransport, UnixXenstore};
