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

/// The agent's connection to one coordinator, and its reconnect state.
struct Link {
    conn: Option<Conn>,
    reconnect_at: Option<Time>,
    backoff: Time,
}

impl Link {
    fn new() -> Self {
        Self {
            conn: None,
            reconnect_at: None,
            backoff: 100_000,
        }
    }
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
    /// One per coordinator: an agent keeps a connection to every coordinator it knows.
    links: Vec<Link>,
    /// Timer events pending, so each instant is armed once.
    armed: std::collections::BTreeSet<Time>,
}

impl Agent {
    pub(crate) fn new(idx: usize, p: Params, coords: usize) -> Self {
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
            links: (0..coords).map(|_| Link::new()).collect(),
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

    /// Alive and registered with every coordinator that is up.
    pub(crate) fn ready(&self, up: &[bool]) -> bool {
        self.alive
            && self
                .links
                .iter()
                .zip(up)
                .all(|(l, up)| !up || l.conn.as_ref().is_some_and(|c| c.welcomed))
    }

    /// The current connections' sessions.
    pub(crate) fn sessions(&self) -> impl Iterator<Item = u64> + '_ {
        self.links
            .iter()
            .filter_map(|l| l.conn.as_ref().map(|c| c.session))
    }

    /// Which coordinator a session of this agent goes to.
    pub(crate) fn coord_of(&self, session: u64) -> Option<usize> {
        self.links
            .iter()
            .position(|l| l.conn.as_ref().is_some_and(|c| c.session == session))
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
            ..Agent::new(i, a.p, a.links.len())
        };
        a.core.initial_actions();
        for l in &mut a.links {
            l.reconnect_at = Some(w.now);
        }
        Self::arm(w, i, w.now);
    }

    /// `kill -9`: the process is gone; its data plane keeps its last state until its own
    /// lease deadline; the coordinators are not told (until the idle timeout).
    pub(crate) fn kill(w: &mut World, i: usize) {
        let a = &mut w.agents[i];
        a.alive = false;
        a.life += 1;
        let gone: Vec<(usize, u64, u64)> = a
            .links
            .iter_mut()
            .enumerate()
            .filter_map(|(k, l)| l.conn.take().map(|c| (k, c.session, c.run)))
            .collect();
        for (coord, session, run) in gone {
            // The coordinator notices at the connection's idle timeout.
            let at = w.now + w.rng.random_range(500_000..3_000_000);
            w.push(
                at,
                Ev::ClosedAtCoord {
                    coord,
                    session,
                    run,
                },
            );
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
        Self::to_all(w, i, Up::Goodbye);
        Self::kill(w, i);
    }

    /// Sends `msg` on every connection.
    fn to_all(w: &mut World, i: usize, msg: Up) {
        let conns: Vec<(usize, u64, u64)> = w.agents[i]
            .links
            .iter()
            .enumerate()
            .filter_map(|(k, l)| l.conn.as_ref().map(|c| (k, c.session, c.run)))
            .collect();
        for (coord, session, run) in conns {
            Self::send_up(w, i, coord, session, run, msg.clone());
        }
    }

    fn send_up(w: &mut World, i: usize, coord: usize, session: u64, run: u64, msg: Up) {
        let cut = w.cut(i, coord);
        let ev = Ev::ToCoord {
            coord,
            session,
            run,
            msg,
        };
        w.send(true, session, cut, ev);
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
        let Some(k) = w.agents[i].coord_of(session) else {
            return;
        };
        let a = &mut w.agents[i];
        let guard = a.p.guard;
        let c = a.links[k].conn.as_mut().expect("coord_of found it");
        // A Welcome that makes this replica active counts as a grant from the Hello's
        // send time, once the agent-wide epoch is settled below.
        let mut welcome_grant = None;
        match msg {
            CoordMsg::Welcome(wl) if !c.welcomed => {
                c.welcomed = true;
                c.lease = LeaseTracker::new(guard);
                if wl.role == Role::Active {
                    let valid = Duration::from_millis(wl.timings.lease_ms.into());
                    welcome_grant = Some((wl.epoch, c.hello_sent, valid));
                }
                (c.role, c.epoch, c.active) = (wl.role, wl.epoch, wl.active);
                c.next_heartbeat = w.now;
                a.links[k].backoff = 100_000;
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
                (c.role, c.epoch, c.active) = (role, epoch, active);
            }
            CoordMsg::HandoverDone { epoch } => c.epoch = c.epoch.max(epoch),
            CoordMsg::Refused { .. } => {
                Self::closed(w, i, session);
                return;
            }
            CoordMsg::Welcome(_) | CoordMsg::Routes(_) | CoordMsg::Filter(_) => return,
        }
        Self::settle(&mut w.agents[i]);
        if let Some((epoch, sent, valid)) = welcome_grant
            && let Some(c) = w.agents[i].links[k].conn.as_mut()
        {
            c.lease.grant_from(epoch, sent, valid);
        }
        Self::feed_status(w, i);
    }

    /// The agent-wide view: the highest epoch any connection reported, active if a
    /// connection says so for that epoch; every connection's lease tracker then accepts
    /// grants of that epoch (so a grant from any coordinator counts).
    fn settle(a: &mut Agent) {
        let best = a
            .links
            .iter()
            .filter_map(|l| l.conn.as_ref().filter(|c| c.welcomed))
            .max_by_key(|c| (c.epoch, c.role == Role::Active))
            .map(|c| (c.role, c.epoch, c.active));
        let active_epoch = best.and_then(|(r, e, _)| (r == Role::Active).then_some(e));
        for c in a.links.iter_mut().filter_map(|l| l.conn.as_mut()) {
            c.lease.set_epoch(active_epoch);
        }
    }

    /// What the runtime does on every status change.
    fn feed_status(w: &mut World, i: usize) {
        let a = &mut w.agents[i];
        let best = a
            .links
            .iter()
            .filter_map(|l| l.conn.as_ref().filter(|c| c.welcomed))
            .max_by_key(|c| (c.epoch, c.role == Role::Active))
            .map(|c| (c.role, c.epoch, c.active));
        let Some((role, epoch, active)) = best else {
            return;
        };
        let deadline = a
            .links
            .iter()
            .filter_map(|l| l.conn.as_ref()?.lease.deadline())
            .max();
        let lease = deadline.filter(|_| role == Role::Active);
        if lease.is_some() {
            a.dp_deadline = lease;
        }
        let ev = Event::Status {
            role,
            epoch,
            active,
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
                Self::to_all(w, i, Up::Handover);
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
        if !w.agents[i].alive {
            return;
        }
        let Some(k) = w.agents[i].coord_of(session) else {
            return;
        };
        let backoff = w.agents[i].links[k].backoff;
        let jitter = w.rng.random_range(0..backoff / 2 + 1);
        let l = &mut w.agents[i].links[k];
        l.conn = None;
        let at = w.now + l.backoff + jitter;
        l.reconnect_at = Some(at);
        l.backoff = (l.backoff * 2).min(400_000);
        Self::arm(w, i, at);
        if w.agents[i].links.iter().all(|l| l.conn.is_none()) {
            Self::feed(w, i, Event::Disconnected);
        } else {
            Self::settle(&mut w.agents[i]);
            Self::feed_status(w, i);
        }
    }

    /// Heartbeats, lease deadline, reconnects.
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
        for k in 0..w.agents[i].links.len() {
            let l = &w.agents[i].links[k];
            if l.conn.is_none() && l.reconnect_at.is_some_and(|t| t <= now) {
                Self::connect(w, i, k);
            }
            Self::heartbeat(w, i, k);
        }
    }

    /// Heartbeats go on every connection.
    fn heartbeat(w: &mut World, i: usize, k: usize) {
        let (now, hb, base) = (w.now, us(w.p.heartbeat), w.base);
        let Some(c) = w.agents[i].links[k].conn.as_mut().filter(|c| c.welcomed) else {
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
        Self::arm(w, i, next);
        Self::send_up(w, i, k, session, run, Up::Heartbeat { seq });
    }

    fn connect(w: &mut World, i: usize, k: usize) {
        let session = w.next_session();
        let run = w.coords[k].run;
        let now = w.at(w.now);
        let a = &mut w.agents[i];
        let l = &mut a.links[k];
        l.reconnect_at = None;
        l.conn = Some(Conn {
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
        // A handshake or Hello lost for good: the attempt times out.
        w.push(
            w.now + CONNECT_TIMEOUT,
            Ev::ConnectTimeout { agent: i, session },
        );
        Self::send_up(w, i, k, session, run, msg);
    }

    /// Whether the connection `session` was welcomed.
    pub(crate) fn welcomed(&self, session: u64) -> bool {
        self.links.iter().any(|l| {
            l.conn
                .as_ref()
                .is_some_and(|c| c.session == session && c.welcomed)
        })
    }
}
