//! The connection exchanges of rdma-core's `ibv_rc_pingpong` and of
//! perftest's latency tests (`ib_send_lat`, `ib_write_lat`), so that the
//! unmodified tools can be the peer of a queue pair in this crate.
//!
//! Both tools learn the remote queue pair's attributes (LID, QPN, PSN, GID
//! and, for perftest, the remote key and address) over a TCP connection to
//! port 18515 before any RoCE packet flows. This module holds the wire
//! formats (each message formatted, and parsed from a copy with every field
//! validated) and the two conversations as byte-level state machines that
//! own no socket ([`PingpongSession`], [`PerftestSession`], both
//! [`Exchange`]s); [`smol`] (feature `smoltcp`) runs one over a smoltcp TCP
//! socket, as server or as client.
//!
//! # `ibv_rc_pingpong` (rdma-core `libibverbs/examples/rc_pingpong.c`)
//! One text message per side, `"%04x:%06x:%06x:%s"` of LID, QPN, PSN and
//! the GID as 32 hex digits (its 16 bytes in order), written with its
//! terminating NUL: always [`PINGPONG_MSG_LEN`] = 52 bytes. The client
//! connects and writes its message, reads the server's, writes `"done"`
//! with its NUL (5 bytes) and closes; then it moves its QP to RTR and RTS
//! and sends first. The server reads the client's message, moves its QP to
//! RTR and RTS, writes its message and reads the `"done"`. Each side reads
//! a message with one `read` of exactly its size, so each message must
//! arrive in one segment ([`smol`] sends each as one write, Nagle off).
//!
//! What the tool does with the queue pair (rdma-core 44, the version
//! Debian bookworm ships; unchanged since):
//! - PSN: `lrand48() & 0xffffff`; QPN: the device's.
//! - path MTU 1024 unless `-m` (256 to 4096); the GID index only with `-g`
//!   (without it the GID is zero and the QP is not global, which RoCE
//!   cannot carry: always give `-g` the RoCE v2 IPv4 index); SL 0; hop
//!   limit 1 (the IPv4 TTL the peer sends).
//! - RTR: `max_dest_rd_atomic` 1, `min_rnr_timer` 12; RTS: `timeout` 14
//!   (4.096 µs × 2^14 ≈ 67 ms), `retry_cnt` 7, `rnr_retry` 7 (retry RNR
//!   forever), `max_rd_atomic` 1.
//! - Messages: `-s` bytes (default 4096) of SEND (no immediate), signalled;
//!   inline when the device's `max_inline_data` covers the size. Both sides
//!   send from, and receive into, one buffer filled with `0x7b`
//!   ([`PINGPONG_FILL`]); with `-c` the client first writes byte 0 of each
//!   page as `(i / page_size) % sizeof(char)`, which is 0. `-r` receives
//!   (default 500) are posted before the exchange; `-n` round trips
//!   (default 1000). Each side posts its next SEND once its previous SEND
//!   and one receive completed.
//!
//! # perftest (`src/perftest_communication.c`, `send_lat.c`, `write_lat.c`)
//! This is perftest 4.5-0.17 (the version Debian bookworm ships; its
//! `VERSION` is `"6.06"`), with the default socket exchange (no `-R`
//! rdma_cm, no `-z`). The client (the side given a server name) always
//! writes first and then reads; the server reads, then writes. In order:
//! 1. the version: 16 bytes, `"6.06"` padded with NULs
//!    ([`PERFTEST_VERSION_LEN`]); each side refuses a peer older than 5.70;
//! 2. the cycle buffer (the page size, 4096) and 3. the cache line size
//!    (64), each a 4-byte big-endian `int`; each side keeps the larger;
//! 4. the MTU: the `enum ibv_mtu` value of the port's active MTU (1 = 256
//!    .. 5 = 4096) as `"%d"` in 2 bytes (`"3\0"` for 1024); each side uses
//!    the smaller ([`negotiated_mtu`]);
//! 5. the queue pair's attributes, several times (see [`PerftestTest`]):
//!    `"%04x:%04x:%06x:%06x:%08x:%016llx:"` of LID, outstanding reads, QPN,
//!    PSN, R_Key and buffer address, then the 16 GID bytes as `"%02x:"`
//!    each and the SRQ number as `"%08x:"`, with its NUL: 108 bytes
//!    ([`PERFTEST_MSG_GID_LEN`]). Over RoCE the GID form is always used
//!    (perftest picks the GID index itself: a RoCE v2, IPv4-mapped entry);
//!    without a GID the message is `"...:%016llx:%08x"`, 59 bytes
//!    ([`PERFTEST_MSG_LEN`]).
//!
//! `ib_send_lat` exchanges the attributes once before its QP goes to
//! RTR/RTS, twice after (the second after the receives are posted: the
//! client sends only after it), and once more after the run, followed by
//! `"done"` with its NUL from each side (neither reads it). `ib_write_lat`
//! exchanges them twice before RTR/RTS and twice after; nothing follows
//! the run.
//!
//! What the latency tests do with the queue pair: PSN `lrand48() &
//! 0xffffff`; the path MTU as above; `timeout` 14, `retry_cnt` 7,
//! `rnr_retry` 7, `min_rnr_timer` 12, hop limit 255, traffic class 0;
//! `-s` bytes per message (default 2, [`PERFTEST_DEFAULT_SIZE`]), `-n`
//! iterations (default 1000); inline sends when the size is at most the
//! default inline size (236 bytes for SEND, 220 for WRITE, within what the
//! device allows); opcodes SEND and RDMA WRITE, never with immediate data.
//! - `ib_send_lat`: the client sends first, each side sends after each
//!   receive; the buffer holds random bytes (one `rand()` fill), so every
//!   message of a run carries the same bytes; only every `cq_mod`-th and
//!   the last send are signalled.
//! - `ib_write_lat`: the **server** writes first; each side writes `size`
//!   bytes to the address and R_Key the other advertised, from a zeroed
//!   buffer whose last byte is set to the iteration number (`(char)n`, n
//!   from 1) before each write, and detects the other's write by polling
//!   the last byte of its own advertised buffer (`vaddr + size - 1`) until
//!   it equals the next expected number ([`write_lat_payload`]). Each side
//!   waits for the completion of its write before it polls again.
//!
//! # Hostile peers
//! Every message is parsed from the bytes the caller owns, with each field
//! checked for its exact width, hex digits, separators, terminator and
//! range; anything else is an [`ExchangeError`] naming the field. A peer
//! that sends more than the conversation's next message is not read ahead
//! of (the sessions ask for exactly the next message's length).

use alloc::vec::Vec;
use core::fmt;

/// The TCP port both tools use by default.
pub const DEFAULT_PORT: u16 = 18515;
/// The length of `ibv_rc_pingpong`'s message, NUL included.
pub const PINGPONG_MSG_LEN: usize = 52;
/// The closing message of `ibv_rc_pingpong` and `ib_send_lat`, NUL
/// included.
pub const DONE: &[u8; 5] = b"done\0";
/// The byte `ibv_rc_pingpong` fills its buffer with.
pub const PINGPONG_FILL: u8 = 0x7b;
/// `ibv_rc_pingpong`'s default message size.
pub const PINGPONG_DEFAULT_SIZE: usize = 4096;
/// `ibv_rc_pingpong`'s default path MTU.
pub const PINGPONG_DEFAULT_MTU: usize = 1024;
/// perftest's attribute message without a GID, NUL included.
pub const PERFTEST_MSG_LEN: usize = 59;
/// perftest's attribute message with a GID, NUL included.
pub const PERFTEST_MSG_GID_LEN: usize = 108;
/// The length of perftest's version field.
pub const PERFTEST_VERSION_LEN: usize = 16;
/// The version perftest 4.5-0.17 sends (and this end sends).
pub const PERFTEST_VERSION: &str = "6.06";
/// The oldest peer version perftest accepts, as (major, hundredths).
pub const PERFTEST_MIN_VERSION: (u32, u32) = (5, 70);
/// perftest's default message size in latency tests.
pub const PERFTEST_DEFAULT_SIZE: usize = 2;
/// perftest's cycle buffer (the page size) and cache line size.
pub const PERFTEST_CYCLE_BUFFER: u32 = 4096;
/// perftest's default cache line size.
pub const PERFTEST_CACHE_LINE: u32 = 64;
/// The largest cycle buffer or cache line size accepted from a peer.
const MAX_SYS_VALUE: u32 = 1 << 30;

/// A GID: 16 bytes in network order (an IPv6 address; RoCE v2 over IPv4
/// uses the IPv4-mapped form `::ffff:a.b.c.d`).
pub type Gid = [u8; 16];

/// The IPv4-mapped GID of an IPv4 address.
pub const fn gid_from_ipv4(ip: [u8; 4]) -> Gid {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[0], ip[1], ip[2], ip[3],
    ]
}

/// The IPv4 address of an IPv4-mapped GID.
pub fn gid_ipv4(gid: &Gid) -> Option<[u8; 4]> {
    let (prefix, ip) = gid.split_at(12);
    if prefix != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        return None;
    }
    let mut out = [0u8; 4];
    out.copy_from_slice(ip);
    Some(out)
}

/// Why a message of the exchange was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeError {
    /// A message of the wrong length.
    Length {
        /// Which message.
        what: &'static str,
        /// Its length on the wire.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A field holds something other than hex digits.
    NotHex {
        /// The field.
        field: &'static str,
        /// The offset of the bad byte in the message.
        offset: usize,
    },
    /// A separator or terminator is missing.
    Separator {
        /// The byte expected (`:` or NUL).
        expected: u8,
        /// The offset in the message.
        offset: usize,
    },
    /// A field's value is out of its range.
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// perftest's version field is not a NUL-terminated `major.minor`.
    BadVersion,
    /// The peer's perftest is older than the oldest this exchange speaks.
    VersionTooOld {
        /// Its major version.
        major: u32,
        /// Its minor version in hundredths.
        minor: u32,
    },
    /// perftest's MTU field is not `"1"` to `"5"` and a NUL.
    BadMtu([u8; 2]),
    /// The closing message is not `"done"` and a NUL.
    BadDone,
    /// A later attribute message differs from the first.
    DestChanged,
    /// The peer's GID is not IPv4-mapped (this transport is RoCE v2 over
    /// IPv4).
    NotIpv4(Gid),
    /// More bytes than the conversation's next message.
    Unexpected {
        /// Bytes given.
        len: usize,
        /// Bytes wanted now.
        wanted: usize,
    },
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::Length {
                what,
                expected,
                got,
            } => write!(
                f,
                "{what}: {got} bytes where the tools write {expected}; is the peer the tool (and version) this side expects?"
            ),
            ExchangeError::NotHex { field, offset } => {
                write!(f, "{field}: a byte that is no hex digit at offset {offset}")
            }
            ExchangeError::Separator { expected, offset } => write!(
                f,
                "expected {} at offset {offset}",
                if *expected == 0 { "the NUL terminator" } else { "':'" }
            ),
            ExchangeError::OutOfRange { field, value } => {
                write!(f, "{field} {value:#x} is out of its range")
            }
            ExchangeError::BadVersion => write!(
                f,
                "perftest's version field is not a NUL-terminated \"major.minor\""
            ),
            ExchangeError::VersionTooOld { major, minor } => write!(
                f,
                "the peer's perftest is version {major}.{minor:02}; this side speaks the exchange of 5.70 and later: update perftest"
            ),
            ExchangeError::BadMtu(b) => write!(
                f,
                "perftest's MTU field {b:02x?} is not an ibv_mtu value (\"1\" to \"5\") and a NUL"
            ),
            ExchangeError::BadDone => write!(f, "the closing message is not \"done\""),
            ExchangeError::DestChanged => write!(
                f,
                "the peer's queue pair attributes changed between two exchanges"
            ),
            ExchangeError::NotIpv4(g) => write!(
                f,
                "the peer's GID {g:02x?} is not IPv4-mapped: give the tool the RoCE v2 IPv4 GID index (-g / -x)"
            ),
            ExchangeError::Unexpected { len, wanted } => write!(
                f,
                "{len} bytes from the peer where the exchange wants {wanted} now"
            ),
        }
    }
}

impl core::error::Error for ExchangeError {}

// ---------------------------------------------------------------------------
// Field helpers.

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reads a fixed-width hex field at `*at`, then moves past it.
fn hex_field(
    msg: &[u8],
    at: &mut usize,
    width: usize,
    field: &'static str,
) -> Result<u64, ExchangeError> {
    let mut v: u64 = 0;
    for i in 0..width {
        let offset = *at + i;
        let b = *msg.get(offset).ok_or(ExchangeError::Separator {
            expected: 0,
            offset,
        })?;
        let d = hex_digit(b).ok_or(ExchangeError::NotHex { field, offset })?;
        v = (v << 4) | u64::from(d);
    }
    *at += width;
    Ok(v)
}

/// Expects `byte` at `*at`, then moves past it.
fn expect(msg: &[u8], at: &mut usize, byte: u8) -> Result<(), ExchangeError> {
    if msg.get(*at) != Some(&byte) {
        return Err(ExchangeError::Separator {
            expected: byte,
            offset: *at,
        });
    }
    *at += 1;
    Ok(())
}

fn push_hex(out: &mut Vec<u8>, v: u64, width: usize) {
    for i in (0..width).rev() {
        let d = ((v >> (4 * i)) & 0xf) as u8;
        out.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
    }
}

fn check_len(msg: &[u8], what: &'static str, expected: usize) -> Result<(), ExchangeError> {
    if msg.len() != expected {
        return Err(ExchangeError::Length {
            what,
            expected,
            got: msg.len(),
        });
    }
    Ok(())
}

fn check_24(field: &'static str, v: u64) -> Result<u32, ExchangeError> {
    if v > 0x00ff_ffff {
        return Err(ExchangeError::OutOfRange { field, value: v });
    }
    Ok(v as u32)
}

/// QPNs 0 and 1 are the management queue pairs, never a reliable-connected
/// peer.
fn check_qpn(v: u64) -> Result<u32, ExchangeError> {
    let q = check_24("QPN", v)?;
    if q < 2 {
        return Err(ExchangeError::OutOfRange {
            field: "QPN",
            value: v,
        });
    }
    Ok(q)
}

// ---------------------------------------------------------------------------
// ibv_rc_pingpong.

/// `ibv_rc_pingpong`'s `struct pingpong_dest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingpongDest {
    /// The port's LID (0 over RoCE).
    pub lid: u16,
    /// The queue pair number (24 bits, at least 2).
    pub qpn: u32,
    /// The first PSN the queue pair sends (24 bits).
    pub psn: u32,
    /// The GID (all zero when the tool ran without `-g`).
    pub gid: Gid,
}

/// `ibv_rc_pingpong`'s message for `d`: 51 characters and a NUL.
pub fn format_pingpong(d: &PingpongDest) -> [u8; PINGPONG_MSG_LEN] {
    let mut v = Vec::with_capacity(PINGPONG_MSG_LEN);
    push_hex(&mut v, u64::from(d.lid), 4);
    v.push(b':');
    push_hex(&mut v, u64::from(d.qpn & 0x00ff_ffff), 6);
    v.push(b':');
    push_hex(&mut v, u64::from(d.psn & 0x00ff_ffff), 6);
    v.push(b':');
    for b in d.gid {
        push_hex(&mut v, u64::from(b), 2);
    }
    v.push(0);
    let mut out = [0u8; PINGPONG_MSG_LEN];
    out.copy_from_slice(&v);
    out
}

/// Parses `ibv_rc_pingpong`'s message (exactly [`PINGPONG_MSG_LEN`] bytes).
pub fn parse_pingpong(msg: &[u8]) -> Result<PingpongDest, ExchangeError> {
    check_len(msg, "ibv_rc_pingpong's address message", PINGPONG_MSG_LEN)?;
    let mut at = 0;
    let lid = hex_field(msg, &mut at, 4, "LID")? as u16;
    expect(msg, &mut at, b':')?;
    let qpn = check_qpn(hex_field(msg, &mut at, 6, "QPN")?)?;
    expect(msg, &mut at, b':')?;
    let psn = check_24("PSN", hex_field(msg, &mut at, 6, "PSN")?)?;
    expect(msg, &mut at, b':')?;
    let mut gid = [0u8; 16];
    for g in gid.iter_mut() {
        *g = hex_field(msg, &mut at, 2, "GID")? as u8;
    }
    expect(msg, &mut at, 0)?;
    Ok(PingpongDest { lid, qpn, psn, gid })
}

// ---------------------------------------------------------------------------
// perftest.

/// perftest's `struct pingpong_dest`, as exchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerftestDest {
    /// The port's LID (0 over RoCE).
    pub lid: u16,
    /// Outstanding RDMA READs (used by the READ tests only).
    pub out_reads: u16,
    /// The queue pair number (24 bits, at least 2).
    pub qpn: u32,
    /// The first PSN it sends (24 bits).
    pub psn: u32,
    /// The remote key of its buffer.
    pub rkey: u32,
    /// The address of the buffer the peer writes (RDMA WRITE tests).
    pub vaddr: u64,
    /// The GID (the 108-byte form), or none (the 59-byte form).
    pub gid: Option<Gid>,
    /// The SRQ number (XRC and DC only; 0 otherwise).
    pub srqn: u32,
}

/// perftest's message for `d`: [`PERFTEST_MSG_GID_LEN`] bytes with a GID,
/// [`PERFTEST_MSG_LEN`] without.
pub fn format_perftest(d: &PerftestDest) -> Vec<u8> {
    let mut v = Vec::with_capacity(PERFTEST_MSG_GID_LEN);
    push_hex(&mut v, u64::from(d.lid), 4);
    v.push(b':');
    push_hex(&mut v, u64::from(d.out_reads), 4);
    v.push(b':');
    push_hex(&mut v, u64::from(d.qpn & 0x00ff_ffff), 6);
    v.push(b':');
    push_hex(&mut v, u64::from(d.psn & 0x00ff_ffff), 6);
    v.push(b':');
    push_hex(&mut v, u64::from(d.rkey), 8);
    v.push(b':');
    push_hex(&mut v, d.vaddr, 16);
    v.push(b':');
    if let Some(gid) = d.gid {
        for b in gid {
            push_hex(&mut v, u64::from(b), 2);
            v.push(b':');
        }
        push_hex(&mut v, u64::from(d.srqn), 8);
        v.push(b':');
    } else {
        push_hex(&mut v, u64::from(d.srqn), 8);
    }
    v.push(0);
    v
}

/// Parses perftest's attribute message: the GID form (108 bytes) when
/// `with_gid`, else the 59-byte form.
pub fn parse_perftest(msg: &[u8], with_gid: bool) -> Result<PerftestDest, ExchangeError> {
    let expected = if with_gid {
        PERFTEST_MSG_GID_LEN
    } else {
        PERFTEST_MSG_LEN
    };
    check_len(msg, "perftest's address message", expected)?;
    let mut at = 0;
    let lid = hex_field(msg, &mut at, 4, "LID")? as u16;
    expect(msg, &mut at, b':')?;
    let out_reads = hex_field(msg, &mut at, 4, "outstanding reads")? as u16;
    expect(msg, &mut at, b':')?;
    let qpn = check_qpn(hex_field(msg, &mut at, 6, "QPN")?)?;
    expect(msg, &mut at, b':')?;
    let psn = check_24("PSN", hex_field(msg, &mut at, 6, "PSN")?)?;
    expect(msg, &mut at, b':')?;
    let rkey = hex_field(msg, &mut at, 8, "R_Key")? as u32;
    expect(msg, &mut at, b':')?;
    let vaddr = hex_field(msg, &mut at, 16, "buffer address")?;
    expect(msg, &mut at, b':')?;
    let gid = if with_gid {
        let mut gid = [0u8; 16];
        for g in gid.iter_mut() {
            *g = hex_field(msg, &mut at, 2, "GID")? as u8;
            expect(msg, &mut at, b':')?;
        }
        Some(gid)
    } else {
        None
    };
    let srqn = hex_field(msg, &mut at, 8, "SRQ number")? as u32;
    if with_gid {
        expect(msg, &mut at, b':')?;
    }
    expect(msg, &mut at, 0)?;
    Ok(PerftestDest {
        lid,
        out_reads,
        qpn,
        psn,
        rkey,
        vaddr,
        gid,
        srqn,
    })
}

/// perftest's version field for `version` (truncated to 15 bytes, NUL
/// padded).
pub fn format_perftest_version(version: &str) -> [u8; PERFTEST_VERSION_LEN] {
    let mut out = [0u8; PERFTEST_VERSION_LEN];
    let n = version.len().min(PERFTEST_VERSION_LEN - 1);
    out[..n].copy_from_slice(&version.as_bytes()[..n]);
    out
}

/// Parses perftest's version field into (major, minor in hundredths):
/// `"6.06"` is (6, 6), `"5.7"` is (5, 70); the comparison perftest makes
/// with `atof`.
pub fn parse_perftest_version(field: &[u8]) -> Result<(u32, u32), ExchangeError> {
    check_len(field, "perftest's version", PERFTEST_VERSION_LEN)?;
    let end = field
        .iter()
        .position(|&b| b == 0)
        .ok_or(ExchangeError::BadVersion)?;
    let text = &field[..end];
    let dot = text
        .iter()
        .position(|&b| b == b'.')
        .ok_or(ExchangeError::BadVersion)?;
    let (major, minor) = (&text[..dot], &text[dot + 1..]);
    if major.is_empty() || major.len() > 4 || minor.is_empty() || minor.len() > 4 {
        return Err(ExchangeError::BadVersion);
    }
    let mut maj = 0u32;
    for &b in major {
        if !b.is_ascii_digit() {
            return Err(ExchangeError::BadVersion);
        }
        maj = maj * 10 + u32::from(b - b'0');
    }
    // Hundredths: the first two fractional digits, the rest must be digits.
    let mut min = 0u32;
    for (i, &b) in minor.iter().enumerate() {
        if !b.is_ascii_digit() {
            return Err(ExchangeError::BadVersion);
        }
        if i < 2 {
            min = min * 10 + u32::from(b - b'0');
        }
    }
    if minor.len() == 1 {
        min *= 10;
    }
    Ok((maj, min))
}

/// perftest's 4-byte big-endian `int` (cycle buffer, cache line size),
/// checked to be in 1..=2^30.
pub fn parse_perftest_sys(field: &[u8], what: &'static str) -> Result<u32, ExchangeError> {
    check_len(field, what, 4)?;
    let v = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
    if v == 0 || v > MAX_SYS_VALUE {
        return Err(ExchangeError::OutOfRange {
            field: what,
            value: u64::from(v),
        });
    }
    Ok(v)
}

/// `enum ibv_mtu` of a path MTU in bytes (1 for 256 .. 5 for 4096).
pub fn mtu_enum(mtu: usize) -> Option<u8> {
    match mtu {
        256 => Some(1),
        512 => Some(2),
        1024 => Some(3),
        2048 => Some(4),
        4096 => Some(5),
        _ => None,
    }
}

/// perftest's MTU field for a path MTU in bytes: the enum's digit and a
/// NUL (`None` for a size that is no IB MTU).
pub fn format_perftest_mtu(mtu: usize) -> Option<[u8; 2]> {
    mtu_enum(mtu).map(|e| [b'0' + e, 0])
}

/// Parses perftest's MTU field into bytes (256 .. 4096).
pub fn parse_perftest_mtu(field: &[u8]) -> Result<usize, ExchangeError> {
    check_len(field, "perftest's MTU", 2)?;
    let b = [field[0], field[1]];
    match b {
        [d @ b'1'..=b'5', 0] => Ok(128usize << (d - b'0')),
        _ => Err(ExchangeError::BadMtu(b)),
    }
}

/// The path MTU both ends of a perftest run use: the smaller of the two.
pub fn negotiated_mtu(local: usize, remote: usize) -> usize {
    local.min(remote)
}

/// What one RDMA WRITE of iteration `n` (from 1) of `ib_write_lat` holds:
/// `size` bytes, zero but the last, which is `n` as a `char`.
pub fn write_lat_payload(size: usize, n: u64) -> Vec<u8> {
    let mut v = alloc::vec![0u8; size];
    if let Some(last) = v.last_mut() {
        *last = n as u8;
    }
    v
}

// ---------------------------------------------------------------------------
// The conversations.

/// Which end of the TCP connection this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Listens; reads first.
    Server,
    /// Connects; writes first.
    Client,
}

/// A conversation over a byte stream, without the stream: it says what to
/// write and how many bytes it reads next, and takes what was read.
pub trait Exchange {
    /// Bytes to write now (empty when there are none).
    fn pending_output(&self) -> &[u8];
    /// `n` bytes of [`Exchange::pending_output`] were written.
    fn output_written(&mut self, n: usize);
    /// How many bytes the conversation reads next (0: none now).
    fn wanted_input(&self) -> usize;
    /// Bytes read from the peer: at most [`Exchange::wanted_input`].
    fn input(&mut self, data: &[u8]) -> Result<(), ExchangeError>;
    /// Whether the conversation is over (everything written and read).
    fn is_done(&self) -> bool;
    /// Whether it waits for the application (see the sessions' docs).
    fn is_paused(&self) -> bool;
}

/// A step of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Read a message of this kind.
    Read(Expect),
    /// Wait for the application.
    Pause,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Pingpong,
    Done,
    Version,
    Sys(&'static str),
    Mtu,
    Keys(bool),
}

impl Expect {
    fn len(self) -> usize {
        match self {
            Expect::Pingpong => PINGPONG_MSG_LEN,
            Expect::Done => DONE.len(),
            Expect::Version => PERFTEST_VERSION_LEN,
            Expect::Sys(_) => 4,
            Expect::Mtu => 2,
            Expect::Keys(true) => PERFTEST_MSG_GID_LEN,
            Expect::Keys(false) => PERFTEST_MSG_LEN,
        }
    }
}

/// The step machinery both sessions share: a list of steps, the bytes of
/// the current one written or read so far.
#[derive(Clone, Debug)]
struct Script {
    steps: Vec<Step>,
    at: usize,
    written: usize,
    buf: Vec<u8>,
}

impl Script {
    fn new(steps: Vec<Step>) -> Script {
        let mut s = Script {
            steps,
            at: 0,
            written: 0,
            buf: Vec::new(),
        };
        s.skip_empty();
        s
    }

    fn current(&self) -> Option<&Step> {
        self.steps.get(self.at)
    }

    fn advance(&mut self) {
        self.at += 1;
        self.written = 0;
        self.buf.clear();
        self.skip_empty();
    }

    fn skip_empty(&mut self) {
        while let Some(Step::Write(w)) = self.steps.get(self.at) {
            if !w.is_empty() {
                break;
            }
            self.at += 1;
        }
    }

    fn pending_output(&self) -> &[u8] {
        match self.current() {
            Some(Step::Write(w)) => w.get(self.written..).unwrap_or(&[]),
            _ => &[],
        }
    }

    fn output_written(&mut self, n: usize) {
        if let Some(Step::Write(w)) = self.current() {
            let len = w.len();
            self.written = self.written.saturating_add(n).min(len);
            if self.written == len {
                self.advance();
            }
        }
    }

    fn wanted_input(&self) -> usize {
        match self.current() {
            Some(Step::Read(e)) => e.len().saturating_sub(self.buf.len()),
            _ => 0,
        }
    }

    /// Takes input; returns a complete message and its kind when one is.
    fn input(&mut self, data: &[u8]) -> Result<Option<(Expect, Vec<u8>)>, ExchangeError> {
        let wanted = self.wanted_input();
        if data.len() > wanted {
            return Err(ExchangeError::Unexpected {
                len: data.len(),
                wanted,
            });
        }
        let Some(Step::Read(e)) = self.current() else {
            return Ok(None);
        };
        let e = *e;
        self.buf.extend_from_slice(data);
        if self.buf.len() < e.len() {
            return Ok(None);
        }
        let msg = core::mem::take(&mut self.buf);
        self.advance();
        Ok(Some((e, msg)))
    }

    fn resume(&mut self) {
        if let Some(Step::Pause) = self.current() {
            self.advance();
        }
    }

    fn is_paused(&self) -> bool {
        matches!(self.current(), Some(Step::Pause))
    }

    fn is_done(&self) -> bool {
        self.at >= self.steps.len()
    }
}

/// `ibv_rc_pingpong`'s exchange from one side.
///
/// It pauses once the peer's attributes are known
/// ([`PingpongSession::remote`]): the application sets its queue pair up
/// (and, as server, posts its receives) and calls
/// [`PingpongSession::resume`]; the client then writes `"done"` and the
/// server writes its message and reads `"done"`.
#[derive(Clone, Debug)]
pub struct PingpongSession {
    script: Script,
    remote: Option<PingpongDest>,
}

impl PingpongSession {
    /// A session for `role` that sends `local`.
    pub fn new(role: Role, local: &PingpongDest) -> PingpongSession {
        let msg = format_pingpong(local).to_vec();
        let steps = match role {
            Role::Client => alloc::vec![
                Step::Write(msg),
                Step::Read(Expect::Pingpong),
                Step::Pause,
                Step::Write(DONE.to_vec()),
            ],
            Role::Server => alloc::vec![
                Step::Read(Expect::Pingpong),
                Step::Pause,
                Step::Write(msg),
                Step::Read(Expect::Done),
            ],
        };
        PingpongSession {
            script: Script::new(steps),
            remote: None,
        }
    }

    /// The peer's attributes, once read.
    pub fn remote(&self) -> Option<&PingpongDest> {
        self.remote.as_ref()
    }

    /// The application's queue pair is ready: go on.
    pub fn resume(&mut self) {
        self.script.resume();
    }
}

impl Exchange for PingpongSession {
    fn pending_output(&self) -> &[u8] {
        self.script.pending_output()
    }
    fn output_written(&mut self, n: usize) {
        self.script.output_written(n);
    }
    fn wanted_input(&self) -> usize {
        self.script.wanted_input()
    }
    fn input(&mut self, data: &[u8]) -> Result<(), ExchangeError> {
        match self.script.input(data)? {
            Some((Expect::Pingpong, msg)) => {
                self.remote = Some(parse_pingpong(&msg)?);
            }
            Some((_, msg)) if msg != DONE => return Err(ExchangeError::BadDone),
            _ => {}
        }
        Ok(())
    }
    fn is_done(&self) -> bool {
        self.script.is_done()
    }
    fn is_paused(&self) -> bool {
        self.script.is_paused()
    }
}

/// Which perftest latency test the peer runs (their exchanges differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerftestTest {
    /// `ib_send_lat`: attributes once before RTR/RTS, twice after, and
    /// once after the run followed by `"done"` from each side.
    SendLat,
    /// `ib_write_lat`: attributes twice before RTR/RTS and twice after;
    /// nothing after the run.
    WriteLat,
}

/// Where a perftest session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerftestPhase {
    /// Exchanging the preamble and the first attributes.
    Connecting,
    /// Paused: the peer's attributes and the MTU are known; set the queue
    /// pair up, post its receives, then [`PerftestSession::resume`].
    SetUpQp,
    /// Exchanging the attributes after RTR/RTS (the last one tells the
    /// peer the receives are posted).
    Syncing,
    /// Paused: run the test, then [`PerftestSession::resume`].
    Run,
    /// The exchange after the run.
    Closing,
    /// Over.
    Done,
}

/// perftest's exchange (default socket exchange, one queue pair) from one
/// side. It pauses twice: once the peer's attributes and the MTU are known
/// ([`PerftestPhase::SetUpQp`]) and when the test is to run
/// ([`PerftestPhase::Run`]).
#[derive(Clone, Debug)]
pub struct PerftestSession {
    script: Script,
    pauses: usize,
    with_gid: bool,
    local_mtu: usize,
    remote: Option<PerftestDest>,
    remote_version: Option<(u32, u32)>,
    remote_mtu: Option<usize>,
    cycle_buffer: u32,
    cache_line: u32,
}

impl PerftestSession {
    /// A session for `role` against the peer's `test`, sending `local`
    /// (with a GID: the RoCE form) and offering the path MTU `mtu`.
    /// `None` when `mtu` is no IB MTU.
    pub fn new(
        role: Role,
        test: PerftestTest,
        local: &PerftestDest,
        mtu: usize,
    ) -> Option<PerftestSession> {
        let mtu_field = format_perftest_mtu(mtu)?;
        let with_gid = local.gid.is_some();
        let keys = format_perftest(local);
        let xchg = |steps: &mut Vec<Step>, mine: Vec<u8>, e: Expect| match role {
            Role::Client => {
                steps.push(Step::Write(mine));
                steps.push(Step::Read(e));
            }
            Role::Server => {
                steps.push(Step::Read(e));
                steps.push(Step::Write(mine));
            }
        };
        let mut steps = Vec::new();
        xchg(
            &mut steps,
            format_perftest_version(PERFTEST_VERSION).to_vec(),
            Expect::Version,
        );
        xchg(
            &mut steps,
            PERFTEST_CYCLE_BUFFER.to_be_bytes().to_vec(),
            Expect::Sys("cycle buffer"),
        );
        xchg(
            &mut steps,
            PERFTEST_CACHE_LINE.to_be_bytes().to_vec(),
            Expect::Sys("cache line size"),
        );
        xchg(&mut steps, mtu_field.to_vec(), Expect::Mtu);
        let (before, after) = match test {
            PerftestTest::SendLat => (1, 3),
            PerftestTest::WriteLat => (2, 2),
        };
        for _ in 0..before {
            xchg(&mut steps, keys.clone(), Expect::Keys(with_gid));
        }
        steps.push(Step::Pause);
        for _ in 0..after {
            xchg(&mut steps, keys.clone(), Expect::Keys(with_gid));
        }
        steps.push(Step::Pause);
        if test == PerftestTest::SendLat {
            xchg(&mut steps, keys.clone(), Expect::Keys(with_gid));
            steps.push(Step::Write(DONE.to_vec()));
            steps.push(Step::Read(Expect::Done));
        }
        Some(PerftestSession {
            script: Script::new(steps),
            pauses: 0,
            with_gid,
            local_mtu: mtu,
            remote: None,
            remote_version: None,
            remote_mtu: None,
            cycle_buffer: PERFTEST_CYCLE_BUFFER,
            cache_line: PERFTEST_CACHE_LINE,
        })
    }

    /// Where the session is.
    pub fn phase(&self) -> PerftestPhase {
        if self.script.is_done() {
            return PerftestPhase::Done;
        }
        match (self.script.is_paused(), self.pauses) {
            (true, 0) => PerftestPhase::SetUpQp,
            (true, _) => PerftestPhase::Run,
            (false, 0) => PerftestPhase::Connecting,
            (false, 1) => PerftestPhase::Syncing,
            (false, _) => PerftestPhase::Closing,
        }
    }

    /// Leaves a pause ([`PerftestPhase::SetUpQp`] or [`PerftestPhase::Run`]).
    pub fn resume(&mut self) {
        if self.script.is_paused() {
            self.pauses += 1;
            self.script.resume();
        }
    }

    /// The peer's attributes, once read.
    pub fn remote(&self) -> Option<&PerftestDest> {
        self.remote.as_ref()
    }

    /// The peer's version (major, hundredths), once read.
    pub fn remote_version(&self) -> Option<(u32, u32)> {
        self.remote_version
    }

    /// The path MTU both sides use, once the peer's is known.
    pub fn mtu(&self) -> Option<usize> {
        self.remote_mtu.map(|r| negotiated_mtu(self.local_mtu, r))
    }

    /// The cycle buffer and cache line size both sides use (the larger of
    /// each).
    pub fn sys(&self) -> (u32, u32) {
        (self.cycle_buffer, self.cache_line)
    }
}

impl Exchange for PerftestSession {
    fn pending_output(&self) -> &[u8] {
        self.script.pending_output()
    }
    fn output_written(&mut self, n: usize) {
        self.script.output_written(n);
    }
    fn wanted_input(&self) -> usize {
        self.script.wanted_input()
    }
    fn input(&mut self, data: &[u8]) -> Result<(), ExchangeError> {
        let Some((e, msg)) = self.script.input(data)? else {
            return Ok(());
        };
        match e {
            Expect::Version => {
                let v = parse_perftest_version(&msg)?;
                if v < PERFTEST_MIN_VERSION {
                    return Err(ExchangeError::VersionTooOld {
                        major: v.0,
                        minor: v.1,
                    });
                }
                self.remote_version = Some(v);
            }
            Expect::Sys(what) => {
                let v = parse_perftest_sys(&msg, what)?;
                if what == "cycle buffer" {
                    self.cycle_buffer = self.cycle_buffer.max(v);
                } else {
                    self.cache_line = self.cache_line.max(v);
                }
            }
            Expect::Mtu => self.remote_mtu = Some(parse_perftest_mtu(&msg)?),
            Expect::Keys(g) => {
                let d = parse_perftest(&msg, g)?;
                match &self.remote {
                    None => self.remote = Some(d),
                    Some(first) if *first == d => {}
                    Some(_) => return Err(ExchangeError::DestChanged),
                }
            }
            Expect::Done if msg != DONE => return Err(ExchangeError::BadDone),
            Expect::Done | Expect::Pingpong => {}
        }
        Ok(())
    }
    fn is_done(&self) -> bool {
        self.script.is_done()
    }
    fn is_paused(&self) -> bool {
        self.script.is_paused()
    }
}

impl PerftestSession {
    /// Whether the attribute messages carry a GID.
    pub fn with_gid(&self) -> bool {
        self.with_gid
    }
}

#[cfg(feature = "smoltcp")]
pub mod smol;

#[cfg(test)]
mod tests;
