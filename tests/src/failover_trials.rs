//! Repeated failovers of one HA node, for the failover benchmark: each trial is a
//! [`Ha::measure_failover`]; between trials the faulted replica is brought back as a
//! standby, so the active alternates between the replicas.

use std::time::Duration;

use anyhow::Context;

use crate::{
    failover::{FailoverRun, Fault},
    ha::{HOST_IP, Ha},
};

/// How long traffic runs after the successor is active, so the flows show it resumed.
const AFTER: Duration = Duration::from_millis(1000);

/// The trials of one fault kind.
pub struct Trials {
    /// The runs that failed over.
    pub runs: Vec<FailoverRun>,
    /// Why the others did not: one line per failed trial.
    pub failures: Vec<String>,
}

impl Trials {
    /// `"k of n trials failed: …"` for a figure's note, or empty.
    pub fn failure_note(&self) -> String {
        if self.failures.is_empty() {
            return String::new();
        }
        format!(
            "{} of {} trials did not fail over (left out): {}",
            self.failures.len(),
            self.failures.len() + self.runs.len(),
            self.failures.join("; ")
        )
    }
}

impl Ha {
    /// `Ha::new(replicas)` with replica a active, the others standby and the device
    /// connected, once traffic flows both ways.
    pub fn started(replicas: usize) -> anyhow::Result<Self> {
        let mut ha = Ha::new(replicas)?;
        ha.start_replica(0, &[])?;
        ha.wait_forwarding(0, "active")?;
        for i in 1..replicas {
            ha.start_replica(i, &[])?;
            ha.wait_forwarding(i, "standby")?;
        }
        ha.start_device()?;
        let device_ip = ha.device_mesh_ip()?;
        ha.wait_ping(&ha.device, HOST_IP)?;
        ha.wait_ping(&ha.host, &device_ip)?;
        Ok(ha)
    }

    /// Brings replica `i` back as a standby after `fault`: a killed or drained agent is
    /// started again, a cut link is set up again, a frozen agent (woken already) is given
    /// time to rejoin; whatever does not come back as standby is restarted.
    pub fn restore(&mut self, i: usize, fault: Fault) -> anyhow::Result<()> {
        let rejoined = match fault {
            Fault::Kill | Fault::Drain => false,
            Fault::LinkDown => {
                self.replicas[i].ns.ip("link set eth1 up")?;
                self.wait_forwarding(i, "standby").is_ok()
            }
            Fault::Freeze(_) => self.wait_forwarding(i, "standby").is_ok(),
        };
        if !rejoined {
            if let Some(agent) = self.replicas[i].agent.as_mut() {
                agent.process.kill();
            }
            self.start_replica(i, &[])?;
            self.wait_forwarding(i, "standby")?;
        }
        // Traffic must flow again before the next trial measures it.
        let device_ip = self.device_mesh_ip()?;
        self.wait_ping(&self.device, HOST_IP)?;
        self.wait_ping(&self.host, &device_ip)
    }

    /// Runs `n` trials of `fault` against whichever replica is active, UDP probes on ports
    /// from `port` up (two per trial, so a late datagram never lands in a later trial).
    pub fn trials(&mut self, fault: Fault, n: usize, port: u16) -> anyhow::Result<Trials> {
        let mut trials = Trials {
            runs: Vec::new(),
            failures: Vec::new(),
        };
        for t in 0..n {
            let from = self.active_replica()?;
            let port = port + 2 * u16::try_from(t).context("too many trials")?;
            match self.measure_failover(fault, port, AFTER) {
                Ok(run) => {
                    eprintln!(
                        "trial {t}: {} → {}: outage in {} ms, out {} ms, lost {}+{}",
                        run.from,
                        run.to,
                        run.inbound.outage().as_millis(),
                        run.outbound.outage().as_millis(),
                        run.inbound.lost(),
                        run.outbound.lost()
                    );
                    trials.runs.push(run);
                }
                Err(e) => {
                    eprintln!("trial {t}: {} failed: {e:#}", fault.describe());
                    trials.failures.push(format!("trial {t}: {e:#}"));
                }
            }
            self.restore(from, fault)
                .with_context(|| format!("replica {from} did not come back after trial {t}"))?;
            // Make sure the new active is settled (the old one may still be rejoining).
            self.wait_forwarding(self.active_replica()?, "active")?;
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(trials)
    }
}

/// Milliseconds of a duration, for figures.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
