//! Read-only views of the live state for the API and metrics.

use std::net::Ipv4Addr;
use std::time::{Instant, SystemTime};

use meshgate_proto::{Id, Role};

use super::{Hub, role_name};

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
    /// Its connection(s).
    pub conns: Vec<serde_json::Value>,
}

impl Hub {
    /// Connected replicas of a node.
    pub fn connections(&self, node: Id) -> Vec<ReplicaView> {
        let st = self.lock();
        let Some(el) = st.elections.get(&node) else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut out: Vec<(SystemTime, ReplicaView)> = el.replicas().filter_map(|(c, role)| {
            let s = st.sessions.get(&c)?;
            let active = el.active(now) == Some(c);
            let draining = el.draining() == Some(c);
            let run_at = humantime::format_rfc3339_seconds(s.opened_at).to_string();
            Some((s.opened_at, ReplicaView {
                id: s.replica_id.clone(), mesh_ip: s.mesh_ip,
                ha_status: if active { "active" } else { "passive" },
                role: if active { "active" } else if draining { "draining" } else { role_name(if role == Role::Active { Role::Standby } else { role }) },
                draining,
                epoch: el.epoch(), run_at: run_at.clone(),
                conns: vec![serde_json::json!({"colo_name": self.colo, "origin_ip": s.origin.ip().to_string(), "opened_at": run_at})],
            }))
        }).collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Number of connected participants, and replicas per (node, ha_status).
    pub fn census(&self) -> (usize, Vec<(Id, &'static str, usize)>) {
        let st = self.lock();
        let now = Instant::now();
        let mut per = Vec::new();
        for (node, el) in &st.elections {
            let n = el
                .replicas()
                .filter(|(c, _)| st.sessions.contains_key(c))
                .count();
            let active = usize::from(el.active(now).is_some_and(|c| st.sessions.contains_key(&c)));
            per.push((*node, "active", active));
            per.push((*node, "passive", n - active));
        }
        (st.sessions.len(), per)
    }
}
