//! The reliable-connected (RC) opcodes and the headers each one carries.
//!
//! IBA vol. 1, 9.2 (table 38 "OpCode field"): the top three bits of the
//! opcode select the transport service (`000` is RC), the low five bits the
//! operation. The table below says which extended transport headers follow
//! the BTH for each operation, in wire order (BTH, then RETH or AtomicETH or
//! AETH, then AtomicAckETH, then ImmDt or IETH), whether a payload follows,
//! and where the packet sits in its message (first, middle, last, only).

/// An RC opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)] // The names are the specification's.
pub enum Opcode {
    SendFirst = 0x00,
    SendMiddle = 0x01,
    SendLast = 0x02,
    SendLastWithImmediate = 0x03,
    SendOnly = 0x04,
    SendOnlyWithImmediate = 0x05,
    RdmaWriteFirst = 0x06,
    RdmaWriteMiddle = 0x07,
    RdmaWriteLast = 0x08,
    RdmaWriteLastWithImmediate = 0x09,
    RdmaWriteOnly = 0x0a,
    RdmaWriteOnlyWithImmediate = 0x0b,
    RdmaReadRequest = 0x0c,
    RdmaReadResponseFirst = 0x0d,
    RdmaReadResponseMiddle = 0x0e,
    RdmaReadResponseLast = 0x0f,
    RdmaReadResponseOnly = 0x10,
    Acknowledge = 0x11,
    AtomicAcknowledge = 0x12,
    CompareSwap = 0x13,
    FetchAdd = 0x14,
    SendLastWithInvalidate = 0x16,
    SendOnlyWithInvalidate = 0x17,
}

/// Where a packet sits in its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Position {
    /// The first packet of a multi-packet message.
    First,
    /// A packet between the first and the last.
    Middle,
    /// The last packet of a multi-packet message.
    Last,
    /// The only packet of a message.
    Only,
}

impl Position {
    /// Whether this packet ends its message (last or only).
    pub const fn ends_message(self) -> bool {
        matches!(self, Position::Last | Position::Only)
    }

    /// Whether this packet starts its message (first or only).
    pub const fn starts_message(self) -> bool {
        matches!(self, Position::First | Position::Only)
    }
}

/// The operation an opcode belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// SEND (with immediate, with invalidate).
    Send,
    /// RDMA WRITE (with immediate).
    RdmaWrite,
    /// RDMA READ request.
    RdmaReadRequest,
    /// RDMA READ response.
    RdmaReadResponse,
    /// Acknowledge (ACK, RNR NAK, NAK).
    Acknowledge,
    /// Atomic acknowledge.
    AtomicAcknowledge,
    /// Compare-and-swap or fetch-and-add.
    Atomic,
}

/// Which headers follow the BTH, and what else an opcode implies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The operation.
    pub operation: Operation,
    /// Where the packet sits in its message.
    pub position: Position,
    /// An RDMA extended transport header (16 bytes).
    pub reth: bool,
    /// An atomic extended transport header (28 bytes).
    pub atomic_eth: bool,
    /// An ACK extended transport header (4 bytes).
    pub aeth: bool,
    /// An atomic-acknowledge extended transport header (8 bytes).
    pub atomic_ack_eth: bool,
    /// Immediate data (4 bytes).
    pub imm: bool,
    /// An invalidate extended transport header (4 bytes).
    pub ieth: bool,
    /// A payload may follow the headers.
    pub payload: bool,
}

impl Layout {
    /// The length of the extended headers after the BTH, in bytes.
    pub const fn ext_len(&self) -> usize {
        (if self.reth { RETH_LEN } else { 0 })
            + (if self.atomic_eth { ATOMIC_ETH_LEN } else { 0 })
            + (if self.aeth { AETH_LEN } else { 0 })
            + (if self.atomic_ack_eth {
                ATOMIC_ACK_ETH_LEN
            } else {
                0
            })
            + (if self.imm { IMM_LEN } else { 0 })
            + (if self.ieth { IETH_LEN } else { 0 })
    }

    /// Whether the packet is a request (sent by the requester) rather than
    /// a response (sent by the responder).
    pub const fn is_request(&self) -> bool {
        !matches!(
            self.operation,
            Operation::RdmaReadResponse | Operation::Acknowledge | Operation::AtomicAcknowledge
        )
    }
}

/// Base transport header length.
pub const BTH_LEN: usize = 12;
/// RDMA extended transport header length.
pub const RETH_LEN: usize = 16;
/// Atomic extended transport header length.
pub const ATOMIC_ETH_LEN: usize = 28;
/// ACK extended transport header length.
pub const AETH_LEN: usize = 4;
/// Atomic-acknowledge extended transport header length.
pub const ATOMIC_ACK_ETH_LEN: usize = 8;
/// Immediate data length.
pub const IMM_LEN: usize = 4;
/// Invalidate extended transport header length.
pub const IETH_LEN: usize = 4;

const fn layout(operation: Operation, position: Position) -> Layout {
    Layout {
        operation,
        position,
        reth: false,
        atomic_eth: false,
        aeth: false,
        atomic_ack_eth: false,
        imm: false,
        ieth: false,
        payload: false,
    }
}

impl Opcode {
    /// Every RC opcode, in numeric order.
    pub const ALL: [Opcode; 23] = [
        Opcode::SendFirst,
        Opcode::SendMiddle,
        Opcode::SendLast,
        Opcode::SendLastWithImmediate,
        Opcode::SendOnly,
        Opcode::SendOnlyWithImmediate,
        Opcode::RdmaWriteFirst,
        Opcode::RdmaWriteMiddle,
        Opcode::RdmaWriteLast,
        Opcode::RdmaWriteLastWithImmediate,
        Opcode::RdmaWriteOnly,
        Opcode::RdmaWriteOnlyWithImmediate,
        Opcode::RdmaReadRequest,
        Opcode::RdmaReadResponseFirst,
        Opcode::RdmaReadResponseMiddle,
        Opcode::RdmaReadResponseLast,
        Opcode::RdmaReadResponseOnly,
        Opcode::Acknowledge,
        Opcode::AtomicAcknowledge,
        Opcode::CompareSwap,
        Opcode::FetchAdd,
        Opcode::SendLastWithInvalidate,
        Opcode::SendOnlyWithInvalidate,
    ];

    /// The RC opcode with this value; `None` for other transport services
    /// (UC, RD, UD, CNP, ...) and reserved values.
    pub const fn from_u8(value: u8) -> Option<Opcode> {
        let mut i = 0;
        while i < Opcode::ALL.len() {
            if Opcode::ALL[i] as u8 == value {
                return Some(Opcode::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// The headers and payload this opcode carries.
    pub const fn layout(self) -> Layout {
        use Operation as O;
        use Position as P;
        match self {
            Opcode::SendFirst => Layout {
                payload: true,
                ..layout(O::Send, P::First)
            },
            Opcode::SendMiddle => Layout {
                payload: true,
                ..layout(O::Send, P::Middle)
            },
            Opcode::SendLast => Layout {
                payload: true,
                ..layout(O::Send, P::Last)
            },
            Opcode::SendLastWithImmediate => Layout {
                payload: true,
                imm: true,
                ..layout(O::Send, P::Last)
            },
            Opcode::SendOnly => Layout {
                payload: true,
                ..layout(O::Send, P::Only)
            },
            Opcode::SendOnlyWithImmediate => Layout {
                payload: true,
                imm: true,
                ..layout(O::Send, P::Only)
            },
            Opcode::SendLastWithInvalidate => Layout {
                payload: true,
                ieth: true,
                ..layout(O::Send, P::Last)
            },
            Opcode::SendOnlyWithInvalidate => Layout {
                payload: true,
                ieth: true,
                ..layout(O::Send, P::Only)
            },
            Opcode::RdmaWriteFirst => Layout {
                payload: true,
                reth: true,
                ..layout(O::RdmaWrite, P::First)
            },
            Opcode::RdmaWriteMiddle => Layout {
                payload: true,
                ..layout(O::RdmaWrite, P::Middle)
            },
            Opcode::RdmaWriteLast => Layout {
                payload: true,
                ..layout(O::RdmaWrite, P::Last)
            },
            Opcode::RdmaWriteLastWithImmediate => Layout {
                payload: true,
                imm: true,
                ..layout(O::RdmaWrite, P::Last)
            },
            Opcode::RdmaWriteOnly => Layout {
                payload: true,
                reth: true,
                ..layout(O::RdmaWrite, P::Only)
            },
            Opcode::RdmaWriteOnlyWithImmediate => Layout {
                payload: true,
                reth: true,
                imm: true,
                ..layout(O::RdmaWrite, P::Only)
            },
            Opcode::RdmaReadRequest => Layout {
                reth: true,
                ..layout(O::RdmaReadRequest, P::Only)
            },
            Opcode::RdmaReadResponseFirst => Layout {
                payload: true,
                aeth: true,
                ..layout(O::RdmaReadResponse, P::First)
            },
            Opcode::RdmaReadResponseMiddle => Layout {
                payload: true,
                ..layout(O::RdmaReadResponse, P::Middle)
            },
            Opcode::RdmaReadResponseLast => Layout {
                payload: true,
                aeth: true,
                ..layout(O::RdmaReadResponse, P::Last)
            },
            Opcode::RdmaReadResponseOnly => Layout {
                payload: true,
                aeth: true,
                ..layout(O::RdmaReadResponse, P::Only)
            },
            Opcode::Acknowledge => Layout {
                aeth: true,
                ..layout(O::Acknowledge, P::Only)
            },
            Opcode::AtomicAcknowledge => Layout {
                aeth: true,
                atomic_ack_eth: true,
                ..layout(O::AtomicAcknowledge, P::Only)
            },
            Opcode::CompareSwap | Opcode::FetchAdd => Layout {
                atomic_eth: true,
                ..layout(O::Atomic, P::Only)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_u8_round_trips_and_rejects_the_rest() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_u8(op as u8), Some(op));
        }
        for v in 0..=255u8 {
            let rc = v < 0x18 && v != 0x15;
            assert_eq!(Opcode::from_u8(v).is_some(), rc, "{v:#x}");
        }
    }

    /// Extended header lengths, as the specification's per-opcode header
    /// list gives them (BTH excluded).
    #[test]
    fn header_lengths_match_the_specification() {
        let expect = [
            (Opcode::SendFirst, 0),
            (Opcode::SendLastWithImmediate, 4),
            (Opcode::SendOnlyWithInvalidate, 4),
            (Opcode::RdmaWriteFirst, 16),
            (Opcode::RdmaWriteMiddle, 0),
            (Opcode::RdmaWriteOnlyWithImmediate, 20),
            (Opcode::RdmaReadRequest, 16),
            (Opcode::RdmaReadResponseMiddle, 0),
            (Opcode::RdmaReadResponseOnly, 4),
            (Opcode::Acknowledge, 4),
            (Opcode::AtomicAcknowledge, 12),
            (Opcode::CompareSwap, 28),
            (Opcode::FetchAdd, 28),
        ];
        for (op, len) in expect {
            assert_eq!(op.layout().ext_len(), len, "{op:?}");
        }
    }

    #[test]
    fn requests_and_responses() {
        for op in Opcode::ALL {
            let l = op.layout();
            let response = matches!(
                op,
                Opcode::Acknowledge
                    | Opcode::AtomicAcknowledge
                    | Opcode::RdmaReadResponseFirst
                    | Opcode::RdmaReadResponseMiddle
                    | Opcode::RdmaReadResponseLast
                    | Opcode::RdmaReadResponseOnly
            );
            assert_eq!(l.is_request(), !response, "{op:?}");
            // Headers that carry a payload never come with atomics or ACKs.
            assert!(!(l.payload && (l.atomic_eth || l.atomic_ack_eth)));
        }
    }
}
