//! The reusable protocol client: connect with certificate pinning, register, keep the
//! lease alive, and move packets. The agent is built on it; so is the coordinator's
//! integration test.
//!
//! ```no_run
//! # async fn f(token_str: &str) -> Result<(), meshgate_proto::client::ClientError> {
//! use meshgate_proto::client::{ConnectOptions, Session};
//! let token = meshgate_proto::Token::decode(token_str)?;
//! let mut session = Session::connect(&token, ConnectOptions::new("replica-1")).await?;
//! println!("mesh ip {}", session.welcome().mesh_ip);
//! while let Some(msg) = session.next_event().await {
//!     // RoleChange / HandoverDone / Refused; lease and routes via session.status()
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::lease::LeaseTracker;
use crate::messages::*;
use crate::pin::PinnedCertVerifier;
use crate::routes::Assembler;
use crate::stream::{StreamError, read_frame, write_frame};
use crate::token::{Token, TokenError};
use tasks::{heartbeats, reader, writer};

mod tasks;

/// TLS server name the client asks for; irrelevant to verification (the pin decides),
/// but the coordinator's certificate carries it.
pub const SERVER_NAME: &str = "meshgate";

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The token string is not a token.
    #[error("invalid token: {0}")]
    Token(#[from] TokenError),
    /// None of the token's addresses resolved or answered.
    #[error("could not reach the coordinator: {0}")]
    Unreachable(String),
    /// The coordinator refused the registration.
    #[error("refused by coordinator (code {}): {reason}", code.0)]
    Refused {
        /// Machine-readable code.
        code: RefuseCode,
        /// Human-readable reason.
        reason: String,
    },
    /// The control stream broke or carried garbage.
    #[error("control stream: {0}")]
    Stream(#[from] StreamError),
    /// The coordinator sent something out of order.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The connection is gone.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A datagram could not be sent (too large for the path, or connection closed).
    #[error("datagram not sent: {0}")]
    Datagram(#[from] quinn::SendDatagramError),
    /// Local I/O or TLS setup failed.
    #[error("setup failed: {0}")]
    Setup(String),
}

/// What to register with.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Persistent replica id (see [`crate::id::new_replica_id`]).
    pub replica_id: String,
    /// LAN identity of a node replica.
    pub lan: Option<LanInfo>,
    /// Free-form build string.
    pub agent_version: String,
    /// Give up on an address after this long.
    pub connect_timeout: Duration,
    /// Dial from this endpoint instead of a new one per session, so many sessions can
    /// share one UDP socket (simulations and benchmarks of many replicas in one process).
    pub endpoint: Option<quinn::Endpoint>,
    /// The highest node epoch this agent has seen (sent in the Hello).
    pub seen_epoch: u64,
}

impl ConnectOptions {
    /// Options with defaults for everything but the replica id.
    pub fn new(replica_id: impl Into<String>) -> Self {
        Self {
            replica_id: replica_id.into(),
            lan: None,
            agent_version: concat!("meshgate/", env!("CARGO_PKG_VERSION")).into(),
            connect_timeout: Duration::from_secs(5),
            endpoint: None,
            seen_epoch: 0,
        }
    }
}

/// The session's view of its role and lease, updated by the background tasks.
#[derive(Debug, Clone)]
pub struct Status {
    /// Current role.
    pub role: Role,
    /// Node epoch as last told by the coordinator.
    pub epoch: u64,
    /// The active replica's LAN identity, for hairpinning.
    pub active: Option<LanInfo>,
    /// Current route table.
    pub routes: RouteTable,
    /// When forwarding must stop; `None` if this replica holds no lease.
    pub lease_deadline: Option<Instant>,
    /// Set once the session ended, with why.
    pub closed: Option<String>,
}

pub(crate) struct Shared {
    pub(crate) status: watch::Sender<Status>,
    pub(crate) lease: LeaseTracker,
}

/// A registered connection to the coordinator. Dropping it closes the connection.
pub struct Session {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    welcome: Welcome,
    shared: Arc<Mutex<Shared>>,
    status_rx: watch::Receiver<Status>,
    events: mpsc::UnboundedReceiver<CoordMsg>,
    ctl: mpsc::UnboundedSender<AgentMsg>,
    tasks: Vec<JoinHandle<()>>,
}

pub(crate) fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic in one of our tasks must not take the agent's fencing down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    /// Dial the token's addresses in order, pin the certificate, and register.
    pub async fn connect(token: &Token, opts: ConnectOptions) -> Result<Self, ClientError> {
        let mut last_err = String::from("token has no address");
        for addr in &token.addrs {
            match tokio::time::timeout(opts.connect_timeout, Self::connect_one(token, addr, &opts))
                .await
            {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e @ (ClientError::Refused { .. } | ClientError::Protocol(_)))) => {
                    return Err(e);
                }
                Ok(Err(e)) => last_err = format!("{addr}: {e}"),
                Err(_) => last_err = format!("{addr}: timed out"),
            }
        }
        Err(ClientError::Unreachable(last_err))
    }

    async fn connect_one(
        token: &Token,
        addr: &str,
        opts: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        let remote: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| ClientError::Unreachable(format!("{addr} resolves to nothing")))?;
        let endpoint = match &opts.endpoint {
            Some(shared) => shared.clone(),
            None => {
                let local: SocketAddr = if remote.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                crate::socket::client_endpoint(local)
                    .map_err(|e| ClientError::Setup(e.to_string()))?
            }
        };
        let conn = endpoint
            .connect_with(client_config(token.fingerprint)?, remote, SERVER_NAME)
            .map_err(|e| ClientError::Unreachable(e.to_string()))?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            token: token.encode(),
            replica_id: opts.replica_id.clone(),
            lan: opts.lan,
            agent_version: opts.agent_version.clone(),
            seen_epoch: opts.seen_epoch,
        };
        let hello_sent = Instant::now();
        write_frame(&mut send, &AgentMsg::Hello(hello)).await?;
        let welcome = match read_frame::<CoordMsg>(&mut recv).await? {
            Some(CoordMsg::Welcome(w)) => *w,
            Some(CoordMsg::Refused { code, reason }) => {
                return Err(ClientError::Refused { code, reason });
            }
            Some(other) => {
                return Err(ClientError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )));
            }
            None => return Err(ClientError::Protocol("stream closed before Welcome".into())),
        };
        let t = welcome.timings;
        // A zero heartbeat would panic the heartbeat timer, and a lease shorter than two
        // heartbeats could never be renewed: refuse the session instead.
        t.validate().map_err(|e| {
            ClientError::Protocol(format!("the coordinator sent unusable timings: {e}"))
        })?;
        // The route table follows the Welcome in parts; the session starts with all of it.
        let mut assembler = Assembler::default();
        let mut early = Vec::new();
        let routes = loop {
            match read_frame::<CoordMsg>(&mut recv).await? {
                Some(CoordMsg::Routes(part)) => {
                    if let Some(t) = assembler.push(part) {
                        break t;
                    }
                }
                Some(other) => early.push(other),
                None => return Err(ClientError::Protocol("stream closed before routes".into())),
            }
        };
        let mut lease = LeaseTracker::new(Duration::from_millis(t.guard_ms.into()));
        if welcome.role == Role::Active {
            lease.set_epoch(Some(welcome.epoch));
            lease.grant_from(
                welcome.epoch,
                hello_sent,
                Duration::from_millis(t.lease_ms.into()),
            );
        }
        let (status, status_rx) = watch::channel(Status {
            role: welcome.role,
            epoch: welcome.epoch,
            active: welcome.active,
            routes,
            lease_deadline: lease.deadline(),
            closed: None,
        });
        let shared = Arc::new(Mutex::new(Shared { status, lease }));
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (ev_tx, events) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(writer(send, ctl_rx)),
            tokio::spawn(reader(recv, early, assembler, shared.clone(), ev_tx)),
            tokio::spawn(heartbeats(
                Duration::from_millis(t.heartbeat_ms.into()),
                shared.clone(),
                ctl.clone(),
            )),
        ];
        Ok(Self {
            conn,
            _endpoint: endpoint,
            welcome,
            shared,
            status_rx,
            events,
            ctl,
            tasks,
        })
    }

    /// What the coordinator said at registration.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Current role, epoch, routes and lease.
    pub fn status(&self) -> Status {
        self.status_rx.borrow().clone()
    }

    /// A receiver that wakes on every status change (role, epoch, routes, lease, close).
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status_rx.clone()
    }

    /// Whether this replica may forward right now: it is active and its lease (agent
    /// view, see [`crate::lease`]) has not run out.
    pub fn may_forward(&self) -> bool {
        let s = lock(&self.shared);
        s.status.borrow().role == Role::Active && s.lease.is_valid(Instant::now())
    }

    /// Next control message other than lease grants (which only update [`Self::status`]).
    /// `None` once the session has ended; see `status().closed` for why.
    pub async fn next_event(&mut self) -> Option<CoordMsg> {
        self.events.recv().await
    }

    /// Send one IP packet as a QUIC datagram.
    pub fn send_packet(&self, packet: &[u8]) -> Result<(), ClientError> {
        self.conn
            .send_datagram(bytes::Bytes::copy_from_slice(packet))?;
        Ok(())
    }

    /// Receive the next IP packet relayed to this participant.
    pub async fn recv_packet(&self) -> Result<bytes::Bytes, ClientError> {
        Ok(self.conn.read_datagram().await?)
    }

    /// Largest packet the current path carries in one datagram.
    pub fn max_packet_size(&self) -> Option<usize> {
        self.conn.max_datagram_size()
    }

    /// Ask the coordinator to move the active role away (drain or LAN link down).
    /// A [`CoordMsg::HandoverDone`] event follows once another replica is active.
    pub fn request_handover(&self, reason: HandoverReason) {
        self.control().request_handover(reason);
    }

    /// Report the network-policy filter's counters.
    pub fn report_filter_counters(&self, counters: FilterCounters) {
        self.control().report_filter_counters(counters);
    }

    /// Say goodbye and close the connection.
    pub async fn goodbye(self) {
        self.control().goodbye();
        // Give the writer a moment to flush the Goodbye before closing.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.conn.close(0u32.into(), b"goodbye");
    }

    /// The underlying QUIC connection, for callers that need more.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// A handle that sends this session's requests from elsewhere (another task), for
    /// as long as the session lives.
    pub fn control(&self) -> Control {
        Control {
            ctl: self.ctl.clone(),
        }
    }
}

/// Sends a [`Session`]'s requests without holding the session; requests made after the
/// session ended go nowhere.
#[derive(Debug, Clone)]
pub struct Control {
    ctl: mpsc::UnboundedSender<AgentMsg>,
}

impl Control {
    /// See [`Session::request_handover`].
    pub fn request_handover(&self, reason: HandoverReason) {
        let _ = self.ctl.send(AgentMsg::RequestHandover { reason });
    }

    /// See [`Session::report_filter_counters`].
    pub fn report_filter_counters(&self, counters: FilterCounters) {
        let _ = self.ctl.send(AgentMsg::FilterCounters(counters));
    }

    /// Sends a batch of the agent's own log records (see [`crate::logs`]).
    pub fn send_logs(&self, batch: crate::logs::LogBatch) {
        let _ = self.ctl.send(AgentMsg::Logs(batch));
    }

    /// Say goodbye: the agent is leaving on purpose (the session closes when dropped).
    pub fn goodbye(&self) {
        let _ = self.ctl.send(AgentMsg::Goodbye);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.conn.close(0u32.into(), b"dropped");
    }
}

/// A quinn client config that pins `fingerprint`, speaks ALPN `meshgate/1` over TLS 1.3
/// only, with 0-RTT off (replayable early data has no place in registration).
pub fn client_config(fingerprint: [u8; 32]) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier::new(fingerprint, provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![crate::ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    crate::socket::tunnel_transport(&mut transport);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}
