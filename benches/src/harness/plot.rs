//! SVG plots of a run (plotters, SVG backend only: the text is written as
//! SVG `<text>` elements that the viewer renders, so no font library or
//! system font is needed to draw).
//!
//! - Latency benches: the CDF of every entry's latency on a log time axis.
//! - Throughput benches: one bar per entry.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{EntryResult, Metric};

const SIZE: (u32, u32) = (1000, 620);

/// Ten colours that stay apart from one another on white (the common
/// "category 10" set); more entries reuse them in turn.
const COLOURS: [(u8, u8, u8); 10] = [
    (0x1f, 0x77, 0xb4),
    (0xff, 0x7f, 0x0e),
    (0x2c, 0xa0, 0x2c),
    (0xd6, 0x27, 0x28),
    (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b),
    (0xe3, 0x77, 0xc2),
    (0x7f, 0x7f, 0x7f),
    (0xbc, 0xbd, 0x22),
    (0x17, 0xbe, 0xcf),
];

fn colour(i: usize) -> RGBColor {
    let (r, g, b) = COLOURS[i % COLOURS.len()];
    RGBColor(r, g, b)
}

fn err(path: &Path) -> impl Fn(String) -> String + '_ {
    move |e| format!("cannot draw the plot {}: {e}", path.display())
}

/// `ns` as a short time: `850 ns`, `12 us`, `3.4 ms`, `2 s`.
pub fn fmt_ns(ns: f64) -> String {
    let (v, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "us")
    } else {
        (ns, "ns")
    };
    if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// A rate with as many decimals as it deserves.
fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The CDF points of one histogram: (latency ns, fraction of samples at or
/// below it), denser towards the tail.
pub fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut pts = vec![(h.min_nz().max(1) as f64, 0.0)];
    for v in h.iter_quantiles(8) {
        pts.push((
            v.value_iterated_to().max(1) as f64,
            v.quantile_iterated_to(),
        ));
    }
    pts
}

/// Latency CDFs, one line per entry, log x axis.
pub fn latency_cdf(
    path: &Path,
    title: &str,
    series: &[(&EntryResult, &Histogram<u64>)],
) -> Result<(), String> {
    let e = err(path);
    let curves: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(r, h)| {
            let label = format!("{}  (p50 {})", r.name, fmt_ns(r.p50_ns as f64));
            (label, cdf_points(h))
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    if curves.is_empty() {
        return Err(e("no entry recorded a latency sample".into()));
    }
    let lo = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(f64::INFINITY, f64::min);
    let hi = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(0.0, f64::max);
    // One decade's margin would waste room: a quarter of one each side.
    let (lo, hi) = (
        lo / 10f64.powf(0.25),
        (hi * 10f64.powf(0.25)).max(lo * 10.0),
    );

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("latency (log scale)")
        .y_desc("fraction of samples at or below")
        .x_label_formatter(&|v| fmt_ns(*v))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (i, (name, pts)) in curves.into_iter().enumerate() {
        let color = colour(i);
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Bars, one per entry that has `metric`.
pub fn bars(
    path: &Path,
    title: &str,
    metric: Metric,
    results: &[EntryResult],
) -> Result<(), String> {
    let e = err(path);
    let bars: Vec<(&str, f64)> = results
        .iter()
        .filter_map(|r| metric.of(r).map(|v| (r.name.as_str(), v)))
        .collect();
    if bars.is_empty() {
        return Err(e(format!("no entry measured {}", metric.name())));
    }
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let names: Vec<String> = bars.iter().map(|b| b.0.to_string()).collect();
    let n = bars.len() as u32;

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        // A discrete range includes its end: `0..n - 1` is `n` slots.
        .build_cartesian_2d((0u32..n - 1).into_segmented(), 0.0..top)
        .map_err(|x| e(x.to_string()))?;
    let label = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&label)
        .y_desc(metric.name())
        .draw()
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            let i = i as u32;
            let color = colour(i as usize);
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                color.filled(),
            );
            r.set_margin(0, 0, 12, 12);
            r
        }))
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                fmt_value(*v),
                (SegmentValue::CenterOf(i as u32), *v + top * 0.01),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_short_and_readable() {
        assert_eq!(fmt_ns(850.0), "850 ns");
        assert_eq!(fmt_ns(1500.0), "1.5 us");
        assert_eq!(fmt_ns(60_000.0), "60 us");
        assert_eq!(fmt_ns(3_400_000.0), "3.4 ms");
        assert_eq!(fmt_ns(2e9), "2 s");
    }

    #[test]
    fn bars_draw_one_slot_per_entry_even_for_one_entry() {
        let dir = std::env::temp_dir().join(format!("benches-bars-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mk = |name: &str, iops: f64| EntryResult {
            name: name.into(),
            p50_ns: 0,
            p99_ns: 0,
            p999_ns: 0,
            max_ns: 0,
            min_ns: 0,
            iters: 0,
            msg_bytes: None,
            setup: String::new(),
            round_p50_ns: Vec::new(),
            iops: Some(iops),
            mb_s: None,
            gbit_s: None,
            misses: None,
            miss_ratio: None,
            p50_us: None,
            p99_us: None,
        };
        for n in [1usize, 3] {
            let results: Vec<EntryResult> = (0..n)
                .map(|i| mk(&format!("e{i}"), 1000.0 * (i + 1) as f64))
                .collect();
            let path = dir.join(format!("bars{n}.svg"));
            bars(&path, "t", Metric::Iops, &results).unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            for r in &results {
                assert!(
                    svg.contains(&format!(">\n{}\n<", r.name)),
                    "{} in:\n{svg}",
                    r.name
                );
            }
            // The background, then one bar per entry.
            assert_eq!(svg.matches("<rect").count(), 1 + n, "{svg}");
        }
        assert!(bars(&dir.join("none.svg"), "t", Metric::MbS, &[mk("x", 1.0)]).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn cdf_points_rise_from_zero_to_one() {
        let mut h = super::super::recorder::new_histogram();
        for v in 100..=1100u64 {
            h.record(v).unwrap();
        }
        let p = cdf_points(&h);
        assert_eq!(p[0], (100.0, 0.0));
        assert!(p.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let last = p.last().unwrap();
        assert_eq!(last.0, 1100.0);
        assert!((last.1 - 1.0).abs() < 1e-9);
        assert!(p.len() > 20 && p.len() < 1000, "{}", p.len());
    }
}
