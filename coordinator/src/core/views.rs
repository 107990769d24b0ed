//! Read-only views of the core for the relay, the API and metrics.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use meshgate_proto::{Id, Kind, Role, RouteTable};

use super::{Core, SessionId};
use crate::election::Election;
use crate::election::shared::Shared;
use crate::relay::Sender;

/// One node's election as the views need it: a lone coordinator's or a member's.
#[derive(Clone, Copy)]
enum NodeRef<'a> {
    Local(&'a Election),
    Shared(&'a Shared),
}

impl NodeRef<'_> {
    fn forwarder(self, now: Instant) -> Option<SessionId> {
        match self {
            Self::Local(e) => e.forwarder(now),
            Self::Shared(s) => s.active(),
        }
    }

    fn may_send(self, conn: SessionId, now: Instant) -> bool {
        match self {
            Self::Local(e) => e.may_send(conn, now),
            Self::Shared(s) => s.active() == Some(conn),
        }
    }

    fn active(self, now: Instant) -> Option<SessionId> {
        match self {
            Self::Local(e) => e.active(now),
            Self::Shared(s) => s.active(),
        }
    }

    fn draining(self) -> Option<SessionId> {
        match self {
            Self::Local(e) => e.draining(),
            Self::Shared(_) => None,
        }
    }

    fn epoch(self) -> u64 {
        match self {
            Self::Local(e) => e.epoch(),
            Self::Shared(s) => s.epoch(),
        }
    }

    fn replicas(self) -> Vec<(SessionId, Role)> {
        match self {
            Self::Local(e) => e.replicas().collect(),
            Self::Shared(s) => s.replicas().collect(),
        }
    }
}

/// What the relay table is built from.
pub struct RelayView {
    /// Every session with its sending rights.
    pub senders: Vec<(SessionId, Sender)>,
    /// Where each node's traffic goes.
    pub active: HashMap<Id, SessionId>,
    /// The route table.
    pub routes: Arc<RouteTable>,
}

/// A replica as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaView {
    /// Replica id.
    pub id: String,
    /// Mesh IP.
    pub mesh_ip: Ipv4Addr,
    /// `active` or `passive`.
    pub ha_status: &'static str,
    /// Raw role: active, standby, draining (handed over, still forwarding until fenced),
    /// fenced.
    pub role: &'static str,
    /// Handed its role over and still forwards until fenced; `ha_status` is `passive`.
    pub draining: bool,
    /// Node epoch.
    pub epoch: u64,
    /// When it connected (RFC 3339).
    pub run_at: String,
    /// Why it asked to hand its role over on this connection (`drain`, `link_down`,
    /// `unhealthy`: its health targets stopped answering), if it did.
    pub handover_reason: Option<&'static str>,
    /// Its connection(s).
    pub conns: Vec<serde_json::Value>,
}

fn reason_name(r: meshgate_proto::HandoverReason) -> &'static str {
    use meshgate_proto::HandoverReason::*;
    match r {
        Drain => "drain",
        LinkDown => "link_down",
        Unhealthy => "unhealthy",
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Active => "active",
        Role::Standby => "standby",
        Role::Fenced => "fenced",
    }
}

impl Core {
    fn nodes(&self) -> impl Iterator<Item = (Id, NodeRef<'_>)> {
        let local = self.elections.iter().map(|(n, e)| (*n, NodeRef::Local(e)));
        local.chain(self.shared.iter().map(|(n, s)| (*n, NodeRef::Shared(s))))
    }

    fn node(&self, id: Id) -> Option<NodeRef<'_>> {
        match self.elections.get(&id) {
            Some(e) => Some(NodeRef::Local(e)),
            None => self.shared.get(&id).map(NodeRef::Shared),
        }
    }

    /// A node's current epoch, if this coordinator holds an election for it.
    pub fn epoch_of(&self, node: Id) -> Option<u64> {
        self.node(node).map(NodeRef::epoch)
    }

    /// The relay's inputs at `now`. Traffic for a node's routes goes to its active from
    /// the moment of promotion; a draining replica may still send until it is fenced.
    pub fn relay_view(&self, now: Instant) -> RelayView {
        let active = self
            .nodes()
            .filter_map(|(n, e)| e.forwarder(now).map(|c| (n, c)))
            .collect();
        let senders = self
            .sessions
            .iter()
            .map(|(c, s)| {
                let node = (s.kind == Kind::Node).then(|| {
                    let may_send = self.node(s.id).is_some_and(|e| e.may_send(*c, now));
                    (s.id, may_send)
                });
                let sender = Sender {
                    mesh_ip: s.mesh_ip,
                    node,
                };
                (*c, sender)
            })
            .collect();
        RelayView {
            senders,
            active,
            routes: self.routes.clone(),
        }
    }

    /// Connected replicas of a node, oldest first; `colo` names this coordinator.
    pub fn connections(&self, node: Id, now: Instant, colo: &str) -> Vec<ReplicaView> {
        let Some(el) = self.node(node) else {
            return Vec::new();
        };
        let mut out: Vec<(SystemTime, ReplicaView)> = el
            .replicas()
            .into_iter()
            .filter_map(|(c, role)| {
                let s = self.sessions.get(&c)?;
                let active = el.active(now) == Some(c);
                let draining = el.draining() == Some(c);
                let run_at = humantime::format_rfc3339_seconds(s.opened_at).to_string();
                let role = if active {
                    "active"
                } else if draining {
                    "draining"
                } else if role == Role::Active {
                    role_name(Role::Standby)
                } else {
                    role_name(role)
                };
                let conn = serde_json::json!({"colo_name": colo, "origin_ip": s.origin.ip().to_string(), "opened_at": run_at});
                let view = ReplicaView {
                    id: s.replica_id.clone(),
                    mesh_ip: s.mesh_ip,
                    ha_status: if active { "active" } else { "passive" },
                    role,
                    draining,
                    epoch: el.epoch(),
                    run_at,
                    handover_reason: s.withdrawn.map(reason_name),
                    conns: vec![conn],
                };
                Some((s.opened_at, view))
            })
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Number of connected participants, and replicas per (node, ha_status).
    pub fn census(&self, now: Instant) -> (usize, Vec<(Id, &'static str, usize)>) {
        let mut per = Vec::new();
        for (node, el) in self.nodes() {
            let n = el
                .replicas()
                .into_iter()
                .filter(|(c, _)| self.sessions.contains_key(c))
                .count();
            let active = usize::from(
                el.active(now)
                    .is_some_and(|c| self.sessions.contains_key(&c)),
            );
            per.push((node, "active", active));
            per.push((node, "passive", n - active));
        }
        (self.sessions.len(), per)
    }

    /// Every session's participant id (to find deleted ones after a missed watch event).
    pub fn participants(&self) -> Vec<Id> {
        let mut ids: Vec<Id> = self.sessions.values().map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// (participant id, replica id) of every session.
    pub fn connected_replicas(&self) -> std::collections::HashSet<(Id, String)> {
        self.sessions
            .values()
            .map(|s| (s.id, s.replica_id.clone()))
            .collect()
    }

    /// Whose session this is: its node or device id and replica id.
    pub fn session_owner(&self, session: SessionId) -> Option<(Id, String)> {
        self.sessions
            .get(&session)
            .map(|s| (s.id, s.replica_id.clone()))
    }

    /// Whether a replica of `node` other than `replica_id` is connected.
    pub fn has_other_replica(&self, node: Id, replica_id: &str) -> bool {
        self.sessions
            .values()
            .any(|s| s.id == node && s.replica_id != replica_id)
    }

    /// A node's election (the simulation checks its invariants through it).
    pub fn election(&self, node: Id) -> Option<&crate::election::Election> {
        self.elections.get(&node)
    }
}
