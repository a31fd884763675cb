//! Compiles the C reference code in `c/` against Xen's own public headers.
//!
//! The headers come from the system (`/usr/include/xen`, Debian's
//! `libxen-dev`), or from `$XEN_INCLUDE_DIR` if set (the directory holding
//! `xen/`). Only Linux hosts build the C code; elsewhere the crate is empty.

use std::env;
use std::path::{Path, PathBuf};
use std::process::exit;

const C_SOURCES: &[&str] = &["c/abi_layout.c", "c/echo_peers.c"];
const C_HEADERS: &[&str] = &["c/xen_c_reference.h"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for f in C_SOURCES.iter().chain(C_HEADERS) {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=XEN_INCLUDE_DIR");

    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }

    let custom = env::var_os("XEN_INCLUDE_DIR").map(PathBuf::from);
    let include = custom
        .clone()
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let ring_h = include.join("xen/io/ring.h");
    println!("cargo:rerun-if-changed={}", ring_h.display());
    if !ring_h.is_file() {
        eprintln!(
            "error: {} not found.\n\
             Xen's public headers are missing: install Debian's libxen-dev (cargo xtask ci does this)",
            ring_h.display()
        );
        exit(1);
    }

    let version = match latest_interface_version(&include) {
        Some(v) => v,
        None => {
            eprintln!(
                "error: cannot read __XEN_LATEST_INTERFACE_VERSION__ from {}/xen/xen-compat.h.\n\
                 Xen's public headers are missing or damaged: install Debian's libxen-dev (cargo xtask ci does this)",
                include.display()
            );
            exit(1);
        }
    };

    let mut build = cc::Build::new();
    build
        .files(C_SOURCES)
        // Without this the headers give the legacy interface (grant_entry
        // instead of grant_entry_v1, ulong frame lists, ring.h's own mb()).
        .define("__XEN_INTERFACE_VERSION__", version.as_str())
        .flag("-std=gnu11")
        .warnings(true)
        .extra_warnings(true);
    // The system include directory is searched anyway; only add a custom one.
    if let Some(dir) = custom {
        build.include(dir);
    }
    build.compile("xen_c_reference");
}

/// `__XEN_LATEST_INTERFACE_VERSION__` as written in `xen/xen-compat.h`.
fn latest_interface_version(include: &Path) -> Option<String> {
    let text = std::fs::read_to_string(include.join("xen/xen-compat.h")).ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#define"), Some("__XEN_LATEST_INTERFACE_VERSION__"), Some(v))
                if v.starts_with("0x") =>
            {
                Some(v.to_string())
            }
            _ => None,
        }
    })
}
