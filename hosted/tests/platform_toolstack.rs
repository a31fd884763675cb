//! The toolstack helper against the hosted xenstore daemon: libxl's layout
//! and permissions for a split device.

#[path = "platform_common/mod.rs"]
mod common;

use common::TestDir;
use grant_tables::DomId;
use hosted::xenstore::XenstoreDaemon;
use hosted::{add_device, remove_device, DeviceSpec, ToolstackError};
use xenbus::{Perm, PermAccess};

#[test]
fn add_device_writes_libxl_layout_with_permissions() {
    let dir = TestDir::new("toolstack");
    let daemon = XenstoreDaemon::spawn(dir.0.join("xenstored.sock")).unwrap();
    let mut dom0 = daemon.connect().unwrap();
    let dev = DeviceSpec::new("vif", DomId(1), DomId(2), 0)
        .frontend_node("mac", "00:16:3e:00:00:01")
        .frontend_node("handle", "0")
        .backend_node("mac", "00:16:3e:00:00:01")
        .backend_node("bridge", "xenbr0");
    add_device(&mut dom0, &dev).unwrap();

    let fe = "/local/domain/1/device/vif/0";
    let be = "/local/domain/2/backend/vif/1/0";
    assert_eq!(dev.frontend_path(), fe);
    assert_eq!(dev.backend_path(), be);
    let read = |xs: &mut hosted::xenstore::UnixXenstore, p: &str| xs.read_string(p).unwrap();
    assert_eq!(read(&mut dom0, &format!("{fe}/backend")), be);
    assert_eq!(read(&mut dom0, &format!("{fe}/backend-id")), "2");
    assert_eq!(read(&mut dom0, &format!("{fe}/state")), "1");
    assert_eq!(read(&mut dom0, &format!("{fe}/mac")), "00:16:3e:00:00:01");
    assert_eq!(read(&mut dom0, &format!("{be}/frontend")), fe);
    assert_eq!(read(&mut dom0, &format!("{be}/frontend-id")), "1");
    assert_eq!(read(&mut dom0, &format!("{be}/online")), "1");
    assert_eq!(read(&mut dom0, &format!("{be}/state")), "1");
    assert_eq!(read(&mut dom0, &format!("{be}/bridge")), "xenbr0");

    let fe_perms = vec![Perm::new(1, PermAccess::None), Perm::new(2, PermAccess::Read)];
    let be_perms = vec![Perm::new(2, PermAccess::None), Perm::new(1, PermAccess::Read)];
    assert_eq!(dom0.get_perms(fe).unwrap(), fe_perms);
    assert_eq!(dom0.get_perms(&format!("{fe}/state")).unwrap(), fe_perms, "children inherit");
    assert_eq!(dom0.get_perms(be).unwrap(), be_perms);
    assert_eq!(dom0.get_perms(&format!("{be}/state")).unwrap(), be_perms);

    // The frontend owns its end and reads the backend's; not the reverse.
    let mut front = daemon.connect_as(1).unwrap();
    front.write(&format!("{fe}/state"), "3").unwrap();
    assert_eq!(read(&mut front, &format!("{be}/state")), "1");
    assert!(front.write(&format!("{be}/state"), "4").is_err());
    let mut back = daemon.connect_as(2).unwrap();
    back.write(&format!("{be}/state"), "2").unwrap();
    assert_eq!(read(&mut back, &format!("{fe}/state")), "3");
    assert!(back.write(&format!("{fe}/state"), "4").is_err());
    // A third domain sees neither.
    let mut other = daemon.connect_as(3).unwrap();
    assert!(other.read(&format!("{fe}/state")).is_err());
    assert!(other.read(&format!("{be}/state")).is_err());

    // Adding again starts from a clean slate.
    add_device(&mut dom0, &DeviceSpec::new("vif", DomId(1), DomId(2), 0)).unwrap();
    assert_eq!(read(&mut dom0, &format!("{fe}/state")), "1");
    assert!(!dom0.exists(&format!("{fe}/mac")).unwrap());

    remove_device(&mut dom0, &dev).unwrap();
    assert!(!dom0.exists(fe).unwrap());
    assert!(!dom0.exists(be).unwrap());
    remove_device(&mut dom0, &dev).expect("removing twice is fine");
}

#[test]
fn add_device_refuses_bad_names_and_unprivileged_connections() {
    let dir = TestDir::new("toolstack-bad");
    let daemon = XenstoreDaemon::spawn(dir.0.join("xenstored.sock")).unwrap();
    let mut dom0 = daemon.connect().unwrap();
    for dev in [
        DeviceSpec::new("vi/f", DomId(1), DomId(0), 0),
        DeviceSpec::new("", DomId(1), DomId(0), 0),
        DeviceSpec::new("vif", DomId(1), DomId(0), 0).frontend_node("../x", "1"),
        DeviceSpec::new("vif", DomId(1), DomId(0), 0).backend_node("state", "4"),
        DeviceSpec::new("vif", DomId(0x7FF0), DomId(0), 0),
    ] {
        assert!(matches!(add_device(&mut dom0, &dev), Err(ToolstackError::BadName { .. })), "{dev:?}");
    }
    let nested = DeviceSpec::new("vif", DomId(1), DomId(0), 0).frontend_node("queue-0/tx-ring-ref", "8");
    add_device(&mut dom0, &nested).unwrap();

    let mut guest = daemon.connect_as(1).unwrap();
    let e = add_device(&mut guest, &DeviceSpec::new("vbd", DomId(1), DomId(0), 51712)).unwrap_err();
    assert!(matches!(e, ToolstackError::Store { .. }));
    assert!(e.to_string().contains("dom0"), "{e}");
}
