//! `cargo xtask test`: the README's test command.
//!
//! Root-only tests (network namespaces, XDP attach, BPF_PROG_TEST_RUN) are marked
//! `#[ignore = "needs root: …"]`, so a plain `cargo test` lists them as ignored with the
//! reason instead of passing them silently. As root this task runs them afterwards, one at
//! a time, because they share the kernel's network state.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{cmd, ebpf, setup};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip `cargo xtask setup` (for a machine known to be ready).
    #[arg(long, env = "MESHGATE_SKIP_SETUP")]
    skip_setup: bool,
    /// Only run tests whose name contains this filter.
    filter: Option<String>,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    if !args.skip_setup {
        setup::run()?;
    }
    ebpf::build()?;

    cmd::step("workspace tests (unit tests, loopback integration tests)");
    let unprivileged = cargo_test(args.filter.as_deref(), &[])?;
    let mut total = Tally {
        passed: unprivileged.passed,
        failed: unprivileged.failed,
        skipped: 0,
    };

    if cmd::is_root() {
        cmd::step("root-only tests (network namespaces, XDP), one at a time");
        // `bench_*` tests are measurements (`cargo xtask bench`), not pass/fail checks.
        let root = cargo_test(
            args.filter.as_deref(),
            &["--ignored", "--test-threads=1", "--skip", "bench_"],
        )?;
        total.passed += root.passed;
        total.failed += root.failed;
    } else {
        total.skipped = unprivileged.skipped;
        cmd::step(&format!(
            "{} root-only tests SKIPPED: not running as root",
            total.skipped
        ));
        eprintln!("    they need network namespaces and CAP_BPF: run `sudo cargo xtask test`");
    }
    // One closing line over every test binary, so the result is not the last binary's.
    println!(
        "xtask: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    if total.failed > 0 {
        bail!("{} tests failed", total.failed);
    }
    Ok(())
}

/// Test counts summed over every `test result:` line of a `cargo test` run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    /// Tests marked `#[ignore]` (root-only) that the run did not execute.
    skipped: u64,
}

impl Tally {
    /// Adds one libtest summary line: `test result: ok. 3 passed; 0 failed; 1 ignored; …`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.skipped += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test` for the workspace (lib, bin and test targets) with `extra` passed to
/// the test binaries, echoing its output, and returns the summed results. A build failure
/// is an error; failed tests are counted (the caller decides).
fn cargo_test(filter: Option<&str>, extra: &[&str]) -> anyhow::Result<Tally> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(cmd::workspace_root())
        .args([
            "test",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
            "--no-fail-fast",
            "--",
        ])
        .args(filter)
        .args(extra)
        .stdout(Stdio::piped());
    eprintln!("    $ {cmd:?}");
    let mut child = cmd.spawn().context("failed to start cargo test")?;
    let stdout = child.stdout.take().expect("stdout is piped above");
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("failed to read cargo test's output")?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait().context("failed to wait for cargo test")?;
    if !status.success() && tally.failed == 0 {
        bail!("cargo test failed ({status}) before any test failed: see the build errors above");
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_libtest_summary_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add_line(
            "test result: FAILED. 1 passed; 4 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 5 tests");
        assert_eq!(
            t,
            Tally {
                passed: 4,
                failed: 4,
                skipped: 2
            }
        );
    }
}
