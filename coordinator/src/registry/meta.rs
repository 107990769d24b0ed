//! Per-node epochs and the longest lease ever granted: the numbers a restarted
//! coordinator needs to stay safe (see [`crate::core`]). Both are kept as maxima.

use std::time::Duration;

use meshgate_proto::Id;

use super::{R, Registry, RegistryError, json};
use crate::store::{Compare, Op, StoreError};

/// Attempts at a guarded read-modify-write before giving up.
const ATTEMPTS: usize = 8;

impl Registry {
    /// The last persisted epoch of a node.
    pub fn epoch(&self, node: Id) -> R<u64> {
        Ok(self.get(&format!("epochs/{node}"))?.unwrap_or(0))
    }

    /// Persist nodes' epochs, each as the maximum of what is stored and what is given,
    /// all in one transaction: a storm of promotions costs one commit (one fsync).
    pub fn set_epochs(&self, epochs: &[(Id, u64)]) -> R<()> {
        let items: Vec<(String, u64)> = epochs
            .iter()
            .map(|(node, e)| (format!("epochs/{node}"), *e))
            .collect();
        self.raise(&items)
    }

    /// Raises each key's number to at least the given value, guarded against concurrent
    /// writers (another cluster member) by the keys' revisions.
    fn raise(&self, items: &[(String, u64)]) -> R<()> {
        for _ in 0..ATTEMPTS {
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            for (key, value) in items {
                let current = self.store.get(key)?;
                let stored: u64 = match &current {
                    Some(kv) => serde_json::from_slice(&kv.value)
                        .map_err(|e| StoreError::Backend(format!("corrupt record {key}: {e}")))?,
                    None => 0,
                };
                if stored >= *value && current.is_some() {
                    continue;
                }
                compares.push(match current {
                    Some(kv) => Compare::ModRevision(key.clone(), kv.mod_revision),
                    None => Compare::Absent(key.clone()),
                });
                ops.push(Op::put(key.clone(), json(value)));
            }
            if ops.is_empty() || self.store.txn(&compares, &ops)?.is_some() {
                return Ok(());
            }
        }
        Err(RegistryError::Conflict(
            "concurrent writers kept racing".into(),
        ))
    }

    /// The longest lease a coordinator on this store may have granted, if recorded.
    pub fn max_lease(&self) -> R<Option<Duration>> {
        Ok(self
            .get::<u64>("meta/max_lease_ms")?
            .map(Duration::from_millis))
    }

    /// Records the longest lease that may be outstanding (durably, before granting).
    pub fn set_max_lease(&self, lease: Duration) -> R<()> {
        let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        self.store.put("meta/max_lease_ms", &json(&ms))?;
        Ok(())
    }
}
