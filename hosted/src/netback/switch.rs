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
    /// The entries used last, in front of the table: each a copy of the
    /// table's entry for its address (kept equal on every change, all
    /// dropped when entries are removed), so that a conversation's frames
    /// (the same few addresses again and again) neither hash nor probe.
    recent: [Option<Recent>; RECENT],
    /// The slot of `recent` the next new entry takes.
    next: usize,
}

/// Entries of [`Switch::recent`].
const RECENT: usize = 4;

/// A copy of a table entry.
#[derive(Clone, Copy, Debug)]
struct Recent {
    mac: [u8; 6],
    port: PortId,
    seen: Instant,
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
            self.learn(src, port, now);
        }
        if is_group(&dst) {
            return Dest::Flood;
        }
        match self.find(&dst) {
            Some((p, seen)) if now.saturating_duration_since(seen) < AGEING => {
                if p == port {
                    Dest::Drop
                } else {
                    Dest::Port(p)
                }
            }
            _ => Dest::Flood,
        }
    }

    /// Records that `src` was seen on `port` at `now` (unless the table is
    /// full and `src` is new).
    #[inline]
    fn learn(&mut self, src: [u8; 6], port: PortId, now: Instant) {
        let hit = self.recent.iter().flatten().position(|r| r.mac == src);
        if let Some(i) = hit {
            if let Some(r) = &self.recent[i] {
                if r.port == port && r.seen == now {
                    // The table already says so.
                    return;
                }
            }
        }
        let full = self.table.len() >= MAX_ADDRESSES;
        match self.table.get_mut(&src) {
            Some(e) => *e = (port, now),
            None if !full => {
                self.table.insert(src, (port, now));
            }
            None => return,
        }
        self.remember(hit, src, port, now);
    }

    /// The table's entry for `mac`.
    #[inline]
    fn find(&mut self, mac: &[u8; 6]) -> Option<(PortId, Instant)> {
        if let Some(r) = self.recent.iter().flatten().find(|r| r.mac == *mac) {
            return Some((r.port, r.seen));
        }
        let &(port, seen) = self.table.get(mac)?;
        self.remember(None, *mac, port, seen);
        Some((port, seen))
    }

    /// Puts a copy of the table's entry for `mac` into `recent`: in slot
    /// `at` (where it already is), or in the next slot in turn.
    fn remember(&mut self, at: Option<usize>, mac: [u8; 6], port: PortId, seen: Instant) {
        let i = at.unwrap_or_else(|| {
            let i = self.next % RECENT;
            self.next = (i + 1) % RECENT;
            i
        });
        if let Some(slot) = self.recent.get_mut(i) {
            *slot = Some(Recent { mac, port, seen });
        }
    }

    /// Forgets every address learned on `port`.
    pub fn forget_port(&mut self, port: PortId) {
        self.table.retain(|_, (p, _)| *p != port);
        self.recent = [None; RECENT];
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
        self.recent = [None; RECENT];
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    }

    const A: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 1];
    const B: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 2];

    #[test]
    fn learns_moves_and_forgets_through_the_recent_entries() {
        let mut s = Switch::new();
        let t = Instant::now();
        // Unknown destination: flooded; the source is learned.
        assert_eq!(s.forward(&frame(B, A), PortId::Vif(1), t), Dest::Flood);
        assert_eq!(
            s.forward(&frame(A, B), PortId::Host, t),
            Dest::Port(PortId::Vif(1))
        );
        // Again and again (the recent entries answer).
        for _ in 0..3 {
            assert_eq!(
                s.forward(&frame(B, A), PortId::Vif(1), t),
                Dest::Port(PortId::Host)
            );
            assert_eq!(
                s.forward(&frame(A, B), PortId::Host, t),
                Dest::Port(PortId::Vif(1))
            );
        }
        // A moves to another port at the same instant: the move is seen.
        assert_eq!(
            s.forward(&frame(B, A), PortId::Vif(2), t),
            Dest::Port(PortId::Host)
        );
        assert_eq!(
            s.forward(&frame(A, B), PortId::Host, t),
            Dest::Port(PortId::Vif(2))
        );
        assert_eq!(s.lookup(&A, t), Some(PortId::Vif(2)));
        // Its port goes: forgotten, though it was a recent entry.
        s.forget_port(PortId::Vif(2));
        assert_eq!(s.forward(&frame(A, B), PortId::Host, t), Dest::Flood);
        // Aged out, though recent.
        assert_eq!(
            s.forward(&frame(B, A), PortId::Vif(1), t),
            Dest::Port(PortId::Host)
        );
        let later = t + AGEING + Duration::from_secs(1);
        assert_eq!(
            s.forward(&frame(A, [0x02, 0, 0, 0, 0, 9]), PortId::Tap, later),
            Dest::Flood
        );
        s.age(later);
        assert_eq!(s.lookup(&A, later), None);
        assert_eq!(s.forward(&frame(A, B), PortId::Host, later), Dest::Flood);
    }

    #[test]
    fn a_full_table_learns_nothing_new_and_the_recent_entries_agree() {
        let mut s = Switch::new();
        let t = Instant::now();
        for i in 0..MAX_ADDRESSES as u32 {
            let b = i.to_be_bytes();
            let mac = [0, 0x16, b[0], b[1], b[2], b[3]];
            s.forward(&frame(B, mac), PortId::Vif(1), t);
        }
        assert_eq!(s.len(), MAX_ADDRESSES);
        // B is new: not learned, so frames for it flood, every time.
        for _ in 0..3 {
            s.forward(&frame(A, B), PortId::Host, t);
            assert_eq!(s.forward(&frame(B, A), PortId::Vif(1), t), Dest::Flood);
        }
        assert_eq!(s.lookup(&B, t), None);
        assert_eq!(s.len(), MAX_ADDRESSES);
    }
}
