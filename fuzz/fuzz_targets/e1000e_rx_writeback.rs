//! The e1000e driver's RX ring against a hostile device: arbitrary
//! write-backs (raw bytes, or status/length/error fields chosen to be
//! nearly right) in arbitrary slots, arbitrary head registers, consumed as
//! the driver consumes them. Never panics; every completion returns a
//! buffer that was posted and not yet returned, with a length within the
//! buffer; a violation is a typed error after which the ring is not used.
#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use passthrough::e1000e::desc::{
    parse_rx, RxParsed, RxWriteback, DESC_LEN, RXD_STAT_DD, RXD_STAT_EOP,
};
use passthrough::e1000e::ring::RxRing;

#[derive(Arbitrary, Debug)]
enum Op {
    /// The driver posts buffers.
    Post(u8),
    /// The device writes raw bytes into a slot.
    Raw { slot: u16, bytes: [u8; DESC_LEN] },
    /// The device writes a write-back with these fields into a slot.
    Wb { slot: u16, extra_status: u32, length: u16, vlan: u16 },
    /// The driver takes completions.
    Poll(u8),
    /// The driver checks the head register.
    Head(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    size_eighths: u8,
    buf_len: u16,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let size = 8 * (u16::from(input.size_eighths % 8) + 1);
    let buf_len = input.buf_len.max(1);
    let max_frame = 1522;
    let Ok(mut ring) = RxRing::new(size, buf_len, max_frame) else { return };
    let mut mem: Vec<[u8; DESC_LEN]> = vec![[0; DESC_LEN]; usize::from(size)];
    let mut next_buf: u16 = 0;
    let mut posted: BTreeSet<u16> = BTreeSet::new();
    for op in input.ops.iter().take(512) {
        match op {
            Op::Post(n) => {
                for _ in 0..*n {
                    match ring.post(&mut mem, next_buf, 0x10_0000 + u64::from(next_buf) * 2048) {
                        Ok(true) => {}
                        Ok(false) => break,
                        // The device marked the slot being posted done.
                        Err(e) => {
                            let _ = e.to_string();
                            return;
                        }
                    }
                    assert!(posted.insert(next_buf));
                    next_buf = next_buf.wrapping_add(1);
                }
                assert!(ring.posted() < size);
            }
            Op::Raw { slot, bytes } => {
                let s = usize::from(*slot % size);
                mem[s] = *bytes;
                // The pure parser alone never panics either.
                let _ = parse_rx(*slot, &RxWriteback::from_bytes(bytes), buf_len, max_frame);
            }
            Op::Wb { slot, extra_status, length, vlan } => {
                let s = usize::from(*slot % size);
                let wb = RxWriteback {
                    mrq: 0,
                    hi_dword: 0,
                    status_error: RXD_STAT_DD | RXD_STAT_EOP | (extra_status & 0xfff0_fff0),
                    length: *length,
                    vlan: *vlan,
                };
                mem[s] = wb.to_bytes();
            }
            Op::Poll(n) => {
                for _ in 0..=*n {
                    match ring.next_completion(&mut mem) {
                        Ok(None) => break,
                        Ok(Some(c)) => {
                            assert!(posted.remove(&c.buf), "buffer {} was not posted", c.buf);
                            if let RxParsed::Frame { len, .. } = c.parsed {
                                assert!(len <= buf_len && len <= max_frame && len >= 14);
                            }
                            assert_eq!(mem[usize::from(c.slot)], [0; DESC_LEN]);
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
        assert_eq!(usize::from(ring.posted()), posted.len());
    }
    let mut left = ring.drain();
    left.sort_unstable();
    assert_eq!(left, posted.into_iter().collect::<Vec<_>>());
});
