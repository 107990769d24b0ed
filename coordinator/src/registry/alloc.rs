//! Mesh IP allocation against the store, safe with several allocators on one store (the
//! members of a coordinator cluster share etcd; the registry's mutex only orders one
//! process).
//!
//! An allocation reads no more than it must: it probes the addresses after the cursor one
//! key at a time (the cursor moves forward, so those are nearly always free) and scans
//! `ipam/` only when [`PROBES`] in a row are taken. The address, the cursor and the
//! owner's record are written in one transaction guarded by the address being absent;
//! a lost race moves on to the next address.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use super::{R, Registry, RegistryError, json};
use crate::store::{Compare, Op};

/// Addresses probed one by one after the cursor before one scan of every allocation.
const PROBES: usize = 32;
/// Allocations lost to another allocator before giving up.
const ATTEMPTS: usize = 8;

/// How a guarded allocation ended.
pub(super) enum Allocated {
    /// The address was allocated and the owner's record written with it.
    New(Ipv4Addr),
    /// One of the caller's own guards failed: nothing was written.
    Guarded,
}

impl Registry {
    /// Allocates a Mesh IP for `owner` and writes `record(ip)` with it, in one transaction
    /// that also requires every one of `guards`.
    pub(super) fn allocate_with(
        &self,
        owner: &str,
        guards: &[Compare],
        record: impl Fn(Ipv4Addr) -> Vec<Op>,
    ) -> R<Allocated> {
        let mut after: Option<Ipv4Addr> = self.get("meta/ipam_cursor")?;
        for _ in 0..ATTEMPTS {
            let ip = self.next_free(after)?;
            let address = format!("ipam/{ip}");
            let mut compares = guards.to_vec();
            compares.push(Compare::Absent(address.clone()));
            let mut ops = vec![
                Op::put(address, owner),
                Op::put("meta/ipam_cursor", json(&ip)),
            ];
            ops.extend(record(ip));
            if self.store.txn(&compares, &ops)?.is_some() {
                return Ok(Allocated::New(ip));
            }
            if !self.all_hold(guards)? {
                return Ok(Allocated::Guarded);
            }
            after = Some(ip); // another allocator took it
        }
        Err(RegistryError::Conflict(
            "concurrent Mesh IP allocations kept racing; try again".into(),
        ))
    }

    /// The first free address after `cursor`.
    fn next_free(&self, cursor: Option<Ipv4Addr>) -> R<Ipv4Addr> {
        for ip in self.ipam.candidates(cursor).take(PROBES) {
            if self.store.get(&format!("ipam/{ip}"))?.is_none() {
                return Ok(ip);
            }
        }
        let used: HashSet<String> = self
            .store
            .range("ipam/")?
            .into_iter()
            .map(|kv| kv.key["ipam/".len()..].to_owned())
            .collect();
        Ok(self
            .ipam
            .next_free(cursor, |ip| used.contains(&ip.to_string()))?)
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
