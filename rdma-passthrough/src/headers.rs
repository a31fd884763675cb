//! The InfiniBand transport headers RoCE v2 carries, each with a fixed-size
//! encoder and a decoder that validates what the specification constrains
//! (IBA vol. 1, 9.2 to 9.5).
//!
//! All multi-byte fields are big-endian. Reserved fields are written as
//! zero and ignored on receive, as the specification asks (they are still
//! covered by the ICRC).

use crate::opcode::{
    Opcode, AETH_LEN, ATOMIC_ACK_ETH_LEN, ATOMIC_ETH_LEN, BTH_LEN, IETH_LEN, IMM_LEN, RETH_LEN,
};
use crate::packet::ParseError;
use crate::psn::Psn;

/// The largest queue pair number (24 bits).
pub const QPN_MASK: u32 = 0x00ff_ffff;
/// The transport header version this implementation speaks (the only one).
pub const TVER: u8 = 0;

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

/// The base transport header (12 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bth {
    /// The opcode.
    pub opcode: Opcode,
    /// Solicited event: the responder's completion should raise an event.
    pub solicited: bool,
    /// Migration request (automatic path migration; always false here).
    pub mig_req: bool,
    /// Pad count: bytes (0..=3) added after the payload to reach a
    /// multiple of four.
    pub pad: u8,
    /// Partition key.
    pub pkey: u16,
    /// Forward explicit congestion notification.
    pub fecn: bool,
    /// Backward explicit congestion notification.
    pub becn: bool,
    /// Destination queue pair number (24 bits).
    pub dest_qp: u32,
    /// Acknowledge request.
    pub ack_req: bool,
    /// Packet sequence number.
    pub psn: Psn,
}

impl Bth {
    /// The BTH bytes. `dest_qp` is masked to 24 bits and `pad` to 2 bits;
    /// the packet builder checks both before it gets here.
    pub fn encode(&self) -> [u8; BTH_LEN] {
        let mut b = [0u8; BTH_LEN];
        b[0] = self.opcode as u8;
        b[1] = (u8::from(self.solicited) << 7)
            | (u8::from(self.mig_req) << 6)
            | ((self.pad & 3) << 4)
            | TVER;
        b[2..4].copy_from_slice(&self.pkey.to_be_bytes());
        let qpn =
            (u32::from(self.fecn) << 31) | (u32::from(self.becn) << 30) | (self.dest_qp & QPN_MASK);
        b[4..8].copy_from_slice(&qpn.to_be_bytes());
        let psn = (u32::from(self.ack_req) << 31) | self.psn.value();
        b[8..12].copy_from_slice(&psn.to_be_bytes());
        b
    }

    /// Decodes a BTH: the opcode must be an RC opcode and the transport
    /// version 0.
    pub fn decode(b: &[u8; BTH_LEN]) -> Result<Bth, ParseError> {
        let opcode = Opcode::from_u8(b[0]).ok_or(ParseError::UnsupportedOpcode(b[0]))?;
        let tver = b[1] & 0x0f;
        if tver != TVER {
            return Err(ParseError::UnsupportedTransportVersion(tver));
        }
        let qpn = be32(b, 4);
        let psn = be32(b, 8);
        Ok(Bth {
            opcode,
            solicited: b[1] & 0x80 != 0,
            mig_req: b[1] & 0x40 != 0,
            pad: (b[1] >> 4) & 3,
            pkey: u16::from_be_bytes([b[2], b[3]]),
            fecn: qpn & (1 << 31) != 0,
            becn: qpn & (1 << 30) != 0,
            dest_qp: qpn & QPN_MASK,
            ack_req: psn & (1 << 31) != 0,
            psn: Psn::from_masked(psn),
        })
    }
}

/// The RDMA extended transport header (16 bytes): the remote buffer of an
/// RDMA WRITE or READ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reth {
    /// Remote virtual address.
    pub va: u64,
    /// Remote key of the memory region.
    pub rkey: u32,
    /// Length of the whole transfer in bytes.
    pub dma_len: u32,
}

impl Reth {
    /// The RETH bytes.
    pub fn encode(&self) -> [u8; RETH_LEN] {
        let mut b = [0u8; RETH_LEN];
        b[0..8].copy_from_slice(&self.va.to_be_bytes());
        b[8..12].copy_from_slice(&self.rkey.to_be_bytes());
        b[12..16].copy_from_slice(&self.dma_len.to_be_bytes());
        b
    }

    /// Decodes a RETH (every value is well-formed).
    pub fn decode(b: &[u8; RETH_LEN]) -> Reth {
        Reth {
            va: be64(b, 0),
            rkey: be32(b, 8),
            dma_len: be32(b, 12),
        }
    }
}

/// A NAK code (AETH syndrome `011xxxxx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NakCode {
    /// PSN sequence error: a request arrived ahead of the expected PSN.
    PsnSequenceError = 0,
    /// Invalid request (unsupported opcode, bad length, ...).
    InvalidRequest = 1,
    /// Remote access error (bad R_Key, out of bounds, no permission).
    RemoteAccessError = 2,
    /// Remote operational error.
    RemoteOperationalError = 3,
    /// Invalid RD request (reliable datagram only).
    InvalidRdRequest = 4,
}

/// The credit count that means "no credit information" (end-to-end flow
/// control not in use).
pub const CREDITS_INVALID: u8 = 0x1f;

/// What an AETH says: the syndrome byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Syndrome {
    /// Positive acknowledgement with the responder's credit count (5-bit
    /// encoded; [`CREDITS_INVALID`] for none).
    Ack {
        /// Encoded credit count (0..=31).
        credits: u8,
    },
    /// Receiver not ready: retry after the encoded timer (0..=31).
    RnrNak {
        /// Encoded RNR timer (IBA table 45).
        timer: u8,
    },
    /// Negative acknowledgement.
    Nak(NakCode),
}

impl Syndrome {
    /// The syndrome byte. Credit counts and timers are masked to 5 bits.
    pub fn encode(self) -> u8 {
        match self {
            Syndrome::Ack { credits } => credits & 0x1f,
            Syndrome::RnrNak { timer } => 0x20 | (timer & 0x1f),
            Syndrome::Nak(code) => 0x60 | code as u8,
        }
    }

    /// Decodes a syndrome byte; the reserved top bit, the reserved type
    /// `10` and reserved NAK codes are errors.
    pub fn decode(b: u8) -> Result<Syndrome, ParseError> {
        if b & 0x80 != 0 {
            return Err(ParseError::BadSyndrome(b));
        }
        let low = b & 0x1f;
        match (b >> 5) & 3 {
            0 => Ok(Syndrome::Ack { credits: low }),
            1 => Ok(Syndrome::RnrNak { timer: low }),
            3 => Ok(Syndrome::Nak(match low {
                0 => NakCode::PsnSequenceError,
                1 => NakCode::InvalidRequest,
                2 => NakCode::RemoteAccessError,
                3 => NakCode::RemoteOperationalError,
                4 => NakCode::InvalidRdRequest,
                _ => return Err(ParseError::BadSyndrome(b)),
            })),
            _ => Err(ParseError::BadSyndrome(b)),
        }
    }
}

/// The ACK extended transport header (4 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aeth {
    /// ACK, RNR NAK or NAK.
    pub syndrome: Syndrome,
    /// Message sequence number: messages the responder has completed
    /// (24 bits).
    pub msn: u32,
}

impl Aeth {
    /// The AETH bytes (`msn` masked to 24 bits).
    pub fn encode(&self) -> [u8; AETH_LEN] {
        let w = (u32::from(self.syndrome.encode()) << 24) | (self.msn & 0x00ff_ffff);
        w.to_be_bytes()
    }

    /// Decodes an AETH.
    pub fn decode(b: &[u8; AETH_LEN]) -> Result<Aeth, ParseError> {
        let w = u32::from_be_bytes(*b);
        Ok(Aeth {
            syndrome: Syndrome::decode(b[0])?,
            msn: w & 0x00ff_ffff,
        })
    }
}

/// The atomic extended transport header (28 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtomicEth {
    /// Remote virtual address (8-byte aligned, checked by the responder).
    pub va: u64,
    /// Remote key.
    pub rkey: u32,
    /// Swap value (compare-and-swap) or addend (fetch-and-add).
    pub swap_add: u64,
    /// Compare value (compare-and-swap).
    pub compare: u64,
}

impl AtomicEth {
    /// The AtomicETH bytes.
    pub fn encode(&self) -> [u8; ATOMIC_ETH_LEN] {
        let mut b = [0u8; ATOMIC_ETH_LEN];
        b[0..8].copy_from_slice(&self.va.to_be_bytes());
        b[8..12].copy_from_slice(&self.rkey.to_be_bytes());
        b[12..20].copy_from_slice(&self.swap_add.to_be_bytes());
        b[20..28].copy_from_slice(&self.compare.to_be_bytes());
        b
    }

    /// Decodes an AtomicETH.
    pub fn decode(b: &[u8; ATOMIC_ETH_LEN]) -> AtomicEth {
        AtomicEth {
            va: be64(b, 0),
            rkey: be32(b, 8),
            swap_add: be64(b, 12),
            compare: be64(b, 20),
        }
    }
}

/// The atomic-acknowledge extended transport header (8 bytes): the value
/// the remote location held before the atomic operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtomicAckEth {
    /// The original remote data.
    pub orig: u64,
}

impl AtomicAckEth {
    /// The AtomicAckETH bytes.
    pub fn encode(&self) -> [u8; ATOMIC_ACK_ETH_LEN] {
        self.orig.to_be_bytes()
    }

    /// Decodes an AtomicAckETH.
    pub fn decode(b: &[u8; ATOMIC_ACK_ETH_LEN]) -> AtomicAckEth {
        AtomicAckEth {
            orig: u64::from_be_bytes(*b),
        }
    }
}

/// Immediate data (4 bytes), delivered to the receiver's completion as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImmDt(pub [u8; IMM_LEN]);

/// The invalidate extended transport header (4 bytes): the R_Key a SEND
/// with invalidate asks the responder to invalidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ieth {
    /// The R_Key to invalidate.
    pub rkey: u32,
}

impl Ieth {
    /// The IETH bytes.
    pub fn encode(&self) -> [u8; IETH_LEN] {
        self.rkey.to_be_bytes()
    }

    /// Decodes an IETH.
    pub fn decode(b: &[u8; IETH_LEN]) -> Ieth {
        Ieth {
            rkey: u32::from_be_bytes(*b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bth_exact_bytes() {
        let bth = Bth {
            opcode: Opcode::RdmaWriteOnlyWithImmediate,
            solicited: true,
            mig_req: false,
            pad: 3,
            pkey: 0xffff,
            fecn: false,
            becn: true,
            dest_qp: 0x12_3456,
            ack_req: true,
            psn: Psn::from_masked(0xab_cdef),
        };
        let b = bth.encode();
        assert_eq!(
            b,
            [0x0b, 0xb0, 0xff, 0xff, 0x40, 0x12, 0x34, 0x56, 0x80, 0xab, 0xcd, 0xef]
        );
        assert_eq!(Bth::decode(&b), Ok(bth));
    }

    #[test]
    fn bth_rejects_other_services_and_versions() {
        let mut b = [0u8; BTH_LEN];
        b[0] = 0x24; // UC SEND only
        assert_eq!(Bth::decode(&b), Err(ParseError::UnsupportedOpcode(0x24)));
        b[0] = 0x15; // reserved RC value
        assert_eq!(Bth::decode(&b), Err(ParseError::UnsupportedOpcode(0x15)));
        b[0] = 0x04;
        b[1] = 0x01;
        assert_eq!(
            Bth::decode(&b),
            Err(ParseError::UnsupportedTransportVersion(1))
        );
    }

    #[test]
    fn bth_ignores_reserved_bits() {
        let mut b = [0u8; BTH_LEN];
        b[0] = 0x04;
        b[4] = 0x3f; // resv6a
        b[8] = 0x7f; // resv7
        let bth = Bth::decode(&b).unwrap();
        assert_eq!(
            (bth.dest_qp, bth.psn, bth.ack_req, bth.fecn, bth.becn),
            (0, Psn::ZERO, false, false, false)
        );
    }

    #[test]
    fn syndromes() {
        let cases = [
            (0x00, Some(Syndrome::Ack { credits: 0 })),
            (
                0x1f,
                Some(Syndrome::Ack {
                    credits: CREDITS_INVALID,
                }),
            ),
            (0x2e, Some(Syndrome::RnrNak { timer: 14 })),
            (0x60, Some(Syndrome::Nak(NakCode::PsnSequenceError))),
            (0x61, Some(Syndrome::Nak(NakCode::InvalidRequest))),
            (0x62, Some(Syndrome::Nak(NakCode::RemoteAccessError))),
            (0x63, Some(Syndrome::Nak(NakCode::RemoteOperationalError))),
            (0x64, Some(Syndrome::Nak(NakCode::InvalidRdRequest))),
            (0x65, None),
            (0x7f, None),
            (0x40, None),
            (0x80, None),
        ];
        for (byte, want) in cases {
            let got = Syndrome::decode(byte).ok();
            assert_eq!(got, want, "{byte:#x}");
            if let Some(s) = got {
                assert_eq!(s.encode(), byte);
            }
        }
    }

    #[test]
    fn extended_headers_exact_bytes() {
        let reth = Reth {
            va: 0x0102_0304_0506_0708,
            rkey: 0x1122_3344,
            dma_len: 0x1000,
        };
        assert_eq!(
            reth.encode(),
            [1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x22, 0x33, 0x44, 0, 0, 0x10, 0]
        );
        assert_eq!(Reth::decode(&reth.encode()), reth);

        let aeth = Aeth {
            syndrome: Syndrome::Nak(NakCode::RemoteAccessError),
            msn: 0x01_0203,
        };
        assert_eq!(aeth.encode(), [0x62, 1, 2, 3]);
        assert_eq!(Aeth::decode(&aeth.encode()), Ok(aeth));

        let at = AtomicEth {
            va: 8,
            rkey: 9,
            swap_add: 0x0a0b,
            compare: 0xffff_0000_0000_0001,
        };
        let b = at.encode();
        assert_eq!(&b[0..12], &[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 9]);
        assert_eq!(&b[12..20], &[0, 0, 0, 0, 0, 0, 0x0a, 0x0b]);
        assert_eq!(&b[20..28], &[0xff, 0xff, 0, 0, 0, 0, 0, 1]);
        assert_eq!(AtomicEth::decode(&b), at);

        let ack = AtomicAckEth {
            orig: 0x8000_0000_0000_0042,
        };
        assert_eq!(ack.encode(), [0x80, 0, 0, 0, 0, 0, 0, 0x42]);
        assert_eq!(AtomicAckEth::decode(&ack.encode()), ack);

        assert_eq!(
            Ieth { rkey: 0xdead_beef }.encode(),
            [0xde, 0xad, 0xbe, 0xef]
        );
    }
}
