//! The xenstore wire protocol (`io/xs_wire.h`).
//!
//! Every message is a 16-byte header ([`Header`]: type, request id,
//! transaction id, payload length, each a native-endian `u32`) followed by
//! `len` bytes of payload, usually NUL-terminated strings. Payloads are at
//! most [`XENSTORE_PAYLOAD_MAX`] bytes.
//!
//! [`Decoder`] turns a byte stream that arrives in arbitrary chunks into
//! whole [`Message`]s. It never panics and never allocates more than one
//! maximal payload: a header announcing a longer payload is a fatal
//! [`WireError`] (the stream cannot be resynchronised), while an unknown
//! message type is reported *after* its payload has been consumed, so the
//! stream stays in step and a server can answer `ENOSYS`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Largest payload a message may carry.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (`/local/domain/...`), excluding the NUL.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path, excluding the NUL.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;
/// Size of the message header.
pub const HEADER_SIZE: usize = 16;

/// `XS_WRITE` flag strings of old protocol versions (kept for completeness).
pub const XS_WRITE_NONE: &str = "NONE";
/// See [`XS_WRITE_NONE`].
pub const XS_WRITE_CREATE: &str = "CREATE";
/// See [`XS_WRITE_NONE`].
pub const XS_WRITE_CREATE_EXCL: &str = "CREATE|EXCL";

/// Index of the path in a watch event payload (`enum xs_watch_type`).
pub const XS_WATCH_PATH: usize = 0;
/// Index of the token in a watch event payload.
pub const XS_WATCH_TOKEN: usize = 1;

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL` (alias `XS_DEBUG`): daemon control commands.
    Control = 0,
    /// `XS_DIRECTORY`: list a node's children.
    Directory = 1,
    /// `XS_READ`: read a node's value.
    Read = 2,
    /// `XS_GET_PERMS`: read a node's permissions.
    GetPerms = 3,
    /// `XS_WATCH`: register a watch.
    Watch = 4,
    /// `XS_UNWATCH`: remove a watch.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`: dom0 tells the daemon about a new domain.
    Introduce = 8,
    /// `XS_RELEASE`: dom0 tells the daemon a domain is gone.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT`: asynchronous watch notification.
    WatchEvent = 15,
    /// `XS_ERROR`: an error reply carrying an errno name.
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES` (20 was `XS_RESTRICT`, removed).
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`: a directory listing in pieces.
    DirectoryPart = 22,
}

/// `XS_TYPE_COUNT`: one past the largest valid type.
pub const XS_TYPE_COUNT: u32 = 23;
/// `XS_INVALID`: guaranteed never to be a valid type.
pub const XS_INVALID: u32 = 0xffff;

impl MsgType {
    /// Every valid message type.
    pub const ALL: [MsgType; 22] = [
        MsgType::Control,
        MsgType::Directory,
        MsgType::Read,
        MsgType::GetPerms,
        MsgType::Watch,
        MsgType::Unwatch,
        MsgType::TransactionStart,
        MsgType::TransactionEnd,
        MsgType::Introduce,
        MsgType::Release,
        MsgType::GetDomainPath,
        MsgType::Write,
        MsgType::Mkdir,
        MsgType::Rm,
        MsgType::SetPerms,
        MsgType::WatchEvent,
        MsgType::Error,
        MsgType::IsDomainIntroduced,
        MsgType::Resume,
        MsgType::SetTarget,
        MsgType::ResetWatches,
        MsgType::DirectoryPart,
    ];

    /// The type for a raw value, or `None` for unknown values (including
    /// the removed `XS_RESTRICT`, 20, and `XS_INVALID`).
    pub fn from_raw(raw: u32) -> Option<MsgType> {
        Some(match raw {
            0 => MsgType::Control,
            1 => MsgType::Directory,
            2 => MsgType::Read,
            3 => MsgType::GetPerms,
            4 => MsgType::Watch,
            5 => MsgType::Unwatch,
            6 => MsgType::TransactionStart,
            7 => MsgType::TransactionEnd,
            8 => MsgType::Introduce,
            9 => MsgType::Release,
            10 => MsgType::GetDomainPath,
            11 => MsgType::Write,
            12 => MsgType::Mkdir,
            13 => MsgType::Rm,
            14 => MsgType::SetPerms,
            15 => MsgType::WatchEvent,
            16 => MsgType::Error,
            17 => MsgType::IsDomainIntroduced,
            18 => MsgType::Resume,
            19 => MsgType::SetTarget,
            21 => MsgType::ResetWatches,
            22 => MsgType::DirectoryPart,
            _ => return None,
        })
    }

    /// The raw value.
    pub fn raw(self) -> u32 {
        self as u32
    }

    /// The C name, for messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::Control => "XS_CONTROL",
            MsgType::Directory => "XS_DIRECTORY",
            MsgType::Read => "XS_READ",
            MsgType::GetPerms => "XS_GET_PERMS",
            MsgType::Watch => "XS_WATCH",
            MsgType::Unwatch => "XS_UNWATCH",
            MsgType::TransactionStart => "XS_TRANSACTION_START",
            MsgType::TransactionEnd => "XS_TRANSACTION_END",
            MsgType::Introduce => "XS_INTRODUCE",
            MsgType::Release => "XS_RELEASE",
            MsgType::GetDomainPath => "XS_GET_DOMAIN_PATH",
            MsgType::Write => "XS_WRITE",
            MsgType::Mkdir => "XS_MKDIR",
            MsgType::Rm => "XS_RM",
            MsgType::SetPerms => "XS_SET_PERMS",
            MsgType::WatchEvent => "XS_WATCH_EVENT",
            MsgType::Error => "XS_ERROR",
            MsgType::IsDomainIntroduced => "XS_IS_DOMAIN_INTRODUCED",
            MsgType::Resume => "XS_RESUME",
            MsgType::SetTarget => "XS_SET_TARGET",
            MsgType::ResetWatches => "XS_RESET_WATCHES",
            MsgType::DirectoryPart => "XS_DIRECTORY_PART",
        }
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The errors xenstore sends, by name, in `XS_ERROR` replies (`xsd_errors`).
///
/// The variants keep the C names: they are what travels on the wire.
/// Daemons send names outside `xsd_errors` too (oxenstored's `EQUOTA`);
/// a client takes any error reply as a refusal ([`Errno::from_reply`]),
/// never as a broken stream, as Linux does (it maps unknown names to
/// `EINVAL`).
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Errno {
    /// Invalid argument (bad path, malformed payload...).
    EINVAL,
    /// Permission denied.
    EACCES,
    /// Already exists.
    EEXIST,
    /// Is a directory.
    EISDIR,
    /// No such node (or transaction, or domain).
    ENOENT,
    /// Out of memory.
    ENOMEM,
    /// Quota exceeded.
    ENOSPC,
    /// I/O error.
    EIO,
    /// Directory not empty.
    ENOTEMPTY,
    /// Operation not implemented.
    ENOSYS,
    /// Read-only connection.
    EROFS,
    /// Busy (too many transactions...).
    EBUSY,
    /// Try again: a transaction conflicted.
    EAGAIN,
    /// Already connected.
    EISCONN,
    /// Reply too big for one message.
    E2BIG,
    /// Operation not permitted.
    EPERM,
    /// A quota of this domain is exhausted: oxenstored's name (not in
    /// `xsd_errors`; C xenstored says `ENOSPC` or `E2BIG`).
    EQUOTA,
    /// A name this crate does not know, kept as the daemon sent it (at
    /// most [`UnknownErrno::MAX_LEN`] bytes).
    Unknown(UnknownErrno),
}

/// An errno name outside the ones [`Errno`] knows: the first
/// [`UnknownErrno::MAX_LEN`] bytes of what the daemon sent, with bytes
/// other than printable ASCII replaced by `?`, so it can be logged as is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnknownErrno {
    len: u8,
    bytes: [u8; UnknownErrno::MAX_LEN],
}

impl UnknownErrno {
    /// Most bytes of the name kept.
    pub const MAX_LEN: usize = 16;

    /// Keeps (a bounded, printable prefix of) `name`.
    pub fn new(name: &[u8]) -> Self {
        let mut bytes = [0u8; Self::MAX_LEN];
        let n = name.len().min(Self::MAX_LEN);
        for (dst, &b) in bytes.iter_mut().zip(&name[..n]) {
            *dst = if b.is_ascii_graphic() { b } else { b'?' };
        }
        UnknownErrno {
            len: n as u8,
            bytes,
        }
    }

    /// The name (possibly truncated).
    pub fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..usize::from(self.len)).unwrap_or(&[]);
        // Only printable ASCII is stored.
        core::str::from_utf8(bytes).unwrap_or("?")
    }
}

impl fmt::Debug for UnknownErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for UnknownErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Errno {
    /// Every errno of `xsd_errors`, in its order ([`Errno::EQUOTA`] and
    /// [`Errno::Unknown`] are not part of it).
    pub const ALL: [Errno; 16] = [
        Errno::EINVAL,
        Errno::EACCES,
        Errno::EEXIST,
        Errno::EISDIR,
        Errno::ENOENT,
        Errno::ENOMEM,
        Errno::ENOSPC,
        Errno::EIO,
        Errno::ENOTEMPTY,
        Errno::ENOSYS,
        Errno::EROFS,
        Errno::EBUSY,
        Errno::EAGAIN,
        Errno::EISCONN,
        Errno::E2BIG,
        Errno::EPERM,
    ];

    /// The name as sent on the wire (without the NUL).
    pub fn name(&self) -> &str {
        match self {
            Errno::EINVAL => "EINVAL",
            Errno::EACCES => "EACCES",
            Errno::EEXIST => "EEXIST",
            Errno::EISDIR => "EISDIR",
            Errno::ENOENT => "ENOENT",
            Errno::ENOMEM => "ENOMEM",
            Errno::ENOSPC => "ENOSPC",
            Errno::EIO => "EIO",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::ENOSYS => "ENOSYS",
            Errno::EROFS => "EROFS",
            Errno::EBUSY => "EBUSY",
            Errno::EAGAIN => "EAGAIN",
            Errno::EISCONN => "EISCONN",
            Errno::E2BIG => "E2BIG",
            Errno::EPERM => "EPERM",
            Errno::EQUOTA => "EQUOTA",
            Errno::Unknown(name) => name.as_str(),
        }
    }

    /// Parses a known name exactly as sent on the wire (no NUL): one of
    /// [`Errno::ALL`] or `EQUOTA`; `None` for anything else.
    pub fn from_name(name: &[u8]) -> Option<Errno> {
        if name == b"EQUOTA" {
            return Some(Errno::EQUOTA);
        }
        Errno::ALL
            .iter()
            .copied()
            .find(|e| e.name().as_bytes() == name)
    }

    /// Parses an `XS_ERROR` payload (the name followed by one NUL) with a
    /// known name; `None` for anything else.
    pub fn from_payload(payload: &[u8]) -> Option<Errno> {
        let name = payload.strip_suffix(&[0]).unwrap_or(payload);
        Errno::from_name(name)
    }

    /// The errno of any `XS_ERROR` payload: a known name, or
    /// [`Errno::Unknown`] keeping (a bounded prefix of) what was sent.
    pub fn from_reply(payload: &[u8]) -> Errno {
        let name = payload.strip_suffix(&[0]).unwrap_or(payload);
        Errno::from_name(name).unwrap_or_else(|| Errno::Unknown(UnknownErrno::new(name)))
    }

    /// The Linux errno number, for callers that map to `std::io::Error`.
    /// Names outside `xsd_errors` give `EINVAL`, as in Linux's xenbus.
    pub fn code(self) -> i32 {
        match self {
            Errno::EINVAL => 22,
            Errno::EACCES => 13,
            Errno::EEXIST => 17,
            Errno::EISDIR => 21,
            Errno::ENOENT => 2,
            Errno::ENOMEM => 12,
            Errno::ENOSPC => 28,
            Errno::EIO => 5,
            Errno::ENOTEMPTY => 39,
            Errno::ENOSYS => 38,
            Errno::EROFS => 30,
            Errno::EBUSY => 16,
            Errno::EAGAIN => 11,
            Errno::EISCONN => 106,
            Errno::E2BIG => 7,
            Errno::EPERM => 1,
            Errno::EQUOTA | Errno::Unknown(_) => 22,
        }
    }

    /// A short description of what the daemon means by it.
    pub fn meaning(self) -> &'static str {
        match self {
            Errno::EINVAL => "invalid argument (malformed path, payload or value)",
            Errno::EACCES => "permission denied for this domain",
            Errno::EEXIST => "already exists",
            Errno::EISDIR => "is a directory",
            Errno::ENOENT => "no such node, transaction or domain",
            Errno::ENOMEM => "the daemon is out of memory",
            Errno::ENOSPC => "a quota of this domain is exhausted",
            Errno::EIO => "the daemon hit an internal I/O error",
            Errno::ENOTEMPTY => "not empty",
            Errno::ENOSYS => "operation not supported by this daemon",
            Errno::EROFS => "the connection is read-only",
            Errno::EBUSY => "busy (too many outstanding requests or transactions)",
            Errno::EAGAIN => "the transaction conflicted with another change; retry it",
            Errno::EISCONN => "already connected",
            Errno::E2BIG => "the reply would exceed the payload limit",
            Errno::EPERM => "operation not permitted",
            Errno::EQUOTA => "a quota of this domain is exhausted",
            Errno::Unknown(_) => "an error this client does not know",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The message header (`struct xsd_sockmsg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// Raw message type (see [`MsgType`]).
    pub msg_type: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Decodes a header from its 16 bytes (native endianness, as in C).
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Header {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            msg_type: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..4].copy_from_slice(&self.msg_type.to_ne_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_ne_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_ne_bytes());
        out[12..16].copy_from_slice(&self.len.to_ne_bytes());
        out
    }
}

/// A whole, checked message: known type, payload within the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The message type.
    pub msg_type: MsgType,
    /// Request id.
    pub req_id: u32,
    /// Transaction id.
    pub tx_id: u32,
    /// The payload (at most [`XENSTORE_PAYLOAD_MAX`] bytes).
    pub payload: Vec<u8>,
}

impl Message {
    /// A message; fails if the payload is longer than the protocol allows.
    pub fn new(
        msg_type: MsgType,
        req_id: u32,
        tx_id: u32,
        payload: Vec<u8>,
    ) -> Result<Message, WireError> {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(WireError::PayloadTooLong {
                len: payload.len() as u64,
                max: XENSTORE_PAYLOAD_MAX,
            });
        }
        Ok(Message {
            msg_type,
            req_id,
            tx_id,
            payload,
        })
    }

    /// The header for this message.
    pub fn header(&self) -> Header {
        Header {
            msg_type: self.msg_type.raw(),
            req_id: self.req_id,
            tx_id: self.tx_id,
            // Bounded by `XENSTORE_PAYLOAD_MAX` at construction.
            len: self.payload.len() as u32,
        }
    }

    /// Appends the encoded message (header and payload) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header().to_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// The encoded message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_SIZE + self.payload.len());
        self.encode_into(&mut out);
        out
    }

    /// The payload split into NUL-terminated strings (see [`split_strings`]).
    pub fn strings(&self) -> Result<Vec<&[u8]>, WireError> {
        split_strings(&self.payload)
    }
}

/// Splits a payload made of NUL-terminated strings. Every string must be
/// terminated; an empty payload has no strings.
pub fn split_strings(payload: &[u8]) -> Result<Vec<&[u8]>, WireError> {
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let body = payload
        .strip_suffix(&[0])
        .ok_or(WireError::UnterminatedString)?;
    Ok(body.split(|&b| b == 0).collect())
}

/// Builds a payload from strings, each followed by a NUL.
pub fn join_strings<S: AsRef<[u8]>>(parts: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_ref());
        out.push(0);
    }
    out
}

/// Why bytes could not be decoded into a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fatal: a header announced a payload longer than the protocol allows.
    /// The stream cannot be resynchronised; drop the connection.
    PayloadTooLong {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// Not fatal: a whole message of an unknown type was consumed. The
    /// stream is still in step; answer `ENOSYS` (server) or drop the
    /// message (client).
    UnknownType {
        /// The raw type.
        msg_type: u32,
        /// Its request id, for the error reply.
        req_id: u32,
        /// Its transaction id.
        tx_id: u32,
    },
    /// A payload that must be NUL-terminated strings is not.
    UnterminatedString,
}

impl WireError {
    /// Whether the byte stream is out of step for good.
    pub fn is_fatal(&self) -> bool {
        matches!(self, WireError::PayloadTooLong { .. })
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::PayloadTooLong { len, max } => write!(
                f,
                "xenstore message header announces a {len}-byte payload, more than the protocol's {max}: \
                 the peer is broken or hostile; close the connection"
            ),
            WireError::UnknownType { msg_type, req_id, .. } => write!(
                f,
                "xenstore message of unknown type {msg_type} (request {req_id}); it was skipped"
            ),
            WireError::UnterminatedString => {
                write!(f, "xenstore payload is not a list of NUL-terminated strings")
            }
        }
    }
}

/// A streaming decoder: bytes in arbitrary chunks in, whole messages out.
///
/// Holds at most one header and one payload of at most
/// [`XENSTORE_PAYLOAD_MAX`] bytes. After a fatal error it keeps returning
/// that error.
#[derive(Debug, Default)]
pub struct Decoder {
    header_buf: [u8; HEADER_SIZE],
    header_len: usize,
    header: Option<Header>,
    payload: Vec<u8>,
    failed: Option<WireError>,
}

impl Decoder {
    /// A decoder at a message boundary.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether the decoder is between messages (no partial message held).
    pub fn is_idle(&self) -> bool {
        self.header_len == 0 && self.header.is_none() && self.failed.is_none()
    }

    /// The fatal error the decoder stopped on, if any.
    pub fn failure(&self) -> Option<&WireError> {
        self.failed.as_ref()
    }

    /// Consumes bytes from the front of `input` until one message is
    /// complete (returned) or `input` is empty (`Ok(None)`). Bytes after a
    /// complete message stay in `input` for the next call.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Message>, WireError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.header.is_none() {
            let want = HEADER_SIZE - self.header_len;
            let take = want.min(input.len());
            let (head, rest) = input.split_at(take);
            self.header_buf[self.header_len..self.header_len + take].copy_from_slice(head);
            self.header_len += take;
            *input = rest;
            if self.header_len < HEADER_SIZE {
                return Ok(None);
            }
            let header = Header::from_bytes(&self.header_buf);
            self.header_len = 0;
            if header.len as usize > XENSTORE_PAYLOAD_MAX {
                let err = WireError::PayloadTooLong {
                    len: u64::from(header.len),
                    max: XENSTORE_PAYLOAD_MAX,
                };
                self.failed = Some(err.clone());
                return Err(err);
            }
            self.payload.clear();
            self.payload.reserve(header.len as usize);
            self.header = Some(header);
        }
        let Some(header) = self.header else {
            return Ok(None);
        };
        let want = (header.len as usize).saturating_sub(self.payload.len());
        let take = want.min(input.len());
        let (head, rest) = input.split_at(take);
        self.payload.extend_from_slice(head);
        *input = rest;
        if self.payload.len() < header.len as usize {
            return Ok(None);
        }
        self.header = None;
        let payload = core::mem::take(&mut self.payload);
        match MsgType::from_raw(header.msg_type) {
            Some(msg_type) => Ok(Some(Message {
                msg_type,
                req_id: header.req_id,
                tx_id: header.tx_id,
                payload,
            })),
            None => Err(WireError::UnknownType {
                msg_type: header.msg_type,
                req_id: header.req_id,
                tx_id: header.tx_id,
            }),
        }
    }
}

/// Parses a decimal `u32` strictly: ASCII digits only, no sign, no spaces,
/// no leading zeros (except "0"), no overflow.
pub fn parse_u32_strict(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || (s.len() > 1 && s[0] == b'0') {
        return None;
    }
    let mut v: u32 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
    }
    Some(v)
}

/// Formats a `u32` in decimal into a `String`.
pub fn u32_string(v: u32) -> String {
    use core::fmt::Write;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(s, "{v}");
    s
}
