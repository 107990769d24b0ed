//! A `perf record` of running processes while a closure runs, summarised as the share of
//! samples in the kernel, the hottest symbols, and how the samples spread over threads:
//! what a throughput benchmark prints beside its figures to say where the time goes.
//! Flat profiles (no call graphs): release builds keep no frame pointers, and a DWARF
//! unwind at this rate would cost more than it measures.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;

/// Samples per second and thread.
const HZ: &str = "999";

/// One line of a flat profile: a symbol (or a thread) and its share of the samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// The symbol, `[k]` kernel or `[.]` user prefix kept, or `tid:comm` for a thread.
    pub name: String,
    /// Percent of all samples of the profile.
    pub percent: f64,
}

/// What a profile of some processes shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Samples taken.
    pub samples: u64,
    /// Percent of the samples that were in the kernel (syscalls, copies, the network
    /// stack a write runs inline).
    pub kernel_percent: f64,
    /// The hottest symbols, hottest first.
    pub top: Vec<Share>,
    /// Threads by their share of the samples, busiest first.
    pub threads: Vec<Share>,
}

impl Profile {
    /// `12% [k] copy_user, 8% [.] aes_gcm, …` for the first `n` symbols.
    pub fn summary(&self, n: usize) -> String {
        let top: Vec<String> = self
            .top
            .iter()
            .take(n)
            .map(|s| format!("{:.0}% {}", s.percent, s.name))
            .collect();
        top.join(", ")
    }

    /// Threads with at least `percent` of the samples.
    pub fn busy_threads(&self, percent: f64) -> Vec<&Share> {
        self.threads
            .iter()
            .filter(|t| t.percent >= percent)
            .collect()
    }
}

/// Runs `f` while `perf record` samples every thread of `pids`, writing its data to
/// `data`, which [`profile`] then reads.
pub fn record<T>(
    pids: &[u32],
    data: &Path,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    anyhow::ensure!(!pids.is_empty(), "no process to profile");
    let mut perf = Command::new("perf")
        .args(["record", "--quiet", "-F", HZ, "-p", &list(pids), "-o"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start `perf record` (Debian package linux-perf)")?;
    // perf attaches to every thread before it samples; give it that moment.
    std::thread::sleep(Duration::from_millis(300));
    let out = f();
    stop(&mut perf)?;
    out
}

/// The profile of the processes `pids` (a subset of those recorded) in `data`; shares are
/// of their samples only.
pub fn profile(data: &Path, pids: &[u32]) -> anyhow::Result<Profile> {
    let symbols = report(data, pids, "dso,sym")?;
    let threads = report(data, pids, "pid")?;
    parse(&symbols, &threads)
}

fn list(pids: &[u32]) -> String {
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    list.join(",")
}

/// SIGINT makes perf write its data and exit.
fn stop(perf: &mut Child) -> anyhow::Result<()> {
    use std::io::Read as _;
    // SAFETY: kill only sends a signal to the child we started.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    let status = perf.wait().context("wait for perf record")?;
    let mut err = String::new();
    if let Some(mut e) = perf.stderr.take() {
        e.read_to_string(&mut err).ok();
    }
    // perf ends by the signal once it has written its data.
    let by_sigint = std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGINT);
    anyhow::ensure!(
        status.success() || by_sigint,
        "perf record failed ({status}): {}",
        err.trim()
    );
    Ok(())
}

fn report(data: &Path, pids: &[u32], sort: &str) -> anyhow::Result<String> {
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-n",
            "--percentage",
            "relative",
        ])
        .args(["--pid", &list(pids), "--sort", sort, "-i"])
        .arg(data)
        .output()
        .context("run perf report")?;
    anyhow::ensure!(
        out.status.success(),
        "perf report --sort {sort}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads `perf report --stdio -n` output sorted by `dso,sym` and by `pid`.
fn parse(symbols: &str, threads: &str) -> anyhow::Result<Profile> {
    let mut samples = 0;
    let mut top = Vec::new();
    let mut kernel_percent = 0.0;
    for (percent, count, rest) in rows(symbols) {
        samples += count;
        // `[kernel.kallsyms]  [k] copy_user…` or `meshgate-agent  [.] aes…`: the symbol
        // starts at its `[k]`/`[.]` mark.
        let Some(at) = rest.find("[k] ").or_else(|| rest.find("[.] ")) else {
            continue;
        };
        let name = rest[at..].trim().to_owned();
        if name.starts_with("[k]") {
            kernel_percent += percent;
        }
        top.push(Share { name, percent });
    }
    anyhow::ensure!(
        samples > 0,
        "perf recorded no samples of these processes; its report:\n{}",
        symbols.chars().take(1500).collect::<String>()
    );
    let threads = rows(threads)
        .map(|(percent, _, rest)| Share {
            name: rest.trim().to_owned(),
            percent,
        })
        .collect();
    Ok(Profile {
        samples,
        kernel_percent,
        top,
        threads,
    })
}

/// The report's data rows: percent, sample count and the rest of the line.
fn rows(report: &str) -> impl Iterator<Item = (f64, u64, &str)> {
    report
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (p, rest) = l.trim_start().split_once('%')?;
            let (count, rest) = rest.trim_start().split_once(' ')?;
            Some((p.parse().ok()?, count.parse().ok()?, rest))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYMBOLS: &str = "\
# Samples: 12K of event 'cpu-clock:ppp'
# Event count (approx.): 12000000000
#
# Overhead  Shared Object      Symbol
# ........  .................  ..........................
#
    40.00%          4800  [kernel.kallsyms]  [k] copy_user_enhanced_fast_string
    25.50%          3060  meshgate-agent     [.] aes_gcm_enc_update
     4.50%           540  libc.so.6          [.] __memmove_avx_unaligned_erms
";
    const THREADS: &str = "\
# Samples: 12K of event 'cpu-clock:ppp'
#
    60.00%          7200  4242:tokio-runtime-w
    38.00%          4560  4243:tokio-runtime-w
     2.00%           240  4241:meshgate-coordi
";

    #[test]
    fn a_report_reads_as_kernel_share_symbols_and_threads() {
        let p = parse(SYMBOLS, THREADS).unwrap();
        assert_eq!(p.samples, 8_400);
        assert!((p.kernel_percent - 40.0).abs() < 1e-9);
        assert_eq!(p.top.len(), 3);
        assert_eq!(p.top[1].name, "[.] aes_gcm_enc_update");
        assert_eq!(
            p.summary(2),
            "40% [k] copy_user_enhanced_fast_string, 26% [.] aes_gcm_enc_update"
        );
        let busy: Vec<&str> = p
            .busy_threads(10.0)
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(busy, ["4242:tokio-runtime-w", "4243:tokio-runtime-w"]);
        assert!(parse("# Samples: 0\n", THREADS).is_err());
    }

    #[test]
    #[ignore = "needs perf (linux-perf) and root: run by hand"]
    fn a_busy_process_profiles_as_mostly_kernel_time() {
        let mut dd = std::process::Command::new("dd")
            .args(["if=/dev/zero", "of=/dev/null", "bs=64k", "count=100000000"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("dd.data");
        record(&[dd.id()], &data, || {
            std::thread::sleep(Duration::from_millis(700));
            Ok(())
        })
        .unwrap();
        let p = profile(&data, &[dd.id()]);
        dd.kill().ok();
        dd.wait().ok();
        let p = p.unwrap();
        assert!(p.samples > 100, "{p:?}");
        assert!(p.kernel_percent > 50.0, "{p:?}");
    }
}
