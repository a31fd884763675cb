//! A PCI device address.

use core::fmt;
use core::str::FromStr;

use crate::PciError;

/// A PCI function's address: segment (PCI domain), bus, device, function.
///
/// Displayed and parsed as `dddd:bb:dd.f` in hexadecimal, the form Linux
/// and xen-pciback use (`0000:00:04.0`). Parsing also accepts `bb:dd.f`
/// (segment 0) and a two-digit function (`0000:00:04.00`, as pciback's
/// `vdev-N` keys write it). The device is below 32 and the function below 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    segment: u16,
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// The address `segment:bus:device.function`; `None` when the device
    /// is 32 or more or the function 8 or more.
    pub const fn new(segment: u16, bus: u8, device: u8, function: u8) -> Option<Bdf> {
        if device >= 32 || function >= 8 {
            return None;
        }
        Some(Bdf {
            segment,
            bus,
            device,
            function,
        })
    }

    /// The address from a segment, a bus and a `devfn` byte (device in
    /// bits 7:3, function in bits 2:0), as `xen_pci_op` carries it.
    pub const fn from_devfn(segment: u16, bus: u8, devfn: u8) -> Bdf {
        Bdf {
            segment,
            bus,
            device: devfn >> 3,
            function: devfn & 7,
        }
    }

    /// The segment (PCI domain).
    pub const fn segment(self) -> u16 {
        self.segment
    }

    /// The bus.
    pub const fn bus(self) -> u8 {
        self.bus
    }

    /// The device (0..32).
    pub const fn device(self) -> u8 {
        self.device
    }

    /// The function (0..8).
    pub const fn function(self) -> u8 {
        self.function
    }

    /// The `devfn` byte: device in bits 7:3, function in bits 2:0.
    pub const fn devfn(self) -> u8 {
        (self.device << 3) | self.function
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

fn hex_field(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl FromStr for Bdf {
    type Err = PciError;

    fn from_str(s: &str) -> Result<Bdf, PciError> {
        let bad = || {
            PciError::BadAddress {
            reason: "expected dddd:bb:dd.f (or bb:dd.f) in hexadecimal, device below 0x20, function below 8",
        }
        };
        let (head, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let mut parts = head.rsplit(':');
        let device = parts.next().ok_or_else(bad)?;
        let bus = parts.next().ok_or_else(bad)?;
        let segment = parts.next();
        if parts.next().is_some() {
            return Err(bad());
        }
        let segment = match segment {
            Some(seg) => hex_field(seg, 4).ok_or_else(bad)?,
            None => 0,
        };
        let bus = hex_field(bus, 2).ok_or_else(bad)?;
        let device = hex_field(device, 2).ok_or_else(bad)?;
        let function = hex_field(function, 2).ok_or_else(bad)?;
        let (Ok(segment), Ok(bus), Ok(device), Ok(function)) = (
            u16::try_from(segment),
            u8::try_from(bus),
            u8::try_from(device),
            u8::try_from(function),
        ) else {
            return Err(bad());
        };
        Bdf::new(segment, bus, device, function).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn display_and_parse_round_trip() {
        let b = Bdf::new(0x1, 0x2a, 0x1f, 7).unwrap();
        assert_eq!(b.to_string(), "0001:2a:1f.7");
        assert_eq!("0001:2a:1f.7".parse::<Bdf>().unwrap(), b);
        assert_eq!(
            "00:04.0".parse::<Bdf>().unwrap(),
            Bdf::new(0, 0, 4, 0).unwrap()
        );
        assert_eq!(b.devfn(), 0xff);
        assert_eq!(Bdf::from_devfn(1, 0x2a, 0xff), b);
    }

    #[test]
    fn parse_rejects_bad_forms() {
        for s in [
            "",
            "0000:00:20.0",
            "0000:00:04.8",
            "00000:00:04.0",
            "0000:000:04.0",
            "0:0:0:0.0",
            "0000:00:04",
            "0000:00:04.",
            "zz:00.0",
            "0000:00:+4.0",
            "0000:00:04.0 ",
        ] {
            assert!(s.parse::<Bdf>().is_err(), "{s:?} parsed");
        }
        assert!(Bdf::new(0, 0, 32, 0).is_none());
        assert!(Bdf::new(0, 0, 0, 8).is_none());
    }
}
