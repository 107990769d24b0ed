//! A coordinator cluster in namespaces: three sites on one transport bridge, each running
//! an etcd member and a coordinator started with `--etcd`, like three machines.
//!
//! Site `i` (1..=3) is a namespace at `10.99.0.i` with etcd `e{i}` (client port 2379,
//! peer port 2380) and coordinator `c{i}` (QUIC `10.99.0.i:7443`, API on the namespace's
//! `127.0.0.1:7080`). Hosts for agents get `10.99.0.10` and up. Everything is a guard:
//! the namespaces and processes go away on drop, also when a test fails.

use std::path::PathBuf;
use std::sync::atomic::AtomicU8;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::http::Api;
use crate::lab::{bin, transport_host};
use crate::{Lan, Netns, Process, wait_until, wait_until_ok};

/// Number of sites (etcd members and coordinators).
pub const SITES: usize = 3;
/// Each coordinator's API address, inside its site's namespace.
pub const API_ADDR: &str = "127.0.0.1:7080";
/// The QUIC port of every coordinator.
pub const QUIC_PORT: u16 = 7443;

/// One machine of the cluster.
pub struct Site {
    /// Its namespace.
    pub ns: Netns,
    /// Its address on the transport network.
    pub ip: String,
    etcd: Option<Process>,
    coordinator: Option<Process>,
    starts: u32,
}

/// Three sites and the transport bridge between them.
pub struct Cluster {
    /// Scratch space: etcd and coordinator data dirs, logs.
    pub dir: tempfile::TempDir,
    /// The transport network.
    pub wan: Lan,
    /// The sites, `c1`/`e1` first.
    pub sites: Vec<Site>,
    next_host: AtomicU8,
}

/// The etcd binary (Debian's `etcd-server`, installed by `cargo xtask setup`).
pub fn etcd_bin() -> anyhow::Result<PathBuf> {
    let p = PathBuf::from("/usr/bin/etcd");
    anyhow::ensure!(
        p.is_file(),
        "etcd is not installed: run `cargo xtask setup` (Debian package etcd-server)"
    );
    Ok(p)
}

impl Cluster {
    /// Creates the sites, starts the etcd members and then all coordinators at once
    /// (so the first ones race to create the cluster identity), and waits until every
    /// coordinator is ready.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("meshgate-cluster-")
            .tempdir()
            .context("failed to create a temp dir")?;
        let wan = Lan::new("wan")?;
        let mut sites = Vec::new();
        for i in 1..=SITES {
            let ns = Netns::new(&format!("site{i}"))?;
            wan.attach(&ns, "eth0")?;
            let ip = format!("10.99.0.{i}");
            ns.ip(&format!("addr add {ip}/24 dev eth0"))?;
            sites.push(Site {
                ns,
                ip,
                etcd: None,
                coordinator: None,
                starts: 0,
            });
        }
        let mut c = Self {
            dir,
            wan,
            sites,
            next_host: AtomicU8::new(10),
        };
        for i in 0..SITES {
            c.start_etcd(i)?;
        }
        c.wait_etcd_healthy()?;
        for i in 0..SITES {
            c.spawn_coordinator(i)?;
        }
        for i in 0..SITES {
            c.wait_ready(i)?;
        }
        Ok(c)
    }

    /// `http://10.99.0.1:2379,…`: what coordinators get as `--etcd`.
    pub fn endpoints(&self) -> String {
        self.sites
            .iter()
            .map(|s| format!("http://{}:2379", s.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Coordinator `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("c{}", i + 1))
    }

    /// Starts (or restarts, on its old data dir) etcd member `i`.
    pub fn start_etcd(&mut self, i: usize) -> anyhow::Result<()> {
        let initial: Vec<String> = self
            .sites
            .iter()
            .enumerate()
            .map(|(j, s)| format!("e{}=http://{}:2380", j + 1, s.ip))
            .collect();
        let site = &self.sites[i];
        let ip = &site.ip;
        let mut cmd = site.ns.command(etcd_bin()?);
        cmd.arg(format!("--name=e{}", i + 1))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join(format!("e{}", i + 1)).display()
            ))
            .arg(format!("--listen-client-urls=http://{ip}:2379"))
            .arg(format!("--advertise-client-urls=http://{ip}:2379"))
            .arg(format!("--listen-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-advertise-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-state=new")
            .arg(format!(
                "--initial-cluster-token=mgt-{}",
                std::process::id()
            ))
            .arg("--logger=zap")
            .arg("--log-level=warn");
        let starts = site.starts;
        let log = self.log(&format!("e{}-{starts}", i + 1));
        let p = self.sites[i].ns.spawn(&format!("e{}", i + 1), cmd, &log)?;
        self.sites[i].etcd = Some(p);
        self.sites[i].starts += 1;
        Ok(())
    }

    /// Waits until every etcd member answers healthy (`etcdctl endpoint health`).
    pub fn wait_etcd_healthy(&self) -> anyhow::Result<()> {
        let eps = self.endpoints();
        wait_until(Duration::from_secs(30), "all etcd members healthy", || {
            Ok(self.sites[0]
                .ns
                .exec(
                    "etcdctl",
                    &[
                        "--endpoints",
                        &eps,
                        "--command-timeout=1s",
                        "endpoint",
                        "health",
                    ],
                )
                .is_ok())
        })
    }

    fn spawn_coordinator(&mut self, i: usize) -> anyhow::Result<()> {
        let site = &self.sites[i];
        let mut cmd = site.ns.command(bin("meshgate-coordinator")?);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--name", &format!("c{}", i + 1)])
            .args(["--quic-listen", &format!("{}:{QUIC_PORT}", site.ip)])
            .args(["--api-listen", API_ADDR])
            .args(["--public-addr", &format!("{}:{QUIC_PORT}", site.ip)])
            .args(["--etcd", &self.endpoints()])
            .env("RUST_LOG", "info");
        let log = self.log(&format!("c{}-{}", i + 1, site.starts));
        let p = site.ns.spawn(&format!("c{}", i + 1), cmd, &log)?;
        self.sites[i].coordinator = Some(p);
        self.sites[i].starts += 1;
        Ok(())
    }

    /// Starts (or restarts) coordinator `i` and waits until it is ready.
    pub fn start_coordinator(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn_coordinator(i)?;
        self.wait_ready(i)
    }

    fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        wait_until(
            Duration::from_secs(30),
            &format!("coordinator c{} to be ready", i + 1),
            || {
                if let Some(p) = self.sites[i].coordinator.as_mut()
                    && !p.is_running()
                {
                    bail!("c{} exited: {}", i + 1, p.log());
                }
                Ok(self
                    .api(i)
                    .and_then(|a| a.get("/ready"))
                    .is_ok_and(|r| r.status == 200))
            },
        )
    }

    /// kill -9 of coordinator `i`.
    pub fn kill_coordinator(&mut self, i: usize) {
        if let Some(mut p) = self.sites[i].coordinator.take() {
            p.kill();
        }
    }

    /// kill -9 of etcd member `i`.
    pub fn kill_etcd(&mut self, i: usize) {
        if let Some(mut p) = self.sites[i].etcd.take() {
            p.kill();
        }
    }

    /// Whether etcd member `i` / coordinator `i` runs.
    pub fn running(&mut self, i: usize) -> (bool, bool) {
        let s = &mut self.sites[i];
        (
            s.etcd.as_mut().is_some_and(Process::is_running),
            s.coordinator.as_mut().is_some_and(Process::is_running),
        )
    }

    /// Coordinator `i`'s API with the admin token from its own data dir.
    pub fn api(&self, i: usize) -> anyhow::Result<Api<'_>> {
        let token = std::fs::read_to_string(self.data_dir(i).join("admin-token"))
            .context("no admin-token yet")?;
        Ok(Api::new(&self.sites[i].ns, API_ADDR, &token))
    }

    /// Coordinator `i`'s `GET /api/v1/cluster` result.
    pub fn status(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        Ok(self.api(i)?.get("/api/v1/cluster")?.result()?.clone())
    }

    /// The index of the etcd leader, as coordinator `via` reports etcd's health.
    pub fn etcd_leader(&self, via: usize) -> anyhow::Result<usize> {
        wait_until_ok(Duration::from_secs(15), "an etcd leader", || {
            let s = self.status(via)?;
            let eps = s["etcd"]["endpoints"]
                .as_array()
                .context("no etcd endpoints")?;
            let leader = eps
                .iter()
                .position(|e| e["leader"] == true)
                .context("no endpoint is the leader")?;
            Ok(leader)
        })
    }

    /// A new namespace on the transport network for an agent.
    pub fn host(&self, tag: &str) -> anyhow::Result<Netns> {
        transport_host(&self.wan, &self.next_host, tag)
    }

    /// Where scratch files of a component go (e.g. an agent's state dir).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Logs of every process so far, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            names.sort();
            for p in names
                .iter()
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
            {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("== {}\n", p.display()));
                for l in tail.iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Polls `f` every 5 ms until it holds; returns how long that took, or fails after
/// `timeout`.
pub fn time_until(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
