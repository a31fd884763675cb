//! Latency samples and their summary.

/// The summary of one bench entry.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The entry's name (`cacheline`, `ring-poll`, ...).
    pub name: String,
    /// Median round trip, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile round trip, nanoseconds.
    pub p99_ns: u64,
    /// Smallest round trip seen.
    pub min_ns: u64,
    /// Measured round trips (warm-up excluded).
    pub iters: u64,
    /// Message size in bytes.
    pub msg_bytes: usize,
    /// How the two ends ran (threads or processes, pinned cores).
    pub setup: String,
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises round-trip samples.
pub fn summarize(name: &str, mut samples: Vec<u64>, msg_bytes: usize, setup: &str) -> Summary {
    samples.sort_unstable();
    Summary {
        name: name.to_string(),
        p50_ns: quantile(&samples, 0.50),
        p99_ns: quantile(&samples, 0.99),
        min_ns: samples.first().copied().unwrap_or(0),
        iters: samples.len() as u64,
        msg_bytes,
        setup: setup.to_string(),
    }
}

/// The results as JSON: `{"results":[{"name":..,"p50_ns":..,"p99_ns":..,"iters":..}, ...]}`
/// with a few more fields per entry.
pub fn to_json(results: &[Summary], meta: &[(&str, String)]) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from("{\"results\":[");
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"name\":\"{}\",\"p50_ns\":{},\"p99_ns\":{},\"min_ns\":{},\"iters\":{},\"msg_bytes\":{},\"setup\":\"{}\"}}",
            esc(&r.name),
            r.p50_ns,
            r.p99_ns,
            r.min_ns,
            r.iters,
            r.msg_bytes,
            esc(&r.setup)
        ));
    }
    out.push_str("],\"meta\":{");
    for (i, (k, v)) in meta.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("\"{}\":\"{}\"", esc(k), esc(v)));
    }
    out.push_str("}}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let s: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&s, 0.5), 50);
        assert_eq!(quantile(&s, 0.99), 99);
        assert_eq!(quantile(&s, 1.0), 100);
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn json_has_the_required_fields() {
        let r = summarize("ring-poll", vec![300, 100, 200], 16, "threads");
        let j = to_json(&[r], &[("cpus", "2".into())]);
        assert!(
            j.starts_with("{\"results\":[{\"name\":\"ring-poll\",\"p50_ns\":200,\"p99_ns\":300,")
        );
        assert!(j.contains("\"iters\":3"));
    }
}
