//! Benchmark row 1: failover outage, inbound (device → LAN host) and outbound (LAN host →
//! device) separately, for `kill -9`, `SIGSTOP` and LAN link down of the active replica,
//! packets lost in a graceful handover, and where the `kill -9` time goes. The reference
//! is keepalived (VRRP, default timers) on the same shape of topology, with the same
//! probes. Run by `cargo xtask bench`; each test builds its topology once and repeats.

use std::time::Duration;

use meshgate_tests::{
    bench::{self, Better, Figure},
    failover::{FailoverRun, Fault},
    failover_trials::{TIMELY, Trials, ms, timely_outage},
    ha::Ha,
    reference::vrrp::Vrrp,
    require_root, timeline,
};

const ROW: u8 = 1;
const REPRODUCE: &str = "cargo xtask bench (or, as root after a release build: \
    MESHGATE_BIN_DIR=$PWD/target/release cargo test --release -p meshgate-tests \
    --test bench_failover -- --ignored bench_ --test-threads=1 --nocapture)";
/// The design's bound for a `kill -9`, on the p99 (the report's target column checks medians).
const KILL_TARGET_MS: f64 = 300.0;
/// How long a frozen agent stays stopped: well past the 250 ms lease.
const FREEZE: Duration = Duration::from_millis(1000);

fn kill_trials() -> usize {
    bench::repeats(20)
}

fn other_trials() -> usize {
    bench::repeats(10)
}

/// Records `<prefix>.inbound` and `<prefix>.outbound` outage figures from per-trial
/// `[inbound, outbound]` outages; `remote` names the far end (`device`, `client`).
fn outage_figures(
    prefix: &str,
    what: &str,
    remote: &str,
    runs: &[[Duration; 2]],
    note: &str,
    adjust: impl Fn(Figure, &str) -> Figure,
) -> anyhow::Result<()> {
    let directions = [
        ("inbound", format!("{remote} → LAN host")),
        ("outbound", format!("LAN host → {remote}")),
    ];
    for (side, (dir, label)) in directions.iter().enumerate() {
        let figure = Figure::new(
            &format!("{prefix}.{dir}"),
            ROW,
            &format!("{what} outage, {label}"),
            "ms",
            Better::Lower,
        )
        .samples(runs.iter().map(|r| ms(r[side])).collect())
        .reproduce(REPRODUCE)
        .note(note);
        bench::record(&adjust(figure, dir))?;
    }
    Ok(())
}

/// Per trial, the outage each way, counting datagrams delivered over 100 ms late as lost.
fn outages(runs: &[FailoverRun]) -> Vec<[Duration; 2]> {
    runs.iter()
        .map(|r| {
            [
                timely_outage(&r.inbound, TIMELY),
                timely_outage(&r.outbound, TIMELY),
            ]
        })
        .collect()
}

/// Fails when no trial of a fault kind failed over, with each failed trial's reason.
fn require_runs(what: &str, trials: &Trials) -> anyhow::Result<()> {
    anyhow::ensure!(
        !trials.runs.is_empty(),
        "no {what} trial failed over: {}",
        trials.failure_note()
    );
    Ok(())
}

#[test]
#[ignore = "benchmark, needs root: run by cargo xtask bench"]
fn bench_failover_kill9() -> anyhow::Result<()> {
    require_root()?;
    let mut ha = Ha::started(2)?;
    let trials = ha.trials(Fault::Kill, kill_trials(), 9300)?;
    require_runs("kill -9", &trials)?;
    let note = trials.note(&format!(
        "per-trial longest gap in 500/s numbered UDP probes (a datagram over 100 ms late \
         counts as lost); the target is p99 ≤ {KILL_TARGET_MS} ms (the report's p99 \
         column); replicas alternate"
    ));
    outage_figures(
        "failover.kill9",
        "kill -9",
        "device",
        &outages(&trials.runs),
        &note,
        |f, dir| {
            f.baseline(&format!("keepalived.kill9.{dir}"))
                .target("<=", KILL_TARGET_MS)
        },
    )?;
    // The trial with the median inbound outage, for the report's timeline plot.
    let mut by_outage: Vec<(Duration, &FailoverRun)> = trials
        .runs
        .iter()
        .map(|r| (timely_outage(&r.inbound, TIMELY), r))
        .collect();
    by_outage.sort_by_key(|(outage, _)| *outage);
    if let Some((_, run)) = by_outage.get(by_outage.len() / 2) {
        bench::artifact("failover-timeline.json", &timeline::failover(run))?;
    }
    breakdown(&trials.runs)
}

/// Where a `kill -9`'s time goes, per trial: detection (injection → the coordinator's
/// `lease_expired`), decision (→ `promoted`), notification (→ the successor starts its
/// flip), then the flip's own steps.
fn breakdown(runs: &[FailoverRun]) -> anyhow::Result<()> {
    let mut parts: Vec<(&str, &str, Vec<f64>)> = vec![
        (
            "detection",
            "detection (kill → lease expired at the coordinator)",
            vec![],
        ),
        (
            "decision",
            "decision (lease expired → standby promoted)",
            vec![],
        ),
        (
            "notify",
            "notification (promoted → successor starts its flip)",
            vec![],
        ),
        (
            "route_flip",
            "route flip (policy rule to the active table)",
            vec![],
        ),
        ("xdp_role", "XDP map update (role, epoch)", vec![]),
        ("vip_acquire", "VIP added to the LAN interface", vec![]),
        ("garp", "first gratuitous ARP sent", vec![]),
    ];
    for run in runs {
        let expired = run.event_ms("lease_expired");
        let promoted = run.event_ms("promoted");
        let steps = run.flip_steps();
        let flip_start = steps.first().map(|s| s.1);
        let step = |name: &str| steps.iter().find(|s| s.0 == name).map(|s| s.2);
        let values = [
            expired,
            expired.zip(promoted).map(|(e, p)| p - e),
            promoted.zip(flip_start).map(|(p, f)| f - p),
            step("route-flip"),
            step("xdp-role"),
            step("vip-acquire"),
            step("garp"),
        ];
        for (part, value) in parts.iter_mut().zip(values) {
            if let Some(v) = value {
                part.2.push(v);
            }
        }
    }
    for (id, label, samples) in parts {
        if samples.is_empty() {
            println!("bench failover.kill9.{id}: no trial reported it");
            continue;
        }
        bench::record(
            &Figure::new(
                &format!("failover.kill9.{id}"),
                ROW,
                &format!("kill -9 breakdown: {label}"),
                "ms",
                Better::Lower,
            )
            .samples(samples)
            .reproduce(REPRODUCE)
            .note(
                "coordinator events and the successor's flip steps on one clock \
                 (FailoverRun); the coordinator detects only after --lease-ms (250)",
            ),
        )?;
    }
    Ok(())
}

#[test]
#[ignore = "benchmark, needs root: run by cargo xtask bench"]
fn bench_failover_keepalived_kill9() -> anyhow::Result<()> {
    require_root()?;
    let mut vrrp = Vrrp::new()?;
    let mut runs = Vec::new();
    for t in 0..kill_trials() {
        let port = 9500 + 2 * u16::try_from(t)?;
        let takeover = vrrp.measure_kill(port, Duration::from_millis(1000))?;
        let outage = [
            timely_outage(&takeover.inbound, TIMELY),
            timely_outage(&takeover.outbound, TIMELY),
        ];
        eprintln!(
            "keepalived trial {t}: {} → {}: outage in {} ms, out {} ms",
            takeover.from,
            takeover.to,
            outage[0].as_millis(),
            outage[1].as_millis()
        );
        runs.push(outage);
    }
    outage_figures(
        "keepalived.kill9",
        "keepalived (VRRP, advert_int 1) master killed",
        "client",
        &runs,
        "Debian keepalived, two routers in one sync group sharing a WAN and a LAN VIP, \
         nopreempt, default timers; a trial SIGKILLs the master's keepalived and downs its \
         links at once (a dead gateway: killing keepalived alone leaves the kernel \
         forwarding on the old master); same 500/s probes both ways",
        |f, _| f,
    )
}

#[test]
#[ignore = "benchmark, needs root: run by cargo xtask bench"]
fn bench_failover_sigstop() -> anyhow::Result<()> {
    require_root()?;
    let note = format!(
        "the active agent SIGSTOPped for {} ms (past the 250 ms lease), then SIGCONT; \
         datagrams it held and let go on waking count as lost (over 100 ms late)",
        FREEZE.as_millis()
    );
    fault_outages(
        Fault::Freeze(FREEZE),
        9700,
        ("failover.sigstop", "SIGSTOP"),
        &note,
    )
}

#[test]
#[ignore = "benchmark, needs root: run by cargo xtask bench"]
fn bench_failover_linkdown() -> anyhow::Result<()> {
    require_root()?;
    fault_outages(
        Fault::LinkDown,
        9800,
        ("failover.linkdown", "LAN link down"),
        "the active's LAN link set down (a requested handover), up again between trials",
    )
}

/// Repeats `fault` on a fresh two-replica node and records its outage both ways.
fn fault_outages(
    fault: Fault,
    port: u16,
    (id, what): (&str, &str),
    note: &str,
) -> anyhow::Result<()> {
    let mut ha = Ha::started(2)?;
    let trials = ha.trials(fault, other_trials(), port)?;
    require_runs(what, &trials)?;
    let note = trials.note(note);
    outage_figures(id, what, "device", &outages(&trials.runs), &note, |f, _| f)
}

#[test]
#[ignore = "benchmark, needs root: run by cargo xtask bench"]
fn bench_failover_drain() -> anyhow::Result<()> {
    require_root()?;
    let mut ha = Ha::started(2)?;
    let trials = ha.trials(Fault::Drain, other_trials(), 9900)?;
    require_runs("graceful handover", &trials)?;
    let lost = trials
        .runs
        .iter()
        .map(|r| (r.inbound.lost() + r.outbound.lost()) as f64)
        .collect();
    bench::record(
        &Figure::new(
            "failover.drain.lost",
            ROW,
            "graceful handover (SIGTERM): packets lost, both ways",
            "packets",
            Better::Lower,
        )
        .samples(lost)
        .target("<=", 0.0)
        .reproduce(REPRODUCE)
        .note(&trials.note(
            "numbered UDP probes at 500/s each way, lost = sent − received over both \
             directions",
        )),
    )
}
