//! [`Store`] on redb.
//!
//! Why redb: it is pure Rust (no C toolchain in the build, unlike SQLite's bundled
//! build), embedded (the store is one file in the data dir), and its write transactions
//! are ACID with copy-on-write pages and a checksummed commit — a `kill -9` in the middle
//! of a commit leaves the previous committed state, never a torn one. Every commit here
//! uses redb's default `Durability::Immediate` (fsync before `commit` returns), so an
//! API call that answered success survives a crash. Concurrent transactions share a
//! commit (see [`group`]).
//!
//! Layout: table `kv` maps key → `create_rev | mod_rev | lease | value` (three u64 BE
//! then the bytes); `meta` holds the revision and lease counters; `leases` maps lease
//! id → (ttl ms, deadline unix ms).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::broadcast;

use super::{Compare, KeyValue, LeaseId, Op, Store, StoreError, Watch, WatchEvent};

mod group;
use group::{Group, Job, Outcome};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<u64, (u64, u64)> = TableDefinition::new("leases");
const HEADER: usize = 24;

fn be<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The embedded redb store.
pub struct RedbStore {
    db: Database,
    events: broadcast::Sender<WatchEvent>,
    group: Group,
}

impl RedbStore {
    /// Open (or create) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(be)?;
        let tx = db.begin_write().map_err(be)?;
        {
            // Create the tables so read transactions never see them missing.
            tx.open_table(KV).map_err(be)?;
            tx.open_table(META).map_err(be)?;
            tx.open_table(LEASES).map_err(be)?;
        }
        tx.commit().map_err(be)?;
        Ok(Self {
            db,
            events: broadcast::channel(1024).0,
            group: Group::default(),
        })
    }

    fn decode(key: &str, raw: &[u8]) -> KeyValue {
        let word = |i: usize| {
            raw.get(i * 8..i * 8 + 8)
                .and_then(|s| s.try_into().ok())
                .map_or(0, u64::from_be_bytes)
        };
        let lease = word(2);
        KeyValue {
            key: key.to_owned(),
            value: raw.get(HEADER..).unwrap_or_default().to_vec(),
            create_revision: word(0),
            mod_revision: word(1),
            lease: (lease != 0).then_some(lease),
        }
    }

    fn encode(create: u64, modr: u64, lease: Option<LeaseId>, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + value.len());
        v.extend_from_slice(&create.to_be_bytes());
        v.extend_from_slice(&modr.to_be_bytes());
        v.extend_from_slice(&lease.unwrap_or(0).to_be_bytes());
        v.extend_from_slice(value);
        v
    }

    fn apply(
        tx: &WriteTransaction,
        rev: u64,
        ops: &[Op],
        events: &mut Vec<WatchEvent>,
    ) -> Result<(), StoreError> {
        let mut kv = tx.open_table(KV).map_err(be)?;
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create = kv
                        .get(key.as_str())
                        .map_err(be)?
                        .map_or(rev, |g| Self::decode(key, g.value()).create_revision);
                    kv.insert(
                        key.as_str(),
                        Self::encode(create, rev, *lease, value).as_slice(),
                    )
                    .map_err(be)?;
                    events.push(WatchEvent::Put(KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: create,
                        mod_revision: rev,
                        lease: *lease,
                    }));
                }
                Op::Delete(key) => {
                    if kv.remove(key.as_str()).map_err(be)?.is_some() {
                        events.push(WatchEvent::Delete {
                            key: key.clone(),
                            revision: rev,
                        });
                    }
                }
                Op::DeletePrefix(prefix) => {
                    let keys: Vec<String> = kv
                        .range(prefix.as_str()..)
                        .map_err(be)?
                        .map_while(|r| r.ok())
                        .map(|(k, _)| k.value().to_owned())
                        .take_while(|k| k.starts_with(prefix.as_str()))
                        .collect();
                    for key in keys {
                        kv.remove(key.as_str()).map_err(be)?;
                        events.push(WatchEvent::Delete { key, revision: rev });
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies `jobs` in one write transaction and commits once (not at all if none
    /// applied). A backend failure fails the whole batch; nothing of it is kept.
    fn commit_batch(&self, jobs: &[Job]) -> Vec<Outcome> {
        let run = || -> Result<(Vec<Outcome>, Vec<WatchEvent>), StoreError> {
            let tx = self.db.begin_write().map_err(be)?;
            let mut outcomes = Vec::with_capacity(jobs.len());
            let mut events = Vec::new();
            for job in jobs {
                outcomes.push(self.apply_guarded(&tx, job, &mut events)?);
            }
            if outcomes.iter().any(|o| matches!(o, Ok(Some(_)))) {
                tx.commit().map_err(be)?;
                self.group.count_commit();
            } // else dropping `tx` aborts it
            Ok((outcomes, events))
        };
        match run() {
            Ok((outcomes, events)) => {
                self.publish(events);
                outcomes
            }
            Err(e) => jobs
                .iter()
                .map(|_| Err(StoreError::Backend(e.to_string())))
                .collect(),
        }
    }

    /// One transaction inside a batch: the outer error fails the batch, the inner result
    /// is the caller's (a failed compare or an unknown lease changes nothing).
    fn apply_guarded(
        &self,
        tx: &WriteTransaction,
        job: &Job,
        events: &mut Vec<WatchEvent>,
    ) -> Result<Outcome, StoreError> {
        {
            let kv = tx.open_table(KV).map_err(be)?;
            for c in &job.compares {
                let holds = match c {
                    Compare::Absent(k) => kv.get(k.as_str()).map_err(be)?.is_none(),
                    Compare::ModRevision(k, r) => kv
                        .get(k.as_str())
                        .map_err(be)?
                        .is_some_and(|g| Self::decode(k, g.value()).mod_revision == *r),
                };
                if !holds {
                    return Ok(Ok(None));
                }
            }
        }
        {
            let leases = tx.open_table(LEASES).map_err(be)?;
            for op in &job.ops {
                if let Op::Put { lease: Some(l), .. } = op
                    && leases.get(*l).map_err(be)?.is_none()
                {
                    return Ok(Err(StoreError::UnknownLease(*l)));
                }
            }
        }
        let rev = self.bump(tx)?;
        Self::apply(tx, rev, &job.ops, events)?;
        Ok(Ok(Some(rev)))
    }

    fn keys_of_lease(tx: &WriteTransaction, lease: LeaseId) -> Result<Vec<String>, StoreError> {
        let kv = tx.open_table(KV).map_err(be)?;
        let mut out = Vec::new();
        for entry in kv.iter().map_err(be)? {
            let (k, v) = entry.map_err(be)?;
            if Self::decode(k.value(), v.value()).lease == Some(lease) {
                out.push(k.value().to_owned());
            }
        }
        Ok(out)
    }

    fn revoke_in(&self, tx: WriteTransaction, leases: &[LeaseId]) -> Result<(), StoreError> {
        let mut ops = Vec::new();
        for &l in leases {
            ops.extend(Self::keys_of_lease(&tx, l)?.into_iter().map(Op::Delete));
            tx.open_table(LEASES).map_err(be)?.remove(l).map_err(be)?;
        }
        let rev = self.bump(&tx)?;
        let mut events = Vec::new();
        Self::apply(&tx, rev, &ops, &mut events)?;
        tx.commit().map_err(be)?;
        self.publish(events);
        Ok(())
    }

    fn bump(&self, tx: &WriteTransaction) -> Result<u64, StoreError> {
        let mut meta = tx.open_table(META).map_err(be)?;
        let rev = meta.get("revision").map_err(be)?.map_or(0, |g| g.value()) + 1;
        meta.insert("revision", rev).map_err(be)?;
        Ok(rev)
    }

    fn publish(&self, events: Vec<WatchEvent>) {
        for e in events {
            // No receivers is not an error.
            let _ = self.events.send(e);
        }
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let kv = tx.open_table(KV).map_err(be)?;
        Ok(kv
            .get(key)
            .map_err(be)?
            .map(|g| Self::decode(key, g.value())))
    }

    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let kv = tx.open_table(KV).map_err(be)?;
        let mut out = Vec::new();
        for entry in kv.range(prefix..).map_err(be)? {
            let (k, v) = entry.map_err(be)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(Self::decode(k.value(), v.value()));
        }
        Ok(out)
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>, StoreError> {
        let job = Job {
            compares: compares.to_vec(),
            ops: ops.to_vec(),
        };
        self.group.submit(job, |jobs| self.commit_batch(jobs))
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let meta = tx.open_table(META).map_err(be)?;
        Ok(meta.get("revision").map_err(be)?.map_or(0, |g| g.value()))
    }

    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let id = {
            let mut meta = tx.open_table(META).map_err(be)?;
            let id = meta.get("next_lease").map_err(be)?.map_or(1, |g| g.value());
            meta.insert("next_lease", id + 1).map_err(be)?;
            id
        };
        let ttl_ms = ttl.as_millis() as u64;
        tx.open_table(LEASES)
            .map_err(be)?
            .insert(id, (ttl_ms, now_ms() + ttl_ms))
            .map_err(be)?;
        tx.commit().map_err(be)?;
        Ok(id)
    }

    fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            let mut t = tx.open_table(LEASES).map_err(be)?;
            let ttl = t
                .get(lease)
                .map_err(be)?
                .ok_or(StoreError::UnknownLease(lease))?
                .value()
                .0;
            t.insert(lease, (ttl, now_ms() + ttl)).map_err(be)?;
        }
        tx.commit().map_err(be)
    }

    fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        if tx
            .open_table(LEASES)
            .map_err(be)?
            .get(lease)
            .map_err(be)?
            .is_none()
        {
            return Err(StoreError::UnknownLease(lease));
        }
        self.revoke_in(tx, &[lease])
    }

    fn expire_leases(&self) -> Result<usize, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let now = now_ms();
        let expired: Vec<LeaseId> = {
            let t = tx.open_table(LEASES).map_err(be)?;
            let mut v = Vec::new();
            for e in t.iter().map_err(be)? {
                let (id, val) = e.map_err(be)?;
                if val.value().1 <= now {
                    v.push(id.value());
                }
            }
            v
        };
        if expired.is_empty() {
            return Ok(0);
        }
        self.revoke_in(tx, &expired)?;
        Ok(expired.len())
    }

    fn watch(&self, prefix: &str) -> Watch {
        Watch::new(prefix.to_owned(), self.events.subscribe())
    }
}

#[cfg(test)]
mod tests;
