//! The cost model: what a request costs the device, in units of device time.
//!
//! A request's cost is `base[op] + per_byte[op] * bytes` nanoseconds of
//! *amortized* device time: the share of the device the request uses, so
//! that a device serving several requests at once costs each of them less
//! than its latency. One unit is one nanosecond of the whole device, and a
//! fully busy device delivers 10^9 units per second; token rates, bucket
//! depths and admission control are all in these units.
//!
//! # Calibration
//! Every completion gives one sample: the time the device spent on that
//! request, measured as the time since the later of its dispatch and the
//! previous completion. While the device is busy this is the interval
//! between two completions, which is the amortized cost; after an idle spell
//! it is the request's full latency, which over-estimates the cost (the model
//! errs on the safe side when the device is lightly loaded). Over a busy
//! period the samples add up to exactly the busy time, so the model's total
//! is right even where single samples are noisy.
//!
//! Each operation has its own least-squares line `cost = a + b * bytes`,
//! fitted over exponentially decaying sums (a window of about 128 samples),
//! in 128-bit integers: no floating point, deterministic, no overflow for
//! sizes up to 4 GiB and samples up to 1 s. It is robust to outliers: after
//! a short warm-up a sample is clamped to between an eighth and eight times
//! the current prediction, so one stalled request cannot throw the model off
//! while a real change of device speed still moves it within a few dozen
//! samples. When all recent sizes are alike the slope cannot be fitted; it
//! keeps its last value and only the constant moves. Both terms are bounded
//! (`a` to 1 s, `b` to 1000 ns per byte, neither negative).
//!
//! The measured capacity is the ratio of the units the model predicted for
//! the completed requests to the busy time they took, times 10^9: 10^9
//! units/s when the model is right, and self-consistent when it is not, so
//! admission control compares reservations with what the device delivers in
//! the same units.

use crate::{Nanos, Op};

/// Fixed-point bits of the per-byte term.
const FRAC: u32 = 16;
/// Decay per sample: sums lose 1/2^DECAY_SHIFT of their weight.
const DECAY_SHIFT: u32 = 7;
/// Weight of a new sample.
const WEIGHT: i128 = 1 << 8;
/// Samples before outliers are clamped.
const WARMUP: u64 = 8;
/// Outlier clamp: a sample is held within [pred / CLAMP, pred * CLAMP].
const CLAMP: u64 = 8;
/// Largest sample kept, in ns (about 1.07 s).
const MAX_SAMPLE_NS: u64 = 1 << 30;
/// Bound of the constant term, in ns.
const MAX_BASE_NS: u64 = 1_000_000_000;
/// Bound of the per-byte term, in ns per byte, fixed point.
const MAX_PER_BYTE_FX: u64 = 1000 << FRAC;
/// Smallest spread of sizes (standard deviation, bytes) that lets the slope
/// be fitted.
const MIN_SIZE_SPREAD: i128 = 64;
/// Nanoseconds per second.
const NS_PER_SEC: u64 = 1_000_000_000;

/// The starting point of the model, used until completions say otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostPrior {
    /// Constant cost per operation in ns, indexed by [`Op::index`].
    pub base_ns: [u64; 4],
    /// Cost per byte in picoseconds, indexed by [`Op::index`].
    pub ps_per_byte: [u64; 4],
}

impl Default for CostPrior {
    /// A modest SSD behind a paravirtual ring: 50 µs per request and
    /// 1 GB/s for reads and writes, 1 ms per flush, 50 µs per discard
    /// regardless of its size.
    fn default() -> Self {
        Self {
            base_ns: [50_000, 50_000, 1_000_000, 50_000],
            ps_per_byte: [1000, 1000, 0, 0],
        }
    }
}

impl CostPrior {
    /// The same line for reads and writes, flushes and discards at the base
    /// cost only.
    pub fn uniform(base_ns: u64, ps_per_byte: u64) -> Self {
        Self {
            base_ns: [base_ns; 4],
            ps_per_byte: [ps_per_byte, ps_per_byte, 0, 0],
        }
    }
}

#[derive(Clone, Debug)]
struct Fit {
    s0: i128,
    sx: i128,
    sy: i128,
    sxx: i128,
    sxy: i128,
    n: u64,
    a: u64,
    b_fx: u64,
}

impl Fit {
    fn new(base_ns: u64, ps_per_byte: u64) -> Self {
        let b_fx = (((ps_per_byte as u128) << FRAC) + 500) / 1000;
        Self {
            s0: 0,
            sx: 0,
            sy: 0,
            sxx: 0,
            sxy: 0,
            n: 0,
            a: base_ns.min(MAX_BASE_NS),
            b_fx: b_fx.min(MAX_PER_BYTE_FX as u128) as u64,
        }
    }

    fn predict(&self, x: u64) -> u64 {
        let x = x.min(u32::MAX as u64);
        let var = ((self.b_fx as u128 * x as u128) >> FRAC) as u64;
        self.a.saturating_add(var).max(1)
    }

    fn observe(&mut self, x: u64, y: u64) {
        let x = x.min(u32::MAX as u64);
        let mut y = y.min(MAX_SAMPLE_NS);
        if self.n >= WARMUP {
            let p = self.predict(x);
            y = y.clamp(p / CLAMP, p.saturating_mul(CLAMP).min(MAX_SAMPLE_NS));
        }
        let (xi, yi) = (x as i128, y as i128);
        for s in [
            &mut self.s0,
            &mut self.sx,
            &mut self.sy,
            &mut self.sxx,
            &mut self.sxy,
        ] {
            *s -= *s >> DECAY_SHIFT;
        }
        self.s0 += WEIGHT;
        self.sx += WEIGHT * xi;
        self.sy += WEIGHT * yi;
        self.sxx += WEIGHT * xi * xi;
        self.sxy += WEIGHT * xi * yi;
        self.n = self.n.saturating_add(1);
        self.solve();
    }

    fn solve(&mut self) {
        if self.s0 <= 0 {
            return;
        }
        let denom = self.s0 * self.sxx - self.sx * self.sx;
        if denom > self.s0 * self.s0 * MIN_SIZE_SPREAD * MIN_SIZE_SPREAD {
            let num = self.s0 * self.sxy - self.sx * self.sy;
            let b = if num <= 0 {
                0
            } else {
                ((num << FRAC) / denom).min(MAX_PER_BYTE_FX as i128)
            };
            self.b_fx = b as u64;
        }
        let a = (self.sy - ((self.b_fx as i128 * self.sx) >> FRAC)) / self.s0;
        self.a = a.clamp(0, MAX_BASE_NS as i128) as u64;
    }
}

/// The calibrated cost model (see the module docs).
#[derive(Clone, Debug)]
pub struct CostModel {
    fits: [Fit; 4],
    last_completion: Option<Nanos>,
    cap_units: u128,
    cap_time: u128,
    samples: u64,
}

impl CostModel {
    /// A model starting from `prior`.
    pub fn new(prior: CostPrior) -> Self {
        Self {
            fits: core::array::from_fn(|i| Fit::new(prior.base_ns[i], prior.ps_per_byte[i])),
            last_completion: None,
            cap_units: 0,
            cap_time: 0,
            samples: 0,
        }
    }

    /// Estimated cost of a request in units (ns of device time), at least 1.
    pub fn estimate(&self, op: Op, bytes: u64) -> u64 {
        self.fits[op.index()].predict(bytes)
    }

    /// Current line for `op`: (constant in ns, per-byte term in ps).
    pub fn line(&self, op: Op) -> (u64, u64) {
        let f = &self.fits[op.index()];
        (f.a, ((f.b_fx as u128 * 1000 + (1 << (FRAC - 1))) >> FRAC) as u64)
    }

    /// Reservation rate, in units per second, that `per_sec` requests of
    /// `op` and `bytes` need at the current estimate.
    pub fn rate_for(&self, op: Op, bytes: u64, per_sec: u64) -> u64 {
        self.estimate(op, bytes).saturating_mul(per_sec)
    }

    /// Completions observed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Measured capacity in units per second (10^9 until enough busy time
    /// has been observed; bounded to [10^9/64, 10^9*64]).
    pub fn capacity_per_sec(&self) -> u64 {
        // Less than a millisecond of observed busy time says too little.
        if self.cap_time < 1_000_000 {
            return NS_PER_SEC;
        }
        let cap = self.cap_units.saturating_mul(NS_PER_SEC as u128) / self.cap_time;
        (cap.clamp((NS_PER_SEC / 64) as u128, NS_PER_SEC as u128 * 64)) as u64
    }

    /// Feeds one completion: `op` of `bytes` dispatched at `dispatched`,
    /// completed at `now`.
    pub fn observe(&mut self, op: Op, bytes: u64, dispatched: Nanos, now: Nanos) {
        let start = match self.last_completion {
            Some(last) => last.max(dispatched),
            None => dispatched,
        };
        let sample = now.saturating_sub(start);
        self.last_completion = Some(self.last_completion.map_or(now, |l| l.max(now)));
        let predicted = self.estimate(op, bytes);
        self.fits[op.index()].observe(bytes, sample);
        self.samples = self.samples.saturating_add(1);
        self.cap_units -= self.cap_units >> DECAY_SHIFT;
        self.cap_time -= self.cap_time >> DECAY_SHIFT;
        self.cap_units += predicted as u128;
        self.cap_time += sample.min(MAX_SAMPLE_NS) as u128;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_is_used_before_samples() {
        let m = CostModel::new(CostPrior::uniform(10_000, 500));
        assert_eq!(m.estimate(Op::Read, 0), 10_000);
        assert_eq!(m.estimate(Op::Read, 4096), 10_000 + 2048);
        assert_eq!(m.estimate(Op::Flush, 4096), 10_000);
        assert_eq!(m.capacity_per_sec(), 1_000_000_000);
        assert_eq!(m.line(Op::Write), (10_000, 500));
    }

    #[test]
    fn fits_a_line_from_completions() {
        // True device: 20 µs + 2 ns/byte, served one at a time.
        let mut m = CostModel::new(CostPrior::uniform(100_000, 100));
        let mut now = 0u64;
        let sizes = [4096u64, 65536, 16384, 262144, 8192, 131072];
        for i in 0..600 {
            let size = sizes[i % sizes.len()];
            let service = 20_000 + 2 * size;
            let dispatched = now;
            now += service;
            m.observe(Op::Read, size, dispatched, now);
        }
        let (a, ps) = m.line(Op::Read);
        assert!(a.abs_diff(20_000) < 500, "a = {a}");
        assert!(ps.abs_diff(2000) < 20, "ps per byte = {ps}");
        let cap = m.capacity_per_sec();
        assert!(cap.abs_diff(1_000_000_000) < 20_000_000, "capacity {cap}");
        // Writes were never observed: still the prior.
        assert_eq!(m.line(Op::Write), (100_000, 100));
    }

    #[test]
    fn outliers_are_clamped() {
        let mut m = CostModel::new(CostPrior::uniform(10_000, 0));
        let mut now = 0;
        for _ in 0..100 {
            m.observe(Op::Write, 4096, now, now + 10_000);
            now += 10_000;
        }
        // One request stalls for a second.
        m.observe(Op::Write, 4096, now, now + 1_000_000_000);
        let est = m.estimate(Op::Write, 4096);
        assert!(est < 20_000, "one outlier moved the estimate to {est}");
    }

    #[test]
    fn follows_a_slower_device() {
        let mut m = CostModel::new(CostPrior::uniform(10_000, 0));
        let mut now = 0;
        for _ in 0..2000 {
            m.observe(Op::Read, 4096, now, now + 100_000);
            now += 100_000;
        }
        let est = m.estimate(Op::Read, 4096);
        assert!(est.abs_diff(100_000) < 2_000, "estimate {est}");
    }

    #[test]
    fn concurrent_device_costs_amortized_time() {
        // Four servers, each 400 µs per request: completions every 100 µs.
        let mut m = CostModel::new(CostPrior::uniform(400_000, 0));
        for i in 0..1000u64 {
            let dispatched = i * 100_000;
            m.observe(Op::Read, 4096, dispatched, dispatched + 400_000);
        }
        let est = m.estimate(Op::Read, 4096);
        assert!(est.abs_diff(100_000) < 2_000, "estimate {est}");
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let mut m = CostModel::new(CostPrior {
            base_ns: [u64::MAX; 4],
            ps_per_byte: [u64::MAX; 4],
        });
        assert!(m.estimate(Op::Read, u64::MAX) >= 1);
        for i in 0..100u64 {
            m.observe(Op::Read, u64::MAX - i, u64::MAX - 5, u64::MAX);
            m.observe(Op::Read, i, 10, 0);
            m.observe(Op::Discard, 0, 0, u64::MAX);
        }
        assert!(m.estimate(Op::Read, u64::MAX) >= 1);
        let _ = m.capacity_per_sec();
    }
}
