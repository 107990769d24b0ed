//! The event loop: a virtual clock, one queue of timed events, the simulated network and
//! the fault schedule.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use meshgate_proto::{CoordMsg, Id};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use meshgate_coordinator::election::quorum::{ClusterEvent, QuorumTimings};

use crate::agent::{Agent, Up};
use crate::check::{Checker, Violation};
use crate::coord::Coord;
use crate::etcd::{Etcd, Req};
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
    /// A message reaches a coordinator.
    ToCoord {
        coord: usize,
        session: u64,
        run: u64,
        msg: Up,
    },
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
    /// A coordinator learns a connection is gone.
    ClosedAtCoord {
        coord: usize,
        session: u64,
        run: u64,
    },
    /// A coordinator's clock.
    CoordTick { coord: usize, run: u64 },
    /// An epoch write finished.
    WriteDone {
        coord: usize,
        run: u64,
        epochs: Vec<(Id, u64)>,
    },
    /// etcd applies a request.
    EtcdApply { coord: usize, run: u64, req: Req },
    /// etcd tells a coordinator something.
    ToMember {
        coord: usize,
        run: u64,
        ev: ClusterEvent,
    },
    /// etcd looks for expired member keys.
    EtcdExpire,
    /// A member's keep-alive loop.
    MemberTimer { coord: usize, run: u64 },
    /// A registration went unanswered.
    RegisterTimeout { coord: usize, run: u64 },
    /// An agent's timers (heartbeat, lease deadline, reconnect).
    AgentTimer { agent: usize, life: u64 },
    /// A fault starts or ends.
    Fault(Fault),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    Freeze {
        agent: usize,
        until: Time,
    },
    Partition {
        agent: usize,
        until: Time,
    },
    Kill {
        agent: usize,
    },
    Restart {
        agent: usize,
    },
    Drain {
        agent: usize,
    },
    Exit {
        agent: usize,
        life: u64,
    },
    CoordDown {
        coord: usize,
        until: Time,
    },
    CoordUp {
        coord: usize,
    },
    /// A coordinator cut off from etcd (cluster runs).
    CutEtcd {
        coord: usize,
        until: Time,
    },
    /// A coordinator cut off from every agent (cluster runs).
    CutAgents {
        coord: usize,
        until: Time,
    },
    /// An etcd leader change (cluster runs).
    EtcdStall {
        until: Time,
    },
    /// A coordinator on the agents' side of a partition: cut off from etcd, and one
    /// agent cut off from every other coordinator (cluster runs).
    Isolate {
        coord: usize,
        agent: usize,
        until: Time,
    },
    Heal,
    /// On a healed cluster with a serving active: one coordinator dies for good.
    KillCoord,
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
    pub(crate) coords: Vec<Coord>,
    /// A cluster run's etcd.
    pub(crate) etcd: Option<Etcd>,
    pub(crate) quorum_timings: Option<QuorumTimings>,
    /// Links between an agent and a coordinator cut until then.
    pub(crate) link_cut: std::collections::HashMap<(usize, usize), Time>,
    pub(crate) check: Checker,
    pub(crate) faults: Option<NetFaults>,
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
        let n = if p.cluster {
            rng.random_range(2..=3)
        } else {
            1
        };
        let agents = (0..replicas).map(|i| Agent::new(i, p, n)).collect();
        let quorum_timings = p.cluster.then_some(if p.fence_late {
            // Members that believe their key lives three times longer than it does.
            QuorumTimings {
                member_ttl: crate::CLUSTER_TIMINGS.member_ttl * 3,
                ..crate::CLUSTER_TIMINGS
            }
        } else {
            crate::CLUSTER_TIMINGS
        });
        let etcd = p.cluster.then(|| {
            let latency = if rng.random_bool(0.3) { 20_000 } else { 2_000 };
            Etcd::new(n, latency, us(crate::CLUSTER_TIMINGS.member_ttl))
        });
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
            coords: (0..n).map(|_| Coord::new()).collect(),
            etcd,
            quorum_timings,
            link_cut: Default::default(),
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

    /// How long messages between `agent` and coordinator `coord` are cut.
    pub(crate) fn cut(&self, agent: usize, coord: usize) -> Time {
        self.agents[agent]
            .partitioned_until
            .max(self.coords[coord].agents_cut_until)
            .max(self.link_cut.get(&(agent, coord)).copied().unwrap_or(0))
    }

    /// Both ends learn, after a while, that a connection is gone.
    fn break_connection(&mut self, session: u64, ev: &Ev) {
        self.broken.insert(session);
        let (agent, coord, run) = match ev {
            Ev::ToAgent { agent, .. } => match self.agents[*agent].coord_of(session) {
                Some(k) => (*agent, k, self.coords[k].run),
                None => return,
            },
            Ev::ToCoord { coord, run, .. } => match self.agent_of(session) {
                Some(a) => (a, *coord, *run),
                None => return,
            },
            _ => return,
        };
        let at = self.now + self.rng.random_range(1_000..300_000);
        self.push(at, Ev::ClosedAtAgent { agent, session });
        let at = self.now + self.rng.random_range(1_000..300_000);
        self.push(
            at,
            Ev::ClosedAtCoord {
                coord,
                session,
                run,
            },
        );
    }

    fn agent_of(&self, session: u64) -> Option<usize> {
        self.agents
            .iter()
            .position(|a| a.coord_of(session).is_some())
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
        let up: Vec<bool> = self.coords.iter().map(|c| c.up).collect();
        let all_ready = up.iter().any(|u| *u)
            && self
                .agents
                .iter()
                .all(|a| a.ready(&up) && a.sessions().all(|s| !self.broken.contains(&s)));
        let hold_end = self.coords.iter().map(|c| c.hold_end).max().unwrap_or(0);
        self.check.step(now, &forwarding, all_ready, hold_end)
    }

    fn step(&mut self, ev: Ev) {
        self.log(|| format!("{ev:?}"));
        match ev {
            Ev::ToCoord {
                coord,
                session,
                run,
                msg,
            } => Coord::deliver(self, coord, session, run, msg),
            Ev::ClosedAtCoord {
                coord,
                session,
                run,
            } => Coord::closed(self, coord, session, run),
            Ev::CoordTick { coord, run } => Coord::tick(self, coord, run),
            Ev::WriteDone { coord, run, epochs } => Coord::write_done(self, coord, run, epochs),
            Ev::EtcdApply { coord, run, req } => Etcd::apply(self, coord, run, req),
            Ev::ToMember { coord, run, ev } => Etcd::deliver(self, coord, run, ev),
            Ev::EtcdExpire => Etcd::expire(self),
            Ev::MemberTimer { coord, run } => Etcd::member_timer(self, coord, run),
            Ev::RegisterTimeout { coord, run } => Etcd::register_timeout(self, coord, run),
            Ev::ToAgent {
                agent,
                session,
                msg,
            } => Agent::deliver(self, agent, session, msg),
            Ev::ClosedAtAgent { agent, session } => Agent::closed(self, agent, session),
            Ev::ConnectTimeout { agent, session } => {
                if !self.agents[agent].welcomed(session) {
                    Agent::closed(self, agent, session);
                }
            }
            Ev::AgentTimer { agent, life } => Agent::timer(self, agent, life),
            Ev::Fault(f) => self.fault(f),
        }
    }
}
