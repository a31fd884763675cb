//! A bench run's results: the JSON form (serde) and the printed table.
//!
//! The JSON is one line:
//! `{"results":[{"name":..,"p50_ns":..,"p99_ns":..,"iters":..}, ...],"meta":{..},"targets":[..]}`
//! with more fields per entry; the optional ones are written only when an
//! entry set them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One entry's results over every round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryResult {
    /// The entry's name (`cacheline`, `ring-poll`, ...).
    pub name: String,
    /// Median latency, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile latency, nanoseconds.
    pub p99_ns: u64,
    /// 99.9th percentile latency, nanoseconds.
    pub p999_ns: u64,
    /// Largest latency seen, nanoseconds.
    pub max_ns: u64,
    /// Smallest latency seen, nanoseconds.
    pub min_ns: u64,
    /// Measured samples (warm-up excluded), over every round.
    pub iters: u64,
    /// Message size in bytes, for entries that move messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_bytes: Option<u64>,
    /// How the entry ran (threads or processes, pinned cores, ...).
    pub setup: String,
    /// The median of each round, in round order.
    pub round_p50_ns: Vec<u64>,
    /// Operations per second (median over rounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<f64>,
    /// Megabytes (10^6 bytes) per second (median over rounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mb_s: Option<f64>,
    /// Gigabits per second (median over rounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbit_s: Option<f64>,
    /// Deadline misses, summed over rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misses: Option<u64>,
    /// Misses over the operations that had a deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miss_ratio: Option<f64>,
    /// `p50_ns` in microseconds, for benches that report microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    /// `p99_ns` in microseconds, for benches that report microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
}

/// What a ratio compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Median latency.
    P50,
    /// 99th percentile latency.
    P99,
    /// 99.9th percentile latency.
    P999,
    /// Operations per second.
    Iops,
    /// Megabytes per second.
    MbS,
    /// Gigabits per second.
    GbitS,
}

impl Metric {
    /// The metric's short name, as in the JSON field names.
    pub fn name(self) -> &'static str {
        match self {
            Metric::P50 => "p50",
            Metric::P99 => "p99",
            Metric::P999 => "p99.9",
            Metric::Iops => "iops",
            Metric::MbS => "MB/s",
            Metric::GbitS => "Gbit/s",
        }
    }

    /// The entry's value of this metric, when it has one.
    pub fn of(self, r: &EntryResult) -> Option<f64> {
        let lat = |v: u64| (r.iters > 0).then_some(v as f64);
        match self {
            Metric::P50 => lat(r.p50_ns),
            Metric::P99 => lat(r.p99_ns),
            Metric::P999 => lat(r.p999_ns),
            Metric::Iops => r.iops,
            Metric::MbS => r.mb_s,
            Metric::GbitS => r.gbit_s,
        }
    }
}

/// Which way a target's ratio must go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    /// `a / b <= limit`.
    #[serde(rename = "<=")]
    AtMost,
    /// `a / b >= limit`.
    #[serde(rename = ">=")]
    AtLeast,
}

impl Cmp {
    /// `<=` or `>=`.
    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::AtMost => "<=",
            Cmp::AtLeast => ">=",
        }
    }
}

/// A target: the ratio of two entries' metric, measured in the same run,
/// against a limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The entry on top of the ratio.
    pub a: String,
    /// The entry below.
    pub b: String,
    /// Which way the ratio must go.
    pub cmp: Cmp,
    /// The limit.
    pub limit: f64,
    /// The metric compared; `None` is the bench's main metric.
    pub metric: Option<Metric>,
}

impl Target {
    /// `a / b <= limit` on the bench's main metric.
    pub fn at_most(a: &str, b: &str, limit: f64) -> Self {
        Target {
            a: a.into(),
            b: b.into(),
            cmp: Cmp::AtMost,
            limit,
            metric: None,
        }
    }

    /// `a / b >= limit` on the bench's main metric.
    pub fn at_least(a: &str, b: &str, limit: f64) -> Self {
        Target {
            cmp: Cmp::AtLeast,
            ..Target::at_most(a, b, limit)
        }
    }

    /// The same target on another metric.
    pub fn on(mut self, metric: Metric) -> Self {
        self.metric = Some(metric);
        self
    }

    /// `a / b (metric) <= limit`, for help texts.
    pub fn describe(&self, main: Metric) -> String {
        format!(
            "{} / {} ({}) {} {}",
            self.a,
            self.b,
            self.metric.unwrap_or(main).name(),
            self.cmp.symbol(),
            self.limit
        )
    }
}

/// A target's outcome in one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetResult {
    /// The entry on top of the ratio.
    pub a: String,
    /// The entry below.
    pub b: String,
    /// The metric compared.
    pub metric: Metric,
    /// Which way the ratio must go.
    pub cmp: Cmp,
    /// The limit.
    pub limit: f64,
    /// The measured ratio; absent when either entry was not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Whether the target is met; absent when not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

/// A whole run, as written to the JSON file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// One result per entry, in the bench's order.
    pub results: Vec<EntryResult>,
    /// How the run was made (cores, rounds, sizes), as strings.
    pub meta: BTreeMap<String, String>,
    /// The bench's targets and whether this run met them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetResult>,
}

impl Report {
    /// The named entry's result.
    pub fn get(&self, name: &str) -> Option<&EntryResult> {
        self.results.iter().find(|r| r.name == name)
    }

    /// `a / b` on `metric`, when both were measured and `b` is not zero.
    pub fn ratio(&self, a: &str, b: &str, metric: Metric) -> Option<f64> {
        let x = metric.of(self.get(a)?)?;
        let y = metric.of(self.get(b)?)?;
        (y > 0.0).then(|| x / y)
    }

    /// The JSON text: one line and a newline.
    pub fn to_json(&self) -> Result<String, String> {
        serde_json::to_string(self)
            .map(|s| s + "\n")
            .map_err(|e| format!("cannot encode the results as JSON: {e}"))
    }

    /// Evaluates `targets` against this run's results.
    pub(crate) fn evaluate(&self, targets: &[Target], main: Metric) -> Vec<TargetResult> {
        targets
            .iter()
            .map(|t| {
                let metric = t.metric.unwrap_or(main);
                let ratio = self.ratio(&t.a, &t.b, metric);
                TargetResult {
                    a: t.a.clone(),
                    b: t.b.clone(),
                    metric,
                    cmp: t.cmp,
                    limit: t.limit,
                    ratio,
                    met: ratio.map(|x| match t.cmp {
                        Cmp::AtMost => x <= t.limit,
                        Cmp::AtLeast => x >= t.limit,
                    }),
                }
            })
            .collect()
    }

    /// The table: one row per entry, the ratios against `peers` on
    /// `main`, the spread of the per-round medians (or per-round rates
    /// for throughput benches), then the targets.
    pub fn table(&self, peers: &[String], main: Metric, round_rates: &[Vec<f64>]) -> String {
        let has = |f: &dyn Fn(&EntryResult) -> bool| self.results.iter().any(f);
        let latency = has(&|r| r.iters > 0);
        let mut head: Vec<String> = vec!["entry".into()];
        if latency {
            for h in ["p50 ns", "p99 ns", "p99.9 ns", "max ns", "min ns"] {
                head.push(h.into());
            }
        }
        let bytes = has(&|r| r.msg_bytes.is_some());
        if bytes {
            head.push("bytes".into());
        }
        let (iops, mb, gbit, miss) = (
            has(&|r| r.iops.is_some()),
            has(&|r| r.mb_s.is_some()),
            has(&|r| r.gbit_s.is_some()),
            has(&|r| r.misses.is_some()),
        );
        for (on, h) in [
            (iops, "iops"),
            (mb, "MB/s"),
            (gbit, "Gbit/s"),
            (miss, "misses"),
            (miss, "miss %"),
        ] {
            if on {
                head.push(h.into());
            }
        }
        let peers: Vec<&String> = peers.iter().filter(|p| self.get(p).is_some()).collect();
        for p in &peers {
            head.push(format!("{}/{p}", main.name()));
        }
        let rate_bench = !matches!(main, Metric::P50 | Metric::P99 | Metric::P999);
        head.push(if rate_bench {
            format!("round {}", main.name())
        } else {
            "round p50s".into()
        });
        head.push("setup".into());

        let mut rows = vec![head];
        for (k, r) in self.results.iter().enumerate() {
            let mut row = vec![r.name.clone()];
            if latency {
                for v in [r.p50_ns, r.p99_ns, r.p999_ns, r.max_ns, r.min_ns] {
                    row.push(v.to_string());
                }
            }
            let opt = |v: Option<f64>, digits: usize| match v {
                Some(x) => format!("{x:.digits$}"),
                None => "-".into(),
            };
            if bytes {
                row.push(r.msg_bytes.map_or("-".into(), |b| b.to_string()));
            }
            if iops {
                row.push(opt(r.iops, 0));
            }
            if mb {
                row.push(opt(r.mb_s, 1));
            }
            if gbit {
                row.push(opt(r.gbit_s, 2));
            }
            if miss {
                row.push(r.misses.map_or("-".into(), |m| m.to_string()));
                row.push(opt(r.miss_ratio.map(|x| x * 100.0), 2));
            }
            for p in &peers {
                row.push(match self.ratio(&r.name, p, main) {
                    Some(x) => format!("{x:.2}x"),
                    None => "-".into(),
                });
            }
            row.push(if rate_bench {
                spread_f(round_rates.get(k).map(Vec::as_slice).unwrap_or(&[]))
            } else {
                spread_u(&r.round_p50_ns)
            });
            row.push(r.setup.clone());
            rows.push(row);
        }
        let mut out = layout(&rows);
        if !self.targets.is_empty() {
            out.push_str(&format!("\ntargets ({} ratios, this run):\n", main.name()));
            for t in &self.targets {
                let what = format!("{} / {}", t.a, t.b);
                let on = if t.metric == main {
                    String::new()
                } else {
                    format!(" ({})", t.metric.name())
                };
                match (t.ratio, t.met) {
                    (Some(x), Some(met)) => out.push_str(&format!(
                        "  {what}{on} = {x:.2} (target {} {}): {}\n",
                        t.cmp.symbol(),
                        t.limit,
                        if met { "met" } else { "NOT met" }
                    )),
                    _ => out.push_str(&format!("  {what}{on}: not measured in this run\n")),
                }
            }
        }
        out
    }
}

fn spread_u(v: &[u64]) -> String {
    match (v.iter().min(), v.iter().max()) {
        (Some(a), Some(b)) => format!("{a}..{b}"),
        _ => "-".into(),
    }
}

fn spread_f(v: &[f64]) -> String {
    let a = v.iter().copied().fold(f64::INFINITY, f64::min);
    let b = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        "-".into()
    } else {
        format!("{a:.0}..{b:.0}")
    }
}

/// Columns padded to their widest cell: the first left-aligned, the last
/// (free text) unpadded, the others right-aligned.
fn layout(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0usize; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == 0 {
                line.push_str(&format!("{cell:<w$}", w = width[i]));
            } else if i + 1 == row.len() {
                line.push_str("  ");
                line.push_str(cell);
            } else {
                line.push_str(&format!(" {cell:>w$}", w = width[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The median of `v` (the lower middle for an even count); `None` when
/// empty.
pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| v[(n - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, p50: u64) -> EntryResult {
        EntryResult {
            name: name.into(),
            p50_ns: p50,
            p99_ns: p50 * 2,
            p999_ns: p50 * 3,
            max_ns: p50 * 4,
            min_ns: p50 / 2,
            iters: 10,
            msg_bytes: Some(16),
            setup: "threads".into(),
            round_p50_ns: vec![p50],
            iops: None,
            mb_s: None,
            gbit_s: None,
            misses: None,
            miss_ratio: None,
            p50_us: None,
            p99_us: None,
        }
    }

    #[test]
    fn json_keeps_the_existing_fields_and_omits_unset_ones() {
        let r = Report {
            results: vec![entry("ring-poll", 200)],
            meta: BTreeMap::from([("cpus".to_string(), "2".to_string())]),
            targets: Vec::new(),
        };
        let j = r.to_json().unwrap();
        assert!(
            j.starts_with("{\"results\":[{\"name\":\"ring-poll\",\"p50_ns\":200,\"p99_ns\":400,"),
            "{j}"
        );
        assert!(j.contains("\"iters\":10,\"msg_bytes\":16,\"setup\":\"threads\""));
        assert!(!j.contains("iops") && !j.contains("targets") && !j.contains("_us"));
        assert!(j.ends_with("}\n") && j.lines().count() == 1);
        let back: Report = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn targets_are_met_or_not_and_missing_entries_are_reported() {
        let mut r = Report {
            results: vec![entry("a", 300), entry("b", 200)],
            meta: BTreeMap::new(),
            targets: Vec::new(),
        };
        let t = [
            Target::at_most("a", "b", 1.2),
            Target::at_least("a", "b", 1.2),
            Target::at_most("a", "zzz", 1.0),
        ];
        r.targets = r.evaluate(&t, Metric::P50);
        assert_eq!(r.targets[0].ratio, Some(1.5));
        assert_eq!(r.targets[0].met, Some(false));
        assert_eq!(r.targets[1].met, Some(true));
        assert_eq!(r.targets[2].met, None);
        let table = r.table(&["b".into()], Metric::P50, &[]);
        assert!(
            table.contains("a / b = 1.50 (target <= 1.2): NOT met"),
            "{table}"
        );
        assert!(
            table.contains("a / b = 1.50 (target >= 1.2): met"),
            "{table}"
        );
        assert!(
            table.contains("a / zzz: not measured in this run"),
            "{table}"
        );
        assert!(table.contains("p50/b"), "{table}");
        assert!(table.contains("1.50x"), "{table}");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.0));
    }
}
