//! Faults below the coordinators of a cluster (see `meshgate_tests::cluster`): the etcd
//! leader dies, and a coordinator is cut off from etcd and from its peers by nftables
//! while agents still reach it. Neither may cost a needless failover; the cut-off
//! coordinator must stop granting before anyone else can promote (no split brain), and
//! traffic must not stay stuck behind it.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use meshgate_tests::Netns;
use meshgate_tests::cluster::{Cluster, Participant};
use meshgate_tests::etcd::SITES;
use meshgate_tests::ha::HOST_IP;
use meshgate_tests::probe::{FlowReport, Probe};
use meshgate_tests::{require_root, wait_until};

const ALL: [&str; 3] = ["c1", "c2", "c3"];
/// The replica lease: a gap in the data plane longer than this means the active lost it.
const LEASE: Duration = Duration::from_millis(250);
/// How long a promotion may take once the cut-off member's key can expire: its TTL (5 s),
/// then a lapse mark, one promotion and the watches between them.
const PROMOTED_WITHIN: Duration = Duration::from_secs(15);

fn report(r: &FlowReport) {
    println!("{}", r.summary());
}

/// Drops every packet between `ns` and the given addresses, both ways.
fn cut(ns: &Netns, from: &[String]) -> anyhow::Result<()> {
    let set = from.join(", ");
    ns.sh(&format!(
        "nft -f - <<'EOF'
table inet meshgate_cut {{
  chain input {{ type filter hook input priority -10; ip saddr {{ {set} }} drop; }}
  chain output {{ type filter hook output priority -10; ip daddr {{ {set} }} drop; }}
}}
EOF"
    ))?;
    Ok(())
}

fn heal(ns: &Netns) -> anyhow::Result<()> {
    ns.exec("nft", &["delete", "table", "inet", "meshgate_cut"])?;
    Ok(())
}

fn probe(c: &Cluster, d: usize, port: u16) -> anyhow::Result<Probe> {
    let dev = &c.devices[d];
    let ip = dev.mesh_ip()?;
    Probe::start(
        ("laptop", &dev.ns, &ip),
        ("host", &c.node()?.host, HOST_IP),
        port,
    )
}

#[test]
#[ignore = "needs root: network namespaces"]
fn killing_the_etcd_leader_leaves_the_data_plane_alone() -> anyhow::Result<()> {
    require_root()?;
    let mut c = Cluster::start()?;
    let run = |c: &mut Cluster| -> anyhow::Result<()> {
        let d = c.laptop_and_node()?;
        let before = c.active()?;
        let leader = c.sites.etcd_leader(0)?;
        let p = probe(c, d, 7300)?;
        std::thread::sleep(Duration::from_millis(800));
        c.sites.kill_etcd(leader);
        // Past the member TTL (5 s): a coordinator that lost etcd for good would have
        // fenced itself by then, and the flow would show it.
        std::thread::sleep(Duration::from_secs(7));
        let (inbound, outbound) = p.stop()?;
        report(&inbound);
        report(&outbound);
        let after = c.active();
        println!(
            "kill -9 of etcd leader e{}: active (replica, epoch) before {before:?}, after {after:?}; \
             outage {} / {} ms",
            leader + 1,
            inbound.outage().as_millis(),
            outbound.outage().as_millis()
        );
        ensure!(after? == before, "the active replica or its epoch changed");
        for r in [&inbound, &outbound] {
            ensure!(
                r.outage() < LEASE,
                "{}: {} ms without delivery, longer than a lease",
                r.label,
                r.outage().as_millis()
            );
        }
        c.sites.start_etcd(leader)?;
        c.sites.wait_etcd_healthy()
    };
    run(&mut c).with_context(|| c.logs())
}

/// Whether coordinator `i`'s logs (of every run) say it lost its etcd membership.
fn lost_membership(c: &Cluster, i: usize) -> anyhow::Result<bool> {
    let prefix = format!("c{}-", i + 1);
    for entry in std::fs::read_dir(c.sites.dir.path())? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with(&prefix)
            && name.ends_with(".log")
            && std::fs::read_to_string(&path)?.contains("lost the etcd membership lease")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Which replicas report `active` now, with their epochs.
fn actives(replicas: &[Participant]) -> Vec<(String, u64)> {
    replicas
        .iter()
        .filter_map(|r| {
            let s = r.status().ok()?;
            let epoch = s["epoch"].as_u64()?;
            (s["forwarding"] == "active").then(|| (r.name.clone(), epoch))
        })
        .collect()
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_coordinator_cut_off_from_etcd_and_peers_fences_before_a_promotion() -> anyhow::Result<()> {
    require_root()?;
    let mut c = Cluster::start()?;
    let run = |c: &mut Cluster| -> anyhow::Result<()> {
        let d = c.laptop_and_node()?;
        let (a, epoch) = c.active()?;
        let node = c.node()?;
        let (active, standby) = (&node.replicas[a], &node.replicas[1 - a]);
        let k = Cluster::site_of(&active.conns()?.1.context("the active sends nowhere")?)?;
        let others: Vec<String> = (0..SITES)
            .filter(|i| *i != k)
            .map(|i| c.sites.sites[i].ip.clone())
            .collect();
        println!(
            "cutting c{} off from {others:?}; {} (active in epoch {epoch}) reaches only c{}",
            k + 1,
            active.name,
            k + 1
        );
        // The member loses etcd (its own etcd member loses quorum) and its peers; the
        // active replica keeps only that member. Agents still reach it.
        cut(&c.sites.sites[k].ns, &others)?;
        cut(&active.ns, &others)?;
        let cut_at = Instant::now();

        let mut stopped = None;
        let promoted = loop {
            let now = actives(&node.replicas);
            ensure!(now.len() <= 1, "two replicas active at once: {now:?}");
            if stopped.is_none() && !now.iter().any(|(n, _)| *n == active.name) {
                stopped = Some(cut_at.elapsed());
            }
            if let Some((n, e)) = now.first().filter(|(n, _)| *n == standby.name) {
                break (n.clone(), *e, cut_at.elapsed());
            }
            ensure!(
                cut_at.elapsed() < PROMOTED_WITHIN,
                "no promotion within {PROMOTED_WITHIN:?} (actives now {now:?})"
            );
        };
        println!(
            "{} stopped forwarding {stopped:?} after the cut; {} active in epoch {} after {:?}",
            active.name, promoted.0, promoted.1, promoted.2
        );
        ensure!(promoted.1 > epoch, "promoted in epoch {}", promoted.1);

        // The cut-off member says so; agents that reach it send through another, since
        // its view of the active is stale. Traffic reaches the LAN through the new active.
        let cut_name = format!("c{}", k + 1);
        let dev = &c.devices[d];
        wait_until(
            Duration::from_secs(5),
            "the device hears c{k} is cut off",
            || {
                let s = dev.status()?;
                Ok(s["connection"]["conns"].as_array().is_some_and(|conns| {
                    conns
                        .iter()
                        .any(|c| c["colo_name"] == cut_name.as_str() && c["cut_off"] == true)
                }))
            },
        )?;
        // (The old active reaches nobody else: it keeps sending through c{k}.)
        for p in [dev, standby] {
            wait_until(
                Duration::from_secs(5),
                &format!("{} off {cut_name}", p.name),
                || Ok(p.conns()?.1.is_some_and(|primary| primary != cut_name)),
            )?;
        }
        c.wait_lan(d)?;
        let p = probe(c, d, 7310)?;
        std::thread::sleep(Duration::from_secs(2));
        let (inbound, outbound) = p.stop()?;
        report(&inbound);
        report(&outbound);
        ensure!(
            inbound.lost() + outbound.lost() < inbound.sent / 10,
            "traffic lost after the promotion"
        );

        // Whether a member on the majority side lost its registration meanwhile (its
        // keep-alive stream on the cut-off etcd member): reported, not yet guaranteed.
        for i in (0..SITES).filter(|i| *i != k) {
            if lost_membership(c, i)? {
                println!(
                    "c{} lost its etcd membership though only c{} was cut off",
                    i + 1,
                    k + 1
                );
            }
        }

        // Healed: the member rejoins, the old active connects to all again, as standby.
        heal(&c.sites.sites[k].ns)?;
        heal(&active.ns)?;
        active.wait_conns(&ALL)?;
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let now = actives(&node.replicas);
            ensure!(
                now == [(standby.name.clone(), promoted.1)],
                "after healing: actives {now:?}"
            );
        }
        Ok(())
    };
    run(&mut c).with_context(|| c.logs())
}
