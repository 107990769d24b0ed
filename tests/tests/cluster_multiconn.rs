//! Agents connected to every coordinator of a cluster (three etcd members, three
//! coordinators with `--etcd`, see `meshgate_tests::cluster`): each agent holds one
//! session per coordinator, sends through one, receives from all, and moves its traffic
//! when the coordinator carrying it is killed — with no coordinator-to-coordinator hop,
//! since every coordinator relays over its own connection to the destination.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use meshgate_tests::cluster::Cluster;
use meshgate_tests::ha::HOST_IP;
use meshgate_tests::probe::{FlowReport, Probe};
use meshgate_tests::require_root;

const ALL: [&str; 3] = ["c1", "c2", "c3"];
/// Traffic must be back long before QUIC's 10 s idle timeout would close the dead
/// connection: what is measured is the agents' own move, not a reconnect.
const RESUMES_WITHIN: Duration = Duration::from_secs(2);

fn report(what: &str, r: &FlowReport) {
    println!("{what}: {}", r.summary());
}

/// The outage of a flow across the kill, checked to have ended.
fn outage_after(r: &FlowReport, killed: Instant) -> anyhow::Result<Duration> {
    let (seq, _, _) = r
        .first_delivered_after(killed + RESUMES_WITHIN)
        .with_context(|| format!("{}: nothing delivered after the kill", r.label))?;
    ensure!(
        r.sent - seq > 10,
        "{}: delivery resumed only at the end",
        r.label
    );
    Ok(r.outage())
}

#[test]
#[ignore = "needs root: network namespaces"]
fn devices_hold_a_session_with_every_coordinator_and_survive_the_kill_of_theirs()
-> anyhow::Result<()> {
    require_root()?;
    let mut c = Cluster::start()?;
    let run = |c: &mut Cluster| -> anyhow::Result<()> {
        let (d1, d2) = (c.add_device("d1")?, c.add_device("d2")?);
        for d in [d1, d2] {
            c.devices[d].wait_conns(&ALL)?;
        }
        let primary = c.devices[d1]
            .conns()?
            .1
            .context("d1 sends through no coordinator")?;
        let (ip1, ip2) = (c.devices[d1].mesh_ip()?, c.devices[d2].mesh_ip()?);
        let (a, b) = (&c.devices[d1], &c.devices[d2]);
        let probe = Probe::start(("d1", &a.ns, &ip1), ("d2", &b.ns, &ip2), 7100)?;
        std::thread::sleep(Duration::from_millis(800));
        let killed = Instant::now();
        c.sites.kill_coordinator(Cluster::site_of(&primary)?);
        std::thread::sleep(RESUMES_WITHIN + Duration::from_millis(800));
        let (fwd, back) = probe.stop()?;
        report("d1 → d2", &fwd);
        report("d2 → d1", &back);
        let (o1, o2) = (outage_after(&fwd, killed)?, outage_after(&back, killed)?);
        println!(
            "kill -9 of {primary} (carrying d1's outbound traffic): outage d1 → d2 {} ms, d2 → d1 {} ms",
            o1.as_millis(),
            o2.as_millis()
        );
        ensure!(o1 < RESUMES_WITHIN && o2 < RESUMES_WITHIN);
        c.wait_moved_off(&primary)?;
        let left: Vec<&str> = ALL.iter().copied().filter(|n| *n != primary).collect();
        for d in [d1, d2] {
            c.devices[d].wait_conns(&left)?;
        }
        // The coordinator comes back: the agents connect to it again, by themselves.
        c.sites.start_coordinator(Cluster::site_of(&primary)?)?;
        for d in [d1, d2] {
            c.devices[d].wait_conns(&ALL)?;
        }
        Ok(())
    };
    run(&mut c).with_context(|| c.logs())
}

#[test]
#[ignore = "needs root: network namespaces"]
fn an_active_replica_keeps_serving_when_the_coordinator_carrying_it_dies() -> anyhow::Result<()> {
    require_root()?;
    let mut c = Cluster::start()?;
    let run = |c: &mut Cluster| -> anyhow::Result<()> {
        let d = c.laptop_and_node()?;
        let (active, epoch) = c.active()?;
        let node = c.node()?;
        let replica = node.replicas[active].name.clone();
        let primary = node.replicas[active]
            .conns()?
            .1
            .context("the active sends nowhere")?;
        let dev = &c.devices[d];
        let ip = dev.mesh_ip()?;
        let probe = Probe::start(
            ("laptop", &dev.ns, &ip),
            ("host", &node.host, HOST_IP),
            7200,
        )?;
        std::thread::sleep(Duration::from_millis(800));
        let killed = Instant::now();
        c.sites.kill_coordinator(Cluster::site_of(&primary)?);
        std::thread::sleep(RESUMES_WITHIN + Duration::from_millis(800));
        let (inbound, outbound) = probe.stop()?;
        report("laptop → LAN host", &inbound);
        report("LAN host → laptop", &outbound);
        let after = c.active();
        println!(
            "kill -9 of {primary} (carrying replica {replica}'s traffic): active before {active} in epoch {epoch}, after {after:?}"
        );
        let (o1, o2) = (
            outage_after(&inbound, killed)?,
            outage_after(&outbound, killed)?,
        );
        println!(
            "outage laptop → host {} ms, host → laptop {} ms",
            o1.as_millis(),
            o2.as_millis()
        );
        ensure!(o1 < RESUMES_WITHIN && o2 < RESUMES_WITHIN);
        ensure!(
            after? == (active, epoch),
            "the active replica or its epoch changed"
        );
        Ok(())
    };
    run(&mut c).with_context(|| c.logs())
}
