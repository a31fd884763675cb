//! The driver: bring-up, the rings in DMA memory, interrupts, and the
//! frame-device interface.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use grant_tables::Port;
use netfront::frame::{FrameDevice, FrameError, LinkInfo};

use super::desc::{self, DescError, RxParsed, TxChecksum, DESC_LEN, TXD_STAT_EC, TXD_STAT_LC};
use super::frames::{BufPool, E1000eRxFrame, E1000eTxFrame, BUF_LEN, PAGE_LEN};
use super::regs::*;
use super::ring::{self, DescMemory, RxRing, TxRing, TxSlot};
use crate::config::{self, DeviceInfo};
use crate::dma::DmaBuffer;
use crate::mmio::Mmio;
use crate::platform::PciPlatform;
use crate::{Bdf, PciError};

/// The largest frame sent or received: an untagged Ethernet frame with a
/// 1500-byte payload, no FCS.
pub const MAX_FRAME: usize = 1514;
/// The largest frame the receiver may deliver (a VLAN tag left in place).
const MAX_RX_FRAME: u16 = 1522;
/// How long the driver leaves the device alone after setting CTRL.RST.
const RESET_SETTLE_NS: u64 = 1_000_000;
/// The MSI-X table entries the driver uses: RX queue 0, TX queue 0, other
/// causes.
pub const MSIX_RX: u16 = 0;
/// See [`MSIX_RX`].
pub const MSIX_TX: u16 = 1;
/// See [`MSIX_RX`].
pub const MSIX_OTHER: u16 = 2;

/// How the driver learns that the device did something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqMode {
    /// Interrupts masked: [`FrameDevice::wait`] polls the rings until
    /// something happens or the timeout passes (lowest latency, one core
    /// busy). Link changes are seen by the next [`FrameDevice::poll`].
    Polling,
    /// MSI-X, one vector each for RX, TX and other causes (link changes):
    /// [`FrameDevice::wait`] blocks on their event channels.
    Interrupts,
}

/// The driver's settings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// RX descriptors (a multiple of 8, 8..=4096).
    pub rx_ring: u16,
    /// TX descriptors (a multiple of 8, 8..=4096).
    pub tx_ring: u16,
    /// RX buffers: the ring's worth (one slot stays empty) plus those the
    /// application may hold. Rounded up to an even number.
    pub rx_buffers: u16,
    /// The interrupt mode to start in (MSI-X is set up in either, so the
    /// mode can change later with [`E1000e::set_mode`]).
    pub mode: IrqMode,
    /// The device's DMA address mask (the 82574 addresses 64 bits).
    pub dma_mask: u64,
    /// How long a reset or an EEPROM read may take.
    pub reset_timeout_ns: u64,
    /// How long bring-up waits for the link (it may come up later).
    pub link_timeout_ns: u64,
    /// Ask the device to check IPv4, TCP and UDP checksums of received
    /// frames ([`E1000eRxFrame::checksum`]).
    pub rx_checksum: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rx_ring: 256,
            tx_ring: 256,
            rx_buffers: 256 + 64,
            mode: IrqMode::Interrupts,
            dma_mask: u64::MAX,
            reset_timeout_ns: 100_000_000,
            link_timeout_ns: 2_000_000_000,
            rx_checksum: true,
        }
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received and lent.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames the device received with errors (dropped).
    pub rx_errors: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames the device reported not sent (collisions).
    pub tx_errors: u64,
    /// Wake-ups by an interrupt.
    pub interrupts: u64,
    /// Link changes seen.
    pub link_changes: u64,
}

/// Why bring-up failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum E1000eError {
    /// The platform or configuration space said no.
    Pci(PciError),
    /// The device is not an 82574L, or lacks what the driver needs.
    Unsupported(String),
    /// The device did not do what it was asked in time, or answered
    /// nonsense.
    Device(String),
    /// A setting is out of range.
    Config(&'static str),
}

impl core::fmt::Display for E1000eError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            E1000eError::Pci(e) => write!(f, "e1000e: {e}"),
            E1000eError::Unsupported(why) => write!(f, "e1000e: unsupported device: {why}"),
            E1000eError::Device(why) => write!(
                f,
                "e1000e: the device failed: {why}; reset it or check the passthrough"
            ),
            E1000eError::Config(why) => write!(f, "e1000e: bad configuration: {why}"),
        }
    }
}

impl core::error::Error for E1000eError {}

impl From<PciError> for E1000eError {
    fn from(e: PciError) -> Self {
        E1000eError::Pci(e)
    }
}

/// A descriptor ring in one DMA buffer.
struct DmaRing<D: DmaBuffer> {
    mem: D,
    slots: u16,
}

impl<D: DmaBuffer> DescMemory for DmaRing<D> {
    fn slots(&self) -> u16 {
        self.slots
    }

    fn read(&self, slot: u16) -> [u8; DESC_LEN] {
        let off = usize::from(slot) * DESC_LEN;
        // The upper half holds the done bit (RX status dword, TX status
        // byte) with the length: read it first, in one load.
        let hi = self.mem.read_u64(off + 8).unwrap_or(0);
        // Orders the read of the done bit before the reads of the rest of
        // the descriptor (the device writes the rest first).
        fence(Ordering::Acquire);
        let lo = self.mem.read_u64(off).unwrap_or(0);
        let mut d = [0u8; DESC_LEN];
        d[..8].copy_from_slice(&lo.to_le_bytes());
        d[8..].copy_from_slice(&hi.to_le_bytes());
        d
    }

    fn write(&mut self, slot: u16, d: &[u8; DESC_LEN]) {
        let off = usize::from(slot) * DESC_LEN;
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&d[..8]);
        hi.copy_from_slice(&d[8..]);
        let _ = self.mem.write_u64(off, u64::from_le_bytes(lo));
        let _ = self.mem.write_u64(off + 8, u64::from_le_bytes(hi));
    }
}

/// The 82574L driver (see the [module docs](super)).
pub struct E1000e<P: PciPlatform> {
    platform: P,
    bdf: Bdf,
    regs: P::Mmio,
    rx_mem: DmaRing<P::Dma>,
    tx_mem: DmaRing<P::Dma>,
    rx: RxRing,
    tx: TxRing,
    rx_pool: Arc<BufPool<P::Dma>>,
    tx_pool: Arc<BufPool<P::Dma>>,
    mac: [u8; 6],
    link_up: bool,
    mode: IrqMode,
    /// RX, TX and other vectors' event channels.
    ports: [Port; 3],
    /// The last checksum context given to the device.
    tx_context: Option<TxChecksum>,
    broken: Option<String>,
    stats: Stats,
}

impl<P: PciPlatform> core::fmt::Debug for E1000e<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("E1000e")
            .field("bdf", &self.bdf)
            .field("mac", &self.mac)
            .field("link_up", &self.link_up)
            .field("mode", &self.mode)
            .field("broken", &self.broken)
            .field("stats", &self.stats)
            .finish()
    }
}

fn reg(r: u32) -> usize {
    r as usize
}

/// Undoes the first bring-up steps on an early return from
/// [`E1000e::new`] before the device value exists: disables MSI-X when it
/// was enabled and clears bus mastering, so a half-initialised device does
/// no DMA. Failures are logged (the bring-up error is what is returned).
struct BringUpGuard<'a, P: PciPlatform> {
    platform: &'a P,
    bdf: Bdf,
    msix: bool,
    armed: bool,
}

impl<P: PciPlatform> BringUpGuard<'_, P> {
    /// The device value owns the cleanup from here on.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl<P: PciPlatform> Drop for BringUpGuard<'_, P> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.msix {
            if let Err(e) = self.platform.disable_msix(self.bdf) {
                log::error!(
                    "e1000e {}: disabling MSI-X after a failed bring-up: {e}",
                    self.bdf
                );
            }
        }
        let c = config::update_command(self.platform.config(), self.bdf, 0, config::COMMAND_MASTER);
        if let Err(e) = c {
            log::error!(
                "e1000e {}: clearing bus mastering after a failed bring-up: {e}",
                self.bdf
            );
        }
    }
}

/// Busy-waits until `done` or `timeout_ns` of the platform's clock pass.
fn wait_until<P: PciPlatform>(
    p: &P,
    timeout_ns: u64,
    mut done: impl FnMut() -> Result<bool, E1000eError>,
) -> Result<bool, E1000eError> {
    let start = p.now_ns();
    loop {
        if done()? {
            return Ok(true);
        }
        if p.now_ns().saturating_sub(start) > timeout_ns {
            return Ok(false);
        }
        core::hint::spin_loop();
    }
}

fn valid_mac(m: &[u8; 6]) -> bool {
    m != &[0; 6] && m != &[0xff; 6] && m[0] & 1 == 0
}

impl<P: PciPlatform> E1000e<P> {
    /// Brings up the 82574L at `bdf`: identifies it, enables memory decoding
    /// and bus mastering, maps BAR 0, resets the device (interrupts masked),
    /// reads its MAC address (receive address 0, else the EEPROM), sets the
    /// link up, allocates the rings and buffers in DMA memory, posts every
    /// RX buffer, enables MSI-X with one vector each for RX, TX and other
    /// causes, and starts the receiver and transmitter in `config.mode`.
    pub fn new(platform: P, bdf: Bdf, config: Config) -> Result<Self, E1000eError> {
        ring::check_ring_size(config.rx_ring).map_err(E1000eError::Config)?;
        ring::check_ring_size(config.tx_ring).map_err(E1000eError::Config)?;
        if config.rx_buffers < config.rx_ring {
            return Err(E1000eError::Config("rx_buffers must be at least rx_ring"));
        }
        let info = DeviceInfo::probe(platform.config(), bdf)?;
        if info.header.vendor_id != VENDOR_INTEL || info.header.device_id != DEVICE_82574L {
            return Err(E1000eError::Unsupported(format!(
                "{bdf} is {:04x}:{:04x}, not an Intel 82574L ({VENDOR_INTEL:04x}:{DEVICE_82574L:04x})",
                info.header.vendor_id, info.header.device_id
            )));
        }
        let bar = *info
            .bar(BAR_REGS)
            .filter(|b| b.is_memory() && b.size >= REGS_LEN)
            .ok_or_else(|| {
                E1000eError::Unsupported(format!("{bdf}: BAR 0 is not a memory BAR of 128 KiB"))
            })?;
        if info.msix.is_none_or(|m| m.table_size < 3) {
            return Err(E1000eError::Unsupported(format!(
                "{bdf}: no MSI-X capability with 3 vectors"
            )));
        }
        config::enable_memory_and_bus_master(platform.config(), bdf)?;
        // Until `dev` exists (whose drop stops the device), an early return
        // clears bus mastering (and disables MSI-X once enabled).
        let mut guard = BringUpGuard {
            platform: &platform,
            bdf,
            msix: false,
            armed: true,
        };
        let regs = platform.map_bar(bdf, &bar)?;

        // Rings and buffers.
        let rx_mem = DmaRing {
            mem: platform.alloc_dma(
                usize::from(config.rx_ring) * DESC_LEN,
                128,
                config.dma_mask,
            )?,
            slots: config.rx_ring,
        };
        let tx_mem = DmaRing {
            mem: platform.alloc_dma(
                usize::from(config.tx_ring) * DESC_LEN,
                128,
                config.dma_mask,
            )?,
            slots: config.tx_ring,
        };
        let per_page = PAGE_LEN / BUF_LEN;
        let rx_pages = usize::from(config.rx_buffers).div_ceil(per_page);
        // Every TX frame may need a context descriptor as well as its own.
        let tx_pages = (usize::from(config.tx_ring - 1) / 2).div_ceil(per_page);
        let alloc_pages = |n: usize| -> Result<Vec<P::Dma>, E1000eError> {
            (0..n)
                .map(|_| {
                    platform
                        .alloc_dma(PAGE_LEN, PAGE_LEN, config.dma_mask)
                        .map_err(E1000eError::from)
                })
                .collect()
        };
        let rx_pool = Arc::new(BufPool::new(alloc_pages(rx_pages)?).map_err(E1000eError::Config)?);
        let tx_pool = Arc::new(BufPool::new(alloc_pages(tx_pages)?).map_err(E1000eError::Config)?);
        let max_tx_bufs = (config.tx_ring - 1) / 2;
        // Keep only as many TX buffers free as the ring can hold with a
        // context descriptor each.
        for _ in max_tx_bufs..tx_pool.count() {
            let _ = tx_pool.take();
        }
        let rx = RxRing::new(config.rx_ring, BUF_LEN as u16, MAX_RX_FRAME)
            .map_err(E1000eError::Config)?;
        let tx = TxRing::new(config.tx_ring).map_err(E1000eError::Config)?;

        let ports_v = platform.enable_msix(bdf, &[MSIX_RX, MSIX_TX, MSIX_OTHER])?;
        guard.msix = true;
        let [prx, ptx, pother] = ports_v[..] else {
            return Err(E1000eError::Device(format!(
                "the platform gave {} MSI-X ports for 3 entries",
                ports_v.len()
            )));
        };
        guard.disarm();
        let mut dev = E1000e {
            platform,
            bdf,
            regs,
            rx_mem,
            tx_mem,
            rx,
            tx,
            rx_pool,
            tx_pool,
            mac: [0; 6],
            link_up: false,
            mode: config.mode,
            ports: [prx, ptx, pother],
            tx_context: None,
            broken: None,
            stats: Stats::default(),
        };
        dev.reset(config.reset_timeout_ns)?;
        dev.mac = dev.read_mac(config.reset_timeout_ns)?;
        dev.set_link_up(config.link_timeout_ns)?;
        dev.start(&config)?;
        log::info!(
            "e1000e {bdf}: MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, link {}, {} RX / {} TX descriptors, {:?}",
            dev.mac[0],
            dev.mac[1],
            dev.mac[2],
            dev.mac[3],
            dev.mac[4],
            dev.mac[5],
            if dev.link_up { "up" } else { "down" },
            config.rx_ring,
            config.tx_ring,
            dev.mode
        );
        Ok(dev)
    }

    fn rd(&self, r: u32) -> Result<u32, E1000eError> {
        Ok(self.regs.read32(reg(r))?)
    }

    fn wr(&self, r: u32, v: u32) -> Result<(), E1000eError> {
        Ok(self.regs.write32(reg(r), v)?)
    }

    /// Resets the device: receiver and transmitter off, interrupts masked,
    /// `CTRL.RST`, wait for it to clear, interrupts masked again and their
    /// causes cleared.
    fn reset(&mut self, timeout_ns: u64) -> Result<(), E1000eError> {
        self.wr(IMC, 0xffff_ffff)?;
        self.wr(RCTL, 0)?;
        self.wr(TCTL, TCTL_PSP)?;
        let status = self.rd(STATUS)?;
        if status == 0xffff_ffff {
            return Err(E1000eError::Device(format!(
                "{}: registers read all ones (the device is gone)",
                self.bdf
            )));
        }
        let ctrl = self.rd(CTRL)?;
        self.wr(CTRL, ctrl | CTRL_RST)?;
        // The 82574 must not be touched for a while after a reset (Linux
        // waits before its first read); then RST clears and the EEPROM
        // settings load (EECD.AUTO_RD).
        wait_until(&self.platform, RESET_SETTLE_NS, || Ok(false))?;
        let regs = &self.regs;
        let done = wait_until(&self.platform, timeout_ns, || {
            Ok(regs.read32(reg(CTRL))? & CTRL_RST == 0)
        })?;
        if !done {
            return Err(E1000eError::Device(format!(
                "{}: CTRL.RST did not clear within {timeout_ns} ns",
                self.bdf
            )));
        }
        let loaded = wait_until(&self.platform, timeout_ns, || {
            Ok(regs.read32(reg(EECD))? & EECD_AUTO_RD != 0)
        })?;
        if !loaded {
            return Err(E1000eError::Device(format!(
                "{}: the EEPROM settings did not load (EECD.AUTO_RD) within {timeout_ns} ns of the reset",
                self.bdf
            )));
        }
        self.wr(IMC, 0xffff_ffff)?;
        let _ = self.rd(ICR)?;
        self.wr(ICR, 0xffff_ffff)?;
        let ext = self.rd(CTRL_EXT)?;
        self.wr(
            CTRL_EXT,
            (ext | CTRL_EXT_DRV_LOAD) & !(CTRL_EXT_IAME | CTRL_EXT_EIAME),
        )?;
        Ok(())
    }

    fn eeprom_word(&self, addr: u32, timeout_ns: u64) -> Result<u16, E1000eError> {
        self.wr(EERD, (addr << EERD_ADDR_SHIFT) | EERD_START)?;
        let mut v = 0;
        let regs = &self.regs;
        let done = wait_until(&self.platform, timeout_ns, || {
            v = regs.read32(reg(EERD))?;
            Ok(v & EERD_DONE != 0)
        })?;
        if !done {
            return Err(E1000eError::Device(format!(
                "{}: the EEPROM read of word {addr} did not complete",
                self.bdf
            )));
        }
        Ok((v >> EERD_DATA_SHIFT) as u16)
    }

    /// The MAC address: receive address 0 when valid, else EEPROM words
    /// 0-2 (then written to receive address 0).
    fn read_mac(&mut self, timeout_ns: u64) -> Result<[u8; 6], E1000eError> {
        let ral = self.rd(RAL0)?;
        let rah = self.rd(RAH0)?;
        let l = ral.to_le_bytes();
        let h = rah.to_le_bytes();
        let mac = [l[0], l[1], l[2], l[3], h[0], h[1]];
        if rah & RAH_AV != 0 && valid_mac(&mac) {
            return Ok(mac);
        }
        let mut m = [0u8; 6];
        for i in 0..3u32 {
            let w = self.eeprom_word(i, timeout_ns)?.to_le_bytes();
            m[2 * i as usize] = w[0];
            m[2 * i as usize + 1] = w[1];
        }
        if !valid_mac(&m) {
            return Err(E1000eError::Device(format!(
                "{}: no valid MAC address in receive address 0 ({mac:02x?}) or the EEPROM ({m:02x?})",
                self.bdf
            )));
        }
        self.wr(RAL0, u32::from_le_bytes([m[0], m[1], m[2], m[3]]))?;
        self.wr(RAH0, u32::from(u16::from_le_bytes([m[4], m[5]])) | RAH_AV)?;
        Ok(m)
    }

    /// Sets the link up (`CTRL.SLU`, speed and duplex from
    /// auto-negotiation) and waits up to `timeout_ns` for `STATUS.LU`.
    fn set_link_up(&mut self, timeout_ns: u64) -> Result<(), E1000eError> {
        const CTRL_FRCSPD: u32 = 1 << 11;
        const CTRL_FRCDPX: u32 = 1 << 12;
        let ctrl = self.rd(CTRL)?;
        self.wr(
            CTRL,
            (ctrl | CTRL_SLU | CTRL_ASDE) & !(CTRL_FRCSPD | CTRL_FRCDPX | CTRL_PHY_RST | CTRL_RST),
        )?;
        let regs = &self.regs;
        self.link_up = wait_until(&self.platform, timeout_ns, || {
            Ok(regs.read32(reg(STATUS))? & STATUS_LU != 0)
        })?;
        Ok(())
    }

    /// Programs the rings, filters, checksum offload and interrupts, posts
    /// the RX buffers and enables the receiver and transmitter.
    fn start(&mut self, config: &Config) -> Result<(), E1000eError> {
        // Multicast table: nothing but broadcast and our address.
        for i in 0..MTA_LEN {
            self.wr(MTA + 4 * i, 0)?;
        }
        // TX ring.
        let tx_bus = self.tx_mem.mem.bus_addr();
        self.wr(TDBAL, tx_bus as u32)?;
        self.wr(TDBAH, (tx_bus >> 32) as u32)?;
        self.wr(TDLEN, u32::from(self.tx.size()) * DESC_LEN as u32)?;
        self.wr(TDH, 0)?;
        self.wr(TDT, 0)?;
        self.wr(TIDV, 0)?;
        self.wr(TADV, 0)?;
        self.wr(TIPG, 8 | (8 << 10) | (6 << 20))?;
        let tarc = self.rd(TARC0)?;
        self.wr(TARC0, tarc | TARC_ENABLE)?;
        // RX ring, extended descriptors, 2048-byte buffers, CRC stripped.
        let rx_bus = self.rx_mem.mem.bus_addr();
        self.wr(RDBAL, rx_bus as u32)?;
        self.wr(RDBAH, (rx_bus >> 32) as u32)?;
        self.wr(RDLEN, u32::from(self.rx.size()) * DESC_LEN as u32)?;
        self.wr(RDH, 0)?;
        self.wr(RDT, 0)?;
        self.wr(RDTR, 0)?;
        self.wr(RADV, 0)?;
        // ISCSI_DIS, NFSW_DIS, NFSR_DIS: filters the driver does not use.
        self.wr(RFCTL, RFCTL_EXTEN | RFCTL_ACK_DIS | 1 | (1 << 6) | (1 << 7))?;
        self.wr(
            RXCSUM,
            if config.rx_checksum {
                RXCSUM_IPOFL | RXCSUM_TUOFL
            } else {
                0
            },
        )?;
        self.refill_rx()?;
        // Interrupts: RX queue 0 on vector 0, TX queue 0 on 1, other causes
        // on 2; a TX cause on every write-back; the queue causes cleared
        // from ICR when their message is sent (EIAC); writing IMS clears
        // the vectors' pending bits.
        let ivar = ((IVAR_VALID | u32::from(MSIX_RX)) << IVAR_RXQ0_SHIFT)
            | ((IVAR_VALID | u32::from(MSIX_TX)) << IVAR_TXQ0_SHIFT)
            | ((IVAR_VALID | u32::from(MSIX_OTHER)) << IVAR_OTHER_SHIFT)
            | IVAR_TX_INT_EVERY_WB;
        self.wr(IVAR, ivar)?;
        self.wr(EIAC, ICR_RXQ0 | ICR_TXQ0)?;
        let ext = self.rd(CTRL_EXT)?;
        self.wr(CTRL_EXT, ext | CTRL_EXT_PBA_CLR)?;
        self.wr(
            TCTL,
            TCTL_EN | TCTL_PSP | (0xf << TCTL_CT_SHIFT) | (0x3f << TCTL_COLD_SHIFT) | TCTL_RTLC,
        )?;
        self.wr(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC)?;
        self.apply_mode()?;
        Ok(())
    }

    const IMS_ALL: u32 = ICR_RXQ0 | ICR_TXQ0 | ICR_OTHER | ICR_LSC;

    fn apply_mode(&mut self) -> Result<(), E1000eError> {
        match self.mode {
            IrqMode::Polling => self.wr(IMC, 0xffff_ffff),
            IrqMode::Interrupts => self.wr(IMS, Self::IMS_ALL),
        }
    }

    /// Switches between polling and interrupts.
    pub fn set_mode(&mut self, mode: IrqMode) -> Result<(), FrameError> {
        self.check()?;
        self.mode = mode;
        let r = self.apply_mode();
        self.fail_on(r)
    }

    /// The interrupt mode.
    pub fn mode(&self) -> IrqMode {
        self.mode
    }

    /// The device's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The event channels of the RX, TX and other vectors.
    pub fn ports(&self) -> [Port; 3] {
        self.ports
    }

    /// Why the device is broken, if it is.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// RX buffers free in the pool (neither posted nor lent).
    pub fn rx_buffers_free(&self) -> usize {
        self.rx_pool.free_count()
    }

    /// TX buffers free.
    pub fn tx_buffers_free(&self) -> usize {
        self.tx_pool.free_count()
    }

    fn check(&self) -> Result<(), FrameError> {
        match &self.broken {
            Some(why) => Err(FrameError::Broken(why.clone())),
            None => Ok(()),
        }
    }

    /// Marks the device broken (disabling it as far as it still listens)
    /// and returns the error.
    fn break_device(&mut self, why: String) -> FrameError {
        log::error!("e1000e {}: {why}", self.bdf);
        let _ = self.regs.write32(reg(IMC), 0xffff_ffff);
        let _ = self.regs.write32(reg(RCTL), 0);
        let _ = self.regs.write32(reg(TCTL), 0);
        if let Err(e) =
            config::update_command(self.platform.config(), self.bdf, 0, config::COMMAND_MASTER)
        {
            log::error!(
                "e1000e {}: clearing bus mastering of the broken device failed: {e}",
                self.bdf
            );
        }
        if let Err(e) = self.platform.disable_msix(self.bdf) {
            log::error!(
                "e1000e {}: disabling MSI-X of the broken device failed: {e}",
                self.bdf
            );
        }
        self.broken = Some(why.clone());
        FrameError::Broken(why)
    }

    fn fail_on<T>(&mut self, r: Result<T, E1000eError>) -> Result<T, FrameError> {
        r.map_err(|e| self.break_device(format!("{e}")))
    }

    fn desc_fail<T>(&mut self, r: Result<T, DescError>) -> Result<T, FrameError> {
        r.map_err(|e| self.break_device(format!("{e}; the device is disabled")))
    }

    /// Posts free RX buffers; writes the tail if any was posted.
    fn refill_rx(&mut self) -> Result<(), E1000eError> {
        let before = self.rx.tail();
        while self.rx.can_post() {
            let Some(b) = self.rx_pool.take() else { break };
            let Some(bus) = self.rx_pool.bus_addr(b) else {
                self.rx_pool.give_back(b);
                break;
            };
            match self.rx.post(&mut self.rx_mem, b, bus) {
                Ok(true) => {}
                Ok(false) => {
                    self.rx_pool.give_back(b);
                    break;
                }
                Err(e) => {
                    self.rx_pool.give_back(b);
                    return Err(E1000eError::Device(format!("{e}")));
                }
            }
        }
        if self.rx.tail() != before {
            // Orders the descriptor writes before the tail write that
            // hands them to the device.
            fence(Ordering::SeqCst);
            self.wr(RDT, u32::from(self.rx.tail()))?;
        }
        Ok(())
    }

    /// Takes back the TX buffers the device is done with. Returns how many
    /// descriptors completed.
    fn reap_tx(&mut self) -> Result<usize, FrameError> {
        let mut n = 0;
        for _ in 0..self.tx.size() {
            let c = self.tx.next_completion(&mut self.tx_mem);
            let Some(c) = self.desc_fail(c)? else { break };
            n += 1;
            if let TxSlot::Frame(b) = c.what {
                if c.status & (TXD_STAT_EC | TXD_STAT_LC) != 0 {
                    self.stats.tx_errors += 1;
                }
                self.tx_pool.give_back(b);
            }
        }
        Ok(n)
    }

    /// Checks the head registers against the rings.
    fn check_heads(&mut self) -> Result<(), FrameError> {
        let r = self.rd(RDH);
        let rdh = self.fail_on(r)?;
        let c = self.rx.check_head(rdh);
        self.desc_fail(c)?;
        let r = self.rd(TDH);
        let tdh = self.fail_on(r)?;
        let c = self.tx.check_head(tdh);
        self.desc_fail(c)
    }

    /// Handles the other causes: link changes. Returns whether the link
    /// changed.
    fn service_other(&mut self) -> Result<bool, FrameError> {
        let icr = {
            let r = self.rd(ICR);
            self.fail_on(r)?
        };
        if icr & (ICR_OTHER_CAUSES | ICR_OTHER) != 0 {
            let r = self.wr(ICR, icr & (ICR_OTHER_CAUSES | ICR_OTHER));
            self.fail_on(r)?;
        }
        let status = {
            let r = self.rd(STATUS);
            self.fail_on(r)?
        };
        if status == 0xffff_ffff {
            return Err(
                self.break_device(String::from("registers read all ones: the device is gone"))
            );
        }
        let up = status & STATUS_LU != 0;
        if up != self.link_up {
            self.link_up = up;
            self.stats.link_changes += 1;
            log::info!(
                "e1000e {}: link {}",
                self.bdf,
                if up { "up" } else { "down" }
            );
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether a frame waits in the RX ring or a send completed.
    fn work_pending(&self) -> bool {
        let rx = self.rx.posted() > 0 && {
            let d = self.rx_mem.read(self.rx.next());
            desc::RxWriteback::from_bytes(&d).done()
        };
        let tx = self.tx.in_flight() > 0
            && desc::tx_status(&self.tx_mem.read(self.tx.next())) & desc::TXD_STAT_DD != 0;
        rx || tx
    }

    fn send_inner(&mut self, frame: E1000eTxFrame<P::Dma>) -> Result<(), FrameError> {
        // A frame lent by another device holds a buffer id of that
        // device's pool: posting it here would send that pool's buffer and
        // give its id to this pool, lending one buffer twice. Dropping the
        // frame gives it back to its own pool.
        if !frame.is_from(&self.tx_pool) {
            return Err(FrameError::Invalid(format!(
                "the frame was lent by another network device, not e1000e {}; \
                 send a frame from this device's tx_buffer",
                self.bdf
            )));
        }
        let Some((buf, len, bus, csum)) = frame.take() else {
            return Err(FrameError::Invalid(String::from(
                "the frame's buffer is not in the pool",
            )));
        };
        let give_back = |pool: &BufPool<P::Dma>, e: FrameError| {
            pool.give_back(buf);
            Err(e)
        };
        if len == 0 || len > MAX_FRAME {
            return give_back(
                &self.tx_pool,
                FrameError::TooLarge {
                    len,
                    max: MAX_FRAME,
                },
            );
        }
        if let Some(c) = &csum {
            if let Err(why) = c.check(len) {
                return give_back(
                    &self.tx_pool,
                    FrameError::Invalid(format!("checksum offload: {why}")),
                );
            }
        }
        let need = if csum.is_some() && csum != self.tx_context {
            2
        } else {
            1
        };
        if self.tx.free() < need {
            self.reap_tx()?;
        }
        if self.tx.free() < need {
            return give_back(
                &self.tx_pool,
                FrameError::Invalid(String::from("the TX ring is full; poll and retry")),
            );
        }
        // `free() >= need` above, so each post either lands or finds the
        // device's stray done bit on the slot.
        let posted = match &csum {
            None => self.tx.post(
                &mut self.tx_mem,
                &desc::tx_legacy(bus, len as u16),
                TxSlot::Frame(buf),
            ),
            Some(c) => {
                let ctx = if need == 2 {
                    let r = self
                        .tx
                        .post(&mut self.tx_mem, &desc::tx_context(c), TxSlot::Context);
                    if r.is_ok() {
                        self.tx_context = csum;
                    }
                    r
                } else {
                    Ok(true)
                };
                ctx.and_then(|_| {
                    self.tx.post(
                        &mut self.tx_mem,
                        &desc::tx_data(bus, len as u16, c),
                        TxSlot::Frame(buf),
                    )
                })
            }
        };
        if let Err(e) = posted {
            self.tx_pool.give_back(buf);
            return self.desc_fail(Err(e));
        }
        // Orders the frame's bytes and its descriptors before the tail
        // write that hands them to the device.
        fence(Ordering::SeqCst);
        let r = self.wr(TDT, u32::from(self.tx.tail()));
        self.fail_on(r)?;
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(())
    }
}

impl<P: PciPlatform> Drop for E1000e<P> {
    fn drop(&mut self) {
        // Stop the device before its DMA memory goes back to the platform.
        let _ = self.regs.write32(reg(IMC), 0xffff_ffff);
        let _ = self.regs.write32(reg(RCTL), 0);
        let _ = self.regs.write32(reg(TCTL), 0);
        let _ = config::update_command(self.platform.config(), self.bdf, 0, config::COMMAND_MASTER);
        let _ = self.platform.disable_msix(self.bdf);
        for b in self.rx.drain() {
            self.rx_pool.give_back(b);
        }
        for b in self.tx.drain() {
            self.tx_pool.give_back(b);
        }
    }
}

impl<P: PciPlatform> FrameDevice for E1000e<P> {
    type Tx = E1000eTxFrame<P::Dma>;
    type Rx = E1000eRxFrame<P::Dma>;

    fn link(&self) -> LinkInfo {
        LinkInfo {
            up: self.link_up && self.broken.is_none(),
            mac: self.mac,
            mtu: MAX_FRAME - desc::ETH_HLEN,
            max_frame: MAX_FRAME,
        }
    }

    fn tx_buffer(&mut self, len: usize) -> Result<Option<Self::Tx>, FrameError> {
        self.check()?;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME,
            });
        }
        if len == 0 {
            return Err(FrameError::Invalid(String::from("a frame of 0 bytes")));
        }
        if !self.link_up {
            return Err(FrameError::LinkDown);
        }
        if self.tx_pool.free_count() == 0 {
            self.reap_tx()?;
        }
        Ok(self
            .tx_pool
            .take()
            .map(|b| E1000eTxFrame::new(self.tx_pool.clone(), b, len)))
    }

    fn send(&mut self, frame: Self::Tx) -> Result<(), FrameError> {
        self.check()?;
        if !self.link_up {
            return Err(FrameError::LinkDown);
        }
        self.send_inner(frame)
    }

    fn receive(&mut self) -> Result<Option<Self::Rx>, FrameError> {
        self.check()?;
        let r = self.refill_rx();
        self.fail_on(r)?;
        for _ in 0..self.rx.size() {
            let c = self.rx.next_completion(&mut self.rx_mem);
            let Some(c) = self.desc_fail(c)? else {
                return Ok(None);
            };
            match c.parsed {
                RxParsed::Frame { len, csum } => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += u64::from(len);
                    return Ok(Some(E1000eRxFrame::new(
                        self.rx_pool.clone(),
                        c.buf,
                        usize::from(len),
                        csum,
                    )));
                }
                RxParsed::Errored { errors } => {
                    self.stats.rx_errors += 1;
                    log::debug!(
                        "e1000e {}: dropped a frame received with errors {errors:#x}",
                        self.bdf
                    );
                    self.rx_pool.give_back(c.buf);
                }
                RxParsed::NotDone => return Ok(None),
            }
        }
        let r = self.refill_rx();
        self.fail_on(r)?;
        Ok(None)
    }

    fn poll(&mut self) -> Result<bool, FrameError> {
        self.check()?;
        let mut happened = self.reap_tx()? > 0;
        happened |= self.service_other()?;
        self.check_heads()?;
        let r = self.refill_rx();
        self.fail_on(r)?;
        happened |= self.work_pending();
        Ok(happened)
    }

    fn wait(&mut self, timeout_ns: Option<u64>) -> Result<bool, FrameError> {
        self.check()?;
        if self.poll()? {
            return Ok(true);
        }
        match self.mode {
            IrqMode::Polling => {
                // Looking at the rings alone never notices a device that
                // vanished (its DMA just stops): every so many spins, read
                // STATUS (all ones: gone) and check the head registers.
                const SPINS_PER_CHECK: u32 = 1024;
                let start = self.platform.now_ns();
                let mut spins: u32 = 0;
                loop {
                    if self.work_pending() {
                        return Ok(true);
                    }
                    if timeout_ns.is_some_and(|t| self.platform.now_ns().saturating_sub(start) >= t)
                    {
                        return Ok(false);
                    }
                    spins = spins.wrapping_add(1);
                    if spins % SPINS_PER_CHECK == 0 {
                        let r = self.rd(STATUS);
                        if self.fail_on(r)? == 0xffff_ffff {
                            return Err(self.break_device(String::from(
                                "registers read all ones: the device is gone",
                            )));
                        }
                        self.check_heads()?;
                    }
                    core::hint::spin_loop();
                }
            }
            IrqMode::Interrupts => {
                // Re-enable the vectors the device auto-masked when it
                // sent them, then look once more before sleeping: work that
                // arrived before the write raises an interrupt on it.
                let r = self.wr(IMS, Self::IMS_ALL);
                self.fail_on(r)?;
                if self.work_pending() {
                    return Ok(true);
                }
                let woke = self.platform.block_any(&self.ports, timeout_ns);
                let woke = woke.map_err(|e| {
                    self.break_device(format!("waiting for the device's interrupts: {e}"))
                })?;
                if let Some(port) = woke {
                    self.stats.interrupts += 1;
                    // Clear the others' pending bits too: the next poll
                    // serves every cause.
                    for p in self.ports {
                        if p != port {
                            let _ = self.platform.poll(p);
                        }
                    }
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }
}
