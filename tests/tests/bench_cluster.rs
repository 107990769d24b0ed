//! Benchmark row 1, cluster part: the outage a `kill -9` of a *coordinator* costs, against
//! the replica `kill -9` row of the same run. Three etcd members and three coordinators
//! (`meshgate_tests::cluster`), a device and a two-replica node, every agent connected to
//! every coordinator. Each trial kills the coordinator that carries the active replica's
//! traffic, measures both directions with numbered UDP probes, checks that the same
//! replica stays active in the same epoch (a needless failover or a split brain is a
//! failure, not a sample), then restarts the coordinator and waits until every agent is
//! connected to all three again.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use meshgate_tests::bench::{self, Better, Figure};
use meshgate_tests::cluster::Cluster;
use meshgate_tests::failover_trials::{TIMELY, ms, timely_outage};
use meshgate_tests::ha::HOST_IP;
use meshgate_tests::probe::Probe;
use meshgate_tests::require_root;

const ROW: u8 = 1;
const REPRODUCE: &str = "cargo xtask bench (or, as root after a release build: \
    MESHGATE_BIN_DIR=$PWD/target/release cargo test --release -p meshgate-tests \
    --test bench_cluster -- --ignored bench_ --test-threads=1 --nocapture)";
/// The design's bound for a coordinator `kill -9`, on the p99.
const TARGET_MS: f64 = 300.0;
/// Probes run this long after the kill: past any move to another coordinator.
const AFTER: Duration = Duration::from_millis(2500);

#[test]
#[ignore = "benchmark, needs root: run by cargo xtask bench"]
fn bench_cluster_coordinator_kill9() -> anyhow::Result<()> {
    require_root()?;
    let mut c = Cluster::start()?;
    let trials = bench::repeats(20);
    let run = |c: &mut Cluster| -> anyhow::Result<Vec<[Duration; 2]>> {
        let d = c.laptop_and_node()?;
        let (active, epoch) = c.active()?;
        let mut runs = Vec::new();
        for trial in 0..trials {
            let node = c.node()?;
            let primary = node.replicas[active]
                .conns()?
                .1
                .context("the active sends nowhere")?;
            let site = Cluster::site_of(&primary)?;
            let dev = &c.devices[d];
            let ip = dev.mesh_ip()?;
            let port = 9400 + 2 * u16::try_from(trial)?;
            let probe = Probe::start(
                ("laptop", &dev.ns, &ip),
                ("host", &node.host, HOST_IP),
                port,
            )?;
            std::thread::sleep(Duration::from_millis(500));
            let killed = Instant::now();
            c.sites.kill_coordinator(site);
            std::thread::sleep(AFTER);
            let (inbound, outbound) = probe.stop()?;
            let after = c.active()?;
            ensure!(
                after == (active, epoch),
                "trial {trial}: killing {primary} changed the active from {:?} to {after:?}",
                (active, epoch)
            );
            let pair = [
                timely_outage(&inbound, TIMELY),
                timely_outage(&outbound, TIMELY),
            ];
            println!(
                "trial {trial}: kill -9 {primary}: outage {} / {} ms ({:?} after the kill), same active",
                pair[0].as_millis(),
                pair[1].as_millis(),
                killed.elapsed()
            );
            runs.push(pair);
            c.sites.start_coordinator(site)?;
            c.wait_all_connected()?;
        }
        Ok(runs)
    };
    let runs = run(&mut c).with_context(|| c.logs())?;
    let note = format!(
        "{} trials; per-trial longest gap in 500/s numbered UDP probes (a datagram over \
         100 ms late counts as lost), device ↔ LAN host through an HA node; each trial \
         kills the coordinator carrying the active replica's traffic, then restarts it; \
         0 needless failovers (the same active in the same epoch after every trial); the \
         target is p99 ≤ {TARGET_MS} ms; the baseline is the replica kill -9 of this run",
        runs.len()
    );
    for (side, dir, label) in [
        (0, "inbound", "device → LAN host"),
        (1, "outbound", "LAN host → device"),
    ] {
        bench::record(
            &Figure::new(
                &format!("cluster.coordinator_kill9.{dir}"),
                ROW,
                &format!("coordinator kill -9 outage (3-member cluster), {label}"),
                "ms",
                Better::Lower,
            )
            .samples(runs.iter().map(|r| ms(r[side])).collect())
            .baseline(&format!("failover.kill9.{dir}"))
            .target("<=", TARGET_MS)
            .reproduce(REPRODUCE)
            .note(&note),
        )?;
    }
    Ok(())
}
