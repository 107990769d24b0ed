//! The agent's tokio layer: connects to the coordinator (and reconnects), feeds what it
//! hears to the failover core, applies the core's steps to the kernel through
//! [`plumbing`], pumps packets, answers `status`, and drains on SIGTERM.

mod backoff;
mod drain;
mod lan;
pub mod plumbing;
mod pump;
mod report;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use meshgate_proto::{
    CoordMsg, Kind, RefuseCode, Role, Token,
    client::{ClientError, ConnectOptions, Session, Status},
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    config::RunArgs,
    failover::{Action, Event, Failover, Forwarding, Mode},
    state_dir,
    status::{self, ConnState, StatusReport},
};
use backoff::Backoff;
use drain::DrainExit;
use plumbing::Plumbing;
use pump::PumpCounters;

/// Runs the agent until SIGTERM/SIGINT (after a drain) or a fatal error; removes what it
/// added to the kernel on every exit path.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let token = args.token()?;
    let mode = match token.kind {
        Kind::Node => Mode::Node,
        Kind::Device => Mode::Device,
    };
    let replica_id = state_dir::replica_id(&args.state_dir)?;
    let mut plumbing = Plumbing::setup(&args, mode, &token).await?;
    let result = Agent::new(&args, token, mode, replica_id, &plumbing)
        .supervise(&mut plumbing)
        .await;
    plumbing.cleanup().await;
    crate::policy_task::Enforcer::remove();
    result
}

/// The longest wait between attempts after refusals.
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(300);

/// How a session ended.
enum Outcome {
    /// Shut down on purpose (drained, or a signal while not active).
    Shutdown,
    /// The connection was lost; reconnect.
    Lost(String),
    /// The coordinator refused this agent; retry after the refusal backoff.
    Refused(RefuseCode, String),
}

struct Agent {
    token: Token,
    mode: Mode,
    replica_id: String,
    drain_timeout: Duration,
    core: Failover,
    report: Arc<Mutex<StatusReport>>,
    counters: Arc<PumpCounters>,
    conn: Arc<Mutex<Option<quinn::Connection>>>,
    shutdown: tokio::sync::mpsc::UnboundedReceiver<()>,
    drain_deadline: Option<tokio::time::Instant>,
    drain_exit: DrainExit,
    status_socket: std::path::PathBuf,
    local_prefixes: Vec<Ipv4Net>,
    refusals: Backoff,
    health: crate::health::watch::HealthWatch,
    policy: crate::policy_task::Enforcer,
}

impl Agent {
    fn new(
        args: &RunArgs,
        token: Token,
        mode: Mode,
        replica_id: String,
        plumbing: &Plumbing,
    ) -> Self {
        let report = StatusReport {
            lan_iface: args.lan_iface.clone(),
            gateway_ip: args.gateway_ip.map(|v| v.to_string()),
            xdp_note: plumbing.xdp_note(),
            connection: status::Connection {
                coordinator: token.addrs.first().cloned(),
                ..Default::default()
            },
            ..StatusReport::starting(
                token.kind,
                replica_id.clone(),
                plumbing.xdp_mode(),
                args.tun.clone(),
            )
        };
        Self {
            token,
            mode,
            replica_id,
            drain_timeout: Duration::from_millis(args.drain_timeout_ms),
            core: Failover::new(mode),
            report: Arc::new(Mutex::new(report)),
            counters: Arc::default(),
            conn: Arc::default(),
            shutdown: shutdown_signals(),
            drain_deadline: None,
            drain_exit: DrainExit::default(),
            status_socket: state_dir::status_socket(&args.state_dir),
            local_prefixes: Vec::new(),
            health: args.health_watch(),
            refusals: Backoff::new(
                Duration::from_millis(args.refused_retry_ms),
                Duration::from_millis(args.refused_retry_ms).max(REFUSED_RETRY_MAX),
            ),
            policy: crate::policy_task::Enforcer::start(args.tun.clone()),
        }
    }

    async fn supervise(&mut self, plumbing: &mut Plumbing) -> anyhow::Result<()> {
        let _status =
            status::serve(self.status_socket.clone(), report::source(self, plumbing)).await?;
        let initial = self.core.initial_actions();
        plumbing.apply(&initial, 0).await?;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0u64;
        // Set by a refusal: the next attempt waits on the refusal backoff instead.
        let mut refused: Option<Duration> = None;
        loop {
            attempt += 1;
            self.set_connection(ConnState::Connecting, None);
            let mut opts = ConnectOptions::new(self.replica_id.clone());
            opts.lan = plumbing.lan_info();
            opts.seen_epoch = self.core.forwarding().epoch();
            let connected = tokio::select! {
                r = Session::connect(&self.token, opts) => r,
                _ = self.shutdown.recv() => return Ok(()),
            };
            match connected {
                Ok(session) => {
                    backoff.reset();
                    self.refusals.reset();
                    attempt = 0;
                    match self.drive(session, plumbing).await? {
                        Outcome::Shutdown => return Ok(()),
                        Outcome::Lost(why) => {
                            warn!(reason = %why, "lost the coordinator; reconnecting");
                            self.set_connection(ConnState::Disconnected, Some(why));
                            self.feed(plumbing, None, Event::Disconnected).await?;
                        }
                        Outcome::Refused(code, reason) => {
                            self.feed(plumbing, None, Event::Disconnected).await?;
                            refused = Some(self.refused(code, &reason));
                        }
                    }
                }
                Err(ClientError::Refused { code, reason }) if is_refusal(code) => {
                    refused = Some(self.refused(code, &reason));
                }
                Err(e) => {
                    warn!(attempt, error = %e, "cannot reach the coordinator; retrying");
                    self.set_connection(ConnState::Disconnected, Some(e.to_string()));
                }
            }
            // Wait before the next attempt, fencing on time if a lease runs out meanwhile.
            let delay = match refused.take() {
                Some(delay) => delay,
                None => backoff.next_delay(),
            };
            let wake = tokio::time::Instant::now() + delay;
            loop {
                let deadline = self
                    .core
                    .next_deadline()
                    .map(tokio::time::Instant::from_std);
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    _ = sleep_until_opt(deadline) => { self.feed(plumbing, None, Event::Tick).await?; }
                    _ = self.shutdown.recv() => return Ok(()),
                }
            }
        }
    }

    /// Runs one session until it ends.
    async fn drive(
        &mut self,
        mut session: Session,
        plumbing: &mut Plumbing,
    ) -> anyhow::Result<Outcome> {
        let welcome = session.welcome().clone();
        info!(
            name = %welcome.name, mesh_ip = %welcome.mesh_ip, role = ?welcome.role, epoch = welcome.epoch,
            "registered with the coordinator"
        );
        let mut mtu = plumbing
            .configure_tun(
                welcome.mesh_ip,
                welcome.mesh_cidr,
                session.max_packet_size(),
            )
            .await?;
        {
            let mut r = lock(&self.report);
            r.name = Some(welcome.name.clone());
            r.mesh_ip = Some(welcome.mesh_ip.to_string());
            r.tun_mtu = mtu;
            r.connection.sessions += 1;
        }
        *lock(&self.conn) = Some(session.connection().clone());
        self.set_connection(ConnState::Connected, None);
        let gate = (self.mode == Mode::Node).then(|| pump::Gate {
            lease: Arc::new(plumbing.lease_source()),
            own: welcome.mesh_ip,
        });
        let _pump = pump::start(
            plumbing.tun(),
            session.connection().clone(),
            self.counters.clone(),
            gate,
        );
        let mut status_rx = session.subscribe();
        let first = status_rx.borrow_and_update().clone();
        self.feed_status(plumbing, &session, &first, welcome.id)
            .await?;
        let mut filter_report = tokio::time::interval(FILTER_REPORT_EVERY);
        let mut path_check = tokio::time::interval(PATH_MTU_CHECK_EVERY);
        let outcome = loop {
            let deadline = self
                .core
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            let drain_poll = (self.core.draining() && DrainExit::bouncing(self.core.forwarding()))
                .then(|| tokio::time::Instant::now() + drain::POLL);
            tokio::select! {
                changed = status_rx.changed() => {
                    if changed.is_err() {
                        break Outcome::Lost("session ended".into());
                    }
                    let s = status_rx.borrow_and_update().clone();
                    if let Some(why) = &s.closed {
                        break Outcome::Lost(why.clone());
                    }
                    self.feed_status(plumbing, &session, &s, welcome.id).await?;
                }
                event = session.next_event() => match event {
                    None => break Outcome::Lost(session.status().closed.unwrap_or_else(|| "session ended".into())),
                    Some(CoordMsg::Refused { code, reason }) if is_refusal(code) => {
                        break Outcome::Refused(code, reason);
                    }
                    Some(CoordMsg::HandoverDone { epoch }) => info!(epoch, "handover done"),
                    Some(CoordMsg::Filter(f)) => self.policy.receive(*f),
                    Some(_) => {}
                },
                _ = sleep_until_opt(deadline) => self.feed(plumbing, Some(&session), Event::Tick).await?,
                up = plumbing.link_event() => {
                    self.feed(plumbing, Some(&session), Event::Link { up }).await?;
                    if self.may_serve_again() {
                        break Outcome::Lost("the LAN link is back: registering again as a standby".into());
                    }
                }
                healthy = self.health.changed() => {
                    self.feed(plumbing, Some(&session), Event::Health { healthy }).await?;
                    if self.may_serve_again() {
                        break Outcome::Lost("the health targets answer again: registering again as a standby".into());
                    }
                }
                _ = self.shutdown.recv() => {
                    info!("shutting down: asking for handover first if active");
                    self.drain_deadline = Some(tokio::time::Instant::now() + self.drain_timeout);
                    self.feed(plumbing, Some(&session), Event::Drain).await?;
                }
                _ = sleep_until_opt(self.drain_deadline) => {
                    if DrainExit::bouncing(self.core.forwarding()) {
                        warn!(timeout_ms = self.drain_timeout.as_millis() as u64, "LAN hosts still send here after the handover; leaving anyway");
                    } else {
                        warn!(timeout_ms = self.drain_timeout.as_millis() as u64, "no standby took over in time; leaving anyway");
                    }
                    break Outcome::Shutdown;
                }
                _ = sleep_until_opt(drain_poll) => {}
                _ = filter_report.tick() => if let Some(c) = self.policy.report() {
                    session.report_filter_counters(c);
                },
                _ = path_check.tick() => {
                    let now = plumbing::tunnel_mtu(session.max_packet_size());
                    if now != mtu {
                        info!(from = mtu, to = now, "the path's datagram size changed: new tunnel MTU");
                        plumbing.set_tunnel_mtu(now)?;
                        mtu = now;
                        lock(&self.report).tun_mtu = mtu;
                    }
                },
            }
            if self.core.draining()
                && self.drain_exit.may_leave(
                    self.core.forwarding(),
                    plumbing.hairpinned(),
                    Instant::now(),
                )
            {
                break Outcome::Shutdown;
            }
        };
        *lock(&self.conn) = None;
        if matches!(outcome, Outcome::Shutdown) {
            session.goodbye().await;
        }
        Ok(outcome)
    }

    /// Feeds a session status (role, epoch, lease, active peer, routes) to the core.
    async fn feed_status(
        &mut self,
        plumbing: &mut Plumbing,
        session: &Session,
        s: &Status,
        own_id: meshgate_proto::Id,
    ) -> anyhow::Result<()> {
        let (own, routes): (Vec<_>, Vec<_>) = s
            .routes
            .entries
            .iter()
            .partition(|e| e.node == Some(own_id));
        let own: Vec<Ipv4Net> = own.iter().map(|e| e.network).collect();
        if own != self.local_prefixes {
            plumbing.set_local_prefixes(&own)?;
            self.local_prefixes = own;
        }
        let routes = routes.iter().map(|e| e.network).collect();
        self.feed(plumbing, Some(session), Event::Routes(routes))
            .await?;
        // A lease is in place before XDP may turn active; one ends only after the steps
        // away from active are applied, so the pump's gate and `status` never see an
        // active data plane without a lease.
        let lease = s.lease_deadline.filter(|_| s.role == Role::Active);
        if lease.is_some() {
            plumbing.set_lease_deadline(lease);
        }
        let event = Event::Status {
            role: s.role,
            epoch: s.epoch,
            active: s.active,
            lease_deadline: s.lease_deadline,
        };
        self.feed(plumbing, Some(session), event).await?;
        if lease.is_none() {
            plumbing.set_lease_deadline(None);
        }
        Ok(())
    }

    /// Feeds one event to the core and applies its steps.
    async fn feed(
        &mut self,
        plumbing: &mut Plumbing,
        session: Option<&Session>,
        event: Event,
    ) -> anyhow::Result<()> {
        let actions = self.core.handle(Instant::now(), event);
        for action in &actions {
            if let Action::RequestHandover(reason) = action {
                info!(?reason, "asking the coordinator for handover");
                if let Some(session) = session {
                    session.request_handover(*reason);
                }
            }
        }
        let forwarding = self.core.forwarding();
        if forwarding.role() != Role::Active {
            // Leaving the active role starts with XDP: say so before the slower steps.
            lock(&self.report).forwarding = forwarding.role();
        }
        let flip = plumbing.apply(&actions, forwarding.epoch()).await?;
        let mut r = lock(&self.report);
        r.role = Some(self.core.role());
        r.forwarding = forwarding.role();
        r.epoch = forwarding.epoch();
        r.active_peer = match forwarding {
            Forwarding::Standby { active, .. } => active.map(|a| a.ip.to_string()),
            _ => None,
        };
        r.routes = plumbing.routes().iter().map(ToString::to_string).collect();
        r.holds_vip = plumbing.holds_vip();
        if flip.is_some() {
            r.last_flip = flip;
        }
        Ok(())
    }

    /// Fenced because it could not serve (link down, health targets silent; nothing else
    /// fences a replica that is not draining) and now it can: the coordinator never
    /// promotes a fenced replica again, so it must register anew, as a standby.
    fn may_serve_again(&self) -> bool {
        self.core.serviceable() && self.core.role() == Role::Fenced && !self.core.draining()
    }

    /// Logs a refusal, shows it in `status` and returns how long to wait before the next
    /// attempt.
    fn refused(&mut self, code: RefuseCode, reason: &str) -> Duration {
        let delay = self.refusals.next_delay();
        tracing::error!(
            code = code.0,
            reason,
            retry_in_s = delay.as_secs(),
            "the coordinator refused this agent (a new token may be needed: see `meshgate-agent status`); retrying later"
        );
        self.set_connection(
            ConnState::Refused,
            Some(format!(
                "the coordinator refused this agent: {reason} (code {}); retrying in {} s",
                code.0,
                delay.as_secs()
            )),
        );
        delay
    }

    fn set_connection(&self, state: ConnState, error: Option<String>) {
        let mut r = lock(&self.report);
        r.connection.state = state;
        if error.is_some() || state == ConnState::Connected {
            r.connection.last_error = error;
        }
    }
}

/// How often the tunnel MTU is compared with the path's datagram size, which path MTU
/// discovery raises within the first few hundred milliseconds of a connection (and black
/// hole detection may lower).
const PATH_MTU_CHECK_EVERY: Duration = Duration::from_millis(250);

/// How often the policy filter's counters go to the coordinator.
const FILTER_REPORT_EVERY: Duration = Duration::from_secs(3);

/// Refusals about the token or the agent itself, which a coordinator only reverses when
/// its operator fixes something (a restored store, a recreated node, an upgrade). The
/// agent retries them slowly (`--refused-retry-ms`) rather than exiting: an exit under
/// systemd ends, after a few restarts, with nobody retrying at all.
fn is_refusal(code: RefuseCode) -> bool {
    [
        RefuseCode::MALFORMED_TOKEN,
        RefuseCode::UNKNOWN_TOKEN,
        RefuseCode::REVOKED_TOKEN,
        RefuseCode::VERSION_MISMATCH,
        RefuseCode::BAD_REPLICA_ID,
        RefuseCode::DELETED,
    ]
    .contains(&code)
}

/// SIGTERM and SIGINT, as a channel: each signal is one message.
fn shutdown_signals() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let tx = tx.clone();
        match signal(kind) {
            Ok(mut sig) => {
                tokio::spawn(async move {
                    while sig.recv().await.is_some() {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => warn!(error = %e, "cannot listen for a shutdown signal"),
        }
    }
    rx
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The report is plain data: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
