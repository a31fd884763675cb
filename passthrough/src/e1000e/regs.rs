//! The 82574L's registers as the driver uses them: byte offsets in BAR 0
//! and the bits of each (Intel's 82574 datasheet, as QEMU 7.2's `e1000e`
//! models them).
//!
//! Only what the driver programs or reads is here; every register is
//! 32 bits wide and accessed with 32-bit MMIO.

/// The PCI vendor id of Intel.
pub const VENDOR_INTEL: u16 = 0x8086;
/// The PCI device id of the 82574L (QEMU's `e1000e`).
pub const DEVICE_82574L: u16 = 0x10d3;
/// The BAR of the register file (memory, 128 KiB).
pub const BAR_REGS: u8 = 0;
/// The bytes of the register file the driver may touch.
pub const REGS_LEN: u64 = 0x2_0000;

/// Device control.
pub const CTRL: u32 = 0x0000;
/// Device status (read-only).
pub const STATUS: u32 = 0x0008;
/// EEPROM read: start a word read, then poll for done.
pub const EERD: u32 = 0x0014;
/// Extended device control.
pub const CTRL_EXT: u32 = 0x0018;
/// Interrupt cause read (write 1s to clear).
pub const ICR: u32 = 0x00c0;
/// Interrupt throttling (legacy and MSI).
pub const ITR: u32 = 0x00c4;
/// Interrupt cause set: raises the causes written.
pub const ICS: u32 = 0x00c8;
/// Interrupt mask set: enables the causes written.
pub const IMS: u32 = 0x00d0;
/// Interrupt mask clear: disables the causes written.
pub const IMC: u32 = 0x00d8;
/// Extended interrupt auto clear (82574): the MSI-X causes cleared from
/// ICR when their vector's message is sent.
pub const EIAC: u32 = 0x00dc;
/// Interrupt acknowledge auto mask.
pub const IAM: u32 = 0x00e0;
/// Interrupt vector allocation (82574): which MSI-X vector each cause
/// raises.
pub const IVAR: u32 = 0x00e4;
/// Receive control.
pub const RCTL: u32 = 0x0100;
/// Transmit control.
pub const TCTL: u32 = 0x0400;
/// Transmit inter-packet gap.
pub const TIPG: u32 = 0x0410;
/// RX descriptor ring 0: base low, base high, length in bytes, head, tail.
pub const RDBAL: u32 = 0x2800;
/// See [`RDBAL`].
pub const RDBAH: u32 = 0x2804;
/// See [`RDBAL`].
pub const RDLEN: u32 = 0x2808;
/// See [`RDBAL`].
pub const RDH: u32 = 0x2810;
/// See [`RDBAL`].
pub const RDT: u32 = 0x2818;
/// RX interrupt delay timer (0: none).
pub const RDTR: u32 = 0x2820;
/// RX interrupt absolute delay (0: none).
pub const RADV: u32 = 0x282c;
/// TX descriptor ring 0: base low, base high, length in bytes, head, tail.
pub const TDBAL: u32 = 0x3800;
/// See [`TDBAL`].
pub const TDBAH: u32 = 0x3804;
/// See [`TDBAL`].
pub const TDLEN: u32 = 0x3808;
/// See [`TDBAL`].
pub const TDH: u32 = 0x3810;
/// See [`TDBAL`].
pub const TDT: u32 = 0x3818;
/// TX interrupt delay (0: none).
pub const TIDV: u32 = 0x3820;
/// TX interrupt absolute delay (0: none).
pub const TADV: u32 = 0x382c;
/// TX arbitration counter of queue 0 (bit 10 enables the queue).
pub const TARC0: u32 = 0x3840;
/// RX checksum control.
pub const RXCSUM: u32 = 0x5000;
/// RX filter control.
pub const RFCTL: u32 = 0x5008;
/// The multicast table: 128 registers.
pub const MTA: u32 = 0x5200;
/// Entries in [`MTA`].
pub const MTA_LEN: u32 = 128;
/// Receive address 0, low 32 bits (bytes 0-3 of the MAC).
pub const RAL0: u32 = 0x5400;
/// Receive address 0, high bits (bytes 4-5 of the MAC, and [`RAH_AV`]).
pub const RAH0: u32 = 0x5404;

// CTRL
/// Full duplex.
pub const CTRL_FD: u32 = 1 << 0;
/// Disables bus mastering (for a reset).
pub const CTRL_GIO_MASTER_DISABLE: u32 = 1 << 2;
/// Auto speed detection.
pub const CTRL_ASDE: u32 = 1 << 5;
/// Set link up.
pub const CTRL_SLU: u32 = 1 << 6;
/// Software reset (self-clearing).
pub const CTRL_RST: u32 = 1 << 26;
/// PHY reset.
pub const CTRL_PHY_RST: u32 = 1 << 31;

// STATUS
/// Full duplex.
pub const STATUS_FD: u32 = 1 << 0;
/// Link up.
pub const STATUS_LU: u32 = 1 << 1;
/// Speed bits (00: 10, 01: 100, 1x: 1000 Mb/s).
pub const STATUS_SPEED_MASK: u32 = 3 << 6;
/// Bus mastering is enabled (clear once a master-disable completed).
pub const STATUS_GIO_MASTER_ENABLE: u32 = 1 << 19;

// EERD
/// Starts a read.
pub const EERD_START: u32 = 1 << 0;
/// The read is done.
pub const EERD_DONE: u32 = 1 << 1;
/// Where the word address goes.
pub const EERD_ADDR_SHIFT: u32 = 2;
/// Where the data comes back.
pub const EERD_DATA_SHIFT: u32 = 16;

// CTRL_EXT
/// Extended interrupt auto-mask enable (MSI-X).
pub const CTRL_EXT_EIAME: u32 = 1 << 24;
/// Interrupt acknowledge auto-mask enable.
pub const CTRL_EXT_IAME: u32 = 1 << 27;
/// The driver is loaded (firmware handshake).
pub const CTRL_EXT_DRV_LOAD: u32 = 1 << 28;
/// Clear the MSI-X pending bits when IMS is written.
pub const CTRL_EXT_PBA_CLR: u32 = 1 << 31;

// ICR / ICS / IMS / IMC
/// TX descriptor written back (legacy and MSI interrupts).
pub const ICR_TXDW: u32 = 1 << 0;
/// TX queue empty.
pub const ICR_TXQE: u32 = 1 << 1;
/// Link status change.
pub const ICR_LSC: u32 = 1 << 2;
/// RX descriptors below the minimum threshold.
pub const ICR_RXDMT0: u32 = 1 << 4;
/// RX overrun (no buffers).
pub const ICR_RXO: u32 = 1 << 6;
/// RX timer (a frame was written; legacy and MSI interrupts).
pub const ICR_RXT0: u32 = 1 << 7;
/// MDIO access complete.
pub const ICR_MDAC: u32 = 1 << 9;
/// RX queue 0 (MSI-X).
pub const ICR_RXQ0: u32 = 1 << 20;
/// RX queue 1 (MSI-X).
pub const ICR_RXQ1: u32 = 1 << 21;
/// TX queue 0 (MSI-X).
pub const ICR_TXQ0: u32 = 1 << 22;
/// TX queue 1 (MSI-X).
pub const ICR_TXQ1: u32 = 1 << 23;
/// Other causes (MSI-X): link, overrun, MDIO, ...
pub const ICR_OTHER: u32 = 1 << 24;
/// An interrupt is asserted.
pub const ICR_ASSERTED: u32 = 1 << 31;
/// The causes the 82574 reports under [`ICR_OTHER`] with MSI-X.
pub const ICR_OTHER_CAUSES: u32 = ICR_LSC | ICR_RXO | ICR_MDAC | (1 << 16) | (1 << 17) | (1 << 18);
/// The MSI-X queue causes [`EIAC`] may auto-clear.
pub const EIAC_MASK_82574: u32 = ICR_RXQ0 | ICR_RXQ1 | ICR_TXQ0 | ICR_TXQ1 | ICR_OTHER;

// IVAR
/// The "valid" bit of one 4-bit IVAR entry.
pub const IVAR_VALID: u32 = 0x8;
/// Shift of the RX queue 0 entry.
pub const IVAR_RXQ0_SHIFT: u32 = 0;
/// Shift of the TX queue 0 entry.
pub const IVAR_TXQ0_SHIFT: u32 = 8;
/// Shift of the "other" entry.
pub const IVAR_OTHER_SHIFT: u32 = 16;
/// Raise the TX cause on every descriptor write-back.
pub const IVAR_TX_INT_EVERY_WB: u32 = 1 << 31;

// RCTL
/// Receiver enable.
pub const RCTL_EN: u32 = 1 << 1;
/// Store bad packets.
pub const RCTL_SBP: u32 = 1 << 2;
/// Unicast promiscuous.
pub const RCTL_UPE: u32 = 1 << 3;
/// Multicast promiscuous.
pub const RCTL_MPE: u32 = 1 << 4;
/// Long packets (above 1522 bytes).
pub const RCTL_LPE: u32 = 1 << 5;
/// Loopback mode bits (00: none; 01: MAC loopback).
pub const RCTL_LBM_MASK: u32 = 3 << 6;
/// Descriptor type bits (00: legacy or extended, 01: packet split).
pub const RCTL_DTYP_MASK: u32 = 3 << 10;
/// Accept broadcast.
pub const RCTL_BAM: u32 = 1 << 15;
/// Buffer size bits (00 with BSEX clear: 2048 bytes).
pub const RCTL_BSIZE_MASK: u32 = 3 << 16;
/// Buffer size extension (x16).
pub const RCTL_BSEX: u32 = 1 << 25;
/// Strip the Ethernet CRC from received frames.
pub const RCTL_SECRC: u32 = 1 << 26;
/// Flexible buffer size bits (0: use BSIZE).
pub const RCTL_FLXBUF_MASK: u32 = 0xf << 27;

// RFCTL
/// Extended RX descriptors.
pub const RFCTL_EXTEN: u32 = 1 << 15;
/// No ACK interrupts (a spurious-interrupt workaround on the 82574 with
/// MSI-X).
pub const RFCTL_ACK_DIS: u32 = 1 << 12;

// RXCSUM
/// IPv4 header checksum offload.
pub const RXCSUM_IPOFL: u32 = 1 << 8;
/// TCP/UDP checksum offload.
pub const RXCSUM_TUOFL: u32 = 1 << 9;
/// Packet checksum disable: when set, the write-back carries the RSS hash
/// instead of the IP id and packet checksum.
pub const RXCSUM_PCSD: u32 = 1 << 13;

// TCTL
/// Transmitter enable.
pub const TCTL_EN: u32 = 1 << 1;
/// Pad short packets.
pub const TCTL_PSP: u32 = 1 << 3;
/// Collision threshold shift.
pub const TCTL_CT_SHIFT: u32 = 4;
/// Collision distance shift.
pub const TCTL_COLD_SHIFT: u32 = 12;
/// Re-transmit on late collision.
pub const TCTL_RTLC: u32 = 1 << 24;

/// TARC: the queue takes part in arbitration (QEMU sends only from queues
/// with it set).
pub const TARC_ENABLE: u32 = 1 << 10;

/// Receive address high: the address is valid.
pub const RAH_AV: u32 = 1 << 31;
