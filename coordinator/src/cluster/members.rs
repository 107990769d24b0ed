//! Membership in etcd: each member keeps a key on an etcd lease (`members/{name}`) that
//! vanishes a few seconds after it dies, campaigns in etcd's election for "who decides",
//! and reports etcd's health per endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::VecDeque;
use std::time::Instant;

use etcd_client::{Client, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Member, keys};
use crate::election::quorum::{ClusterEvent, KEEPALIVE_EVERY, MEMBER_TTL};
use crate::store::Store as _;
use crate::store::etcd::{Etcd, EtcdStore, REQUEST_TIMEOUT};

/// TTL of a member's lease, in etcd's whole seconds: a dead member leaves the token
/// address lists, and stops counting in elections, this long after its death.
const MEMBER_TTL_S: i64 = MEMBER_TTL.as_secs() as i64;
/// How often the lease is renewed (the core's fence counts from acknowledged renewals).
const RENEW_EVERY: Duration = KEEPALIVE_EVERY;
/// How long to wait before registering again after losing the lease or etcd.
const RETRY: Duration = Duration::from_millis(500);
/// How long a keep-alive may stay unanswered before its stream moves to another endpoint:
/// three renewals, well inside the TTL.
const UNANSWERED: Duration = Duration::from_millis(1500);
/// How long one endpoint may take to report its status.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// This member's registration, kept alive in the background.
pub struct Membership {
    etcd: Arc<Etcd>,
    meta: Arc<EtcdStore>,
    election: String,
    prefix: String,
    lease: Arc<AtomicI64>,
    renewed_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn parse(kvs: Vec<crate::store::KeyValue>) -> Vec<Member> {
    kvs.into_iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect()
}

impl Membership {
    /// Register `me` under `prefix` and keep it registered, telling the core through
    /// `events`. `meta` is the store rooted at `{prefix}/cluster/`.
    pub fn start(
        etcd: Arc<Etcd>,
        meta: Arc<EtcdStore>,
        prefix: &str,
        me: &Member,
        events: Events,
    ) -> Self {
        let prefix = prefix.trim_end_matches('/').to_owned();
        let election = format!("{prefix}/cluster/decider");
        let lease = Arc::new(AtomicI64::new(0));
        let renewed_ms = Arc::new(AtomicU64::new(0));
        let task = etcd.handle().spawn(keep_registered(
            etcd.clone(),
            format!("{prefix}/cluster/"),
            election.clone(),
            me.clone(),
            lease.clone(),
            renewed_ms.clone(),
            events,
        ));
        Self {
            etcd,
            meta,
            election,
            prefix,
            lease,
            renewed_ms,
            task,
        }
    }

    /// The live members (their leases hold).
    pub fn live(&self) -> Result<Vec<Member>, crate::store::StoreError> {
        Ok(parse(self.meta.range("members/")?))
    }

    /// Every member ever registered, and the live ones.
    pub fn known_and_live(&self) -> Result<(Vec<Member>, Vec<Member>), crate::store::StoreError> {
        Ok((parse(self.meta.range("known/")?), self.live()?))
    }

    /// `ok` while this member's lease is held and was renewed within its TTL.
    pub fn ready_check(&self) -> String {
        let age = now_ms().saturating_sub(self.renewed_ms.load(Relaxed));
        if self.lease.load(Relaxed) == 0 {
            "failing: not registered in etcd".into()
        } else if age > (MEMBER_TTL_S as u64) * 1000 {
            format!("failing: etcd lease not renewed for {age} ms")
        } else {
            "ok".into()
        }
    }

    /// Whether this member has lost etcd: not registered, or no keep-alive answered for
    /// [`meshgate_proto::CUT_OFF_AFTER_MS`]. Agents are told, and send elsewhere.
    pub fn cut_off(&self) -> bool {
        let age = now_ms().saturating_sub(self.renewed_ms.load(Relaxed));
        self.lease.load(Relaxed) == 0 || age > meshgate_proto::CUT_OFF_AFTER_MS
    }

    /// The member that etcd's election names now, if any.
    pub async fn decider(&self) -> Option<String> {
        let mut c = self.etcd.client();
        let name = self.election.clone();
        self.etcd
            .run(async move { c.leader(name).await })
            .await?
            .ok()?
            .kv()
            .and_then(|kv| String::from_utf8(kv.value().to_vec()).ok())
    }

    /// Status of each etcd endpoint given at start, and whether a majority is healthy.
    pub async fn etcd_health(&self) -> Value {
        let checks = self.etcd.endpoints().iter().cloned().map(|ep| async move {
            let r = async {
                let mut c = Etcd::single(ep.clone(), HEALTH_TIMEOUT).await?;
                c.status().await
            };
            match tokio::time::timeout(HEALTH_TIMEOUT, r).await {
                Ok(Ok(s)) => {
                    let header = s.header();
                    json!({
                        "endpoint": ep,
                        "healthy": s.errors().is_empty(),
                        "leader": header.is_some_and(|h| h.member_id() == s.leader()),
                        "version": s.version(),
                        "raft_term": s.raft_term(),
                        "revision": header.map(|h| h.revision()),
                    })
                }
                Ok(Err(e)) => json!({"endpoint": ep, "healthy": false, "error": e.to_string()}),
                Err(_) => json!({"endpoint": ep, "healthy": false, "error": "timed out"}),
            }
        });
        let all = futures_join(checks.collect()).await;
        let healthy = all.iter().filter(|e| e["healthy"] == true).count();
        json!({
            "prefix": self.prefix,
            "healthy": healthy * 2 > all.len(),
            "endpoints": all,
        })
    }
}

/// Run the health checks side by side on the etcd runtime.
async fn futures_join<F>(checks: Vec<F>) -> Vec<Value>
where
    F: std::future::Future<Output = Value> + Send + 'static,
{
    let handles: Vec<_> = checks.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or(Value::Null));
    }
    out
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What registration tells the core: registered, kept alive, lost, deciding.
pub type Events = mpsc::UnboundedSender<ClusterEvent>;

fn tell(events: &Events, ev: ClusterEvent) {
    // The receiver lives as long as the hub; a send fails only at exit.
    let _ = events.send(ev);
}

/// Register, renew until the lease is lost, register again; forever. Every registration
/// is a new lease (the core's marks carry it, rule 5 of [`crate::election::quorum`]);
/// the lease it replaces, of this run or of an earlier one, is revoked right after.
async fn keep_registered(
    etcd: Arc<Etcd>,
    root: String,
    election: String,
    me: Member,
    lease: Arc<AtomicI64>,
    renewed_ms: Arc<AtomicU64>,
    events: Events,
) {
    let mut client = etcd.client();
    let mut replaced: Option<i64> = None;
    loop {
        let sent_at = Instant::now();
        let (id, revision, before) = match register(&mut client, &root, &me).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not register in etcd; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        lease.store(id, Relaxed);
        renewed_ms.store(now_ms(), Relaxed);
        tracing::info!(member = %me.name, lease = id, revision, "registered in etcd");
        tell(
            &events,
            ClusterEvent::Registered {
                lease: id as u64,
                revision,
                sent_at,
            },
        );
        for old in [before, replaced.take()].into_iter().flatten() {
            if old != id {
                // Its campaign key would otherwise stand in the election until it expires.
                let _ = client.lease_revoke(old).await;
            }
        }
        let campaign = tokio::spawn(campaign(
            election.clone(),
            me.name.clone(),
            id,
            etcd.clone(),
            events.clone(),
        ));
        let lost = renew(&etcd, id, &renewed_ms, &events).await;
        campaign.abort();
        lease.store(0, Relaxed);
        tell(&events, ClusterEvent::Lost);
        replaced = Some(id);
        tracing::warn!(member = %me.name, reason = %lost, "lost the etcd membership lease; registering again");
        tokio::time::sleep(RETRY).await;
    }
}

/// Puts this member's key on a new lease, bumps `joined` and records the member as known,
/// in one transaction; returns the lease, the transaction's revision and the lease of
/// the key it replaced (an earlier registration's), if any.
async fn register(
    client: &mut Client,
    root: &str,
    me: &Member,
) -> Result<(i64, u64, Option<i64>), etcd_client::Error> {
    let id = client.lease_grant(MEMBER_TTL_S, None).await?.id();
    let value = serde_json::to_vec(me).expect("a member serialises");
    let key = format!("{root}{}", keys::member(&me.name));
    let resp = client
        .txn(Txn::new().and_then([
            TxnOp::get(key.clone(), None),
            TxnOp::put(key, value.clone(), Some(PutOptions::new().with_lease(id))),
            TxnOp::put(format!("{root}{}", keys::JOINED), me.name.clone(), None),
            TxnOp::put(format!("{root}known/{}", me.name), value, None),
        ]))
        .await?;
    let before = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()).filter(|l| *l != 0),
        _ => None,
    });
    let revision = resp.header().map_or(0, |h| h.revision().max(0) as u64);
    Ok((id, revision, before))
}

/// Renew `lease` until it is gone or a keep-alive stays unanswered for the TTL; returns
/// why. Keep-alives go out every [`RENEW_EVERY`] without waiting for the previous answer
/// (etcd answers them in order on one stream), and each answer tells the core when its
/// request was sent: the member's fence counts from there.
///
/// A stream that breaks, or leaves a keep-alive unanswered for [`UNANSWERED`], is opened
/// again on the next endpoint, each in turn: the client's balanced channel does not check
/// its endpoints' health, and may keep putting the stream on an etcd member that is cut
/// off or gone until this member's own lease has run out.
async fn renew(etcd: &Etcd, lease: i64, renewed_ms: &AtomicU64, events: &Events) -> String {
    let mut acked = Instant::now();
    let mut client = etcd.client();
    let mut next = 0;
    loop {
        let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
            Ok(k) => k,
            Err(e) if e.to_string().contains("lease not found") => return e.to_string(),
            Err(e) => {
                if acked.elapsed() >= MEMBER_TTL {
                    return format!("no keep-alive answered within the TTL ({e})");
                }
                // The endpoint may be the one that died: move on, as for a broken stream.
                client = next_endpoint(etcd, &mut next, &e.to_string()).await;
                continue;
            }
        };
        let mut sent: VecDeque<Instant> = VecDeque::new();
        let mut every = tokio::time::interval(RENEW_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let broke = loop {
            tokio::select! {
                _ = every.tick() => {
                    if acked.elapsed() >= MEMBER_TTL {
                        return "no keep-alive answered within the TTL".into();
                    }
                    if sent.front().is_some_and(|t| t.elapsed() >= UNANSWERED) {
                        break format!("a keep-alive unanswered for {UNANSWERED:?}");
                    }
                    if let Err(e) = keeper.keep_alive().await {
                        break e.to_string();
                    }
                    sent.push_back(Instant::now());
                }
                msg = stream.message() => match msg {
                    Ok(Some(r)) if r.ttl() > 0 => {
                        let Some(sent_at) = sent.pop_front() else { continue };
                        acked = acked.max(sent_at);
                        renewed_ms.store(now_ms(), Relaxed);
                        tell(events, ClusterEvent::KeptAlive { sent_at });
                    }
                    Ok(Some(_)) => return "the lease expired".into(),
                    Ok(None) => break "keep-alive stream closed".into(),
                    Err(e) => break e.to_string(),
                },
            }
        };
        // The lease may well be alive (etcd lost its leader, a member died): open a new
        // stream; answers to what was sent on the old one are lost.
        client = next_endpoint(etcd, &mut next, &broke).await;
    }
}

/// A client on the next endpoint in turn, after a short pause. Without the rotation on a
/// failed open too, a member whose turn had come to a killed etcd retried that endpoint
/// until its lease ran out (every member lost its lease when the etcd leader `e1` died).
async fn next_endpoint(etcd: &Etcd, next: &mut usize, why: &str) -> Client {
    let endpoints = etcd.endpoints();
    let endpoint = endpoints[*next % endpoints.len()].clone();
    *next += 1;
    tracing::info!(reason = %why, %endpoint, "etcd keep-alive stream broke; reopening on the next endpoint");
    let client = match Etcd::single(endpoint, REQUEST_TIMEOUT).await {
        Ok(c) => c,
        Err(_) => etcd.client(),
    };
    tokio::time::sleep(RETRY.min(RENEW_EVERY)).await;
    client
}

/// Stand in etcd's election on `lease` until elected, then tell the core it decides.
/// The campaign is etcd's: the win lasts as long as the lease, so losing it is the
/// registration's [`ClusterEvent::Lost`], which ends deciding too.
async fn campaign(election: String, name: String, lease: i64, etcd: Arc<Etcd>, events: Events) {
    let mut client = etcd.client();
    loop {
        // Each try is bounded by the request timeout, and etcd withdraws the candidate
        // when a try ends unelected; that only reorders the members still waiting.
        match client.campaign(election.clone(), name.clone(), lease).await {
            Ok(_) => {
                tracing::info!(member = %name, "this member now decides elections (etcd election won)");
                tell(&events, ClusterEvent::Decider(true));
                return;
            }
            Err(e) => tracing::debug!(error = %e, "election campaign still waiting"),
        }
        tokio::time::sleep(RETRY).await;
    }
}
