//! The agent's tokio layer: stays connected to every coordinator it knows ([`links`],
//! [`roster`]), feeds what they say to the failover core ([`sessions`]), applies the
//! core's steps to the kernel through [`plumbing`], pumps packets through the primary
//! connection ([`uplink`]), answers `status`, and drains on SIGTERM.

mod backoff;
mod drain;
mod lan;
mod links;
pub mod plumbing;
mod pump;
mod report;
mod roles;
mod roster;
mod sessions;
mod uplink;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use meshgate_proto::{Kind, Member, RefuseCode, Role, Token};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    config::RunArgs,
    failover::{Action, Event, Failover, Forwarding, Mode},
    logship::FLIP_TARGET,
    state_dir,
    status::{self, ConnState, StatusReport},
};
use drain::DrainExit;
use links::{Links, Params};
use plumbing::Plumbing;
use pump::PumpCounters;
use sessions::Conn;
use uplink::{LinkId, Selector, Uplink};

/// Runs the agent until SIGTERM/SIGINT (after a drain) or a fatal error; removes what it
/// added to the kernel on every exit path. A node replica sends what lands in `logs` to
/// its coordinators.
pub async fn run(args: RunArgs, logs: crate::logship::Outbox) -> anyhow::Result<()> {
    let token = args.token()?;
    let mode = match token.kind {
        Kind::Node => Mode::Node,
        Kind::Device => Mode::Device,
    };
    let replica_id = state_dir::replica_id(&args.state_dir)?;
    let mut plumbing = Plumbing::setup(&args, mode, &token).await?;
    let mut agent = Agent::new(&args, token, mode, replica_id, &plumbing);
    // Combined logs are per node: a device's records would have no reader.
    agent.logs = (mode == Mode::Node).then_some(logs);
    let result = agent.supervise(&mut plumbing).await;
    plumbing.cleanup().await;
    crate::policy_task::Enforcer::remove();
    result
}

/// The longest wait between attempts after refusals.
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(300);

/// How often the connections' liveness is sampled and the primary chosen: a quarter of
/// the time without an answer that makes a connection dead, so traffic moves within
/// ~`dead_after` of a coordinator's death.
fn pick_every(heartbeat: Duration) -> Duration {
    (uplink::dead_after(heartbeat) / 4).max(Duration::from_millis(5))
}

struct Agent {
    token: Token,
    mode: Mode,
    replica_id: String,
    drain_timeout: Duration,
    max_coordinators: usize,
    core: Failover,
    report: Arc<Mutex<StatusReport>>,
    counters: Arc<PumpCounters>,
    shutdown: tokio::sync::mpsc::UnboundedReceiver<()>,
    drain_deadline: Option<tokio::time::Instant>,
    drain_exit: DrainExit,
    status_socket: std::path::PathBuf,
    local_prefixes: Vec<Ipv4Net>,
    refused_retry: (Duration, Duration),
    health: crate::health::watch::HealthWatch,
    policy: crate::policy_task::Enforcer,
    /// The members the coordinators announced last.
    members: Option<Vec<Member>>,
    /// The highest epoch seen, for the Hellos of new sessions.
    seen_epoch: Arc<AtomicU64>,
    /// Live sessions, by connection.
    conns: BTreeMap<LinkId, Conn>,
    selector: Selector,
    uplink: Uplink,
    /// Which session's route table is installed, and its version.
    routes_from: Option<(LinkId, u64)>,
    /// The packet pump toward the mesh, once the first session gave the Mesh IP.
    outbound: Option<pump::Pump>,
    gate: Option<pump::Gate>,
    heartbeat: Duration,
    /// The agent's own warnings, errors and flips, waiting to go to the coordinators.
    logs: Option<crate::logship::Outbox>,
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
        let heartbeat = Duration::from_millis(meshgate_proto::lease::DEFAULT_HEARTBEAT_MS.into());
        Self {
            token,
            mode,
            replica_id,
            drain_timeout: Duration::from_millis(args.drain_timeout_ms),
            max_coordinators: args.max_coordinators.into(),
            core: Failover::new(mode),
            report: Arc::new(Mutex::new(report)),
            counters: Arc::default(),
            shutdown: shutdown_signals(),
            drain_deadline: None,
            drain_exit: DrainExit::default(),
            status_socket: state_dir::status_socket(&args.state_dir),
            local_prefixes: Vec::new(),
            health: args.health_watch(),
            refused_retry: (
                Duration::from_millis(args.refused_retry_ms),
                Duration::from_millis(args.refused_retry_ms).max(REFUSED_RETRY_MAX),
            ),
            policy: crate::policy_task::Enforcer::start(args.tun.clone()),
            members: None,
            seen_epoch: Arc::default(),
            conns: BTreeMap::new(),
            selector: Selector::new(uplink::dead_after(heartbeat)),
            uplink: Uplink::default(),
            routes_from: None,
            outbound: None,
            gate: None,
            heartbeat,
            logs: None,
        }
    }

    /// The coordinators to stay connected to now.
    fn targets(&self) -> Vec<roster::Target> {
        roster::targets(
            &self.token.addrs,
            self.members.as_deref(),
            self.max_coordinators,
        )
    }

    async fn supervise(&mut self, plumbing: &mut Plumbing) -> anyhow::Result<()> {
        let _status =
            status::serve(self.status_socket.clone(), report::source(self, plumbing)).await?;
        let initial = self.core.initial_actions();
        plumbing.apply(&initial, 0).await?;
        let mut links = Links::new(Params {
            token: self.token.clone(),
            replica_id: self.replica_id.clone(),
            lan: plumbing.lan_info(),
            seen_epoch: self.seen_epoch.clone(),
            refused_retry: self.refused_retry,
        });
        links.set_targets(&self.targets());
        let mut pick = tokio::time::interval(pick_every(self.heartbeat));
        pick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut filter_report = tokio::time::interval(FILTER_REPORT_EVERY);
        let mut path_check = tokio::time::interval(PATH_MTU_CHECK_EVERY);
        let mut log_batch = tokio::time::interval(LOG_BATCH_EVERY);
        log_batch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .core
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            let drain_poll = (self.core.draining() && DrainExit::bouncing(self.core.forwarding()))
                .then(|| tokio::time::Instant::now() + drain::POLL);
            tokio::select! {
                (id, event) = links.next() => self.on_link(&mut links, plumbing, id, event).await?,
                _ = pick.tick() => self.pick(),
                _ = sleep_until_opt(deadline) => self.feed(plumbing, Event::Tick).await?,
                up = plumbing.link_event() => {
                    self.feed(plumbing, Event::Link { up }).await?;
                    if self.may_serve_again() {
                        info!("the LAN link is back: registering again as a standby");
                        self.reconnect_all(&mut links, plumbing).await?;
                    }
                }
                healthy = self.health.changed() => {
                    self.feed(plumbing, Event::Health { healthy }).await?;
                    if self.may_serve_again() {
                        info!("the health targets answer again: registering again as a standby");
                        self.reconnect_all(&mut links, plumbing).await?;
                    }
                }
                _ = self.shutdown.recv() => {
                    if self.conns.is_empty() {
                        return Ok(());
                    }
                    info!("shutting down: asking for handover first if active");
                    self.drain_deadline = Some(tokio::time::Instant::now() + self.drain_timeout);
                    self.feed(plumbing, Event::Drain).await?;
                }
                _ = sleep_until_opt(self.drain_deadline) => {
                    if DrainExit::bouncing(self.core.forwarding()) {
                        warn!(timeout_ms = self.drain_timeout.as_millis() as u64, "LAN hosts still send here after the handover; leaving anyway");
                    } else {
                        warn!(timeout_ms = self.drain_timeout.as_millis() as u64, "no standby took over in time; leaving anyway");
                    }
                    break;
                }
                _ = sleep_until_opt(drain_poll) => {}
                _ = path_check.tick() => self.follow_path_mtu(plumbing)?,
                _ = log_batch.tick() => self.ship_logs(),
                _ = filter_report.tick() => if let Some(c) = self.policy.report() {
                    for conn in self.conns.values() {
                        conn.control.report_filter_counters(c.clone());
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
                break;
            }
        }
        // What the drain itself logged (the flip to standby) goes before the Goodbye.
        self.ship_logs();
        for conn in self.conns.values() {
            conn.control.goodbye();
        }
        // Give the writers a moment to flush the Goodbyes before the sessions close.
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(links);
        Ok(())
    }

    /// Feeds one event to the core and applies its steps.
    async fn feed(&mut self, plumbing: &mut Plumbing, event: Event) -> anyhow::Result<()> {
        let actions = self.core.handle(Instant::now(), event);
        for action in &actions {
            if let Action::RequestHandover(reason) = action {
                info!(target: FLIP_TARGET, ?reason, "asking the coordinators for handover");
                for conn in self.conns.values() {
                    conn.control.request_handover(*reason);
                }
            }
        }
        let forwarding = self.core.forwarding();
        if forwarding.role() != Role::Active {
            // Leaving the active role starts with XDP: say so before the slower steps.
            lock(&self.report).forwarding = forwarding.role();
        }
        let flip = plumbing.apply(&actions, forwarding.epoch()).await?;
        self.seen_epoch
            .fetch_max(self.core.epoch(), std::sync::atomic::Ordering::Relaxed);
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

    /// Sends the next batch of the agent's own log records on every live session. Every
    /// one, not only the primary: with a coordinator cluster each member keeps its own
    /// copy in memory (nothing about logs goes through etcd), so the API of whichever
    /// member an operator asks shows the node's whole log, and a coordinator's death
    /// loses nothing the others have. A batch is small (at most 32 records, 2 a second),
    /// so sending it up to `--max-coordinators` times costs little. With no session the
    /// records wait in the bounded queue.
    fn ship_logs(&mut self) {
        if self.conns.is_empty() {
            return;
        }
        let Some(batch) = self.logs.as_mut().and_then(|o| o.next_batch()) else {
            return;
        };
        for conn in self.conns.values() {
            conn.control.send_logs(batch.clone());
        }
    }

    /// Fenced because it could not serve (link down, health targets silent; nothing else
    /// fences a replica that is not draining) and now it can: the coordinator never
    /// promotes a fenced replica again, so it must register anew, as a standby.
    fn may_serve_again(&self) -> bool {
        self.core.serviceable() && self.core.role() == Role::Fenced && !self.core.draining()
    }

    /// Logs a refusal and shows it in `status`.
    fn refused(&mut self, code: RefuseCode, reason: &str, delay: Duration) {
        tracing::error!(
            code = code.0,
            reason,
            retry_in_s = delay.as_secs(),
            "the coordinator refused this agent (a new token may be needed: see `meshgate-agent status`); retrying later"
        );
        if self.conns.is_empty() {
            self.set_connection(
                ConnState::Refused,
                Some(format!(
                    "the coordinator refused this agent: {reason} (code {}); retrying in {} s",
                    code.0,
                    delay.as_secs()
                )),
            );
        }
    }

    fn set_connection(&self, state: ConnState, error: Option<String>) {
        let mut r = lock(&self.report);
        r.connection.state = state;
        if error.is_some() || state == ConnState::Connected {
            r.connection.last_error = error;
        }
    }
}

/// How often the tunnel MTU is compared with the paths' datagram size, which path MTU
/// discovery raises within the first few hundred milliseconds of a connection (and black
/// hole detection may lower).
const PATH_MTU_CHECK_EVERY: Duration = Duration::from_millis(250);

/// How often a batch of the agent's own log records goes to the coordinators.
const LOG_BATCH_EVERY: Duration = Duration::from_millis(meshgate_proto::logs::BATCH_EVERY_MS);

/// How often the policy filter's counters go to the coordinator.
const FILTER_REPORT_EVERY: Duration = Duration::from_secs(3);

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
