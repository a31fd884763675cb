//! The hosted netback's TX packet parser (Linux 6.1's checks) on arbitrary
//! ring slots written by a hostile frontend. Never panics; never reads
//! more slots than were queued; every slot read is consumed exactly once;
//! a packet it forwards is one Linux's netback forwards: 1 to 19 request
//! slots, each inside its page, a first slot of at least 14 bytes, slot
//! sizes adding up to the announced length, valid extras, a valid GSO
//! extra if any.
#![no_main]

use arbitrary::Arbitrary;
use hosted::netback::tx::{parse_packet, TxPacket, TxVerdict};
use libfuzzer_sys::fuzz_target;
use netfront::abi::{TxSlotBytes, ETH_HLEN, PAGE_SIZE, XEN_NETIF_EXTRA_TYPE_MAX};

#[derive(Arbitrary, Debug)]
struct Input {
    fatal_skb_slots: u8,
    /// Slots as the frontend wrote them.
    slots: Vec<[u8; 12]>,
    /// How many of them are published at each packet's start (as an extra
    /// amount on top of what is left, so it can claim less than written).
    published: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let slots: Vec<TxSlotBytes> = input.slots.iter().map(|b| TxSlotBytes(*b)).collect();
    let mut at = 0usize;
    let mut pkt = TxPacket::default();
    let mut round = 0usize;
    while at < slots.len() {
        let left = slots.len() - at;
        let work = match input.published.get(round) {
            Some(&p) => (usize::from(p) % left) + 1,
            None => left,
        };
        round += 1;
        let mut read = 0usize;
        let mut next = || {
            if read >= work {
                panic!("read past the queued slots");
            }
            let s = slots.get(at + read).copied();
            read += 1;
            s
        };
        let fatal = u32::from(input.fatal_skb_slots);
        let r = parse_packet(work as u32, fatal, &mut next, &mut pkt);
        assert!(read <= work);
        match r {
            Err(_) => break,
            Ok(v) => {
                assert_eq!(pkt.slots() as usize, read, "slots read and described differ");
                match v {
                    TxVerdict::Forward => {
                        assert!(!pkt.requests.is_empty() && pkt.requests.len() <= 19);
                        assert!(usize::from(pkt.first_size) >= ETH_HLEN);
                        let mut sum = 0usize;
                        for (i, (_, off, len)) in pkt.chunks().enumerate() {
                            assert!(usize::from(off) + usize::from(len) <= PAGE_SIZE, "slot {i} crosses its page");
                            sum += usize::from(len);
                        }
                        assert_eq!(sum, usize::from(pkt.total));
                        for (i, e) in pkt.extras.iter().enumerate() {
                            if let Some(e) = e {
                                assert_eq!(usize::from(e.type_), i + 1);
                                assert!(e.type_ < XEN_NETIF_EXTRA_TYPE_MAX);
                            }
                        }
                        if let Some(g) = pkt.gso() {
                            assert!(g.mss > 0);
                        }
                    }
                    TxVerdict::Reject(_) | TxVerdict::Mcast { .. } => {
                        assert!(!pkt.requests.is_empty());
                    }
                }
                at += read;
            }
        }
    }
});
