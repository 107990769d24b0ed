//! Running one benchmark file: `cargo test` on it with the benchmark environment, its
//! output echoed, failed tests picked from libtest's lines, and a deadline after which
//! the whole process tree is killed (a hung benchmark must not hang the report).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context;

/// What running one benchmark file gave.
#[derive(Debug)]
pub struct Outcome {
    /// The file's stem, e.g. `bench_xdp`.
    pub file: String,
    /// Whether every selected test passed.
    pub ok: bool,
    /// The tests that failed (empty when the binary failed before any test, or timed out).
    pub failed: Vec<String>,
    /// Why it failed, when not a test's own failure.
    pub reason: Option<String>,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Runs the ignored tests of `tests/tests/<stem>.rs` that match `filter`, one at a time.
pub fn bench_file(
    root: &Path,
    stem: &str,
    filter: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["test", "--release", "-p", "meshgate-tests", "--test", stem])
        .args(["--", "--ignored", filter, "--test-threads=1", "--nocapture"])
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    eprintln!("    $ {cmd:?}");
    let started = Instant::now();
    let mut child = cmd.spawn().context("failed to start cargo test")?;
    let stdout = child.stdout.take().expect("stdout is piped above");
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("failed to wait for cargo test")? {
            break status;
        }
        if started.elapsed() > timeout {
            timed_out = true;
            kill_tree(child.id());
            break child.wait().context("failed to reap cargo test")?;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The pipe closes once every process holding it is gone.
    let _ = reader.join();
    let failed = failed_tests(lines.try_iter());
    let reason = if timed_out {
        Some(format!("killed after {timeout:?}"))
    } else if !status.success() && failed.is_empty() {
        Some(format!(
            "cargo test failed ({status}) before any test failed"
        ))
    } else {
        None
    };
    Ok(Outcome {
        file: stem.to_owned(),
        ok: status.success() && !timed_out,
        failed,
        reason,
        elapsed: started.elapsed(),
    })
}

/// The failed tests named by libtest: `test bench_x ... FAILED`, or — when the test's
/// own output (`--nocapture`) split that line — the list under `failures:`.
fn failed_tests(lines: impl Iterator<Item = String>) -> Vec<String> {
    let mut failed: Vec<String> = Vec::new();
    let mut in_list = false;
    for line in lines {
        let name = if line == "failures:" {
            in_list = true;
            None
        } else if in_list && line.starts_with("    ") && !line.trim().contains(' ') {
            Some(line.trim().to_owned())
        } else {
            in_list &= !line.starts_with("test result:");
            line.strip_prefix("test ")
                .and_then(|rest| rest.rsplit_once(" ... "))
                .filter(|(_, verdict)| verdict.trim() == "FAILED")
                .map(|(name, _)| name.trim().to_owned())
        };
        if let Some(name) = name.filter(|n| !failed.contains(n)) {
            failed.push(name);
        }
    }
    failed
}

/// SIGKILLs `pid` and every descendant, children first found from `/proc/*/stat`.
fn kill_tree(pid: u32) {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        pids.extend(children(pids[i]));
        i += 1;
    }
    for p in pids.iter().rev() {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
}

fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| ppid(&stat))
                == Some(parent)
        })
        .collect()
}

/// The parent pid from `/proc/<pid>/stat` (after the parenthesised command name, which
/// may itself contain spaces and parentheses).
fn ppid(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_failed_tests_from_libtest_lines() {
        let out = |text: &str| failed_tests(text.lines().map(String::from));
        assert_eq!(
            out(
                "test bench_a ... FAILED\ntest bench_b ... ok\ntest result: FAILED. 1 passed; 1 failed"
            ),
            vec!["bench_a"]
        );
        // --nocapture: the verdict lands on a later line; the list names it.
        assert_eq!(
            out(
                "test bench_a ... bench a.x median 1\nFAILED\n\nfailures:\n    bench_a\n\ntest result: FAILED."
            ),
            vec!["bench_a"]
        );
        assert!(out("test bench_a ... ok\ntest result: ok.").is_empty());
    }

    #[test]
    fn reads_the_parent_pid_past_odd_command_names() {
        assert_eq!(ppid("42 (a (b) c) S 7 42 42 0"), Some(7));
        assert_eq!(ppid("garbage"), None);
    }
}
