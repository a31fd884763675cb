//! The xenstore keys of a vif: what the backend advertises, and what it
//! reads from the frontend when the frontend is Connected.
//!
//! [`advertised`] lists the backend's keys (written with InitWait).
//! [`FrontendRequest::read`] reads the frontend's keys the way Linux 6.1's
//! netback reads them (`drivers/net/xen-netback/xenbus.c`: `connect`,
//! `connect_data_rings`, `read_xenbus_vif_flags`,
//! `read_xenbus_frontend_xdp`), from any key source: a closure over a
//! xenstore client, a map in tests and fuzzing. The frontend is hostile:
//! numbers are parsed strictly (decimal digits only, no sign or space), a
//! missing or malformed required key refuses the connection with an error
//! naming the key, and nothing here panics.
//!
//! Where Linux is lax the parse follows Linux, so a frontend that works
//! against Linux works here: `feature-*` flags are any number (non-zero is
//! on) and a malformed flag reads as absent; split event channels are
//! accepted whether or not they were offered; an `xdp-headroom` above
//! [`XEN_NETIF_MAX_XDP_HEADROOM`] is lowered to it. One departure: a
//! headroom that leaves no room in a page for data (4096 or more) refuses
//! the connection (Linux would compute nonsense).

use std::fmt;

use grant_tables::abi::{GrantRefNum, PAGE_SIZE};
use grant_tables::granted_ring::parse_u32_value;
use netfront::abi::XEN_NETIF_MAX_XDP_HEADROOM;
use netfront::features::QueueEvents;

/// What the backend advertises (the `feature-*` keys and the queue limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advertised {
    /// `multi-queue-max-queues`.
    pub max_queues: u32,
    /// `feature-split-event-channels`.
    pub split_event_channels: bool,
    /// `feature-xdp-headroom`.
    pub xdp_headroom: bool,
}

/// The keys (relative to the backend directory) and values the backend
/// writes with InitWait, in Linux's order. `feature-multicast-control`,
/// `feature-dynamic-multicast-control` and `feature-ctrl-ring` are not
/// offered: this backend has no multicast filter and no control ring.
pub fn advertised(a: &Advertised) -> Vec<(&'static str, String)> {
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    vec![
        ("feature-sg", "1".into()),
        ("feature-gso-tcpv4", "1".into()),
        ("feature-gso-tcpv6", "1".into()),
        ("feature-ipv6-csum-offload", "1".into()),
        ("feature-rx-copy", "1".into()),
        ("feature-rx-flip", "0".into()),
        ("feature-xdp-headroom", flag(a.xdp_headroom)),
        ("feature-split-event-channels", flag(a.split_event_channels)),
        ("multi-queue-max-queues", a.max_queues.to_string()),
    ]
}

/// One queue's rings and event channels, as the frontend published them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueKeys {
    /// `tx-ring-ref`.
    pub tx_ring_ref: GrantRefNum,
    /// `rx-ring-ref`.
    pub rx_ring_ref: GrantRefNum,
    /// `event-channel`, or `event-channel-tx` and `event-channel-rx`.
    pub events: QueueEvents,
}

/// What a connected frontend asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendRequest {
    /// The queues (flat keys for one, `queue-N/` for several).
    pub queues: Vec<QueueKeys>,
    /// `feature-rx-notify`: without it queued packets expire after 30 ms.
    pub rx_notify: bool,
    /// `feature-sg`: receives frames over several slots.
    pub sg: bool,
    /// `feature-gso-tcpv4`: receives TCPv4 GSO frames.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6`: receives TCPv6 GSO frames.
    pub gso_tcpv6: bool,
    /// Not `feature-no-csum-offload`: accepts IPv4 frames with a blank
    /// checksum.
    pub csum_ipv4: bool,
    /// `feature-ipv6-csum-offload`: accepts IPv6 frames with a blank
    /// checksum.
    pub csum_ipv6: bool,
    /// `xdp-headroom` (0 unless the backend offered the feature).
    pub xdp_headroom: u16,
}

/// Why a frontend's keys were refused (the connection is refused with this
/// message; the frontend must start over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeysError {
    /// The key source failed (a xenstore error).
    Read {
        /// The key.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// A required key is absent.
    Missing(String),
    /// A key's value is not what the protocol allows.
    BadValue {
        /// The key.
        key: String,
        /// The value (at most 32 characters).
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// `request-rx-copy` is absent or 0: the frontend wants page flipping.
    NoRxCopy,
    /// `ctrl-ring-ref` without `event-channel-ctrl`.
    CtrlRingWithoutChannel,
}

impl fmt::Display for KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeysError::Read { key, reason } => {
                write!(f, "reading the frontend's {key} failed: {reason}")
            }
            KeysError::Missing(key) => write!(
                f,
                "the frontend did not write {key}; it must publish every queue's rings and event channels before Connected"
            ),
            KeysError::BadValue { key, value, expected } => write!(
                f,
                "the frontend's {key} is {value:?}, expected {expected}; the frontend must start over with valid keys"
            ),
            KeysError::NoRxCopy => write!(
                f,
                "the frontend did not write request-rx-copy=1; this backend (as Linux's) only receives by grant copy"
            ),
            KeysError::CtrlRingWithoutChannel => write!(
                f,
                "the frontend wrote ctrl-ring-ref without event-channel-ctrl"
            ),
        }
    }
}

impl std::error::Error for KeysError {}

fn cut(v: &str) -> String {
    v.chars().take(32).collect()
}

/// Reads one key; `Ok(None)` when absent.
type Source<'a> = dyn FnMut(&str) -> Result<Option<String>, String> + 'a;

fn get(src: &mut Source<'_>, key: &str) -> Result<Option<String>, KeysError> {
    src(key).map_err(|reason| KeysError::Read {
        key: key.to_string(),
        reason,
    })
}

fn number(src: &mut Source<'_>, key: &str) -> Result<Option<u32>, KeysError> {
    match get(src, key)? {
        None => Ok(None),
        Some(v) => parse_u32_value(&v)
            .map(Some)
            .ok_or_else(|| KeysError::BadValue {
                key: key.to_string(),
                value: cut(&v),
                expected: "a decimal number that fits 32 bits",
            }),
    }
}

fn required(src: &mut Source<'_>, key: &str) -> Result<u32, KeysError> {
    number(src, key)?.ok_or_else(|| KeysError::Missing(key.to_string()))
}

/// A flag read as Linux's `xenbus_read_unsigned(.., 0)`: absent or
/// malformed is off, any other number is on if non-zero.
fn flag(src: &mut Source<'_>, key: &str) -> Result<bool, KeysError> {
    match get(src, key)? {
        None => Ok(false),
        Some(v) => match parse_u32_value(&v) {
            Some(n) => Ok(n != 0),
            None => {
                log::warn!("netback: the frontend's {key} is {:?}; read as 0", cut(&v));
                Ok(false)
            }
        },
    }
}

fn port(src: &mut Source<'_>, key: &str) -> Result<Option<u32>, KeysError> {
    match number(src, key)? {
        Some(0) => Err(KeysError::BadValue {
            key: key.to_string(),
            value: "0".into(),
            expected: "an event channel port (not 0)",
        }),
        other => Ok(other),
    }
}

impl FrontendRequest {
    /// Reads the frontend's keys. `src(key)` returns the value of `key`
    /// relative to the frontend directory (`Ok(None)` when absent, `Err`
    /// when the store failed). `max_queues` is what the backend offered,
    /// `xdp_offered` whether it offered `feature-xdp-headroom`.
    pub fn read(
        src: &mut dyn FnMut(&str) -> Result<Option<String>, String>,
        max_queues: u32,
        xdp_offered: bool,
    ) -> Result<Self, KeysError> {
        let queues_n = match number(src, "multi-queue-num-queues")? {
            None => 1,
            Some(n) if n >= 1 && n <= max_queues => n,
            Some(n) => {
                return Err(KeysError::BadValue {
                    key: "multi-queue-num-queues".into(),
                    value: n.to_string(),
                    expected: "a queue count from 1 to the backend's multi-queue-max-queues",
                })
            }
        };
        let mut queues = Vec::with_capacity(queues_n as usize);
        for q in 0..queues_n {
            let prefix = if queues_n == 1 {
                String::new()
            } else {
                format!("queue-{q}/")
            };
            let tx_ring_ref = required(src, &format!("{prefix}tx-ring-ref"))?;
            let rx_ring_ref = required(src, &format!("{prefix}rx-ring-ref"))?;
            let events = match port(src, &format!("{prefix}event-channel"))? {
                Some(p) => QueueEvents::Shared(p),
                None => {
                    let tx_key = format!("{prefix}event-channel-tx");
                    let rx_key = format!("{prefix}event-channel-rx");
                    let tx = port(src, &tx_key)?.ok_or(KeysError::Missing(tx_key))?;
                    let rx = port(src, &rx_key)?.ok_or(KeysError::Missing(rx_key))?;
                    if tx == rx {
                        // One port bound twice is impossible; Linux's bind
                        // would fail the same way.
                        return Err(KeysError::BadValue {
                            key: format!("{prefix}event-channel-rx"),
                            value: rx.to_string(),
                            expected: "a port other than event-channel-tx",
                        });
                    }
                    QueueEvents::Split { tx, rx }
                }
            };
            queues.push(QueueKeys {
                tx_ring_ref,
                rx_ring_ref,
                events,
            });
        }
        if number(src, "ctrl-ring-ref")?.is_some() {
            if port(src, "event-channel-ctrl")?.is_none() {
                return Err(KeysError::CtrlRingWithoutChannel);
            }
            log::warn!(
                "netback: the frontend published a control ring, which this backend does not offer; ignored"
            );
        }
        if number(src, "request-rx-copy")?.unwrap_or(0) == 0 {
            return Err(KeysError::NoRxCopy);
        }
        let rx_notify = flag(src, "feature-rx-notify")?;
        let sg = flag(src, "feature-sg")?;
        let gso_tcpv4 = flag(src, "feature-gso-tcpv4")?;
        let gso_tcpv6 = flag(src, "feature-gso-tcpv6")?;
        let csum_ipv4 = !flag(src, "feature-no-csum-offload")?;
        let csum_ipv6 = flag(src, "feature-ipv6-csum-offload")?;
        let xdp_headroom = if xdp_offered {
            match number(src, "xdp-headroom")? {
                None => 0,
                Some(h) => {
                    let h = h.min(u32::from(XEN_NETIF_MAX_XDP_HEADROOM));
                    if h as usize >= PAGE_SIZE {
                        return Err(KeysError::BadValue {
                            key: "xdp-headroom".into(),
                            value: h.to_string(),
                            expected: "a headroom below 4096 bytes (it must leave room for data in a page)",
                        });
                    }
                    h as u16
                }
            }
        } else {
            0
        };
        Ok(FrontendRequest {
            queues,
            rx_notify,
            sg,
            gso_tcpv4,
            gso_tcpv6,
            csum_ipv4,
            csum_ipv6,
            xdp_headroom,
        })
    }
}
