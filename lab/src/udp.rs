//! The UDP echo check that dom0 runs against a guest's echo port: a
//! datagram of every payload size from 1 to a maximum, one at a time; each
//! echo must come back whole and equal to what was sent. A datagram with
//! no echo within the socket's read timeout is sent again (counted: a test
//! of loss is `ping`'s); `tries` sends without an echo fail the check. A
//! shorter echo that holds the pattern is a late echo of a datagram sent
//! again, counted and skipped.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// What one run of [`echo_every_size`] saw.
#[derive(Debug)]
pub struct EchoReport {
    /// Payload bytes sent (and echoed) once each.
    pub bytes: u64,
    /// The sizes sent more than once, once per resend.
    pub resent: Vec<usize>,
    /// Late echoes of datagrams sent again.
    pub stale: u64,
    /// The slowest echo and its size.
    pub slowest: (Duration, usize),
    /// The whole run.
    pub elapsed: Duration,
}

/// Sends a datagram of every size from 1 to `max` through `sock` (already
/// connected to the echo port, with a read timeout), filled by `payload`,
/// and checks each echo; `is_pattern` tells a late echo of an earlier
/// datagram from garbage.
pub fn echo_every_size(
    sock: &UdpSocket,
    max: usize,
    tries: u32,
    payload: impl Fn(usize, &mut [u8]),
    is_pattern: impl Fn(&[u8]) -> bool,
) -> Result<EchoReport, String> {
    let t0 = Instant::now();
    let mut out = vec![0u8; max];
    let mut got = vec![0u8; max.max(2048)];
    let mut report = EchoReport {
        bytes: 0,
        resent: Vec::new(),
        stale: 0,
        slowest: (Duration::ZERO, 0),
        elapsed: Duration::ZERO,
    };
    for size in 1..=max {
        payload(size, &mut out[..size]);
        let t = Instant::now();
        let mut sent = 0;
        'send: loop {
            sent += 1;
            if sent > tries {
                return Err(format!(
                    "no echo of the {size}-byte datagram after {tries} sends ({} sizes echoed before it)",
                    size - 1
                ));
            }
            if sent > 1 {
                report.resent.push(size);
            }
            sock.send(&out[..size])
                .map_err(|e| format!("sending {size} bytes: {e}"))?;
            loop {
                match sock.recv(&mut got) {
                    Ok(n) if n == size => {
                        if let Some(at) =
                            got[..n].iter().zip(&out[..size]).position(|(a, b)| a != b)
                        {
                            return Err(format!(
                                "the echo of the {size}-byte datagram differs at byte {at}"
                            ));
                        }
                        break 'send;
                    }
                    Ok(n) if n < size && is_pattern(&got[..n]) => report.stale += 1,
                    Ok(n) => {
                        return Err(format!(
                            "a {n}-byte echo came back for the {size}-byte datagram"
                        ))
                    }
                    Err(e)
                        if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut =>
                    {
                        continue 'send
                    }
                    Err(e) => return Err(format!("receiving the {size}-byte echo: {e}")),
                }
            }
        }
        let d = t.elapsed();
        if d > report.slowest.0 {
            report.slowest = (d, size);
        }
        report.bytes += size as u64;
    }
    report.elapsed = t0.elapsed();
    Ok(report)
}
