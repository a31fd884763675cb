//! RDMA for lightweight domains: the RoCE v2 transport.
//!
//! This crate will hold an RDMA layer that lets a domain talk RDMA (reliable
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
//! - [`rc`]: the reliable-connected transport of one queue pair for SEND
//!   and RDMA WRITE, as a state machine fed frames and timer expiries and
//!   emitting frames and completions (its docs say exactly what it covers).
//! - [`nic`]: the transport over a frame device (netfront's
//!   [`netfront::frame::FrameDevice`]): [`nic::RoceNic`] moves received
//!   RoCE v2 frames (a private copy of each) into a [`nic::Transport`],
//!   writes the transport's frames into the device's lent transmit buffers
//!   and runs its timers; [`nic::QpTransport`] is one queue pair's
//!   transport, with the retransmission timer the queue pair leaves to its
//!   owner. The hosted crate's `framelink` is a frame device between two
//!   processes (or threads) for tests and benches.
//!
//! # What is not here yet
//! The verbs API (protection domains, memory regions and completion queues
//! as verbs objects, completion events, the RESET→INIT→RTR→RTS state
//! machine, scatter-gather work requests), RDMA READ and atomics in the
//! queue pair (their headers are parsed and built, but the queue pair does
//! not serve or issue them), a retransmission timer inside the queue pair
//! (it counts retries when told a timeout passed; [`nic::QpTransport`]
//! keeps the timer for it), RNR timers and RNR
//! retry counts, end-to-end credits, IPv6 and VLAN-tagged frames, the
//! connection exchange of `ibv_rc_pingpong` and perftest, the lab scenario
//! against Linux's `rdma_rxe`. Interoperability with
//! `rdma_rxe` is checked only through the ICRC of captured and published
//! packets, not yet against a running peer.
#![no_std]

extern crate alloc;

pub mod headers;
pub mod icrc;
pub mod nic;
pub mod opcode;
pub mod packet;
pub mod psn;
pub mod rc;
