//! The core as a member of a coordinator cluster: elections go through
//! [`crate::election::shared`], whose store transactions leave as [`Output::Store`] and
//! whose store news arrive as [`Input::Cluster`] (see [`crate::election::quorum`] for
//! the rules and the safety argument). Every epoch a member sends was read from the
//! store, so the durability gate only learns it; nothing is persisted from here.
//!
//! [`Input::Cluster`]: super::Input::Cluster

use std::time::Instant;

use meshgate_proto::{CoordMsg, Id, Welcome};

use super::{Core, Output, Registration};
use crate::election::quorum::{ClusterEvent, ClusterOp};
use crate::election::shared::Shared;
use crate::election::{self, Action};

impl Core {
    /// Registers a node replica with the shared election; the Welcome says what it is.
    pub(super) fn register_shared(
        &mut self,
        now: Instant,
        r: Registration,
        mut welcome: Welcome,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
        relay: &mut bool,
    ) {
        let lease = self.cfg.lease();
        let Some(q) = self.quorum.as_ref() else {
            return;
        };
        let sh = self
            .shared
            .entry(r.id)
            .or_insert_with(|| Shared::new(r.id, lease, now));
        sh.observe_epoch(r.stored_epoch);
        let (role, actions) =
            sh.connected(now, q, r.session, r.replica_id.clone(), r.lan, r.seen_epoch);
        welcome.role = role;
        welcome.epoch = sh.epoch();
        welcome.active = sh.active_lan_info();
        let epoch = welcome.epoch;
        self.gate.known(r.id, epoch);
        let msg = CoordMsg::Welcome(Box::new(welcome));
        self.gate.send(r.id, r.session, msg, out, persist);
        *relay |= self.execute(r.id, actions, out, persist);
        self.record(out, r.id, "registered", &r.replica_id, epoch, None);
        tracing::info!(session = r.session, node = %r.name, replica = %r.replica_id, ?role, epoch, "registered");
    }

    /// One replica event for a node's shared election; returns whether roles changed.
    pub(super) fn shared_event(
        &mut self,
        now: Instant,
        node: Id,
        event: election::Event,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
    ) -> bool {
        let (Some(q), Some(sh)) = (self.quorum.as_ref(), self.shared.get_mut(&node)) else {
            return false;
        };
        let actions = sh.handle(now, q, event);
        self.run_shared(node, actions, out, persist)
    }

    fn run_shared(
        &mut self,
        node: Id,
        actions: Vec<Action>,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
    ) -> bool {
        if actions.is_empty() {
            return false;
        }
        if let Some(sh) = self.shared.get(&node) {
            // Read from the store: durable already.
            self.gate.known(node, sh.epoch());
        }
        self.execute(node, actions, out, persist)
    }

    /// Time passed for every shared election; returns whether roles changed.
    pub(super) fn tick_shared(
        &mut self,
        now: Instant,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
    ) -> bool {
        let mut nodes: Vec<Id> = self.shared.keys().copied().collect();
        // Deterministic order: the simulation replays a seed exactly.
        nodes.sort_unstable();
        let mut changed = false;
        for node in nodes {
            changed |= self.shared_event(now, node, election::Event::Tick, out, persist);
        }
        changed
    }

    /// What the shared store said.
    pub(super) fn cluster(
        &mut self,
        now: Instant,
        ev: ClusterEvent,
        out: &mut Vec<Output>,
        persist: &mut Vec<(Id, u64)>,
        relay: &mut bool,
    ) {
        let lease = self.cfg.lease();
        let Some(q) = self.quorum.as_mut() else {
            return;
        };
        if q.apply(&ev) {
            // The member's standing changed: marks or promotions may be due now.
            *relay |= self.tick_shared(now, out, persist);
            return;
        }
        let q = &*q;
        let (node, actions) = match ev {
            ClusterEvent::Elected {
                node,
                epoch,
                active,
            } => {
                let sh = self
                    .shared
                    .entry(node)
                    .or_insert_with(|| Shared::new(node, lease, now));
                *relay = true;
                (node, sh.elected(now, q, epoch, active))
            }
            ClusterEvent::Mark {
                node,
                epoch,
                member,
                lease,
            } => {
                let Some(sh) = self.shared.get_mut(&node) else {
                    return;
                };
                sh.mark_seen(epoch, member, lease);
                (node, sh.handle(now, q, election::Event::Tick))
            }
            ClusterEvent::Done { op, ok } => {
                let node = match &op {
                    ClusterOp::Lapse { node, .. }
                    | ClusterOp::Retract { node, .. }
                    | ClusterOp::Promote { node, .. } => *node,
                };
                let Some(sh) = self.shared.get_mut(&node) else {
                    return;
                };
                (node, sh.done(now, q, op, ok))
            }
            _ => return,
        };
        *relay |= self.run_shared(node, actions, out, persist);
    }

    /// Sets the member-key timings (a cluster member; the simulation shortens them).
    pub fn set_quorum_timings(&mut self, t: crate::election::quorum::QuorumTimings) {
        if let Some(q) = self.quorum.as_mut() {
            q.timings = t;
        }
    }

    /// A node's shared election (the simulation checks its invariants through it).
    pub fn shared_election(&self, node: Id) -> Option<&Shared> {
        self.shared.get(&node)
    }
}
