//! A backend reading the ring refs a frontend published in xenstore
//! (`ring-page-order`, `ring-ref`, `ring-ref0..N`), every value written by
//! the frontend: no panic, and what is accepted is exactly what the layout
//! says, within the backend's maximum order.
#![no_main]

use arbitrary::Arbitrary;
use grant_tables::granted_ring::{parse_u32_value, MAX_RING_PAGE_ORDER, RING_PAGE_ORDER_KEY};
use grant_tables::{parse_ring_refs, RingRefsError};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    max_order: u8,
    /// (key choice, value): 0 is `ring-page-order`, 1 `ring-ref`, 2.. are
    /// `ring-ref0..`.
    entries: Vec<(u8, String)>,
    /// A key whose read fails (a transport error).
    failing: Option<u8>,
}

fn key(choice: u8) -> String {
    match choice {
        0 => RING_PAGE_ORDER_KEY.to_string(),
        1 => "ring-ref".to_string(),
        n => format!("ring-ref{}", n - 2),
    }
}

fuzz_target!(|input: Input| {
    let store: Vec<(String, String)> = input.entries.iter().map(|(k, v)| (key(*k), v.clone())).collect();
    let failing = input.failing.map(key);
    let lookup = |k: &str| store.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let result = parse_ring_refs("ring-ref", input.max_order, |k| {
        if failing.as_deref() == Some(k) {
            return Err("transport down");
        }
        Ok(lookup(k))
    });
    match result {
        Ok(refs) => {
            match lookup(RING_PAGE_ORDER_KEY) {
                None => {
                    assert_eq!(refs.len(), 1);
                    assert_eq!(Some(refs[0]), lookup("ring-ref").as_deref().and_then(parse_u32_value));
                }
                Some(order) => {
                    let order = parse_u32_value(&order).expect("an accepted order parses");
                    assert!(order <= u32::from(input.max_order.min(MAX_RING_PAGE_ORDER)));
                    assert_eq!(refs.len(), 1 << order);
                    for (i, r) in refs.iter().enumerate() {
                        let v = lookup(&format!("ring-ref{i}")).expect("an accepted ref exists");
                        assert_eq!(parse_u32_value(&v), Some(*r));
                        assert_eq!(v.parse::<u32>().ok(), Some(*r), "{v:?}");
                    }
                }
            }
        }
        Err(RingRefsError::BadValue { value, .. }) => assert!(value.chars().count() <= 32),
        Err(_) => {}
    }
    // The value parser agrees with the standard one on what it accepts.
    for (_, v) in &store {
        if let Some(n) = parse_u32_value(v) {
            assert_eq!(v.parse::<u32>().ok(), Some(n));
            assert!(v.bytes().all(|b| b.is_ascii_digit()) && v.len() <= 10);
        }
    }
});
