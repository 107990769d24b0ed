//! Persisting epochs before anything carrying them is sent, without stalling the hub.
//!
//! Every commit waits for an fsync. Two things keep that off the hot path: the epochs of
//! all promotions due in one tick go to the store in one commit, and a registration that
//! will promote (its node has no active) *reserves* the next epoch before it takes the
//! state lock, so a fleet of first replicas registering does not hold that lock — which
//! every heartbeat needs — through one fsync each. Persisting a number that ends up
//! unused is safe: epochs only have to grow, and a later promotion skips it.

use std::collections::HashMap;
use std::sync::Mutex;

use meshgate_proto::Id;

use crate::election::Action;
use crate::registry::{Registry, RegistryError};

/// The highest epoch known to be on disk, per node.
#[derive(Default)]
pub(super) struct Epochs {
    persisted: Mutex<HashMap<Id, u64>>,
}

impl Epochs {
    fn persisted(&self) -> std::sync::MutexGuard<'_, HashMap<Id, u64>> {
        self.persisted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `epoch` on disk for `node` now (before the caller takes the state lock).
    pub(super) fn reserve(
        &self,
        registry: &Registry,
        node: Id,
        epoch: u64,
    ) -> Result<(), RegistryError> {
        registry.set_epochs(&[(node, epoch)])?;
        let mut p = self.persisted();
        let e = p.entry(node).or_default();
        *e = (*e).max(epoch);
        Ok(())
    }

    /// One store commit for every `PersistEpoch` in `due` not already on disk.
    pub(super) fn persist(&self, registry: &Registry, due: &[(Id, Vec<Action>)]) {
        let mut persisted = self.persisted();
        let epochs: Vec<(Id, u64)> = due
            .iter()
            .flat_map(|(node, actions)| {
                actions.iter().filter_map(move |a| match a {
                    Action::PersistEpoch(e) => Some((*node, *e)),
                    _ => None,
                })
            })
            .filter(|(node, e)| persisted.get(node).is_none_or(|p| e > p))
            .collect();
        if epochs.is_empty() {
            return;
        }
        match registry.set_epochs(&epochs) {
            Ok(()) => {
                for (node, e) in epochs {
                    persisted.insert(node, e);
                }
            }
            Err(err) => tracing::error!(?epochs, error = %err, "failed to persist epochs"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ipam::Ipam;
    use crate::store::{Store, redb::RedbStore};

    #[test]
    fn reserved_and_persisted_epochs_are_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
        let registry = Registry::new(
            store.clone(),
            Ipam::new("100.96.0.0/12".parse().unwrap()).unwrap(),
            [9; 32],
        );
        let (a, b) = (Id::random(), Id::random());
        let epochs = Epochs::default();
        epochs.reserve(&registry, a, 5).unwrap();
        let rev = store.revision().unwrap();
        let due = |node, e| vec![(node, vec![Action::PersistEpoch(e)])];
        epochs.persist(&registry, &due(a, 5));
        epochs.persist(&registry, &due(a, 4));
        assert_eq!(store.revision().unwrap(), rev, "already on disk: no commit");
        epochs.persist(&registry, &[due(a, 6), due(b, 1)].concat());
        assert_eq!(store.revision().unwrap(), rev + 1, "both in one commit");
        assert_eq!(
            (registry.epoch(a).unwrap(), registry.epoch(b).unwrap()),
            (6, 1)
        );
    }
}
