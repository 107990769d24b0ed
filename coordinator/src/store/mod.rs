//! The coordinator's persistent state behind an interface shaped like etcd's: a flat
//! key space of byte values with a global revision counter, atomic transactions with
//! compare guards, leases that delete their keys when they lapse, and watches on a key
//! prefix, so that the rest of the coordinator runs unchanged on either backend.
//!
//! The embedded implementation is [`redb::RedbStore`]; see its module docs for why redb.
//! A cluster of coordinators shares one [`etcd::EtcdStore`] instead (`serve --etcd`).

#[cfg(test)]
mod conformance;
pub mod etcd;
pub mod redb;

use std::time::Duration;

use tokio::sync::broadcast;

/// A lease id (etcd: `LeaseID`).
pub type LeaseId = u64;

/// One stored key with its revisions (etcd: `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Store revision at which the key was created.
    pub create_revision: u64,
    /// Store revision of its last change.
    pub mod_revision: u64,
    /// The lease it is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// A guard in a transaction (etcd: `Compare`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and its `mod_revision` equals the given one.
    ModRevision(String, u64),
}

/// A write in a transaction (etcd: `RequestOp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key, optionally attached to a lease.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Lease.
        lease: Option<LeaseId>,
    },
    /// Delete one key (absent is fine).
    Delete(String),
    /// Delete every key starting with the prefix.
    DeletePrefix(String),
}

impl Op {
    /// A plain put.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }
}

/// A change seen by a watcher (etcd: `mvccpb.Event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or changed.
    Put(KeyValue),
    /// The key was deleted at `revision`.
    Delete {
        /// Key.
        key: String,
        /// Revision of the deletion.
        revision: u64,
    },
}

impl WatchEvent {
    /// The key concerned.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The store revision of the change.
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption, ...).
    #[error("store backend: {0}")]
    Backend(String),
    /// No such lease.
    #[error("unknown lease {0}")]
    UnknownLease(LeaseId),
}

/// A watch on a key prefix. Lagging watchers lose events (and are told so by
/// `Err(Lagged)`), as an etcd watcher would be compacted; they then re-read with `range`.
pub struct Watch {
    prefix: String,
    rx: broadcast::Receiver<WatchEvent>,
}

impl Watch {
    /// Wrap a receiver, keeping only events under `prefix`.
    pub fn new(prefix: String, rx: broadcast::Receiver<WatchEvent>) -> Self {
        Self { prefix, rx }
    }

    /// The next event under the prefix.
    pub async fn next(&mut self) -> Result<WatchEvent, broadcast::error::RecvError> {
        loop {
            let ev = self.rx.recv().await?;
            if ev.key().starts_with(&self.prefix) {
                return Ok(ev);
            }
        }
    }
}

/// The etcd-shaped store interface.
pub trait Store: Send + Sync {
    /// One key.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// All keys starting with `prefix`, in key order.
    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;
    /// Apply `ops` atomically if every compare holds. Returns the new revision, or
    /// `None` (and changes nothing) if a compare failed.
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>, StoreError>;
    /// The current store revision.
    fn revision(&self) -> Result<u64, StoreError>;
    /// Grant a lease of `ttl`.
    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Extend a lease by its ttl from now.
    fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Revoke a lease and delete its keys.
    fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Revoke every lease whose time ran out; returns how many.
    fn expire_leases(&self) -> Result<usize, StoreError>;
    /// Watch keys under `prefix` from now on.
    fn watch(&self, prefix: &str) -> Watch;

    /// The most operations one [`Store::txn`] may carry.
    fn max_txn_ops(&self) -> usize {
        usize::MAX
    }

    /// Put one key (convenience over [`Store::txn`]).
    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        let rev = self.txn(&[], &[Op::put(key, value)])?;
        // A transaction without compares always applies.
        Ok(rev.unwrap_or_default())
    }

    /// Delete one key (convenience over [`Store::txn`]).
    fn delete(&self, key: &str) -> Result<u64, StoreError> {
        Ok(self
            .txn(&[], &[Op::Delete(key.into())])?
            .unwrap_or_default())
    }
}
