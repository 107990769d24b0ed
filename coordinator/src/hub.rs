//! The driver around [`Core`]: it owns the QUIC connections and their outbound queues,
//! authenticates Hellos against the registry, carries the core's outputs out (messages,
//! relay rebuilds, event log, metrics) and hands epoch writes to a writer task, so no
//! store write ever happens under the state lock. The relay reads an immutable table
//! snapshot instead of the lock, so packets never wait on it. Registry changes reach
//! the core through the store's watch ([`tasks`]), whoever wrote them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ipnet::Ipv4Net;
use meshgate_proto::{
    CoordMsg, Hello, Id, Kind, Members, PROTOCOL_VERSION, RefuseCode, RouteTable, Timings,
    id::valid_replica_id,
};
use tokio::sync::{mpsc, watch};

use crate::core::limits::FailLimiter;
use crate::core::{self, Core, Input, Output, Registration, SessionId};
use crate::icmp::Limiter;
use crate::metrics::Metrics;
use crate::registry::{AuthError, Participant, Registry};
use crate::relay::{Errors, Table};

mod epochs;
mod events;
mod log_link;
pub mod logbook;
mod policy_link;
pub mod reclaim;
pub mod tasks;
pub use crate::core::ReplicaView;
pub use events::{EventLog, NodeEvent};

/// Control messages queued per connection before its peer counts as not reading and is
/// disconnected. Route tables do not queue here (see [`Hub::routes`]).
const CTL_QUEUE: usize = 1024;

/// A connection's I/O handles.
struct Io {
    conn: quinn::Connection,
    ctl: mpsc::Sender<CoordMsg>,
}

struct State {
    core: Core,
    io: HashMap<SessionId, Io>,
}

/// The hub.
pub struct Hub {
    /// Durable model.
    pub registry: Registry,
    /// Counters.
    pub metrics: Metrics,
    /// Recent election events per node.
    pub events: EventLog,
    /// Recent log records of each node's replicas ([`logbook`]).
    logs: Mutex<logbook::LogBook>,
    /// Network policies: the book, agents' counters, the change signal.
    pub policy: crate::policy::Engine,
    colo: String,
    state: Mutex<State>,
    table: RwLock<Arc<Table>>,
    icmp_limit: Arc<Limiter>,
    mesh: Ipv4Net,
    /// Bumped after every swap of `table`; registrations wait on it ([`Hub::relay_ready`]).
    relay_version: watch::Sender<u64>,
    /// The current route table; each connection's writer sends the latest one, so a slow
    /// reader skips tables instead of queueing them.
    routes: watch::Sender<Arc<RouteTable>>,
    /// The cluster's members as agents are told (empty until the cluster says).
    members: watch::Sender<Arc<Members>>,
    next_conn: AtomicU64,
    fails: Mutex<FailLimiter>,
    writer: mpsc::UnboundedSender<Vec<(Id, u64)>>,
    /// Where a cluster member's store transactions go (set once by the cluster driver).
    pub cluster_ops: std::sync::OnceLock<mpsc::UnboundedSender<crate::election::quorum::ClusterOp>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// A hub with nobody connected, and the receiver its epoch writer task
    /// ([`tasks::spawn`]) drains. A drained active keeps forwarding for
    /// `handover_overlap` after its successor's promotion (see [`crate::election`]);
    /// nobody is promoted before `restart_hold` has passed (see [`crate::core`]). With
    /// `member` (`--etcd`: this coordinator's name) the core elects as a cluster member
    /// through the shared store ([`crate::cluster::Driver`] feeds it) and the epoch
    /// writer gets nothing: the record in etcd is the epoch.
    pub fn new(
        registry: Registry,
        timings: Timings,
        handover_overlap: Duration,
        restart_hold: Duration,
        mesh: Ipv4Net,
        colo: String,
        member: Option<String>,
    ) -> (Self, mpsc::UnboundedReceiver<Vec<(Id, u64)>>) {
        let cfg = core::Config {
            timings,
            overlap: handover_overlap,
            mesh,
            restart_hold,
            member,
        };
        let (writer, writes) = mpsc::unbounded_channel();
        let hub = Self {
            registry,
            metrics: Metrics::default(),
            events: EventLog::default(),
            logs: Mutex::default(),
            policy: crate::policy::Engine::default(),
            colo,
            state: Mutex::new(State {
                core: Core::new(cfg, Instant::now()),
                io: HashMap::new(),
            }),
            table: RwLock::default(),
            icmp_limit: Arc::default(),
            mesh,
            relay_version: watch::Sender::new(0),
            routes: watch::Sender::new(Arc::default()),
            members: watch::Sender::new(Arc::default()),
            next_conn: AtomicU64::new(1),
            fails: Mutex::default(),
            writer,
            cluster_ops: std::sync::OnceLock::new(),
        };
        (hub, writes)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Feeds one input to the core and carries its outputs out.
    pub fn input(&self, input: Input) {
        let mut st = self.lock();
        self.input_locked(&mut st, input);
    }

    fn input_locked(&self, st: &mut State, input: Input) {
        let now = Instant::now();
        let mut pending = vec![input];
        while let Some(input) = pending.pop() {
            let outputs = st.core.handle(now, input);
            self.execute(st, now, outputs, &mut pending);
        }
    }

    fn execute(&self, st: &mut State, now: Instant, outputs: Vec<Output>, more: &mut Vec<Input>) {
        for o in outputs {
            match o {
                Output::Send { session, msg } => {
                    let Some(io) = st.io.get(&session) else {
                        continue;
                    };
                    if let Err(mpsc::error::TrySendError::Full(_)) = io.ctl.try_send(msg) {
                        tracing::warn!(
                            session,
                            "peer does not read its control stream; disconnecting"
                        );
                        io.conn.close(1u32.into(), b"control queue full");
                        st.io.remove(&session);
                        more.push(Input::Closed(session));
                    }
                }
                Output::Close {
                    session,
                    code,
                    reason,
                } => {
                    if let Some(io) = st.io.remove(&session) {
                        let _ = io.ctl.try_send(CoordMsg::Refused {
                            code,
                            reason: reason.clone(),
                        });
                        if code != RefuseCode::NOT_HA {
                            io.conn.close(1u32.into(), reason.as_bytes());
                        }
                    }
                }
                Output::PersistEpochs(epochs) => {
                    // The writer lives as long as the hub; a send fails only at exit.
                    let _ = self.writer.send(epochs);
                }
                Output::Relay => self.rebuild(st, now),
                Output::Routes(table) => {
                    self.routes.send_replace(table);
                }
                Output::Store(op) => match self.cluster_ops.get() {
                    // The cluster driver lives as long as the hub; a send fails only at exit.
                    Some(tx) => drop(tx.send(op)),
                    None => tracing::error!(?op, "a store transaction without a cluster driver"),
                },
                Output::Event(e) => {
                    if e.event == "promoted"
                        && let Some(d) = e.after_expiry
                    {
                        self.metrics.failover(d);
                    }
                    let after_ms = e.after_expiry.map(|d| d.as_millis() as u64);
                    self.events
                        .record(e.node, e.event, &e.replica, e.epoch, after_ms);
                }
            }
        }
    }

    fn refuse(&self, origin: std::net::IpAddr, code: RefuseCode, reason: String) -> Refusal {
        self.failed_attempt(origin);
        Err((code, reason))
    }

    /// A refused registration or a malformed Hello from `origin`: counted, and towards
    /// the source's rate limit.
    pub fn failed_attempt(&self, origin: std::net::IpAddr) {
        self.metrics.auth_failures.fetch_add(1, Relaxed);
        lock(&self.fails).record(origin, Instant::now());
    }

    /// Authenticate and register a connection (blocking: it may read and write the
    /// store). On success the Welcome is queued on the returned receiver ahead of
    /// anything else — or will be, once the epoch it carries is durable; the relay
    /// learns of the connection at the next tick (deliver the Welcome after
    /// [`Hub::relay_ready`]).
    pub fn register(
        &self,
        conn: quinn::Connection,
        hello: Hello,
    ) -> Result<(SessionId, mpsc::Receiver<CoordMsg>), (RefuseCode, String)> {
        let origin = conn.remote_address();
        if lock(&self.fails).limited(origin.ip(), Instant::now()) {
            let reason = "too many failed attempts; retry later".into();
            return Err((RefuseCode::RATE_LIMITED, reason));
        }
        if hello.protocol_version != PROTOCOL_VERSION {
            let v = hello.protocol_version;
            let reason = format!("protocol {v} not supported (want {PROTOCOL_VERSION})");
            return self.refuse(origin.ip(), RefuseCode::VERSION_MISMATCH, reason);
        }
        if !valid_replica_id(&hello.replica_id) {
            let reason = "replica id must be 1-64 of [A-Za-z0-9._-]".into();
            return self.refuse(origin.ip(), RefuseCode::BAD_REPLICA_ID, reason);
        }
        let participant = match self.registry.authenticate(&hello.token) {
            Ok((_, p)) => p,
            Err(e @ AuthError::Malformed(_)) => {
                return self.refuse(origin.ip(), RefuseCode::MALFORMED_TOKEN, e.to_string());
            }
            Err(e @ AuthError::Unknown) => {
                return self.refuse(origin.ip(), RefuseCode::UNKNOWN_TOKEN, e.to_string());
            }
            Err(e @ AuthError::Revoked) => {
                return self.refuse(origin.ip(), RefuseCode::REVOKED_TOKEN, e.to_string());
            }
            Err(e @ AuthError::Store(_)) => return Err((RefuseCode::INTERNAL, e.to_string())),
        };
        let internal = |e: crate::registry::RegistryError| (RefuseCode::INTERNAL, e.to_string());
        let (kind, id, name, ha, mesh_ip, stored_epoch) = match &participant {
            Participant::Node(n) => {
                // Refused before any allocation: a non-HA node's second replica, or one
                // replica too many.
                if !n.ha && self.lock().core.has_other_replica(n.id, &hello.replica_id) {
                    let reason = format!(
                        "node {} is not HA and already has a replica connected",
                        n.name
                    );
                    return Err((RefuseCode::NOT_HA, reason));
                }
                let ip =
                    self.registry
                        .replica_ip(n.id, &hello.replica_id)
                        .map_err(|e| match e {
                            crate::registry::RegistryError::Limit(why) => {
                                (RefuseCode::TOO_MANY_REPLICAS, why)
                            }
                            e => internal(e),
                        })?;
                let epoch = self.registry.epoch(n.id).map_err(internal)?;
                (Kind::Node, n.id, n.name.clone(), n.ha, ip, epoch)
            }
            Participant::Device(d) => (Kind::Device, d.id, d.name.clone(), false, d.mesh_ip, 0),
        };
        let (tx, rx) = mpsc::channel(CTL_QUEUE);
        let session = self.next_conn.fetch_add(1, Relaxed);
        let registration = Registration {
            session,
            kind,
            id,
            name,
            ha,
            replica_id: hello.replica_id,
            mesh_ip,
            lan: hello.lan,
            origin,
            opened_at: SystemTime::now(),
            stored_epoch,
            seen_epoch: hello.seen_epoch,
        };
        let mut st = self.lock();
        st.io.insert(
            session,
            Io {
                conn: conn.clone(),
                ctl: tx,
            },
        );
        self.input_locked(&mut st, Input::Register(Box::new(registration)));
        if !st.io.contains_key(&session) {
            // Refused by the core (its Refused is queued on `rx`, which we drop).
            return Err((
                RefuseCode::NOT_HA,
                "node is not HA and already has a replica connected".into(),
            ));
        }
        self.metrics.registrations.fetch_add(1, Relaxed);
        Ok((session, rx))
    }

    /// A connection ended.
    pub fn disconnected(&self, session: SessionId) {
        let mut st = self.lock();
        st.io.remove(&session);
        self.input_locked(&mut st, Input::Closed(session));
    }

    /// Let time act on every election (lease expiry, promotion) and rebuild a stale relay.
    pub fn tick(&self) {
        self.input(Input::Tick);
    }

    fn rebuild(&self, st: &State, now: Instant) {
        let view = st.core.relay_view(now);
        let participants = view
            .senders
            .into_iter()
            .filter_map(|(c, s)| st.io.get(&c).map(|io| (c, s, io.conn.clone())));
        let routes = view
            .routes
            .entries
            .iter()
            .filter_map(|e| e.node.map(|n| (e.network, n)));
        let errors = Errors {
            mesh: self.mesh,
            limiter: self.icmp_limit.clone(),
        };
        let table = Arc::new(Table::build(participants, routes, view.active, errors));
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
        self.relay_version.send_modify(|v| *v += 1);
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the relay table includes `session` (at most one tick after its
    /// registration), so a participant that has its Welcome can send at once.
    pub async fn relay_ready(&self, session: SessionId) {
        let mut version = self.relay_version.subscribe();
        // The sender lives as long as the hub, so this only ends by the condition.
        let _ = version.wait_for(|_| self.table().has_conn(session)).await;
    }

    /// The route table as it changes; each connection's writer follows it.
    pub fn routes(&self) -> watch::Receiver<Arc<RouteTable>> {
        self.routes.subscribe()
    }

    /// The cluster's members as they change; each connection's writer follows them.
    pub fn members(&self) -> watch::Receiver<Arc<Members>> {
        self.members.subscribe()
    }

    /// Tells every connected agent the cluster's members (only if they changed).
    pub fn set_members(&self, members: Members) {
        self.members.send_if_modified(|m| {
            let changed = **m != members;
            if changed {
                *m = Arc::new(members);
            }
            changed
        });
    }

    /// A node or device was deleted: close its connections (idempotent; the hub's own
    /// store watch does the same).
    pub fn participant_deleted(&self, id: Id) {
        self.input(Input::Deleted(id));
    }

    /// Nothing to do: the hub follows route changes through the store's watch
    /// ([`tasks`]), whoever wrote them. Kept for the cluster follower.
    pub fn routes_changed(&self) {}

    /// Every connected participant's id.
    pub fn participants(&self) -> Vec<Id> {
        self.lock().core.participants()
    }

    /// Connected replicas of a node.
    pub fn connections(&self, node: Id) -> Vec<ReplicaView> {
        self.lock()
            .core
            .connections(node, Instant::now(), &self.colo)
    }

    /// A node's epoch as this coordinator's election holds it (under `--etcd` the
    /// cluster's, which the registry does not track); `None` for a node it has not seen.
    pub fn epoch(&self, node: Id) -> Option<u64> {
        self.lock().core.epoch_of(node)
    }

    /// Number of connected participants, and replicas per (node, ha_status).
    pub fn census(&self) -> (usize, Vec<(Id, &'static str, usize)>) {
        self.lock().core.census(Instant::now())
    }

    /// Relay one datagram.
    pub fn forward(&self, from: SessionId, pkt: Bytes) {
        self.table().forward(from, pkt, &self.metrics);
    }
}

type Refusal = Result<(SessionId, mpsc::Receiver<CoordMsg>), (RefuseCode, String)>;
