//! Lab scenario `pci-edu`: QEMU's `edu` device passed through to lwdom.
//!
//! The guest connects pcifront to dom0's xen-pciback, finds the edu among
//! the devices it exports, and with `passthrough::edu` (over lwdom's
//! `LwPci` platform) checks identification and liveness through the
//! mapped BAR0, computes factorials with the MSI on an event channel,
//! raises the edu's interrupt itself and takes each MSI as an event (three
//! in a row: each is delivered only after the previous one's EOI), and
//! DMAs patterns both ways between the device and a two-page buffer
//! exchanged below the edu's 28-bit mask (transfers crossing the page
//! boundary, so the buffer must be machine-contiguous). Xen refuses to map
//! device memory the domain was not given (the IOMMU's registers). Then a
//! DMA from a machine page that is not the domain's: the IOMMU refuses it
//! (dom0 finds the fault in `xl dmesg`, at the address the guest writes to
//! `data/pci-stray`), and the device and guest go on working (a factorial
//! and a DMA round trip after it).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use grant_tables::EventChannels;
use lwdom::println;
use lwdom::rt::pci as lwpci;
use lwdom::rt::pcidev::LwPci;
use passthrough::config::DeviceInfo;
use passthrough::edu::{self, Direction, Edu, IrqMode};
use passthrough::{DmaBuffer, Mmio, PciPlatform};

use lwdom::rt::report::ms_since;

lwdom::program!(main);

/// The guest's verdict.
const RESULT_KEY: &str = "data/pci-result";
/// The bus address of the stray DMA, for dom0's check of `xl dmesg`.
const STRAY_KEY: &str = "data/pci-stray";

/// edu's interrupt registers: raise and acknowledge (QEMU's edu.rst), and
/// the status bit the guest raises (neither the factorial's 0x1 nor the
/// DMA's 0x100).
const REG_IRQ_STATUS: usize = 0x24;
const REG_IRQ_RAISE: usize = 0x60;
const REG_IRQ_ACK: usize = 0x64;
const OWN_IRQ: u32 = 0x0001_0000;

/// The VT-d unit's registers in QEMU's q35 (Xen's own, never a guest's).
const IOMMU_REGS: u64 = 0xfed9_0000;

type R<T> = Result<T, String>;

fn main() -> R<()> {
    lwdom::rt::report::log_to_console();
    let r = run();
    lwdom::rt::report::verdict("pci-edu", RESULT_KEY, r)
}

fn now() -> u64 {
    lwdom::rt::time::now_ns()
}

/// Byte `i` of pattern `seed`.
fn pattern(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8
}

fn run() -> R<String> {
    let t = now();
    let pci = lwdom::rt::with_xenstore(|xs| LwPci::connect(xs, Duration::from_secs(30)))
        .map_err(|e| format!("pcifront: {e}"))?;
    let devices = pci.devices().map_err(|e| e.to_string())?;
    println!(
        "pci-edu: pcifront connected in {} ms; devices: {devices:?}",
        ms_since(t)
    );
    let bdf = edu::find(&pci).map_err(|e| format!("finding the edu: {e}"))?;
    let info = DeviceInfo::probe(pci.config(), bdf).map_err(|e| format!("probing {bdf}: {e}"))?;
    let bar0 = *info.bar(0).ok_or("the edu has no BAR0")?;
    println!(
        "pci-edu: edu at {bdf}: {:04x}:{:04x}, BAR0 {:#x} ({} KiB), MSI {:?}",
        info.header.vendor_id,
        info.header.device_id,
        bar0.address,
        bar0.size / 1024,
        info.msi
            .map(|m| (m.max_vectors, m.is_64bit, m.per_vector_masking))
    );

    // Device memory the domain was not given: Xen refuses the mapping.
    let refused = match lwpci::map_mmio(IOMMU_REGS, 4096) {
        Ok(m) => {
            return Err(format!(
                "Xen mapped the IOMMU's registers at {:#x} for this domain",
                m.machine_address()
            ))
        }
        Err(e) => e,
    };
    println!(
        "pci-edu: mapping the IOMMU's registers ({IOMMU_REGS:#x}) refused as it must be: {refused}"
    );

    let mut dev =
        Edu::open(&pci, bdf, IrqMode::Interrupt).map_err(|e| format!("opening the edu: {e}"))?;
    let port = dev
        .port()
        .ok_or("the edu driver has no MSI port in interrupt mode")?;
    let pirqs = pci.pirqs(bdf);
    println!("pci-edu: identification and liveness checked; MSI: pirq/port/needs-EOI {pirqs:?}");
    let id = dev.check_identification().map_err(|e| e.to_string())?;

    // Factorials, each completion an MSI.
    let t = now();
    let mut facts = Vec::new();
    for n in [0u32, 1, 5, 10, 12, 13, 20] {
        let f = dev
            .factorial(n)
            .map_err(|e| format!("factorial of {n}: {e}"))?;
        facts.push(format!("{n}!={f}"));
    }
    println!(
        "pci-edu: factorials checked in {} ms: {}",
        ms_since(t),
        facts.join(" ")
    );

    // The edu's interrupt raised by the guest, taken as events: a second
    // MSI arrives only once the first was ended (EOI).
    let regs = pci
        .map_bar(bdf, &bar0)
        .map_err(|e| format!("mapping BAR0 a second time: {e}"))?;
    let mut msi_ms = Vec::new();
    for i in 0..3 {
        // Nothing pending before the raise.
        let _ = pci.poll(port);
        let t = now();
        regs.write32(REG_IRQ_RAISE, OWN_IRQ)
            .map_err(|e| e.to_string())?;
        let got = pci
            .block(port, Some(5_000_000_000))
            .map_err(|e| format!("waiting for MSI {i}: {e}"))?;
        let status = regs.read32(REG_IRQ_STATUS).map_err(|e| e.to_string())?;
        regs.write32(REG_IRQ_ACK, OWN_IRQ)
            .map_err(|e| e.to_string())?;
        if !got {
            return Err(format!("MSI {i} (raised by the guest) did not arrive on port {port} within 5 s; edu interrupt status {status:#x}"));
        }
        if status & OWN_IRQ == 0 {
            return Err(format!(
                "MSI {i} arrived but the edu's interrupt status is {status:#x}"
            ));
        }
        msi_ms.push(ms_since(t));
    }
    drop(regs);
    println!("pci-edu: 3 MSIs raised by the guest taken on {port} (ms each: {msi_ms:?})");

    // DMA both ways through a two-page buffer below the 28-bit mask.
    let a = dev
        .alloc_dma(8192)
        .map_err(|e| format!("DMA buffer A: {e}"))?;
    let b = dev
        .alloc_dma(8192)
        .map_err(|e| format!("DMA buffer B: {e}"))?;
    for (name, buf) in [("A", &a), ("B", &b)] {
        let bus = buf.bus_addr();
        let last = bus + buf.len() as u64 - 1;
        if last > edu::DMA_MASK || bus % 8192 != 0 {
            return Err(format!("DMA buffer {name} at bus {bus:#x}..{last:#x} is not an aligned extent below the edu's mask"));
        }
        println!(
            "pci-edu: DMA buffer {name}: {} bytes at bus address {bus:#x}",
            buf.len()
        );
    }
    let mut moved = 0usize;
    let t = now();
    // (seed, offset in A, device offset, offset in B, length)
    let transfers = [
        (1u8, 3072usize, 0usize, 1024usize, 2048usize),
        (2, 0, 100, 4000, 2048),
        (3, 4095, 2047, 4093, 7),
        (4, 8191, 0, 0, 1),
        (5, 2000, 512, 5000, 1500),
    ];
    for (seed, off_a, dev_off, off_b, len) in transfers {
        let want: Vec<u8> = (0..len).map(|i| pattern(seed, i)).collect();
        a.write_from(off_a, &want).map_err(|e| e.to_string())?;
        let zero = vec![0u8; 8192];
        b.write_from(0, &zero).map_err(|e| e.to_string())?;
        dev.dma_to_device(&a, off_a, dev_off, len)
            .map_err(|e| format!("DMA of {len} bytes to the device: {e}"))?;
        dev.dma_from_device(&b, off_b, dev_off, len)
            .map_err(|e| format!("DMA of {len} bytes from the device: {e}"))?;
        let mut got = vec![0u8; 8192];
        b.read_into(0, &mut got).map_err(|e| e.to_string())?;
        if got[off_b..off_b + len] != want[..] {
            let at = (0..len).find(|&i| got[off_b + i] != want[i]).unwrap_or(0);
            return Err(format!(
                "DMA round trip of {len} bytes (A+{off_a} -> edu+{dev_off} -> B+{off_b}): byte {at} is {:#04x}, expected {:#04x}",
                got[off_b + at],
                want[at]
            ));
        }
        if let Some(i) = got
            .iter()
            .enumerate()
            .position(|(i, &v)| v != 0 && !(off_b..off_b + len).contains(&i))
        {
            return Err(format!(
                "DMA round trip of {len} bytes into B+{off_b} also wrote B+{i}"
            ));
        }
        moved += 2 * len;
    }
    println!("pci-edu: {} DMA round trips checked ({moved} bytes, transfers across the page boundary) in {} ms", transfers.len(), ms_since(t));

    // A DMA from a machine page that is not this domain's.
    let frame = lwpci::foreign_frame(0x100, edu::DMA_MASK >> 12)
        .ok_or("no machine frame below the edu's mask that is not this domain's")?;
    let stray = frame << 12;
    lwdom::rt::xs_write(STRAY_KEY, &format!("{stray:x}"))
        .map_err(|e| format!("writing {STRAY_KEY}: {e}"))?;
    // The device buffer holds a known pattern before the stray read.
    let before: Vec<u8> = (0..256).map(|i| pattern(9, i)).collect();
    a.write_from(0, &before).map_err(|e| e.to_string())?;
    dev.dma_to_device(&a, 0, 0, 256)
        .map_err(|e| e.to_string())?;
    println!("pci-edu: DMA from bus address {stray:#x} (machine frame {frame:#x}, not this domain's) into the edu");
    let stray_result = dev.dma_to_bus_address(Direction::ToDevice, stray, 0, 256);
    println!("pci-edu: the stray DMA completed with {stray_result:?}");
    dev.dma_from_device(&b, 0, 0, 256)
        .map_err(|e| format!("reading the device buffer after the stray DMA: {e}"))?;
    let mut after = vec![0u8; 256];
    b.read_into(0, &mut after).map_err(|e| e.to_string())?;
    let kept = after == before;
    let zeroes = after.iter().all(|&v| v == 0);
    println!(
        "pci-edu: the edu's buffer after it: {}",
        if kept {
            "unchanged"
        } else if zeroes {
            "zeroes (the refused read returned nothing)"
        } else {
            "changed"
        }
    );
    // The device and the domain go on.
    let f = dev
        .factorial(11)
        .map_err(|e| format!("factorial after the stray DMA: {e}"))?;
    let want: Vec<u8> = (0..2048).map(|i| pattern(7, i)).collect();
    a.write_from(2048, &want).map_err(|e| e.to_string())?;
    dev.dma_to_device(&a, 2048, 1024, 2048)
        .map_err(|e| format!("DMA after the stray one: {e}"))?;
    dev.dma_from_device(&b, 4096, 1024, 2048)
        .map_err(|e| format!("DMA after the stray one: {e}"))?;
    let mut got = vec![0u8; 2048];
    b.read_into(4096, &mut got).map_err(|e| e.to_string())?;
    if got != want {
        return Err("the DMA round trip after the stray DMA does not match".into());
    }
    println!("pci-edu: after the stray DMA: 11! = {f}, a 2048-byte round trip checked");
    drop(dev);
    drop((a, b));
    let mut pci = pci;
    match lwdom::rt::with_xenstore(|xs| pci.close_front(xs, Duration::from_secs(20))) {
        Ok(()) => println!("pci-edu: pcifront closed"),
        Err(e) => println!("pci-edu: warning: {e}"),
    }
    Ok(format!(
        "edu at {bdf} id {id:#010x}; {} factorials with MSI; 3 guest-raised MSIs; {} DMA round trips ({moved} bytes) below 2^28; foreign MMIO refused; stray DMA from {stray:#x} ({}), device still working",
        facts.len(),
        transfers.len(),
        if kept { "edu buffer unchanged" } else if zeroes { "read as zeroes" } else { "edu buffer changed" }
    ))
}
