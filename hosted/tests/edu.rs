//! The edu driver (`passthrough::edu`) against the hosted PCI bus and its
//! edu model: identification, liveness, factorial with MSI and polling,
//! DMA both ways, the IOMMU refusing stray DMA, and devices that lie.

#[path = "platform_common/mod.rs"]
mod common;

use std::time::Duration;

use common::TestDir;
use grant_tables::{DomId, EventChannels, PageAllocator, SharedPages};
use hosted::pci::edu::{EduFailure, EduFaults, EduModel, EduTiming, EDU_DMA_BUFFER, EDU_IDENTIFICATION};
use hosted::pci::{
    BarSpec, ConfigSpace, DeviceCtx, DeviceModel, HostedPci, LayoutError, CONFIG_SPACE_PCI,
    STATUS_RECEIVED_MASTER_ABORT,
};
use hosted::{DomainConfig, HostedHypervisor, HostedPlatform};
use passthrough::config::{enable_memory_and_bus_master, DeviceInfo, STATUS};
use passthrough::dma::DmaBuffer;
use passthrough::edu::{self, Direction, Edu, EduError, IrqMode, DMA_MASK, MAX_TRANSFER};
use passthrough::mmio::Mmio;
use passthrough::{Bdf, ConfigAccess, PciError, PciPlatform};

const EDU_BDF: Bdf = match Bdf::new(0, 0, 3, 0) {
    Some(b) => b,
    None => panic!("a valid address"),
};
const MS: u64 = 1_000_000;

/// A bus for dom1 (dropped before the hypervisor and the directory).
struct Setup {
    pci: HostedPci,
    _hv: HostedHypervisor,
    _dir: TestDir,
}

fn setup_with(tag: &str, config: DomainConfig) -> Setup {
    let dir = TestDir::new(tag);
    let hv = HostedHypervisor::create(&dir.0).expect("hypervisor");
    let dom = HostedPlatform::join_with(&dir.0, DomId(1), config).expect("dom1");
    Setup { pci: HostedPci::new(dom), _hv: hv, _dir: dir }
}

fn setup(tag: &str, model: EduModel) -> Setup {
    let s = setup_with(tag, DomainConfig::default());
    s.pci.plug(EDU_BDF, model).expect("plug edu");
    s
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

#[test]
fn finds_the_edu_and_checks_identification_and_liveness() {
    let s = setup("edu-id", EduModel::new());
    assert_eq!(edu::find(&s.pci).unwrap(), EDU_BDF);
    let info = DeviceInfo::probe(s.pci.config(), EDU_BDF).unwrap();
    assert_eq!((info.header.vendor_id, info.header.device_id), (0x1234, 0x11e8));
    assert_eq!(info.header.revision, 0x10);
    assert_eq!(info.header.class >> 16, 0xff);
    let bar0 = info.bar(0).expect("BAR0");
    assert_eq!(bar0.size, 1 << 20);
    assert_ne!(bar0.address, 0);
    let msi = info.msi.expect("MSI capability");
    assert_eq!(msi.max_vectors, 1);
    assert!(msi.is_64bit && !msi.per_vector_masking);
    assert!(info.msix.is_none());

    let mut dev = Edu::open(&s.pci, EDU_BDF, IrqMode::Polling).unwrap();
    assert_eq!(dev.check_identification().unwrap(), EDU_IDENTIFICATION);
    dev.check_liveness().unwrap();
    assert_eq!(s.pci.config().read16(EDU_BDF, 4).unwrap() & 0x6, 0x6, "memory decoding and bus mastering on");
    drop(dev);
    assert_eq!(s.pci.config().read16(EDU_BDF, 4).unwrap() & 0x4, 0, "bus mastering off once the driver is gone");
}

#[test]
fn mmio_follows_qemu_access_rules() {
    let s = setup("edu-mmio", EduModel::new());
    let info = DeviceInfo::probe(s.pci.config(), EDU_BDF).unwrap();
    let regs = s.pci.map_bar(EDU_BDF, info.bar(0).unwrap()).unwrap();
    // Memory decoding is off until the driver turns it on.
    assert_eq!(regs.read32(0).unwrap(), u32::MAX);
    enable_memory_and_bus_master(s.pci.config(), EDU_BDF).unwrap();
    assert_eq!(regs.read32(0).unwrap(), EDU_IDENTIFICATION);
    // Registers below 0x80 take 4-byte accesses only.
    assert_eq!(regs.read16(0).unwrap(), 0xffff);
    regs.write32(4, 0x0f0f_0000).unwrap();
    assert_eq!(regs.read32(4).unwrap(), 0xf0f0_ffff);
    regs.write16(4, 0).unwrap();
    assert_eq!(regs.read32(4).unwrap(), 0xf0f0_ffff);
    // The DMA registers take 8 bytes.
    regs.write64(0x80, 0x1234_5678_9abc).unwrap();
    assert_eq!(regs.read64(0x80).unwrap(), 0x1234_5678_9abc);
    // Out of the BAR: refused by the accessor, not sent to the device.
    assert!(matches!(regs.read32(1 << 20), Err(PciError::OutOfBounds { .. })));
    assert!(matches!(regs.read32(2), Err(PciError::Misaligned { .. })));
}

#[test]
fn factorial_with_msi_blocks_on_the_event_channel() {
    let s = setup("edu-fact-irq", EduModel::new());
    let mut dev = Edu::open(&s.pci, EDU_BDF, IrqMode::Interrupt).unwrap();
    let port = dev.port().expect("MSI port");
    assert!(!s.pci.poll(port).unwrap(), "no interrupt before any work");
    let before = s.pci.interrupts_delivered(EDU_BDF);
    assert_eq!(dev.factorial(10).unwrap(), 3_628_800);
    assert_eq!(dev.factorial(12).unwrap(), 479_001_600);
    assert_eq!(dev.factorial(13).unwrap(), edu::factorial_u32(13));
    assert_eq!(dev.factorial(0).unwrap(), 1);
    assert_eq!(s.pci.interrupts_delivered(EDU_BDF) - before, 4, "one MSI per factorial");
    assert_eq!(s.pci.intx_level(EDU_BDF), Some(false), "MSI, not INTx");
}

#[test]
fn msi_wakes_a_thread_blocked_on_its_port() {
    let s = setup(
        "edu-msi-wake",
        EduModel::with(
            EduTiming { factorial: Duration::from_millis(30), ..EduTiming::default() },
            EduFaults::default(),
        ),
    );
    let dev = Edu::open(&s.pci, EDU_BDF, IrqMode::Interrupt).unwrap();
    let port = dev.port().unwrap();
    let info = DeviceInfo::probe(s.pci.config(), EDU_BDF).unwrap();
    let regs = s.pci.map_bar(EDU_BDF, info.bar(0).unwrap()).unwrap();
    regs.write32(0x20, 0x80).unwrap();
    let t0 = std::time::Instant::now();
    regs.write32(0x08, 5).unwrap();
    assert!(s.pci.block(port, Some(5_000 * MS)).unwrap(), "the MSI came");
    assert!(t0.elapsed() >= Duration::from_millis(25), "woken by the device, not at once");
    assert_eq!(regs.read32(0x24).unwrap(), 0x1);
    assert_eq!(regs.read32(0x08).unwrap(), 120);
    regs.write32(0x64, 0x1).unwrap();
    // Raising by hand sends one too.
    regs.write32(0x60, 0x40).unwrap();
    assert!(s.pci.block(port, Some(5_000 * MS)).unwrap());
    assert_eq!(regs.read32(0x24).unwrap(), 0x40);
}

#[test]
fn factorial_in_polling_mode_sends_no_interrupt() {
    let s = setup("edu-fact-poll", EduModel::new());
    let mut dev = Edu::open(&s.pci, EDU_BDF, IrqMode::Polling).unwrap();
    assert!(dev.port().is_none());
    assert_eq!(dev.factorial(5).unwrap(), 120);
    assert_eq!(dev.factorial(11).unwrap(), 39_916_800);
    assert_eq!(s.pci.interrupts_delivered(EDU_BDF), 0);
}

fn dma_round_trips(mode: IrqMode, tag: &str) {
    let s = setup(tag, EduModel::new());
    let mut dev = Edu::open(&s.pci, EDU_BDF, mode).unwrap();
    let src = dev.alloc_dma(4096).unwrap();
    let dst = dev.alloc_dma(4096).unwrap();
    for b in [&src, &dst] {
        assert!(b.bus_addr() + 4095 <= DMA_MASK, "buffer at {:#x} is above the 28-bit mask", b.bus_addr());
    }
    let data = pattern(4096, 7);
    src.write_from(0, &data).unwrap();
    // RAM -> device -> RAM, 2048 bytes at a time (the device buffer holds
    // 4096, but a transfer must end before its last byte).
    dev.dma_to_device(&src, 0, 0, MAX_TRANSFER).unwrap();
    dev.dma_from_device(&dst, 0, 0, MAX_TRANSFER).unwrap();
    dev.dma_to_device(&src, 2048, 100, 2048).unwrap();
    dev.dma_from_device(&dst, 2048, 100, 2048).unwrap();
    let mut back = vec![0u8; 4096];
    dst.read_into(0, &mut back).unwrap();
    assert_eq!(back, data);
    // A short transfer at an odd place lands exactly there.
    let small = pattern(333, 99);
    src.write_from(17, &small).unwrap();
    dev.dma_to_device(&src, 17, 3000, 333).unwrap();
    let out = dev.alloc_dma(8192).unwrap();
    dev.dma_from_device(&out, 4090, 3000, 333).unwrap();
    let mut got = vec![0u8; 8192];
    out.read_into(0, &mut got).unwrap();
    assert!(got[..4090].iter().all(|&b| b == 0));
    assert_eq!(&got[4090..4090 + 333], &small[..]);
    assert!(got[4090 + 333..].iter().all(|&b| b == 0));
    let irqs = s.pci.interrupts_delivered(EDU_BDF);
    match mode {
        IrqMode::Interrupt => assert_eq!(irqs, 6, "one MSI per transfer"),
        IrqMode::Polling => assert_eq!(irqs, 0),
    }
    assert_eq!(s.pci.iommu_fault_count(), 0);
}

#[test]
fn dma_both_ways_with_completion_interrupts() {
    dma_round_trips(IrqMode::Interrupt, "edu-dma-irq");
}

#[test]
fn dma_both_ways_polling() {
    dma_round_trips(IrqMode::Polling, "edu-dma-poll");
}

#[test]
fn transfers_the_device_cannot_take_are_refused_before_it_sees_them() {
    let s = setup("edu-dma-bad", EduModel::new());
    let mut dev = Edu::open(&s.pci, EDU_BDF, IrqMode::Interrupt).unwrap();
    let buf = dev.alloc_dma(8192).unwrap();
    for (off, len) in [(0, 4096), (0, 2049), (2048, 2048), (0, 0), (4095, 1)] {
        assert!(matches!(dev.dma_to_device(&buf, 0, off, len), Err(EduError::BadTransfer { .. })), "{off} {len}");
    }
    assert!(matches!(dev.dma_from_device(&buf, 8000, 0, 200), Err(EduError::Pci(PciError::OutOfBounds { .. }))));
    assert!(matches!(
        dev.dma_to_bus_address(Direction::FromDevice, 1 << 28, 0, 16),
        Err(EduError::AboveDmaMask { .. })
    ));
    // Still fine.
    dev.dma_to_device(&buf, 0, 0, 2048).unwrap();
    assert_eq!(s.pci.iommu_fault_count(), 0);
}

#[test]
fn dma_buffers_honour_the_address_mask() {
    // 512 MiB of memory whose lowest 256 MiB are taken: nothing is left
    // below edu's 28-bit mask.
    let s = setup_with("edu-mask", DomainConfig { memory_pages: 1 << 17, grant_frames: 1 });
    let low = s.pci.domain().alloc_zeroed_pages(1 << 16).unwrap();
    assert_eq!(low.gfn(0).unwrap().0, 0);
    let r = s.pci.alloc_dma(4096, 4096, DMA_MASK);
    assert!(matches!(r, Err(PciError::DmaMaskUnsatisfiable { .. })), "{r:?}");
    // Without the mask it lands above 256 MiB.
    let high = s.pci.alloc_dma(4096, 4096, u64::MAX).unwrap();
    assert!(high.bus_addr() > DMA_MASK);
    drop(low);
    let ok = s.pci.alloc_dma(4096, 1 << 16, DMA_MASK).unwrap();
    assert!(ok.bus_addr() + 4095 <= DMA_MASK);
    assert_eq!(ok.bus_addr() % (1 << 16), 0, "alignment honoured");
}

#[test]
fn dma_outside_the_domains_buffers_is_refused_by_the_iommu() {
    let s = setup("edu-iommu", EduModel::new());
    let mut dev = Edu::open(&s.pci, EDU_BDF, IrqMode::Interrupt).unwrap();
    let buf = dev.alloc_dma(4096).unwrap();
    let data = pattern(2048, 3);
    buf.write_from(0, &data).unwrap();
    dev.dma_to_device(&buf, 0, 0, 2048).unwrap();

    // A page of the domain's memory that is not a DMA buffer (a page it
    // could grant to a peer) is out of the device's reach, both ways.
    let page = s.pci.domain().alloc_zeroed_pages(1).unwrap();
    let bus = page.gfn(0).unwrap().0 * 4096;
    assert!(bus < DMA_MASK);
    let r = dev.dma_to_bus_address(Direction::FromDevice, bus, 0, 2048);
    assert!(matches!(r, Err(EduError::DmaAborted { status }) if status & STATUS_RECEIVED_MASTER_ABORT != 0), "{r:?}");
    let mut seen = vec![0xEEu8; 4096];
    // SAFETY: `page` maps one page (4096 bytes) that lives to the end of
    // the test; nothing holds a Rust reference into it.
    unsafe { grant_tables::shared_mem::read(page.as_ptr(), page.len_bytes(), 0, &mut seen) }.unwrap();
    assert!(seen.iter().all(|&b| b == 0), "the refused write reached the page");
    let faults = s.pci.iommu_faults();
    assert_eq!(faults.len(), 1);
    assert_eq!((faults[0].bdf, faults[0].addr, faults[0].len, faults[0].write), (EDU_BDF, bus, 2048, true));
    assert_eq!(faults[0].fault_addr, bus);
    // The abort bit was cleared by the driver.
    assert_eq!(s.pci.config().read16(EDU_BDF, STATUS).unwrap() & STATUS_RECEIVED_MASTER_ABORT, 0);

    // A read from memory the domain does not have at all.
    let r = dev.dma_to_bus_address(Direction::ToDevice, 0x0800_0000, 0, 64);
    assert!(matches!(r, Err(EduError::DmaAborted { .. })), "{r:?}");
    assert_eq!(s.pci.iommu_fault_count(), 2);
    assert!(!s.pci.iommu_faults()[1].write);

    // A buffer that was freed is unmapped.
    let gone = dev.alloc_dma(4096).unwrap();
    let gone_bus = gone.bus_addr();
    drop(gone);
    let r = dev.dma_to_bus_address(Direction::FromDevice, gone_bus, 0, 16);
    assert!(matches!(r, Err(EduError::DmaAborted { .. })), "{r:?}");
    assert_eq!(s.pci.iommu_fault_count(), 3);

    // The driver and the device survive: the refused read left the device
    // buffer as it was, and transfers work.
    let out = dev.alloc_dma(4096).unwrap();
    dev.dma_from_device(&out, 0, 0, 2048).unwrap();
    let mut back = vec![0u8; 2048];
    out.read_into(0, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(dev.factorial(6).unwrap(), 720);
    assert_eq!(s.pci.iommu_fault_count(), 3);
}

#[test]
fn a_transfer_qemu_7_2_would_abort_breaks_the_model_clearly() {
    let model = EduModel::new();
    let monitor = model.monitor();
    let s = setup("edu-abort", model);
    let mut dev = Edu::open(&s.pci, EDU_BDF, IrqMode::Polling).unwrap();
    dev.set_timeout_ns(200 * MS);
    let buf = dev.alloc_dma(4096).unwrap();
    // Behind the driver's back: a full 4096-byte transfer.
    let info = DeviceInfo::probe(s.pci.config(), EDU_BDF).unwrap();
    let regs = s.pci.map_bar(EDU_BDF, info.bar(0).unwrap()).unwrap();
    regs.write64(0x80, buf.bus_addr()).unwrap();
    regs.write64(0x88, EDU_DMA_BUFFER).unwrap();
    regs.write64(0x90, 4096).unwrap();
    regs.write64(0x98, 1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while monitor.failure().is_none() {
        assert!(std::time::Instant::now() < deadline, "the model did not fail the transfer");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(monitor.failure(), Some(EduFailure::DmaOutOfRange { addr: EDU_DMA_BUFFER, count: 4096 }));
    assert!(monitor.failure().unwrap().to_string().contains("QEMU 7.2"));
    assert_eq!(monitor.transfers(), 0);
    // The device fell off: the driver says so, and stops using it.
    assert_eq!(dev.factorial(3), Err(EduError::DeviceGone));
    assert!(matches!(dev.factorial(3), Err(EduError::Broken { .. })));
}

#[test]
fn a_wrong_identification_is_refused() {
    let faults = EduFaults { identification: Some(0x0200_00ed), ..EduFaults::default() };
    let s = setup("edu-lie-id", EduModel::with(EduTiming::default(), faults));
    let r = Edu::open(&s.pci, EDU_BDF, IrqMode::Interrupt);
    assert_eq!(r.err(), Some(EduError::WrongIdentification { found: 0x0200_00ed }));
}

#[test]
fn a_liveness_register_that_echoes_is_refused() {
    let faults = EduFaults { liveness_echo: true, ..EduFaults::default() };
    let s = setup("edu-lie-live", EduModel::with(EduTiming::default(), faults));
    let r = Edu::open(&s.pci, EDU_BDF, IrqMode::Polling);
    assert!(matches!(r, Err(EduError::LivenessFailed { .. })), "{r:?}");
}

#[test]
fn all_ones_configuration_space_is_a_gone_device() {
    let faults = EduFaults { config_all_ones: true, ..EduFaults::default() };
    let s = setup("edu-lie-ones", EduModel::with(EduTiming::default(), faults));
    assert_eq!(edu::find(&s.pci).err(), Some(EduError::NotFound));
    let r = Edu::open(&s.pci, EDU_BDF, IrqMode::Interrupt);
    assert_eq!(r.err(), Some(EduError::Pci(PciError::DeviceGone { bdf: EDU_BDF })));
    // And an address with nothing plugged reads the same.
    let empty = Bdf::new(0, 0, 9, 0).unwrap();
    assert_eq!(s.pci.config().read32(empty, 0).unwrap(), u32::MAX);
    assert!(matches!(Edu::open(&s.pci, empty, IrqMode::Polling), Err(EduError::Pci(PciError::DeviceGone { .. }))));
}

#[test]
fn a_capability_loop_is_refused() {
    let faults = EduFaults { capability_loop: true, ..EduFaults::default() };
    let s = setup("edu-lie-loop", EduModel::with(EduTiming::default(), faults));
    let r = Edu::open(&s.pci, EDU_BDF, IrqMode::Interrupt);
    assert!(matches!(r, Err(EduError::Pci(PciError::CapabilityLoop { offset: 0x40, .. }))), "{r:?}");
}

#[test]
fn a_factorial_that_never_finishes_times_out_and_disables_the_device() {
    for mode in [IrqMode::Interrupt, IrqMode::Polling] {
        let faults = EduFaults { factorial_never_done: true, ..EduFaults::default() };
        let s = setup("edu-lie-fact", EduModel::with(EduTiming::default(), faults));
        let mut dev = Edu::open(&s.pci, EDU_BDF, mode).unwrap();
        dev.set_timeout_ns(50 * MS);
        let t0 = std::time::Instant::now();
        let r = dev.factorial(4);
        assert!(
            matches!(r, Err(EduError::FactorialTimeout { waited_ns, status }) if waited_ns >= 50 * MS && status & 1 != 0),
            "{mode:?}: {r:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(dev.factorial(4), Err(EduError::Broken { reason: "factorial never finished" }));
        let buf = dev.alloc_dma(4096).unwrap();
        assert!(matches!(dev.dma_to_device(&buf, 0, 0, 16), Err(EduError::Broken { .. })));
    }
}

#[test]
fn a_transfer_that_never_completes_times_out_and_disables_the_device() {
    for mode in [IrqMode::Interrupt, IrqMode::Polling] {
        let faults = EduFaults { dma_never_completes: true, ..EduFaults::default() };
        let s = setup("edu-lie-dma", EduModel::with(EduTiming::default(), faults));
        let mut dev = Edu::open(&s.pci, EDU_BDF, mode).unwrap();
        dev.set_timeout_ns(50 * MS);
        let buf = dev.alloc_dma(4096).unwrap();
        let r = dev.dma_to_device(&buf, 0, 0, 512);
        assert!(matches!(r, Err(EduError::DmaTimeout { command, .. }) if command & 1 != 0), "{mode:?}: {r:?}");
        assert!(matches!(dev.dma_from_device(&buf, 0, 0, 512), Err(EduError::Broken { .. })));
        assert!(matches!(dev.factorial(1), Err(EduError::Broken { .. })));
    }
}

/// A small device with MSI-X: writing N to BAR0 offset 0 raises table
/// entry N; for checking the bus's MSI-X delivery and masking.
struct MsixProbe;

impl DeviceModel for MsixProbe {
    fn name(&self) -> &str {
        "msix-probe"
    }
    fn config_space(&self) -> Result<ConfigSpace, LayoutError> {
        ConfigSpace::new(0x1af4, 0x7777, 0x02_0000, 1, CONFIG_SPACE_PCI)?
            .with_bar(0, BarSpec::Memory32 { size: 0x1000, prefetchable: false })?
            .with_bar(3, BarSpec::Memory32 { size: 0x4000, prefetchable: false })?
            .with_msix(3, (3, 0), (3, 0x2000))
    }
    fn mmio_read(&mut self, _bar: u8, _offset: u64, _size: u8, _dev: &mut DeviceCtx<'_>) -> u64 {
        0
    }
    fn mmio_write(&mut self, bar: u8, offset: u64, _size: u8, value: u64, dev: &mut DeviceCtx<'_>) {
        if bar == 0 && offset == 0 {
            dev.raise_msi(value as u16);
        }
    }
    /// A kick from outside raises entry 0 on the device's thread.
    fn tick(&mut self, dev: &mut DeviceCtx<'_>) {
        dev.raise_msi(0);
    }
}

#[test]
fn msix_vectors_are_event_channels_and_masking_holds_them() {
    let s = setup_with("pci-msix", DomainConfig::default());
    let bdf = Bdf::new(0, 0, 4, 0).unwrap();
    s.pci.plug(bdf, MsixProbe).unwrap();
    let cfg = s.pci.config();
    let info = DeviceInfo::probe(cfg, bdf).unwrap();
    let msix = info.msix.expect("MSI-X");
    assert_eq!((msix.table_size, msix.table_bir, msix.pba_bir, msix.pba_offset), (3, 3, 3, 0x2000));
    enable_memory_and_bus_master(cfg, bdf).unwrap();
    let regs = s.pci.map_bar(bdf, info.bar(0).unwrap()).unwrap();
    let table = s.pci.map_bar(bdf, info.bar(3).unwrap()).unwrap();
    assert!(matches!(s.pci.enable_msix(bdf, &[0, 0]), Err(PciError::InvalidRequest { .. })));
    assert!(matches!(s.pci.enable_msix(bdf, &[3]), Err(PciError::InvalidRequest { .. })));
    let ports = s.pci.enable_msix(bdf, &[0, 2]).unwrap();
    assert_eq!(ports.len(), 2);
    assert!(s.pci.enable_msi(bdf).is_err(), "no MSI capability");

    regs.write32(0, 2).unwrap();
    assert_eq!(s.pci.block_any(&ports, Some(1_000 * MS)).unwrap(), Some(ports[1]));
    assert!(!s.pci.poll(ports[0]).unwrap());
    regs.write32(0, 0).unwrap();
    assert!(s.pci.poll(ports[0]).unwrap());
    // Entry 1 has no event channel: nothing is delivered anywhere.
    regs.write32(0, 1).unwrap();
    assert!(ports.iter().all(|&p| !s.pci.poll(p).unwrap()));

    // The table is read-only to the domain (as Xen maps it for a PV
    // domain): a write to entry 2's mask is refused, counted, and the
    // entry still delivers.
    let control = table.read32(2 * 16 + 12).unwrap();
    table.write32(2 * 16 + 12, 1).unwrap();
    assert_eq!(table.read32(2 * 16 + 12).unwrap(), control);
    assert_eq!(s.pci.msix_table_writes(bdf), 1);
    regs.write32(0, 2).unwrap();
    assert!(s.pci.poll(ports[1]).unwrap(), "an entry the domain tried to mask still delivers");

    // The function mask holds interrupts in the pending bit array.
    let flags = u16::from(msix.offset) + 2;
    let c = cfg.read16(bdf, flags).unwrap();
    cfg.write16(bdf, flags, c | 1 << 14).unwrap();
    regs.write32(0, 2).unwrap();
    assert!(!s.pci.poll(ports[1]).unwrap());
    assert_eq!(table.read64(0x2000).unwrap() & 0b100, 0b100);
    cfg.write16(bdf, flags, c).unwrap();
    assert!(s.pci.poll(ports[1]).unwrap(), "delivered on unmask");
    assert_eq!(table.read64(0x2000).unwrap() & 0b100, 0);

    // A kick runs the model's tick on its thread.
    s.pci.kick(bdf).unwrap();
    assert_eq!(s.pci.block(ports[0], Some(5_000 * MS)), Ok(true));

    // Without bus mastering nothing is sent.
    let command = cfg.read16(bdf, 4).unwrap();
    cfg.write16(bdf, 4, command & !0x4).unwrap();
    regs.write32(0, 0).unwrap();
    assert!(!s.pci.poll(ports[0]).unwrap());
    s.pci.disable_msix(bdf).unwrap();
    assert!(s.pci.poll(ports[0]).is_err(), "the channels are closed");
}

/// A device with one maskable MSI vector: writing BAR0 offset 0 raises it.
struct MsiProbe;

impl DeviceModel for MsiProbe {
    fn name(&self) -> &str {
        "msi-probe"
    }
    fn config_space(&self) -> Result<ConfigSpace, LayoutError> {
        ConfigSpace::new(0x1af4, 0x7778, 0xff_0000, 1, CONFIG_SPACE_PCI)?
            .with_bar(0, BarSpec::Memory64 { size: 0x1000, prefetchable: false })?
            .with_msi(1, true, true)
    }
    fn mmio_read(&mut self, _bar: u8, _offset: u64, _size: u8, _dev: &mut DeviceCtx<'_>) -> u64 {
        0
    }
    fn mmio_write(&mut self, _bar: u8, offset: u64, _size: u8, _value: u64, dev: &mut DeviceCtx<'_>) {
        if offset == 0 {
            dev.raise_msi(0);
        }
    }
}

#[test]
fn a_masked_msi_waits_in_its_pending_bit() {
    let s = setup_with("pci-msi-mask", DomainConfig::default());
    let bdf = Bdf::new(0, 0, 5, 0).unwrap();
    s.pci.plug(bdf, MsiProbe).unwrap();
    assert!(s.pci.plug(bdf, MsiProbe).is_err(), "the address is taken");
    let cfg = s.pci.config();
    let info = DeviceInfo::probe(cfg, bdf).unwrap();
    let bar0 = info.bar(0).unwrap();
    assert_eq!(bar0.kind, passthrough::BarKind::Memory64);
    assert!(bar0.address > u64::from(u32::MAX), "64-bit BARs go above 4 GiB");
    let msi = info.msi.unwrap();
    assert!(msi.per_vector_masking && msi.is_64bit);
    let (mask_at, pending_at) = (u16::from(msi.offset) + 0x10, u16::from(msi.offset) + 0x14);
    enable_memory_and_bus_master(cfg, bdf).unwrap();
    let regs = s.pci.map_bar(bdf, bar0).unwrap();
    let port = s.pci.enable_msi(bdf).unwrap();
    assert!(matches!(s.pci.enable_msi(bdf), Err(PciError::InvalidRequest { .. })), "already enabled");
    assert!(s.pci.enable_msix(bdf, &[0]).is_err(), "no MSI-X capability");

    regs.write32(0, 1).unwrap();
    assert_eq!(s.pci.block(port, Some(5_000 * MS)), Ok(true));
    cfg.write32(bdf, mask_at, 1).unwrap();
    regs.write32(0, 1).unwrap();
    assert!(!s.pci.poll(port).unwrap(), "masked");
    assert_eq!(cfg.read32(bdf, pending_at).unwrap(), 1);
    // Pending bits are the device's: a driver's write does not change them.
    cfg.write32(bdf, pending_at, 0).unwrap();
    assert_eq!(cfg.read32(bdf, pending_at).unwrap(), 1);
    cfg.write32(bdf, mask_at, 0).unwrap();
    assert!(s.pci.poll(port).unwrap(), "delivered on unmask");
    assert_eq!(cfg.read32(bdf, pending_at).unwrap(), 0);
    assert_eq!(s.pci.interrupts_delivered(bdf), 2);

    s.pci.disable_msi(bdf).unwrap();
    assert!(s.pci.poll(port).is_err(), "the channel is closed");
    regs.write32(0, 1).unwrap();
    assert_eq!(s.pci.interrupts_delivered(bdf), 2, "MSI off: nothing sent");
}
