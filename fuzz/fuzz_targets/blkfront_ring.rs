//! The whole block frontend (`blkfront::Blkfront`) against a backend that
//! writes arbitrary bytes into the response slots of a live ring and
//! publishes arbitrary response producer indices, interleaved with honest
//! service, submissions and polls: no panic; every I/O completes at most
//! once; once the device is disabled, every I/O it held has completed
//! (none reported done after), and later submissions are refused.
#![no_main]

#[path = "../../blkfront/tests/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use common::backend::BackConfig;
use common::*;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Step {
    /// The application reads `pages` pages at `sector * 8`.
    Read { sector: u8, pages: u8 },
    /// The application writes.
    Write { sector: u8, pages: u8 },
    /// The application flushes.
    Flush,
    /// The backend serves honestly (or takes requests and holds them).
    Serve { hold: bool },
    /// The backend writes a response slot, `ahead` past its producer.
    Raw { ahead: u8, bytes: [u8; 16] },
    /// The backend publishes its producer plus `delta`.
    Publish { delta: u16 },
    /// The device polls.
    Poll,
}

fuzz_target!(|steps: Vec<Step>| {
    let w = World::new(2048);
    let mut xs = w.front_xs();
    let mut cfg = w.config();
    cfg.pool_pages = 64;
    let mut dev = w.device(cfg);
    let mut back = Some(w.backend(BackConfig {
        sectors: 2048,
        max_ring_page_order: Some(0),
        ..BackConfig::default()
    }));
    connect(&mut dev, &mut xs, &mut back);
    let mut done = BTreeSet::new();
    let mut submitted = BTreeSet::new();
    for step in steps.into_iter().take(64) {
        let b = back.as_mut().unwrap();
        match step {
            Step::Read { sector, pages } | Step::Write { sector, pages }
                if dev.buffer(0).is_some() =>
            {
                let n = usize::from(pages % 4) + 1;
                let spans: Vec<_> = (0..n)
                    .filter_map(|_| dev.buffer(0).map(blkfront::Span::whole))
                    .collect();
                let s = u64::from(sector) * 8;
                let r = if matches!(step, Step::Read { .. }) {
                    dev.read(0, s, spans)
                } else {
                    dev.write(0, s, spans)
                };
                if let Ok(t) = r {
                    submitted.insert(t);
                }
            }
            Step::Read { .. } | Step::Write { .. } => {}
            Step::Flush => {
                if let Ok(t) = dev.flush(0) {
                    submitted.insert(t);
                }
            }
            Step::Serve { hold } => {
                b.dev.hold = hold;
                b.poll();
            }
            Step::Raw { ahead, bytes } => b.dev.poke_response(0, u32::from(ahead % 8), &bytes),
            Step::Publish { delta } => b.dev.poke_rsp_prod(0, u32::from(delta)),
            Step::Poll => {
                let _ = dev.poll(&mut xs);
            }
        }
        let _ = dev.process();
        while let Some(c) = dev.next_completion() {
            assert!(
                submitted.contains(&c.tag),
                "a completion for an I/O never submitted"
            );
            assert!(done.insert(c.tag), "I/O {} completed twice", c.tag);
        }
        if dev.broken().is_some() {
            assert_eq!(dev.pending(), 0, "a disabled device holds no I/O");
            assert!(dev.flush(0).is_err());
        }
    }
});
