//! Keeps every connected agent's filter current: recompiles when the store says
//! something policies depend on changed (here or, with a shared store, on another
//! coordinator), and sends each connection the chunks of its filter whenever their
//! digest differs from what it was last sent. New connections get theirs as soon as
//! the relay learns of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meshgate_proto::{CoordMsg, Filter, Id};

use super::compile::Resolved;
use super::world::World;
use crate::election::ConnId;
use crate::hub::Hub;

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
    loop {
        let mut dirty = false;
        tokio::select! {
            ev = watch.next() => {
                dirty = match ev {
                    Ok(ev) => WATCHED.iter().any(|p| ev.key().starts_with(p)),
                    // Lagged: something was missed; recompile to be sure.
                    Err(_) => true,
                };
            }
            _ = hub.policy.changed.notified() => dirty = true,
            r = relay.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(SWEEP) => {}
        }
        if dirty || compiled.is_none() {
            tokio::time::sleep(SETTLE).await;
            // Drain what arrived meanwhile: it is covered by this compilation.
            while let Ok(Ok(_)) = tokio::time::timeout(Duration::ZERO, watch.next()).await {}
            if let Some(c) = Compiled::load(&hub) {
                compiled = Some(c);
            }
        }
        let Some(c) = compiled.as_mut() else { continue };
        let targets = hub.policy_targets();
        sent.retain(|conn, _| targets.iter().any(|(c, _)| c == conn));
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
