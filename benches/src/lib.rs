//! Benchmarks of the suite.
//!
//! **Not implemented yet.** The ping-pong latency bench (`cargo xtask
//! pingpong`) will live here, with its peers measured in the same run.
