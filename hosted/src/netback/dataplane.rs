//! The data plane: one thread that serves every vif's rings, runs the
//! switch, delivers to the host side and the TAP device.
//!
//! One pass serves every queue's TX ring (packets copied into frame
//! buffers and forwarded at once, so an echo on the host side answers in
//! the same pass), then every queue's RX ring (queued frames copied into
//! posted buffers). What the pass does when there was nothing to do
//! depends on [`ServeMode`]: spin, or ask every frontend for an event and
//! block on the channels (and the data plane's own wake-up channel).

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grant_tables::{EventChannels, PlatformError, Port};

use super::frames::{FrameBuf, FrameMem, FrameMeta, FramePool, FreeLists};
use super::switch::{Dest, PortId, Switch};
use super::tap::Tap;
use super::vif::{bump, Admit, Vif};
use super::{HostFrame, HostHandler, ServeMode, Shared};
use crate::evtchn::PortSet;
use crate::HostedPlatform;

/// Longest single timed sleep of the data plane in event mode (a sleep is
/// timed only while a storm, a throttle or queued frames need a look at a
/// given time; see `DataPlane::sleep`).
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Consecutive spurious events from one queue after which its channels
/// are left out of the wait (XSA-391 late EOI).
const SPURIOUS_LIMIT: u32 = 2;
/// Longest such throttle.
const MAX_THROTTLE: Duration = Duration::from_secs(1);

/// What the control side and the host side ask of the data plane.
pub(crate) enum Cmd {
    /// Serve a newly connected vif.
    AddVif(Box<Vif>),
    /// Stop serving a vif and drop it (unmapping its rings, closing its
    /// channels); `done` is told when that is over.
    RemoveVif {
        /// Its number.
        id: u32,
        /// Told when done.
        done: mpsc::Sender<()>,
    },
    /// A frame from the host side.
    Host(HostFrame),
    /// A frame read from the TAP device.
    Tap(Vec<u8>),
    /// Report the frame buffers free and in all: (free small, free big,
    /// small, big).
    Buffers(mpsc::Sender<[usize; 4]>),
    /// Stop the thread.
    Stop,
}

/// Where frames for the host port go.
pub(crate) enum HostSink {
    /// Into a channel the host side reads.
    Channel(mpsc::SyncSender<HostFrame>),
    /// To a handler called right here.
    Handler(Box<dyn HostHandler>),
}

/// What a host handler can do with a frame it got: send frames back into
/// the switch from the host port, written straight into frame buffers.
pub struct HostOut<'a> {
    mem: &'a FrameMem,
    free: &'a mut FreeLists,
    out: &'a mut Vec<(FrameBuf, PortId)>,
    dropped: u64,
    back: bool,
}

impl HostOut<'_> {
    /// Sends the frame being handled back into the switch from the host
    /// port, as the handler left it (an echo that swapped its addresses in
    /// place, say), once the handler returns: no new buffer, no copy.
    pub fn send_back(&mut self) {
        self.back = true;
    }

    /// Sends a copy of `frame` (at least 14 bytes).
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.send_with(frame.len(), FrameMeta::default(), |b| {
            b.copy_from_slice(frame)
        })
    }

    /// Sends a frame of `len` bytes (14 to 69632) with `meta`, written by
    /// `fill` in place. Returns `false` (and counts a drop) when no frame
    /// buffer is free or the length is out of range.
    pub fn send_with(&mut self, len: usize, meta: FrameMeta, fill: impl FnOnce(&mut [u8])) -> bool {
        if len < netfront::abi::ETH_HLEN {
            self.dropped += 1;
            return false;
        }
        let Some(mut buf) = self.free.alloc(len) else {
            self.dropped += 1;
            return false;
        };
        buf.meta = meta;
        fill(self.mem.bytes_mut(&mut buf));
        self.out.push((buf, PortId::Host));
        true
    }
}

pub(crate) struct DataPlane {
    pub plat: HostedPlatform,
    pub mode: ServeMode,
    pub cmds: mpsc::Receiver<Cmd>,
    /// Our end of the wake-up channel.
    pub wake: Port,
    pub vifs: Vec<Vif>,
    pub pool: FramePool,
    pub switch: Switch,
    pub host: HostSink,
    pub tap: Option<Tap>,
    pub shared: Arc<Shared>,
    fwd: Vec<(FrameBuf, PortId)>,
    spare: Vec<(FrameBuf, PortId)>,
    /// The ports a flooded frame goes to (kept to be reused).
    flood_ports: Vec<PortId>,
    tx_out: Vec<FrameBuf>,
    ports: Vec<Port>,
    owners: Vec<(usize, usize)>,
    /// The ports of the last sleep as one epoll set, kept while they stay
    /// the same (event mode sleeps with one system call).
    wait_set: Option<PortSet>,
    /// A coarse clock for timestamps (learned addresses, queued frames):
    /// read every [`CLOCK_EVERY`] passes and after every sleep, not per
    /// frame (reading the clock costs tens of nanoseconds here).
    now: Instant,
    passes: u32,
}

/// Passes between two readings of the clock.
const CLOCK_EVERY: u32 = 256;

impl DataPlane {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plat: HostedPlatform,
        mode: ServeMode,
        cmds: mpsc::Receiver<Cmd>,
        wake: Port,
        pool: FramePool,
        host: HostSink,
        tap: Option<Tap>,
        shared: Arc<Shared>,
    ) -> Self {
        DataPlane {
            plat,
            mode,
            cmds,
            wake,
            vifs: Vec::new(),
            pool,
            switch: Switch::new(),
            host,
            tap,
            shared,
            fwd: Vec::with_capacity(64),
            spare: Vec::with_capacity(64),
            flood_ports: Vec::with_capacity(8),
            tx_out: Vec::with_capacity(64),
            ports: Vec::new(),
            owners: Vec::new(),
            wait_set: None,
            now: Instant::now(),
            passes: 0,
        }
    }

    /// Runs until told to stop.
    pub fn run(mut self) {
        let mut idle_since: Option<Instant> = None;
        let mut check_cmds = true;
        let mut last_age = Instant::now();
        loop {
            self.passes = self.passes.wrapping_add(1);
            if self.passes % CLOCK_EVERY == 0 {
                self.now = Instant::now();
            }
            if check_cmds || self.plat.poll(self.wake).unwrap_or(true) {
                check_cmds = false;
                if !self.drain_cmds() {
                    break;
                }
            }
            let work = self.pass(false);
            if work {
                idle_since = None;
                continue;
            }
            for v in &self.vifs {
                if v.storms() && !v.is_disabled() {
                    v.storm(&self.plat);
                }
            }
            let spin_for = match self.mode {
                ServeMode::Poll => None,
                ServeMode::Event => Some(Duration::ZERO),
                ServeMode::Adaptive(d) => Some(d),
            };
            let Some(spin_for) = spin_for else {
                std::hint::spin_loop();
                continue;
            };
            let now = Instant::now();
            if now.duration_since(last_age) > Duration::from_secs(10) {
                self.switch.age(now);
                last_age = now;
            }
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) < spin_for {
                std::hint::spin_loop();
                continue;
            }
            // Going to sleep: ask for events, then look once more.
            let mut armed_work = false;
            for v in &mut self.vifs {
                if !v.is_disabled() {
                    armed_work |= v.arm();
                }
            }
            armed_work |= self.pass(true);
            if armed_work {
                idle_since = None;
                continue;
            }
            let woke = self.sleep(now);
            self.now = Instant::now();
            if woke == Some(self.wake) {
                check_cmds = true;
            }
            self.account_wakeup(woke);
        }
        self.shutdown();
    }

    /// Blocks on the channels of every queue not throttled, and the wake
    /// channel. Returns the port that woke us.
    fn sleep(&mut self, now: Instant) -> Option<Port> {
        self.ports.clear();
        self.owners.clear();
        self.ports.push(self.wake);
        self.owners.push((usize::MAX, 0));
        // A sleep is timed only when something on this side must happen
        // at a time (a storm kept going, a throttle lifted, queued frames
        // expired): every other reason to wake is an event (a frontend's
        // notify, a command on the wake channel). An untimed sleep arms no
        // timer in the kernel, which a timed one arms and cancels around
        // every sleep.
        let mut timeout = MAX_SLEEP;
        let mut timed = false;
        for (vi, v) in self.vifs.iter_mut().enumerate() {
            if v.is_disabled() {
                continue;
            }
            if v.storms() {
                // Keep the storm going.
                timeout = timeout.min(Duration::from_millis(1));
                timed = true;
            }
            for (qi, q) in v.queues.iter_mut().enumerate() {
                if let Some(until) = q.throttled_until {
                    if until > now {
                        timeout = timeout.min(until - now);
                        timed = true;
                        continue;
                    }
                    q.throttled_until = None;
                }
                self.ports.push(q.tx_port);
                self.owners.push((vi, qi));
                if q.rx_port != q.tx_port {
                    self.ports.push(q.rx_port);
                    self.owners.push((vi, qi));
                }
                if q.backlog_len() > 0 {
                    // Queued frames expire: look again in a while.
                    timeout = timeout.min(Duration::from_millis(10));
                    timed = true;
                }
            }
        }
        let timeout = timed.then_some(timeout.as_nanos() as u64);
        if self
            .wait_set
            .as_ref()
            .is_none_or(|s| s.ports() != self.ports.as_slice())
        {
            self.wait_set = match self.plat.port_set(&self.ports) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::debug!(
                        "netback: no epoll set for the channels ({e}); waiting with block_any"
                    );
                    None
                }
            };
        }
        let woke = match &self.wait_set {
            Some(set) => match self.plat.block_set(set, timeout) {
                Err(PlatformError::InvalidRequest { .. }) => {
                    // A port was closed and allocated again under us.
                    self.wait_set = None;
                    Ok(None)
                }
                other => other,
            },
            None => self.plat.block_any(&self.ports, timeout),
        };
        match woke {
            Ok(p) => p,
            Err(e) => {
                log::warn!("netback: waiting for events failed: {e}");
                std::thread::sleep(Duration::from_millis(1));
                None
            }
        }
    }

    /// After a wakeup: serves what came, and counts, per queue, events
    /// that brought no work (XSA-391); a queue with too many in a row is
    /// left out of the waits for a while.
    fn account_wakeup(&mut self, woke: Option<Port>) {
        let now = self.now;
        for v in self.vifs.iter_mut() {
            if v.is_disabled() {
                continue;
            }
            for qi in 0..v.queues.len() {
                let (tx_port, rx_port) = (v.queues[qi].tx_port, v.queues[qi].rx_port);
                // `block_any` cleared the pending bit of the port it
                // returned; the others are tested (and cleared) here.
                let ev = woke == Some(tx_port)
                    || woke == Some(rx_port)
                    || self.plat.poll(tx_port).unwrap_or(false)
                        | (rx_port != tx_port && self.plat.poll(rx_port).unwrap_or(false));
                let before = v.queues[qi].tx.req_cons();
                let tx_work = v.serve_tx(qi, &self.plat, &mut self.pool, &mut self.tx_out);
                let id = v.shared.id;
                for buf in self.tx_out.drain(..) {
                    self.fwd.push((buf, PortId::Vif(id)));
                }
                let rx_work = v.queues[qi].backlog_len() > 0
                    && v.serve_rx(qi, &self.plat, &mut self.pool, now, true);
                let q = &mut v.queues[qi];
                if ev && !tx_work && !rx_work && q.tx.req_cons() == before {
                    q.spurious += 1;
                    v.shared
                        .counters
                        .spurious_events
                        .fetch_add(1, Ordering::Relaxed);
                    if q.spurious > SPURIOUS_LIMIT {
                        let ms = u64::from(q.spurious - SPURIOUS_LIMIT).min(1000);
                        q.throttled_until = Some(now + Duration::from_millis(ms).min(MAX_THROTTLE));
                    }
                } else if tx_work || rx_work {
                    q.spurious = 0;
                }
            }
        }
        self.forward_all();
        // What the packets became (an echo) goes out in this wakeup, then
        // the TX responses.
        self.serve_rx_all(false);
        self.finish_tx();
    }

    /// Applies queued commands; `false` on Stop.
    fn drain_cmds(&mut self) -> bool {
        loop {
            match self.cmds.try_recv() {
                Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
                Ok(Cmd::AddVif(v)) => {
                    self.wait_set = None;
                    log::debug!("netback: data plane serves vif {}", v.shared.id);
                    self.vifs.push(*v);
                }
                Ok(Cmd::RemoveVif { id, done }) => {
                    self.wait_set = None;
                    if let Some(i) = self.vifs.iter().position(|v| v.shared.id == id) {
                        let mut v = self.vifs.remove(i);
                        for b in v.drain_backlog() {
                            self.pool.free(b);
                        }
                        for q in &v.queues {
                            let _ = self.plat.close(q.tx_port);
                            if q.rx_port != q.tx_port {
                                let _ = self.plat.close(q.rx_port);
                            }
                        }
                        self.switch.forget_port(PortId::Vif(id));
                        // The rings unmap here.
                        drop(v);
                    }
                    let _ = done.send(());
                }
                Ok(Cmd::Host(f)) => self.inject(f.data.as_slice(), f.meta, PortId::Host),
                Ok(Cmd::Tap(data)) => self.inject(&data, FrameMeta::default(), PortId::Tap),
                Ok(Cmd::Buffers(tx)) => {
                    let (fs, fb) = self.pool.free.available();
                    let (cs, cb) = self.pool.free.capacity();
                    let _ = tx.send([fs, fb, cs, cb]);
                }
            }
        }
    }

    /// A frame from outside the data plane into the switch.
    fn inject(&mut self, data: &[u8], meta: FrameMeta, port: PortId) {
        if data.len() < netfront::abi::ETH_HLEN {
            self.shared.host_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(mut buf) = self.pool.alloc(data.len()) else {
            self.shared.host_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        buf.meta = meta;
        self.pool.bytes_mut(&mut buf).copy_from_slice(data);
        self.fwd.push((buf, port));
        self.forward_all();
    }

    /// One pass over every queue. `arm`: the RX side asks for an event when
    /// frames wait for buffers.
    fn pass(&mut self, arm: bool) -> bool {
        let mut work = false;
        for v in &mut self.vifs {
            if v.is_disabled() {
                continue;
            }
            let id = v.shared.id;
            for q in 0..v.queues.len() {
                if v.serve_tx(q, &self.plat, &mut self.pool, &mut self.tx_out) {
                    work = true;
                }
                for buf in self.tx_out.drain(..) {
                    self.fwd.push((buf, PortId::Vif(id)));
                }
            }
        }
        if !self.fwd.is_empty() {
            self.forward_all();
        }
        work |= self.serve_rx_all(arm);
        self.finish_tx();
        work
    }

    /// Serves every queue's RX ring that has frames waiting. `arm`: as in
    /// [`Self::pass`].
    fn serve_rx_all(&mut self, arm: bool) -> bool {
        let now = self.now;
        let mut work = false;
        for v in &mut self.vifs {
            if v.is_disabled() {
                continue;
            }
            for q in 0..v.queues.len() {
                if v.queues[q].backlog_len() > 0 {
                    work |= v.serve_rx(q, &self.plat, &mut self.pool, now, arm);
                }
            }
        }
        work
    }

    /// Publishes the TX responses of the packets served since the last
    /// call, on every vif (see [`Vif::finish_tx`]): after the RX side, so
    /// that an answer to a packet (an echo) is on its way before the sender
    /// hears that the packet was sent.
    fn finish_tx(&mut self) {
        for v in &mut self.vifs {
            v.finish_tx(&self.plat);
        }
    }

    /// Forwards every frame waiting, and what the host handler sends back
    /// (bounded: a handler that answers every frame with a frame cannot
    /// keep the pass going for ever).
    fn forward_all(&mut self) {
        let mut rounds = 0;
        let now = self.now;
        while !self.fwd.is_empty() && rounds < 16 {
            rounds += 1;
            std::mem::swap(&mut self.fwd, &mut self.spare);
            let mut batch = std::mem::take(&mut self.spare);
            for (buf, ingress) in batch.drain(..) {
                self.forward(buf, ingress, now);
            }
            self.spare = batch;
        }
        for (buf, _) in self.fwd.drain(..) {
            self.pool.free(buf);
        }
    }

    fn forward(&mut self, buf: FrameBuf, ingress: PortId, now: Instant) {
        let dest = self.switch.forward(self.pool.bytes(&buf), ingress, now);
        match dest {
            Dest::Drop => self.pool.free(buf),
            Dest::Port(p) => self.deliver(buf, p, now),
            Dest::Flood => {
                // The port list is built in a vector kept from frame to
                // frame: no allocation per flooded frame.
                let mut ports = std::mem::take(&mut self.flood_ports);
                ports.clear();
                ports.push(PortId::Host);
                if self.tap.is_some() {
                    ports.push(PortId::Tap);
                }
                ports.extend(self.vifs.iter().map(|v| PortId::Vif(v.shared.id)));
                ports.retain(|p| *p != ingress);
                let last = ports.len().saturating_sub(1);
                let mut buf = Some(buf);
                for (i, &p) in ports.iter().enumerate() {
                    let frame = if i == last {
                        buf.take()
                    } else {
                        buf.as_ref().and_then(|b| self.pool.duplicate(b))
                    };
                    match frame {
                        Some(f) => self.deliver(f, p, now),
                        None => {
                            self.shared.host_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Some(b) = buf {
                    self.pool.free(b);
                }
                self.flood_ports = ports;
            }
        }
    }

    fn deliver(&mut self, mut buf: FrameBuf, port: PortId, now: Instant) {
        match port {
            PortId::Host => {
                match &mut self.host {
                    HostSink::Channel(tx) => {
                        let f = HostFrame {
                            data: self.pool.bytes(&buf).to_vec(),
                            meta: buf.meta,
                        };
                        if tx.try_send(f).is_err() {
                            self.shared.host_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    HostSink::Handler(h) => {
                        let FramePool { mem, free } = &mut self.pool;
                        let mut out = HostOut {
                            mem,
                            free,
                            out: &mut self.fwd,
                            dropped: 0,
                            back: false,
                        };
                        let meta = buf.meta;
                        h.frame(mem.bytes_mut(&mut buf), &meta, &mut out);
                        let (d, back) = (out.dropped, out.back);
                        if d > 0 {
                            self.shared.host_dropped.fetch_add(d, Ordering::Relaxed);
                        }
                        if back {
                            self.fwd.push((buf, PortId::Host));
                            return;
                        }
                    }
                }
                self.pool.free(buf);
            }
            PortId::Tap => {
                if let Some(tap) = &self.tap {
                    let ok = if buf.meta.gso.is_some() {
                        false
                    } else if buf.meta.csum_blank {
                        netfront::csum::complete_frame(self.pool.bytes_mut(&mut buf), false).is_ok()
                    } else {
                        true
                    };
                    if !ok || !tap.write(self.pool.bytes(&buf)) {
                        self.shared.host_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.pool.free(buf);
            }
            PortId::Vif(id) => {
                let Some(v) = self.vifs.iter_mut().find(|v| v.shared.id == id) else {
                    self.pool.free(buf);
                    return;
                };
                if v.is_disabled() {
                    self.pool.free(buf);
                    return;
                }
                let admit = v.admit(self.pool.bytes(&buf), &buf.meta);
                let ok = match admit {
                    Ok(Admit::AsIs) => true,
                    Ok(Admit::CompleteChecksum) => {
                        let done =
                            netfront::csum::complete_frame(self.pool.bytes_mut(&mut buf), false)
                                .is_ok();
                        buf.meta.csum_blank = false;
                        buf.meta.data_validated = false;
                        done
                    }
                    Err(why) => {
                        log::debug!("netback: frame for vif {id} dropped: {why:?}");
                        false
                    }
                };
                if !ok {
                    bump(&v.shared.counters.rx_dropped, 1);
                    self.pool.free(buf);
                    return;
                }
                let q = v.pick_queue(self.pool.bytes(&buf));
                if let Err(buf) = v.enqueue(q, buf, now) {
                    bump(&v.shared.counters.rx_dropped, 1);
                    self.pool.free(buf);
                }
            }
        }
    }

    fn shutdown(&mut self) {
        for mut v in self.vifs.drain(..) {
            for b in v.drain_backlog() {
                self.pool.free(b);
            }
            for q in &v.queues {
                let _ = self.plat.close(q.tx_port);
                if q.rx_port != q.tx_port {
                    let _ = self.plat.close(q.rx_port);
                }
            }
        }
        for (b, _) in self.fwd.drain(..) {
            self.pool.free(b);
        }
        log::debug!("netback: data plane stopped");
    }
}
