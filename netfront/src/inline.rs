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

/// Up to `N` values in insertion order: the first inline, the rest in one
/// heap block made when a second is pushed.
///
/// For the page lists of frames: nearly every frame fits one page, and a
/// frame is moved several times on its way (lent, sent, queued, completed,
/// returned through `Result<Option<_>>`), so an [`InlineVec`] of 18 or 19
/// entries (hundreds of bytes) costs a large copy at every move, even for a
/// one-page frame. This list is three words for such a frame; a frame of
/// several pages pays one small allocation (its page list), against the
/// kilobytes of data it carries.
#[derive(Default)]
pub(crate) enum PageList<T, const N: usize> {
    /// No value.
    #[default]
    Empty,
    /// One value, inline.
    One(T),
    /// Two or more.
    Many(alloc::boxed::Box<InlineVec<T, N>>),
}

impl<T, const N: usize> PageList<T, N> {
    /// An empty list.
    pub const fn new() -> Self {
        PageList::Empty
    }

    /// Appends `v`, or gives it back when the list holds `N` values.
    pub fn push(&mut self, v: T) -> Result<(), T> {
        match self {
            PageList::Many(list) => list.push(v),
            PageList::One(_) if N < 2 => Err(v),
            PageList::One(_) => {
                let PageList::One(first) = core::mem::take(self) else {
                    return Err(v);
                };
                let mut list = alloc::boxed::Box::new(InlineVec::new());
                let _ = list.push(first);
                let _ = list.push(v);
                *self = PageList::Many(list);
                Ok(())
            }
            PageList::Empty if N == 0 => Err(v),
            PageList::Empty => {
                *self = PageList::One(v);
                Ok(())
            }
        }
    }

    /// Values in the list.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            PageList::Empty => 0,
            PageList::One(_) => 1,
            PageList::Many(list) => list.len(),
        }
    }

    /// The value at `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        match self {
            PageList::Empty => None,
            PageList::One(v) => (i == 0).then_some(v),
            PageList::Many(list) => list.get(i),
        }
    }

    /// The value at `i`, mutably.
    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        match self {
            PageList::Empty => None,
            PageList::One(v) => (i == 0).then_some(v),
            PageList::Many(list) => list.get_mut(i),
        }
    }

    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        (0..self.len()).filter_map(move |i| self.get(i))
    }

    /// The values in order, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        let (one, many) = match self {
            PageList::Empty => (None, None),
            PageList::One(v) => (Some(v), None),
            PageList::Many(list) => (None, Some(list.iter_mut())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Takes every value out, in order; the list is left empty.
    pub fn drain(&mut self) -> impl Iterator<Item = T> {
        let (one, many) = match core::mem::take(self) {
            PageList::Empty => (None, None),
            PageList::One(v) => (Some(v), None),
            PageList::Many(list) => (None, Some(list)),
        };
        one.into_iter().chain(many.into_iter().flat_map(|list| {
            let InlineVec { items, len } = *list;
            items.into_iter().take(len).flatten()
        }))
    }
}

impl<T: fmt::Debug, const N: usize> fmt::Debug for PageList<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod page_list_tests {
    use super::PageList;
    use alloc::vec::Vec;

    #[test]
    fn holds_up_to_n_in_order() {
        let mut l: PageList<u32, 3> = PageList::new();
        assert_eq!(l.len(), 0);
        assert_eq!(l.get(0), None);
        l.push(1).unwrap();
        assert!(matches!(l, PageList::One(1)));
        assert_eq!((l.len(), l.get(0), l.get(1)), (1, Some(&1), None));
        l.push(2).unwrap();
        l.push(3).unwrap();
        assert_eq!(l.push(4), Err(4));
        assert_eq!(l.iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
        for v in l.iter_mut() {
            *v *= 10;
        }
        *l.get_mut(2).unwrap() += 1;
        assert_eq!(l.drain().collect::<Vec<_>>(), [10, 20, 31]);
        assert_eq!(l.len(), 0);
        assert_eq!(l.drain().count(), 0);
    }

    #[test]
    fn capacity_one_and_zero() {
        let mut one: PageList<u8, 1> = PageList::new();
        one.push(7).unwrap();
        assert_eq!(one.push(8), Err(8));
        assert_eq!(one.drain().collect::<Vec<_>>(), [7]);
        let mut zero: PageList<u8, 0> = PageList::new();
        assert_eq!(zero.push(1), Err(1));
    }

    #[test]
    fn one_value_is_small() {
        // What the frames' page lists are for: a one-page frame moves a few
        // words, not an inline array of 18 entries.
        assert!(core::mem::size_of::<PageList<[u64; 2], 18>>() <= 24);
    }
}
