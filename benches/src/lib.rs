//! Benchmarks of the suite.
//!
//! The ping-pong latency bench (`cargo xtask pingpong`) measures one
//! request/response round trip between two domains over a granted shared
//! ring and an event channel, in three modes (polling, event-driven,
//! adaptive), against peers measured in the same run: one cache line
//! bounced between two cores (the physical limit), a ring built in C from
//! Xen's own `io/ring.h`, and the kernel paths a user would otherwise use
//! (UDP loopback blocking and spinning, a Unix socket, a pipe, eventfd).
//! Its network entries ([`net`]) send Ethernet frames through the hosted
//! netback to an echo on the backend's side, and stream frames one way,
//! beside one core's memcpy and a UDP loopback stream. Its RDMA entries
//! ([`rdma`]) make RoCE v2 round trips (SEND, RDMA WRITE) between two
//! reliable-connected queue pairs in two processes over the hosted frame
//! link.
//!
//! The APEX scheduler bench (`cargo xtask apexbench`, [`apex`]) sets our
//! I/O scheduler against the alternatives on a simulated device and
//! Linux's own schedulers on a loop device.
//!
//! Every bench runs on [`harness`]: arguments, interleaved rounds, HDR
//! histograms, the table with ratios and targets, JSON and an SVG plot.

pub mod apex;
pub mod harness;
pub mod net;
pub mod netfloor;
pub mod peers;
pub mod pin;
pub mod rdma;
pub mod ring;
pub mod scratch;
