//! Xen's own C definitions, compiled as reference peers and layout tables
//! for interop tests and benchmarks (host-only, Linux).
//!
//! `build.rs` compiles `c/*.c` against Xen's public headers
//! (`<xen/grant_table.h>`, `<xen/io/ring.h>` from Debian's `libxen-dev`).
//! This crate exposes:
//! - [`layout`]: sizes, alignments, field offsets and constants of the grant
//!   table and ring ABI as the C compiler lays them out from Xen's headers;
//! - [`echo`]: a test protocol defined with `DEFINE_RING_TYPES`, its Rust
//!   mirror types, and C front and back ends built from the `io/ring.h`
//!   macros, plus a C ping-pong pair for latency benchmarks;
//! - ring sizes computed by `__CONST_RING_SIZE` and `RING_SIZE` for several
//!   ring types ([`const_ring_size`], [`attached_ring_size`]);
//! - [`SharedPages`]: page-aligned memory for a ring shared by two threads.
#![cfg(target_os = "linux")]

mod ffi;

pub mod echo;
pub mod layout;
mod pages;

pub use echo::{
    echo_back, echo_front, echo_payload_byte, echo_payload_ok, echo_reply_value, echo_request,
    echo_request_value, echo_response, echo_response_ok, echo_sring_init, pingpong_back,
    pingpong_front, EchoError, EchoEvents, EchoFailure, EchoParams, EchoRequest, EchoResponse,
    EchoStats, ECHO_PAYLOAD_LEN, ECHO_STATUS_BAD_PAYLOAD, ECHO_STATUS_OK, ECHO_USE_EVENTS,
};
pub use pages::{SharedPages, PAGE_SIZE};

/// Ring types the C side defines with `DEFINE_RING_TYPES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RingTag {
    /// `echo`: [`EchoRequest`] / [`EchoResponse`].
    Echo = 0,
    /// `odd`: [`OddRequest`] / [`OddResponse`]; the union is padded.
    Odd = 1,
    /// `wide`: [`WideRequest`] / [`WideResponse`]; the response is larger.
    Wide = 2,
    /// Xen's `blkif` ring (`io/blkif.h`).
    Blkif = 3,
    /// Xen's `netif_tx` ring (`io/netif.h`).
    NetifTx = 4,
    /// Xen's `netif_rx` ring (`io/netif.h`).
    NetifRx = 5,
}

impl RingTag {
    /// Every tag.
    pub const ALL: [RingTag; 6] = [
        RingTag::Echo,
        RingTag::Odd,
        RingTag::Wide,
        RingTag::Blkif,
        RingTag::NetifTx,
        RingTag::NetifRx,
    ];

    /// The C name of the ring's entry union in the [`layout`] table
    /// (`"echo_sring_entry"`, ...).
    pub fn entry_type_name(self) -> &'static str {
        match self {
            RingTag::Echo => "echo_sring_entry",
            RingTag::Odd => "odd_sring_entry",
            RingTag::Wide => "wide_sring_entry",
            RingTag::Blkif => "blkif_sring_entry",
            RingTag::NetifTx => "netif_tx_sring_entry",
            RingTag::NetifRx => "netif_rx_sring_entry",
        }
    }
}

/// `struct odd_request { uint8_t bytes[13]; }`.
pub type OddRequest = [u8; 13];
/// `struct odd_response { uint64_t word; }`.
pub type OddResponse = u64;
/// `struct wide_request { uint32_t word; }`.
pub type WideRequest = u32;
/// `struct wide_response { uint8_t bytes[100]; }`.
pub type WideResponse = [u8; 100];

/// `__CONST_RING_SIZE(tag, bytes)`: entries of a ring of `bytes` bytes.
/// 0 if `bytes` does not exceed the 64-byte header or is above 2^30.
pub fn const_ring_size(tag: RingTag, bytes: usize) -> u32 {
    // SAFETY: pure arithmetic on its arguments.
    unsafe { ffi::c_const_ring_size(tag as u32, bytes as u64) }
}

/// `RING_SIZE` of a front (and back) ring attached over `bytes` bytes with
/// `FRONT_RING_ATTACH`/`BACK_RING_ATTACH` (`__RING_SIZE`). 0 as for
/// [`const_ring_size`].
pub fn attached_ring_size(tag: RingTag, bytes: usize) -> u32 {
    // SAFETY: the C side attaches to a static dummy ring and only does
    // address arithmetic on it.
    unsafe { ffi::c_attached_ring_size(tag as u32, bytes as u64) }
}

/// `RING_SIZE` of an echo ring of `pages` pages.
pub fn echo_ring_size(pages: usize) -> u32 {
    attached_ring_size(RingTag::Echo, pages * PAGE_SIZE)
}

#[cfg(test)]
mod tests;
