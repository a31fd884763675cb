//! The reliable-connected transport of one queue pair, for SEND and RDMA
//! WRITE, as a pure state machine: it is fed received frames
//! ([`QueuePair::receive`]) and timer expiries ([`QueuePair::timeout`]),
//! and emits frames ([`QueuePair::transmit`]) and completions
//! ([`QueuePair::poll_completion`]). It owns no device and no clock.
//!
//! # What it does (IBA vol. 1, 9.7)
//! - **Requester.** Posted SEND and RDMA WRITE work requests (with or
//!   without immediate data) are segmented to the path MTU into
//!   first/middle/last or only packets with consecutive PSNs; the last
//!   packet of each message asks for an acknowledgement. Sent packets stay
//!   queued until acknowledged. An ACK acknowledges every packet up to its
//!   PSN (coalesced ACKs) and completes the work requests it covers; stale
//!   ACKs and ACKs for PSNs never sent are dropped and counted. A PSN
//!   sequence error NAK acknowledges what precedes it and resends from its
//!   PSN (go-back-N). [`QueuePair::timeout`] (the caller's retransmission
//!   timer fired) resends everything unacknowledged; after `retry_limit`
//!   timeouts without progress the queue pair enters the error state and
//!   its work requests complete with [`Status::RetryExceeded`]. Other NAKs
//!   complete the request with an error and move the queue pair to the
//!   error state.
//! - **Responder.** It checks the destination QP and the P_Key, then the
//!   PSN against the expected PSN: a duplicate (behind) is not executed
//!   again and is answered with an ACK of the last PSN received; a packet
//!   ahead is answered with one PSN sequence error NAK (not one per packet)
//!   and dropped until the expected PSN arrives. In sequence, it checks the
//!   opcode sequence (a message in progress continues with middle or last
//!   packets of the same operation), lengths (first and middle packets
//!   carry exactly the path MTU; no packet carries more), and for RDMA
//!   WRITE the R_Key, the region's remote-write permission and the whole
//!   transfer's bounds with checked arithmetic before any byte is written.
//!   Invalid requests and access errors are answered with the NAK the
//!   specification names and move the queue pair to the error state. ACKs
//!   are coalesced: packets received between two calls to `transmit` are
//!   acknowledged by one ACK.
//!
//! # What it does not do yet
//! RDMA READ and atomics (their packets are answered with an invalid
//! request NAK), RNR: a SEND that finds no posted receive is answered with
//! an RNR NAK and the requester simply resends at its next timeout (no RNR
//! timer, no RNR retry count), end-to-end credits (ACKs carry "no
//! credits"), the verbs objects (protection domains, memory regions and
//! completion queues as separate objects, the RESET→INIT→RTR→RTS state
//! machine), the retransmission timer itself (the caller calls `timeout`),
//! and running over a frame device.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use crate::headers::{Aeth, Bth, ImmDt, NakCode, Reth, Syndrome, CREDITS_INVALID, QPN_MASK};
use crate::opcode::{Opcode, Operation, Position};
use crate::packet::{build, frame_len, parse, Endpoints, ParseError, TransportHeaders};
use crate::psn::Psn;

/// The most packets a requester keeps unacknowledged (well inside the
/// 2^23 PSN window).
pub const MAX_OUTSTANDING: usize = 4096;

/// A queue pair's fixed attributes (what `ibv_modify_qp` sets on the way
/// to RTS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpConfig {
    /// This queue pair's number (24 bits).
    pub qpn: u32,
    /// The remote queue pair's number.
    pub dest_qpn: u32,
    /// The partition key both ends use.
    pub pkey: u16,
    /// Path MTU in bytes: 256, 512, 1024, 2048 or 4096.
    pub pmtu: usize,
    /// The first PSN this queue pair sends.
    pub send_psn: Psn,
    /// The first PSN this queue pair expects.
    pub recv_psn: Psn,
    /// Timeouts without progress before the queue pair gives up.
    pub retry_limit: u32,
    /// Addresses of this end (source) and the remote end (destination).
    pub endpoints: Endpoints,
}

/// A memory region remote peers may write with RDMA WRITE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// The virtual address of the first byte, as the remote peer names it.
    pub va: u64,
    /// The remote key.
    pub rkey: u32,
    /// Whether remote peers may write it.
    pub remote_write: bool,
    /// The region's bytes.
    pub data: Vec<u8>,
}

/// A send work request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// SEND, optionally with immediate data.
    Send {
        /// The message.
        data: Vec<u8>,
        /// Immediate data.
        imm: Option<[u8; 4]>,
    },
    /// RDMA WRITE, optionally with immediate data.
    Write {
        /// The bytes to write.
        data: Vec<u8>,
        /// The remote address.
        va: u64,
        /// The remote key.
        rkey: u32,
        /// Immediate data (consumes a receive at the remote end).
        imm: Option<[u8; 4]>,
    },
}

/// How a work request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// It completed.
    Success,
    /// The remote end answered with this NAK.
    RemoteNak(NakCode),
    /// No progress after the retry limit.
    RetryExceeded,
    /// A received message was longer than the posted receive buffer.
    LocalLength,
    /// The queue pair entered the error state before it completed.
    Flushed,
}

/// What completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompletionKind {
    /// A SEND this end posted.
    Send,
    /// An RDMA WRITE this end posted.
    Write,
    /// A receive: a SEND arrived (`data`), or an RDMA WRITE with immediate
    /// (`data` empty, `len` the bytes written).
    Recv {
        /// The received message (SEND).
        data: Vec<u8>,
        /// Bytes received.
        len: usize,
        /// Immediate data.
        imm: Option<[u8; 4]>,
    },
}

/// A completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The work request's id.
    pub wr_id: u64,
    /// How it ended.
    pub status: Status,
    /// What it was.
    pub kind: CompletionKind,
}

/// Why a queue pair's configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The path MTU is not 256, 512, 1024, 2048 or 4096.
    BadPmtu(usize),
    /// A queue pair number does not fit in 24 bits.
    QpnTooLarge,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::BadPmtu(m) => {
                write!(f, "path MTU {m} is not one of 256, 512, 1024, 2048 or 4096")
            }
            ConfigError::QpnTooLarge => write!(f, "queue pair numbers have 24 bits"),
        }
    }
}

/// Why a work request could not be posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostError {
    /// The queue pair is in the error state.
    QpError,
    /// Too many packets unacknowledged; poll completions first.
    Full,
    /// The message is larger than a message may be (2^31 bytes).
    TooLong,
}

/// Counters of what the queue pair dropped or answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames that failed to parse.
    pub malformed: u64,
    /// Packets for another QP or with another P_Key.
    pub misaddressed: u64,
    /// Duplicate requests (not executed again).
    pub duplicates: u64,
    /// Requests ahead of the expected PSN (dropped).
    pub out_of_sequence: u64,
    /// ACKs that acknowledged nothing new or PSNs never sent.
    pub stale_acks: u64,
    /// ACKs sent.
    pub acks_sent: u64,
    /// NAKs sent.
    pub naks_sent: u64,
    /// Packets sent again.
    pub retransmitted: u64,
    /// The last parse error seen.
    pub last_parse_error: Option<ParseError>,
}

struct Outstanding {
    psn: Psn,
    frame: Vec<u8>,
    /// Set on the last packet of a work request.
    completes: Option<(u64, CompletionKind)>,
}

/// The responder's message in progress.
enum InProgress {
    None,
    Send {
        wr_id: u64,
        buf: Vec<u8>,
        cap: usize,
    },
    Write {
        region: usize,
        offset: usize,
        remaining: usize,
    },
}

/// One reliable-connected queue pair (requester and responder sides).
pub struct QueuePair {
    cfg: QpConfig,
    error: bool,
    // Requester.
    next_psn: Psn,
    outstanding: VecDeque<Outstanding>,
    retries: u32,
    // Responder.
    expected_psn: Psn,
    msn: u32,
    nak_sent: bool,
    ack_pending: Option<Psn>,
    nak_pending: Option<(Psn, Syndrome)>,
    in_progress: InProgress,
    recv_queue: VecDeque<(u64, usize)>,
    regions: Vec<MemoryRegion>,
    // Output.
    tx: VecDeque<Vec<u8>>,
    completions: VecDeque<Completion>,
    stats: Stats,
}

impl QueuePair {
    /// A queue pair ready to send and receive (the RTS state).
    pub fn new(cfg: QpConfig) -> Result<QueuePair, ConfigError> {
        if !matches!(cfg.pmtu, 256 | 512 | 1024 | 2048 | 4096) {
            return Err(ConfigError::BadPmtu(cfg.pmtu));
        }
        if cfg.qpn > QPN_MASK || cfg.dest_qpn > QPN_MASK {
            return Err(ConfigError::QpnTooLarge);
        }
        Ok(QueuePair {
            error: false,
            next_psn: cfg.send_psn,
            outstanding: VecDeque::new(),
            retries: 0,
            expected_psn: cfg.recv_psn,
            msn: 0,
            nak_sent: false,
            ack_pending: None,
            nak_pending: None,
            in_progress: InProgress::None,
            recv_queue: VecDeque::new(),
            regions: Vec::new(),
            tx: VecDeque::new(),
            completions: VecDeque::new(),
            stats: Stats::default(),
            cfg,
        })
    }

    /// Whether the queue pair is in the error state.
    pub fn is_error(&self) -> bool {
        self.error
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Registers a memory region remote peers may write; returns its index.
    pub fn register(&mut self, region: MemoryRegion) -> usize {
        self.regions.push(region);
        self.regions.len() - 1
    }

    /// A registered region.
    pub fn region(&self, index: usize) -> Option<&MemoryRegion> {
        self.regions.get(index)
    }

    /// Posts a receive buffer of `len` bytes.
    pub fn post_recv(&mut self, wr_id: u64, len: usize) {
        self.recv_queue.push_back((wr_id, len));
    }

    /// The next completion.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// Posts a SEND or RDMA WRITE: segments it into packets and queues them.
    pub fn post_send(&mut self, wr_id: u64, op: SendOp) -> Result<(), PostError> {
        if self.error {
            return Err(PostError::QpError);
        }
        let (data, kind) = match &op {
            SendOp::Send { data, .. } => (data, CompletionKind::Send),
            SendOp::Write { data, .. } => (data, CompletionKind::Write),
        };
        if data.len() > (1usize << 31) {
            return Err(PostError::TooLong);
        }
        let pmtu = self.cfg.pmtu;
        let packets = data.len().div_ceil(pmtu).max(1);
        if self.outstanding.len() + packets > MAX_OUTSTANDING {
            return Err(PostError::Full);
        }
        for i in 0..packets {
            let start = i * pmtu;
            let chunk = &data[start..(start + pmtu).min(data.len())];
            let position = match (i == 0, i + 1 == packets) {
                (true, true) => Position::Only,
                (true, false) => Position::First,
                (false, false) => Position::Middle,
                (false, true) => Position::Last,
            };
            let psn = self.next_psn;
            self.next_psn = psn.next();
            let mut h = TransportHeaders::new(self.bth(Opcode::SendOnly, psn));
            h.bth.ack_req = position.ends_message();
            match &op {
                SendOp::Send { imm, .. } => {
                    h.bth.opcode = match (position, imm) {
                        (Position::First, _) => Opcode::SendFirst,
                        (Position::Middle, _) => Opcode::SendMiddle,
                        (Position::Last, None) => Opcode::SendLast,
                        (Position::Last, Some(_)) => Opcode::SendLastWithImmediate,
                        (Position::Only, None) => Opcode::SendOnly,
                        (Position::Only, Some(_)) => Opcode::SendOnlyWithImmediate,
                    };
                    if position.ends_message() {
                        h.imm = imm.map(ImmDt);
                    }
                }
                SendOp::Write { va, rkey, imm, .. } => {
                    h.bth.opcode = match (position, imm) {
                        (Position::First, _) => Opcode::RdmaWriteFirst,
                        (Position::Middle, _) => Opcode::RdmaWriteMiddle,
                        (Position::Last, None) => Opcode::RdmaWriteLast,
                        (Position::Last, Some(_)) => Opcode::RdmaWriteLastWithImmediate,
                        (Position::Only, None) => Opcode::RdmaWriteOnly,
                        (Position::Only, Some(_)) => Opcode::RdmaWriteOnlyWithImmediate,
                    };
                    if position.starts_message() {
                        // data.len() <= 2^31 was checked above.
                        h.reth = Some(Reth {
                            va: *va,
                            rkey: *rkey,
                            dma_len: data.len() as u32,
                        });
                    }
                    if position.ends_message() {
                        h.imm = imm.map(ImmDt);
                    }
                }
            }
            let frame = self.frame(&h, chunk);
            self.tx.push_back(frame.clone());
            let completes = position.ends_message().then(|| (wr_id, kind.clone()));
            self.outstanding.push_back(Outstanding {
                psn,
                frame,
                completes,
            });
        }
        Ok(())
    }

    /// The next frame to send: a pending NAK or (coalesced) ACK first, then
    /// requests and retransmissions in order.
    pub fn transmit(&mut self) -> Option<Vec<u8>> {
        if let Some((psn, syndrome)) = self.nak_pending.take() {
            self.ack_pending = None;
            self.stats.naks_sent += 1;
            return Some(self.ack_frame(psn, syndrome));
        }
        if let Some(psn) = self.ack_pending.take() {
            self.stats.acks_sent += 1;
            return Some(self.ack_frame(
                psn,
                Syndrome::Ack {
                    credits: CREDITS_INVALID,
                },
            ));
        }
        self.tx.pop_front()
    }

    /// The retransmission timer fired: resend every unacknowledged packet,
    /// or give up after the retry limit.
    pub fn timeout(&mut self) {
        if self.error || self.outstanding.is_empty() {
            return;
        }
        self.retries += 1;
        if self.retries > self.cfg.retry_limit {
            log::warn!(
                "QP {:#x}: no acknowledgement after {} retries; entering the error state",
                self.cfg.qpn,
                self.cfg.retry_limit
            );
            self.fail(Status::RetryExceeded);
            return;
        }
        self.resend_all();
    }

    /// Handles a received frame (the caller's private copy). Malformed or
    /// misaddressed frames are dropped and counted.
    pub fn receive(&mut self, frame: &[u8]) {
        if self.error {
            return;
        }
        let p = match parse(frame) {
            Ok(p) => p,
            Err(e) => {
                log::debug!("QP {:#x}: dropping a malformed frame: {e}", self.cfg.qpn);
                self.stats.malformed += 1;
                self.stats.last_parse_error = Some(e);
                return;
            }
        };
        let bth = p.headers.bth;
        if bth.dest_qp != self.cfg.qpn || bth.pkey != self.cfg.pkey {
            self.stats.misaddressed += 1;
            return;
        }
        if bth.opcode.layout().is_request() {
            self.respond(&p.headers, p.payload);
        } else {
            self.on_response(&p.headers);
        }
    }

    fn bth(&self, opcode: Opcode, psn: Psn) -> Bth {
        Bth {
            opcode,
            solicited: false,
            mig_req: false,
            pad: 0,
            pkey: self.cfg.pkey,
            fecn: false,
            becn: false,
            dest_qp: self.cfg.dest_qpn & QPN_MASK,
            ack_req: false,
            psn,
        }
    }

    fn frame(&self, h: &TransportHeaders, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; frame_len(h.bth.opcode, payload.len()).unwrap_or(0)];
        match build(&self.cfg.endpoints, h, payload, &mut out) {
            Ok(n) => out.truncate(n),
            // The headers are this module's own and the payload at most a
            // path MTU: building cannot fail.
            Err(e) => {
                log::error!("QP {:#x}: cannot build a frame: {e}", self.cfg.qpn);
                out.clear();
            }
        }
        out
    }

    fn ack_frame(&self, psn: Psn, syndrome: Syndrome) -> Vec<u8> {
        let mut h = TransportHeaders::new(self.bth(Opcode::Acknowledge, psn));
        h.aeth = Some(Aeth {
            syndrome,
            msn: self.msn & 0x00ff_ffff,
        });
        self.frame(&h, &[])
    }

    fn resend_all(&mut self) {
        self.stats.retransmitted += self.outstanding.len() as u64;
        // Resent packets replace anything still queued from before.
        self.tx.clear();
        for o in &self.outstanding {
            self.tx.push_back(o.frame.clone());
        }
    }

    fn fail(&mut self, status: Status) {
        self.error = true;
        self.tx.clear();
        let mut first = true;
        for o in self.outstanding.drain(..) {
            if let Some((wr_id, kind)) = o.completes {
                let status = if first { status } else { Status::Flushed };
                first = false;
                self.completions.push_back(Completion {
                    wr_id,
                    status,
                    kind,
                });
            }
        }
        for (wr_id, _) in self.recv_queue.drain(..) {
            self.completions.push_back(Completion {
                wr_id,
                status: Status::Flushed,
                kind: CompletionKind::Recv {
                    data: Vec::new(),
                    len: 0,
                    imm: None,
                },
            });
        }
    }

    /// Acknowledges every outstanding packet up to and including `psn`;
    /// returns whether anything was.
    fn ack_through(&mut self, psn: Psn) -> bool {
        let mut progressed = false;
        while let Some(o) = self.outstanding.front() {
            if o.psn.diff(psn) > 0 {
                break;
            }
            if let Some(o) = self.outstanding.pop_front() {
                if let Some((wr_id, kind)) = o.completes {
                    self.completions.push_back(Completion {
                        wr_id,
                        status: Status::Success,
                        kind,
                    });
                }
            }
            progressed = true;
        }
        if progressed {
            self.retries = 0;
        }
        progressed
    }

    fn on_response(&mut self, h: &TransportHeaders) {
        let (Some(aeth), Opcode::Acknowledge) = (h.aeth, h.bth.opcode) else {
            // READ responses and atomic ACKs answer requests never sent.
            self.stats.stale_acks += 1;
            return;
        };
        let psn = h.bth.psn;
        // An acknowledgement must name a PSN this end sent: from one before
        // the oldest outstanding packet up to the last one sent.
        let last_sent = self.next_psn.sub(1);
        let oldest = self.outstanding.front().map_or(self.next_psn, |o| o.psn);
        let in_range = psn.diff(oldest) >= -1 && psn.diff(last_sent) <= 0;
        if !in_range {
            self.stats.stale_acks += 1;
            return;
        }
        match aeth.syndrome {
            Syndrome::Ack { .. } => {
                if !self.ack_through(psn) {
                    self.stats.stale_acks += 1;
                }
            }
            Syndrome::Nak(NakCode::PsnSequenceError) => {
                self.ack_through(psn.sub(1));
                self.resend_all();
            }
            Syndrome::RnrNak { .. } => {
                // Resent at the next timeout.
                self.ack_through(psn.sub(1));
                self.tx.clear();
            }
            Syndrome::Nak(code) => {
                log::warn!(
                    "QP {:#x}: remote NAK {code:?}; entering the error state",
                    self.cfg.qpn
                );
                self.ack_through(psn.sub(1));
                self.fail(Status::RemoteNak(code));
            }
        }
    }

    fn nak(&mut self, psn: Psn, code: NakCode) {
        log::warn!(
            "QP {:#x}: answering PSN {psn} with NAK {code:?}",
            self.cfg.qpn
        );
        self.nak_pending = Some((psn, Syndrome::Nak(code)));
        if code != NakCode::PsnSequenceError {
            // Invalid requests and access errors end the connection.
            self.in_progress = InProgress::None;
            self.fail(Status::Flushed);
        }
    }

    /// Receiver not ready: one RNR NAK, and later packets are dropped
    /// silently (no sequence NAKs) until the requester resends this one.
    fn rnr_nak(&mut self, psn: Psn) {
        self.nak_pending = Some((psn, Syndrome::RnrNak { timer: 1 }));
        self.nak_sent = true;
    }

    fn respond(&mut self, h: &TransportHeaders, payload: &[u8]) {
        let bth = h.bth;
        let d = bth.psn.diff(self.expected_psn);
        if d < 0 {
            self.stats.duplicates += 1;
            self.ack_pending = Some(self.expected_psn.sub(1));
            return;
        }
        if d > 0 {
            self.stats.out_of_sequence += 1;
            if !self.nak_sent {
                self.nak_sent = true;
                self.nak_pending =
                    Some((self.expected_psn, Syndrome::Nak(NakCode::PsnSequenceError)));
            }
            return;
        }
        let layout = bth.opcode.layout();
        let pmtu = self.cfg.pmtu;
        let full = matches!(layout.position, Position::First | Position::Middle);
        if (full && payload.len() != pmtu) || payload.len() > pmtu {
            return self.nak(bth.psn, NakCode::InvalidRequest);
        }
        // The opcode must continue the message in progress, or start one.
        let continues = matches!(layout.position, Position::Middle | Position::Last);
        let ok = match (&self.in_progress, layout.operation) {
            (InProgress::None, Operation::Send | Operation::RdmaWrite) => !continues,
            (InProgress::Send { .. }, Operation::Send) => continues,
            (InProgress::Write { .. }, Operation::RdmaWrite) => continues,
            _ => false,
        };
        if !ok {
            return self.nak(bth.psn, NakCode::InvalidRequest);
        }
        if layout.imm && layout.operation == Operation::RdmaWrite && self.recv_queue.is_empty() {
            // RDMA WRITE with immediate consumes a receive: not ready.
            self.rnr_nak(bth.psn);
            return;
        }
        match layout.operation {
            Operation::Send => {
                if let InProgress::None = self.in_progress {
                    let Some((wr_id, cap)) = self.recv_queue.pop_front() else {
                        // No receive posted: receiver not ready.
                        self.rnr_nak(bth.psn);
                        return;
                    };
                    self.in_progress = InProgress::Send {
                        wr_id,
                        buf: Vec::new(),
                        cap,
                    };
                }
                let InProgress::Send { wr_id, buf, cap } = &mut self.in_progress else {
                    return;
                };
                if buf.len() + payload.len() > *cap {
                    let wr_id = *wr_id;
                    self.completions.push_back(Completion {
                        wr_id,
                        status: Status::LocalLength,
                        kind: CompletionKind::Recv {
                            data: Vec::new(),
                            len: 0,
                            imm: None,
                        },
                    });
                    return self.nak(bth.psn, NakCode::InvalidRequest);
                }
                buf.extend_from_slice(payload);
            }
            Operation::RdmaWrite => {
                if let Some(reth) = h.reth {
                    match self.check_write(&reth) {
                        Some((region, offset)) => {
                            self.in_progress = InProgress::Write {
                                region,
                                offset,
                                remaining: reth.dma_len as usize,
                            };
                        }
                        None => return self.nak(bth.psn, NakCode::RemoteAccessError),
                    }
                }
                let InProgress::Write {
                    region,
                    offset,
                    remaining,
                } = &mut self.in_progress
                else {
                    return;
                };
                let last = layout.position.ends_message();
                if payload.len() > *remaining || (last && payload.len() != *remaining) {
                    return self.nak(bth.psn, NakCode::InvalidRequest);
                }
                let (region, at) = (*region, *offset);
                *offset += payload.len();
                *remaining -= payload.len();
                // check_write bounded [offset, offset + dma_len) inside the
                // region, and the payloads sum to at most dma_len.
                let end = at.saturating_add(payload.len());
                if let Some(dst) = self
                    .regions
                    .get_mut(region)
                    .and_then(|r| r.data.get_mut(at..end))
                {
                    dst.copy_from_slice(payload);
                }
            }
            _ => return self.nak(bth.psn, NakCode::InvalidRequest),
        }
        // Accepted.
        self.expected_psn = bth.psn.next();
        self.nak_sent = false;
        if layout.position.ends_message() {
            self.msn = (self.msn + 1) & 0x00ff_ffff;
            let done = core::mem::replace(&mut self.in_progress, InProgress::None);
            match done {
                InProgress::Send { wr_id, buf, .. } => {
                    let len = buf.len();
                    self.completions.push_back(Completion {
                        wr_id,
                        status: Status::Success,
                        kind: CompletionKind::Recv {
                            data: buf,
                            len,
                            imm: h.imm.map(|i| i.0),
                        },
                    });
                }
                InProgress::Write { .. } => {
                    if let Some(imm) = h.imm {
                        // RDMA WRITE with immediate consumes a receive.
                        if let Some((wr_id, _)) = self.recv_queue.pop_front() {
                            let len = 0;
                            self.completions.push_back(Completion {
                                wr_id,
                                status: Status::Success,
                                kind: CompletionKind::Recv {
                                    data: Vec::new(),
                                    len,
                                    imm: Some(imm.0),
                                },
                            });
                        }
                    }
                }
                InProgress::None => {}
            }
        }
        if bth.ack_req {
            self.ack_pending = Some(bth.psn);
        }
    }

    /// The region and offset an RDMA WRITE may use, or `None` for a remote
    /// access error (unknown key, no permission, out of bounds).
    fn check_write(&self, reth: &Reth) -> Option<(usize, usize)> {
        let (index, r) = self
            .regions
            .iter()
            .enumerate()
            .find(|(_, r)| r.rkey == reth.rkey)?;
        if !r.remote_write {
            return None;
        }
        let offset = reth.va.checked_sub(r.va)?;
        let end = offset.checked_add(u64::from(reth.dma_len))?;
        if end > r.data.len() as u64 {
            return None;
        }
        Some((index, usize::try_from(offset).ok()?))
    }
}
