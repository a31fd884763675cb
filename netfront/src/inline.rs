//! A small fixed-capacity list kept inline (no allocation per packet).

use core::fmt;

/// Up to `N` values inline, in insertion order.
pub struct InlineVec<T, const N: usize> {
    items: [Option<T>; N],
    len: usize,
}

impl<T, const N: usize> InlineVec<T, N> {
    /// An empty list.
    pub fn new() -> Self {
        Self {
            items: core::array::from_fn(|_| None),
            len: 0,
        }
    }

    /// Appends `v`, or gives it back when the list is full.
    pub fn push(&mut self, v: T) -> Result<(), T> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(v);
                self.len += 1;
                Ok(())
            }
            None => Err(v),
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`th value.
    pub fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i).and_then(Option::as_ref)
    }

    /// The `i`th value, mutably.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i).and_then(Option::as_mut)
    }

    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.items.iter().take(self.len).filter_map(Option::as_ref)
    }

    /// The values in order, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.items
            .iter_mut()
            .take(self.len)
            .filter_map(Option::as_mut)
    }

    /// Takes every value out, in order, leaving the list empty.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        let len = core::mem::take(&mut self.len);
        self.items.iter_mut().take(len).filter_map(Option::take)
    }
}

impl<T, const N: usize> Default for InlineVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone, const N: usize> Clone for InlineVec<T, N> {
    fn clone(&self) -> Self {
        Self {
            items: self.items.clone(),
            len: self.len,
        }
    }
}

impl<T: fmt::Debug, const N: usize> fmt::Debug for InlineVec<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: PartialEq, const N: usize> PartialEq for InlineVec<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl<T: Eq, const N: usize> Eq for InlineVec<T, N> {}

impl<'a, T, const N: usize> IntoIterator for &'a InlineVec<T, N> {
    type Item = &'a T;
    type IntoIter = core::iter::FilterMap<
        core::iter::Take<core::slice::Iter<'a, Option<T>>>,
        fn(&'a Option<T>) -> Option<&'a T>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.items
            .iter()
            .take(self.len)
            .filter_map(Option::as_ref as fn(&'a Option<T>) -> Option<&'a T>)
    }
}
