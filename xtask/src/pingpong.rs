//! `cargo xtask pingpong`: the ping-pong latency bench (not implemented yet).

pub fn run(_args: &[String]) -> Result<(), String> {
    Err("the ping-pong bench is not implemented yet".into())
}
