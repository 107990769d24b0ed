//! The contract between benchmark programs and `cargo xtask bench`.
//!
//! Every benchmark is an `#[ignore]` test named `bench_*` (in this crate's `tests/`). It
//! measures each figure at least [`repeats`] times and hands the samples to [`record`],
//! which appends one JSON object per line to the file named by `MESHGATE_BENCH_OUT` (and
//! prints a summary either way). `cargo xtask bench` runs the tests, reads the lines and
//! writes the report: medians, spreads, ratios to each figure's `baseline`, targets met or
//! missed, and regressions against the committed `BENCHMARKS.md`.
//!
//! A line: `{"id": "xdp.classify.10000", "row": 3, "label": "...", "unit": "ns",
//! "better": "lower", "samples": [..], "baseline": "xdp.pass" | null,
//! "target": {"op": "<=", "value": 100.0} | null, "reproduce": "...", "note": "..."}`.
//! [`Figure::to_json`] writes a line and [`Figure::from_json`] reads it back, so both
//! ends of the contract share one definition.

use std::io::Write;

use anyhow::Context;
use serde_json::json;

/// The environment variable naming the JSON-lines output file.
pub const OUT_ENV: &str = "MESHGATE_BENCH_OUT";
/// Set to `1` by `cargo xtask bench --quick`.
pub const QUICK_ENV: &str = "MESHGATE_BENCH_QUICK";

/// Whether this is a `--quick` run (fewer trials, smaller sizes).
pub fn quick() -> bool {
    std::env::var(QUICK_ENV).is_ok_and(|v| v == "1")
}

/// How many times to repeat a figure: 5 (the minimum for a median), or `full` when not quick.
pub fn repeats(full: usize) -> usize {
    if quick() { 5 } else { full.max(5) }
}

/// Which direction is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Times, costs, memory.
    Lower,
    /// Throughput, rates.
    Higher,
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stable id, e.g. `failover.kill9.inbound`; regressions are matched on it.
    pub id: String,
    /// The row of the benchmark table (1–5).
    pub row: u8,
    /// What a person reads, e.g. `kill -9 outage, inbound`.
    pub label: String,
    /// `ms`, `ns`, `Mbit/s`, `KiB`, …
    pub unit: String,
    /// Which direction is better.
    pub better: Better,
    /// Every sample (≥ 5).
    pub samples: Vec<f64>,
    /// The id of the figure this one is compared with, side by side in the same run.
    pub baseline: Option<String>,
    /// The goal on the median: `("<=", 300.0)` or `(">=", 1.0)`. With the op prefixed by
    /// `ratio` (`("ratio<=", 1.0)`) the goal is on the ratio median / baseline median.
    pub target: Option<(String, f64)>,
    /// The command that reproduces it.
    pub reproduce: String,
    /// Anything a reader must know (what was compared, a limit).
    pub note: String,
}

impl Figure {
    /// A figure with the required fields; set the rest with the builder methods.
    pub fn new(id: &str, row: u8, label: &str, unit: &str, better: Better) -> Self {
        Self {
            id: id.to_owned(),
            row,
            label: label.to_owned(),
            unit: unit.to_owned(),
            better,
            samples: Vec::new(),
            baseline: None,
            target: None,
            reproduce: String::new(),
            note: String::new(),
        }
    }

    /// The samples.
    pub fn samples(mut self, samples: Vec<f64>) -> Self {
        self.samples = samples;
        self
    }

    /// Compared with figure `id`.
    pub fn baseline(mut self, id: &str) -> Self {
        self.baseline = Some(id.to_owned());
        self
    }

    /// A target on the median, e.g. `("<=", 300.0)`.
    pub fn target(mut self, op: &str, value: f64) -> Self {
        self.target = Some((op.to_owned(), value));
        self
    }

    /// How to reproduce it.
    pub fn reproduce(mut self, cmd: &str) -> Self {
        self.reproduce = cmd.to_owned();
        self
    }

    /// A note for the reader.
    pub fn note(mut self, note: &str) -> Self {
        self.note = note.to_owned();
        self
    }

    /// The median of the samples.
    pub fn median(&self) -> f64 {
        percentile(&self.samples, 50.0)
    }

    /// The JSON line [`record`] writes.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "row": self.row,
            "label": self.label,
            "unit": self.unit,
            "better": match self.better { Better::Lower => "lower", Better::Higher => "higher" },
            "samples": self.samples,
            "baseline": self.baseline,
            "target": self.target.as_ref().map(|(op, v)| json!({"op": op, "value": v})),
            "reproduce": self.reproduce,
            "note": self.note,
        })
    }

    /// Reads a line written by [`Figure::to_json`]; an error names the missing field.
    pub fn from_json(v: &serde_json::Value) -> anyhow::Result<Self> {
        let text = |field: &str| -> anyhow::Result<String> {
            v[field]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no string `{field}` in {v}"))
        };
        let better = match text("better")?.as_str() {
            "lower" => Better::Lower,
            "higher" => Better::Higher,
            other => anyhow::bail!("`better` is {other:?}, not lower or higher"),
        };
        let samples = v["samples"]
            .as_array()
            .context("no `samples` array")?
            .iter()
            .map(|s| s.as_f64().context("a sample is not a number"))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        let target = match &v["target"] {
            serde_json::Value::Null => None,
            t => Some((
                t["op"].as_str().context("target without `op`")?.to_owned(),
                t["value"].as_f64().context("target without `value`")?,
            )),
        };
        Ok(Self {
            id: text("id")?,
            row: v["row"]
                .as_u64()
                .and_then(|r| u8::try_from(r).ok())
                .context("no `row` in 0..=255")?,
            label: text("label")?,
            unit: text("unit")?,
            better,
            samples,
            baseline: v["baseline"].as_str().map(str::to_owned),
            target,
            reproduce: text("reproduce").unwrap_or_default(),
            note: text("note").unwrap_or_default(),
        })
    }
}

/// The `p`th percentile (nearest rank) of `samples`; NaN when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Appends `figure` to `$MESHGATE_BENCH_OUT` (when set) and prints a one-line summary.
pub fn record(figure: &Figure) -> anyhow::Result<()> {
    anyhow::ensure!(
        !figure.samples.is_empty(),
        "figure {} has no samples",
        figure.id
    );
    println!(
        "bench {:<40} median {:>10.2} {} (min {:.2}, max {:.2}, n={})",
        figure.id,
        figure.median(),
        figure.unit,
        percentile(&figure.samples, 0.0),
        percentile(&figure.samples, 100.0),
        figure.samples.len()
    );
    let Ok(path) = std::env::var(OUT_ENV) else {
        return Ok(());
    };
    let line = figure.to_json();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open {path}"))?;
    writeln!(f, "{line}").with_context(|| format!("write {path}"))?;
    Ok(())
}

/// Writes `value` as the file `name` beside the figures (in `$MESHGATE_BENCH_OUT`'s
/// directory), for the report's plots; does nothing outside `cargo xtask bench`.
pub fn artifact(name: &str, value: &serde_json::Value) -> anyhow::Result<()> {
    let Ok(out) = std::env::var(OUT_ENV) else {
        return Ok(());
    };
    let dir = std::path::Path::new(&out)
        .parent()
        .context("the figures file has a directory")?;
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn a_line_reads_back_as_the_same_figure() {
        let f = Figure::new("route_sync.install", 4, "install", "ms", Better::Lower)
            .samples(vec![3.0, 1.5])
            .baseline("route_sync.ip_batch")
            .target("ratio<=", 1.0)
            .reproduce("cargo xtask bench --only route")
            .note("n");
        let back = Figure::from_json(&f.to_json()).unwrap();
        assert_eq!(back.to_json(), f.to_json());
        assert!(Figure::from_json(&json!({"id": "x"})).is_err());
    }
}
