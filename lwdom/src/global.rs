//! Cells for the runtime's globals, sound without relying on how the
//! runtime is scheduled: a trap handler that interrupts the runtime and
//! touches the same global (or a second thread, on the host) cannot make
//! two live `&mut` to one value.
//!
//! - [`OnceGlobal`]: set once, then only read; hands out `&T`.
//! - [`ExclusiveGlobal`]: mutable, lent out as `&mut T` to one closure at a
//!   time; a second borrow while the first is live (re-entry) is refused
//!   with [`BorrowError::Busy`], never granted.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

/// A value set once (at boot or on first use) and only read afterwards.
pub struct OnceGlobal<T> {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written once, by the one caller that moved `state`
// from EMPTY to WRITING, before `state` becomes READY (release); readers
// see READY (acquire) before they form a `&T`, and no `&mut T` is ever
// formed after that. Sharing `&T` across threads needs `T: Sync`; moving
// the value in from another thread needs `T: Send`.
unsafe impl<T: Send + Sync> Sync for OnceGlobal<T> {}

impl<T> OnceGlobal<T> {
    /// An empty cell.
    pub const fn new() -> Self {
        OnceGlobal { state: AtomicU8::new(EMPTY), value: UnsafeCell::new(MaybeUninit::uninit()) }
    }

    /// Stores `v` if the cell is empty; otherwise gives `v` back (the cell
    /// keeps its value).
    pub fn set(&self, v: T) -> Result<(), T> {
        if self.state.compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Acquire).is_err() {
            return Err(v);
        }
        // SAFETY: only this caller moved the state to WRITING, and no `&T`
        // exists (they are formed only in READY).
        unsafe { (*self.value.get()).write(v) };
        self.state.store(READY, Ordering::Release);
        Ok(())
    }

    /// The value, once set.
    pub fn get(&self) -> Option<&T> {
        if self.state.load(Ordering::Acquire) != READY {
            return None;
        }
        // SAFETY: READY: the value was written and is never written again.
        Some(unsafe { (*self.value.get()).assume_init_ref() })
    }
}

impl<T> Default for OnceGlobal<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for OnceGlobal<T> {
    fn drop(&mut self) {
        if *self.state.get_mut() == READY {
            // SAFETY: READY: the value was written and is dropped only here.
            unsafe { self.value.get_mut().assume_init_drop() };
        }
    }
}

/// Why [`ExclusiveGlobal::with`] did not lend the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BorrowError {
    /// Nothing was set yet.
    Unset,
    /// The value is lent out already: the caller runs inside another
    /// borrow of it (re-entry).
    Busy,
}

/// A mutable value lent out to one closure at a time.
pub struct ExclusiveGlobal<T> {
    busy: AtomicBool,
    value: UnsafeCell<Option<T>>,
}

// SAFETY: the value is reached only while holding the `busy` flag (taken
// with an acquire compare-exchange, released with a release store), so at
// most one `&mut` to it exists at a time, on any thread; it moves between
// threads that way, hence `T: Send`.
unsafe impl<T: Send> Sync for ExclusiveGlobal<T> {}

/// Releases the flag, also when the closure unwinds.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<T> ExclusiveGlobal<T> {
    /// An empty cell.
    pub const fn new() -> Self {
        ExclusiveGlobal { busy: AtomicBool::new(false), value: UnsafeCell::new(None) }
    }

    fn lock(&self) -> Result<Release<'_>, BorrowError> {
        self.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).map_err(|_| BorrowError::Busy)?;
        Ok(Release(&self.busy))
    }

    /// Stores `v` (dropping any previous value); refused while the value is
    /// lent out.
    pub fn set(&self, v: T) -> Result<(), (T, BorrowError)> {
        let _held = match self.lock() {
            Ok(h) => h,
            Err(e) => return Err((v, e)),
        };
        // SAFETY: the flag is held: no other reference to the value exists.
        unsafe { *self.value.get() = Some(v) };
        Ok(())
    }

    /// Runs `f` with the value. Refused, without running `f`, when nothing
    /// was set or when the value is lent out already (a re-entrant call).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, BorrowError> {
        let _held = self.lock()?;
        // SAFETY: the flag is held until `_held` drops, after `f` returned or
        // unwound: this is the only reference to the value meanwhile.
        let v = unsafe { (*self.value.get()).as_mut() }.ok_or(BorrowError::Unset)?;
        Ok(f(v))
    }
}

impl<T> Default for ExclusiveGlobal<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_is_set_once_then_read() {
        let g: OnceGlobal<String> = OnceGlobal::new();
        assert!(g.get().is_none());
        assert_eq!(g.set("a".into()), Ok(()));
        assert_eq!(g.set("b".into()), Err("b".to_string()));
        let r1 = g.get().unwrap();
        let r2 = g.get().unwrap();
        assert_eq!((r1.as_str(), r2.as_str()), ("a", "a"));
    }

    #[test]
    fn exclusive_refuses_reentry_and_is_free_again_afterwards() {
        let g: ExclusiveGlobal<u32> = ExclusiveGlobal::new();
        assert_eq!(g.with(|v| *v), Err(BorrowError::Unset));
        g.set(1).unwrap();
        let inner = g.with(|v| {
            *v += 1;
            assert!(matches!(g.set(7), Err((7, BorrowError::Busy))));
            g.with(|w| *w)
        });
        assert_eq!(inner, Ok(Err(BorrowError::Busy)));
        assert_eq!(g.with(|v| *v), Ok(2));
    }

    #[test]
    fn exclusive_is_released_when_the_closure_unwinds() {
        let g: ExclusiveGlobal<u32> = ExclusiveGlobal::new();
        g.set(5).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.with(|_| panic!("inside"))));
        assert!(r.is_err());
        assert_eq!(g.with(|v| *v), Ok(5));
    }
}
