//! Mesh IP allocation against the store, safe with several allocators on one store (the
//! members of a coordinator cluster share etcd; the registry's mutex only orders one
//! process).
//!
//! An allocation reads no more than it must: it probes the addresses after the cursor one
//! key at a time (the cursor moves forward, so those are nearly always free) and scans
//! `ipam/` only when [`PROBES`] in a row are taken. The address, the cursor and the
//! owner's record are written in one transaction guarded by the address being absent;
//! a lost race moves on to the next address.
//!
//! The choice is made under the registry's mutex, the write need not be: a registration
//! reserves its address in memory, lets go of the mutex and writes, so that concurrent
//! registrations share one commit of the store (see `store::redb`'s group commit)
//! instead of queueing for one fsync each.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use meshgate_proto::Id;

use super::{MAX_REPLICAS_PER_NODE, R, Registry, RegistryError, json};
use crate::store::{Compare, Op};

/// Addresses probed one by one after the cursor before one scan of every allocation.
const PROBES: usize = 32;
/// Allocations lost to another allocator before giving up.
const ATTEMPTS: usize = 8;

/// Addresses chosen in this process whose write has not landed yet; guarded by the
/// registry's mutex.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    /// The last address reserved.
    cursor: Option<Ipv4Addr>,
    in_flight: HashSet<Ipv4Addr>,
    /// New replicas being written, per node, by owner (`replica/{node}/{id}`). A record
    /// may already be in the store while its owner is still here (between the write and
    /// the release), so counts take the union of the two.
    replicas: HashMap<Id, HashSet<String>>,
}

/// How a guarded allocation ended.
pub(super) enum Allocated {
    /// The address was allocated and the owner's record written with it.
    New(Ipv4Addr),
    /// One of the caller's own guards failed: nothing was written.
    Guarded,
}

/// What an allocation is for.
pub(super) struct Claim<'a> {
    /// Written as the owner of `ipam/{ip}`.
    pub owner: &'a str,
    /// The caller's own guards, checked in the same transaction.
    pub guards: &'a [Compare],
    /// A new replica of this node: counted against [`MAX_REPLICAS_PER_NODE`].
    pub replica_of: Option<Id>,
}

impl Registry {
    /// Allocates a Mesh IP for `claim` and writes `record(ip)` with it, in one transaction.
    /// `held` is the registry's mutex when the caller holds it for the whole call (it is
    /// then kept across the write); otherwise the mutex is taken only to choose.
    pub(super) fn allocate_with(
        &self,
        mut held: Option<&mut Reservations>,
        claim: &Claim<'_>,
        record: impl Fn(Ipv4Addr) -> Vec<Op>,
    ) -> R<Allocated> {
        let mut after = None;
        for attempt in 0..ATTEMPTS {
            let ip = self.with_reservations(&mut held, |r| self.reserve(r, after, claim))?;
            let written = self.write_allocation(ip, claim, &record);
            self.with_reservations(&mut held, |r| r.release(ip, claim));
            if written? {
                return Ok(Allocated::New(ip));
            }
            if !self.all_hold(claim.guards)? {
                return Ok(Allocated::Guarded);
            }
            // Another allocator took it. Both would now probe the same next address, so
            // the loser skips a random stretch, wider each time: two allocators in
            // lockstep stop colliding instead of racing for every address in turn.
            let skip = rand::random_range(0..1usize << attempt.min(5));
            after = std::iter::once(ip)
                .chain(self.ipam.candidates(Some(ip)))
                .nth(skip);
        }
        Err(RegistryError::Conflict(
            "concurrent Mesh IP allocations kept racing; try again".into(),
        ))
    }

    fn with_reservations<T>(
        &self,
        held: &mut Option<&mut Reservations>,
        f: impl FnOnce(&mut Reservations) -> T,
    ) -> T {
        match held {
            Some(r) => f(r),
            None => f(&mut self.lock()),
        }
    }

    /// Chooses the next address (after `after`, else after the last one chosen, else
    /// after the stored cursor) and holds it until [`Reservations::release`].
    fn reserve(
        &self,
        r: &mut Reservations,
        after: Option<Ipv4Addr>,
        claim: &Claim<'_>,
    ) -> R<Ipv4Addr> {
        if let Some(node) = claim.replica_of {
            let stored: HashSet<String> = self
                .replicas(node)?
                .into_iter()
                .map(|x| format!("replica/{node}/{}", x.replica_id))
                .collect();
            let writing = r
                .replicas
                .get(&node)
                .map_or(0, |w| w.difference(&stored).count());
            let known = stored.len() + writing;
            if known >= MAX_REPLICAS_PER_NODE {
                return Err(RegistryError::Limit(format!(
                    "node {node} already has {MAX_REPLICAS_PER_NODE} replicas (the limit)"
                )));
            }
        }
        let cursor = match after {
            Some(a) => Some(a),
            None if !r.in_flight.is_empty() => r.cursor,
            None => self.get("meta/ipam_cursor")?,
        };
        let ip = self.next_free(cursor, &r.in_flight)?;
        r.in_flight.insert(ip);
        r.cursor = Some(ip);
        if let Some(node) = claim.replica_of {
            r.replicas
                .entry(node)
                .or_default()
                .insert(claim.owner.to_owned());
        }
        Ok(ip)
    }

    /// Writes the address, the cursor and the record; `false` if a guard failed.
    fn write_allocation(
        &self,
        ip: Ipv4Addr,
        claim: &Claim<'_>,
        record: &impl Fn(Ipv4Addr) -> Vec<Op>,
    ) -> R<bool> {
        let address = format!("ipam/{ip}");
        let mut compares = claim.guards.to_vec();
        compares.push(Compare::Absent(address.clone()));
        let mut ops = vec![
            Op::put(address, claim.owner),
            Op::put("meta/ipam_cursor", json(&ip)),
        ];
        ops.extend(record(ip));
        Ok(self.store.txn(&compares, &ops)?.is_some())
    }

    /// The first address after `cursor` that is neither stored nor reserved.
    fn next_free(&self, cursor: Option<Ipv4Addr>, reserved: &HashSet<Ipv4Addr>) -> R<Ipv4Addr> {
        for ip in self.ipam.candidates(cursor).take(PROBES) {
            if !reserved.contains(&ip) && self.store.get(&format!("ipam/{ip}"))?.is_none() {
                return Ok(ip);
            }
        }
        let used: HashSet<String> = self
            .store
            .range("ipam/")?
            .into_iter()
            .map(|kv| kv.key["ipam/".len()..].to_owned())
            .collect();
        Ok(self.ipam.next_free(cursor, |ip| {
            reserved.contains(&ip) || used.contains(&ip.to_string())
        })?)
    }

    fn all_hold(&self, guards: &[Compare]) -> R<bool> {
        for g in guards {
            let holds = match g {
                Compare::Absent(k) => self.store.get(k)?.is_none(),
                Compare::ModRevision(k, rev) => {
                    self.store.get(k)?.is_some_and(|kv| kv.mod_revision == *rev)
                }
            };
            if !holds {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Reservations {
    fn release(&mut self, ip: Ipv4Addr, claim: &Claim<'_>) {
        self.in_flight.remove(&ip);
        if let Some(node) = claim.replica_of
            && let Some(w) = self.replicas.get_mut(&node)
        {
            w.remove(claim.owner);
            if w.is_empty() {
                self.replicas.remove(&node);
            }
        }
    }
}
