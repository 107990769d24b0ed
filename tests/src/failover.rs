//! One failover, measured: numbered probes both ways through the HA node, a fault injected
//! into the active replica, every replica's data-plane role sampled every 50 ms, and the
//! coordinator's election events and the successor's flip steps lined up on one clock.
//! The end-to-end scenarios assert on a [`FailoverRun`]; `cargo xtask demo` prints its
//! [`FailoverRun::timeline`]; the failover benchmark repeats it.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;

use crate::{
    ha::{HOST_IP, Ha, SETTLE},
    probe::{FlowReport, Probe},
    wait_until_ok,
};

/// How often roles are sampled during a run.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long a sample waits for one agent's `status`: a frozen agent never answers, and
/// must not hold up the samples of the others.
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(300);

/// What happens to the active replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of its agent.
    Kill,
    /// `SIGSTOP`, held for the given time, then `SIGCONT`.
    Freeze(Duration),
    /// Its LAN link set down (and left down).
    LinkDown,
    /// `SIGTERM`: a graceful handover.
    Drain,
}

impl Fault {
    /// What a person reads: `kill -9`, `SIGSTOP 1000 ms`, …
    pub fn describe(&self) -> String {
        match self {
            Self::Kill => "kill -9".into(),
            Self::Freeze(d) => format!("SIGSTOP for {} ms, then SIGCONT", d.as_millis()),
            Self::LinkDown => "LAN link down".into(),
            Self::Drain => "SIGTERM (graceful handover)".into(),
        }
    }
}

/// [`Ha::measure_failover`] found the node changing roles on its own before the fault
/// (what a machine too loaded for the 250 ms lease does); nothing was injected.
#[derive(Debug)]
pub struct Disturbed(pub String);

impl std::fmt::Display for Disturbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the node changed roles before the fault: {}", self.0)
    }
}

impl std::error::Error for Disturbed {}

/// One sample of every replica's data-plane role (`None`: the agent did not answer).
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// Per replica: `status --json`'s `forwarding`.
    pub forwarding: Vec<Option<String>>,
    /// How many replicas the coordinator's `connections` called `active`.
    pub api_actives: Option<usize>,
}

/// A measured failover.
#[derive(Debug, Clone)]
pub struct FailoverRun {
    /// The fault.
    pub fault: Fault,
    /// The replica that was active.
    pub from: usize,
    /// The replica that took over.
    pub to: usize,
    /// When the fault was injected.
    pub injected: Instant,
    /// When a frozen replica was let go again (`SIGCONT`), for [`Fault::Freeze`].
    pub woke: Option<Instant>,
    /// The same moment on the wall clock.
    pub injected_wall: SystemTime,
    /// device → LAN host: traffic into the subnet.
    pub inbound: FlowReport,
    /// LAN host → device: traffic out of the subnet, which follows the VIP.
    pub outbound: FlowReport,
    /// The coordinator's events for the node from the injection on.
    pub events: Vec<serde_json::Value>,
    /// The successor's `last_flip`.
    pub flip: serde_json::Value,
    /// Replica names by replica id, for the timeline.
    pub names: Vec<(String, String)>,
    /// Role samples.
    pub samples: Vec<Sample>,
}

impl Ha {
    /// The replica whose data plane is `active` now.
    pub fn active_replica(&self) -> anyhow::Result<usize> {
        (0..self.replicas.len())
            .find(|&i| {
                self.replicas[i].agent.is_some()
                    && self.status(i).is_ok_and(|s| s["forwarding"] == "active")
            })
            .context("no replica is active")
    }

    /// Injects `fault` into the active replica while probes run both ways (UDP ports
    /// `port` and `port + 1`), waits until another replica is active, lets traffic run
    /// for `after`, and returns the measurements. The device must be running.
    pub fn measure_failover(
        &self,
        fault: Fault,
        port: u16,
        after: Duration,
    ) -> anyhow::Result<FailoverRun> {
        let from = self.active_replica()?;
        let device_ip = self.device_mesh_ip()?;
        let warmup = unix_us(SystemTime::now());
        let probe = Probe::start(
            ("device", &self.device, &device_ip),
            ("host", &self.host, HOST_IP),
            port,
        )?;
        std::thread::sleep(Duration::from_millis(300));
        // A node that failed over on its own (agents starved of CPU past the lease) is not
        // the baseline the fault is measured against: refuse before injecting anything.
        let calm = self
            .node_events(warmup)?
            .into_iter()
            .find(|e| e["event"] != "registered");
        if let Some(e) = calm.map(|e| e.to_string()).or_else(|| {
            let s = self.status(from).ok()?;
            (s["forwarding"] != "active").then(|| format!("replica {from} is {}", s["forwarding"]))
        }) {
            probe.stop()?;
            return Err(Disturbed(e).into());
        }
        let stop = AtomicBool::new(false);
        let (injected, injected_wall, woke, to, samples) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| self.sample_roles(&stop));
            let injected = Instant::now();
            let injected_wall = SystemTime::now();
            let result = self
                .inject(from, fault)
                .and_then(|woke| Ok((woke, self.wait_successor(from)?)));
            if result.is_ok() {
                std::thread::sleep(after);
            }
            stop.store(true, Ordering::SeqCst);
            let samples = sampler.join().unwrap_or_default();
            result.map(|(woke, to)| (injected, injected_wall, woke, to, samples))
        })?;
        let (inbound, outbound) = probe.stop()?;
        let events = self.node_events(unix_us(injected_wall).saturating_sub(1_000_000))?;
        let flip = self.status(to)?["last_flip"].clone();
        let names = self
            .replicas
            .iter()
            .filter_map(|r| Some((r.replica_id.clone()?, r.name.clone())))
            .collect();
        Ok(FailoverRun {
            fault,
            from,
            to,
            injected,
            woke,
            injected_wall,
            inbound,
            outbound,
            events,
            flip,
            names,
            samples,
        })
    }

    /// The coordinator's events for the node since `since_us` (Unix microseconds).
    fn node_events(&self, since_us: u64) -> anyhow::Result<Vec<serde_json::Value>> {
        let r = self
            .lab
            .api()?
            .get(&format!("/api/v1/nodes/{}/events", self.node.0))?;
        Ok(r.result()?
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["at_unix_us"].as_u64().unwrap_or(0) >= since_us)
            .cloned()
            .collect())
    }

    /// Injects the fault; returns when a frozen replica was let go again.
    fn inject(&self, i: usize, fault: Fault) -> anyhow::Result<Option<Instant>> {
        let process = &self.agent(i)?.process;
        match fault {
            Fault::Kill => process.signal(libc::SIGKILL)?,
            Fault::Drain => process.signal(libc::SIGTERM)?,
            Fault::LinkDown => drop(self.replicas[i].ns.ip("link set eth1 down")?),
            Fault::Freeze(held) => {
                process.signal(libc::SIGSTOP)?;
                std::thread::sleep(held);
                let woke = Instant::now();
                process.signal(libc::SIGCONT)?;
                return Ok(Some(woke));
            }
        }
        Ok(None)
    }

    fn wait_successor(&self, from: usize) -> anyhow::Result<usize> {
        wait_until_ok(SETTLE, "another replica to become active", || {
            (0..self.replicas.len())
                .filter(|&i| i != from && self.replicas[i].agent.is_some())
                .find(|&i| self.status(i).is_ok_and(|s| s["forwarding"] == "active"))
                .context("none yet")
        })
    }

    fn sample_roles(&self, stop: &AtomicBool) -> Vec<Sample> {
        let mut samples = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let at = Instant::now();
            // Every replica and the API at once, so one that does not answer delays none.
            let (forwarding, api_actives) = std::thread::scope(|scope| {
                let asks: Vec<_> = (0..self.replicas.len())
                    .map(|i| {
                        scope.spawn(move || {
                            let agent = self.agent(i).ok()?;
                            let s = agent
                                .status_within(&self.replicas[i].ns, SAMPLE_TIMEOUT)
                                .ok()?;
                            s["forwarding"].as_str().map(str::to_owned)
                        })
                    })
                    .collect();
                let api_actives = self
                    .lab
                    .connections(&self.node.0)
                    .ok()
                    .map(|c| c.iter().filter(|r| r["ha_status"] == "active").count());
                let forwarding: Vec<Option<String>> =
                    asks.into_iter().map(|h| h.join().ok().flatten()).collect();
                (forwarding, api_actives)
            });
            samples.push(Sample {
                at,
                forwarding,
                api_actives,
            });
            std::thread::sleep(SAMPLE_EVERY.saturating_sub(at.elapsed()));
        }
        samples
    }
}

impl FailoverRun {
    /// The most replicas any one sample saw forwarding as active (agents' own view).
    pub fn max_agent_actives(&self) -> usize {
        self.samples
            .iter()
            .map(|s| {
                s.forwarding
                    .iter()
                    .filter(|f| f.as_deref() == Some("active"))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// The most replicas any one sample of `connections` called active.
    pub fn max_api_actives(&self) -> usize {
        self.samples
            .iter()
            .filter_map(|s| s.api_actives)
            .max()
            .unwrap_or(0)
    }

    /// Replica `i`'s answers in the samples taken at or after `since`, with each sample's
    /// time in ms from the injection (`None`: it did not answer in time).
    pub fn roles_of(&self, i: usize, since: Instant) -> Vec<(f64, Option<&str>)> {
        self.samples
            .iter()
            .filter(|s| s.at >= since)
            .map(|s| (self.since_ms(s.at), s.forwarding[i].as_deref()))
            .collect()
    }

    /// Milliseconds from the injection to a wall-clock time in microseconds.
    fn offset_ms(&self, unix_us_at: u64) -> f64 {
        (unix_us_at as f64 - unix_us(self.injected_wall) as f64) / 1000.0
    }

    /// Milliseconds from the injection to a monotonic instant.
    fn since_ms(&self, t: Instant) -> f64 {
        if t >= self.injected {
            (t - self.injected).as_secs_f64() * 1000.0
        } else {
            -((self.injected - t).as_secs_f64() * 1000.0)
        }
    }

    /// The coordinator's first event of `kind` after the injection, in ms from it.
    pub fn event_ms(&self, kind: &str) -> Option<f64> {
        self.events
            .iter()
            .find(|e| {
                e["event"] == kind && self.offset_ms(e["at_unix_us"].as_u64().unwrap_or(0)) >= 0.0
            })
            .map(|e| self.offset_ms(e["at_unix_us"].as_u64().unwrap_or(0)))
    }

    /// The successor's flip steps as `(name, start ms from the injection, duration ms)`.
    pub fn flip_steps(&self) -> Vec<(String, f64, f64)> {
        let mut at = self.offset_ms(self.flip["started_unix_us"].as_u64().unwrap_or(0));
        self.flip["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let name = s[0].as_str()?.to_owned();
                let ms = s[1].as_f64()? / 1000.0;
                let step = (name, at, ms);
                at += ms;
                Some(step)
            })
            .collect()
    }

    /// When traffic first got through again after the worst gap, per direction, in ms
    /// from the injection (`None`: no gap, or it never resumed).
    pub fn resumed_ms(&self) -> (Option<f64>, Option<f64>) {
        let resumed = |r: &FlowReport| {
            r.worst_gap()
                .and_then(|g| g.first_resumed_arrived)
                .map(|t| self.since_ms(t))
        };
        (resumed(&self.inbound), resumed(&self.outbound))
    }

    fn replica(&self, event: &serde_json::Value) -> String {
        let id = event["replica"].as_str().unwrap_or("?");
        self.names
            .iter()
            .find(|(rid, _)| rid == id)
            .map_or_else(|| id.to_owned(), |(_, name)| name.clone())
    }

    /// A timeline for a person: one `(ms from the injection, what)` per line.
    pub fn timeline(&self) -> Vec<(f64, String)> {
        let name = |i: usize| format!("replica {}", (b'a' + i as u8) as char);
        let mut lines = vec![(
            0.0,
            format!("{} of {}", self.fault.describe(), name(self.from)),
        )];
        for e in &self.events {
            let at = self.offset_ms(e["at_unix_us"].as_u64().unwrap_or(0));
            if at < 0.0 {
                continue;
            }
            let what = match e["event"].as_str().unwrap_or("") {
                "lease_expired" => {
                    format!("coordinator: lease of replica {} expired", self.replica(e))
                }
                "promoted" => format!(
                    "coordinator: replica {} promoted (epoch {})",
                    self.replica(e),
                    e["epoch"]
                ),
                "handover_requested" => format!(
                    "coordinator: replica {} asked to hand over",
                    self.replica(e)
                ),
                "disconnected" => format!("coordinator: replica {} disconnected", self.replica(e)),
                "registered" => format!("coordinator: replica {} registered", self.replica(e)),
                other => format!("coordinator: {other}"),
            };
            lines.push((at, what));
        }
        for (step, at, ms) in self.flip_steps() {
            lines.push((at, format!("{}: {step} ({ms:.2} ms)", name(self.to))));
        }
        let (inbound, outbound) = self.resumed_ms();
        if let Some(at) = inbound {
            lines.push((at, "first packet through, device → LAN host".into()));
        }
        if let Some(at) = outbound {
            lines.push((at, "first packet through, LAN host → device".into()));
        }
        if let Some(at) = self.woke {
            lines.push((self.since_ms(at), format!("SIGCONT of {}", name(self.from))));
        }
        // Each change in what the samples saw.
        let mut last = None;
        for s in &self.samples {
            let seen: Vec<String> = s
                .forwarding
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    format!(
                        "{}={}",
                        (b'a' + i as u8) as char,
                        f.as_deref().unwrap_or("-")
                    )
                })
                .collect();
            let api = s
                .api_actives
                .map_or_else(|| "?".to_owned(), |n| n.to_string());
            let seen = format!(
                "roles sampled: {} (active in the API: {api})",
                seen.join(" ")
            );
            if last.as_ref() != Some(&seen) {
                lines.push((self.since_ms(s.at), seen.clone()));
                last = Some(seen);
            }
        }
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        lines
    }
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
