//! A meshgate lab in network namespaces: a transport network (a bridge) with the
//! coordinator on it, and helpers to add hosts, agents and LANs. End-to-end tests and
//! `cargo xtask demo` build their topologies from these pieces; every piece is a guard.
//!
//! Addresses: the transport network is `10.99.0.0/24` (coordinator `10.99.0.1`); LANs are
//! whatever the caller gives. All of it lives in namespaces the lab created.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::json;

use crate::{Lan, Netns, Process, http::Api, wait_until, wait_until_ok};

/// The coordinator's address on the transport network.
pub const COORDINATOR_IP: &str = "10.99.0.1";
/// Its QUIC port.
pub const QUIC_PORT: u16 = 7443;
/// Its REST API, on the coordinator namespace's loopback.
pub const API_ADDR: &str = "127.0.0.1:7080";

/// A built workspace binary (`meshgate-agent`, `meshgate-coordinator`): in
/// `$MESHGATE_BIN_DIR` when set (`cargo xtask demo`/`bench` point it at their profile),
/// otherwise next to the test executable's own profile directory.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MESHGATE_BIN_DIR") {
        let candidate = PathBuf::from(dir).join(name);
        anyhow::ensure!(
            candidate.is_file(),
            "{name} is not in MESHGATE_BIN_DIR ({})",
            candidate.display()
        );
        return Ok(candidate);
    }
    let exe = std::env::current_exe().context("no current exe")?;
    // target/<profile>/deps/<test> or target/<profile>/<exe>
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} is not built next to {}: run `cargo build --workspace` first",
        exe.display()
    )
}

/// The lab: a transport bridge and the coordinator's namespace, plus a scratch dir.
pub struct Lab {
    /// Scratch space: data dirs, state dirs, logs.
    pub dir: tempfile::TempDir,
    /// The transport network.
    pub wan: Lan,
    /// The coordinator's namespace.
    pub coord: Netns,
    coordinator: Option<Process>,
    next_host: AtomicU8,
    extra_args: Vec<String>,
}

impl Lab {
    /// Creates the transport bridge and the coordinator's namespace (not started).
    pub fn new() -> anyhow::Result<Self> {
        // `cargo xtask demo` keeps its lab (logs, state dirs) under `target/demo`.
        let parent =
            std::env::var_os("MESHGATE_LAB_PARENT").map_or_else(std::env::temp_dir, PathBuf::from);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("meshgate-lab-")
            .tempdir_in(&parent)
            .context("failed to create a temp dir")?;
        let wan = Lan::new("wan")?;
        let coord = Netns::new("coord")?;
        wan.attach(&coord, "eth0")?;
        coord.ip(&format!("addr add {COORDINATOR_IP}/24 dev eth0"))?;
        Ok(Self {
            dir,
            wan,
            coord,
            coordinator: None,
            next_host: AtomicU8::new(10),
            extra_args: Vec::new(),
        })
    }

    /// Extra flags for every coordinator start (e.g. lease timings).
    pub fn coordinator_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|a| (*a).to_owned()).collect();
    }

    /// The coordinator's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("coordinator")
    }

    /// Where a component's log goes.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts (or restarts) the coordinator and waits until its API answers.
    pub fn start_coordinator(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.coord.command(bin("meshgate-coordinator")?);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--quic-listen", &format!("{COORDINATOR_IP}:{QUIC_PORT}")])
            .args(["--api-listen", API_ADDR])
            .args(["--public-addr", &format!("{COORDINATOR_IP}:{QUIC_PORT}")])
            .args(&self.extra_args)
            .env("RUST_LOG", "info");
        let starts = self.coordinator.as_ref().map_or(0, |_| 1);
        let log = self.log(&format!("coordinator-{starts}"));
        self.coordinator = Some(self.coord.spawn("coordinator", cmd, &log)?);
        wait_until(Duration::from_secs(20), "the coordinator's API", || {
            if let Some(p) = self.coordinator.as_mut()
                && !p.is_running()
            {
                bail!("the coordinator exited: {}", p.log());
            }
            Ok(self
                .api()
                .map(|api| api.get("/ready").is_ok_and(|r| r.status == 200))
                .unwrap_or(false))
        })
    }

    /// The coordinator process.
    pub fn coordinator(&mut self) -> Option<&mut Process> {
        self.coordinator.as_mut()
    }

    /// The admin API client.
    pub fn api(&self) -> anyhow::Result<Api<'_>> {
        let token = std::fs::read_to_string(self.data_dir().join("admin-token"))
            .context("no admin-token yet")?;
        Ok(Api::new(&self.coord, API_ADDR, &token))
    }

    /// Creates a node; returns its id and token.
    pub fn create_node(&self, name: &str, ha: bool) -> anyhow::Result<(String, String)> {
        let r = self
            .api()?
            .post("/api/v1/nodes", &json!({ "name": name, "ha": ha }))?;
        let result = r.result()?;
        Ok((str_field(result, "id")?, str_field(result, "token")?))
    }

    /// Advertises `network` through a node.
    pub fn add_route(&self, node_id: &str, network: &str) -> anyhow::Result<()> {
        let r = self.api()?.post(
            &format!("/api/v1/nodes/{node_id}/routes"),
            &json!({ "network": network }),
        )?;
        r.result().map(|_| ())
    }

    /// Enrols a device; returns its id and token.
    pub fn create_device(&self, name: &str) -> anyhow::Result<(String, String)> {
        let r = self
            .api()?
            .post("/api/v1/devices", &json!({ "name": name }))?;
        let result = r.result()?;
        Ok((str_field(result, "id")?, str_field(result, "token")?))
    }

    /// A node's replicas as the coordinator sees them (`connections`).
    pub fn connections(&self, node_id: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let r = self
            .api()?
            .get(&format!("/api/v1/nodes/{node_id}/connections"))?;
        Ok(r.result()?.as_array().cloned().unwrap_or_default())
    }

    /// The coordinator's `GET /api/v1/stats` result (counters, drops by reason).
    pub fn stats(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self.api()?.get("/api/v1/stats")?.result()?.clone())
    }

    /// How many datagrams the coordinator dropped for `reason` (e.g. `spoofed`).
    pub fn drops(&self, reason: &str) -> anyhow::Result<u64> {
        self.stats()?["drops"][reason]
            .as_u64()
            .with_context(|| format!("no drop reason {reason:?} in the stats"))
    }

    /// A new namespace on the transport network, with the next free address.
    pub fn host(&self, tag: &str) -> anyhow::Result<Netns> {
        transport_host(&self.wan, &self.next_host, tag)
    }

    /// Starts an agent in `ns` with `token` and extra flags; waits until it is connected.
    pub fn start_agent(
        &self,
        ns: &Netns,
        name: &str,
        token: &str,
        flags: &[&str],
    ) -> anyhow::Result<Agent> {
        let state_dir = self.dir.path().join(format!("state-{name}"));
        let mut agent = Agent::spawn(
            ns,
            name,
            token,
            flags,
            &state_dir,
            &self.log(&format!("agent-{name}")),
        )?;
        agent.wait_connected(ns)?;
        Ok(agent)
    }
}

/// A new namespace on the transport network `wan` at `10.99.0.{next}` (then `next` grows).
pub fn transport_host(wan: &Lan, next: &AtomicU8, tag: &str) -> anyhow::Result<Netns> {
    let ns = Netns::new(tag)?;
    wan.attach(&ns, "eth0")?;
    let n = next.fetch_add(1, Ordering::Relaxed);
    ns.ip(&format!("addr add 10.99.0.{n}/24 dev eth0"))?;
    Ok(ns)
}

/// A running `meshgate-agent` and its state dir.
pub struct Agent {
    /// The agent process.
    pub process: Process,
    /// Its `--state-dir`.
    pub state_dir: PathBuf,
    name: String,
}

impl Agent {
    /// Spawns `meshgate-agent run` in `ns`.
    pub fn spawn(
        ns: &Netns,
        name: &str,
        token: &str,
        flags: &[&str],
        state_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut cmd = ns.command(bin("meshgate-agent")?);
        cmd.args(["run", "--token", token])
            .arg("--state-dir")
            .arg(state_dir)
            .args(flags);
        cmd.env("MESHGATE_LOG", "info,meshgate_agent=debug");
        let process = ns.spawn(name, cmd, log)?;
        Ok(Self {
            process,
            state_dir: state_dir.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The agent's `status --json`.
    pub fn status(&self, ns: &Netns) -> anyhow::Result<serde_json::Value> {
        self.status_within(ns, Duration::from_secs(2))
    }

    /// The agent's `status --json`, or an error if it does not answer within `timeout`
    /// (a SIGSTOPped agent never does).
    pub fn status_within(
        &self,
        ns: &Netns,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let out = ns.exec(
            &bin("meshgate-agent")?.display().to_string(),
            &[
                "status",
                "--json",
                "--state-dir",
                &self.state_dir.display().to_string(),
                "--timeout-ms",
                &timeout.as_millis().to_string(),
            ],
        )?;
        serde_json::from_str(&out).context("status --json is not JSON")
    }

    /// Waits until the agent reports a connected session.
    pub fn wait_connected(&mut self, ns: &Netns) -> anyhow::Result<()> {
        let name = self.name.clone();
        wait_until(
            Duration::from_secs(20),
            &format!("agent {name} to connect"),
            || {
                if !self.process.is_running() {
                    bail!("agent {name} exited: {}", self.process.log());
                }
                Ok(self
                    .status(ns)
                    .is_ok_and(|s| s["connection"]["state"] == "connected"))
            },
        )
    }

    /// Waits until the agent's data plane is in `forwarding` (`active`, `standby`, `fenced`).
    pub fn wait_forwarding(
        &self,
        ns: &Netns,
        forwarding: &str,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        wait_until_ok(
            timeout,
            &format!("agent {} to be {forwarding}", self.name),
            || {
                let s = self.status(ns)?;
                if s["forwarding"] == forwarding {
                    Ok(s)
                } else {
                    bail!("it is {}", s["forwarding"])
                }
            },
        )
    }
}

fn str_field(v: &serde_json::Value, field: &str) -> anyhow::Result<String> {
    v[field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no `{field}` in {v}"))
}
