//! Peers that come and go, a thousand times: nothing leaks.
//!
//! - A blk-like pool of 256 persistent grants survives 1,000 backend
//!   crashes: each backend maps all 256 pages and is killed (`SIGKILL`); the
//!   frontend ends access (before or after the crash), retries, and at the
//!   end no grant, page or ref is lost (the hypervisor released each dead
//!   backend's pins, as Xen does).
//! - One backend outlives 1,000 frontends (each a new incarnation of the
//!   same domid): it maps each frontend's grant, copies from it, binds and
//!   notifies its event channel, and its resident mappings of departed
//!   frontends stay bounded.
//!
//! The parent process is the hypervisor and the long-lived domain; a child
//! process (a "forker") forks the short-lived domains, so that each is a
//! real process that can be killed, and reports over the test's line
//! protocol.

#[path = "platform_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{child_dir, hear, role, say, ChildDomain, TestDir};
use grant_tables::abi::{GntCopyFlags, GntStatus, GnttabCopy, GnttabCopyPtr, DOMID_SELF, PAGE_SIZE};
use grant_tables::foreign::{ForeignGrants, ForeignMapping, MapOp};
use grant_tables::{Access, BufferPool, DomId, EventChannels, PageAllocator, PoolConfig, PoolMode, Port, SharedPages};
use hosted::{HostedError, HostedHypervisor, HostedPlatform};

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId(2);
/// The restarting frontends and their backend: other domids, so that this
/// process's memory map tells their mappings from the other test's.
const FRONT_R: DomId = DomId(11);
const BACK_R: DomId = DomId(12);
const CHILD_TEST: &str = "child";
const POOL_PAGES: usize = 256;

/// Cycles of each test (fewer when asked, for a quick run).
fn cycles() -> usize {
    std::env::var("GRANT_RESTART_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

/// The child entry point: the forker.
#[test]
fn child() {
    let Some(role) = role() else { return };
    assert_eq!(role, "forker", "unknown role {role}");
    forker();
}

/// Joins as `domid`, waiting while the previous incarnation's departure is
/// still being processed by the hypervisor.
fn join_again(domid: DomId) -> HostedPlatform {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match HostedPlatform::join(child_dir(), domid) {
            Ok(p) => return p,
            Err(HostedError::DomidTaken(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{domid} cannot join: {e}"),
        }
    }
}

/// Runs `body` in a forked process that dies with the forker; returns its
/// pid. The process never returns: it parks until killed.
fn fork_domain(body: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the forker is a single-purpose process whose other thread (the
    // test harness's main thread) only waits for this one, holding no lock;
    // the child runs `body` (which joins a fresh domain) and parks or exits
    // without unwinding into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid > 0 {
        return pid;
    }
    // SAFETY: prctl with integer arguments; the domain dies with the forker.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_ok();
    if !ok {
        // SAFETY: ends this forked process without running the harness.
        unsafe { libc::_exit(101) };
    }
    loop {
        // SAFETY: waits for a signal (the SIGKILL that ends this domain).
        unsafe { libc::pause() };
    }
}

/// The forker: `backend REFS` forks a backend (dom2) that maps every ref of
/// dom1 and reports `mapped N BYTE`; `frontend CYCLE` forks a frontend
/// (dom11) that grants a page (filled with the cycle's byte) and offers a
/// port to dom12, reporting `front GREF PORT`; `kill` kills the forked domain with SIGKILL
/// (a crash) and reports `killed`.
fn forker() {
    let mut live: Option<libc::pid_t> = None;
    loop {
        let cmd = hear();
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["backend", refs] => {
                let refs: Vec<u32> = refs.split(',').map(|r| r.parse().expect("a ref")).collect();
                live = Some(fork_domain(move || {
                    let back = join_again(BACK);
                    let ops: Vec<MapOp> =
                        refs.iter().map(|&gref| MapOp { granter: FRONT, gref, access: Access::ReadWrite }).collect();
                    let mut maps = Vec::new();
                    back.map_batch(&ops, &mut maps);
                    let ok = maps.iter().filter(|m| m.is_ok()).count();
                    // The application's byte at the start of the first page.
                    let mut first = [0u8; 1];
                    if let Some(Ok(m)) = maps.first() {
                        m.read_at(0, &mut first).expect("read the first page");
                    }
                    say(&format!("mapped {ok} {}", first[0]));
                    // Hold every mapping until killed.
                    std::mem::forget(maps);
                }));
            }
            ["frontend", cycle] => {
                let byte = cycle.parse::<usize>().expect("a cycle") as u8;
                live = Some(fork_domain(move || {
                    let front = join_again(FRONT_R);
                    let page = front.alloc_zeroed_pages(1).expect("a page");
                    // SAFETY: our own page, not referenced.
                    unsafe { grant_tables::shared_mem::fill(page.as_ptr(), PAGE_SIZE, 0, PAGE_SIZE, byte) }
                        .expect("fill");
                    let g = front.grant_table().grant_access(BACK_R, page.gfn(0).expect("frame"), Access::ReadWrite);
                    let g = g.expect("grant");
                    let port = front.alloc_unbound(BACK_R).expect("port");
                    say(&format!("front {} {}", g.raw(), port.0));
                    // Keep everything until killed.
                    std::mem::forget((front, page, g));
                }));
            }
            ["kill"] => {
                let pid = live.take().expect("a live domain to kill");
                // SAFETY: signals and reaps our own child process.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    let mut status = 0;
                    libc::waitpid(pid, &mut status, 0);
                }
                say("killed");
            }
            [] => {
                if let Some(pid) = live {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                return;
            }
            _ => panic!("unknown command {cmd:?}"),
        }
    }
}

/// Retries the quarantine until it is empty (the hypervisor releases a dead
/// backend's pins once it notices the death), bounded.
fn retry_until_empty(front: &HostedPlatform) -> usize {
    let gt = front.grant_table();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut recovered = 0;
    while gt.quarantined_count() > 0 {
        recovered += gt.retry_quarantined();
        if gt.quarantined_count() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a dead backend's grants were never released: {:?}", gt.stats());
        std::thread::sleep(Duration::from_micros(200));
    }
    recovered
}

#[test]
fn a_pool_of_persistent_grants_survives_a_thousand_backend_crashes() {
    let cycles = cycles();
    let started = Instant::now();
    let dir = TestDir::new("pool-crashes");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let front = hv.join(FRONT).unwrap();
    let gt = front.grant_table().clone();
    let before = gt.stats();
    let pages_before = front.pages_in_use();
    let mut forker = ChildDomain::spawn(CHILD_TEST, "forker", &dir, &[]);
    let config =
        PoolConfig { pages: POOL_PAGES, buffer_size: PAGE_SIZE, access: Access::ReadWrite, mode: PoolMode::Untrusted };
    let mut recovered = 0usize;
    for cycle in 0..cycles {
        let pool = BufferPool::new(&front, BACK, config).unwrap();
        let mut buf = pool.take().unwrap();
        buf.fill(0, 1, cycle as u8).unwrap();
        let refs: Vec<String> = pool.grefs().map(|r| r.to_string()).collect();
        // The first buffer lent is in the first page.
        assert_eq!((buf.gref(), buf.offset()), (pool.grefs().next().unwrap(), 0));
        forker.send(&format!("backend {}", refs.join(",")));
        forker.expect(&format!("mapped {POOL_PAGES} {}", cycle as u8));
        assert_eq!(gt.stats().granted, POOL_PAGES, "cycle {cycle}");
        drop(buf);
        if cycle % 2 == 0 {
            // End access while the backend still maps every page: the whole
            // pool is quarantined, never freed.
            drop(pool);
            let s = gt.stats();
            assert_eq!((s.quarantined, s.quarantined_allocations, s.granted), (POOL_PAGES, 1, 0), "cycle {cycle}");
            assert_eq!(front.pages_in_use(), pages_before + POOL_PAGES as u64, "a mapped pool was freed");
            forker.send("kill");
            forker.expect("killed");
        } else {
            // The backend crashes first; the end of access races with the
            // hypervisor's release of its pins.
            forker.send("kill");
            forker.expect("killed");
            drop(pool);
        }
        recovered += retry_until_empty(&front);
        let s = gt.stats();
        assert_eq!((s.granted, s.quarantined, s.quarantined_allocations), (0, 0, 0), "cycle {cycle}");
        assert_eq!(s.free, before.free, "cycle {cycle}: refs lost");
        assert_eq!(front.pages_in_use(), pages_before, "cycle {cycle}: pages lost");
    }
    forker.finish();
    let s = gt.stats();
    println!(
        "{cycles} backend crashes in {:.1} s: {} refs quarantined and {} recovered in all; at the end {} free of {} refs, {} granted, {} quarantined, {} page(s) in use (as before: {pages_before})",
        started.elapsed().as_secs_f64(),
        s.quarantined_total,
        s.recovered,
        s.free,
        s.capacity,
        s.granted,
        s.quarantined,
        front.pages_in_use()
    );
    assert_eq!(s.free, before.free);
    assert_eq!((s.granted, s.quarantined, s.quarantined_allocations), (0, 0, 0));
    assert_eq!(s.recovered, s.quarantined_total, "every quarantined ref came back");
    assert_eq!(recovered as u64, s.recovered - before.recovered);
    // Every other cycle ended access while mapped: at least those refs went
    // through the quarantine.
    assert!(s.quarantined_total >= (POOL_PAGES * cycles.div_ceil(2)) as u64, "{s:?}");
    assert_eq!(front.pages_in_use(), pages_before);
}

/// Lines of this process's memory map that map memory of the restarting
/// frontends (their memfds are named `dom11-...`).
fn frontend_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .filter(|l| l.contains("memfd:dom11-"))
        .count()
}

#[test]
fn a_backend_outlives_a_thousand_frontends_with_bounded_mappings() {
    let cycles = cycles();
    let started = Instant::now();
    let dir = TestDir::new("front-restarts");
    let hv = HostedHypervisor::create(&dir.0).unwrap();
    let back = hv.join(BACK_R).unwrap();
    let local = back.alloc_zeroed_pages(1).unwrap();
    let mut forker = ChildDomain::spawn(CHILD_TEST, "forker", &dir, &[]);
    let mut most_maps = 0;
    let mut most_alive = 0;
    for cycle in 0..cycles {
        forker.send(&format!("frontend {cycle}"));
        let reply = forker.reply();
        let words: Vec<&str> = reply.split_whitespace().collect();
        let ["front", gref, port] = words.as_slice() else { panic!("unexpected reply {reply:?}") };
        let (gref, port): (u32, u32) = (gref.parse().unwrap(), port.parse().unwrap());
        // Map this incarnation's grant and check its bytes.
        let mut maps = Vec::new();
        back.map_batch(&[MapOp { granter: FRONT_R, gref, access: Access::ReadWrite }], &mut maps);
        let m = maps.pop().unwrap().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let mut b = [0u8; 8];
        m.read_at(PAGE_SIZE - 8, &mut b).unwrap();
        assert_eq!(b, [cycle as u8; 8], "cycle {cycle}: another incarnation's page");
        // Copy from it too (the lock-free path, through its whole memory).
        let mut op = [GnttabCopy {
            source: GnttabCopyPtr { u: u64::from(gref), domid: FRONT_R.0, offset: 100, _pad: 0 },
            dest: GnttabCopyPtr { u: local.gfn(0).unwrap().0, domid: DOMID_SELF, offset: 0, _pad: 0 },
            len: 64,
            flags: GntCopyFlags::SOURCE_GREF.bits(),
            status: 1,
            _pad: 0,
        }];
        assert_eq!(back.copy_batch(&mut op), 0, "cycle {cycle}: status {}", op[0].status);
        assert_eq!(op[0].status, GntStatus::Okay.raw());
        // Notify it (the lock-free notify path, on a new incarnation).
        let ours = back.bind_interdomain(FRONT_R, Port(port)).unwrap();
        back.notify(ours).unwrap();
        back.close(ours).unwrap();
        if cycle % 2 == 0 {
            drop(m);
            forker.send("kill");
            forker.expect("killed");
        } else {
            // The frontend dies while mapped: the mapping keeps its memory
            // until it goes.
            forker.send("kill");
            forker.expect("killed");
            m.read_at(0, &mut b).unwrap();
            assert_eq!(b, [cycle as u8; 8], "a dead frontend's page stays mapped while we map it");
            drop(m);
        }
        let s = back.peer_stats();
        most_alive = most_alive.max(s.alive);
        most_maps = most_maps.max(frontend_mappings());
        assert!(s.alive <= 4, "cycle {cycle}: {s:?}");
        assert_eq!(s.grant_mappings, 0, "cycle {cycle}");
    }
    forker.finish();
    // The last frontend is gone too: nothing of it stays mapped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while back.domain_exists(FRONT_R) {
        assert!(Instant::now() < deadline, "the last frontend never departed");
        std::thread::sleep(Duration::from_millis(1));
    }
    back.release_departed_peers();
    back.release_departed_peers();
    let s = back.peer_stats();
    let maps_end = frontend_mappings();
    println!(
        "{cycles} frontend restarts in {:.1} s: at most {most_alive} frontend peer view(s) alive and {most_maps} frontend mapping(s) resident at once; at the end {s:?}, {maps_end} frontend mapping(s)",
        started.elapsed().as_secs_f64()
    );
    assert!(most_maps <= 8, "resident mappings of departed frontends grew to {most_maps}");
    assert_eq!((s.alive, s.current, s.retired, s.memory_mapped), (0, 0, 0, 0), "{s:?}");
    assert_eq!(maps_end, 0, "a departed frontend's memory is still mapped");
}
