//! The facts about the machine a report was measured on, read at the start of the run.

use std::{path::Path, process::Command};

use serde_json::json;

use crate::cmd;

/// What a reader needs to judge the numbers.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `uname -r`.
    pub kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os: String,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu: String,
    /// CPUs this process may use.
    pub cores: usize,
    /// `MemTotal`, in GiB.
    pub memory_gib: f64,
    /// The load average when the run started (the machine is shared).
    pub load: String,
    /// UTC date and time of the run.
    pub date: String,
    /// The commit measured, with `+dirty` when the tree had changes.
    pub commit: String,
}

impl Machine {
    /// Reads the facts; anything unreadable is `unknown`.
    pub fn probe(root: &Path) -> Self {
        let unknown = || "unknown".to_owned();
        let trimmed = |cmd: &mut Command| cmd::output(cmd).map(|s| s.trim().to_owned());
        let file = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let commit = trimmed(Command::new("git").current_dir(root).args([
            "rev-parse",
            "--short=12",
            "HEAD",
        ]))
        .map(|c| {
            let dirty = trimmed(Command::new("git").current_dir(root).args([
                "status",
                "--porcelain",
                "--untracked-files=no",
            ]))
            .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}+dirty") } else { c }
        })
        .unwrap_or_else(unknown);
        Self {
            kernel: trimmed(Command::new("uname").arg("-r")).unwrap_or_else(unknown),
            os: field(&file("/etc/os-release"), "PRETTY_NAME", '=')
                .map(|s| s.trim_matches('"').to_owned())
                .unwrap_or_else(unknown),
            cpu: field(&file("/proc/cpuinfo"), "model name", ':').unwrap_or_else(unknown),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: field(&file("/proc/meminfo"), "MemTotal", ':')
                .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kib| kib / (1024.0 * 1024.0)),
            load: file("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            date: trimmed(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .unwrap_or_else(unknown),
            commit,
        }
    }

    /// One Markdown paragraph.
    pub fn markdown(&self) -> String {
        format!(
            "Machine: {}, {} cores, {:.0} GiB, {}, kernel {}; load average at the start {}. \
             Run on {} at commit `{}`.",
            self.cpu,
            self.cores,
            self.memory_gib,
            self.os,
            self.kernel,
            self.load,
            self.date,
            self.commit
        )
    }

    /// The same as JSON.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "kernel": self.kernel,
            "os": self.os,
            "cpu": self.cpu,
            "cores": self.cores,
            "memory_gib": self.memory_gib,
            "load": self.load,
            "date": self.date,
            "commit": self.commit,
        })
    }
}

/// The value of the first `key<sep>value` line.
fn field(text: &str, key: &str, sep: char) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(sep)?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_key_value_lines() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(
            field(cpuinfo, "model name", ':').as_deref(),
            Some("AMD EPYC 7B13")
        );
        assert_eq!(
            field("PRETTY_NAME=\"Debian 12\"\n", "PRETTY_NAME", '=').as_deref(),
            Some("\"Debian 12\"")
        );
        assert_eq!(field("", "x", ':'), None);
    }
}
