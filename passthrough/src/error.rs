//! Why a PCI operation failed.

use alloc::string::String;
use core::fmt;

use grant_tables::PlatformError;

use crate::Bdf;

/// An error code the PCI backend (xen-pciback) returned in `xen_pci_op.err`.
///
/// `io/pciif.h` defines `XEN_PCI_ERR_*` (-1 to -5), and Linux's pciback
/// also returns negative Linux errnos (`-EINVAL`, `-ENOMEM`, `-ENOSPC`, ...)
/// from MSI-X set-up. The two ranges overlap: -1 to -5 are read as
/// `XEN_PCI_ERR_*`, as pcifront does. Zero (success), positive values and
/// values below -4095 are not errors this type holds
/// ([`BackendErr::from_code`] refuses them; such a response breaks the
/// protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendErr(i32);

impl BackendErr {
    /// `XEN_PCI_ERR_dev_not_found`: the backend does not export the device.
    pub const DEV_NOT_FOUND: BackendErr = BackendErr(-1);
    /// `XEN_PCI_ERR_invalid_offset`: bad configuration offset or size.
    pub const INVALID_OFFSET: BackendErr = BackendErr(-2);
    /// `XEN_PCI_ERR_access_denied`: pciback's permissions refuse it.
    pub const ACCESS_DENIED: BackendErr = BackendErr(-3);
    /// `XEN_PCI_ERR_not_implemented`: the backend lacks the operation.
    pub const NOT_IMPLEMENTED: BackendErr = BackendErr(-4);
    /// `XEN_PCI_ERR_op_failed`: the backend tried and failed (for instance
    /// the host could not enable MSI).
    pub const OP_FAILED: BackendErr = BackendErr(-5);

    /// The error for a wire code: `None` for 0 and for codes that are
    /// neither `XEN_PCI_ERR_*` nor a Linux errno (positive, or below
    /// -4095).
    pub const fn from_code(code: i32) -> Option<BackendErr> {
        if code < 0 && code >= -4095 {
            Some(BackendErr(code))
        } else {
            None
        }
    }

    /// The code as the wire carries it.
    pub const fn code(self) -> i32 {
        self.0
    }

    /// The `io/pciif.h` or errno name, when known.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            -1 => "XEN_PCI_ERR_dev_not_found",
            -2 => "XEN_PCI_ERR_invalid_offset",
            -3 => "XEN_PCI_ERR_access_denied",
            -4 => "XEN_PCI_ERR_not_implemented",
            -5 => "XEN_PCI_ERR_op_failed",
            -6 => "ENXIO",
            -12 => "ENOMEM",
            -16 => "EBUSY",
            -19 => "ENODEV",
            -22 => "EINVAL",
            -28 => "ENOSPC",
            -95 => "EOPNOTSUPP",
            -114 => "EALREADY",
            _ => return None,
        })
    }
}

impl fmt::Display for BackendErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "errno {}", self.0),
        }
    }
}

/// Why a PCI operation failed.
///
/// Errors caused by what a device or a backend wrote (configuration data,
/// responses) are typed here rather than panics; a driver that gets one
/// stops using the device ([`PciError::is_fatal`] says which do).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PciError {
    /// A device address could not be parsed or is out of range.
    BadAddress {
        /// What is wrong.
        reason: &'static str,
    },
    /// A configuration space access outside 0..4096, not aligned to its
    /// width, or of a width other than 1, 2 or 4 bytes.
    BadConfigOffset {
        /// The offset asked for.
        offset: u16,
        /// The access width in bytes.
        width: u8,
    },
    /// An MMIO or DMA access that does not lie inside its region.
    OutOfBounds {
        /// `"MMIO"` or `"DMA"`.
        region: &'static str,
        /// The offset of the access.
        offset: usize,
        /// The access length in bytes.
        len: usize,
        /// The region's size.
        size: usize,
    },
    /// An MMIO or DMA access not aligned to its width.
    Misaligned {
        /// `"MMIO"` or `"DMA"`.
        region: &'static str,
        /// The offset of the access.
        offset: usize,
        /// The alignment it needs.
        align: usize,
    },
    /// Configuration space holds a value that cannot be right (a header
    /// type, a BAR, a capability or a table placement).
    BadConfig {
        /// The device.
        bdf: Bdf,
        /// The configuration offset of the bad value.
        offset: u16,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Reads return all ones: the device is absent, was removed, or is
    /// hung (a PCI master abort).
    DeviceGone {
        /// The device.
        bdf: Bdf,
    },
    /// The capability list comes back to an entry already visited.
    CapabilityLoop {
        /// The device.
        bdf: Bdf,
        /// The offset seen twice.
        offset: u16,
    },
    /// The capability list is longer than configuration space can hold.
    TooManyCapabilities {
        /// The device.
        bdf: Bdf,
        /// The bound that was reached.
        limit: usize,
    },
    /// Two of the device's BARs decode overlapping address ranges.
    BarOverlap {
        /// The device.
        bdf: Bdf,
        /// One BAR's index.
        first: u8,
        /// The other BAR's index.
        second: u8,
    },
    /// The device lacks something the operation needs (a capability, an
    /// assigned BAR).
    Unsupported {
        /// The device.
        bdf: Bdf,
        /// What is missing.
        what: &'static str,
    },
    /// The request itself is invalid (bad arguments from the caller).
    InvalidRequest {
        /// The operation.
        op: &'static str,
        /// What is wrong and what to do instead.
        reason: &'static str,
    },
    /// The device (or the backend serving it) broke an earlier rule and is
    /// no longer used; every later operation fails with this.
    DeviceBroken {
        /// What broke it.
        reason: &'static str,
    },
    /// The PCI backend refused or failed the operation.
    Backend {
        /// The operation (`"conf_read"`, `"enable_msix"`, ...).
        op: &'static str,
        /// The device.
        bdf: Bdf,
        /// The backend's error code.
        err: BackendErr,
    },
    /// The PCI backend's response breaks the protocol (an undefined error
    /// code, a wrong vector count, a vector out of range).
    BadResponse {
        /// The operation.
        op: &'static str,
        /// What is wrong with the response.
        reason: &'static str,
    },
    /// The PCI backend did not answer in time.
    Timeout {
        /// The operation.
        op: &'static str,
        /// How long it waited, in nanoseconds.
        waited_ns: u64,
    },
    /// No DMA memory below the device's address mask could be allocated
    /// for the request.
    DmaMaskUnsatisfiable {
        /// Bytes asked for.
        len: usize,
        /// The device's address mask.
        addr_mask: u64,
    },
    /// No memory left for a DMA buffer.
    DmaOutOfMemory {
        /// Bytes asked for.
        len: usize,
    },
    /// pcifront is not connected to its backend (the handshake has not
    /// completed, or the backend went away).
    NotConnected,
    /// The xenbus handshake with the PCI backend failed.
    Xenbus {
        /// The xenstore key involved.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The platform (event channels, pages, hypercalls) failed.
    Platform(PlatformError),
}

impl PciError {
    /// Whether the error means the device (or its backend) can no longer be
    /// trusted, so the driver stops using it. Errors in the caller's own
    /// arguments and refusals the backend states cleanly are not fatal.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            PciError::BadAddress { .. }
                | PciError::BadConfigOffset { .. }
                | PciError::OutOfBounds { .. }
                | PciError::Misaligned { .. }
                | PciError::Unsupported { .. }
                | PciError::InvalidRequest { .. }
                | PciError::Backend { .. }
                | PciError::DmaMaskUnsatisfiable { .. }
                | PciError::DmaOutOfMemory { .. }
                | PciError::NotConnected
        )
    }
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciError::BadAddress { reason } => write!(f, "bad PCI address: {reason}"),
            PciError::BadConfigOffset { offset, width } => write!(
                f,
                "configuration access of {width} byte(s) at {offset:#x} is invalid: offsets are below 4096 and aligned to the width (1, 2 or 4)"
            ),
            PciError::OutOfBounds { region, offset, len, size } => write!(
                f,
                "{region} access of {len} byte(s) at offset {offset:#x} lies outside the {size:#x}-byte region; check the offset against the region's length"
            ),
            PciError::Misaligned { region, offset, align } => write!(
                f,
                "{region} access at offset {offset:#x} is not aligned to {align} bytes; registers are accessed at their natural alignment"
            ),
            PciError::BadConfig { bdf, offset, reason } => write!(
                f,
                "{bdf}: configuration space at {offset:#x} is invalid ({reason}); the device or its backend is faulty, so it is not used"
            ),
            PciError::DeviceGone { bdf } => write!(
                f,
                "{bdf}: configuration reads return all ones: the device is absent, removed or hung; check that it is passed through and reset it"
            ),
            PciError::CapabilityLoop { bdf, offset } => write!(
                f,
                "{bdf}: the capability list loops back to {offset:#x}; the device's configuration space is corrupt, so it is not used"
            ),
            PciError::TooManyCapabilities { bdf, limit } => write!(
                f,
                "{bdf}: the capability list has more than {limit} entries; the device's configuration space is corrupt, so it is not used"
            ),
            PciError::BarOverlap { bdf, first, second } => write!(
                f,
                "{bdf}: BAR{first} and BAR{second} decode overlapping addresses; the device's resources are misassigned, so it is not used"
            ),
            PciError::Unsupported { bdf, what } => write!(f, "{bdf}: {what}"),
            PciError::InvalidRequest { op, reason } => write!(f, "{op}: {reason}"),
            PciError::DeviceBroken { reason } => write!(
                f,
                "the device was disabled after an earlier error ({reason}); reset or re-attach it to use it again"
            ),
            PciError::Backend { op, bdf, err } => write!(
                f,
                "{bdf}: the PCI backend failed {op} with {err}; check the backend's log (dom0 dmesg) and the device's pciback permissions"
            ),
            PciError::BadResponse { op, reason } => write!(
                f,
                "the PCI backend's response to {op} breaks the protocol ({reason}); the backend is not trusted any more"
            ),
            PciError::Timeout { op, waited_ns } => write!(
                f,
                "the PCI backend did not complete {op} within {} ms; the backend is hung or gone, so the device is disabled",
                waited_ns / 1_000_000
            ),
            PciError::DmaMaskUnsatisfiable { len, addr_mask } => write!(
                f,
                "no machine-contiguous DMA memory of {len} bytes lies below the device's address mask {addr_mask:#x}; allocate such buffers early or give the domain low memory"
            ),
            PciError::DmaOutOfMemory { len } => write!(
                f,
                "could not allocate {len} bytes of DMA memory; free buffers or give the domain more memory"
            ),
            PciError::NotConnected => write!(
                f,
                "pcifront is not connected to the PCI backend; wait for the xenbus handshake to complete"
            ),
            PciError::Xenbus { key, reason } => write!(
                f,
                "the PCI backend's xenstore key {key} is unusable ({reason}); check the toolstack's PCI configuration and the backend's log"
            ),
            PciError::Platform(e) => write!(f, "platform: {e}"),
        }
    }
}

impl core::error::Error for PciError {}

impl From<PlatformError> for PciError {
    fn from(e: PlatformError) -> PciError {
        PciError::Platform(e)
    }
}
