//! The CPU time slice the real paths' threads may ask the kernel for
//! (`APEXBENCH_SLICE_US`; off by default).
//!
//! On a host whose cores are busy with other work (this project's
//! development VM: two cores shared by several builds), a thread that
//! wakes up for an I/O event waits for a core behind the tasks running
//! there. A read on our real path wakes three threads in turn (blkback for
//! the request, blkback for the completion, the frontend for the response)
//! where fio wakes one (for the completion), so it meets that wait more
//! often.
//!
//! Since Linux 6.12 a `SCHED_OTHER` thread may ask for a shorter slice
//! (`sched_attr::sched_runtime`, 0.1 to 100 ms): its virtual deadline
//! comes sooner, so on waking it may preempt a task with a longer slice
//! instead of queuing behind it; it does not get more of the CPU. A
//! thread's slice is inherited by the threads and processes it starts, so
//! the bench asks for it once, on its main thread, before anything else
//! runs: fio and its job threads (the Linux peers), the hosted blkback's
//! workers and the frontend (our path) then all run with it alike.
//! `APEXBENCH_SLICE_US=N` asks for N µs (`100` is the shortest the kernel
//! takes); unset, `0` or `off`: the kernel's default for every thread. It
//! stays off by default: on the busy machine a sleeper's oversleep with
//! and without it (0.5 ms sleeps, 4000 each, alternated) was p99 0.73 and
//! 1.2 ms against 0.39 and 1.7 ms, and `SCHED_FIFO` itself p99 0.54 to
//! 0.59 ms (the VM's cores are themselves shared), and the bench's runs
//! did not tell the two apart through the disk's noise.

/// The slice asked for when `APEXBENCH_SLICE_US` names none (`on`, or a
/// value that is not a number), µs: the shortest the kernel takes, a
/// little above what one wake-up of our path or of fio runs for.
pub const DEFAULT_SLICE_US: u64 = 100;

/// `struct sched_attr` of `sched_setattr(2)` (its first version, 48
/// bytes; the kernel takes an older version than its own).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
}

/// The slice `APEXBENCH_SLICE_US` asks for, µs (`None`: the kernel's
/// default, also when unset). Values that are not numbers ask for
/// [`DEFAULT_SLICE_US`].
pub fn requested_us() -> Option<u64> {
    parse(std::env::var("APEXBENCH_SLICE_US").ok().as_deref())
}

fn parse(v: Option<&str>) -> Option<u64> {
    match v.map(str::trim) {
        None | Some("" | "0" | "off" | "no") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_SLICE_US),
        ),
    }
}

/// The calling thread's scheduling attributes (`sched_getattr`).
fn get_attr() -> Result<SchedAttr, String> {
    let mut attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        ..SchedAttr::default()
    };
    // SAFETY: sched_getattr writes at most `size` bytes into `attr`, a
    // live SchedAttr of that size; pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as libc::c_uint,
            0,
        )
    };
    if rc != 0 {
        return Err(format!("sched_getattr: {}", std::io::Error::last_os_error()));
    }
    Ok(attr)
}

/// Asks the kernel for a slice of `us` µs for the calling thread (and
/// everything it starts from now on), keeping its policy `SCHED_OTHER`
/// and its nice value. Returns the slice the kernel reports back, ns, or
/// why it does not give one (an older kernel takes the call but keeps no
/// slice: 0 comes back).
pub fn request(us: u64) -> Result<u64, String> {
    let attr = get_attr()?;
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        return Err(format!(
            "the bench runs under scheduling policy {}, not SCHED_OTHER: left alone",
            attr.sched_policy
        ));
    }
    let want = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_nice: attr.sched_nice,
        sched_runtime: us.saturating_mul(1000),
        ..SchedAttr::default()
    };
    // SAFETY: sched_setattr reads `size` bytes from `want`, a live
    // SchedAttr of that size; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &want as *const SchedAttr, 0) };
    if rc != 0 {
        return Err(format!(
            "sched_setattr: {}",
            std::io::Error::last_os_error()
        ));
    }
    let got = get_attr()?;
    if got.sched_runtime == 0 {
        return Err(
            "the kernel keeps no slice for SCHED_OTHER threads (Linux 6.12 or later does)".into(),
        );
    }
    Ok(got.sched_runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_picks_the_slice_or_none() {
        assert_eq!(parse(None), None);
        assert_eq!(parse(Some("")), None);
        assert_eq!(parse(Some("on")), Some(DEFAULT_SLICE_US));
        assert_eq!(parse(Some("off")), None);
        assert_eq!(parse(Some("0")), None);
        assert_eq!(parse(Some(" 250 ")), Some(250));
        assert_eq!(parse(Some("fast")), Some(DEFAULT_SLICE_US));
    }

    #[test]
    fn the_attribute_is_the_kernels_first_version() {
        assert_eq!(std::mem::size_of::<SchedAttr>(), 48);
    }
}
