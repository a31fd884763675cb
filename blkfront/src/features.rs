//! Feature negotiation with the backend, as pure functions of the keys.
//!
//! The backend's directory is read through a closure `read(key) -> Option<String>`
//! (`None`: the key is absent), so this module needs no xenstore. Linux's
//! xen-blkback writes its keys in two batches, and the frontend reads them in
//! the same two steps:
//!
//! 1. At probe, before `InitWait`: `max-ring-page-order`,
//!    `multi-queue-max-queues` ([`RingFeatures::parse`]). From these and the
//!    application's [`FrontendConfig`] the frontend chooses its rings
//!    ([`RingChoice::choose`]) and writes its keys ([`RingChoice::frontend_keys`])
//!    before it leaves `Initialising` (blkback reads them at `Initialised`).
//! 2. At `Connected`: `sectors`, `sector-size`, `physical-sector-size`,
//!    `info`, `feature-flush-cache`, `feature-barrier`, `feature-discard`
//!    (with `discard-granularity`, `discard-alignment`, `discard-secure`),
//!    `feature-persistent`, `feature-max-indirect-segments`
//!    ([`DiskFeatures::parse`]). [`Negotiated::new`] then fixes what this
//!    connection uses. A resize rewrites `sectors` ([`DiskFeatures::read_sectors`],
//!    [`Negotiated::resize`]).
//!
//! The backend is untrusted: values are parsed strictly (decimal digits only,
//! no sign, no spaces, no overflow; booleans are `0` or `1`), checked against
//! the protocol's rules, and a value that breaks them is a [`FeatureError`]
//! naming the key, the value and the rule. Maxima larger than this crate
//! supports are clamped, with a log line.
//!
//! Units: `sectors` is in 512-byte sectors whatever `sector-size` is (Linux's
//! blkback writes the block device's 512-byte sector count); `sector-size`
//! (the logical block size) constrains alignment only.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use grant_tables::abi::GrantRefNum;

use crate::abi::{
    ring_size, DiskInfo, BLKIF_MAX_SEGMENTS_PER_REQUEST, MAX_INDIRECT_SEGMENTS_WIRE, SECTOR_SHIFT,
    SECTOR_SIZE, SEGMENTS_PER_INDIRECT_PAGE,
};

/// The largest ring this crate builds: 2^4 = 16 pages (blkback's default maximum).
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// The most queues (rings) this crate uses on one device.
pub const MAX_QUEUES: u32 = 64;
/// The most segments one request can carry: what 8 indirect pages describe.
pub const MAX_INDIRECT_SEGMENTS: u32 = MAX_INDIRECT_SEGMENTS_WIRE as u32;
/// Smallest logical sector size accepted.
pub const MIN_SECTOR_SIZE: u32 = SECTOR_SIZE;
/// Largest logical sector size accepted: a segment never crosses a 4 KiB
/// page, so a logical sector must fit in one.
pub const MAX_SECTOR_SIZE: u32 = 4096;
/// The `protocol` value written: this suite's native ABI.
pub const PROTOCOL_X86_64: &str = "x86_64-abi";

/// Longest value this parser looks at: `u64::MAX` has 20 digits.
const MAX_NUMBER_LEN: usize = 20;
/// A hostile value is shown in errors up to this many bytes.
const SHOWN_VALUE_LEN: usize = 40;

/// What is wrong with a backend key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A required key is absent.
    Missing,
    /// Not a decimal number (digits only, no sign or spaces).
    NotANumber,
    /// Not `0` or `1`.
    NotABoolean,
    /// Larger than the key's type or the protocol allows.
    TooLarge {
        /// The largest value accepted.
        max: u64,
    },
    /// Outside the range this key must be in.
    OutOfRange {
        /// Smallest value accepted.
        min: u64,
        /// Largest value accepted.
        max: u64,
    },
    /// Must be a power of two.
    NotPowerOfTwo,
    /// Must be a multiple of another value.
    NotMultipleOf {
        /// What the value must be a multiple of, for the message.
        what: &'static str,
        /// Its value.
        of: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => write!(f, "the key is missing"),
            Problem::NotANumber => write!(f, "not a decimal number"),
            Problem::NotABoolean => write!(f, "not 0 or 1"),
            Problem::TooLarge { max } => write!(f, "larger than {max}"),
            Problem::OutOfRange { min, max } => write!(f, "not between {min} and {max}"),
            Problem::NotPowerOfTwo => write!(f, "not a power of two"),
            Problem::NotMultipleOf { what, of } => write!(f, "not a multiple of {what} ({of})"),
        }
    }
}

/// A backend key that breaks the protocol: the device cannot be used with
/// this backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureError {
    /// The key, relative to the backend's directory.
    pub key: &'static str,
    /// Its value (at most 40 bytes of it), if present.
    pub value: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

impl FeatureError {
    fn new(key: &'static str, value: Option<&str>, problem: Problem) -> Self {
        let value = value.map(|v| {
            let mut end = v.len().min(SHOWN_VALUE_LEN);
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            v[..end].to_string()
        });
        FeatureError {
            key,
            value,
            problem,
        }
    }
}

impl fmt::Display for FeatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blkfront: backend key `{}`", self.key)?;
        if let Some(v) = &self.value {
            write!(f, " = {v:?}")?;
        }
        write!(
            f,
            ": {}; the backend is misconfigured or faulty, so the disk is not used \
             (fix the backend's configuration or attach the disk to another backend)",
            self.problem
        )
    }
}

impl core::error::Error for FeatureError {}

/// A bad application configuration or a driver mistake in the inputs of
/// this module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A [`FrontendConfig`] field is out of its range.
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// [`RingChoice::frontend_keys`] was given rings for another number of queues.
    QueueCount {
        /// Queues chosen.
        expected: u32,
        /// Rings given.
        got: usize,
    },
    /// A queue's ring was given another number of grant refs than its pages.
    RingRefCount {
        /// The queue.
        queue: u32,
        /// Ring pages chosen.
        expected: u32,
        /// Refs given.
        got: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::OutOfRange {
                field,
                value,
                min,
                max,
            } => write!(
                f,
                "blkfront: configuration `{field}` = {value} is not between {min} and {max}; \
                 choose a value in that range"
            ),
            ConfigError::QueueCount { expected, got } => write!(
                f,
                "blkfront: {got} rings given for {expected} negotiated queues; \
                 set up exactly one ring per queue"
            ),
            ConfigError::RingRefCount {
                queue,
                expected,
                got,
            } => write!(
                f,
                "blkfront: queue {queue} has {got} ring grant refs, but the ring has \
                 {expected} pages; grant every ring page once"
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

/// Reads a backend key: `Some(value)` or `None` when absent.
pub trait BackendKeys {
    /// The value of `key` (relative to the backend's directory), if present.
    fn read(&mut self, key: &str) -> Option<String>;
}

impl<F: FnMut(&str) -> Option<String>> BackendKeys for F {
    fn read(&mut self, key: &str) -> Option<String> {
        self(key)
    }
}

/// A strictly parsed decimal `u64`.
fn parse_u64(key: &'static str, v: &str) -> Result<u64, FeatureError> {
    let bad = |p| Err(FeatureError::new(key, Some(v), p));
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return bad(Problem::NotANumber);
    }
    if v.len() > MAX_NUMBER_LEN {
        return bad(Problem::TooLarge { max: u64::MAX });
    }
    let mut n: u64 = 0;
    for b in v.bytes() {
        let d = u64::from(b - b'0');
        match n.checked_mul(10).and_then(|n| n.checked_add(d)) {
            Some(m) => n = m,
            None => return bad(Problem::TooLarge { max: u64::MAX }),
        }
    }
    Ok(n)
}

fn parse_u32(key: &'static str, v: &str) -> Result<u32, FeatureError> {
    let n = parse_u64(key, v)?;
    u32::try_from(n).map_err(|_| {
        FeatureError::new(
            key,
            Some(v),
            Problem::TooLarge {
                max: u64::from(u32::MAX),
            },
        )
    })
}

fn parse_bool(key: &'static str, v: &str) -> Result<bool, FeatureError> {
    match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(FeatureError::new(key, Some(v), Problem::NotABoolean)),
    }
}

fn opt_u32(r: &mut impl BackendKeys, key: &'static str) -> Result<Option<u32>, FeatureError> {
    r.read(key).map(|v| parse_u32(key, &v)).transpose()
}

fn opt_bool(r: &mut impl BackendKeys, key: &'static str) -> Result<bool, FeatureError> {
    Ok(r.read(key)
        .map(|v| parse_bool(key, &v))
        .transpose()?
        .unwrap_or(false))
}

fn required(r: &mut impl BackendKeys, key: &'static str) -> Result<String, FeatureError> {
    r.read(key)
        .ok_or_else(|| FeatureError::new(key, None, Problem::Missing))
}

/// What the backend offers for the transport, read before the frontend
/// writes its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFeatures {
    /// `max-ring-page-order`, clamped to [`MAX_RING_PAGE_ORDER`]; `None`
    /// when absent (the backend knows only one-page rings under `ring-ref`).
    pub max_ring_page_order: Option<u32>,
    /// `multi-queue-max-queues`, clamped to 1..=[`MAX_QUEUES`]; `None`
    /// when absent (one queue, flat keys).
    pub max_queues: Option<u32>,
}

impl RingFeatures {
    /// Parses `max-ring-page-order` and `multi-queue-max-queues`.
    pub fn parse(mut read: impl BackendKeys) -> Result<Self, FeatureError> {
        let r = &mut read;
        let max_ring_page_order = opt_u32(r, "max-ring-page-order")?.map(|o| {
            if o > MAX_RING_PAGE_ORDER {
                log::warn!(
                    "blkfront: backend offers max-ring-page-order {o}; using at most {MAX_RING_PAGE_ORDER} ({} pages)",
                    1u32 << MAX_RING_PAGE_ORDER
                );
                MAX_RING_PAGE_ORDER
            } else {
                o
            }
        });
        let max_queues = opt_u32(r, "multi-queue-max-queues")?.map(|q| {
            if q == 0 {
                log::warn!("blkfront: backend offers multi-queue-max-queues 0; using one queue");
                1
            } else if q > MAX_QUEUES {
                log::warn!(
                    "blkfront: backend offers multi-queue-max-queues {q}; using at most {MAX_QUEUES}"
                );
                MAX_QUEUES
            } else {
                q
            }
        });
        Ok(RingFeatures {
            max_ring_page_order,
            max_queues,
        })
    }
}

/// What the application asks of the device. Each wish is capped by what
/// the backend offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Queues wanted, 1..=[`MAX_QUEUES`] (each a ring with its own event channel).
    pub queues: u32,
    /// Largest ring wanted, as an order: 0..=[`MAX_RING_PAGE_ORDER`].
    pub max_ring_page_order: u32,
    /// Offer persistent grants (`feature-persistent`).
    pub persistent: bool,
    /// Most segments per request wanted: 0 or up to 11 for direct requests
    /// only, up to [`MAX_INDIRECT_SEGMENTS`] with indirect requests.
    pub max_indirect_segments: u32,
}

impl Default for FrontendConfig {
    /// One queue, the largest ring, persistent grants, and 256 segments
    /// (1 MiB of 4 KiB pages) per request, blkback's own maximum.
    fn default() -> Self {
        FrontendConfig {
            queues: 1,
            max_ring_page_order: MAX_RING_PAGE_ORDER,
            persistent: true,
            max_indirect_segments: 256,
        }
    }
}

impl FrontendConfig {
    /// Checks every field against its range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |field, value: u32, min: u32, max: u32| {
            if value < min || value > max {
                Err(ConfigError::OutOfRange {
                    field,
                    value: value.into(),
                    min: min.into(),
                    max: max.into(),
                })
            } else {
                Ok(())
            }
        };
        check("queues", self.queues, 1, MAX_QUEUES)?;
        check(
            "max_ring_page_order",
            self.max_ring_page_order,
            0,
            MAX_RING_PAGE_ORDER,
        )?;
        check(
            "max_indirect_segments",
            self.max_indirect_segments,
            0,
            MAX_INDIRECT_SEGMENTS,
        )
    }
}

/// The frontend's choice of rings for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingChoice {
    /// Number of queues (rings).
    pub queues: u32,
    /// Each ring has `2^ring_page_order` pages.
    pub ring_page_order: u32,
    /// Whether `ring-page-order` (and `ring-ref0..N`) is written: whenever
    /// the backend offers `max-ring-page-order`, even for order 0.
    pub write_ring_page_order: bool,
    /// The frontend's `feature-persistent`.
    pub persistent: bool,
}

/// One queue's ring, as the driver set it up for this connection.
#[derive(Clone, Copy, Debug)]
pub struct QueueRing<'a> {
    /// The grant refs of the ring's pages, in order.
    pub ring_refs: &'a [GrantRefNum],
    /// The queue's event channel (unbound, for the backend's domain).
    pub event_channel: u32,
}

/// A key the frontend writes in its own directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendKey {
    /// Path relative to the frontend's device directory (`queue-1/ring-ref0`).
    pub path: String,
    /// The value.
    pub value: String,
}

impl RingChoice {
    /// Chooses the rings: as many queues and as large a ring as both sides
    /// allow.
    pub fn choose(config: &FrontendConfig, backend: &RingFeatures) -> Result<Self, ConfigError> {
        config.validate()?;
        let queues = config.queues.min(backend.max_queues.unwrap_or(1)).max(1);
        let ring_page_order = config
            .max_ring_page_order
            .min(backend.max_ring_page_order.unwrap_or(0));
        Ok(RingChoice {
            queues,
            ring_page_order,
            write_ring_page_order: backend.max_ring_page_order.is_some(),
            persistent: config.persistent,
        })
    }

    /// Pages of each ring.
    pub fn ring_pages(&self) -> u32 {
        1 << self.ring_page_order
    }

    /// Request entries of each ring.
    pub fn ring_size(&self) -> u32 {
        ring_size(self.ring_page_order)
    }

    /// The keys to write, in one transaction, before leaving `Initialising`.
    ///
    /// One queue: `event-channel` and the refs flat in the directory; more:
    /// `multi-queue-num-queues` and each queue's keys under `queue-N/`. The
    /// refs are `ring-ref` for a one-page ring of a backend without
    /// `max-ring-page-order`, else `ring-page-order` and `ring-ref0..N-1`.
    /// Then `protocol` and `feature-persistent`.
    pub fn frontend_keys(&self, rings: &[QueueRing<'_>]) -> Result<Vec<FrontendKey>, ConfigError> {
        if rings.len() != self.queues as usize {
            return Err(ConfigError::QueueCount {
                expected: self.queues,
                got: rings.len(),
            });
        }
        for (q, ring) in (0u32..).zip(rings) {
            if ring.ring_refs.len() != self.ring_pages() as usize {
                return Err(ConfigError::RingRefCount {
                    queue: q,
                    expected: self.ring_pages(),
                    got: ring.ring_refs.len(),
                });
            }
        }
        let mut keys = Vec::new();
        let mut key = |path: String, value: String| keys.push(FrontendKey { path, value });
        if self.write_ring_page_order {
            key("ring-page-order".into(), self.ring_page_order.to_string());
        }
        if self.queues > 1 {
            key("multi-queue-num-queues".into(), self.queues.to_string());
        }
        for (q, ring) in (0u32..).zip(rings) {
            let prefix = if self.queues > 1 {
                format!("queue-{q}/")
            } else {
                String::new()
            };
            if self.write_ring_page_order {
                for (i, r) in ring.ring_refs.iter().enumerate() {
                    key(format!("{prefix}ring-ref{i}"), r.to_string());
                }
            } else {
                for r in ring.ring_refs {
                    key(format!("{prefix}ring-ref"), r.to_string());
                }
            }
            key(
                format!("{prefix}event-channel"),
                ring.event_channel.to_string(),
            );
        }
        key("protocol".into(), PROTOCOL_X86_64.into());
        key(
            "feature-persistent".into(),
            if self.persistent { "1" } else { "0" }.into(),
        );
        Ok(keys)
    }
}

/// Discard as the backend offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardFeature {
    /// Bytes of one discard extent (`discard-granularity`; the logical
    /// sector size when absent or 0). A multiple of the logical sector size.
    pub granularity: u32,
    /// Byte offset of the first whole extent (`discard-alignment` modulo
    /// the granularity). A multiple of the logical sector size.
    pub alignment: u32,
    /// Secure discard offered (`discard-secure`).
    pub secure: bool,
}

impl DiscardFeature {
    /// The part of `[sector, sector + sectors)` (512-byte sectors) made of
    /// whole discard extents: the part the device is sure to discard.
    /// `None` when no whole extent lies inside (or on overflow).
    pub fn whole_extents(&self, sector: u64, sectors: u64) -> Option<(u64, u64)> {
        let g = u64::from(self.granularity);
        let a = u64::from(self.alignment);
        if g == 0 {
            return None;
        }
        let start = sector.checked_mul(u64::from(SECTOR_SIZE))?;
        let end = sector
            .checked_add(sectors)?
            .checked_mul(u64::from(SECTOR_SIZE))?;
        // Extents begin at a + k * g: round start up and end down to one.
        let first = if start <= a {
            a
        } else {
            let k = (start - a).div_ceil(g);
            a.checked_add(k.checked_mul(g)?)?
        };
        if end < a {
            return None;
        }
        let last = a + (end - a) / g * g;
        if last <= first {
            return None;
        }
        Some((first >> SECTOR_SHIFT, (last - first) >> SECTOR_SHIFT))
    }
}

/// What the backend offers for the disk, read once it is `Connected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskFeatures {
    /// Size in 512-byte sectors (`sectors`); a whole number of logical
    /// sectors, and at most `u64::MAX` bytes.
    pub sectors: u64,
    /// Logical sector size in bytes (`sector-size`): a power of two from
    /// 512 to 4096.
    pub sector_size: u32,
    /// Physical sector size in bytes (`physical-sector-size`, default the
    /// logical one): a power of two, at least the logical size.
    pub physical_sector_size: u32,
    /// `info` (unknown bits kept).
    pub info: DiskInfo,
    /// `feature-flush-cache`.
    pub flush_cache: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard` and its parameters.
    pub discard: Option<DiscardFeature>,
    /// The backend's `feature-persistent`.
    pub persistent: bool,
    /// `feature-max-indirect-segments`, clamped to [`MAX_INDIRECT_SEGMENTS`];
    /// 0 when absent or at most 11 (no indirect requests).
    pub max_indirect_segments: u32,
}

fn parse_sectors(value: &str, sector_size: u32) -> Result<u64, FeatureError> {
    const KEY: &str = "sectors";
    let sectors = parse_u64(KEY, value)?;
    let max = u64::MAX >> SECTOR_SHIFT;
    if sectors > max {
        return Err(FeatureError::new(
            KEY,
            Some(value),
            Problem::TooLarge { max },
        ));
    }
    let per_logical = u64::from(sector_size >> SECTOR_SHIFT);
    if per_logical != 0 && sectors % per_logical != 0 {
        return Err(FeatureError::new(
            KEY,
            Some(value),
            Problem::NotMultipleOf {
                what: "512-byte sectors per logical sector",
                of: per_logical,
            },
        ));
    }
    Ok(sectors)
}

impl DiskFeatures {
    /// Parses the disk's keys. `sectors`, `sector-size` and `info` are
    /// required (as Linux's blkfront requires them); the rest default to
    /// "not offered".
    pub fn parse(mut read: impl BackendKeys) -> Result<Self, FeatureError> {
        let r = &mut read;

        let v = required(r, "sector-size")?;
        let sector_size = parse_u32("sector-size", &v)?;
        if !sector_size.is_power_of_two() {
            return Err(FeatureError::new(
                "sector-size",
                Some(&v),
                Problem::NotPowerOfTwo,
            ));
        }
        if !(MIN_SECTOR_SIZE..=MAX_SECTOR_SIZE).contains(&sector_size) {
            return Err(FeatureError::new(
                "sector-size",
                Some(&v),
                Problem::OutOfRange {
                    min: MIN_SECTOR_SIZE.into(),
                    max: MAX_SECTOR_SIZE.into(),
                },
            ));
        }

        let physical_sector_size = match r.read("physical-sector-size") {
            None => sector_size,
            Some(v) => {
                let p = parse_u32("physical-sector-size", &v)?;
                if !p.is_power_of_two() {
                    return Err(FeatureError::new(
                        "physical-sector-size",
                        Some(&v),
                        Problem::NotPowerOfTwo,
                    ));
                }
                if p < sector_size {
                    return Err(FeatureError::new(
                        "physical-sector-size",
                        Some(&v),
                        Problem::OutOfRange {
                            min: sector_size.into(),
                            max: u64::from(u32::MAX),
                        },
                    ));
                }
                p
            }
        };

        let v = required(r, "sectors")?;
        let sectors = parse_sectors(&v, sector_size)?;

        let v = required(r, "info")?;
        let info = DiskInfo::from_bits_retain(parse_u32("info", &v)?);
        let unknown = info.bits() & !DiskInfo::all().bits();
        if unknown != 0 {
            log::debug!("blkfront: backend info has unknown bits {unknown:#x}; ignored");
        }

        let flush_cache = opt_bool(r, "feature-flush-cache")?;
        let barrier = opt_bool(r, "feature-barrier")?;

        let discard = if opt_bool(r, "feature-discard")? {
            let granularity = match opt_u32(r, "discard-granularity")? {
                None | Some(0) => sector_size,
                Some(g) => g,
            };
            if granularity % sector_size != 0 {
                return Err(FeatureError::new(
                    "discard-granularity",
                    Some(&granularity.to_string()),
                    Problem::NotMultipleOf {
                        what: "sector-size",
                        of: sector_size.into(),
                    },
                ));
            }
            let raw_alignment = opt_u32(r, "discard-alignment")?.unwrap_or(0);
            if raw_alignment % sector_size != 0 {
                return Err(FeatureError::new(
                    "discard-alignment",
                    Some(&raw_alignment.to_string()),
                    Problem::NotMultipleOf {
                        what: "sector-size",
                        of: sector_size.into(),
                    },
                ));
            }
            let secure = opt_bool(r, "discard-secure")?;
            Some(DiscardFeature {
                granularity,
                // granularity >= sector_size > 0, so the remainder is defined.
                alignment: raw_alignment % granularity,
                secure,
            })
        } else {
            None
        };

        let persistent = opt_bool(r, "feature-persistent")?;

        let max_indirect_segments = match opt_u32(r, "feature-max-indirect-segments")? {
            None => 0,
            Some(n) if n as usize <= BLKIF_MAX_SEGMENTS_PER_REQUEST => {
                log::debug!(
                    "blkfront: backend offers {n} indirect segments, no more than a direct request; \
                     indirect requests not used"
                );
                0
            }
            Some(n) if n > MAX_INDIRECT_SEGMENTS => {
                log::warn!(
                    "blkfront: backend offers {n} indirect segments; using at most {MAX_INDIRECT_SEGMENTS}"
                );
                MAX_INDIRECT_SEGMENTS
            }
            Some(n) => n,
        };

        Ok(DiskFeatures {
            sectors,
            sector_size,
            physical_sector_size,
            info,
            flush_cache,
            barrier,
            discard,
            persistent,
            max_indirect_segments,
        })
    }

    /// Re-reads `sectors` after the backend signalled a change (a resize),
    /// with the same checks as [`DiskFeatures::parse`].
    pub fn read_sectors(mut read: impl BackendKeys, sector_size: u32) -> Result<u64, FeatureError> {
        let v = required(&mut read, "sectors")?;
        parse_sectors(&v, sector_size)
    }
}

/// A feature the device can lose while running (the backend answered
/// `EOPNOTSUPP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `feature-flush-cache`.
    FlushCache,
    /// `feature-barrier`.
    Barrier,
    /// `feature-discard` (secure discard with it).
    Discard,
}

/// What one connection uses: the backend's disk as negotiated with the
/// application's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size in bytes: starts and lengths are multiples of it.
    pub sector_size: u32,
    /// Physical sector size in bytes (a hint for the application).
    pub physical_sector_size: u32,
    /// The disk's `info`.
    pub info: DiskInfo,
    /// Flush-cache requests may be sent.
    pub flush_cache: bool,
    /// Barrier requests may be sent.
    pub barrier: bool,
    /// Discard requests may be sent, with these parameters.
    pub discard: Option<DiscardFeature>,
    /// Persistent grants are in use (both sides offered them).
    pub persistent: bool,
    /// Most segments per request: 11, or the indirect maximum both sides accept.
    pub max_segments: u32,
    /// Queues (rings).
    pub queues: u32,
    /// Ring order of each queue.
    pub ring_page_order: u32,
}

impl Negotiated {
    /// What this connection uses.
    pub fn new(config: &FrontendConfig, rings: &RingChoice, disk: &DiskFeatures) -> Self {
        let direct = BLKIF_MAX_SEGMENTS_PER_REQUEST as u32;
        let indirect = disk
            .max_indirect_segments
            .min(config.max_indirect_segments)
            .min(MAX_INDIRECT_SEGMENTS);
        Negotiated {
            sectors: disk.sectors,
            sector_size: disk.sector_size,
            physical_sector_size: disk.physical_sector_size,
            info: disk.info,
            flush_cache: disk.flush_cache,
            barrier: disk.barrier,
            discard: disk.discard,
            persistent: rings.persistent && disk.persistent,
            max_segments: indirect.max(direct),
            queues: rings.queues,
            ring_page_order: rings.ring_page_order,
        }
    }

    /// Whether writes, flushes and discards are refused (read-only or CD-ROM).
    pub fn read_only(&self) -> bool {
        self.info.refuses_writes()
    }

    /// Whether requests may use indirect pages.
    pub fn indirect(&self) -> bool {
        self.max_segments as usize > BLKIF_MAX_SEGMENTS_PER_REQUEST
    }

    /// Indirect pages the largest request needs (0 without indirect requests).
    pub fn max_indirect_pages(&self) -> usize {
        if self.indirect() {
            (self.max_segments as usize).div_ceil(SEGMENTS_PER_INDIRECT_PAGE)
        } else {
            0
        }
    }

    /// Size in bytes (cannot overflow: `sectors` was checked).
    pub fn capacity_bytes(&self) -> u64 {
        self.sectors << SECTOR_SHIFT
    }

    /// Request entries of each ring.
    pub fn ring_size(&self) -> u32 {
        ring_size(self.ring_page_order)
    }

    /// Stops using `feature` (the backend answered `EOPNOTSUPP`).
    pub fn disable(&mut self, feature: Feature) {
        match feature {
            Feature::FlushCache => self.flush_cache = false,
            Feature::Barrier => self.barrier = false,
            Feature::Discard => self.discard = None,
        }
    }

    /// Takes a new size (from [`DiskFeatures::read_sectors`]).
    pub fn resize(&mut self, sectors: u64) {
        if sectors != self.sectors {
            log::info!(
                "blkfront: disk resized from {} to {} 512-byte sectors",
                self.sectors,
                sectors
            );
        }
        self.sectors = sectors;
    }
}
