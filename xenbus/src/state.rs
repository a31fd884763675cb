//! `XenbusState` (`io/xenbus.h`): the state each end of a device publishes
//! in its `state` node.

use core::fmt;

/// The state of one end of a split device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum XenbusState {
    /// 0: not yet known (or the node is unreadable).
    Unknown = 0,
    /// 1: setting up.
    Initialising = 1,
    /// 2: early setup done, waiting for the peer's details.
    InitWait = 2,
    /// 3: details published, waiting for the peer to connect.
    Initialised = 3,
    /// 4: connected, I/O may flow.
    Connected = 4,
    /// 5: shutting down (error or unplug).
    Closing = 5,
    /// 6: closed.
    Closed = 6,
    /// 7: being reconfigured.
    Reconfiguring = 7,
    /// 8: reconfigured.
    Reconfigured = 8,
}

/// Why a `state` node's value is not a `XenbusState`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadState {
    /// Up to 16 bytes of the value, for the message.
    pub prefix: [u8; 16],
    /// How many bytes of `prefix` are meaningful.
    pub len: usize,
}

impl fmt::Display for BadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "xenbus state value {:?} is not one decimal digit 0-8",
            core::str::from_utf8(&self.prefix[..self.len]).unwrap_or("<non-UTF-8>")
        )
    }
}

impl XenbusState {
    /// The state for a number.
    pub fn from_u32(v: u32) -> Option<XenbusState> {
        Some(match v {
            0 => XenbusState::Unknown,
            1 => XenbusState::Initialising,
            2 => XenbusState::InitWait,
            3 => XenbusState::Initialised,
            4 => XenbusState::Connected,
            5 => XenbusState::Closing,
            6 => XenbusState::Closed,
            7 => XenbusState::Reconfiguring,
            8 => XenbusState::Reconfigured,
            _ => return None,
        })
    }

    /// Parses the value of a `state` node strictly: exactly one ASCII digit
    /// 0-8, optionally followed by one NUL (some writers include it).
    /// Anything else (spaces, signs, leading zeros, other numbers) is an
    /// error.
    pub fn parse(value: &[u8]) -> Result<XenbusState, BadState> {
        let digits = value.strip_suffix(&[0]).unwrap_or(value);
        match digits {
            [d @ b'0'..=b'8'] => {
                XenbusState::from_u32(u32::from(d - b'0')).ok_or_else(|| bad(value))
            }
            _ => Err(bad(value)),
        }
    }

    /// The value to write into a `state` node.
    pub fn as_str(self) -> &'static str {
        match self {
            XenbusState::Unknown => "0",
            XenbusState::Initialising => "1",
            XenbusState::InitWait => "2",
            XenbusState::Initialised => "3",
            XenbusState::Connected => "4",
            XenbusState::Closing => "5",
            XenbusState::Closed => "6",
            XenbusState::Reconfiguring => "7",
            XenbusState::Reconfigured => "8",
        }
    }

    /// The name, as in `io/xenbus.h` without the prefix.
    pub fn name(self) -> &'static str {
        match self {
            XenbusState::Unknown => "Unknown",
            XenbusState::Initialising => "Initialising",
            XenbusState::InitWait => "InitWait",
            XenbusState::Initialised => "Initialised",
            XenbusState::Connected => "Connected",
            XenbusState::Closing => "Closing",
            XenbusState::Closed => "Closed",
            XenbusState::Reconfiguring => "Reconfiguring",
            XenbusState::Reconfigured => "Reconfigured",
        }
    }
}

fn bad(value: &[u8]) -> BadState {
    let mut prefix = [0u8; 16];
    let len = value.len().min(16);
    prefix[..len].copy_from_slice(&value[..len]);
    BadState { prefix, len }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strictly() {
        for v in 0..=8u32 {
            let s = XenbusState::from_u32(v).unwrap();
            assert_eq!(XenbusState::parse(s.as_str().as_bytes()), Ok(s));
        }
        assert_eq!(XenbusState::parse(b"4\0"), Ok(XenbusState::Connected));
        for bad in [
            &b""[..],
            b"9",
            b"04",
            b" 4",
            b"4 ",
            b"+4",
            b"-1",
            b"44",
            b"4\0\0",
            b"x",
            b"\0",
        ] {
            assert!(XenbusState::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
