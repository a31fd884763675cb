//! Pinning threads and processes to cores.

/// Pins the calling thread to `cpu`. Returns whether it worked (a
/// restricted cpuset can refuse).
pub fn pin_to(cpu: usize) -> bool {
    // SAFETY: `cpu_set_t` is plain data for which all-zero is the empty
    // set; CPU_SET writes inside it for cpu < CPU_SETSIZE, checked below.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Cores online on the machine. Not `available_parallelism`, which
/// follows this thread's affinity: a process started from a pinned thread
/// inherits that pin and would otherwise see one core.
pub fn cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

/// The two cores the two ends run on: 0 and 1 when there are two or more.
pub fn pair() -> (usize, usize) {
    if cpus() >= 2 {
        (0, 1)
    } else {
        (0, 0)
    }
}
