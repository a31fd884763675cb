//! Declarations of the C functions in `c/` (see `c/xen_c_reference.h`).

use core::ffi::{c_char, c_int, c_void};

use crate::echo::{EchoEvents, EchoParams, EchoRequest, EchoResponse, EchoStats};

/// One row of the C layout table (`struct c_layout_entry`).
#[repr(C)]
pub(crate) struct RawLayoutEntry {
    pub name: *const c_char,
    pub kind: u32,
    pub _pad: u32,
    pub size: u64,
    pub align: u64,
    pub offset: u64,
    pub value: i64,
}

extern "C" {
    pub(crate) fn c_abi_layout(count: *mut usize) -> *const RawLayoutEntry;
    pub(crate) fn c_const_ring_size(tag: u32, bytes: u64) -> u32;
    pub(crate) fn c_attached_ring_size(tag: u32, bytes: u64) -> u32;

    pub(crate) fn c_echo_request_value(id: u64) -> u64;
    pub(crate) fn c_echo_reply_value(value: u64) -> u64;
    pub(crate) fn c_echo_payload_byte(id: u64, i: u32) -> u8;
    pub(crate) fn c_echo_make_request(id: u64, out: *mut EchoRequest);
    pub(crate) fn c_echo_make_response(req: *const EchoRequest, out: *mut EchoResponse);
    pub(crate) fn c_echo_response_ok(id: u64, rsp: *const EchoResponse) -> c_int;

    pub(crate) fn c_echo_sring_init(sring: *mut c_void, start: u32);
    pub(crate) fn c_echo_back(
        sring: *mut c_void,
        params: *const EchoParams,
        events: *mut EchoEvents,
        stop: *const c_int,
        stats: *mut EchoStats,
    ) -> i64;
    pub(crate) fn c_echo_front(
        sring: *mut c_void,
        params: *const EchoParams,
        events: *mut EchoEvents,
        stop: *const c_int,
        stats: *mut EchoStats,
    ) -> i64;
    pub(crate) fn c_ring_pingpong_front(
        sring: *mut c_void,
        pages: u32,
        iters: u64,
        latencies_ns_out: *mut u64,
    ) -> i64;
    pub(crate) fn c_ring_pingpong_back(sring: *mut c_void, pages: u32, iters: u64) -> i64;
}
