//! The event loop: a virtual clock, one queue of timed events, the simulated network and
//! the fault schedule.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use meshgate_proto::{CoordMsg, Id};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::agent::{Agent, Up};
use crate::check::{Checker, Violation};
use crate::coord::Coord;
use crate::{Outcome, Params};

/// The node every replica belongs to.
pub(crate) const NODE: Id = Id([1; 16]);

/// Virtual time in microseconds since the start.
pub(crate) type Time = u64;

pub(crate) fn us(d: Duration) -> Time {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Something due at a time.
#[derive(Debug, Clone)]
pub(crate) enum Ev {
    /// A message reaches the coordinator.
    ToCoord { session: u64, run: u64, msg: Up },
    /// A message reaches an agent.
    ToAgent {
        agent: usize,
        session: u64,
        msg: CoordMsg,
    },
    /// An agent learns its connection is gone.
    ClosedAtAgent { agent: usize, session: u64 },
    /// A connection attempt gives up unless it was welcomed.
    ConnectTimeout { agent: usize, session: u64 },
    /// The coordinator learns a connection is gone.
    ClosedAtCoord { session: u64, run: u64 },
    /// The coordinator's clock.
    CoordTick { run: u64 },
    /// An epoch write finished.
    WriteDone { run: u64, epochs: Vec<(Id, u64)> },
    /// An agent's timers (heartbeat, lease deadline, reconnect).
    AgentTimer { agent: usize, life: u64 },
    /// A fault starts or ends.
    Fault(Fault),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    Freeze { agent: usize, until: Time },
    Partition { agent: usize, until: Time },
    Kill { agent: usize },
    Restart { agent: usize },
    Drain { agent: usize },
    Exit { agent: usize, life: u64 },
    CoordDown { until: Time },
    CoordUp,
    Heal,
    KillActive,
    End,
}

struct Queued {
    at: Time,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Network behaviour of one run while faults are on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NetFaults {
    drop: f64,
    dup: f64,
    reorder: f64,
}

/// Largest one-way delay on a healthy network.
pub(crate) const CLEAN_DELAY: Time = 2_000;
/// Largest epoch write latency.
pub(crate) const WRITE_LATENCY: Time = 3_000;

/// The simulated world.
pub struct World {
    pub(crate) p: Params,
    pub(crate) rng: StdRng,
    pub(crate) now: Time,
    pub(crate) base: Instant,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    pub(crate) agents: Vec<Agent>,
    pub(crate) coord: Coord,
    pub(crate) check: Checker,
    faults: Option<NetFaults>,
    /// Per direction and session, when the last in-order message arrives (QUIC streams
    /// are ordered; a "reorder" fault lets a message skip the line).
    fifo: std::collections::HashMap<(bool, u64), Time>,
    pub(crate) trace: Option<Vec<String>>,
    pub(crate) outcome: Outcome,
    sessions: u64,
    /// Connections that broke: nothing crosses them any more.
    broken: std::collections::HashSet<u64>,
}

impl World {
    /// A world for `seed`; with `trace`, every step is recorded.
    pub fn new(seed: u64, p: Params, trace: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let base = Instant::now();
        let replicas = rng.random_range(2..=3);
        let agents = (0..replicas).map(|i| Agent::new(i, p)).collect();
        let faults = NetFaults {
            drop: rng.random_range(0.0..0.2),
            dup: rng.random_range(0.0..0.1),
            reorder: rng.random_range(0.0..0.1),
        };
        let mut w = Self {
            p,
            rng,
            now: 0,
            base,
            queue: BinaryHeap::new(),
            seq: 0,
            agents,
            coord: Coord::new(p, base),
            check: Checker::new(p),
            faults: Some(faults),
            fifo: Default::default(),
            trace: trace.then(Vec::new),
            outcome: Outcome::default(),
            sessions: 0,
            broken: Default::default(),
        };
        w.schedule_faults();
        w
    }

    pub(crate) fn next_session(&mut self) -> u64 {
        self.sessions += 1;
        self.sessions
    }

    pub(crate) fn at(&self, t: Time) -> Instant {
        self.base + Duration::from_micros(t)
    }

    pub(crate) fn push(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        }));
    }

    pub(crate) fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("{:>9.3}ms {}", self.now as f64 / 1000.0, line()));
        }
    }

    /// Sends over the network: `up` is agent → coordinator.
    ///
    /// The control stream is reliable and ordered (QUIC), so a control message is lost
    /// only with its connection, and otherwise at most delayed by retransmission — with
    /// everything behind it (head-of-line blocking). Heartbeats and lease grants, which
    /// the lease protocol must survive losing, are also dropped, duplicated and
    /// reordered one by one: a harsher network than QUIC's.
    /// A partition (until `cut_until`) drops the lossy ones and holds the rest back.
    pub(crate) fn send(&mut self, up: bool, session: u64, cut_until: Time, ev: Ev) {
        let lossy = matches!(
            ev,
            Ev::ToCoord {
                msg: Up::Heartbeat { .. },
                ..
            } | Ev::ToAgent {
                msg: CoordMsg::LeaseGrant { .. },
                ..
            }
        );
        if (cut_until > self.now && lossy) || self.broken.contains(&session) {
            return;
        }
        let mut copies = 1;
        let mut delay =
            self.rng.random_range(100..CLEAN_DELAY) + cut_until.saturating_sub(self.now);
        let mut ordered = true;
        if let Some(f) = self.faults {
            if self.rng.random_bool(f.drop) {
                if lossy {
                    self.log(|| format!("net: dropped {ev:?}"));
                    return;
                }
                if self.rng.random_bool(0.25) {
                    self.log(|| format!("net: connection {session} breaks, losing {ev:?}"));
                    self.break_connection(session, &ev);
                    return;
                }
                delay += self.rng.random_range(20_000..300_000);
            }
            if lossy && self.rng.random_bool(f.dup) {
                copies = 2;
            }
            if lossy && self.rng.random_bool(f.reorder) {
                ordered = false;
                delay = self.rng.random_range(0..60_000);
            }
        }
        for _ in 0..copies {
            let mut at = self.now + delay;
            if ordered {
                let last = self.fifo.entry((up, session)).or_default();
                at = at.max(*last);
                *last = at;
            }
            self.push(at, ev.clone());
            delay = self.rng.random_range(100..CLEAN_DELAY * 10);
        }
    }

    /// Both ends learn, after a while, that a connection is gone.
    fn break_connection(&mut self, session: u64, ev: &Ev) {
        self.broken.insert(session);
        let (agent, run) = match ev {
            Ev::ToAgent { agent, .. } => (*agent, self.coord.run),
            Ev::ToCoord { session, run, .. } => match self.agent_of(*session) {
                Some(a) => (a, *run),
                None => return,
            },
            _ => return,
        };
        let at = self.now + self.rng.random_range(1_000..300_000);
        self.push(at, Ev::ClosedAtAgent { agent, session });
        let at = self.now + self.rng.random_range(1_000..300_000);
        self.push(at, Ev::ClosedAtCoord { session, run });
    }

    fn agent_of(&self, session: u64) -> Option<usize> {
        self.agents
            .iter()
            .position(|a| a.session() == Some(session))
    }

    fn schedule_faults(&mut self) {
        let mut chaos: Time = self.rng.random_range(400_000..1_500_000);
        let n = self.agents.len();
        for _ in 0..self.rng.random_range(0..6) {
            let at = self.rng.random_range(0..chaos);
            let agent = self.rng.random_range(0..n);
            let f = match self.rng.random_range(0..6) {
                0 => Fault::Freeze {
                    agent,
                    until: at + self.rng.random_range(10_000..700_000),
                },
                1 => Fault::Partition {
                    agent,
                    until: at + self.rng.random_range(10_000..700_000),
                },
                2 => Fault::Kill { agent },
                3 => Fault::Drain { agent },
                _ => Fault::CoordDown {
                    until: at + self.rng.random_range(0..300_000),
                },
            };
            // Healing waits for every freeze and partition to end on its own, so what
            // they held back arrives as it would.
            if let Fault::Freeze { until, .. } | Fault::Partition { until, .. } = f {
                chaos = chaos.max(until);
            }
            self.push(at, Ev::Fault(f));
        }
        self.push(chaos, Ev::Fault(Fault::Heal));
        self.check.heal_at(chaos);
        // Long enough after healing for a back-off, a restart hold and a lease.
        let kill = chaos + 1_000_000;
        self.push(kill, Ev::Fault(Fault::KillActive));
        self.push(kill + 500_000, Ev::Fault(Fault::End));
        for a in 0..n {
            let at = self.rng.random_range(0..50_000);
            self.push(at, Ev::Fault(Fault::Restart { agent: a }));
        }
        Coord::start(self, 0);
    }

    /// Runs to the end or the first violation.
    pub fn run(mut self) -> Result<Outcome, Box<Violation>> {
        while let Some(Reverse(q)) = self.queue.pop() {
            self.now = q.at;
            self.outcome.steps += 1;
            if matches!(q.ev, Ev::Fault(Fault::End)) {
                break;
            }
            self.step(q.ev);
            if let Err(v) = self.check_all() {
                return Err(Box::new(Violation {
                    trace: self.trace.take().unwrap_or_default(),
                    ..v
                }));
            }
        }
        let end = self.now;
        self.check.finish(end).map_err(|v| {
            Box::new(Violation {
                trace: self.trace.take().unwrap_or_default(),
                ..v
            })
        })?;
        self.outcome.outage = self.check.outage();
        Ok(self.outcome.clone())
    }

    fn check_all(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let at = self.at(now);
        let forwarding: Vec<(usize, u64, bool)> = self
            .agents
            .iter()
            .filter_map(|a| a.forwarding(at).map(|e| (a.idx, e, a.asked_handover)))
            .collect();
        let all_ready = self.coord.up
            && self
                .agents
                .iter()
                .all(|a| a.ready() && a.session().is_some_and(|s| !self.broken.contains(&s)));
        let hold_end = self.coord.hold_end;
        self.check.step(now, &forwarding, all_ready, hold_end)
    }

    fn step(&mut self, ev: Ev) {
        self.log(|| format!("{ev:?}"));
        match ev {
            Ev::ToCoord { session, run, msg } => Coord::deliver(self, session, run, msg),
            Ev::ClosedAtCoord { session, run } => Coord::closed(self, session, run),
            Ev::CoordTick { run } => Coord::tick(self, run),
            Ev::WriteDone { run, epochs } => Coord::write_done(self, run, epochs),
            Ev::ToAgent {
                agent,
                session,
                msg,
            } => Agent::deliver(self, agent, session, msg),
            Ev::ClosedAtAgent { agent, session } => Agent::closed(self, agent, session),
            Ev::ConnectTimeout { agent, session } => {
                let welcomed = self.agents[agent].ready();
                if !welcomed {
                    Agent::closed(self, agent, session);
                }
            }
            Ev::AgentTimer { agent, life } => Agent::timer(self, agent, life),
            Ev::Fault(f) => self.fault(f),
        }
    }

    fn fault(&mut self, f: Fault) {
        match f {
            Fault::Freeze { agent, until } => self.agents[agent].frozen_until = until,
            Fault::Partition { agent, until } => self.agents[agent].partitioned_until = until,
            Fault::Kill { agent } => Agent::kill(self, agent),
            Fault::Restart { agent } => Agent::start(self, agent),
            Fault::Drain { agent } => Agent::drain(self, agent),
            Fault::CoordDown { until } => {
                self.outcome.restarts += 1;
                Coord::crash(self);
                self.push(until, Ev::Fault(Fault::CoordUp));
            }
            Fault::CoordUp => {
                let now = self.now;
                Coord::start(self, now);
            }
            Fault::Exit { agent, life } => Agent::exit(self, agent, life),
            Fault::Heal => {
                self.faults = None;
                for a in 0..self.agents.len() {
                    if !self.agents[a].alive || self.agents[a].draining {
                        Agent::kill(self, a);
                        Agent::start(self, a);
                    }
                    let now = self.now;
                    Agent::arm(self, a, now);
                }
                let now = self.now;
                Coord::start(self, now);
            }
            Fault::KillActive => {
                let at = self.at(self.now);
                let active: Vec<usize> = self
                    .agents
                    .iter()
                    .filter(|a| a.forwarding(at).is_some())
                    .map(|a| a.idx)
                    .collect();
                if let [a] = active[..] {
                    self.check.killed_active(self.now, a);
                    Agent::kill(self, a);
                }
            }
            Fault::End => {}
        }
    }
}
