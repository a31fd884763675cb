//! Runs an [`Exchange`] over a smoltcp TCP socket (feature `smoltcp`), as
//! the server (listening, as the tools do without a host name) or as the
//! client.
//!
//! The driver owns nothing but the socket's handle: the application keeps
//! polling its smoltcp interface and calls [`TcpExchange::pump`] after
//! each poll, which writes what the conversation has to say and reads
//! exactly the bytes of its next message (never ahead). Nagle's algorithm
//! is off, so that each message goes out at once, in one segment: the
//! tools read each message with a single `read` of its size.

use alloc::vec;
use core::fmt;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::IpEndpoint;

use super::{Exchange, ExchangeError};

/// Bytes of each socket buffer (the longest message is 108 bytes).
const SOCKET_BUFFER: usize = 2048;

/// Why the exchange over TCP failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpExchangeError {
    /// The peer sent a message the exchange refuses.
    Exchange(ExchangeError),
    /// smoltcp refused to listen or connect.
    Socket(&'static str),
    /// The connection ended before the conversation did.
    Closed {
        /// The TCP state when the end was seen.
        state: tcp::State,
        /// Bytes the conversation still wanted to read.
        wanted: usize,
    },
}

impl fmt::Display for TcpExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcpExchangeError::Exchange(e) => write!(f, "{e}"),
            TcpExchangeError::Socket(why) => write!(f, "TCP: {why}"),
            TcpExchangeError::Closed { state, wanted } => write!(
                f,
                "the peer ended the TCP connection ({state}) while the exchange wanted {wanted} more bytes: did the tool fail? (see its output)"
            ),
        }
    }
}

impl From<ExchangeError> for TcpExchangeError {
    fn from(e: ExchangeError) -> Self {
        TcpExchangeError::Exchange(e)
    }
}

/// One exchange's TCP connection.
#[derive(Clone, Copy, Debug)]
pub struct TcpExchange {
    handle: SocketHandle,
}

fn socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    );
    s.set_nagle_enabled(false);
    s
}

impl TcpExchange {
    /// Listens on `port` for the tool's client (`ibv_rc_pingpong <host>`,
    /// `ib_send_lat <host>`).
    pub fn listen(sockets: &mut SocketSet<'static>, port: u16) -> Result<Self, TcpExchangeError> {
        let mut s = socket();
        s.listen(port)
            .map_err(|_| TcpExchangeError::Socket("cannot listen on the port (port 0?)"))?;
        Ok(TcpExchange {
            handle: sockets.add(s),
        })
    }

    /// Connects from `local_port` to the tool's server at `remote`.
    pub fn connect(
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        remote: IpEndpoint,
        local_port: u16,
    ) -> Result<Self, TcpExchangeError> {
        let mut s = socket();
        s.connect(iface.context(), remote, local_port)
            .map_err(|_| {
                TcpExchangeError::Socket("cannot connect (unspecified address or port 0?)")
            })?;
        Ok(TcpExchange {
            handle: sockets.add(s),
        })
    }

    /// The socket's handle.
    pub fn handle(&self) -> SocketHandle {
        self.handle
    }

    /// The socket's TCP state.
    pub fn state(&self, sockets: &SocketSet<'static>) -> tcp::State {
        sockets.get::<tcp::Socket>(self.handle).state()
    }

    /// Whether the connection is established (or was, and is closing).
    pub fn is_connected(&self, sockets: &SocketSet<'static>) -> bool {
        !matches!(
            self.state(sockets),
            tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Closed
        )
    }

    /// Moves bytes between the socket and `x`: writes its pending output
    /// (as much as the socket takes) and reads at most the bytes of its
    /// next message. Returns whether anything moved. Call after each poll
    /// of the interface, and poll again after it when it returns `true`.
    pub fn pump<E: Exchange>(
        &self,
        sockets: &mut SocketSet<'static>,
        x: &mut E,
    ) -> Result<bool, TcpExchangeError> {
        let s = sockets.get_mut::<tcp::Socket>(self.handle);
        let mut moved = false;
        loop {
            let mut progress = false;
            let out = x.pending_output();
            if !out.is_empty() && s.can_send() {
                let n = s.send_slice(out).map_err(|_| {
                    TcpExchangeError::Socket("the connection is not open for sending")
                })?;
                if n > 0 {
                    x.output_written(n);
                    progress = true;
                }
            }
            let wanted = x.wanted_input();
            if wanted > 0 && s.can_recv() {
                let mut buf = [0u8; 128];
                let take = wanted.min(buf.len());
                let n = s.recv_slice(&mut buf[..take]).map_err(|_| {
                    TcpExchangeError::Socket("the connection is not open for receiving")
                })?;
                if n > 0 {
                    x.input(&buf[..n])?;
                    progress = true;
                }
            }
            if !progress {
                break;
            }
            moved = true;
        }
        let wanted = x.wanted_input();
        let state = s.state();
        let started = !matches!(
            state,
            tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
        );
        if wanted > 0 && started && !s.may_recv() {
            return Err(TcpExchangeError::Closed { state, wanted });
        }
        if !x.pending_output().is_empty() && started && !s.may_send() {
            return Err(TcpExchangeError::Closed { state, wanted });
        }
        Ok(moved)
    }

    /// Closes this side (a FIN after the data written).
    pub fn close(&self, sockets: &mut SocketSet<'static>) {
        sockets.get_mut::<tcp::Socket>(self.handle).close();
    }

    /// Removes the socket from the set (a connection still open is
    /// dropped without a FIN or reset: close it first and poll).
    pub fn remove(self, sockets: &mut SocketSet<'static>) {
        sockets.remove(self.handle);
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::phy::{Loopback, Medium};
    use smoltcp::time::Instant;
    use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

    use super::TcpExchange;
    use crate::exchange::{
        gid_from_ipv4, Exchange, PerftestDest, PerftestPhase, PerftestSession, PerftestTest,
        PingpongDest, PingpongSession, Role, DEFAULT_PORT,
    };

    fn setup() -> (Loopback, Interface, SocketSet<'static>) {
        let mut dev = Loopback::new(Medium::Ethernet);
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress([
            0x02, 0, 0, 0, 0, 1,
        ])));
        let mut iface = Interface::new(cfg, &mut dev, Instant::ZERO);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8));
        });
        (dev, iface, SocketSet::new(Vec::new()))
    }

    /// Both ends of an exchange over smoltcp's loopback; `resume` is
    /// called at each end's pauses.
    fn run<A: Exchange, B: Exchange>(
        a: &mut A,
        b: &mut B,
        mut resume_a: impl FnMut(&mut A),
        mut resume_b: impl FnMut(&mut B),
    ) {
        let (mut dev, mut iface, mut sockets) = setup();
        let server = TcpExchange::listen(&mut sockets, DEFAULT_PORT).unwrap();
        let remote = IpEndpoint::new(IpAddress::v4(127, 0, 0, 1), DEFAULT_PORT);
        let client = TcpExchange::connect(&mut iface, &mut sockets, remote, 49152).unwrap();
        let mut t = 0;
        for _ in 0..2000 {
            t += 10;
            iface.poll(Instant::from_millis(t), &mut dev, &mut sockets);
            server.pump(&mut sockets, a).unwrap();
            client.pump(&mut sockets, b).unwrap();
            if a.is_paused() {
                resume_a(a);
            }
            if b.is_paused() {
                resume_b(b);
            }
            if a.is_done() && b.is_done() {
                return;
            }
        }
        panic!("the exchange over smoltcp did not finish");
    }

    #[test]
    fn pingpong_over_smoltcp() {
        let d = |qpn, ip| PingpongDest {
            lid: 0,
            qpn,
            psn: qpn * 3,
            gid: gid_from_ipv4(ip),
        };
        let mut server = PingpongSession::new(Role::Server, &d(0x11, [10, 0, 0, 1]));
        let mut client = PingpongSession::new(Role::Client, &d(0x22, [10, 0, 0, 2]));
        run(&mut server, &mut client, |s| s.resume(), |s| s.resume());
        assert_eq!(server.remote(), Some(&d(0x22, [10, 0, 0, 2])));
        assert_eq!(client.remote(), Some(&d(0x11, [10, 0, 0, 1])));
    }

    #[test]
    fn perftest_over_smoltcp() {
        let d = |qpn, ip| PerftestDest {
            lid: 0,
            out_reads: 0,
            qpn,
            psn: qpn * 5,
            rkey: qpn + 1,
            vaddr: u64::from(qpn) << 12,
            gid: Some(gid_from_ipv4(ip)),
            srqn: 0,
        };
        for test in [PerftestTest::SendLat, PerftestTest::WriteLat] {
            let mut server =
                PerftestSession::new(Role::Server, test, &d(0x11, [10, 0, 0, 1]), 4096).unwrap();
            let mut client =
                PerftestSession::new(Role::Client, test, &d(0x22, [10, 0, 0, 2]), 1024).unwrap();
            let mut phases = Vec::new();
            run(
                &mut server,
                &mut client,
                |s| {
                    phases.push(s.phase());
                    s.resume()
                },
                |s| s.resume(),
            );
            assert_eq!(phases, [PerftestPhase::SetUpQp, PerftestPhase::Run]);
            assert_eq!(server.mtu(), Some(1024));
            assert_eq!(client.mtu(), Some(1024));
            assert_eq!(server.remote(), Some(&d(0x22, [10, 0, 0, 2])));
            assert_eq!(client.remote(), Some(&d(0x11, [10, 0, 0, 1])));
        }
    }
}
