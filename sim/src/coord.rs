//! The coordinator as the simulation runs it: the real [`Core`], a store that keeps
//! epochs (as maxima) across restarts, and an epoch writer whose writes take time and
//! are lost if the coordinator dies first. A restart forgets everything else.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use meshgate_coordinator::core::{self, Core, Input, Output, Registration};
use meshgate_proto::{CoordMsg, Id, Kind, RefuseCode, Timings};
use rand::Rng as _;

use crate::Params;
use crate::agent::Up;
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
    /// The store: epochs on disk.
    store: HashMap<Id, u64>,
}

impl Coord {
    pub(crate) fn new(_p: Params, _base: std::time::Instant) -> Self {
        Self {
            core: None,
            up: false,
            run: 0,
            hold_end: 0,
            sessions: HashMap::new(),
            hellos: HashSet::new(),
            store: HashMap::new(),
        }
    }

    fn config(p: Params) -> core::Config {
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
        }
    }

    /// A new run starts (no-op if one is up).
    pub(crate) fn start(w: &mut World, now: Time) {
        if w.coord.up {
            return;
        }
        let cfg = Self::config(w.p);
        let hold = us(cfg.restart_hold);
        w.coord.core = Some(Core::new(cfg, w.at(now)));
        w.coord.up = true;
        w.coord.run += 1;
        w.coord.hold_end = now + hold;
        w.coord.sessions.clear();
        w.coord.hellos.clear();
        let run = w.coord.run;
        w.log(|| format!("coordinator run {run} starts"));
        w.push(now + us(w.p.tick), Ev::CoordTick { run });
    }

    /// The process dies: connections break (agents hear of it a little later), writes in
    /// flight are lost, memory is gone.
    pub(crate) fn crash(w: &mut World) {
        if !w.coord.up {
            return;
        }
        w.coord.up = false;
        w.coord.core = None;
        let sessions: Vec<(u64, usize)> = w.coord.sessions.drain().collect();
        let mut sessions = sessions;
        sessions.sort_unstable();
        for (session, agent) in sessions {
            let at = w.now + w.rng.random_range(0..200_000);
            w.push(at, Ev::ClosedAtAgent { agent, session });
        }
    }

    pub(crate) fn deliver(w: &mut World, session: u64, run: u64, msg: Up) {
        if !w.coord.up {
            if let Up::Hello { agent, .. } = msg {
                // Nobody listens: the handshake fails.
                let at = w.now + CLEAN_DELAY;
                w.push(at, Ev::ClosedAtAgent { agent, session });
            }
            return;
        }
        let input = match msg {
            Up::Hello {
                agent,
                replica,
                seen_epoch,
            } => {
                if run != w.coord.run {
                    // Dialled an earlier run: the new process resets the connection.
                    let at = w.now + CLEAN_DELAY;
                    w.push(at, Ev::ClosedAtAgent { agent, session });
                    return;
                }
                if !w.coord.hellos.insert(session) {
                    return;
                }
                w.coord.sessions.insert(session, agent);
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
                    stored_epoch: w.coord.store.get(&NODE).copied().unwrap_or(0),
                    seen_epoch,
                }))
            }
            // A message sent on a connection of an earlier run never reaches this one.
            _ if !w.coord.sessions.contains_key(&session) => return,
            Up::Heartbeat { seq } => Input::Heartbeat { session, seq },
            Up::Handover => Input::HandoverRequested { session },
            Up::Goodbye => {
                w.coord.sessions.remove(&session);
                Input::Closed(session)
            }
        };
        Self::input(w, input);
    }

    pub(crate) fn closed(w: &mut World, session: u64, run: u64) {
        if w.coord.up && run == w.coord.run && w.coord.sessions.remove(&session).is_some() {
            Self::input(w, Input::Closed(session));
        }
    }

    pub(crate) fn tick(w: &mut World, run: u64) {
        if !w.coord.up || run != w.coord.run {
            return;
        }
        Self::input(w, Input::Tick);
        let next = w.now + us(w.p.tick);
        w.push(next, Ev::CoordTick { run });
    }

    pub(crate) fn write_done(w: &mut World, run: u64, epochs: Vec<(Id, u64)>) {
        if !w.coord.up || run != w.coord.run {
            return;
        }
        for (node, e) in &epochs {
            let stored = w.coord.store.entry(*node).or_default();
            *stored = (*stored).max(*e);
        }
        Self::input(w, Input::EpochsDurable(epochs));
    }

    fn input(w: &mut World, input: Input) {
        let at = w.at(w.now);
        let Some(core) = w.coord.core.as_mut() else {
            return;
        };
        let outputs = core.handle(at, input);
        for o in outputs {
            Self::output(w, o);
        }
    }

    fn output(w: &mut World, o: Output) {
        let run = w.coord.run;
        match o {
            Output::Send { session, msg } => {
                let Some(&agent) = w.coord.sessions.get(&session) else {
                    return;
                };
                w.check.sent(&msg);
                let cut = w.agents[agent].partitioned_until;
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
            Output::Close {
                session,
                code,
                reason,
            } => {
                let Some(agent) = w.coord.sessions.remove(&session) else {
                    return;
                };
                let msg = CoordMsg::Refused { code, reason };
                let cut = w.agents[agent].partitioned_until;
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
                if code != RefuseCode::NOT_HA {
                    let at = w.now + CLEAN_DELAY * 2;
                    w.push(at, Ev::ClosedAtAgent { agent, session });
                }
            }
            Output::PersistEpochs(epochs) => {
                let at = w.now + w.rng.random_range(200..WRITE_LATENCY);
                w.push(at, Ev::WriteDone { run, epochs });
            }
            Output::Event(e) => {
                if e.event == "promoted" {
                    w.outcome.promotions += 1;
                    w.check.promoted(w.now, e.epoch);
                }
            }
            Output::Relay | Output::Routes(_) => {}
        }
    }
}
