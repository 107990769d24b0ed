//! One node's election on one member of a coordinator cluster: grants for the recorded
//! active, lapse marks, retractions and (on the decider) promotions, with no I/O. The
//! rules and why they keep at most one forwarder are in [`super::quorum`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meshgate_proto::{Id, LanInfo, Role};

use super::quorum::{ClusterOp, Quorum};
use super::{Action, ConnId, Event, Out};

/// Pause before a store transaction that failed or lost a race is tried again.
const RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Rep {
    replica: String,
    connected_at: Instant,
    last_heartbeat: Instant,
    last_seq: Option<u64>,
    lan: Option<LanInfo>,
    /// Asked to hand over while standby (its link is down): never promoted.
    fenced: bool,
    /// Told it is active in the current epoch (grants are void to an agent that is not).
    told: bool,
}

/// This member's lapse mark for the current epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Granting.
    None,
    /// Not granting; the mark is written once this member's last grant expired.
    Stopped,
    /// Being written.
    Writing,
    /// In the store.
    Written,
    /// Being deleted; no grants until that committed.
    Retracting,
}

/// One node's election on this member (see the module docs).
#[derive(Debug, Clone)]
pub struct Shared {
    node: Id,
    lease: Duration,
    epoch: u64,
    active: Option<String>,
    replicas: BTreeMap<ConnId, Rep>,
    /// When the last grant this member made in `epoch` ends (or, before any, when the
    /// active has had a lease's time to show up).
    expiry: Option<Instant>,
    mark: Mark,
    retry_at: Option<Instant>,
    /// Marks of `epoch` in the store: member → lease.
    marks: BTreeMap<String, u64>,
    proposing: bool,
    /// This member's last grant's end when it proposed (the promotion's `after_expiry`
    /// counts from it, even when the store's watch reports the new record first).
    proposed_after: Option<Instant>,
    /// The active's connection that asked to hand over: lapse without waiting (a new
    /// connection of a restarted replica has not asked).
    handover: Option<ConnId>,
    /// The highest epoch any agent reported.
    floor: u64,
}

impl Shared {
    /// A node this member just heard of at `now`, with no record yet.
    pub fn new(node: Id, lease: Duration, now: Instant) -> Self {
        Self {
            node,
            lease,
            epoch: 0,
            active: None,
            replicas: BTreeMap::new(),
            expiry: Some(now + lease),
            mark: Mark::None,
            retry_at: None,
            marks: BTreeMap::new(),
            proposing: false,
            proposed_after: None,
            handover: None,
            floor: 0,
        }
    }

    fn active_conn(&self) -> Option<ConnId> {
        let a = self.active.as_ref()?;
        self.replicas
            .iter()
            .find(|(_, r)| &r.replica == a)
            .map(|(c, _)| *c)
    }

    /// Grants a lease for heartbeat `seq` of the active, if this member may.
    fn grant(&mut self, now: Instant, q: &Quorum, conn: ConnId, seq: u64, out: &mut Vec<Action>) {
        if self.mark != Mark::None || self.active.is_none() {
            return;
        }
        let Some(until) = q.grant_until(now) else {
            return;
        };
        let len = self.lease.min(until.saturating_duration_since(now));
        if len.is_zero() {
            return;
        }
        let end = now + len;
        self.expiry = Some(self.expiry.map_or(end, |e| e.max(end)));
        if let Some(r) = self.replicas.get_mut(&conn)
            && !r.told
        {
            // Its Welcome said standby (this member could not grant then).
            r.told = true;
            let msg = self.role_change(Role::Active);
            out.push(Action::Send { conn, msg });
        }
        let msg = Out::LeaseGrant {
            epoch: self.epoch,
            valid_for: len,
            seq,
        };
        out.push(Action::Send { conn, msg });
    }

    /// A replica registered; returns the role its Welcome carries. It is `Active` only
    /// for the recorded active when this member may grant it a whole lease now (the
    /// Welcome counts as a grant from the Hello's send time).
    pub fn connected(
        &mut self,
        now: Instant,
        q: &Quorum,
        conn: ConnId,
        replica: String,
        lan: Option<LanInfo>,
        seen_epoch: u64,
    ) -> (Role, Vec<Action>) {
        self.floor = self.floor.max(seen_epoch);
        let is_active = self.active.as_ref() == Some(&replica);
        self.replicas.insert(
            conn,
            Rep {
                replica,
                connected_at: now,
                last_heartbeat: now,
                last_seq: None,
                lan,
                fenced: false,
                told: false,
            },
        );
        let full = q.grant_until(now).is_some_and(|u| u >= now + self.lease);
        let role = if is_active && self.mark == Mark::None && full {
            let end = now + self.lease;
            self.expiry = Some(self.expiry.map_or(end, |e| e.max(end)));
            if let Some(r) = self.replicas.get_mut(&conn) {
                r.told = true;
            }
            Role::Active
        } else {
            Role::Standby
        };
        let mut out = Vec::new();
        self.advance(now, q, &mut out);
        (role, out)
    }

    /// Applies a replica event at `now`.
    pub fn handle(&mut self, now: Instant, q: &Quorum, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Heartbeat { conn, seq } => {
                if let Some(r) = self.replicas.get_mut(&conn) {
                    r.last_heartbeat = now;
                    r.last_seq = Some(seq);
                }
                if Some(conn) == self.active_conn() {
                    if self.mark == Mark::Written && !self.handing_over() && q.may_mark(now) {
                        // Heard again before any promotion: take the mark back, and grant
                        // only once that committed.
                        self.mark = Mark::Retracting;
                        out.push(Action::Store(self.op_retract()));
                    }
                    self.grant(now, q, conn, seq, &mut out);
                }
            }
            Event::Disconnected { conn } => {
                self.replicas.remove(&conn);
            }
            Event::HandoverRequested { conn } => {
                if Some(conn) == self.active_conn() {
                    self.handover = Some(conn);
                } else if let Some(r) = self.replicas.get_mut(&conn).filter(|r| !r.fenced) {
                    // A standby that cannot serve (link down) must not be promoted.
                    r.fenced = true;
                    let msg = self.role_change(Role::Fenced);
                    out.push(Action::Send { conn, msg });
                }
            }
            Event::Connected { .. } | Event::Tick => {}
        }
        self.advance(now, q, &mut out);
        out
    }

    fn role_change(&self, role: Role) -> Out {
        Out::RoleChange {
            role,
            epoch: self.epoch,
            active: self.active_lan_info(),
        }
    }

    fn op_retract(&self) -> ClusterOp {
        ClusterOp::Retract {
            node: self.node,
            epoch: self.epoch,
            active: self.active.clone().unwrap_or_default(),
        }
    }

    fn handing_over(&self) -> bool {
        self.handover.is_some() && self.handover == self.active_conn()
    }

    fn retry_due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// What the passage of time implies: stop granting, write the mark, promote.
    fn advance(&mut self, now: Instant, q: &Quorum, out: &mut Vec<Action>) {
        let expired = self.expiry.is_none_or(|e| now >= e);
        if self.mark == Mark::None && self.active.is_some() && (expired || self.handing_over()) {
            self.mark = Mark::Stopped;
            if let Some(conn) = self.active_conn() {
                out.push(Action::LeaseExpired {
                    conn,
                    epoch: self.epoch,
                });
            }
        }
        if self.mark == Mark::Written
            && q.lease().is_some_and(|l| self.marks.get(&q.me) != Some(&l))
        {
            // Written under an earlier registration of this member (it re-registered with
            // a new lease since): the decider counts only a mark that carries the live
            // lease, so write it again. Not granting already; nothing else changes.
            self.mark = Mark::Stopped;
        }
        if self.mark == Mark::Stopped && expired && q.may_mark(now) && self.retry_due(now) {
            let (Some(active), Some(lease)) = (self.active.clone(), q.lease()) else {
                return;
            };
            self.mark = Mark::Writing;
            out.push(Action::Store(ClusterOp::Lapse {
                node: self.node,
                epoch: self.epoch,
                active,
                lease,
            }));
        }
        self.propose(now, q, out);
    }

    /// On the decider: promote once every live member has marked the current epoch.
    fn propose(&mut self, now: Instant, q: &Quorum, out: &mut Vec<Action>) {
        if self.proposing || !q.may_promote(now) || !self.retry_due(now) {
            return;
        }
        let from = self.active.clone().map(|a| (self.epoch, a));
        if from.is_some() {
            let all_marked = self.mark == Mark::Written
                && q.live.iter().all(|(m, l)| self.marks.get(m) == Some(l));
            if !all_marked {
                return;
            }
        }
        let lease = self.lease;
        let winner = self
            .replicas
            .values()
            .filter(|r| !r.fenced && now < r.last_heartbeat + lease)
            .min_by_key(|r| (self.active.as_ref() == Some(&r.replica), r.connected_at))
            .map(|r| r.replica.clone());
        let Some(winner) = winner else {
            return;
        };
        self.proposing = true;
        self.proposed_after = self.expiry;
        out.push(Action::Store(ClusterOp::Promote {
            node: self.node,
            from,
            to: (self.epoch.max(self.floor) + 1, winner),
            members: q.live.iter().map(|(m, l)| (m.clone(), *l)).collect(),
            joined: q.joined,
        }));
    }

    /// The store records (`epoch`, `active`) for this node.
    pub fn elected(&mut self, now: Instant, q: &Quorum, epoch: u64, active: String) -> Vec<Action> {
        let mut out = Vec::new();
        if epoch > self.epoch || self.active.is_none() {
            self.adopt(now, q, epoch, active, &mut out);
        }
        self.advance(now, q, &mut out);
        out
    }

    fn adopt(
        &mut self,
        now: Instant,
        q: &Quorum,
        epoch: u64,
        active: String,
        out: &mut Vec<Action>,
    ) {
        self.epoch = epoch;
        self.floor = self.floor.max(epoch);
        self.active = Some(active);
        self.marks.clear();
        self.mark = Mark::None;
        self.retry_at = None;
        self.proposing = false;
        self.handover = None;
        // Nothing granted in this epoch yet; the active has a lease's time to be heard.
        self.expiry = Some(now + self.lease);
        let winner = self.active_conn();
        let conns: Vec<ConnId> = self.replicas.keys().copied().collect();
        for conn in conns {
            if let Some(r) = self.replicas.get_mut(&conn) {
                r.told = Some(conn) == winner;
            }
            let r = &self.replicas[&conn];
            let role = if Some(conn) == winner {
                Role::Active
            } else if r.fenced {
                Role::Fenced
            } else {
                Role::Standby
            };
            let seq = r.last_seq;
            out.push(Action::Send {
                conn,
                msg: self.role_change(role),
            });
            if let (Some(seq), true) = (seq, Some(conn) == winner) {
                // A grant for the heartbeat already received: the agent counts it from
                // that heartbeat's send time, before this instant, so its deadline still
                // precedes ours — and it forwards without waiting a beat.
                self.expiry = None;
                self.grant(now, q, conn, seq, out);
                self.expiry = self.expiry.or(Some(now + self.lease));
            }
        }
    }

    /// A mark of this node in the store changed.
    pub fn mark_seen(&mut self, epoch: u64, member: String, lease: Option<u64>) {
        if epoch != self.epoch {
            return;
        }
        match lease {
            Some(l) => self.marks.insert(member, l),
            None => self.marks.remove(&member),
        };
    }

    /// The result of one of this node's store transactions.
    pub fn done(
        &mut self,
        now: Instant,
        q: &Quorum,
        op: ClusterOp,
        ok: Option<bool>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match op {
            ClusterOp::Lapse { epoch, lease, .. }
                if epoch == self.epoch && self.mark == Mark::Writing =>
            {
                if ok == Some(true) {
                    self.mark = Mark::Written;
                    self.marks.insert(q.me.clone(), lease);
                } else {
                    self.mark = Mark::Stopped;
                    self.retry_at = Some(now + RETRY);
                }
            }
            ClusterOp::Retract { epoch, .. }
                if epoch == self.epoch && self.mark == Mark::Retracting =>
            {
                match ok {
                    Some(true) => {
                        self.mark = Mark::None;
                        self.marks.remove(&q.me);
                        // Grant the heartbeat that prompted the retraction: counted from
                        // its send time, the agent's deadline precedes this member's.
                        let last = self
                            .active_conn()
                            .and_then(|c| Some((c, self.replicas[&c].last_seq?)));
                        if let Some((conn, seq)) = last {
                            self.grant(now, q, conn, seq, &mut out);
                        }
                    }
                    Some(false) => self.mark = Mark::Written,
                    // It may have committed: write the mark again before relying on it.
                    None => {
                        self.mark = Mark::Stopped;
                        self.retry_at = Some(now + RETRY);
                    }
                }
            }
            // The watch may report the committed record before the answer does (the
            // record was then adopted, which ended `proposing`): still this member's own
            // promotion, to report.
            ClusterOp::Promote { from, to, .. }
                if self.proposing || (ok == Some(true) && to.0 == self.epoch) =>
            {
                self.proposing = false;
                if ok == Some(true) {
                    let lapsed = self.proposed_after;
                    if to.0 > self.epoch {
                        self.adopt(now, q, to.0, to.1, &mut out);
                    }
                    if let Some(conn) = self.active_conn() {
                        out.push(Action::Promoted {
                            conn,
                            epoch: to.0,
                            after_expiry: from
                                .and(lapsed)
                                .map(|e| now.saturating_duration_since(e)),
                        });
                    }
                } else {
                    self.retry_at = Some(now + RETRY);
                }
            }
            _ => {}
        }
        self.advance(now, q, &mut out);
        out
    }

    /// Raises the epoch floor (an agent reported having seen `epoch`).
    pub fn observe_epoch(&mut self, epoch: u64) {
        self.floor = self.floor.max(epoch);
    }

    /// The node's recorded epoch as this member knows it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The recorded active's connection to this member.
    pub fn active(&self) -> Option<ConnId> {
        self.active_conn()
    }

    /// The role of a connected replica.
    pub fn role(&self, conn: ConnId) -> Option<Role> {
        let r = self.replicas.get(&conn)?;
        Some(if Some(conn) == self.active_conn() {
            Role::Active
        } else if r.fenced {
            Role::Fenced
        } else {
            Role::Standby
        })
    }

    /// Connected replicas and their roles.
    pub fn replicas(&self) -> impl Iterator<Item = (ConnId, Role)> + '_ {
        self.replicas
            .keys()
            .map(|c| (*c, self.role(*c).unwrap_or(Role::Standby)))
    }

    /// The active replica's LAN identity.
    pub fn active_lan_info(&self) -> Option<LanInfo> {
        self.active_conn().and_then(|c| self.replicas[&c].lan)
    }

    /// When this member's last grant in the current epoch ends.
    pub fn lease_expiry(&self) -> Option<Instant> {
        self.expiry
    }
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
