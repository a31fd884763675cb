//! Packet sequence numbers: 24-bit counters that wrap.
//!
//! The InfiniBand transport numbers every request packet of a queue pair
//! with a 24-bit PSN (IBA vol. 1, 9.7.1). Comparisons are modulo 2^24: a PSN
//! is "ahead" of another when the forward distance is less than half the
//! space (2^23), and "behind" otherwise, which is how the responder tells a
//! duplicate (behind) from an out-of-sequence packet (ahead).

use core::fmt;

/// The number of distinct PSNs.
pub const PSN_SPACE: u32 = 1 << 24;
/// The mask of the 24 PSN bits.
pub const PSN_MASK: u32 = PSN_SPACE - 1;

/// A 24-bit packet sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Psn(u32);

impl Psn {
    /// Zero.
    pub const ZERO: Psn = Psn(0);

    /// A PSN from a value that must fit in 24 bits; `None` otherwise.
    pub const fn new(value: u32) -> Option<Psn> {
        if value <= PSN_MASK {
            Some(Psn(value))
        } else {
            None
        }
    }

    /// A PSN from the low 24 bits of `value` (the upper bits are dropped).
    pub const fn from_masked(value: u32) -> Psn {
        Psn(value & PSN_MASK)
    }

    /// The 24-bit value.
    pub const fn value(self) -> u32 {
        self.0
    }

    /// `self + n`, modulo 2^24.
    pub const fn add(self, n: u32) -> Psn {
        Psn(self.0.wrapping_add(n) & PSN_MASK)
    }

    /// `self - n`, modulo 2^24.
    pub const fn sub(self, n: u32) -> Psn {
        Psn(self.0.wrapping_sub(n) & PSN_MASK)
    }

    /// The next PSN.
    pub const fn next(self) -> Psn {
        self.add(1)
    }

    /// The forward distance from `base` to `self`, modulo 2^24, in
    /// `0..2^24`.
    pub const fn forward_from(self, base: Psn) -> u32 {
        self.0.wrapping_sub(base.0) & PSN_MASK
    }

    /// The signed distance from `base` to `self` in `-2^23..2^23`:
    /// positive when `self` is ahead of `base`, negative when behind.
    pub const fn diff(self, base: Psn) -> i32 {
        let d = self.forward_from(base);
        if d >= PSN_SPACE / 2 {
            // d < 2^24, so d - 2^24 fits in i32 and is in -2^23..0.
            d as i32 - PSN_SPACE as i32
        } else {
            d as i32
        }
    }

    /// Whether `self` lies in the window of `len` PSNs starting at `start`
    /// (`start ..= start + len - 1`, modulo 2^24).
    pub const fn in_window(self, start: Psn, len: u32) -> bool {
        self.forward_from(start) < len
    }
}

impl fmt::Debug for Psn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psn({:#08x})", self.0)
    }
}

impl fmt::Display for Psn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_values_above_24_bits() {
        assert_eq!(Psn::new(PSN_MASK).map(Psn::value), Some(PSN_MASK));
        assert_eq!(Psn::new(PSN_SPACE), None);
        assert_eq!(Psn::from_masked(0x0123_4567).value(), 0x23_4567);
    }

    #[test]
    fn arithmetic_wraps_at_24_bits() {
        let top = Psn::from_masked(PSN_MASK);
        assert_eq!(top.next(), Psn::ZERO);
        assert_eq!(Psn::ZERO.sub(1), top);
        assert_eq!(top.add(5).value(), 4);
        assert_eq!(Psn::ZERO.diff(top), 1);
        assert_eq!(top.diff(Psn::ZERO), -1);
        assert_eq!(Psn::from_masked(3).forward_from(top), 4);
    }

    #[test]
    fn diff_splits_the_space_in_half() {
        let base = Psn::from_masked(0xff_fff0);
        assert_eq!(base.add(0x7f_ffff).diff(base), 0x7f_ffff);
        assert_eq!(base.add(0x80_0000).diff(base), -0x80_0000);
        assert_eq!(base.sub(1).diff(base), -1);
    }

    #[test]
    fn windows_cross_the_wrap() {
        let start = Psn::from_masked(PSN_MASK - 1);
        assert!(start.in_window(start, 1));
        assert!(!start.next().in_window(start, 1));
        assert!(Psn::from_masked(1).in_window(start, 4));
        assert!(!Psn::from_masked(2).in_window(start, 4));
        assert!(!start.in_window(start, 0));
    }

    /// Every pair of PSNs around the wrap: `a + diff(b, a) == b`, and the
    /// sign of the difference matches the forward distance.
    #[test]
    fn diff_and_add_agree_across_the_wrap() {
        let around = |k: u32| Psn::from_masked(PSN_SPACE - 64 + k);
        for i in 0..128 {
            for j in 0..128 {
                let (a, b) = (around(i), around(j));
                let d = b.diff(a);
                assert_eq!(a.add(d as u32), b, "{a:?} {b:?}");
                assert_eq!(d >= 0, b.forward_from(a) < PSN_SPACE / 2);
            }
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Adding and subtracting less than half the space is undone by
        /// `diff`, wherever the start lies (the wrap included).
        #[test]
        fn diff_inverts_add_and_sub(start in 0..PSN_SPACE, n in 0..PSN_SPACE / 2) {
            let a = Psn::from_masked(start);
            prop_assert_eq!(a.add(n).diff(a), n as i32);
            prop_assert_eq!(a.add(n).sub(n), a);
            if n > 0 {
                prop_assert_eq!(a.sub(n).diff(a), -(n as i32));
            }
            prop_assert!(a.add(n).in_window(a, n + 1));
            prop_assert!(!a.add(n + 1).in_window(a, n + 1));
        }

        /// `diff` is antisymmetric except at exactly half the space.
        #[test]
        fn diff_is_antisymmetric(x in 0..PSN_SPACE, y in 0..PSN_SPACE) {
            let (a, b) = (Psn::from_masked(x), Psn::from_masked(y));
            if b.forward_from(a) != PSN_SPACE / 2 {
                prop_assert_eq!(a.diff(b), -b.diff(a));
            }
        }
    }
}
