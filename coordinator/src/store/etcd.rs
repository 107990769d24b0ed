//! [`Store`] on etcd, for a cluster of coordinators (`serve --etcd`).
//!
//! Every key lives under a root (`{prefix}/kv/` for the registry), and the trait maps
//! one to one onto etcd's API: revisions are etcd's, a transaction is one etcd `Txn`
//! (so a write is committed by a quorum before the call returns, and the API answers
//! only after that), [`Compare::Absent`] is `create_revision == 0`, and leases are etcd
//! leases (etcd expires them itself, so [`Store::expire_leases`] has nothing to do).
//!
//! Watches: one etcd watch over the root feeds a broadcast channel that every
//! [`Watch`] filters. It is revision-ordered and, through [`cursor::Cursor`], resumes
//! after a reconnect at the revision after the last one delivered, and after a
//! compaction re-reads the range and delivers the difference.

mod conn;
pub mod cursor;
#[cfg(test)]
pub(crate) mod live_tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use conn::{Etcd, REQUEST_TIMEOUT};
use cursor::Cursor;

use super::{Compare, KeyValue, LeaseId, Op, Store, StoreError, Watch, WatchEvent};

/// Pause before re-opening a broken watch, so a dead cluster is not hammered.
const WATCH_RETRY: Duration = Duration::from_millis(200);
/// Pause before sending a request again after its member was unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Whether a request never reached a member (no connection could be opened), so sending
/// it again cannot apply it twice. The client's balancer keeps picking the endpoint of a
/// dead member among the live ones; a second try usually lands on a live one.
pub(crate) fn never_sent(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("connect error"))
}

/// Whether a request that changes nothing may be sent again: its member was unreachable
/// or unavailable (gRPC `UNAVAILABLE`, 14), whether or not it got the request.
pub(crate) fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == 14,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// The etcd store under one key root.
pub struct EtcdStore {
    etcd: Arc<Etcd>,
    root: String,
    events: broadcast::Sender<WatchEvent>,
    watcher: JoinHandle<()>,
}

fn be(e: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

fn rev(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0))
}

impl EtcdStore {
    /// The store of keys under `root` (e.g. `/meshgate/kv/`). Reads the range once to
    /// start the watch, so this fails when etcd has no quorum.
    pub fn open(etcd: Arc<Etcd>, root: impl Into<String>) -> Result<Self, StoreError> {
        let root = root.into();
        let range = root.clone();
        let (kvs, revision) = etcd
            .block(retrying(etcd.client(), unavailable, move |c| {
                read_all(c, range.clone())
            }))
            .map_err(be)?;
        let cursor = Cursor::from_snapshot(&kvs, revision);
        let events = broadcast::channel(1024).0;
        let sink = events.clone();
        let watcher = etcd.handle().spawn(watch_loop(
            etcd.client(),
            root.clone(),
            cursor,
            move |batch, _| publish(&sink, batch),
        ));
        Ok(Self {
            etcd,
            root,
            events,
            watcher,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    /// Run a request on the etcd runtime, sending it again while `retry` says the
    /// failure allows it, within [`REQUEST_TIMEOUT`].
    fn call<T, Fut>(
        &self,
        retry: fn(&etcd_client::Error) -> bool,
        f: impl Fn(Client) -> Fut + Send + 'static,
    ) -> Result<T, etcd_client::Error>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.etcd.block(retrying(self.etcd.client(), retry, f))
    }
}

/// Send a request again while `retry` says its failure allows it, within
/// [`REQUEST_TIMEOUT`].
pub(crate) async fn retrying<T, Fut>(
    client: Client,
    retry: fn(&etcd_client::Error) -> bool,
    f: impl Fn(Client) -> Fut,
) -> Result<T, etcd_client::Error>
where
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        match f(client.clone()).await {
            Err(e) if retry(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            r => return r,
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// An etcd key-value under `root` as a store [`KeyValue`] (`None` if outside the root).
pub(crate) fn from_etcd(root: &str, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
    let key = std::str::from_utf8(kv.key()).ok()?.strip_prefix(root)?;
    Some(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: u64::try_from(kv.create_revision()).unwrap_or(0),
        mod_revision: u64::try_from(kv.mod_revision()).unwrap_or(0),
        lease: u64::try_from(kv.lease()).ok().filter(|l| *l != 0),
    })
}

/// Every key under `root`, and the revision of that read.
pub(crate) async fn read_all(
    mut client: Client,
    root: String,
) -> Result<(Vec<KeyValue>, u64), etcd_client::Error> {
    let resp = client
        .get(root.clone(), Some(GetOptions::new().with_prefix()))
        .await?;
    let kvs = resp
        .kvs()
        .iter()
        .filter_map(|kv| from_etcd(&root, kv))
        .collect();
    Ok((kvs, rev(resp.header())))
}

/// Keeps one etcd watch over `root` open for as long as the task lives, starting after
/// `cursor`: `sink` gets each response's new changes (in revision order, none lost or
/// repeated across reconnects and compactions) and the last revision delivered so far,
/// which says that every change under `root` up to it has been delivered.
pub(crate) async fn watch_loop(
    mut client: Client,
    root: String,
    mut cursor: Cursor,
    mut sink: impl FnMut(Vec<WatchEvent>, u64),
) {
    let mut compacted = false;
    loop {
        if compacted {
            match read_all(client.clone(), root.clone()).await {
                Ok((kvs, revision)) => {
                    let diff = cursor.resync(kvs, revision);
                    tracing::warn!(
                        changes = diff.len(),
                        revision,
                        "etcd watch history was compacted; re-read the range"
                    );
                    sink(diff, cursor.revision());
                    compacted = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd re-read after compaction failed; retrying");
                    tokio::time::sleep(WATCH_RETRY).await;
                    continue;
                }
            }
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(i64::try_from(cursor.resume_from()).unwrap_or(i64::MAX));
        let mut stream = match client.watch(root.clone(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "etcd watch could not start; retrying");
                tokio::time::sleep(WATCH_RETRY).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        compacted = true;
                        break;
                    }
                    if resp.canceled() {
                        tracing::debug!(reason = resp.cancel_reason(), "etcd watch canceled");
                        break;
                    }
                    let batch = resp
                        .events()
                        .iter()
                        .filter_map(|ev| {
                            let kv = from_etcd(&root, ev.kv()?)?;
                            Some(match ev.event_type() {
                                EventType::Put => WatchEvent::Put(kv),
                                EventType::Delete => WatchEvent::Delete {
                                    key: kv.key,
                                    revision: kv.mod_revision,
                                },
                            })
                        })
                        .collect();
                    let fresh = cursor.apply(batch);
                    sink(fresh, cursor.revision());
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, resume_from = cursor.resume_from(), "etcd watch broke; resuming");
                    break;
                }
            }
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}

fn publish(events: &broadcast::Sender<WatchEvent>, batch: Vec<WatchEvent>) {
    for ev in batch {
        // No subscriber is not an error.
        let _ = events.send(ev);
    }
}

/// etcd refuses a transaction that touches one key twice; for the store a later write
/// to a key simply wins, so drop the earlier ones.
fn last_write_wins(ops: &[Op]) -> Vec<&Op> {
    let target = |op: &Op| match op {
        Op::Put { key, .. } | Op::Delete(key) => Some(key.clone()),
        Op::DeletePrefix(_) => None,
    };
    ops.iter()
        .enumerate()
        .filter(|(i, op)| {
            target(op).is_none_or(|k| {
                !ops[i + 1..]
                    .iter()
                    .any(|later| target(later) == Some(k.clone()))
            })
        })
        .map(|(_, op)| op)
        .collect()
}

/// etcd says "requested lease not found" (gRPC) and the client "lease not found" (its
/// keep-alive); the client has no typed error for either.
fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease not found")
}

impl Store for EtcdStore {
    /// etcd refuses a transaction with more operations than its `--max-txn-ops`, 128
    /// unless the server was started with more.
    fn max_txn_ops(&self) -> usize {
        128
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let (root, full) = (self.root.clone(), self.key(key));
        let resp = self
            .call(unavailable, move |mut c| {
                let full = full.clone();
                async move { c.get(full, None).await }
            })
            .map_err(be)?;
        Ok(resp.kvs().first().and_then(|kv| from_etcd(&root, kv)))
    }

    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let (root, full) = (self.root.clone(), self.key(prefix));
        let resp = self
            .call(unavailable, move |mut c| {
                let full = full.clone();
                async move { c.get(full, Some(GetOptions::new().with_prefix())).await }
            })
            .map_err(be)?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| from_etcd(&root, kv))
            .collect())
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>, StoreError> {
        let when: Vec<EtcdCompare> = compares
            .iter()
            .map(|c| match c {
                Compare::Absent(k) => {
                    EtcdCompare::create_revision(self.key(k), CompareOp::Equal, 0)
                }
                Compare::ModRevision(k, r) => EtcdCompare::mod_revision(
                    self.key(k),
                    CompareOp::Equal,
                    i64::try_from(*r).unwrap_or(i64::MAX),
                ),
            })
            .collect();
        let then: Vec<TxnOp> = last_write_wins(ops)
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => TxnOp::put(
                    self.key(key),
                    value.clone(),
                    lease.map(|l| PutOptions::new().with_lease(l as i64)),
                ),
                Op::Delete(key) => TxnOp::delete(self.key(key), None),
                Op::DeletePrefix(p) => {
                    TxnOp::delete(self.key(p), Some(DeleteOptions::new().with_prefix()))
                }
            })
            .collect();
        let txn = Txn::new().when(when).and_then(then);
        let resp = self
            .call(never_sent, move |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .map_err(|e| {
                let lease = ops.iter().find_map(|op| match op {
                    Op::Put { lease, .. } => *lease,
                    _ => None,
                });
                match lease {
                    Some(l) if is_lease_not_found(&e) => StoreError::UnknownLease(l),
                    _ => be(e),
                }
            })?;
        Ok(resp.succeeded().then(|| rev(resp.header())))
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let full = self.key("");
        let resp = self
            .call(unavailable, move |mut c| {
                let full = full.clone();
                async move {
                    c.get(
                        full,
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await
                }
            })
            .map_err(be)?;
        Ok(rev(resp.header()))
    }

    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        // etcd counts whole seconds (and raises short TTLs to its own minimum).
        let secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        let resp = self
            .call(never_sent, move |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .map_err(be)?;
        Ok(resp.id() as u64)
    }

    fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let ttl = self
            .call(unavailable, move |mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease as i64).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map_or(0, |r| r.ttl()))
            })
            .map_err(|e| {
                if is_lease_not_found(&e) {
                    StoreError::UnknownLease(lease)
                } else {
                    be(e)
                }
            })?;
        if ttl <= 0 {
            return Err(StoreError::UnknownLease(lease));
        }
        Ok(())
    }

    fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self.call(never_sent, move |mut c| async move {
            c.lease_revoke(lease as i64).await
        }) {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Err(StoreError::UnknownLease(lease)),
            Err(e) => Err(be(e)),
        }
    }

    fn expire_leases(&self) -> Result<usize, StoreError> {
        // etcd revokes lapsed leases (and deletes their keys) on its own.
        Ok(0)
    }

    fn watch(&self, prefix: &str) -> Watch {
        Watch::new(prefix.to_owned(), self.events.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_write_to_a_key_wins() {
        let ops = [
            Op::put("a", "1"),
            Op::Delete("b".into()),
            Op::put("a", "2"),
            Op::DeletePrefix("c/".into()),
            Op::put("b", "3"),
        ];
        let kept: Vec<&Op> = last_write_wins(&ops);
        assert_eq!(kept, [&ops[2], &ops[3], &ops[4]]);
    }
}
