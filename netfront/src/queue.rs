//! One queue pair of a connection: its TX and RX rings, event channels, TX
//! ids in flight, posted RX buffers and the frames waiting for the
//! application.
//!
//! Everything the backend writes (response slots, producer indices) goes
//! through the protocol layer's checks ([`crate::tx`], [`crate::rx`]); a
//! violation comes back as a [`NetError`] and the driver marks the device
//! broken. Nothing here panics on backend data.

use alloc::collections::VecDeque;

use grant_tables::cache::prefetch_line;
use grant_tables::{DomId, GrantedRing, Platform, PoolBuffer, Port, RingError};

use crate::abi::{
    NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse, RxSlotBytes, PAGE_SIZE,
};
use crate::buffers::{NetRxFrame, RxMeta, RxPiece, TxBuf};
use crate::csum::{self, CsumAction};
use crate::error::{NetError, RingKind};
use crate::features::{QueueEvents, QueueSetup};
use crate::inline::{InlineVec, PageList};
use crate::rx::{ProdTracker, RxBuffers, RxConfig, RxKind, RxNext, RxRefill};
use crate::stats::NetStats;
use crate::tx::{plan_single, plan_tx, TxCaps, TxPiece, TxQueue, TxStatus, MAX_TX_REQUESTS};

/// The TX ring of a queue.
pub(crate) type TxRing<P> = GrantedRing<P, NetifTxRequest, NetifTxResponse>;
/// The RX ring of a queue.
pub(crate) type RxRing<P> = GrantedRing<P, NetifRxRequest, NetifRxResponse>;

/// What a packet in flight holds until its TX response: its pages.
pub(crate) type TxToken<P> = PageList<PoolBuffer<P>, MAX_TX_REQUESTS>;

/// The event channels of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ports {
    Shared(Port),
    Split { tx: Port, rx: Port },
}

impl Ports {
    fn tx(self) -> Port {
        match self {
            Ports::Shared(p) => p,
            Ports::Split { tx, .. } => tx,
        }
    }

    fn rx(self) -> Port {
        match self {
            Ports::Shared(p) => p,
            Ports::Split { rx, .. } => rx,
        }
    }
}

/// One queue pair.
pub(crate) struct Queue<P: Platform>
where
    P::Pages: 'static,
{
    index: u16,
    tx: TxRing<P>,
    rx: RxRing<P>,
    ports: Ports,
    txq: TxQueue<TxToken<P>>,
    tx_prod: ProdTracker,
    rx_prod: ProdTracker,
    rxbufs: RxBuffers<PoolBuffer<P>>,
    refill: RxRefill,
    rx_cfg: RxConfig,
    /// Frames sent while the ring had no room, in order.
    backlog: VecDeque<TxBuf<P>>,
    /// Slots are on the TX ring, not yet published (frames sent with
    /// [`TxBuf::set_more`]).
    unpublished: bool,
    /// Frames received and not yet taken by the application.
    ready: VecDeque<NetRxFrame<P>>,
}

/// A received frame on its way to the ready list: its pieces and what the
/// response chain said of it (the same for a one-slot frame and a chain,
/// so both go through [`Queue::accept`]).
struct Received<P: Platform>
where
    P::Pages: 'static,
{
    pieces: PageList<RxPiece<P>, { crate::rx::MAX_RX_DATA_SLOTS }>,
    len: usize,
    csum_blank: bool,
    data_validated: bool,
    gso: Option<crate::tx::Gso>,
    hash: Option<crate::rx::RxHash>,
}

fn platform_err(op: &'static str) -> impl FnOnce(grant_tables::PlatformError) -> NetError {
    move |error| NetError::Platform { op, error }
}

impl<P: Platform> Queue<P>
where
    P::Pages: 'static,
{
    /// Allocates and grants the queue's rings and allocates its event
    /// channels (for `peer`). On an error, what was made is released.
    pub(crate) fn new(
        platform: &P,
        peer: DomId,
        index: u16,
        split: bool,
        rx_cfg: RxConfig,
    ) -> Result<Self, NetError> {
        let tx: TxRing<P> = GrantedRing::new(platform, peer, 0)?;
        let rx: RxRing<P> = GrantedRing::new(platform, peer, 0)?;
        let ports = if split {
            let t = platform
                .alloc_unbound(peer)
                .map_err(platform_err("allocating a TX event channel"))?;
            match platform.alloc_unbound(peer) {
                Ok(r) => Ports::Split { tx: t, rx: r },
                Err(e) => {
                    let _ = platform.close(t);
                    return Err(platform_err("allocating an RX event channel")(e));
                }
            }
        } else {
            Ports::Shared(
                platform
                    .alloc_unbound(peer)
                    .map_err(platform_err("allocating an event channel"))?,
            )
        };
        let txq = TxQueue::new(tx.size()).ok_or(NetError::Internal("TX ring size"))?;
        let rxbufs = RxBuffers::new(rx.size()).ok_or(NetError::Internal("RX ring size"))?;
        let refill = RxRefill::new(rx.size(), &rx_cfg);
        Ok(Queue {
            index,
            tx_prod: ProdTracker::new(tx.rsp_cons()),
            rx_prod: ProdTracker::new(rx.rsp_cons()),
            tx,
            rx,
            ports,
            txq,
            rxbufs,
            refill,
            rx_cfg,
            backlog: VecDeque::new(),
            unpublished: false,
            ready: VecDeque::new(),
        })
    }

    /// What the frontend publishes for this queue.
    pub(crate) fn setup_keys(&self) -> Result<QueueSetup, NetError> {
        let one = |refs: alloc::vec::Vec<u32>| {
            refs.first()
                .copied()
                .ok_or(NetError::Internal("a ring without a grant"))
        };
        Ok(QueueSetup {
            tx_ring_ref: one(self.tx.grefs())?,
            rx_ring_ref: one(self.rx.grefs())?,
            events: match self.ports {
                Ports::Shared(p) => QueueEvents::Shared(p.0),
                Ports::Split { tx, rx } => QueueEvents::Split { tx: tx.0, rx: rx.0 },
            },
        })
    }

    /// The ports to wait on.
    pub(crate) fn ports(&self) -> InlineVec<Port, 2> {
        let mut v = InlineVec::new();
        match self.ports {
            Ports::Shared(p) => {
                let _ = v.push(p);
            }
            Ports::Split { tx, rx } => {
                let _ = v.push(tx);
                let _ = v.push(rx);
            }
        }
        v
    }

    /// Frames waiting for the application.
    pub(crate) fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Packets in flight or waiting for room on the TX ring.
    pub(crate) fn tx_pending(&self) -> usize {
        self.txq.in_flight() + self.backlog.len()
    }

    /// The next received frame.
    pub(crate) fn pop_ready(&mut self) -> Option<NetRxFrame<P>> {
        self.ready.pop_front()
    }

    fn ring_err(&self, ring: RingKind) -> impl FnOnce(RingError) -> NetError {
        let queue = self.index;
        move |error| NetError::Ring { queue, ring, error }
    }

    fn notify(platform: &P, port: Port) -> Result<(), NetError> {
        platform
            .notify(port)
            .map_err(platform_err("notifying the backend"))
    }

    // ---- TX ----

    /// Queues `frame` for sending: on the ring now when there is room (and
    /// nothing older waits), else behind the frames already waiting. A
    /// frame the connection cannot send as asked is refused
    /// ([`NetError`] is not used for that: the caller gets the message).
    pub(crate) fn send(
        &mut self,
        platform: &P,
        frame: TxBuf<P>,
        caps: &TxCaps,
        stats: &mut NetStats,
    ) -> Result<Result<(), alloc::string::String>, NetError> {
        let frame = match self.send_single(platform, frame, caps, stats)? {
            None => return Ok(Ok(())),
            Some(f) => f,
        };
        let plan = match Self::plan(&frame, caps) {
            Ok(p) => p,
            Err(e) => {
                stats.tx_refused += 1;
                return Ok(Err(e));
            }
        };
        if self.backlog.is_empty() {
            // Nothing older waits: straight onto the ring with the plan
            // just made, published at once unless more frames follow.
            let more = frame.more;
            if let Some(frame) = self.put(&plan, frame, stats)? {
                self.backlog.push_back(frame);
                if self.unpublished {
                    self.publish(platform, stats)?;
                }
            } else if more {
                self.unpublished = true;
            } else {
                self.publish(platform, stats)?;
            }
            return Ok(Ok(()));
        }
        self.backlog.push_back(frame);
        self.flush(platform, caps, stats)?;
        Ok(Ok(()))
    }

    /// The short way of [`Self::send`] for the common frame (one page, no
    /// GSO, valid as it is: [`plan_single`]) when nothing waits and the ring
    /// and the ids have room: its one request written on the ring straight
    /// from the frame, without a plan or a list of slots, then published as
    /// [`Self::send`] publishes. Gives the frame back for the long way
    /// otherwise.
    #[inline]
    fn send_single(
        &mut self,
        platform: &P,
        mut frame: TxBuf<P>,
        caps: &TxCaps,
        stats: &mut NetStats,
    ) -> Result<Option<TxBuf<P>>, NetError> {
        if !self.backlog.is_empty() {
            return Ok(Some(frame));
        }
        let single = match (frame.bufs.len(), frame.bufs.get(0)) {
            (1, Some(b)) => plan_single(
                b.gref(),
                usize::from(b.offset()),
                frame.len,
                &frame.offload,
                caps,
            ),
            _ => None,
        };
        let Some((chunk, flags)) = single else {
            return Ok(Some(frame));
        };
        let len = frame.len;
        let more = frame.more;
        let token = core::mem::take(&mut frame.bufs);
        let req = match self
            .txq
            .submit_single(chunk, flags, token, self.tx.free_requests())
        {
            Ok(r) => r,
            Err(rejected) => {
                frame.bufs = rejected.token;
                return Ok(Some(frame));
            }
        };
        self.tx
            .put_request(req)
            .map_err(self.ring_err(RingKind::Tx))?;
        stats.tx_frames += 1;
        stats.tx_bytes += len as u64;
        if more {
            self.unpublished = true;
        } else {
            self.publish(platform, stats)?;
        }
        Ok(None)
    }

    fn plan(frame: &TxBuf<P>, caps: &TxCaps) -> Result<crate::tx::TxPlan, alloc::string::String> {
        use alloc::string::ToString;
        if let (1, Some(b)) = (frame.bufs.len(), frame.bufs.get(0)) {
            // One page (nearly every frame): no arrays for 18 pieces.
            let gref = [b.gref()];
            let piece = [TxPiece {
                grefs: &gref,
                offset: usize::from(b.offset()),
                len: frame.len.min(PAGE_SIZE),
            }];
            return plan_tx(&piece, &frame.offload, caps).map_err(|e| e.to_string());
        }
        let mut grefs = [0u32; MAX_TX_REQUESTS];
        let mut offsets = [0usize; MAX_TX_REQUESTS];
        let n = frame.bufs.len().min(MAX_TX_REQUESTS);
        for (i, b) in frame.bufs.iter().enumerate().take(n) {
            grefs[i] = b.gref();
            offsets[i] = usize::from(b.offset());
        }
        let mut pieces = [TxPiece {
            grefs: &[],
            offset: 0,
            len: 0,
        }; MAX_TX_REQUESTS];
        let mut left = frame.len;
        for (i, piece) in pieces.iter_mut().enumerate().take(n) {
            let len = left.min(PAGE_SIZE);
            left -= len;
            *piece = TxPiece {
                grefs: &grefs[i..=i],
                offset: offsets[i],
                len,
            };
        }
        plan_tx(&pieces[..n], &frame.offload, caps).map_err(|e| e.to_string())
    }

    /// Puts waiting frames on the ring while it has room, then publishes
    /// them with one notification if the backend asked for one.
    pub(crate) fn flush(
        &mut self,
        platform: &P,
        caps: &TxCaps,
        stats: &mut NetStats,
    ) -> Result<(), NetError> {
        let mut put = false;
        while let Some(frame) = self.backlog.pop_front() {
            let plan = match Self::plan(&frame, caps) {
                Ok(p) => p,
                Err(_) => {
                    // Checked at send; cannot change. Drop it rather than
                    // block the queue.
                    stats.tx_refused += 1;
                    continue;
                }
            };
            if let Some(frame) = self.put(&plan, frame, stats)? {
                // No room: it waits, first in line.
                self.backlog.push_front(frame);
                break;
            }
            put = true;
        }
        if put || self.unpublished {
            self.publish(platform, stats)?;
        }
        Ok(())
    }

    /// Writes `frame`'s slots (laid out as `plan`) on the ring, unpublished;
    /// gives the frame back when the ring or the ids lack room.
    fn put(
        &mut self,
        plan: &crate::tx::TxPlan,
        mut frame: TxBuf<P>,
        stats: &mut NetStats,
    ) -> Result<Option<TxBuf<P>>, NetError> {
        if plan.slots() > self.tx.free_requests() as usize || plan.requests() > self.txq.free_ids()
        {
            return Ok(Some(frame));
        }
        let len = frame.len;
        let token = core::mem::take(&mut frame.bufs);
        let slots = match self.txq.submit(plan, token, self.tx.free_requests()) {
            Ok(s) => s,
            Err(rejected) => {
                // Room was checked above; keep the frame for later.
                frame.bufs = rejected.token;
                return Ok(Some(frame));
            }
        };
        for slot in slots.iter() {
            self.tx
                .put_request_as(&slot.to_bytes())
                .map_err(self.ring_err(RingKind::Tx))?;
        }
        stats.tx_frames += 1;
        stats.tx_bytes += len as u64;
        Ok(None)
    }

    /// Publishes the slots put since the last push, notifying the backend
    /// if it asked.
    fn publish(&mut self, platform: &P, stats: &mut NetStats) -> Result<(), NetError> {
        self.unpublished = false;
        self.txq.mark_published();
        if self.tx.push_requests() {
            Self::notify(platform, self.ports.tx())?;
            stats.notifications += 1;
        }
        Ok(())
    }

    /// Takes every TX response the backend published, recycling the pages
    /// of completed packets: onto `stash` while it holds fewer than
    /// `stash_max`, else back to their pool. Returns how many packets
    /// completed.
    pub(crate) fn complete_tx(
        &mut self,
        stats: &mut NetStats,
        stash: &mut alloc::vec::Vec<PoolBuffer<P>>,
        stash_max: usize,
    ) -> Result<usize, NetError> {
        let queue = self.index;
        let avail = self
            .tx
            .unconsumed_responses()
            .map_err(self.ring_err(RingKind::Tx))?;
        if avail == 0 {
            return Ok(0);
        }
        let cons = self.tx.rsp_cons();
        self.tx_prod
            .observe(cons.wrapping_add(avail), cons, avail)
            .map_err(|violation| NetError::Prod {
                queue,
                ring: RingKind::Tx,
                violation,
            })?;
        let mut done = 0;
        for _ in 0..avail {
            let Some(rsp) = self
                .tx
                .take_response()
                .map_err(self.ring_err(RingKind::Tx))?
            else {
                break;
            };
            match self.txq.complete(rsp) {
                Err(violation) => return Err(NetError::Tx { queue, violation }),
                Ok(None) => {}
                Ok(Some(c)) => {
                    match c.status {
                        TxStatus::Okay => {}
                        TxStatus::Dropped => stats.tx_dropped += 1,
                        TxStatus::Error => stats.tx_errors += 1,
                    }
                    // The pages go back to the stash or the pool here.
                    let mut token = c.token;
                    for page in token.drain() {
                        if stash.len() < stash_max {
                            stash.push(page);
                        }
                    }
                    done += 1;
                }
            }
        }
        Ok(done)
    }

    // ---- RX ----

    /// Posts pool pages on the RX ring as the refill policy says, and
    /// notifies the backend if it asked.
    pub(crate) fn refill_rx(
        &mut self,
        platform: &P,
        pool: &grant_tables::BufferPool<P>,
        stats: &mut NetStats,
    ) -> Result<(), NetError> {
        let outstanding = self.rx.req_prod_pvt().wrapping_sub(self.rx.rsp_cons());
        let want = self.refill.to_post(outstanding);
        let mut posted = 0u32;
        for _ in 0..want {
            if self.rx.is_full() {
                break;
            }
            let Some(buf) = pool.take() else {
                stats.rx_pool_empty += 1;
                break;
            };
            let idx = self.rx.req_prod_pvt();
            let gref = buf.gref();
            let req = self
                .rxbufs
                .post(idx, gref, buf)
                .map_err(|r| NetError::from(r.error))?;
            self.rx
                .put_request(req)
                .map_err(self.ring_err(RingKind::Rx))?;
            posted += 1;
        }
        if posted > 0 && self.rx.push_requests() {
            Self::notify(platform, self.ports.rx())?;
            stats.notifications += 1;
        }
        Ok(())
    }

    /// Takes up to `budget` packets off the RX ring into the ready list
    /// (completing partial checksums), returning how many frames became
    /// ready.
    pub(crate) fn reap_rx(
        &mut self,
        budget: usize,
        stats: &mut NetStats,
    ) -> Result<usize, NetError> {
        let queue = self.index;
        let mut got = 0;
        let mut packets = 0;
        while packets < budget {
            let avail = self
                .rx
                .unconsumed_responses()
                .map_err(self.ring_err(RingKind::Rx))?;
            if avail == 0 {
                break;
            }
            let cons = self.rx.rsp_cons();
            // The backend fills posted buffers in ring order: the frame's
            // first bytes are most likely in the buffer posted at `cons`.
            // Fetched now, that line comes in while the response slot is
            // read and checked, instead of after (a hint: which buffer the
            // frame is in is still decided by the response's id).
            if let Some(b) = self.rxbufs.posted_at(cons) {
                prefetch_line(
                    b.as_ptr()
                        .as_ptr()
                        .wrapping_add(usize::from(self.rx_cfg.headroom)),
                );
            }
            let outstanding = self.rx.req_prod_pvt().wrapping_sub(cons);
            self.rx_prod
                .observe(cons.wrapping_add(avail), cons, outstanding)
                .map_err(|violation| NetError::Prod {
                    queue,
                    ring: RingKind::Rx,
                    violation,
                })?;
            let ring = &mut self.rx;
            let mut ring_error = None;
            let parsed =
                self.rxbufs.take_next(cons, avail, &self.rx_cfg, |_idx| {
                    match ring.take_response_as::<RxSlotBytes>() {
                        Ok(Some(b)) => b,
                        Ok(None) => RxSlotBytes::default(),
                        Err(e) => {
                            ring_error.get_or_insert(e);
                            RxSlotBytes::default()
                        }
                    }
                });
            if let Some(error) = ring_error {
                return Err(NetError::Ring {
                    queue,
                    ring: RingKind::Rx,
                    error,
                });
            }
            let packet = match parsed {
                Err(violation) => return Err(NetError::Rx { queue, violation }),
                Ok(None) => break,
                Ok(Some(RxNext::Single {
                    frag,
                    csum_blank,
                    data_validated,
                })) => {
                    // The common frame: one slot, no extras, nothing spare.
                    packets += 1;
                    let piece = RxPiece {
                        buf: frag.posted.buf,
                        offset: frag.offset,
                        len: frag.len,
                    };
                    let rx = Received {
                        pieces: PageList::One(piece),
                        len: usize::from(frag.len),
                        csum_blank,
                        data_validated,
                        gso: None,
                        hash: None,
                    };
                    got += usize::from(self.accept(rx, stats));
                    continue;
                }
                Ok(Some(RxNext::Packet(p))) => p,
            };
            packets += 1;
            // Extra-info slots' pages (and a dropped packet's) go back to
            // the pool now.
            drop(packet.spare);
            match packet.kind {
                RxKind::Dropped(_) => stats.rx_dropped += 1,
                RxKind::Frame(f) => {
                    let mut pieces = PageList::new();
                    let mut frags = f.frags;
                    for frag in frags.drain() {
                        let _ = pieces.push(RxPiece {
                            buf: frag.posted.buf,
                            offset: frag.offset,
                            len: frag.len,
                        });
                    }
                    let rx = Received {
                        pieces,
                        len: f.len,
                        csum_blank: f.csum_blank,
                        data_validated: f.data_validated,
                        gso: f.gso,
                        hash: f.hash,
                    };
                    got += usize::from(self.accept(rx, stats));
                }
            }
        }
        Ok(got)
    }

    /// Completes a received frame's partial checksum when it has one (a
    /// frame whose checksum cannot be completed is dropped and counted),
    /// counts it and puts it on the ready list. Returns whether it went
    /// there.
    fn accept(&mut self, rx: Received<P>, stats: &mut NetStats) -> bool {
        let queue = self.index;
        let action = crate::rx::checksum_action(rx.csum_blank, rx.data_validated, rx.gso.is_some());
        let mut frame = NetRxFrame {
            pieces: rx.pieces,
            len: rx.len,
            meta: RxMeta {
                checksum_ok: false,
                checksum_completed: false,
                gso: rx.gso,
                hash: rx.hash,
                queue,
            },
        };
        match action {
            CsumAction::Verify => {}
            CsumAction::Validated => frame.meta.checksum_ok = true,
            CsumAction::Complete { recompute_pseudo } => {
                match frame.with_fragments_mut(|frags| csum::complete(frags, recompute_pseudo)) {
                    Ok(_) => {
                        frame.meta.checksum_ok = true;
                        frame.meta.checksum_completed = true;
                        stats.rx_csum_completed += 1;
                    }
                    Err(e) => {
                        log::debug!("netfront: queue {queue}: {e}");
                        stats.rx_csum_errors += 1;
                        return false;
                    }
                }
            }
        }
        if frame.meta.gso.is_some() {
            stats.rx_gso_frames += 1;
        }
        stats.rx_frames += 1;
        stats.rx_bytes += frame.len as u64;
        self.ready.push_back(frame);
        true
    }

    /// Whether [`Self::arm`] asks for TX events (`tx`, or frames wait for
    /// room on the TX ring).
    pub(crate) fn wants_tx_events(&self, tx: bool) -> bool {
        tx || !self.backlog.is_empty()
    }

    /// The port RX events come on.
    pub(crate) fn rx_port(&self) -> Port {
        self.ports.rx()
    }

    /// Asks the backend to notify on its next responses on the RX ring, and
    /// on the TX ring too when `tx` is set or frames wait for room on it,
    /// and says whether any are already waiting (the final check before
    /// blocking).
    pub(crate) fn arm(&mut self, tx: bool) -> Result<bool, NetError> {
        let tx = if self.wants_tx_events(tx) {
            self.tx
                .final_check_for_responses()
                .map_err(self.ring_err(RingKind::Tx))?
        } else {
            false
        };
        let rx = self
            .rx
            .final_check_for_responses()
            .map_err(self.ring_err(RingKind::Rx))?;
        Ok(tx || rx || !self.ready.is_empty())
    }

    /// Ends the queue: every packet in flight or waiting is failed (its
    /// pages back to the pool), every posted buffer taken back, the event
    /// channels closed; the rings' grants end when the queue is dropped
    /// (quarantined, whole, while the backend still maps them). Returns the
    /// packets failed. Frames already received stay with the application
    /// (or are dropped with the queue).
    pub(crate) fn shut(&mut self, platform: &P) -> usize {
        let aborted = self.txq.abort_all().len() + self.backlog.len();
        self.backlog.clear();
        self.unpublished = false;
        drop(self.rxbufs.drain());
        for p in self.ports().iter() {
            if let Err(e) = platform.close(*p) {
                log::warn!("netfront: closing {p}: {e}");
            }
        }
        aborted
    }
}
