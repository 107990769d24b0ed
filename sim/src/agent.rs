//! An agent as the simulation runs it: the real failover core and lease tracker, wired
//! the way `meshgate_proto::client` and the agent's runtime wire them (Welcome,
//! grants, role changes → status → failover core; the data plane's own lease deadline),
//! with heartbeats, reconnects with back-off, freezes, partitions, kills and drains.

use std::time::{Duration, Instant};

use meshgate_agent::failover::{Action, Event, Failover, Forwarding, Mode};
use meshgate_proto::lease::LeaseTracker;
use meshgate_proto::{CoordMsg, LanInfo, Role};
use rand::Rng as _;

use crate::Params;
use crate::world::{Ev, Fault, Time, World, us};

/// How long a connection attempt may take (the real client's is 5 s; the simulation's
/// runs are short).
const CONNECT_TIMEOUT: Time = 500_000;

/// Agent → coordinator.
#[derive(Debug, Clone)]
pub(crate) enum Up {
    Hello {
        agent: usize,
        replica: String,
        seen_epoch: u64,
    },
    Heartbeat {
        seq: u64,
    },
    Handover,
    Goodbye,
}

struct Conn {
    session: u64,
    run: u64,
    hello_sent: Instant,
    welcomed: bool,
    lease: LeaseTracker,
    role: Role,
    epoch: u64,
    active: Option<LanInfo>,
    next_seq: u64,
    next_heartbeat: Time,
}

pub(crate) struct Agent {
    pub(crate) idx: usize,
    p: Params,
    /// Process generation: timers of a killed process are void.
    pub(crate) life: u64,
    pub(crate) alive: bool,
    pub(crate) frozen_until: Time,
    pub(crate) partitioned_until: Time,
    pub(crate) draining: bool,
    /// Sent a handover request while active (it may overlap its successor).
    pub(crate) asked_handover: bool,
    core: Failover,
    /// The data plane's own lease deadline (XDP checks it without the process).
    dp_deadline: Option<Instant>,
    conn: Option<Conn>,
    reconnect_at: Option<Time>,
    backoff: Time,
    /// Timer events pending, so each instant is armed once.
    armed: std::collections::BTreeSet<Time>,
}

impl Agent {
    pub(crate) fn new(idx: usize, p: Params) -> Self {
        Self {
            idx,
            p,
            life: 0,
            alive: false,
            frozen_until: 0,
            partitioned_until: 0,
            draining: false,
            asked_handover: false,
            core: Failover::new(Mode::Node),
            dp_deadline: None,
            conn: None,
            reconnect_at: None,
            backoff: 100_000,
            armed: Default::default(),
        }
    }

    /// The epoch it forwards in at `now`, if it forwards (killed or frozen ones too,
    /// until their data plane's deadline).
    pub(crate) fn forwarding(&self, now: Instant) -> Option<u64> {
        match self.core.forwarding() {
            Forwarding::Active { epoch } if self.dp_deadline.is_some_and(|d| now < d) => {
                Some(epoch)
            }
            _ => None,
        }
    }

    /// Alive, unfrozen and registered.
    pub(crate) fn ready(&self) -> bool {
        self.alive && self.conn.as_ref().is_some_and(|c| c.welcomed)
    }

    /// The current connection's session.
    pub(crate) fn session(&self) -> Option<u64> {
        self.conn.as_ref().map(|c| c.session)
    }

    /// A fresh process starts (and connects).
    pub(crate) fn start(w: &mut World, i: usize) {
        let a = &mut w.agents[i];
        if a.alive {
            return;
        }
        *a = Agent {
            life: a.life + 1,
            alive: true,
            ..Agent::new(i, a.p)
        };
        a.core.initial_actions();
        a.reconnect_at = Some(w.now);
        Self::arm(w, i, w.now);
    }

    /// `kill -9`: the process is gone; its data plane keeps its last state until its own
    /// lease deadline; the coordinator is not told (until the idle timeout).
    pub(crate) fn kill(w: &mut World, i: usize) {
        let a = &mut w.agents[i];
        a.alive = false;
        a.life += 1;
        if let Some(c) = a.conn.take() {
            // The coordinator notices at the connection's idle timeout.
            let at = w.now + w.rng.random_range(500_000..3_000_000);
            let (session, run) = (c.session, c.run);
            w.push(at, Ev::ClosedAtCoord { session, run });
        }
    }

    /// SIGTERM: hand over if active, then leave.
    pub(crate) fn drain(w: &mut World, i: usize) {
        if !w.agents[i].alive {
            return;
        }
        w.agents[i].draining = true;
        Self::feed(w, i, Event::Drain);
        let at = w.now + w.rng.random_range(200_000..800_000);
        let life = w.agents[i].life;
        w.push(at, Ev::Fault(Fault::Exit { agent: i, life }));
    }

    /// A drained agent says goodbye and exits.
    pub(crate) fn exit(w: &mut World, i: usize, life: u64) {
        if w.agents[i].life != life || !w.agents[i].alive {
            return;
        }
        if let Some(c) = w.agents[i].conn.take() {
            let cut = w.agents[i].partitioned_until;
            let ev = Ev::ToCoord {
                session: c.session,
                run: c.run,
                msg: Up::Goodbye,
            };
            w.send(true, c.session, cut, ev);
        }
        Self::kill(w, i);
    }

    /// Arms the agent's timer for `at` (once per instant).
    pub(crate) fn arm(w: &mut World, i: usize, at: Time) {
        let at = at.max(w.now);
        if w.agents[i].armed.insert(at) {
            let life = w.agents[i].life;
            w.push(at, Ev::AgentTimer { agent: i, life });
        }
    }

    fn frozen(w: &mut World, i: usize, ev: Ev) -> bool {
        let until = w.agents[i].frozen_until;
        if w.now < until {
            w.push(until, ev);
            return true;
        }
        false
    }

    pub(crate) fn deliver(w: &mut World, i: usize, session: u64, msg: CoordMsg) {
        if !w.agents[i].alive
            || Self::frozen(
                w,
                i,
                Ev::ToAgent {
                    agent: i,
                    session,
                    msg: msg.clone(),
                },
            )
        {
            return;
        }
        let a = &mut w.agents[i];
        let guard = a.p.guard;
        let Some(c) = a.conn.as_mut().filter(|c| c.session == session) else {
            return;
        };
        match msg {
            CoordMsg::Welcome(wl) if !c.welcomed => {
                c.welcomed = true;
                c.lease = LeaseTracker::new(guard);
                if wl.role == Role::Active {
                    c.lease.set_epoch(Some(wl.epoch));
                    let valid = Duration::from_millis(wl.timings.lease_ms.into());
                    c.lease.grant_from(wl.epoch, c.hello_sent, valid);
                }
                (c.role, c.epoch, c.active) = (wl.role, wl.epoch, wl.active);
                c.next_heartbeat = w.now;
                a.backoff = 100_000;
                Self::arm(w, i, w.now);
            }
            _ if !c.welcomed => return,
            CoordMsg::LeaseGrant {
                epoch,
                valid_for_ms,
                seq,
            } => {
                let valid = Duration::from_millis(valid_for_ms.into());
                if !c.lease.grant(epoch, seq, valid) {
                    return;
                }
            }
            CoordMsg::RoleChange {
                role,
                epoch,
                active,
            } => {
                c.lease.set_epoch((role == Role::Active).then_some(epoch));
                (c.role, c.epoch, c.active) = (role, epoch, active);
            }
            CoordMsg::HandoverDone { epoch } => c.epoch = epoch,
            CoordMsg::Refused { .. } => {
                Self::closed(w, i, session);
                return;
            }
            CoordMsg::Welcome(_)
            | CoordMsg::Routes(_)
            | CoordMsg::Filter(_)
            | CoordMsg::Members(_) => return,
        }
        Self::feed_status(w, i);
    }

    /// What the runtime does on every status change.
    fn feed_status(w: &mut World, i: usize) {
        let a = &mut w.agents[i];
        let Some(c) = a.conn.as_ref() else {
            return;
        };
        let deadline = c.lease.deadline();
        let lease = deadline.filter(|_| c.role == Role::Active);
        if lease.is_some() {
            a.dp_deadline = lease;
        }
        let ev = Event::Status {
            role: c.role,
            epoch: c.epoch,
            active: c.active,
            lease_deadline: deadline,
        };
        Self::feed(w, i, ev);
        if lease.is_none() {
            w.agents[i].dp_deadline = None;
        }
    }

    fn feed(w: &mut World, i: usize, ev: Event) {
        let now = w.at(w.now);
        let actions = w.agents[i].core.handle(now, ev);
        for act in actions {
            if let Action::RequestHandover(_) = act {
                w.agents[i].asked_handover = true;
                if let Some(c) = w.agents[i].conn.as_ref() {
                    let (session, run) = (c.session, c.run);
                    let cut = w.agents[i].partitioned_until;
                    w.send(
                        true,
                        session,
                        cut,
                        Ev::ToCoord {
                            session,
                            run,
                            msg: Up::Handover,
                        },
                    );
                }
            }
        }
        let a = &mut w.agents[i];
        if a.core.forwarding().role() != Role::Active && a.core.role() != Role::Active {
            a.asked_handover = false;
        }
        if let Some(d) = a.core.next_deadline() {
            let at = us(d.saturating_duration_since(w.base));
            Self::arm(w, i, at);
        }
    }

    pub(crate) fn closed(w: &mut World, i: usize, session: u64) {
        let a = &mut w.agents[i];
        if !a.alive || a.conn.as_ref().is_none_or(|c| c.session != session) {
            return;
        }
        a.conn = None;
        let jitter = w.rng.random_range(0..a.backoff / 2 + 1);
        let a = &mut w.agents[i];
        let at = w.now + a.backoff + jitter;
        a.reconnect_at = Some(at);
        a.backoff = (a.backoff * 2).min(400_000);
        Self::arm(w, i, at);
        Self::feed(w, i, Event::Disconnected);
    }

    /// Heartbeats, lease deadline, reconnect.
    pub(crate) fn timer(w: &mut World, i: usize, life: u64) {
        if w.agents[i].life != life || !w.agents[i].alive {
            return;
        }
        w.agents[i].armed.remove(&w.now);
        let until = w.agents[i].frozen_until;
        if w.now < until {
            Self::arm(w, i, until);
            return;
        }
        Self::feed(w, i, Event::Tick);
        let now = w.now;
        if w.agents[i].conn.is_none() && w.agents[i].reconnect_at.is_some_and(|t| t <= now) {
            Self::connect(w, i);
        }
        let hb = us(w.p.heartbeat);
        let base = w.base;
        let a = &mut w.agents[i];
        let Some(c) = a.conn.as_mut().filter(|c| c.welcomed) else {
            return;
        };
        if c.next_heartbeat > now {
            return;
        }
        let seq = c.next_seq;
        c.next_seq += 1;
        c.lease.sent(seq, base + Duration::from_micros(now));
        c.next_heartbeat = now + hb;
        let (session, run, next) = (c.session, c.run, c.next_heartbeat);
        let cut = a.partitioned_until;
        Self::arm(w, i, next);
        w.send(
            true,
            session,
            cut,
            Ev::ToCoord {
                session,
                run,
                msg: Up::Heartbeat { seq },
            },
        );
    }

    fn connect(w: &mut World, i: usize) {
        let session = w.next_session();
        let run = w.coord.run;
        let now = w.at(w.now);
        let a = &mut w.agents[i];
        a.reconnect_at = None;
        a.conn = Some(Conn {
            session,
            run,
            hello_sent: now,
            welcomed: false,
            lease: LeaseTracker::new(a.p.guard),
            role: Role::Standby,
            epoch: 0,
            active: None,
            next_seq: 1,
            next_heartbeat: 0,
        });
        let msg = Up::Hello {
            agent: i,
            replica: format!("replica-{i}"),
            seen_epoch: a.core.forwarding().epoch(),
        };
        let cut = a.partitioned_until;
        // A handshake or Hello lost for good: the attempt times out.
        w.push(
            w.now + CONNECT_TIMEOUT,
            Ev::ConnectTimeout { agent: i, session },
        );
        w.send(true, session, cut, Ev::ToCoord { session, run, msg });
    }
}
