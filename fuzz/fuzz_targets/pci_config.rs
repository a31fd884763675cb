//! Configuration space and capability parsing on a fuzzer-chosen device:
//! either a 4 KiB configuration space with a per-byte write mask (so BAR
//! sizing reads back what the fuzzer chose), or a device whose every read
//! returns the next fuzzer bytes (a live, changing device or a lying
//! backend). Never panics, never loops; what it accepts is consistent.
#![no_main]

use std::cell::Cell;

use libfuzzer_sys::fuzz_target;
use passthrough::config::{
    capabilities, extended_capabilities, read_bars, ConfigAccess, ConfigHeader, ConfigReg,
    DeviceInfo, MsiCap, MsixCap, MAX_CAPABILITIES, MAX_EXT_CAPABILITIES,
};
use passthrough::memconfig::MemConfig;
use passthrough::{Bdf, PciError};

/// Every read returns the next bytes of the input (all ones once it runs
/// out, as a vanished device would); writes are counted.
struct Stream<'a> {
    data: &'a [u8],
    at: Cell<usize>,
    accesses: Cell<usize>,
}

impl ConfigAccess for Stream<'_> {
    fn read(&self, _bdf: Bdf, reg: ConfigReg) -> Result<u32, PciError> {
        self.accesses.set(self.accesses.get() + 1);
        let w = usize::from(reg.width().bytes());
        let at = self.at.get();
        let mut v = [0xffu8; 4];
        for (i, b) in v.iter_mut().take(w).enumerate() {
            if let Some(x) = self.data.get(at + i) {
                *b = *x;
            }
        }
        for b in v.iter_mut().skip(w) {
            *b = 0;
        }
        self.at.set(at + w);
        Ok(u32::from_le_bytes(v))
    }
    fn write(&self, _bdf: Bdf, _reg: ConfigReg, _value: u32) -> Result<(), PciError> {
        self.accesses.set(self.accesses.get() + 1);
        Ok(())
    }
}

fn check<C: ConfigAccess>(cfg: &C, bdf: Bdf) {
    if let Ok(h) = ConfigHeader::read(cfg, bdf) {
        assert!(h.header_type <= 2 && h.interrupt_pin <= 4);
        if let Ok(bars) = read_bars(cfg, bdf, &h) {
            for (i, a) in bars.iter().enumerate() {
                assert!(a.size.is_power_of_two());
                assert_eq!(a.address % a.size, 0);
                assert!(a.address.checked_add(a.size).is_some());
                assert!(a.index < h.bar_count());
                for b in &bars[i + 1..] {
                    assert!(!a.overlaps(b));
                    assert!(b.index > a.index);
                }
            }
        }
    }
    if let Ok(caps) = capabilities(cfg, bdf) {
        assert!(caps.len() <= MAX_CAPABILITIES);
        for (i, c) in caps.iter().enumerate() {
            assert!(c.offset >= 0x40 && c.offset % 4 == 0);
            assert!(caps[..i].iter().all(|d| d.offset != c.offset));
            let _ = MsiCap::read(cfg, bdf, *c);
            if let Ok(m) = MsixCap::read(cfg, bdf, *c) {
                assert!((1..=2048).contains(&m.table_size));
                assert!(m.table_bir <= 5 && m.pba_bir <= 5);
            }
        }
    }
    if let Ok(ext) = extended_capabilities(cfg, bdf) {
        assert!(ext.len() <= MAX_EXT_CAPABILITIES);
        for (i, c) in ext.iter().enumerate() {
            assert!(c.offset >= 0x100 && c.offset < 0x1000 && c.offset % 4 == 0);
            assert!(ext[..i].iter().all(|d| d.offset != c.offset));
        }
    }
    if let Ok(info) = DeviceInfo::probe(cfg, bdf) {
        if let Some(m) = info.msix {
            let bar = info.bar(m.table_bir).expect("MSI-X table BAR checked");
            assert!(u64::from(m.table_offset) + m.table_len() <= bar.size);
            let bar = info.bar(m.pba_bir).expect("MSI-X PBA BAR checked");
            assert!(u64::from(m.pba_offset) + m.pba_len() <= bar.size);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bdf = Bdf::new(0, 0, 4, 0).unwrap();
    if mode & 1 == 0 {
        let (space, wmask) = rest.split_at(rest.len().min(4096));
        let cfg = MemConfig::from_slices(bdf, space, wmask);
        check(&cfg, bdf);
    } else {
        let s = Stream { data: rest, at: Cell::new(0), accesses: Cell::new(0) };
        check(&s, bdf);
        // Bounded work whatever the device says: the header, 6 BARs
        // sized (5 accesses each, 64-bit halves included), 48
        // capabilities with MSI and MSI-X, twice over, and 960 extended
        // capabilities.
        assert!(s.accesses.get() < 3000, "{} accesses", s.accesses.get());
    }
});
