//! A minimal xenstore client over the store ring (`io/xs_wire.h`): read,
//! write, directory and rm, one request at a time.
//!
//! Replies are untrusted: the header is copied out and checked (length at
//! most `XENSTORE_PAYLOAD_MAX`, request id echoed), and watch events that
//! arrive between requests are skipped.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::ring_bytes::{ByteRing, RingBroken};

/// `XS_DIRECTORY`.
pub const XS_DIRECTORY: u32 = 1;
/// `XS_READ`.
pub const XS_READ: u32 = 2;
/// `XS_WATCH_EVENT`.
pub const XS_WATCH_EVENT: u32 = 15;
/// `XS_WRITE`.
pub const XS_WRITE: u32 = 11;
/// `XS_RM`.
pub const XS_RM: u32 = 13;
/// `XS_ERROR`.
pub const XS_ERROR: u32 = 16;
/// Largest payload of one message.
pub const PAYLOAD_MAX: usize = 4096;
/// Size of the message header.
pub const HEADER_SIZE: usize = 16;

/// Why a xenstore request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XsError {
    /// The daemon answered with an error (`ENOENT`, `EACCES`, ...).
    Daemon(String),
    /// The ring indices are impossible.
    Broken(RingBroken),
    /// The daemon did not answer in time.
    TimedOut,
    /// The reply is malformed (too long, wrong id, not UTF-8).
    BadReply(&'static str),
    /// The request does not fit a message.
    TooLong,
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsError::Daemon(e) => write!(f, "xenstore answered {e}"),
            XsError::Broken(b) => write!(f, "xenstore ring: {b}"),
            XsError::TimedOut => write!(f, "xenstore did not answer in time; is xenstored running in dom0?"),
            XsError::BadReply(w) => write!(f, "malformed xenstore reply: {w}"),
            XsError::TooLong => write!(f, "xenstore request longer than {PAYLOAD_MAX} bytes"),
        }
    }
}

impl From<RingBroken> for XsError {
    fn from(b: RingBroken) -> Self {
        XsError::Broken(b)
    }
}

/// How the client waits for the daemon: notify it, and wait for its event.
pub trait Doorbell {
    /// Tells the daemon there is something to read (or space freed).
    fn notify(&mut self);
    /// Waits for the daemon's next event; `Err(TimedOut)` once the request
    /// has waited too long.
    fn wait(&mut self) -> Result<(), XsError>;
}

/// Encodes a request into `out`.
pub fn encode(msg_type: u32, req_id: u32, parts: &[&[u8]], nul_last: bool, out: &mut Vec<u8>) -> Result<(), XsError> {
    let mut len = 0usize;
    for (i, p) in parts.iter().enumerate() {
        len += p.len();
        if i + 1 < parts.len() || nul_last {
            len += 1;
        }
    }
    if len > PAYLOAD_MAX {
        return Err(XsError::TooLong);
    }
    out.clear();
    for v in [msg_type, req_id, 0, len as u32] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, p) in parts.iter().enumerate() {
        out.extend_from_slice(p);
        if i + 1 < parts.len() || nul_last {
            out.push(0);
        }
    }
    Ok(())
}

/// A xenstore connection over the store ring.
pub struct XenStore<D: Doorbell> {
    req: ByteRing,
    rsp: ByteRing,
    bell: D,
    next_id: u32,
}

impl<D: Doorbell> XenStore<D> {
    /// A client over the request and response rings of the store page.
    pub fn new(req: ByteRing, rsp: ByteRing, bell: D) -> Self {
        XenStore { req, rsp, bell, next_id: 1 }
    }

    fn send_all(&mut self, mut bytes: &[u8]) -> Result<(), XsError> {
        while !bytes.is_empty() {
            let n = self.req.write_some(bytes)?;
            bytes = &bytes[n..];
            self.bell.notify();
            if !bytes.is_empty() {
                self.bell.wait()?;
            }
        }
        Ok(())
    }

    fn recv_exact(&mut self, out: &mut [u8]) -> Result<(), XsError> {
        let mut got = 0;
        while got < out.len() {
            let n = self.rsp.read_some(&mut out[got..])?;
            got += n;
            if n > 0 {
                self.bell.notify();
            } else {
                self.bell.wait()?;
            }
        }
        Ok(())
    }

    /// Sends one request and returns the reply's payload.
    pub fn request(&mut self, msg_type: u32, parts: &[&[u8]], nul_last: bool) -> Result<Vec<u8>, XsError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut msg = Vec::new();
        encode(msg_type, id, parts, nul_last, &mut msg)?;
        self.send_all(&msg)?;
        loop {
            let mut hdr = [0u8; HEADER_SIZE];
            self.recv_exact(&mut hdr)?;
            let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
            let (ty, rid, len) = (word(0), word(4), word(12) as usize);
            if len > PAYLOAD_MAX {
                return Err(XsError::BadReply("payload longer than XENSTORE_PAYLOAD_MAX"));
            }
            let mut payload = alloc::vec![0u8; len];
            self.recv_exact(&mut payload)?;
            if ty == XS_WATCH_EVENT {
                continue;
            }
            if rid != id {
                return Err(XsError::BadReply("request id not echoed"));
            }
            if ty == XS_ERROR {
                let e = payload.split(|b| *b == 0).next().unwrap_or(&[]);
                return Err(XsError::Daemon(String::from_utf8_lossy(e).into_owned()));
            }
            if ty != msg_type {
                return Err(XsError::BadReply("reply type differs from the request"));
            }
            return Ok(payload);
        }
    }

    /// Reads a key (a path relative to the domain's home, or absolute).
    pub fn read(&mut self, path: &str) -> Result<String, XsError> {
        let v = self.request(XS_READ, &[path.as_bytes()], true)?;
        String::from_utf8(v).map_err(|_| XsError::BadReply("value is not UTF-8"))
    }

    /// Writes a key.
    pub fn write(&mut self, path: &str, value: &str) -> Result<(), XsError> {
        self.request(XS_WRITE, &[path.as_bytes(), value.as_bytes()], false).map(|_| ())
    }

    /// Removes a key and everything under it.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.request(XS_RM, &[path.as_bytes()], true).map(|_| ())
    }

    /// Lists the children of a key.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        let v = self.request(XS_DIRECTORY, &[path.as_bytes()], true)?;
        Ok(v.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring_bytes::xenstore_rings;
    use core::ptr::NonNull;
    use std::collections::BTreeMap;
    use std::vec;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    /// A daemon that answers READ and WRITE from a map, run on each wait.
    struct FakeDaemon {
        req: ByteRing,
        rsp: ByteRing,
        store: BTreeMap<String, String>,
        buf: Vec<u8>,
        waits: u32,
    }

    impl Doorbell for FakeDaemon {
        fn notify(&mut self) {}
        fn wait(&mut self) -> Result<(), XsError> {
            self.waits += 1;
            if self.waits > 100 {
                return Err(XsError::TimedOut);
            }
            let mut tmp = [0u8; 64];
            loop {
                let n = self.req.read_some(&mut tmp).unwrap();
                if n == 0 {
                    break;
                }
                self.buf.extend_from_slice(&tmp[..n]);
            }
            while self.buf.len() >= 16 {
                let w = |i: usize| u32::from_le_bytes(self.buf[i..i + 4].try_into().unwrap());
                let (ty, id, len) = (w(0), w(4), w(12) as usize);
                if self.buf.len() < 16 + len {
                    break;
                }
                let payload: Vec<u8> = self.buf[16..16 + len].to_vec();
                self.buf.drain(..16 + len);
                let parts: Vec<&[u8]> = payload.split(|b| *b == 0).collect();
                let key = String::from_utf8_lossy(parts[0]).into_owned();
                let mut out = Vec::new();
                match ty {
                    XS_READ => match self.store.get(&key) {
                        Some(v) => encode(XS_READ, id, &[v.as_bytes()], false, &mut out).unwrap(),
                        None => encode(XS_ERROR, id, &[b"ENOENT"], true, &mut out).unwrap(),
                    },
                    XS_WRITE => {
                        let v = String::from_utf8_lossy(&payload[key.len() + 1..]).into_owned();
                        self.store.insert(key, v);
                        encode(XS_WRITE, id, &[b"OK"], true, &mut out).unwrap();
                    }
                    _ => encode(XS_ERROR, id, &[b"EINVAL"], true, &mut out).unwrap(),
                }
                // A watch event first, which the client must skip.
                let mut ev = Vec::new();
                encode(XS_WATCH_EVENT, 0, &[b"some/path", b"token"], true, &mut ev).unwrap();
                assert_eq!(self.rsp.write_some(&ev).unwrap(), ev.len());
                assert_eq!(self.rsp.write_some(&out).unwrap(), out.len());
            }
            Ok(())
        }
    }

    #[test]
    fn read_write_and_errors_over_the_ring() {
        let mut page = vec![Page([0; 4096])];
        let base = NonNull::new(page[0].0.as_mut_ptr()).unwrap();
        // SAFETY: a heap page used only through the rings, by one thread.
        let (req, rsp) = unsafe { xenstore_rings(base) };
        // SAFETY: as above (the daemon's view of the same rings).
        let (dreq, drsp) = unsafe { xenstore_rings(base) };
        let mut store = BTreeMap::new();
        store.insert("domid".to_string(), "7".to_string());
        let daemon = FakeDaemon { req: dreq, rsp: drsp, store, buf: Vec::new(), waits: 0 };
        let mut xs = XenStore::new(req, rsp, daemon);
        assert_eq!(xs.read("domid").unwrap(), "7");
        xs.write("data/result", "ok").unwrap();
        assert_eq!(xs.read("data/result").unwrap(), "ok");
        assert_eq!(xs.read("missing"), Err(XsError::Daemon("ENOENT".into())));
        // Many requests wrap the 1 KiB rings.
        for i in 0..200 {
            xs.write("k", &std::format!("value-{i}")).unwrap();
            xs.bell.waits = 0;
        }
        assert_eq!(xs.read("k").unwrap(), "value-199");
    }

    #[test]
    fn encode_matches_the_wire_format() {
        let mut out = Vec::new();
        encode(XS_WRITE, 3, &[b"a/b", b"v"], false, &mut out).unwrap();
        assert_eq!(&out[..16], &[11, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(&out[16..], b"a/b\0v");
        assert_eq!(encode(XS_READ, 1, &[&[b'x'; 5000]], true, &mut out), Err(XsError::TooLong));
    }
}
