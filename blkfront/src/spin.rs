//! How long a wait spins before it sleeps: [`SpinGovernor`].
//!
//! Spinning wins when the spinner has a core to itself: a response that
//! comes while it spins costs no notification and no wake-up. On a machine
//! whose cores are shared with other busy work it loses badly: a thread
//! that spins uses up its share of the CPU, the scheduler then runs the
//! others first, and the spinner (and every request waiting on it) waits
//! for whole time slices, where a thread that slept would have been run at
//! once on its wake-up.
//!
//! The governor stops spinning for a back-off period (10 ms, doubling
//! each time, up to 1 s; then one spin probes again) when spinning does
//! not pay:
//! - the thread lost its core while spinning: looks at the ring follow
//!   each other within a microsecond or so, so a gap of [`PREEMPTED_NS`]
//!   or more between two looks, on the spinner's own clock, means it was
//!   preempted;
//! - [`MISSES`] spins in a row ran their whole budget without anything
//!   coming: the peer answers more slowly than the budget (a long I/O, or
//!   a peer that waits for its core), and each such spin only burns the
//!   CPU share the thread will want when it is woken.
//!
//! A spin that catches what it waited for starts the back-off again from
//! its shortest.
//!
//! A steady governor ([`SpinGovernor::steady`]) never backs off: every
//! wait spins its whole budget. It suits a thread with a core of its own,
//! where the back-offs only turn fast exchanges into wake-ups.

/// A gap between two looks of a spinning wait this long (50 us) means the
/// thread lost its core.
pub const PREEMPTED_NS: u64 = 50_000;

/// The first back-off after a preemption.
pub const MIN_BACKOFF_NS: u64 = 10_000_000;

/// The longest back-off.
pub const MAX_BACKOFF_NS: u64 = 1_000_000_000;

/// Spins in a row that catch nothing before a back-off.
pub const MISSES: u32 = 2;

/// The spin budget of each wait, shrunk to nothing while the thread is
/// seen losing its core (see the module docs). Times are the caller's
/// monotonic clock in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpinGovernor {
    max_ns: u64,
    /// No spinning before this time.
    quiet_until: u64,
    /// The next back-off period.
    backoff_ns: u64,
    /// Preemptions seen while spinning.
    preemptions: u64,
    /// Spins in a row that caught nothing.
    misses: u32,
    /// Never backs off.
    steady: bool,
}

impl SpinGovernor {
    /// A governor whose waits spin for up to `max_ns`.
    pub const fn new(max_ns: u64) -> Self {
        SpinGovernor {
            max_ns,
            quiet_until: 0,
            backoff_ns: MIN_BACKOFF_NS,
            preemptions: 0,
            misses: 0,
            steady: false,
        }
    }

    /// A governor whose waits always spin for up to `max_ns`: preemptions
    /// are counted but neither they nor misses start a back-off.
    pub const fn steady(max_ns: u64) -> Self {
        let mut g = SpinGovernor::new(max_ns);
        g.steady = true;
        g
    }

    /// How long a wait starting at `now` may spin: the maximum, or zero
    /// during a back-off.
    pub fn budget(&self, now: u64) -> u64 {
        if now < self.quiet_until {
            0
        } else {
            self.max_ns
        }
    }

    /// The spinning wait looked at `prev` and again at `now`. Returns
    /// `true` when the gap shows the thread lost its core: the wait should
    /// stop spinning, and the next ones do not spin for a while.
    pub fn preempted(&mut self, prev: u64, now: u64) -> bool {
        if now.saturating_sub(prev) < PREEMPTED_NS {
            return false;
        }
        self.preemptions += 1;
        if self.steady {
            return false;
        }
        self.back_off(now);
        true
    }

    /// A spin caught what it waited for: the back-off starts again from
    /// its shortest.
    pub fn caught(&mut self) {
        self.misses = 0;
        self.backoff_ns = MIN_BACKOFF_NS;
    }

    /// A spin ran its whole budget, ending at `now`, and caught nothing;
    /// [`MISSES`] in a row start a back-off.
    pub fn missed(&mut self, now: u64) {
        if self.steady {
            return;
        }
        self.misses += 1;
        if self.misses >= MISSES {
            self.back_off(now);
        }
    }

    fn back_off(&mut self, now: u64) {
        self.misses = 0;
        self.quiet_until = now.saturating_add(self.backoff_ns);
        self.backoff_ns = self.backoff_ns.saturating_mul(2).min(MAX_BACKOFF_NS);
    }

    /// The longest spin.
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// Preemptions seen while spinning.
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }
}
