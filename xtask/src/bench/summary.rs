//! Per figure: median, p99, spread, the ratio to its baseline from the same run, the
//! target met or missed by how much, and the change against the committed report.

use std::collections::BTreeMap;

use meshgate_tests::bench::{Figure, percentile};

use super::regress::{self, Committed};

/// A figure with everything the report says about it.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The figure as recorded.
    pub figure: Figure,
    /// Median of the samples.
    pub median: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Median / the baseline's median, when the baseline was measured in this run.
    pub ratio: Option<f64>,
    /// The target's verdict.
    pub target: Option<TargetResult>,
    /// The committed median, if any.
    pub committed: Option<f64>,
    /// How much worse the median is than committed (fraction; negative = better); shown,
    /// never flagged on its own.
    pub worse_by: Option<f64>,
    /// How much worse the same-run ratio is than committed ([`regress::ratio_worse_by`]).
    pub ratio_worse_by: Option<f64>,
}

impl Summary {
    /// Whether this figure's same-run ratio is more than 20% worse than committed.
    pub fn regressed(&self) -> bool {
        self.ratio_worse_by.is_some_and(|w| w > regress::THRESHOLD)
    }
}

/// A target and how the figure fared.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetResult {
    /// `<=`, `>=`, `ratio<=`, …
    pub op: String,
    /// The goal.
    pub value: f64,
    /// Whether it was met; `None` when the compared value is unknown (a ratio without
    /// its baseline).
    pub met: Option<bool>,
    /// By how much it was missed, as a fraction of the goal (0 when met).
    pub missed_by: f64,
}

impl TargetResult {
    /// `≤ 100 ns`, `≤ 1.00× baseline`.
    pub fn describe(&self, unit: &str) -> String {
        let (on_ratio, op) = split_op(&self.op);
        let sym = match op {
            "<=" => "≤",
            ">=" => "≥",
            other => other,
        };
        if on_ratio {
            format!("{sym} {:.2}× baseline", self.value)
        } else {
            format!("{sym} {} {unit}", super::report::number(self.value))
        }
    }
}

/// `ratio<=` → (true, `<=`); the separator `ratio:<=` is accepted too.
fn split_op(op: &str) -> (bool, &str) {
    match op.strip_prefix("ratio") {
        Some(rest) => (true, rest.trim_start_matches(':')),
        None => (false, op),
    }
}

fn evaluate(op: &str, value: f64, median: f64, ratio: Option<f64>) -> TargetResult {
    let (on_ratio, cmp) = split_op(op);
    let x = if on_ratio { ratio } else { Some(median) };
    let (met, missed_by) = match (x, cmp) {
        (None, _) => (None, 0.0),
        (Some(x), "<=" | "<") => (
            Some(if cmp == "<" { x < value } else { x <= value }),
            ((x - value) / value).max(0.0),
        ),
        (Some(x), ">=" | ">") => (
            Some(if cmp == ">" { x > value } else { x >= value }),
            ((value - x) / value).max(0.0),
        ),
        (Some(_), _) => (None, 0.0),
    };
    TargetResult {
        op: op.to_owned(),
        value,
        met,
        missed_by,
    }
}

/// Summaries in the order recorded, ratios taken against baselines of the same run.
pub fn summarise(figures: &[Figure], committed: &BTreeMap<String, Committed>) -> Vec<Summary> {
    let medians: BTreeMap<&str, f64> = figures
        .iter()
        .map(|f| (f.id.as_str(), f.median()))
        .collect();
    figures
        .iter()
        .map(|f| {
            let median = f.median();
            let ratio = f
                .baseline
                .as_deref()
                .and_then(|b| medians.get(b))
                .filter(|b| **b != 0.0)
                .map(|b| median / b);
            let target = f
                .target
                .as_ref()
                .map(|(op, v)| evaluate(op, *v, median, ratio));
            let old = committed.get(&f.id);
            Summary {
                figure: f.clone(),
                median,
                p99: percentile(&f.samples, 99.0),
                min: percentile(&f.samples, 0.0),
                max: percentile(&f.samples, 100.0),
                ratio,
                target,
                committed: old.map(|c| c.median),
                worse_by: old.and_then(|c| regress::worse_by(median, &f.unit, c)),
                ratio_worse_by: old
                    .and_then(|c| regress::ratio_worse_by(median, ratio, &f.unit, c)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use meshgate_tests::bench::Better;

    use super::*;

    #[test]
    fn targets_on_medians_and_on_ratios() {
        let t = evaluate("<=", 100.0, 110.0, None);
        assert_eq!(t.met, Some(false));
        assert!((t.missed_by - 0.10).abs() < 1e-9);
        assert_eq!(evaluate(">=", 1.0, 1.2, None).met, Some(true));
        let r = evaluate("ratio<=", 1.0, 50.0, Some(1.25));
        assert_eq!(r.met, Some(false));
        assert!((r.missed_by - 0.25).abs() < 1e-9);
        assert_eq!(evaluate("ratio:<=", 1.0, 50.0, Some(0.5)).met, Some(true));
        assert_eq!(evaluate("ratio<=", 1.0, 50.0, None).met, None);
    }

    #[test]
    fn ratios_use_the_baseline_of_the_same_run() {
        let base = Figure::new("b", 3, "base", "ns", Better::Lower).samples(vec![20.0; 5]);
        let f = Figure::new("f", 3, "f", "ns", Better::Lower)
            .samples(vec![30.0, 40.0, 50.0, 60.0, 70.0])
            .baseline("b")
            .target("<=", 45.0);
        let committed = BTreeMap::from([
            (
                "f".to_owned(),
                Committed {
                    median: 40.0,
                    unit: "ns".into(),
                    better: Better::Lower,
                    ratio: Some(2.0),
                },
            ),
            (
                "b".to_owned(),
                Committed {
                    median: 10.0,
                    unit: "ns".into(),
                    better: Better::Lower,
                    ratio: None,
                },
            ),
        ]);
        let s = summarise(&[base, f], &committed);
        assert_eq!(s[1].median, 50.0);
        assert_eq!(s[1].ratio, Some(2.5));
        assert_eq!((s[1].min, s[1].max), (30.0, 70.0));
        assert_eq!(s[1].target.as_ref().unwrap().met, Some(false));
        assert!(s[1].regressed(), "ratio 2.5 vs 2.0 is 25% worse");
        // The baseline doubled (a slower machine?) but has no ratio: shown, not flagged.
        assert!((s[0].worse_by.unwrap() - 1.0).abs() < 1e-9);
        assert!(!s[0].regressed());
    }
}
