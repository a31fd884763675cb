//! `passthrough::pciif` against Xen's own `io/pciif.h`, as the C compiler
//! lays it out: the shared page's and the op's offsets and sizes, and the
//! constants. Compiles `pciif_layout.c` with `$CC` (or `cc`) against
//! `/usr/include/xen` (Debian's `libxen-dev`) or `$XEN_INCLUDE_DIR`.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use passthrough::pciif::{self, op_field};
use passthrough::BackendErr;

fn probe() -> BTreeMap<String, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pciif-layout");
    std::fs::create_dir_all(&dir).expect("create the probe's directory");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pciif_layout.c");
    let exe = dir.join("pciif_layout");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = Command::new(&cc);
    cmd.args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src);
    if let Ok(inc) = std::env::var("XEN_INCLUDE_DIR") {
        cmd.arg("-I").arg(inc);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}; install gcc"));
    assert!(
        out.status.success(),
        "compiling {} failed (are Xen's headers installed? apt-get install -y libxen-dev, or set XEN_INCLUDE_DIR):\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("run the C probe");
    assert!(run.status.success(), "the C probe failed");
    String::from_utf8(run.stdout)
        .expect("ASCII")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn pciif_matches_xen_headers() {
    let c = probe();
    let rust: Vec<(&str, String)> = vec![
        ("sizeof.xen_pci_op", pciif::OP_SIZE.to_string()),
        ("sizeof.xen_pcie_aer_op", pciif::AER_OP_SIZE.to_string()),
        (
            "sizeof.xen_pci_sharedinfo",
            pciif::SHARED_INFO_SIZE.to_string(),
        ),
        ("sizeof.xen_msix_entry", "4".into()),
        ("xen_pci_sharedinfo.flags", pciif::FLAGS_OFFSET.to_string()),
        ("xen_pci_sharedinfo.op", pciif::OP_OFFSET.to_string()),
        (
            "xen_pci_sharedinfo.aer_op",
            pciif::AER_OP_OFFSET.to_string(),
        ),
        ("xen_pci_op.cmd", op_field::CMD.to_string()),
        ("xen_pci_op.err", op_field::ERR.to_string()),
        ("xen_pci_op.domain", op_field::DOMAIN.to_string()),
        ("xen_pci_op.bus", op_field::BUS.to_string()),
        ("xen_pci_op.devfn", op_field::DEVFN.to_string()),
        ("xen_pci_op.offset", op_field::OFFSET.to_string()),
        ("xen_pci_op.size", op_field::SIZE.to_string()),
        ("xen_pci_op.value", op_field::VALUE.to_string()),
        ("xen_pci_op.info", op_field::INFO.to_string()),
        (
            "xen_pci_op.msix_entries",
            op_field::MSIX_ENTRIES.to_string(),
        ),
        ("xen_msix_entry.vector", "0".into()),
        ("xen_msix_entry.entry", "2".into()),
        ("XEN_PCIF_active", pciif::XEN_PCIF_ACTIVE.to_string()),
        (
            "XEN_PCIB_AERHANDLER",
            pciif::XEN_PCIB_AERHANDLER.to_string(),
        ),
        ("XEN_PCIB_active", pciif::XEN_PCIB_ACTIVE.to_string()),
        ("XEN_PCI_OP_conf_read", pciif::OP_CONF_READ.to_string()),
        ("XEN_PCI_OP_conf_write", pciif::OP_CONF_WRITE.to_string()),
        ("XEN_PCI_OP_enable_msi", pciif::OP_ENABLE_MSI.to_string()),
        ("XEN_PCI_OP_disable_msi", pciif::OP_DISABLE_MSI.to_string()),
        ("XEN_PCI_OP_enable_msix", pciif::OP_ENABLE_MSIX.to_string()),
        (
            "XEN_PCI_OP_disable_msix",
            pciif::OP_DISABLE_MSIX.to_string(),
        ),
        (
            "XEN_PCI_ERR_dev_not_found",
            BackendErr::DEV_NOT_FOUND.code().to_string(),
        ),
        (
            "XEN_PCI_ERR_invalid_offset",
            BackendErr::INVALID_OFFSET.code().to_string(),
        ),
        (
            "XEN_PCI_ERR_access_denied",
            BackendErr::ACCESS_DENIED.code().to_string(),
        ),
        (
            "XEN_PCI_ERR_not_implemented",
            BackendErr::NOT_IMPLEMENTED.code().to_string(),
        ),
        (
            "XEN_PCI_ERR_op_failed",
            BackendErr::OP_FAILED.code().to_string(),
        ),
        ("SH_INFO_MAX_VEC", pciif::MAX_MSIX_ENTRIES.to_string()),
        ("XEN_PCI_MAGIC", pciif::XEN_PCI_MAGIC.to_string()),
    ];
    let errs: Vec<String> = rust
        .iter()
        .filter(|(k, v)| c.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: Rust {v}, C {:?}", c.get(*k)))
        .collect();
    assert!(
        errs.is_empty(),
        "pciif differs from Xen's header:\n{}",
        errs.join("\n")
    );
    assert_eq!(c.len(), rust.len(), "every row of the probe is compared");
}
