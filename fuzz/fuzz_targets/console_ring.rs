//! lwdom's console byte rings (`io/console.h`) against a console daemon
//! that writes arbitrary indices and bytes into the shared page between our
//! calls: nothing panics or reads or writes outside the page, no call moves
//! more bytes than asked or than the ring holds, and a call that refuses
//! the indices moves nothing.
#![no_main]

use std::ptr::NonNull;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lwdom::ring_bytes::{console_layout as l, console_out, ByteRing};

#[derive(Arbitrary, Debug)]
enum Step {
    /// The daemon writes an index (0: in_cons, 1: in_prod, 2: out_cons, 3:
    /// out_prod; ours included: a hostile page can hold anything).
    Index { which: u8, value: u32 },
    /// The daemon writes bytes somewhere in the page.
    Bytes { offset: u16, bytes: Vec<u8> },
    /// We write console output.
    Write { len: u16 },
    /// We read console input.
    Read { len: u16 },
    /// We look at the output backlog.
    Pending,
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

fuzz_target!(|steps: Vec<Step>| {
    let mut page = Box::new(Page([0; 4096]));
    let base = NonNull::new(page.0.as_mut_ptr()).expect("boxed page");
    // SAFETY: the boxed page outlives both rings and is accessed only
    // through raw pointers while they are in use.
    let out = unsafe { console_out(base) };
    // SAFETY: as above; the input ring of the same page.
    let input = unsafe { ByteRing::new(base, l::IN, l::IN_SIZE, l::IN_CONS, l::IN_PROD) };
    let index = |off: usize| {
        // SAFETY: an aligned u32 inside the live page.
        unsafe { base.as_ptr().add(off).cast::<u32>().read_volatile() }
    };
    for step in steps.into_iter().take(256) {
        match step {
            Step::Index { which, value } => {
                let off = [l::IN_CONS, l::IN_PROD, l::OUT_CONS, l::OUT_PROD][usize::from(which % 4)];
                // SAFETY: as in `index`.
                unsafe { base.as_ptr().add(off).cast::<u32>().write_volatile(value) };
            }
            Step::Bytes { offset, bytes } => {
                let start = usize::from(offset) % 4096;
                for (i, b) in bytes.iter().take(4096 - start).enumerate() {
                    // SAFETY: `start + i < 4096`, inside the live page.
                    unsafe { base.as_ptr().add(start + i).write_volatile(*b) };
                }
            }
            Step::Write { len } => {
                let data = vec![0x5a; usize::from(len)];
                let before = index(l::OUT_PROD);
                match out.write_some(&data) {
                    Ok(n) => {
                        assert!(n <= data.len() && n <= l::OUT_SIZE as usize);
                        assert_eq!(index(l::OUT_PROD), before.wrapping_add(n as u32));
                    }
                    Err(_) => assert_eq!(index(l::OUT_PROD), before),
                }
            }
            Step::Read { len } => {
                let mut buf = vec![0u8; usize::from(len)];
                let before = index(l::IN_CONS);
                match input.read_some(&mut buf) {
                    Ok(n) => {
                        assert!(n <= buf.len() && n <= l::IN_SIZE as usize);
                        assert_eq!(index(l::IN_CONS), before.wrapping_add(n as u32));
                    }
                    Err(_) => assert_eq!(index(l::IN_CONS), before),
                }
            }
            Step::Pending => {
                if let Ok(n) = out.pending() {
                    assert!(n <= l::OUT_SIZE);
                }
            }
        }
    }
    drop(page);
});
