//! Repeated failovers of one HA node, for the failover benchmark: each trial is a
//! [`Ha::measure_failover`]; between trials the faulted replica is brought back as a
//! standby, so the active alternates between the replicas.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{
    bench,
    failover::{Disturbed, FailoverRun, Fault},
    ha::{HOST_IP, Ha, SETTLE},
    probe::FlowReport,
    wait_until, wait_until_ok,
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
    /// `note`, followed by `k of n trials did not fail over: …` when some did not.
    pub fn note(&self, note: &str) -> String {
        if self.failures.is_empty() {
            return note.to_owned();
        }
        format!("{note}; {}", self.failure_note())
    }

    /// `"k of n trials did not fail over: …"`, or empty.
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
        ha.start_all(&[])?;
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
    /// from `port` up (two per trial, so a late datagram never lands in a later trial). A
    /// trial the node disturbed on its own before the fault ([`Disturbed`]: agents starved
    /// past their lease on a busy machine) is measured again, up to [`RETRIES`] times.
    pub fn trials(&mut self, fault: Fault, n: usize, port: u16) -> anyhow::Result<Trials> {
        let mut trials = Trials {
            runs: Vec::new(),
            failures: Vec::new(),
        };
        for t in 0..n {
            let port = port + 2 * u16::try_from(t).context("too many trials")?;
            let (from, result) = self.trial(fault, port)?;
            match result {
                Ok(run) => {
                    eprintln!(
                        "trial {t}: {} → {}: outage in {} / out {} ms (timely {} / {} ms), \
                         lost {} / {}",
                        run.from,
                        run.to,
                        run.inbound.outage().as_millis(),
                        run.outbound.outage().as_millis(),
                        timely_outage(&run.inbound, TIMELY).as_millis(),
                        timely_outage(&run.outbound, TIMELY).as_millis(),
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

    /// One trial, retried while the node disturbs it before the fault; returns the replica
    /// the fault went to with the outcome.
    fn trial(
        &mut self,
        fault: Fault,
        port: u16,
    ) -> anyhow::Result<(usize, anyhow::Result<FailoverRun>)> {
        let after = if bench::quick() { AFTER / 2 } else { AFTER };
        let mut retries = 0;
        loop {
            let from = wait_until_ok(SETTLE, "an active replica", || self.active_replica())?;
            match self.measure_failover(fault, port, after) {
                Err(e) if e.is::<Disturbed>() && retries < RETRIES => {
                    retries += 1;
                    eprintln!("replica {from}: {e:#}; measuring again");
                    wait_until(SETTLE, "one active replica, the others standby", || {
                        let roles: Vec<String> = (0..self.replicas.len())
                            .map(|i| self.status(i).map(|s| s["forwarding"].to_string()))
                            .collect::<anyhow::Result<_>>()?;
                        let active = roles.iter().filter(|r| *r == "\"active\"").count();
                        let standby = roles.iter().filter(|r| *r == "\"standby\"").count();
                        Ok(active == 1 && active + standby == roles.len())
                    })?;
                }
                result => return Ok((from, result)),
            }
        }
    }
}

/// How often a trial the node disturbed on its own is measured again.
pub const RETRIES: usize = 3;

/// How late a datagram may arrive and still count as delivered in [`timely_outage`].
pub const TIMELY: Duration = Duration::from_millis(100);

/// Like [`FlowReport::outage`], but a datagram delivered more than `max_delay` after it was
/// sent counts as lost: a frozen replica can hold datagrams and let them go a second
/// later, which closes the gap in sequence numbers without anything arriving in time.
pub fn timely_outage(r: &FlowReport, max_delay: Duration) -> Duration {
    let (Some(&first), Some(&last)) = (r.sent_at.first(), r.sent_at.last()) else {
        return Duration::ZERO;
    };
    let interval = (last - first) / u32::try_from(r.sent.max(2) - 1).unwrap_or(u32::MAX);
    let delivered = r.arrivals.iter().filter_map(|&(seq, at)| {
        let sent = *r.sent_at.get(usize::try_from(seq).ok()?)?;
        (at.saturating_duration_since(sent) <= max_delay).then_some(sent)
    });
    // Send times of the timely datagrams, bracketed by the flow's start and last send.
    let mut points: Vec<Instant> = std::iter::once(r.started)
        .chain(delivered)
        .chain(std::iter::once(last))
        .collect();
    points.sort();
    points
        .windows(2)
        .map(|w| (w[1] - w[0]).saturating_sub(interval))
        .max()
        .unwrap_or(Duration::ZERO)
}

/// Milliseconds of a duration, for figures.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;

    fn report(delays_ms: &[Option<u64>]) -> FlowReport {
        let t0 = Instant::now();
        let sent_at: Vec<Instant> = (0..delays_ms.len() as u64)
            .map(|i| t0 + Duration::from_millis(2 * i))
            .collect();
        let arrivals: Vec<(u64, Instant)> = delays_ms
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i as u64, sent_at[i] + Duration::from_millis((*d)?))))
            .collect();
        FlowReport {
            label: "a → b".into(),
            sent: sent_at.len() as u64,
            received: arrivals.len() as u64,
            duplicates: 0,
            errors: BTreeMap::new(),
            gaps: Vec::new(),
            sent_at,
            arrivals,
            error_log: Vec::new(),
            started: t0,
            started_wall: SystemTime::now(),
        }
    }

    #[test]
    fn late_datagrams_count_as_an_outage() {
        // 100 datagrams 2 ms apart; 40..60 arrive a second late (held by a frozen agent).
        let delays: Vec<Option<u64>> = (0..100)
            .map(|i| Some(if (40..60).contains(&i) { 1000 } else { 1 }))
            .collect();
        let r = report(&delays);
        // Sent 39 at 78 ms, next timely 60 at 120 ms, less one interval.
        assert_eq!(timely_outage(&r, TIMELY), Duration::from_millis(40));
        assert_eq!(timely_outage(&r, Duration::from_secs(2)), Duration::ZERO);
    }

    #[test]
    fn lost_datagrams_and_a_lost_tail_count_too() {
        let mut delays: Vec<Option<u64>> = vec![Some(1); 100];
        delays[10..20].fill(None);
        delays[90..].fill(None);
        let r = report(&delays);
        // The gap 10..20 spans 18 ms less 2; the tail 90..100 spans 89 → 99, 20 ms less 2.
        assert_eq!(timely_outage(&r, TIMELY), Duration::from_millis(20));
    }
}
