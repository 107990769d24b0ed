//! The reference a user would otherwise deploy for a highly available gateway: two Linux
//! routers running keepalived (VRRP, default timers) that share a VIP on each side, in
//! the same shape as [`crate::ha`]:
//!
//! ```text
//!  client .100 ── WAN 10.98.0.0/24 ──┬── router a (.11) ──┬── LAN 192.168.50.0/24 ── host .100
//!  (routes the LAN via VIP .1)       └── router b (.12) ──┘   (routes the WAN via VIP .1)
//! ```
//!
//! Both VRRP instances sit in one sync group, so the WAN and LAN VIPs move together.
//! Both routers start as BACKUP with `nopreempt` and equal priority: a restarted router
//! stays backup, so trials alternate between them as meshgate's do.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;

use super::tools;
use crate::{
    Lan, Netns, Process,
    probe::{FlowReport, Probe},
    wait_until, wait_until_ok,
};

/// The LAN host (same address as in [`crate::ha`]).
pub const HOST_IP: &str = "192.168.50.100";
/// The client on the WAN side.
pub const CLIENT_IP: &str = "10.98.0.100";
const LAN_VIP: &str = "192.168.50.1";
const WAN_VIP: &str = "10.98.0.1";
/// How long a takeover or a restart may take (VRRP's default master-down interval is
/// about 3.6 s).
const SETTLE: Duration = Duration::from_secs(20);

/// A router: its namespace (WAN `eth0`, LAN `eth1`) and its keepalived.
pub struct Router {
    /// `a` or `b`.
    pub name: String,
    /// keepalived, while running (dropped before the namespace).
    pub keepalived: Option<Process>,
    /// Its namespace.
    pub ns: Netns,
    starts: u32,
}

/// The keepalived topology. Field order is drop order.
pub struct Vrrp {
    /// The two routers.
    pub routers: Vec<Router>,
    /// The WAN-side client.
    pub client: Netns,
    /// The LAN host.
    pub host: Netns,
    /// The WAN bridge.
    pub wan: Lan,
    /// The LAN bridge.
    pub lan: Lan,
    keepalived: PathBuf,
    dir: tempfile::TempDir,
}

/// One measured takeover.
pub struct Takeover {
    /// The router that was master.
    pub from: usize,
    /// The router that took over.
    pub to: usize,
    /// client → host: into the subnet.
    pub inbound: FlowReport,
    /// host → client: out of the subnet.
    pub outbound: FlowReport,
}

impl Vrrp {
    /// Builds the topology and starts keepalived on both routers; returns once router a
    /// is master and router b backup.
    pub fn new() -> anyhow::Result<Self> {
        let keepalived = tools::require("keepalived")?;
        let dir = tempfile::Builder::new()
            .prefix("meshgate-vrrp-")
            .tempdir()
            .context("failed to create a temp dir")?;
        let (wan, lan) = (Lan::new("vwan")?, Lan::new("vlan")?);
        let client = Netns::new("vclient")?;
        wan.attach(&client, "eth0")?;
        client.ip(&format!("addr add {CLIENT_IP}/24 dev eth0"))?;
        client.ip(&format!("route add 192.168.50.0/24 via {WAN_VIP}"))?;
        let host = Netns::new("vhost")?;
        lan.attach(&host, "eth0")?;
        host.ip(&format!("addr add {HOST_IP}/24 dev eth0"))?;
        host.ip(&format!("route add 10.98.0.0/24 via {LAN_VIP}"))?;
        let mut routers = Vec::new();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let ns = Netns::new(&format!("vrtr{name}"))?;
            wan.attach(&ns, "eth0")?;
            lan.attach(&ns, "eth1")?;
            ns.ip(&format!("addr add 10.98.0.{}/24 dev eth0", 11 + i))?;
            ns.ip(&format!("addr add 192.168.50.{}/24 dev eth1", 11 + i))?;
            ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            routers.push(Router {
                name: name.to_owned(),
                keepalived: None,
                ns,
                starts: 0,
            });
        }
        let mut vrrp = Self {
            routers,
            client,
            host,
            wan,
            lan,
            keepalived,
            dir,
        };
        vrrp.start(0)?;
        wait_until(SETTLE, "router a to become VRRP master", || {
            Ok(vrrp.holds_vips(0))
        })?;
        vrrp.start(1)?;
        vrrp.wait_backup(1)?;
        Ok(vrrp)
    }

    fn config(&self, i: usize) -> String {
        let name = &self.routers[i].name;
        let instance = |vrrp: &str, iface: &str, id: u8, vip: &str| {
            format!(
                "vrrp_instance {vrrp} {{\n    state BACKUP\n    nopreempt\n    interface {iface}\n    \
                 virtual_router_id {id}\n    priority 100\n    advert_int 1\n    \
                 virtual_ipaddress {{\n        {vip}/24 dev {iface}\n    }}\n}}\n"
            )
        };
        format!(
            "global_defs {{\n    router_id mgt-{name}\n}}\n\
             vrrp_sync_group gateway {{\n    group {{\n        LAN\n        WAN\n    }}\n}}\n{}{}",
            instance("LAN", "eth1", 51, LAN_VIP),
            instance("WAN", "eth0", 52, WAN_VIP),
        )
    }

    /// Starts keepalived on router `i` (not daemonised, logging to its log file).
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.routers[i].name.clone();
        let path = |what: &str| self.dir.path().join(format!("{what}-{name}"));
        let conf = path("keepalived.conf");
        std::fs::write(&conf, self.config(i)).context("failed to write keepalived.conf")?;
        let r = &self.routers[i];
        let mut cmd = r.ns.command(&self.keepalived);
        cmd.args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
            .arg("--use-file")
            .arg(&conf)
            .arg("--pid")
            .arg(path("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(path("vrrp.pid"));
        let log = path(&format!("keepalived-{}.log", r.starts));
        let process = r.ns.spawn(&format!("keepalived-{name}"), cmd, &log)?;
        let r = &mut self.routers[i];
        r.keepalived = Some(process);
        r.starts += 1;
        Ok(())
    }

    /// Whether router `i` holds both VIPs.
    pub fn holds_vips(&self, i: usize) -> bool {
        let ns = &self.routers[i].ns;
        let has = |dev: &str, vip: &str| {
            ns.ip(&format!("-4 -o addr show dev {dev}"))
                .is_ok_and(|out| out.contains(&format!("inet {vip}/")))
        };
        has("eth1", LAN_VIP) && has("eth0", WAN_VIP)
    }

    /// The router that holds the VIPs now.
    pub fn master(&self) -> anyhow::Result<usize> {
        (0..self.routers.len())
            .find(|&i| self.holds_vips(i))
            .context("no router holds the VIPs")
    }

    /// Waits until router `i`'s keepalived says both instances are BACKUP, then one more
    /// advertisement interval so it has heard the master.
    fn wait_backup(&self, i: usize) -> anyhow::Result<()> {
        let r = &self.routers[i];
        let process = r.keepalived.as_ref().context("keepalived not started")?;
        wait_until(
            SETTLE,
            &format!("router {} to be VRRP backup", r.name),
            || {
                let log = process.log();
                Ok(log.contains("(LAN) Entering BACKUP STATE")
                    && log.contains("(WAN) Entering BACKUP STATE"))
            },
        )?;
        std::thread::sleep(Duration::from_millis(1500));
        anyhow::ensure!(
            !self.holds_vips(i),
            "router {} holds the VIPs while backup",
            r.name
        );
        Ok(())
    }

    /// Kills the master the way a gateway dies: keepalived with SIGKILL and, at the same
    /// moment, the router's links. Killing keepalived alone would leave its VIPs and the
    /// kernel's forwarding in place, and traffic would not notice.
    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let r = &mut self.routers[i];
        if let Some(mut p) = r.keepalived.take() {
            p.kill();
        }
        r.ns.ip("link set eth0 down")?;
        r.ns.ip("link set eth1 down")?;
        Ok(())
    }

    /// Brings a killed router back as it would boot: links up, no VIPs, keepalived started;
    /// returns once it is backup.
    fn revive(&mut self, i: usize) -> anyhow::Result<()> {
        let ns = &self.routers[i].ns;
        // The VIPs a SIGKILLed keepalived leaves are gone after a reboot too.
        let _ = ns.ip(&format!("addr del {LAN_VIP}/24 dev eth1"));
        let _ = ns.ip(&format!("addr del {WAN_VIP}/24 dev eth0"));
        ns.ip("link set eth0 up")?;
        ns.ip("link set eth1 up")?;
        self.start(i)?;
        self.wait_backup(i)
    }

    /// Kills the master while numbered probes run both ways (UDP `port`, `port + 1`), waits
    /// until the backup holds both VIPs, lets traffic run for `after`, then revives the
    /// killed router as backup for the next trial.
    pub fn measure_kill(&mut self, port: u16, after: Duration) -> anyhow::Result<Takeover> {
        let from = self.master()?;
        let probe = Probe::start(
            ("client", &self.client, CLIENT_IP),
            ("host", &self.host, HOST_IP),
            port,
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let to = self.kill(from).and_then(|()| {
            wait_until_ok(SETTLE, "the backup to take both VIPs", || {
                (0..self.routers.len())
                    .find(|&i| i != from && self.holds_vips(i))
                    .context("not yet")
            })
        });
        if to.is_ok() {
            std::thread::sleep(after);
        }
        let (inbound, outbound) = probe.stop()?;
        let to = to?;
        self.revive(from)?;
        Ok(Takeover {
            from,
            to,
            inbound,
            outbound,
        })
    }
}
