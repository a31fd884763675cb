//! A table of entries by tag: open addressing with linear probing and
//! backward-shift deletion (no tombstones), a power-of-two capacity kept
//! at most half full.
//!
//! It grows (doubles) only when the number of entries held reaches a new
//! high, so once a frontend has run at its usual depth, submitting,
//! dispatching and completing a request allocates nothing: a lookup, an
//! insertion and a removal each hash the tag once and probe a few
//! neighbouring slots. Tags are the caller's (blkfront numbers them in
//! order); Fibonacci hashing spreads sequential tags over the table. The
//! scheduler keeps its requests in one, and blkfront its I/Os.

use alloc::vec::Vec;

/// Smallest capacity (slots).
const MIN_CAPACITY: usize = 64;

/// Entries of type `V` by `u64` tag (see the module's docs). Iteration
/// visits them in no particular order.
#[derive(Clone, Debug)]
pub struct TagTable<V> {
    slots: Vec<Option<(u64, V)>>,
    len: usize,
    /// `64 - log2(capacity)`: the hash is the top bits of the product.
    shift: u32,
}

impl<V> Default for TagTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> TagTable<V> {
    /// An empty table (it allocates at the first insertion).
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
            shift: 64,
        }
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn home(&self, tag: u64) -> usize {
        // Fibonacci hashing: the top bits of tag * 2^64/phi.
        (tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// The slot holding `tag`, if any.
    fn find(&self, tag: u64) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let mut i = self.home(tag);
        loop {
            match self.slots.get(i)? {
                None => return None,
                Some((t, _)) if *t == tag => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// Whether `tag` is in the table.
    pub fn contains(&self, tag: u64) -> bool {
        self.find(tag).is_some()
    }

    /// The entry of `tag`.
    pub fn get(&self, tag: u64) -> Option<&V> {
        let i = self.find(tag)?;
        self.slots.get(i)?.as_ref().map(|(_, v)| v)
    }

    /// The entry of `tag`, to change in place.
    pub fn get_mut(&mut self, tag: u64) -> Option<&mut V> {
        let i = self.find(tag)?;
        self.slots.get_mut(i)?.as_mut().map(|(_, v)| v)
    }

    /// Every entry with its tag, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.slots.iter().flatten().map(|(t, v)| (*t, v))
    }

    /// Every tag, in increasing order.
    pub fn sorted_tags(&self) -> Vec<u64> {
        let mut tags: Vec<u64> = self.iter().map(|(t, _)| t).collect();
        tags.sort_unstable();
        tags
    }

    /// Inserts a tag known to be absent (the caller checked with
    /// [`TagTable::contains`]): no search for it first.
    pub fn insert_new(&mut self, tag: u64, value: V) {
        debug_assert!(!self.contains(tag));
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        self.place(tag, value);
        self.len += 1;
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, tag: u64, value: V) -> Option<V> {
        if let Some(i) = self.find(tag) {
            return self
                .slots
                .get_mut(i)
                .and_then(|s| s.replace((tag, value)))
                .map(|(_, old)| old);
        }
        self.insert_new(tag, value);
        None
    }

    fn place(&mut self, tag: u64, value: V) {
        let mask = self.mask();
        let mut i = self.home(tag);
        // The table is at most half full: a free slot is always found.
        while let Some(Some(_)) = self.slots.get(i) {
            i = (i + 1) & mask;
        }
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some((tag, value));
        }
    }

    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(MIN_CAPACITY);
        let old = core::mem::replace(&mut self.slots, (0..cap).map(|_| None).collect());
        self.shift = 64 - cap.trailing_zeros();
        for (t, v) in old.into_iter().flatten() {
            self.place(t, v);
        }
    }

    /// Removes `tag`, returning its value.
    pub fn remove(&mut self, tag: u64) -> Option<V> {
        let mut hole = self.find(tag)?;
        let (_, value) = self.slots.get_mut(hole)?.take()?;
        self.len -= 1;
        // Backward shift: pull later members of the probe run into the
        // hole when their home is not between the hole and them.
        let mask = self.mask();
        let mut i = (hole + 1) & mask;
        while let Some(Some((t, _))) = self.slots.get(i) {
            let home = self.home(*t);
            // Distance from home to i, and from home to the hole.
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                let moved = self.slots.get_mut(i).and_then(Option::take);
                if let Some(s) = self.slots.get_mut(hole) {
                    *s = moved;
                }
                hole = i;
            }
            i = (i + 1) & mask;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    #[test]
    fn behaves_as_a_map() {
        let mut t = TagTable::new();
        let mut m = BTreeMap::new();
        // A deterministic mix of inserts and removes over clustered and
        // spread tags.
        let mut x = 0x1234_5678_9abc_def0u64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let tag = if x % 3 == 0 { x % 97 } else { x % 5000 } * 64 + (step % 2);
            if x % 5 < 3 {
                t.insert(tag, step);
                m.insert(tag, step);
            } else {
                assert_eq!(t.remove(tag), m.remove(&tag), "step {step}");
            }
            assert_eq!(t.len, m.len());
            if step % 1000 == 0 {
                for (k, v) in &m {
                    assert_eq!(t.get(*k), Some(v));
                }
            }
        }
        for (k, v) in &m {
            assert_eq!(t.get(*k), Some(v));
            assert!(t.contains(*k));
        }
        assert!(!t.contains(u64::MAX));
        assert_eq!(t.remove(u64::MAX), None);
        let mut all: Vec<(u64, u64)> = t.iter().map(|(k, v)| (k, *v)).collect();
        all.sort_unstable();
        assert_eq!(all, m.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
        assert_eq!(t.sorted_tags(), m.keys().copied().collect::<Vec<_>>());
        assert_eq!(t.len(), m.len());
    }

    #[test]
    fn insert_replaces_and_returns_the_old_value() {
        let mut t = TagTable::new();
        assert!(t.is_empty());
        assert_eq!(t.insert(7, "a"), None);
        assert_eq!(t.insert(7, "b"), Some("a"));
        assert_eq!(t.get(7), Some(&"b"));
        if let Some(v) = t.get_mut(7) {
            *v = "c";
        }
        assert_eq!(t.remove(7), Some("c"));
        assert!(t.is_empty());
    }

    #[test]
    fn does_not_grow_at_a_steady_depth() {
        let mut t = TagTable::new();
        for tag in 0..32u64 {
            t.insert(tag, ());
        }
        let cap = t.slots.len();
        for tag in 32..100_000u64 {
            assert_eq!(t.remove(tag - 32), Some(()));
            t.insert(tag, ());
        }
        assert_eq!(t.slots.len(), cap);
        assert_eq!(t.len, 32);
    }
}
