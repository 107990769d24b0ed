//! Regressions against the committed `BENCHMARKS.md`: it ends with a data block (one JSON
//! object per figure: id, median, unit, better, and its same-run ratio to its baseline)
//! that this module writes and reads back.
//!
//! Only same-run ratios are compared: a figure's ratio to its baseline (meshgate over
//! the reference measured beside it), or a figure that is itself such a ratio (unit `×`).
//! Absolute figures move with the machine — on one 20% slower, every one of them would
//! be "worse" while every ratio held — so they are shown against the committed ones but
//! never flagged. A ratio more than [`THRESHOLD`] worse than committed is flagged.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context;
use meshgate_tests::bench::{Better, Figure};
use serde_json::json;

/// More than 20% worse is a regression: beyond the run-to-run noise measured here.
pub const THRESHOLD: f64 = 0.20;
/// The line that opens the data block.
const MARKER: &str = "<!-- meshgate-bench-data";

/// A figure's median as committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// Its median.
    pub median: f64,
    /// Its unit, to refuse comparing different things under one id.
    pub unit: String,
    /// Which direction is better.
    pub better: Better,
    /// Its same-run ratio to its baseline, when it had one.
    pub ratio: Option<f64>,
}

/// The committed figures by id; empty when the file or its data block does not exist.
pub fn committed(path: &Path) -> anyhow::Result<BTreeMap<String, Committed>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).with_context(|| format!("the data block of {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn parse(text: &str) -> anyhow::Result<BTreeMap<String, Committed>> {
    let mut out = BTreeMap::new();
    let Some((_, after)) = text.split_once(MARKER) else {
        return Ok(out);
    };
    let block = after
        .split_once("```json")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .context("no ```json block after the marker")?;
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| line.to_owned())?;
        let id = v["id"].as_str().context("no id")?.to_owned();
        let better = if v["better"] == "higher" {
            Better::Higher
        } else {
            Better::Lower
        };
        out.insert(
            id,
            Committed {
                median: v["median"].as_f64().context("no median")?,
                unit: v["unit"].as_str().unwrap_or_default().to_owned(),
                better,
                ratio: v["ratio"].as_f64(),
            },
        );
    }
    Ok(out)
}

/// The data block for a new report, marker included: per figure its median and its
/// same-run ratio (`None` without a baseline).
pub fn block(figures: &[(&Figure, f64, Option<f64>)]) -> String {
    let mut s = format!(
        "{MARKER}: read by `cargo xtask bench` to flag regressions; one figure per line -->\n```json\n"
    );
    for (f, median, ratio) in figures {
        let better = match f.better {
            Better::Lower => "lower",
            Better::Higher => "higher",
        };
        let mut line = json!({"id": f.id, "median": median, "unit": f.unit, "better": better});
        if let Some(r) = ratio {
            line["ratio"] = json!(r);
        }
        s.push_str(&format!("{line}\n"));
    }
    s.push_str("```\n");
    s
}

/// How much worse `median` is than the committed one, as a fraction (0.25 = 25% worse);
/// negative when better, `None` when not comparable (another unit, a zero).
pub fn worse_by(median: f64, unit: &str, committed: &Committed) -> Option<f64> {
    if committed.unit != unit {
        return None;
    }
    worse(median, committed.median, committed.better)
}

/// How much worse the same-run comparison got: the ratio to the baseline against the
/// committed ratio, or, for a figure that is itself a ratio (unit `×`), its median.
/// `None` for an absolute figure (see the module docs) or when nothing is comparable.
pub fn ratio_worse_by(
    median: f64,
    ratio: Option<f64>,
    unit: &str,
    committed: &Committed,
) -> Option<f64> {
    if committed.unit != unit {
        return None;
    }
    match (ratio, committed.ratio) {
        (Some(now), Some(then)) => worse(now, then, committed.better),
        (None, None) if unit == "×" => worse(median, committed.median, committed.better),
        _ => None,
    }
}

fn worse(now: f64, then: f64, better: Better) -> Option<f64> {
    if then == 0.0 || !now.is_finite() {
        return None;
    }
    Some(match better {
        Better::Lower => now / then - 1.0,
        Better::Higher => 1.0 - now / then,
    })
}

/// Committed ids that this run did not measure.
pub fn not_measured(committed: &BTreeMap<String, Committed>, figures: &[Figure]) -> Vec<String> {
    committed
        .keys()
        .filter(|id| !figures.iter().any(|f| &f.id == *id))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_block_reads_back() {
        let f = Figure::new("xdp.pass", 3, "pass", "ns", Better::Lower);
        let g = Figure::new("hairpin.pps", 3, "pps", "pps", Better::Higher);
        let md = format!(
            "# x\n\ntext\n\n{}",
            block(&[(&f, 26.0, None), (&g, 1e6, Some(1.5))])
        );
        let c = parse(&md).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c["xdp.pass"].median, 26.0);
        assert_eq!(c["xdp.pass"].ratio, None);
        assert_eq!(c["hairpin.pps"].better, Better::Higher);
        assert_eq!(c["hairpin.pps"].ratio, Some(1.5));
        assert!(parse("no block here").unwrap().is_empty());
    }

    #[test]
    fn worse_is_measured_in_the_figures_direction() {
        let lower = Committed {
            median: 100.0,
            unit: "ns".into(),
            better: Better::Lower,
            ratio: None,
        };
        assert!((worse_by(125.0, "ns", &lower).unwrap() - 0.25).abs() < 1e-9);
        assert!(worse_by(90.0, "ns", &lower).unwrap() < 0.0);
        assert_eq!(worse_by(125.0, "ms", &lower), None);
        let higher = Committed {
            median: 100.0,
            unit: "pps".into(),
            better: Better::Higher,
            ratio: None,
        };
        assert!((worse_by(70.0, "pps", &higher).unwrap() - 0.30).abs() < 1e-9);
    }

    #[test]
    fn only_same_run_ratios_are_compared() {
        let committed = Committed {
            median: 1000.0,
            unit: "Mbit/s".into(),
            better: Better::Higher,
            ratio: Some(2.0),
        };
        // 20% slower machine, same ratio: not worse.
        assert_eq!(
            ratio_worse_by(800.0, Some(2.0), "Mbit/s", &committed),
            Some(0.0)
        );
        // Same absolute figure, the reference got faster: the ratio fell by 30%.
        let w = ratio_worse_by(1000.0, Some(1.4), "Mbit/s", &committed).unwrap();
        assert!((w - 0.30).abs() < 1e-9);
        // An absolute figure without a baseline is never compared.
        let absolute = Committed {
            ratio: None,
            ..committed.clone()
        };
        assert_eq!(ratio_worse_by(10.0, None, "Mbit/s", &absolute), None);
        // A figure that is itself a same-run ratio is.
        let fraction = Committed {
            median: 0.2,
            unit: "×".into(),
            better: Better::Higher,
            ratio: None,
        };
        assert!(ratio_worse_by(0.1, None, "×", &fraction).unwrap() > 0.4);
    }
}
