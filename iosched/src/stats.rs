//! Per-queue statistics and the small log histogram behind their latency
//! percentiles.

use core::fmt;

use crate::Nanos;

/// Sub-buckets per power of two: 8, so a percentile is within 12.5 % of the
/// true value.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Largest exponent kept; larger values (above 2^43 ns, about 2.4 hours)
/// land in the last bucket.
const MAX_MSB: u32 = 42;
/// Number of buckets.
pub const BUCKETS: usize = (MAX_MSB - SUB_BITS + 2) as usize * SUB;

/// A fixed-size histogram of nanosecond values with logarithmic buckets
/// (8 per power of two). No allocation, no floating point; recording is a
/// few instructions.
#[derive(Clone)]
pub struct LogHistogram {
    counts: [u64; BUCKETS],
    total: u64,
    max: u64,
}

impl Default for LogHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LogHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogHistogram")
            .field("count", &self.total)
            .field("p50", &self.quantile(1, 2))
            .field("p99", &self.quantile(99, 100))
            .field("max", &self.max)
            .finish()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    if msb > MAX_MSB {
        return BUCKETS - 1;
    }
    let sub = ((v >> (msb - SUB_BITS)) as usize) & (SUB - 1);
    (msb - SUB_BITS + 1) as usize * SUB + sub
}

/// The value a bucket stands for: the middle of its range.
fn bucket_value(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let msb = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    let shift = msb - SUB_BITS;
    let low = (SUB as u64 + sub) << shift;
    low + ((1u64 << shift) >> 1)
}

impl LogHistogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            counts: [0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        let b = bucket_of(v);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total = self.total.saturating_add(1);
        self.max = self.max.max(v);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value recorded (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `num/den` quantile (for example `99, 100` for p99), as the middle
    /// of its bucket (within 12.5 %), never above the exact maximum; `None`
    /// when empty or when `den` is 0.
    pub fn quantile(&self, num: u64, den: u64) -> Option<u64> {
        if self.total == 0 || den == 0 {
            return None;
        }
        let num = num.min(den);
        // Rank of the wanted value, 1-based, at least 1.
        let rank = ((self.total as u128 * num as u128).div_ceil(den as u128)).max(1) as u64;
        if rank >= self.total {
            return Some(self.max);
        }
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(c);
            if seen >= rank {
                return Some(bucket_value(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// What a queue did, for the application and for benches. All counters
/// saturate.
#[derive(Clone, Debug, Default)]
pub struct QueueStats {
    /// Requests accepted by `submit`.
    pub submitted: u64,
    /// Requests handed out by batches.
    pub dispatched: u64,
    /// Of those, taken by APEX's urgent pass.
    pub dispatched_urgent: u64,
    /// Of those, taken by APEX's reservation pass (paid with tokens).
    pub dispatched_reserved: u64,
    /// Of those, taken by APEX's work-conserving pass (free), or by any other
    /// policy.
    pub dispatched_other: u64,
    /// Requests completed.
    pub completed: u64,
    /// Requests taken back with `cancel` (waiting or in flight).
    pub cancelled: u64,
    /// Bytes of the completed requests.
    pub bytes: u64,
    /// Completed requests that had a deadline.
    pub with_deadline: u64,
    /// Completed requests that finished after their deadline.
    pub deadline_misses: u64,
    /// Sum of the lateness of the missed requests, in ns.
    pub lateness_total_ns: u64,
    /// Largest lateness, in ns.
    pub lateness_max_ns: u64,
    /// Latency from submission to completion, in ns.
    pub latency: LogHistogram,
    /// Tokens the reservation offered since the queue was created: its rate
    /// times the time, including what overflowed a full bucket (units).
    pub tokens_offered: u64,
    /// Tokens spent by the reservation and urgent passes (units; urgent
    /// spending below zero included, down to the floor).
    pub tokens_spent: u64,
}

impl QueueStats {
    /// Reservation use in per-mille: tokens spent against tokens offered
    /// (`None` before any offer). Urgent overdraft can take it above 1000.
    pub fn reservation_use_permille(&self) -> Option<u64> {
        if self.tokens_offered == 0 {
            return None;
        }
        Some((self.tokens_spent as u128 * 1000 / self.tokens_offered as u128) as u64)
    }

    /// Latency quantile in ns (see [`LogHistogram::quantile`]).
    pub fn latency_quantile(&self, num: u64, den: u64) -> Option<Nanos> {
        self.latency.quantile(num, den)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_contiguous() {
        let mut last = 0;
        for v in 0..100_000u64 {
            let b = bucket_of(v);
            assert!(b == last || b == last + 1, "v={v} b={b} last={last}");
            last = b;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn bucket_value_is_within_its_bucket() {
        for i in 0..BUCKETS - 1 {
            assert_eq!(bucket_of(bucket_value(i)), i, "bucket {i}");
        }
    }

    #[test]
    fn quantiles_within_an_eighth() {
        let mut h = LogHistogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(1, 2).unwrap();
        let p99 = h.quantile(99, 100).unwrap();
        assert!(p50.abs_diff(5_000_000) <= 5_000_000 / 8, "p50 {p50}");
        assert!(p99.abs_diff(9_900_000) <= 9_900_000 / 8, "p99 {p99}");
        assert_eq!(h.quantile(1, 1), Some(10_000_000));
        assert_eq!(h.count(), 10_000);
        assert_eq!(LogHistogram::new().quantile(1, 2), None);
        assert_eq!(h.quantile(1, 0), None);
    }

    #[test]
    fn reservation_use() {
        let s = QueueStats {
            tokens_offered: 1000,
            tokens_spent: 250,
            ..QueueStats::default()
        };
        assert_eq!(s.reservation_use_permille(), Some(250));
        assert_eq!(QueueStats::default().reservation_use_permille(), None);
    }
}
