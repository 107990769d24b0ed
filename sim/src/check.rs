//! The invariants, checked after every step.

use std::time::Duration;

use meshgate_proto::CoordMsg;

use crate::Params;
use crate::world::{CLEAN_DELAY, Time, WRITE_LATENCY, us};

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Virtual time, in microseconds.
    pub at: u64,
    /// What went wrong.
    pub what: String,
    /// Every step up to it (empty unless traced).
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "at {:.3} ms: {}", self.at as f64 / 1000.0, self.what)?;
        // `{:#}` prints the whole trace; `{}` its end.
        let skip = if f.alternate() {
            0
        } else {
            self.trace.len().saturating_sub(400)
        };
        if skip > 0 {
            writeln!(f, "  ... {skip} earlier steps")?;
        }
        for line in &self.trace[skip..] {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

fn epoch_of(msg: &CoordMsg) -> Option<u64> {
    match msg {
        CoordMsg::Welcome(w) => Some(w.epoch),
        CoordMsg::LeaseGrant { epoch, .. }
        | CoordMsg::RoleChange { epoch, .. }
        | CoordMsg::HandoverDone { epoch } => Some(*epoch),
        _ => None,
    }
}

/// What the checks remember between steps.
pub(crate) struct Checker {
    p: Params,
    max_sent: u64,
    pending: Option<Violation>,
    heal: Time,
    ready_since: Option<Time>,
    served_since_ready: bool,
    killed: Option<(Time, usize)>,
    outage: Option<Duration>,
    /// A coordinator died while this agent was the healthy active in this epoch.
    calm: Option<(usize, u64)>,
}

impl Checker {
    pub(crate) fn new(p: Params) -> Self {
        Self {
            p,
            max_sent: 0,
            pending: None,
            heal: Time::MAX,
            ready_since: None,
            served_since_ready: false,
            killed: None,
            outage: None,
            calm: None,
        }
    }

    /// Latency the bounds allow on a healthy network: a message each way and a write;
    /// in a cluster, marks, the watch and the promotion each cross a (maybe slow) etcd,
    /// a failed race is retried, and a member re-registers within a keep-alive.
    fn slack(&self) -> Time {
        let cluster = if self.p.cluster { 600_000 } else { 0 };
        2 * CLEAN_DELAY + WRITE_LATENCY + cluster
    }

    pub(crate) fn coordinator_died(&mut self, _now: Time, agent: usize, epoch: u64) {
        self.calm = Some((agent, epoch));
    }

    pub(crate) fn heal_at(&mut self, t: Time) {
        self.heal = t;
    }

    pub(crate) fn sent(&mut self, msg: &CoordMsg) {
        if let Some(e) = epoch_of(msg) {
            self.max_sent = self.max_sent.max(e);
        }
    }

    pub(crate) fn promoted(&mut self, now: Time, epoch: u64) {
        if self.calm.is_some() && self.killed.is_none() && self.pending.is_none() {
            self.pending = Some(Violation {
                at: now,
                what: format!(
                    "needless failover: epoch {epoch} promoted after only a coordinator died"
                ),
                trace: Vec::new(),
            });
        }
        if epoch <= self.max_sent && self.pending.is_none() {
            self.pending = Some(Violation {
                at: now,
                what: format!(
                    "epoch went back: promoted in epoch {epoch}, but epoch {} was already sent",
                    self.max_sent
                ),
                trace: Vec::new(),
            });
        }
    }

    pub(crate) fn killed_active(&mut self, now: Time, agent: usize) {
        self.killed = Some((now, agent));
    }

    pub(crate) fn outage(&self) -> Option<Duration> {
        self.outage
    }

    /// After one step: `forwarding` lists (agent, epoch, asked for handover).
    pub(crate) fn step(
        &mut self,
        now: Time,
        forwarding: &[(usize, u64, bool)],
        all_ready: bool,
        hold_end: Time,
    ) -> Result<(), Violation> {
        if let Some(v) = self.pending.take() {
            return Err(v);
        }
        let fail = |what: String| {
            Err(Violation {
                at: now,
                what,
                trace: Vec::new(),
            })
        };
        let overlap_ok = |a: &(usize, u64, bool), b: &(usize, u64, bool)| a.2 && a.1 < b.1;
        match forwarding {
            [] | [_] => {}
            [a, b] if overlap_ok(a, b) || overlap_ok(b, a) => {}
            _ => {
                return fail(format!(
                    "more than one replica forwards: {forwarding:?} (agent, epoch, asked for handover)"
                ));
            }
        }
        if let Some((agent, epoch)) = self.calm
            && self.killed.is_none()
            && !forwarding.iter().any(|f| f.0 == agent && f.1 == epoch)
        {
            return fail(format!(
                "the healthy active {agent} stopped forwarding in epoch {epoch} after only a coordinator died: {forwarding:?}"
            ));
        }
        if now >= self.heal && self.killed.is_none() {
            if all_ready && self.ready_since.is_none() {
                self.ready_since = Some(now);
            }
            if let Some(ready) = self.ready_since {
                self.served_since_ready |= !forwarding.is_empty();
                let p = self.p;
                let bound = us(p.lease + p.heartbeat + p.tick) + self.slack();
                let deadline = ready.max(hold_end) + bound;
                if now > deadline && !self.served_since_ready {
                    return fail(format!(
                        "healed at {:.3} ms, all registered at {:.3} ms, and still nobody forwards",
                        self.heal as f64 / 1000.0,
                        ready as f64 / 1000.0
                    ));
                }
            }
        }
        if let Some((t, dead)) = self.killed
            && self.outage.is_none()
            && forwarding.iter().any(|f| f.0 != dead)
        {
            let outage = Duration::from_micros(now - t);
            self.outage = Some(outage);
            let bound = self.p.lease + self.p.tick + Duration::from_micros(self.slack());
            if outage > bound {
                return fail(format!(
                    "outage after the active's death {outage:?} > {bound:?}"
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self, end: Time) -> Result<(), Violation> {
        if let Some(v) = self.pending.take() {
            return Err(v);
        }
        if self.killed.is_some() && self.outage.is_none() {
            return Err(Violation {
                at: end,
                what: "nobody took over after the active was killed".into(),
                trace: Vec::new(),
            });
        }
        Ok(())
    }
}
