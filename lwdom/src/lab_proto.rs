//! What the lab's guest programs and dom0 programs agree on: the xenstore
//! keys they exchange refs and ports through, the page pattern of the
//! `grant` scenario, and the request and response of the `ring` scenario.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `grant`: the two grant refs, "A B" (relative to the guest's home).
pub const GRANT_REFS_KEY: &str = "data/grant-refs";
/// `grant`: the unbound port dom0 binds to.
pub const GRANT_PORT_KEY: &str = "data/grant-port";
/// `grant`: the guest tried ending access while dom0 maps: dom0 may unmap.
pub const GRANT_STEP_KEY: &str = "data/grant-step";
/// `grant`: the guest's verdict.
pub const GRANT_RESULT_KEY: &str = "data/grant-result";
/// `ring`: the ring's grant ref.
pub const RING_REF_KEY: &str = "data/ring-ref";
/// `ring`: the unbound port dom0 binds to.
pub const RING_PORT_KEY: &str = "data/ring-port";
/// `ring`: the guest's verdict.
pub const RING_RESULT_KEY: &str = "data/ring-result";
/// `ring`: round trips the guest makes.
pub const RING_ROUND_TRIPS: u64 = 100_000;

/// Bytes of the pattern the guest writes at the start of each granted
/// page in `grant`.
pub const PATTERN_LEN: usize = 2048;
/// Where in page A dom0 writes its reply.
pub const REPLY_OFFSET: usize = 2048;
/// dom0's reply.
pub const REPLY: &[u8] = b"dom0 mapped this page and checked the pattern";

/// The pattern byte at `offset` of page `page` (0 for A, 1 for B).
pub fn pattern(page: u8, offset: usize) -> u8 {
    (offset as u8).wrapping_mul(7).wrapping_add(3).wrapping_add(page.wrapping_mul(101))
}

/// A `ring` request: dom0 answers `value` with [`answer`]`(value)`.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoReq {
    /// Sequence number.
    pub id: u64,
    /// Payload.
    pub value: u64,
}

/// A `ring` response.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoRsp {
    /// The request's sequence number.
    pub id: u64,
    /// [`answer`] of the request's value.
    pub value: u64,
}

/// What dom0 answers to a request's value.
pub fn answer(value: u64) -> u64 {
    value.rotate_left(13) ^ 0x5a5a_5a5a_5a5a_5a5a
}

/// The value of request `id`.
pub fn request_value(id: u64) -> u64 {
    id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_have_the_c_layout() {
        assert_eq!(core::mem::size_of::<EchoReq>(), 16);
        assert_eq!(core::mem::size_of::<EchoRsp>(), 16);
        assert_ne!(pattern(0, 5), pattern(1, 5));
        assert_ne!(answer(request_value(1)), request_value(1));
    }
}
