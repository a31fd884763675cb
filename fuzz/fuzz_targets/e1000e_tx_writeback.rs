//! The e1000e driver's TX ring against a hostile device: arbitrary
//! write-backs (raw bytes, or a status byte with the done bit) in
//! arbitrary slots, posted or not, and arbitrary head registers, consumed
//! as the driver consumes them. Never panics; every completion returns
//! what was posted in that slot, in posting order, each frame buffer once;
//! a violation is a typed error after which the ring is not used.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use passthrough::e1000e::desc::{self, DESC_LEN, TXD_STAT_DD};
use passthrough::e1000e::ring::{TxRing, TxSlot};

#[derive(Arbitrary, Debug)]
enum Op {
    /// The driver posts frames (each with a context descriptor first when
    /// the flag is set).
    Post { n: u8, context: bool },
    /// The device writes raw bytes into a slot.
    Raw { slot: u16, bytes: [u8; DESC_LEN] },
    /// The device writes back a status byte (done bit set) into a slot.
    Done { slot: u16, status: u8 },
    /// The driver takes completions.
    Poll(u8),
    /// The driver checks the head register.
    Head(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    size_eighths: u8,
    ops: Vec<Op>,
}

/// The status byte of a TX descriptor (write-back format) set to `status`.
fn with_status(mut d: [u8; DESC_LEN], status: u8) -> [u8; DESC_LEN] {
    d[12] = status;
    d
}

fuzz_target!(|input: Input| {
    let size = 8 * (u16::from(input.size_eighths % 8) + 1);
    let Ok(mut ring) = TxRing::new(size) else { return };
    let mut mem: Vec<[u8; DESC_LEN]> = vec![[0; DESC_LEN]; usize::from(size)];
    let mut next_buf: u16 = 0;
    // What the driver posted, in order, as the ring should return it.
    let mut posted: VecDeque<TxSlot> = VecDeque::new();
    for op in input.ops.iter().take(512) {
        match op {
            Op::Post { n, context } => {
                for _ in 0..*n {
                    let need = if *context { 2 } else { 1 };
                    if ring.free() < need {
                        break;
                    }
                    // Room was checked, so a post lands unless the device
                    // marked the slot done (an error that ends the run).
                    let mut post = |d: &[u8; DESC_LEN], what: TxSlot| match ring.post(&mut mem, d, what) {
                        Ok(landed) => {
                            assert!(landed, "room was checked");
                            true
                        }
                        Err(e) => {
                            let _ = e.to_string();
                            false
                        }
                    };
                    if *context {
                        if !post(&[0; DESC_LEN], TxSlot::Context) {
                            return;
                        }
                        posted.push_back(TxSlot::Context);
                    }
                    let bus = 0x10_0000 + u64::from(next_buf) * 2048;
                    if !post(&desc::tx_legacy(bus, 60), TxSlot::Frame(next_buf)) {
                        return;
                    }
                    posted.push_back(TxSlot::Frame(next_buf));
                    next_buf = next_buf.wrapping_add(1);
                }
                assert!(ring.in_flight() < size);
            }
            Op::Raw { slot, bytes } => {
                mem[usize::from(*slot % size)] = *bytes;
                // The pure parser alone never panics either.
                let _ = desc::tx_status(bytes);
            }
            Op::Done { slot, status } => {
                let s = usize::from(*slot % size);
                mem[s] = with_status(mem[s], *status | TXD_STAT_DD);
            }
            Op::Poll(n) => {
                for _ in 0..=*n {
                    let next = ring.next();
                    match ring.next_completion(&mut mem) {
                        Ok(None) => break,
                        Ok(Some(c)) => {
                            assert_eq!(posted.pop_front(), Some(c.what), "completed out of order");
                            assert!(c.status & TXD_STAT_DD != 0);
                            assert_eq!(mem[usize::from(next)], [0; DESC_LEN]);
                        }
                        Err(e) => {
                            let _ = e.to_string();
                            return;
                        }
                    }
                }
            }
            Op::Head(h) => {
                if let Err(e) = ring.check_head(*h) {
                    let _ = e.to_string();
                    return;
                }
                assert!(*h < u32::from(size));
            }
        }
        assert_eq!(usize::from(ring.in_flight()), posted.len());
        assert_eq!(usize::from(ring.free()), usize::from(size) - 1 - posted.len());
    }
    let mut left = ring.drain();
    left.sort_unstable();
    let mut want: Vec<u16> = posted
        .into_iter()
        .filter_map(|s| match s {
            TxSlot::Frame(b) => Some(b),
            TxSlot::Context => None,
        })
        .collect();
    want.sort_unstable();
    assert_eq!(left, want);
    assert_eq!(ring.in_flight(), 0);
});
