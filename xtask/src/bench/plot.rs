//! The report's plots, as SVG files beside it (drawn with `plotters`): throughput bars —
//! each path's median with its min–max spread, meshgate against plain routing and the
//! WireGuard references of the same run — and a failover timeline: every probe's send
//! time against its arrival, both directions, with the failover's steps marked (from the
//! `failover-timeline.json` the failover benchmark writes).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::summary::Summary;

/// The throughput groups and the paths in each, as the throughput benchmark names them.
const GROUPS: [(&str, &str); 4] = [
    ("tcp.up", "TCP up"),
    ("tcp.down", "TCP down"),
    ("udp.up", "UDP up"),
    ("udp.down", "UDP down"),
];
const PATHS: [(&str, &str, RGBColor); 4] = [
    ("ceiling", "plain routing", RGBColor(150, 150, 150)),
    ("boringtun", "boringtun", RGBColor(230, 159, 0)),
    ("wireguard_go", "wireguard-go", RGBColor(86, 180, 233)),
    ("meshgate", "meshgate", RGBColor(0, 114, 178)),
];

/// Draws `throughput.svg` from the row 2 figures; `false` when the run has none.
pub fn throughput(summaries: &[Summary], path: &Path) -> anyhow::Result<bool> {
    let find = |id: String| summaries.iter().find(|s| s.figure.id == id);
    let mut bars = Vec::new();
    for (g, (group, _)) in GROUPS.iter().enumerate() {
        for (p, (id, _, color)) in PATHS.iter().enumerate() {
            if let Some(s) = find(format!("throughput.{group}.{id}")) {
                let x = (g * (PATHS.len() + 1) + p) as f64;
                bars.push((x, s.median / 1000.0, s.min / 1000.0, s.max / 1000.0, *color));
            }
        }
    }
    if bars.is_empty() {
        return Ok(false);
    }
    let top = bars.iter().map(|b| b.3).fold(0.0, f64::max) * 1.1;
    let width = (GROUPS.len() * (PATHS.len() + 1)) as f64 - 1.0;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Tunnel throughput, one stream (median, min–max)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(-1.0..width, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(GROUPS.len())
        .x_label_formatter(&|x| {
            let g = ((x + 1.0) / (PATHS.len() + 1) as f64).floor() as usize;
            GROUPS
                .get(g)
                .map_or(String::new(), |(_, l)| (*l).to_owned())
        })
        .y_desc("Gbit/s")
        .draw()?;
    for (i, (_, label, color)) in PATHS.iter().enumerate() {
        let series: Vec<_> = bars.iter().filter(|b| b.4 == *color).collect();
        chart
            .draw_series(series.iter().map(|(x, median, ..)| {
                Rectangle::new([(*x - 0.4, 0.0), (*x + 0.4, *median)], color.filled())
            }))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart.draw_series(series.iter().map(|(x, _, lo, hi, _)| {
            PathElement::new(vec![(*x, *lo), (*x, *hi)], BLACK.stroke_width(1))
        }))?;
        let _ = i;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(true)
}

/// Draws `failover-timeline.svg` from `data` (see the module docs); `false` without it.
pub fn failover(data: &Path, path: &Path) -> anyhow::Result<bool> {
    let text = match std::fs::read_to_string(data) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("read {}", data.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", data.display()))?;
    let points = |dir: &str| -> Vec<(f64, Option<f64>)> {
        v[dir]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64())))
            .collect()
    };
    let flows = [
        ("inbound", "device → LAN host", RGBColor(0, 114, 178)),
        ("outbound", "LAN host → device", RGBColor(230, 159, 0)),
    ];
    let all: Vec<f64> = flows
        .iter()
        .flat_map(|(d, ..)| points(d))
        .flat_map(|(s, a)| [Some(s), a])
        .flatten()
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = all
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(1.0);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let fault = v["fault"].as_str().unwrap_or("failover");
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Failover timeline ({fault}): probe sent vs. arrived, ms from the fault"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(lo..hi, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("sent (ms)")
        .y_desc("arrived (ms); lost probes on the bottom edge")
        .draw()?;
    for (dir, label, color) in flows {
        let pts = points(dir);
        chart
            .draw_series(
                pts.iter()
                    .filter_map(|(s, a)| a.map(|a| Circle::new((*s, a), 2, color.filled()))),
            )?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 5, y), 3, color.filled()));
        chart.draw_series(
            pts.iter()
                .filter(|(_, a)| a.is_none())
                .map(|(s, _)| Cross::new((*s, lo), 3, color.stroke_width(1))),
        )?;
    }
    let steps: Vec<(f64, String)> = v["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s[0].as_f64()?, s[1].as_str()?.to_owned())))
        .collect();
    for (i, (at, name)) in steps.iter().enumerate() {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(*at, lo), (*at, hi)],
            RGBColor(200, 0, 0).mix(0.5).stroke_width(1),
        )))?;
        // Staggered, so steps a fraction of a millisecond apart stay readable.
        let y = hi - (hi - lo) * (0.04 + 0.05 * i as f64);
        chart.draw_series(std::iter::once(Text::new(
            format!("{name} ({at:.1} ms)"),
            (*at, y),
            ("sans-serif", 12).into_font().color(&RGBColor(150, 0, 0)),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(true)
}
