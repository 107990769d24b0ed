//! The live state: connected participants, one [`Election`] per node, the relay table,
//! and the glue that turns election actions into control messages. The QUIC layer
//! calls in with events; the API reads views. One mutex guards sessions and elections;
//! the relay reads an immutable table snapshot instead, so packets never wait on it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ipnet::Ipv4Net;
use meshgate_proto::{
    CoordMsg, Hello, Id, Kind, PROTOCOL_VERSION, RefuseCode, Role, RouteEntry, RouteTable, Timings,
    Welcome, id::valid_replica_id,
};
use tokio::sync::{mpsc, watch};

use crate::election::{self, Action, ConnId, Election, Event, Out};
use crate::icmp::Limiter;
use crate::metrics::Metrics;
use crate::registry::{AuthError, Participant, Registry};
use crate::relay::{Errors, Sender, Table};

mod epochs;
mod events;
mod policy_link;
mod views;
pub use events::{EventLog, NodeEvent};
pub use views::ReplicaView;

/// Failed registrations allowed per source address per window before refusing.
const FAILS_PER_WINDOW: u32 = 5;
const FAIL_WINDOW: Duration = Duration::from_secs(10);
/// Table size at which expired failure windows are pruned.
const FAIL_TABLE_PRUNE_AT: usize = 4096;

/// A connected participant.
pub struct Session {
    /// Node or device.
    pub kind: Kind,
    /// Node or device id.
    pub id: Id,
    /// Replica id (devices: as presented).
    pub replica_id: String,
    /// Its Mesh IP.
    pub mesh_ip: Ipv4Addr,
    /// Remote address.
    pub origin: SocketAddr,
    /// When it registered.
    pub opened_at: SystemTime,
    conn: quinn::Connection,
    ctl: mpsc::UnboundedSender<CoordMsg>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<ConnId, Session>,
    elections: HashMap<Id, Election>,
}

/// The hub.
pub struct Hub {
    /// Durable model.
    pub registry: Registry,
    /// Counters.
    pub metrics: Metrics,
    /// Recent election events per node.
    pub events: EventLog,
    /// Network policies: the book, agents' counters, the change signal.
    pub policy: crate::policy::Engine,
    timings: Timings,
    /// How long a replica that asked for handover overlaps its successor.
    handover_overlap: Duration,
    mesh: Ipv4Net,
    colo: String,
    state: Mutex<State>,
    table: RwLock<Arc<Table>>,
    icmp_limit: Arc<Limiter>,
    /// Bumped after every swap of `table`; registrations wait on it ([`Hub::relay_ready`]).
    relay_version: watch::Sender<u64>,
    /// Connections came or went since the last rebuild: the next tick rebuilds. A rebuild
    /// walks every session, so doing one per registration or disconnect made a fleet of
    /// N connecting (or a storm of N/2 dropping) cost O(N²) under the state lock.
    relay_stale: AtomicBool,
    next_conn: AtomicU64,
    fails: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    epochs: epochs::Epochs,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Active => "active",
        Role::Standby => "standby",
        Role::Fenced => "fenced",
    }
}

impl Hub {
    /// A hub with nobody connected. A drained active keeps forwarding for
    /// `handover_overlap` after its successor's promotion (see [`crate::election`]).
    pub fn new(
        registry: Registry,
        timings: Timings,
        handover_overlap: Duration,
        mesh: Ipv4Net,
        colo: String,
    ) -> Self {
        Self {
            registry,
            metrics: Metrics::default(),
            events: EventLog::default(),
            policy: crate::policy::Engine::default(),
            timings,
            handover_overlap,
            mesh,
            colo,
            state: Mutex::default(),
            table: RwLock::default(),
            icmp_limit: Arc::default(),
            relay_version: watch::Sender::new(0),
            relay_stale: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            fails: Mutex::default(),
            epochs: epochs::Epochs::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rate_limited(&self, ip: IpAddr) -> bool {
        let f = self.fails.lock().unwrap_or_else(|e| e.into_inner());
        f.get(&ip)
            .is_some_and(|(n, since)| *n >= FAILS_PER_WINDOW && since.elapsed() < FAIL_WINDOW)
    }

    fn record_failure(&self, ip: IpAddr) {
        self.metrics.auth_failures.fetch_add(1, Relaxed);
        let mut f = self.fails.lock().unwrap_or_else(|e| e.into_inner());
        // Forget windows that have passed once the table grows, so failures from many
        // addresses cannot grow it without bound.
        if f.len() >= FAIL_TABLE_PRUNE_AT {
            f.retain(|_, (_, since)| since.elapsed() < FAIL_WINDOW);
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAIL_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    /// The current route table: the mesh range, then every node's routes.
    pub fn route_table(&self) -> RouteTable {
        let mut entries = vec![RouteEntry {
            network: self.mesh,
            node: None,
        }];
        let routes = self.registry.all_routes().unwrap_or_else(|e| {
            tracing::error!(error = %e, "failed to read routes");
            Vec::new()
        });
        entries.extend(routes.into_iter().map(|r| RouteEntry {
            network: r.network,
            node: Some(r.node_id),
        }));
        RouteTable {
            version: self.registry.routes_version().unwrap_or(0),
            entries,
        }
    }

    /// Authenticate and register a connection. On success the Welcome is already queued
    /// on the returned receiver, ahead of anything else; the relay learns of the
    /// connection at the next tick (deliver the Welcome after [`Hub::relay_ready`]).
    pub fn register(
        &self,
        conn: quinn::Connection,
        hello: Hello,
    ) -> Result<(ConnId, mpsc::UnboundedReceiver<CoordMsg>), (RefuseCode, String)> {
        let origin = conn.remote_address();
        if self.rate_limited(origin.ip()) {
            return Err((
                RefuseCode::RATE_LIMITED,
                "too many failed attempts; retry later".into(),
            ));
        }
        let fail = |code, reason: String| {
            self.record_failure(origin.ip());
            Err((code, reason))
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return fail(
                RefuseCode::VERSION_MISMATCH,
                format!(
                    "protocol {} not supported (want {PROTOCOL_VERSION})",
                    hello.protocol_version
                ),
            );
        }
        if !valid_replica_id(&hello.replica_id) {
            return fail(
                RefuseCode::BAD_REPLICA_ID,
                "replica id must be 1-64 of [A-Za-z0-9._-]".into(),
            );
        }
        let participant = match self.registry.authenticate(&hello.token) {
            Ok((_, p)) => p,
            Err(e @ AuthError::Malformed(_)) => {
                return fail(RefuseCode::MALFORMED_TOKEN, e.to_string());
            }
            Err(e @ AuthError::Unknown) => return fail(RefuseCode::UNKNOWN_TOKEN, e.to_string()),
            Err(e @ AuthError::Revoked) => return fail(RefuseCode::REVOKED_TOKEN, e.to_string()),
            Err(e @ AuthError::Store(_)) => return Err((RefuseCode::INTERNAL, e.to_string())),
        };
        let (kind, id, name, ha) = match &participant {
            Participant::Node(n) => (Kind::Node, n.id, n.name.clone(), n.ha),
            Participant::Device(d) => (Kind::Device, d.id, d.name.clone(), false),
        };
        let mesh_ip = match &participant {
            Participant::Node(n) => self
                .registry
                .replica_ip(n.id, &hello.replica_id)
                .map_err(|e| (RefuseCode::INTERNAL, e.to_string()))?,
            Participant::Device(d) => d.mesh_ip,
        };
        let epoch0 = if kind == Kind::Node {
            self.registry.epoch(id).unwrap_or(0)
        } else {
            0
        };
        let now = Instant::now();
        if kind == Kind::Node && self.would_promote(id, now) {
            self.epochs
                .reserve(&self.registry, id, epoch0 + 1)
                .map_err(|e| (RefuseCode::INTERNAL, e.to_string()))?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let conn_id = self.next_conn.fetch_add(1, Relaxed);
        let mut st = self.lock();
        // The same replica (or device) again: the old connection is stale; replace it.
        let stale: Vec<ConnId> = st
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.id == id && (kind == Kind::Device || s.replica_id == hello.replica_id)
            })
            .map(|(c, _)| *c)
            .collect();
        for c in stale {
            self.drop_session(
                &mut st,
                c,
                RefuseCode::REPLACED,
                "replaced by a newer connection",
                now,
            );
        }
        if kind == Kind::Node && !ha && st.sessions.values().any(|s| s.id == id) {
            return Err((
                RefuseCode::NOT_HA,
                format!("node {name} is not HA and already has a replica connected"),
            ));
        }
        let session = Session {
            kind,
            id,
            replica_id: hello.replica_id.clone(),
            mesh_ip,
            origin,
            opened_at: SystemTime::now(),
            conn,
            ctl: tx.clone(),
        };
        st.sessions.insert(conn_id, session);
        let (role, epoch, active, actions) = if kind == Kind::Node {
            let cfg = election::Config {
                lease: Duration::from_millis(self.timings.lease_ms.into()),
                overlap: self.handover_overlap,
            };
            let el = st
                .elections
                .entry(id)
                .or_insert_with(|| Election::new(cfg, epoch0));
            let actions = el.handle(
                now,
                Event::Connected {
                    conn: conn_id,
                    lan: hello.lan,
                },
            );
            let role = el.role(conn_id).unwrap_or(Role::Standby);
            (role, el.epoch(), el.active_lan_info(), actions)
        } else {
            (Role::Active, 0, None, Vec::new())
        };
        let welcome = Welcome {
            kind,
            id,
            name: name.clone(),
            replica_id: hello.replica_id.clone(),
            mesh_ip,
            mesh_cidr: self.mesh,
            role,
            epoch,
            timings: self.timings,
            active,
            routes: self.route_table(),
        };
        let _ = tx.send(CoordMsg::Welcome(Box::new(welcome)));
        self.execute(&st, id, actions);
        self.relay_stale.store(true, Relaxed);
        self.metrics.registrations.fetch_add(1, Relaxed);
        if kind == Kind::Node {
            self.events
                .record(id, "registered", &hello.replica_id, epoch, None);
        }
        tracing::info!(conn = conn_id, kind = ?kind, node = %name, replica = %hello.replica_id, %mesh_ip, role = role_name(role), epoch, origin = %origin, "registered");
        Ok((conn_id, rx))
    }

    /// Whether a replica of `node` registering now would be promoted (nobody is active).
    fn would_promote(&self, node: Id, now: Instant) -> bool {
        self.lock()
            .elections
            .get(&node)
            .is_none_or(|e| e.active(now).is_none())
    }

    fn drop_session(
        &self,
        st: &mut State,
        conn: ConnId,
        code: RefuseCode,
        reason: &str,
        now: Instant,
    ) {
        if let Some(s) = st.sessions.remove(&conn) {
            let _ = s.ctl.send(CoordMsg::Refused {
                code,
                reason: reason.into(),
            });
            s.conn.close(1u32.into(), reason.as_bytes());
            if let Some(el) = st.elections.get_mut(&s.id) {
                let actions = el.handle(now, Event::Disconnected { conn });
                self.execute(st, s.id, actions);
            }
        }
    }

    /// Feed an election event for the node `conn` belongs to.
    pub fn event(&self, conn: ConnId, make: impl FnOnce(ConnId) -> Event) {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(node) = st
            .sessions
            .get(&conn)
            .filter(|s| s.kind == Kind::Node)
            .map(|s| s.id)
        else {
            return;
        };
        let event = make(conn);
        let is_disconnect = matches!(event, Event::Disconnected { .. });
        let is_handover = matches!(event, Event::HandoverRequested { .. });
        let replica = st
            .sessions
            .get(&conn)
            .map(|s| s.replica_id.clone())
            .unwrap_or_default();
        if is_disconnect {
            st.sessions.remove(&conn);
        }
        let Some(el) = st.elections.get_mut(&node) else {
            return;
        };
        let actions = el.handle(now, event);
        if is_disconnect || is_handover {
            let what = if is_disconnect {
                "disconnected"
            } else {
                "handover_requested"
            };
            self.events.record(node, what, &replica, el.epoch(), None);
        }
        if is_handover && el.active(now) == Some(conn) {
            tracing::info!(%node, conn, "handover deferred until a healthy standby exists (and any handover in progress ends); the active keeps serving");
        }
        let changed = actions.iter().any(|a| {
            matches!(
                a,
                Action::Promoted { .. }
                    | Action::LeaseExpired { .. }
                    | Action::Send {
                        msg: Out::RoleChange { .. } | Out::HandoverDone { .. },
                        ..
                    }
            )
        });
        self.execute(&st, node, actions);
        if changed {
            self.rebuild(&st, now);
        } else if is_disconnect {
            self.relay_stale.store(true, Relaxed);
        }
    }

    /// A connection ended.
    pub fn disconnected(&self, conn: ConnId) {
        let mut st = self.lock();
        if st
            .sessions
            .get(&conn)
            .is_some_and(|s| s.kind == Kind::Device)
        {
            st.sessions.remove(&conn);
            self.relay_stale.store(true, Relaxed);
            return;
        }
        drop(st);
        self.event(conn, |conn| Event::Disconnected { conn });
    }

    /// Let time act on every election (lease expiry, promotion). The epochs of every
    /// promotion due are persisted together before any of them is announced.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        let mut due = Vec::new();
        let nodes: Vec<Id> = st.elections.keys().copied().collect();
        for node in nodes {
            let Some(el) = st.elections.get_mut(&node) else {
                continue;
            };
            let actions = el.handle(now, Event::Tick);
            if !actions.is_empty() {
                due.push((node, actions));
            }
        }
        if due.is_empty() {
            if self.relay_stale.load(Relaxed) {
                self.rebuild(&st, now);
            }
            return;
        }
        self.epochs.persist(&self.registry, &due);
        for (node, actions) in due {
            self.announce(&st, node, actions);
        }
        self.rebuild(&st, now);
    }

    /// Carries out one node's actions: its new epoch first, then the messages.
    fn execute(&self, st: &State, node: Id, actions: Vec<Action>) {
        let due = [(node, actions)];
        self.epochs.persist(&self.registry, &due);
        let [(node, actions)] = due;
        self.announce(st, node, actions);
    }

    /// Everything but persistence (done by [`epochs::Epochs::persist`] beforehand).
    fn announce(&self, st: &State, node: Id, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::PersistEpoch(_) => {}
                Action::Send { conn, msg } => {
                    let msg = match msg {
                        Out::LeaseGrant {
                            epoch,
                            valid_for,
                            seq,
                        } => CoordMsg::LeaseGrant {
                            epoch,
                            valid_for_ms: valid_for.as_millis() as u32,
                            seq,
                        },
                        Out::RoleChange {
                            role,
                            epoch,
                            active,
                        } => CoordMsg::RoleChange {
                            role,
                            epoch,
                            active,
                        },
                        Out::HandoverDone { epoch } => CoordMsg::HandoverDone { epoch },
                    };
                    if let Some(s) = st.sessions.get(&conn) {
                        let _ = s.ctl.send(msg);
                    }
                }
                Action::Promoted {
                    conn,
                    epoch,
                    after_expiry,
                } => {
                    if let Some(d) = after_expiry {
                        self.metrics.failover(d);
                    }
                    let replica = st
                        .sessions
                        .get(&conn)
                        .map(|s| s.replica_id.as_str())
                        .unwrap_or("?");
                    let after_expiry_ms = after_expiry.map(|d| d.as_millis() as u64);
                    tracing::info!(%node, replica, epoch, after_expiry_ms, "promoted");
                    self.events
                        .record(node, "promoted", replica, epoch, after_expiry_ms);
                }
                Action::LeaseExpired { conn, epoch } => {
                    let replica = st
                        .sessions
                        .get(&conn)
                        .map(|s| s.replica_id.as_str())
                        .unwrap_or("?");
                    tracing::info!(%node, conn, replica, epoch, "lease expired");
                    self.events
                        .record(node, "lease_expired", replica, epoch, None);
                }
            }
        }
    }

    fn rebuild(&self, st: &State, now: Instant) {
        // Traffic for a node's routes goes to its active from the moment of promotion;
        // a draining replica may still send until it is fenced.
        let active: HashMap<Id, ConnId> = st
            .elections
            .iter()
            .filter_map(|(n, e)| e.forwarder(now).map(|c| (*n, c)))
            .collect();
        let participants = st.sessions.iter().map(|(c, s)| {
            let node = (s.kind == Kind::Node).then(|| {
                let may_send = st.elections.get(&s.id).is_some_and(|e| e.may_send(*c, now));
                (s.id, may_send)
            });
            (
                *c,
                Sender {
                    mesh_ip: s.mesh_ip,
                    node,
                },
                s.conn.clone(),
            )
        });
        let routes = self
            .registry
            .all_routes()
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.network, r.node_id));
        let participants: Vec<_> = participants.collect();
        let errors = Errors {
            mesh: self.mesh,
            limiter: self.icmp_limit.clone(),
        };
        let table = Arc::new(Table::build(participants, routes, active, errors));
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
        self.relay_stale.store(false, Relaxed);
        self.relay_version.send_modify(|v| *v += 1);
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the relay table includes `conn` (at most one tick after its
    /// registration), so a participant that has its Welcome can send at once.
    pub async fn relay_ready(&self, conn: ConnId) {
        let mut version = self.relay_version.subscribe();
        // The sender lives as long as the hub, so this only ends by the condition.
        let _ = version.wait_for(|_| self.table().has_conn(conn)).await;
    }

    /// Routes changed: push the table to everybody and rebuild the relay.
    pub fn routes_changed(&self) {
        let table = self.route_table();
        let st = self.lock();
        for s in st.sessions.values() {
            let _ = s.ctl.send(CoordMsg::Routes(table.clone()));
        }
        self.rebuild(&st, Instant::now());
    }

    /// A node or device was deleted: close its connections.
    pub fn participant_deleted(&self, id: Id) {
        let now = Instant::now();
        let mut st = self.lock();
        let conns: Vec<ConnId> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.id == id)
            .map(|(c, _)| *c)
            .collect();
        for c in conns {
            self.drop_session(&mut st, c, RefuseCode::DELETED, "deleted", now);
        }
        st.elections.remove(&id);
        self.events.forget(id);
        drop(st);
        self.routes_changed();
    }

    /// Relay one datagram.
    pub fn forward(&self, from: ConnId, pkt: Bytes) {
        self.table().forward(from, pkt, &self.metrics);
    }
}
