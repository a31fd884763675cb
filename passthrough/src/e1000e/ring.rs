//! The RX and TX descriptor rings' bookkeeping, apart from the memory they
//! live in ([`DescMemory`]: DMA memory in the driver, a plain array in
//! tests and the fuzzer).
//!
//! Each ring remembers which slots it posted and what is in them, so that
//! everything the device writes is checked against the driver's own
//! state:
//! - completions are taken in order from `next`, only from posted slots;
//! - a done bit on the slot at the tail (which the driver keeps unposted,
//!   so that a full ring is not mistaken for an empty one) means the
//!   device wrote a descriptor it did not own;
//! - the device's head register must lie within the posted part of the
//!   ring ([`RxRing::check_head`], [`TxRing::check_head`]);
//! - a completed slot is zeroed before it is reused, so a done bit never
//!   survives from an earlier round.
//!
//! Every loop is bounded by the ring's size; nothing here panics on what
//! the device wrote.

use alloc::vec;
use alloc::vec::Vec;

use super::desc::{self, DescError, RxParsed, RxWriteback, DESC_LEN, TXD_STAT_DD};

/// Memory that holds a ring's descriptors.
pub trait DescMemory {
    /// Descriptors the memory holds.
    fn slots(&self) -> u16;
    /// A copy of descriptor `slot`, taken once. Implementations over
    /// device-shared memory read the dword that holds the done bit first,
    /// then (after an acquire fence) the rest, so that a done bit is never
    /// seen with fields from before the device wrote them.
    fn read(&self, slot: u16) -> [u8; DESC_LEN];
    /// Writes descriptor `slot` (the caller orders it before the tail
    /// write that hands it to the device).
    fn write(&mut self, slot: u16, desc: &[u8; DESC_LEN]);
}

impl DescMemory for Vec<[u8; DESC_LEN]> {
    fn slots(&self) -> u16 {
        u16::try_from(self.len()).unwrap_or(u16::MAX)
    }
    fn read(&self, slot: u16) -> [u8; DESC_LEN] {
        self.get(usize::from(slot))
            .copied()
            .unwrap_or([0; DESC_LEN])
    }
    fn write(&mut self, slot: u16, d: &[u8; DESC_LEN]) {
        if let Some(s) = self.get_mut(usize::from(slot)) {
            *s = *d;
        }
    }
}

/// Whether `x` lies in the circular range `[from, to]` of a ring of `size`.
fn in_window(x: u16, from: u16, to: u16, size: u16) -> bool {
    let d_x = (u32::from(x) + u32::from(size) - u32::from(from)) % u32::from(size);
    let d_to = (u32::from(to) + u32::from(size) - u32::from(from)) % u32::from(size);
    d_x <= d_to
}

/// The smallest ring: the 82574 fetches descriptors in groups of 8 (ring
/// lengths are multiples of 128 bytes).
pub const MIN_RING: u16 = 8;
/// The largest ring the driver makes.
pub const MAX_RING: u16 = 4096;

/// Checks a ring size: a multiple of 8 descriptors, 8 to 4096.
pub fn check_ring_size(size: u16) -> Result<(), &'static str> {
    if !(MIN_RING..=MAX_RING).contains(&size) || size % 8 != 0 {
        return Err("a ring holds 8 to 4096 descriptors, a multiple of 8");
    }
    Ok(())
}

/// One completed RX descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxCompletion {
    /// The buffer the driver posted in the slot.
    pub buf: u16,
    /// The slot.
    pub slot: u16,
    /// What the device wrote.
    pub parsed: RxParsed,
}

/// The RX ring's bookkeeping.
#[derive(Debug)]
pub struct RxRing {
    size: u16,
    /// The next slot the device completes.
    next: u16,
    /// The next slot the driver posts (the RDT value).
    tail: u16,
    posted: u16,
    bufs: Vec<Option<u16>>,
    buf_len: u16,
    max_frame: u16,
}

impl RxRing {
    /// A ring of `size` descriptors (see [`check_ring_size`]) for buffers
    /// of `buf_len` bytes and frames up to `max_frame` bytes; the memory
    /// must be zeroed.
    pub fn new(size: u16, buf_len: u16, max_frame: u16) -> Result<Self, &'static str> {
        check_ring_size(size)?;
        Ok(RxRing {
            size,
            next: 0,
            tail: 0,
            posted: 0,
            bufs: vec![None; usize::from(size)],
            buf_len,
            max_frame,
        })
    }

    /// Descriptors in the ring.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The tail to write to RDT.
    pub fn tail(&self) -> u16 {
        self.tail
    }

    /// The next slot the device completes.
    pub fn next(&self) -> u16 {
        self.next
    }

    /// Buffers the device holds.
    pub fn posted(&self) -> u16 {
        self.posted
    }

    /// Whether another buffer can be posted (one slot stays empty).
    pub fn can_post(&self) -> bool {
        self.posted < self.size - 1
    }

    /// Posts buffer `buf` at bus address `bus`; `false` when the ring is
    /// full. The slot must still read as the driver left it: a done bit
    /// there is the device writing a descriptor it never owned, and
    /// posting over it would hide that.
    pub fn post<M: DescMemory>(
        &mut self,
        mem: &mut M,
        buf: u16,
        bus: u64,
    ) -> Result<bool, DescError> {
        if !self.can_post() {
            return Ok(false);
        }
        self.check_unposted(mem)?;
        let slot = self.tail;
        mem.write(slot, &desc::rx_read_format(bus));
        if let Some(s) = self.bufs.get_mut(usize::from(slot)) {
            *s = Some(buf);
        }
        self.tail = (slot + 1) % self.size;
        self.posted += 1;
        Ok(true)
    }

    /// The next completed descriptor, if the device wrote one back.
    pub fn next_completion<M: DescMemory>(
        &mut self,
        mem: &mut M,
    ) -> Result<Option<RxCompletion>, DescError> {
        if self.posted == 0 {
            self.check_unposted(mem)?;
            return Ok(None);
        }
        let slot = self.next;
        let wb = RxWriteback::from_bytes(&mem.read(slot));
        let parsed = desc::parse_rx(slot, &wb, self.buf_len, self.max_frame)?;
        if parsed == RxParsed::NotDone {
            self.check_unposted(mem)?;
            return Ok(None);
        }
        let Some(buf) = self.bufs.get_mut(usize::from(slot)).and_then(Option::take) else {
            return Err(DescError::DoneNotPosted { ring: "RX", slot });
        };
        mem.write(slot, &[0; DESC_LEN]);
        self.next = (slot + 1) % self.size;
        self.posted -= 1;
        Ok(Some(RxCompletion { buf, slot, parsed }))
    }

    /// The slot at the tail is never posted: a done bit there is the
    /// device writing a descriptor it does not own.
    fn check_unposted<M: DescMemory>(&self, mem: &M) -> Result<(), DescError> {
        let wb = RxWriteback::from_bytes(&mem.read(self.tail));
        if wb.done() {
            return Err(DescError::DoneNotPosted {
                ring: "RX",
                slot: self.tail,
            });
        }
        Ok(())
    }

    /// Checks the device's head register: within the ring, and between the
    /// next slot to complete and the tail.
    pub fn check_head(&self, head: u32) -> Result<(), DescError> {
        let bad = DescError::BadHead {
            ring: "RX",
            head,
            size: self.size,
            next: self.next,
            tail: self.tail,
        };
        let h = u16::try_from(head).map_err(|_| bad.clone())?;
        if h >= self.size || !in_window(h, self.next, self.tail, self.size) {
            return Err(bad);
        }
        Ok(())
    }

    /// Takes back every posted buffer (after the device is stopped).
    pub fn drain(&mut self) -> Vec<u16> {
        let out = self.bufs.iter_mut().filter_map(Option::take).collect();
        self.posted = 0;
        self.next = self.tail;
        out
    }
}

/// What a TX slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxSlot {
    /// A context descriptor (no buffer).
    Context,
    /// A frame's buffer.
    Frame(u16),
}

/// One completed TX descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxCompletion {
    /// What the slot held.
    pub what: TxSlot,
    /// The status byte the device wrote.
    pub status: u8,
}

/// The TX ring's bookkeeping.
#[derive(Debug)]
pub struct TxRing {
    size: u16,
    next: u16,
    tail: u16,
    in_flight: u16,
    slots: Vec<Option<TxSlot>>,
}

impl TxRing {
    /// A ring of `size` descriptors (see [`check_ring_size`]); the memory
    /// must be zeroed.
    pub fn new(size: u16) -> Result<Self, &'static str> {
        check_ring_size(size)?;
        Ok(TxRing {
            size,
            next: 0,
            tail: 0,
            in_flight: 0,
            slots: vec![None; usize::from(size)],
        })
    }

    /// Descriptors in the ring.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The tail to write to TDT.
    pub fn tail(&self) -> u16 {
        self.tail
    }

    /// The next slot the device completes.
    pub fn next(&self) -> u16 {
        self.next
    }

    /// Descriptors the device holds.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Free descriptors (one slot stays empty).
    pub fn free(&self) -> u16 {
        self.size - 1 - self.in_flight
    }

    /// Posts descriptor `d` holding `what`; `false` when the ring is full.
    /// A done bit already on the slot is the device's write to a
    /// descriptor it never owned (see [`RxRing::post`]).
    pub fn post<M: DescMemory>(
        &mut self,
        mem: &mut M,
        d: &[u8; DESC_LEN],
        what: TxSlot,
    ) -> Result<bool, DescError> {
        if self.free() == 0 {
            return Ok(false);
        }
        self.check_unposted(mem)?;
        let slot = self.tail;
        mem.write(slot, d);
        if let Some(s) = self.slots.get_mut(usize::from(slot)) {
            *s = Some(what);
        }
        self.tail = (slot + 1) % self.size;
        self.in_flight += 1;
        Ok(true)
    }

    /// The next completed descriptor, if the device is done with it.
    pub fn next_completion<M: DescMemory>(
        &mut self,
        mem: &mut M,
    ) -> Result<Option<TxCompletion>, DescError> {
        if self.in_flight == 0 {
            self.check_unposted(mem)?;
            return Ok(None);
        }
        let slot = self.next;
        let status = desc::tx_status(&mem.read(slot));
        if status & TXD_STAT_DD == 0 {
            self.check_unposted(mem)?;
            return Ok(None);
        }
        let Some(what) = self.slots.get_mut(usize::from(slot)).and_then(Option::take) else {
            return Err(DescError::DoneNotPosted { ring: "TX", slot });
        };
        mem.write(slot, &[0; DESC_LEN]);
        self.next = (slot + 1) % self.size;
        self.in_flight -= 1;
        Ok(Some(TxCompletion { what, status }))
    }

    fn check_unposted<M: DescMemory>(&self, mem: &M) -> Result<(), DescError> {
        if desc::tx_status(&mem.read(self.tail)) & TXD_STAT_DD != 0 {
            return Err(DescError::DoneNotPosted {
                ring: "TX",
                slot: self.tail,
            });
        }
        Ok(())
    }

    /// Checks the device's head register (see [`RxRing::check_head`]).
    pub fn check_head(&self, head: u32) -> Result<(), DescError> {
        let bad = DescError::BadHead {
            ring: "TX",
            head,
            size: self.size,
            next: self.next,
            tail: self.tail,
        };
        let h = u16::try_from(head).map_err(|_| bad.clone())?;
        if h >= self.size || !in_window(h, self.next, self.tail, self.size) {
            return Err(bad);
        }
        Ok(())
    }

    /// Takes back every buffer in flight (after the device is stopped).
    pub fn drain(&mut self) -> Vec<u16> {
        let out = self
            .slots
            .iter_mut()
            .filter_map(|s| match s.take() {
                Some(TxSlot::Frame(b)) => Some(b),
                _ => None,
            })
            .collect();
        self.in_flight = 0;
        self.next = self.tail;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e1000e::desc::{RxChecksum, RXD_STAT_DD, RXD_STAT_EOP};

    fn done(len: u16) -> [u8; DESC_LEN] {
        RxWriteback {
            mrq: 0,
            hi_dword: 0,
            status_error: RXD_STAT_DD | RXD_STAT_EOP,
            length: len,
            vlan: 0,
        }
        .to_bytes()
    }

    #[test]
    fn rx_in_order_and_full() {
        let mut mem: Vec<[u8; 16]> = vec![[0; 16]; 8];
        let mut r = RxRing::new(8, 2048, 1522).unwrap();
        for b in 0..10 {
            let posted = r.post(&mut mem, b, 0x1000 * u64::from(b)).unwrap();
            assert_eq!(posted, b < 7, "buffer {b}");
        }
        assert_eq!(r.tail(), 7);
        assert!(r.check_head(0).is_ok() && r.check_head(7).is_ok());
        assert!(r.check_head(8).is_err() && r.check_head(0x1_0000).is_err());
        assert_eq!(r.next_completion(&mut mem), Ok(None));
        mem[0] = done(60);
        mem[1] = done(1514);
        let c = r.next_completion(&mut mem).unwrap().unwrap();
        assert_eq!(c.buf, 0);
        assert_eq!(
            c.parsed,
            RxParsed::Frame {
                len: 60,
                csum: RxChecksum::default()
            }
        );
        assert_eq!(mem[0], [0; 16]);
        assert_eq!(r.next_completion(&mut mem).unwrap().unwrap().buf, 1);
        assert_eq!(r.next_completion(&mut mem), Ok(None));
        // Head 1 is now behind `next` (2): outside the window.
        assert!(r.check_head(1).is_err());
        assert!(r.check_head(2).is_ok());
        // Repost two: the ring wraps.
        assert_eq!(r.post(&mut mem, 7, 0x7000), Ok(true));
        assert_eq!(r.post(&mut mem, 8, 0x8000), Ok(true));
        assert_eq!(r.tail(), 1);
        assert_eq!(r.post(&mut mem, 9, 0x9000), Ok(false));
        let mut left = r.drain();
        left.sort_unstable();
        assert_eq!(left, vec![2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn rx_done_on_unposted_slot() {
        let mut mem: Vec<[u8; 16]> = vec![[0; 16]; 8];
        let mut r = RxRing::new(8, 2048, 1522).unwrap();
        mem[0] = done(60);
        assert_eq!(
            r.next_completion(&mut mem),
            Err(DescError::DoneNotPosted {
                ring: "RX",
                slot: 0
            })
        );
        let mut mem: Vec<[u8; 16]> = vec![[0; 16]; 8];
        assert_eq!(r.post(&mut mem, 0, 0x1000), Ok(true));
        mem[1] = done(60);
        assert_eq!(
            r.next_completion(&mut mem),
            Err(DescError::DoneNotPosted {
                ring: "RX",
                slot: 1
            })
        );
    }

    #[test]
    fn done_bit_on_the_slot_being_posted_is_caught() {
        // The device marks the unposted tail slot done, and the driver
        // posts into it before looking for completions: the post itself
        // must notice, or the new descriptor would hide the stray write.
        let mut mem: Vec<[u8; 16]> = vec![[0; 16]; 8];
        let mut r = RxRing::new(8, 2048, 1522).unwrap();
        assert_eq!(r.post(&mut mem, 0, 0x1000), Ok(true));
        mem[1] = done(60);
        assert_eq!(
            r.post(&mut mem, 1, 0x2000),
            Err(DescError::DoneNotPosted {
                ring: "RX",
                slot: 1
            })
        );
        assert_eq!(r.posted(), 1, "nothing posted over the stray write");
        let mut mem: Vec<[u8; 16]> = vec![[0; 16]; 8];
        let mut t = TxRing::new(8).unwrap();
        mem[0][12] = TXD_STAT_DD;
        assert_eq!(
            t.post(&mut mem, &desc::tx_legacy(0x1000, 60), TxSlot::Frame(0)),
            Err(DescError::DoneNotPosted {
                ring: "TX",
                slot: 0
            })
        );
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn tx_completions() {
        let mut mem: Vec<[u8; 16]> = vec![[0; 16]; 8];
        let mut t = TxRing::new(8).unwrap();
        assert_eq!(t.free(), 7);
        assert_eq!(
            t.post(&mut mem, &desc::tx_legacy(0x1000, 60), TxSlot::Frame(3)),
            Ok(true)
        );
        assert_eq!(t.post(&mut mem, &[0; 16], TxSlot::Context), Ok(true));
        assert_eq!(t.next_completion(&mut mem), Ok(None));
        mem[0][12] = TXD_STAT_DD;
        assert_eq!(
            t.next_completion(&mut mem),
            Ok(Some(TxCompletion {
                what: TxSlot::Frame(3),
                status: TXD_STAT_DD
            }))
        );
        assert_eq!(t.next_completion(&mut mem), Ok(None));
        mem[2][12] = TXD_STAT_DD;
        assert_eq!(
            t.next_completion(&mut mem),
            Err(DescError::DoneNotPosted {
                ring: "TX",
                slot: 2
            })
        );
        assert!(t.check_head(1).is_ok() && t.check_head(2).is_ok());
        assert!(t.check_head(3).is_err() && t.check_head(0).is_err());
    }

    #[test]
    fn ring_sizes() {
        assert!(RxRing::new(0, 2048, 1522).is_err());
        assert!(RxRing::new(12, 2048, 1522).is_err());
        assert!(TxRing::new(8192).is_err());
        assert!(TxRing::new(256).is_ok());
    }
}
