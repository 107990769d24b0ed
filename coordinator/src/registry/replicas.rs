//! Node replicas: each persistent replica id gets a Mesh IP on first sight.

use std::net::Ipv4Addr;

use meshgate_proto::Id;

use super::alloc::{Allocated, Claim};
use super::{R, Registry, RegistryError, ReplicaRecord, json};
use crate::store::{Compare, Op};

impl Registry {
    /// The Mesh IP of a node replica, allocated on first sight and stable after.
    ///
    /// The write is guarded by the node's record being unchanged (a node deleted
    /// meanwhile gets no replica) and by the replica being absent (registered at the same
    /// time through another cluster member: the same replica, so that address).
    pub fn replica_ip(&self, node: Id, replica_id: &str) -> R<Ipv4Addr> {
        let key = format!("replicas/{node}/{replica_id}");
        let owner = format!("replica/{node}/{replica_id}");
        let record = |mesh_ip| ReplicaRecord {
            node_id: node,
            replica_id: replica_id.to_owned(),
            mesh_ip,
        };
        for _ in 0..3 {
            if let Some(r) = self.get::<ReplicaRecord>(&key)? {
                return Ok(r.mesh_ip);
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

    /// Known replicas of a node.
    pub fn replicas(&self, node: Id) -> R<Vec<ReplicaRecord>> {
        self.list(&format!("replicas/{node}/"))
    }
}
