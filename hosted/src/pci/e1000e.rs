//! An Intel 82574L (`e1000e`) model, after QEMU 7.2's (`hw/net/e1000e.c`,
//! `hw/net/e1000e_core.c`), for testing the passthrough e1000e driver.
//!
//! # The device
//! Vendor 0x8086, device 0x10d3, class Ethernet (0x020000). BAR0: 128 KiB of
//! registers; BAR1: 128 KiB of flash (reads zero); BAR3: 16 KiB holding the
//! MSI-X table (5 entries, at 0) and its pending bits (at 0x2000), served
//! by the bus; one MSI vector. QEMU's BAR2 (I/O ports) is left out (the
//! hosted bus has memory BARs only).
//!
//! # What is modelled, as QEMU 7.2 does it
//! - **Registers**: a 128 KiB register file; `CTRL.RST` self-clears and,
//!   as in QEMU 7.2, resets only the MAC address (receive address 0, from
//!   the EEPROM); `STATUS` reports link up, full duplex, 1000 Mb/s and bus
//!   master enable; `EERD` reads the EEPROM (words 0-2: the MAC); ring
//!   registers (`RDBAL`/`TDBAL` 16-byte aligned, lengths 128-byte
//!   multiples, heads and tails 16 bits).
//! - **Interrupts**: `ICR` (read: cleared when `IMS` is zero, or with
//!   `CTRL_EXT.IAME` while asserted; write: 1s clear, writing `OTHER`
//!   clears the other causes), `ICS`, `IMS`, `IMC`, `IAM`, `EIAC`, `IVAR`,
//!   and QEMU 7.2's delivery: with MSI-X, a cause among `ICR & IMS` not yet
//!   sent raises the vector its `IVAR` entry names (RX queue 0, TX queue 0,
//!   other), then `EIAC` clears it from `ICR` (and from `IMS` unless
//!   `CTRL_EXT.IAME`); with MSI, vector 0. No interrupt throttling (QEMU's
//!   `ITR`/`EITR` timers) and no delay timers (`RDTR`, `TIDV`, ...): every
//!   cause is raised at once.
//! - **RX**: legacy or extended descriptors (`RFCTL.EXTEN`; packet split
//!   is refused with a log), buffer sizes from `RCTL.BSIZE`/`BSEX`, frames
//!   padded to 60 bytes, CRC stripped or four zero bytes appended
//!   (`RCTL.SECRC`), filtering (unicast: receive address 0 or `UPE`;
//!   broadcast: `BAM`; multicast: `MPE` or the multicast table),
//!   frames above 1522 bytes dropped without `LPE`. A frame waits in the
//!   inbox while the ring has too few free descriptors (QEMU queues it
//!   too). The write-back carries the packet type and, with `RXCSUM`, the
//!   IPv4 header and TCP/UDP (IPv4 only) checksum verdicts.
//! - **TX**: legacy descriptors, context and data descriptors; a frame
//!   ends at `EOP`; `RS` (or `IVAR`'s every-write-back bit) writes the done
//!   bit back; data descriptors' `POPTS` insert the IPv4 header checksum
//!   and the TCP/UDP checksum. The TCP/UDP checksum is computed as the
//!   hardware does (the ones'-complement sum from `TUCSS` to `TUCSE`,
//!   including the field, which the driver seeds with the pseudo-header
//!   sum); QEMU instead recomputes it from its own parse of the packet,
//!   which gives the same result for a correctly seeded field. Sending
//!   needs `TCTL.EN` and `TARC0` bit 10 (as in QEMU). `RCTL.LBM` = MAC
//!   loopback sends frames back to the device's own receiver.
//!
//! # The wire
//! [`E1000eWire`] is the other end of the cable: [`E1000eWire::send`]
//! puts a frame in the device's inbox, [`E1000eWire::recv`] takes what the
//! device sent, [`E1000eWire::set_link`] pulls the cable (a link status
//! change). The device thread looks at the inbox every 200 µs while the
//! receiver is enabled, every 20 µs while frames arrive, and at once after
//! the driver posts buffers.
//!
//! # Hostile modes
//! [`E1000eFaults`] makes the device write nonsense for driver tests:
//! impossible RX lengths, write-backs without end-of-packet, contradictory
//! status bits, done bits on descriptors never posted (RX and TX), head
//! registers beyond the ring.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::space::{BarSpec, ConfigSpace, LayoutError, CONFIG_SPACE_PCIE};
use super::{DeviceCtx, DeviceModel};
use crate::domain::lock;

/// Intel's vendor id.
pub const E1000E_VENDOR_ID: u16 = 0x8086;
/// The 82574L's device id.
pub const E1000E_DEVICE_ID: u16 = 0x10D3;
/// MSI-X vectors (QEMU's `E1000E_MSIX_VEC_NUM`).
pub const E1000E_MSIX_VECTORS: u16 = 5;

const BAR_SIZE: u32 = 128 * 1024;
const MSIX_BAR_SIZE: u32 = 16 * 1024;
const REGS: usize = BAR_SIZE as usize / 4;

// Register indices (byte offset / 4).
const CTRL: usize = 0; // 0x0000
const STATUS: usize = 0x0008 / 4;
const EECD: usize = 0x0010 / 4;
const EERD: usize = 0x0014 / 4;
const CTRL_EXT: usize = 0x0018 / 4;
const ICR: usize = 0x00C0 / 4;
const ITR: usize = 0x00C4 / 4;
const ICS: usize = 0x00C8 / 4;
const IMS: usize = 0x00D0 / 4;
const IMC: usize = 0x00D8 / 4;
const EIAC: usize = 0x00DC / 4;
const IAM: usize = 0x00E0 / 4;
const IVAR: usize = 0x00E4 / 4;
const RCTL: usize = 0x0100 / 4;
const TCTL: usize = 0x0400 / 4;
const TIPG: usize = 0x0410 / 4;
const RDBAL: usize = 0x2800 / 4;
const RDBAH: usize = 0x2804 / 4;
const RDLEN: usize = 0x2808 / 4;
const RDH: usize = 0x2810 / 4;
const RDT: usize = 0x2818 / 4;
const TDBAL: usize = 0x3800 / 4;
const TDBAH: usize = 0x3804 / 4;
const TDLEN: usize = 0x3808 / 4;
const TDH: usize = 0x3810 / 4;
const TDT: usize = 0x3818 / 4;
const TARC0: usize = 0x3840 / 4;
const RXCSUM: usize = 0x5000 / 4;
const RFCTL: usize = 0x5008 / 4;
const MTA: usize = 0x5200 / 4;
const RA: usize = 0x5400 / 4;

const CTRL_SLU: u32 = 1 << 6;
const CTRL_RST: u32 = 1 << 26;
const CTRL_GIO_MASTER_DISABLE: u32 = 1 << 2;
const STATUS_FD: u32 = 1 << 0;
const STATUS_LU: u32 = 1 << 1;
const STATUS_SPEED_1000: u32 = 2 << 6;
const STATUS_ASDV_1000: u32 = 2 << 8;
const STATUS_GIO_MASTER_ENABLE: u32 = 1 << 19;
const EERD_START: u32 = 1;
const EERD_DONE: u32 = 2;
const CTRL_EXT_EIAME: u32 = 1 << 24;
const CTRL_EXT_IAME: u32 = 1 << 27;

const ICR_TXDW: u32 = 1 << 0;
const ICR_TXQE: u32 = 1 << 1;
const ICR_LSC: u32 = 1 << 2;
const ICR_RXO: u32 = 1 << 6;
const ICR_RXT0: u32 = 1 << 7;
const ICR_MDAC: u32 = 1 << 9;
const ICR_SRPD: u32 = 1 << 16;
const ICR_ACK: u32 = 1 << 17;
const ICR_MNG: u32 = 1 << 18;
const ICR_RXQ0: u32 = 1 << 20;
const ICR_RXQ1: u32 = 1 << 21;
const ICR_TXQ0: u32 = 1 << 22;
const ICR_TXQ1: u32 = 1 << 23;
const ICR_OTHER: u32 = 1 << 24;
const ICR_ASSERTED: u32 = 1 << 31;
const ICR_OTHER_CAUSES: u32 = ICR_LSC | ICR_RXO | ICR_MDAC | ICR_SRPD | ICR_ACK | ICR_MNG;
const IMS_VALID: u32 = 0x0007_00DF | ICR_MDAC | (1 << 15) | ICR_RXQ0 | ICR_RXQ1 | ICR_TXQ0 | ICR_TXQ1 | ICR_OTHER;
const IVAR_VALID: u32 = 0x8;
const IVAR_TX_INT_EVERY_WB: u32 = 1 << 31;

const RCTL_EN: u32 = 1 << 1;
const RCTL_UPE: u32 = 1 << 3;
const RCTL_MPE: u32 = 1 << 4;
const RCTL_LPE: u32 = 1 << 5;
const RCTL_LBM_MAC: u32 = 1 << 6;
const RCTL_LBM_MASK: u32 = 3 << 6;
const RCTL_DTYP_MASK: u32 = 3 << 10;
const RCTL_MO_SHIFT: u32 = 12;
const RCTL_BAM: u32 = 1 << 15;
const RCTL_BSEX: u32 = 1 << 25;
const RCTL_SECRC: u32 = 1 << 26;
const RCTL_FLXBUF_MASK: u32 = 0xF << 27;
const RFCTL_EXTEN: u32 = 1 << 15;
const RXCSUM_IPOFLD: u32 = 1 << 8;
const RXCSUM_TUOFLD: u32 = 1 << 9;
const RXCSUM_PCSD: u32 = 1 << 13;
const TCTL_EN: u32 = 1 << 1;
const TARC_ENABLE: u32 = 1 << 10;
const RAH_AV: u32 = 1 << 31;

const RXD_DD: u32 = 1 << 0;
const RXD_EOP: u32 = 1 << 1;
const RXD_VP: u32 = 1 << 3;
const RXD_UDPCS: u32 = 1 << 4;
const RXD_TCPCS: u32 = 1 << 5;
const RXD_IPCS: u32 = 1 << 6;
const RXD_IPIDV: u32 = 1 << 9;
const RXD_ERR_CE: u32 = 1 << 24;
const RXD_ERR_TCPE: u32 = 1 << 29;
const RXD_ERR_IPE: u32 = 1 << 30;
const PKT_MAC: u32 = 0;
const PKT_IP4: u32 = 1;
const PKT_IP4_XDP: u32 = 2;
const PKT_IP6: u32 = 5;
const PKT_IP6_XDP: u32 = 6;

const TXD_CMD_EOP: u32 = 1 << 24;
const TXD_CMD_RS: u32 = 1 << 27;
const TXD_CMD_DEXT: u32 = 1 << 29;
const TXD_DTYP_D: u32 = 1 << 20;
const TXD_STAT_DD: u32 = 1;
const POPTS_IXSM: u32 = 1;
const POPTS_TXSM: u32 = 2;

/// The longest frame the receiver takes without `RCTL.LPE`.
const MAX_VLAN_FRAME: usize = 1522;
/// The longest frame a TX chain may build.
const MAX_TX_FRAME: usize = 64 * 1024;
/// Frames the inbox holds before the wire drops new ones.
const INBOX_LIMIT: usize = 4096;
/// How soon the device looks at its inbox again after it found frames
/// there, and when it found none.
const RX_POLL_BUSY: Duration = Duration::from_micros(20);
const RX_POLL_IDLE: Duration = Duration::from_micros(200);

/// Ways to make the device write nonsense (all off by default). Each
/// applies to every write-back (or register read) it names from the moment
/// it is set ([`E1000eWire::set_faults`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct E1000eFaults {
    /// RX write-backs carry this length instead of the frame's.
    pub rx_length: Option<u16>,
    /// RX write-backs lack end-of-packet.
    pub rx_no_eop: bool,
    /// RX write-backs claim an IP checksum error for a checksum not checked.
    pub rx_bad_status: bool,
    /// RX write-backs claim a stripped VLAN tag.
    pub rx_vlan: bool,
    /// RX write-backs claim a CRC error (a bad frame, which a driver drops
    /// and survives).
    pub rx_crc_error: bool,
    /// Each RX write-back also sets the done bit of the descriptor at the
    /// tail, which the driver did not post.
    pub rx_done_at_tail: bool,
    /// Each TX write-back also sets the done bit of the descriptor at the
    /// tail.
    pub tx_done_at_tail: bool,
    /// RDH reads this (beyond the ring, when large).
    pub rdh: Option<u32>,
    /// TDH reads this.
    pub tdh: Option<u32>,
    /// Receive address 0 reads zero until the driver writes it (no address
    /// loaded from the EEPROM; the driver must read the EEPROM). Not a
    /// lie: a device without manageability firmware can come up so.
    pub receive_address_unset: bool,
    /// Every register read returns all ones, as from a device that
    /// vanished (surprise removal, a hung link).
    pub gone: bool,
}

/// What the wire and the tests share with the device.
#[derive(Debug, Default)]
struct WireState {
    /// Frames for the device to receive.
    inbox: VecDeque<Vec<u8>>,
    /// Frames the device sent.
    outbox: VecDeque<Vec<u8>>,
    faults: E1000eFaults,
}

#[derive(Debug)]
struct Wire {
    state: Mutex<WireState>,
    sent: Condvar,
    link_up: AtomicBool,
    rx_frames: AtomicU64,
    tx_frames: AtomicU64,
    rx_dropped: AtomicU64,
}

/// The other end of the device's cable (see the module docs). Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct E1000eWire {
    wire: Arc<Wire>,
}

impl E1000eWire {
    /// Puts a frame on the wire towards the device. Returns `false` when
    /// the inbox is full (the frame is dropped, as on a congested wire).
    pub fn send(&self, frame: &[u8]) -> bool {
        let mut st = lock(&self.wire.state);
        if st.inbox.len() >= INBOX_LIMIT {
            return false;
        }
        st.inbox.push_back(frame.to_vec());
        true
    }

    /// The next frame the device sent, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        lock(&self.wire.state).outbox.pop_front()
    }

    /// The next frame the device sends, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = lock(&self.wire.state);
        loop {
            if let Some(f) = st.outbox.pop_front() {
                return Some(f);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .wire
                .sent
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Frames waiting for the device to receive them.
    pub fn inbox_len(&self) -> usize {
        lock(&self.wire.state).inbox.len()
    }

    /// Plugs or pulls the cable; the device raises a link status change on
    /// its next look at the wire.
    pub fn set_link(&self, up: bool) {
        self.wire.link_up.store(up, Ordering::SeqCst);
    }

    /// Makes the device lie (see [`E1000eFaults`]).
    pub fn set_faults(&self, faults: E1000eFaults) {
        lock(&self.wire.state).faults = faults;
    }

    /// Frames the device received into the driver's buffers.
    pub fn frames_received(&self) -> u64 {
        self.wire.rx_frames.load(Ordering::Relaxed)
    }

    /// Frames the device sent.
    pub fn frames_sent(&self) -> u64 {
        self.wire.tx_frames.load(Ordering::Relaxed)
    }

    /// Frames the receiver filtered out or found too long.
    pub fn frames_dropped(&self) -> u64 {
        self.wire.rx_dropped.load(Ordering::Relaxed)
    }
}

/// A frame being gathered from TX descriptors.
#[derive(Debug, Default)]
struct TxState {
    data: Vec<u8>,
    /// The last context: (IPCSS, IPCSO, IPCSE, TUCSS, TUCSO, TUCSE).
    ctx: Option<(u8, u8, u16, u8, u8, u16)>,
    popts: u32,
    overflow: bool,
}

/// The 82574L model (see the module docs).
pub struct E1000eModel {
    mac_addr: [u8; 6],
    regs: Vec<u32>,
    eeprom: [u16; 64],
    wire: Arc<Wire>,
    link_up: bool,
    /// Causes sent and not yet cleared (QEMU's `msi_causes_pending`).
    msi_causes_pending: u32,
    tx: TxState,
    /// The driver wrote receive address 0.
    ra_written: bool,
}

impl std::fmt::Debug for E1000eModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E1000eModel")
            .field("mac", &self.mac_addr)
            .field("link_up", &self.link_up)
            .finish()
    }
}

impl E1000eModel {
    /// A device with MAC address `mac` and its wire.
    pub fn new(mac: [u8; 6]) -> (Self, E1000eWire) {
        let wire = Arc::new(Wire {
            state: Mutex::new(WireState::default()),
            sent: Condvar::new(),
            link_up: AtomicBool::new(true),
            rx_frames: AtomicU64::new(0),
            tx_frames: AtomicU64::new(0),
            rx_dropped: AtomicU64::new(0),
        });
        let mut eeprom = [0u16; 64];
        for i in 0..3 {
            eeprom[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
        }
        let mut m = E1000eModel {
            mac_addr: mac,
            regs: vec![0; REGS],
            eeprom,
            wire: wire.clone(),
            link_up: true,
            msi_causes_pending: 0,
            tx: TxState::default(),
            ra_written: false,
        };
        m.power_on_reset();
        (m, E1000eWire { wire })
    }

    /// The register values QEMU 7.2 starts with (`e1000e_core_reset`).
    fn power_on_reset(&mut self) {
        self.regs.fill(0);
        self.regs[CTRL] = 1 | (1 << 18) | (1 << 20) | (2 << 8) | CTRL_SLU;
        self.regs[STATUS] = STATUS_ASDV_1000 | STATUS_LU;
        self.regs[EECD] = (1 << 9) | (1 << 8);
        self.regs[EERD] = EERD_DONE;
        self.regs[TIPG] = 0x8 | (0x8 << 10) | (0x6 << 20);
        self.regs[TARC0] = 0x3 | TARC_ENABLE;
        self.regs[RXCSUM] = RXCSUM_IPOFLD | RXCSUM_TUOFLD;
        self.regs[ITR] = 500;
        self.reset_mac_addr();
    }

    fn reset_mac_addr(&mut self) {
        let m = self.mac_addr;
        self.regs[RA] = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        self.regs[RA + 1] = u32::from(u16::from_le_bytes([m[4], m[5]])) | RAH_AV;
    }

    fn wire_pending(&self) -> bool {
        !lock(&self.wire.state).inbox.is_empty()
    }

    fn faults(&self) -> E1000eFaults {
        lock(&self.wire.state).faults
    }

    fn msix_enabled(dev: &mut DeviceCtx<'_>) -> bool {
        dev.config()
            .msix_control()
            .is_some_and(|c| c & super::space::MSIX_ENABLE != 0)
    }

    // ---- interrupts (e1000e_set_interrupt_cause and friends) ----

    fn set_interrupt_cause(&mut self, cause: u32, dev: &mut DeviceCtx<'_>) {
        self.regs[ICR] |= cause;
        self.update_interrupt_state(dev);
    }

    fn update_interrupt_state(&mut self, dev: &mut DeviceCtx<'_>) {
        let msix = Self::msix_enabled(dev);
        if msix && self.regs[ICR] & ICR_OTHER_CAUSES != 0 {
            self.regs[ICR] |= ICR_OTHER;
        }
        self.regs[ICR] &= !ICR_ASSERTED;
        if self.regs[ICR] != 0 {
            self.regs[ICR] |= ICR_ASSERTED;
        }
        self.regs[ICS] = self.regs[ICR];
        let pending = self.regs[IMS] & self.regs[ICR] != 0;
        if !pending {
            self.msi_causes_pending = 0;
            return;
        }
        if !(msix || dev.msi_enabled()) {
            // INTx is not delivered on the hosted bus; record the level.
            dev.set_intx(true);
            return;
        }
        let mut causes = self.regs[ICR] & self.regs[IMS] & !ICR_ASSERTED;
        self.msi_causes_pending &= causes;
        causes ^= self.msi_causes_pending;
        if causes == 0 {
            return;
        }
        self.msi_causes_pending |= causes;
        if !msix {
            dev.raise_msi(0);
            return;
        }
        let ivar = self.regs[IVAR];
        for (cause, shift) in [
            (ICR_RXQ0, 0),
            (ICR_RXQ1, 4),
            (ICR_TXQ0, 8),
            (ICR_TXQ1, 12),
            (ICR_OTHER, 16),
        ] {
            if causes & cause == 0 {
                continue;
            }
            let entry = (ivar >> shift) & 0xF;
            if entry & IVAR_VALID != 0 {
                let vec = (entry & 0x7) as u16;
                if vec < E1000E_MSIX_VECTORS {
                    dev.raise_msi(vec);
                } else {
                    log::debug!("e1000e model: IVAR names vector {vec}, beyond the table; dropped");
                }
            }
            if self.regs[CTRL_EXT] & CTRL_EXT_EIAME != 0 {
                // QEMU 7.2 clears IAM here (later versions clear IMS).
                self.regs[IAM] &= !cause;
            }
            let eiac = self.regs[EIAC] & cause;
            self.regs[ICR] &= !eiac;
            self.msi_causes_pending &= !eiac;
            if self.regs[CTRL_EXT] & CTRL_EXT_IAME == 0 {
                self.regs[IMS] &= !eiac;
            }
        }
    }

    fn read_icr(&mut self, dev: &mut DeviceCtx<'_>) -> u32 {
        let ret = self.regs[ICR];
        if self.regs[IMS] == 0 {
            self.regs[ICR] = 0;
        }
        if self.regs[ICR] & ICR_ASSERTED != 0 && self.regs[CTRL_EXT] & CTRL_EXT_IAME != 0 {
            self.regs[ICR] = 0;
            self.regs[IMS] &= !self.regs[IAM];
        }
        self.update_interrupt_state(dev);
        ret
    }

    fn write_icr(&mut self, val: u32, dev: &mut DeviceCtx<'_>) {
        if self.regs[ICR] & ICR_ASSERTED != 0 && self.regs[CTRL_EXT] & CTRL_EXT_IAME != 0 {
            self.regs[IMS] &= !self.regs[IAM];
        }
        let mut icr = self.regs[ICR] & !val;
        if val & ICR_OTHER != 0 {
            icr &= !ICR_OTHER_CAUSES;
        }
        self.regs[ICR] = icr;
        self.update_interrupt_state(dev);
    }

    // ---- the link ----

    fn check_link(&mut self, dev: &mut DeviceCtx<'_>) {
        let up = self.wire.link_up.load(Ordering::SeqCst);
        if up == self.link_up {
            return;
        }
        self.link_up = up;
        if up {
            self.regs[STATUS] |= STATUS_LU;
        } else {
            self.regs[STATUS] &= !STATUS_LU;
        }
        self.set_interrupt_cause(ICR_LSC, dev);
    }

    // ---- rings ----

    fn ring_base(&self, bah: usize, bal: usize) -> u64 {
        (u64::from(self.regs[bah]) << 32) | u64::from(self.regs[bal])
    }

    fn ring_slots(&self, len: usize) -> u32 {
        self.regs[len] / 16
    }

    /// Free RX descriptors (QEMU's `e1000e_ring_free_descr_num`).
    fn rx_free(&self) -> u32 {
        let (h, t, n) = (self.regs[RDH], self.regs[RDT], self.ring_slots(RDLEN));
        if t >= n || n == 0 {
            return 0;
        }
        if h <= t {
            t - h
        } else {
            n + t - h
        }
    }

    fn rx_buf_size(&self) -> usize {
        let rctl = self.regs[RCTL];
        if rctl & RCTL_FLXBUF_MASK != 0 {
            return ((rctl & RCTL_FLXBUF_MASK) >> 27) as usize * 1024;
        }
        let bsize = (rctl >> 16) & 3;
        match (rctl & RCTL_BSEX != 0, bsize) {
            (true, 1) => 16384,
            (true, 2) => 8192,
            (true, 3) => 4096,
            (false, 1) => 1024,
            (false, 2) => 512,
            (false, 3) => 256,
            _ => 2048,
        }
    }

    fn rx_enabled(&self) -> bool {
        self.regs[RCTL] & RCTL_EN != 0 && self.regs[STATUS] & STATUS_LU != 0
    }

    /// Whether the receive filters take `frame` (`e1000e_receive_filter`).
    fn accepts(&self, frame: &[u8]) -> bool {
        let rctl = self.regs[RCTL];
        let dst = &frame[..6];
        if dst == [0xFF; 6] {
            return rctl & RCTL_BAM != 0 || self.in_mta(dst);
        }
        if dst[0] & 1 != 0 {
            return rctl & RCTL_MPE != 0 || self.in_mta(dst);
        }
        if rctl & RCTL_UPE != 0 {
            return true;
        }
        (0..16).any(|i| {
            let (lo, hi) = (self.regs[RA + 2 * i], self.regs[RA + 2 * i + 1]);
            hi & RAH_AV != 0 && dst[..4] == lo.to_le_bytes() && dst[4..6] == hi.to_le_bytes()[..2]
        })
    }

    fn in_mta(&self, dst: &[u8]) -> bool {
        let mo = (self.regs[RCTL] >> RCTL_MO_SHIFT) & 3;
        let word = u32::from(u16::from_le_bytes([dst[4], dst[5]]));
        let hash = (word >> (4 - mo)) & 0xFFF;
        self.regs[MTA + (hash >> 5) as usize] & (1 << (hash & 31)) != 0
    }

    /// Moves frames from the inbox into the RX ring while there is room.
    fn receive_pending(&mut self, dev: &mut DeviceCtx<'_>) {
        for _ in 0..256 {
            if !self.rx_enabled() {
                return;
            }
            let frame = {
                let mut st = lock(&self.wire.state);
                let Some(f) = st.inbox.front() else { return };
                let needed = self.descs_needed(f.len());
                if self.rx_free() < needed {
                    // No room: the frame waits, as QEMU queues it.
                    return;
                }
                st.inbox.pop_front()
            };
            let Some(frame) = frame else { return };
            self.receive(frame, dev);
        }
    }

    fn fcs_len(&self) -> usize {
        if self.regs[RCTL] & RCTL_SECRC != 0 {
            0
        } else {
            4
        }
    }

    fn descs_needed(&self, len: usize) -> u32 {
        let total = len.max(60) + self.fcs_len();
        total.div_ceil(self.rx_buf_size().max(1)) as u32
    }

    /// One frame into the ring (`e1000e_receive_iov` and
    /// `e1000e_write_packet_to_guest`).
    fn receive(&mut self, mut frame: Vec<u8>, dev: &mut DeviceCtx<'_>) {
        if frame.len() < 60 {
            frame.resize(60, 0);
        }
        if frame.len() > MAX_VLAN_FRAME && self.regs[RCTL] & RCTL_LPE == 0 {
            self.wire.rx_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.accepts(&frame) {
            self.wire.rx_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.regs[RCTL] & RCTL_DTYP_MASK != 0 && self.regs[RFCTL] & RFCTL_EXTEN != 0 {
            log::warn!("e1000e model: packet-split RX descriptors are not modelled; frame dropped");
            self.wire.rx_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let faults = self.faults();
        let extended = self.regs[RFCTL] & RFCTL_EXTEN != 0;
        let meta = self.rx_metadata(&frame);
        let size = frame.len();
        let total = size + self.fcs_len();
        frame.resize(total, 0);
        let buf_size = self.rx_buf_size();
        let base = self.ring_base(RDBAH, RDBAL);
        let slots = self.ring_slots(RDLEN);
        let mut offset = 0;
        while offset < total {
            if self.rx_free() == 0 {
                break;
            }
            let head = self.regs[RDH];
            let desc_addr = base.wrapping_add(u64::from(head) * 16);
            let mut d = [0u8; 16];
            if dev.dma_read(desc_addr, &mut d).is_err() {
                log::warn!("e1000e model: reading RX descriptor {head} failed");
                return;
            }
            let buf = u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8]));
            let chunk = (total - offset).min(buf_size);
            let mut written = 0u16;
            let mut last = false;
            if buf != 0 {
                if dev.dma_write(buf, &frame[offset..offset + chunk]).is_err() {
                    log::warn!("e1000e model: writing an RX buffer at {buf:#x} failed");
                }
                written = chunk as u16;
                offset += chunk;
                last = offset >= total;
            }
            let mut status = RXD_DD;
            if last {
                status |= RXD_EOP | meta;
            }
            if faults.rx_no_eop {
                status &= !RXD_EOP;
            }
            if faults.rx_bad_status && last {
                status = (status & !RXD_IPCS) | RXD_ERR_IPE;
            }
            if faults.rx_vlan && last {
                status |= RXD_VP;
            }
            if faults.rx_crc_error && last {
                status |= RXD_ERR_CE;
            }
            let length = faults.rx_length.unwrap_or(written);
            let wb = if extended {
                let mut w = [0u8; 16];
                if status & RXD_IPIDV != 0 {
                    let ip_id = u16::from_be_bytes([frame[18], frame[19]]);
                    w[4..6].copy_from_slice(&ip_id.to_le_bytes());
                }
                w[8..12].copy_from_slice(&status.to_le_bytes());
                w[12..14].copy_from_slice(&length.to_le_bytes());
                w
            } else {
                let mut w = d;
                w[8..10].copy_from_slice(&length.to_le_bytes());
                w[10..12].copy_from_slice(&[0, 0]);
                w[12] = status as u8;
                w[13] = (status >> 24) as u8;
                w[14..16].copy_from_slice(&[0, 0]);
                w
            };
            let _ = dev.dma_write(desc_addr, &wb);
            if faults.rx_done_at_tail {
                let tail_addr = base.wrapping_add(u64::from(self.regs[RDT]) * 16);
                let _ = dev.dma_write(tail_addr + 8, &RXD_DD.to_le_bytes());
            }
            self.regs[RDH] = head + 1;
            if self.regs[RDH] >= slots {
                self.regs[RDH] = 0;
            }
        }
        self.wire.rx_frames.fetch_add(1, Ordering::Relaxed);
        let cause = if Self::msix_enabled(dev) { ICR_RXQ0 } else { ICR_RXT0 };
        self.set_interrupt_cause(cause, dev);
    }

    /// The status bits a frame's write-back carries: packet type and
    /// checksum verdicts (`e1000e_build_rx_metadata`).
    fn rx_metadata(&self, f: &[u8]) -> u32 {
        let rxcsum = self.regs[RXCSUM];
        let mut s = 0;
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        match ethertype {
            0x0800 if f.len() >= 34 && f[14] >> 4 == 4 => {
                let ihl = usize::from(f[14] & 0xF) * 4;
                let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
                let proto = f[23];
                let frag = u16::from_be_bytes([f[20], f[21]]) & 0x3FFF != 0;
                let ok_hdr = ihl >= 20 && 14 + ihl <= f.len() && total >= ihl && 14 + total <= f.len();
                let l4 = ok_hdr && !frag && (proto == 6 || proto == 17);
                s |= (if l4 { PKT_IP4_XDP } else { PKT_IP4 }) << 16;
                if rxcsum & RXCSUM_PCSD == 0 {
                    s |= RXD_IPIDV;
                }
                if !ok_hdr {
                    return s;
                }
                if rxcsum & RXCSUM_IPOFLD != 0 {
                    s |= RXD_IPCS;
                    if fold(sum(&f[14..14 + ihl], 0)) != 0xFFFF {
                        s |= RXD_ERR_IPE;
                    }
                }
                if l4 && rxcsum & RXCSUM_TUOFLD != 0 {
                    let seg = &f[14 + ihl..14 + total];
                    let udp_no_csum = proto == 17 && seg.len() >= 8 && seg[6] == 0 && seg[7] == 0;
                    if (proto == 6 && seg.len() >= 20) || (proto == 17 && seg.len() >= 8) {
                        s |= RXD_TCPCS | if proto == 17 { RXD_UDPCS } else { 0 };
                        let mut acc = sum(&f[26..34], 0);
                        acc += u32::from(proto) + seg.len() as u32;
                        acc = sum(seg, acc);
                        if !udp_no_csum && fold(acc) != 0xFFFF {
                            s |= RXD_ERR_TCPE;
                        }
                    }
                }
            }
            0x86DD if f.len() >= 54 => {
                let next = f[20];
                s |= (if next == 6 || next == 17 { PKT_IP6_XDP } else { PKT_IP6 }) << 16;
            }
            _ => s |= PKT_MAC << 16,
        }
        s
    }

    // ---- transmit ----

    fn start_xmit(&mut self, dev: &mut DeviceCtx<'_>) {
        if self.regs[TCTL] & TCTL_EN == 0 || self.regs[TARC0] & TARC_ENABLE == 0 {
            return;
        }
        let faults = self.faults();
        let base = self.ring_base(TDBAH, TDBAL);
        let slots = self.ring_slots(TDLEN);
        let mut cause = ICR_TXQE;
        let mut bound = slots;
        while self.regs[TDH] != self.regs[TDT] && self.regs[TDT] < slots && bound > 0 {
            bound -= 1;
            let head = self.regs[TDH];
            let addr = base.wrapping_add(u64::from(head) * 16);
            let mut d = [0u8; 16];
            if dev.dma_read(addr, &mut d).is_err() {
                log::warn!("e1000e model: reading TX descriptor {head} failed");
                break;
            }
            let lower = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
            let upper = u32::from_le_bytes([d[12], d[13], d[14], d[15]]);
            self.process_tx_desc(&d, lower, upper, dev);
            if lower & TXD_CMD_RS != 0 || self.regs[IVAR] & IVAR_TX_INT_EVERY_WB != 0 {
                let _ = dev.dma_write(addr + 12, &(upper | TXD_STAT_DD).to_le_bytes());
                cause |= if Self::msix_enabled(dev) { ICR_TXQ0 } else { ICR_TXDW };
                if faults.tx_done_at_tail {
                    let tail = base.wrapping_add(u64::from(self.regs[TDT]) * 16);
                    let _ = dev.dma_write(tail + 12, &TXD_STAT_DD.to_le_bytes());
                }
            }
            self.regs[TDH] = head + 1;
            if self.regs[TDH] >= slots {
                self.regs[TDH] = 0;
            }
        }
        self.set_interrupt_cause(cause, dev);
    }

    fn process_tx_desc(&mut self, d: &[u8; 16], lower: u32, upper: u32, dev: &mut DeviceCtx<'_>) {
        let dtype = lower & (TXD_CMD_DEXT | TXD_DTYP_D);
        if dtype == TXD_CMD_DEXT {
            // A context descriptor.
            self.tx.ctx = Some((
                d[0],
                d[1],
                u16::from_le_bytes([d[2], d[3]]),
                d[4],
                d[5],
                u16::from_le_bytes([d[6], d[7]]),
            ));
            return;
        }
        let len = if dtype == (TXD_CMD_DEXT | TXD_DTYP_D) {
            self.tx.popts = (upper >> 8) & 0xFF;
            (lower & 0xF_FFFF) as usize
        } else {
            (lower & 0xFFFF) as usize
        };
        let addr = u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8]));
        if !self.tx.overflow {
            if self.tx.data.len() + len > MAX_TX_FRAME {
                self.tx.overflow = true;
            } else {
                let start = self.tx.data.len();
                self.tx.data.resize(start + len, 0);
                if dev.dma_read(addr, &mut self.tx.data[start..]).is_err() {
                    log::warn!("e1000e model: reading a TX buffer at {addr:#x} failed; frame dropped");
                    self.tx.overflow = true;
                }
            }
        }
        if lower & TXD_CMD_EOP != 0 {
            let mut frame = std::mem::take(&mut self.tx.data);
            if !self.tx.overflow && frame.len() >= 14 {
                self.tx_offloads(&mut frame);
                self.transmit(frame, dev);
            }
            self.tx.overflow = false;
            self.tx.popts = 0;
        }
    }

    fn tx_offloads(&self, f: &mut [u8]) {
        let Some((ipcss, ipcso, ipcse, tucss, tucso, tucse)) = self.tx.ctx else {
            return;
        };
        if self.tx.popts & POPTS_IXSM != 0 {
            let (s, o) = (usize::from(ipcss), usize::from(ipcso));
            let e = if ipcse == 0 { f.len() - 1 } else { usize::from(ipcse) };
            if s <= e && e < f.len() && o + 1 < f.len() {
                f[o] = 0;
                f[o + 1] = 0;
                let c = !fold(sum(&f[s..=e], 0));
                f[o..o + 2].copy_from_slice(&c.to_be_bytes());
            }
        }
        if self.tx.popts & POPTS_TXSM != 0 {
            let (s, o) = (usize::from(tucss), usize::from(tucso));
            let e = if tucse == 0 { f.len() - 1 } else { usize::from(tucse) };
            if s <= e && e < f.len() && o + 1 < f.len() {
                // As the hardware: the field holds the pseudo-header sum.
                let c = !fold(sum(&f[s..=e], 0));
                f[o..o + 2].copy_from_slice(&c.to_be_bytes());
            }
        }
    }

    fn transmit(&mut self, frame: Vec<u8>, dev: &mut DeviceCtx<'_>) {
        self.wire.tx_frames.fetch_add(1, Ordering::Relaxed);
        if self.regs[RCTL] & RCTL_LBM_MASK == RCTL_LBM_MAC {
            lock(&self.wire.state).inbox.push_back(frame);
            self.receive_pending(dev);
            return;
        }
        if !self.link_up {
            return;
        }
        lock(&self.wire.state).outbox.push_back(frame);
        self.wire.sent.notify_all();
    }

    fn schedule(&self, dev: &mut DeviceCtx<'_>, busy: bool) {
        if self.regs[RCTL] & RCTL_EN != 0 || self.wire.link_up.load(Ordering::Relaxed) != self.link_up {
            dev.schedule_in(if busy { RX_POLL_BUSY } else { RX_POLL_IDLE });
        }
    }

    // ---- register access ----

    fn read_reg(&mut self, idx: usize, dev: &mut DeviceCtx<'_>) -> u32 {
        let faults = self.faults();
        match idx {
            ICR => self.read_icr(dev),
            STATUS => {
                let mut s = self.regs[STATUS] | STATUS_FD | STATUS_SPEED_1000;
                if self.regs[CTRL] & CTRL_GIO_MASTER_DISABLE == 0 {
                    s |= STATUS_GIO_MASTER_ENABLE;
                }
                s
            }
            IMC => 0,
            RDH => faults.rdh.unwrap_or(self.regs[RDH]),
            i if (i == RA || i == RA + 1) && faults.receive_address_unset && !self.ra_written => 0,
            TDH => faults.tdh.unwrap_or(self.regs[TDH]),
            _ => self.regs[idx],
        }
    }

    fn write_reg(&mut self, idx: usize, val: u32, dev: &mut DeviceCtx<'_>) {
        match idx {
            CTRL => {
                self.regs[CTRL] = val & !CTRL_RST;
                if val & CTRL_RST != 0 {
                    // QEMU 7.2: the MAC address is all a software reset
                    // restores.
                    self.reset_mac_addr();
                }
            }
            STATUS => {}
            i if i == RA || i == RA + 1 => {
                self.regs[i] = val;
                self.ra_written = true;
            }
            EERD => {
                let addr = ((val >> 2) & 0x3FFF) as usize;
                let (flags, data) = match self.eeprom.get(addr) {
                    Some(w) if val & EERD_START != 0 => (EERD_DONE, u32::from(*w)),
                    _ => (0, 0),
                };
                self.regs[EERD] = flags | ((addr as u32) << 2) | (data << 16);
            }
            ICR => self.write_icr(val, dev),
            ICS => self.set_interrupt_cause(val, dev),
            IMS => {
                self.regs[IMS] |= val & IMS_VALID;
                self.update_interrupt_state(dev);
            }
            IMC => {
                self.regs[IMS] &= !val;
                self.update_interrupt_state(dev);
            }
            ITR => self.regs[ITR] = (val & 0xFFFF).max(500),
            RCTL => {
                self.regs[RCTL] = val;
                self.receive_pending(dev);
            }
            TCTL => {
                self.regs[TCTL] = val;
                self.start_xmit(dev);
            }
            RDBAL | TDBAL => self.regs[idx] = val & !0xF,
            RDLEN | TDLEN => self.regs[idx] = val & 0xF_FF80,
            RDH | TDH => self.regs[idx] = val & 0xFFFF,
            RDT => {
                self.regs[RDT] = val & 0xFFFF;
                self.receive_pending(dev);
            }
            TDT => {
                self.regs[TDT] = val & 0xFFFF;
                self.start_xmit(dev);
            }
            _ => self.regs[idx] = val,
        }
    }
}

/// The ones'-complement sum of big-endian 16-bit words, added to `acc`.
fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

impl DeviceModel for E1000eModel {
    fn name(&self) -> &str {
        "e1000e"
    }

    fn config_space(&self) -> Result<ConfigSpace, LayoutError> {
        ConfigSpace::new(E1000E_VENDOR_ID, E1000E_DEVICE_ID, 0x02_0000, 0, CONFIG_SPACE_PCIE)?
            .with_subsystem(E1000E_VENDOR_ID, 0)
            .with_interrupt_pin(1)
            .with_bar(
                0,
                BarSpec::Memory32 {
                    size: BAR_SIZE,
                    prefetchable: false,
                },
            )?
            .with_bar(
                1,
                BarSpec::Memory32 {
                    size: BAR_SIZE,
                    prefetchable: false,
                },
            )?
            .with_bar(
                3,
                BarSpec::Memory32 {
                    size: MSIX_BAR_SIZE,
                    prefetchable: false,
                },
            )?
            .with_msi(1, true, false)?
            .with_msix(E1000E_MSIX_VECTORS, (3, 0), (3, 0x2000))
    }

    fn mmio_read(&mut self, bar: u8, offset: u64, size: u8, dev: &mut DeviceCtx<'_>) -> u64 {
        if bar != 0 {
            return 0;
        }
        if self.faults().gone {
            return u64::MAX >> (64 - 8 * u32::from(size.clamp(1, 8)));
        }
        let idx = (offset / 4) as usize;
        if idx >= REGS {
            return 0;
        }
        let v = u64::from(self.read_reg(idx, dev));
        match size {
            4 => v,
            8 if idx + 1 < REGS => v | (u64::from(self.read_reg(idx + 1, dev)) << 32),
            _ => v >> (8 * (offset % 4)),
        }
    }

    fn mmio_write(&mut self, bar: u8, offset: u64, size: u8, value: u64, dev: &mut DeviceCtx<'_>) {
        if bar != 0 {
            return;
        }
        let idx = (offset / 4) as usize;
        if idx >= REGS || size < 4 {
            log::debug!("e1000e model: a {size}-byte write at {offset:#x} ignored (registers take 4 or 8 bytes)");
            return;
        }
        self.write_reg(idx, value as u32, dev);
        if size == 8 && idx + 1 < REGS {
            self.write_reg(idx + 1, (value >> 32) as u32, dev);
        }
        self.schedule(dev, false);
    }

    fn tick(&mut self, dev: &mut DeviceCtx<'_>) {
        self.check_link(dev);
        let before = self.wire.rx_frames.load(Ordering::Relaxed);
        self.receive_pending(dev);
        let busy = self.wire.rx_frames.load(Ordering::Relaxed) != before || self.wire_pending();
        self.schedule(dev, busy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        // An IPv4 header from RFC 1071's style of example: the checksum of a
        // header with its field filled in folds to 0xffff.
        let mut h = [0x45, 0, 0, 0x1c, 0, 1, 0, 0, 0x40, 0x11, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        let c = !fold(sum(&h, 0));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(sum(&h, 0)), 0xFFFF);
        assert_eq!(sum(&[1], 0), 0x100);
    }

    #[test]
    fn eeprom_holds_the_mac() {
        let (m, _wire) = E1000eModel::new([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(m.eeprom[0], 0x5452);
        assert_eq!(m.eeprom[2], 0x5634);
        assert_eq!(m.regs[RA + 1], 0x5634 | RAH_AV);
    }
}
