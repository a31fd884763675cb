//! The Xen lab's dom0 side.
//!
//! **Not implemented yet.** Programs that run in the lab's dom0 against
//! `/dev/xen/gntdev` and `/dev/xen/evtchn` to check the lightweight domain
//! on real Xen, and report verdicts to `cargo xtask lab`.
