//! HA election for one node's replicas: a deterministic state machine with an injected
//! clock and no I/O (`handle(now, event) -> Vec<Action>`), driven by the QUIC layer.
//!
//! # Rules
//!
//! * The first replica to connect is active; later ones are standbys.
//! * The active holds a lease in the current epoch, renewed (from *receipt*) by each of
//!   its heartbeats; a standby is *healthy* while its heartbeats keep coming.
//! * **Failure** (lost connection, missed heartbeats): a standby is promoted only after
//!   the old lease has expired — never earlier, even if the active's connection is
//!   already gone, because the old agent may still be forwarding until its own (earlier,
//!   see `meshgate_proto::lease`) deadline. The longest-connected healthy standby wins,
//!   with epoch + 1. A recovered replica rejoins as standby (no preemption, no flapping).
//! * **Requested handover** (drain on shutdown, or LAN link down): the active asked, so
//!   it is alive and cooperating, and the strict rule would only cost packets (the old
//!   lease's remaining time plus a tick with nobody forwarding). Instead, when a healthy
//!   standby exists, the coordinator promotes it *at once* (epoch + 1, lease granted)
//!   and keeps the requester **draining**: still told nothing new, still renewed in its
//!   *old* epoch (its agent's lease tracker only accepts grants of the epoch it is active
//!   in), still allowed through the relay — for [`Config::overlap`], measured from the
//!   promotion. Then it is fenced (`RoleChange { Fenced }` + `HandoverDone`).
//!   The overlap is a fixed time rather than "the successor's first heartbeat after its
//!   promotion": the agent's heartbeats run in their own task, independent of when its
//!   data plane flips, so such a heartbeat proves receipt of the promotion, not that the
//!   successor forwards. The successor flips once the RoleChange and the grant sent with
//!   it (see below) arrive, plus its kernel steps; the default overlap, three heartbeats,
//!   leaves room for that and for a lost grant made up by the next heartbeat. During the overlap both replicas may forward;
//!   forwarding is stateless, so the cost is at most a duplicate, never a loss.
//!   Once fenced it is no longer renewed, but the relay still takes the datagrams it
//!   sends until its (old-epoch) lease lapses: it tunnelled them before it heard of the
//!   fence, and its agent stops at the fence or at that lease's end, whichever comes
//!   first. `HandoverDone` follows then.
//! * With no healthy standby, a handover request changes nothing at once (the active
//!   keeps serving), but it is remembered: it is carried out as soon as a healthy standby
//!   appears. A request made while another handover is in progress waits for it too.
//! * Every promotion is followed by a `LeaseGrant` echoing the winner's last received
//!   heartbeat, so it may forward at once instead of a heartbeat later. This is safe:
//!   the agent counts that lease from the heartbeat's *send* time, which precedes its
//!   receipt and hence this promotion, whose expiry is `now + lease`.
//! * If the successor is lost during the overlap (gone, or no longer heartbeating), the
//!   draining replica is not fenced — that would leave the node with nobody. It keeps
//!   being renewed; when the successor's lease expires (strict rule, as for any failure)
//!   the next healthy standby is promoted and the overlap starts again, or, if there is
//!   none, the draining replica itself is re-promoted with epoch + 1 and serves on (its
//!   request stays remembered).
//! * If the draining replica leaves or stops heartbeating, the successor is already
//!   active; the drain ends when the draining replica's lease lapses (a further
//!   handover waits until then, so there are never three forwarders).
//!
//! # Invariants (property-tested in `election_tests.rs`)
//!
//! * At most one replica holds a valid lease, **except** during a requested handover,
//!   where the draining replica (which asked) overlaps the successor; it is fenced at the
//!   first event (at most one tick) after the overlap ends, unless the successor was
//!   lost meanwhile.
//! * Epochs only grow.
//! * A node with a healthy replica has an active within the expiry time.
//!
//! Every event first applies what the passage of time implies (lease expiry, promotion,
//! the end of an overlap), so the outcome does not depend on how often the driver ticks.

use std::collections::BTreeMap;
use std::time::Instant;

use meshgate_proto::{LanInfo, Role};

mod queries;
pub mod quorum;
pub mod shared;
mod types;
pub use types::{Action, Config, ConnId, Event, Out, Permit};

#[derive(Debug, Clone)]
struct Replica {
    connected_at: Instant,
    last_heartbeat: Instant,
    /// The last heartbeat's sequence number, echoed in a grant sent with a promotion.
    last_seq: Option<u64>,
    role: Role,
    lan: Option<LanInfo>,
}

/// A replica that handed its role over and still forwards during the overlap.
#[derive(Debug, Clone, Copy)]
struct Drain {
    conn: ConnId,
    /// The epoch it is active in (older than the node's).
    epoch: u64,
    /// Coordinator-side expiry of its (still renewed) lease.
    expiry: Instant,
    /// When it is fenced, if the successor is still fine then.
    fence_at: Instant,
    /// Told it is fenced: no longer renewed, its datagrams still relayed until `expiry`.
    fenced: bool,
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
    /// The holder asked for handover and has not got it yet.
    wants_handover: bool,
    /// The previous holder, during a requested handover's overlap.
    draining: Option<Drain>,
    /// The highest epoch known to exist (reported by an agent); the next promotion
    /// moves past it even if this coordinator never stored it.
    floor: u64,
    /// What the driver allows (see [`Permit`]).
    permit: Permit,
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
            wants_handover: false,
            draining: None,
            floor: epoch,
            permit: Permit::default(),
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
                        last_seq: None,
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
                r.last_seq = Some(seq);
                // Without a permit to renew, the lease runs out as if the heartbeat
                // was lost.
                let Some(lease) = self.permit.grant_len(now, self.cfg.lease) else {
                    return out;
                };
                let epoch = if self.holder == Some(conn) && r.role == Role::Active {
                    self.expiry = Some(now + lease);
                    Some(self.epoch)
                } else if let Some(d) = self
                    .draining
                    .as_mut()
                    .filter(|d| d.conn == conn && !d.fenced)
                {
                    d.expiry = now + lease;
                    Some(d.epoch)
                } else {
                    None
                };
                if let Some(epoch) = epoch {
                    let msg = Out::LeaseGrant {
                        epoch,
                        valid_for: lease,
                        seq,
                    };
                    out.push(Action::Send { conn, msg });
                }
            }
            Event::Disconnected { conn } => {
                // The lease (holder, expiry) outlives the connection on purpose. So does
                // a draining replica's: its record stays until that lease lapses, so no
                // further handover adds a third forwarder meanwhile.
                self.replicas.remove(&conn);
            }
            Event::HandoverRequested { conn } => match self.replicas.get_mut(&conn) {
                Some(r) if self.holder == Some(conn) && r.role == Role::Active => {
                    // Carried out below, or later once a healthy standby exists.
                    self.wants_handover = true;
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
                // Already draining, or fenced: nothing more to do.
                _ => {}
            },
            Event::Tick => {}
        }
        // A registration or heartbeat may have produced the node's only healthy replica;
        // a handover request may be carried out now.
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
        self.end_drain(now, out);
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
            let asked = std::mem::take(&mut self.wants_handover);
            if let Some(r) = self.replicas.get_mut(&holder) {
                // One that asked to leave stays fenced; one that merely missed heartbeats
                // may come back as a standby.
                r.role = if asked { Role::Fenced } else { Role::Standby };
            }
        }
        let may_promote = self.permit.may_promote(now);
        if self.lease_valid(now) {
            if may_promote && self.wants_handover && self.draining.is_none() {
                self.hand_over(now, out);
            }
            return;
        }
        if !may_promote {
            if let Some(conn) = expired_at.and(self.last_holder_conn(out)) {
                self.notify_one(conn, out);
            }
            return;
        }
        if let Some(winner) = self.best_standby(now) {
            self.promote(winner, now, expired_at, out);
            if let Some(d) = self.draining.as_mut() {
                // A new successor: the overlap starts again.
                d.fence_at = now + self.cfg.overlap;
            }
        } else if let Some(conn) = self.draining() {
            // The successor was lost and nobody else can serve: the draining replica,
            // still forwarding, becomes the holder again. Its request stays remembered.
            self.draining = None;
            self.promote(conn, now, expired_at, out);
            self.wants_handover = true;
        } else if let Some(conn) = expired_at.and(self.last_holder_conn(out)) {
            // Nobody to promote; still tell an expired holder it lost its role.
            self.notify_one(conn, out);
        }
    }

    /// Fence the draining replica once the overlap is over and the successor still
    /// holds a valid lease and heartbeats; end the drain if the replica stopped
    /// heartbeating (its lease expired).
    fn end_drain(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(d) = self.draining else {
            return;
        };
        // One that left cannot be told; its lease lapses on its own.
        let connected = self.replicas.contains_key(&d.conn);
        let lapsed = now >= d.expiry;
        if d.fenced {
            // Until its lease lapses, even once gone: the fence may never have reached it
            // (it left, or its connection broke), and no further handover may add a
            // third forwarder meanwhile.
            if lapsed {
                self.draining = None;
                if connected {
                    out.push(Action::Send {
                        conn: d.conn,
                        msg: Out::HandoverDone { epoch: self.epoch },
                    });
                }
            }
            return;
        }
        let lease = self.cfg.lease;
        let successor_ok = self.lease_valid(now)
            && self
                .holder
                .and_then(|h| self.replicas.get(&h))
                .is_some_and(|r| r.role == Role::Active && now < r.last_heartbeat + lease);
        if !(lapsed || (connected && now >= d.fence_at && successor_ok)) {
            return;
        }
        if !lapsed {
            // Fenced now; what it sent before hearing so is relayed until its lease ends.
            if let Some(r) = self.replicas.get_mut(&d.conn) {
                r.role = Role::Fenced;
            }
            self.notify_one(d.conn, out);
            self.draining = Some(Drain { fenced: true, ..d });
            return;
        }
        self.draining = None;
        out.push(Action::LeaseExpired {
            conn: d.conn,
            epoch: d.epoch,
        });
        if let Some(r) = self.replicas.get_mut(&d.conn) {
            r.role = Role::Fenced;
            self.notify_one(d.conn, out);
            out.push(Action::Send {
                conn: d.conn,
                msg: Out::HandoverDone { epoch: self.epoch },
            });
        }
    }

    /// Promote a healthy standby while the holder, who asked, keeps forwarding.
    fn hand_over(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (Some(old), Some(expiry)) = (self.holder, self.expiry) else {
            return;
        };
        let Some(winner) = self.best_standby(now) else {
            return;
        };
        self.wants_handover = false;
        self.draining = Some(Drain {
            conn: old,
            epoch: self.epoch,
            expiry,
            fence_at: now + self.cfg.overlap,
            fenced: false,
        });
        self.promote(winner, now, None, out);
    }

    /// The longest-connected healthy standby.
    fn best_standby(&self, now: Instant) -> Option<ConnId> {
        let lease = self.cfg.lease;
        self.replicas
            .iter()
            .filter(|(_, r)| r.role == Role::Standby && now < r.last_heartbeat + lease)
            .min_by_key(|(id, r)| (r.connected_at, **id))
            .map(|(id, _)| *id)
    }

    fn promote(
        &mut self,
        winner: ConnId,
        now: Instant,
        expired_at: Option<Instant>,
        out: &mut Vec<Action>,
    ) {
        // A promotion without a permit to renew would hand out a lease it cannot keep.
        let lease = self
            .permit
            .grant_len(now, self.cfg.lease)
            .unwrap_or_default();
        self.epoch = self.epoch.max(self.floor) + 1;
        self.holder = Some(winner);
        self.expiry = Some(now + lease);
        self.wants_handover = false;
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
        let draining = self.draining.map(|d| d.conn);
        let conns: Vec<ConnId> = self.replicas.keys().copied().collect();
        for conn in conns {
            // The draining replica hears nothing until it is fenced: a RoleChange of
            // the new epoch would void the lease it still forwards under.
            if Some(conn) == draining {
                continue;
            }
            self.notify_one(conn, out);
            if conn == winner
                && let Some(seq) = self.replicas[&conn].last_seq
            {
                // A grant for the heartbeat already received: the agent counts it from
                // that heartbeat's send time, before this promotion, so its deadline
                // still precedes our expiry — and it forwards without waiting a beat.
                let msg = Out::LeaseGrant {
                    epoch: self.epoch,
                    valid_for: lease,
                    seq,
                };
                out.push(Action::Send { conn, msg });
            }
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
}

#[cfg(test)]
#[path = "election_tests.rs"]
mod tests;
