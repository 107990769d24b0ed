//! Node replicas: each persistent replica id gets a Mesh IP on first sight.

use std::net::Ipv4Addr;

use meshgate_proto::Id;

use std::sync::atomic::Ordering::Relaxed;

use super::alloc::{Allocated, Claim};
use super::{R, Registry, RegistryError, ReplicaRecord, json, reclaim};
use crate::store::{Compare, KeyValue, Op, StoreError};

/// A stored replica record.
pub(super) fn parse(kv: &KeyValue) -> R<ReplicaRecord> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| StoreError::Backend(format!("corrupt record {}: {e}", kv.key)).into())
}

impl Registry {
    /// The Mesh IP of a node replica, allocated on first sight and stable after.
    ///
    /// The write is guarded by the node's record being unchanged (a node deleted
    /// meanwhile gets no replica) and by the replica being absent (registered at the same
    /// time through another cluster member: the same replica, so that address).
    pub fn replica_ip(&self, node: Id, replica_id: &str) -> R<Ipv4Addr> {
        let key = format!("replicas/{node}/{replica_id}");
        let owner = format!("replica/{node}/{replica_id}");
        let now = reclaim::unix_now();
        let record = |mesh_ip| ReplicaRecord {
            node_id: node,
            replica_id: replica_id.to_owned(),
            mesh_ip,
            seen_at: now,
        };
        for _ in 0..3 {
            if let Some(kv) = self.store.get(&key)? {
                let r: ReplicaRecord = parse(&kv)?;
                let touch_after = self.touch_after.load(Relaxed);
                // A record a sweep may be about to reclaim is refreshed first, guarded:
                // either the sweep's guarded delete fails, or this write does and the
                // replica gets a new address on the next turn.
                if now.saturating_sub(r.seen_at) < touch_after || self.touch(&kv, r.clone(), now)? {
                    return Ok(r.mesh_ip);
                }
                continue;
            }
            let node_key = format!("nodes/{node}");
            let node_rev = self
                .store
                .get(&node_key)?
                .ok_or_else(|| RegistryError::NotFound(format!("node {node}")))?
                .mod_revision;
            let claim = Claim {
                owner: &owner,
                guards: &[
                    Compare::Absent(key.clone()),
                    Compare::ModRevision(node_key, node_rev),
                ],
                replica_of: Some(node),
            };
            if let Allocated::New(ip) = self.allocate_with(None, &claim, |ip| {
                vec![Op::put(key.clone(), json(&record(ip)))]
            })? {
                return Ok(ip);
            }
        }
        Err(RegistryError::Conflict(
            "the node changed while its replica registered; try again".into(),
        ))
    }

    /// Record that a replica was seen at `now`, if its record is still `kv`; false if it
    /// changed or went meanwhile.
    pub(super) fn touch(&self, kv: &KeyValue, mut r: ReplicaRecord, now: u64) -> R<bool> {
        r.seen_at = now;
        let guard = [Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
        Ok(self
            .store
            .txn(&guard, &[Op::put(kv.key.clone(), json(&r))])?
            .is_some())
    }

    /// Known replicas of a node.
    pub fn replicas(&self, node: Id) -> R<Vec<ReplicaRecord>> {
        self.list(&format!("replicas/{node}/"))
    }
}
