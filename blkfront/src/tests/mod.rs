//! Unit tests of the protocol layer.

mod features;
mod inflight;
mod request;
mod spin;

use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::abi::{BlkifResponse, DiskInfo};
use crate::features::{DiscardFeature, Negotiated};
use crate::request::Segment;

/// A writable 512-byte-sector disk of 1 GiB with every feature, direct
/// requests only.
fn disk() -> Negotiated {
    Negotiated {
        sectors: 2 * 1024 * 1024,
        sector_size: 512,
        physical_sector_size: 4096,
        info: DiskInfo::empty(),
        flush_cache: true,
        barrier: true,
        discard: Some(DiscardFeature {
            granularity: 4096,
            alignment: 0,
            secure: true,
        }),
        persistent: true,
        max_segments: 11,
        queues: 1,
        ring_page_order: 0,
    }
}

/// A backend directory as a map, read through the closure the parsers take.
fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn reader(map: &BTreeMap<String, String>) -> impl FnMut(&str) -> Option<String> + '_ {
    move |k| map.get(k).cloned()
}

/// `n` whole-page segments with refs from `first_ref` on.
fn pages(n: usize, first_ref: u32) -> Vec<Segment> {
    (0..n)
        .map(|i| Segment {
            gref: first_ref + i as u32,
            offset: 0,
            len: 4096,
        })
        .collect()
}

fn response(id: u64, operation: u8, status: i16) -> BlkifResponse {
    BlkifResponse {
        id,
        operation,
        _pad0: 0,
        status,
        _pad1: [0; 4],
    }
}
