//! pcifront's parsing of the device keys xen-pciback writes (`root_num`,
//! `root-N`, `num_devs`, `state-N`, `vdev-N`), with arbitrary values for
//! those keys. Never panics; what it accepts is consistent.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use passthrough::pcifront::{parse_backend_devices, MAX_DEVICES};

#[derive(Arbitrary, Debug)]
struct Input {
    /// (key kind, index, value): kinds 0..5 are root_num, root-N,
    /// num_devs, state-N, vdev-N.
    keys: Vec<(u8, u8, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let mut map = BTreeMap::new();
    for (kind, i, v) in input.keys {
        let key = match kind % 5 {
            0 => "root_num".to_string(),
            1 => format!("root-{}", i % 4),
            2 => "num_devs".to_string(),
            3 => format!("state-{}", i % 4),
            _ => format!("vdev-{}", i % 4),
        };
        map.insert(key, v);
    }
    let mut reads = 0u32;
    let parsed = parse_backend_devices(&mut |k| {
        reads += 1;
        Ok(map.get(k).cloned())
    });
    assert!(reads <= 2 + 2 * MAX_DEVICES + 2 * MAX_DEVICES);
    if let Ok(passthrough::pcifront::BackendDevices { roots, devices }) = parsed {
        // root_num may be 0 (then no device can be on a root).
        assert!(roots.len() <= MAX_DEVICES as usize);
        for (i, d) in devices.iter().enumerate() {
            assert!(roots.contains(&(d.segment(), d.bus())));
            assert!(devices[..i].iter().all(|e| e != d));
        }
    }
});
