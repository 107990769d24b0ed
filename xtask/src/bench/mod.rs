//! `cargo xtask bench [--quick] [--only SUBSTRING]`: the benchmark report (`BENCHMARKS.md`).
//!
//! Builds the eBPF object and the release workspace, then runs every benchmark file
//! `tests/tests/bench_*.rs` of `meshgate-tests` (found by listing the directory, so new
//! files join without touching this code) one after the other, each test in it alone
//! (`--test-threads=1`), with the release binaries (`MESHGATE_BIN_DIR`). The tests append
//! their figures to one JSON-lines file (`meshgate_tests::bench`); this task turns them
//! into `target/bench/report.{md,json}` and flags regressions against the committed
//! `BENCHMARKS.md`. A failing benchmark file does not stop the others; it is listed in
//! the report and makes the command fail at the end.

mod machine;
mod plot;
mod regress;
mod report;
mod run;
mod summary;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use meshgate_tests::bench::{Figure, OUT_ENV, QUICK_ENV};

use crate::{bench_tools, cmd, ebpf};

/// The failover trial the failover benchmark leaves beside the figures for the timeline
/// plot (`meshgate_tests::timeline`).
const TIMELINE_DATA: &str = "failover-timeline.json";

/// How long one benchmark file may run before it is killed and reported as failed.
const FILE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const FILE_TIMEOUT_QUICK: Duration = Duration::from_secs(6 * 60);

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Fewer repeats and smaller sizes; finishes within 10 minutes.
    #[arg(long, env = "MESHGATE_BENCH_QUICK")]
    quick: bool,
    /// Only benchmark files (`tests/tests/bench_*.rs`) or, failing that, tests whose name
    /// contains this.
    #[arg(long, env = "MESHGATE_BENCH_ONLY")]
    only: Option<String>,
}

impl BenchArgs {
    /// The command line that reproduces this run.
    fn command(&self) -> String {
        let mut c = String::from("cargo xtask bench");
        if self.quick {
            c.push_str(" --quick");
        }
        if let Some(only) = &self.only {
            c.push_str(&format!(" --only {only}"));
        }
        c
    }
}

/// One benchmark file and the test filter it runs with.
struct Selected {
    stem: String,
    filter: String,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if !cmd::is_root() {
        bail!("the benchmarks need network namespaces and XDP: run `sudo cargo xtask bench`");
    }
    let root = cmd::workspace_root();
    let machine = machine::Machine::probe(&root);
    bench_tools::ensure(args.quick)?;
    ebpf::build()?;
    cmd::step("release build of the workspace");
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--release", "--workspace"]),
    )?;

    let selected = select(&discover(&root)?, args.only.as_deref())?;
    let target = target_dir(&root);
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("failed to create {}", out_dir.display()))?;
    let lines = out_dir.join("figures.jsonl");
    for old in [&lines, &out_dir.join(TIMELINE_DATA)] {
        if old.exists() {
            std::fs::remove_file(old)
                .with_context(|| format!("failed to remove the old {}", old.display()))?;
        }
    }
    cmd::step("building the benchmark tests");
    let mut build = Command::new("cargo");
    build
        .current_dir(&root)
        .args(["test", "--release", "-p", "meshgate-tests", "--no-run"]);
    for s in &selected {
        build.args(["--test", &s.stem]);
    }
    // One file that does not compile must not cost the others their figures: each is
    // built again (and fails alone) when it runs.
    if let Err(e) = cmd::run(&mut build) {
        eprintln!("    warning: {e:#}; running the files one by one");
    }

    let env = [
        (OUT_ENV, lines.display().to_string()),
        (QUICK_ENV, if args.quick { "1" } else { "0" }.to_owned()),
        (
            "MESHGATE_BIN_DIR",
            target.join("release").display().to_string(),
        ),
    ];
    let timeout = if args.quick {
        FILE_TIMEOUT_QUICK
    } else {
        FILE_TIMEOUT
    };
    let mut outcomes = Vec::new();
    for s in &selected {
        cmd::step(&format!("benchmark {} ({})", s.stem, s.filter));
        outcomes.push(run::bench_file(&root, &s.stem, &s.filter, &env, timeout)?);
    }

    let figures = read_figures(&lines)?;
    let committed = regress::committed(&root.join("BENCHMARKS.md"))?;
    let summaries = summary::summarise(&figures, &committed);
    let mut plots = Vec::new();
    let throughput = out_dir.join(report::THROUGHPUT_SVG);
    if plot::throughput(&summaries, &throughput).context("failed to plot throughput")? {
        plots.push(report::THROUGHPUT_SVG);
    }
    let timeline = out_dir.join(report::TIMELINE_SVG);
    if plot::failover(&out_dir.join(TIMELINE_DATA), &timeline)
        .context("failed to plot the failover timeline")?
    {
        plots.push(report::TIMELINE_SVG);
    }
    let report = report::Report {
        command: args.command(),
        partial: args.only.is_some(),
        machine,
        elapsed: started.elapsed(),
        summaries,
        outcomes,
        not_measured: regress::not_measured(&committed, &figures),
        plots,
    };
    let md = out_dir.join("report.md");
    let json = out_dir.join("report.json");
    std::fs::write(&md, report.markdown()).with_context(|| format!("write {}", md.display()))?;
    std::fs::write(&json, report.json()).with_context(|| format!("write {}", json.display()))?;
    cmd::step(&format!(
        "report: {} and {} ({} figures, {:.0?}); commit it with `cp {} BENCHMARKS.md && \
         cp {}/*.svg {}/`",
        md.display(),
        json.display(),
        figures.len(),
        started.elapsed(),
        md.display(),
        out_dir.display(),
        report::PLOT_DIR,
    ));
    report.print_verdicts();
    let failed: Vec<&str> = report
        .outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.file.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "benchmark files failed: {} (their figures are missing from the report)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Cargo's target directory for this workspace.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// The stems of `tests/tests/bench_*.rs`, sorted.
fn discover(root: &Path) -> anyhow::Result<Vec<String>> {
    let dir = root.join("tests/tests");
    let mut stems = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".rs")
            && stem.starts_with("bench_")
        {
            stems.push(stem.to_owned());
        }
    }
    stems.sort();
    Ok(stems)
}

/// Files whose name contains `only` run whole; if none does, every file runs only the
/// tests whose name contains it.
fn select(stems: &[String], only: Option<&str>) -> anyhow::Result<Vec<Selected>> {
    if stems.is_empty() {
        bail!("no benchmark files tests/tests/bench_*.rs");
    }
    let whole = |stem: &String| Selected {
        stem: stem.clone(),
        filter: "bench_".into(),
    };
    let Some(only) = only else {
        return Ok(stems.iter().map(whole).collect());
    };
    let by_file: Vec<Selected> = stems
        .iter()
        .filter(|s| s.contains(only))
        .map(whole)
        .collect();
    if !by_file.is_empty() {
        return Ok(by_file);
    }
    Ok(stems
        .iter()
        .map(|stem| Selected {
            stem: stem.clone(),
            filter: only.to_owned(),
        })
        .collect())
}

/// The figures the benchmarks wrote; a malformed line is an error (a benchmark bug).
fn read_figures(path: &Path) -> anyhow::Result<Vec<Figure>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
            Figure::from_json(&v).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stems() -> Vec<String> {
        ["bench_failover", "bench_route_sync", "bench_xdp"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn only_selects_files_first_then_test_names() {
        let all = select(&stems(), None).unwrap();
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|s| s.filter == "bench_"));
        let xdp = select(&stems(), Some("xdp")).unwrap();
        assert_eq!(xdp.len(), 1);
        assert_eq!(xdp[0].stem, "bench_xdp");
        let by_name = select(&stems(), Some("hairpin")).unwrap();
        assert_eq!(by_name.len(), 3);
        assert!(by_name.iter().all(|s| s.filter == "hairpin"));
        assert!(select(&[], None).is_err());
    }
}
