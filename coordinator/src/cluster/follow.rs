//! Applies what other members wrote. A coordinator's hub hears of API writes from its own
//! handlers (`routes_changed`, `participant_deleted`); on a shared store the writes of
//! other members arrive only through the store's watch, so each member follows it and
//! tells its hub the same things. Its own writes come back too: both calls are
//! idempotent (a second route push carries the same table, a second delete finds no
//! session), so they need no filtering.

use std::sync::Arc;

use meshgate_proto::id::Id;
use tokio::sync::broadcast::error::RecvError;

use crate::hub::Hub;
use crate::store::{Store, WatchEvent};

/// What a change to the store means for the hub.
#[derive(Debug, PartialEq, Eq)]
enum Apply {
    /// The route table changed (a route added or removed, a node deleted).
    Routes,
    /// A node or device was deleted: close its connections.
    Deleted(Id),
}

fn meaning(ev: &WatchEvent) -> Option<Apply> {
    let WatchEvent::Put(kv) = ev else {
        return None;
    };
    if kv.key == "meta/routes_version" {
        return Some(Apply::Routes);
    }
    let id = kv.key.strip_prefix("tombstones/")?;
    id.parse().ok().map(Apply::Deleted)
}

/// Follow `store` for as long as it lives.
pub async fn follow(store: Arc<dyn Store>, hub: Arc<Hub>) {
    let mut watch = store.watch("");
    loop {
        match watch.next().await {
            Ok(ev) => match meaning(&ev) {
                Some(Apply::Routes) => hub.routes_changed(),
                Some(Apply::Deleted(id)) => hub.participant_deleted(id),
                None => {}
            },
            Err(RecvError::Lagged(n)) => {
                // Lost changes: the route table is re-read whole; a deletion missed
                // here is still refused at the participant's next registration.
                tracing::warn!(
                    lost = n,
                    "fell behind the store's changes; re-reading routes"
                );
                hub.routes_changed();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;

    fn put(key: &str) -> WatchEvent {
        WatchEvent::Put(KeyValue {
            key: key.into(),
            value: b"1".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: None,
        })
    }

    #[test]
    fn route_changes_and_deletions_reach_the_hub() {
        let id = Id::random();
        assert_eq!(meaning(&put("meta/routes_version")), Some(Apply::Routes));
        assert_eq!(
            meaning(&put(&format!("tombstones/{id}"))),
            Some(Apply::Deleted(id))
        );
        assert_eq!(meaning(&put("nodes/x")), None);
        assert_eq!(meaning(&put("tombstones/not-an-id")), None);
        let del = WatchEvent::Delete {
            key: "meta/routes_version".into(),
            revision: 2,
        };
        assert_eq!(meaning(&del), None);
    }
}
