//! dom0 side of the `net` scenario: `lab-netcheck udp|tcp|rebind`.
//!
//! One process per step, looping itself (under emulation every exec in
//! dom0 costs about 0.1 s), against the guest's smoltcp over Linux's
//! xen-netback:
//!
//! - `udp`: a datagram of every payload size from 1 to 1472 bytes to the
//!   guest's echo port, one at a time; each echo must come back whole and
//!   hold `lab_proto::net_udp_payload` of its size (the guest checks each
//!   datagram too before it echoes it). A datagram lost on the way is sent
//!   again (counted; a test of loss is `ping`'s).
//! - `tcp`: 16 MiB to the guest's sink port (the guest checks every byte
//!   and answers with its checksum of what it received, compared with
//!   dom0's of what it sent), then 16 MiB from the guest's source port
//!   (dom0 checks every byte; the stream ends with the guest's checksum of
//!   what it sent, compared with dom0's of what it received and with the
//!   pattern's).
//! - `rebind`: as the second half of `tcp`, from the rebind port, with
//!   long read timeouts: the scenario unbinds and rebinds the vif's backend
//!   while this stream runs. Prints the longest gap between two reads.
//!
//! Prints one line per step with its figures; exits non-zero on the first
//! failure, with the reason.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lab::udp::echo_every_size;

use lwdom::lab_proto::{
    net_stream_fill, net_stream_mismatch, net_udp_check, net_udp_payload, NetSum, NET_GUEST_IP,
    NET_TCP_BYTES, NET_TCP_REBIND_PORT, NET_TCP_SINK_PORT, NET_TCP_SOURCE_PORT, NET_UDP_ECHO_PORT,
    NET_UDP_MAX,
};

/// Times one datagram is sent before the step fails.
const UDP_TRIES: u32 = 10;
/// Bytes written or read at a time.
const CHUNK: usize = 64 * 1024;
const MIB: f64 = (1 << 20) as f64;

fn guest(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(NET_GUEST_IP), port))
}

fn udp() -> Result<String, String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("binding a UDP socket: {e}"))?;
    sock.connect(guest(NET_UDP_ECHO_PORT))
        .map_err(|e| format!("connecting the UDP socket to the guest: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(1000)))
        .map_err(|e| e.to_string())?;
    let r = echo_every_size(
        &sock,
        NET_UDP_MAX,
        UDP_TRIES,
        net_udp_payload,
        net_udp_check,
    )?;
    Ok(format!(
        "UDP echo of every payload size from 1 to {NET_UDP_MAX} bytes checked ({} bytes each way, {} datagram(s) sent again, {} late echo(es)) in {} ms, slowest echo {} ms",
        r.bytes,
        r.resent.len(),
        r.stale,
        r.elapsed.as_millis(),
        r.slowest.0.as_millis()
    ))
}

fn connect(port: u16, read_timeout: Duration) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&guest(port), Duration::from_secs(30))
        .map_err(|e| format!("connecting to the guest's port {port}: {e}"))?;
    s.set_read_timeout(Some(read_timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(read_timeout))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

fn rate(bytes: u64, d: Duration) -> String {
    format!(
        "{:.2} MiB/s",
        bytes as f64 / MIB / d.as_secs_f64().max(1e-6)
    )
}

/// dom0 to the guest: the stream, then the guest's checksum.
fn tcp_to_guest() -> Result<String, String> {
    let port = NET_TCP_SINK_PORT;
    let mut s = connect(port, Duration::from_secs(60))?;
    let t0 = Instant::now();
    let mut sum = NetSum::default();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < NET_TCP_BYTES {
        let n = (NET_TCP_BYTES - at).min(CHUNK as u64) as usize;
        net_stream_fill(port, at, &mut buf[..n]);
        sum.update(&buf[..n]);
        s.write_all(&buf[..n])
            .map_err(|e| format!("sending to the guest at byte {at}: {e}"))?;
        at += n as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("closing the sending side: {e}"))?;
    let mut theirs = [0u8; 8];
    s.read_exact(&mut theirs)
        .map_err(|e| format!("reading the guest's checksum after the stream: {e}"))?;
    let d = t0.elapsed();
    let theirs = u64::from_le_bytes(theirs);
    if theirs != sum.0 {
        return Err(format!(
            "the guest's checksum of the {NET_TCP_BYTES} bytes it received is {theirs:#018x}, dom0 sent {:#018x}",
            sum.0
        ));
    }
    Ok(format!(
        "dom0 -> guest: {} MiB in {} ms ({}), checksum {:#018x} at both ends",
        NET_TCP_BYTES >> 20,
        d.as_millis(),
        rate(NET_TCP_BYTES, d),
        sum.0
    ))
}

/// The guest to dom0: the stream, every byte checked, then the guest's
/// checksum. Returns the figures and the longest gap between reads.
fn tcp_from_guest(port: u16, read_timeout: Duration) -> Result<(String, Duration), String> {
    let mut s = connect(port, read_timeout)?;
    let t0 = Instant::now();
    let mut sum = NetSum::default();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    let mut last = Instant::now();
    let mut gap = Duration::ZERO;
    let mut gap_at = 0u64;
    while at < NET_TCP_BYTES {
        let want = (NET_TCP_BYTES - at).min(CHUNK as u64) as usize;
        let n = s
            .read(&mut buf[..want])
            .map_err(|e| format!("reading from the guest at byte {at}: {e}"))?;
        if n == 0 {
            return Err(format!("the guest ended the stream at byte {at}"));
        }
        let g = last.elapsed();
        if g > gap {
            gap = g;
            gap_at = at;
        }
        last = Instant::now();
        if let Some(bad) = net_stream_mismatch(port, at, &buf[..n]) {
            return Err(format!(
                "byte {bad} from the guest does not hold the stream's pattern"
            ));
        }
        sum.update(&buf[..n]);
        at += n as u64;
    }
    let mut theirs = [0u8; 8];
    s.read_exact(&mut theirs)
        .map_err(|e| format!("reading the guest's checksum after the stream: {e}"))?;
    let d = t0.elapsed();
    let theirs = u64::from_le_bytes(theirs);
    let want = NetSum::of_stream(port);
    if sum != want {
        return Err(format!(
            "dom0's checksum of the stream is {:#018x}, the pattern's {:#018x}",
            sum.0, want.0
        ));
    }
    if theirs != sum.0 {
        return Err(format!(
            "the guest's checksum of what it sent is {theirs:#018x}, dom0 received {:#018x}",
            sum.0
        ));
    }
    Ok((
        format!(
            "guest -> dom0: {} MiB in {} ms ({}), checksum {:#018x} at both ends, longest gap between reads {} ms at byte {gap_at}",
            NET_TCP_BYTES >> 20,
            d.as_millis(),
            rate(NET_TCP_BYTES, d),
            sum.0,
            gap.as_millis()
        ),
        gap,
    ))
}

fn run(args: &[String]) -> Result<String, String> {
    match args.get(1).map(String::as_str) {
        Some("udp") => udp(),
        Some("tcp") => {
            let a = tcp_to_guest()?;
            println!("lab-netcheck: {a}");
            let (b, _) = tcp_from_guest(NET_TCP_SOURCE_PORT, Duration::from_secs(60))?;
            Ok(format!("{a}; {b}"))
        }
        Some("rebind") => {
            let (b, _) = tcp_from_guest(NET_TCP_REBIND_PORT, Duration::from_secs(240))?;
            Ok(format!("across the rebind: {b}"))
        }
        _ => Err("usage: lab-netcheck udp|tcp|rebind".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(s) => {
            println!("lab-netcheck: {s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("lab-netcheck: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
