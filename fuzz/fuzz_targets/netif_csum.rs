//! netfront's checksum completion on arbitrary frames cut into arbitrary
//! buffers. Never panics; a refused frame is unchanged; a completed frame
//! with a recomputed pseudo-header verifies; the cut never changes the
//! result.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netfront::csum::{complete, complete_frame, ones_complement_sum};

#[derive(Arbitrary, Debug)]
struct Input {
    /// 0: the bytes as given; 1: made to look like IPv4; 2: like IPv6.
    shape: u8,
    frame: Vec<u8>,
    cuts: Vec<u16>,
    recompute: bool,
}

fuzz_target!(|input: Input| {
    let mut frame = input.frame;
    if frame.len() >= 15 {
        match input.shape % 3 {
            1 => {
                frame[12..14].copy_from_slice(&[0x08, 0x00]);
                frame[14] = 0x40 | (frame[14] & 0x0F);
            }
            2 => {
                frame[12..14].copy_from_slice(&[0x86, 0xDD]);
                frame[14] = 0x60 | (frame[14] & 0x0F);
            }
            _ => {}
        }
    }
    let original = frame.clone();
    let mut whole = frame.clone();
    let single = complete_frame(&mut whole, input.recompute);
    match &single {
        Err(_) => assert_eq!(whole, original),
        Ok(loc) => {
            assert!(loc.start + loc.l4_len <= frame.len());
            assert!(loc.field + 2 <= loc.start + loc.l4_len);
            if input.recompute {
                let seg = &whole[loc.start..loc.start + loc.l4_len];
                let mut s = u32::from(loc.pseudo) + u32::from(ones_complement_sum(seg));
                while s > 0xFFFF {
                    s = (s & 0xFFFF) + (s >> 16);
                }
                assert_eq!(s, 0xFFFF, "the completed checksum does not verify");
            }
        }
    }

    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| usize::from(c) % (frame.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut prev = 0;
    for c in cuts.into_iter().chain(std::iter::once(frame.len())) {
        parts.push(frame[prev..c].to_vec());
        prev = c;
    }
    let mut refs: Vec<&mut [u8]> = parts.iter_mut().map(|p| p.as_mut_slice()).collect();
    let split = complete(&mut refs, input.recompute);
    assert_eq!(split, single);
    assert_eq!(parts.concat(), whole);
});
