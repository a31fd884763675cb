use super::*;
use crate::memconfig::MemConfig;

fn bdf() -> Bdf {
    Bdf::new(0, 0, 4, 0).unwrap()
}

/// An edu-like device: 1 MiB 32-bit BAR0, a 16 KiB prefetchable 64-bit
/// BAR2/3, a 32-port I/O BAR4, MSI at 0x40 and MSI-X at 0x50 (table in
/// BAR0 at 0x1000, PBA at 0x1800, 8 entries).
fn edu() -> MemConfig {
    let mut c = MemConfig::new(bdf(), [0; 4096]);
    c.set32(VENDOR_ID, 0x11e8_1234, 0);
    c.set16(COMMAND, COMMAND_MEMORY | COMMAND_IO, 0x0547);
    c.set16(STATUS, STATUS_CAP_LIST, 0);
    c.set32(REVISION_ID, 0x00ff_0010, 0);
    c.set(HEADER_TYPE, &[0x00], &[0]);
    c.set32(SUBSYSTEM_VENDOR_ID, 0x1100_1af4, 0);
    c.set16(INTERRUPT_LINE, 0x010b, 0x00ff);
    c.set_bar(0, BarKind::Memory32, false, 0xfea0_0000, 1 << 20);
    c.set_bar(2, BarKind::Memory64, true, 0x8_0000_0000, 16 << 10);
    c.set_bar(4, BarKind::Io, false, 0xc000, 32);
    c.set(CAPABILITY_LIST, &[0x40], &[0]);
    // MSI: 64-bit, 4 vectors capable.
    c.set32(
        0x40,
        u32::from(CAP_ID_MSI) | 0x50 << 8 | (0x0084 | 2 << 1) << 16,
        0x0071 << 16,
    );
    // MSI-X: 8 entries.
    c.set32(0x50, u32::from(CAP_ID_MSIX) | 7 << 16, 0xc000 << 16);
    c.set32(0x54, 0x1000, 0);
    c.set32(0x58, 0x1800, 0);
    c
}

#[test]
fn config_reg_is_checked() {
    assert!(ConfigReg::new(4095, Width::Byte).is_ok());
    assert_eq!(
        ConfigReg::new(4096, Width::Byte),
        Err(PciError::BadConfigOffset {
            offset: 4096,
            width: 1
        })
    );
    assert!(ConfigReg::new(4094, Width::Word).is_ok());
    assert!(ConfigReg::new(4093, Width::Word).is_err());
    assert!(ConfigReg::new(4092, Width::Dword).is_ok());
    assert!(ConfigReg::new(2, Width::Dword).is_err());
    let c = edu();
    assert!(c.read32(bdf(), 0x3e).is_err());
    assert!(c.write16(bdf(), 0x1001, 0).is_err());
}

#[test]
fn header_is_parsed() {
    let h = ConfigHeader::read(&edu(), bdf()).unwrap();
    assert_eq!((h.vendor_id, h.device_id), (0x1234, 0x11e8));
    assert_eq!((h.class, h.revision), (0x00ff00, 0x10));
    assert_eq!((h.header_type, h.multifunction), (0, false));
    assert_eq!((h.subsystem_vendor_id, h.subsystem_id), (0x1af4, 0x1100));
    assert_eq!((h.interrupt_pin, h.interrupt_line), (1, 0x0b));
    assert_eq!(h.command, COMMAND_MEMORY | COMMAND_IO);
    assert_ne!(h.status & STATUS_CAP_LIST, 0);
}

#[test]
fn bad_headers_are_refused() {
    let absent = Bdf::new(0, 0, 5, 0).unwrap();
    assert_eq!(
        ConfigHeader::read(&edu(), absent),
        Err(PciError::DeviceGone { bdf: absent })
    );
    let mut c = edu();
    c.set(HEADER_TYPE, &[0x83], &[0]);
    assert!(matches!(
        ConfigHeader::read(&c, bdf()),
        Err(PciError::BadConfig {
            offset: HEADER_TYPE,
            ..
        })
    ));
    let mut c = edu();
    c.set(INTERRUPT_PIN, &[5], &[0]);
    assert!(matches!(
        ConfigHeader::read(&c, bdf()),
        Err(PciError::BadConfig {
            offset: INTERRUPT_PIN,
            ..
        })
    ));
}

#[test]
fn bars_are_sized_with_decode_off_and_restored() {
    let c = edu();
    let before: Vec<u32> = (0..6).map(|i| c.peek32(BAR0 + 4 * i)).collect();
    let h = ConfigHeader::read(&c, bdf()).unwrap();
    let bars = read_bars(&c, bdf(), &h).unwrap();
    assert_eq!(
        bars,
        [
            Bar {
                index: 0,
                kind: BarKind::Memory32,
                prefetchable: false,
                address: 0xfea0_0000,
                size: 1 << 20
            },
            Bar {
                index: 2,
                kind: BarKind::Memory64,
                prefetchable: true,
                address: 0x8_0000_0000,
                size: 16 << 10
            },
            Bar {
                index: 4,
                kind: BarKind::Io,
                prefetchable: false,
                address: 0xc000,
                size: 32
            },
        ]
    );
    let after: Vec<u32> = (0..6).map(|i| c.peek32(BAR0 + 4 * i)).collect();
    assert_eq!(before, after, "BARs restored");
    assert_eq!(
        c.peek32(COMMAND) & 0xffff,
        u32::from(COMMAND_MEMORY | COMMAND_IO),
        "COMMAND restored"
    );
    let w = c.writes();
    // First write turns decoding off; the last restores COMMAND; every BAR
    // write lies between them.
    assert_eq!(w.first(), Some(&(COMMAND, 2, 0)));
    assert_eq!(
        w.last(),
        Some(&(COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_IO)))
    );
    assert!(w[1..w.len() - 1]
        .iter()
        .all(|(o, _, _)| (BAR0..BAR0 + 24).contains(o)));
    assert!(
        w.contains(&(BAR0 + 12, 4, 0xffff_ffff)),
        "upper half of the 64-bit BAR sized"
    );
}

#[test]
fn bar_faults_are_refused_and_command_restored() {
    let check = |c: &MemConfig, want: fn(&PciError) -> bool| {
        let h = ConfigHeader::read(c, bdf()).unwrap();
        let e = read_bars(c, bdf(), &h).unwrap_err();
        assert!(want(&e), "{e:?}");
        assert_eq!(
            c.peek32(COMMAND) & 0xffff,
            u32::from(COMMAND_MEMORY | COMMAND_IO)
        );
    };
    let mut c = edu();
    c.set_bar(1, BarKind::Memory32, false, 0xfea8_0000, 4096);
    check(&c, |e| {
        matches!(
            e,
            PciError::BarOverlap {
                first: 0,
                second: 1,
                ..
            }
        )
    });
    let mut c = edu();
    c.set32(BAR0 + 20, 0x4, 0xffff_f000);
    check(
        &c,
        |e| matches!(e, PciError::BadConfig { reason, .. } if reason.contains("last slot")),
    );
    let mut c = edu();
    c.set32(BAR0 + 4, 0x6, 0xffff_f000);
    check(
        &c,
        |e| matches!(e, PciError::BadConfig { reason, .. } if reason.contains("reserved")),
    );
    let mut c = edu();
    c.set32(BAR0 + 8, 0xffff_f00c, 0xffff_f000);
    c.set32(BAR0 + 12, 0xffff_ffff, 0xffff_ffff);
    check(&c, |e| matches!(e, PciError::BadConfig { .. }));
}

#[test]
fn unimplemented_bars_are_skipped() {
    let mut c = edu();
    c.set32(BAR0, 0, 0);
    let h = ConfigHeader::read(&c, bdf()).unwrap();
    let bars = read_bars(&c, bdf(), &h).unwrap();
    assert_eq!(bars.iter().map(|b| b.index).collect::<Vec<_>>(), [2, 4]);
}

#[test]
fn removed_device_is_reported() {
    let c = edu();
    c.remove();
    assert_eq!(
        ConfigHeader::read(&c, bdf()),
        Err(PciError::DeviceGone { bdf: bdf() })
    );
    assert_eq!(
        capabilities(&c, bdf()),
        Err(PciError::DeviceGone { bdf: bdf() })
    );
    let h = ConfigHeader::read(&edu(), bdf()).unwrap();
    assert_eq!(
        read_bars(&c, bdf(), &h),
        Err(PciError::DeviceGone { bdf: bdf() })
    );
}

#[test]
fn capabilities_msi_and_msix_are_parsed() {
    let info = DeviceInfo::probe(&edu(), bdf()).unwrap();
    assert_eq!(
        info.capabilities,
        [
            Capability {
                id: CAP_ID_MSI,
                offset: 0x40
            },
            Capability {
                id: CAP_ID_MSIX,
                offset: 0x50
            }
        ]
    );
    let msi = info.msi.unwrap();
    assert_eq!(
        (
            msi.max_vectors,
            msi.is_64bit,
            msi.per_vector_masking,
            msi.enabled()
        ),
        (4, true, false, false)
    );
    let msix = info.msix.unwrap();
    assert_eq!(msix.table_size, 8);
    assert_eq!(
        (
            msix.table_bir,
            msix.table_offset,
            msix.pba_bir,
            msix.pba_offset
        ),
        (0, 0x1000, 0, 0x1800)
    );
    assert_eq!((msix.table_len(), msix.pba_len()), (128, 8));
    assert_eq!(info.bar(2).map(|b| b.size), Some(16 << 10));
    assert!(info.capability(CAP_ID_EXP).is_none());
}

#[test]
fn msix_outside_its_bar_is_refused() {
    let mut c = edu();
    c.set32(0x54, 0x000f_fff8, 0);
    assert!(matches!(
        DeviceInfo::probe(&c, bdf()),
        Err(PciError::BadConfig { offset: 0x54, .. })
    ));
    let mut c = edu();
    c.set32(0x58, 0x1803, 0); // BIR 3: the upper half of the 64-bit BAR
    assert!(matches!(
        DeviceInfo::probe(&c, bdf()),
        Err(PciError::BadConfig { offset: 0x58, .. })
    ));
    let mut c = edu();
    c.set32(0x54, 0x1007, 0);
    assert!(matches!(
        DeviceInfo::probe(&c, bdf()),
        Err(PciError::BadConfig { offset: 0x54, .. })
    ));
}

#[test]
fn capability_list_faults_are_refused() {
    let mut c = edu();
    c.set(0x51, &[0x40], &[0]);
    assert_eq!(
        capabilities(&c, bdf()),
        Err(PciError::CapabilityLoop {
            bdf: bdf(),
            offset: 0x40
        })
    );
    let mut c = edu();
    c.set(0x51, &[0x50], &[0]);
    assert_eq!(
        capabilities(&c, bdf()),
        Err(PciError::CapabilityLoop {
            bdf: bdf(),
            offset: 0x50
        })
    );
    let mut c = edu();
    c.set(0x51, &[0x3c], &[0]);
    assert!(matches!(
        capabilities(&c, bdf()),
        Err(PciError::BadConfig { offset: 0x51, .. })
    ));
    let mut c = edu();
    c.set(CAPABILITY_LIST, &[0x3c], &[0]);
    assert!(matches!(
        capabilities(&c, bdf()),
        Err(PciError::BadConfig {
            offset: CAPABILITY_LIST,
            ..
        })
    ));
    let mut c = edu();
    c.set32(0x50, 0xffff_ffff, 0);
    assert_eq!(
        capabilities(&c, bdf()),
        Err(PciError::DeviceGone { bdf: bdf() })
    );
    let mut c = edu();
    c.set16(STATUS, 0, 0);
    assert_eq!(capabilities(&c, bdf()), Ok(Vec::new()));
}

#[test]
fn reserved_capability_pointer_bits_are_masked() {
    let want = capabilities(&edu(), bdf()).unwrap();
    assert_eq!(want.len(), 2);
    // 0x43 -> 0x40, and MSI's next 0x52 -> 0x50.
    let mut c = edu();
    c.set(CAPABILITY_LIST, &[0x43], &[0]);
    c.set(0x41, &[0x52], &[0]);
    assert_eq!(capabilities(&c, bdf()).unwrap(), want);
    // A next pointer of 3 is 0: the end.
    c.set(0x51, &[0x03], &[0]);
    assert_eq!(capabilities(&c, bdf()).unwrap(), want);
    // Masking keeps the loop check: 0x42 is 0x40 again.
    c.set(0x51, &[0x42], &[0]);
    assert_eq!(
        capabilities(&c, bdf()),
        Err(PciError::CapabilityLoop {
            bdf: bdf(),
            offset: 0x40
        })
    );
}

#[test]
fn longest_list_is_walked() {
    // Every dword from 0x40 to 0xfc, each pointing to the next: 48
    // entries, the most there can be.
    let mut c = edu();
    for slot in 0..48u16 {
        let at = 0x40 + 4 * slot;
        let next = if slot == 47 { 0 } else { at + 4 };
        c.set(at, &[0x09, next as u8], &[0, 0]);
    }
    assert_eq!(capabilities(&c, bdf()).unwrap().len(), MAX_CAPABILITIES);
}

#[test]
fn command_bits_are_updated() {
    let c = edu();
    enable_memory_and_bus_master(&c, bdf()).unwrap();
    assert_eq!(
        c.peek32(COMMAND) & 0xffff,
        u32::from(COMMAND_MEMORY | COMMAND_IO | COMMAND_MASTER)
    );
    c.remove();
    assert_eq!(
        update_command(&c, bdf(), 0, COMMAND_MASTER),
        Err(PciError::DeviceGone { bdf: bdf() })
    );
}

/// A device whose BAR0 reads back `sized` after all ones are written to
/// it, whatever its current value (a device or backend that lies).
struct LyingBar0 {
    inner: MemConfig,
    sized: u32,
    armed: core::cell::Cell<bool>,
}

impl ConfigAccess for LyingBar0 {
    fn read(&self, bdf: Bdf, reg: ConfigReg) -> Result<u32, PciError> {
        if reg.offset() == BAR0 && self.armed.get() {
            return Ok(self.sized);
        }
        self.inner.read(bdf, reg)
    }
    fn write(&self, bdf: Bdf, reg: ConfigReg, value: u32) -> Result<(), PciError> {
        if reg.offset() == BAR0 {
            self.armed.set(value == 0xffff_ffff);
        }
        self.inner.write(bdf, reg, value)
    }
}

#[test]
fn misaligned_bar_is_refused() {
    let mut inner = edu();
    inner.set32(BAR0, 0xfea0_1000, 0);
    let c = LyingBar0 {
        inner,
        sized: 0xfff0_0000,
        armed: false.into(),
    };
    let h = ConfigHeader::read(&c, bdf()).unwrap();
    let e = read_bars(&c, bdf(), &h).unwrap_err();
    assert!(
        matches!(e, PciError::BadConfig { offset: BAR0, reason, .. } if reason.contains("aligned")),
        "{e:?}"
    );
    let mut inner = edu();
    inner.set32(BAR0, 0xfea0_0000, 0);
    let c = LyingBar0 {
        inner,
        sized: 0,
        armed: false.into(),
    };
    let bars = read_bars(&c, bdf(), &h).unwrap();
    assert_eq!(
        bars[0].index, 2,
        "a BAR whose read-back is zero is not implemented"
    );
}

#[test]
fn extended_capabilities_are_walked_and_checked() {
    let ext = |id: u32, next: u32| id | 1 << 16 | next << 20;
    let mut c = edu();
    assert_eq!(extended_capabilities(&c, bdf()), Ok(Vec::new()));
    c.set32(0x100, ext(1, 0x140), 0);
    c.set32(0x140, ext(3, 0xffc), 0);
    c.set32(0xffc, ext(0x10, 0), 0);
    assert_eq!(
        extended_capabilities(&c, bdf()).unwrap(),
        [
            ExtCapability {
                id: 1,
                version: 1,
                offset: 0x100
            },
            ExtCapability {
                id: 3,
                version: 1,
                offset: 0x140
            },
            ExtCapability {
                id: 0x10,
                version: 1,
                offset: 0xffc
            },
        ]
    );
    c.set32(0xffc, ext(0x10, 0x140), 0);
    assert_eq!(
        extended_capabilities(&c, bdf()),
        Err(PciError::CapabilityLoop {
            bdf: bdf(),
            offset: 0x140
        })
    );
    c.set32(0xffc, ext(0x10, 0x100), 0);
    assert_eq!(
        extended_capabilities(&c, bdf()),
        Err(PciError::CapabilityLoop {
            bdf: bdf(),
            offset: 0x100
        })
    );
    c.set32(0x140, ext(3, 0x80), 0);
    assert!(matches!(
        extended_capabilities(&c, bdf()),
        Err(PciError::BadConfig { offset: 0x142, .. })
    ));
    // Reserved low bits of a next pointer are masked: 0x102 is 0x100.
    c.set32(0x140, ext(3, 0x102), 0);
    assert_eq!(
        extended_capabilities(&c, bdf()),
        Err(PciError::CapabilityLoop {
            bdf: bdf(),
            offset: 0x100
        })
    );
    c.set32(0x140, ext(3, 0x143), 0);
    assert_eq!(
        extended_capabilities(&c, bdf()),
        Err(PciError::CapabilityLoop {
            bdf: bdf(),
            offset: 0x140
        })
    );
    // All ones further on, the device present: a bad list.
    c.set32(0x140, ext(3, 0x200), 0);
    c.set32(0x200, 0xffff_ffff, 0);
    assert!(matches!(
        extended_capabilities(&c, bdf()),
        Err(PciError::BadConfig { offset: 0x200, .. })
    ));
    // All ones at 0x100 with the device present: a conventional function
    // (or extended space out of reach), no extended capabilities.
    c.set32(0x100, 0xffff_ffff, 0);
    assert_eq!(extended_capabilities(&c, bdf()), Ok(Vec::new()));
    // All ones with the vendor ID all ones too: the device is gone.
    c.set32(VENDOR_ID, 0xffff_ffff, 0);
    assert_eq!(
        extended_capabilities(&c, bdf()),
        Err(PciError::DeviceGone { bdf: bdf() })
    );
    // The longest list: every dword, each pointing to the next.
    let mut c = edu();
    for at in (0x100..0x1000u32).step_by(4) {
        let next = if at == 0xffc { 0 } else { at + 4 };
        c.set32(at as u16, ext(2, next), 0);
    }
    assert_eq!(
        extended_capabilities(&c, bdf()).unwrap().len(),
        MAX_EXT_CAPABILITIES
    );
}
