//! The software switch: a learning Ethernet bridge between the vifs, the
//! host port and the TAP device.
//!
//! It learns which port each unicast source address was seen on, sends a
//! frame for a known address to that port only, and floods broadcast,
//! multicast and unknown unicast to every port but the one it came in on,
//! as a Linux bridge does. Learned addresses age out after
//! [`AGEING`] (the bridge's default `ageing_time`), and a port that goes
//! away forgets its addresses at once.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// How long a learned address stays without a frame from it.
pub const AGEING: Duration = Duration::from_secs(300);

/// Most addresses learned; beyond this new ones are not learned (their
/// frames flood), so a frontend inventing source addresses cannot grow
/// the table without bound.
pub const MAX_ADDRESSES: usize = 4096;

/// A switch port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortId {
    /// The host side ([`crate::netback::HostPort`] or the host handler).
    Host,
    /// The TAP device.
    Tap,
    /// A vif, by its backend-wide number.
    Vif(u32),
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// One port.
    Port(PortId),
    /// Every port but the ingress.
    Flood,
    /// Nowhere (the destination is the ingress port itself).
    Drop,
}

/// A keyed multiplicative hash of an address: a few instructions, where
/// SipHash costs tens of nanoseconds per frame. The keys are random per
/// switch, so a frontend cannot pick addresses that collide.
#[derive(Clone, Copy, Debug)]
struct MacHash {
    k0: u64,
    k1: u64,
}

impl Default for MacHash {
    fn default() -> Self {
        let r = std::collections::hash_map::RandomState::new();
        MacHash {
            k0: r.hash_one(0x5eed_u64),
            k1: r.hash_one(0xfeed_u64) | 1,
        }
    }
}

impl BuildHasher for MacHash {
    type Hasher = MacHasher;
    fn build_hasher(&self) -> MacHasher {
        MacHasher {
            acc: self.k0,
            k1: self.k1,
        }
    }
}

/// The hasher of [`MacHash`].
#[derive(Debug)]
struct MacHasher {
    acc: u64,
    k1: u64,
}

impl Hasher for MacHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.acc = (self.acc ^ u64::from_le_bytes(b)).wrapping_mul(self.k1);
            self.acc ^= self.acc >> 29;
        }
    }
    fn finish(&self) -> u64 {
        self.acc.wrapping_mul(self.k1) ^ (self.acc >> 32)
    }
}

/// The learning table.
#[derive(Debug, Default)]
pub struct Switch {
    table: HashMap<[u8; 6], (PortId, Instant), MacHash>,
}

/// Whether an address is a group (multicast or broadcast) address.
pub fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    /// An empty switch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Learns the source of a frame of at least 12 bytes that came in on
    /// `port`, and says where it goes.
    pub fn forward(&mut self, frame: &[u8], port: PortId, now: Instant) -> Dest {
        let (Some(dst), Some(src)) = (mac_at(frame, 0), mac_at(frame, 6)) else {
            return Dest::Drop;
        };
        if !is_group(&src) && src != [0; 6] {
            let full = self.table.len() >= MAX_ADDRESSES;
            match self.table.get_mut(&src) {
                Some(e) => *e = (port, now),
                None if !full => {
                    self.table.insert(src, (port, now));
                }
                None => {}
            }
        }
        if is_group(&dst) {
            return Dest::Flood;
        }
        match self.table.get(&dst) {
            Some(&(p, seen)) if now.saturating_duration_since(seen) < AGEING => {
                if p == port {
                    Dest::Drop
                } else {
                    Dest::Port(p)
                }
            }
            _ => Dest::Flood,
        }
    }

    /// Forgets every address learned on `port`.
    pub fn forget_port(&mut self, port: PortId) {
        self.table.retain(|_, (p, _)| *p != port);
    }

    /// The port `mac` was learned on, if fresh.
    pub fn lookup(&self, mac: &[u8; 6], now: Instant) -> Option<PortId> {
        self.table
            .get(mac)
            .filter(|(_, seen)| now.saturating_duration_since(*seen) < AGEING)
            .map(|(p, _)| *p)
    }

    /// Drops aged entries.
    pub fn age(&mut self, now: Instant) {
        self.table
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < AGEING);
    }

    /// Addresses learned.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether nothing is learned.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn mac_at(frame: &[u8], at: usize) -> Option<[u8; 6]> {
    frame.get(at..at + 6)?.try_into().ok()
}
