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
use std::time::Duration;

use lab::udp::echo_every_size;

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
    let r = echo_every_size(
        &sock,
        NIC_UDP_MAX,
        UDP_TRIES,
        nic_udp_payload,
        nic_udp_check,
    )?;
    Ok(format!(
        "UDP echo of every payload size from 1 to {NIC_UDP_MAX} bytes checked ({} bytes each way) in {} ms ({} us per round trip on average), slowest {} ms (size {}), {} datagram(s) sent again {:?}, {} late echo(es)",
        r.bytes,
        r.elapsed.as_millis(),
        r.elapsed.as_micros() / NIC_UDP_MAX as u128,
        r.slowest.0.as_millis(),
        r.slowest.1,
        r.resent.len(),
        &r.resent[..r.resent.len().min(16)],
        r.stale
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
