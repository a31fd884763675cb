//! Bulk copies into and out of memory shared with another domain.
//!
//! Granted pages, mapped foreign grants and buffer pool slices are written
//! by the peer at any time, so Rust code never holds a reference (`&[u8]`,
//! `&mut [u8]`) into them. Bytes move between such memory and ordinary Rust
//! buffers through these functions, at memory speed: one `memcpy` (or
//! `memset`) per call, as `vm-memory` does for guest memory, rather than a
//! loop of volatile byte accesses. The peer may change the bytes during the
//! copy, so what is read is a snapshot that may be torn: callers copy first
//! and validate the copy, never the shared bytes (DESIGN.md).
//!
//! Every function checks `offset + len` against the region's size with
//! checked arithmetic and refuses ranges outside it.

use core::fmt;
use core::ptr::NonNull;

/// A range outside a shared region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange {
    /// First byte asked for.
    pub offset: usize,
    /// Bytes asked for.
    pub len: usize,
    /// Size of the region.
    pub size: usize,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} byte(s) at offset {} do not fit a shared region of {} bytes",
            self.len, self.offset, self.size
        )
    }
}

impl core::error::Error for OutOfRange {}

/// The start of `[offset, offset + len)` inside a region of `size` bytes at
/// `base`.
fn range(base: NonNull<u8>, size: usize, offset: usize, len: usize) -> Result<*mut u8, OutOfRange> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(base.as_ptr().wrapping_add(offset)),
        _ => Err(OutOfRange { offset, len, size }),
    }
}

/// Copies `buf.len()` bytes at `offset` of the shared region into `buf`.
///
/// # Safety
/// `base` must be valid for reads of `size` bytes for the duration of the
/// call, and no Rust reference may point into the region (in particular not
/// `buf`).
pub unsafe fn read(
    base: NonNull<u8>,
    size: usize,
    offset: usize,
    buf: &mut [u8],
) -> Result<(), OutOfRange> {
    let src = range(base, size, offset, buf.len())?;
    // SAFETY: `src..src + buf.len()` lies inside the region (checked above),
    // readable per the caller's contract; `buf` is a distinct Rust buffer
    // (the region is never referenced by Rust references), so the two do
    // not overlap. Bytes written concurrently by the peer may be read torn,
    // which callers accept by validating only their copy.
    unsafe { core::ptr::copy_nonoverlapping(src.cast_const(), buf.as_mut_ptr(), buf.len()) };
    Ok(())
}

/// Copies `data` to `offset` of the shared region.
///
/// # Safety
/// `base` must be valid for writes of `size` bytes for the duration of the
/// call, and no Rust reference may point into the region (in particular not
/// `data`).
pub unsafe fn write(
    base: NonNull<u8>,
    size: usize,
    offset: usize,
    data: &[u8],
) -> Result<(), OutOfRange> {
    let dst = range(base, size, offset, data.len())?;
    // SAFETY: `dst..dst + data.len()` lies inside the region (checked
    // above), writable per the caller's contract, and does not overlap
    // `data`, a Rust buffer outside the region.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    Ok(())
}

/// Sets `len` bytes at `offset` of the shared region to `byte`.
///
/// # Safety
/// As [`write`].
pub unsafe fn fill(
    base: NonNull<u8>,
    size: usize,
    offset: usize,
    len: usize,
    byte: u8,
) -> Result<(), OutOfRange> {
    let dst = range(base, size, offset, len)?;
    // SAFETY: `dst..dst + len` lies inside the writable region (checked).
    unsafe { core::ptr::write_bytes(dst, byte, len) };
    Ok(())
}

/// Copies `len` bytes between two shared regions (which may be the same
/// memory, even overlapping: this is a `memmove`).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes for the
/// duration of the call, and no Rust reference may point into either.
pub unsafe fn copy(src: NonNull<u8>, dst: NonNull<u8>, len: usize) {
    // SAFETY: the caller's contract; `copy` allows overlap.
    unsafe { core::ptr::copy(src.as_ptr().cast_const(), dst.as_ptr(), len) };
}
