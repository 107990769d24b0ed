//! One task per coordinator in the roster ([`super::roster`]): it connects, registers,
//! passes on what the session hears, and reconnects with its own backoff when the
//! session ends — so a dead coordinator costs nothing but its own retries. The runtime
//! reads every task's events from one channel.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use meshgate_proto::{
    CoordMsg, LanInfo, RefuseCode, Token, Welcome,
    client::{ClientError, ConnectOptions, Control, Session, Status},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use super::{backoff::Backoff, roster::Target, uplink::LinkId};

/// What a connection task reports.
pub enum LinkEvent {
    /// Registered: a new session.
    Up(Box<Up>),
    /// The session's view changed (role, epoch, lease, routes).
    Status(Box<Status>),
    /// A control message other than grants and routes.
    Msg(CoordMsg),
    /// An attempt failed or the session ended; the task retries after its backoff.
    Down(String),
    /// The coordinator refused this agent; the task retries after the refusal backoff,
    /// this long.
    Refused(RefuseCode, String, Duration),
}

/// A new session's handles.
pub struct Up {
    /// What the coordinator said at registration.
    pub welcome: Welcome,
    /// The session's first status.
    pub status: Status,
    /// Its QUIC connection, for datagrams.
    pub conn: quinn::Connection,
    /// Its request channel.
    pub control: Control,
    /// Which address answered.
    pub addr: String,
}

/// What every connection task needs to register.
pub struct Params {
    /// The enrolment token (its addresses are replaced per target).
    pub token: Token,
    /// This agent's replica id.
    pub replica_id: String,
    /// A node replica's LAN identity.
    pub lan: Option<LanInfo>,
    /// The highest epoch seen, sent in every Hello.
    pub seen_epoch: Arc<AtomicU64>,
    /// First wait after a refusal, and the longest.
    pub refused_retry: (Duration, Duration),
}

struct Running {
    id: LinkId,
    task: JoinHandle<()>,
}

/// The connection tasks. Dropping this stops them (and closes their sessions).
pub struct Links {
    params: Arc<Params>,
    tx: mpsc::UnboundedSender<(LinkId, LinkEvent)>,
    rx: mpsc::UnboundedReceiver<(LinkId, LinkEvent)>,
    running: BTreeMap<String, Running>,
    next_id: LinkId,
}

impl Links {
    /// No connections yet: see [`Links::set_targets`].
    pub fn new(params: Params) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            params: Arc::new(params),
            tx,
            rx,
            running: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// Connects to every target not connected yet and stops the connections to
    /// coordinators no longer in the roster. Returns the ids of stopped connections.
    pub fn set_targets(&mut self, targets: &[Target]) -> Vec<LinkId> {
        let keep: Vec<&str> = targets.iter().map(|t| t.key.as_str()).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|k| !keep.contains(&k.as_str()))
            .cloned()
            .collect();
        let mut stopped = Vec::new();
        for key in gone {
            if let Some(r) = self.running.remove(&key) {
                info!(coordinator = %key, "no longer in the roster: disconnecting");
                r.task.abort();
                stopped.push(r.id);
            }
        }
        for t in targets {
            if !self.running.contains_key(&t.key) {
                let id = self.next_id;
                self.next_id += 1;
                let task = tokio::spawn(run(
                    id,
                    t.addrs.clone(),
                    self.params.clone(),
                    self.tx.clone(),
                ));
                self.running.insert(t.key.clone(), Running { id, task });
            }
        }
        stopped
    }

    /// The roster key of a running connection.
    pub fn key_of(&self, id: LinkId) -> Option<&str> {
        self.running
            .iter()
            .find(|(_, r)| r.id == id)
            .map(|(k, _)| k.as_str())
    }

    /// Stops every connection and starts them all again (new sessions, new ids).
    /// Returns the ids of the stopped ones.
    pub fn restart_all(&mut self, targets: &[Target]) -> Vec<LinkId> {
        let stopped = self.stop_all();
        self.set_targets(targets);
        stopped
    }

    /// Stops every connection; returns their ids.
    pub fn stop_all(&mut self) -> Vec<LinkId> {
        std::mem::take(&mut self.running)
            .into_values()
            .map(|r| {
                r.task.abort();
                r.id
            })
            .collect()
    }

    /// The next event of any connection that is still running. Events of a stopped
    /// connection that were already queued are skipped.
    pub async fn next(&mut self) -> (LinkId, LinkEvent) {
        loop {
            // The sender lives in `self`, so the channel never closes.
            let Some((id, ev)) = self.rx.recv().await else {
                return std::future::pending().await;
            };
            if self.running.values().any(|r| r.id == id) {
                return (id, ev);
            }
        }
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Connects to `addrs` (in order) until stopped, one session at a time.
async fn run(
    id: LinkId,
    addrs: Vec<String>,
    params: Arc<Params>,
    tx: mpsc::UnboundedSender<(LinkId, LinkEvent)>,
) {
    let mut token = params.token.clone();
    token.addrs = addrs.clone();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let (first, most) = params.refused_retry;
    let mut refusals = Backoff::new(first, most);
    let send = |ev: LinkEvent| tx.send((id, ev)).is_ok();
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let mut opts = ConnectOptions::new(params.replica_id.clone());
        opts.lan = params.lan;
        opts.seen_epoch = params.seen_epoch.load(Ordering::Relaxed);
        let delay = match Session::connect(&token, opts).await {
            Ok(session) => {
                backoff.reset();
                refusals.reset();
                attempt = 0;
                match serve(session, &send).await {
                    Ended::Stopped => return,
                    Ended::Lost(why) => {
                        warn!(coordinator = %addrs[0], reason = %why, "lost the coordinator; reconnecting");
                        if !send(LinkEvent::Down(why)) {
                            return;
                        }
                        backoff.next_delay()
                    }
                    Ended::Refused(code, reason) => {
                        let delay = refusals.next_delay();
                        if !send(LinkEvent::Refused(code, reason, delay)) {
                            return;
                        }
                        delay
                    }
                }
            }
            Err(ClientError::Refused { code, reason }) if is_refusal(code) => {
                let delay = refusals.next_delay();
                if !send(LinkEvent::Refused(code, reason, delay)) {
                    return;
                }
                delay
            }
            Err(e) => {
                warn!(coordinator = %addrs[0], attempt, error = %e, "cannot reach the coordinator; retrying");
                if !send(LinkEvent::Down(e.to_string())) {
                    return;
                }
                backoff.next_delay()
            }
        };
        tokio::time::sleep(delay).await;
    }
}

enum Ended {
    Stopped,
    Lost(String),
    Refused(RefuseCode, String),
}

/// Passes on what one session hears until it ends.
async fn serve(mut session: Session, send: &impl Fn(LinkEvent) -> bool) -> Ended {
    let mut status_rx = session.subscribe();
    let status = status_rx.borrow_and_update().clone();
    let up = Up {
        welcome: session.welcome().clone(),
        status,
        conn: session.connection().clone(),
        control: session.control(),
        addr: session.connection().remote_address().to_string(),
    };
    if !send(LinkEvent::Up(Box::new(up))) {
        return Ended::Stopped;
    }
    loop {
        tokio::select! {
            changed = status_rx.changed() => {
                if changed.is_err() {
                    return Ended::Lost("session ended".into());
                }
                let s = status_rx.borrow_and_update().clone();
                if let Some(why) = s.closed {
                    return Ended::Lost(why);
                }
                if !send(LinkEvent::Status(Box::new(s))) {
                    return Ended::Stopped;
                }
            }
            event = session.next_event() => match event {
                None => {
                    let why = session.status().closed.unwrap_or_else(|| "session ended".into());
                    return Ended::Lost(why);
                }
                Some(CoordMsg::Refused { code, reason }) if is_refusal(code) => {
                    return Ended::Refused(code, reason);
                }
                Some(msg) => if !send(LinkEvent::Msg(msg)) {
                    return Ended::Stopped;
                },
            },
        }
    }
}

/// Refusals about the token or the agent itself, which a coordinator only reverses when
/// its operator fixes something (a restored store, a recreated node, an upgrade). The
/// agent retries them slowly (`--refused-retry-ms`) rather than exiting: an exit under
/// systemd ends, after a few restarts, with nobody retrying at all.
pub fn is_refusal(code: RefuseCode) -> bool {
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
