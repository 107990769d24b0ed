//! The report: `report.md` (committed as `BENCHMARKS.md`) and `report.json`.

use std::{collections::BTreeSet, time::Duration};

use serde_json::json;

use super::{machine::Machine, regress, run::Outcome, summary::Summary};

/// The report's table rows, one per benchmark.
const ROWS: &[(u8, &str)] = &[
    (1, "Failover outage"),
    (2, "Tunnel throughput"),
    (3, "XDP dataplane"),
    (4, "Route sync"),
    (5, "Coordinator scale"),
    (6, "Network policies"),
];

/// Where the committed report's plots live (the report links them there).
pub const PLOT_DIR: &str = "docs/bench";
/// The throughput bars (row 2).
pub const THROUGHPUT_SVG: &str = "throughput.svg";
/// The failover timeline (row 1).
pub const TIMELINE_SVG: &str = "failover-timeline.svg";

/// Everything one run found.
pub struct Report {
    /// The command that produced it.
    pub command: String,
    /// Whether only some benchmarks ran (`--only`).
    pub partial: bool,
    /// Where it ran.
    pub machine: Machine,
    /// How long the whole command took.
    pub elapsed: Duration,
    /// Every figure.
    pub summaries: Vec<Summary>,
    /// Every benchmark file run.
    pub outcomes: Vec<Outcome>,
    /// Committed figures this run did not produce.
    pub not_measured: Vec<String>,
    /// The plots drawn (file names in [`PLOT_DIR`]).
    pub plots: Vec<&'static str>,
}

/// A number for people: grouped thousands, fewer decimals as it grows.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        let digits = format!("{:.0}", a);
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("{}{grouped}", if x < 0.0 { "-" } else { "" })
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn percent(fraction: f64) -> String {
    format!("{:.0}%", fraction * 100.0)
}

impl Report {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::from("# meshgate benchmarks\n\n");
        s.push_str(&format!(
            "Written by `{}` in {:.0} s. {}\n\n",
            self.command,
            self.elapsed.as_secs_f64(),
            self.machine.markdown()
        ));
        s.push_str(
            "The machine is shared and noisy, so every figure is repeated (n ≥ 5) and given as \
             its median with the min–max spread, next to a baseline measured in the same run \
             (the ratio column). Targets are the project's goals, not pass/fail tests; a missed \
             one says by how much. \"committed\" is the median in the previous `BENCHMARKS.md` \
             and how much it changed; only same-run ratios are flagged as regressions (a ratio \
             to the baseline, or a figure that is itself one, more than 20% worse than \
             committed): absolute figures follow the machine. Regenerate with the command \
             above (as root), commit `target/bench/report.md` as `BENCHMARKS.md` and \
             `target/bench/*.svg` into `docs/bench/`.\n\n",
        );
        s.push_str(&self.problems());
        for (row, title) in ROWS {
            s.push_str(&self.row(*row, title));
        }
        let known: BTreeSet<u8> = ROWS.iter().map(|(r, _)| *r).collect();
        let others: BTreeSet<u8> = self
            .summaries
            .iter()
            .map(|x| x.figure.row)
            .filter(|r| !known.contains(r))
            .collect();
        for row in others {
            s.push_str(&self.row(row, "Other"));
        }
        s.push_str("## Data\n\n");
        let data: Vec<_> = self
            .summaries
            .iter()
            .map(|x| (&x.figure, x.median, x.ratio))
            .collect();
        s.push_str(&regress::block(&data));
        s
    }

    /// Failures, regressions and missing figures, first, so nobody misses them.
    fn problems(&self) -> String {
        let mut s = String::new();
        for o in self.outcomes.iter().filter(|o| !o.ok) {
            let what = if o.failed.is_empty() {
                o.reason.clone().unwrap_or_default()
            } else {
                format!("failed: {}", o.failed.join(", "))
            };
            s.push_str(&format!(
                "- **FAILED** `{}` ({what}): its figures are missing.\n",
                o.file
            ));
        }
        for x in self.summaries.iter().filter(|x| x.regressed()) {
            s.push_str(&format!(
                "- **REGRESSION** `{}`: its same-run ratio is {} worse than committed (median \
                 {} {}, ratio {}).\n",
                x.figure.id,
                percent(x.ratio_worse_by.unwrap_or(0.0)),
                number(x.median),
                x.figure.unit,
                x.ratio.map_or("—".into(), |r| format!("{r:.2}×")),
            ));
        }
        if !self.not_measured.is_empty() {
            let why = if self.partial {
                "not run (`--only`)"
            } else {
                "**missing**"
            };
            s.push_str(&format!(
                "- Committed figures {why} in this run: {}.\n",
                self.not_measured
                    .iter()
                    .map(|id| format!("`{id}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if s.is_empty() {
            "No failures, regressions or missing figures.\n\n".into()
        } else {
            format!("{s}\n")
        }
    }

    fn row(&self, row: u8, title: &str) -> String {
        let rows: Vec<&Summary> = self
            .summaries
            .iter()
            .filter(|x| x.figure.row == row)
            .collect();
        let mut s = format!("## Row {row}: {title}\n\n");
        if rows.is_empty() {
            s.push_str("Not measured in this run.\n\n");
            return s;
        }
        let plot = match row {
            1 => Some((TIMELINE_SVG, "Failover timeline")),
            2 => Some((THROUGHPUT_SVG, "Tunnel throughput")),
            _ => None,
        };
        if let Some((file, alt)) = plot.filter(|(f, _)| self.plots.contains(f)) {
            s.push_str(&format!("![{alt}]({PLOT_DIR}/{file})\n\n"));
        }
        s.push_str(
            "| id | figure | median | p99 | min–max | n | ratio | target | committed |\n\
             |---|---|---:|---:|---:|---:|---|---|---|\n",
        );
        for x in &rows {
            s.push_str(&line(x));
        }
        s.push('\n');
        // One line per distinct note, naming every figure it belongs to.
        let mut notes: Vec<(&str, Vec<&str>)> = Vec::new();
        for x in rows.iter().filter(|x| !x.figure.note.is_empty()) {
            let (note, id) = (x.figure.note.as_str(), x.figure.id.as_str());
            match notes.iter_mut().find(|(n, _)| *n == note) {
                Some((_, ids)) => ids.push(id),
                None => notes.push((note, vec![id])),
            }
        }
        for (note, ids) in notes {
            let ids: Vec<String> = ids.iter().map(|id| format!("`{id}`")).collect();
            s.push_str(&format!("- {}: {note}\n", ids.join(", ")));
        }
        let commands: BTreeSet<&str> = rows
            .iter()
            .map(|x| x.figure.reproduce.as_str())
            .filter(|c| !c.is_empty())
            .collect();
        for c in commands {
            s.push_str(&format!("- Reproduce (root): `{c}`\n"));
        }
        s.push('\n');
        s
    }

    /// The JSON report.
    pub fn json(&self) -> String {
        let figures: Vec<_> = self
            .summaries
            .iter()
            .map(|x| {
                let mut v = x.figure.to_json();
                v["median"] = json!(x.median);
                v["p99"] = json!(x.p99);
                v["min"] = json!(x.min);
                v["max"] = json!(x.max);
                v["n"] = json!(x.figure.samples.len());
                v["ratio"] = json!(x.ratio);
                v["target_met"] = json!(x.target.as_ref().and_then(|t| t.met));
                v["target_missed_by"] = json!(x.target.as_ref().map(|t| t.missed_by));
                v["committed_median"] = json!(x.committed);
                v["worse_than_committed_by"] = json!(x.worse_by);
                v["ratio_worse_than_committed_by"] = json!(x.ratio_worse_by);
                v["regression"] = json!(x.regressed());
                v
            })
            .collect();
        let outcomes: Vec<_> = self
            .outcomes
            .iter()
            .map(|o| {
                json!({"file": o.file, "ok": o.ok, "failed_tests": o.failed,
                       "reason": o.reason, "elapsed_s": o.elapsed.as_secs_f64()})
            })
            .collect();
        let report = json!({
            "command": self.command,
            "partial": self.partial,
            "machine": self.machine.json(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "figures": figures,
            "benchmarks": outcomes,
            "not_measured": self.not_measured,
        });
        serde_json::to_string_pretty(&report).expect("a JSON value always serialises")
    }

    /// The targets' verdicts and the problems, on the terminal.
    pub fn print_verdicts(&self) {
        for x in &self.summaries {
            let target = match &x.target {
                Some(t) => format!("target {}: {}", t.describe(&x.figure.unit), verdict(x)),
                None => String::new(),
            };
            let flag = if x.regressed() { "  REGRESSION" } else { "" };
            println!(
                "  {:<42} {:>12} {:<6} {target}{flag}",
                x.figure.id,
                number(x.median),
                x.figure.unit
            );
        }
        for o in &self.outcomes {
            println!(
                "  {} {} in {:.0} s",
                o.file,
                if o.ok { "ok" } else { "FAILED" },
                o.elapsed.as_secs_f64()
            );
        }
    }
}

/// `met`, `missed by 12%`, or `unknown`.
fn verdict(x: &Summary) -> String {
    match x
        .target
        .as_ref()
        .and_then(|t| t.met.map(|m| (m, t.missed_by)))
    {
        Some((true, _)) => "met".into(),
        Some((false, by)) => format!("**missed by {}**", percent(by)),
        None => "unknown (no baseline)".into(),
    }
}

fn line(x: &Summary) -> String {
    let f = &x.figure;
    let n = f.samples.len();
    // With fewer than 20 samples the p99 is just the maximum.
    let p99 = if n >= 20 { number(x.p99) } else { "—".into() };
    let ratio = match (x.ratio, &f.baseline) {
        (Some(r), Some(b)) => format!("{r:.2}× `{b}`"),
        (None, Some(b)) => format!("`{b}` not measured"),
        _ => "—".into(),
    };
    let target = match &x.target {
        Some(t) => format!("{}: {}", t.describe(&f.unit), verdict(x)),
        None => "—".into(),
    };
    let committed = match (x.committed, x.worse_by) {
        (Some(c), Some(w)) if x.regressed() => format!(
            "{} ({:+.0}%; **ratio {} worse: regression**)",
            number(c),
            w * 100.0,
            percent(x.ratio_worse_by.unwrap_or(0.0))
        ),
        (Some(c), Some(w)) => format!("{} ({:+.0}%)", number(c), w * 100.0),
        (Some(c), None) => number(c),
        _ => "—".into(),
    };
    format!(
        "| `{}` | {} | {} {} | {p99} | {}–{} | {n} | {ratio} | {target} | {committed} |\n",
        f.id,
        f.label,
        number(x.median),
        f.unit,
        number(x.min),
        number(x.max),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(26.0), "26.0");
        assert_eq!(number(1234567.0), "1,234,567");
        assert_eq!(number(-1500.0), "-1,500");
        assert_eq!(number(0.1234), "0.12");
        assert_eq!(number(250.4), "250");
        assert_eq!(number(f64::NAN), "—");
    }
}
