//! The HA gateway topology most end-to-end tests need, built on [`crate::lab`]:
//!
//! ```text
//!  device ──┐                                  ┌── replica a ──┐
//!           ├── transport 10.99.0.0/24 ─ coordinator            ├── LAN 192.168.50.0/24 ── host .100
//!           │                                  └── replica b ──┘     (routes the mesh via the VIP .1)
//! ```
//!
//! Node `web` (HA) advertises the LAN; the device reaches the host through the active
//! replica, and the host reaches the device's Mesh IP through the VIP.
//!
//! [`Ha::with_second_node`] adds a second site for subnet ↔ subnet traffic: node `db`
//! (one replica, its own transport address) advertising `192.168.60.0/24`, whose LAN host
//! `.100` routes the mesh and the first LAN via `db`'s gateway IP `.1`; the first LAN
//! host routes the second LAN via the VIP.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{
    Lan, Netns,
    lab::{Agent, Lab},
    wait_until,
};

/// The LAN the node advertises.
pub const LAN_CIDR: &str = "192.168.50.0/24";
/// The VIP the active replica owns.
pub const VIP: &str = "192.168.50.1/24";
/// The LAN host.
pub const HOST_IP: &str = "192.168.50.100";
/// The second node's LAN.
pub const SECOND_LAN_CIDR: &str = "192.168.60.0/24";
/// The second node's gateway IP.
pub const SECOND_GATEWAY: &str = "192.168.60.1/24";
/// The second LAN's host.
pub const SECOND_HOST_IP: &str = "192.168.60.100";
/// How long a role change may take in these tests (the outage bound lives in benchmarks).
pub const SETTLE: Duration = Duration::from_secs(10);

/// A replica: its namespace, LAN address and agent.
pub struct Replica {
    /// `a`, `b`, …
    pub name: String,
    /// Its namespace (transport `eth0`, LAN `eth1`).
    pub ns: Netns,
    /// Its own LAN address.
    pub lan_ip: String,
    /// The running agent, if started.
    pub agent: Option<Agent>,
    /// The replica id its agent reported (the coordinator's events name replicas by it).
    pub replica_id: Option<String>,
}

/// A second node with one replica and its own LAN and host. Field order is drop order.
pub struct Site {
    /// The replica's agent, if started.
    pub agent: Option<Agent>,
    /// The replica's namespace (transport `eth0`, LAN `eth1` at `192.168.60.11`).
    pub ns: Netns,
    /// The LAN host, `192.168.60.100`.
    pub host: Netns,
    /// The LAN bridge.
    pub lan: Lan,
    /// The node's id and token.
    pub node: (String, String),
}

/// The topology. Field order is drop order: agents go before their namespaces.
pub struct Ha {
    /// The second site, if built ([`Ha::with_second_node`]).
    pub second: Option<Site>,
    /// The replicas.
    pub replicas: Vec<Replica>,
    /// The device's agent.
    pub device_agent: Option<Agent>,
    /// The device's namespace.
    pub device: Netns,
    /// The LAN host.
    pub host: Netns,
    /// The LAN bridge.
    pub lan: Lan,
    /// The node's id and token.
    pub node: (String, String),
    /// The device's token.
    pub device_token: String,
    /// The lab (coordinator, transport network, scratch dir).
    pub lab: Lab,
}

impl Ha {
    /// Builds the topology with `replicas` replica namespaces, starts the coordinator,
    /// creates the node, its route and the device. Agents are not started.
    pub fn new(replicas: usize) -> anyhow::Result<Self> {
        let mut lab = Lab::new()?;
        lab.start_coordinator()?;
        let node = lab.create_node("web", true)?;
        lab.add_route(&node.0, LAN_CIDR)?;
        let (_, device_token) = lab.create_device("laptop")?;
        let lan = Lan::new("lan")?;
        let host = Netns::new("host")?;
        lan.attach(&host, "eth0")?;
        host.ip(&format!("addr add {HOST_IP}/24 dev eth0"))?;
        host.ip(&format!("route add 100.96.0.0/12 via {}", addr(VIP)))?;
        let mut list = Vec::new();
        for i in 0..replicas {
            let name = ((b'a' + i as u8) as char).to_string();
            let ns = lab.host(&format!("rep{name}"))?;
            lan.attach(&ns, "eth1")?;
            let lan_ip = format!("192.168.50.{}", 11 + i);
            ns.ip(&format!("addr add {lan_ip}/24 dev eth1"))?;
            list.push(Replica {
                name,
                ns,
                lan_ip,
                agent: None,
                replica_id: None,
            });
        }
        let device = lab.host("device")?;
        Ok(Self {
            second: None,
            replicas: list,
            device_agent: None,
            device,
            host,
            lan,
            node,
            device_token,
            lab,
        })
    }

    /// Adds the second site (see the module docs): node `db`, not HA, advertising
    /// [`SECOND_LAN_CIDR`], its replica namespace, LAN and host, and the routes both LAN
    /// hosts need to reach each other. Its agent is not started.
    pub fn with_second_node(mut self) -> anyhow::Result<Self> {
        let node = self.lab.create_node("db", false)?;
        self.lab.add_route(&node.0, SECOND_LAN_CIDR)?;
        let lan = Lan::new("lan2")?;
        let host = Netns::new("host2")?;
        lan.attach(&host, "eth0")?;
        host.ip(&format!("addr add {SECOND_HOST_IP}/24 dev eth0"))?;
        let gateway = addr(SECOND_GATEWAY);
        host.ip(&format!("route add 100.96.0.0/12 via {gateway}"))?;
        host.ip(&format!("route add {LAN_CIDR} via {gateway}"))?;
        self.host
            .ip(&format!("route add {SECOND_LAN_CIDR} via {}", addr(VIP)))?;
        let ns = self.lab.host("db")?;
        lan.attach(&ns, "eth1")?;
        ns.ip("addr add 192.168.60.11/24 dev eth1")?;
        self.second = Some(Site {
            agent: None,
            ns,
            host,
            lan,
            node,
        });
        Ok(self)
    }

    /// The second site; fails if [`Ha::with_second_node`] was not called.
    pub fn site(&self) -> anyhow::Result<&Site> {
        self.second
            .as_ref()
            .context("no second node in this topology")
    }

    /// Starts the second node's agent and waits until it forwards.
    pub fn start_second_node(&mut self, flags: &[&str]) -> anyhow::Result<()> {
        let site = self.second.as_ref().context("no second node")?;
        let mut all = vec!["--lan-iface", "eth1", "--gateway-ip", SECOND_GATEWAY];
        all.extend_from_slice(flags);
        let agent = self
            .lab
            .start_agent(&site.ns, "replica-db", &site.node.1, &all)?;
        agent.wait_forwarding(&site.ns, "active", SETTLE)?;
        if let Some(site) = self.second.as_mut() {
            site.agent = Some(agent);
        }
        Ok(())
    }

    /// Starts every replica with `flags` (the first becomes active, the others standby)
    /// and then the device.
    pub fn start_all(&mut self, flags: &[&str]) -> anyhow::Result<()> {
        for i in 0..self.replicas.len() {
            self.start_replica(i, flags)?;
            self.wait_forwarding(i, if i == 0 { "active" } else { "standby" })?;
        }
        self.start_device()
    }

    /// Starts replica `i`'s agent with extra flags and waits until it is connected.
    pub fn start_replica(&mut self, i: usize, flags: &[&str]) -> anyhow::Result<()> {
        let r = &self.replicas[i];
        let mut all = vec!["--lan-iface", "eth1", "--gateway-ip", VIP];
        all.extend_from_slice(flags);
        let agent =
            self.lab
                .start_agent(&r.ns, &format!("replica-{}", r.name), &self.node.1, &all)?;
        let id = agent.status(&r.ns)?["replica_id"]
            .as_str()
            .map(str::to_owned);
        self.replicas[i].agent = Some(agent);
        self.replicas[i].replica_id = id;
        Ok(())
    }

    /// Starts the device's agent and waits until it is connected.
    pub fn start_device(&mut self) -> anyhow::Result<()> {
        self.device_agent =
            Some(
                self.lab
                    .start_agent(&self.device, "device", &self.device_token, &[])?,
            );
        Ok(())
    }

    /// The name (`a`, `b`, …) of the replica with this replica id, or the id itself.
    pub fn replica_name(&self, replica_id: &str) -> String {
        self.replicas
            .iter()
            .find(|r| r.replica_id.as_deref() == Some(replica_id))
            .map_or_else(|| replica_id.to_owned(), |r| r.name.clone())
    }

    /// Replica `i`'s agent.
    pub fn agent(&self, i: usize) -> anyhow::Result<&Agent> {
        self.replicas[i]
            .agent
            .as_ref()
            .context("replica agent not started")
    }

    /// Replica `i`'s agent status.
    pub fn status(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        self.agent(i)?.status(&self.replicas[i].ns)
    }

    /// Waits until replica `i`'s data plane is `forwarding`.
    pub fn wait_forwarding(&self, i: usize, forwarding: &str) -> anyhow::Result<serde_json::Value> {
        self.agent(i)?
            .wait_forwarding(&self.replicas[i].ns, forwarding, SETTLE)
    }

    /// The device's Mesh IP.
    pub fn device_mesh_ip(&self) -> anyhow::Result<String> {
        let agent = self
            .device_agent
            .as_ref()
            .context("device agent not started")?;
        let s = agent.status(&self.device)?;
        s["mesh_ip"]
            .as_str()
            .map(str::to_owned)
            .context("the device has no Mesh IP yet")
    }

    /// Waits until `ns` can ping `dst` (one reply within a second, retried).
    pub fn wait_ping(&self, ns: &Netns, dst: &str) -> anyhow::Result<()> {
        wait_ping(ns, dst)
    }
}

/// Waits until `ns` can ping `dst` (one reply within a second, retried for [`SETTLE`]).
pub fn wait_ping(ns: &Netns, dst: &str) -> anyhow::Result<()> {
    wait_until(SETTLE, &format!("ping from {} to {dst}", ns.name()), || {
        Ok(ns.exec("ping", &["-c", "1", "-W", "1", dst]).is_ok())
    })
}

/// The address part of `A.B.C.D/N`.
fn addr(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or_default()
}

/// Sends `payload` over TCP from `client` to a listener in `server` at `ip:port`, and
/// checks that it comes back echoed.
pub fn tcp_echo(
    server: &Netns,
    client: &Netns,
    ip: &str,
    port: u16,
    payload: &[u8],
) -> anyhow::Result<()> {
    let bind = format!("{ip}:{port}");
    let listener = server.enter(|| TcpListener::bind(("0.0.0.0", port)))??;
    let echo = std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            conn.write_all(&buf[..n])?;
        }
    });
    let sent = payload.to_vec();
    let received = client.enter(move || -> anyhow::Result<Vec<u8>> {
        let mut conn = TcpStream::connect_timeout(&bind.parse()?, Duration::from_secs(5))
            .with_context(|| format!("TCP connect to {bind}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(&sent)?;
        let mut back = vec![0u8; sent.len()];
        conn.read_exact(&mut back)?;
        Ok(back)
    })??;
    if received != payload {
        bail!("TCP echo returned different bytes");
    }
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(())
}

/// Sends a UDP datagram from `client` to `ip:port` in `server` and waits for the echo.
pub fn udp_echo(server: &Netns, client: &Netns, ip: &str, port: u16) -> anyhow::Result<()> {
    let socket = server.enter(|| UdpSocket::bind(("0.0.0.0", port)))??;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let echo = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut buf = [0u8; 1500];
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], from)?;
        Ok(())
    });
    let target = format!("{ip}:{port}");
    client.enter(move || -> anyhow::Result<()> {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.send_to(b"meshgate-udp-probe", &target)?;
        let mut buf = [0u8; 64];
        let (n, _) = s
            .recv_from(&mut buf)
            .with_context(|| format!("no UDP echo from {target}"))?;
        anyhow::ensure!(
            &buf[..n] == b"meshgate-udp-probe",
            "UDP echo returned different bytes"
        );
        Ok(())
    })??;
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))?
}
