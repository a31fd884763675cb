//! A back ring consuming requests from arbitrary peer-written page contents
//! and indices: no panic, never more than a ring's worth outstanding, and a
//! broken ring stays broken; slots are read and answered in the ring's types
//! and in smaller shapes (`take_request_as`, `put_response_as`).
#![no_main]

use arbitrary::Arbitrary;
use grant_tables::fake::FakePages;
use grant_tables::{BackRing, RingMemory};
use libfuzzer_sys::fuzz_target;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
struct Req {
    id: u16,
    flags: u16,
    size: u32,
    offset: u16,
    _pad: u16,
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
struct Rsp {
    id: u16,
    status: i16,
}

#[derive(Arbitrary, Debug)]
struct Round {
    /// What the hostile front writes (req_prod, rsp_event).
    req_prod: Option<u32>,
    rsp_event: Option<u32>,
    scribble: Vec<(u16, u8)>,
    take: u8,
    answer: u8,
    push: bool,
    final_check: bool,
    /// Read requests as their first 6 bytes and answer with 2 bytes instead
    /// of the ring's types.
    shapes: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: u32,
    pages: u8,
    /// Initial header as the front left it.
    header: [u32; 4],
    rounds: Vec<Round>,
}

fuzz_target!(|input: Input| {
    let pages = 1 + (input.pages as usize % 4);
    let Ok(mem) = FakePages::new(pages) else {
        return;
    };
    let base = mem.ring_ptr().as_ptr();
    let len = mem.ring_len();
    // SAFETY: the header's four words are inside the live region.
    unsafe {
        for (i, w) in input.header.iter().enumerate() {
            base.add(4 * i).cast::<u32>().write_volatile(*w);
        }
    }
    let Ok(mut back) = BackRing::<Req, Rsp, _>::attach(mem, input.start) else {
        return;
    };
    let size = back.size();
    let mut unanswered: u32 = 0;
    for round in input.rounds.iter().take(64) {
        // SAFETY: offsets reduced into the live region; volatile writes
        // model the peer's concurrent stores.
        unsafe {
            if let Some(v) = round.req_prod {
                base.cast::<u32>().write_volatile(v);
            }
            if let Some(v) = round.rsp_event {
                base.add(12).cast::<u32>().write_volatile(v);
            }
            for &(off, b) in round.scribble.iter().take(256) {
                let off = 64 + (off as usize % (len - 64));
                base.add(off).write_volatile(b);
            }
        }
        for _ in 0..round.take {
            let taken = if round.shapes {
                back.take_request_as::<[u16; 3]>()
                    .map(|r| r.map(|w| (w[0], u32::from(w[2]) << 16 | u32::from(w[1]))))
            } else {
                back.take_request().map(|r| r.map(|r| (r.id, r.size)))
            };
            match taken {
                Ok(Some(r)) => {
                    unanswered += 1;
                    assert!(
                        unanswered <= size,
                        "more requests outstanding than ring slots"
                    );
                    let _ = r;
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(e.is_peer_fault());
                    break;
                }
            }
        }
        for _ in 0..round.answer {
            let put = if round.shapes {
                back.put_response_as(&1u16)
            } else {
                back.put_response(Rsp { id: 1, status: 0 })
            };
            if put.is_err() {
                break;
            }
            unanswered -= 1;
        }
        if round.push {
            back.push_responses();
        }
        if round.final_check {
            let _ = back.final_check_for_requests();
        }
        if back.is_broken().is_some() {
            assert!(back.take_request().is_err());
        }
    }
});
