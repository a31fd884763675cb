//! The xenstore streaming decoder on arbitrary bytes cut into arbitrary
//! chunks: never panics, never yields a payload over the limit, stays
//! failed after a fatal error, and decodes its own re-encoding identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenbus::wire::{Decoder, Message, WireError, XENSTORE_PAYLOAD_MAX};

fn run(data: &[u8], cuts: &[u8]) -> (Vec<Message>, Option<WireError>) {
    let mut d = Decoder::new();
    let mut msgs = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (usize::from(cuts.get(i % cuts.len().max(1)).copied().unwrap_or(255)) + 1)
            .min(rest.len());
        i += 1;
        let (mut chunk, tail) = rest.split_at(n);
        rest = tail;
        loop {
            let before = chunk.len();
            match d.decode(&mut chunk) {
                Ok(Some(m)) => {
                    assert!(m.payload.len() <= XENSTORE_PAYLOAD_MAX);
                    msgs.push(m);
                }
                Ok(None) => assert!(chunk.is_empty(), "decoder stopped with input left"),
                Err(e) if e.is_fatal() => {
                    // Stays failed.
                    let mut more: &[u8] = b"0123456789abcdef0123";
                    assert_eq!(d.decode(&mut more), Err(e.clone()));
                    return (msgs, Some(e));
                }
                Err(_) => {}
            }
            assert!(chunk.len() <= before);
            if chunk.is_empty() {
                break;
            }
        }
    }
    (msgs, None)
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, cuts) = input;
    let (msgs, _) = run(&data, &cuts);
    // Whole messages re-encode to a stream that decodes to the same
    // messages in one chunk.
    let mut again = Vec::new();
    for m in &msgs {
        m.encode_into(&mut again);
    }
    let (msgs2, err) = run(&again, &[255]);
    assert!(err.is_none());
    assert_eq!(msgs, msgs2);
});
