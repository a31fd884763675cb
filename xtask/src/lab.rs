//! `cargo xtask lab`: the Xen lab (not implemented yet).

pub fn run(_args: &[String]) -> Result<(), String> {
    Err("the Xen lab is not implemented yet".into())
}
