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
    use std::boxed::Box;
    use std::vec;
    use std::vec::Vec;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    /// A heap page that plays the shared console page. Once a ring is
    /// built over it, the test plays the daemon through the same raw
    /// pointer the ring holds (never through a reference to the page,
    /// which would invalidate the ring's pointer), as another domain would.
    struct SharedPage(NonNull<Page>);

    impl SharedPage {
        fn new() -> Self {
            SharedPage(NonNull::from(Box::leak(Box::new(Page([0; 4096])))))
        }

        fn base(&self) -> NonNull<u8> {
            self.0.cast()
        }

        /// The daemon writes an index.
        fn store_u32(&self, off: usize, v: u32) {
            assert!(off % 4 == 0 && off + 4 <= 4096);
            // SAFETY: an aligned u32 inside the live page; the ring accesses
            // the indices atomically too.
            unsafe { AtomicU32::from_ptr(self.base().as_ptr().add(off).cast()) }.store(v, Ordering::Release);
        }

        /// The daemon reads an index.
        fn load_u32(&self, off: usize) -> u32 {
            assert!(off % 4 == 0 && off + 4 <= 4096);
            // SAFETY: as in `store_u32`.
            unsafe { AtomicU32::from_ptr(self.base().as_ptr().add(off).cast()) }.load(Ordering::Acquire)
        }

        /// The daemon copies bytes out.
        fn bytes(&self, at: usize, len: usize) -> Vec<u8> {
            assert!(at + len <= 4096);
            // SAFETY: inside the live page; volatile, as the ring writes.
            (at..at + len).map(|i| unsafe { self.base().as_ptr().add(i).read_volatile() }).collect()
        }
    }

    impl Drop for SharedPage {
        fn drop(&mut self) {
            // SAFETY: leaked from a Box in `new`; the rings built over it
            // are dropped first (declared after it in every test).
            drop(unsafe { Box::from_raw(self.0.as_ptr()) });
        }
    }

    #[test]
    fn console_bytes_land_at_the_xencons_offsets_and_wrap() {
        let page = SharedPage::new();
        // SAFETY: a heap page used only through the ring and `page`'s raw
        // accessors.
        let out = unsafe { console_out(page.base()) };
        assert_eq!(out.write_some(b"hello").unwrap(), 5);
        assert_eq!(page.bytes(1024, 5), b"hello");
        assert_eq!(page.load_u32(3084), 5);
        assert_eq!(out.pending().unwrap(), 5);
        // Fill the ring: only the free space is taken.
        let big = vec![b'x'; 4000];
        assert_eq!(out.write_some(&big).unwrap(), 2048 - 5);
        assert_eq!(out.write_some(b"y").unwrap(), 0);
        // The daemon consumes 10 bytes; the next write wraps.
        page.store_u32(3080, 10);
        assert_eq!(out.write_some(b"0123456789ab").unwrap(), 10);
        assert_eq!(page.bytes(1024, 5), b"01234");
        assert_eq!(page.load_u32(3084), 2048 + 10);
    }

    #[test]
    fn the_input_ring_reads_what_the_daemon_wrote() {
        let page = SharedPage::new();
        // SAFETY: as above.
        let input = unsafe { ByteRing::new(page.base(), console_layout::IN, console_layout::IN_SIZE, console_layout::IN_CONS, console_layout::IN_PROD) };
        // The daemon writes "abc" at indices 1022..1025: the last byte
        // wraps to the start of `in`.
        for (at, b) in [(1022, b'a'), (1023, b'b'), (0, b'c')] {
            // SAFETY: inside the page's `in` area; volatile like the ring.
            unsafe { page.base().as_ptr().add(at).write_volatile(b) };
        }
        // Indices that wrap: cons 1022, prod 1025.
        page.store_u32(3072, 1022);
        page.store_u32(3076, 1025);
        let mut buf = [0u8; 8];
        assert_eq!(input.read_some(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(page.load_u32(3072), 1025);
    }

    #[test]
    fn a_hostile_index_breaks_the_ring() {
        let page = SharedPage::new();
        page.store_u32(3080, 5000);
        // SAFETY: a heap page used only through the ring and `page`'s raw
        // accessors.
        let out = unsafe { console_out(page.base()) };
        assert!(out.write_some(b"a").is_err());
        assert!(out.pending().is_err());
        // The console's input ring, read by us: a producer index too far
        // ahead is refused too.
        // SAFETY: as above.
        let input = unsafe { ByteRing::new(page.base(), console_layout::IN, console_layout::IN_SIZE, console_layout::IN_CONS, console_layout::IN_PROD) };
        page.store_u32(3076, 4000);
        let mut buf = [0u8; 8];
        assert_eq!(input.read_some(&mut buf), Err(RingBroken { prod: 4000, cons: 0 }));
        assert_eq!(page.load_u32(3072), 0, "a broken ring consumes nothing");
    }
}
