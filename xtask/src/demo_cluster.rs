//! `cargo xtask demo --cluster`: the demo's story on a coordinator cluster. Three sites
//! in network namespaces (an etcd member and a coordinator with `--etcd` each), a device
//! and an HA node of two replicas whose agents connect to every coordinator. Probes run
//! device ↔ LAN host while the coordinator carrying the active replica's traffic is
//! killed with `kill -9` (the active stays active, in the same epoch), and again while
//! the active replica itself is killed (the standby is promoted in a higher epoch). Every
//! namespace and process goes at the end, on error and on Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use meshgate_tests::cluster::Cluster;
use meshgate_tests::ha::HOST_IP;
use meshgate_tests::probe::{FlowReport, Probe};
use meshgate_tests::wait_until;

use crate::demo::{say, timed};

/// Probes run this long before the kill, and this long after it.
const BEFORE: Duration = Duration::from_millis(800);
const AFTER: Duration = Duration::from_millis(2500);

pub fn show() -> anyhow::Result<()> {
    let mut c = timed(
        "three sites: an etcd member and a coordinator with --etcd each",
        Cluster::start,
    )?;
    let result = story(&mut c);
    if result.is_err() {
        eprintln!("{}", c.logs());
    }
    print!("tearing down the namespaces … ");
    drop(c);
    println!("done");
    result
}

fn story(c: &mut Cluster) -> anyhow::Result<()> {
    let d = timed("a device, laptop", || c.add_device("laptop"))?;
    timed("an HA node of two replicas, LAN 192.168.50.0/24", || {
        c.add_node(2)
    })?;
    let all = ["c1", "c2", "c3"];
    timed("every agent holds a session with every coordinator", || {
        c.devices[d].wait_conns(&all)?;
        for r in &c.node()?.replicas {
            r.wait_conns(&all)?;
        }
        c.wait_lan(d)
    })?;
    let cluster = c.sites.status(0)?;
    say("the cluster (`GET /api/v1/cluster`)");
    for m in cluster["members"].as_array().into_iter().flatten() {
        println!(
            "    {:<4} {:<8} public {}",
            m["name"].as_str().unwrap_or("?"),
            m["status"].as_str().unwrap_or("?"),
            m["public_addrs"]
        );
    }
    println!(
        "    elections decided by {}",
        cluster["decider"].as_str().unwrap_or("nobody yet")
    );

    let (active, epoch) = c.active()?;
    let node = c.node()?;
    let replica = node.replicas[active].name.clone();
    let carrier = node.replicas[active]
        .conns()?
        .1
        .context("the active replica sends through no coordinator")?;
    say(&format!(
        "kill -9 of coordinator {carrier}, which carries active replica {replica}'s traffic"
    ));
    let (inbound, outbound) = probe_across(c, d, 7400, |c| {
        c.sites.kill_coordinator(Cluster::site_of(&carrier)?);
        Ok(())
    })?;
    print_outage(&inbound, &outbound);
    let after = c.active()?;
    println!(
        "    active before: {replica} in epoch {epoch}; after: {} in epoch {}{}",
        c.node()?.replicas[after.0].name,
        after.1,
        if after == (active, epoch) {
            " (no failover)"
        } else {
            " !! changed"
        }
    );
    ensure!(
        after == (active, epoch),
        "the coordinator's death moved the active"
    );

    // A member that died counts until its etcd lease expires (the member TTL, 5 s):
    // until then no promotion can prove it stopped granting, so a replica failover
    // right after a coordinator's death waits for that (see `election::quorum`).
    let t = Instant::now();
    timed(
        &format!("{carrier} leaves the member list (its etcd lease expires)"),
        || {
            wait_until(Duration::from_secs(15), "the dead member gone", || {
                let s = c.sites.status(0).or_else(|_| c.sites.status(1))?;
                Ok(s["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["name"] == carrier.as_str() && m["status"] != "up"))
            })
        },
    )?;
    println!(
        "    {:.1} s after its death",
        t.elapsed().as_secs_f64() + AFTER.as_secs_f64()
    );
    say(&format!(
        "kill -9 of the active replica {replica}, with {carrier} still down"
    ));
    let (inbound, outbound) = probe_across(c, d, 7500, |c| {
        let node = c.node.as_mut().context("no node")?;
        node.replicas[active].agent.process.kill();
        Ok(())
    })?;
    print_outage(&inbound, &outbound);
    let (now, new_epoch) = active_except(c, active)?;
    println!(
        "    {} promoted in epoch {new_epoch} (was {epoch})",
        c.node()?.replicas[now].name
    );
    ensure!(now != active && new_epoch > epoch, "no standby took over");
    Ok(())
}

/// The active replica other than `dead` (whose agent no longer answers), and its epoch.
fn active_except(c: &Cluster, dead: usize) -> anyhow::Result<(usize, u64)> {
    for (i, r) in c.node()?.replicas.iter().enumerate() {
        if i == dead {
            continue;
        }
        let s = r.status()?;
        if s["forwarding"] == "active" {
            return Ok((i, s["epoch"].as_u64().context("no epoch")?));
        }
    }
    anyhow::bail!("no replica is active")
}

/// Probes device ↔ LAN host across `fault`; returns (inbound, outbound) reports.
fn probe_across(
    c: &mut Cluster,
    device: usize,
    port: u16,
    fault: impl FnOnce(&mut Cluster) -> anyhow::Result<()>,
) -> anyhow::Result<(FlowReport, FlowReport)> {
    let dev = &c.devices[device];
    let ip = dev.mesh_ip()?;
    let host = &c.node()?.host;
    let probe = Probe::start(("laptop", &dev.ns, &ip), ("host", host, HOST_IP), port)?;
    std::thread::sleep(BEFORE);
    let at = Instant::now();
    fault(c)?;
    std::thread::sleep(AFTER);
    let reports = probe.stop()?;
    for r in [&reports.0, &reports.1] {
        ensure!(
            r.first_delivered_after(at + AFTER / 2).is_some(),
            "{}: traffic did not come back",
            r.label
        );
    }
    Ok(reports)
}

fn print_outage(inbound: &FlowReport, outbound: &FlowReport) {
    for (dir, flow) in [
        ("laptop → LAN host", inbound),
        ("LAN host → laptop", outbound),
    ] {
        println!(
            "    outage {dir}  {:>4} ms  ({} of {} probes lost)",
            flow.outage().as_millis(),
            flow.lost(),
            flow.sent,
        );
    }
}
