//! Linux's own schedulers as peers: fio drives the loop device with the
//! bench's workloads under `mq-deadline`, `bfq` and `kyber` in turn.
//!
//! - Engine: `io_uring`, `direct=1`, one fio job per stream, each a
//!   thread of one fio process (`thread=1`), so stopping fio stops them
//!   all.
//! - Rate jobs: the real-time and latency-critical streams are rate jobs
//!   (`rate_iops`; W1 with fio's default `rate_process=linear`, evenly
//!   spaced like the simulation's phase-spread periodic readers; W2 and W3
//!   with `rate_process=poisson`) at a depth of 256. They are not strictly
//!   open loop: fio's rate loop (`rate_ddir`, with the default
//!   `io_submit_mode=inline`), whenever the job is ahead of its schedule,
//!   first waits for all of the job's requests in flight (`io_u_quiesce`),
//!   then sleeps the time it had to go, then issues; behind schedule it
//!   issues at once. fio measures latency from the moment it issues a
//!   request, so neither that wait nor the lateness of its own wake-up
//!   is in the latencies. Our real path issues its streams the same way
//!   and stamps them the same way (`super::ours::FioPacer`), so both are
//!   measured alike. A job that ends the window behind its schedule issued
//!   fewer requests than the rate asks: the bench counts the requests
//!   issued in the window against the rate and says so when fewer than
//!   90 % were.
//! - The bulk jobs are closed loop: 1 MiB sequential writes, depth 32.
//! - Priorities: the real-time (and latency-critical) job runs in the
//!   real-time I/O priority class, `prioclass=1` `prio=0`, and also sets it
//!   on every request (`cmdprio_percentage=100` `cmdprio_class=1`
//!   `cmdprio=0`, the io_uring engine's per-request priority); the bulk
//!   job is best effort, `prioclass=2` `prio=4`. fio logs each request's
//!   priority (`log_prio=1`) and the bench checks that every real-time
//!   request carried class 1.
//! - Every request's latency comes from fio's per-request latency log
//!   (`write_lat_log`, no averaging), so percentiles and deadline misses
//!   are exact, as in the simulation.
//!
//! Each scheduler gets the configuration its documentation gives for
//! latency (see [`KernelSched::tunables`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::workload::{
    measure_class, stall_note, Arrival, Device, Measured, RealPath, RealStream, RealWorkload,
    Workload,
};

/// Depth of an open-loop fio job: how many of its requests may be in the
/// kernel at once before fio falls behind its schedule.
pub const OPEN_LOOP_DEPTH: u32 = 256;

/// A fio run is given this long beyond its own runtime before it is
/// killed.
const GRACE: Duration = Duration::from_secs(60);

/// One of Linux's block schedulers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelSched {
    /// `mq-deadline`.
    MqDeadline,
    /// `bfq`.
    Bfq,
    /// `kyber`.
    Kyber,
    /// `none`: no kernel scheduler. Not one of the peers the targets
    /// compare with: the device's own latency at the same depth, the floor
    /// under every scheduler (`linux-none`).
    None,
}

impl KernelSched {
    /// All three, in the order the bench runs them.
    pub const ALL: [KernelSched; 3] = [
        KernelSched::MqDeadline,
        KernelSched::Bfq,
        KernelSched::Kyber,
    ];

    /// The name in `/sys/block/*/queue/scheduler`.
    pub fn sysfs_name(self) -> &'static str {
        match self {
            KernelSched::MqDeadline => "mq-deadline",
            KernelSched::Bfq => "bfq",
            KernelSched::Kyber => "kyber",
            KernelSched::None => "none",
        }
    }

    /// The policy part of the entries' names: `linux-mq-deadline`, ...
    pub fn entry_name(self) -> String {
        format!("linux-{}", self.sysfs_name())
    }

    /// The tunables set for `w` (files under `queue/iosched/`):
    ///
    /// - mq-deadline: `fifo_batch=1` (the kernel's documentation: smaller
    ///   is better when low latency is the primary concern, 1 is first come
    ///   first served), `read_expire` = the workload's deadline in ms,
    ///   `write_expire=5000`, `writes_starved=2` and `prio_aging_expire=10000`
    ///   (the defaults: real-time-class requests go first, and best-effort
    ///   ones jump ahead only after waiting 10 s).
    /// - bfq: `low_latency=1`, `slice_idle_us=8000` (idling kept: its
    ///   documentation says idling is needed for service guarantees) and
    ///   `strict_guarantees=1` (its documentation's advice when short-term
    ///   guarantees matter more than throughput, as for streaming: idle
    ///   whenever the queue in service empties and keep one request in the
    ///   device at a time, so the device cannot reorder what bfq decided).
    /// - kyber: `read_lat_nsec` = half the workload's deadline (kyber
    ///   throttles writes when reads miss this target), `write_lat_nsec` =
    ///   10 ms (its default). Kyber has no priority classes.
    pub fn tunables(self, w: Workload) -> Vec<(&'static str, String)> {
        self.tunables_at(w.deadline_ns())
    }

    /// [`KernelSched::tunables`] for a run whose real-time deadline is `d`
    /// ns (the real path scales the workloads' deadlines to the device's
    /// floor, see [`super::workload::RealWorkload::with_deadline_scale`]).
    pub fn tunables_at(self, d: u64) -> Vec<(&'static str, String)> {
        match self {
            KernelSched::MqDeadline => vec![
                ("fifo_batch", "1".into()),
                ("read_expire", (d / 1_000_000).max(1).to_string()),
                ("write_expire", "5000".into()),
                ("writes_starved", "2".into()),
                ("prio_aging_expire", "10000".into()),
            ],
            KernelSched::Bfq => vec![
                ("low_latency", "1".into()),
                ("slice_idle_us", "8000".into()),
                ("strict_guarantees", "1".into()),
            ],
            KernelSched::Kyber => vec![
                ("read_lat_nsec", (d / 2).to_string()),
                ("write_lat_nsec", "10000000".into()),
            ],
            KernelSched::None => Vec::new(),
        }
    }
}

/// fio under one kernel scheduler: a [`RealPath`].
pub struct FioPeer {
    sched: KernelSched,
    name: String,
}

impl FioPeer {
    /// The peer for `sched`.
    pub fn new(sched: KernelSched) -> Self {
        FioPeer {
            sched,
            name: sched.entry_name(),
        }
    }
}

fn tunables_text(t: &[(&str, String)]) -> String {
    t.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl RealPath for FioPeer {
    fn name(&self) -> &str {
        &self.name
    }

    fn setup(&self, w: Workload) -> String {
        format!(
            "fio io_uring on the loop device, {} {}; real-time job prioclass=1",
            self.sched.sysfs_name(),
            tunables_text(&self.sched.tunables(w))
        )
    }

    fn run(
        &mut self,
        dev: &dyn Device,
        w: &RealWorkload,
        scratch: &Path,
    ) -> Result<Measured, String> {
        let d = w
            .streams
            .iter()
            .find_map(|s| s.deadline_ns)
            .unwrap_or_else(|| w.workload.deadline_ns());
        let adjusted = dev.set_scheduler(self.sched.sysfs_name(), &self.sched.tunables_at(d))?;
        let job = job_file(dev.path(), w, scratch);
        run_job(&job, scratch, w.warmup_ms + w.measure_ms)?;
        let mut m = Measured {
            window_ns: w.measure_ms * 1_000_000,
            notes: adjusted,
            ..Measured::default()
        };
        let window = (
            w.warmup_ms * 1_000_000,
            (w.warmup_ms + w.measure_ms) * 1_000_000,
        );
        // Every request of the run, and the deadline stream's, for the
        // stalls note.
        let mut all = Vec::new();
        let mut rt = None;
        for s in &w.streams {
            let log = find_lat_log(scratch, s.label)?;
            let text = std::fs::read_to_string(&log)
                .map_err(|e| format!("cannot read {}: {e}", log.display()))?;
            let lines = parse_lat_log(&text).map_err(|e| format!("{}: {e}", log.display()))?;
            if s.real_time {
                if let Some(bad) = lines.iter().find(|l| l.prio >> 13 != 1) {
                    return Err(format!(
                        "a request of the real-time job `{}` carried priority {:#06x}, not the real-time class: fio or the kernel dropped prioclass=1",
                        s.label, bad.prio
                    ));
                }
            }
            let recs: Vec<(u64, u64, u64)> = lines
                .iter()
                .map(|l| {
                    let done = l.time_ms.saturating_mul(1_000_000);
                    (done.saturating_sub(l.lat_ns), done, l.bytes)
                })
                .collect();
            let c = measure_class(s.label, &recs, s.deadline_ns, window, s.arrival.per_sec());
            if let (Some(d), true) = (s.deadline_ns, rt.is_none()) {
                rt = Some((s.label, recs.clone(), d));
            }
            all.extend_from_slice(&recs);
            if let Some(exp) = c.expected {
                let got = c.latencies_ns.len() as f64;
                if got < 0.9 * exp {
                    m.notes.push(format!(
                        "{} {}: fio issued {got:.0} of the {exp:.0} requests due in the window: it fell behind its schedule, so these latencies leave out the wait before issue",
                        w.workload.prefix(),
                        s.label
                    ));
                }
            }
            m.classes.push(c);
        }
        if let Some((label, recs, d)) = rt {
            m.notes.extend(stall_note(
                &w.workload.prefix(),
                label,
                &all,
                &recs,
                d,
                window,
            ));
        }
        Ok(m)
    }
}

/// The fio job file for `w` on `dev`, its logs in `dir`.
pub fn job_file(dev: &Path, w: &RealWorkload, dir: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[global]\nioengine=io_uring\ndirect=1\nfilename={}\ntime_based=1\nruntime={}ms\n\
         norandommap=1\nrandrepeat=0\nlog_prio=1\nthread=1\n",
        dev.display(),
        w.warmup_ms + w.measure_ms
    );
    for st in &w.streams {
        stream_section(&mut s, st, dir);
    }
    s
}

fn stream_section(s: &mut String, st: &RealStream, dir: &Path) {
    let rw = match (st.write, st.sequential) {
        (true, true) => "write",
        (true, false) => "randwrite",
        (false, true) => "read",
        (false, false) => "randread",
    };
    let _ = writeln!(s, "[{}]\nrw={rw}\nbs={}", st.label, st.bytes);
    match st.arrival {
        Arrival::Fixed { per_sec } | Arrival::Poisson { per_sec } => {
            let process = if matches!(st.arrival, Arrival::Poisson { .. }) {
                "poisson"
            } else {
                "linear"
            };
            let _ = writeln!(
                s,
                "iodepth={OPEN_LOOP_DEPTH}\nrate_iops={}\nrate_process={process}",
                per_sec.round().max(1.0) as u64
            );
        }
        Arrival::ClosedLoop { depth } => {
            let _ = writeln!(s, "iodepth={depth}");
        }
    }
    if st.real_time {
        s.push_str("prioclass=1\nprio=0\ncmdprio_percentage=100\ncmdprio_class=1\ncmdprio=0\n");
    } else {
        s.push_str("prioclass=2\nprio=4\n");
    }
    let _ = writeln!(s, "write_lat_log={}\n", dir.join(st.label).display());
}

/// The per-request latency log fio wrote for the job labelled `label`.
fn find_lat_log(dir: &Path, label: &str) -> Result<PathBuf, String> {
    let prefix = format!("{label}_lat.");
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".log") {
            return Ok(e.path());
        }
    }
    Err(format!(
        "fio wrote no latency log for `{label}` in {}",
        dir.display()
    ))
}

/// One line of a fio latency log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatLine {
    /// When it completed, ms since the job started.
    pub time_ms: u64,
    /// Its latency (issue to completion), ns.
    pub lat_ns: u64,
    /// Its size, bytes.
    pub bytes: u64,
    /// Its I/O priority (class in bits 13..16).
    pub prio: u32,
}

/// Parses a fio latency log written with `log_prio=1`:
/// `time_ms, lat_ns, direction, bytes, [offset,] 0xPRIO` per line (the
/// offset only with `log_offset=1`).
pub fn parse_lat_log(text: &str) -> Result<Vec<LatLine>, String> {
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |what: &str| format!("line {}: {what}: `{line}`", i + 1);
        let (Some(last), true) = (f.last(), f.len() >= 5) else {
            return Err(bad("expected 5 or 6 fields"));
        };
        let Some(hex) = last.strip_prefix("0x") else {
            return Err(bad(
                "no priority field (was the log written with log_prio=1?)",
            ));
        };
        let num = |k: usize| f[k].parse::<u64>().map_err(|_| bad("not a number"));
        let prio = u32::from_str_radix(hex, 16).map_err(|_| bad("priority not hexadecimal"))?;
        v.push(LatLine {
            time_ms: num(0)?,
            lat_ns: num(1)?,
            bytes: num(3)?,
            prio,
        });
    }
    Ok(v)
}

/// fio's version line, or why fio cannot run.
pub fn version() -> Result<String, String> {
    super::loopdev::output(Command::new("fio").arg("--version"))
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("fio is needed for the Linux peers (`cargo xtask apexbench` installs it; else `apt-get install fio`): {e}"))
}

/// Runs fio on `job` (written to `dir/job.fio`), JSON output in
/// `dir/fio.json`; kills it after its runtime plus a grace period, or at
/// once when the bench is interrupted.
fn run_job(job: &str, dir: &Path, runtime_ms: u64) -> Result<(), String> {
    let job_path = dir.join("job.fio");
    std::fs::write(&job_path, job)
        .map_err(|e| format!("cannot write {}: {e}", job_path.display()))?;
    let err_path = dir.join("fio.stderr");
    let err_file = std::fs::File::create(&err_path)
        .map_err(|e| format!("cannot create {}: {e}", err_path.display()))?;
    let mut child = Command::new("fio")
        .arg("--output-format=json")
        .arg(format!("--output={}", dir.join("fio.json").display()))
        .arg(&job_path)
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .map_err(|e| format!("cannot start fio: {e}"))?;
    let limit = Duration::from_millis(runtime_ms) + GRACE;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for fio: {e}")),
        }
        if super::interrupted() || start.elapsed() > limit {
            stop(&mut child);
            return Err(if super::interrupted() {
                "interrupted".into()
            } else {
                format!(
                    "fio ran past {} s and was killed (job: {})",
                    limit.as_secs(),
                    job_path.display()
                )
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if super::interrupted() {
        return Err("interrupted".into());
    }
    if !status.success() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(format!(
            "fio failed ({status}) on {}: {}",
            job_path.display(),
            err.trim()
        ));
    }
    Ok(())
}

/// Stops fio: SIGINT first (fio then ends its jobs and exits), SIGKILL
/// if it has not gone within two seconds. Its jobs are threads
/// (`thread=1`), so they go with it.
fn stop(child: &mut std::process::Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; `pid` is our own
        // child, not yet reaped (so the id cannot have been reused).
        unsafe { libc::kill(pid, libc::SIGINT) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Random reads of `bytes` at depth 32 for `ms` on `dev` (whatever
/// scheduler it has): reads per second.
pub fn calibrate(dev: &Path, bytes: u64, ms: u64, dir: &Path) -> Result<f64, String> {
    let job = format!(
        "[global]\nioengine=io_uring\ndirect=1\nfilename={}\ntime_based=1\nruntime={ms}ms\n\
         norandommap=1\nrandrepeat=0\nthread=1\n\n[calibrate]\nrw=randread\nbs={bytes}\niodepth=32\n",
        dev.display()
    );
    run_job(&job, dir, ms)?;
    let path = dir.join("fio.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // fio may print notes before the JSON object.
    let start = text.find('{').unwrap_or(0);
    let v: serde_json::Value = serde_json::from_str(&text[start..])
        .map_err(|e| format!("{}: not fio's JSON: {e}", path.display()))?;
    let iops = v["jobs"][0]["read"]["iops"]
        .as_f64()
        .ok_or_else(|| format!("{}: no jobs[0].read.iops", path.display()))?;
    if iops <= 0.0 {
        return Err(format!(
            "the loop device did no {bytes}-byte reads in {ms} ms"
        ));
    }
    Ok(iops)
}

#[cfg(test)]
mod tests {
    use super::super::workload::Capacity;
    use super::*;

    #[test]
    fn job_files_carry_rates_depths_and_priorities() {
        let cap = Capacity {
            reads_256k: 1000.0,
            reads_64k: 3000.0,
            w1_deadline_reads: 0.0,
        };
        let w = RealWorkload::new(Workload::W1 { load_pct: 50 }, &cap, 200, 1800);
        let j = job_file(Path::new("/dev/loop7"), &w, Path::new("/tmp/x"));
        assert!(
            j.contains("filename=/dev/loop7\n") && j.contains("runtime=2000ms\n"),
            "{j}"
        );
        let rt = &j[j.find("[rt]").unwrap()..j.find("[bulk]").unwrap()];
        for l in [
            "rw=randread",
            "bs=262144",
            "iodepth=256",
            "rate_iops=500",
            "rate_process=linear",
            "prioclass=1",
            "cmdprio_percentage=100",
            "cmdprio_class=1",
            "write_lat_log=/tmp/x/rt",
        ] {
            assert!(rt.lines().any(|x| x == l), "{l} missing in\n{rt}");
        }
        let bulk = &j[j.find("[bulk]").unwrap()..];
        for l in ["rw=write", "bs=1048576", "iodepth=32", "prioclass=2"] {
            assert!(bulk.lines().any(|x| x == l), "{l} missing in\n{bulk}");
        }
        assert!(!bulk.contains("rate_iops"));
        let w = RealWorkload::new(Workload::W2 { bulk: true }, &cap, 200, 1800);
        let j = job_file(Path::new("/dev/loop7"), &w, Path::new("/tmp/x"));
        assert!(j.contains("rate_iops=2000\nrate_process=poisson\n"), "{j}");
    }

    #[test]
    fn tunables_follow_the_workload_deadline() {
        let t = KernelSched::MqDeadline.tunables(Workload::W2 { bulk: true });
        assert!(t.contains(&("read_expire", "2".to_string())), "{t:?}");
        assert!(t.contains(&("fifo_batch", "1".to_string())));
        let t = KernelSched::Kyber.tunables(Workload::W1 { load_pct: 10 });
        assert!(
            t.contains(&("read_lat_nsec", "10000000".to_string())),
            "{t:?}"
        );
        let t = KernelSched::Bfq.tunables(Workload::W3);
        assert!(t.contains(&("low_latency", "1".to_string())));
        assert_eq!(KernelSched::Bfq.entry_name(), "linux-bfq");
    }

    #[test]
    fn latency_logs_parse_and_bad_lines_are_errors() {
        let log = "3, 2917491, 0, 262144, 3932160, 0x2000\n19, 8007145, 0, 262144, 0x0000\n\n";
        let v = parse_lat_log(log).unwrap();
        assert_eq!(
            v[0],
            LatLine {
                time_ms: 3,
                lat_ns: 2_917_491,
                bytes: 262_144,
                prio: 0x2000
            }
        );
        assert_eq!(v[1].prio >> 13, 0);
        assert!(parse_lat_log("3, 29, 0, 4096, 0\n").is_err());
        assert!(parse_lat_log("3, 29, 0, 0x2000\n").is_err());
        assert!(parse_lat_log("3, x, 0, 4096, 0, 0x2000\n").is_err());
        assert!(parse_lat_log("3, 1, 0, 4096, 0, zz\n").is_err());
    }
}
