//! Prints the simulated APEX bench: `cargo run -p iosched --example simbench --release [-- --quick]`.
use iosched::sim::{run_all, table, SimOptions};
use iosched::PolicyKind;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let opts = if quick {
        SimOptions::quick()
    } else {
        SimOptions::full()
    };
    let t = std::time::Instant::now();
    let entries = run_all(&opts, &PolicyKind::ALL);
    print!("{}", table(&entries));
    eprintln!("simulated in {:.1} s", t.elapsed().as_secs_f64());
}
