//! Byte rings shared with a peer, as in Xen's console ring
//! (`io/console.h`). A ring is a
//! power-of-two byte array plus two free-running 32-bit indices; one side
//! produces, the other consumes.
//!
//! The peer writes the other index concurrently and may be hostile: its
//! index is acquire-loaded once per call into a local copy and checked
//! (more data than the ring holds is [`RingBroken`]), and the data bytes
//! are accessed with volatile reads and writes only.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

/// The peer's index is impossible: it claims more bytes than the ring holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBroken {
    /// The producer index as read.
    pub prod: u32,
    /// The consumer index as read.
    pub cons: u32,
}

impl core::fmt::Display for RingBroken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "byte ring indices prod={} cons={} claim more bytes than the ring holds; the peer is faulty",
            self.prod, self.cons
        )
    }
}

/// One direction of a byte ring.
#[derive(Debug)]
pub struct ByteRing {
    data: NonNull<u8>,
    size: u32,
    cons: NonNull<u32>,
    prod: NonNull<u32>,
}

// SAFETY: the ring is shared memory; the handle only holds addresses, and
// every access is volatile or atomic.
unsafe impl Send for ByteRing {}

impl ByteRing {
    /// A ring at `base + data_off` of `size` bytes, with its consumer and
    /// producer indices at `base + cons_off` and `base + prod_off`.
    ///
    /// # Safety
    /// `base` must be valid for reads and writes over all those ranges for
    /// as long as the ring is used, never accessed through Rust references
    /// meanwhile, and the index offsets must be 4-byte aligned; `size` must
    /// be a power of two.
    pub unsafe fn new(base: NonNull<u8>, data_off: usize, size: u32, cons_off: usize, prod_off: usize) -> Self {
        debug_assert!(size.is_power_of_two());
        // SAFETY: the caller guarantees the offsets are inside the region.
        unsafe {
            ByteRing {
                data: base.add(data_off),
                size,
                cons: base.add(cons_off).cast(),
                prod: base.add(prod_off).cast(),
            }
        }
    }

    fn cons(&self) -> &AtomicU32 {
        // SAFETY: `new`'s contract: a live, aligned u32 shared with the peer,
        // accessed only atomically.
        unsafe { AtomicU32::from_ptr(self.cons.as_ptr()) }
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: as in `cons`.
        unsafe { AtomicU32::from_ptr(self.prod.as_ptr()) }
    }

    /// Producer side: copies as many bytes of `bytes` as fit and publishes
    /// them. Returns how many were written.
    pub fn write_some(&self, bytes: &[u8]) -> Result<usize, RingBroken> {
        // Acquire: the peer's reads of the bytes it consumed are done before
        // we overwrite them.
        let cons = self.cons().load(Ordering::Acquire);
        let prod = self.prod().load(Ordering::Relaxed);
        let used = prod.wrapping_sub(cons);
        if used > self.size {
            return Err(RingBroken { prod, cons });
        }
        let n = core::cmp::min((self.size - used) as usize, bytes.len());
        for (i, b) in bytes[..n].iter().enumerate() {
            let at = (prod.wrapping_add(i as u32) & (self.size - 1)) as usize;
            // SAFETY: `at < size`, inside the data area (`new`'s contract).
            unsafe { self.data.as_ptr().add(at).write_volatile(*b) };
        }
        // Release: the bytes are visible before the index that covers them.
        self.prod().store(prod.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// Consumer side: copies as many published bytes as fit into `out` and
    /// frees their space. Returns how many were read.
    pub fn read_some(&self, out: &mut [u8]) -> Result<usize, RingBroken> {
        // Acquire: the bytes are read after the index that covers them.
        let prod = self.prod().load(Ordering::Acquire);
        let cons = self.cons().load(Ordering::Relaxed);
        let avail = prod.wrapping_sub(cons);
        if avail > self.size {
            return Err(RingBroken { prod, cons });
        }
        let n = core::cmp::min(avail as usize, out.len());
        for (i, b) in out[..n].iter_mut().enumerate() {
            let at = (cons.wrapping_add(i as u32) & (self.size - 1)) as usize;
            // SAFETY: `at < size`, inside the data area.
            *b = unsafe { self.data.as_ptr().add(at).read_volatile() };
        }
        // Release: our reads of the bytes are done before the peer may
        // overwrite them.
        self.cons().store(cons.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// Bytes published and not yet consumed (producer's view: the backlog).
    pub fn pending(&self) -> Result<u32, RingBroken> {
        let prod = self.prod().load(Ordering::Acquire);
        let cons = self.cons().load(Ordering::Acquire);
        let used = prod.wrapping_sub(cons);
        if used > self.size {
            return Err(RingBroken { prod, cons });
        }
        Ok(used)
    }
}

/// The console page (`struct xencons_interface`): `in[1024]`, `out[2048]`,
/// then `in_cons`, `in_prod`, `out_cons`, `out_prod`.
pub mod console_layout {
    /// Offset of `in`.
    pub const IN: usize = 0;
    /// Size of `in`.
    pub const IN_SIZE: u32 = 1024;
    /// Offset of `out`.
    pub const OUT: usize = 1024;
    /// Size of `out`.
    pub const OUT_SIZE: u32 = 2048;
    /// Offset of `in_cons`.
    pub const IN_CONS: usize = 3072;
    /// Offset of `in_prod`.
    pub const IN_PROD: usize = 3076;
    /// Offset of `out_cons`.
    pub const OUT_CONS: usize = 3080;
    /// Offset of `out_prod`.
    pub const OUT_PROD: usize = 3084;
}

/// The console's output ring in a console page.
///
/// # Safety
/// `page` must be a live, page-sized console page shared with the console
/// daemon, used by nothing else in this domain.
pub unsafe fn console_out(page: NonNull<u8>) -> ByteRing {
    use console_layout::*;
    // SAFETY: the offsets are those of `struct xencons_interface`, inside
    // the page the caller vouches for.
    unsafe { ByteRing::new(page, OUT, OUT_SIZE, OUT_CONS, OUT_PROD) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    #[test]
    fn console_bytes_land_at_the_xencons_offsets_and_wrap() {
        let mut page = std::boxed::Box::new([Page([0; 4096])]);
        let base = NonNull::new(page[0].0.as_mut_ptr()).unwrap();
        // SAFETY: a heap page used only through the ring.
        let out = unsafe { console_out(base) };
        assert_eq!(out.write_some(b"hello").unwrap(), 5);
        // SAFETY: reading the page back in the test, no ring call is live.
        let p = unsafe { core::slice::from_raw_parts(base.as_ptr(), 4096) };
        assert_eq!(&p[1024..1029], b"hello");
        assert_eq!(u32::from_le_bytes(p[3084..3088].try_into().unwrap()), 5);
        // Fill the ring: only the free space is taken.
        let big = vec![b'x'; 4000];
        assert_eq!(out.write_some(&big).unwrap(), 2048 - 5);
        assert_eq!(out.write_some(b"y").unwrap(), 0);
        // The daemon consumes 10 bytes; the next write wraps.
        page[0].0[3080..3084].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(out.write_some(b"0123456789ab").unwrap(), 10);
        assert_eq!(&page[0].0[1024..1024 + 5], b"01234");
    }

    #[test]
    fn a_hostile_index_breaks_the_ring() {
        let mut page = std::boxed::Box::new([Page([0; 4096])]);
        page[0].0[3080..3084].copy_from_slice(&5000u32.to_le_bytes());
        let base = NonNull::new(page[0].0.as_mut_ptr()).unwrap();
        // SAFETY: a heap page used only through the ring.
        let out = unsafe { console_out(base) };
        assert!(out.write_some(b"a").is_err());
        // The console's input ring, read by us: a producer index too far
        // ahead is refused too.
        // SAFETY: as above.
        let input = unsafe { ByteRing::new(base, console_layout::IN, console_layout::IN_SIZE, console_layout::IN_CONS, console_layout::IN_PROD) };
        page[0].0[3076..3080].copy_from_slice(&4000u32.to_le_bytes());
        let mut buf = [0u8; 8];
        assert!(input.read_some(&mut buf).is_err());
    }
}
