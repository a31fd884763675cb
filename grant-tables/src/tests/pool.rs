//! The buffer pool of persistent grants on the fake platform.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::abi::PAGE_SIZE;
use crate::fake::{FakeEventHub, FakeGrantFrames, FakeGrantHub, FakePlatform};
use crate::foreign::{ForeignGrants, ForeignMapping, MapOp};
use crate::platform::{DomId, Platform};
use crate::pool::{BufferPool, PoolConfig, PoolError, PoolMode};
use crate::table::Access;

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId(2);

fn machine() -> (FakePlatform, FakePlatform, Arc<FakeGrantHub>) {
    let hub = FakeEventHub::new();
    let m = FakeGrantHub::new();
    let entries = if cfg!(miri) { 64 } else { 512 };
    let front = FakePlatform::with_grant_hub(
        FRONT,
        hub.clone(),
        FakeGrantFrames::with_entries(entries).unwrap(),
        &m,
    );
    let back = FakePlatform::with_grant_hub(
        BACK,
        hub,
        FakeGrantFrames::with_entries(entries).unwrap(),
        &m,
    );
    (front, back, m)
}

fn config(pages: usize, buffer_size: usize, mode: PoolMode) -> PoolConfig {
    PoolConfig {
        pages,
        buffer_size,
        access: Access::ReadWrite,
        mode,
    }
}

#[test]
fn buffers_carry_distinct_refs_and_offsets_and_come_back() {
    let (front, _back, _m) = machine();
    let pool = BufferPool::new(&front, BACK, config(2, 1024, PoolMode::Trusted)).unwrap();
    assert_eq!(
        (pool.capacity(), pool.available(), pool.buffer_size()),
        (8, 8, 1024)
    );
    let grefs: Vec<u32> = pool.grefs().collect();
    assert_eq!(grefs.len(), 2);
    let mut out = Vec::new();
    while let Some(b) = pool.take() {
        out.push(b);
    }
    assert_eq!(out.len(), 8);
    assert_eq!(pool.available(), 0);
    let mut seen: Vec<(u32, u16)> = out.iter().map(|b| (b.gref(), b.offset())).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8, "every buffer is its own slice");
    for b in &out {
        assert!(grefs.contains(&b.gref()));
        assert_eq!(usize::from(b.offset()) % 1024, 0);
        assert!(
            usize::from(b.offset()) + b.len() <= PAGE_SIZE,
            "no buffer crosses a page"
        );
    }
    let mut b = out.pop().unwrap();
    b.write_at(10, b"payload").unwrap();
    assert!(b.write_at(1020, b"too long").is_err());
    let mut got = [0u8; 7];
    b.read_at(10, &mut got).unwrap();
    assert_eq!(&got, b"payload");
    b.write_obj(0, &0xDEAD_BEEF_u32).unwrap();
    assert_eq!(b.read_obj::<u32>(0).unwrap(), 0xDEAD_BEEF);
    drop(b);
    drop(out);
    assert_eq!(pool.available(), 8);
    for bad in [0, 32, 100, 8192] {
        assert!(matches!(
            BufferPool::new(&front, BACK, config(1, bad, PoolMode::Trusted)),
            Err(PoolError::BadConfig(_))
        ));
    }
    assert!(matches!(
        BufferPool::new(&front, BACK, config(0, 4096, PoolMode::Trusted)),
        Err(PoolError::BadConfig(_))
    ));
}

#[test]
fn untrusted_buffers_are_zeroed_before_reuse() {
    for (mode, kept) in [(PoolMode::Trusted, true), (PoolMode::Untrusted, false)] {
        let (front, _back, _m) = machine();
        let pool = BufferPool::new(&front, BACK, config(1, 4096, mode)).unwrap();
        let mut b = pool.take().unwrap();
        b.fill(0, 4096, 0x5A).unwrap();
        drop(b);
        let b = pool.take().unwrap();
        let mut got = [0u8; 16];
        b.read_at(4080, &mut got).unwrap();
        assert_eq!(got == [0x5A; 16], kept, "{mode:?}");
    }
}

/// The backend maps the pool's pages and sees the application's bytes in
/// place, at the buffer's ref and offset.
#[test]
fn the_backend_sees_buffers_in_place() {
    let (front, back, _m) = machine();
    let pool = BufferPool::new(&front, BACK, config(1, 512, PoolMode::Untrusted)).unwrap();
    let mut a = pool.take().unwrap();
    let mut b = pool.take().unwrap();
    a.write_at(0, b"first").unwrap();
    b.write_at(0, b"second").unwrap();
    let mut maps = Vec::new();
    back.map_batch(
        &[MapOp {
            granter: FRONT,
            gref: a.gref(),
            access: Access::ReadWrite,
        }],
        &mut maps,
    );
    let m = maps.pop().unwrap().unwrap();
    let mut got = [0u8; 6];
    m.read_at(usize::from(b.offset()), &mut got).unwrap();
    assert_eq!(&got, b"second");
    m.write_at(usize::from(a.offset()), b"reply").unwrap();
    let mut got = [0u8; 5];
    a.read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"reply");
}

/// Dropping the pool while the backend maps a page quarantines the whole
/// allocation; nothing is freed until the backend lets go.
#[test]
fn dropping_a_mapped_pool_quarantines_and_never_frees() {
    let (front, back, m) = machine();
    let gt = front.grant_table().unwrap().clone();
    let free = gt.free_count();
    let registered = m.registered_pages();
    let pool = BufferPool::new(&front, BACK, config(4, 4096, PoolMode::Trusted)).unwrap();
    assert_eq!(m.registered_pages(), registered + 4);
    let gref = pool.grefs().nth(2).unwrap();
    let mut maps = Vec::new();
    back.map_batch(
        &[MapOp {
            granter: FRONT,
            gref,
            access: Access::ReadWrite,
        }],
        &mut maps,
    );
    let mapping = maps.pop().unwrap().unwrap();
    let buf = pool.take().unwrap();
    drop(pool);
    // A buffer still out keeps the pool (and its grants) alive.
    assert_eq!(gt.free_count(), free - 4);
    drop(buf);
    let s = gt.stats();
    assert_eq!(
        (s.quarantined, s.quarantined_allocations, s.free),
        (1, 1, free - 1)
    );
    assert_eq!(
        m.registered_pages(),
        registered + 4,
        "the mapped pool's pages are kept"
    );
    mapping.write_at(0, b"still mapped, still safe").unwrap();
    drop(mapping);
    assert_eq!(gt.retry_quarantined(), 1);
    assert_eq!(m.registered_pages(), registered);
    assert_eq!(gt.free_count(), free);
}

/// Several threads take and give back buffers concurrently: no buffer is
/// lent twice at once and all come back.
#[test]
fn concurrent_take_and_return() {
    extern crate std;
    use core::sync::atomic::{AtomicU8, Ordering};

    let (front, _back, _m) = machine();
    let pages = if cfg!(miri) { 1 } else { 8 };
    let pool = BufferPool::new(&front, BACK, config(pages, 512, PoolMode::Untrusted)).unwrap();
    let cap = pool.capacity();
    let owners: Arc<Vec<AtomicU8>> = Arc::new((0..cap).map(|_| AtomicU8::new(0)).collect());
    let rounds = if cfg!(miri) { 10 } else { 5000 };
    let threads: Vec<_> = (1..=4u8)
        .map(|me| {
            let pool = pool.clone();
            let owners = owners.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..rounds {
                    if let Some(mut b) = pool.take() {
                        let slot = &owners[b.index() as usize];
                        assert_eq!(
                            slot.swap(me, Ordering::AcqRel),
                            0,
                            "buffer {} lent twice",
                            b.index()
                        );
                        let mut z = [1u8; 8];
                        b.read_at(0, &mut z).unwrap();
                        assert_eq!(z, [0; 8], "an untrusted buffer came back dirty");
                        b.fill(0, 8, me).unwrap();
                        held.push(b);
                    }
                    if held.len() > 3 || (i % 3 == 0 && !held.is_empty()) {
                        let b = held.swap_remove(0);
                        owners[b.index() as usize].store(0, Ordering::Release);
                        drop(b);
                    }
                }
                for b in held {
                    owners[b.index() as usize].store(0, Ordering::Release);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(pool.available(), cap);
}
