//! The Xen lab's dom0 side: programs that run in the lab's dom0 against
//! Linux's `/dev/xen/evtchn` and `/dev/xen/gntdev` to check the lightweight
//! domain on real Xen. `cargo xtask lab` builds them for the host (Debian
//! bookworm, like the lab's dom0) and copies them into dom0's initramfs;
//! the scenario scripts (`scenarios/*.sh`) run them and turn their exit
//! status into verdicts.

pub mod xendev;
pub mod udp;
