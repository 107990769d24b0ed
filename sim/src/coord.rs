//! A coordinator as the simulation runs it: the real [`Core`], a store that keeps
//! epochs (as maxima) across restarts, and an epoch writer whose writes take time and
//! are lost if the coordinator dies first (a lone coordinator); or, in a cluster run, the
//! core as a member whose store transactions go to the modelled etcd ([`crate::etcd`]).
//! A restart forgets everything else.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use meshgate_coordinator::core::{self, Core, Input, Output, Registration};
use meshgate_proto::{CoordMsg, Id, Kind, RefuseCode, Timings};
use rand::Rng as _;

use meshgate_coordinator::election::quorum::ClusterEvent;

use crate::Params;
use crate::agent::Up;
use crate::etcd::{Etcd, Req};
use crate::world::{CLEAN_DELAY, Ev, NODE, Time, WRITE_LATENCY, World, us};

pub(crate) struct Coord {
    core: Option<Core>,
    pub(crate) up: bool,
    /// Which run of the process this is; events of earlier runs are void.
    pub(crate) run: u64,
    /// When the current run's restart hold ends.
    pub(crate) hold_end: Time,
    /// Live sessions: the agent behind each.
    sessions: HashMap<u64, usize>,
    /// Sessions a Hello arrived on (so duplicated Hellos register once).
    hellos: HashSet<u64>,
    /// The store: epochs on disk (a lone coordinator's).
    store: HashMap<Id, u64>,
    /// Cut off from the agents until then (cluster runs).
    pub(crate) agents_cut_until: Time,
    /// Cut off from etcd until then (cluster runs).
    pub(crate) etcd_cut_until: Time,
}

impl Coord {
    pub(crate) fn new() -> Self {
        Self {
            core: None,
            up: false,
            run: 0,
            hold_end: 0,
            sessions: HashMap::new(),
            hellos: HashSet::new(),
            store: HashMap::new(),
            agents_cut_until: 0,
            etcd_cut_until: 0,
        }
    }

    /// The member name in a cluster run.
    pub(crate) fn name(idx: usize) -> String {
        format!("c{idx}")
    }

    fn config(p: Params, member: Option<String>) -> core::Config {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        core::Config {
            timings: Timings {
                heartbeat_ms: ms(p.heartbeat),
                lease_ms: ms(p.lease),
                guard_ms: ms(p.guard),
            },
            overlap: p.heartbeat * 3,
            mesh: "100.96.0.0/12".parse().expect("valid CIDR"),
            restart_hold: if p.restart_hold {
                p.lease
            } else {
                Duration::ZERO
            },
            member,
        }
    }

    /// A new run of coordinator `k` starts (no-op if one is up).
    pub(crate) fn start(w: &mut World, k: usize, now: Time) {
        if w.coords[k].up {
            return;
        }
        let member = w.etcd.is_some().then(|| Self::name(k));
        let cfg = Self::config(w.p, member);
        let hold = us(cfg.restart_hold);
        let mut core = Core::new(cfg, w.at(now));
        if let Some(t) = w.quorum_timings {
            core.set_quorum_timings(t);
        }
        let c = &mut w.coords[k];
        c.core = Some(core);
        c.up = true;
        c.run += 1;
        c.hold_end = now + hold;
        c.sessions.clear();
        c.hellos.clear();
        let run = c.run;
        w.log(|| format!("coordinator {k} run {run} starts"));
        w.push(now + us(w.p.tick), Ev::CoordTick { coord: k, run });
        if w.etcd.is_some() {
            Etcd::member_started(w, k);
        }
    }

    /// The process dies: connections break (agents hear of it a little later), writes in
    /// flight are lost, memory is gone.
    pub(crate) fn crash(w: &mut World, k: usize) {
        if !w.coords[k].up {
            return;
        }
        w.coords[k].up = false;
        w.coords[k].core = None;
        let mut sessions: Vec<(u64, usize)> = w.coords[k].sessions.drain().collect();
        sessions.sort_unstable();
        for (session, agent) in sessions {
            let at = w.now + w.rng.random_range(0..200_000);
            w.push(at, Ev::ClosedAtAgent { agent, session });
        }
    }

    pub(crate) fn deliver(w: &mut World, k: usize, session: u64, run: u64, msg: Up) {
        if !w.coords[k].up {
            if let Up::Hello { agent, .. } = msg {
                // Nobody listens: the handshake fails.
                let at = w.now + CLEAN_DELAY;
                w.push(at, Ev::ClosedAtAgent { agent, session });
            }
            return;
        }
        let c = &mut w.coords[k];
        let input = match msg {
            Up::Hello {
                agent,
                replica,
                seen_epoch,
            } => {
                if run != c.run {
                    // Dialled an earlier run: the new process resets the connection.
                    let at = w.now + CLEAN_DELAY;
                    w.push(at, Ev::ClosedAtAgent { agent, session });
                    return;
                }
                if !c.hellos.insert(session) {
                    return;
                }
                c.sessions.insert(session, agent);
                Input::Register(Box::new(Registration {
                    session,
                    kind: Kind::Node,
                    id: NODE,
                    name: "gw".into(),
                    ha: true,
                    replica_id: replica,
                    mesh_ip: [100, 96, 0, 10 + agent as u8].into(),
                    lan: None,
                    origin: SocketAddr::from(([192, 0, 2, 1 + agent as u8], 7443)),
                    opened_at: SystemTime::UNIX_EPOCH,
                    stored_epoch: c.store.get(&NODE).copied().unwrap_or(0),
                    seen_epoch,
                }))
            }
            // A message sent on a connection of an earlier run never reaches this one.
            _ if !c.sessions.contains_key(&session) => return,
            Up::Heartbeat { seq } => Input::Heartbeat { session, seq },
            Up::Handover => Input::HandoverRequested {
                session,
                reason: meshgate_proto::HandoverReason::Drain,
            },
            Up::Goodbye => {
                c.sessions.remove(&session);
                Input::Closed(session)
            }
        };
        Self::input(w, k, input);
    }

    pub(crate) fn closed(w: &mut World, k: usize, session: u64, run: u64) {
        let c = &mut w.coords[k];
        if c.up && run == c.run && c.sessions.remove(&session).is_some() {
            Self::input(w, k, Input::Closed(session));
        }
    }

    pub(crate) fn tick(w: &mut World, k: usize, run: u64) {
        if !w.coords[k].up || run != w.coords[k].run {
            return;
        }
        Self::input(w, k, Input::Tick);
        let next = w.now + us(w.p.tick);
        w.push(next, Ev::CoordTick { coord: k, run });
    }

    pub(crate) fn write_done(w: &mut World, k: usize, run: u64, epochs: Vec<(Id, u64)>) {
        if !w.coords[k].up || run != w.coords[k].run {
            return;
        }
        for (node, e) in &epochs {
            let stored = w.coords[k].store.entry(*node).or_default();
            *stored = (*stored).max(*e);
        }
        Self::input(w, k, Input::EpochsDurable(epochs));
    }

    /// What etcd says, for the current run only.
    pub(crate) fn cluster(w: &mut World, k: usize, run: u64, ev: ClusterEvent) {
        if w.coords[k].up && run == w.coords[k].run {
            Self::input(w, k, Input::Cluster(ev));
        }
    }

    fn input(w: &mut World, k: usize, input: Input) {
        let at = w.at(w.now);
        let Some(core) = w.coords[k].core.as_mut() else {
            return;
        };
        let outputs = core.handle(at, input);
        for o in outputs {
            Self::output(w, k, o);
        }
    }

    /// Sends `msg` from coordinator `k` to `agent` over `session`, through whatever cut
    /// lies between them.
    fn to_agent(w: &mut World, k: usize, agent: usize, session: core::SessionId, msg: CoordMsg) {
        let cut = w.cut(agent, k);
        w.send(
            false,
            session,
            cut,
            Ev::ToAgent {
                agent,
                session,
                msg,
            },
        );
    }

    fn output(w: &mut World, k: usize, o: Output) {
        let run = w.coords[k].run;
        match o {
            Output::Send { session, msg } => {
                let Some(&agent) = w.coords[k].sessions.get(&session) else {
                    return;
                };
                w.check.sent(&msg);
                Self::to_agent(w, k, agent, session, msg);
            }
            Output::Close {
                session,
                code,
                reason,
            } => {
                let Some(agent) = w.coords[k].sessions.remove(&session) else {
                    return;
                };
                let msg = CoordMsg::Refused { code, reason };
                Self::to_agent(w, k, agent, session, msg);
                if code != RefuseCode::NOT_HA {
                    let at = w.now + CLEAN_DELAY * 2;
                    w.push(at, Ev::ClosedAtAgent { agent, session });
                }
            }
            Output::PersistEpochs(epochs) => {
                let at = w.now + w.rng.random_range(200..WRITE_LATENCY);
                w.push(
                    at,
                    Ev::WriteDone {
                        coord: k,
                        run,
                        epochs,
                    },
                );
            }
            Output::Store(op) => Etcd::request(w, k, Req::Op(op)),
            Output::Event(e) => {
                if e.event == "promoted" {
                    w.outcome.promotions += 1;
                    if w.etcd.is_none() {
                        w.check.promoted(w.now, e.epoch);
                    }
                }
            }
            Output::Relay | Output::Routes(_) => {}
        }
    }
}
