//! `cargo xtask lab [--scenario NAME]... [--keep] [--prepare]`: the Xen lab
//! (`--prepare` only builds the cached lab image; `--help` lists the
//! scenarios).
//!
//! Builds (or takes from the cache) a lab image made of Debian's Xen 4.17,
//! Linux 6.1 as dom0 and a minimal Debian dom0 root file system; adds the
//! project's guest kernels (`lwdom` programs), dom0 programs (`lab`) and
//! scenario scripts as a second initramfs archive; boots it all under QEMU
//! (TCG); and reads the verdicts dom0 prints on the serial console:
//!
//! - `LAB-STAGE <text>`: progress;
//! - `LAB-BEGIN <scenario>`: a scenario starts;
//! - `LAB-RESULT <scenario> PASS|FAIL <detail>`: its verdict;
//! - `LAB-CONSOLE-BEGIN <scenario>` ... `LAB-CONSOLE-END <scenario>`: the
//!   guest's console;
//! - `LAB-DONE`: every scenario ran.
//!
//! Every wait is bounded, and QEMU is killed on every path out.

mod cpio;
mod image;
mod qemu;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::{self, cargo, root, target_dir};

/// A scenario: its name, the time dom0 gives it, and what it checks.
struct Scenario {
    name: &'static str,
    timeout_s: u64,
    what: &'static str,
    /// Run when no `--scenario` is given. The others are negative controls
    /// (they must FAIL, showing that a broken guest fails its scenario with
    /// its console shown instead of hanging the run) and scenarios that
    /// join the default list once they have passed three runs in a row.
    default: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot",
        timeout_s: 90,
        what: "lwdom boots, console, xenstore domid/name, result key, poweroff",
        default: true,
    },
    Scenario {
        name: "grant",
        timeout_s: 120,
        what: "grant two pages to dom0 (gntdev), reply, end access refused while mapped",
        default: true,
    },
    Scenario {
        name: "ring",
        timeout_s: 600,
        what: "100000 FrontRing/BackRing round trips with dom0 over a granted page",
        default: true,
    },
    Scenario {
        name: "blk",
        timeout_s: 900,
        what: "blkfront vs Linux xen-blkback on a loop device: whole-disk write/verify, discard, read-only disk, rebind mid-write",
        default: true,
    },
    Scenario {
        name: "net",
        timeout_s: 900,
        what: "netfront+smoltcp vs Linux xen-netback on a bridged vif: ping, UDP echo 1-1472 B, 16 MiB TCP each way, rebind mid-stream",
        default: true,
    },
    Scenario {
        name: "pci-edu",
        timeout_s: 300,
        what: "QEMU's edu passed through (pcifront, BAR, MSI, DMA below 28 bits); a stray DMA refused by the IOMMU",
        default: true,
    },
    Scenario {
        name: "pci-nic",
        timeout_s: 900,
        what: "lwdom drives the passed-through e1000e (MSI-X) with smoltcp: 100 pings from dom0's e1000, UDP echo of 1..1472 bytes",
        default: true,
    },
    Scenario {
        name: "rdma",
        timeout_s: 1200,
        what: "RoCE v2 from lwdom's own e1000e to dom0's rdma_rxe: ibv_rc_pingpong (guest server, then client), ib_send_lat, ib_write_lat; every payload checked",
        default: true,
    },
    Scenario {
        name: "panic",
        timeout_s: 60,
        what: "negative control: the guest panics; must FAIL with its console",
        default: false,
    },
    Scenario {
        name: "fault",
        timeout_s: 60,
        what: "negative control: the guest page-faults; must FAIL with the fault on its console",
        default: false,
    },
    Scenario {
        name: "hang",
        timeout_s: 60,
        what: "negative control: the guest hangs; must FAIL, not hang the run",
        default: false,
    },
];

/// Time allowed from QEMU's start to dom0 announcing its toolstack is up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

struct Options {
    scenarios: Vec<&'static Scenario>,
    keep: bool,
    prepare_only: bool,
}

/// `cargo xtask lab`: the Xen lab's options.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(after_help = scenarios_help())]
pub struct LabArgs {
    /// Run these scenarios (repeat the option or give a comma-separated
    /// list) [default: the scenarios marked * below].
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub scenario: Vec<String>,
    /// Keep the run's working directory (overlay, serial log) for a look
    /// afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Only build (or find in the cache) the lab image, then stop.
    #[arg(long)]
    pub prepare: bool,
}

/// The scenario list `cargo xtask lab --help` ends with.
pub fn scenarios_help() -> String {
    let mut s = String::from("Scenarios (* run by default):\n");
    for sc in SCENARIOS {
        s.push_str(&format!(
            "  {}{:<6} {}\n",
            if sc.default { "*" } else { " " },
            sc.name,
            sc.what
        ));
    }
    s
}

fn parse_args(args: &LabArgs) -> Result<Options, String> {
    let scenarios = if args.scenario.is_empty() {
        SCENARIOS.iter().filter(|s| s.default).collect()
    } else {
        args.scenario
            .iter()
            .map(|n| {
                SCENARIOS.iter().find(|s| s.name == n).ok_or_else(|| {
                    let known: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
                    format!(
                        "unknown scenario `{n}`; known scenarios: {}",
                        known.join(", ")
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    Ok(Options {
        scenarios,
        keep: args.keep,
        prepare_only: args.prepare,
    })
}

/// The guest kernel for a scenario.
fn guest_name(scenario: &str) -> String {
    format!("lwdom-{scenario}")
}

/// Built programs: (name, path).
type Built = Vec<(String, PathBuf)>;

/// Builds the guest kernels (x86_64-unknown-none, linked at address 0 for
/// Xen's PV domain builder) and the dom0 programs (host target).
fn build_programs(scenarios: &[&Scenario]) -> Result<(Built, Built), String> {
    let td = target_dir();
    let script = root().join("lwdom/guest.ld");
    let flags = [
        format!("-Clink-arg=-T{}", script.display()),
        "-Crelocation-model=static".to_string(),
        "-Clink-arg=--no-pie".to_string(),
        "-Clink-arg=-znoexecstack".to_string(),
    ];
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "-p",
        "lwdom",
        "--features",
        "guest",
        "--target",
        "x86_64-unknown-none",
    ])
    .env("CARGO_TARGET_DIR", &td)
    .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
    .env_remove("RUSTFLAGS");
    for s in scenarios {
        c.args(["--bin", &guest_name(s.name)]);
    }
    util::run(&mut c).map_err(|e| format!("{e}\nbuilding the lwdom guest kernels failed (is the x86_64-unknown-none target installed? `rustup target add x86_64-unknown-none`)"))?;
    let guests = scenarios
        .iter()
        .map(|s| {
            (
                guest_name(s.name),
                td.join("x86_64-unknown-none/release")
                    .join(guest_name(s.name)),
            )
        })
        .collect();
    let mut c = cargo();
    c.args(["build", "--release", "-p", "lab", "--bins"])
        .env("CARGO_TARGET_DIR", &td)
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    util::run(&mut c)
        .map_err(|e| format!("{e}\nbuilding the dom0 programs (crate `lab`) failed"))?;
    let mut progs = Vec::new();
    for e in fs::read_dir(root().join("lab/src/bin"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        let name = if p.is_dir() {
            p.file_name().map(|n| n.to_string_lossy().into_owned())
        } else {
            p.file_stem().map(|n| n.to_string_lossy().into_owned())
        };
        if let Some(n) = name {
            progs.push((n.clone(), td.join("release").join(&n)));
        }
    }
    Ok((guests, progs))
}

/// The second initramfs archive: init, scenario scripts, guests, programs.
fn write_overlay(
    path: &Path,
    opts: &Options,
    guests: &[(String, PathBuf)],
    progs: &[(String, PathBuf)],
) -> Result<(), String> {
    let read = |p: &Path| fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let f = fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut w = cpio::CpioWriter::new(f);
    let io = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let lab = root().join("lab");
    w.file("init", 0o755, &read(&lab.join("dom0/init"))?)
        .map_err(io)?;
    for d in ["lab", "lab/guests", "lab/bin", "lab/scenarios"] {
        w.dir(d, 0o755).map_err(io)?;
    }
    w.file("lab/lib.sh", 0o644, &read(&lab.join("dom0/lib.sh"))?)
        .map_err(io)?;
    w.file("lab/block-min", 0o755, &read(&lab.join("dom0/block-min"))?)
        .map_err(io)?;
    w.file("lab/vif-min", 0o755, &read(&lab.join("dom0/vif-min"))?)
        .map_err(io)?;
    let mut list = String::new();
    for s in &opts.scenarios {
        let script = lab.join("scenarios").join(format!("{}.sh", s.name));
        w.file(
            &format!("lab/scenarios/{}.sh", s.name),
            0o755,
            &read(&script)?,
        )
        .map_err(io)?;
        list.push_str(&format!("{} {}\n", s.name, s.timeout_s));
    }
    w.file("lab/scenarios.list", 0o644, list.as_bytes())
        .map_err(io)?;
    for (n, p) in guests {
        w.file(&format!("lab/guests/{n}"), 0o644, &read(p)?)
            .map_err(io)?;
    }
    for (n, p) in progs {
        w.file(&format!("lab/bin/{n}"), 0o755, &read(p)?)
            .map_err(io)?;
    }
    w.finish().map_err(io)
}

/// What happened to one scenario.
#[derive(Default)]
struct Outcome {
    verdict: Option<(bool, String)>,
    console: Vec<String>,
    started: Option<Instant>,
    seconds: Option<f64>,
}

/// Runs the lab.
pub fn run(args: &LabArgs) -> Result<(), String> {
    let opts = parse_args(args)?;
    let t0 = Instant::now();
    if !is_root() {
        return Err(
            "the lab installs packages and builds a root file system: run it as root".into(),
        );
    }
    image::ensure_host_tools()?;
    let t_img = Instant::now();
    let img = image::ensure_image()?;
    let img_s = t_img.elapsed().as_secs_f64();
    if opts.prepare_only {
        println!(
            "lab image ready in {} ({img_s:.1} s): {}",
            img.dir.display(),
            img.describe.trim()
        );
        return Ok(());
    }

    let t_build = Instant::now();
    let (guests, progs) = build_programs(&opts.scenarios)?;
    let build_s = t_build.elapsed().as_secs_f64();

    let work = std::env::temp_dir().join(format!("xen-suite-lab-{}", std::process::id()));
    fs::create_dir_all(&work)
        .map_err(|e| format!("cannot create the work dir {}: {e}", work.display()))?;
    let result = run_in(&opts, &img, &guests, &progs, &work);
    let outcomes = match result {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "lab: the work dir {} is kept for inspection (serial.log)",
                work.display()
            );
            return Err(e);
        }
    };
    let (results, boot_s, qemu_s, run_err) = outcomes;
    let mut failed = 0;
    println!();
    println!("Xen lab: {}", img.describe.trim());
    println!("{:<10} {:<6} {:>8}  detail", "scenario", "result", "time");
    for s in &opts.scenarios {
        let o = results.get(s.name);
        let (res, detail) = match o.and_then(|o| o.verdict.clone()) {
            Some((true, d)) => ("PASS", d),
            Some((false, d)) => ("FAIL", d),
            None => (
                "FAIL",
                "no verdict (dom0 did not report; see the serial log)".to_string(),
            ),
        };
        if res != "PASS" {
            failed += 1;
        }
        let secs = o
            .and_then(|o| o.seconds)
            .map(|t| format!("{t:.1} s"))
            .unwrap_or_else(|| "-".into());
        println!("{:<10} {:<6} {:>8}  {}", s.name, res, secs, detail);
    }
    for s in &opts.scenarios {
        let o = results.get(s.name);
        let pass = matches!(o.and_then(|o| o.verdict.as_ref()), Some((true, _)));
        if !pass {
            println!("\n--- guest console of `{}` ---", s.name);
            match o {
                Some(o) if !o.console.is_empty() => {
                    for l in &o.console {
                        println!("{l}");
                    }
                }
                _ => println!("(no console captured)"),
            }
            println!("--- end of console of `{}` ---", s.name);
        }
    }
    println!(
        "\ntimes: image {img_s:.1} s, build {build_s:.1} s, dom0 boot {boot_s:.1} s, QEMU total {qemu_s:.1} s, whole run {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    if opts.keep {
        println!("work dir kept: {}", work.display());
    } else if failed == 0 && run_err.is_none() {
        let _ = fs::remove_dir_all(&work);
    } else {
        println!(
            "work dir kept for inspection: {} (serial.log, consoles)",
            work.display()
        );
    }
    if let Some(e) = run_err {
        return Err(e);
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {} scenario(s) failed",
            opts.scenarios.len()
        ));
    }
    Ok(())
}

fn is_root() -> bool {
    // The effective uid, read without libc.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

type RunResult = (BTreeMap<String, Outcome>, f64, f64, Option<String>);

fn run_in(
    opts: &Options,
    img: &image::Image,
    guests: &[(String, PathBuf)],
    progs: &[(String, PathBuf)],
    work: &Path,
) -> Result<RunResult, String> {
    let overlay = work.join("overlay.cpio");
    write_overlay(&overlay, opts, guests, progs)?;
    // One multiboot module: the base archive followed by the overlay.
    let dom0_cpio = work.join("dom0.cpio");
    {
        let mut out = fs::File::create(&dom0_cpio)
            .map_err(|e| format!("cannot create {}: {e}", dom0_cpio.display()))?;
        for p in [&img.base_cpio, &overlay] {
            let mut f =
                fs::File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))?;
            std::io::copy(&mut f, &mut out)
                .map_err(|e| format!("cannot write {}: {e}", dom0_cpio.display()))?;
        }
    }
    let total: u64 = opts.scenarios.iter().map(|s| s.timeout_s + 30).sum();
    let deadline = BOOT_TIMEOUT + Duration::from_secs(total + 60);
    let mut results: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut in_console: Option<String> = None;
    let t = Instant::now();
    let mut boot_s = 0.0;
    let mut done = false;
    let run = qemu::run(
        &qemu::Config {
            xen: &img.xen,
            vmlinuz: &img.vmlinuz,
            cpio: &dom0_cpio,
            log: &work.join("serial.log"),
            boot_timeout: BOOT_TIMEOUT,
            deadline,
        },
        |line| {
            if let Some(name) = &in_console {
                if line.contains("LAB-CONSOLE-END") {
                    in_console = None;
                } else {
                    results
                        .entry(name.clone())
                        .or_default()
                        .console
                        .push(line.to_string());
                }
                return qemu::Flow::Continue;
            }
            let Some(at) = line.find("LAB-") else {
                return qemu::Flow::Continue;
            };
            let msg = &line[at..];
            let mut words = msg.splitn(2, ' ');
            let tag = words.next().unwrap_or("");
            let rest = words.next().unwrap_or("").trim();
            match tag {
                "LAB-STAGE" => {
                    eprintln!("lab: [{:>6.1} s] dom0: {rest}", t.elapsed().as_secs_f64());
                    if rest.starts_with("toolstack up") {
                        boot_s = t.elapsed().as_secs_f64();
                        return qemu::Flow::Booted;
                    }
                }
                "LAB-BEGIN" => {
                    let what = SCENARIOS
                        .iter()
                        .find(|s| s.name == rest)
                        .map(|s| s.what)
                        .unwrap_or("");
                    eprintln!(
                        "lab: [{:>6.1} s] scenario {rest}: running ({what})",
                        t.elapsed().as_secs_f64()
                    );
                    results.entry(rest.to_string()).or_default().started = Some(Instant::now());
                }
                "LAB-RESULT" => {
                    let mut p = rest.splitn(3, ' ');
                    let name = p.next().unwrap_or("").to_string();
                    let pass = p.next() == Some("PASS");
                    let detail = p.next().unwrap_or("").to_string();
                    eprintln!(
                        "lab: [{:>6.1} s] scenario {name}: {} {detail}",
                        t.elapsed().as_secs_f64(),
                        if pass { "PASS" } else { "FAIL" }
                    );
                    let o = results.entry(name).or_default();
                    o.seconds = o.started.map(|s| s.elapsed().as_secs_f64());
                    o.verdict = Some((pass, detail));
                }
                "LAB-CONSOLE-BEGIN" => in_console = Some(rest.to_string()),
                "LAB-DONE" => {
                    done = true;
                    return qemu::Flow::Done;
                }
                _ => {}
            }
            qemu::Flow::Continue
        },
    );
    let qemu_s = t.elapsed().as_secs_f64();
    // Save the consoles next to the serial log.
    for (name, o) in &results {
        let _ = fs::write(
            work.join(format!("console-{name}.log")),
            o.console.join("\n"),
        );
    }
    let err = match run {
        Ok(()) if done => None,
        Ok(()) => Some(format!(
            "QEMU ended before dom0 finished the scenarios; see {}/serial.log",
            work.display()
        )),
        Err(e) => Some(format!("{e}; see {}/serial.log", work.display())),
    };
    if let Some(e) = &err {
        eprintln!("lab: {e}");
        let log = fs::read_to_string(work.join("serial.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("lab: last lines of the serial console:");
        for l in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  | {l}");
        }
    }
    Ok((results, boot_s, qemu_s, err))
}
