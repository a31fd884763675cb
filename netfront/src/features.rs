//! Feature negotiation with the backend, as pure logic.
//!
//! Three steps, each a plain function of its inputs:
//! 1. [`BackendFeatures::read`] parses what the backend advertises in its
//!    xenstore directory, and [`FrontendInfo::read`] what the toolstack wrote
//!    in the frontend's directory (`mac`, `trusted`, `mtu`). Values come from
//!    any [`KeySource`] (a closure over a xenstore client, a map in tests).
//!    A backend is hostile: every value is parsed strictly (booleans are
//!    exactly `0` or `1`, numbers plain decimal digits without sign, spaces
//!    or leading zeros, at most [`MAX_VALUE_LEN`] bytes) and a malformed
//!    one is a [`FeatureError`] naming the key and the value.
//! 2. [`negotiate`] combines them with the application's [`NetConfig`] into
//!    the [`Negotiated`] choice: queues, split event channels, scatter-gather,
//!    GSO and checksum offload in each direction, the MTU, the XDP headroom,
//!    whether the backend is trusted.
//! 3. [`frontend_keys`] lists the keys the frontend writes, given the ring
//!    references and event channel ports of each queue.
//!
//! What Linux 6.1's xen-netback does with each key is in the repository's
//! `LINUX-BACKENDS.md`; the choices below follow Linux's netfront where the
//! protocol leaves room. In particular netback attaches only once the
//! frontend's state is Connected, and reads these keys then.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::abi::GrantRefNum;

/// Longest value accepted for any key; longer values are refused unread.
pub const MAX_VALUE_LEN: usize = 64;

/// Largest XDP headroom the frontend asks for. A maximal GSO frame
/// (65535 bytes plus an Ethernet and a VLAN header) must still fit in
/// [`crate::abi::XEN_NETIF_NR_SLOTS_MIN`] slots of `4096 - headroom` bytes,
/// and Linux uses 256 (`XDP_PACKET_HEADROOM`).
pub const MAX_RX_HEADROOM: u16 = 256;

/// Most queues the frontend sets up. Linux's netback offers at most
/// `min(8, dom0 CPUs)` by default; this bounds what a backend can make the
/// frontend allocate.
pub const MAX_QUEUES: u32 = 64;

/// The default MTU (`ETH_DATA_LEN`), and the largest one without
/// scatter-gather.
pub const DEFAULT_MTU: u32 = 1500;
/// The largest MTU with scatter-gather (Linux's `XEN_NETIF_MAX_TX_SIZE`).
/// The wire format bounds a whole frame, Ethernet header included, to
/// 65535 bytes.
pub const MAX_MTU: u32 = 65535;
/// The smallest MTU accepted (IPv4's minimum, `ETH_MIN_MTU`).
pub const MIN_MTU: u32 = 68;

/// A failure of the key source itself (a xenstore error), as opposed to a
/// key that is absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReadError {
    /// The key being read.
    pub key: String,
    /// What went wrong.
    pub reason: String,
}

/// Where feature keys are read from: `read(key)` gives the key's value, or
/// `None` when the key does not exist.
///
/// Any `FnMut(&str) -> Option<String>` is a source; wrap a closure that can
/// fail in [`FallibleKeys`].
pub trait KeySource {
    /// Reads `key` (relative to the directory the source stands for).
    fn read(&mut self, key: &str) -> Result<Option<String>, KeyReadError>;
}

impl<F: FnMut(&str) -> Option<String>> KeySource for F {
    fn read(&mut self, key: &str) -> Result<Option<String>, KeyReadError> {
        Ok(self(key))
    }
}

/// A key source from a closure that can fail: `Err(reason)` becomes a
/// [`KeyReadError`] and stops the negotiation.
pub struct FallibleKeys<F>(pub F);

impl<F: FnMut(&str) -> Result<Option<String>, String>> KeySource for FallibleKeys<F> {
    fn read(&mut self, key: &str) -> Result<Option<String>, KeyReadError> {
        (self.0)(key).map_err(|reason| KeyReadError {
            key: key.to_string(),
            reason,
        })
    }
}

/// Which xenstore directory a key was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDir {
    /// The backend's directory (`/local/domain/<backend>/backend/vif/...`).
    Backend,
    /// The frontend's own directory (`device/vif/<n>`), written by the
    /// toolstack.
    Frontend,
}

impl fmt::Display for KeyDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDir::Backend => f.write_str("backend"),
            KeyDir::Frontend => f.write_str("frontend"),
        }
    }
}

/// Why negotiation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeatureError {
    /// The key source failed.
    Read(KeyReadError),
    /// A key holds a value that is not what the protocol allows.
    BadValue {
        /// Which directory.
        dir: KeyDir,
        /// The key.
        key: &'static str,
        /// The value (at most 32 characters of it, escaped).
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The backend does not offer `feature-rx-copy`: it would flip pages,
    /// which this frontend (like Linux's) does not support.
    NoRxCopy,
    /// The frontend directory has no `mac` key.
    MissingMac,
    /// The application's configuration is impossible.
    Config(&'static str),
}

impl fmt::Display for FeatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeatureError::Read(e) => write!(
                f,
                "reading xenstore key `{}` failed: {}; check the xenstore connection and retry",
                e.key, e.reason
            ),
            FeatureError::BadValue { dir, key, value, expected } => write!(
                f,
                "{dir} key `{key}` holds \"{value}\", expected {expected}; the {dir} directory is malformed (a buggy or hostile {}), the device cannot connect",
                if *dir == KeyDir::Backend { "backend" } else { "toolstack" }
            ),
            FeatureError::NoRxCopy => write!(
                f,
                "the backend does not offer feature-rx-copy (receive by grant copy); page-flipping backends are not supported, use a backend such as Linux's xen-netback"
            ),
            FeatureError::MissingMac => write!(
                f,
                "the frontend directory has no `mac` key; the toolstack must write the vif's MAC address (xl writes it for every vif)"
            ),
            FeatureError::Config(what) => write!(f, "invalid network configuration: {what}"),
        }
    }
}

impl core::error::Error for FeatureError {}

impl From<KeyReadError> for FeatureError {
    fn from(e: KeyReadError) -> Self {
        FeatureError::Read(e)
    }
}

/// At most 32 characters of `value`, escaped, for error messages.
fn preview(value: &str) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == 32 {
            out.push('…');
            break;
        }
        for e in c.escape_debug() {
            out.push(e);
        }
    }
    out
}

fn bad(dir: KeyDir, key: &'static str, value: &str, expected: &'static str) -> FeatureError {
    FeatureError::BadValue {
        dir,
        key,
        value: preview(value),
        expected,
    }
}

/// Parses a plain unsigned decimal: `0`, or a non-zero digit followed by
/// digits; nothing else (no sign, space, leading zero or suffix).
pub fn parse_decimal(value: &str) -> Option<u32> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 10 || (bytes.len() > 1 && bytes[0] == b'0') {
        return None;
    }
    let mut n: u32 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
    }
    Some(n)
}

/// Reads a key, refusing over-long values before looking at them.
fn read_raw(
    src: &mut impl KeySource,
    dir: KeyDir,
    key: &'static str,
) -> Result<Option<String>, FeatureError> {
    match src.read(key)? {
        Some(v) if v.len() > MAX_VALUE_LEN => Err(bad(dir, key, &v, "a value of at most 64 bytes")),
        other => Ok(other),
    }
}

/// A boolean key: `0` or `1`; `default` when absent.
fn read_bool(
    src: &mut impl KeySource,
    dir: KeyDir,
    key: &'static str,
    default: bool,
) -> Result<bool, FeatureError> {
    match read_raw(src, dir, key)?.as_deref() {
        None => Ok(default),
        Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(v) => Err(bad(dir, key, v, "\"0\" or \"1\"")),
    }
}

/// A number key in `min..=max`; `None` when absent.
fn read_number(
    src: &mut impl KeySource,
    dir: KeyDir,
    key: &'static str,
    min: u32,
    max: u32,
    expected: &'static str,
) -> Result<Option<u32>, FeatureError> {
    match read_raw(src, dir, key)? {
        None => Ok(None),
        Some(v) => match parse_decimal(&v) {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(bad(dir, key, &v, expected)),
        },
    }
}

/// What the backend advertises in its directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendFeatures {
    /// `feature-sg`: the backend accepts packets spread over several slots.
    pub sg: bool,
    /// `feature-gso-tcpv4`: the backend accepts TCPv4 GSO packets.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6`: the backend accepts TCPv6 GSO packets.
    pub gso_tcpv6: bool,
    /// `feature-ipv6-csum-offload`: the backend completes IPv6 partial
    /// checksums.
    pub ipv6_csum_offload: bool,
    /// `feature-rx-copy`: the backend receives by grant copy (required).
    pub rx_copy: bool,
    /// `feature-split-event-channels`: separate TX and RX event channels.
    pub split_event_channels: bool,
    /// `multi-queue-max-queues`, `None` when absent (then the frontend must
    /// not write `multi-queue-num-queues`).
    pub max_queues: Option<u32>,
    /// `feature-xdp-headroom`: the backend leaves the headroom the frontend
    /// asks for in `xdp-headroom`.
    pub xdp_headroom: bool,
    /// `feature-ctrl-ring`: a control ring (hashing) is offered. Not used by
    /// this frontend.
    pub ctrl_ring: bool,
    /// `feature-multicast-control`. Not used by this frontend.
    pub multicast_control: bool,
    /// `feature-dynamic-multicast-control`. Not used by this frontend.
    pub dynamic_multicast_control: bool,
}

impl BackendFeatures {
    /// Reads and strictly parses the backend's feature keys from `src`
    /// (the backend's directory). Absent boolean keys are off; a
    /// `multi-queue-max-queues` of 0 or above 65535 is an error.
    pub fn read(src: &mut impl KeySource) -> Result<Self, FeatureError> {
        let d = KeyDir::Backend;
        Ok(Self {
            sg: read_bool(src, d, "feature-sg", false)?,
            gso_tcpv4: read_bool(src, d, "feature-gso-tcpv4", false)?,
            gso_tcpv6: read_bool(src, d, "feature-gso-tcpv6", false)?,
            ipv6_csum_offload: read_bool(src, d, "feature-ipv6-csum-offload", false)?,
            rx_copy: read_bool(src, d, "feature-rx-copy", false)?,
            split_event_channels: read_bool(src, d, "feature-split-event-channels", false)?,
            max_queues: read_number(
                src,
                d,
                "multi-queue-max-queues",
                1,
                65535,
                "a queue count from 1 to 65535",
            )?,
            xdp_headroom: read_bool(src, d, "feature-xdp-headroom", false)?,
            ctrl_ring: read_bool(src, d, "feature-ctrl-ring", false)?,
            multicast_control: read_bool(src, d, "feature-multicast-control", false)?,
            dynamic_multicast_control: read_bool(
                src,
                d,
                "feature-dynamic-multicast-control",
                false,
            )?,
        })
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parses `aa:bb:cc:dd:ee:ff`: exactly six pairs of hex digits (either
    /// case) separated by colons.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 17 {
            return None;
        }
        let mut mac = [0u8; 6];
        for (i, octet) in mac.iter_mut().enumerate() {
            let at = i * 3;
            if i < 5 && b[at + 2] != b':' {
                return None;
            }
            let hi = hex_digit(b[at])?;
            let lo = hex_digit(b[at + 1])?;
            *octet = hi << 4 | lo;
        }
        Some(Self(mac))
    }

    /// A group (multicast or broadcast) address: not usable as a station's.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// All zeroes: not a valid station address.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// What the toolstack wrote in the frontend's own directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendInfo {
    /// `mac`: the vif's address (required; a unicast, non-zero address).
    pub mac: MacAddr,
    /// `trusted`: `0` asks the frontend to share nothing but payload with
    /// the backend (XSA-403); absent means trusted, as libxl's default.
    pub trusted: bool,
    /// `mtu`: the toolstack's MTU hint, if written.
    pub mtu: Option<u32>,
}

impl FrontendInfo {
    /// Reads and strictly parses `mac`, `trusted` and `mtu` from `src` (the
    /// frontend's directory).
    pub fn read(src: &mut impl KeySource) -> Result<Self, FeatureError> {
        let d = KeyDir::Frontend;
        let mac = match read_raw(src, d, "mac")? {
            None => return Err(FeatureError::MissingMac),
            Some(v) => match MacAddr::parse(&v) {
                Some(m) if !m.is_multicast() && !m.is_zero() => m,
                Some(_) => {
                    return Err(bad(
                        d,
                        "mac",
                        &v,
                        "a unicast, non-zero address (the first octet's lowest bit clear)",
                    ))
                }
                None => return Err(bad(d, "mac", &v, "six hex pairs as aa:bb:cc:dd:ee:ff")),
            },
        };
        let trusted = read_bool(src, d, "trusted", true)?;
        let mtu = read_number(src, d, "mtu", MIN_MTU, MAX_MTU, "an MTU from 68 to 65535")?;
        Ok(Self { mac, trusted, mtu })
    }
}

/// What the application wants from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Most queue pairs to use (1 to [`MAX_QUEUES`]); fewer when the backend
    /// offers fewer.
    pub max_queues: u32,
    /// Scatter-gather: frames over several slots (needed for an MTU above
    /// 1500 and for GSO).
    pub sg: bool,
    /// TCPv4 segmentation offload (needs `sg` and `csum_offload`).
    pub gso_tcpv4: bool,
    /// TCPv6 segmentation offload (needs `sg` and `ipv6_csum_offload`).
    pub gso_tcpv6: bool,
    /// IPv4 TCP/UDP checksum offload: send frames with a blank checksum and
    /// accept them (then complete their checksums with `csum`). Off writes
    /// `feature-no-csum-offload`, and the backend completes checksums of
    /// what it sends.
    pub csum_offload: bool,
    /// IPv6 TCP/UDP checksum offload, likewise.
    pub ipv6_csum_offload: bool,
    /// The MTU wanted; `None` takes the toolstack's `mtu` key, or 1500.
    pub mtu: Option<u32>,
    /// Use separate TX and RX event channels when the backend offers them.
    pub split_event_channels: bool,
    /// Bytes of headroom the backend should leave in front of received data
    /// (0 for none; at most [`MAX_RX_HEADROOM`]). Asked for only when the
    /// backend offers `feature-xdp-headroom`.
    pub xdp_headroom: u16,
    /// `false` treats the backend as untrusted whatever the toolstack says.
    pub trust_backend: bool,
}

impl Default for NetConfig {
    /// One queue, every offload on, the toolstack's MTU, split event
    /// channels when offered, no headroom, trust as the toolstack says.
    fn default() -> Self {
        Self {
            max_queues: 1,
            sg: true,
            gso_tcpv4: true,
            gso_tcpv6: true,
            csum_offload: true,
            ipv6_csum_offload: true,
            mtu: None,
            split_event_channels: true,
            xdp_headroom: 0,
            trust_backend: true,
        }
    }
}

/// The negotiated configuration of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The vif's MAC address.
    pub mac: MacAddr,
    /// Queue pairs to set up.
    pub queues: u32,
    /// Whether to write `multi-queue-num-queues` (the backend advertised
    /// `multi-queue-max-queues`).
    pub write_num_queues: bool,
    /// Separate TX and RX event channels per queue.
    pub split_event_channels: bool,
    /// TX frames may span several slots.
    pub tx_sg: bool,
    /// RX frames may span several slots (the frontend writes `feature-sg=1`).
    pub rx_sg: bool,
    /// TX may carry TCPv4 GSO extras.
    pub tx_gso_tcpv4: bool,
    /// TX may carry TCPv6 GSO extras.
    pub tx_gso_tcpv6: bool,
    /// TX may mark IPv4 frames checksum-blank.
    pub tx_csum_ipv4: bool,
    /// TX may mark IPv6 frames checksum-blank.
    pub tx_csum_ipv6: bool,
    /// The backend may send TCPv4 GSO frames (`feature-gso-tcpv4=1` written).
    pub rx_gso_tcpv4: bool,
    /// The backend may send TCPv6 GSO frames (`feature-gso-tcpv6=1` written).
    pub rx_gso_tcpv6: bool,
    /// The backend may send IPv4 frames with a blank checksum
    /// (`feature-no-csum-offload` not written).
    pub rx_csum_ipv4: bool,
    /// The backend may send IPv6 frames with a blank checksum
    /// (`feature-ipv6-csum-offload=1` written).
    pub rx_csum_ipv6: bool,
    /// The MTU.
    pub mtu: u32,
    /// Whether to write `xdp-headroom` (the backend offers the feature).
    pub write_xdp_headroom: bool,
    /// The headroom the backend leaves in front of received data (0 when
    /// none was asked for or the backend does not offer it).
    pub rx_headroom: u16,
    /// Share nothing but payload with the backend: zeroed, payload-only
    /// pages (XSA-403).
    pub untrusted_backend: bool,
    /// What the backend advertised, for the record.
    pub backend: BackendFeatures,
}

/// Computes the connection's configuration from what the backend offers,
/// what the toolstack wrote and what the application wants.
///
/// The choices follow Linux's netfront: segmentation offload needs
/// scatter-gather and checksum offload in the same direction; an MTU above
/// 1500 needs scatter-gather on TX (and is lowered to 1500 with a warning
/// when the backend lacks `feature-sg`).
pub fn negotiate(
    backend: &BackendFeatures,
    frontend: &FrontendInfo,
    config: &NetConfig,
) -> Result<Negotiated, FeatureError> {
    if config.max_queues == 0 || config.max_queues > MAX_QUEUES {
        return Err(FeatureError::Config(
            "max_queues must be from 1 to 64 (netfront::features::MAX_QUEUES)",
        ));
    }
    if config.xdp_headroom > MAX_RX_HEADROOM {
        return Err(FeatureError::Config(
            "xdp_headroom must be at most 256 bytes (netfront::features::MAX_RX_HEADROOM)",
        ));
    }
    if let Some(m) = config.mtu {
        if !(MIN_MTU..=MAX_MTU).contains(&m) {
            return Err(FeatureError::Config("mtu must be from 68 to 65535"));
        }
    }
    if !backend.rx_copy {
        return Err(FeatureError::NoRxCopy);
    }

    let queues = config.max_queues.min(backend.max_queues.unwrap_or(1));
    let split = config.split_event_channels && backend.split_event_channels;
    let tx_sg = config.sg && backend.sg;
    let rx_sg = config.sg;
    let tx_csum_ipv4 = config.csum_offload;
    let tx_csum_ipv6 = config.ipv6_csum_offload && backend.ipv6_csum_offload;
    let tx_gso_tcpv4 = config.gso_tcpv4 && backend.gso_tcpv4 && tx_sg && tx_csum_ipv4;
    let tx_gso_tcpv6 = config.gso_tcpv6 && backend.gso_tcpv6 && tx_sg && tx_csum_ipv6;
    let rx_csum_ipv4 = config.csum_offload;
    let rx_csum_ipv6 = config.ipv6_csum_offload;
    let rx_gso_tcpv4 = config.gso_tcpv4 && rx_sg && rx_csum_ipv4;
    let rx_gso_tcpv6 = config.gso_tcpv6 && rx_sg && rx_csum_ipv6;

    let wanted_mtu = config.mtu.or(frontend.mtu).unwrap_or(DEFAULT_MTU);
    let mtu = if wanted_mtu > DEFAULT_MTU && !tx_sg {
        log::warn!(
            "netfront: MTU {wanted_mtu} needs scatter-gather, which {}; using 1500",
            if config.sg {
                "the backend does not offer (feature-sg)"
            } else {
                "the configuration turns off"
            }
        );
        DEFAULT_MTU
    } else {
        wanted_mtu
    };

    let (write_xdp_headroom, rx_headroom) = if backend.xdp_headroom {
        (true, config.xdp_headroom)
    } else {
        if config.xdp_headroom > 0 {
            log::warn!(
                "netfront: the backend does not offer feature-xdp-headroom; receiving without the {} bytes of headroom asked for",
                config.xdp_headroom
            );
        }
        (false, 0)
    };

    Ok(Negotiated {
        mac: frontend.mac,
        queues,
        write_num_queues: backend.max_queues.is_some(),
        split_event_channels: split,
        tx_sg,
        rx_sg,
        tx_gso_tcpv4,
        tx_gso_tcpv6,
        tx_csum_ipv4,
        tx_csum_ipv6,
        rx_gso_tcpv4,
        rx_gso_tcpv6,
        rx_csum_ipv4,
        rx_csum_ipv6,
        mtu,
        write_xdp_headroom,
        rx_headroom,
        untrusted_backend: !config.trust_backend || !frontend.trusted,
        backend: *backend,
    })
}

/// The event channels of one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueEvents {
    /// One channel for TX and RX (`event-channel`).
    Shared(u32),
    /// Separate channels (`event-channel-tx`, `event-channel-rx`); only when
    /// split event channels were negotiated.
    Split {
        /// The TX channel's port.
        tx: u32,
        /// The RX channel's port.
        rx: u32,
    },
}

/// The shared resources of one queue, as the frontend publishes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSetup {
    /// Grant reference of the TX ring page.
    pub tx_ring_ref: GrantRefNum,
    /// Grant reference of the RX ring page.
    pub rx_ring_ref: GrantRefNum,
    /// Its event channels.
    pub events: QueueEvents,
}

/// One key the frontend writes, relative to its own directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendKey {
    /// The key (`request-rx-copy`, `queue-1/tx-ring-ref`, ...).
    pub key: String,
    /// Its value.
    pub value: String,
}

/// Why the frontend's keys cannot be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeysError {
    /// The number of queues given is not the negotiated one.
    QueueCount {
        /// Negotiated.
        expected: u32,
        /// Given.
        given: usize,
    },
    /// Queue `queue` has split event channels but they were not negotiated.
    SplitNotNegotiated {
        /// The queue.
        queue: usize,
    },
    /// Queue `queue` uses port 0 (never a valid event channel), or the same
    /// port for TX and RX in a split pair.
    BadPort {
        /// The queue.
        queue: usize,
    },
    /// Queue `queue` names a reserved grant reference (below 8) for a ring.
    BadRingRef {
        /// The queue.
        queue: usize,
    },
}

impl fmt::Display for KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeysError::QueueCount { expected, given } => write!(
                f,
                "{given} queue(s) set up but {expected} negotiated; set up exactly Negotiated::queues queues"
            ),
            KeysError::SplitNotNegotiated { queue } => write!(
                f,
                "queue {queue} has split event channels but the connection did not negotiate them; use QueueEvents::Shared"
            ),
            KeysError::BadPort { queue } => write!(
                f,
                "queue {queue}: event channel port 0, or one port for both TX and RX of a split pair; allocate distinct unbound ports"
            ),
            KeysError::BadRingRef { queue } => write!(
                f,
                "queue {queue}: a ring grant reference below 8 (reserved for the toolstack); grant the ring pages from the grant table"
            ),
        }
    }
}

impl core::error::Error for KeysError {}

/// The keys the frontend writes (in one transaction) before switching to
/// Connected, in the order Linux's netfront writes them:
/// `multi-queue-num-queues` (when the backend advertised a maximum); per
/// queue, flat for one queue and under `queue-N/` otherwise, `tx-ring-ref`,
/// `rx-ring-ref` and `event-channel` or `event-channel-tx` +
/// `event-channel-rx`; then `request-rx-copy`, `feature-rx-notify`,
/// `feature-sg`, `feature-gso-tcpv4`, `feature-gso-tcpv6`,
/// `feature-ipv6-csum-offload`, `feature-no-csum-offload` (only when IPv4
/// checksum offload is off) and `xdp-headroom` (only when the backend offers
/// the feature).
///
/// Keys a previous connection wrote and this one does not (a `queue-N/`
/// directory when the queue count shrank) are harmless to Linux's netback,
/// which reads only the keys the current queue count names.
pub fn frontend_keys(
    neg: &Negotiated,
    queues: &[QueueSetup],
) -> Result<Vec<FrontendKey>, KeysError> {
    if queues.len() != neg.queues as usize {
        return Err(KeysError::QueueCount {
            expected: neg.queues,
            given: queues.len(),
        });
    }
    let mut keys = Vec::new();
    let mut put = |key: String, value: String| keys.push(FrontendKey { key, value });
    if neg.write_num_queues {
        put("multi-queue-num-queues".into(), neg.queues.to_string());
    }
    for (i, q) in queues.iter().enumerate() {
        let prefix = if queues.len() == 1 {
            String::new()
        } else {
            format!("queue-{i}/")
        };
        if q.tx_ring_ref < grant_tables::abi::GNTTAB_NR_RESERVED_ENTRIES
            || q.rx_ring_ref < grant_tables::abi::GNTTAB_NR_RESERVED_ENTRIES
        {
            return Err(KeysError::BadRingRef { queue: i });
        }
        put(format!("{prefix}tx-ring-ref"), q.tx_ring_ref.to_string());
        put(format!("{prefix}rx-ring-ref"), q.rx_ring_ref.to_string());
        match q.events {
            QueueEvents::Shared(port) => {
                if port == 0 {
                    return Err(KeysError::BadPort { queue: i });
                }
                put(format!("{prefix}event-channel"), port.to_string());
            }
            QueueEvents::Split { tx, rx } => {
                if !neg.split_event_channels {
                    return Err(KeysError::SplitNotNegotiated { queue: i });
                }
                if tx == 0 || rx == 0 || tx == rx {
                    return Err(KeysError::BadPort { queue: i });
                }
                put(format!("{prefix}event-channel-tx"), tx.to_string());
                put(format!("{prefix}event-channel-rx"), rx.to_string());
            }
        }
    }
    let flag = |b: bool| String::from(if b { "1" } else { "0" });
    put("request-rx-copy".into(), "1".into());
    put("feature-rx-notify".into(), "1".into());
    put("feature-sg".into(), flag(neg.rx_sg));
    put("feature-gso-tcpv4".into(), flag(neg.rx_gso_tcpv4));
    put("feature-gso-tcpv6".into(), flag(neg.rx_gso_tcpv6));
    put("feature-ipv6-csum-offload".into(), flag(neg.rx_csum_ipv6));
    if !neg.rx_csum_ipv4 {
        put("feature-no-csum-offload".into(), "1".into());
    }
    if neg.write_xdp_headroom {
        put("xdp-headroom".into(), neg.rx_headroom.to_string());
    }
    Ok(keys)
}
