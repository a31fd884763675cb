//! The network entries of the ping-pong bench.
//!
//! - `netfront-poll-64`, `netfront-poll-1500`, `netfront-event-64`: the
//!   netfront driver ([`netfront::NetfrontDevice`]) in this process
//!   (domain 1) sends an Ethernet frame to the hosted netback of a child
//!   process (domain 0), whose host side echoes it back (source and
//!   destination swapped, in place) on the data plane's own thread; the
//!   round trip is timed at the frontend. Two parties, each pinned to its
//!   core: the frontend and the backend's data plane. The driver connects
//!   through xenstore and the xenbus handshake as in a guest. Each frame is
//!   written into a TX buffer the driver lends (a page of its persistently
//!   granted TX pool) and the echo is read in place in the RX page it
//!   arrived in, which goes back to the driver when dropped. `poll`: both
//!   spin (the driver in [`WaitMode::Poll`]); `event`: both sleep on the
//!   event channels whenever idle ([`WaitMode::Event`]).
//! - `netfront-stream-1500`: the driver sends 1500-byte frames one way as
//!   fast as the backend takes them, to a sink on the host side that reads
//!   every byte of each frame once (a sum of its 64-bit words) in the frame
//!   buffer the TX grant copy filled; throughput in Gbit/s of frame bytes.
//!   The grant copy is the one read of the frontend's bytes (the copy the
//!   hostile rules ask for: what the switch and the sink look at is the
//!   backend's own, unchangeable by the frontend); the frame buffer it
//!   lands in is reused at once (free lists are LIFO), so the sink's read
//!   hits the core's own cache.
//! - `netring-poll-64`: the ring-level frontend
//!   ([`hosted::netback::ringfront::RingFront`]: netfront's protocol layer
//!   on granted rings, copying frames into pooled granted buffers, no
//!   driver around it) in the `netfront-poll-64` setting: what the netif
//!   rings and the backend cost without the driver, so that the difference
//!   is the driver's own overhead.
//! - `memcpy`: one core copying 1500-byte frames from a 1 MiB ring of
//!   frames into a 64-frame one, in Gbit/s: what one core moves at best.
//! - `udp-stream`: 1500-byte UDP datagrams over loopback from one thread
//!   to another, in Gbit/s received.
//!
//! Both frontends are behind [`Front`]; the measured loops are generic over
//! it, so each is compiled for its frontend with no call through a vtable.

use std::io::Read;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use grant_tables::DomId;
use hosted::netback::ringfront::{RingFront, RingFrontConfig};
use hosted::netback::{
    vif_device, FrameMeta, HostHandler, HostOut, Netback, NetbackConfig, ServeMode,
};
use hosted::toolstack::add_device;
use hosted::xenstore::{connect_as, UnixTransport, XenstoreDaemon};
use hosted::{HostedHypervisor, HostedPlatform};
use netfront::{DriverConfig, FrameDevice, NetfrontDevice, RxFrame, TxFrame, WaitMode};

use crate::harness::{Entry, Recorder, Round, Throughput};
use crate::pin;
use crate::scratch::fresh_dir;

/// The environment variable that turns the bench binary into the netback
/// process. Its value is `<dir>;<mode>;<handler>`.
pub const NETBACK_ROLE_ENV: &str = "PINGPONG_NETBACK";

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId(0);
const FRONT_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x00, 0x01];
const ECHO_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xec];
/// No single wait of the bench may take longer than this.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames of a stream round, at least.
const STREAM_FRAMES: u64 = 200_000;
/// Frames put on the ring per push in the stream.
const STREAM_BATCH: usize = 32;

/// How the frontend and the backend wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// Both spin.
    Poll,
    /// Both sleep on event channels when idle.
    Event,
}

impl NetMode {
    fn name(self) -> &'static str {
        match self {
            NetMode::Poll => "poll",
            NetMode::Event => "event",
        }
    }

    fn parse(s: &str) -> Option<NetMode> {
        match s {
            "poll" => Some(NetMode::Poll),
            "event" => Some(NetMode::Event),
            _ => None,
        }
    }
}

/// What the bench needs of a network frontend.
pub trait Front {
    /// Sends one frame (written into the frontend's TX buffer), published
    /// at once.
    fn send(&mut self, frame: &[u8]) -> Result<(), String>;
    /// Puts one frame on the ring, published at the latest by `flush`.
    fn send_more(&mut self, frame: &[u8]) -> Result<(), String>;
    /// Publishes what `send_more` put.
    fn flush(&mut self) -> Result<(), String>;
    /// Frames that can be sent now.
    fn tx_room(&self) -> usize;
    /// TX completions since the last call: how many, how many not sent
    /// okay.
    fn reclaim(&mut self) -> Result<(usize, usize), String>;
    /// A received frame, if one is there: its first bytes into `head`, its
    /// length returned.
    fn try_recv(&mut self, head: &mut [u8]) -> Result<Option<usize>, String>;
    /// Sleeps until an RX event (at most `timeout`).
    fn wait_rx(&mut self, timeout: Duration) -> Result<(), String>;
}

impl Front for RingFront {
    fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        RingFront::send(self, frame).map_err(|e| e.to_string())
    }
    fn send_more(&mut self, frame: &[u8]) -> Result<(), String> {
        RingFront::send_more(self, 0, frame).map_err(|e| e.to_string())
    }
    fn flush(&mut self) -> Result<(), String> {
        self.flush_tx(0).map_err(|e| e.to_string())
    }
    fn tx_room(&self) -> usize {
        RingFront::tx_room(self, 0)
    }
    fn reclaim(&mut self) -> Result<(usize, usize), String> {
        self.reclaim_tx().map_err(|e| e.to_string())
    }
    fn try_recv(&mut self, head: &mut [u8]) -> Result<Option<usize>, String> {
        match self.recv_into(0, head).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(i) if i.dropped.is_some() => Err(format!("the backend dropped a frame: {i:?}")),
            Some(i) => Ok(Some(i.len)),
        }
    }
    fn wait_rx(&mut self, timeout: Duration) -> Result<(), String> {
        self.block_rx(timeout).map_err(|e| e.to_string())
    }
}

/// The netfront driver as the bench's frontend.
pub struct DriverFront {
    dev: NetfrontDevice<HostedPlatform, UnixTransport>,
    /// Frames sent, and completions reported, since the start.
    sent: u64,
    reported: u64,
    /// Frames the backend refused (dropped or errors) reported so far.
    bad: u64,
}

impl DriverFront {
    fn connect(plat: HostedPlatform, xenstore: &Path, mode: NetMode) -> Result<Self, String> {
        let xs = connect_as(xenstore, FRONT.0).map_err(|e| format!("frontend xenstore: {e}"))?;
        let mut cfg = DriverConfig::default();
        cfg.net.max_queues = 1;
        cfg.wait = match mode {
            NetMode::Poll => WaitMode::Poll,
            NetMode::Event => WaitMode::Event,
        };
        let mut dev = NetfrontDevice::new(plat, xs, "device/vif/0", cfg);
        dev.wait_up(STEP_TIMEOUT.as_nanos() as u64)
            .map_err(|e| format!("netfront: the vif did not come up: {e}"))?;
        Ok(DriverFront {
            dev,
            sent: 0,
            reported: 0,
            bad: 0,
        })
    }

    fn refused(&self) -> u64 {
        let s = self.dev.nic().stats();
        s.tx_dropped + s.tx_errors + s.tx_refused + s.tx_aborted
    }
}

impl DriverFront {
    /// Writes `frame` straight into a page of the driver's granted TX pool,
    /// which goes on the ring as it is; `more`: published with a later one.
    #[inline]
    fn put(&mut self, frame: &[u8], more: bool) -> Result<(), String> {
        let mut buf = match self.dev.tx_buffer(frame.len()) {
            Ok(Some(b)) => b,
            Ok(None) => return Err("netfront: no TX buffer free".into()),
            Err(e) => return Err(format!("netfront: {e}")),
        };
        buf.as_mut_slice()
            .ok_or("netfront: a frame of up to a page is not contiguous")?
            .copy_from_slice(frame);
        buf.set_more(more);
        self.dev.send(buf).map_err(|e| format!("netfront: {e}"))?;
        self.sent += 1;
        Ok(())
    }
}

impl Front for DriverFront {
    #[inline]
    fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        self.put(frame, false)
    }
    fn send_more(&mut self, frame: &[u8]) -> Result<(), String> {
        self.put(frame, true)
    }
    fn flush(&mut self) -> Result<(), String> {
        self.dev
            .nic_mut()
            .flush()
            .map_err(|e| format!("netfront: {e}"))
    }
    fn tx_room(&self) -> usize {
        self.dev.nic().pool_available().map_or(0, |(tx, _)| tx)
    }
    fn reclaim(&mut self) -> Result<(usize, usize), String> {
        self.dev.poll().map_err(|e| format!("netfront: {e}"))?;
        let done = self.sent - self.dev.nic().tx_pending() as u64;
        let bad = self.refused();
        let r = ((done - self.reported) as usize, (bad - self.bad) as usize);
        self.reported = done;
        self.bad = bad;
        Ok(r)
    }
    #[inline]
    fn try_recv(&mut self, head: &mut [u8]) -> Result<Option<usize>, String> {
        // Read in place, in the RX page the frame arrived in; dropping the
        // frame gives the page back to the driver.
        match self.dev.receive().map_err(|e| format!("netfront: {e}"))? {
            None => Ok(None),
            Some(f) => {
                let n = head.len().min(f.len());
                match f.as_slice() {
                    Some(s) => head[..n].copy_from_slice(&s[..n]),
                    None => f
                        .read_at(0, &mut head[..n])
                        .map_err(|e| format!("netfront: {e}"))?,
                }
                Ok(Some(f.len()))
            }
        }
    }
    fn wait_rx(&mut self, timeout: Duration) -> Result<(), String> {
        self.dev
            .wait(Some(timeout.as_nanos() as u64))
            .map(|_| ())
            .map_err(|e| format!("netfront: {e}"))
    }
}

/// The ring-level frontend (`netring-*`).
fn connect_ring_front(plat: HostedPlatform, xenstore: &Path) -> Result<RingFront, String> {
    let mut cfg = RingFrontConfig::default();
    cfg.net.max_queues = 1;
    RingFront::connect(plat, xenstore, 0, cfg, STEP_TIMEOUT)
        .map_err(|e| format!("ring-level frontend: {e}"))
}

/// Which frontend an entry runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    /// The netfront driver.
    Driver,
    /// The ring-level frontend.
    Ring,
}

/// The network entries, in the order of the table.
pub fn entries() -> Vec<Entry> {
    let nf = "the netfront driver (NetfrontDevice): frames written into its lent TX pages, echoes read in place in its RX pages";
    vec![
        Entry::new(
            "netfront-poll-64",
            &format!("a 64-byte frame through the hosted netback to an echo on the backend's data-plane thread and back; both ends spinning; {nf}"),
            "2 processes (domains), netfront driver, hosted netback, spinning",
            |r: Round, rec: &mut Recorder| {
                pingpong(Which::Driver, NetMode::Poll, 64, r.iters, r.warmup, rec)
            },
        )
        .msg_bytes(64),
        Entry::new(
            "netfront-poll-1500",
            &format!("the same with 1500-byte frames; {nf}"),
            "2 processes (domains), netfront driver, hosted netback, spinning",
            |r: Round, rec: &mut Recorder| {
                pingpong(Which::Driver, NetMode::Poll, 1500, r.iters, r.warmup, rec)
            },
        )
        .msg_bytes(1500),
        Entry::new(
            "netfront-event-64",
            &format!("64-byte frames, each end sleeping on its event channels whenever idle; {nf}"),
            "2 processes (domains), netfront driver, hosted netback, event channels",
            |r: Round, rec: &mut Recorder| {
                pingpong(Which::Driver, NetMode::Event, 64, r.iters, r.warmup, rec)
            },
        )
        .msg_bytes(64),
        Entry::new(
            "netfront-stream-1500",
            &format!("1500-byte frames one way into a sink on the backend's side that reads every byte once (a sum of 64-bit words), published 32 at a time (TxBuf::set_more), in Gbit/s; {nf}"),
            "2 processes (domains), netfront driver, hosted netback, spinning",
            |r: Round, rec: &mut Recorder| stream(r.iters, r.warmup, rec),
        )
        .msg_bytes(1500),
        Entry::new(
            "netring-poll-64",
            "netfront-poll-64 with the ring-level frontend instead of the driver (netfront's protocol layer on granted rings, frames copied into pooled granted buffers): the rings and the backend without the driver",
            "2 processes (domains), ring-level frontend, hosted netback, spinning",
            |r: Round, rec: &mut Recorder| {
                pingpong(Which::Ring, NetMode::Poll, 64, r.iters, r.warmup, rec)
            },
        )
        .msg_bytes(64),
    ]
}

/// The throughput peers, after the others in the table.
pub fn peer_entries() -> Vec<Entry> {
    vec![
        Entry::new(
            "netif-floor-64",
            "the least any netif implementation costs here: netfront-poll-64's exchange (TX request, copy out, copy into the posted RX buffer, RX and TX responses, each ring pushed with its fence) on two threads with no grants, no validation, no switch (benches::netfloor)",
            "threads, netif rings and pages, spinning",
            |r: Round, rec: &mut Recorder| {
                crate::netfloor::pingpong(64, false, r.iters, r.warmup, rec)
            },
        )
        .msg_bytes(64),
        Entry::new(
            "netif-floor-gnt-64",
            "netif-floor-64 with each copy a grant copy as the emulated hypervisor makes it: the front's entry pinned (pin record locked, GTF_reading/GTF_writing set) around the copy and unpinned after; what the grant protocol adds (benches::netfloor)",
            "threads, netif rings and pages, grant pins, spinning",
            |r: Round, rec: &mut Recorder| {
                crate::netfloor::pingpong(64, true, r.iters, r.warmup, rec)
            },
        )
        .msg_bytes(64),
        Entry::new(
            "netif-floor-stream-1500",
            "netfront-stream-1500's exchange on two threads with no grants, no validation, no switch: 1500-byte frames written into TX pages, copied out and read by the sink, in Gbit/s (benches::netfloor)",
            "threads, netif rings and pages, spinning",
            |r: Round, rec: &mut Recorder| crate::netfloor::stream(r.iters, rec),
        )
        .msg_bytes(1500),
        Entry::new(
            "memcpy",
            "one core copying 1500-byte frames from a 1 MiB ring of frames into a 64-frame ring, in Gbit/s",
            "one thread",
            |r: Round, rec: &mut Recorder| memcpy(r.iters, rec),
        )
        .msg_bytes(1500),
        Entry::new(
            "udp-stream",
            "1500-byte UDP datagrams over loopback from one thread to another, in Gbit/s received",
            "threads",
            |r: Round, rec: &mut Recorder| udp_stream(r.iters, rec),
        )
        .msg_bytes(1500),
    ]
}

/// The backend process; killed on every exit path, asked to stop first by
/// closing its stdin.
struct Backend {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Backend {
    fn spawn(dir: &Path, mode: NetMode, handler: &str) -> Result<Backend, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
        let mut child = Command::new(exe)
            .env(
                NETBACK_ROLE_ENV,
                format!("{};{};{handler}", dir.display(), mode.name()),
            )
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the netback process: {e}"))?;
        let stdin = child.stdin.take();
        Ok(Backend {
            child: Some(child),
            stdin,
        })
    }

    /// Asks it to stop and waits.
    fn finish(mut self) -> Result<(), String> {
        drop(self.stdin.take());
        if let Some(mut c) = self.child.take() {
            let end = Instant::now() + STEP_TIMEOUT;
            loop {
                match c.try_wait() {
                    Ok(Some(s)) if s.success() => return Ok(()),
                    Ok(Some(s)) => return Err(format!("the netback process failed: {s}")),
                    Ok(None) if Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Ok(None) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        return Err("the netback process did not stop".into());
                    }
                    Err(e) => return Err(format!("waiting for the netback process: {e}")),
                }
            }
        }
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sets up the two domains and the vif, runs `body` with the frontend
/// `which` connects.
fn with_vif(
    which: Which,
    mode: NetMode,
    handler: &str,
    body: impl FnOnce(&mut dyn FrontRun) -> Result<(), String>,
) -> Result<(), String> {
    let dir = fresh_dir("net")?;
    let result = (|| {
        let hv = HostedHypervisor::create(&dir)
            .map_err(|e| format!("hosted hypervisor in {}: {e}", dir.display()))?;
        let sock = dir.join("xenstored.sock");
        let daemon = XenstoreDaemon::spawn(&sock).map_err(|e| format!("xenstore daemon: {e}"))?;
        let mut toolstack =
            connect_as(&sock, BACK.0).map_err(|e| format!("toolstack xenstore: {e}"))?;
        let mac = FRONT_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        add_device(&mut toolstack, &vif_device(FRONT, BACK, 0, &mac))
            .map_err(|e| format!("toolstack: {e}"))?;
        let backend = Backend::spawn(&dir, mode, handler)?;
        let (a, _) = pin::pair();
        pin::pin_to(a);
        let plat = hv
            .join(FRONT)
            .map_err(|e| format!("joining as {FRONT}: {e}"))?;
        let r = match which {
            Which::Driver => {
                let mut front = DriverFront::connect(plat, &sock, mode)?;
                let r = body(&mut front);
                // Closed in order, so that the backend lets the vif go.
                let _ = front.dev.close(1_000_000_000);
                r
            }
            Which::Ring => {
                let mut front = connect_ring_front(plat, &sock)?;
                body(&mut front)
            }
        };
        let f = backend.finish();
        drop(daemon);
        r.and(f)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The measured loops, compiled for each frontend (the poll loop is
/// inlined into them: no call through a vtable per poll).
trait FrontRun {
    fn pingpong(
        &mut self,
        mode: NetMode,
        size: usize,
        iters: u64,
        warmup: u64,
        rec: &mut Recorder,
    ) -> Result<(), String>;
    fn stream(&mut self, iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String>;
}

impl<F: Front> FrontRun for F {
    fn pingpong(
        &mut self,
        mode: NetMode,
        size: usize,
        iters: u64,
        warmup: u64,
        rec: &mut Recorder,
    ) -> Result<(), String> {
        round_trips(self, mode, size, iters, warmup, rec)
    }
    fn stream(&mut self, iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String> {
        stream_frames(self, iters, warmup, rec)
    }
}

fn template(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&ECHO_MAC);
    f[6..12].copy_from_slice(&FRONT_MAC);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(22) {
        *b = i as u8;
    }
    f
}

/// Round trips of `size`-byte frames.
fn pingpong(
    which: Which,
    mode: NetMode,
    size: usize,
    iters: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    with_vif(which, mode, "echo", |f| {
        f.pingpong(mode, size, iters, warmup, rec)
    })
}

/// The measured loop of a ping-pong entry. Out of line, so that its code
/// does not depend on how the set-up around it was compiled.
#[inline(never)]
fn round_trips<F: Front>(
    f: &mut F,
    mode: NetMode,
    size: usize,
    iters: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    let total = iters + warmup;
    let mut frame = template(size);
    let mut head = [0u8; 32];
    for i in 0..total {
        frame[14..22].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        f.send(&frame)?;
        let len = wait_frame(f, mode, &mut head)?;
        let dt = t.elapsed().as_nanos() as u64;
        if len != size || head[14..22] != i.to_le_bytes() || head[0..6] != FRONT_MAC {
            return Err(format!(
                "round trip {i}: a wrong frame came back ({len} bytes)"
            ));
        }
        let (_, bad) = f.reclaim()?;
        if bad > 0 {
            return Err(format!("round trip {i}: the backend refused a frame"));
        }
        if i >= warmup {
            rec.record(dt);
        }
    }
    Ok(())
}

/// Waits for a received frame: spins (poll) or sleeps on the RX channel
/// (event). Inlined into the measured loop.
#[inline(always)]
fn wait_frame<F: Front>(f: &mut F, mode: NetMode, head: &mut [u8]) -> Result<usize, String> {
    let mut started: Option<Instant> = None;
    loop {
        for _ in 0..128 {
            if let Some(n) = f.try_recv(head)? {
                return Ok(n);
            }
            if mode == NetMode::Event {
                break;
            }
            std::hint::spin_loop();
        }
        let now = Instant::now();
        let s = *started.get_or_insert(now);
        let left = STEP_TIMEOUT.saturating_sub(now - s);
        if left.is_zero() {
            return Err("timed out waiting for the echo: the backend stopped answering".into());
        }
        if mode == NetMode::Event {
            f.wait_rx(left)?;
        }
    }
}

/// One-way stream of 1500-byte frames through the driver.
pub fn stream(iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String> {
    with_vif(Which::Driver, NetMode::Poll, "sink", |f| {
        f.stream(iters, warmup, rec)
    })
}

/// The measured part of the stream. Out of line, as the ping-pong loop.
#[inline(never)]
fn stream_frames<F: Front>(
    f: &mut F,
    iters: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    let frame = template(1500);
    let push = |f: &mut F, n: u64| -> Result<Duration, String> {
        let t0 = Instant::now();
        let (mut sent, mut done) = (0u64, 0u64);
        let mut last_progress = t0;
        let mut idle = 0u64;
        while done < n {
            let room = f.tx_room().min((n - sent) as usize).min(STREAM_BATCH);
            if room > 0 {
                for _ in 0..room {
                    f.send_more(&frame)?;
                }
                f.flush()?;
                sent += room as u64;
            }
            let (c, bad) = f.reclaim()?;
            if bad > 0 {
                return Err(format!(
                    "{bad} frame(s) of the stream refused by the backend"
                ));
            }
            if c > 0 {
                done += c as u64;
                idle = 0;
            } else {
                idle += 1;
                // The clock is read once every 4096 empty polls.
                if idle % 4096 == 0 {
                    let now = Instant::now();
                    if idle == 4096 {
                        last_progress = now;
                    } else if now - last_progress > STEP_TIMEOUT {
                        return Err("the stream stalled: the backend stopped taking frames".into());
                    }
                }
                std::hint::spin_loop();
            }
        }
        Ok(t0.elapsed())
    };
    push(f, warmup.max(1000))?;
    let n = iters.max(STREAM_FRAMES);
    let dt = push(f, n)?;
    rec.throughput(Throughput::default().with_gbit_s(n * 1500, dt));
    Ok(())
}

/// One core's memcpy of 1500-byte frames.
pub fn memcpy(iters: u64, rec: &mut Recorder) -> Result<(), String> {
    let (a, _) = pin::pair();
    pin::pin_to(a);
    const SRC_FRAMES: usize = (1 << 20) / 1500;
    let src: Vec<u8> = (0..SRC_FRAMES * 1500).map(|i| i as u8).collect();
    let mut dst = vec![0u8; 64 * 1536];
    let n = iters.max(STREAM_FRAMES) * 2;
    let copy = |dst: &mut [u8], n: u64| {
        for i in 0..n as usize {
            let s = (i % SRC_FRAMES) * 1500;
            let d = (i % 64) * 1536;
            dst[d..d + 1500].copy_from_slice(&src[s..s + 1500]);
            std::hint::black_box(&mut dst[d]);
        }
    };
    copy(&mut dst, 10_000);
    let t = Instant::now();
    copy(&mut dst, n);
    let dt = t.elapsed();
    std::hint::black_box(&dst);
    rec.throughput(Throughput::default().with_gbit_s(n * 1500, dt));
    Ok(())
}

/// 1500-byte UDP datagrams one way over loopback.
pub fn udp_stream(iters: u64, rec: &mut Recorder) -> Result<(), String> {
    let (a, b) = pin::pair();
    let rx = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("udp bind: {e}"))?;
    let tx = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("udp bind: {e}"))?;
    let to = rx.local_addr().map_err(|e| e.to_string())?;
    tx.connect(to).map_err(|e| format!("udp connect: {e}"))?;
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let n = iters.max(STREAM_FRAMES);
    let receiver = std::thread::Builder::new()
        .name("udp-stream-rx".into())
        .spawn(move || {
            pin::pin_to(b);
            let mut buf = [0u8; 2048];
            let (mut got, mut bytes) = (0u64, 0u64);
            let mut first = None;
            let mut last = Instant::now();
            while got < n {
                match rx.recv(&mut buf) {
                    Ok(k) => {
                        let now = Instant::now();
                        first.get_or_insert(now);
                        last = now;
                        got += 1;
                        bytes += k as u64;
                    }
                    // 200 ms of silence: the sender is done and the rest
                    // was dropped.
                    Err(_) => break,
                }
            }
            (bytes, first.map(|f| last - f))
        })
        .map_err(|e| format!("cannot spawn the receiver: {e}"))?;
    pin::pin_to(a);
    let payload = [0x5au8; 1500];
    for _ in 0..n {
        // A full socket buffer drops (UDP): goodput is what arrives.
        let _ = tx.send(&payload);
    }
    let (bytes, dt) = receiver
        .join()
        .map_err(|_| "the receiver panicked".to_string())?;
    let dt = dt.ok_or("no datagram arrived")?;
    rec.throughput(Throughput::default().with_gbit_s(bytes, dt));
    Ok(())
}

/// Echoes every frame back with its addresses swapped.
struct Echo;

impl HostHandler for Echo {
    fn frame(&mut self, frame: &mut [u8], _meta: &FrameMeta, out: &mut HostOut<'_>) {
        // In place: the frame buffer goes back with its addresses swapped.
        let (dst, rest) = frame.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
        out.send_back();
    }
}

/// Takes every frame (the stream's receiving end) and reads each of its
/// bytes once: a wrapping sum of its 64-bit words (and of the last bytes),
/// so that the stream pays for the data reaching the consumer, as a real
/// sink would, and the comparison with `memcpy` is one of bytes moved.
struct Sink {
    frames: u64,
    bytes: u64,
    sum: u64,
}

impl HostHandler for Sink {
    fn frame(&mut self, frame: &mut [u8], _meta: &FrameMeta, _out: &mut HostOut<'_>) {
        self.frames += 1;
        self.bytes += frame.len() as u64;
        self.sum = std::hint::black_box(sum_bytes(self.sum, frame));
    }
}

/// `sum` plus a wrapping sum of `frame`'s little-endian 64-bit words and
/// of its last bytes: the stream sinks' one read of every byte.
#[inline]
pub(crate) fn sum_bytes(mut sum: u64, frame: &[u8]) -> u64 {
    let mut words = frame.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        sum = sum.wrapping_add(u64::from_le_bytes(b));
    }
    for &b in words.remainder() {
        sum = sum.wrapping_add(u64::from(b));
    }
    sum
}

/// The netback process: `PINGPONG_NETBACK=<dir>;<mode>;<echo|sink>`.
/// Serves until its stdin closes.
pub fn backend_main(spec: &str) -> Result<(), String> {
    let mut parts = spec.split(';');
    let dir = PathBuf::from(parts.next().ok_or("missing directory")?);
    let mode = parts
        .next()
        .and_then(NetMode::parse)
        .ok_or("missing or unknown mode")?;
    let handler = parts.next().ok_or("missing handler")?;
    let plat = HostedPlatform::join(&dir, BACK).map_err(|e| format!("joining as {BACK}: {e}"))?;
    let (_, b) = pin::pair();
    let cfg = NetbackConfig::new()
        .mode(match mode {
            NetMode::Poll => ServeMode::Poll,
            NetMode::Event => ServeMode::Event,
        })
        .max_queues(1)
        .on_data_thread(move || {
            pin::pin_to(b);
        });
    let cfg = match handler {
        "echo" => cfg.host_handler(Echo),
        "sink" => cfg.host_handler(Sink {
            frames: 0,
            bytes: 0,
            sum: 0,
        }),
        other => return Err(format!("unknown handler {other}")),
    };
    let nb = Netback::start(plat, dir.join("xenstored.sock"), cfg).map_err(|e| e.to_string())?;
    let mut s = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut s);
    let failure = nb.failure();
    nb.stop();
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}
