//! A minimal netif frontend at the ring level, for tests and benches of
//! the backend: not the netfront driver.
//!
//! It is assembled from netfront's protocol layer (negotiation, TX
//! layout and in-flight ids, RX buffer slab and response-chain parser)
//! and grant-tables' driver pieces (granted rings, persistent-grant buffer
//! pools), connects through the xenbus handshake like a driver, and then
//! exposes the rings plainly: send a frame (copied into a pooled TX
//! buffer), send raw slots (to provoke the backend's checks), collect TX
//! responses, receive a frame (copied out; the buffers reposted at once),
//! wait on the event channels.
//!
//! Every backend answer goes through netfront's validation
//! ([`netfront::tx::TxQueue::complete`], [`netfront::rx::RxBuffers::take_packet`],
//! [`netfront::rx::ProdTracker`]), so a test of the backend is also a test
//! that its layout is what netfront accepts.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use grant_tables::{
    Access, BufferPool, DomId, EventChannels, GrantedRing, PoolBuffer, PoolConfig, PoolMode, Port,
};
use netfront::abi::{NetifRxRequest, NetifTxResponse, RxSlotBytes, TxSlotBytes, PAGE_SIZE};
use netfront::features::{
    frontend_keys, negotiate, BackendFeatures, FallibleKeys, FrontendInfo, Negotiated, NetConfig,
    QueueEvents, QueueSetup,
};
use netfront::rx::{ProdTracker, RxBuffers, RxConfig, RxKind, RxRefill, MAX_RX_SLOTS};
use netfront::tx::{plan_tx, Gso, TxCaps, TxOffload, TxPiece, TxQueue, TxStatus};
use netfront::InlineVec;
use xenbus::{
    ConnectStyle, Connection, Device, DeviceError, Frontend, FrontendConfig, HandshakeEvent,
    TeardownReason, Transaction, XsError,
};

use crate::xenstore::{UnixTransport, UnixXenstore};
use crate::HostedPlatform;

type TxRing = GrantedRing<HostedPlatform, TxSlotBytes, NetifTxResponse>;
type RxRing = GrantedRing<HostedPlatform, NetifRxRequest, RxSlotBytes>;
type Buf = PoolBuffer<HostedPlatform>;
/// Most pages (slots) of one TX frame sent with [`RingFront::send_with`].
const MAX_TX_PAGES: usize = 16;
/// The buffers of one TX packet, kept until its responses.
type TxToken = InlineVec<Buf, MAX_TX_PAGES>;

/// What went wrong, as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontError(pub String);

impl fmt::Display for FrontError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FrontError {}

fn err(e: impl fmt::Display) -> FrontError {
    FrontError(e.to_string())
}

/// A frame received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The frame (empty when dropped).
    pub data: Vec<u8>,
    /// Ring slots it took (data and extras).
    pub slots: u32,
    /// Data slots.
    pub frags: usize,
    /// `NETRXF_csum_blank`.
    pub csum_blank: bool,
    /// `NETRXF_data_validated`.
    pub data_validated: bool,
    /// The GSO extra.
    pub gso: Option<Gso>,
    /// The queue it came on.
    pub queue: usize,
    /// `Some(status)` when the backend dropped it (a negative status).
    pub dropped: Option<i16>,
}

/// What [`RingFront::recv_into`] received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxInfo {
    /// The frame's length (0 when dropped).
    pub len: usize,
    /// Ring slots it took.
    pub slots: u32,
    /// Data slots.
    pub frags: usize,
    /// `NETRXF_csum_blank`.
    pub csum_blank: bool,
    /// `NETRXF_data_validated`.
    pub data_validated: bool,
    /// The GSO extra.
    pub gso: Option<Gso>,
    /// `Some(status)` when the backend dropped it.
    pub dropped: Option<i16>,
}

/// A TX packet completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxDone {
    /// The queue.
    pub queue: usize,
    /// How the backend answered.
    pub status: TxStatus,
}

struct FrontQueue {
    tx: TxRing,
    rx: RxRing,
    tx_port: Port,
    rx_port: Port,
    txq: TxQueue<TxToken>,
    rxb: RxBuffers<Buf>,
    prod: ProdTracker,
    /// Buffers received and not yet posted again.
    spare: Vec<(u32, Buf)>,
    /// When to post them (netfront's policy: in batches of an eighth of
    /// the ring, never below what a maximal packet needs).
    refill: RxRefill,
}

struct Live {
    neg: Negotiated,
    queues: Vec<FrontQueue>,
    tx_pool: BufferPool<HostedPlatform>,
    _rx_pool: BufferPool<HostedPlatform>,
}

struct Dev {
    plat: HostedPlatform,
    config: NetConfig,
    write_rx_notify: bool,
    live: Option<Live>,
    /// Connections torn down.
    teardowns: u64,
}

impl Dev {
    fn build(&mut self, xs: &mut UnixXenstore, conn: &Connection) -> Result<Live, String> {
        let mut be = FallibleKeys(|k: &str| {
            xs.try_read(&conn.backend_key(k))
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .map_err(|e| e.to_string())
        });
        let features = BackendFeatures::read(&mut be).map_err(|e| e.to_string())?;
        let mut fe = FallibleKeys(|k: &str| {
            xs.try_read(&conn.frontend_key(k))
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .map_err(|e| e.to_string())
        });
        let info = FrontendInfo::read(&mut fe).map_err(|e| e.to_string())?;
        let neg = negotiate(&features, &info, &self.config).map_err(|e| e.to_string())?;
        let n = neg.queues as usize;
        let pool = |pages: usize| {
            BufferPool::new(
                &self.plat,
                conn.peer,
                PoolConfig {
                    pages,
                    buffer_size: PAGE_SIZE,
                    access: Access::ReadWrite,
                    mode: PoolMode::Trusted,
                },
            )
            .map_err(|e| e.to_string())
        };
        let tx_pool = pool(256 * n)?;
        let rx_pool = pool(256 * n)?;
        let rx_cfg = RxConfig::from_negotiated(&neg);
        let mut queues = Vec::with_capacity(n);
        for _ in 0..n {
            let tx = TxRing::new(&self.plat, conn.peer, 0).map_err(|e| e.to_string())?;
            let mut rx = RxRing::new(&self.plat, conn.peer, 0).map_err(|e| e.to_string())?;
            let tx_port = self
                .plat
                .alloc_unbound(conn.peer)
                .map_err(|e| e.to_string())?;
            let rx_port = if neg.split_event_channels {
                self.plat
                    .alloc_unbound(conn.peer)
                    .map_err(|e| e.to_string())?
            } else {
                tx_port
            };
            let size = rx.size();
            let txq = TxQueue::new(tx.size()).ok_or("bad TX ring size")?;
            let mut rxb = RxBuffers::new(size).ok_or("bad RX ring size")?;
            // Fill the RX ring before connecting.
            for _ in 0..size {
                let Some(buf) = rx_pool.take() else { break };
                let idx = rx.req_prod_pvt();
                let req = rxb
                    .post(idx, buf.gref(), buf)
                    .map_err(|e| e.error.to_string())?;
                rx.put_request(req).map_err(|e| e.to_string())?;
            }
            rx.push_requests();
            queues.push(FrontQueue {
                tx,
                rx,
                tx_port,
                rx_port,
                txq,
                rxb,
                prod: ProdTracker::new(0),
                spare: Vec::with_capacity(size as usize),
                refill: RxRefill::new(size, &rx_cfg),
            });
        }
        Ok(Live {
            neg,
            queues,
            tx_pool,
            _rx_pool: rx_pool,
        })
    }

    fn release(&mut self) {
        if let Some(mut live) = self.live.take() {
            for q in &mut live.queues {
                let _ = q.rxb.drain();
                q.spare.clear();
                let _ = q.txq.abort_all();
                let _ = self.plat.close(q.tx_port);
                if q.rx_port != q.tx_port {
                    let _ = self.plat.close(q.rx_port);
                }
            }
            // Rings and pools end their grants as they drop (quarantined
            // while the backend still maps them).
            self.teardowns += 1;
        }
    }
}

impl Device<UnixTransport> for Dev {
    fn setup(&mut self, xs: &mut UnixXenstore, conn: &Connection) -> Result<(), DeviceError> {
        self.release();
        let live = self.build(xs, conn).map_err(DeviceError::Device)?;
        self.live = Some(live);
        Ok(())
    }

    fn publish(
        &mut self,
        tx: &mut Transaction<'_, UnixTransport>,
        conn: &Connection,
    ) -> Result<(), XsError> {
        let Some(live) = &self.live else {
            return Ok(());
        };
        let setups: Vec<QueueSetup> = live
            .queues
            .iter()
            .map(|q| QueueSetup {
                tx_ring_ref: q.tx.grefs()[0],
                rx_ring_ref: q.rx.grefs()[0],
                events: if live.neg.split_event_channels {
                    QueueEvents::Split {
                        tx: q.tx_port.0,
                        rx: q.rx_port.0,
                    }
                } else {
                    QueueEvents::Shared(q.tx_port.0)
                },
            })
            .collect();
        let keys = frontend_keys(&live.neg, &setups).map_err(|e| XsError::BadArgument {
            op: xenbus::wire::MsgType::Write,
            path: conn.frontend.clone(),
            reason: e.to_string(),
        })?;
        for k in keys {
            if k.key == "feature-rx-notify" && !self.write_rx_notify {
                continue;
            }
            tx.write(&conn.frontend_key(&k.key), k.value)?;
        }
        Ok(())
    }

    fn teardown(&mut self, _conn: &Connection, _reason: TeardownReason) {
        self.release();
    }
}

/// Options of the ring-level frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFrontConfig {
    /// What the frontend asks for (netfront's configuration).
    pub net: NetConfig,
    /// Whether to write `feature-rx-notify`.
    pub rx_notify: bool,
}

impl Default for RingFrontConfig {
    fn default() -> Self {
        RingFrontConfig {
            net: NetConfig::default(),
            rx_notify: true,
        }
    }
}

/// The ring-level frontend of one vif.
pub struct RingFront {
    plat: HostedPlatform,
    xs: UnixXenstore,
    fe: Frontend,
    dev: Dev,
    start: Instant,
    head: Vec<u8>,
    raw: Vec<Buf>,
}

impl fmt::Debug for RingFront {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingFront")
            .field("domain", &grant_tables::Platform::domid(&self.plat))
            .field("phase", &self.fe.phase())
            .finish_non_exhaustive()
    }
}

impl RingFront {
    /// Connects device `device/vif/<devid>` of `plat`'s domain through the
    /// xenstore daemon at `xenstore`, waiting at most `timeout` for the
    /// backend.
    pub fn connect(
        plat: HostedPlatform,
        xenstore: impl AsRef<Path>,
        devid: u32,
        config: RingFrontConfig,
        timeout: Duration,
    ) -> Result<RingFront, FrontError> {
        let domid = grant_tables::Platform::domid(&plat);
        let xs = crate::xenstore::connect_as(xenstore.as_ref(), domid.0).map_err(err)?;
        let mut fc =
            FrontendConfig::new(format!("device/vif/{devid}"), ConnectStyle::ConnectedAtOnce);
        fc.step_timeout = timeout;
        let mut f = RingFront {
            dev: Dev {
                plat: plat.clone(),
                config: config.net,
                write_rx_notify: config.rx_notify,
                live: None,
                teardowns: 0,
            },
            plat,
            xs,
            fe: Frontend::new(fc),
            start: Instant::now(),
            head: Vec::new(),
            raw: Vec::new(),
        };
        f.wait_connected(timeout)?;
        Ok(f)
    }

    /// Polls the handshake until connected (again).
    pub fn wait_connected(&mut self, timeout: Duration) -> Result<(), FrontError> {
        let end = Instant::now() + timeout;
        loop {
            let start = self.start;
            let mut clock = || start.elapsed();
            match self
                .fe
                .run_until_connected(&mut self.xs, &mut clock, &mut self.dev)
            {
                Ok(_) => return Ok(()),
                Err(xenbus::HandshakeError::Stopped { .. }) if Instant::now() < end => continue,
                Err(e) => return Err(err(e)),
            }
        }
    }

    /// Polls the handshake once (a backend that goes away is noticed
    /// here).
    pub fn poll_handshake(&mut self) -> Result<HandshakeEvent, FrontError> {
        let now = self.start.elapsed();
        self.fe.poll(&mut self.xs, now, &mut self.dev).map_err(err)
    }

    /// Whether a connection is set up.
    pub fn is_connected(&self) -> bool {
        self.dev.live.is_some() && self.fe.connection().is_some()
    }

    /// Connections torn down so far.
    pub fn teardowns(&self) -> u64 {
        self.dev.teardowns
    }

    /// The negotiated configuration.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.dev.live.as_ref().map(|l| &l.neg)
    }

    /// The domain.
    pub fn platform(&self) -> &HostedPlatform {
        &self.plat
    }

    /// Queues set up.
    pub fn queues(&self) -> usize {
        self.dev.live.as_ref().map_or(0, |l| l.queues.len())
    }

    fn live(&mut self) -> Result<&mut Live, FrontError> {
        self.dev
            .live
            .as_mut()
            .ok_or_else(|| FrontError("not connected".into()))
    }

    /// Sends `frame` on queue `q` with `offload`, copied into pooled
    /// buffers (one page each, so a frame over 4096 bytes takes several
    /// slots). No allocation.
    pub fn send_with(
        &mut self,
        q: usize,
        frame: &[u8],
        offload: TxOffload,
    ) -> Result<(), FrontError> {
        self.put_frame(q, frame, offload, true)
    }

    /// Puts `frame` on queue `q`'s TX ring without publishing it (Linux's
    /// `xmit_more`): publish a batch with [`Self::flush_tx`].
    pub fn send_more(&mut self, q: usize, frame: &[u8]) -> Result<(), FrontError> {
        self.put_frame(q, frame, TxOffload::default(), false)
    }

    /// Publishes what [`Self::send_more`] put on queue `q`, notifying the
    /// backend if it asked.
    pub fn flush_tx(&mut self, q: usize) -> Result<(), FrontError> {
        let plat = self.plat.clone();
        let live = self.live()?;
        let queue = live
            .queues
            .get_mut(q)
            .ok_or_else(|| FrontError(format!("no queue {q}")))?;
        queue.txq.mark_published();
        if queue.tx.push_requests() {
            plat.notify(queue.tx_port).map_err(err)?;
        }
        Ok(())
    }

    /// Frames of up to a page that can be put on queue `q` now (free slots
    /// and free TX buffers).
    pub fn tx_room(&self, q: usize) -> usize {
        self.dev.live.as_ref().map_or(0, |l| {
            let slots = l.queues.get(q).map_or(0, |queue| queue.tx.free_requests()) as usize;
            slots.min(l.tx_pool.available())
        })
    }

    fn put_frame(
        &mut self,
        q: usize,
        frame: &[u8],
        offload: TxOffload,
        push: bool,
    ) -> Result<(), FrontError> {
        if frame.is_empty() || frame.len() > MAX_TX_PAGES * PAGE_SIZE {
            return Err(FrontError(format!(
                "a frame of {} bytes cannot be sent (1 to {} bytes)",
                frame.len(),
                MAX_TX_PAGES * PAGE_SIZE
            )));
        }
        let live = self
            .dev
            .live
            .as_mut()
            .ok_or_else(|| FrontError("not connected".into()))?;
        let caps = TxCaps::from_negotiated(&live.neg);
        let mut bufs: TxToken = InlineVec::new();
        let mut grefs = [[0u32; 1]; MAX_TX_PAGES];
        for (i, chunk) in frame.chunks(PAGE_SIZE).enumerate() {
            let mut b = live
                .tx_pool
                .take()
                .ok_or_else(|| FrontError("no free TX buffer; collect TX responses".into()))?;
            b.write_at(0, chunk).map_err(err)?;
            grefs[i] = [b.gref()];
            let _ = bufs.push(b);
        }
        let mut pieces: InlineVec<TxPiece<'_>, MAX_TX_PAGES> = InlineVec::new();
        for (c, g) in frame.chunks(PAGE_SIZE).zip(grefs.iter()) {
            let _ = pieces.push(TxPiece {
                grefs: g,
                offset: 0,
                len: c.len(),
            });
        }
        let mut list = [TxPiece {
            grefs: &[],
            offset: 0,
            len: 0,
        }; MAX_TX_PAGES];
        let n = pieces.len();
        for (d, p) in list.iter_mut().zip(pieces.iter()) {
            *d = *p;
        }
        let plan = plan_tx(&list[..n], &offload, &caps).map_err(err)?;
        let queue = live
            .queues
            .get_mut(q)
            .ok_or_else(|| FrontError(format!("no queue {q}")))?;
        let free = queue.tx.free_requests();
        let slots = queue
            .txq
            .submit(&plan, bufs, free)
            .map_err(|r| err(r.error))?;
        for s in slots.iter() {
            queue.tx.put_request(s.to_bytes()).map_err(err)?;
        }
        if push {
            queue.txq.mark_published();
            if queue.tx.push_requests() {
                self.plat.notify(queue.tx_port).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Sends `frame` on queue 0 without offloads.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), FrontError> {
        self.send_with(0, frame, TxOffload::default())
    }

    /// Writes raw slots on queue `q`'s TX ring and publishes them (to
    /// provoke the backend). Do not mix with [`Self::send_with`] on a
    /// connection: their responses are for ids the frontend's TX state
    /// does not know; read them with [`Self::take_tx_raw`].
    pub fn send_raw(&mut self, q: usize, slots: &[TxSlotBytes]) -> Result<(), FrontError> {
        let plat = self.plat.clone();
        let live = self.live()?;
        let queue = live
            .queues
            .get_mut(q)
            .ok_or_else(|| FrontError(format!("no queue {q}")))?;
        for s in slots {
            queue.tx.put_request(*s).map_err(err)?;
        }
        if queue.tx.push_requests() {
            plat.notify(queue.tx_port).map_err(err)?;
        }
        Ok(())
    }

    /// Publishes `req_prod` on queue `q`'s TX ring as given, whatever was
    /// put there (to provoke the backend's check of more requests than the
    /// ring holds), and notifies.
    pub fn force_tx_req_prod(&mut self, q: usize, req_prod: u32) -> Result<(), FrontError> {
        let plat = self.plat.clone();
        let live = self.live()?;
        let queue = live
            .queues
            .get(q)
            .ok_or_else(|| FrontError(format!("no queue {q}")))?;
        let base = queue.tx.memory().as_ptr();
        // SAFETY: the ring's pages are page-aligned and mapped while
        // `queue.tx` lives (it owns them, and the borrow of `live` holds);
        // offset 0 is the header's 4-byte-aligned `req_prod`, which every
        // ring end accesses only atomically.
        let idx = unsafe { std::sync::atomic::AtomicU32::from_ptr(base.as_ptr().cast::<u32>()) };
        idx.store(req_prod, std::sync::atomic::Ordering::Release);
        plat.notify(queue.tx_port).map_err(err)?;
        Ok(())
    }

    /// The TX ring's private producer index of queue `q`.
    pub fn tx_req_prod(&self, q: usize) -> Option<u32> {
        let live = self.dev.live.as_ref()?;
        Some(live.queues.get(q)?.tx.req_prod_pvt())
    }

    /// A pooled TX buffer's grant, filled with `data` (for raw slots); the
    /// buffer stays out of the pool until [`Self::return_raw_buffers`].
    pub fn raw_buffer(&mut self, data: &[u8]) -> Result<u32, FrontError> {
        let live = self.live()?;
        let mut b = live
            .tx_pool
            .take()
            .ok_or_else(|| FrontError("no free TX buffer".into()))?;
        b.write_at(0, data).map_err(err)?;
        let g = b.gref();
        self.raw.push(b);
        Ok(g)
    }

    /// Gives the raw buffers back.
    pub fn return_raw_buffers(&mut self) {
        self.raw.clear();
    }

    /// Takes the TX responses published on queue `q`, unchecked (after
    /// [`Self::send_raw`]).
    pub fn take_tx_raw(&mut self, q: usize) -> Result<Vec<NetifTxResponse>, FrontError> {
        let live = self.live()?;
        let queue = live
            .queues
            .get_mut(q)
            .ok_or_else(|| FrontError(format!("no queue {q}")))?;
        let mut out = Vec::new();
        while let Some(r) = queue.tx.take_response().map_err(err)? {
            out.push(r);
        }
        Ok(out)
    }

    /// Collects the TX completions of every queue (validated by netfront:
    /// a violation is an error).
    pub fn poll_tx(&mut self) -> Result<Vec<TxDone>, FrontError> {
        let live = self.live()?;
        let mut done = Vec::new();
        for (qi, q) in live.queues.iter_mut().enumerate() {
            while let Some(r) = q.tx.take_response().map_err(err)? {
                if let Some(c) = q.txq.complete(r).map_err(err)? {
                    done.push(TxDone {
                        queue: qi,
                        status: c.status,
                    });
                }
            }
        }
        Ok(done)
    }

    /// Collects the TX completions of every queue without keeping them:
    /// returns how many packets completed and how many of those were not
    /// `Okay`. No allocation.
    pub fn reclaim_tx(&mut self) -> Result<(usize, usize), FrontError> {
        let live = self.live()?;
        let (mut n, mut bad) = (0, 0);
        for q in live.queues.iter_mut() {
            while let Some(r) = q.tx.take_response().map_err(err)? {
                if let Some(c) = q.txq.complete(r).map_err(err)? {
                    n += 1;
                    bad += usize::from(c.status != TxStatus::Okay);
                }
            }
        }
        Ok((n, bad))
    }

    /// Free TX request slots of queue `q`.
    pub fn tx_free(&self, q: usize) -> u32 {
        self.dev
            .live
            .as_ref()
            .and_then(|l| l.queues.get(q))
            .map_or(0, |queue| queue.tx.free_requests())
    }

    /// TX packets sent and not completed, on every queue.
    pub fn tx_in_flight(&self) -> usize {
        self.dev
            .live
            .as_ref()
            .map_or(0, |l| l.queues.iter().map(|q| q.txq.in_flight()).sum())
    }

    /// Receives one frame from any queue, if one is there: validated by
    /// netfront's parser, copied out, its buffers posted again.
    pub fn recv(&mut self) -> Result<Option<Received>, FrontError> {
        let n = self.queues();
        for q in 0..n {
            if let Some(r) = self.recv_on(q, usize::MAX)? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Receives one frame from queue `q`, copying out at most `max` bytes
    /// of it into [`Received::data`].
    pub fn recv_on(&mut self, q: usize, max: usize) -> Result<Option<Received>, FrontError> {
        let mut data = std::mem::take(&mut self.head);
        let want = max.min(netfront::rx::MAX_RX_FRAME);
        data.resize(want, 0);
        let r = self.recv_into(q, &mut data);
        let out = match r {
            Ok(Some(info)) => {
                let mut d = data[..info.len.min(want)].to_vec();
                if info.dropped.is_some() {
                    d.clear();
                }
                Ok(Some(Received {
                    data: d,
                    slots: info.slots,
                    frags: info.frags,
                    csum_blank: info.csum_blank,
                    data_validated: info.data_validated,
                    gso: info.gso,
                    queue: q,
                    dropped: info.dropped,
                }))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        self.head = data;
        out
    }

    /// Receives one frame from queue `q`: validated by netfront's parser,
    /// its first `out.len()` bytes (at most) copied into `out`, its buffers
    /// posted again. No allocation.
    pub fn recv_into(&mut self, q: usize, out: &mut [u8]) -> Result<Option<RxInfo>, FrontError> {
        let live = self
            .dev
            .live
            .as_mut()
            .ok_or_else(|| FrontError("not connected".into()))?;
        let rx_cfg = RxConfig::from_negotiated(&live.neg);
        let queue = live
            .queues
            .get_mut(q)
            .ok_or_else(|| FrontError(format!("no queue {q}")))?;
        let avail = queue.rx.unconsumed_responses().map_err(err)?;
        if avail == 0 {
            return Ok(None);
        }
        let cons = queue.rx.rsp_cons();
        let outstanding = queue.rx.req_prod_pvt().wrapping_sub(cons);
        queue
            .prod
            .observe(cons.wrapping_add(avail), cons, outstanding)
            .map_err(err)?;
        // Slots are read once each, in order, through the ring.
        let mut slots: InlineVec<RxSlotBytes, MAX_RX_SLOTS> = InlineVec::new();
        let mut ring_err = None;
        let pkt = {
            let rx = &mut queue.rx;
            queue.rxb.take_packet(cons, avail, &rx_cfg, |idx| {
                let want = idx.wrapping_sub(cons) as usize;
                while slots.len() <= want {
                    match rx.take_response() {
                        Ok(Some(s)) => {
                            if slots.push(s).is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            ring_err = Some(e);
                            break;
                        }
                    }
                }
                slots.get(want).copied().unwrap_or_default()
            })
        };
        if let Some(e) = ring_err {
            return Err(err(e));
        }
        let Some(mut pkt) = pkt.map_err(err)? else {
            return Ok(None);
        };
        if slots.len() as u32 != pkt.slots {
            return Err(FrontError(format!(
                "parser used {} slots, {} read",
                pkt.slots,
                slots.len()
            )));
        }
        let mut info = RxInfo {
            len: 0,
            slots: pkt.slots,
            frags: 0,
            csum_blank: false,
            data_validated: false,
            gso: None,
            dropped: None,
        };
        let mut repost: InlineVec<(u32, Buf), MAX_RX_SLOTS> = InlineVec::new();
        for s in pkt.spare.drain() {
            let _ = repost.push((s.gref, s.buf));
        }
        match pkt.kind {
            RxKind::Frame(mut f) => {
                info.len = f.len;
                info.frags = f.frags.len();
                info.csum_blank = f.csum_blank;
                info.data_validated = f.data_validated;
                info.gso = f.gso;
                let want = f.len.min(out.len());
                let mut at = 0usize;
                for frag in f.frags.drain() {
                    let n = usize::from(frag.len).min(want - at);
                    if n > 0 {
                        frag.posted
                            .buf
                            .read_at(usize::from(frag.offset), &mut out[at..at + n])
                            .map_err(err)?;
                        at += n;
                    }
                    let _ = repost.push((frag.posted.gref, frag.posted.buf));
                }
            }
            RxKind::Dropped(d) => {
                info.dropped = Some(match d {
                    netfront::rx::RxDrop::BackendStatus { status } => status,
                    netfront::rx::RxDrop::Runt { .. } => 0,
                });
            }
        }
        queue.spare.extend(repost.drain());
        let outstanding = queue.rx.req_prod_pvt().wrapping_sub(queue.rx.rsp_cons());
        let n = (queue.refill.to_post(outstanding) as usize).min(queue.spare.len());
        if n > 0 {
            for (gref, buf) in queue.spare.drain(..n) {
                let idx = queue.rx.req_prod_pvt();
                let req = queue.rxb.post(idx, gref, buf).map_err(|e| err(e.error))?;
                queue.rx.put_request(req).map_err(err)?;
            }
            if queue.rx.push_requests() {
                self.plat.notify(queue.rx_port).map_err(err)?;
            }
        }
        Ok(Some(info))
    }

    /// Waits (spinning when `spin`, else on the event channels) up to
    /// `timeout` for a frame on any queue.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
        spin: bool,
    ) -> Result<Option<Received>, FrontError> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(r) = self.recv()? {
                return Ok(Some(r));
            }
            let now = Instant::now();
            if now >= end {
                return Ok(None);
            }
            if spin {
                std::hint::spin_loop();
                continue;
            }
            self.block_rx(end - now)?;
        }
    }

    /// Asks for RX events on every queue and, if nothing arrived meanwhile,
    /// blocks on the RX channels up to `timeout`.
    pub fn block_rx(&mut self, timeout: Duration) -> Result<(), FrontError> {
        let plat = self.plat.clone();
        let live = self.live()?;
        let mut ports = Vec::with_capacity(live.queues.len());
        for q in &mut live.queues {
            if q.rx.final_check_for_responses().map_err(err)? {
                return Ok(());
            }
            ports.push(q.rx_port);
        }
        let t = Some(timeout.as_nanos() as u64);
        match ports.as_slice() {
            // One channel: the lighter wait.
            [p] => plat.block(*p, t).map(drop).map_err(err),
            _ => plat.block_any(&ports, t).map(drop).map_err(err),
        }
    }

    /// Blocks on the TX channels (after asking for TX events) up to
    /// `timeout`.
    pub fn block_tx(&mut self, timeout: Duration) -> Result<(), FrontError> {
        let plat = self.plat.clone();
        let live = self.live()?;
        let mut ports = Vec::with_capacity(live.queues.len());
        for q in &mut live.queues {
            if q.tx.final_check_for_responses().map_err(err)? {
                return Ok(());
            }
            ports.push(q.tx_port);
        }
        plat.block_any(&ports, Some(timeout.as_nanos() as u64))
            .map_err(err)?;
        Ok(())
    }

    /// The ports of queue `q` (TX, RX).
    pub fn ports(&self, q: usize) -> Option<(Port, Port)> {
        let live = self.dev.live.as_ref()?;
        let queue = live.queues.get(q)?;
        Some((queue.tx_port, queue.rx_port))
    }

    /// RX buffers posted on queue `q`.
    pub fn rx_posted(&self, q: usize) -> u32 {
        self.dev
            .live
            .as_ref()
            .and_then(|l| l.queues.get(q))
            .map_or(0, |queue| queue.rxb.posted())
    }

    /// The backend's domain of the live connection.
    pub fn backend(&self) -> Option<DomId> {
        self.fe.connection().map(|c| c.peer)
    }

    /// Closes the device (orderly: Closing, wait for the backend, Closed).
    pub fn close(mut self, timeout: Duration) -> Result<(), FrontError> {
        let now = self.start.elapsed();
        self.fe.close(&mut self.xs, now).map_err(err)?;
        let end = Instant::now() + timeout;
        loop {
            match self.poll_handshake()? {
                HandshakeEvent::Closed | HandshakeEvent::Removed => break,
                _ => {}
            }
            if Instant::now() >= end {
                return Err(FrontError("the backend did not close in time".into()));
            }
            let _ = self
                .xs
                .pump_wait(xenbus::Wait::For(Duration::from_millis(10)));
        }
        self.return_raw_buffers();
        self.dev.release();
        Ok(())
    }

    /// A scratch buffer of `n` bytes (benches).
    pub fn scratch(&mut self, n: usize) -> &mut [u8] {
        self.head.resize(n, 0);
        &mut self.head
    }
}

impl Drop for RingFront {
    fn drop(&mut self) {
        self.return_raw_buffers();
        self.dev.release();
    }
}
