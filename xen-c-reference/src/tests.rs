//! Self-checks: the Rust mirrors agree with the C definitions, and the C
//! peers work against each other.

use std::mem::{align_of, offset_of, size_of};
use std::sync::atomic::AtomicI32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use super::*;
use crate::layout::{field, type_layout};

/// The two-thread tests spin; running them one at a time keeps them from
/// starving each other on small machines.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn echo_types_mirror_c() {
    let req = type_layout("echo_request").expect("echo_request in the table");
    assert_eq!(
        (req.size, req.align),
        (size_of::<EchoRequest>(), align_of::<EchoRequest>())
    );
    let rsp = type_layout("echo_response").expect("echo_response in the table");
    assert_eq!(
        (rsp.size, rsp.align),
        (size_of::<EchoResponse>(), align_of::<EchoResponse>())
    );
    assert_ne!(req.size, rsp.size, "request and response differ in size");

    let off = |t, f| {
        field(t, f)
            .unwrap_or_else(|| panic!("{t}.{f} in the table"))
            .offset
    };
    assert_eq!(off("echo_request", "id"), offset_of!(EchoRequest, id));
    assert_eq!(off("echo_request", "value"), offset_of!(EchoRequest, value));
    assert_eq!(
        off("echo_request", "payload"),
        offset_of!(EchoRequest, payload)
    );
    assert_eq!(
        field("echo_request", "payload").map(|f| f.size),
        Some(ECHO_PAYLOAD_LEN)
    );
    assert_eq!(off("echo_response", "id"), offset_of!(EchoResponse, id));
    assert_eq!(
        off("echo_response", "value"),
        offset_of!(EchoResponse, value)
    );
    assert_eq!(
        off("echo_response", "status"),
        offset_of!(EchoResponse, status)
    );
    assert_eq!(off("echo_response", "_pad"), offset_of!(EchoResponse, _pad));

    let entry = type_layout("echo_sring_entry").expect("echo_sring_entry");
    assert_eq!(entry.size, size_of::<EchoRequest>());
    assert_eq!(field("echo_sring", "ring").map(|f| f.offset), Some(64));
}

#[test]
fn message_functions_match_c() {
    for id in [0u64, 1, 2, 255, 256, 0xdead_beef, u64::MAX - 1, u64::MAX]
        .into_iter()
        .chain((0..2000).map(|i| i * 0x1234_5678_9abc))
    {
        assert_eq!(echo_request_value(id), echo::c::request_value(id));
        assert_eq!(echo_reply_value(id), echo::c::reply_value(id));
        for i in 0..ECHO_PAYLOAD_LEN {
            assert_eq!(
                echo_payload_byte(id, i),
                echo::c::payload_byte(id, i as u32)
            );
        }
        let req = echo_request(id);
        assert_eq!(req, echo::c::request(id));
        let rsp = echo_response(&req);
        assert_eq!(rsp, echo::c::response(&req));
        assert!(echo_response_ok(id, &rsp) && echo::c::response_ok(id, &rsp));
        assert!(
            !echo_response_ok(id.wrapping_add(1), &rsp)
                && !echo::c::response_ok(id.wrapping_add(1), &rsp)
        );

        let mut bad = req;
        bad.payload[ECHO_PAYLOAD_LEN - 1] ^= 1;
        assert_eq!(echo_response(&bad).status, ECHO_STATUS_BAD_PAYLOAD);
        assert_eq!(echo::c::response(&bad).status, ECHO_STATUS_BAD_PAYLOAD);
    }
}

#[test]
fn ring_sizes_are_known() {
    // 4096 - 64 = 4032 bytes of entries.
    assert_eq!(echo_ring_size(1), 32); // 4032 / 64 = 63
    assert_eq!(const_ring_size(RingTag::Echo, PAGE_SIZE), 32);
    assert_eq!(const_ring_size(RingTag::Odd, PAGE_SIZE), 128); // 4032 / 16 = 252
    assert_eq!(const_ring_size(RingTag::Wide, PAGE_SIZE), 32); // 4032 / 100 = 40
    assert_eq!(const_ring_size(RingTag::Blkif, PAGE_SIZE), 32);
    assert_eq!(const_ring_size(RingTag::NetifTx, PAGE_SIZE), 256);
    assert_eq!(const_ring_size(RingTag::NetifRx, PAGE_SIZE), 256);
    assert_eq!(const_ring_size(RingTag::Echo, 64), 0);
    for tag in RingTag::ALL {
        assert!(type_layout(tag.entry_type_name()).is_some(), "{tag:?}");
        for pages in 1..=16 {
            assert_eq!(
                const_ring_size(tag, pages * PAGE_SIZE),
                attached_ring_size(tag, pages * PAGE_SIZE)
            );
        }
    }
}

fn c_front_vs_c_back(pages: u32, start: u32, count: u64, in_flight: u32, flags: u32) {
    let mem = Arc::new(SharedPages::new(pages as usize));
    let events = Arc::new(EchoEvents::default());
    let stop = Arc::new(AtomicI32::new(0));
    let params = EchoParams {
        max_in_flight: in_flight,
        flags,
        timeout_ns: 30_000_000_000,
        ..EchoParams::new(pages, start, count)
    };
    // SAFETY: zero-filled memory is initialised at `start` before either
    // side runs; each side uses it only through the ring macros.
    unsafe { echo_sring_init(mem.as_ptr(), start) };
    let back = {
        let (mem, events, stop) = (Arc::clone(&mem), Arc::clone(&events), Arc::clone(&stop));
        // SAFETY: `mem` is page-aligned, `pages` pages long and kept alive by
        // the Arc; the only other user is the front below.
        thread::spawn(move || unsafe { echo_back(mem.as_ptr(), &params, &events, &stop) })
    };
    // SAFETY: as above; the back attached to a ring initialised at `start`.
    let front = unsafe { echo_front(mem.as_ptr(), &params, &events, &stop) };
    let back = back.join().expect("back thread");
    let front = front.expect("C front");
    let back = back.expect("C back");
    assert_eq!((front.messages, front.errors), (count, 0));
    assert_eq!((back.messages, back.errors), (count, 0));
}

#[test]
fn c_peers_agree_with_each_other() {
    let _serial = one_at_a_time();
    c_front_vs_c_back(1, u32::MAX - 100, 20_000, 0, 0);
    c_front_vs_c_back(2, 0, 20_000, 1, ECHO_USE_EVENTS);
    c_front_vs_c_back(4, u32::MAX - 7, 20_000, 5, ECHO_USE_EVENTS);
}

#[test]
fn pingpong_pair_runs() {
    let _serial = one_at_a_time();
    let mem = Arc::new(SharedPages::new(1));
    let iters = 1_000u64;
    let back = {
        let mem = Arc::clone(&mem);
        // SAFETY: zero-filled, page-aligned, one page, kept alive by the
        // Arc; the only other user is the front below.
        thread::spawn(move || unsafe { pingpong_back(mem.as_ptr(), 1, iters) })
    };
    let mut lat = vec![0u64; iters as usize];
    // SAFETY: as above.
    let errors = unsafe { pingpong_front(mem.as_ptr(), 1, &mut lat) }.expect("ping-pong front");
    back.join().expect("back thread").expect("ping-pong back");
    assert_eq!(errors, 0);
    assert!(lat.iter().all(|&l| l > 0 && l < 10_000_000_000));
}
