//! Running the RoCE v2 transport over a frame device.
//!
//! [`RoceNic`] joins a [`FrameDevice`] (netfront, the passed-through
//! e1000e, a hosted test link) and a [`Transport`] (the pump of a queue
//! pair's state machine, or of a whole verbs context). One call to
//! [`RoceNic::poll`] does everything that can be done without blocking:
//!
//! 1. the device's own work ([`FrameDevice::poll`]);
//! 2. the frames the transport has to send ([`Transport::emit_into`]):
//!    what the application posted since the last poll, and what the last
//!    poll's received frames and timers produced, each written straight
//!    into a transmit buffer the device lends (its granted or DMA memory:
//!    no copy besides that one) and sent. When the device has no buffer
//!    free, the frame waits for the next poll;
//! 3. received frames: each is copied once out of the device's memory into
//!    a buffer of this driver's (the device's memory may still be written by
//!    a peer or a device; everything after works on the private copy) and
//!    classified: IPv4 UDP to port 4791 goes to
//!    [`Transport::handle_frame`], anything else to the callback given by
//!    [`RoceNic::on_other_frame`] or, without one, is counted and dropped.
//!    A RoCE frame that made a completion or placed an RDMA WRITE's bytes
//!    ([`Transport::completion_mark`]) ends the receiving: the
//!    application sees it before the frames behind it are handled (the
//!    ACK that usually follows a pong, handled at the next poll after the
//!    request posted in answer has left), as a NIC's completion is
//!    visible before it has handled the next packet;
//! 4. the transport's timers ([`Transport::on_time`]) when its deadline has
//!    passed.
//!
//! What received frames and timers produce (acknowledgements above all)
//! leaves at the next poll, not at the end of this one: the application
//! sees the completions first, and a request it posts in answer (the
//! pong of a ping) leaves before that acknowledgement, which nothing
//! waits on (a queue pair alternates requests and responses). An
//! application that stops polling calls [`RoceNic::flush`] (or
//! [`RoceNic::wait`], which flushes before it blocks) so that nothing
//! stays queued.
//!
//! [`RoceNic::wait`] blocks in the device's [`FrameDevice::wait`], never
//! past the transport's next deadline. Time is the caller's: every call
//! takes `now_ns`, monotonic nanoseconds of one clock (the platform's
//! [`grant_tables::Clock`]), and deadlines are on that clock.
//!
//! [`QpTransport`] is the [`Transport`] of one [`QueuePair`], whose own
//! timers (local ACK timeout, RNR wait) it runs on the caller's clock.
//!
//! # Limits
//! Frames with a VLAN tag or IPv6 are not RoCE here (they go to the
//! callback); one [`QpTransport`] serves one queue pair (a verbs context
//! demultiplexes several); completions are read from the transport itself
//! ([`RoceNic::transport_mut`]), not through this module.

use alloc::boxed::Box;
use alloc::vec::Vec;

use netfront::frame::{FrameDevice, FrameError, RxFrame, TxFrame};

use crate::packet::{ETHERTYPE_IPV4, ETH_HEADER_LEN, IPPROTO_UDP, ROCE_V2_PORT};
use crate::rc::QueuePair;

/// The pump of a RoCE v2 transport: what a driver moving frames needs of
/// it. Times are monotonic nanoseconds of the caller's clock.
pub trait Transport {
    /// A received RoCE v2 frame (UDP port 4791), in a buffer the caller
    /// owns (never memory a peer can still write).
    fn handle_frame(&mut self, frame: &[u8], now_ns: u64);
    /// The next frame to send, if any.
    fn next_frame(&mut self) -> Option<Vec<u8>>;
    /// The length of the frame [`Transport::emit_into`] writes next.
    /// `None` when nothing waits, or when the transport has no in-place
    /// path (the default): the driver then calls [`Transport::next_frame`].
    fn next_frame_len(&self) -> Option<usize> {
        None
    }
    /// Whether [`Transport::next_frame_len`] and [`Transport::emit_into`]
    /// are the transport's own (then `next_frame_len` returning `None`
    /// means nothing waits, and the driver does not ask
    /// [`Transport::next_frame`] as well). The default: `false`.
    fn emits_in_place(&self) -> bool {
        false
    }
    /// Writes the next frame to send straight into `out` (a transmit
    /// buffer the device lends) and returns its length, without
    /// allocating. `None` when nothing waits or `out` is shorter than
    /// [`Transport::next_frame_len`] said (the frame then stays queued).
    /// The default goes through [`Transport::next_frame`] (and drops, with
    /// a warning, a frame longer than `out`: the transport's
    /// retransmission recovers).
    fn emit_into(&mut self, out: &mut [u8]) -> Option<usize> {
        let f = self.next_frame()?;
        match out.get_mut(..f.len()) {
            Some(o) => {
                o.copy_from_slice(&f);
                Some(f.len())
            }
            None => {
                log::warn!(
                    "a RoCE frame of {} bytes does not fit a {}-byte buffer; dropped",
                    f.len(),
                    out.len()
                );
                None
            }
        }
    }
    /// Runs the timers due at `now_ns` (retransmission, RNR).
    fn on_time(&mut self, now_ns: u64);
    /// When [`Transport::on_time`] should run next; `None`: no timer armed.
    fn next_deadline(&self) -> Option<u64>;
    /// The driver's clock, given on every [`RoceNic::poll`] whether or not
    /// a timer is due: what work posted between two polls arms its timers
    /// from. Must be cheap; runs no timer.
    fn advance_time(&mut self, _now_ns: u64) {}
    /// A number that changes whenever the transport makes something the
    /// application may be waiting for (a count of them): a completion, or
    /// an RDMA WRITE's bytes placed in its memory (which an application
    /// polls without a completion). A received frame that changes it ends
    /// [`RoceNic::poll`]'s receiving, so that the application sees it
    /// before the frames behind it are handled. Must be cheap. The default
    /// never changes (every poll handles up to [`RX_BUDGET`] frames).
    fn completion_mark(&self) -> u64 {
        0
    }
}

/// A whole verbs context is a transport: it demultiplexes frames to its
/// queue pairs by destination QPN and runs every queue pair's timers.
impl Transport for crate::verbs::Context {
    fn handle_frame(&mut self, frame: &[u8], now_ns: u64) {
        crate::verbs::Context::handle_frame(self, frame, now_ns);
    }
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        crate::verbs::Context::next_frame(self)
    }
    #[inline]
    fn next_frame_len(&self) -> Option<usize> {
        crate::verbs::Context::next_frame_len(self)
    }
    #[inline]
    fn emits_in_place(&self) -> bool {
        true
    }
    fn emit_into(&mut self, out: &mut [u8]) -> Option<usize> {
        crate::verbs::Context::emit_into(self, out)
    }
    fn on_time(&mut self, now_ns: u64) {
        crate::verbs::Context::on_time(self, now_ns);
    }
    #[inline]
    fn next_deadline(&self) -> Option<u64> {
        crate::verbs::Context::next_deadline(self)
    }
    #[inline]
    fn advance_time(&mut self, now_ns: u64) {
        crate::verbs::Context::advance_time(self, now_ns);
    }
    #[inline]
    fn completion_mark(&self) -> u64 {
        crate::verbs::Context::completions_made(self)
            .wrapping_add(crate::verbs::Context::writes_placed(self))
    }
}

/// The default retransmission timeout: 4.096 us × 2^14 (the local ACK
/// timeout value 14 of `ibv_modify_qp`), about 67 ms.
pub const DEFAULT_RTO_NS: u64 = 4096 << 14;

/// One [`QueuePair`] as a [`Transport`]; the queue pair's own timers
/// ([`QueuePair::on_time`], [`QueuePair::next_deadline`]) do the work,
/// with the local ACK timeout set to `rto_ns`
/// ([`QueuePair::set_ack_timeout_ns`]).
///
/// The queue pair's timer starts when a request is queued while none
/// runs, restarts at every acknowledgement that makes progress, stops
/// when nothing is unacknowledged, and on expiry resends every
/// unacknowledged packet (or after the retry limit fails the queue pair);
/// after an RNR NAK it waits the RNR time instead. The queue pair learns
/// the time from this transport: every received frame and every
/// [`Transport::on_time`] passes the caller's clock on first.
pub struct QpTransport {
    qp: QueuePair,
    /// Timer expiries handled.
    timeouts: u64,
}

impl QpTransport {
    /// Wraps `qp`, with a retransmission timeout of `rto_ns` nanoseconds
    /// (at least 1).
    pub fn new(mut qp: QueuePair, rto_ns: u64) -> QpTransport {
        qp.set_ack_timeout_ns(rto_ns);
        QpTransport { qp, timeouts: 0 }
    }

    /// The queue pair (post work requests, poll completions).
    pub fn qp(&self) -> &QueuePair {
        &self.qp
    }

    /// The queue pair, mutable.
    pub fn qp_mut(&mut self) -> &mut QueuePair {
        &mut self.qp
    }

    /// Gives the queue pair back.
    pub fn into_qp(self) -> QueuePair {
        self.qp
    }

    /// Times a timer expired (the local ACK timer or the RNR wait).
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }
}

impl Transport for QpTransport {
    fn handle_frame(&mut self, frame: &[u8], now_ns: u64) {
        // The time first, so that a timer the frame restarts starts now
        // (a timer already due fires here, as it would have in on_time).
        self.on_time(now_ns);
        self.qp.receive(frame);
    }

    fn next_frame(&mut self) -> Option<Vec<u8>> {
        self.qp.transmit()
    }

    #[inline]
    fn next_frame_len(&self) -> Option<usize> {
        self.qp.next_frame_len()
    }
    #[inline]
    fn emits_in_place(&self) -> bool {
        true
    }

    fn emit_into(&mut self, out: &mut [u8]) -> Option<usize> {
        self.qp.emit_into(out)
    }

    fn on_time(&mut self, now_ns: u64) {
        if self.qp.next_deadline().is_some_and(|d| d <= now_ns) {
            self.timeouts += 1;
        }
        self.qp.on_time(now_ns);
    }

    #[inline]
    fn next_deadline(&self) -> Option<u64> {
        self.qp.next_deadline()
    }

    #[inline]
    fn advance_time(&mut self, now_ns: u64) {
        self.qp.advance_time(now_ns);
    }

    #[inline]
    fn completion_mark(&self) -> u64 {
        self.qp
            .completions_made()
            .wrapping_add(self.qp.writes_placed())
    }
}

/// What [`RoceNic`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    /// RoCE v2 frames handed to the transport.
    pub rx_roce: u64,
    /// Other frames handed to the callback.
    pub rx_other: u64,
    /// Other frames dropped (no callback).
    pub rx_other_dropped: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Frames the transport produced that the device refused as too large
    /// or invalid (dropped; the transport's retransmission recovers).
    pub tx_refused: u64,
    /// Polls that found no transmit buffer free for a waiting frame.
    pub tx_stalls: u64,
}

/// A callback for received frames that are not RoCE v2.
pub type OtherFrames = Box<dyn FnMut(&[u8]) + Send>;

/// Received frames handled by one [`RoceNic::poll`], at most, so that a
/// flood of received frames cannot keep the transmit side from running.
pub const RX_BUDGET: usize = 64;

/// The RoCE v2 transport over a frame device (see the [module docs](self)).
pub struct RoceNic<D: FrameDevice, T: Transport> {
    dev: D,
    transport: T,
    /// The private copy of the frame being handled.
    rx_copy: Vec<u8>,
    /// A frame the device had no buffer for yet.
    pending: Option<Vec<u8>>,
    /// Where a frame is built for a device whose buffer is not one slice.
    tx_scratch: Vec<u8>,
    other: Option<OtherFrames>,
    stats: NicStats,
}

/// Whether a frame is IPv4 UDP to the RoCE v2 port (no VLAN tag, any IPv4
/// header length: the transport's parser refuses options itself).
pub fn is_roce_v2(frame: &[u8]) -> bool {
    let ethertype = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let Some(&vihl) = frame.get(ETH_HEADER_LEN) else {
        return false;
    };
    if ethertype != Some(ETHERTYPE_IPV4) || vihl >> 4 != 4 {
        return false;
    }
    let udp = ETH_HEADER_LEN + usize::from(vihl & 0x0f) * 4;
    frame.get(ETH_HEADER_LEN + 9) == Some(&IPPROTO_UDP)
        && frame
            .get(udp + 2..udp + 4)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            == Some(ROCE_V2_PORT)
}

impl<D: FrameDevice, T: Transport> RoceNic<D, T> {
    /// The transport `transport` over the device `dev`.
    pub fn new(dev: D, transport: T) -> RoceNic<D, T> {
        let cap = dev.link().max_frame;
        RoceNic {
            dev,
            transport,
            rx_copy: Vec::with_capacity(cap),
            pending: None,
            tx_scratch: Vec::with_capacity(cap),
            other: None,
            stats: NicStats::default(),
        }
    }

    /// Hands every received frame that is not RoCE v2 to `f` (ARP, the
    /// connection exchange's TCP, ...), in a private copy.
    pub fn on_other_frame(&mut self, f: OtherFrames) {
        self.other = Some(f);
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutable (post work requests, poll completions).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, mutable.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// The counters.
    pub fn stats(&self) -> NicStats {
        self.stats
    }

    /// The device and the transport, taken apart.
    pub fn into_parts(self) -> (D, T) {
        (self.dev, self.transport)
    }

    /// Moves frames both ways and runs the timers, without blocking (see
    /// the [module docs](self)). `Ok(true)` when anything moved. A device
    /// error is returned as it is; [`FrameError::LinkDown`] keeps the
    /// frame waiting for the link.
    pub fn poll(&mut self, now_ns: u64) -> Result<bool, FrameError> {
        self.transport.advance_time(now_ns);
        let mut progress = self.dev.poll()?;
        progress |= self.flush()?;
        for _ in 0..RX_BUDGET {
            let Some(rx) = self.dev.receive()? else { break };
            progress = true;
            // One read of the device's memory, into our own buffer.
            self.rx_copy.clear();
            match rx.as_slice() {
                Some(s) => self.rx_copy.extend_from_slice(s),
                None => {
                    self.rx_copy.resize(rx.len(), 0);
                    rx.read_at(0, &mut self.rx_copy)?;
                }
            }
            drop(rx);
            if is_roce_v2(&self.rx_copy) {
                self.stats.rx_roce += 1;
                let mark = self.transport.completion_mark();
                self.transport.handle_frame(&self.rx_copy, now_ns);
                if self.transport.completion_mark() != mark {
                    // The application takes it first; the frames behind
                    // (often the ACK that follows a SEND) wait for the
                    // next poll.
                    break;
                }
            } else if let Some(f) = self.other.as_mut() {
                self.stats.rx_other += 1;
                f(&self.rx_copy);
            } else {
                self.stats.rx_other_dropped += 1;
            }
        }
        if self.transport.next_deadline().is_some_and(|d| d <= now_ns) {
            self.transport.on_time(now_ns);
            progress = true;
        }
        Ok(progress)
    }

    /// Sends what the transport has, while the device lends buffers:
    /// built in place when the transport can ([`Transport::emit_into`]),
    /// through [`Transport::next_frame`] otherwise. [`RoceNic::poll`]
    /// does it first; call it when stopping to poll for a while (without
    /// [`RoceNic::wait`]). `Ok(true)` when a frame was sent.
    pub fn flush(&mut self) -> Result<bool, FrameError> {
        let mut sent = false;
        while self.pending.is_none() {
            let Some(len) = self.transport.next_frame_len() else {
                break;
            };
            let mut buf = match self.dev.tx_buffer(len) {
                Ok(Some(b)) => b,
                // The frame stays queued in the transport.
                Ok(None) | Err(FrameError::LinkDown) => {
                    self.stats.tx_stalls += 1;
                    return Ok(sent);
                }
                Err(e @ (FrameError::TooLarge { .. } | FrameError::Invalid(_))) => {
                    log::warn!("a RoCE frame of {len} bytes was refused by the device: {e}");
                    self.stats.tx_refused += 1;
                    // Taken off the transport's queue and dropped.
                    drop(self.transport.next_frame());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let emitted = match buf.as_mut_slice() {
                Some(s) if s.len() == len => self.transport.emit_into(s),
                _ => {
                    self.tx_scratch.clear();
                    self.tx_scratch.resize(len, 0);
                    let n = self.transport.emit_into(&mut self.tx_scratch);
                    if let Some(n) = n {
                        buf.write_at(0, self.tx_scratch.get(..n).unwrap_or(&[]))?;
                    }
                    n
                }
            };
            if emitted != Some(len) {
                // The transport broke its word on the length: nothing
                // sensible to send (the buffer goes back unused).
                log::error!("the transport announced a {len}-byte frame and wrote {emitted:?}");
                self.stats.tx_refused += 1;
                return Ok(sent);
            }
            match self.dev.send(buf) {
                Ok(()) => {
                    self.stats.tx_frames += 1;
                    sent = true;
                }
                // Built in the device's buffer, the frame is gone with it:
                // the transport's retransmission (or the peer's, for a
                // response) recovers.
                Err(e @ (FrameError::LinkDown | FrameError::Invalid(_))) => {
                    log::warn!("a RoCE frame of {len} bytes was not sent: {e}");
                    self.stats.tx_refused += 1;
                    return Ok(sent);
                }
                Err(e) => return Err(e),
            }
        }
        if self.pending.is_none() && self.transport.emits_in_place() {
            return Ok(sent);
        }
        loop {
            let Some(frame) = self.pending.take().or_else(|| self.transport.next_frame()) else {
                return Ok(sent);
            };
            let mut buf = match self.dev.tx_buffer(frame.len()) {
                Ok(Some(b)) => b,
                Ok(None) | Err(FrameError::LinkDown) => {
                    self.stats.tx_stalls += 1;
                    self.pending = Some(frame);
                    return Ok(sent);
                }
                Err(e @ (FrameError::TooLarge { .. } | FrameError::Invalid(_))) => {
                    log::warn!(
                        "a RoCE frame of {} bytes was refused by the device: {e}",
                        frame.len()
                    );
                    self.stats.tx_refused += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match buf.as_mut_slice() {
                Some(s) if s.len() == frame.len() => s.copy_from_slice(&frame),
                _ => buf.write_at(0, &frame)?,
            }
            match self.dev.send(buf) {
                Ok(()) => {
                    self.stats.tx_frames += 1;
                    sent = true;
                }
                Err(FrameError::LinkDown) => {
                    self.pending = Some(frame);
                    return Ok(sent);
                }
                Err(e @ FrameError::Invalid(_)) => {
                    log::warn!(
                        "a RoCE frame of {} bytes was refused by the device: {e}",
                        frame.len()
                    );
                    self.stats.tx_refused += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends what waits ([`RoceNic::flush`]), then blocks in the device's
    /// wait until something may have happened, at
    /// most `timeout_ns` (`None`: no limit of the caller's) and never past
    /// the transport's next deadline; returns at once when that deadline
    /// has passed. `Ok(true)` when the device woke it. Call
    /// [`RoceNic::poll`] after it.
    pub fn wait(&mut self, now_ns: u64, timeout_ns: Option<u64>) -> Result<bool, FrameError> {
        // Nothing stays queued while this end sleeps.
        self.flush()?;
        let until_deadline = self
            .transport
            .next_deadline()
            .map(|d| d.saturating_sub(now_ns));
        let bound = match (timeout_ns, until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if bound == Some(0) {
            return Ok(false);
        }
        self.dev.wait(bound)
    }
}
