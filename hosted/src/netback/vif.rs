//! One connected vif: its queues' rings and event channels, the TX side
//! (requests parsed and grant-copied out of the frontend's pages) and the
//! RX side (frames grant-copied into the frontend's posted pages), as Linux
//! 6.1's netback serves them.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grant_tables::abi::{
    GntCopyFlags, GnttabCopy, GnttabCopyPtr, RingIdx, DOMID_SELF, PAGE_SIZE, SRING_HEADER_SIZE,
};
use grant_tables::cache::{prefetch_line, prefetch_line_for_write};
use grant_tables::{Access, BackRing, DomId, EventChannels, Port, RingError, RingMemory};
use netfront::abi::{
    ExtraGso, ExtraXdp, NetifExtraInfo, NetifRxRequest, NetifRxResponse, NetifTxResponse,
    RxSlotBytes, TxSlotBytes, ETH_HLEN, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY,
    NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA,
    NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED, XEN_NETIF_EXTRA_FLAG_MORE,
};
use netfront::tx::GsoKind;

use super::frames::{FrameBuf, FrameMeta, FramePool};
use super::keys::FrontendRequest;
use super::tx::{parse_packet, TxFatal, TxPacket, TxVerdict};
use super::Hostile;
use crate::{HostedPlatform, MappedGrant, MappedRing};

/// A TX ring seen from the backend: request slots of either shape, 4-byte
/// responses.
pub(crate) type TxRing = BackRing<TxSlotBytes, NetifTxResponse, MappedRing>;
/// An RX ring seen from the backend: posted requests, responses of either
/// shape.
pub(crate) type RxRing = BackRing<NetifRxRequest, RxSlotBytes, MappedRing>;

/// Bytes of frames one queue holds for its frontend (Linux's
/// `XENVIF_RX_QUEUE_BYTES`: half a ring of pages); frames beyond it are
/// dropped.
pub const RX_QUEUE_BYTES: usize = 128 * PAGE_SIZE;
/// Multicast addresses a frontend may add (Linux's
/// `XEN_NETBK_MCAST_MAX`); the 65th is answered with an error.
pub const MCAST_MAX: usize = 64;
/// TX packets one queue takes per pass before the others get a turn.
pub const TX_BUDGET: usize = 64;

const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;

/// Counters of one vif, readable while it runs.
#[derive(Debug, Default)]
pub struct VifCounters {
    /// Packets the frontend sent that were forwarded.
    pub tx_packets: AtomicU64,
    /// Their bytes.
    pub tx_bytes: AtomicU64,
    /// Packets answered with `NETIF_RSP_ERROR` (malformed, or a grant copy
    /// failed).
    pub tx_errors: AtomicU64,
    /// Packets answered as sent but dropped: a blank checksum that is not
    /// a TCP or UDP one over IPv4 or IPv6 (Linux's `checksum_setup`).
    pub tx_dropped: AtomicU64,
    /// Frames delivered into the frontend's posted buffers.
    pub rx_packets: AtomicU64,
    /// Their bytes.
    pub rx_bytes: AtomicU64,
    /// Frames for this vif dropped: its queue full, too big or an offload
    /// it did not negotiate, expired waiting for posted buffers, no frame
    /// buffer, a checksum that could not be completed.
    pub rx_dropped: AtomicU64,
    /// Events from the frontend that brought no work (XSA-391).
    pub spurious_events: AtomicU64,
}

/// What the control side and the handle know of a vif.
#[derive(Debug)]
pub(crate) struct VifShared {
    pub frontend: DomId,
    pub devid: u32,
    /// Its number in the backend (its switch port).
    pub id: u32,
    pub queues: u32,
    /// The handshake's connection number.
    pub connection: u64,
    pub counters: VifCounters,
    /// Set by a fatal frontend error.
    pub disabled: AtomicBool,
    /// Why it was disabled.
    pub reason: Mutex<Option<String>>,
    /// What the frontend asked for.
    pub request: FrontendRequest,
}

/// One frame waiting for RX slots.
struct Queued {
    buf: FrameBuf,
    at: Instant,
}

/// One queue: a TX and an RX ring and their event channels.
pub(crate) struct Queue {
    pub tx: TxRing,
    pub rx: RxRing,
    pub tx_port: Port,
    pub rx_port: Port,
    backlog: VecDeque<Queued>,
    backlog_bytes: usize,
    pkt: TxPacket,
    /// TX responses of the packets served in this pass, written and
    /// published by [`Vif::finish_tx`] once the pass has delivered the
    /// frames those packets became.
    tx_rsp: Vec<NetifTxResponse>,
    copies: Vec<GnttabCopy>,
    /// Where the last TX packet's first bytes were read (in the mapping of
    /// the frontend's memory): a prefetch hint only.
    tx_hint: Option<usize>,
    /// For each RX copy, the response it belongs to.
    copy_rsp: Vec<usize>,
    rsp: Vec<(NetifRxResponse, Option<NetifExtraInfo>)>,
    /// Consecutive wakeups from this queue's channels without work.
    pub spurious: u32,
    /// Left out of event waits until then (XSA-391 throttling).
    pub throttled_until: Option<Instant>,
}

impl Queue {
    pub fn new(tx: TxRing, rx: RxRing, tx_port: Port, rx_port: Port) -> Self {
        Queue {
            tx,
            rx,
            tx_port,
            rx_port,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            pkt: TxPacket::default(),
            tx_rsp: Vec::with_capacity(TX_BUDGET * 2),
            copies: Vec::with_capacity(64),
            tx_hint: None,
            copy_rsp: Vec::with_capacity(64),
            rsp: Vec::with_capacity(32),
            spurious: 0,
            throttled_until: None,
        }
    }

    /// Frames waiting for posted buffers.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }
}

/// The misbehaviour of a hostile backend towards one vif.
pub(crate) struct HostileState {
    pub mode: Hostile,
    /// Packets to serve honestly first.
    pub after: u64,
    served: u64,
    mapped: HashSet<(bool, u32)>,
    /// Mappings kept (`Hostile::KeepGrantsMapped`), shared with the handle.
    pub kept: Arc<Mutex<Vec<MappedGrant>>>,
}

impl HostileState {
    pub fn new(mode: Hostile, after: u64, kept: Arc<Mutex<Vec<MappedGrant>>>) -> Self {
        HostileState {
            mode,
            after,
            served: 0,
            mapped: HashSet::new(),
            kept,
        }
    }

    fn on(&self, mode: Hostile) -> bool {
        self.mode == mode && self.served >= self.after
    }

    fn count(&mut self) {
        self.served = self.served.saturating_add(1);
    }

    /// Maps and keeps the grant (`KeepGrantsMapped`).
    fn keep(&mut self, plat: &HostedPlatform, fe: DomId, gref: u32, writable: bool) {
        if !self.on(Hostile::KeepGrantsMapped) || !self.mapped.insert((writable, gref)) {
            return;
        }
        let access = if writable {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        };
        match plat.map_grant(fe, gref, access) {
            Ok(m) => {
                if let Ok(mut k) = self.kept.lock() {
                    k.push(m);
                }
            }
            Err(e) => {
                log::debug!("netback (hostile): keeping grant {gref} of {fe} mapped failed: {e}")
            }
        }
    }
}

/// A connected vif.
pub(crate) struct Vif {
    pub shared: Arc<VifShared>,
    pub req: FrontendRequest,
    pub queues: Vec<Queue>,
    pub mcast: Vec<[u8; 6]>,
    pub hostile: HostileState,
    pub fatal_skb_slots: u32,
    /// How long a frame may wait for posted buffers.
    pub drain_timeout: Duration,
}

/// An index in a mapped ring's shared header, accessed atomically.
pub(crate) fn header_index(ring: &MappedRing, offset: usize) -> &AtomicU32 {
    debug_assert!(offset <= 12 && offset % 4 == 0);
    let p = ring.ring_ptr().as_ptr().wrapping_add(offset).cast::<u32>();
    // SAFETY: `ring_ptr` is page-aligned and valid for reads and writes of
    // the whole ring while `ring` lives (the `RingMemory` contract), which
    // the returned borrow is tied to; `offset` is one of the header's four
    // 4-byte-aligned indices (0, 4, 8, 12), inside the first page. The
    // header indices are only ever accessed atomically, here, by
    // `BackRing`/`FrontRing` and by the peer's ring code.
    unsafe { AtomicU32::from_ptr(p) }
}

/// Writes one entry of a mapped ring in place (hostile modes only).
fn write_entry(ring: &MappedRing, size: u32, entry: usize, idx: RingIdx, bytes: &[u8]) {
    let off = SRING_HEADER_SIZE + (idx & (size - 1)) as usize * entry;
    if ring.mapping().write(off, bytes).is_none() {
        log::debug!("netback (hostile): a ring entry at {off} does not fit the ring");
    }
}

/// Ring slots a frame of `len` bytes takes with `headroom` in every data
/// slot and `extras` extra-info slots.
pub fn rx_slots(len: usize, headroom: u16, extras: u32) -> u32 {
    let per = PAGE_SIZE - usize::from(headroom);
    len.div_ceil(per).max(1) as u32 + extras
}

/// The EtherType of a frame (no VLAN look-through).
fn ethertype(frame: &[u8]) -> u16 {
    match frame.get(12..14) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

const ETH_P_IPV6: u16 = 0x86DD;

/// What a frame needs before it can go to a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Deliver as it is.
    AsIs,
    /// Complete its checksum first (the receiver takes no blank checksums).
    CompleteChecksum,
}

/// Why a frame cannot go to a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refuse {
    /// A GSO frame the receiver did not negotiate (this backend does not
    /// segment in software).
    Gso,
    /// More than one slot for a receiver without scatter-gather.
    NeedsSg,
    /// More slots than the receiver's RX ring has.
    TooManySlots,
}

impl Vif {
    /// Whether this vif takes a frame of `len` bytes with `meta`.
    pub fn admit(&self, frame: &[u8], meta: &FrameMeta) -> Result<Admit, Refuse> {
        if let Some(g) = meta.gso {
            let ok = match g.kind {
                GsoKind::TcpV4 => self.req.gso_tcpv4,
                GsoKind::TcpV6 => self.req.gso_tcpv6,
            };
            if !ok {
                return Err(Refuse::Gso);
            }
        }
        let data_slots = rx_slots(frame.len(), self.req.xdp_headroom, 0);
        if !self.req.sg && data_slots > 1 {
            return Err(Refuse::NeedsSg);
        }
        let ring = self.queues.first().map_or(0, |q| q.rx.size());
        if data_slots + 2 > ring {
            // Could never be posted for (a headroom leaving a few bytes
            // per page).
            return Err(Refuse::TooManySlots);
        }
        if meta.csum_blank && meta.gso.is_none() {
            let ok = if ethertype(frame) == ETH_P_IPV6 {
                self.req.csum_ipv6
            } else {
                self.req.csum_ipv4
            };
            if !ok {
                return Ok(Admit::CompleteChecksum);
            }
        }
        Ok(Admit::AsIs)
    }

    /// The queue a frame goes to: a hash of its addresses (and TCP/UDP
    /// ports) over the queues, so one flow stays on one queue.
    pub fn pick_queue(&self, frame: &[u8]) -> usize {
        let n = self.queues.len();
        if n <= 1 {
            return 0;
        }
        let mut h: u32 = 0x811c_9dc5;
        let end = frame.len().min(ETH_HLEN + 40 + 4);
        for &b in frame.get(ETH_HLEN..end).unwrap_or(&[]) {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h as usize % n
    }

    /// Queues `buf` for queue `q`; gives it back when the queue is full.
    pub fn enqueue(&mut self, q: usize, buf: FrameBuf, now: Instant) -> Result<(), FrameBuf> {
        let Some(queue) = self.queues.get_mut(q) else {
            return Err(buf);
        };
        if queue.backlog_bytes >= RX_QUEUE_BYTES {
            return Err(buf);
        }
        queue.backlog_bytes += buf.len();
        queue.backlog.push_back(Queued { buf, at: now });
        Ok(())
    }

    /// Every queued frame, for teardown.
    pub fn drain_backlog(&mut self) -> Vec<FrameBuf> {
        let mut out = Vec::new();
        for q in &mut self.queues {
            q.backlog_bytes = 0;
            out.extend(q.backlog.drain(..).map(|e| e.buf));
        }
        out
    }

    /// The disable reason, if a fatal error happened.
    pub fn is_disabled(&self) -> bool {
        self.shared.disabled.load(Ordering::Relaxed)
    }

    /// Disables the vif (Linux's `xenvif_fatal_tx_err`): it is served no
    /// more, its xenstore state stays as it is.
    pub fn disable(&self, why: &str) {
        log::error!(
            "netback: vif {}.{} (frontend {}): fatal error: {why}; disabling the vif (the frontend gets no more responses until it reconnects)",
            self.shared.frontend.0,
            self.shared.devid,
            self.shared.frontend
        );
        if let Ok(mut d) = self.shared.reason.lock() {
            d.get_or_insert_with(|| why.to_string());
        }
        self.shared.disabled.store(true, Ordering::Release);
    }

    /// Serves queue `q`'s TX ring: up to [`TX_BUDGET`] packets, each copied
    /// into a frame buffer pushed onto `out`. Returns whether there was work.
    /// A fatal frontend error disables the vif.
    pub fn serve_tx(
        &mut self,
        q: usize,
        plat: &HostedPlatform,
        pool: &mut FramePool,
        out: &mut Vec<FrameBuf>,
    ) -> bool {
        match self.serve_tx_inner(q, plat, pool, out) {
            Ok(work) => work,
            Err(fatal) => {
                // Nothing more is answered on this queue (Linux's
                // `xenvif_fatal_tx_err`): the batch's responses are dropped.
                if let Some(queue) = self.queues.get_mut(q) {
                    queue.tx_rsp.clear();
                }
                self.disable(&format!("TX queue {q}: {fatal}"));
                true
            }
        }
    }

    fn serve_tx_inner(
        &mut self,
        q: usize,
        plat: &HostedPlatform,
        pool: &mut FramePool,
        out: &mut Vec<FrameBuf>,
    ) -> Result<bool, TxFatal> {
        let fe = self.shared.frontend;
        let fatal_skb_slots = self.fatal_skb_slots;
        let Some(queue) = self.queues.get_mut(q) else {
            return Ok(false);
        };
        let mut packets = 0;
        while packets < TX_BUDGET {
            let work = match queue.tx.unconsumed_requests() {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err(ring_fatal(e)),
            };
            if packets == 0 {
                // Frontends reuse their TX buffers (netfront takes the page
                // of the last completed packet first): the first line of
                // the last packet's data is likely where this packet's is.
                // Asked for now, it comes in while the request slot that
                // names the buffer is read, instead of after.
                if let Some(p) = queue.tx_hint {
                    prefetch_line(p as *const u8);
                }
                // A frontend that sends is likely to be answered (request
                // and response): ask now for the line of this queue's next
                // RX response slot, which the frontend read last, so that
                // an answer delivered in this pass does not wait for it.
                prefetch_rx_lines(&queue.rx, 1, false);
            }
            let tx = &mut queue.tx;
            let verdict = parse_packet(
                work,
                fatal_skb_slots,
                &mut || tx.take_request_as::<TxSlotBytes>().ok().flatten(),
                &mut queue.pkt,
            )?;
            packets += 1;
            let pkt = &queue.pkt;
            let status = match verdict {
                TxVerdict::Reject(why) => {
                    log::debug!("netback: frontend {fe} TX packet answered with an error: {why}");
                    self.shared
                        .counters
                        .tx_errors
                        .fetch_add(1, Ordering::Relaxed);
                    NETIF_RSP_ERROR
                }
                TxVerdict::Mcast { add, addr } => {
                    let ok = if add {
                        if self.mcast.contains(&addr) {
                            true
                        } else if self.mcast.len() < MCAST_MAX {
                            self.mcast.push(addr);
                            true
                        } else {
                            false
                        }
                    } else {
                        self.mcast.retain(|a| *a != addr);
                        true
                    };
                    let status = if ok { NETIF_RSP_OKAY } else { NETIF_RSP_ERROR };
                    respond_tx(
                        &mut queue.tx_rsp,
                        queue.tx.size(),
                        &mut self.hostile,
                        pkt,
                        1,
                        status,
                    );
                    continue;
                }
                TxVerdict::Forward => {
                    for (gref, _, _) in pkt.chunks() {
                        self.hostile.keep(plat, fe, gref, false);
                    }
                    match copy_out(plat, pool, fe, pkt, &mut queue.copies, &mut queue.tx_hint) {
                        Some(mut buf) => {
                            let flags = pkt.flags();
                            buf.meta = FrameMeta {
                                csum_blank: flags & NETTXF_CSUM_BLANK != 0,
                                data_validated: flags & (NETTXF_DATA_VALIDATED | NETTXF_CSUM_BLANK)
                                    != 0,
                                gso: pkt.gso(),
                            };
                            let c = &self.shared.counters;
                            if buf.meta.csum_blank && !checksum_locatable(pool.bytes(&buf)) {
                                // Linux's `checksum_setup` failing: answered
                                // as sent, then dropped.
                                log::debug!("netback: a checksum-blank TX packet from {fe} has no TCP/UDP checksum to complete; dropped");
                                bump(&c.tx_dropped, 1);
                                pool.free(buf);
                            } else {
                                bump(&c.tx_packets, 1);
                                bump(&c.tx_bytes, buf.len() as u64);
                                out.push(buf);
                            }
                            NETIF_RSP_OKAY
                        }
                        None => {
                            self.shared
                                .counters
                                .tx_errors
                                .fetch_add(1, Ordering::Relaxed);
                            NETIF_RSP_ERROR
                        }
                    }
                }
            };
            let n = pkt.requests.len();
            respond_tx(
                &mut queue.tx_rsp,
                queue.tx.size(),
                &mut self.hostile,
                pkt,
                n,
                status,
            );
        }
        Ok(packets > 0)
    }

    /// Writes and publishes the TX responses of the packets served since the
    /// last call, on every queue, notifying the frontend where the ring says
    /// so. The data plane calls it at the end of each pass, after the RX
    /// side: a frame a TX packet became (an echo, a frame for another vif)
    /// reaches its receiver's ring before the sender's TX ring is touched,
    /// and each queue's responses go out with one push.
    pub fn finish_tx(&mut self, plat: &HostedPlatform) {
        for queue in &mut self.queues {
            if queue.tx_rsp.is_empty() {
                continue;
            }
            for r in queue.tx_rsp.drain(..) {
                if let Err(e) = queue.tx.put_response(r) {
                    log::error!("netback: writing a TX response: {e}");
                }
            }
            push_tx(plat, queue, &mut self.hostile);
        }
    }

    /// Serves queue `q`'s RX ring: moves queued frames into posted buffers
    /// while there are enough. Returns whether a frame was delivered (or
    /// dropped). A frontend publishing more requests than the ring holds
    /// disables the vif.
    pub fn serve_rx(
        &mut self,
        q: usize,
        plat: &HostedPlatform,
        pool: &mut FramePool,
        now: Instant,
        arm: bool,
    ) -> bool {
        match self.serve_rx_inner(q, plat, pool, now, arm) {
            Ok(w) => w,
            Err(e) => {
                self.disable(&format!("RX queue {q}: {e}"));
                true
            }
        }
    }

    fn serve_rx_inner(
        &mut self,
        q: usize,
        plat: &HostedPlatform,
        pool: &mut FramePool,
        now: Instant,
        arm: bool,
    ) -> Result<bool, TxFatal> {
        let fe = self.shared.frontend;
        let headroom = self.req.xdp_headroom;
        let drain = self.drain_timeout;
        let Some(queue) = self.queues.get_mut(q) else {
            return Ok(false);
        };
        let mut done = 0u32;
        while let Some(head) = queue.backlog.front() {
            if now.saturating_duration_since(head.at) > drain {
                if let Some(e) = queue.backlog.pop_front() {
                    queue.backlog_bytes -= e.buf.len();
                    pool.free(e.buf);
                }
                self.shared
                    .counters
                    .rx_dropped
                    .fetch_add(1, Ordering::Relaxed);
                done += 1;
                continue;
            }
            let gso = head.buf.meta.gso;
            let extras = u32::from(gso.is_some()) + u32::from(headroom > 0);
            let needed = rx_slots(head.buf.len(), headroom, extras);
            let avail = queue.rx.unconsumed_requests().map_err(ring_fatal)?;
            if avail < needed {
                if arm {
                    // Ask for an event when the frontend posts more: past
                    // its current producer (Linux's
                    // `xenvif_rx_ring_slots_available`), then look again.
                    let mem = queue.rx.memory();
                    let prod = queue.rx.req_cons().wrapping_add(avail);
                    header_index(mem, REQ_EVENT).store(prod.wrapping_add(1), Ordering::Relaxed);
                    // Full fence: the frontend sees req_event before we
                    // read req_prod again (pairs with its push's fence).
                    std::sync::atomic::fence(Ordering::SeqCst);
                    if queue.rx.unconsumed_requests().map_err(ring_fatal)? >= needed {
                        continue;
                    }
                }
                break;
            }
            let Some(Queued { buf, .. }) = queue.backlog.pop_front() else {
                break;
            };
            queue.backlog_bytes -= buf.len();
            if done == 0 {
                // The lines this delivery and the push write, all held by
                // the frontend (it read the last responses and the index):
                // asked for now, the transfers overlap instead of each
                // store waiting for its own in turn (the grant copy's
                // locked instructions, then the push's fence, wait for
                // the stores before them).
                prefetch_rx_lines(&queue.rx, needed, true);
            }
            deliver_rx(plat, pool, fe, headroom, queue, &mut self.hostile, &buf)?;
            let c = &self.shared.counters;
            bump(&c.rx_packets, 1);
            bump(&c.rx_bytes, buf.len() as u64);
            pool.free(buf);
            done += 1;
        }
        if done > 0 {
            push_rx(plat, queue, &mut self.hostile);
        }
        Ok(done > 0)
    }

    /// Hostile `EventStorm`: a burst of notifications on every channel.
    pub fn storm(&self, plat: &HostedPlatform) {
        if !self.hostile.on(Hostile::EventStorm) {
            return;
        }
        for q in &self.queues {
            for _ in 0..1000 {
                let _ = plat.notify(q.tx_port);
                if q.rx_port != q.tx_port {
                    let _ = plat.notify(q.rx_port);
                }
            }
        }
    }

    /// Whether the hostile mode storms events (the data plane keeps
    /// calling [`Self::storm`]).
    pub fn storms(&self) -> bool {
        self.hostile.on(Hostile::EventStorm)
    }

    /// Event mode: asks the frontend for an event on the next TX request
    /// (and RX buffers, when frames wait). Returns whether work came in
    /// meanwhile.
    pub fn arm(&mut self) -> bool {
        let mut work = false;
        for q in &mut self.queues {
            match q.tx.final_check_for_requests() {
                Ok(w) => work |= w,
                Err(_) => work = true,
            }
        }
        work
    }
}

/// Asks for the lines the next `slots` RX responses (and, with `index`,
/// the push of the response producer index) write, in writable state (see
/// [`prefetch_line_for_write`]); at most 8 slots.
#[inline]
fn prefetch_rx_lines(ring: &RxRing, slots: u32, index: bool) {
    let base = ring.memory().ring_ptr().as_ptr();
    let size = ring.size();
    if index {
        prefetch_line_for_write(base.wrapping_add(RSP_PROD));
    }
    let first = ring.rsp_prod_pvt();
    let mut last_line = usize::MAX;
    for i in 0..slots.min(8) {
        let idx = first.wrapping_add(i) & (size - 1);
        let off = SRING_HEADER_SIZE + idx as usize * 8;
        if off / 64 != last_line {
            last_line = off / 64;
            prefetch_line_for_write(base.wrapping_add(off));
        }
    }
}

/// Whether a checksum-blank frame has a TCP/UDP checksum to complete.
fn checksum_locatable(frame: &[u8]) -> bool {
    let head = &frame[..frame.len().min(netfront::csum::MAX_HEADER_BYTES)];
    netfront::csum::locate(head, frame.len()).is_ok()
}

fn tx_rsp_bytes(r: &NetifTxResponse) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&r.id.to_le_bytes());
    b[2..].copy_from_slice(&r.status.to_le_bytes());
    b
}

/// Adds to a counter only the data plane writes (a plain load and store:
/// no locked instruction per packet; readers see a recent value).
#[inline(always)]
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

fn ring_fatal(e: RingError) -> TxFatal {
    TxFatal::RingOverflow {
        detail: e.to_string(),
    }
}

/// Grant-copies a packet's slots out of the frontend's pages into a new
/// frame buffer. `None` when no buffer is free or a copy failed (the
/// packet is then answered with errors).
fn copy_out(
    plat: &HostedPlatform,
    pool: &mut FramePool,
    fe: DomId,
    pkt: &TxPacket,
    ops: &mut Vec<GnttabCopy>,
    hint: &mut Option<usize>,
) -> Option<FrameBuf> {
    let total = usize::from(pkt.total);
    let Some(mut buf) = pool.alloc(total) else {
        log::debug!("netback: no frame buffer for a {total}-byte TX packet from {fe}; answered with an error");
        return None;
    };
    ops.clear();
    let mut pos = 0usize;
    for (gref, offset, len) in pkt.chunks() {
        let mut done = 0usize;
        let len = usize::from(len);
        while done < len {
            let Some((gfn, poff, room)) = pool.locate(&buf, pos) else {
                pool.free(buf);
                return None;
            };
            let n = (len - done).min(room);
            ops.push(GnttabCopy {
                source: GnttabCopyPtr {
                    u: u64::from(gref),
                    domid: fe.0,
                    offset: offset.saturating_add(done as u16),
                    _pad: 0,
                },
                dest: GnttabCopyPtr {
                    u: gfn.0,
                    domid: DOMID_SELF,
                    offset: poff,
                    _pad: 0,
                },
                len: n as u16,
                flags: GntCopyFlags::SOURCE_GREF.bits(),
                status: 0,
                _pad: 0,
            });
            done += n;
            pos += n;
        }
    }
    // `&mut buf` is held here: nothing else reads or writes its bytes while
    // the copies land in them.
    let failed = plat.grant_copy_noting(ops, hint);
    if failed > 0 {
        let first = ops.iter().find(|o| o.status != 0).map_or(0, |o| o.status);
        log::debug!(
            "netback: copying a TX packet from {fe} failed (GNTST {first}); answered with an error"
        );
        pool.free(buf);
        return None;
    }
    buf.set_len(pos);
    Some(buf)
}

/// Queues the responses of one TX packet: the first request's, a NULL for
/// each extra, then the other requests' (the first `n` requests in all).
/// [`Vif::finish_tx`] writes them into the ring.
fn respond_tx(
    out: &mut Vec<NetifTxResponse>,
    size: u32,
    hostile: &mut HostileState,
    pkt: &TxPacket,
    n: usize,
    status: i16,
) {
    let bad = hostile.on(Hostile::BadIds);
    hostile.count();
    let id = |id: u16| {
        if bad {
            // Never a valid id: at or past the ring size.
            (size as u16).wrapping_add(id % 64)
        } else {
            id
        }
    };
    let mut put = |r: NetifTxResponse| out.push(r);
    let mut reqs = pkt.requests.iter().take(n);
    if let Some(first) = reqs.next() {
        put(NetifTxResponse {
            id: id(first.id),
            status,
        });
    }
    for _ in 0..pkt.extra_count {
        put(NetifTxResponse {
            id: 0,
            status: NETIF_RSP_NULL,
        });
    }
    for r in reqs {
        put(NetifTxResponse {
            id: id(r.id),
            status,
        });
    }
}

/// Publishes TX responses (and misbehaves, when hostile); notifies the
/// frontend when the ring says so.
fn push_tx(plat: &HostedPlatform, queue: &mut Queue, hostile: &mut HostileState) {
    let mut notify = queue.tx.push_responses();
    let size = queue.tx.size();
    let mem = queue.tx.memory();
    if hostile.on(Hostile::UnsolicitedResponses) {
        let idx = queue.tx.rsp_prod_pvt();
        let r = NetifTxResponse {
            id: 0,
            status: NETIF_RSP_OKAY,
        };
        write_entry(mem, size, 12, idx, &tx_rsp_bytes(&r));
        header_index(mem, RSP_PROD).store(idx.wrapping_add(1), Ordering::Release);
        notify = true;
    }
    if hostile.on(Hostile::IndexJumps) {
        let p = header_index(mem, RSP_PROD).load(Ordering::Relaxed);
        header_index(mem, RSP_PROD).store(p.wrapping_add(1 << 20), Ordering::Release);
        notify = true;
    }
    if notify {
        let _ = plat.notify(queue.tx_port);
    }
}

/// Publishes RX responses (and misbehaves, when hostile); notifies the
/// frontend when the ring says so.
fn push_rx(plat: &HostedPlatform, queue: &mut Queue, hostile: &mut HostileState) {
    let mut notify = queue.rx.push_responses();
    let size = queue.rx.size();
    let mem = queue.rx.memory();
    if hostile.on(Hostile::UnsolicitedResponses) {
        let idx = queue.rx.rsp_prod_pvt();
        let r = NetifRxResponse {
            id: (idx & (size - 1)) as u16,
            offset: 0,
            flags: 0,
            status: 64,
        };
        write_entry(mem, size, 8, idx, &RxSlotBytes::from_response(&r).0);
        header_index(mem, RSP_PROD).store(idx.wrapping_add(1), Ordering::Release);
        notify = true;
    }
    if hostile.on(Hostile::IndexJumps) {
        let p = header_index(mem, RSP_PROD).load(Ordering::Relaxed);
        header_index(mem, RSP_PROD).store(p.wrapping_add(1 << 20), Ordering::Release);
        notify = true;
    }
    if hostile.on(Hostile::RxProdBackwards) {
        let p = header_index(mem, RSP_PROD).load(Ordering::Relaxed);
        header_index(mem, RSP_PROD).store(p.wrapping_sub(2), Ordering::Release);
        notify = true;
    }
    if notify {
        let _ = plat.notify(queue.rx_port);
    }
}

/// Lays one frame out in the RX ring as Linux's `xenvif_rx_skb` does (the
/// first data slot, the extras, the other data slots; each data slot
/// filled from the headroom on, `offset` 0 and `status` the end of the
/// data), grant-copies the data into the posted pages and writes the
/// responses. The caller checked that enough requests are posted.
fn deliver_rx(
    plat: &HostedPlatform,
    pool: &FramePool,
    fe: DomId,
    headroom: u16,
    queue: &mut Queue,
    hostile: &mut HostileState,
    buf: &FrameBuf,
) -> Result<(), TxFatal> {
    let h = usize::from(headroom);
    let per = PAGE_SIZE - h;
    let len = buf.len();
    let meta = buf.meta;
    // At most two extras (GSO, XDP), on the stack: no allocation per frame.
    let mut extras = [NetifExtraInfo::default(); 2];
    let mut n_extras = 0usize;
    let mut push_extra = |e: NetifExtraInfo| {
        if let Some(slot) = extras.get_mut(n_extras) {
            *slot = e;
            n_extras += 1;
        }
    };
    if let Some(g) = meta.gso {
        push_extra(NetifExtraInfo::new_gso(
            0,
            ExtraGso {
                size: g.mss,
                type_: g.kind.wire(),
                pad: 0,
                features: 0,
            },
        ));
    }
    if headroom > 0 {
        push_extra(NetifExtraInfo::new_xdp(
            0,
            ExtraXdp {
                headroom,
                pad: [0; 2],
            },
        ));
    }
    let extras = &mut extras[..n_extras];
    for (i, e) in extras.iter_mut().enumerate() {
        if i + 1 < n_extras {
            e.flags |= XEN_NETIF_EXTRA_FLAG_MORE;
        }
    }
    queue.copies.clear();
    queue.copy_rsp.clear();
    queue.rsp.clear();
    let mut pos = 0usize;
    let mut slot = 0usize;
    let mut extra_iter = extras.iter().copied();
    loop {
        let Some(req) = queue.rx.take_request().map_err(ring_fatal)? else {
            // Checked before: the requests are there.
            return Err(TxFatal::MoreSlotsThanQueued {
                queued: slot as u32,
            });
        };
        hostile.keep(plat, fe, req.gref, true);
        if slot != 0 && n_extras > 0 && slot <= n_extras {
            let e = extra_iter.next().unwrap_or_default();
            queue.rsp.push((NetifRxResponse::default(), Some(e)));
        } else {
            let n = (len - pos).min(per);
            let mut done = 0usize;
            while done < n {
                let Some((gfn, poff, room)) = pool.locate(buf, pos + done) else {
                    break;
                };
                let c = (n - done).min(room);
                queue.copies.push(GnttabCopy {
                    source: GnttabCopyPtr {
                        u: gfn.0,
                        domid: DOMID_SELF,
                        offset: poff,
                        _pad: 0,
                    },
                    dest: GnttabCopyPtr {
                        u: u64::from(req.gref),
                        domid: fe.0,
                        offset: (h + done) as u16,
                        _pad: 0,
                    },
                    len: c as u16,
                    flags: GntCopyFlags::DEST_GREF.bits(),
                    status: 0,
                    _pad: 0,
                });
                queue.copy_rsp.push(queue.rsp.len());
                done += c;
            }
            pos += n;
            let mut flags = if pos < len { NETRXF_MORE_DATA } else { 0 };
            if slot == 0 {
                if meta.csum_blank {
                    flags |= NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED;
                } else if meta.data_validated {
                    flags |= NETRXF_DATA_VALIDATED;
                }
                if n_extras > 0 {
                    flags |= NETRXF_EXTRA_INFO;
                }
            }
            queue.rsp.push((
                NetifRxResponse {
                    id: req.id,
                    offset: 0,
                    flags,
                    status: (h + n) as i16,
                },
                None,
            ));
        }
        slot += 1;
        if pos >= len && slot > n_extras {
            break;
        }
    }
    if plat.grant_copy(&mut queue.copies) > 0 {
        for (op, &r) in queue.copies.iter().zip(&queue.copy_rsp) {
            if op.status != 0 {
                if let Some((rsp, _)) = queue.rsp.get_mut(r) {
                    rsp.status = op.status;
                }
            }
        }
        log::debug!("netback: a grant copy into a buffer frontend {fe} posted failed; the packet carries the error");
    }
    let bad_ids = hostile.on(Hostile::BadIds);
    let overlong = hostile.on(Hostile::OverlongSizes);
    let past = hostile.on(Hostile::OffsetsPastPage);
    hostile.count();
    for (rsp, extra) in queue.rsp.drain(..) {
        let bytes = match extra {
            Some(e) => RxSlotBytes::from_extra(&e),
            None => {
                let mut r = rsp;
                if bad_ids {
                    r.id = r.id.wrapping_add(1);
                }
                if overlong {
                    r.status = (PAGE_SIZE + 512) as i16;
                }
                if past {
                    r.offset = (PAGE_SIZE + 16) as u16;
                    r.status = r.status.clamp(1, 64);
                }
                RxSlotBytes::from_response(&r)
            }
        };
        if let Err(e) = queue.rx.put_response(bytes) {
            log::error!("netback: writing an RX response: {e}");
        }
    }
    Ok(())
}
