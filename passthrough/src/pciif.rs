//! The `io/pciif.h` protocol: the shared page, the operation, and the
//! checks on the backend's answer.
//!
//! One page (`struct xen_pci_sharedinfo`) is granted to the backend:
//!
//! | offset | field |
//! |---|---|
//! | 0 | `flags`: `XEN_PCIF_active` (bit 0, set by the frontend while an op is outstanding, cleared by the backend when done), `XEN_PCIB_AERHANDLER` (bit 1), `XEN_PCIB_active` (bit 2, an AER op from the backend) |
//! | 4 | `op`: a `struct xen_pci_op` of [`OP_SIZE`] bytes |
//! | 552 | `aer_op`: a `struct xen_pcie_aer_op` of 20 bytes |
//!
//! One operation is outstanding at a time. The frontend writes the op, sets
//! `XEN_PCIF_active`, notifies the event channel and waits for the backend
//! to clear the bit; then it copies the op back once and checks it
//! ([`check_reply`]). The backend is not trusted: every field of its answer
//! is validated, and a violation breaks the device.
//!
//! AER (the backend asking the frontend to run error recovery) is not
//! supported: this frontend never sets `XEN_PCIB_AERHANDLER`, so pciback
//! sends it no AER operations.

use alloc::vec::Vec;

use crate::config::ConfigReg;
use crate::{BackendErr, Bdf, PciError};

/// `XEN_PCI_MAGIC`: the protocol version written to the `magic` key.
pub const XEN_PCI_MAGIC: &str = "7";

/// `flags` bit: an op is outstanding (`_XEN_PCIF_active`).
pub const XEN_PCIF_ACTIVE: u32 = 1 << 0;
/// `flags` bit: the frontend handles AER (`_XEN_PCIB_AERHANDLER`).
pub const XEN_PCIB_AERHANDLER: u32 = 1 << 1;
/// `flags` bit: the backend has an AER op outstanding (`_XEN_PCIB_active`).
pub const XEN_PCIB_ACTIVE: u32 = 1 << 2;

/// `XEN_PCI_OP_conf_read`.
pub const OP_CONF_READ: u32 = 0;
/// `XEN_PCI_OP_conf_write`.
pub const OP_CONF_WRITE: u32 = 1;
/// `XEN_PCI_OP_enable_msi`.
pub const OP_ENABLE_MSI: u32 = 2;
/// `XEN_PCI_OP_disable_msi`.
pub const OP_DISABLE_MSI: u32 = 3;
/// `XEN_PCI_OP_enable_msix`.
pub const OP_ENABLE_MSIX: u32 = 4;
/// `XEN_PCI_OP_disable_msix`.
pub const OP_DISABLE_MSIX: u32 = 5;

/// `SH_INFO_MAX_VEC`: MSI-X entries one op carries.
pub const MAX_MSIX_ENTRIES: usize = 128;

/// Offset of `flags` in the shared page.
pub const FLAGS_OFFSET: usize = 0;
/// Offset of `op` in the shared page.
pub const OP_OFFSET: usize = 4;
/// Size of `struct xen_pci_op`: nine 32-bit fields and 128 four-byte
/// MSI-X entries.
pub const OP_SIZE: usize = 9 * 4 + MAX_MSIX_ENTRIES * 4;
/// Offset of `aer_op` in the shared page.
pub const AER_OP_OFFSET: usize = OP_OFFSET + OP_SIZE;
/// Size of `struct xen_pcie_aer_op`.
pub const AER_OP_SIZE: usize = 5 * 4;
/// Size of `struct xen_pci_sharedinfo`.
pub const SHARED_INFO_SIZE: usize = AER_OP_OFFSET + AER_OP_SIZE;

/// Offsets of the fields inside `struct xen_pci_op`.
pub mod op_field {
    /// `cmd`.
    pub const CMD: usize = 0;
    /// `err`.
    pub const ERR: usize = 4;
    /// `domain`.
    pub const DOMAIN: usize = 8;
    /// `bus`.
    pub const BUS: usize = 12;
    /// `devfn`.
    pub const DEVFN: usize = 16;
    /// `offset`.
    pub const OFFSET: usize = 20;
    /// `size`.
    pub const SIZE: usize = 24;
    /// `value`.
    pub const VALUE: usize = 28;
    /// `info`.
    pub const INFO: usize = 32;
    /// `msix_entries[0]` (`vector` then `entry`, u16 each).
    pub const MSIX_ENTRIES: usize = 36;
}

/// A physical IRQ number as Xen names it: what pciback returns for an
/// enabled MSI or MSI-X vector. The platform binds it to an event channel
/// (`EVTCHNOP_bind_pirq`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pirq(pub u32);

/// One `struct xen_msix_entry`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MsixEntry {
    /// IN: 0; OUT: the pirq.
    pub vector: u16,
    /// The MSI-X table entry.
    pub entry: u16,
}

/// A `struct xen_pci_op`, decoded field by field (little-endian).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenPciOp {
    /// `XEN_PCI_OP_*`.
    pub cmd: u32,
    /// OUT: 0 or an error code.
    pub err: i32,
    /// PCI segment.
    pub domain: u32,
    /// Bus.
    pub bus: u32,
    /// Device and function.
    pub devfn: u32,
    /// Configuration offset.
    pub offset: i32,
    /// Access size in bytes.
    pub size: i32,
    /// IN/OUT: the value read or to write; MSI: the pirq; MSI-X: the
    /// number of entries in, the result out.
    pub value: u32,
    /// IN: extra information (MSI: vectors wanted).
    pub info: u32,
    /// MSI-X entries.
    pub msix: [MsixEntry; MAX_MSIX_ENTRIES],
}

fn le32(b: &[u8; OP_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl XenPciOp {
    /// An op for `cmd` on `bdf`, every other field zero.
    pub fn new(cmd: u32, bdf: Bdf) -> XenPciOp {
        XenPciOp {
            cmd,
            err: 0,
            domain: u32::from(bdf.segment()),
            bus: u32::from(bdf.bus()),
            devfn: u32::from(bdf.devfn()),
            offset: 0,
            size: 0,
            value: 0,
            info: 0,
            msix: [MsixEntry::default(); MAX_MSIX_ENTRIES],
        }
    }

    /// The wire form.
    pub fn encode(&self) -> [u8; OP_SIZE] {
        let mut b = [0u8; OP_SIZE];
        let words = [
            self.cmd,
            self.err as u32,
            self.domain,
            self.bus,
            self.devfn,
            self.offset as u32,
            self.size as u32,
            self.value,
            self.info,
        ];
        for (i, w) in words.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        for (i, e) in self.msix.iter().enumerate() {
            let at = op_field::MSIX_ENTRIES + i * 4;
            b[at..at + 2].copy_from_slice(&e.vector.to_le_bytes());
            b[at + 2..at + 4].copy_from_slice(&e.entry.to_le_bytes());
        }
        b
    }

    /// Decodes the wire form (any bytes decode; [`check_reply`] judges
    /// them).
    pub fn decode(b: &[u8; OP_SIZE]) -> XenPciOp {
        let mut msix = [MsixEntry::default(); MAX_MSIX_ENTRIES];
        for (i, e) in msix.iter_mut().enumerate() {
            let at = op_field::MSIX_ENTRIES + i * 4;
            e.vector = u16::from_le_bytes([b[at], b[at + 1]]);
            e.entry = u16::from_le_bytes([b[at + 2], b[at + 3]]);
        }
        XenPciOp {
            cmd: le32(b, op_field::CMD),
            err: le32(b, op_field::ERR) as i32,
            domain: le32(b, op_field::DOMAIN),
            bus: le32(b, op_field::BUS),
            devfn: le32(b, op_field::DEVFN),
            offset: le32(b, op_field::OFFSET) as i32,
            size: le32(b, op_field::SIZE) as i32,
            value: le32(b, op_field::VALUE),
            info: le32(b, op_field::INFO),
            msix,
        }
    }
}

/// An operation pcifront asks of the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpRequest {
    /// Read a configuration register.
    ConfRead {
        /// The device.
        bdf: Bdf,
        /// The register.
        reg: ConfigReg,
    },
    /// Write a configuration register.
    ConfWrite {
        /// The device.
        bdf: Bdf,
        /// The register.
        reg: ConfigReg,
        /// The value (its low `reg.width()` bytes).
        value: u32,
    },
    /// Enable MSI with one vector.
    EnableMsi {
        /// The device.
        bdf: Bdf,
    },
    /// Disable MSI.
    DisableMsi {
        /// The device.
        bdf: Bdf,
    },
    /// Enable MSI-X for these table entries.
    EnableMsix {
        /// The device.
        bdf: Bdf,
        /// Table entries: 1 to [`MAX_MSIX_ENTRIES`], distinct, each below
        /// 2048.
        entries: Vec<u16>,
    },
    /// Disable MSI-X.
    DisableMsix {
        /// The device.
        bdf: Bdf,
    },
}

/// What the backend answered, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpReply {
    /// A configuration read's value (only the width's bits can be set).
    Value(u32),
    /// Done (writes, disables).
    Done,
    /// MSI enabled: its pirq.
    Pirq(Pirq),
    /// MSI-X enabled: one pirq per requested entry, in request order.
    Pirqs(Vec<Pirq>),
}

/// Largest MSI-X table (entries).
pub const MAX_MSIX_TABLE: u16 = 2048;

impl OpRequest {
    /// The operation's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            OpRequest::ConfRead { .. } => "conf_read",
            OpRequest::ConfWrite { .. } => "conf_write",
            OpRequest::EnableMsi { .. } => "enable_msi",
            OpRequest::DisableMsi { .. } => "disable_msi",
            OpRequest::EnableMsix { .. } => "enable_msix",
            OpRequest::DisableMsix { .. } => "disable_msix",
        }
    }

    /// The device.
    pub fn bdf(&self) -> Bdf {
        match self {
            OpRequest::ConfRead { bdf, .. }
            | OpRequest::ConfWrite { bdf, .. }
            | OpRequest::EnableMsi { bdf }
            | OpRequest::DisableMsi { bdf }
            | OpRequest::EnableMsix { bdf, .. }
            | OpRequest::DisableMsix { bdf } => *bdf,
        }
    }

    /// Checks the request's own arguments (MSI-X entries: 1 to 128,
    /// distinct, below 2048).
    pub fn check(&self) -> Result<(), PciError> {
        if let OpRequest::EnableMsix { entries, .. } = self {
            crate::platform::check_msix_entries(entries, MAX_MSIX_TABLE, MAX_MSIX_ENTRIES)?;
        }
        Ok(())
    }

    /// The op to write to the shared page.
    pub fn encode(&self) -> XenPciOp {
        let bdf = self.bdf();
        match self {
            OpRequest::ConfRead { reg, .. } => {
                let mut op = XenPciOp::new(OP_CONF_READ, bdf);
                op.offset = i32::from(reg.offset());
                op.size = i32::from(reg.width().bytes());
                op
            }
            OpRequest::ConfWrite { reg, value, .. } => {
                let mut op = XenPciOp::new(OP_CONF_WRITE, bdf);
                op.offset = i32::from(reg.offset());
                op.size = i32::from(reg.width().bytes());
                op.value = value & reg.width().mask();
                op
            }
            OpRequest::EnableMsi { .. } => {
                let mut op = XenPciOp::new(OP_ENABLE_MSI, bdf);
                op.info = 1;
                op
            }
            OpRequest::DisableMsi { .. } => XenPciOp::new(OP_DISABLE_MSI, bdf),
            OpRequest::EnableMsix { entries, .. } => {
                let mut op = XenPciOp::new(OP_ENABLE_MSIX, bdf);
                op.value = entries.len() as u32;
                for (slot, e) in op.msix.iter_mut().zip(entries) {
                    slot.entry = *e;
                }
                op
            }
            OpRequest::DisableMsix { .. } => XenPciOp::new(OP_DISABLE_MSIX, bdf),
        }
    }
}

/// Checks the backend's answer `reply` to `req` (copied out of the shared
/// page once) and extracts the result.
///
/// - `cmd`, `domain`, `bus` and `devfn` must be those of the request
///   (pciback never changes them);
/// - `err`: 0 is success; an `XEN_PCI_ERR_*` code or a Linux errno is
///   [`PciError::Backend`]; anything else breaks the protocol;
/// - a configuration read's value is masked to the access width (pciback
///   may return more bits; they are dropped);
/// - an MSI pirq must be nonzero and below 65536;
/// - MSI-X: `value` (the result) must be 0 on success or an errno; each
///   requested entry's slot must name the same entry and a nonzero pirq,
///   no pirq twice.
///
/// Violations are [`PciError::BadResponse`].
pub fn check_reply(req: &OpRequest, reply: &XenPciOp) -> Result<OpReply, PciError> {
    let op = req.name();
    let bdf = req.bdf();
    let bad = |reason| Err(PciError::BadResponse { op, reason });
    let sent = req.encode();
    if reply.cmd != sent.cmd
        || reply.domain != sent.domain
        || reply.bus != sent.bus
        || reply.devfn != sent.devfn
    {
        return bad("the backend changed the command or the device of the op");
    }
    if reply.err != 0 {
        return match BackendErr::from_code(reply.err) {
            Some(err) => Err(PciError::Backend { op, bdf, err }),
            None => bad("err is neither 0, an XEN_PCI_ERR code nor an errno"),
        };
    }
    match req {
        OpRequest::ConfRead { reg, .. } => {
            // pciback merges its virtualised fields into the value without
            // masking to the access size (a byte read of COMMAND can carry
            // more bits); like Linux's pcifront, keep the requested bytes.
            let mask = reg.width().mask();
            if reply.value & !mask != 0 {
                log::debug!(
                    "pcifront {bdf}: config read at {:#x} of {} bytes returned {:#x}; \
                     bits beyond the access width dropped",
                    reg.offset(),
                    reg.width().bytes(),
                    reply.value
                );
            }
            Ok(OpReply::Value(reply.value & mask))
        }
        OpRequest::ConfWrite { .. }
        | OpRequest::DisableMsi { .. }
        | OpRequest::DisableMsix { .. } => Ok(OpReply::Done),
        OpRequest::EnableMsi { .. } => {
            if reply.value == 0 || reply.value > 0xffff {
                return bad("the MSI pirq is 0 or above 65535");
            }
            Ok(OpReply::Pirq(Pirq(reply.value)))
        }
        OpRequest::EnableMsix { entries, .. } => {
            if reply.value != 0 {
                return match BackendErr::from_code(reply.value as i32) {
                    Some(err) => Err(PciError::Backend { op, bdf, err }),
                    None => bad("the MSI-X result is neither 0 nor an errno"),
                };
            }
            let mut pirqs: Vec<Pirq> = Vec::with_capacity(entries.len());
            for (want, got) in entries.iter().zip(reply.msix.iter()) {
                if got.entry != *want {
                    return bad("an MSI-X slot names another table entry than requested");
                }
                if got.vector == 0 {
                    return bad("an MSI-X entry got no pirq");
                }
                let pirq = Pirq(u32::from(got.vector));
                if pirqs.contains(&pirq) {
                    return bad("two MSI-X entries got the same pirq");
                }
                pirqs.push(pirq);
            }
            if pirqs.len() != entries.len() {
                return bad("fewer MSI-X slots than entries requested");
            }
            Ok(OpReply::Pirqs(pirqs))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Width;
    use alloc::vec;

    fn bdf() -> Bdf {
        Bdf::new(0, 0, 4, 0).unwrap()
    }

    #[test]
    fn layout_matches_pciif_h() {
        assert_eq!(OP_SIZE, 548);
        assert_eq!(AER_OP_OFFSET, 552);
        assert_eq!(SHARED_INFO_SIZE, 572);
        let mut op = XenPciOp::new(OP_ENABLE_MSIX, Bdf::new(2, 3, 4, 5).unwrap());
        op.err = -5;
        op.value = 0x1122_3344;
        op.msix[127] = MsixEntry {
            vector: 0xaabb,
            entry: 0xccdd,
        };
        let b = op.encode();
        assert_eq!(&b[op_field::ERR..op_field::ERR + 4], &(-5i32).to_le_bytes());
        assert_eq!(b[op_field::DOMAIN], 2);
        assert_eq!(b[op_field::BUS], 3);
        assert_eq!(b[op_field::DEVFN], 4 << 3 | 5);
        assert_eq!(&b[OP_SIZE - 4..], &[0xbb, 0xaa, 0xdd, 0xcc]);
        assert_eq!(XenPciOp::decode(&b), op);
    }

    #[test]
    fn conf_read_reply_is_checked() {
        let req = OpRequest::ConfRead {
            bdf: bdf(),
            reg: ConfigReg::new(2, Width::Word).unwrap(),
        };
        let mut r = req.encode();
        assert_eq!((r.offset, r.size), (2, 2));
        r.value = 0x11e8;
        assert_eq!(check_reply(&req, &r), Ok(OpReply::Value(0x11e8)));
        // Bits beyond the width are dropped, not an error.
        r.value = 0x1_11e8;
        assert_eq!(check_reply(&req, &r), Ok(OpReply::Value(0x11e8)));
        r.value = 0;
        r.err = -3;
        assert_eq!(
            check_reply(&req, &r),
            Err(PciError::Backend {
                op: "conf_read",
                bdf: bdf(),
                err: BackendErr::ACCESS_DENIED
            })
        );
        for garbage in [1, i32::MAX, -4096, i32::MIN] {
            r.err = garbage;
            assert!(
                matches!(check_reply(&req, &r), Err(PciError::BadResponse { .. })),
                "{garbage}"
            );
        }
        let mut r = req.encode();
        r.devfn = 0;
        assert!(matches!(
            check_reply(&req, &r),
            Err(PciError::BadResponse { .. })
        ));
    }

    #[test]
    fn a_byte_read_of_command_is_masked_to_the_byte() {
        // pciback's virtualised COMMAND field answers a byte read at 0x04
        // with the whole register (and STATUS above it).
        let req = OpRequest::ConfRead {
            bdf: bdf(),
            reg: ConfigReg::new(0x04, Width::Byte).unwrap(),
        };
        let mut r = req.encode();
        assert_eq!((r.offset, r.size), (4, 1));
        r.value = 0x0010_0407;
        assert_eq!(check_reply(&req, &r), Ok(OpReply::Value(0x07)));
        r.value = 0xffff_ff00;
        assert_eq!(check_reply(&req, &r), Ok(OpReply::Value(0)));
    }

    #[test]
    fn msi_reply_is_checked() {
        let req = OpRequest::EnableMsi { bdf: bdf() };
        let mut r = req.encode();
        assert_eq!(r.info, 1);
        r.value = 55;
        assert_eq!(check_reply(&req, &r), Ok(OpReply::Pirq(Pirq(55))));
        for v in [0, 0x1_0000, u32::MAX] {
            r.value = v;
            assert!(matches!(
                check_reply(&req, &r),
                Err(PciError::BadResponse { .. })
            ));
        }
    }

    #[test]
    fn msix_reply_is_checked() {
        let req = OpRequest::EnableMsix {
            bdf: bdf(),
            entries: vec![0, 2, 1],
        };
        req.check().unwrap();
        let mut r = req.encode();
        assert_eq!(r.value, 3);
        r.value = 0;
        for (i, v) in [(0usize, 30u16), (1, 31), (2, 32)] {
            r.msix[i].vector = v;
        }
        assert_eq!(
            check_reply(&req, &r),
            Ok(OpReply::Pirqs(vec![Pirq(30), Pirq(31), Pirq(32)]))
        );
        let mut bogus = r.clone();
        bogus.msix[1].vector = 0;
        assert!(matches!(
            check_reply(&req, &bogus),
            Err(PciError::BadResponse { .. })
        ));
        let mut bogus = r.clone();
        bogus.msix[2].vector = 30;
        assert!(matches!(
            check_reply(&req, &bogus),
            Err(PciError::BadResponse { .. })
        ));
        let mut bogus = r.clone();
        bogus.msix[1].entry = 7;
        assert!(matches!(
            check_reply(&req, &bogus),
            Err(PciError::BadResponse { .. })
        ));
        let mut failed = r.clone();
        failed.value = (-28i32) as u32;
        assert!(matches!(
            check_reply(&req, &failed),
            Err(PciError::Backend { err, .. }) if err.name() == Some("ENOSPC")
        ));
        failed.value = 3;
        assert!(matches!(
            check_reply(&req, &failed),
            Err(PciError::BadResponse { .. })
        ));
    }

    #[test]
    fn msix_requests_are_checked() {
        let bad = |entries: Vec<u16>| {
            OpRequest::EnableMsix {
                bdf: bdf(),
                entries,
            }
            .check()
            .is_err()
        };
        assert!(bad(vec![]));
        assert!(bad(vec![1, 1]));
        assert!(bad(vec![2048]));
        assert!(bad((0..129).collect()));
        assert!(!bad((0..128).collect()));
    }
}
