//! pcifront against an in-process pciback: the handshake, enumeration,
//! configuration access, MSI and MSI-X, and a hostile backend.

mod common;

use std::time::{Duration, Instant};

use common::{backend_path, edu_config, frontend_path, vdev, Mode, World};
use passthrough::config::{self, ConfigAccess, ConfigHeader, DeviceInfo};
use passthrough::{BackendErr, Bdf, PciError, PcifrontConfig, Pirq};
use xenbus::HandshakeEvent;

fn quick() -> PcifrontConfig {
    PcifrontConfig {
        op_timeout_ns: 200_000_000,
    }
}

#[test]
fn handshake_publishes_keys_and_enumerates() {
    let (w, back, conn) = World::connect(quick(), edu_config(), Mode::Honest);
    let fe = frontend_path();
    assert_eq!(w.store.read(&format!("{fe}/magic")).as_deref(), Some("7"));
    assert_eq!(
        w.store.read(&format!("{fe}/event-channel")),
        w.pf.port().map(|p| p.0.to_string())
    );
    assert!(w.store.read(&format!("{fe}/pci-op-ref")).is_some());
    assert_eq!(w.store.read(&format!("{fe}/state")).as_deref(), Some("4"));
    assert_eq!(conn.number, 1);
    assert_eq!(w.pf.devices(), [vdev()]);
    assert_eq!(w.pf.roots(), [(0, 0)]);
    drop(back);
}

#[test]
fn config_space_msi_and_msix_through_the_backend() {
    let (w, back, _) = World::connect(quick(), edu_config(), Mode::Honest);
    let info = DeviceInfo::probe(&w.pf, vdev()).unwrap();
    let direct = DeviceInfo::probe(&edu_config(), vdev()).unwrap();
    assert_eq!(info, direct);
    assert_eq!(
        (info.header.vendor_id, info.header.device_id),
        (0x1234, 0x11e8)
    );
    assert_eq!(info.bars[0].size, 1 << 20);
    assert_eq!(info.msix.unwrap().table_size, 8);
    config::enable_memory_and_bus_master(&w.pf, vdev()).unwrap();
    assert_eq!(
        w.pf.read16(vdev(), config::COMMAND).unwrap(),
        config::COMMAND_MEMORY | config::COMMAND_MASTER
    );
    assert_eq!(w.pf.enable_msi(vdev()).unwrap(), Pirq(40));
    w.pf.disable_msi(vdev()).unwrap();
    assert_eq!(
        w.pf.enable_msix(vdev(), &[0, 1, 2]).unwrap(),
        [Pirq(50), Pirq(51), Pirq(52)]
    );
    w.pf.disable_msix(vdev()).unwrap();
    assert!(w.pf.broken().is_none());
    let ops = w.pf.ops();
    let cfg = back.stop();
    // The backend's copy of configuration space saw the writes.
    assert_eq!(
        cfg.peek32(config::COMMAND) & 0xffff,
        u32::from(config::COMMAND_MEMORY | config::COMMAND_MASTER)
    );
    assert!(ops > 20, "{ops} ops");
}

#[test]
fn backend_refusals_are_returned_and_not_fatal() {
    let (w, back, _) = World::connect(quick(), edu_config(), Mode::Honest);
    let other = Bdf::new(0, 0, 5, 0).unwrap();
    assert_eq!(
        w.pf.read32(other, 0),
        Err(PciError::Backend {
            op: "conf_read",
            bdf: other,
            err: BackendErr::DEV_NOT_FOUND
        })
    );
    back.set_mode(Mode::Err(-22));
    let e = w.pf.enable_msix(vdev(), &[0]).unwrap_err();
    assert!(
        matches!(e, PciError::Backend { err, .. } if err.name() == Some("EINVAL")),
        "{e}"
    );
    assert!(!e.is_fatal());
    back.set_mode(Mode::Honest);
    assert_eq!(w.pf.read16(vdev(), 0).unwrap(), 0x1234);
    // Bad arguments never reach the backend.
    let served = back.served.load(std::sync::atomic::Ordering::SeqCst);
    assert!(w.pf.enable_msix(vdev(), &[1, 1]).is_err());
    assert!(w
        .pf
        .enable_msix(vdev(), &(0..129).collect::<Vec<_>>())
        .is_err());
    assert!(w.pf.read32(vdev(), 2).is_err());
    assert_eq!(
        back.served.load(std::sync::atomic::Ordering::SeqCst),
        served
    );
    assert!(w.pf.broken().is_none());
}

#[test]
fn an_op_that_never_completes_breaks_the_device() {
    let (w, back, _) = World::connect(quick(), edu_config(), Mode::NeverClear);
    let t = Instant::now();
    let e = w.pf.read32(vdev(), 0).unwrap_err();
    let waited = t.elapsed();
    assert!(
        matches!(
            e,
            PciError::Timeout {
                op: "conf_read",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(w.pf.broken().is_some());
    // A backend that comes back later is not trusted on this connection.
    back.set_mode(Mode::Honest);
    assert!(matches!(
        w.pf.read32(vdev(), 0),
        Err(PciError::DeviceBroken { .. })
    ));
    assert!(matches!(
        w.pf.enable_msi(vdev()),
        Err(PciError::DeviceBroken { .. })
    ));
}

#[test]
fn protocol_violations_break_the_device() {
    type Op = fn(&common::Front) -> Result<(), PciError>;
    let cases: [(Mode, Op); 7] = [
        (Mode::Err(12345), |f| f.read32(vdev(), 0).map(drop)),
        (Mode::Err(-5000), |f| f.write16(vdev(), 4, 0)),
        (Mode::ChangeDevfn, |f| f.read32(vdev(), 0).map(drop)),
        (Mode::ZeroPirq, |f| f.enable_msi(vdev()).map(drop)),
        (Mode::MsixZeroVector, |f| {
            f.enable_msix(vdev(), &[0, 1]).map(drop)
        }),
        (Mode::MsixDuplicate, |f| {
            f.enable_msix(vdev(), &[0, 1, 2]).map(drop)
        }),
        (Mode::MsixWrongEntry, |f| {
            f.enable_msix(vdev(), &[4]).map(drop)
        }),
    ];
    for (mode, op) in cases {
        let (w, _back, _) = World::connect(quick(), edu_config(), mode);
        let e = op(&w.pf).unwrap_err();
        assert!(matches!(e, PciError::BadResponse { .. }), "{mode:?}: {e}");
        assert!(e.is_fatal());
        assert!(
            matches!(w.pf.read32(vdev(), 0), Err(PciError::DeviceBroken { .. })),
            "{mode:?}"
        );
    }
    let (w, _back, _) = World::connect(quick(), edu_config(), Mode::MsixPositiveResult);
    assert!(matches!(
        w.pf.enable_msix(vdev(), &[0]),
        Err(PciError::BadResponse { .. })
    ));
}

#[test]
fn config_reads_wider_than_asked_are_masked() {
    // pciback merges virtualised fields without masking to the access
    // size: the frontend keeps the bytes it asked for and goes on.
    let (honest, _b1, _) = World::connect(quick(), edu_config(), Mode::Honest);
    let (wide, _b2, _) = World::connect(quick(), edu_config(), Mode::WideValue);
    for off in [0u16, 1, 4, 0x34] {
        assert_eq!(
            wide.pf.read8(vdev(), off).unwrap(),
            honest.pf.read8(vdev(), off).unwrap(),
            "{off:#x}"
        );
    }
    assert_eq!(
        wide.pf.read16(vdev(), 4).unwrap(),
        honest.pf.read16(vdev(), 4).unwrap()
    );
    assert_eq!(
        wide.pf.read32(vdev(), 0).unwrap(),
        honest.pf.read32(vdev(), 0).unwrap() | 0xdead_0000
    );
}

#[test]
fn all_ones_reads_mean_the_device_is_gone() {
    let (w, _back, _) = World::connect(quick(), edu_config(), Mode::AllOnes);
    assert_eq!(
        ConfigHeader::read(&w.pf, vdev()),
        Err(PciError::DeviceGone { bdf: vdev() })
    );
    assert_eq!(
        DeviceInfo::probe(&w.pf, vdev()),
        Err(PciError::DeviceGone { bdf: vdev() })
    );
    assert_eq!(
        config::capabilities(&w.pf, vdev()),
        Err(PciError::DeviceGone { bdf: vdev() })
    );
}

#[test]
fn bad_device_keys_are_refused() {
    let (mut w, _back, conn) = World::connect(quick(), edu_config(), Mode::Honest);
    let be = backend_path();
    let cases: [(&str, &str); 7] = [
        ("num_devs", "300"),
        ("num_devs", "-1"),
        ("vdev-0", "0000:00:20.0"),
        ("vdev-0", "0000:01:04.0"),
        ("root_num", "x"),
        ("root-0", "0000:00:00"),
        ("state-0", "nine"),
    ];
    for (key, value) in cases {
        let old = w.store.read(&format!("{be}/{key}")).unwrap();
        w.store.write(&format!("{be}/{key}"), value);
        let e = w.pf.read_devices(&mut w.xs, &conn).unwrap_err();
        assert!(
            matches!(&e, PciError::Xenbus { key: k, .. } if k.ends_with(key)),
            "{key}={value}: {e}"
        );
        w.store.write(&format!("{be}/{key}"), &old);
    }
    // Two devices with one address.
    w.store.write(&format!("{be}/num_devs"), "2");
    w.store.write(&format!("{be}/vdev-1"), "0000:00:04.0");
    assert!(w.pf.read_devices(&mut w.xs, &conn).is_err());
    // A device being detached (Closing) is left out.
    w.store.write(&format!("{be}/state-1"), "5");
    assert_eq!(w.pf.read_devices(&mut w.xs, &conn).unwrap(), [vdev()]);
    // Without root keys the root is 0000:00, as for Linux's pcifront.
    w.store.rm(&format!("{be}/root_num"));
    assert_eq!(w.pf.read_devices(&mut w.xs, &conn).unwrap(), [vdev()]);
}

#[test]
fn a_closing_backend_ends_the_connection() {
    let (mut w, _back, _) = World::connect(quick(), edu_config(), Mode::Honest);
    assert!(w.pf.read32(vdev(), 0).is_ok());
    w.store.write(&format!("{}/state", backend_path()), "5");
    let mut disconnected = false;
    for _ in 0..200 {
        if let HandshakeEvent::Disconnected { .. } = w.poll() {
            disconnected = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(disconnected);
    assert!(w.pf.port().is_none());
    assert!(w.pf.devices().is_empty());
    assert_eq!(w.pf.read32(vdev(), 0), Err(PciError::NotConnected));
}

#[test]
fn frontend_and_config_space_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<common::Front>();
    shared::<passthrough::memconfig::MemConfig>();
    // Two threads reading through one frontend: the ops are serialized.
    let (w, _back, _) = World::connect(quick(), edu_config(), Mode::Honest);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..50 {
                    assert_eq!(w.pf.read32(vdev(), 0).unwrap(), 0x11e8_1234);
                }
            });
        }
    });
    assert_eq!(w.pf.ops(), 100);
}
