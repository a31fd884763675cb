use iosched::sim::{simulate, simulate_with, w1, w2, DeviceModel, DeviceOrder, Outcome, SimOptions};
use iosched::{Apex, ApexParams, ApexPolicy, PolicyKind, SchedConfig};
#[test]
fn explore() {
    let total = |o: &Outcome| { let all: Vec<_> = o.classes.iter().collect(); o.mb_s(&all) };
    for (conc, order) in [(4, DeviceOrder::Ring), (4, DeviceOrder::WritesFirst), (1, DeviceOrder::WritesFirst), (2, DeviceOrder::WritesFirst)] {
        let o = SimOptions { duration_ns: 2_000_000_000, device: DeviceModel { concurrency: conc, order, ..DeviceModel::default() }, ..SimOptions::full() };
        for mode in 0..3 {
            let p = ApexParams { isolation: mode == 2, adaptive_isolation: mode == 1, ..ApexParams::default() };
            let run = |sc: &iosched::sim::Scenario| { let mut s = Apex::new(SchedConfig { cost: sc.device.prior(), ..SchedConfig::default() }, ApexPolicy::new(p)); simulate_with(&mut s, sc) };
            let a = run(&w2(&o, true)); let al = run(&w2(&o, false));
            let f1 = simulate(PolicyKind::Fifo, &w1(&o, 90));
            let mut line = format!("conc {conc} {order:?} mode {mode}: w2 p99 {} alone {} bulk {:.0} MB/s |", a.class("lc").unwrap().quantile(99,100), al.class("lc").unwrap().quantile(99,100), a.mb_s(&[a.class("bulk").unwrap()]));
            for load in [10, 50, 90] { let x = run(&w1(&o, load)); line += &format!(" w1-{load} miss {} tot {:.0}", x.class("rt").unwrap().misses, total(&x)); }
            line += &format!(" fifo90 {:.0}", total(&f1));
            println!("{line}");
        }
    }
}
