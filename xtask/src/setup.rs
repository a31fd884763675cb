//! What the commands install for themselves on a fresh machine.
//!
//! Every command that builds or runs something installs what it needs when
//! it is missing, so that each of the README's commands works on a fresh
//! clone: `cargo xtask ci` calls [`ensure_ci_tools`], every bench command
//! calls [`ensure_bench_deps`].

use std::path::Path;
use std::process::Command;

use crate::util::{output, run as sh};

/// The header whose presence shows that Xen's public headers are installed.
const XEN_RING_H: &str = "/usr/include/xen/io/ring.h";

/// Whether `cmd args...` runs and succeeds.
pub fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Installs Debian packages with apt-get (through password-less sudo when
/// not root). An error says which command to run by hand.
pub fn apt_install(packages: &[&str]) -> Result<(), String> {
    let root_user = output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false);
    let mut prefix: Vec<&str> = Vec::new();
    if !root_user {
        if !have("sudo", &["-n", "true"]) {
            return Err(format!(
                "{} must be installed and this user is not root and has no password-less sudo; run `apt-get install -y {}` as root",
                packages.join(" "),
                packages.join(" ")
            ));
        }
        prefix.push("sudo");
    }
    let mk = |args: &[&str]| {
        let mut all: Vec<&str> = prefix.clone();
        all.extend_from_slice(args);
        let mut c = Command::new(all[0]);
        c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    // Another apt-get (an unattended upgrade, a second command) may hold
    // dpkg's lock: wait for it rather than fail.
    let lock_wait = "-oDPkg::Lock::Timeout=600";
    sh(&mut mk(&["apt-get", lock_wait, "update", "-q"]))?;
    let mut args = vec![
        "apt-get",
        lock_wait,
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
    ];
    args.extend_from_slice(packages);
    sh(&mut mk(&args))
}

/// Xen's public headers (Debian's `libxen-dev`), which `xen-c-reference`
/// compiles against; installed when missing. `XEN_INCLUDE_DIR` (the
/// directory holding `xen/`) points the build elsewhere and skips this.
pub fn ensure_xen_headers() -> Result<(), String> {
    if let Some(dir) = std::env::var_os("XEN_INCLUDE_DIR") {
        if Path::new(&dir).join("xen/io/ring.h").is_file() {
            return Ok(());
        }
    }
    if Path::new(XEN_RING_H).exists() {
        return Ok(());
    }
    eprintln!("xtask: Xen's public headers are missing ({XEN_RING_H}); installing libxen-dev");
    apt_install(&["libxen-dev"])
}

/// What every bench command needs before it builds: Xen's headers (the
/// benches link the C reference peers).
pub fn ensure_bench_deps() -> Result<(), String> {
    ensure_xen_headers()
}

/// fio, the block bench's peer (Debian's `fio`), installed when missing.
pub fn ensure_fio() -> Result<(), String> {
    if have("fio", &["--version"]) {
        return Ok(());
    }
    eprintln!("xtask: fio is missing; installing it (the block bench measures it beside blkback)");
    apt_install(&["fio"])
}

/// Everything `cargo xtask ci` needs: Xen's headers, the
/// `x86_64-unknown-none` target, nightly with Miri, cargo-fuzz, clippy.
pub fn ensure_ci_tools() -> Result<(), String> {
    ensure_xen_headers()?;
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !targets.lines().any(|l| l.trim() == "x86_64-unknown-none") {
        sh(Command::new("rustup").args(["target", "add", "x86_64-unknown-none"]))?;
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if !have("cargo", &["+nightly", "miri", "--version"]) {
        sh(Command::new("rustup").args([
            "component",
            "add",
            "--toolchain",
            "nightly",
            "miri",
            "rust-src",
        ]))?;
    }
    if !have("cargo", &["fuzz", "--version"]) {
        sh(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    if !have("rustup", &["component", "list", "--installed"])
        || !output(Command::new("rustup").args(["component", "list", "--installed"]))?
            .contains("clippy")
    {
        sh(Command::new("rustup").args(["component", "add", "clippy"]))?;
    }
    Ok(())
}
