//! Booting the lab under QEMU (TCG) and streaming its serial console.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What to boot.
pub struct Config<'a> {
    /// Xen, uncompressed.
    pub xen: &'a Path,
    /// The dom0 kernel.
    pub vmlinuz: &'a Path,
    /// The dom0 initramfs.
    pub cpio: &'a Path,
    /// Where the whole serial console is written.
    pub log: &'a Path,
    /// Time allowed until the line handler reports [`Flow::Booted`].
    pub boot_timeout: Duration,
    /// Time allowed for the whole run.
    pub deadline: Duration,
}

/// What the line handler wants next.
pub enum Flow {
    /// Keep reading.
    Continue,
    /// dom0 is up (ends the boot timeout).
    Booted,
    /// Everything is done: let QEMU power off, then stop.
    Done,
}

/// The machine: q35 (the emulated Intel IOMMU needs it) with VT-d and
/// interrupt remapping (`eim=on` is refused under TCG; `caching-mode=on`
/// makes QEMU see every mapping Xen installs), QEMU's `edu` test device at
/// 00:03.0, an `e1000e` at 00:04.0 for a guest and an `e1000` at 00:05.0 for
/// dom0, both NICs on QEMU hub 0 (a private link between the two, nothing
/// on the host). `-nic none` (below) drops q35's default NIC.
const MACHINE: &[&str] = &[
    "-machine",
    "q35",
    "-vga",
    "none",
    "-device",
    "intel-iommu,intremap=on,caching-mode=on",
    "-device",
    "edu,addr=3",
    "-netdev",
    "hubport,id=hp0,hubid=0",
    "-device",
    "e1000e,netdev=hp0,addr=4,mac=52:54:00:12:34:02",
    "-netdev",
    "hubport,id=hp1,hubid=0",
    "-device",
    "e1000,netdev=hp1,addr=5,mac=52:54:00:12:34:01",
];

/// Serial console lines that mean the lab is dead.
const FATAL: &[&str] = &[
    "Kernel panic - not syncing",
    "Hardware Dom0 crashed",
    "Panic on CPU",
    "(XEN) Reboot in five seconds",
];

/// Kills QEMU when dropped, on every path out.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Boots the lab and feeds each serial line to `on_line` until it says
/// [`Flow::Done`], QEMU exits, or a timeout passes (an error).
pub fn run(cfg: &Config<'_>, mut on_line: impl FnMut(&str) -> Flow) -> Result<(), String> {
    // `iommu=verbose`: VT-d on (QEMU's emulated intel-iommu), with its
    // faults and setup in `xl dmesg` (a 1 MiB console ring keeps the boot
    // messages there). `dom0-iommu=passthrough`: dom0's own devices are
    // not translated, so Xen does not update dom0's IOMMU tables at every
    // grant dom0's backends map (each update an emulated IOTLB flush under
    // QEMU); guests given a device are translated and isolated as ever.
    let xen_cmdline = "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1 dom0_vcpus_pin noreboot loglvl=all guest_loglvl=all iommu=verbose dom0-iommu=passthrough conring_size=1m";
    let dom0_cmdline = "console=hvc0 earlyprintk=xen quiet loglevel=3";
    // QEMU's -initrd separates modules with commas (a literal comma is `,,`).
    let modules = format!(
        "{} {},{}",
        cfg.vmlinuz.display(),
        dom0_cmdline,
        cfg.cpio.display()
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-cpu",
        "max,-smap,-smep",
        "-m",
        "2048",
        "-smp",
        "2",
    ])
    .args(MACHINE)
    .args([
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-nic",
        "none",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(cfg.xen)
    .args(["-append", xen_cmdline])
    .arg("-initrd")
    .arg(&modules)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    eprintln!("lab: booting Xen and dom0 under QEMU (TCG)");
    let child = cmd.spawn().map_err(|e| {
        format!("cannot start qemu-system-x86_64: {e}; install the qemu-system-x86 package")
    })?;
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().ok_or("QEMU has no stdout pipe")?;
    let stderr = child.0.stderr.take().ok_or("QEMU has no stderr pipe")?;
    let (tx, rx) = mpsc::channel::<Option<String>>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&buf).replace('\r', "");
                    if tx.send(Some(s.trim_end_matches('\n').to_string())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(None);
    });
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(Some(format!("[qemu stderr] {l}")));
        }
    });
    let mut log = fs::File::create(cfg.log)
        .map_err(|e| format!("cannot create {}: {e}", cfg.log.display()))?;
    let start = Instant::now();
    let mut booted = false;
    loop {
        let limit = if booted {
            cfg.deadline
        } else {
            cfg.boot_timeout
        };
        let Some(left) = limit.checked_sub(start.elapsed()) else {
            return Err(if booted {
                format!(
                    "the lab did not finish within {} s; QEMU was killed",
                    cfg.deadline.as_secs()
                )
            } else {
                format!(
                    "dom0 did not bring its toolstack up within {} s; QEMU was killed",
                    cfg.boot_timeout.as_secs()
                )
            });
        };
        match rx.recv_timeout(left) {
            Ok(Some(line)) => {
                let _ = writeln!(log, "{line}");
                if let Some(why) = FATAL.iter().find(|f| line.contains(*f)) {
                    // Give the crash report a moment to reach the log.
                    let until = Instant::now() + Duration::from_secs(3);
                    while let Ok(Some(l)) =
                        rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                    {
                        let _ = writeln!(log, "{l}");
                    }
                    return Err(format!("dom0 or Xen crashed (`{why}`); QEMU was killed"));
                }
                match on_line(&line) {
                    Flow::Continue => {}
                    Flow::Booted => booted = true,
                    Flow::Done => {
                        // Every verdict is in: collect what is still in
                        // flight, then stop QEMU (Xen halts rather than
                        // ending QEMU when dom0 powers off).
                        let until = Instant::now() + Duration::from_millis(500);
                        while let Ok(Some(l)) =
                            rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                        {
                            let _ = writeln!(log, "{l}");
                        }
                        return Ok(());
                    }
                }
            }
            Ok(None) => {
                let status = child.0.wait().map_err(|e| e.to_string())?;
                if status.success() {
                    return Ok(());
                }
                return Err(format!("QEMU exited with {status}"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("lost QEMU's output".into()),
        }
    }
}
