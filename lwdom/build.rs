//! Compiles `c/pv_abi_layout.c`, the PV ABI as Xen's own headers lay it
//! out, for lwdom's host layout tests (`src/abi.rs`).
//!
//! Only when building for a Linux host: the guest builds
//! (`x86_64-unknown-none`) compile nothing. The headers come from the
//! system (`/usr/include/xen`, Debian's `libxen-dev`) or from
//! `$XEN_INCLUDE_DIR` (the directory holding `xen/`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::exit;

const SOURCE: &str = "c/pv_abi_layout.c";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=XEN_INCLUDE_DIR");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let custom = env::var_os("XEN_INCLUDE_DIR").map(PathBuf::from);
    let include = custom.clone().unwrap_or_else(|| PathBuf::from("/usr/include"));
    let compat = include.join("xen/xen-compat.h");
    println!("cargo:rerun-if-changed={}", compat.display());
    let Some(version) = latest_interface_version(&compat) else {
        eprintln!(
            "error: cannot read __XEN_LATEST_INTERFACE_VERSION__ from {}.\n\
             Xen's public headers are missing: install Debian's libxen-dev (cargo xtask ci does this) \
             or point XEN_INCLUDE_DIR at the directory holding xen/",
            compat.display()
        );
        exit(1);
    };
    let mut build = cc::Build::new();
    build
        .file(SOURCE)
        .define("__XEN_INTERFACE_VERSION__", version.as_str())
        .flag("-std=gnu11")
        .warnings(true);
    if let Some(dir) = custom {
        build.include(dir);
    }
    build.compile("lwdom_pv_abi_layout");
}

/// `__XEN_LATEST_INTERFACE_VERSION__` as written in `xen-compat.h`.
fn latest_interface_version(compat: &Path) -> Option<String> {
    let text = std::fs::read_to_string(compat).ok()?;
    text.lines().find_map(|line| {
        let w: Vec<&str> = line.split_whitespace().collect();
        (w.len() >= 3 && w[0] == "#define" && w[1] == "__XEN_LATEST_INTERFACE_VERSION__" && w[2].starts_with("0x"))
            .then(|| w[2].to_string())
    })
}
