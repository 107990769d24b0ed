//! The election's settings from the driver and its read-only views.

use std::time::Instant;

use meshgate_proto::{LanInfo, Role};

use super::{ConnId, Election, Permit};

impl Election {
    /// Sets what this coordinator may do from now on (see [`Permit`]).
    pub fn set_permit(&mut self, permit: Permit) {
        self.permit = permit;
    }

    /// The current epoch reached the disk and the promotion's messages left only now: a
    /// handover's overlap counts from here, so the successor hears of its promotion a
    /// full overlap before the draining replica is fenced, however slow the write.
    pub fn announced(&mut self, now: Instant) {
        if let Some(d) = self.draining.as_mut().filter(|d| !d.fenced) {
            d.fence_at = d.fence_at.max(now + self.cfg.overlap);
        }
    }

    /// An epoch seen elsewhere (an agent's Hello): the next promotion moves past it.
    pub fn observe_epoch(&mut self, epoch: u64) {
        self.floor = self.floor.max(epoch);
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

    /// The connected replica handing over (still forwarding, not yet fenced), if any.
    pub fn draining(&self) -> Option<ConnId> {
        self.draining
            .filter(|d| !d.fenced)
            .map(|d| d.conn)
            .filter(|c| self.replicas.contains_key(c))
    }

    /// Where the relay sends traffic for the node's routes: the active replica, or,
    /// while a lost successor's lease runs out, the draining one that still forwards.
    pub fn forwarder(&self, now: Instant) -> Option<ConnId> {
        self.active(now).or_else(|| self.draining())
    }

    /// Whether the relay accepts datagrams from `conn`: the active and the draining one,
    /// also once fenced until its lease lapses (see the module docs).
    pub fn may_send(&self, conn: ConnId, now: Instant) -> bool {
        self.active(now) == Some(conn)
            || self.draining.is_some_and(|d| {
                d.conn == conn && self.replicas.contains_key(&conn) && (!d.fenced || now < d.expiry)
            })
    }

    /// The role of a connected replica (the draining one is still `Active` until fenced).
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
