//! The lab image: Xen, the dom0 kernel and the dom0 root file system, built
//! from Debian's packages only and cached outside the checkout, keyed by the
//! package versions.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::cpio::CpioWriter;
use crate::util::{output, run};

/// Bump when the recipe below changes what ends up in the image in a way
/// the package and module lists (which are part of the cache key) do not
/// show.
const RECIPE: &str = "lab-image-v5";

/// Where cached images live.
pub const CACHE_ROOT: &str = "/var/cache/xen-suite-lab";

/// Debian's mirror, reached through the package registry.
const MIRROR: &str = "http://deb.debian.org/debian";
const SUITE: &str = "bookworm";

/// Packages the dom0 root file system holds.
/// (rdma-core's tools, its Soft-RoCE provider and perftest: the `rdma`
/// scenario's peer.)
const DOM0_PACKAGES: &str = "xen-utils-4.17,xenstore-utils,iproute2,kmod,busybox,\
rdma-core,ibverbs-utils,ibverbs-providers,perftest";

/// Kernel modules dom0 loads (with their dependencies).
const DOM0_MODULES: &[&str] = &[
    "xenfs",
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "xen-blkback",
    "xen-netback",
    "loop",
    "bridge",
    // PCI passthrough: pciback holds the devices a guest gets; dom0 drives
    // the e1000 on the guest's network hub.
    "xen-pciback",
    "e1000",
    // Soft-RoCE on the e1000 and the verbs device user space opens (the
    // `rdma` scenario's peer).
    "rdma_rxe",
    "ib_uverbs",
    // rxe computes the ICRC with the crypto API's "crc32" (not a module
    // dependency: without it, adding the link fails with ENOENT).
    "crc32_generic",
];

/// Host tools the lab needs: (command, Debian package).
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("debootstrap", "debootstrap"),
    ("depmod", "kmod"),
    ("dpkg-deb", "dpkg"),
];

/// A built lab image.
pub struct Image {
    /// The directory holding it.
    pub dir: PathBuf,
    /// Xen, uncompressed (QEMU's multiboot loader wants an ELF).
    pub xen: PathBuf,
    /// The dom0 kernel.
    pub vmlinuz: PathBuf,
    /// The dom0 root file system as a newc archive.
    pub base_cpio: PathBuf,
    /// What went into it, for the report.
    pub describe: String,
}

fn have(cmd: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(cmd).exists())
}

/// Installs the host tools that are missing, with apt-get.
pub fn ensure_host_tools() -> Result<(), String> {
    let missing: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("lab: installing host tools: {}", missing.join(" "));
    apt_update()?;
    let mut c = Command::new("timeout");
    c.args([
        "600",
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
    ])
    .args(&missing)
    .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut c).map_err(|e| format!("{e}\ninstalling the lab's host tools failed; the lab needs root and apt access to Debian's mirror"))
}

fn apt_update() -> Result<(), String> {
    run(Command::new("timeout").args(["300", "apt-get", "update", "-q"])).map_err(|e| {
        format!(
            "{e}\n`apt-get update` failed or took over 5 minutes; check access to Debian's mirror"
        )
    })
}

/// Every version apt knows of the packages that make up the image.
fn apt_versions() -> Result<String, String> {
    let out = output(Command::new("apt-cache").args([
        "madison",
        "xen-utils-4.17",
        "xen-hypervisor-4.17-amd64",
        "linux-image-amd64",
    ]))?;
    Ok(out)
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The kernel package `linux-image-amd64` stands for.
fn kernel_package() -> Result<String, String> {
    let out = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(|s| s.trim().to_string())
        .ok_or_else(|| {
            format!("`apt-cache depends linux-image-amd64` names no kernel package:\n{out}")
        })
}

/// Returns the cached image, building it first when there is none for the
/// current package versions.
pub fn ensure_image() -> Result<Image, String> {
    let mut versions = apt_versions()?;
    if !versions.contains("xen-hypervisor-4.17-amd64") || !versions.contains("linux-image-amd64") {
        apt_update()?;
        versions = apt_versions()?;
    }
    if !versions.contains("xen-hypervisor-4.17-amd64") {
        return Err("apt knows no `xen-hypervisor-4.17-amd64`: the host must use Debian bookworm's package lists (main)".into());
    }
    let kpkg = kernel_package()?;
    // The key covers everything the image is made of, so that lab runs of
    // checkouts with different recipes use (and keep) different images.
    let key = format!(
        "{kpkg}-{:016x}",
        fnv1a(&format!(
            "{RECIPE}\n{DOM0_PACKAGES}\n{}\n{kpkg}\n{versions}",
            DOM0_MODULES.join(",")
        ))
    );
    let dir = PathBuf::from(CACHE_ROOT).join(&key);
    let image = Image {
        xen: dir.join("xen"),
        vmlinuz: dir.join("vmlinuz"),
        base_cpio: dir.join("dom0-base.cpio"),
        describe: String::new(),
        dir: dir.clone(),
    };
    if dir.join("complete").exists() {
        // Marks the image as in use (see `remove_unused_images`).
        let _ = fs::write(dir.join("last-used"), "");
        let describe = fs::read_to_string(dir.join("describe")).unwrap_or_default();
        eprintln!(
            "lab: using cached image {} ({})",
            dir.display(),
            describe.trim()
        );
        return Ok(Image { describe, ..image });
    }
    eprintln!(
        "lab: building the lab image in {} (cold; a few minutes)",
        dir.display()
    );
    let build = PathBuf::from(CACHE_ROOT).join(format!("{key}.building"));
    if build.exists() {
        fs::remove_dir_all(&build)
            .map_err(|e| format!("cannot remove the stale build dir {}: {e}", build.display()))?;
    }
    fs::create_dir_all(&build).map_err(|e| format!("cannot create {}: {e}", build.display()))?;
    let describe = build_image(&build, &kpkg)?;
    fs::write(build.join("describe"), &describe).map_err(|e| e.to_string())?;
    fs::write(build.join("complete"), "").map_err(|e| e.to_string())?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    remove_unused_images(&build);
    fs::rename(&build, &dir)
        .map_err(|e| format!("cannot move {} to {}: {e}", build.display(), dir.display()))?;
    Ok(Image { describe, ..image })
}

/// How long an image may go unused before a new build removes it.
const UNUSED_FOR: std::time::Duration = std::time::Duration::from_secs(3 * 24 * 3600);

/// Removes the cached images (other than `keep`) that no run used for
/// [`UNUSED_FOR`]. Images of other recipes stay while they are in use:
/// lab runs of checkouts with different recipes may run side by side.
fn remove_unused_images(keep: &Path) {
    for e in fs::read_dir(CACHE_ROOT).into_iter().flatten().flatten() {
        let p = e.path();
        if p == keep || !p.join("complete").exists() {
            continue;
        }
        let used = ["last-used", "complete"]
            .iter()
            .filter_map(|f| fs::metadata(p.join(f)).and_then(|m| m.modified()).ok())
            .max();
        let idle = used
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|d| d > UNUSED_FOR);
        if idle {
            eprintln!(
                "lab: removing the image {} (unused for over {} days)",
                p.display(),
                UNUSED_FOR.as_secs() / 86400
            );
            let _ = fs::remove_dir_all(&p);
        }
    }
}

fn step<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let t = Instant::now();
    eprintln!("lab: {what} ...");
    let r = f();
    match &r {
        Ok(_) => eprintln!("lab: {what}: done in {:.1} s", t.elapsed().as_secs_f64()),
        Err(_) => eprintln!(
            "lab: {what}: FAILED after {:.1} s",
            t.elapsed().as_secs_f64()
        ),
    }
    r
}

/// The version of an installed package in a root file system.
fn installed_version(root: &Path, pkg: &str) -> Result<String, String> {
    let status = fs::read_to_string(root.join("var/lib/dpkg/status"))
        .map_err(|e| format!("cannot read dpkg status in {}: {e}", root.display()))?;
    for para in status.split("\n\n") {
        if para.lines().any(|l| l == format!("Package: {pkg}")) {
            if let Some(v) = para.lines().find_map(|l| l.strip_prefix("Version: ")) {
                return Ok(v.to_string());
            }
        }
    }
    Err(format!("{pkg} is not installed in {}", root.display()))
}

fn apt_download(dir: &Path, spec: &str) -> Result<PathBuf, String> {
    let before: Vec<_> = list_debs(dir)?;
    let mut c = Command::new("timeout");
    c.args(["600", "apt-get", "download", "-q", spec])
        .current_dir(dir);
    run(&mut c).map_err(|e| {
        format!("{e}\ndownloading {spec} from Debian's mirror failed or took over 10 minutes")
    })?;
    let after = list_debs(dir)?;
    after
        .into_iter()
        .find(|p| !before.contains(p))
        .ok_or_else(|| {
            format!(
                "apt-get download {spec} produced no .deb in {}",
                dir.display()
            )
        })
}

fn list_debs(dir: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect())
}

fn build_image(build: &Path, kpkg: &str) -> Result<String, String> {
    let root = build.join("rootfs");
    let debs = build.join("debs");
    fs::create_dir_all(&debs).map_err(|e| e.to_string())?;
    // apt downloads as the unprivileged `_apt` user when it may write here.
    for d in [&build.to_path_buf(), &debs] {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(d, fs::Permissions::from_mode(0o777));
    }
    // The kernel download runs while debootstrap works.
    let kdeb_thread = {
        let debs = debs.clone();
        let kpkg = kpkg.to_string();
        std::thread::spawn(move || apt_download(&debs, &kpkg))
    };
    step(
        "debootstrap the dom0 root file system (minbase + Xen tools)",
        || {
            let mut c = Command::new("timeout");
            c.args([
                "1200",
                "debootstrap",
                "--variant=minbase",
                &format!("--include={DOM0_PACKAGES}"),
                SUITE,
            ])
            .arg(&root)
            .arg(MIRROR);
            run(&mut c).map_err(|e| format!("{e}\ndebootstrap failed or took over 20 minutes; see {}/debootstrap/debootstrap.log", root.display()))
        },
    )?;
    let xen_version = installed_version(&root, "xen-utils-4.17")?;
    let kdeb = kdeb_thread
        .join()
        .map_err(|_| "the kernel download thread panicked".to_string())??;
    // The hypervisor must match the tools that debootstrap installed.
    let xdeb = step(
        &format!("download xen-hypervisor-4.17-amd64 {xen_version}"),
        || apt_download(&debs, &format!("xen-hypervisor-4.17-amd64={xen_version}")),
    )?;
    let kver = kpkg
        .strip_prefix("linux-image-")
        .unwrap_or(kpkg)
        .to_string();
    step("unpack Xen and the dom0 kernel", || {
        let xdir = build.join("xen-pkg");
        run(Command::new("dpkg-deb").arg("-x").arg(&xdeb).arg(&xdir))?;
        let xen_gz = fs::read_dir(xdir.join("boot"))
            .map_err(|e| format!("the Xen package has no /boot: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    n.to_string_lossy().starts_with("xen-") && n.to_string_lossy().ends_with(".gz")
                })
            })
            .ok_or("the Xen package has no /boot/xen-*.gz")?;
        let out = Command::new("gunzip")
            .arg("-c")
            .arg(&xen_gz)
            .output()
            .map_err(|e| format!("cannot run gunzip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "gunzip -c {} failed: {}",
                xen_gz.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        fs::write(build.join("xen"), out.stdout).map_err(|e| e.to_string())?;
        fs::remove_dir_all(&xdir).map_err(|e| e.to_string())?;
        // The kernel package is unpacked beside the rootfs (unpacking it
        // over the rootfs would replace the merged-/usr `/lib` symlink with
        // a directory); its modules then move into /usr/lib/modules.
        let kdir = build.join("kernel-pkg");
        run(Command::new("dpkg-deb").arg("-x").arg(&kdeb).arg(&kdir))?;
        fs::rename(
            kdir.join(format!("boot/vmlinuz-{kver}")),
            build.join("vmlinuz"),
        )
        .map_err(|e| format!("the kernel package has no /boot/vmlinuz-{kver}: {e}"))?;
        let kmods = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| kdir.join(d).join(&kver))
            .find(|p| p.exists())
            .ok_or_else(|| format!("the kernel package has no /lib/modules/{kver}"))?;
        let dest = root.join("usr/lib/modules");
        fs::create_dir_all(&dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
        fs::rename(&kmods, dest.join(&kver))
            .map_err(|e| format!("cannot move the kernel modules into the rootfs: {e}"))?;
        fs::remove_dir_all(&kdir).map_err(|e| e.to_string())?;
        Ok(())
    })?;
    step("trim the root file system", || trim(&root, &kver))?;
    step("pack the dom0 root file system", || {
        let f = fs::File::create(build.join("dom0-base.cpio")).map_err(|e| e.to_string())?;
        let mut w = CpioWriter::new(f);
        w.tree(&root)
            .map_err(|e| format!("packing {}: {e}", root.display()))?;
        w.finish().map_err(|e| e.to_string())
    })?;
    fs::remove_dir_all(&root).map_err(|e| e.to_string())?;
    fs::remove_dir_all(&debs).map_err(|e| e.to_string())?;
    Ok(format!(
        "Xen {xen_version}, dom0 {kpkg}, Debian {SUITE} minbase"
    ))
}

fn trim(root: &Path, kver: &str) -> Result<(), String> {
    for d in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "usr/share/lintian",
        "usr/share/zoneinfo",
        "usr/share/i18n",
        "var/cache/apt",
        "var/lib/apt/lists",
        "boot",
        "usr/lib/firmware",
        "lib/firmware",
    ] {
        let p = root.join(d);
        if p.symlink_metadata().is_ok()
            && !p
                .symlink_metadata()
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
        {
            fs::remove_dir_all(&p).map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
        }
    }
    // Python (pygrub and friends) is not used by the lab.
    if let Ok(rd) = fs::read_dir(root.join("usr/lib")) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("python3") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    // Keep only the modules dom0 loads, with their dependencies.
    let mods_root = root.join("usr/lib/modules").join(kver);
    run(Command::new("depmod").arg("-b").arg(root).arg(kver))?;
    let mut keep: Vec<PathBuf> = Vec::new();
    for m in DOM0_MODULES {
        let mut c = Command::new("modprobe");
        c.arg("-d")
            .arg(root)
            .args(["-S", kver, "--show-depends", m]);
        let out =
            output(&mut c).map_err(|e| format!("{e}\nthe dom0 kernel {kver} has no module {m}"))?;
        for l in out.lines() {
            if let Some(p) = l.trim().strip_prefix("insmod ") {
                let p = p.split_whitespace().next().unwrap_or("");
                // modprobe prints the path with the base directory.
                let path = if Path::new(p).starts_with(root) {
                    PathBuf::from(p)
                } else {
                    root.join(p.trim_start_matches('/'))
                };
                if !path.exists() {
                    return Err(format!(
                        "modprobe names {} for module {m}, which does not exist",
                        path.display()
                    ));
                }
                keep.push(path);
            }
        }
    }
    let kernel_dir = mods_root.join("kernel");
    prune(&kernel_dir, &keep)?;
    run(Command::new("depmod").arg("-b").arg(root).arg(kver))?;
    eprintln!("lab: kept {} kernel module file(s) for dom0", keep.len());
    Ok(())
}

/// Removes every file under `dir` that is not in `keep` (compared after
/// resolving both), and then the empty directories.
fn prune(dir: &Path, keep: &[PathBuf]) -> Result<bool, String> {
    let keep_canon: Vec<PathBuf> = keep
        .iter()
        .filter_map(|p| fs::canonicalize(p).ok())
        .collect();
    fn walk(dir: &Path, keep: &[PathBuf]) -> Result<bool, String> {
        let mut any = false;
        for e in fs::read_dir(dir)
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .flatten()
        {
            let p = e.path();
            let ft = e.file_type().map_err(|e| e.to_string())?;
            if ft.is_dir() {
                if walk(&p, keep)? {
                    any = true;
                } else {
                    fs::remove_dir(&p)
                        .map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
                }
            } else {
                let c = fs::canonicalize(&p).unwrap_or(p.clone());
                if keep.contains(&c) {
                    any = true;
                } else {
                    fs::remove_file(&p)
                        .map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
                }
            }
        }
        Ok(any)
    }
    walk(dir, &keep_canon)
}
