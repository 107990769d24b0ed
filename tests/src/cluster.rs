//! Agents on a coordinator cluster: the three sites of [`crate::etcd`] (an etcd member
//! and a coordinator each), plus devices and an HA node whose agents connect to every
//! coordinator.
//!
//! ```text
//!  device d1 ──┐                              ┌── replica a ──┐
//!  device d2 ──┼── transport 10.99.0.0/24 ─ c1, c2, c3 ──┤          ├── LAN 192.168.50.0/24 ── host .100
//!              │                              └── replica b ──┘
//! ```
//!
//! Field order is drop order: agents go before their namespaces, and those before the
//! sites (coordinators, etcd).

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::etcd::{self, SITES};
use crate::ha::{HOST_IP, LAN_CIDR, VIP, wait_ping};
use crate::lab::Agent;
use crate::{Lan, Netns, wait_until, wait_until_ok};

/// How long agents may take to connect to every coordinator, or to settle a role.
pub const SETTLE: Duration = Duration::from_secs(20);

/// A node replica's flags: the LAN on `eth1`, the VIP, XDP in generic mode.
pub const REPLICA_FLAGS: [&str; 6] = [
    "--lan-iface",
    "eth1",
    "--gateway-ip",
    VIP,
    "--xdp-mode",
    "skb",
];

/// The namespace of replica `name`, the `i`-th on `lan`: `eth1` at `192.168.50.(11 + i)`.
pub fn replica_host(
    sites: &etcd::Cluster,
    lan: &Lan,
    name: &str,
    i: usize,
) -> anyhow::Result<Netns> {
    let ns = sites.host(&format!("rep{name}"))?;
    lan.attach(&ns, "eth1")?;
    ns.ip(&format!("addr add 192.168.50.{}/24 dev eth1", 11 + i))?;
    Ok(ns)
}

/// A participant's agent and its namespace.
pub struct Participant {
    /// Its agent.
    pub agent: Agent,
    /// Its namespace on the transport network.
    pub ns: Netns,
    /// `d1`, `a`, …
    pub name: String,
}

impl Participant {
    /// `status --json`.
    pub fn status(&self) -> anyhow::Result<Value> {
        self.agent.status(&self.ns)
    }

    /// The Mesh IP.
    pub fn mesh_ip(&self) -> anyhow::Result<String> {
        self.status()?["mesh_ip"]
            .as_str()
            .map(str::to_owned)
            .context("no Mesh IP yet")
    }

    /// The coordinator names of the live connections, and which one carries traffic.
    pub fn conns(&self) -> anyhow::Result<(Vec<String>, Option<String>)> {
        let s = self.status()?;
        let conns = s["connection"]["conns"]
            .as_array()
            .context("no conns in status")?;
        let mut names: Vec<String> = conns
            .iter()
            .filter_map(|c| c["colo_name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        let primary = conns
            .iter()
            .find(|c| c["primary"] == true)
            .and_then(|c| c["colo_name"].as_str().map(str::to_owned));
        Ok((names, primary))
    }

    /// Waits until the agent holds a connection to each of `names` (and no other).
    pub fn wait_conns(&self, names: &[&str]) -> anyhow::Result<()> {
        wait_until(
            SETTLE,
            &format!("{} connected to {names:?}", self.name),
            || Ok(self.conns()?.0 == names),
        )
    }
}

/// The HA node: its LAN, the LAN host and the replicas.
pub struct Node {
    /// The replicas, `a` first.
    pub replicas: Vec<Participant>,
    /// The LAN host, `192.168.50.100`, routing the mesh via the VIP.
    pub host: Netns,
    /// The LAN bridge.
    pub lan: Lan,
    /// The node's id.
    pub id: String,
}

/// See the module docs.
pub struct Cluster {
    /// The HA node, once added.
    pub node: Option<Node>,
    /// The devices, in the order added.
    pub devices: Vec<Participant>,
    /// The sites: etcd members and coordinators.
    pub sites: etcd::Cluster,
}

impl Cluster {
    /// Starts the three sites (see [`etcd::Cluster::start`]).
    pub fn start() -> anyhow::Result<Self> {
        Ok(Self {
            node: None,
            devices: Vec::new(),
            sites: etcd::Cluster::start()?,
        })
    }

    /// An API call through the first member that answers (one may be down).
    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut last = None;
        for i in 0..SITES {
            match self.sites.api(i).and_then(|a| a.post(path, body)) {
                Ok(r) => return r.result().cloned(),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no member")))
    }

    fn spawn(
        &self,
        name: &str,
        ns: Netns,
        token: &str,
        flags: &[&str],
    ) -> anyhow::Result<Participant> {
        let mut agent = Agent::spawn(
            &ns,
            name,
            token,
            flags,
            &self.sites.scratch(&format!("state-{name}")),
            &self.sites.scratch(&format!("agent-{name}.log")),
        )?;
        agent.wait_connected(&ns)?;
        Ok(Participant {
            agent,
            ns,
            name: name.to_owned(),
        })
    }

    /// Enrols a device and starts its agent on a new transport host; returns its index.
    pub fn add_device(&mut self, name: &str) -> anyhow::Result<usize> {
        let d = self.post("/api/v1/devices", &json!({ "name": name }))?;
        let token = d["token"].as_str().context("no device token")?.to_owned();
        let ns = self.sites.host(name)?;
        let p = self.spawn(name, ns, &token, &[])?;
        self.devices.push(p);
        Ok(self.devices.len() - 1)
    }

    /// Creates HA node `web` advertising [`LAN_CIDR`] and starts `replicas` replicas
    /// (`a` becomes active, the others standbys) and the LAN host.
    pub fn add_node(&mut self, replicas: usize) -> anyhow::Result<()> {
        let n = self.post("/api/v1/nodes", &json!({ "name": "web", "ha": true }))?;
        let id = n["id"].as_str().context("no node id")?.to_owned();
        let token = n["token"].as_str().context("no node token")?.to_owned();
        self.post(
            &format!("/api/v1/nodes/{id}/routes"),
            &json!({ "network": LAN_CIDR }),
        )?;
        let lan = Lan::new("lan")?;
        let host = Netns::new("host")?;
        lan.attach(&host, "eth0")?;
        host.ip(&format!("addr add {HOST_IP}/24 dev eth0"))?;
        let vip = VIP.split('/').next().unwrap_or_default();
        host.ip(&format!("route add 100.96.0.0/12 via {vip}"))?;
        let mut list = Vec::new();
        for i in 0..replicas {
            let name = ((b'a' + i as u8) as char).to_string();
            let ns = replica_host(&self.sites, &lan, &name, i)?;
            let p = self.spawn(&format!("replica-{name}"), ns, &token, &REPLICA_FLAGS)?;
            let want = if i == 0 { "active" } else { "standby" };
            p.agent.wait_forwarding(&p.ns, want, SETTLE)?;
            list.push(p);
        }
        self.node = Some(Node {
            replicas: list,
            host,
            lan,
            id,
        });
        Ok(())
    }

    /// Waits until every agent holds a session with every coordinator.
    pub fn wait_all_connected(&self) -> anyhow::Result<()> {
        let all: Vec<String> = (1..=SITES).map(|i| format!("c{i}")).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        for p in self.devices.iter().chain(self.node()?.replicas.iter()) {
            p.wait_conns(&all)?;
        }
        Ok(())
    }

    /// A device `laptop` and a two-replica node, every agent connected to every
    /// coordinator and the LAN reachable from the device; returns the device's index.
    pub fn laptop_and_node(&mut self) -> anyhow::Result<usize> {
        let d = self.add_device("laptop")?;
        self.add_node(2)?;
        self.wait_all_connected()?;
        self.wait_lan(d)?;
        Ok(d)
    }

    /// The node; fails if [`Cluster::add_node`] was not called.
    pub fn node(&self) -> anyhow::Result<&Node> {
        self.node.as_ref().context("no node in this cluster")
    }

    /// The index of the replica whose data plane is active, and its epoch.
    pub fn active(&self) -> anyhow::Result<(usize, u64)> {
        let node = self.node()?;
        for (i, r) in node.replicas.iter().enumerate() {
            let s = r.status()?;
            if s["forwarding"] == "active" {
                return Ok((i, s["epoch"].as_u64().context("no epoch")?));
            }
        }
        bail!("no replica is active")
    }

    /// Waits until the device reaches the LAN host through the node.
    pub fn wait_lan(&self, device: usize) -> anyhow::Result<()> {
        wait_ping(&self.devices[device].ns, HOST_IP)
    }

    /// The coordinator index (0-based) with this name (`c1` → 0).
    pub fn site_of(name: &str) -> anyhow::Result<usize> {
        let n: usize = name
            .strip_prefix('c')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("not a coordinator name: {name}"))?;
        anyhow::ensure!((1..=SITES).contains(&n), "no coordinator {name}");
        Ok(n - 1)
    }

    /// Waits until every agent sends through a coordinator other than `dead`.
    pub fn wait_moved_off(&self, dead: &str) -> anyhow::Result<()> {
        let all = self
            .devices
            .iter()
            .chain(self.node.iter().flat_map(|n| n.replicas.iter()));
        for p in all {
            wait_until_ok(SETTLE, &format!("{} off {dead}", p.name), || {
                match p.conns()?.1 {
                    Some(primary) if primary != dead => Ok(()),
                    other => bail!("primary {other:?}"),
                }
            })?;
        }
        Ok(())
    }

    /// Every log so far, for a failure message.
    pub fn logs(&self) -> String {
        self.sites.logs()
    }
}
