//! The spin governor: full budget on a quiet core, none during a back-off
//! after a preemption or spins that catch nothing, back-offs doubling up
//! to the maximum and reset by a spin that catches what it waited for.

use crate::spin::{SpinGovernor, MAX_BACKOFF_NS, MIN_BACKOFF_NS, MISSES, PREEMPTED_NS};

#[test]
fn a_quiet_core_spins_the_whole_budget() {
    let mut g = SpinGovernor::new(200_000);
    assert_eq!(g.budget(0), 200_000);
    // Looks a microsecond apart: no preemption.
    let mut t = 1_000;
    for _ in 0..1000 {
        assert!(!g.preempted(t, t + 1_000));
        t += 1_000;
    }
    assert!(!g.preempted(t, t + PREEMPTED_NS - 1));
    assert_eq!(g.budget(t), 200_000);
    assert_eq!(g.preemptions(), 0);
}

#[test]
fn a_preemption_stops_spinning_for_a_back_off_that_doubles() {
    let mut g = SpinGovernor::new(100_000);
    let t = 5_000_000;
    assert!(g.preempted(t, t + PREEMPTED_NS));
    let now = t + PREEMPTED_NS;
    assert_eq!(g.budget(now), 0);
    assert_eq!(g.budget(now + MIN_BACKOFF_NS - 1), 0);
    assert_eq!(g.budget(now + MIN_BACKOFF_NS), 100_000);
    // The probe after the back-off is preempted again: twice as long.
    let now2 = now + MIN_BACKOFF_NS + 2 * PREEMPTED_NS;
    assert!(g.preempted(now2 - PREEMPTED_NS, now2));
    assert_eq!(g.budget(now2 + 2 * MIN_BACKOFF_NS - 1), 0);
    assert_eq!(g.budget(now2 + 2 * MIN_BACKOFF_NS), 100_000);
    assert_eq!(g.preemptions(), 2);
    // Doubling stops at the maximum.
    let mut now = now2;
    for _ in 0..40 {
        now = now.saturating_add(MAX_BACKOFF_NS + PREEMPTED_NS);
        assert!(g.preempted(now - PREEMPTED_NS, now));
    }
    assert_eq!(g.budget(now + MAX_BACKOFF_NS - 1), 0);
    assert_eq!(g.budget(now + MAX_BACKOFF_NS), 100_000);
}

#[test]
fn a_spin_that_catches_resets_the_back_off() {
    let mut g = SpinGovernor::new(100_000);
    let mut now = 0;
    for _ in 0..5 {
        now += MAX_BACKOFF_NS;
        assert!(g.preempted(now - PREEMPTED_NS, now));
    }
    g.caught();
    now += MAX_BACKOFF_NS;
    assert!(g.preempted(now - PREEMPTED_NS, now));
    assert_eq!(g.budget(now + MIN_BACKOFF_NS), 100_000);
}

#[test]
fn a_governor_of_zero_never_spins() {
    let g = SpinGovernor::new(0);
    assert_eq!(g.budget(0), 0);
    assert_eq!(g.budget(u64::MAX), 0);
    assert_eq!(g.max_ns(), 0);
}

#[test]
fn spins_that_catch_nothing_start_a_back_off() {
    let mut g = SpinGovernor::new(100_000);
    let mut now = 1_000_000;
    // Misses broken by a catch: no back-off.
    for _ in 0..10 {
        for _ in 0..MISSES - 1 {
            g.missed(now);
            assert_eq!(g.budget(now), 100_000);
        }
        g.caught();
        now += 1_000_000;
    }
    // MISSES in a row: a back-off, doubling as the misses go on.
    for _ in 0..MISSES {
        g.missed(now);
    }
    assert_eq!(g.budget(now + MIN_BACKOFF_NS - 1), 0);
    now += MIN_BACKOFF_NS;
    assert_eq!(g.budget(now), 100_000);
    for _ in 0..MISSES {
        g.missed(now);
    }
    assert_eq!(g.budget(now + 2 * MIN_BACKOFF_NS - 1), 0);
    assert_eq!(g.budget(now + 2 * MIN_BACKOFF_NS), 100_000);
    assert_eq!(g.preemptions(), 0);
}

#[test]
fn a_steady_governor_never_backs_off() {
    let mut g = SpinGovernor::steady(150_000);
    let mut now = 1_000_000;
    for _ in 0..10 {
        // A preemption is counted but does not stop the spin.
        assert!(!g.preempted(now, now + 10 * PREEMPTED_NS));
        now += 10 * PREEMPTED_NS;
        for _ in 0..2 * MISSES {
            g.missed(now);
        }
        assert_eq!(g.budget(now), 150_000);
        assert_eq!(g.budget(now + 1), 150_000);
    }
    assert_eq!(g.preemptions(), 10);
    assert_eq!(g.max_ns(), 150_000);
    // The same history stops an ordinary governor's spinning.
    let mut a = SpinGovernor::new(150_000);
    assert!(a.preempted(1_000_000, 1_000_000 + PREEMPTED_NS));
    assert_eq!(a.budget(1_000_000 + PREEMPTED_NS), 0);
}
