//! HA election for one node's replicas: a deterministic state machine with an injected
//! clock and no I/O (`handle(now, event) -> Vec<Action>`), driven by the QUIC layer.
//!
//! Rules (issue 3):
//! * the first replica to connect is active; later ones are standbys;
//! * the active holds a lease in the current epoch, renewed (from *receipt*) by each of
//!   its heartbeats; a standby is *healthy* while its heartbeats keep coming;
//! * a standby is promoted only after the old lease has expired — never earlier, even if
//!   the active's connection is already gone, because the old agent may still be
//!   forwarding until its own (earlier, see `meshgate_proto::lease`) deadline;
//! * the longest-connected healthy standby wins, with epoch + 1;
//! * a recovered replica rejoins as standby (no preemption, no flapping);
//! * drain: the active asks for handover; its lease is no longer renewed, the successor
//!   is promoted the moment the lease runs out, and the old active is fenced after.
//!
//! Every event first applies what the passage of time implies (lease expiry and
//! promotion), so the outcome does not depend on how often the driver ticks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meshgate_proto::{LanInfo, Role};

/// Identifies one connection of one replica (a reconnect is a new `ConnId`).
pub type ConnId = u64;

/// Something that happened to the node's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A replica registered on connection `conn`.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Its LAN identity, for standbys to hairpin to.
        lan: Option<LanInfo>,
    },
    /// A heartbeat arrived.
    Heartbeat {
        /// From.
        conn: ConnId,
        /// Its sequence number, echoed in the grant.
        seq: u64,
    },
    /// The connection ended.
    Disconnected {
        /// Which.
        conn: ConnId,
    },
    /// The replica asked to hand its active role over (drain or link down).
    HandoverRequested {
        /// Which.
        conn: ConnId,
    },
    /// Time passed.
    Tick,
}

/// A control message the driver must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Lease renewed until `valid_for` after the heartbeat's receipt.
    LeaseGrant {
        /// Epoch.
        epoch: u64,
        /// Lease length.
        valid_for: Duration,
        /// Echoed heartbeat.
        seq: u64,
    },
    /// The receiver's role changed, or the node's active did.
    RoleChange {
        /// Receiver's role.
        role: Role,
        /// Node epoch.
        epoch: u64,
        /// Active's LAN identity.
        active: Option<LanInfo>,
    },
    /// The receiver's handover request completed.
    HandoverDone {
        /// New epoch.
        epoch: u64,
    },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Persist the epoch before any message carrying it leaves.
    PersistEpoch(u64),
    /// Send a control message.
    Send {
        /// To.
        conn: ConnId,
        /// What.
        msg: Out,
    },
    /// A replica became active (metrics, logs). `after_expiry` is the time from the old
    /// lease's expiry to this promotion, when there was an old lease.
    Promoted {
        /// Who.
        conn: ConnId,
        /// New epoch.
        epoch: u64,
        /// Lease expiry → promotion.
        after_expiry: Option<Duration>,
    },
    /// The active's lease expired.
    LeaseExpired {
        /// Whose.
        conn: ConnId,
        /// Epoch.
        epoch: u64,
    },
}

/// Election timings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Lease length (from heartbeat receipt); also the window in which a standby's last
    /// heartbeat must fall to count as healthy.
    pub lease: Duration,
}

#[derive(Debug, Clone)]
struct Replica {
    connected_at: Instant,
    last_heartbeat: Instant,
    role: Role,
    lan: Option<LanInfo>,
}

/// The election state of one node.
#[derive(Debug, Clone)]
pub struct Election {
    cfg: Config,
    epoch: u64,
    replicas: BTreeMap<ConnId, Replica>,
    /// The replica holding the current lease (gone from `replicas` if disconnected).
    holder: Option<ConnId>,
    /// Coordinator-side expiry of the current lease.
    expiry: Option<Instant>,
    /// The holder asked for handover: stop renewing, fence it after its lease.
    draining: bool,
}

impl Election {
    /// A node with no replicas, resuming from a persisted `epoch`.
    pub fn new(cfg: Config, epoch: u64) -> Self {
        Self {
            cfg,
            epoch,
            replicas: BTreeMap::new(),
            holder: None,
            expiry: None,
            draining: false,
        }
    }

    /// Apply `event` at `now`.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        self.advance(now, &mut out);
        match event.clone() {
            Event::Connected { conn, lan } => {
                self.replicas.insert(
                    conn,
                    Replica {
                        connected_at: now,
                        last_heartbeat: now,
                        role: Role::Standby,
                        lan,
                    },
                );
            }
            Event::Heartbeat { conn, seq } => {
                let Some(r) = self.replicas.get_mut(&conn) else {
                    return out;
                };
                r.last_heartbeat = now;
                if self.holder == Some(conn) && r.role == Role::Active && !self.draining {
                    self.expiry = Some(now + self.cfg.lease);
                    out.push(Action::Send {
                        conn,
                        msg: Out::LeaseGrant {
                            epoch: self.epoch,
                            valid_for: self.cfg.lease,
                            seq,
                        },
                    });
                }
            }
            Event::Disconnected { conn } => {
                // The lease (holder, expiry) outlives the connection on purpose.
                self.replicas.remove(&conn);
            }
            Event::HandoverRequested { conn } => match self.replicas.get_mut(&conn) {
                Some(r) if self.holder == Some(conn) && r.role == Role::Active => {
                    // Without a healthy successor, a handover would only take the node
                    // down early; keep serving until the replica actually leaves.
                    let lease = self.cfg.lease;
                    self.draining = self.replicas.iter().any(|(c, r)| {
                        *c != conn && r.role == Role::Standby && now < r.last_heartbeat + lease
                    });
                }
                Some(r) if r.role == Role::Standby => {
                    // A standby that cannot serve (link down) must not be promoted.
                    r.role = Role::Fenced;
                    let active = self.active_lan();
                    out.push(Action::Send {
                        conn,
                        msg: Out::RoleChange {
                            role: Role::Fenced,
                            epoch: self.epoch,
                            active,
                        },
                    });
                }
                _ => {}
            },
            Event::Tick => {}
        }
        // A registration or heartbeat may have produced the node's only healthy replica.
        self.advance(now, &mut out);
        if let Event::Connected { conn, .. } = event {
            // The Welcome the driver sends next carries the role; no RoleChange needed.
            out.retain(|a| {
                !matches!(a, Action::Send { conn: c, msg: Out::RoleChange { .. } } if *c == conn)
            });
        }
        out
    }

    fn advance(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut expired_at = None;
        if let (Some(holder), Some(expiry)) = (self.holder, self.expiry)
            && now >= expiry
        {
            out.push(Action::LeaseExpired {
                conn: holder,
                epoch: self.epoch,
            });
            self.holder = None;
            expired_at = Some(expiry);
            let draining = std::mem::take(&mut self.draining);
            if let Some(r) = self.replicas.get_mut(&holder) {
                // A drained replica stays fenced; one that merely missed heartbeats may
                // come back as a standby.
                r.role = if draining {
                    Role::Fenced
                } else {
                    Role::Standby
                };
            }
        }
        if self.lease_valid(now) {
            return;
        }
        let lease = self.cfg.lease;
        let best = self
            .replicas
            .iter()
            .filter(|(_, r)| r.role == Role::Standby && now < r.last_heartbeat + lease)
            .min_by_key(|(id, r)| (r.connected_at, **id))
            .map(|(id, _)| *id);
        let Some(winner) = best else {
            // Nobody to promote; still tell an expired holder it lost its role.
            if let Some(conn) = expired_at.and(self.last_holder_conn(out)) {
                self.notify_one(conn, out);
            }
            return;
        };
        self.epoch += 1;
        self.holder = Some(winner);
        self.expiry = Some(now + lease);
        if let Some(r) = self.replicas.get_mut(&winner) {
            r.role = Role::Active;
        }
        out.push(Action::PersistEpoch(self.epoch));
        out.push(Action::Promoted {
            conn: winner,
            epoch: self.epoch,
            after_expiry: expired_at.map(|e| now.saturating_duration_since(e)),
        });
        let previous = self.last_holder_conn(out);
        let conns: Vec<ConnId> = self.replicas.keys().copied().collect();
        for conn in conns {
            self.notify_one(conn, out);
            if Some(conn) == previous && self.replicas[&conn].role == Role::Fenced {
                out.push(Action::Send {
                    conn,
                    msg: Out::HandoverDone { epoch: self.epoch },
                });
            }
        }
    }

    /// The holder whose expiry was just recorded in `out`, if any.
    fn last_holder_conn(&self, out: &[Action]) -> Option<ConnId> {
        out.iter().rev().find_map(|a| match a {
            Action::LeaseExpired { conn, .. } => Some(*conn),
            _ => None,
        })
    }

    fn notify_one(&self, conn: ConnId, out: &mut Vec<Action>) {
        if let Some(r) = self.replicas.get(&conn) {
            let msg = Out::RoleChange {
                role: r.role,
                epoch: self.epoch,
                active: self.active_lan(),
            };
            out.push(Action::Send { conn, msg });
        }
    }

    fn active_lan(&self) -> Option<LanInfo> {
        self.holder
            .and_then(|h| self.replicas.get(&h))
            .and_then(|r| r.lan)
    }

    fn lease_valid(&self, now: Instant) -> bool {
        self.holder.is_some() && self.expiry.is_some_and(|e| now < e)
    }

    /// The node's current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The connection of the active replica, if it is connected and its lease valid.
    pub fn active(&self, now: Instant) -> Option<ConnId> {
        let h = self.holder?;
        (self.lease_valid(now) && self.replicas.get(&h)?.role == Role::Active).then_some(h)
    }

    /// The role of a connected replica.
    pub fn role(&self, conn: ConnId) -> Option<Role> {
        self.replicas.get(&conn).map(|r| r.role)
    }

    /// The active replica's LAN identity.
    pub fn active_lan_info(&self) -> Option<LanInfo> {
        self.active_lan()
    }

    /// Connected replicas and their roles.
    pub fn replicas(&self) -> impl Iterator<Item = (ConnId, Role)> + '_ {
        self.replicas.iter().map(|(c, r)| (*c, r.role))
    }

    /// When the current lease expires at the coordinator.
    pub fn lease_expiry(&self) -> Option<Instant> {
        self.holder.and(self.expiry)
    }

    /// Whether `conn` is connected, eligible and heartbeating (test and API helper).
    pub fn is_healthy(&self, conn: ConnId, now: Instant) -> bool {
        self.replicas
            .get(&conn)
            .is_some_and(|r| r.role != Role::Fenced && now < r.last_heartbeat + self.cfg.lease)
    }
}

#[cfg(test)]
#[path = "election_tests.rs"]
mod tests;
