//! The coordinator's durable model — nodes, devices, routes, replicas, Mesh IP
//! allocations, epochs and token hashes — as JSON values in the [`Store`].
//!
//! Key layout: `nodes/{id}`, `devices/{id}`, `routes/{node}/{route}`,
//! `replicas/{node}/{replica}`, `ipam/{ip}` (owner), `epochs/{node}`,
//! `tombstones/{id}` (deleted node or device, so its token is refused as revoked, not
//! unknown), `meta/ipam_cursor`, `meta/routes_version`.
//!
//! Token secrets are never stored. A secret is `HMAC-SHA256(token_key, id)`, where
//! `token_key` is a file in the data dir; the store only holds `SHA-256(secret)`. That
//! lets the API show a node's token again (as the contract requires) while a copy of the
//! store alone — or a future shared etcd — reveals no usable token.
//!
//! Mutations are serialised by one mutex within a process; members of a cluster share
//! the store, so every write that must not race (an address, a new record) is guarded by
//! the store's compares, and a lost race is retried or reported (see `alloc`).

use std::sync::{Arc, Mutex, MutexGuard};

use hmac::{Hmac, Mac};
use ipnet::Ipv4Net;
use meshgate_proto::token::{constant_time_eq, hash_secret};
use meshgate_proto::{Id, Kind, Token};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ipam::Ipam;
use crate::store::{Compare, Op, Store, StoreError};
use alloc::{Allocated, Claim, Reservations};

pub use records::{
    AuthError, DeviceRecord, MAX_REPLICAS_PER_NODE, NodeRecord, Participant, RegistryError,
    ReplicaRecord, RouteRecord,
};

pub(crate) type R<T> = Result<T, RegistryError>;

/// The durable model.
pub struct Registry {
    store: Arc<dyn Store>,
    ipam: Ipam,
    token_key: [u8; 32],
    /// Orders this process's writers; holds the Mesh IPs being written.
    write: Mutex<Reservations>,
    /// Every route as of a store revision, so adding one does not re-read them all.
    routes: Mutex<Option<(u64, Vec<RouteRecord>)>>,
    /// A registering replica whose record was last seen this many seconds ago refreshes
    /// it (see [`reclaim`]); `u64::MAX` while reclaiming is off.
    touch_after: std::sync::atomic::AtomicU64,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our records contain only strings, numbers, arrays and maps.
    serde_json::to_vec(v).expect("records serialise")
}

/// Names are shown in logs, metrics labels and URLs: keep them simple.
pub fn validate_name(name: &str) -> R<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "invalid name {name:?}: use 1-63 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

impl Registry {
    /// A registry over `store` allocating from `ipam`.
    pub fn new(store: Arc<dyn Store>, ipam: Ipam, token_key: [u8; 32]) -> Self {
        Self {
            store,
            ipam,
            token_key,
            write: Mutex::new(Reservations::default()),
            routes: Mutex::new(None),
            touch_after: u64::MAX.into(),
        }
    }

    /// The mesh range.
    pub fn mesh(&self) -> Ipv4Net {
        self.ipam.cidr()
    }

    /// Whether a node or device with this id exists.
    pub fn exists(&self, id: Id) -> R<bool> {
        Ok(self.store.get(&format!("nodes/{id}"))?.is_some()
            || self.store.get(&format!("devices/{id}"))?.is_some())
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, Reservations> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> R<Option<T>> {
        match self.store.get(key)? {
            Some(kv) => serde_json::from_slice(&kv.value)
                .map(Some)
                .map_err(|e| StoreError::Backend(format!("corrupt record {key}: {e}")).into()),
            None => Ok(None),
        }
    }

    fn list<T: DeserializeOwned>(&self, prefix: &str) -> R<Vec<T>> {
        self.store
            .range(prefix)?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| {
                    StoreError::Backend(format!("corrupt record {}: {e}", kv.key)).into()
                })
            })
            .collect()
    }

    fn secret(&self, id: Id) -> [u8; 32] {
        let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(&self.token_key)
            .expect("HMAC takes keys of any length");
        mac.update(&id.0);
        mac.finalize().into_bytes().into()
    }

    /// The token for a node or device.
    pub fn token(&self, kind: Kind, id: Id, addrs: Vec<String>, fingerprint: [u8; 32]) -> Token {
        Token {
            kind,
            id,
            secret: self.secret(id),
            addrs,
            fingerprint,
        }
    }

    /// Create a node.
    pub fn create_node(&self, name: &str, ha: bool) -> R<NodeRecord> {
        self.create_node_tagged(name, ha, Vec::new())
    }

    /// Create a node with tags (already validated).
    pub fn create_node_tagged(&self, name: &str, ha: bool, tags: Vec<String>) -> R<NodeRecord> {
        validate_name(name)?;
        let _g = self.lock();
        if self.list_nodes()?.iter().any(|n| n.name == name) {
            return Err(RegistryError::Conflict(format!(
                "a node named {name:?} already exists"
            )));
        }
        let id = Id::random();
        let node = NodeRecord {
            id,
            name: name.to_owned(),
            ha,
            created_at: now_rfc3339(),
            token_hash: hash_secret(&self.secret(id)),
            tags,
        };
        let key = format!("nodes/{id}");
        self.store.txn(
            &[Compare::Absent(key.clone())],
            &[Op::put(key, json(&node))],
        )?;
        Ok(node)
    }

    /// All nodes.
    pub fn list_nodes(&self) -> R<Vec<NodeRecord>> {
        self.list("nodes/")
    }

    /// One node.
    pub fn node(&self, id: Id) -> R<NodeRecord> {
        self.get(&format!("nodes/{id}"))?
            .ok_or_else(|| RegistryError::NotFound(format!("node {id}")))
    }

    /// Delete a node with its routes, replicas and their Mesh IPs, atomically.
    pub fn delete_node(&self, id: Id) -> R<NodeRecord> {
        let _g = self.lock();
        let node = self.node(id)?;
        let mut ops = vec![
            Op::Delete(format!("nodes/{id}")),
            Op::DeletePrefix(format!("routes/{id}/")),
            Op::DeletePrefix(format!("replicas/{id}/")),
            Op::Delete(format!("epochs/{id}")),
            Op::put(format!("tombstones/{id}"), "node"),
        ];
        for r in self.replicas(id)? {
            ops.push(Op::Delete(format!("ipam/{}", r.mesh_ip)));
        }
        ops.extend(self.bump_routes_version()?);
        self.store.txn(&[], &ops)?;
        Ok(node)
    }

    /// Enrol a device and allocate its Mesh IP.
    pub fn create_device(&self, name: &str) -> R<DeviceRecord> {
        self.create_device_tagged(name, Vec::new())
    }

    /// Enrol a device with tags (already validated).
    pub fn create_device_tagged(&self, name: &str, tags: Vec<String>) -> R<DeviceRecord> {
        validate_name(name)?;
        let mut held = self.lock();
        if self.list_devices()?.iter().any(|d| d.name == name) {
            return Err(RegistryError::Conflict(format!(
                "a device named {name:?} already exists"
            )));
        }
        let id = Id::random();
        let key = format!("devices/{id}");
        let dev = |mesh_ip| DeviceRecord {
            id,
            name: name.to_owned(),
            mesh_ip,
            created_at: now_rfc3339(),
            token_hash: hash_secret(&self.secret(id)),
            tags: tags.clone(),
        };
        let claim = Claim {
            owner: &format!("device/{id}"),
            guards: &[Compare::Absent(key.clone())],
            replica_of: None,
        };
        // The mutex stays held across the write: device names are unique.
        match self.allocate_with(Some(&mut held), &claim, |ip| {
            vec![Op::put(key.clone(), json(&dev(ip)))]
        })? {
            Allocated::New(ip) => Ok(dev(ip)),
            Allocated::Guarded => Err(RegistryError::Conflict(format!(
                "device id {id} was taken concurrently; try again"
            ))),
        }
    }

    /// All devices.
    pub fn list_devices(&self) -> R<Vec<DeviceRecord>> {
        self.list("devices/")
    }

    /// Delete a device and free its Mesh IP.
    pub fn delete_device(&self, id: Id) -> R<DeviceRecord> {
        let _g = self.lock();
        let dev: DeviceRecord = self
            .get(&format!("devices/{id}"))?
            .ok_or_else(|| RegistryError::NotFound(format!("device {id}")))?;
        self.store.txn(
            &[],
            &[
                Op::Delete(format!("devices/{id}")),
                Op::Delete(format!("ipam/{}", dev.mesh_ip)),
                Op::put(format!("tombstones/{id}"), "device"),
            ],
        )?;
        Ok(dev)
    }

    /// One device.
    pub fn device(&self, id: Id) -> R<DeviceRecord> {
        self.get(&format!("devices/{id}"))?
            .ok_or_else(|| RegistryError::NotFound(format!("device {id}")))
    }

    /// Replace a node's tags (already validated).
    pub fn set_node_tags(&self, id: Id, tags: Vec<String>) -> R<NodeRecord> {
        let _g = self.lock();
        let mut n = self.node(id)?;
        n.tags = tags;
        self.store.put(&format!("nodes/{id}"), &json(&n))?;
        Ok(n)
    }

    /// Replace a device's tags (already validated).
    pub fn set_device_tags(&self, id: Id, tags: Vec<String>) -> R<DeviceRecord> {
        let _g = self.lock();
        let mut d = self.device(id)?;
        d.tags = tags;
        self.store.put(&format!("devices/{id}"), &json(&d))?;
        Ok(d)
    }

    /// Check a token string and say whose it is.
    pub fn authenticate(&self, token: &str) -> Result<(Token, Participant), AuthError> {
        let t = Token::decode(token)?;
        let found = match t.kind {
            Kind::Node => self
                .get::<NodeRecord>(&format!("nodes/{}", t.id))
                .map(|n| n.map(|n| (n.token_hash, Participant::Node(n)))),
            Kind::Device => self
                .get::<DeviceRecord>(&format!("devices/{}", t.id))
                .map(|d| d.map(|d| (d.token_hash, Participant::Device(d)))),
        };
        let (hash, p) = match found {
            Ok(Some(x)) => x,
            Ok(None) => return Err(self.missing(t.id)?),
            Err(e) => return Err(store_err(e)),
        };
        if constant_time_eq(&t.secret_hash(), &hash) {
            Ok((t, p))
        } else {
            Err(AuthError::Unknown)
        }
    }

    fn missing(&self, id: Id) -> Result<AuthError, AuthError> {
        Ok(if self.store.get(&format!("tombstones/{id}"))?.is_some() {
            AuthError::Revoked
        } else {
            AuthError::Unknown
        })
    }
}

fn store_err(e: RegistryError) -> AuthError {
    match e {
        RegistryError::Store(s) => AuthError::Store(s),
        other => AuthError::Store(StoreError::Backend(other.to_string())),
    }
}

mod alloc;
#[cfg(test)]
mod alloc_tests;
mod meta;
pub mod reclaim;
mod records;
mod replicas;
mod route_ops;
mod route_set;

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
