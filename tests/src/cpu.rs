//! CPU time of processes, from `/proc/PID/stat` (user + system time of all threads, in
//! clock ticks): what a throughput benchmark divides by the bits a process moved. Time a
//! process spends in a syscall counts (a TUN write that runs the kernel's forwarding
//! path inline is the agent's); softirq work the kernel does elsewhere does not.

use std::time::Instant;

use anyhow::Context;

/// User + system CPU seconds of `pid` so far.
pub fn seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let ticks = parse_ticks(&stat).with_context(|| format!("/proc/{pid}/stat: {stat}"))?;
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz.max(1) as f64)
}

/// utime + stime: fields 14 and 15, counted after the parenthesised command name (which
/// may itself hold spaces and parentheses).
fn parse_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Runs `f` and returns its result, the wall time it took and the CPU seconds each of
/// `pids` used meanwhile (in the order given).
pub fn during<T>(
    pids: &[u32],
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, f64, Vec<f64>)> {
    let before = pids
        .iter()
        .map(|p| seconds(*p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let out = f()?;
    let wall = started.elapsed().as_secs_f64();
    let used = pids
        .iter()
        .zip(before)
        .map(|(p, b)| Ok(seconds(*p)? - b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((out, wall, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ticks_past_odd_command_names() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_ticks(stat), Some(300));
        assert_eq!(parse_ticks("garbage"), None);
    }

    #[test]
    fn this_process_uses_cpu_while_it_spins() {
        let me = std::process::id();
        let (_, wall, used) = during(&[me], || {
            let t = Instant::now();
            let mut x = 0u64;
            while t.elapsed().as_millis() < 200 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
            Ok(x)
        })
        .unwrap();
        assert!(wall >= 0.2);
        assert!(used[0] > 0.05, "spinning 200 ms used {} s of CPU", used[0]);
    }
}
