//! The coordinator's control core: sessions, one [`Election`] per node, the route table
//! and what they make the coordinator say — with no I/O and an injected clock, in the
//! shape of quinn-proto: `handle(now, Input) -> Vec<Output>`. Sessions are ids; the
//! driver (`crate::hub` with tokio and quinn, or the simulation) owns the connections,
//! authenticates Hellos against the store, carries [`Output`]s out and feeds back what
//! happened. The deterministic simulation in the `meshgate-sim` crate drives this very
//! type through restarts, partitions and message loss.
//!
//! # Safety argument (at most one forwarding replica, epochs that never go back)
//!
//! [`meshgate_proto::lease`] shows why a replica stops forwarding before the coordinator
//! that granted its lease believes the lease expired. That argument holds for *one run of
//! one coordinator*. Across restarts, and later across cluster members, three more rules
//! keep it:
//!
//! 1. **No promotion while an earlier lease may live.** A lease this coordinator's
//!    previous run granted ends, on the agent, before `crash + lease` — it was granted
//!    for a heartbeat received before the crash. A new run starts after the crash, so it
//!    promotes nobody before `start + restart_hold`, where `restart_hold` is the longest
//!    lease any run may have granted (the driver keeps that length in the store).
//!    Replicas that register meanwhile become standbys; the longest-connected healthy one
//!    wins when the hold ends.
//! 2. **Epochs never go back.** A promotion takes `max(stored epoch, highest epoch any
//!    registering agent reports in its Hello) + 1`; the store keeps each node's epoch as
//!    a maximum; and a message carrying an epoch leaves only once that epoch is durable
//!    ([`gate`]). So a restarted coordinator cannot reuse an epoch an agent may have
//!    seen, even if a write was lost.
//! 3. **Granting is a permit, not a given** ([`Permit`]). Renewing a lease and promoting
//!    a replica are allowed by the driver: the lone coordinator always allows both (after
//!    the hold).
//!
//! A member of a coordinator cluster (`Config::member`) elects through the shared store
//! instead ([`crate::election::quorum`], with its own safety argument): it grants the
//! active the store records while its store session provably lives, writes a lapse
//! mark when it stops, and only the decider promotes, in one transaction that needs
//! every live member's mark. Those transactions leave as [`Output::Store`]; what the
//! store says comes back as [`Input::Cluster`].
//!
//! Messages to one session leave in the order the core produced them. Heartbeats are
//! rate-limited per session ([`limits`]), so a misbehaving participant cannot hold the
//! state lock the way a fleet does.

mod cluster;
mod gate;
mod io;
pub mod limits;
mod session;
mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_proto::{CoordMsg, Id, Kind, RefuseCode, RouteTable, Timings, Welcome};

use crate::election::quorum::Quorum;
use crate::election::shared::Shared;
use crate::election::{self, Election, Permit};
use gate::Gate;
pub use io::{Config, Input, NodeEvent, Output, Registration, SessionId};
use limits::{RateLimit, Verdict};
use session::Session;
pub use views::{RelayView, ReplicaView};

/// The control core. See the module docs.
pub struct Core {
    cfg: Config,
    sessions: HashMap<SessionId, Session>,
    elections: HashMap<Id, Election>,
    /// A cluster member's standing (`None`: a lone coordinator).
    quorum: Option<Quorum>,
    /// A cluster member's elections (instead of `elections`).
    shared: HashMap<Id, Shared>,
    gate: Gate,
    routes: Arc<RouteTable>,
    permit: Permit,
    /// No promotion before this (restart hold).
    hold_until: Instant,
    /// Sessions came or went since the last relay rebuild: the next tick rebuilds. A
    /// rebuild walks every session, so one per registration would make a fleet of N
    /// connecting cost O(N²).
    relay_stale: bool,
}

impl Core {
    /// A core started at `now`, with nobody connected.
    pub fn new(cfg: Config, now: Instant) -> Self {
        let hold_until = now + cfg.restart_hold;
        let quorum = cfg
            .member
            .clone()
            .map(|me| Quorum::new(me, now, cfg.restart_hold));
        Self {
            cfg,
            sessions: HashMap::new(),
            elections: HashMap::new(),
            quorum,
            shared: HashMap::new(),
            gate: Gate::default(),
            routes: Arc::default(),
            permit: Permit::default(),
            hold_until,
            relay_stale: false,
        }
    }

    /// The timings agents use.
    pub fn timings(&self) -> Timings {
        self.cfg.timings
    }

    fn election_permit(&self) -> Permit {
        let not_before = match self.permit.not_before {
            Some(t) => t.max(self.hold_until),
            None => self.hold_until,
        };
        Permit {
            not_before: Some(not_before),
            ..self.permit
        }
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        let mut persist = Vec::new();
        let mut relay = false;
        match input {
            Input::Register(r) => self.register(now, *r, &mut out, &mut persist, &mut relay),
            Input::Closed(session) => {
                self.end_session(now, session, None, &mut out, &mut persist, &mut relay)
            }
            Input::Heartbeat { session, seq } => {
                let Some(s) = self.sessions.get_mut(&session) else {
                    return out;
                };
                match s.heartbeats.check(now) {
                    Verdict::Allow => {}
                    Verdict::Drop => return out,
                    Verdict::Abuse => {
                        tracing::warn!(session, "heartbeat flood: closing the connection");
                        let why = Some((RefuseCode::ABUSE, "heartbeat flood"));
                        self.end_session(now, session, why, &mut out, &mut persist, &mut relay);
                        return self.finish(out, persist, relay);
                    }
                }
                let event = election::Event::Heartbeat { conn: session, seq };
                self.node_event(now, session, event, &mut out, &mut persist, &mut relay);
            }
            Input::HandoverRequested { session, reason } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.withdrawn = Some(reason);
                }
                let event = election::Event::HandoverRequested { conn: session };
                self.node_event(now, session, event, &mut out, &mut persist, &mut relay);
            }
            Input::Tick => self.tick(now, &mut out, &mut persist, &mut relay),
            Input::EpochsDurable(epochs) => {
                for (node, epoch) in epochs {
                    self.gate.durable(node, epoch, &mut out);
                    if let Some(el) = self.elections.get_mut(&node)
                        && el.epoch() <= epoch
                    {
                        el.announced(now);
                    }
                }
            }
            Input::EpochsFailed(epochs) => self.gate.retry(&epochs, &mut persist),
            Input::Routes(table) => {
                if table.version != self.routes.version || table.entries != self.routes.entries {
                    self.routes = table.clone();
                    out.push(Output::Routes(table));
                    relay = true;
                }
            }
            Input::Deleted(id) => self.deleted(now, id, &mut out, &mut persist, &mut relay),
            Input::Cluster(ev) => self.cluster(now, ev, &mut out, &mut persist, &mut relay),
            Input::Permit(p) => {
                self.permit = p;
                let p = self.election_permit();
                for el in self.elections.values_mut() {
                    el.set_permit(p);
                }
            }
        }
        self.finish(out, persist, relay)
    }

    fn finish(
        &mut self,
        mut out: Vec<Output>,
        persist: Vec<(Id, u64)>,
        relay: bool,
    ) -> Vec<Output> {
        if !persist.is_empty() {
            out.push(Output::PersistEpochs(persist));
        }
        if relay {
            self.relay_stale = false;
            out.push(Output::Relay);
        }
        out
    }

    fn register(
        &mut self,
        now: Instant,
        r: Registration,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
        relay: &mut bool,
    ) {
        // The same replica (or device) again: the old connection is stale; replace it.
        let stale: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.id == r.id && (r.kind == Kind::Device || s.replica_id == r.replica_id)
            })
            .map(|(c, _)| *c)
            .collect();
        for c in stale {
            let why = Some((RefuseCode::REPLACED, "replaced by a newer connection"));
            self.end_session(now, c, why, out, persist, relay);
        }
        if r.kind == Kind::Node && !r.ha && self.sessions.values().any(|s| s.id == r.id) {
            out.push(Output::Close {
                session: r.session,
                code: RefuseCode::NOT_HA,
                reason: format!(
                    "node {} is not HA and already has a replica connected",
                    r.name
                ),
            });
            return;
        }
        let heartbeat = Duration::from_millis(self.cfg.timings.heartbeat_ms.into());
        self.sessions.insert(
            r.session,
            Session {
                kind: r.kind,
                id: r.id,
                replica_id: r.replica_id.clone(),
                mesh_ip: r.mesh_ip,
                origin: r.origin,
                opened_at: r.opened_at,
                heartbeats: RateLimit::heartbeats(heartbeat, now),
                withdrawn: None,
            },
        );
        self.relay_stale = true;
        let mut welcome = Welcome {
            kind: r.kind,
            id: r.id,
            name: r.name.clone(),
            replica_id: r.replica_id.clone(),
            mesh_ip: r.mesh_ip,
            mesh_cidr: self.cfg.mesh,
            role: meshgate_proto::Role::Active,
            epoch: 0,
            timings: self.cfg.timings,
            active: None,
            routes_version: self.routes.version,
        };
        if r.kind == Kind::Device {
            out.push(Output::Send {
                session: r.session,
                msg: CoordMsg::Welcome(Box::new(welcome)),
            });
            return;
        }
        if self.quorum.is_some() {
            return self.register_shared(now, r, welcome, out, persist, relay);
        }
        self.gate.known(r.id, r.stored_epoch);
        let cfg = election::Config {
            lease: self.cfg.lease(),
            overlap: self.cfg.overlap,
        };
        let permit = self.election_permit();
        let el = self.elections.entry(r.id).or_insert_with(|| {
            let mut el = Election::new(cfg, r.stored_epoch);
            el.set_permit(permit);
            el
        });
        el.observe_epoch(r.seen_epoch.max(r.stored_epoch));
        let actions = el.handle(
            now,
            election::Event::Connected {
                conn: r.session,
                lan: r.lan,
            },
        );
        welcome.role = el.role(r.session).unwrap_or(meshgate_proto::Role::Standby);
        welcome.epoch = el.epoch();
        welcome.active = el.active_lan_info();
        // The Welcome leaves first; a promotion it reports waits for its epoch on disk.
        let (role, epoch) = (welcome.role, welcome.epoch);
        let msg = CoordMsg::Welcome(Box::new(welcome));
        self.gate.send(r.id, r.session, msg, out, persist);
        *relay |= self.execute(r.id, actions, out, persist);
        self.record(out, r.id, "registered", &r.replica_id, epoch, None);
        tracing::info!(session = r.session, node = %r.name, replica = %r.replica_id, mesh_ip = %r.mesh_ip, ?role, epoch, origin = %r.origin, "registered");
    }

    fn record(
        &self,
        out: &mut Vec<Output>,
        node: Id,
        event: &'static str,
        replica: &str,
        epoch: u64,
        after_expiry: Option<Duration>,
    ) {
        out.push(Output::Event(NodeEvent {
            node,
            event,
            replica: replica.to_owned(),
            epoch,
            after_expiry,
        }));
    }

    /// Ends a session: closed by its peer (`why` = `None`) or by us.
    fn end_session(
        &mut self,
        now: Instant,
        session: SessionId,
        why: Option<(RefuseCode, &str)>,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
        relay: &mut bool,
    ) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        if let Some((code, reason)) = why {
            out.push(Output::Close {
                session,
                code,
                reason: reason.into(),
            });
        }
        self.relay_stale = true;
        if self.quorum.is_some() {
            let ev = election::Event::Disconnected { conn: session };
            *relay |= self.shared_event(now, s.id, ev, out, persist);
            if why.is_none() {
                let epoch = self.shared.get(&s.id).map_or(0, Shared::epoch);
                self.record(out, s.id, "disconnected", &s.replica_id, epoch, None);
            }
            return;
        }
        let Some(el) = self.elections.get_mut(&s.id) else {
            return;
        };
        let actions = el.handle(now, election::Event::Disconnected { conn: session });
        let epoch = el.epoch();
        *relay |= self.execute(s.id, actions, out, persist);
        if why.is_none() {
            self.record(out, s.id, "disconnected", &s.replica_id, epoch, None);
        }
    }

    fn node_event(
        &mut self,
        now: Instant,
        session: SessionId,
        event: election::Event,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
        relay: &mut bool,
    ) {
        let Some(s) = self.sessions.get(&session).filter(|s| s.kind == Kind::Node) else {
            return;
        };
        let (node, replica) = (s.id, s.replica_id.clone());
        if self.quorum.is_some() {
            if matches!(event, election::Event::HandoverRequested { .. }) {
                let epoch = self.shared.get(&node).map_or(0, Shared::epoch);
                self.record(out, node, "handover_requested", &replica, epoch, None);
            }
            *relay |= self.shared_event(now, node, event, out, persist);
            return;
        }
        let Some(el) = self.elections.get_mut(&node) else {
            return;
        };
        let is_handover = matches!(event, election::Event::HandoverRequested { .. });
        let actions = el.handle(now, event);
        let (epoch, still_active) = (el.epoch(), el.active(now) == Some(session));
        if is_handover {
            self.record(out, node, "handover_requested", &replica, epoch, None);
            if still_active {
                tracing::info!(%node, session, "handover deferred until a healthy standby exists (and any handover in progress ends); the active keeps serving");
            }
        }
        *relay |= self.execute(node, actions, out, persist);
    }

    fn tick(
        &mut self,
        now: Instant,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
        relay: &mut bool,
    ) {
        let mut nodes: Vec<Id> = self.elections.keys().copied().collect();
        // Deterministic order: the simulation replays a seed exactly.
        nodes.sort_unstable();
        for node in nodes {
            let Some(el) = self.elections.get_mut(&node) else {
                continue;
            };
            let actions = el.handle(now, election::Event::Tick);
            if !actions.is_empty() {
                self.execute(node, actions, out, persist);
                *relay = true;
            }
        }
        *relay |= self.tick_shared(now, out, persist);
        *relay |= self.relay_stale;
    }

    fn deleted(
        &mut self,
        now: Instant,
        id: Id,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
        relay: &mut bool,
    ) {
        let mut sessions: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.id == id)
            .map(|(c, _)| *c)
            .collect();
        sessions.sort_unstable();
        for c in sessions {
            let why = Some((RefuseCode::DELETED, "deleted"));
            self.end_session(now, c, why, out, persist, relay);
        }
        self.elections.remove(&id);
        self.shared.remove(&id);
        self.gate.forget(id);
        *relay = true;
    }

    /// Turns one node's election actions into outputs; returns whether roles changed.
    fn execute(
        &mut self,
        node: Id,
        actions: Vec<election::Action>,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
    ) -> bool {
        use election::{Action, Out};
        let mut changed = false;
        for a in actions {
            match a {
                Action::PersistEpoch(e) => self.gate.request(node, e, persist),
                Action::Send { conn, msg } => {
                    changed |= matches!(msg, Out::RoleChange { .. } | Out::HandoverDone { .. });
                    let msg = session::to_wire(msg);
                    self.gate.send(node, conn, msg, out, persist);
                }
                Action::Promoted {
                    conn,
                    epoch,
                    after_expiry,
                } => {
                    changed = true;
                    let replica = self.replica_name(conn);
                    let after_expiry_ms = after_expiry.map(|d| d.as_millis() as u64);
                    tracing::info!(%node, replica, epoch, after_expiry_ms, "promoted");
                    self.record(out, node, "promoted", &replica, epoch, after_expiry);
                }
                Action::Store(op) => out.push(Output::Store(op)),
                Action::LeaseExpired { conn, epoch } => {
                    changed = true;
                    let replica = self.replica_name(conn);
                    tracing::info!(%node, conn, replica, epoch, "lease expired");
                    self.record(out, node, "lease_expired", &replica, epoch, None);
                }
            }
        }
        changed
    }

    fn replica_name(&self, session: SessionId) -> String {
        self.sessions
            .get(&session)
            .map_or_else(|| "?".into(), |s| s.replica_id.clone())
    }

    /// The node's epoch known to be on disk (for tests and the simulation).
    pub fn durable_epoch(&self, node: Id) -> u64 {
        self.gate.durable_epoch(node)
    }
}

#[cfg(test)]
mod tests;
