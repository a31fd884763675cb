//! The peers of the ping-pong bench: the physical limit and the kernel
//! paths. Each records one round-trip sample (ns) per measured iteration,
//! with the two ends on two threads pinned to two cores.

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crate::harness::Recorder;
use crate::pin;

/// Message size the kernel peers send each way (a ring request's size).
pub const MSG: usize = 16;

/// Runs `ping` (timed, `warmup + iters` times) on one core and `pong`
/// (`warmup + iters` times) on the other. Records the measured samples.
pub fn two_threads<P, Q>(
    iters: u64,
    warmup: u64,
    rec: &mut Recorder,
    mut ping: P,
    mut pong: Q,
) -> Result<(), String>
where
    P: FnMut(u64) -> Result<(), String> + Send,
    Q: FnMut(u64) -> Result<(), String> + Send + 'static,
{
    let (a, b) = pin::pair();
    let total = warmup + iters;
    let server = thread::Builder::new()
        .name("pong".into())
        .spawn(move || {
            pin::pin_to(b);
            for i in 0..total {
                pong(i)?;
            }
            Ok::<(), String>(())
        })
        .map_err(|e| format!("cannot spawn the pong thread: {e}"))?;
    thread::scope(|s| {
        s.spawn(|| {
            pin::pin_to(a);
            for i in 0..total {
                let t = Instant::now();
                ping(i)?;
                let dt = t.elapsed().as_nanos() as u64;
                if i >= warmup {
                    rec.record(dt);
                }
            }
            Ok::<_, String>(())
        })
        .join()
        .map_err(|_| "the ping thread panicked".to_string())?
    })?;
    server
        .join()
        .map_err(|_| "the pong thread panicked".to_string())??;
    Ok(())
}

#[repr(C, align(64))]
struct Line(AtomicU64);

/// One cache line bounced between the two cores: the physical limit of
/// any shared-memory exchange.
pub fn cacheline(iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String> {
    let line = Arc::new(Line(AtomicU64::new(0)));
    let l2 = line.clone();
    two_threads(
        iters,
        warmup,
        rec,
        |i| {
            line.0.store(2 * i + 1, Ordering::Release);
            while line.0.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
            Ok(())
        },
        move |i| {
            while l2.0.load(Ordering::Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            l2.0.store(2 * i + 2, Ordering::Release);
            Ok(())
        },
    )
}

fn udp_pair() -> Result<(UdpSocket, UdpSocket), String> {
    let a = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("udp bind: {e}"))?;
    let b = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("udp bind: {e}"))?;
    a.connect(b.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| format!("udp connect: {e}"))?;
    b.connect(a.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| format!("udp connect: {e}"))?;
    Ok((a, b))
}

fn udp_recv(s: &UdpSocket, buf: &mut [u8], spin: bool) -> Result<(), String> {
    loop {
        match s.recv(buf) {
            Ok(n) if n == buf.len() => return Ok(()),
            Ok(n) => return Err(format!("udp: short datagram of {n} bytes")),
            Err(e) if spin && e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(format!("udp recv: {e}")),
        }
    }
}

/// UDP over loopback; `spin` busy-polls non-blocking sockets instead of
/// sleeping in `recv`.
pub fn udp(iters: u64, warmup: u64, spin: bool, rec: &mut Recorder) -> Result<(), String> {
    let (a, b) = udp_pair()?;
    a.set_nonblocking(spin).map_err(|e| e.to_string())?;
    b.set_nonblocking(spin).map_err(|e| e.to_string())?;
    let mut buf_a = [0u8; MSG];
    let mut buf_b = [0u8; MSG];
    two_threads(
        iters,
        warmup,
        rec,
        |i| {
            buf_a[..8].copy_from_slice(&i.to_le_bytes());
            a.send(&buf_a).map_err(|e| format!("udp send: {e}"))?;
            udp_recv(&a, &mut buf_a, spin)
        },
        move |_| {
            udp_recv(&b, &mut buf_b, spin)?;
            b.send(&buf_b).map_err(|e| format!("udp send: {e}"))?;
            Ok(())
        },
    )
}

/// A connected Unix stream socket pair, blocking.
pub fn unix(iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String> {
    let (mut a, mut b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let mut buf_a = [0u8; MSG];
    let mut buf_b = [0u8; MSG];
    two_threads(
        iters,
        warmup,
        rec,
        |_| {
            a.write_all(&buf_a)
                .map_err(|e| format!("unix write: {e}"))?;
            a.read_exact(&mut buf_a)
                .map_err(|e| format!("unix read: {e}"))
        },
        move |_| {
            b.read_exact(&mut buf_b)
                .map_err(|e| format!("unix read: {e}"))?;
            b.write_all(&buf_b).map_err(|e| format!("unix write: {e}"))
        },
    )
}

fn fd_pipe() -> Result<(std::fs::File, std::fs::File), String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody
    // else; each `File` takes sole ownership of one.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// Two pipes, one each way, blocking.
pub fn pipe(iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String> {
    let (mut r1, mut w1) = fd_pipe()?;
    let (mut r2, mut w2) = fd_pipe()?;
    let mut buf_a = [0u8; MSG];
    let mut buf_b = [0u8; MSG];
    two_threads(
        iters,
        warmup,
        rec,
        |_| {
            w1.write_all(&buf_a)
                .map_err(|e| format!("pipe write: {e}"))?;
            r2.read_exact(&mut buf_a)
                .map_err(|e| format!("pipe read: {e}"))
        },
        move |_| {
            r1.read_exact(&mut buf_b)
                .map_err(|e| format!("pipe read: {e}"))?;
            w2.write_all(&buf_b).map_err(|e| format!("pipe write: {e}"))
        },
    )
}

fn eventfd() -> Result<std::fs::File, String> {
    // SAFETY: plain syscall with constant flags.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Two eventfds, one each way, blocking reads: the kernel's cheapest
/// wake-up between two threads.
pub fn eventfd_pair(iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String> {
    let mut e1 = eventfd()?;
    let mut e2 = eventfd()?;
    let mut e1b = e1.try_clone().map_err(|e| e.to_string())?;
    let mut e2b = e2.try_clone().map_err(|e| e.to_string())?;
    two_threads(
        iters,
        warmup,
        rec,
        |_| {
            e1.write_all(&1u64.to_ne_bytes())
                .map_err(|e| format!("eventfd write: {e}"))?;
            let mut b = [0u8; 8];
            e2.read_exact(&mut b)
                .map_err(|e| format!("eventfd read: {e}"))
        },
        move |_| {
            let mut b = [0u8; 8];
            e1b.read_exact(&mut b)
                .map_err(|e| format!("eventfd read: {e}"))?;
            e2b.write_all(&1u64.to_ne_bytes())
                .map_err(|e| format!("eventfd write: {e}"))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_completes_and_measures_each_iteration() {
        type Peer = fn(&mut Recorder) -> Result<(), String>;
        let peers: [(&str, Peer); 6] = [
            ("cacheline", |r| cacheline(200, 10, r)),
            ("udp-block", |r| udp(200, 10, false, r)),
            ("udp-spin", |r| udp(200, 10, true, r)),
            ("unix", |r| unix(200, 10, r)),
            ("pipe", |r| pipe(200, 10, r)),
            ("eventfd", |r| eventfd_pair(200, 10, r)),
        ];
        for (name, f) in peers {
            let mut rec = Recorder::new();
            f(&mut rec).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(rec.count(), 200, "{name}");
            // The smallest sample is the 0-quantile: a zero-length round
            // trip would show as 0 here.
            assert!(rec.quantile(0.0) > 0, "{name}: zero-length round trip");
        }
    }
}
