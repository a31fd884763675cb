//! dom0 side of the `pci-nic` scenario: `lab-nicheck udp`.
//!
//! One process that loops itself (under emulation every exec in dom0
//! costs about 0.1 s): a UDP datagram of every payload size from 1 to 1472
//! bytes, one at a time, to the guest's echo port over dom0's e1000 (on
//! the QEMU hub the guest's passed-through e1000e is on). Each echo must
//! come back whole and hold `lab_proto::nic_udp_payload` of its size (the
//! guest checks each datagram too before it echoes it). A datagram with no
//! echo within a second is sent again (counted and printed; a test of loss
//! is `ping`'s); ten sends without an echo fail the check.
//!
//! Prints one line with its figures; exits non-zero on the first failure,
//! with the reason.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lwdom::lab_proto::{
    nic_udp_check, nic_udp_payload, NIC_DOM0_IP, NIC_GUEST_IP, NIC_UDP_ECHO_PORT, NIC_UDP_MAX,
};

/// Times one datagram is sent before the check fails.
const UDP_TRIES: u32 = 10;

fn udp() -> Result<String, String> {
    let sock =
        UdpSocket::bind(SocketAddr::from((Ipv4Addr::from(NIC_DOM0_IP), 0))).map_err(|e| {
            format!(
                "binding a UDP socket to {}: {e} (is the e1000's address set?)",
                Ipv4Addr::from(NIC_DOM0_IP)
            )
        })?;
    let guest = SocketAddr::from((Ipv4Addr::from(NIC_GUEST_IP), NIC_UDP_ECHO_PORT));
    sock.connect(guest)
        .map_err(|e| format!("connecting the UDP socket to the guest's {guest}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(1000)))
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut out = [0u8; NIC_UDP_MAX];
    let mut got = [0u8; 2048];
    let (mut resent, mut stale, mut bytes) = (Vec::new(), 0u64, 0u64);
    let mut slowest = (Duration::ZERO, 0usize);
    for size in 1..=NIC_UDP_MAX {
        nic_udp_payload(size, &mut out[..size]);
        let t = Instant::now();
        let mut tries = 0;
        'send: loop {
            tries += 1;
            if tries > UDP_TRIES {
                return Err(format!(
                    "no echo of the {size}-byte datagram after {UDP_TRIES} sends ({} sizes echoed before it)",
                    size - 1
                ));
            }
            if tries > 1 {
                resent.push(size);
            }
            sock.send(&out[..size])
                .map_err(|e| format!("sending {size} bytes: {e}"))?;
            loop {
                match sock.recv(&mut got) {
                    Ok(n) if n == size => {
                        if got[..n] != out[..size] {
                            let at = got[..n].iter().zip(&out[..size]).position(|(a, b)| a != b);
                            return Err(format!(
                                "the echo of the {size}-byte datagram differs at byte {}",
                                at.unwrap_or(0)
                            ));
                        }
                        break 'send;
                    }
                    // A late echo of an earlier datagram that was sent
                    // again.
                    Ok(n) if n < size && nic_udp_check(&got[..n]) => stale += 1,
                    Ok(n) => {
                        return Err(format!(
                            "a {n}-byte echo came back for the {size}-byte datagram"
                        ))
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        continue 'send
                    }
                    Err(e) => return Err(format!("receiving the {size}-byte echo: {e}")),
                }
            }
        }
        let d = t.elapsed();
        if d > slowest.0 {
            slowest = (d, size);
        }
        bytes += size as u64;
    }
    let d = t0.elapsed();
    Ok(format!(
        "UDP echo of every payload size from 1 to {NIC_UDP_MAX} bytes checked ({bytes} bytes each way) in {} ms ({} us per round trip on average), slowest {} ms (size {}), {} datagram(s) sent again {:?}, {stale} late echo(es)",
        d.as_millis(),
        d.as_micros() / NIC_UDP_MAX as u128,
        slowest.0.as_millis(),
        slowest.1,
        resent.len(),
        &resent[..resent.len().min(16)]
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("udp") => udp(),
        _ => Err("usage: lab-nicheck udp".into()),
    };
    match r {
        Ok(s) => {
            println!("lab-nicheck: {s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("lab-nicheck: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
