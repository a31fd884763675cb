//! The system call wrappers against the real kernel: what each promises
//! (seals, zeroed holes, mappings that alias the file, futexes woken
//! through another mapping, descriptors that cross a socket, refused
//! oversized messages, timeouts that sleep).

use super::*;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

fn pair() -> (OwnedFd, OwnedFd) {
    rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).expect("socketpair")
}

fn socket_path() -> std::path::PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("hosted-sys-{}-{n}.sock", std::process::id()))
}

#[test]
fn page_size_is_checked() {
    check_page_size().expect("the hosted platform runs on 4 KiB pages");
}

#[test]
fn memfd_size_is_sealed() {
    let f = sealed_memfd("sys-test", 3 * PAGE as u64).expect("memfd");
    assert_eq!(sealed_size(&f).expect("sealed"), 3 * PAGE as u64);
    assert!(f.set_len(PAGE as u64).is_err(), "shrinking a sealed memfd must fail");
    assert!(f.set_len(4 * PAGE as u64).is_err(), "growing a sealed memfd must fail");
    assert_eq!(f.metadata().expect("metadata").len(), 3 * PAGE as u64);
}

#[test]
fn memfd_name_with_nul_is_refused() {
    let e = sealed_memfd("a\0b", PAGE as u64).expect_err("NUL in name");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn unsealed_memfd_is_refused() {
    let fd = rustix::fs::memfd_create("unsealed", MemfdFlags::CLOEXEC).expect("memfd");
    let f = File::from(fd);
    f.set_len(PAGE as u64).expect("size");
    let e = sealed_size(&f).expect_err("no seals");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn punched_hole_reads_as_zeros() {
    let f = sealed_memfd("sys-test", 2 * PAGE as u64).expect("memfd");
    f.write_all_at(&[0xAB; 2 * PAGE], 0).expect("fill");
    punch_hole(&f, PAGE as u64, PAGE as u64).expect("punch");
    let mut buf = vec![0u8; 2 * PAGE];
    f.read_exact_at(&mut buf, 0).expect("read");
    assert!(buf[..PAGE].iter().all(|&b| b == 0xAB), "page 0 must keep its bytes");
    assert!(buf[PAGE..].iter().all(|&b| b == 0), "page 1 must read as zeros");
    assert_eq!(f.metadata().expect("metadata").len(), 2 * PAGE as u64, "the size is kept");
    let e = punch_hole(&f, u64::MAX, PAGE as u64).expect_err("offset past off_t");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn shared_mapping_aliases_the_file() {
    let f = sealed_memfd("sys-test", 2 * PAGE as u64).expect("memfd");
    f.write_all_at(b"from the file", PAGE as u64).expect("write");
    let m = Mmap::shared(f.as_fd(), PAGE as u64, PAGE, true).expect("map");
    assert_eq!(m.len(), PAGE);
    let p = m.as_ptr().as_ptr();
    let mut seen = [0u8; 13];
    for (i, b) in seen.iter_mut().enumerate() {
        // SAFETY: `i < 13 < PAGE`, inside the live, readable mapping.
        *b = unsafe { p.add(i).read_volatile() };
    }
    assert_eq!(&seen, b"from the file");
    // SAFETY: offset 100 is inside the live, writable mapping.
    unsafe { p.add(100).write_volatile(0x5A) };
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, PAGE as u64 + 100).expect("read");
    assert_eq!(b[0], 0x5A, "a write through the mapping reaches the file");

    let e = Mmap::shared(f.as_fd(), 100, PAGE, false).expect_err("unaligned offset");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let e = Mmap::shared(f.as_fd(), 0, 0, false).expect_err("empty");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn pages_map_over_a_reservation() {
    let f = sealed_memfd("sys-test", 2 * PAGE as u64).expect("memfd");
    f.write_all_at(&[1], 0).expect("write");
    f.write_all_at(&[2], PAGE as u64).expect("write");
    let r = Mmap::reserve(3 * PAGE).expect("reserve");
    // Page 1 of the file at page 0 of the region, page 0 at page 2.
    r.map_over(0, f.as_fd(), PAGE as u64, PAGE, false).expect("map page 1");
    r.map_over(2 * PAGE, f.as_fd(), 0, PAGE, true).expect("map page 0");
    let p = r.as_ptr().as_ptr();
    // SAFETY: pages 0 and 2 of the region are mapped readable just above.
    let (a, b) = unsafe { (p.read_volatile(), p.add(2 * PAGE).read_volatile()) };
    assert_eq!((a, b), (2, 1));

    for (at, len) in [(2 * PAGE, 2 * PAGE), (PAGE + 1, PAGE), (usize::MAX - 10, PAGE), (0, 0)] {
        let e = r.map_over(at, f.as_fd(), 0, len, false).expect_err("outside the region");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "at {at} len {len}");
    }
    assert_eq!(Mmap::reserve(0).expect_err("empty").kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn eventfd_wakes_epoll_once_per_edge() {
    let efd = eventfd().expect("eventfd");
    let ep = epoll_set(&[&efd]).expect("epoll");
    assert!(!epoll_wait_one(ep.as_fd(), Some(Duration::ZERO)).expect("wait"), "nothing signalled yet");
    eventfd_signal(&efd).expect("signal");
    eventfd_signal(&efd).expect("signal");
    assert!(epoll_wait_one(ep.as_fd(), Some(Duration::from_secs(5))).expect("wait"), "signalled");
    // Edge-triggered: no new edge until the counter changes again.
    assert!(!epoll_wait_one(ep.as_fd(), Some(Duration::ZERO)).expect("wait"));
    eventfd_drain(&efd);
    let mut b = [0u8; 8];
    let e = (&efd).read(&mut b).expect_err("drained");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "the drain reset the counter");
}

#[test]
fn short_epoll_timeouts_sleep() {
    let efd = eventfd().expect("eventfd");
    let ep = epoll_set(&[&efd]).expect("epoll");
    for t in [Duration::from_nanos(1), Duration::from_millis(20)] {
        let start = Instant::now();
        assert!(!epoll_wait_one(ep.as_fd(), Some(t)).expect("wait"));
        let slept = start.elapsed();
        assert!(slept >= t.max(Duration::from_millis(1)), "asked {t:?}, slept {slept:?}");
    }
}

/// One page of a memfd mapped twice, as two domains map an event page.
fn two_mappings() -> (File, Mmap, Mmap) {
    let f = sealed_memfd("futex", PAGE as u64).expect("memfd");
    let a = Mmap::shared(f.as_fd(), 0, PAGE, true).expect("first mapping");
    let b = Mmap::shared(f.as_fd(), 0, PAGE, true).expect("second mapping");
    (f, a, b)
}

/// The 32-bit word at byte `off` of `m`.
fn word(m: &Mmap, off: usize) -> &AtomicU32 {
    assert!(off % 4 == 0 && off + 4 <= m.len());
    // SAFETY: `off` is 4-aligned and inside the live, writable mapping
    // (asserted), which outlives the returned borrow of `m`; the page is
    // only accessed atomically.
    unsafe { AtomicU32::from_ptr(m.as_ptr().as_ptr().add(off).cast()) }
}

/// Wakes through `by` until one thread was woken (the sleeper is queued
/// some time after it starts); bounded. Returns how many it woke.
fn wake_until_one(by: &AtomicU32) -> usize {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let n = futex_wake(by).expect("wake");
        if n > 0 || Instant::now() >= end {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_futex_sleeper_is_woken_through_another_mapping_of_the_page() {
    let (_f, a, b) = two_mappings();
    let (wa, wb) = (word(&a, 64), word(&b, 64));
    // A word that no longer holds the expected value returns at once.
    wa.store(1, Ordering::SeqCst);
    let start = Instant::now();
    futex_wait(wa, 0, Some(Duration::from_secs(10))).expect("wait");
    assert!(start.elapsed() < Duration::from_secs(5), "slept on a word that changed");
    // The timeout ends a sleep nobody wakes.
    wb.store(0, Ordering::SeqCst);
    let start = Instant::now();
    futex_wait(wa, 0, Some(Duration::from_millis(20))).expect("wait");
    assert!(start.elapsed() >= Duration::from_millis(20));
    // A wake through the other mapping reaches a thread asleep on this one
    // (the futex is keyed by the file, not the address).
    std::thread::scope(|s| {
        let sleeper = s.spawn(|| {
            let start = Instant::now();
            futex_wait(wa, 0, Some(Duration::from_secs(20))).expect("wait");
            start.elapsed()
        });
        assert_eq!(wake_until_one(wb), 1, "no sleeper to wake within 10 s");
        assert!(sleeper.join().expect("sleeper") < Duration::from_secs(15), "the wake did not end the sleep");
    });
}

#[test]
fn a_futex_wait_on_several_words_ends_on_any() {
    let (_f, a, b) = two_mappings();
    let words = [word(&a, 0), word(&a, 64), word(&a, 128)];
    // Every word 0: the timeout ends the sleep.
    let start = Instant::now();
    futex_wait_any(&words, Some(Duration::from_millis(20))).expect("wait");
    assert!(start.elapsed() >= Duration::from_millis(20));
    // One word not 0: at once.
    words[1].store(1, Ordering::SeqCst);
    let start = Instant::now();
    futex_wait_any(&words, Some(Duration::from_secs(10))).expect("wait");
    assert!(start.elapsed() < Duration::from_secs(5));
    words[1].store(0, Ordering::SeqCst);
    // A wake on the last word, through the other mapping.
    std::thread::scope(|s| {
        let sleeper = s.spawn(|| {
            let start = Instant::now();
            futex_wait_any(&words, Some(Duration::from_secs(20))).expect("wait");
            start.elapsed()
        });
        assert_eq!(wake_until_one(word(&b, 128)), 1, "no sleeper to wake within 10 s");
        assert!(sleeper.join().expect("sleeper") < Duration::from_secs(15), "the wake did not end the sleep");
    });
    // No word, or more than the kernel takes: refused.
    assert_eq!(futex_wait_any(&[], None).expect_err("empty").kind(), io::ErrorKind::InvalidInput);
    let many = vec![words[0]; FUTEX_WAITV_MAX + 1];
    assert_eq!(futex_wait_any(&many, None).expect_err("too many").kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn descriptors_cross_a_socket() {
    let (a, b) = pair();
    let efd = eventfd().expect("eventfd");
    let mem = sealed_memfd("sys-test", PAGE as u64).expect("memfd");
    send_msg(a.as_fd(), b"hello", &[efd.as_fd(), mem.as_fd()]).expect("send");
    let mut buf = [0u8; 64];
    let (n, fds) = recv_msg(b.as_fd(), &mut buf).expect("recv");
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(fds.len(), 2);
    // The first is the same eventfd: a signal through it is seen on ours.
    let theirs = File::from(fds.into_iter().next().expect("one fd"));
    eventfd_signal(&theirs).expect("signal");
    let mut v = [0u8; 8];
    (&efd).read_exact(&mut v).expect("the counter moved");
    assert_eq!(u64::from_ne_bytes(v), 1);

    send_msg(a.as_fd(), b"no fds", &[]).expect("send");
    let (n, fds) = recv_msg(b.as_fd(), &mut buf).expect("recv");
    assert_eq!((&buf[..n], fds.len()), (&b"no fds"[..], 0));

    let five = [efd.as_fd(), efd.as_fd(), efd.as_fd(), efd.as_fd(), efd.as_fd()];
    assert_eq!(send_msg(a.as_fd(), b"x", &five).expect_err("five").kind(), io::ErrorKind::InvalidInput);

    drop(a);
    let (n, fds) = recv_msg(b.as_fd(), &mut buf).expect("recv after close");
    assert_eq!((n, fds.len()), (0, 0), "a closed peer reads as an empty message");
}

#[test]
fn oversized_messages_are_refused() {
    let (a, b) = pair();
    send_msg(a.as_fd(), &[7u8; 100], &[]).expect("send");
    let mut small = [0u8; 10];
    let e = recv_msg(b.as_fd(), &mut small).expect_err("truncated data");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);

    // A peer that sends more descriptors than a message may carry, which
    // `send_msg` would not do.
    let efd = eventfd().expect("eventfd");
    for count in [MAX_FDS + 1, MAX_FDS + 4] {
        let many: Vec<BorrowedFd<'_>> = (0..count).map(|_| efd.as_fd()).collect();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(16))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&many)));
        rustix::net::sendmsg(&a, &[IoSlice::new(b"x")], &mut control, SendFlags::NOSIGNAL).expect("raw send");
        let mut buf = [0u8; 8];
        let e = recv_msg(b.as_fd(), &mut buf).expect_err("too many descriptors");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{count} descriptors: {e}");
    }
    // The refused messages are consumed: the next one arrives whole.
    send_msg(a.as_fd(), b"after", &[]).expect("send");
    let mut buf = [0u8; 8];
    let (n, _) = recv_msg(b.as_fd(), &mut buf).expect("recv");
    assert_eq!(&buf[..n], b"after");
}

#[test]
fn listen_connect_accept() {
    let path = socket_path();
    let _ = std::fs::remove_file(&path);
    let l = seqpacket_listen(&path).expect("listen");
    let c = seqpacket_connect(&path).expect("connect");
    let s = accept(l.as_fd()).expect("accept");
    send_msg(c.as_fd(), b"ping", &[]).expect("send");
    let mut buf = [0u8; 8];
    let (n, _) = recv_msg(s.as_fd(), &mut buf).expect("recv");
    assert_eq!(&buf[..n], b"ping");

    set_nonblocking(s.as_fd()).expect("nonblocking");
    let e = recv_msg(s.as_fd(), &mut buf).expect_err("nothing to read");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    shutdown(s.as_fd());
    let (n, _) = recv_msg(c.as_fd(), &mut buf).expect("recv after shutdown");
    assert_eq!(n, 0, "the peer sees the shutdown as a close");
    shutdown(s.as_fd()); // Twice is harmless.
    std::fs::remove_file(&path).expect("remove socket");
}

#[test]
fn socket_paths_are_checked() {
    let long = std::env::temp_dir().join("x".repeat(SUN_PATH_LEN));
    let e = seqpacket_connect(&long).expect_err("too long");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("longer than 107 bytes"), "{e}");
    let e = seqpacket_listen(Path::new("/tmp/a\0b")).expect_err("NUL");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let e = seqpacket_connect(&socket_path()).expect_err("nobody listens");
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
}
