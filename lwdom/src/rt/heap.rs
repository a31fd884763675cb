//! The heap behind `alloc`: a 4 MiB [`BumpHeap`](crate::bump::BumpHeap)
//! in the image's bss. See [`crate::bump`] for exactly which allocation
//! patterns it reclaims: blocks of up to 64 KiB are recycled whatever the
//! order they are freed in (a driver's per-request bookkeeping runs in
//! bounded memory), LIFO frees and a growing buffer that is the latest
//! allocation too; larger blocks freed out of order leave holes that stay
//! lost while anything is live (after boot, the domain's name always is).

use crate::bump::BumpHeap;

const HEAP_SIZE: usize = 4 << 20;

#[global_allocator]
static HEAP: BumpHeap<HEAP_SIZE> = BumpHeap::new();

/// Bytes from the start of the heap to its top: what the heap has used up
/// (`None` if called from inside an allocation).
pub fn used() -> Option<usize> {
    HEAP.used()
}
