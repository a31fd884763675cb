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
//! Every completion gives one sample: the device time the request used. The
//! device serves several requests at once, so wall time is shared out
//! equally among the requests in flight, as in processor sharing: a virtual
//! clock advances by `dt / n` while `n` requests are in flight, and a
//! request's sample is the virtual time that passed while it was in flight.
//! On a device that serves `k` at once and is kept full, a request of
//! service time `s` so collects `s / k`, its share; a request that
//! completes quickly beside long ones is not charged for them. The samples
//! of a busy period add up to exactly its length. Time with nothing in
//! flight is charged to no one. A device that is not kept full looks slower
//! than it is (its time is shared by fewer requests), so the model errs on
//! the safe side when the load is light.
//!
//! Each operation has its own least-squares line `cost = a + b * bytes`,
//! fitted over exponentially weighted means, variance and covariance (a
//! window of about 128 samples, plain means before that), in 128-bit fixed
//! point: no floating point, deterministic, no overflow for sizes up to
//! 4 GiB and samples up to 1 s. It is robust to outliers: after
//! a short warm-up a sample is clamped to between an eighth and eight times
//! the current prediction, so one stalled request cannot throw the model off
//! while a real change of device speed still moves it within a few dozen
//! samples. When all recent sizes are alike the slope cannot be fitted; it
//! keeps its last value and only the constant moves. Both terms are bounded
//! (`a` to 1 s, `b` to 1000 ns per byte, neither negative).
//!
//! # How long the device takes to drain what it holds
//! The costs say how much of the device a request uses, not how long a
//! request waits behind the others: a device whose own queue is deep, or
//! that sits on a shared disk, or that takes writes into a cache and writes
//! them back later, can take longer to serve a request than the estimated
//! work ahead of it. So the model also keeps a *drain line*, fitted from
//! completions the same way: `time = alpha + beta * units`, where `units`
//! is the estimated work in flight when a request went on the ring (itself
//! included) and `time` how long it then took to complete. This is Little's
//! law measured request by request: on a device the costs describe well,
//! `beta` is 1 and `alpha` the request's own service time beyond its share;
//! `beta` above 1 says the work in flight drains slower than the costs
//! claim, `alpha` says what every request waits whatever is ahead of it
//! (the device's floor). `beta` is taken as at least 1 (the costs are never
//! trusted to drain faster than they claim) and at most 1000; `alpha` is
//! bounded to 1 s. The scheduler feeds it with the completions of the
//! requests whose latency it protects (APEX: real-time ones), and uses it
//! to bound the work it lets onto the ring ([`CostModel::work_within`]).
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
/// Samples in the exponential window.
const WINDOW: i128 = 1 << DECAY_SHIFT;
/// Fixed-point bits of the means.
const SCALE: u32 = 16;
/// Samples before the fit replaces the prior and outliers are clamped.
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
/// The variance of the sizes must exceed their mean square over
/// 2^REL_SPREAD_SHIFT for the slope to be fitted.
const REL_SPREAD_SHIFT: u32 = 12;
/// Fixed-point bits of the virtual clock.
const VT_FRAC: u32 = 32;
/// Nanoseconds per second.
const NS_PER_SEC: u64 = 1_000_000_000;
/// The drain line's slope is at least 1 (fixed point).
const MIN_DRAIN_SLOPE_FX: u64 = 1 << FRAC;

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

/// A least-squares line kept as exponentially weighted means, variance and
/// covariance (Welford's updates: no cancellation, so equal sizes give a
/// variance of exactly zero). Means are scaled by 2^SCALE.
#[derive(Clone, Debug)]
struct Fit {
    mx: i128,
    my: i128,
    vxx: i128,
    cxy: i128,
    n: u64,
    a: u64,
    b_fx: u64,
    /// Least slope the fit takes (fixed point).
    min_b_fx: u64,
}

impl Fit {
    fn new(base_ns: u64, ps_per_byte: u64) -> Self {
        let b_fx = (((ps_per_byte as u128) << FRAC) + 500) / 1000;
        Self {
            mx: 0,
            my: 0,
            vxx: 0,
            cxy: 0,
            n: 0,
            a: base_ns.min(MAX_BASE_NS),
            b_fx: b_fx.min(MAX_PER_BYTE_FX as u128) as u64,
            min_b_fx: 0,
        }
    }

    /// The same with a least slope: a fitted slope below it is taken as
    /// it, and the constant is fitted to go with it.
    fn with_min_slope(mut self, min_b_fx: u64) -> Self {
        self.min_b_fx = min_b_fx.min(MAX_PER_BYTE_FX);
        self.b_fx = self.b_fx.max(self.min_b_fx);
        self
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
            // A prediction past the largest sample (a huge constant, or a
            // steep slope times a large size) would put the low end above
            // the high one.
            let hi = p.saturating_mul(CLAMP).min(MAX_SAMPLE_NS);
            y = y.clamp((p / CLAMP).min(hi), hi);
        }
        // Weight of the new sample: 1/(n+1) at first (plain means), then a
        // constant 1/WINDOW (exponential decay).
        let dx = ((x as i128) << SCALE) - self.mx;
        let dy = ((y as i128) << SCALE) - self.my;
        if self.n as i128 + 1 >= WINDOW {
            // The steady state: a constant divisor, which the compiler
            // turns into shifts (the same results as the general case).
            self.update::<WINDOW>(dx, dy);
        } else {
            self.update_warming(dx, dy, self.n as i128 + 1);
        }
        self.n = self.n.saturating_add(1);
        self.solve();
    }

    /// One update with weight `1/D`, `D` a constant.
    #[inline]
    fn update<const D: i128>(&mut self, dx: i128, dy: i128) {
        self.mx += dx / D;
        self.my += dy / D;
        let (xx, xy) = (dx * dx, dx * dy);
        self.vxx += xx / D - xx / (D * D) - self.vxx / D;
        self.cxy += xy / D - xy / (D * D) - self.cxy / D;
    }

    /// One update with weight `1/d` (the first samples: plain means).
    fn update_warming(&mut self, dx: i128, dy: i128, d: i128) {
        self.mx += dx / d;
        self.my += dy / d;
        let (xx, xy) = (dx * dx, dx * dy);
        self.vxx += xx / d - xx / (d * d) - self.vxx / d;
        self.cxy += xy / d - xy / (d * d) - self.cxy / d;
    }

    fn solve(&mut self) {
        // The prior stands until the warm-up samples are in.
        if self.n < WARMUP {
            return;
        }
        // The slope needs sizes that differ: a spread of at least
        // MIN_SIZE_SPREAD bytes and of 1/64 of the sizes themselves.
        let min_var = (MIN_SIZE_SPREAD << SCALE) * (MIN_SIZE_SPREAD << SCALE);
        if self.vxx > min_var && (self.vxx << REL_SPREAD_SHIFT) > self.mx * self.mx {
            let b = if self.cxy <= 0 {
                0
            } else {
                ((self.cxy << FRAC) / self.vxx).min(MAX_PER_BYTE_FX as i128)
            };
            self.b_fx = (b as u64).max(self.min_b_fx);
        }
        let a = (self.my - ((self.b_fx as i128 * self.mx) >> FRAC)) >> SCALE;
        self.a = a.clamp(0, MAX_BASE_NS as i128) as u64;
    }
}

/// The calibrated cost model (see the module docs).
#[derive(Clone, Debug)]
pub struct CostModel {
    fits: [Fit; 4],
    /// Virtual time, 2^-VT_FRAC ns of wall time per unit of cost.
    virtual_time: u128,
    clock_last: Nanos,
    cap_units: u128,
    cap_time: u128,
    samples: u64,
    /// Time to completion against the work in flight at dispatch.
    drain: Fit,
}

impl CostModel {
    /// A model starting from `prior`.
    pub fn new(prior: CostPrior) -> Self {
        Self {
            fits: core::array::from_fn(|i| Fit::new(prior.base_ns[i], prior.ps_per_byte[i])),
            virtual_time: 0,
            clock_last: 0,
            cap_units: 0,
            cap_time: 0,
            samples: 0,
            // Until completions say otherwise: the costs are right.
            drain: Fit::new(0, 1000).with_min_slope(MIN_DRAIN_SLOPE_FX),
        }
    }

    /// Estimated cost of a request in units (ns of device time), at least 1.
    pub fn estimate(&self, op: Op, bytes: u64) -> u64 {
        self.fits[op.index()].predict(bytes)
    }

    /// Current line for `op`: (constant in ns, per-byte term in ps).
    pub fn line(&self, op: Op) -> (u64, u64) {
        let f = &self.fits[op.index()];
        (
            f.a,
            ((f.b_fx as u128 * 1000 + (1 << (FRAC - 1))) >> FRAC) as u64,
        )
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

    /// The drain line (see the module docs): (`alpha` in ns, `beta` in
    /// per-mille), `beta` at least 1000.
    pub fn drain_line(&self) -> (u64, u64) {
        let b = self.drain.b_fx;
        (
            self.drain.a,
            ((b as u128 * 1000 + (1 << (FRAC - 1))) >> FRAC) as u64,
        )
    }

    /// Completions the drain line was fitted from.
    pub fn drain_samples(&self) -> u64 {
        self.drain.n
    }

    /// Expected time, ns, from putting a request on the ring to its
    /// completion when `units` of work are in flight, itself included:
    /// `alpha + beta * units`.
    pub fn drain_time(&self, units: u64) -> u64 {
        let b = self.drain.b_fx as u128;
        let var = (b * units as u128) >> FRAC;
        self.drain
            .a
            .saturating_add(var.min(u64::MAX as u128) as u64)
    }

    /// The most work, in units, that may be in flight for a request put
    /// on the ring now to complete within `ns`: `(ns - alpha) / beta`, 0
    /// when `ns` is below the device's floor `alpha`.
    pub fn work_within(&self, ns: u64) -> u64 {
        let b = self.drain.b_fx.max(1) as u128;
        let room = ns.saturating_sub(self.drain.a) as u128;
        ((room << FRAC) / b).min(u64::MAX as u128) as u64
    }

    /// Feeds one sample of the drain line: a request put on the ring with
    /// `units` of work in flight (itself included) completed `device_ns`
    /// later.
    pub fn observe_drain(&mut self, units: u64, device_ns: u64) {
        self.drain.observe(units, device_ns);
    }

    /// Feeds one sample directly: a request of `op` and `bytes` used
    /// `device_ns` of device time (for callers that measure it themselves).
    pub fn observe_sample(&mut self, op: Op, bytes: u64, device_ns: u64) {
        let predicted = self.estimate(op, bytes);
        self.fits[op.index()].observe(bytes, device_ns);
        self.samples = self.samples.saturating_add(1);
        self.cap_units -= self.cap_units >> DECAY_SHIFT;
        self.cap_time -= self.cap_time >> DECAY_SHIFT;
        self.cap_units += predicted as u128;
        self.cap_time += device_ns.min(MAX_SAMPLE_NS) as u128;
    }

    /// Advances the virtual clock to `now`; `in_flight` is the number of
    /// requests in flight since the last tick. Call before every change of
    /// `in_flight`.
    pub(crate) fn tick(&mut self, now: Nanos, in_flight: usize) {
        if now > self.clock_last && in_flight > 0 {
            let dt = now - self.clock_last;
            // Below 2^32 ns (4.3 s) the shifted interval fits in 64 bits,
            // and a 64-bit division is far cheaper than a 128-bit one.
            let step = if dt < 1 << (64 - VT_FRAC) {
                ((dt << VT_FRAC) / in_flight as u64) as u128
            } else {
                ((dt as u128) << VT_FRAC) / in_flight as u128
            };
            self.virtual_time = self.virtual_time.wrapping_add(step);
        }
        self.clock_last = self.clock_last.max(now);
    }

    /// The virtual clock, to stamp a dispatched request with.
    pub(crate) fn stamp(&self) -> u128 {
        self.virtual_time
    }

    /// Feeds the completion of a request dispatched at virtual time `stamp`
    /// (call [`CostModel::tick`] first).
    pub(crate) fn complete(&mut self, op: Op, bytes: u64, stamp: u128) {
        let sample = self.virtual_time.wrapping_sub(stamp) >> VT_FRAC;
        self.observe_sample(op, bytes, sample.min(u64::MAX as u128) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fit whose prediction passes the largest sample times the clamp
    /// factor (here: 1 us per byte, 64 MiB) takes a new sample without
    /// panicking, and stays finite.
    #[test]
    fn a_prediction_past_the_largest_sample_does_not_break_the_clamp() {
        let mut f = Fit::new(MAX_BASE_NS, 1_000_000_000);
        f.n = WARMUP;
        let x = 64 << 20;
        assert!(f.predict(x) / CLAMP > MAX_SAMPLE_NS, "{}", f.predict(x));
        f.observe(x, 1);
        f.observe(x, MAX_SAMPLE_NS);
        assert!(f.predict(x) >= 1);
    }

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
    fn fits_a_line_from_samples() {
        // True device: 20 µs + 2 ns/byte.
        let mut m = CostModel::new(CostPrior::uniform(100_000, 100));
        let sizes = [4096u64, 65536, 16384, 262144, 8192, 131072];
        for i in 0..600 {
            let size = sizes[i % sizes.len()];
            m.observe_sample(Op::Read, size, 20_000 + 2 * size);
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
    fn equal_sizes_keep_the_slope() {
        let mut m = CostModel::new(CostPrior::uniform(10_000, 500));
        for _ in 0..1000 {
            m.observe_sample(Op::Write, 1 << 20, 600_000);
        }
        let (a, ps) = m.line(Op::Write);
        assert_eq!(ps, 500, "slope moved without a spread of sizes");
        assert!(
            m.estimate(Op::Write, 1 << 20).abs_diff(600_000) < 5_000,
            "a = {a}"
        );
    }

    #[test]
    fn outliers_are_clamped() {
        let mut m = CostModel::new(CostPrior::uniform(10_000, 0));
        for _ in 0..100 {
            m.observe_sample(Op::Write, 4096, 10_000);
        }
        // One request stalls for a second.
        m.observe_sample(Op::Write, 4096, 1_000_000_000);
        let est = m.estimate(Op::Write, 4096);
        assert!(est < 20_000, "one outlier moved the estimate to {est}");
    }

    #[test]
    fn follows_a_slower_device() {
        let mut m = CostModel::new(CostPrior::uniform(10_000, 0));
        for _ in 0..2000 {
            m.observe_sample(Op::Read, 4096, 100_000);
        }
        let est = m.estimate(Op::Read, 4096);
        assert!(est.abs_diff(100_000) < 2_000, "estimate {est}");
    }

    /// Drives the virtual clock like the scheduler does: a device with
    /// `servers` parallel servers, always full, serving `pattern` in turn.
    fn run_device(m: &mut CostModel, servers: usize, pattern: &[(Op, u64, u64)], n: usize) {
        // (finish time, op, bytes, stamp)
        let mut running: alloc::vec::Vec<(u64, Op, u64, u128)> = alloc::vec::Vec::new();
        let mut now = 0u64;
        let mut next = 0usize;
        for _ in 0..n {
            while running.len() < servers {
                let (op, bytes, service) = pattern[next % pattern.len()];
                next += 1;
                m.tick(now, running.len());
                running.push((now + service, op, bytes, m.stamp()));
            }
            running.sort_by_key(|r| r.0);
            let (t, op, bytes, stamp) = running.remove(0);
            now = t;
            m.tick(now, running.len() + 1);
            m.complete(op, bytes, stamp);
        }
    }

    #[test]
    fn concurrent_device_costs_amortized_time() {
        // Four servers, each 400 µs per request: 100 µs of the device each.
        let mut m = CostModel::new(CostPrior::uniform(400_000, 0));
        run_device(&mut m, 4, &[(Op::Read, 4096, 400_000)], 2000);
        let est = m.estimate(Op::Read, 4096);
        assert!(est.abs_diff(100_000) < 3_000, "estimate {est}");
    }

    #[test]
    fn mixed_sizes_share_time_by_residence() {
        // Four servers; 1 MiB writes of 2.2 ms beside 4 KiB reads of 108 µs.
        // Reads and writes alternate; the truth is a quarter of each
        // service time.
        let mut m = CostModel::new(CostPrior::uniform(25_000, 500));
        let pattern = [(Op::Write, 1 << 20, 2_197_000), (Op::Read, 4096, 108_000)];
        run_device(&mut m, 4, &pattern, 20_000);
        let w = m.estimate(Op::Write, 1 << 20);
        let r = m.estimate(Op::Read, 4096);
        assert!(w.abs_diff(549_000) < 30_000, "write estimate {w}");
        assert!(r.abs_diff(27_000) < 5_000, "read estimate {r}");
    }

    #[test]
    fn the_drain_line_is_fitted_from_completions() {
        let mut m = CostModel::new(CostPrior::default());
        // Before any sample the costs are taken as drain time.
        assert_eq!(m.drain_line(), (0, 1000));
        assert_eq!(m.drain_time(5_000_000), 5_000_000);
        assert_eq!(m.work_within(5_000_000), 5_000_000);
        // A device that takes 2 ms plus three times the work ahead.
        for i in 0..600u64 {
            let x = 1_000_000 + (i % 7) * 1_000_000;
            m.observe_drain(x, 2_000_000 + 3 * x);
        }
        let (a, b) = m.drain_line();
        assert!(a.abs_diff(2_000_000) < 100_000, "alpha {a}");
        assert!(b.abs_diff(3000) < 30, "beta {b}");
        assert_eq!(m.drain_samples(), 600);
        // Within 20 ms: (20 - 2) / 3 = 6 ms of work.
        let w = m.work_within(20_000_000);
        assert!(w.abs_diff(6_000_000) < 200_000, "work within 20 ms: {w}");
        assert!(m.drain_time(w).abs_diff(20_000_000) < 300_000);
        // Below the floor nothing drains in time.
        assert_eq!(m.work_within(1_000_000), 0);
        // The cost lines are untouched.
        assert_eq!(
            m.line(Op::Read),
            CostModel::new(CostPrior::default()).line(Op::Read)
        );
    }

    #[test]
    fn the_drain_line_never_drains_faster_than_the_costs() {
        // A device that completes in half the estimated work ahead.
        let mut m = CostModel::new(CostPrior::default());
        for i in 0..600u64 {
            let x = 1_000_000 + (i % 5) * 2_000_000;
            m.observe_drain(x, x / 2);
        }
        assert_eq!(m.drain_line(), (0, 1000));
        assert_eq!(m.work_within(7_000_000), 7_000_000);
        // One stalled request does not throw it off.
        let mut m = CostModel::new(CostPrior::default());
        for i in 0..600u64 {
            let x = 1_000_000 + (i % 5) * 2_000_000;
            m.observe_drain(x, x);
        }
        m.observe_drain(1_000_000, 1_000_000_000);
        let (a, b) = m.drain_line();
        assert!(
            a < 500_000 && b < 1100,
            "one stall moved the line to {a} ns + {b}/1000"
        );
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let mut m = CostModel::new(CostPrior {
            base_ns: [u64::MAX; 4],
            ps_per_byte: [u64::MAX; 4],
        });
        assert!(m.estimate(Op::Read, u64::MAX) >= 1);
        for i in 0..100u64 {
            m.observe_sample(Op::Read, u64::MAX - i, u64::MAX);
            m.observe_sample(Op::Read, i, 0);
            m.tick(u64::MAX - 100 + i, 1);
            m.tick(i, usize::MAX);
            m.complete(Op::Discard, 0, 0);
            m.observe_drain(u64::MAX - i, u64::MAX);
            m.observe_drain(i, 0);
        }
        assert!(m.estimate(Op::Read, u64::MAX) >= 1);
        let _ = (
            m.drain_time(u64::MAX),
            m.work_within(u64::MAX),
            m.work_within(0),
        );
        let _ = m.capacity_per_sec();
    }
}
