//! RDMA for lightweight domains: the RoCE v2 transport and the verbs API.
//!
//! This crate holds the RDMA layer that lets a domain talk RDMA (reliable
//! connected queue pairs over RoCE v2) to ordinary Linux nodes, driving the
//! NIC itself through the frame-device interface (netfront's `frame`
//! module). The PCI passthrough layer it builds on lives in the
//! `passthrough` crate.
//!
//! # What is here
//! - [`psn`]: 24-bit packet sequence numbers, their arithmetic and windows
//!   across the wrap.
//! - [`opcode`]: the reliable-connected opcodes (IBA vol. 1, 9.2) and, for
//!   each, the extended headers it carries, whether it carries a payload
//!   and its position in a message.
//! - [`headers`]: the BTH, RETH, AETH (ACK, RNR NAK and NAK syndromes),
//!   AtomicETH, AtomicAckETH, ImmDt and IETH, each encoded and decoded.
//! - [`icrc`]: the invariant CRC over the masked IPv4, UDP and BTH fields,
//!   checked against a RoCE v2 packet captured from a ConnectX-4 Lx NIC.
//! - [`packet`]: whole frames (Ethernet, IPv4, UDP port 4791, transport
//!   headers, payload, pad, ICRC): a builder writing into a caller's buffer
//!   and a parser that validates every header of a received copy and
//!   returns a typed error for anything malformed, never panicking.
//! - [`exchange`]: the TCP connection exchanges of rdma-core's
//!   `ibv_rc_pingpong` and perftest's latency tests (their messages parsed
//!   and formatted, and each conversation as a socket-less state machine;
//!   over smoltcp with the `smoltcp` feature), so the unmodified tools can
//!   be the peer.
//! - [`rc`]: the reliable-connected transport of one queue pair, as a
//!   state machine fed frames and time and emitting frames and
//!   completions: SEND and RDMA WRITE (with immediate), RDMA READ
//!   (segmented responses, reassembly, re-issue of lost responses,
//!   duplicate READs executed again), compare-and-swap and fetch-and-add
//!   (with a replay cache for duplicates), coalesced ACKs, go-back-N on
//!   sequence NAKs, the local ACK timer with its retry count, RNR NAKs with
//!   the RNR timer of IBA table 45 and the RNR retry count, and limits on
//!   outstanding READ and atomic requests on both sides (its docs say
//!   exactly what it covers).
//! - [`nic`]: the transport over a frame device (netfront's
//!   [`netfront::frame::FrameDevice`]): [`nic::RoceNic`] moves received
//!   RoCE v2 frames (a private copy of each) into a [`nic::Transport`] (a
//!   [`verbs::Context`], or one queue pair as [`nic::QpTransport`] with
//!   the retransmission timer kept for it), writes the transport's frames
//!   into the device's lent transmit buffers and runs its timers. The
//!   hosted crate's `framelink` is a frame device between two processes
//!   (or threads) for tests and benches.
//! - [`verbs`]: the verbs API in libibverbs' shape over [`rc`]: a
//!   [`verbs::Context`] per device (MAC, IPv4 address, IPv4-mapped GID)
//!   owning protection domains, memory regions with keys and access flags,
//!   completion queues with notification, RC queue pairs with the
//!   RESET→INIT→RTR→RTS state machine and `ibv_modify_qp`'s attributes,
//!   send and receive work requests with scatter-gather lists, and the
//!   transport pump a driver runs over a frame device
//!   ([`verbs::Context::handle_frame`], [`verbs::Context::next_frame`],
//!   [`verbs::Context::on_time`], [`verbs::Context::next_deadline`],
//!   [`verbs::Context::take_cq_events`]).
//!
//! # What is not here yet
//! End-to-end credits, SEND with invalidate, memory windows, shared
//! receive queues, the SQD state, solicited-only events, fences, other
//! transport services (UD, UC), IPv6 and VLAN-tagged frames, and
//! perftest's bandwidth tests and rdma_cm exchange. Interoperability with
//! Linux's `rdma_rxe` is checked by the lab scenario `rdma` (SEND and RDMA
//! WRITE with rdma-core's `ibv_rc_pingpong` and perftest's
//! `ib_send_lat`/`ib_write_lat`, the lightweight domain driving its
//! passed-through e1000e).
#![no_std]

extern crate alloc;

pub mod exchange;
pub mod headers;
pub mod icrc;
pub mod nic;
pub mod opcode;
pub mod packet;
pub mod psn;
pub mod rc;
pub mod verbs;
