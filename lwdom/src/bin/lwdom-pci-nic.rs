//! Lab scenario `pci-nic`: QEMU's `e1000e` (an Intel 82574L) passed
//! through to lwdom, driven by the domain itself.
//!
//! The guest connects pcifront to dom0's xen-pciback, finds the 82574L
//! among the devices it exports, brings it up with `passthrough::e1000e`
//! over lwdom's `LwPci` platform (BAR 0 mapped, rings and buffers in DMA
//! memory, MSI-X with one vector each for RX, TX and other causes, each
//! vector a pirq bound to an event channel) in interrupt mode, and runs
//! smoltcp on it (`netfront::phy::SmolDevice`: the driver's DMA buffers
//! lent in place) as `10.0.12.2/24`. On the same QEMU hub dom0 has an
//! e1000 (`10.0.12.1`); it pings the guest 100 times (smoltcp answers)
//! and `lab-nicheck` sends a UDP datagram of every payload size from 1 to
//! 1472 bytes to port 7: the guest checks each against
//! `lab_proto::nic_udp_payload` of its size before it echoes it, and every
//! size must have been seen. dom0 then writes `data/pcinic-done`.
//!
//! The guest prints the link (speed and duplex from `STATUS`), the MAC,
//! the MSI-X vectors with their pirqs and event channels, the driver's
//! counters (frames, bytes, errors, interrupts taken) and the device's own
//! statistics registers (good frames received and sent, frames missed for
//! want of a descriptor), read through a second mapping of BAR 0; the
//! driver's and the device's frame counts must agree.
//!
//! The verdict goes to `data/pcinic-result` (`ok <figures>` or `fail
//! <reason>`); the scenario script checks it and dom0's side.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use lwdom::lab_proto::{
    nic_udp_check, NIC_DONE_KEY, NIC_GUEST_IP, NIC_PREFIX, NIC_RESULT_KEY, NIC_STAGE_KEY,
    NIC_UDP_ECHO_PORT, NIC_UDP_MAX,
};
use lwdom::println;
use lwdom::rt::pcidev::{LwMmio, LwPci};
use netfront::phy::smoltcp;
use netfront::phy::SmolDevice;
use netfront::{FrameDevice, FrameError};
use passthrough::config::DeviceInfo;
use passthrough::e1000e::regs::{DEVICE_82574L, VENDOR_INTEL};
use passthrough::e1000e::{self, E1000e, IrqMode, MSIX_OTHER, MSIX_RX, MSIX_TX};
use passthrough::{Mmio, PciPlatform};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use lwdom::rt::report::ms_since;

lwdom::program!(main);

/// How long the whole scenario may take in the guest.
const DEADLINE: Duration = Duration::from_secs(600);
/// How long bring-up waits for the link.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the guest looks for dom0's `data/pcinic-done`.
const DONE_POLL_NS: u64 = 100_000_000;

/// 82574L registers the scenario reads itself (Intel's 82574 datasheet,
/// section 10): device status, and statistics that clear when read.
const REG_STATUS: usize = 0x0008;
const REG_MPC: usize = 0x4010;
const REG_GPRC: usize = 0x4074;
const REG_GPTC: usize = 0x4080;
/// `STATUS` bits: full duplex, link up, speed.
const STATUS_FD: u32 = 1 << 0;
const STATUS_LU: u32 = 1 << 1;
const STATUS_SPEED_SHIFT: u32 = 6;

type R<T> = Result<T, String>;

fn main() -> R<()> {
    lwdom::rt::report::log_to_console();
    let r = run();
    lwdom::rt::report::verdict("pci-nic", NIC_RESULT_KEY, r)
}

fn now() -> u64 {
    lwdom::rt::time::now_ns()
}

fn smol_now() -> Instant {
    Instant::from_micros((now() / 1000) as i64)
}

/// The link as `STATUS` gives it.
fn link_text(status: u32) -> String {
    let speed = match (status >> STATUS_SPEED_SHIFT) & 3 {
        0 => "10",
        1 => "100",
        _ => "1000",
    };
    format!(
        "{} at {speed} Mb/s {} duplex (STATUS {status:#010x})",
        if status & STATUS_LU != 0 {
            "up"
        } else {
            "down"
        },
        if status & STATUS_FD != 0 {
            "full"
        } else {
            "half"
        }
    )
}

/// The device's statistics since the last read (they clear when read):
/// good frames received, good frames sent, frames missed.
fn device_counts(regs: &LwMmio) -> R<(u64, u64, u64)> {
    let rd = |r: usize| {
        regs.read32(r)
            .map(u64::from)
            .map_err(|e| format!("reading the statistics register {r:#x}: {e}"))
    };
    Ok((rd(REG_GPRC)?, rd(REG_GPTC)?, rd(REG_MPC)?))
}

fn mac_text(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// What dom0 wrote to `data/pcinic-done`, if anything yet.
fn dom0_done() -> R<Option<String>> {
    lwdom::rt::with_xenstore(|xs| xs.try_read(NIC_DONE_KEY))
        .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
        .map_err(|e| format!("reading {NIC_DONE_KEY}: {e}"))
}

fn run() -> R<String> {
    let t_all = now();
    let deadline = t_all.saturating_add(DEADLINE.as_nanos() as u64);
    let mut pci = lwdom::rt::with_xenstore(|xs| LwPci::connect(xs, Duration::from_secs(30)))
        .map_err(|e| format!("pcifront: {e}"))?;
    let devices = pci.devices().map_err(|e| e.to_string())?;
    println!(
        "pci-nic: pcifront connected in {} ms; devices: {devices:?}",
        ms_since(t_all)
    );
    let mut found = None;
    for &bdf in &devices {
        let info =
            DeviceInfo::probe(pci.config(), bdf).map_err(|e| format!("probing {bdf}: {e}"))?;
        if info.header.vendor_id == VENDOR_INTEL && info.header.device_id == DEVICE_82574L {
            found = Some((bdf, info));
            break;
        }
    }
    let (bdf, info) = found.ok_or_else(|| {
        format!("no Intel 82574L ({VENDOR_INTEL:04x}:{DEVICE_82574L:04x}) among the devices pcifront exports: {devices:?}")
    })?;
    let bar0 = *info.bar(0).ok_or("the 82574L has no BAR 0")?;
    let msix = info.msix.ok_or("the 82574L has no MSI-X capability")?;
    println!(
        "pci-nic: 82574L at {bdf}: BAR 0 {:#x} ({} KiB), MSI-X table of {} entries",
        bar0.address,
        bar0.size / 1024,
        msix.table_size
    );
    // A second mapping of the registers, for STATUS and the statistics.
    let regs = pci
        .map_bar(bdf, &bar0)
        .map_err(|e| format!("mapping BAR 0: {e}"))?;
    // The device's statistics counted from here on (the reads clear them;
    // the reset in bring-up may clear them too): before the receiver is
    // on, so that every frame the driver sees is in them.
    device_counts(&regs)?;

    let t = now();
    let config = e1000e::Config {
        mode: IrqMode::Interrupts,
        link_timeout_ns: LINK_TIMEOUT.as_nanos() as u64,
        ..e1000e::Config::default()
    };
    let mut dev =
        E1000e::new(&pci, bdf, config).map_err(|e| format!("bringing up the e1000e: {e}"))?;
    let up_ms = ms_since(t);
    let link_deadline = now().saturating_add(LINK_TIMEOUT.as_nanos() as u64);
    while !dev.link().up {
        if now() > link_deadline {
            let status = regs.read32(REG_STATUS).map_err(|e| e.to_string())?;
            return Err(format!(
                "the link is not up {} s after bring-up: {}",
                LINK_TIMEOUT.as_secs(),
                link_text(status)
            ));
        }
        dev.wait(Some(100_000_000))
            .map_err(|e| format!("waiting for the link: {e}"))?;
    }
    let status = regs.read32(REG_STATUS).map_err(|e| e.to_string())?;
    let link = link_text(status);
    let mac = mac_text(&dev.mac());
    let ports = dev.ports();
    let pirqs = pci.pirqs(bdf);
    let vectors: Vec<String> = [("RX", MSIX_RX), ("TX", MSIX_TX), ("other", MSIX_OTHER)]
        .iter()
        .zip(ports.iter())
        .enumerate()
        .map(|(i, ((name, entry), port))| {
            let pirq = pirqs
                .get(i)
                .filter(|p| p.1 == *port)
                .map_or("?".to_string(), |p| {
                    format!("{}{}", p.0, if p.2 { " (EOI)" } else { "" })
                });
            format!("{name}: entry {entry} pirq {pirq} {port}")
        })
        .collect();
    if pirqs.len() != 3 {
        return Err(format!(
            "{} pirqs bound for {bdf} after MSI-X was enabled with 3 entries: {pirqs:?}",
            pirqs.len()
        ));
    }
    let vectors = vectors.join(", ");
    println!("pci-nic: e1000e up in {up_ms} ms: MAC {mac}, link {link}");
    println!("pci-nic: MSI-X vectors: {vectors}");

    let tx_free = dev.tx_buffers_free();
    let mut smol = SmolDevice::new(dev);
    let mut iface_cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(
        smol.inner().mac(),
    )));
    iface_cfg.random_seed = now();
    let mut iface = Interface::new(iface_cfg, &mut smol, smol_now());
    let [a, b, c, d] = NIC_GUEST_IP;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), NIC_PREFIX));
    });
    let mut sockets = SocketSet::new(vec![]);
    let udp_buf =
        || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]);
    let mut us = udp::Socket::new(udp_buf(), udp_buf());
    us.bind(NIC_UDP_ECHO_PORT)
        .map_err(|e| format!("binding UDP port {NIC_UDP_ECHO_PORT}: {e}"))?;
    let udp_h = sockets.add(us);
    lwdom::rt::xs_write(NIC_STAGE_KEY, "ready")
        .map_err(|e| format!("writing {NIC_STAGE_KEY}: {e}"))?;
    println!("pci-nic: smoltcp up as {a}.{b}.{c}.{d}/{NIC_PREFIX}; waiting for dom0");

    let mut sizes = vec![false; NIC_UDP_MAX + 1];
    let (mut udp_seen, mut udp_datagrams, mut udp_unechoed) = (0usize, 0u64, 0u64);
    let mut echo = [0u8; NIC_UDP_MAX];
    let mut last_xs = 0u64;
    let done = loop {
        if now() > deadline {
            return Err(format!(
                "dom0 did not write {NIC_DONE_KEY} within {} s: UDP sizes seen {udp_seen}; {:?}",
                DEADLINE.as_secs(),
                smol.inner().stats()
            ));
        }
        iface.poll(smol_now(), &mut smol, &mut sockets);
        match smol.inner_mut().poll() {
            Ok(_) | Err(FrameError::LinkDown) => {}
            Err(e) => return Err(format!("the e1000e failed: {e}")),
        }

        // UDP echo, each datagram checked.
        let u = sockets.get_mut::<udp::Socket>(udp_h);
        while u.can_recv() {
            let (n, ep) = match u.recv() {
                Ok((data, meta)) => {
                    if !nic_udp_check(data) {
                        return Err(format!(
                            "a {}-byte UDP datagram from dom0 does not hold the payload of its size",
                            data.len()
                        ));
                    }
                    let n = data.len();
                    echo[..n].copy_from_slice(data);
                    (n, meta.endpoint)
                }
                Err(_) => break,
            };
            udp_datagrams += 1;
            if let Some(seen) = sizes.get_mut(n) {
                if !*seen {
                    *seen = true;
                    udp_seen += 1;
                }
            }
            if u.send_slice(&echo[..n], ep).is_err() {
                // No room: dom0 sends the datagram again.
                udp_unechoed += 1;
            }
        }
        // Send the echoes now rather than after the wait.
        iface.poll(smol_now(), &mut smol, &mut sockets);

        if now().saturating_sub(last_xs) > DONE_POLL_NS {
            last_xs = now();
            if let Some(v) = dom0_done()? {
                break v;
            }
        }
        let delay = iface
            .poll_delay(smol_now(), &sockets)
            .map_or(DONE_POLL_NS, |d| d.total_micros().saturating_mul(1000))
            .min(DONE_POLL_NS);
        match smol.inner_mut().wait(Some(delay)) {
            Ok(_) | Err(FrameError::LinkDown) => {}
            Err(e) => return Err(format!("the e1000e failed while waiting: {e}")),
        }
    };

    let mut dev = smol.into_inner();
    // Let the frames in flight go out, so that the driver's count of
    // frames sent is the device's.
    let t = now();
    while dev.tx_buffers_free() < tx_free && now().saturating_sub(t) < 1_000_000_000 {
        dev.wait(Some(10_000_000))
            .map_err(|e| format!("the e1000e failed while sending the last frames: {e}"))?;
    }
    let rx_before = dev.stats().rx_frames;
    let (gprc, gptc, mpc) = device_counts(&regs)?;
    // Frames the device counted may still wait in the ring.
    let mut drained = 0u64;
    while dev
        .receive()
        .map_err(|e| format!("the e1000e failed: {e}"))?
        .is_some()
    {
        drained += 1;
    }
    let stats = dev.stats();
    let counts = format!(
        "driver: {} frames / {} bytes received, {} / {} bytes sent, {} RX errors, {} TX errors, {} interrupts taken, {} link changes; device (GPRC/GPTC/MPC): {gprc} good frames received, {gptc} sent, {mpc} missed",
        stats.rx_frames,
        stats.rx_bytes,
        stats.tx_frames,
        stats.tx_bytes,
        stats.rx_errors,
        stats.tx_errors,
        stats.interrupts,
        stats.link_changes
    );
    println!("pci-nic: {counts}");
    if let Some(why) = done.strip_prefix("failed") {
        return Err(format!("dom0's checks failed:{why}; {counts}"));
    }
    if done != "done" {
        return Err(format!("dom0 wrote {NIC_DONE_KEY} = {done:?}"));
    }
    if udp_seen != NIC_UDP_MAX {
        let missing: Vec<usize> = (1..=NIC_UDP_MAX).filter(|&s| !sizes[s]).take(8).collect();
        return Err(format!(
            "dom0 is done but the guest saw only {udp_seen} of the {NIC_UDP_MAX} UDP sizes (first missing: {missing:?})"
        ));
    }
    if gprc < rx_before || gprc > rx_before + drained {
        return Err(format!(
            "the driver had lent {rx_before} received frames (and {drained} more waited in the ring) when the device had counted {gprc} good ones: {counts}"
        ));
    }
    if stats.tx_frames != gptc {
        return Err(format!(
            "the driver sent {} frames, the device counted {gptc}: {counts}",
            stats.tx_frames
        ));
    }
    if stats.interrupts == 0 {
        return Err(format!(
            "no MSI-X interrupt was taken in interrupt mode: {counts}"
        ));
    }
    // The device off and MSI-X disabled (through pcifront) first.
    drop(dev);
    // Then pcifront, in order: xen-pciback unmaps its page before the
    // page's grant ends.
    let t = now();
    let r = lwdom::rt::with_xenstore(|xs| pci.close_front(xs, Duration::from_secs(20)));
    let closed = match r {
        Ok(()) => format!("pcifront closed in order in {} ms", ms_since(t)),
        Err(e) => {
            log::warn!("{e}");
            format!("pcifront not closed in order: {e}")
        }
    };
    println!("pci-nic: {closed}");
    Ok(format!(
        "82574L at {bdf}, MAC {mac}, link {link}; MSI-X {vectors}; UDP echo: {udp_datagrams} datagrams, all {NIC_UDP_MAX} sizes checked ({udp_unechoed} not echoed for want of room); {counts}; {closed}; {} s in all",
        ms_since(t_all) / 1000
    ))
}
