//! The cluster election driven by the real `--etcd` binary: three etcd members and three
//! coordinators (see `meshgate_tests::etcd`), and one HA node whose replicas are spread
//! over two coordinators. Each coordinator only knows the replicas connected to it, so
//! without a shared election each would make its own first replica active (a split
//! brain); with it, exactly one replica is active, a healthy active survives the death
//! of a coordinator in the same epoch, and the death of the active promotes a standby.
//!
//! Replica `a` and `b` dial the member that decides elections, replica `z` another one
//! (a token names only the coordinator a replica should dial).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use meshgate_proto::token::Token;
use meshgate_tests::cluster::{REPLICA_FLAGS, replica_host};
use meshgate_tests::etcd::{Cluster, QUIC_PORT, SITES};
use meshgate_tests::ha::{HOST_IP, LAN_CIDR};
use meshgate_tests::lab::Agent;
use meshgate_tests::{Lan, Netns, require_root, wait_until, wait_until_ok};
use serde_json::json;

/// How long a role change may take here (outage figures belong in benchmarks).
const SETTLE: Duration = Duration::from_secs(20);
/// A standby must be promoted this soon after the active's death: the lease, one mark,
/// one promotion, and the watches between them.
const PROMOTED_WITHIN: Duration = Duration::from_secs(5);

/// One replica: its agent (dropped before its namespace) and namespace.
struct Replica {
    agent: Agent,
    ns: Netns,
    name: &'static str,
}

impl Replica {
    /// (`forwarding`, epoch) from `status --json`; `None` when it does not answer.
    fn role(&self) -> Option<(String, u64)> {
        let s = self.agent.status(&self.ns).ok()?;
        Some((s["forwarding"].as_str()?.to_owned(), s["epoch"].as_u64()?))
    }
}

/// The node's LAN and replicas. Field order is drop order: agents, then namespaces,
/// then the sites.
struct Setup {
    replicas: Vec<Replica>,
    _host: Netns,
    _lan: Lan,
    c: Cluster,
}

impl Setup {
    /// Which replicas report `active` now (a dead one reports nothing).
    fn actives(&self) -> Vec<(&'static str, u64)> {
        self.replicas
            .iter()
            .filter_map(|r| match r.role() {
                Some((f, e)) if f == "active" => Some((r.name, e)),
                _ => None,
            })
            .collect()
    }

    /// Samples the replicas for `d`: never two actives; returns every active seen.
    fn sample(&self, d: Duration) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let end = Instant::now() + d;
        let mut seen = Vec::new();
        let mut samples = 0;
        while Instant::now() < end {
            let a = self.actives();
            ensure!(a.len() <= 1, "two replicas active at once: {a:?}");
            for x in a {
                if !seen.contains(&x) {
                    seen.push(x);
                }
            }
            samples += 1;
        }
        println!("{samples} samples over {d:?}: actives seen {seen:?}");
        Ok(seen)
    }
}

/// A node token that makes the agent dial coordinator `i` only.
fn token_for(token: &str, i: usize) -> anyhow::Result<String> {
    let mut t = Token::decode(token)?;
    t.addrs = vec![format!("10.99.0.{}:{QUIC_PORT}", i + 1)];
    Ok(t.encode())
}

fn setup() -> anyhow::Result<(Setup, usize, usize, usize)> {
    let c = Cluster::start()?;
    let decider = wait_until_ok(SETTLE, "a decider", || {
        let s = c.status(0)?;
        let up = s["members"]
            .as_array()
            .is_some_and(|m| m.len() == SITES && m.iter().all(|x| x["status"] == "up"));
        ensure!(up, "not every member is up: {s}");
        let name = s["decider"].as_str().context("no decider yet")?;
        name.strip_prefix('c')
            .and_then(|n| n.parse::<usize>().ok())
            .map(|n| n - 1)
            .context("a decider named c<n>")
    })?;
    let other = (decider + 1) % SITES;
    let idle = (decider + 2) % SITES;
    let api = c.api(0)?;
    let node = api.post("/api/v1/nodes", &json!({ "name": "web", "ha": true }))?;
    let node = node.result()?;
    let id = node["id"].as_str().context("node id")?;
    let token = node["token"].as_str().context("node token")?.to_owned();
    api.post(
        &format!("/api/v1/nodes/{id}/routes"),
        &json!({ "network": LAN_CIDR }),
    )?
    .result()?;
    let lan = Lan::new("lan")?;
    let host = Netns::new("host")?;
    lan.attach(&host, "eth0")?;
    host.ip(&format!("addr add {HOST_IP}/24 dev eth0"))?;
    let mut s = Setup {
        replicas: Vec::new(),
        _host: host,
        _lan: lan,
        c,
    };
    for (i, (name, site)) in [("a", decider), ("b", decider), ("z", other)]
        .into_iter()
        .enumerate()
    {
        let ns = replica_host(&s.c, &s._lan, name, i)?;
        let mut agent = Agent::spawn(
            &ns,
            &format!("replica-{name}"),
            &token_for(&token, site)?,
            &REPLICA_FLAGS,
            &s.c.scratch(&format!("state-{name}")),
            &s.c.scratch(&format!("agent-{name}.log")),
        )?;
        agent.wait_connected(&ns)?;
        s.replicas.push(Replica { agent, ns, name });
        if name == "a" {
            wait_until(SETTLE, "replica a active", || {
                Ok(s.replicas[0].role().is_some_and(|(f, _)| f == "active"))
            })?;
        }
    }
    Ok((s, decider, other, idle))
}

#[test]
#[ignore = "needs root: network namespaces"]
fn one_active_across_coordinators_kept_when_a_coordinator_dies_replaced_when_it_dies()
-> anyhow::Result<()> {
    require_root()?;
    let (mut s, decider, other, idle) = setup()?;
    println!(
        "decider c{}, replica z on c{}, no replica on c{}",
        decider + 1,
        other + 1,
        idle + 1
    );
    let run = |s: &mut Setup| -> anyhow::Result<()> {
        // z, alone on its coordinator, stays standby: exactly one active, never two.
        wait_until(SETTLE, "z standby", || {
            Ok(s.replicas[2].role().is_some_and(|(f, _)| f == "standby"))
        })?;
        let seen = s.sample(Duration::from_secs(3))?;
        ensure!(seen.len() == 1 && seen[0].0 == "a", "{seen:?}");
        let epoch = seen[0].1;

        // A coordinator with no replica of the node dies: nothing changes, also after
        // its member key expired (the TTL) and it stopped counting.
        s.c.kill_coordinator(idle);
        let seen = s.sample(Duration::from_secs(7))?;
        ensure!(
            seen == [("a", epoch)],
            "the active changed when c{} died: {seen:?}",
            idle + 1
        );

        // The active dies: b, on the decider, is promoted in a higher epoch; z stays.
        s.replicas[0].agent.process.kill();
        let killed = Instant::now();
        let (promoted, new_epoch) = wait_until_ok(SETTLE, "a standby promoted", || {
            let a = s.actives();
            ensure!(a.len() <= 1, "two replicas active at once: {a:?}");
            a.first().copied().context("nobody active yet")
        })?;
        let took = killed.elapsed();
        println!("active a killed: {promoted} active in epoch {new_epoch} after {took:?}");
        ensure!(
            promoted == "b" && new_epoch > epoch,
            "{promoted} {new_epoch}"
        );
        ensure!(
            took <= PROMOTED_WITHIN,
            "promotion took {took:?} (over {PROMOTED_WITHIN:?})"
        );
        let seen = s.sample(Duration::from_secs(2))?;
        ensure!(seen == [("b", new_epoch)], "{seen:?}");
        let z = s.replicas[2].role().context("z answers")?;
        ensure!(z.0 == "standby" && z.1 == new_epoch, "z is {z:?}");
        Ok(())
    };
    let r = run(&mut s);
    r.with_context(|| s.c.logs())
}
