//! How fast the hosted platform's grant copy and mapped-grant reads are,
//! against `memcpy` of the same size, in the same run.
//!
//! `cargo run --release -p hosted --bin grant-copy-bench [-- ROUNDS]`
//!
//! Two domains of one process: dom1 grants pages to dom2; dom2 copies 4 KiB
//! out of a granted page into its own frame (`GNTTABOP_copy` with
//! `GNTCOPY_source_gref`), into a granted page from its own frame
//! (`GNTCOPY_dest_gref`), and reads 4 KiB through a mapping of the grant.
//! Each entry is timed over many operations per round (in thread CPU time,
//! so that a busy machine's preemptions do not count), the entries taking
//! turns; the table shows each entry's median round, in ns per operation,
//! and its ratio to `memcpy` of 4 KiB between two page-aligned buffers. Not
//! a test: figures depend on the machine.

use std::hint::black_box;

use grant_tables::abi::{GntCopyFlags, GntStatus, GnttabCopy, GnttabCopyPtr, DOMID_SELF, PAGE_SIZE};
use grant_tables::{Access, DomId, PageAllocator, SharedPages};
use hosted::{HostedHypervisor, HostedPlatform};

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId(2);
const OPS_PER_ROUND: u32 = 100_000;

/// This thread's CPU time in ns: unlike the wall clock, it does not count
/// the time the thread waits for a CPU, so figures taken on a busy machine
/// stay comparable.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    (ts.tv_sec as u128) * 1_000_000_000 + ts.tv_nsec as u128
}

/// Times each entry over `rounds` rounds, the entries taking turns within a
/// round so that the machine's drift weighs on all alike; returns each
/// entry's median ns per operation.
fn medians(rounds: usize, ops: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    // Warm up: first-touch faults, caches, lazy mappings.
    for op in ops.iter_mut() {
        for _ in 0..10_000 {
            op();
        }
    }
    let mut per_op: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); ops.len()];
    for _ in 0..rounds {
        for (i, op) in ops.iter_mut().enumerate() {
            let t = thread_cpu_ns();
            for _ in 0..OPS_PER_ROUND {
                op();
            }
            per_op[i].push((thread_cpu_ns() - t) as f64 / f64::from(OPS_PER_ROUND));
        }
    }
    per_op
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect()
}

fn copy_op(source: GnttabCopyPtr, dest: GnttabCopyPtr, flags: GntCopyFlags) -> GnttabCopy {
    GnttabCopy { source, dest, len: PAGE_SIZE as u16, flags: flags.bits(), status: 1, _pad: 0 }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|_| format!("ROUNDS must be a whole number, not {a:?}"))?,
        None => 9,
    };
    let rounds = rounds.max(1);
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    let dir = base.join(format!("grant-copy-bench-{}", std::process::id()));
    let hv = HostedHypervisor::create(&dir)?;
    let front: HostedPlatform = hv.join(FRONT)?;
    let back: HostedPlatform = hv.join(BACK)?;
    let gt = front.grant_table();

    // Frames at different offsets in the two domains' memories, as they
    // are in practice: copies between the same frame number of two
    // domains are between addresses a multiple of 1 GiB apart (each
    // domain's memory is mapped whole), which some CPUs copy at half speed
    // or worse through false store-to-load aliasing (memcpy alike).
    let _front_spacer = front.alloc_zeroed_pages(3)?;
    let src = front.alloc_zeroed_pages(1)?;
    let dst = front.alloc_zeroed_pages(1)?;
    let pattern: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 251) as u8).collect();
    // SAFETY: our own freshly allocated page, one page long, not referenced.
    unsafe { grant_tables::shared_mem::write(src.as_ptr(), PAGE_SIZE, 0, &pattern)? };
    let g_src = gt.grant_access(BACK, src.gfn(0).ok_or("no frame")?, Access::ReadOnly)?;
    let g_dst = gt.grant_access(BACK, dst.gfn(0).ok_or("no frame")?, Access::ReadWrite)?;
    let _back_spacer = back.alloc_zeroed_pages(37)?;
    let local = back.alloc_zeroed_pages(1)?;
    let local_ptr = GnttabCopyPtr { u: local.gfn(0).ok_or("no frame")?.0, domid: DOMID_SELF, offset: 0, _pad: 0 };
    let gref = |g: u32| GnttabCopyPtr { u: u64::from(g), domid: FRONT.0, offset: 0, _pad: 0 };

    let mut from_grant = [copy_op(gref(g_src.raw()), local_ptr, GntCopyFlags::SOURCE_GREF)];
    let mut to_grant = [copy_op(local_ptr, gref(g_dst.raw()), GntCopyFlags::DEST_GREF)];
    back.grant_copy(&mut from_grant);
    back.grant_copy(&mut to_grant);
    if from_grant[0].status != GntStatus::Okay.raw() || to_grant[0].status != GntStatus::Okay.raw() {
        return Err(format!("grant copy failed: statuses {} and {}", from_grant[0].status, to_grant[0].status).into());
    }
    let mut check = vec![0u8; PAGE_SIZE];
    // SAFETY: our own page, not referenced.
    unsafe { grant_tables::shared_mem::read(dst.as_ptr(), PAGE_SIZE, 0, &mut check)? };
    if check != pattern {
        return Err("the copies did not carry the pattern through".into());
    }
    let mapping = back.map_grant(FRONT, g_src.raw(), Access::ReadOnly)?;
    let mut empty = from_grant;
    empty[0].len = 0;

    // The baseline copies page to page, as a grant copy of a whole page
    // does: two page-aligned buffers (page-aligned, so that the copy is not
    // slowed by the partial 4 KiB aliasing of two heap blocks, which makes
    // `rep movsb` crawl on some CPUs).
    let mut heap = vec![7u8; 4 * PAGE_SIZE];
    let start = heap.as_ptr().align_offset(PAGE_SIZE);
    let (left, right) = heap[start..start + 2 * PAGE_SIZE].split_at_mut(PAGE_SIZE);
    let mut buf = vec![0u8; PAGE_SIZE];
    let mut memcpy = || {
        right.copy_from_slice(black_box(&*left));
        black_box(&mut *right);
    };
    let mut copy_from = || {
        black_box(back.grant_copy(black_box(&mut from_grant)));
    };
    let mut copy_to = || {
        black_box(back.grant_copy(black_box(&mut to_grant)));
    };
    let mut mapped_read = || {
        black_box(mapping.read(0, black_box(&mut buf)));
    };
    let mut copy_empty = || {
        black_box(back.grant_copy(black_box(&mut empty)));
    };
    let (map_src, local_dst) = (mapping.as_ptr(), local.as_ptr());
    let mut shared_memcpy = || {
        // SAFETY: a one-page read mapping and our own page, both live for
        // the whole benchmark and never referenced.
        unsafe { grant_tables::shared_mem::copy(black_box(map_src), black_box(local_dst), PAGE_SIZE) };
    };
    let m = medians(
        rounds,
        &mut [&mut memcpy, &mut copy_from, &mut copy_to, &mut mapped_read, &mut copy_empty, &mut shared_memcpy],
    );
    let (memcpy, copy_from, copy_to, mapped_read, copy_empty, shared) = (m[0], m[1], m[2], m[3], m[4], m[5]);
    drop(mapping);

    println!("4 KiB per operation, thread CPU time, median of {rounds} rounds of {OPS_PER_ROUND}:");
    println!("{:<38} {:>8} {:>10}", "entry", "ns/op", "x memcpy");
    for (name, ns) in [
        ("memcpy, page to page", memcpy),
        ("grant copy, granted page -> own frame", copy_from),
        ("grant copy, own frame -> granted page", copy_to),
        ("read through a mapped grant", mapped_read),
        ("grant copy of 0 bytes (the checks)", copy_empty),
        ("memmove, mapped grant -> own page", shared),
    ] {
        println!("{name:<38} {ns:>8.1} {:>9.2}x", ns / memcpy);
    }
    let worst = copy_from.max(copy_to) / memcpy;
    println!("target: grant copy within 2x of memcpy: {}", if worst <= 2.0 { "met" } else { "NOT met" });

    gt.end_access(g_src)?;
    gt.end_access(g_dst)?;
    drop(hv);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
