//! A front ring consuming responses from arbitrary peer-written page
//! contents and indices: no panic, no over-read, no endless loop, and a
//! broken ring stays broken; slots are written and read in the ring's
//! types and in smaller shapes (`put_request_as`, `take_response_as`).
#![no_main]

use arbitrary::Arbitrary;
use grant_tables::fake::FakePages;
use grant_tables::{FrontRing, RingMemory};
use libfuzzer_sys::fuzz_target;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
struct Req {
    id: u64,
    segs: [u64; 13],
}

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
struct Rsp {
    id: u64,
    op: u8,
    _pad: u8,
    status: i16,
    _pad2: u32,
}

#[derive(Arbitrary, Debug)]
struct Round {
    put: u8,
    push: bool,
    /// What the hostile back writes into the header (req_event, rsp_prod).
    req_event: Option<u32>,
    rsp_prod: Option<u32>,
    /// Bytes the back scribbles into the ring (offset, value).
    scribble: Vec<(u16, u8)>,
    take: u8,
    final_check: bool,
    /// Write requests as 16-byte words and read responses as their first
    /// 12 bytes instead of the ring's types.
    shapes: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: u32,
    pages: u8,
    rounds: Vec<Round>,
}

fuzz_target!(|input: Input| {
    let pages = 1 + (input.pages as usize % 4);
    let Ok(mem) = FakePages::new(pages) else {
        return;
    };
    let base = mem.ring_ptr().as_ptr();
    let len = mem.ring_len();
    let Ok(mut front) = FrontRing::<Req, Rsp, _>::init_at(mem, input.start) else {
        return;
    };
    let size = front.size();
    let mut published: u64 = 0;
    let mut taken: u64 = 0;
    let mut broken = false;
    for round in input.rounds.iter().take(64) {
        for i in 0..round.put {
            let put = if round.shapes {
                front.put_request_as(&[u64::from(i), 0])
            } else {
                front.put_request(Req {
                    id: i as u64,
                    segs: [0; 13],
                })
            };
            if put.is_err() {
                break;
            }
        }
        if round.push {
            front.push_requests();
            published = u64::from(front.req_prod_pvt().wrapping_sub(input.start));
        }
        // SAFETY: offsets are reduced into the live ring region; volatile
        // byte and word writes model the peer's concurrent stores.
        unsafe {
            if let Some(v) = round.req_event {
                base.add(4).cast::<u32>().write_volatile(v);
            }
            if let Some(v) = round.rsp_prod {
                base.add(8).cast::<u32>().write_volatile(v);
            }
            for &(off, b) in round.scribble.iter().take(256) {
                let off = 64 + (off as usize % (len - 64));
                base.add(off).write_volatile(b);
            }
        }
        for _ in 0..round.take {
            let got = if round.shapes {
                front.take_response_as::<[u8; 12]>().map(|r| r.map(|_| ()))
            } else {
                front.take_response().map(|r| r.map(|_| ()))
            };
            match got {
                Ok(Some(())) => {
                    taken += 1;
                    assert!(
                        taken <= published,
                        "took a response for an unpublished request"
                    );
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(e.is_peer_fault());
                    broken = true;
                    break;
                }
            }
        }
        if round.final_check && front.final_check_for_responses().is_err() {
            broken = true;
        }
        if broken {
            assert!(front.is_broken().is_some());
            assert!(front.take_response().is_err());
        }
        assert!(front.free_requests() <= size);
    }
});
