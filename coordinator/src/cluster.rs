//! The coordinator cluster: which members there are, what tokens tell agents to dial,
//! and who decides elections. Without `--etcd` the cluster is this coordinator alone;
//! with it, members register in etcd ([`members`]) and share one identity
//! ([`identity`]).
//!
//! Keys under `{prefix}/cluster/`: `identity` (shared secrets), `members/{name}` (one per
//! live member, on the member's etcd lease), `known/{name}` (every member ever seen, so
//! a dead one shows as `down`), `decider/` (etcd's election of the member that
//! decides replica elections), and the election's `joined`, `elected/` and `lapse/`
//! ([`keys`]). With `--etcd` the core is a cluster member whose election
//! ([`crate::election::quorum`]) the [`Driver`] feeds from these keys.

mod driver;
mod follow;
pub mod identity;
pub mod keys;
mod members;
mod txn;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use driver::Driver;
pub use follow::follow;
pub use members::Membership;

/// One coordinator as other members and the API see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `--name` (the `colo_name` agents see).
    pub name: String,
    /// `HOST:PORT`s agents dial (`--public-addr`).
    pub public_addrs: Vec<String>,
    /// Where its REST API listens.
    pub api_addr: String,
    /// When it (last) started, RFC 3339.
    pub started_at: String,
}

/// This coordinator's view of its cluster.
pub struct Cluster {
    me: Member,
    etcd: Option<Arc<Membership>>,
}

impl Cluster {
    /// A lone coordinator (no `--etcd`).
    pub fn single(me: Member) -> Self {
        Self { me, etcd: None }
    }

    /// A member of an etcd cluster, registered through `membership`.
    pub fn on_etcd(me: Member, membership: Arc<Membership>) -> Self {
        Self {
            me,
            etcd: Some(membership),
        }
    }

    /// This member.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The addresses a token carries: every live member's, ordered by member name so
    /// that every member hands out the same list and agents, which dial in order, land
    /// on the same coordinator while it lives. Falls back to this member's own.
    pub fn token_addrs(&self) -> Vec<String> {
        let live = self
            .etcd
            .as_ref()
            .and_then(|m| m.live().ok())
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| vec![self.me.clone()]);
        token_addrs(live)
    }

    /// The members agents are told about ([`meshgate_proto::CoordMsg::Members`]): the
    /// live ones in name order (this member alone without `--etcd`), or this member alone
    /// and [`meshgate_proto::Members::cut_off`] while it has lost etcd.
    pub fn members(&self) -> meshgate_proto::Members {
        let read = match &self.etcd {
            None => Some(Vec::new()),
            Some(m) if m.cut_off() => None,
            Some(m) => m.live().ok(),
        };
        let cut_off = read.is_none();
        let mut live = read
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| vec![self.me.clone()]);
        live.sort_by(|a, b| a.name.cmp(&b.name));
        meshgate_proto::Members {
            you_reached: self.me.name.clone(),
            members: live
                .into_iter()
                .map(|m| meshgate_proto::Member {
                    name: m.name,
                    public_addrs: m.public_addrs,
                })
                .collect(),
            cut_off,
        }
    }

    /// The `/ready` check `cluster`, or `None` without `--etcd`.
    pub fn ready_check(&self) -> Option<String> {
        self.etcd.as_ref().map(|m| m.ready_check())
    }

    /// `GET /api/v1/cluster`'s result.
    pub async fn status(&self) -> Value {
        let Some(m) = &self.etcd else {
            return json!({
                "mode": "single",
                "self": self.me.name,
                "decider": self.me.name,
                "members": [member_json(&self.me, "up", true)],
                "etcd": null,
            });
        };
        let (known, live) = m.known_and_live().unwrap_or_default();
        let mut all: BTreeMap<String, (Member, &str)> = known
            .into_iter()
            .map(|k| (k.name.clone(), (k, "down")))
            .collect();
        for l in live {
            all.insert(l.name.clone(), (l, "up"));
        }
        let members: Vec<Value> = all
            .values()
            .map(|(mb, st)| member_json(mb, st, mb.name == self.me.name))
            .collect();
        json!({
            "mode": "etcd",
            "self": self.me.name,
            "decider": m.decider().await,
            "members": members,
            "etcd": m.etcd_health().await,
        })
    }
}

/// How often the member list is read again for agents: a member that dies leaves etcd
/// within its lease's TTL (seconds), so a second's delay on top adds little.
const ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the member list that agents hear current, for as long as the process runs.
pub async fn announce(cluster: Arc<Cluster>, hub: Arc<crate::hub::Hub>) {
    loop {
        let c = cluster.clone();
        // Reading etcd blocks: off the runtime's workers.
        if let Ok(m) = tokio::task::spawn_blocking(move || c.members()).await {
            hub.set_members(m);
        }
        if cluster.etcd.is_none() {
            return;
        }
        tokio::time::sleep(ANNOUNCE_EVERY).await;
    }
}

fn member_json(m: &Member, status: &str, me: bool) -> Value {
    json!({
        "name": m.name,
        "public_addrs": m.public_addrs,
        "api_addr": m.api_addr,
        "started_at": m.started_at,
        "status": status,
        "self": me,
    })
}

fn token_addrs(mut live: Vec<Member>) -> Vec<String> {
    live.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: Vec<String> = Vec::new();
    for a in live.into_iter().flat_map(|m| m.public_addrs) {
        if !out.contains(&a) && out.len() < meshgate_proto::token::MAX_ADDRS {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, addrs: &[&str]) -> Member {
        Member {
            name: name.into(),
            public_addrs: addrs.iter().map(|a| (*a).to_owned()).collect(),
            api_addr: String::new(),
            started_at: String::new(),
        }
    }

    #[test]
    fn tokens_name_every_member_in_name_order_without_repeats() {
        let addrs = token_addrs(vec![
            m("c3", &["10.0.0.3:7443"]),
            m("c1", &["10.0.0.1:7443", "[fd00::1]:7443"]),
            m("c2", &["10.0.0.2:7443", "10.0.0.1:7443"]),
        ]);
        assert_eq!(
            addrs,
            [
                "10.0.0.1:7443",
                "[fd00::1]:7443",
                "10.0.0.2:7443",
                "10.0.0.3:7443"
            ]
        );
    }

    #[test]
    fn a_token_carries_at_most_the_format_limit() {
        let many: Vec<Member> = (0..12)
            .map(|i| m(&format!("c{i:02}"), &[&format!("10.0.0.{i}:7443")]))
            .collect();
        assert_eq!(token_addrs(many).len(), meshgate_proto::token::MAX_ADDRS);
    }

    #[tokio::test]
    async fn a_lone_coordinator_is_its_own_cluster() {
        let c = Cluster::single(m("solo", &["127.0.0.1:7443"]));
        assert_eq!(c.token_addrs(), ["127.0.0.1:7443"]);
        assert!(c.ready_check().is_none());
        let s = c.status().await;
        assert_eq!(s["mode"], "single");
        assert_eq!(s["decider"], "solo");
        assert_eq!(s["members"][0]["status"], "up");
    }
}
