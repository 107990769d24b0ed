//! Regressions against the committed `BENCHMARKS.md`: it ends with a data block (one JSON
//! object per figure: id, median, unit, better) that this module writes and reads back.
//! A figure whose median is more than [`THRESHOLD`] worse than the committed one is
//! flagged.

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
            },
        );
    }
    Ok(out)
}

/// The data block for a new report, marker included.
pub fn block(figures: &[(&Figure, f64)]) -> String {
    let mut s = format!(
        "{MARKER}: read by `cargo xtask bench` to flag regressions; one figure per line -->\n```json\n"
    );
    for (f, median) in figures {
        let better = match f.better {
            Better::Lower => "lower",
            Better::Higher => "higher",
        };
        let line = json!({"id": f.id, "median": median, "unit": f.unit, "better": better});
        s.push_str(&format!("{line}\n"));
    }
    s.push_str("```\n");
    s
}

/// How much worse `median` is than the committed one, as a fraction (0.25 = 25% worse);
/// negative when better, `None` when not comparable (another unit, a zero).
pub fn worse_by(median: f64, unit: &str, committed: &Committed) -> Option<f64> {
    if committed.unit != unit || committed.median == 0.0 || !median.is_finite() {
        return None;
    }
    Some(match committed.better {
        Better::Lower => median / committed.median - 1.0,
        Better::Higher => 1.0 - median / committed.median,
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
        let md = format!("# x\n\ntext\n\n{}", block(&[(&f, 26.0), (&g, 1e6)]));
        let c = parse(&md).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c["xdp.pass"].median, 26.0);
        assert_eq!(c["hairpin.pps"].better, Better::Higher);
        assert!(parse("no block here").unwrap().is_empty());
    }

    #[test]
    fn worse_is_measured_in_the_figures_direction() {
        let lower = Committed {
            median: 100.0,
            unit: "ns".into(),
            better: Better::Lower,
        };
        assert!((worse_by(125.0, "ns", &lower).unwrap() - 0.25).abs() < 1e-9);
        assert!(worse_by(90.0, "ns", &lower).unwrap() < 0.0);
        assert_eq!(worse_by(125.0, "ms", &lower), None);
        let higher = Committed {
            median: 100.0,
            unit: "pps".into(),
            better: Better::Higher,
        };
        assert!((worse_by(70.0, "pps", &higher).unwrap() - 0.30).abs() < 1e-9);
    }
}
