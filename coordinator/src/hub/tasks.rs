//! The hub's background tasks: the clock (ticks), the epoch writer, and the one place
//! where registry changes become route and session updates — a watch on the store, so
//! no API handler has to remember to notify anyone, and a write made by another process
//! on a shared store arrives the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use meshgate_proto::{Id, RouteEntry, RouteTable};
use tokio::sync::mpsc;

use super::{Hub, epochs};
use crate::core::Input;
use crate::registry::{Registry, RegistryError, RouteRecord};
use crate::store::WatchEvent;

/// How often time is fed to the core: a promotion happens at most this long after a
/// lease expires.
pub const TICK: Duration = Duration::from_millis(10);
/// Route changes arriving within this window go out as one table.
const ROUTES_DEBOUNCE: Duration = Duration::from_millis(50);

/// How long no promotion may happen after start: the longest lease an earlier run may
/// have granted, as remembered in the store (nothing on a new store). The remembered
/// length is raised to this run's lease now, before any grant, and lowered to it once the
/// hold is over.
pub fn restart_hold(registry: &Registry, lease: Duration) -> Result<Duration, RegistryError> {
    let hold = registry.max_lease()?.unwrap_or_default();
    registry.set_max_lease(hold.max(lease))?;
    Ok(hold)
}

/// Starts the tasks; they run as long as the runtime.
pub async fn spawn(
    hub: Arc<Hub>,
    writes: mpsc::UnboundedReceiver<Vec<(Id, u64)>>,
    lease: Duration,
    hold: Duration,
) -> Result<(), RegistryError> {
    tokio::spawn(epochs::writer(hub.clone(), writes));
    // Subscribe before the first read, so no change falls between the two.
    let watch = hub.registry.store().watch("");
    let mut routes = Routes::load(&hub.registry)?;
    hub.input(Input::Routes(routes.table(hub.registry.mesh())));
    let ticker = hub.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(TICK);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            ticker.tick();
        }
    });
    let h = hub.clone();
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        let r = tokio::task::spawn_blocking(move || h.registry.set_max_lease(lease)).await;
        if !matches!(r, Ok(Ok(()))) {
            tracing::warn!("could not lower the remembered lease length");
        }
    });
    tokio::spawn(async move { routes.follow(hub, watch).await });
    Ok(())
}

/// The route table as the watch keeps it.
struct Routes {
    by_key: BTreeMap<String, (Ipv4Net, Id)>,
    version: u64,
    /// The revision of the last full read. A lagged watch still holds events from before
    /// it: they are already in `by_key`, and replaying one would resurrect a route deleted
    /// since and move `version` back (agents ignore a table older than theirs).
    floor: u64,
}

impl Routes {
    fn load(registry: &Registry) -> Result<Self, RegistryError> {
        let version = registry.store().revision()?;
        let by_key = registry
            .all_routes()?
            .into_iter()
            .map(|r| {
                (
                    format!("routes/{}/{}", r.node_id, r.id),
                    (r.network, r.node_id),
                )
            })
            .collect();
        Ok(Self {
            by_key,
            version,
            floor: version,
        })
    }

    fn table(&self, mesh: Ipv4Net) -> Arc<RouteTable> {
        let mut entries = Vec::with_capacity(self.by_key.len() + 1);
        entries.push(RouteEntry {
            network: mesh,
            node: None,
        });
        entries.extend(self.by_key.values().map(|(network, node)| RouteEntry {
            network: *network,
            node: Some(*node),
        }));
        Arc::new(RouteTable {
            version: self.version,
            entries,
        })
    }

    /// Applies one event; returns whether routes changed, and a deleted participant.
    fn apply(&mut self, ev: WatchEvent) -> (bool, Option<Id>) {
        let key = ev.key().to_owned();
        if key.starts_with("routes/") {
            if ev.revision() <= self.floor {
                return (false, None);
            }
            match ev {
                WatchEvent::Put(kv) => {
                    let Ok(r) = serde_json::from_slice::<RouteRecord>(&kv.value) else {
                        tracing::error!(key, "corrupt route record; ignored");
                        return (false, None);
                    };
                    self.version = kv.mod_revision;
                    self.by_key.insert(key, (r.network, r.node_id));
                }
                WatchEvent::Delete { revision, .. } => {
                    self.version = revision;
                    self.by_key.remove(&key);
                }
            }
            return (true, None);
        }
        let deleted = match (&ev, key.split_once('/')) {
            (WatchEvent::Delete { .. }, Some(("nodes" | "devices", id))) => id.parse().ok(),
            _ => None,
        };
        (false, deleted)
    }

    async fn follow(&mut self, hub: Arc<Hub>, mut watch: crate::store::Watch) {
        use tokio::sync::broadcast::error::RecvError;
        // A lone change goes out at once; a burst goes out at most once per window.
        let mut last = tokio::time::Instant::now() - ROUTES_DEBOUNCE;
        loop {
            let mut next = Some(watch.next().await);
            let mut changed = false;
            while let Some(ev) = next.take() {
                match ev {
                    Ok(ev) => {
                        let (c, deleted) = self.apply(ev);
                        changed |= c;
                        if let Some(id) = deleted {
                            hub.input(Input::Deleted(id));
                            hub.events.forget(id);
                            hub.forget_logs(id);
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "store watch lagged; reloading");
                        changed |= self.resync(&hub).await;
                    }
                    Err(RecvError::Closed) => return,
                }
                if changed {
                    let until = last + ROUTES_DEBOUNCE;
                    next = tokio::time::timeout_at(until, watch.next()).await.ok();
                }
            }
            if changed {
                hub.input(Input::Routes(self.table(hub.registry.mesh())));
                last = tokio::time::Instant::now();
            }
        }
    }

    /// Reloads after missed events: every route, and every session's participant.
    async fn resync(&mut self, hub: &Arc<Hub>) -> bool {
        let h = hub.clone();
        let reloaded = tokio::task::spawn_blocking(move || {
            let routes = Routes::load(&h.registry)?;
            let gone: Vec<Id> = h
                .participants()
                .into_iter()
                .filter(|id| !h.registry.exists(*id).unwrap_or(true))
                .collect();
            Ok::<_, RegistryError>((routes, gone))
        })
        .await;
        match reloaded {
            Ok(Ok((routes, gone))) => {
                *self = routes;
                for id in gone {
                    hub.input(Input::Deleted(id));
                    hub.events.forget(id);
                    hub.forget_logs(id);
                }
                true
            }
            _ => {
                tracing::error!("failed to reload the registry after a lagged watch");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;

    fn put(key: &str, network: &str, node: Id, rev: u64) -> WatchEvent {
        let rec = RouteRecord {
            id: Id::random(),
            node_id: node,
            network: network.parse().expect("literal network"),
            comment: String::new(),
            created_at: String::new(),
        };
        WatchEvent::Put(KeyValue {
            key: key.to_owned(),
            value: serde_json::to_vec(&rec).expect("a record serializes"),
            create_revision: rev,
            mod_revision: rev,
            lease: None,
        })
    }

    /// After a reload at revision 12, a lagged watch still delivers the put (10) and the
    /// delete (12) of a route the reload no longer has: neither may bring it back, nor
    /// move the version below the reload's.
    #[test]
    fn events_older_than_a_reload_are_not_replayed() {
        let node = Id::random();
        let mut routes = Routes {
            by_key: BTreeMap::new(),
            version: 12,
            floor: 12,
        };
        assert_eq!(
            routes.apply(put("routes/a/1", "10.0.0.0/24", node, 10)),
            (false, None)
        );
        let delete = WatchEvent::Delete {
            key: "routes/a/1".into(),
            revision: 12,
        };
        assert_eq!(routes.apply(delete), (false, None));
        assert!(routes.by_key.is_empty());
        assert_eq!(routes.version, 12);

        // Two routes written in one transaction share revision 13: both count.
        assert!(routes.apply(put("routes/a/2", "10.0.1.0/24", node, 13)).0);
        assert!(routes.apply(put("routes/a/3", "10.0.2.0/24", node, 13)).0);
        assert_eq!(routes.by_key.len(), 2);
        assert_eq!(routes.version, 13);
    }
}
