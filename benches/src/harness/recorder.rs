//! What one entry records in one round: latency samples in an HDR
//! histogram, and optionally its throughput and deadline misses.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The largest latency the histogram tells apart: one minute. Longer
/// samples are counted as one minute (no bench waits that long: every
/// wait of the benches is bounded well below it).
pub const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// Significant decimal digits kept per sample: 3, so every value below
/// 2048 ns is exact and every larger one is within 0.1 %.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// A new empty latency histogram with the harness's bounds.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1,
    // high >= 2 * low, digits <= 5): this cannot fail.
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Rates an entry measured over one round. Each field is reported (JSON,
/// table, plot) only when set; across rounds the harness reports the
/// median of the rounds' values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Throughput {
    /// Operations per second.
    pub iops: Option<f64>,
    /// Megabytes (10^6 bytes) per second.
    pub mb_s: Option<f64>,
    /// Gigabits (10^9 bits) per second.
    pub gbit_s: Option<f64>,
}

impl Throughput {
    /// Sets `iops` from `ops` operations done in `elapsed`.
    pub fn with_iops(mut self, ops: u64, elapsed: Duration) -> Self {
        self.iops = rate(ops as f64, elapsed);
        self
    }

    /// Sets `mb_s` from `bytes` moved in `elapsed`.
    pub fn with_mb_s(mut self, bytes: u64, elapsed: Duration) -> Self {
        self.mb_s = rate(bytes as f64 / 1e6, elapsed);
        self
    }

    /// Sets `gbit_s` from `bytes` moved in `elapsed`.
    pub fn with_gbit_s(mut self, bytes: u64, elapsed: Duration) -> Self {
        self.gbit_s = rate(bytes as f64 * 8.0 / 1e9, elapsed);
        self
    }
}

fn rate(amount: f64, elapsed: Duration) -> Option<f64> {
    let s = elapsed.as_secs_f64();
    (s > 0.0).then(|| amount / s)
}

/// Records one entry's round: every measured sample goes to
/// [`Recorder::record`], which costs a few instructions (an index computed
/// from the value's leading zeros, one counter incremented) and keeps no
/// sample.
pub struct Recorder {
    hist: Histogram<u64>,
    throughput: Option<Throughput>,
    misses: u64,
    miss_total: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Recorder {
            hist: new_histogram(),
            throughput: None,
            misses: 0,
            miss_total: 0,
        }
    }

    /// Records one latency sample, in nanoseconds. Samples above
    /// [`MAX_TRACKED_NS`] count as that value.
    #[inline(always)]
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns);
    }

    /// Records samples a measuring loop stored in a buffer of its own
    /// (a C peer that fills an array, for example).
    pub fn record_all(&mut self, samples: &[u64]) {
        for &s in samples {
            self.record(s);
        }
    }

    /// Sets this round's rates.
    pub fn throughput(&mut self, t: Throughput) {
        self.throughput = Some(t);
    }

    /// Counts `missed` deadline misses out of `out_of` operations that had
    /// a deadline (JSON `misses` and `miss_ratio`). Adds up over calls.
    pub fn misses(&mut self, missed: u64, out_of: u64) {
        self.misses = self.misses.saturating_add(missed);
        self.miss_total = self.miss_total.saturating_add(out_of);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The `q`-quantile (0..=1) of the recorded samples; 0 when there are
    /// none.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(q)
        }
    }

    pub(crate) fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    pub(crate) fn rates(&self) -> Option<Throughput> {
        self.throughput
    }

    pub(crate) fn miss_counts(&self) -> (u64, u64) {
        (self.misses, self.miss_total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact_and_quantiles_are_nearest_rank() {
        let mut r = Recorder::new();
        for v in 1..=100 {
            r.record(v);
        }
        assert_eq!(r.count(), 100);
        assert_eq!(r.quantile(0.5), 50);
        assert_eq!(r.quantile(0.99), 99);
        assert_eq!(r.quantile(1.0), 100);
        assert_eq!(Recorder::new().quantile(0.5), 0);
    }

    #[test]
    fn large_values_keep_three_digits_and_huge_ones_saturate() {
        let mut r = Recorder::new();
        r.record(60_689);
        let q = r.quantile(0.5);
        assert!((60_689..=60_689 + 61).contains(&q), "{q}");
        r.record(u64::MAX);
        assert!(r.quantile(1.0) >= MAX_TRACKED_NS);
        assert!(r.quantile(1.0) <= MAX_TRACKED_NS + MAX_TRACKED_NS / 1000);
    }

    #[test]
    fn rates_and_misses() {
        let t = Throughput::default()
            .with_iops(1000, Duration::from_millis(500))
            .with_mb_s(4_000_000, Duration::from_secs(2))
            .with_gbit_s(1_000_000_000, Duration::from_secs(8));
        assert_eq!(t.iops, Some(2000.0));
        assert_eq!(t.mb_s, Some(2.0));
        assert_eq!(t.gbit_s, Some(1.0));
        assert_eq!(
            Throughput::default().with_iops(5, Duration::ZERO).iops,
            None
        );
        let mut r = Recorder::new();
        r.misses(1, 10);
        r.misses(2, 10);
        assert_eq!(r.miss_counts(), (3, 20));
    }
}
