//! Keeps every connected agent's filter current: recompiles when the store says
//! something policies depend on changed (here or, with a shared store, on another
//! coordinator), and sends each connection the chunks of its filter whenever their
//! digest differs from what it was last sent. New connections get theirs as soon as
//! the relay learns of them.
//!
//! Both steps stay linear in the number of connections: a registration rebuilds the relay
//! table (and so wakes this loop) every tick while a fleet connects, and a reload reads the
//! whole registry. At 5,000 connections a quadratic sweep here, and a reload for every
//! registration's refresh of its own record, held the coordinator's cores busy enough
//! that registrations missed their deadlines.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_proto::{CoordMsg, Filter, Id};

use super::compile::Resolved;
use super::world::World;
use crate::election::ConnId;
use crate::hub::Hub;
use crate::registry::ReplicaRecord;
use crate::store::WatchEvent;

/// Key prefixes whose changes can change a filter.
const WATCHED: [&str; 6] = [
    "policies/",
    "settings/",
    "nodes/",
    "devices/",
    "routes/",
    "replicas/",
];
/// Changes arriving together (a route write and its version bump) are compiled once.
const SETTLE: Duration = Duration::from_millis(20);
/// A recompilation waits at least this many times as long as the last one took, so a
/// stream of changes (a fleet registering new replicas) costs at most a quarter of a core.
const SETTLE_PER_COMPILE: u32 = 3;
/// A full resend check even without any signal, in case one was missed.
const SWEEP: Duration = Duration::from_secs(1);

/// Compiled filters per participant, valid until the next change.
struct Compiled {
    world: World,
    resolved: Resolved,
    by_participant: HashMap<Id, Arc<Vec<Filter>>>,
}

impl Compiled {
    fn load(hub: &Hub) -> Option<Self> {
        let reg = &hub.registry;
        let loaded = (|| -> Result<Self, super::PolicyError> {
            let world = World::load(reg)?;
            let policies = hub.policy.book.list(reg)?;
            let settings = hub.policy.book.settings(reg)?;
            Ok(Compiled {
                resolved: Resolved::new(&world, &policies, settings),
                world,
                by_participant: HashMap::new(),
            })
        })();
        loaded
            .map_err(|e| tracing::error!(error = %e, "cannot read policies; filters unchanged"))
            .ok()
    }

    fn filter(&mut self, id: Id) -> Arc<Vec<Filter>> {
        if let Some(f) = self.by_participant.get(&id) {
            return f.clone();
        }
        let f = Arc::new(self.resolved.filter_for(self.world.local(&id)));
        self.by_participant.insert(id, f.clone());
        f
    }
}

/// Runs until the hub is dropped.
pub async fn run(hub: Arc<Hub>) {
    let mut watch = hub.registry.store().watch("");
    let mut relay = hub.relay_changes();
    let mut compiled: Option<Compiled> = None;
    let mut sent: HashMap<ConnId, u64> = HashMap::new();
    let mut last_compile = Duration::ZERO;
    loop {
        let mut dirty = false;
        tokio::select! {
            ev = watch.next() => {
                dirty = match ev {
                    Ok(ev) => changes_filters(&ev, compiled.as_ref().map(|c| &c.world)),
                    // Lagged: something was missed; recompile to be sure.
                    Err(_) => true,
                };
            }
            _ = hub.policy.changed.notified() => dirty = true,
            r = relay.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(SWEEP) => {}
        }
        if dirty || compiled.is_none() {
            tokio::time::sleep(SETTLE.max(last_compile * SETTLE_PER_COMPILE)).await;
            // Drain what arrived meanwhile: it is covered by this compilation.
            while let Ok(Ok(_)) = tokio::time::timeout(Duration::ZERO, watch.next()).await {}
            let started = Instant::now();
            if let Some(c) = Compiled::load(&hub) {
                compiled = Some(c);
            }
            last_compile = started.elapsed();
        }
        let Some(c) = compiled.as_mut() else { continue };
        let targets = hub.policy_targets();
        let live: HashSet<ConnId> = targets.iter().map(|(c, _)| *c).collect();
        sent.retain(|conn, _| live.contains(conn));
        for (conn, id) in targets {
            let filter = c.filter(id);
            let digest = filter.first().map_or(0, |f| f.digest);
            if sent.get(&conn) == Some(&digest) {
                continue;
            }
            let all = filter
                .iter()
                .all(|chunk| hub.send_to(conn, CoordMsg::Filter(Box::new(chunk.clone()))));
            if all {
                sent.insert(conn, digest);
            }
        }
    }
}

/// Whether a store change can change a filter. A replica record put again with the
/// address the compiled world already holds (a registration refreshing its `seen_at`)
/// cannot; anything unreadable is taken to change something.
fn changes_filters(ev: &WatchEvent, world: Option<&World>) -> bool {
    if !WATCHED.iter().any(|p| ev.key().starts_with(p)) {
        return false;
    }
    match (ev, world) {
        (WatchEvent::Put(kv), Some(w)) if kv.key.starts_with("replicas/") => {
            serde_json::from_slice::<ReplicaRecord>(&kv.value)
                .map_or(true, |r| !w.knows_replica(&r))
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::policy::world::Member;
    use crate::store::KeyValue;

    fn put(key: &str, value: Vec<u8>) -> WatchEvent {
        WatchEvent::Put(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: 7,
            mod_revision: 7,
            lease: None,
        })
    }

    #[test]
    fn only_a_replica_record_with_a_new_address_changes_filters() {
        let node = Id::random();
        let mut world = World::default();
        let known = Ipv4Addr::new(100, 96, 0, 5);
        world.nodes.insert(
            node,
            Member {
                nets: vec![known.into()],
                tags: Vec::new(),
            },
        );
        let record = |mesh_ip| {
            serde_json::to_vec(&ReplicaRecord {
                node_id: node,
                replica_id: "r1".into(),
                mesh_ip,
                seen_at: 1,
            })
            .unwrap()
        };
        let key = format!("replicas/{node}/r1");
        // A refresh of a known replica: nothing to recompile.
        assert!(!changes_filters(&put(&key, record(known)), Some(&world)));
        // A new address, an unreadable record, a deletion, or no world yet: recompile.
        let new = Ipv4Addr::new(100, 96, 0, 6);
        assert!(changes_filters(&put(&key, record(new)), Some(&world)));
        assert!(changes_filters(&put(&key, b"{".to_vec()), Some(&world)));
        let deleted = WatchEvent::Delete {
            key: key.clone(),
            revision: 8,
        };
        assert!(changes_filters(&deleted, Some(&world)));
        assert!(changes_filters(&put(&key, record(known)), None));
        // Other watched keys always count; unwatched ones never do.
        assert!(changes_filters(
            &put("policies/p1", Vec::new()),
            Some(&world)
        ));
        assert!(!changes_filters(
            &put("ipam/100.96.0.6", Vec::new()),
            Some(&world)
        ));
    }
}
