//! The network frontend of one vif: its connections' queues and pools, the
//! data path, and the xenbus [`Device`] steps.
//!
//! [`Netfront`] is the driver without the xenstore side: it is told when a
//! connection is set up ([`Netfront::setup_connection`], given what the
//! backend and toolstack wrote), when the backend is connected
//! ([`Netfront::backend_connected`]) and when the connection ends
//! ([`Netfront::end_connection`]). Its [`Device`] implementation does
//! exactly that from the xenbus handshake, and [`crate::NetfrontDevice`]
//! runs the handshake with it. It is also a [`FrameDevice`].
//!
//! # One connection
//! Setting up a connection negotiates ([`crate::features::negotiate`]),
//! then makes, for the backend's domain:
//! - a TX pool and an RX pool of whole pages ([`BufferPool`]), granted
//!   once for the connection's life (TX read-only, RX read-write), in
//!   [`PoolMode::Untrusted`] when the backend is untrusted (`trusted` = 0
//!   or [`crate::features::NetConfig::trust_backend`] off): the pages hold
//!   nothing but payload and are zeroed whenever they come back;
//! - per queue, a one-page TX ring and RX ring ([`grant_tables::GrantedRing`]) and one
//!   event channel, or two when split channels are negotiated;
//! - RX buffers posted on every queue at once (the whole ring), so the
//!   backend has room for a maximal packet as soon as it connects.
//!
//! # Reconnection
//! When the connection ends (the backend went away, or the device closed),
//! packets in flight on the TX rings, and frames waiting for room, are
//! **failed, not re-sent** (as Linux's netfront does): their pages go back
//! to the pool and [`NetStats::tx_aborted`] counts them. The posted RX
//! buffers are taken back. The rings, channels and pools are released; a
//! grant the backend still maps is quarantined by the grant table (never
//! reused) and recovered by [`GrantTable::retry_quarantined`], which every
//! poll calls. Frames the application still holds keep their old pool
//! alive until dropped; a TX buffer lent before the reconnection and sent
//! after it is copied into the new connection's pages. The next connection
//! starts clean, including after a protocol violation.
//!
//! [`GrantTable::retry_quarantined`]: grant_tables::GrantTable::retry_quarantined

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use grant_tables::{Access, BufferPool, DomId, Platform, PoolBuffer, PoolConfig, PoolMode, Port};
use xenbus::{
    Connection, Device, DeviceError, TeardownReason, Transaction, Transport, Xenstore, XsError,
};

use crate::abi::{ETH_HLEN, PAGE_SIZE, XEN_NETIF_MAX_TX_SIZE};
use crate::buffers::{NetRxFrame, TxBuf};
use crate::error::NetError;
use crate::features::{
    frontend_keys, negotiate, BackendFeatures, FallibleKeys, FrontendInfo, FrontendKey, KeySource,
    Negotiated, NetConfig,
};
use crate::frame::{FrameDevice, FrameError, LinkInfo, TxFrame};
use crate::inline::PageList;
use crate::queue::Queue;
use crate::rx::RxConfig;
use crate::stats::NetStats;
use crate::tx::{TxCaps, TxOffload, MAX_TX_REQUESTS};

/// How [`FrameDevice::wait`] waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// Spin on the rings until something happens or the timeout passes:
    /// the lowest latency, a core busy all the time.
    Poll,
    /// Ask the backend for a notification, then block on the event
    /// channels: no CPU while idle, a wake-up's latency per event.
    ///
    /// Received frames always wake the wait. Completed sends wake it only
    /// when TX buffers are scarce (half the TX pool is out, or frames wait
    /// for room on a ring); otherwise completions are collected at the next
    /// receive or poll, so a request/response exchange costs the backend
    /// one notification (its response), not two, and the frontend one
    /// wake-up. With one queue and no TX events asked for, the wait is on
    /// the RX channel alone ([`Platform::block`](grant_tables::EventChannels::block)),
    /// which a platform may serve more cheaply than a wait on several.
    Event,
    /// Spin for up to `spin_ns` nanoseconds, then block as [`WaitMode::Event`].
    Adaptive {
        /// How long to spin before blocking.
        spin_ns: u64,
    },
}

/// The driver's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// What to negotiate.
    pub net: NetConfig,
    /// RX pool pages per queue: the ring's 256 posted buffers plus what the
    /// application may hold at once (at least 256).
    pub rx_buffers_per_queue: usize,
    /// TX pool pages per queue (at least 18, a maximal frame).
    pub tx_buffers_per_queue: usize,
    /// How [`FrameDevice::wait`] waits.
    pub wait: WaitMode,
    /// Most packets taken off one queue's RX ring per poll (so an RX flood
    /// cannot starve TX or the other queues).
    pub rx_budget: usize,
}

impl Default for DriverConfig {
    /// [`NetConfig::default`], 512 RX and 256 TX pages per queue, adaptive
    /// waits spinning 50 µs, 64 packets per queue per poll.
    fn default() -> Self {
        DriverConfig {
            net: NetConfig::default(),
            rx_buffers_per_queue: 512,
            tx_buffers_per_queue: 256,
            wait: WaitMode::Adaptive { spin_ns: 50_000 },
            rx_budget: 64,
        }
    }
}

/// TX pages a connection keeps back from completed packets for the next
/// frames (see `Conn::tx_stash`): enough for request/response traffic,
/// where each frame can reuse the page of the one before; a stream cycles
/// through the pool (first in, first out) as before, which spares it
/// writing into pages the backend has just read.
const TX_STASH: usize = 4;

/// One connection's resources.
struct Conn<P: Platform>
where
    P::Pages: 'static,
{
    number: u64,
    peer: DomId,
    neg: Negotiated,
    caps: TxCaps,
    queues: Vec<Queue<P>>,
    tx_pool: BufferPool<P>,
    rx_pool: BufferPool<P>,
    /// TX pages back from completed packets, reused first (last in, first
    /// out: the page most recently written is the one most likely still
    /// in this core's cache), at most [`TX_STASH`]; only with a trusted
    /// backend (for an untrusted one every page goes back to the pool,
    /// which zeroes it).
    tx_stash: Vec<PoolBuffer<P>>,
    /// [`TX_STASH`], or 0 for an untrusted backend.
    tx_stash_max: usize,
    keys: Vec<FrontendKey>,
    connected: bool,
    ports: Vec<Port>,
}

/// The network frontend of one vif (see the [module docs](self)).
pub struct Netfront<P: Platform>
where
    P::Pages: 'static,
{
    platform: P,
    config: DriverConfig,
    conn: Option<Conn<P>>,
    broken: Option<NetError>,
    stats: NetStats,
    /// The queue `receive` looks at first.
    rx_next: usize,
}

fn broken(e: &NetError) -> FrameError {
    FrameError::Broken(e.to_string())
}

impl<P: Platform> Netfront<P>
where
    P::Pages: 'static,
{
    /// A device with no connection yet.
    pub fn new(platform: P, config: DriverConfig) -> Self {
        Netfront {
            platform,
            config,
            conn: None,
            broken: None,
            stats: NetStats::default(),
            rx_next: 0,
        }
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The configuration.
    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Why the device is broken, if it is: a protocol violation by the
    /// backend (or a platform failure) on the current connection. It lasts
    /// until the connection ends.
    pub fn broken(&self) -> Option<&NetError> {
        self.broken.as_ref()
    }

    /// The current connection's negotiated configuration.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.conn.as_ref().map(|c| &c.neg)
    }

    /// The current connection's number (as the handshake numbers it).
    pub fn connection(&self) -> Option<u64> {
        self.conn.as_ref().map(|c| c.number)
    }

    /// Whether frames can flow: a connection whose backend is connected,
    /// and not broken.
    pub fn is_up(&self) -> bool {
        self.broken.is_none() && self.conn.as_ref().is_some_and(|c| c.connected)
    }

    /// What TX offloads the current connection allows.
    pub fn tx_caps(&self) -> Option<TxCaps> {
        self.conn.as_ref().map(|c| c.caps)
    }

    /// The keys published for the current connection (relative to the
    /// frontend's directory).
    pub fn frontend_keys(&self) -> &[FrontendKey] {
        self.conn.as_ref().map_or(&[], |c| &c.keys)
    }

    /// Free pages in the current connection's (TX, RX) pools.
    pub fn pool_available(&self) -> Option<(usize, usize)> {
        self.conn.as_ref().map(|c| {
            (
                c.tx_pool.available() + c.tx_stash.len(),
                c.rx_pool.available(),
            )
        })
    }

    /// Packets in flight or waiting for ring room, over every queue.
    pub fn tx_pending(&self) -> usize {
        self.conn
            .as_ref()
            .map_or(0, |c| c.queues.iter().map(|q| q.tx_pending()).sum())
    }

    /// The event channel ports of the current connection, in queue order.
    pub fn ports(&self) -> &[Port] {
        self.conn.as_ref().map_or(&[], |c| &c.ports)
    }

    /// Sets up connection `number` to the backend domain `peer`: reads the
    /// backend's feature keys from `backend` and the toolstack's keys from
    /// `frontend`, negotiates, and makes the connection's pools, rings and
    /// event channels (see the module docs). A connection still set up is
    /// ended first. On an error nothing stays set up.
    pub fn setup_connection(
        &mut self,
        number: u64,
        peer: DomId,
        backend: &mut impl KeySource,
        frontend: &mut impl KeySource,
    ) -> Result<(), NetError> {
        let be = BackendFeatures::read(backend)?;
        let fe = FrontendInfo::read(frontend)?;
        self.setup_negotiated(number, peer, &be, &fe)
    }

    /// [`Self::setup_connection`] with the keys already parsed.
    pub fn setup_negotiated(
        &mut self,
        number: u64,
        peer: DomId,
        backend: &BackendFeatures,
        frontend: &FrontendInfo,
    ) -> Result<(), NetError> {
        if self.conn.is_some() {
            self.end_connection("a new connection replaces it");
        }
        if self.config.rx_buffers_per_queue < 256 || self.config.tx_buffers_per_queue < 18 {
            return Err(NetError::Feature(crate::features::FeatureError::Config(
                "rx_buffers_per_queue must be at least 256 and tx_buffers_per_queue at least 18",
            )));
        }
        let neg = negotiate(backend, frontend, &self.config.net)?;
        let mode = if neg.untrusted_backend {
            PoolMode::Untrusted
        } else {
            PoolMode::Trusted
        };
        let nq = neg.queues as usize;
        let pages = |per: usize| per.checked_mul(nq).ok_or(NetError::Internal("pool size"));
        let tx_pool = BufferPool::new(
            &self.platform,
            peer,
            PoolConfig {
                pages: pages(self.config.tx_buffers_per_queue)?,
                buffer_size: PAGE_SIZE,
                access: Access::ReadOnly,
                mode,
            },
        )?;
        let rx_pool = BufferPool::new(
            &self.platform,
            peer,
            PoolConfig {
                pages: pages(self.config.rx_buffers_per_queue)?,
                buffer_size: PAGE_SIZE,
                access: Access::ReadWrite,
                mode,
            },
        )?;
        let rx_cfg = RxConfig::from_negotiated(&neg);
        let mut queues: Vec<Queue<P>> = Vec::with_capacity(nq);
        for i in 0..nq {
            match Queue::new(
                &self.platform,
                peer,
                i as u16,
                neg.split_event_channels,
                rx_cfg,
            ) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    for mut q in queues {
                        q.shut(&self.platform);
                    }
                    return Err(e);
                }
            }
        }
        let built = (|| {
            let setups = queues
                .iter()
                .map(Queue::setup_keys)
                .collect::<Result<Vec<_>, _>>()?;
            let keys = frontend_keys(&neg, &setups)?;
            let mut scratch = NetStats::default();
            for q in queues.iter_mut() {
                q.refill_rx(&self.platform, &rx_pool, &mut scratch)?;
            }
            Ok::<_, NetError>(keys)
        })();
        let keys = match built {
            Ok(k) => k,
            Err(e) => {
                for mut q in queues {
                    q.shut(&self.platform);
                }
                return Err(e);
            }
        };
        let ports = queues
            .iter()
            .flat_map(|q| q.ports().iter().copied().collect::<Vec<_>>())
            .collect();
        log::info!(
            "netfront: connection {number} to {peer}: {} queue(s), split channels {}, SG {}, GSO v4 {} v6 {}, csum offload v4 {} v6 {}, MTU {}, headroom {}, {} backend",
            neg.queues,
            neg.split_event_channels,
            neg.tx_sg,
            neg.tx_gso_tcpv4,
            neg.tx_gso_tcpv6,
            neg.tx_csum_ipv4,
            neg.tx_csum_ipv6,
            neg.mtu,
            neg.rx_headroom,
            if neg.untrusted_backend { "untrusted" } else { "trusted" },
        );
        self.broken = None;
        let tx_stash_max = if neg.untrusted_backend { 0 } else { TX_STASH };
        self.conn = Some(Conn {
            number,
            peer,
            caps: TxCaps::from_negotiated(&neg),
            neg,
            queues,
            tx_stash: Vec::with_capacity(tx_stash_max),
            tx_stash_max,
            tx_pool,
            rx_pool,
            keys,
            connected: false,
            ports,
        });
        Ok(())
    }

    /// The backend reached Connected: frames may flow. Kicks the backend on
    /// every channel (as Linux's netfront does at connect), so it looks at
    /// the posted RX buffers.
    pub fn backend_connected(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.connected {
            return;
        }
        conn.connected = true;
        self.stats.connections += 1;
        for &p in &conn.ports {
            if let Err(e) = self.platform.notify(p) {
                log::warn!("netfront: kicking the backend on {p}: {e}");
            }
        }
        log::info!("netfront: connection {} is up", conn.number);
    }

    /// Ends the current connection (see the module docs for what becomes of
    /// frames in flight); `why` goes to the log.
    pub fn end_connection(&mut self, why: &str) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let mut aborted = 0usize;
        for q in conn.queues.iter_mut() {
            aborted += q.shut(&self.platform);
        }
        self.stats.tx_aborted += aborted as u64;
        self.stats.disconnections += 1;
        if let Some(e) = self.broken.take() {
            log::info!("netfront: connection {} ends broken ({e})", conn.number);
        }
        log::info!(
            "netfront: connection {} to {} ended ({why}); {aborted} TX frame(s) failed",
            conn.number,
            conn.peer
        );
        // Rings and pools end their grants as they drop (quarantined while
        // the backend maps them).
        drop(conn);
        self.retry_grants();
    }

    fn retry_grants(&mut self) {
        if let Ok(table) = self.platform.grant_table() {
            let n = table.retry_quarantined();
            self.stats.grants_recovered += n as u64;
        }
    }

    fn fail(&mut self, e: NetError) -> FrameError {
        log::error!("netfront: the device is broken: {e}");
        let out = broken(&e);
        self.broken = Some(e);
        out
    }

    fn check_up(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.broken {
            return Err(broken(e));
        }
        match &self.conn {
            Some(c) if c.connected => Ok(()),
            _ => Err(FrameError::LinkDown),
        }
    }

    /// Completions, RX reaping and refills on every queue.
    fn service(&mut self) -> Result<bool, FrameError> {
        self.service_with(false)
    }

    /// [`Self::service`], or, with `rx_only`, RX reaping and refills only
    /// when they brought frames (TX completions and the TX backlog wait
    /// for the next call that finds none, or for [`FrameDevice::poll`]):
    /// `receive` hands a frame that arrived over without first reading the
    /// TX ring, whose index line the backend is likely writing just then
    /// (it answers a packet after delivering what the packet became, an
    /// echo say).
    fn service_with(&mut self, rx_only: bool) -> Result<bool, FrameError> {
        self.retry_grants();
        if let Some(e) = &self.broken {
            return Err(broken(e));
        }
        let budget = self.config.rx_budget.max(1);
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        if !conn.connected {
            return Ok(false);
        }
        let mut progress = false;
        let mut result = Ok(());
        for q in conn.queues.iter_mut() {
            let r = (|| {
                progress |= q.reap_rx(budget, &mut self.stats)? > 0;
                q.refill_rx(&self.platform, &conn.rx_pool, &mut self.stats)
            })();
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() && !(rx_only && progress) {
            for q in conn.queues.iter_mut() {
                let r = (|| {
                    progress |=
                        q.complete_tx(&mut self.stats, &mut conn.tx_stash, conn.tx_stash_max)? > 0;
                    q.flush(&self.platform, &conn.caps, &mut self.stats)
                })();
                if let Err(e) = r {
                    result = Err(e);
                    break;
                }
            }
        }
        match result {
            Ok(()) => Ok(progress),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn has_ready(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.queues.iter().any(|q| q.ready() > 0))
    }

    /// Asks for notifications on every RX ring, and on the TX rings when
    /// TX buffers are scarce (see [`WaitMode::Event`]). Returns whether work
    /// is already waiting, and whether TX events were asked for on some
    /// queue.
    fn arm(&mut self) -> Result<(bool, bool), FrameError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok((false, false));
        };
        let scarce = conn.tx_pool.available() + conn.tx_stash.len() < conn.tx_pool.capacity() / 2;
        let mut work = false;
        let mut tx_armed = false;
        let mut result = Ok(());
        for q in conn.queues.iter_mut() {
            tx_armed |= q.wants_tx_events(scarce);
            match q.arm(scarce) {
                Ok(w) => work |= w,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        match result {
            Ok(()) => Ok((work, tx_armed)),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn spin_until(&mut self, deadline: Option<u64>) -> Result<bool, FrameError> {
        loop {
            if self.service()? || self.has_ready() {
                return Ok(true);
            }
            if !self.is_up() {
                // Nothing on this side can change that: the handshake does.
                return Ok(false);
            }
            if deadline.is_some_and(|d| self.platform.now_ns() >= d) {
                return Ok(false);
            }
            core::hint::spin_loop();
        }
    }

    fn block(&mut self, deadline: Option<u64>) -> Result<bool, FrameError> {
        if self.service()? || self.has_ready() {
            return Ok(true);
        }
        let (work, tx_armed) = self.arm()?;
        if work {
            return Ok(true);
        }
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let now = self.platform.now_ns();
                if now >= d {
                    return Ok(false);
                }
                Some(d - now)
            }
        };
        let woken = match &self.conn {
            // One queue and no TX events asked for: only its RX channel can
            // bring anything, and a wait on one port is the platform's
            // cheapest (on the hosted platform a futex wait on the port's
            // pending word, where a wait on several is a `futex_waitv`
            // that announces on every port).
            Some(c) if c.queues.len() == 1 && !tx_armed => match c.queues.first() {
                Some(q) => self.platform.block(q.rx_port(), timeout),
                None => return Ok(false),
            },
            Some(c) if !c.ports.is_empty() => self
                .platform
                .block_any(&c.ports, timeout)
                .map(|p| p.is_some()),
            _ => return Ok(false),
        };
        match woken {
            Ok(woken) => Ok(woken),
            Err(e) => Err(self.fail(NetError::Platform {
                op: "waiting on the event channels",
                error: e,
            })),
        }
    }

    fn max_frame(conn: &Conn<P>) -> usize {
        let mtu_frame = (conn.neg.mtu as usize).saturating_add(ETH_HLEN);
        if conn.neg.tx_sg {
            mtu_frame.min(XEN_NETIF_MAX_TX_SIZE)
        } else {
            mtu_frame.min(PAGE_SIZE)
        }
    }

    /// Takes `pages` pages of the TX pool (the stashed ones first), or
    /// none.
    fn take_tx_pages(
        pool: &BufferPool<P>,
        stash: &mut Vec<PoolBuffer<P>>,
        pages: usize,
    ) -> Option<PageList<grant_tables::PoolBuffer<P>, MAX_TX_REQUESTS>> {
        let mut bufs = PageList::new();
        for _ in 0..pages {
            let b = match stash.pop() {
                Some(b) => b,
                None => pool.take()?,
            };
            if bufs.push(b).is_err() {
                return None;
            }
        }
        Some(bufs)
    }

    fn lend_tx(&mut self, len: usize) -> Result<Option<TxBuf<P>>, FrameError> {
        self.check_up()?;
        let Some(conn) = self.conn.as_ref() else {
            return Err(FrameError::LinkDown);
        };
        let max = Self::max_frame(conn);
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        if len < ETH_HLEN {
            return Err(FrameError::Invalid(alloc::format!(
                "a frame of {len} bytes is shorter than an Ethernet header (14)"
            )));
        }
        let pages = len.div_ceil(PAGE_SIZE);
        let Some(conn) = self.conn.as_mut() else {
            return Err(FrameError::LinkDown);
        };
        Ok(
            Self::take_tx_pages(&conn.tx_pool, &mut conn.tx_stash, pages).map(|bufs| TxBuf {
                bufs,
                len,
                offload: TxOffload::default(),
                queue: None,
                connection: conn.number,
                more: false,
            }),
        )
    }

    /// Publishes the frames sent with [`TxBuf::set_more`] that are still
    /// unpublished, on every queue (notifying the backend where it asked).
    pub fn flush(&mut self) -> Result<(), FrameError> {
        self.check_up()?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(FrameError::LinkDown);
        };
        let mut result = Ok(());
        for q in conn.queues.iter_mut() {
            if let Err(e) = q.flush(&self.platform, &conn.caps, &mut self.stats) {
                result = Err(e);
                break;
            }
        }
        result.map_err(|e| self.fail(e))
    }

    /// The queue a frame goes on: the application's choice, else a hash of
    /// its IPv4 addresses and ports (one flow stays on one queue, in
    /// order).
    fn pick_queue(frame: &TxBuf<P>, queues: usize) -> usize {
        if queues <= 1 {
            return 0;
        }
        if let Some(q) = frame.queue {
            return usize::from(q) % queues;
        }
        let mut head = [0u8; 38];
        let n = frame.len.min(head.len());
        if frame.read_at(0, &mut head[..n]).is_err() || n < 34 {
            return 0;
        }
        let bytes: &[u8] = if head[12..14] == [0x08, 0x00] {
            &head[26..n]
        } else {
            &head[..12]
        };
        // FNV-1a.
        let mut h: u32 = 0x811c_9dc5;
        for &b in bytes {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h as usize % queues
    }

    fn send_frame(&mut self, mut frame: TxBuf<P>) -> Result<(), FrameError> {
        self.check_up()?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(FrameError::LinkDown);
        };
        if frame.connection != conn.number {
            // Lent by an earlier connection: its pages are granted for that
            // one. Copy the frame into this connection's pages.
            let Some(mut bufs) = Self::take_tx_pages(
                &conn.tx_pool,
                &mut conn.tx_stash,
                frame.len.div_ceil(PAGE_SIZE),
            ) else {
                self.stats.tx_aborted += 1;
                return Ok(());
            };
            let mut page = [0u8; 256];
            let mut at = 0usize;
            while at < frame.len {
                let n = (frame.len - at).min(page.len());
                frame.read_at(at, &mut page[..n])?;
                if let Some(b) = bufs.get_mut(at / PAGE_SIZE) {
                    let _ = b.write_at(at % PAGE_SIZE, &page[..n]);
                }
                at += n;
            }
            frame.bufs = bufs;
            frame.connection = conn.number;
        }
        let qi = Self::pick_queue(&frame, conn.queues.len());
        let Some(q) = conn.queues.get_mut(qi) else {
            return Err(FrameError::LinkDown);
        };
        match q.send(&self.platform, frame, &conn.caps, &mut self.stats) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(FrameError::Invalid(msg)),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn next_frame(&mut self) -> Result<Option<NetRxFrame<P>>, FrameError> {
        if let Some(e) = &self.broken {
            return Err(broken(e));
        }
        for attempt in 0..2 {
            if let Some(conn) = self.conn.as_mut() {
                let n = conn.queues.len();
                for i in 0..n {
                    let qi = (self.rx_next + i) % n;
                    if let Some(f) = conn.queues[qi].pop_ready() {
                        self.rx_next = (qi + 1) % n;
                        return Ok(Some(f));
                    }
                }
            }
            if attempt == 0 && !self.service_with(true)? {
                break;
            }
        }
        Ok(None)
    }
}

impl<P: Platform> Drop for Netfront<P>
where
    P::Pages: 'static,
{
    /// Ends the connection: channels closed, grants ended (quarantined
    /// while the backend still maps them).
    fn drop(&mut self) {
        self.end_connection("the device was dropped");
    }
}

impl<P: Platform> FrameDevice for Netfront<P>
where
    P::Pages: 'static,
{
    type Tx = TxBuf<P>;
    type Rx = NetRxFrame<P>;

    fn link(&self) -> LinkInfo {
        match &self.conn {
            Some(c) => LinkInfo {
                up: self.is_up(),
                mac: c.neg.mac.0,
                mtu: c.neg.mtu as usize,
                max_frame: Self::max_frame(c),
            },
            None => LinkInfo {
                up: false,
                mac: [0; 6],
                mtu: 0,
                max_frame: 0,
            },
        }
    }

    fn tx_buffer(&mut self, len: usize) -> Result<Option<TxBuf<P>>, FrameError> {
        if let Some(b) = self.lend_tx(len)? {
            return Ok(Some(b));
        }
        // Out of pages: completions may give some back.
        self.service()?;
        self.lend_tx(len)
    }

    fn send(&mut self, frame: TxBuf<P>) -> Result<(), FrameError> {
        self.send_frame(frame)
    }

    fn receive(&mut self) -> Result<Option<NetRxFrame<P>>, FrameError> {
        self.next_frame()
    }

    fn poll(&mut self) -> Result<bool, FrameError> {
        self.service()
    }

    fn wait(&mut self, timeout_ns: Option<u64>) -> Result<bool, FrameError> {
        let now = self.platform.now_ns();
        let deadline = timeout_ns.map(|t| now.saturating_add(t));
        match self.config.wait {
            WaitMode::Poll => self.spin_until(deadline),
            WaitMode::Event => self.block(deadline),
            WaitMode::Adaptive { spin_ns } => {
                let spin_end = now.saturating_add(spin_ns);
                let first = deadline.map_or(spin_end, |d| d.min(spin_end));
                if self.spin_until(Some(first))? {
                    return Ok(true);
                }
                if deadline.is_some_and(|d| d <= spin_end) {
                    return Ok(false);
                }
                self.block(deadline)
            }
        }
    }
}

/// Reads xenstore keys below `dir` as a [`KeySource`].
fn xs_keys<'a, T: Transport>(
    xs: &'a mut Xenstore<T>,
    dir: &'a str,
) -> FallibleKeys<impl FnMut(&str) -> Result<Option<String>, String> + 'a> {
    FallibleKeys(move |key: &str| {
        let path = xenbus::path::join(dir, key);
        match xs.try_read(&path) {
            Ok(None) => Ok(None),
            Ok(Some(v)) => String::from_utf8(v)
                .map(Some)
                .map_err(|_| "the value is not UTF-8".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
}

impl<P: Platform, T: Transport> Device<T> for Netfront<P>
where
    P::Pages: 'static,
{
    fn setup(&mut self, xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        let be = BackendFeatures::read(&mut xs_keys(xs, &conn.backend));
        let be = be.map_err(|e| DeviceError::Device(e.to_string()))?;
        let fe = FrontendInfo::read(&mut xs_keys(xs, &conn.frontend));
        let fe = fe.map_err(|e| DeviceError::Device(e.to_string()))?;
        self.setup_negotiated(conn.number, conn.peer, &be, &fe)
            .map_err(|e| DeviceError::Device(e.to_string()))
    }

    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        let keys = self.frontend_keys();
        for k in keys {
            tx.write(&conn.frontend_key(&k.key), k.value.as_bytes())?;
        }
        // An earlier connection to a multi-queue backend left its queue
        // count: a backend that finds it reads `queue-N/` keys of rings
        // that are gone. Take it away when this connection has none.
        const NUM_QUEUES: &str = "multi-queue-num-queues";
        if !keys.iter().any(|k| k.key == NUM_QUEUES) {
            match tx.rm(&conn.frontend_key(NUM_QUEUES)) {
                Err(e) if e.is_not_found() => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn teardown(&mut self, conn: &Connection, reason: TeardownReason) {
        if self.connection() == Some(conn.number) {
            let why = alloc::format!("{reason:?}");
            self.end_connection(&why);
        }
    }
}
