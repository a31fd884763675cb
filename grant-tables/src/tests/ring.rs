//! Ring unit tests: byte-level fixtures, hostile indices, notification
//! suppression, and property tests of index arithmetic across 2^32.

use alloc::vec::Vec;
use core::ptr::NonNull;

use proptest::prelude::*;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::abi::{RingIdx, PAGE_SIZE};
use crate::fake::FakePages;
use crate::ring::{
    cache_demote_supported, entry_size, reinterpret, ring_entries, round_down_pow2, BackRing,
    FrontRing, RawRingMemory, RingError, RingMemory,
};

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct Req {
    id: u64,
    value: u64,
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct Rsp {
    id: u64,
    status: i32,
    _pad: u32,
}

/// A 112-byte request like blkif's, to check ring geometry.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
struct Big {
    b: [u64; 14],
}

/// A 12-byte request like netif's tx request.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
struct Small12 {
    a: u32,
    b: u32,
    c: u32,
}

type Front = FrontRing<Req, Rsp, FakePages>;
type Back = BackRing<Req, Rsp, RawRingMemory>;

/// A front ring on fresh pages and a back ring on the same memory.
fn pair(pages: usize, start: RingIdx) -> (Front, Back) {
    let mem = FakePages::new(pages).unwrap();
    let ptr = mem.ring_ptr();
    let len = mem.ring_len();
    let front = Front::init_at(mem, start).unwrap();
    // SAFETY: the memory is owned by `front`, which the test keeps alive for
    // as long as `back`; both access it only through ring accessors.
    let raw = unsafe { RawRingMemory::new(ptr, len) };
    let back = Back::attach(raw, start).unwrap();
    (front, back)
}

fn header(front: &Front) -> [u32; 4] {
    let p = front.memory().ring_ptr().as_ptr().cast::<u32>();
    // SAFETY: the header's four u32 are inside the live ring page.
    core::array::from_fn(|i| unsafe { p.add(i).read_volatile() })
}

fn poke(front: &Front, word: usize, value: u32) {
    let p = front.memory().ring_ptr().as_ptr().cast::<u32>();
    // SAFETY: `word < 4`: a header index inside the live ring page.
    unsafe { p.add(word).write_volatile(value) }
}

fn bytes(front: &Front, off: usize, len: usize) -> Vec<u8> {
    let p = front.memory().ring_ptr().as_ptr();
    // SAFETY: callers stay inside the first page of the ring.
    (0..len)
        .map(|i| unsafe { p.add(off + i).read_volatile() })
        .collect()
}

#[test]
fn geometry_matches_io_ring_h() {
    assert_eq!(round_down_pow2(0), 0);
    assert_eq!(round_down_pow2(1), 1);
    assert_eq!(round_down_pow2(252), 128);
    assert_eq!(round_down_pow2(u32::MAX), 1 << 31);
    // blkif: 112-byte requests, 32 slots in one page.
    assert_eq!(entry_size::<Big, Rsp>(), 112);
    assert_eq!(ring_entries(PAGE_SIZE, 112), 32);
    // netif tx: 12-byte requests, 4-byte responses: 256 slots.
    assert_eq!(entry_size::<Small12, u32>(), 12);
    assert_eq!(ring_entries(PAGE_SIZE, 12), 256);
    // Union sizing: the larger member, rounded to the larger alignment.
    assert_eq!(entry_size::<Small12, u64>(), 16);
    assert_eq!(ring_entries(PAGE_SIZE, 16), 128);
    assert_eq!(ring_entries(16 * PAGE_SIZE, 16), 2048);
    assert_eq!(ring_entries(64, 16), 0);
    let (front, back) = pair(1, 0);
    assert_eq!(front.size(), 128);
    assert_eq!(back.size(), 128);
    let (front, _) = pair(4, 0);
    // (16384 - 64) / 16 = 1020 -> 512.
    assert_eq!(front.size(), 512);
}

#[test]
fn init_writes_the_shared_header_like_shared_ring_init() {
    let mem = FakePages::new(1).unwrap();
    // Dirty the header first: init must clear private bytes too.
    // SAFETY: 64 bytes inside the fresh page.
    unsafe { mem.ring_ptr().as_ptr().write_bytes(0xAB, 64) };
    let front = Front::init(mem).unwrap();
    let mut expect = [0u8; 64];
    expect[4] = 1; // req_event = 1
    expect[12] = 1; // rsp_event = 1
    assert_eq!(bytes(&front, 0, 64), expect);
}

#[test]
fn requests_are_written_in_place_at_the_io_ring_h_offsets() {
    let (mut front, _back) = pair(1, 0);
    for i in 0..3u64 {
        front
            .put_request(Req {
                id: i,
                value: 0x1122_3344_5566_7788 + i,
            })
            .unwrap();
    }
    // Not yet published.
    assert_eq!(header(&front)[0], 0);
    let slot1 = bytes(&front, 64 + 16, 16);
    let mut expect = Vec::new();
    expect.extend_from_slice(&1u64.to_le_bytes());
    expect.extend_from_slice(&0x1122_3344_5566_7789u64.to_le_bytes());
    assert_eq!(slot1, expect);
    front.push_requests();
    assert_eq!(header(&front)[0], 3);
}

#[test]
fn exchange_in_order_and_full_ring() {
    let (mut front, mut back) = pair(1, 0);
    let n = front.size();
    for i in 0..n {
        front
            .put_request(Req {
                id: i as u64,
                value: 7,
            })
            .unwrap();
    }
    assert!(front.is_full());
    assert_eq!(
        front.put_request(Req { id: 0, value: 0 }),
        Err(RingError::Full)
    );
    front.push_requests();
    assert_eq!(back.unconsumed_requests().unwrap(), n);
    for i in 0..n {
        let r = back.take_request().unwrap().unwrap();
        assert_eq!(r.id, i as u64);
        back.put_response(Rsp {
            id: r.id,
            status: -(i as i32),
            _pad: 0,
        })
        .unwrap();
    }
    assert_eq!(back.take_request().unwrap(), None);
    assert_eq!(
        back.put_response(Rsp {
            id: 0,
            status: 0,
            _pad: 0
        }),
        Err(RingError::NoRequestToAnswer)
    );
    back.push_responses();
    for i in 0..n {
        let r = front.take_response().unwrap().unwrap();
        assert_eq!((r.id, r.status), (i as u64, -(i as i32)));
    }
    assert_eq!(front.take_response().unwrap(), None);
    assert_eq!(front.free_requests(), n);
}

#[test]
fn notification_is_suppressed_until_the_consumer_asks() {
    let (mut front, mut back) = pair(1, 0);
    // Fresh ring: req_event = 1, so the first request notifies.
    front.put_request(Req { id: 1, value: 0 }).unwrap();
    assert!(front.push_requests());
    // The back has not re-armed: further requests do not notify.
    front.put_request(Req { id: 2, value: 0 }).unwrap();
    assert!(!front.push_requests());
    while back.take_request().unwrap().is_some() {}
    // Back drained and re-arms: req_event = req_cons + 1.
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(header(&front)[1], 3);
    front.put_request(Req { id: 3, value: 0 }).unwrap();
    assert!(front.push_requests());
    // final check sees work that arrived: no re-arm needed.
    assert!(back.final_check_for_requests().unwrap());
    // Pushing with nothing new never notifies.
    assert!(!front.push_requests());

    // Responses: rsp_event starts at 1.
    back.take_request().unwrap().unwrap();
    for id in 1..=3 {
        back.put_response(Rsp {
            id,
            status: 0,
            _pad: 0,
        })
        .unwrap();
    }
    assert!(back.push_responses());
    assert!(front.final_check_for_responses().unwrap());
}

#[test]
fn response_overflow_breaks_the_front_ring() {
    let (mut front, _back) = pair(1, 0);
    front.put_request(Req { id: 1, value: 0 }).unwrap();
    front.put_request(Req { id: 2, value: 0 }).unwrap();
    front.push_requests();
    // A hostile back claims 5 responses for 2 requests.
    poke(&front, 2, 5);
    let err = front.take_response().unwrap_err();
    assert_eq!(
        err,
        RingError::ResponseOverflow {
            rsp_prod: 5,
            rsp_cons: 0,
            outstanding: 2
        }
    );
    assert!(err.is_peer_fault());
    // Broken for good, even if the peer "fixes" the index.
    poke(&front, 2, 1);
    assert!(front.is_broken().is_some());
    assert_eq!(front.take_response(), Err(err.clone()));
    assert_eq!(front.put_request(Req { id: 3, value: 0 }), Err(err));
}

#[test]
fn responses_to_unpublished_requests_are_refused() {
    let (mut front, _back) = pair(1, 0);
    // Written but not pushed: the back cannot have seen it.
    front.put_request(Req { id: 1, value: 0 }).unwrap();
    poke(&front, 2, 1);
    assert!(matches!(
        front.take_response(),
        Err(RingError::ResponseOverflow { .. })
    ));
}

#[test]
fn backwards_rsp_prod_is_an_error_not_a_huge_count() {
    let (mut front, mut back) = pair(1, 100);
    front.put_request(Req { id: 1, value: 0 }).unwrap();
    front.push_requests();
    back.take_request().unwrap().unwrap();
    back.put_response(Rsp {
        id: 1,
        status: 0,
        _pad: 0,
    })
    .unwrap();
    back.push_responses();
    assert!(front.take_response().unwrap().is_some());
    // rsp_prod moves backwards below rsp_cons.
    poke(&front, 2, 50);
    assert!(matches!(
        front.unconsumed_responses(),
        Err(RingError::ResponseOverflow { .. })
    ));
}

#[test]
fn request_overflow_breaks_the_back_ring() {
    let (front, mut back) = pair(1, 0);
    let size = back.size();
    poke(&front, 0, size + 1);
    let err = back.take_request().unwrap_err();
    assert_eq!(
        err,
        RingError::RequestOverflow {
            req_prod: size + 1,
            req_cons: 0,
            rsp_prod_pvt: 0,
            size
        }
    );
    assert_eq!(back.final_check_for_requests(), Err(err));
    // Exactly a ring's worth is fine on a fresh ring.
    let (front, mut back) = pair(1, 0);
    poke(&front, 0, size);
    assert_eq!(back.unconsumed_requests().unwrap(), size);
}

#[test]
fn requests_beyond_unanswered_slots_are_refused() {
    let (mut front, mut back) = pair(1, 0);
    front.put_request(Req { id: 1, value: 0 }).unwrap();
    front.push_requests();
    back.take_request().unwrap().unwrap();
    // One slot is taken by an unanswered request: size more is too many.
    poke(&front, 0, 1 + back.size());
    assert!(matches!(
        back.unconsumed_requests(),
        Err(RingError::RequestOverflow { .. })
    ));
}

/// Exchanges over a ring of entries shaped `Q`/`R`, starting just below
/// 2^32 so that the indices wrap and several slots (at offsets that are not
/// multiples of 64 when the entry is not) are used: the slot copies (in
/// units of 8, 4, 2 or 1 bytes, as the entry size allows) carry every byte
/// and write nothing beyond each entry's own bytes.
fn exchange_shape<Q, R>(make_req: impl Fn(u8) -> Q, make_rsp: impl Fn(u8) -> R)
where
    Q: FromBytes + IntoBytes + Immutable + Copy + PartialEq + core::fmt::Debug,
    R: FromBytes + IntoBytes + Immutable + Copy + PartialEq + core::fmt::Debug,
{
    const FILL: u8 = 0xee;
    const ROUNDS: u8 = if cfg!(miri) { 3 } else { 5 };
    let start: RingIdx = u32::MAX - 2;
    let mem = FakePages::new(1).unwrap();
    let ptr = mem.ring_ptr();
    let len = mem.ring_len();
    for off in 64..len {
        // SAFETY: `off < len`, inside the fake page, no ring exists yet.
        unsafe { ptr.as_ptr().add(off).write(FILL) }
    }
    let mut front = FrontRing::<Q, R, FakePages>::init_at(mem, start).unwrap();
    // SAFETY: the memory is owned by `front`, alive as long as `back`.
    let raw = unsafe { RawRingMemory::new(ptr, len) };
    let mut back = BackRing::<Q, R, RawRingMemory>::attach(raw, start).unwrap();
    let entry = entry_size::<Q, R>();
    let slots = front.size() as usize;
    // Bytes the first `n` exchanges may have written: the first `used`
    // bytes of each of the first `n` slots (in ring order from `start`'s
    // slot). Everything else must still hold FILL.
    let check = |n: usize, used: usize, what: &str| {
        let mut may = alloc::vec![false; len];
        let first = (start as usize) % slots;
        for k in 0..n {
            let base = 64 + ((first + k) % slots) * entry;
            may[base..base + used].iter_mut().for_each(|b| *b = true);
        }
        // SAFETY: the page is `len` bytes and live; the rings are idle while
        // we read it.
        let page = unsafe { core::slice::from_raw_parts(ptr.as_ptr(), len) };
        for off in 64..len {
            assert!(
                may[off] || page[off] == FILL,
                "{what}: byte {off} written outside the entries used"
            );
        }
    };
    for k in 0..ROUNDS {
        front.put_request(make_req(k)).unwrap();
        front.push_requests();
        check(
            k as usize + 1,
            size_of::<Q>().max(size_of::<R>()),
            "request",
        );
        assert_eq!(back.take_request().unwrap(), Some(make_req(k)));
        back.put_response(make_rsp(k)).unwrap();
        back.push_responses();
        check(
            k as usize + 1,
            size_of::<Q>().max(size_of::<R>()),
            "response",
        );
        assert_eq!(front.take_response().unwrap(), Some(make_rsp(k)));
    }
    assert_eq!(front.rsp_cons(), start.wrapping_add(u32::from(ROUNDS)));
}

#[test]
fn slot_copies_of_every_unit_and_tail() {
    let b = |k: u8, n: usize| {
        k.wrapping_mul(101)
            .wrapping_add((n as u8).wrapping_mul(37))
            .wrapping_add(11)
    };
    // Entry 16 (8-byte unit), 13-byte request: 8 + 4 + 1.
    exchange_shape(
        |k| core::array::from_fn::<u8, 13, _>(|i| b(k, i)),
        |k| 0x0123_4567_89ab_cdefu64.rotate_left(u32::from(k)),
    );
    // Entry 16 (8-byte unit), 15-byte request: 8 + 4 + 2 + 1.
    exchange_shape(
        |k| core::array::from_fn::<u8, 15, _>(|i| b(k, i)),
        |k| u64::from(k) << 40 | 0x77,
    );
    // Entry 12 (4-byte unit), 10-byte request: 4 + 4 + 2; slots at 64, 76..
    exchange_shape(
        |k| core::array::from_fn::<u16, 5, _>(|i| u16::from(b(k, i)) << 8 | 0x3c),
        |k| [u32::from(k), 0xdead_beef, 7],
    );
    // Entry 13 (byte unit).
    exchange_shape(
        |k| core::array::from_fn::<u8, 13, _>(|i| b(k, i)),
        |k| [k, 0x5a, 0xa5],
    );
    // Entry 6 (2-byte unit).
    exchange_shape(|k| [u16::from(k), 0x5678, 0x9abc], |k| [k ^ 0xa5]);
    // Entry 100 (4-byte unit): the response is the larger member.
    exchange_shape(
        |k| 0x0bad_cafeu32 ^ u32::from(k),
        |k| core::array::from_fn::<u8, 100, _>(|i| b(k, i)),
    );
}

#[test]
fn bad_regions_and_entry_types_are_refused() {
    let mem = FakePages::new(1).unwrap();
    let ptr = mem.ring_ptr();
    // SAFETY: a sub-range of live memory that outlives the checks below.
    let odd = unsafe { RawRingMemory::new(ptr, 100) };
    assert!(matches!(
        FrontRing::<Req, Rsp, _>::init(odd),
        Err(RingError::BadRegion { .. })
    ));
    // SAFETY: as above; misaligned on purpose, refused before any access.
    let mis = unsafe {
        RawRingMemory::new(
            NonNull::new(ptr.as_ptr().wrapping_add(8)).unwrap(),
            PAGE_SIZE,
        )
    };
    assert!(matches!(
        FrontRing::<Req, Rsp, _>::init(mis),
        Err(RingError::BadRegion { .. })
    ));
    // SAFETY: as above; 17 pages is refused before any access.
    let big = unsafe { RawRingMemory::new(ptr, 17 * PAGE_SIZE) };
    assert!(matches!(
        BackRing::<Req, Rsp, _>::new(big),
        Err(RingError::BadRegion { .. })
    ));
    // SAFETY: as above.
    let ok = unsafe { RawRingMemory::new(ptr, PAGE_SIZE) };
    assert!(matches!(
        FrontRing::<(), (), _>::init(ok),
        Err(RingError::BadEntryType { .. })
    ));
    drop(mem);
}

#[test]
fn wraps_at_u32_max() {
    let (mut front, mut back) = pair(1, u32::MAX - 5);
    for round in 0..40u64 {
        for i in 0..3 {
            front
                .put_request(Req {
                    id: round * 3 + i,
                    value: round,
                })
                .unwrap();
        }
        front.push_requests();
        while let Some(r) = back.take_request().unwrap() {
            back.put_response(Rsp {
                id: r.id,
                status: r.value as i32,
                _pad: 0,
            })
            .unwrap();
        }
        back.push_responses();
        for i in 0..3 {
            let r = front.take_response().unwrap().unwrap();
            assert_eq!(r.id, round * 3 + i);
        }
    }
    assert_eq!(front.rsp_cons(), (u32::MAX - 5).wrapping_add(120));
}

// ---- Slots of several shapes ----------------------------------------------

/// netif's TX request (`netif_tx_request`, 12 bytes).
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct TxReq {
    gref: u32,
    offset: u16,
    flags: u16,
    id: u16,
    size: u16,
}

/// `NETTXF_extra_info`: the next slot holds a [`TxExtra`].
const TX_EXTRA_INFO: u16 = 1 << 3;

/// netif's extra-info segment (`netif_extra_info` with its GSO member, 8
/// bytes), carried in a TX request slot.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct TxExtra {
    kind: u8,
    flags: u8,
    gso_size: u16,
    gso_type: u8,
    pad: u8,
    features: u16,
}

/// netif's TX response (`netif_tx_response`, 4 bytes).
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct TxRsp {
    id: u16,
    status: i16,
}

type TxFront = FrontRing<TxReq, TxRsp, FakePages>;
type TxBack = BackRing<TxReq, TxRsp, RawRingMemory>;

fn tx_pair(start: RingIdx) -> (TxFront, TxBack) {
    let mem = FakePages::new(1).unwrap();
    let (ptr, len) = (mem.ring_ptr(), mem.ring_len());
    let front = TxFront::init_at(mem, start).unwrap();
    // SAFETY: the memory is owned by `front`, which outlives `back` in every
    // test; both access it only through ring accessors.
    let raw = unsafe { RawRingMemory::new(ptr, len) };
    (front, TxBack::attach(raw, start).unwrap())
}

fn tx_bytes(front: &TxFront, off: usize, len: usize) -> Vec<u8> {
    let p = front.memory().ring_ptr().as_ptr();
    // SAFETY: callers stay inside the ring page; the ring is idle.
    (0..len)
        .map(|i| unsafe { p.add(off + i).read_volatile() })
        .collect()
}

#[test]
fn netif_extra_info_rides_in_the_slot_after_its_request() {
    // Start below 2^32 so the pair straddles the wrap.
    let start = u32::MAX;
    let (mut front, mut back) = tx_pair(start);
    let entry = entry_size::<TxReq, TxRsp>();
    assert_eq!(entry, 12);
    let slots = front.size() as usize;
    let slot_off = |idx: RingIdx| 64 + (idx as usize % slots) * entry;

    // The second slot holds stale bytes from an earlier use.
    let stale = [0xcdu8; 12];
    let p = front.memory().ring_ptr().as_ptr();
    for (i, b) in stale.iter().enumerate() {
        // SAFETY: inside the ring page; the ring is idle.
        unsafe {
            p.add(slot_off(start.wrapping_add(1)) + i)
                .write_volatile(*b)
        }
    }

    let req = TxReq {
        gref: 0x0102_0304,
        offset: 0x0506,
        flags: TX_EXTRA_INFO,
        id: 7,
        size: 1514,
    };
    let extra = TxExtra {
        kind: 1,
        flags: 0,
        gso_size: 1448,
        gso_type: 1,
        pad: 0,
        features: 0,
    };
    assert_eq!(front.put_request(req), Ok(start));
    assert_eq!(front.put_request_as(&extra), Ok(start.wrapping_add(1)));
    front.push_requests();

    // The extra segment sits at the slot's start, as C's overlay puts it,
    // and the slot's last 4 bytes keep what they held.
    let raw = tx_bytes(&front, slot_off(start.wrapping_add(1)), 12);
    assert_eq!(&raw[..8], extra.as_bytes());
    assert_eq!(&raw[8..], &stale[8..]);

    // The back reads the request, sees the flag, reads the next slot as the
    // extra segment: one copy each.
    assert_eq!(back.unconsumed_requests(), Ok(2));
    let got = back.take_request().unwrap().unwrap();
    assert_eq!(got, req);
    assert!(got.flags & TX_EXTRA_INFO != 0);
    assert_eq!(back.take_request_as::<TxExtra>(), Ok(Some(extra)));
    assert_eq!(back.take_request_as::<TxExtra>(), Ok(None));

    // Netback answers the extra slot with a NETIF_RSP_NULL response; answer
    // both slots, the second as a bare status word.
    back.put_response(TxRsp { id: 7, status: 0 }).unwrap();
    back.put_response_as(&[0u8, 0, 1, 0]).unwrap();
    back.push_responses();
    assert_eq!(front.take_response(), Ok(Some(TxRsp { id: 7, status: 0 })));
    assert_eq!(front.take_response_as::<[u8; 4]>(), Ok(Some([0, 0, 1, 0])));
    assert_eq!(front.take_response_as::<u16>(), Ok(None));
    assert_eq!(front.free_requests(), front.size());
}

/// blkif's request (`blkif_request`, 112 bytes): operation and segment
/// count, then the id and eleven segments.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct BlkReq {
    operation: u8,
    nr_segments: u8,
    handle: u16,
    _pad: u32,
    id: u64,
    sector: u64,
    seg: [u64; 11],
}

/// blkif's discard request (`blkif_request_discard`), 32 bytes of a
/// request slot.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct BlkDiscard {
    operation: u8,
    flag: u8,
    handle: u16,
    _pad: u32,
    id: u64,
    sector: u64,
    nr_sectors: u64,
}

/// The two bytes every blkif request variant starts with.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct BlkHead {
    operation: u8,
    second: u8,
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct BlkRsp {
    id: u64,
    operation: u8,
    _pad: u8,
    status: i16,
    _pad2: u32,
}

const BLKIF_OP_READ: u8 = 0;
const BLKIF_OP_DISCARD: u8 = 5;

#[test]
fn blkif_variants_are_decided_on_one_copy_of_the_slot() {
    let mem = FakePages::new(1).unwrap();
    let (ptr, len) = (mem.ring_ptr(), mem.ring_len());
    let mut front = FrontRing::<BlkReq, BlkRsp, FakePages>::init(mem).unwrap();
    // SAFETY: the memory is owned by `front`, alive as long as `back`.
    let raw = unsafe { RawRingMemory::new(ptr, len) };
    let mut back = BackRing::<BlkReq, BlkRsp, RawRingMemory>::new(raw).unwrap();

    let read = BlkReq {
        operation: BLKIF_OP_READ,
        nr_segments: 2,
        handle: 3,
        _pad: 0,
        id: 10,
        sector: 2048,
        seg: core::array::from_fn(|i| 0x1111 * i as u64),
    };
    let discard = BlkDiscard {
        operation: BLKIF_OP_DISCARD,
        flag: 1,
        handle: 3,
        _pad: 0,
        id: 11,
        sector: 4096,
        nr_sectors: 8192,
    };
    front.put_request(read).unwrap();
    front.put_request_as(&discard).unwrap();
    front.push_requests();

    let mut seen = Vec::new();
    while let Some(slot) = back.take_request().unwrap() {
        // Decide on the copy's header, then read the copy as the variant.
        let head: BlkHead = reinterpret(&slot);
        match head.operation {
            BLKIF_OP_READ => {
                assert_eq!(slot, read);
                seen.push(slot.id);
            }
            BLKIF_OP_DISCARD => {
                let d: BlkDiscard = reinterpret(&slot);
                assert_eq!(d, discard);
                seen.push(d.id);
            }
            op => panic!("unexpected operation {op}"),
        }
        back.put_response(BlkRsp {
            id: slot.id,
            operation: head.operation,
            _pad: 0,
            status: 0,
            _pad2: 0,
        })
        .unwrap();
    }
    assert_eq!(seen, [10, 11]);
    back.push_responses();
    // The front reads just the id and operation of each response.
    let mut ids = Vec::new();
    while let Some(r) = front.take_response_as::<[u64; 2]>().unwrap() {
        ids.push((r[0], r[1] as u8));
    }
    assert_eq!(ids, [(10, BLKIF_OP_READ), (11, BLKIF_OP_DISCARD)]);
}

#[test]
fn typed_slots_keep_the_ring_rules() {
    let (mut front, mut back) = tx_pair(0);
    let n = front.size();
    let extra = TxExtra {
        kind: 2,
        flags: 0,
        gso_size: 0,
        gso_type: 0,
        pad: 0,
        features: 0,
    };
    for _ in 0..n {
        front.put_request_as(&extra).unwrap();
    }
    assert_eq!(front.put_request_as(&extra), Err(RingError::Full));
    // Nothing taken: no slot to answer in either shape.
    assert_eq!(
        back.put_response_as(&0u16),
        Err(RingError::NoRequestToAnswer)
    );
    front.push_requests();
    for _ in 0..n {
        assert_eq!(back.take_request_as::<TxExtra>(), Ok(Some(extra)));
    }
    assert_eq!(back.take_request_as::<[u8; 12]>(), Ok(None));
    // A hostile front's req_prod breaks the ring for every shape.
    poke_tx(&front, 0, 3 * n);
    let err = back.take_request_as::<u8>().unwrap_err();
    assert!(err.is_peer_fault());
    assert_eq!(back.take_request(), Err(err.clone()));
    assert_eq!(back.put_response_as(&0u32), Err(err));

    // Same on the front: more responses than requests breaks it.
    let (mut front, _back) = tx_pair(0);
    front.put_request(TxReq::new_zeroed()).unwrap();
    front.push_requests();
    poke_tx(&front, 2, 2);
    let err = front.take_response_as::<u16>().unwrap_err();
    assert!(err.is_peer_fault());
    assert_eq!(front.put_request_as(&extra), Err(err));
}

fn poke_tx(front: &TxFront, word: usize, value: u32) {
    let p = front.memory().ring_ptr().as_ptr().cast::<u32>();
    // SAFETY: `word < 4`: a header index inside the live ring page.
    unsafe { p.add(word).write_volatile(value) }
}

#[test]
fn reinterpret_takes_the_prefix_of_the_copy() {
    let slot = Req {
        id: 0x0807_0605_0403_0201,
        value: 0x100f_0e0d_0c0b_0a09,
    };
    let b: [u8; 3] = reinterpret(&slot);
    assert_eq!(b, [1, 2, 3]);
    let whole: [u64; 2] = reinterpret(&slot);
    assert_eq!(whole, [slot.id, slot.value]);
    let none: () = reinterpret(&slot);
    assert_eq!(none, ());
}

#[test]
fn cache_demotion_is_off_without_cldemote() {
    let (mut front, mut back) = pair(1, 0);
    front.set_cache_demote(true);
    back.set_cache_demote(true);
    // Asked for, it is on only where the processor has CLDEMOTE (never
    // under Miri); off stays off.
    assert_eq!(front.cache_demote(), cache_demote_supported());
    assert_eq!(back.cache_demote(), cache_demote_supported());
    front.set_cache_demote(false);
    assert!(!front.cache_demote());
    #[cfg(miri)]
    assert!(!cache_demote_supported());
    // Asking twice gives the same answer.
    assert_eq!(cache_demote_supported(), cache_demote_supported());
    // Either way, exchanges work.
    front.put_request(Req { id: 1, value: 2 }).unwrap();
    front.push_requests();
    assert_eq!(back.take_request(), Ok(Some(Req { id: 1, value: 2 })));
}

/// One step of a random exchange.
#[derive(Clone, Debug)]
enum Op {
    Put(u8),
    PushReq,
    Serve(u8),
    PushRsp,
    Take(u8),
    FinalFront,
    FinalBack,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::Put),
        Just(Op::PushReq),
        any::<u8>().prop_map(Op::Serve),
        Just(Op::PushRsp),
        any::<u8>().prop_map(Op::Take),
        Just(Op::FinalFront),
        Just(Op::FinalBack),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, ..ProptestConfig::default() })]

    /// Any interleaving of well-behaved ends, from any start index (so
    /// across 2^32), delivers every request and response once, in order.
    #[test]
    fn random_exchanges_keep_order(start in prop_oneof![Just(u32::MAX - 3), Just(0u32), any::<u32>()],
                                   ops in proptest::collection::vec(op(), 1..if cfg!(miri) { 40 } else { 200 })) {
        let (mut front, mut back) = pair(1, start);
        let size = front.size();
        let (mut next_id, mut served, mut taken) = (0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Op::Put(n) => for _ in 0..n % 8 {
                    match front.put_request(Req { id: next_id, value: next_id * 3 }) {
                        Ok(_) => next_id += 1,
                        Err(e) => { prop_assert_eq!(e, RingError::Full); prop_assert_eq!(front.free_requests(), 0); }
                    }
                },
                Op::PushReq => { front.push_requests(); }
                Op::Serve(n) => for _ in 0..n % 8 {
                    match back.take_request().unwrap() {
                        Some(r) => {
                            prop_assert_eq!(r, Req { id: served, value: served * 3 });
                            back.put_response(Rsp { id: r.id, status: 1, _pad: 0 }).unwrap();
                            served += 1;
                        }
                        None => break,
                    }
                },
                Op::PushRsp => { back.push_responses(); }
                Op::Take(n) => for _ in 0..n % 8 {
                    match front.take_response().unwrap() {
                        Some(r) => { prop_assert_eq!(r.id, taken); taken += 1; }
                        None => break,
                    }
                },
                Op::FinalFront => { front.final_check_for_responses().unwrap(); }
                Op::FinalBack => { back.final_check_for_requests().unwrap(); }
            }
            prop_assert!(taken <= served && served <= next_id);
            prop_assert!(front.free_requests() <= size);
            prop_assert_eq!(front.req_prod_pvt(), start.wrapping_add(next_id as u32));
            prop_assert_eq!(front.rsp_cons(), start.wrapping_add(taken as u32));
        }
    }

    /// Whatever the back writes as rsp_prod, the front either reports at
    /// most the outstanding requests or breaks; draining terminates.
    #[test]
    fn arbitrary_rsp_prod_never_over_reads(start in any::<u32>(), pushed in 0u32..128, rsp_prod in any::<u32>()) {
        let (mut front, _back) = pair(1, start);
        for i in 0..pushed { front.put_request(Req { id: i as u64, value: 0 }).unwrap(); }
        front.push_requests();
        poke(&front, 2, rsp_prod);
        let mut n = 0u32;
        loop {
            match front.take_response() {
                Ok(Some(_)) => { n += 1; prop_assert!(n <= pushed); }
                Ok(None) => break,
                Err(e) => { prop_assert!(e.is_peer_fault()); break; }
            }
        }
        prop_assert_eq!(n <= pushed, true);
    }

    /// Whatever the front writes as req_prod, the back takes at most one
    /// ring's worth or breaks.
    #[test]
    fn arbitrary_req_prod_never_over_reads(start in any::<u32>(), req_prod in any::<u32>()) {
        let (front, mut back) = pair(1, start);
        poke(&front, 0, req_prod);
        let mut n = 0u32;
        loop {
            match back.take_request() {
                Ok(Some(_)) => { n += 1; prop_assert!(n <= back.size()); }
                Ok(None) => break,
                Err(e) => { prop_assert!(e.is_peer_fault()); break; }
            }
        }
        let expect_ok = req_prod.wrapping_sub(start) <= back.size();
        prop_assert_eq!(back.is_broken().is_none(), expect_ok);
    }
}
