//! Reclaiming stale replicas. A node's replica ids are chosen by its agents and kept in
//! their state directories; a reinstalled host comes back under a new id, and the old
//! record would hold its Mesh IP, and one of the node's [`super::MAX_REPLICAS_PER_NODE`]
//! places, for ever. So every record carries `seen_at`: coordinators refresh it while
//! the replica is connected to them (a sweep every [`sweep_period`]) and when it
//! registers, and a sweep deletes a record, with its `ipam/` address, once it has not
//! been seen for the reclaim time (`--replica-reclaim-secs`).
//!
//! Every write is guarded by the record's revision, so a sweep and a registration of the
//! same replica cannot both win: either the registration's refresh lands first and the
//! delete fails, or the delete lands first and the registration allocates anew.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshgate_proto::Id;

use super::replicas::parse;
use super::{R, Registry};
use crate::store::{Compare, Op};

/// Seconds since the Unix epoch (the clock `seen_at` is in; cluster members share it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How often a coordinator sweeps for reclaim time `after`: often enough that a
/// connected replica is refreshed many times within it.
pub fn sweep_period(after: Duration) -> Duration {
    (after / 8).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// What a sweep does with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fresh enough.
    Keep,
    /// Refresh `seen_at` (connected here, or a record from before `seen_at` existed).
    Touch,
    /// Not seen for the reclaim time: delete it and free its address.
    Reclaim,
}

/// The verdict on a record last seen at `seen_at` (0: never recorded), at `now`, with
/// reclaim time `after` (all in seconds); `connected`: the replica is connected to
/// this coordinator.
pub fn verdict(seen_at: u64, connected: bool, now: u64, after: u64) -> Verdict {
    let age = now.saturating_sub(seen_at);
    if connected {
        // Refresh well before anyone could think it stale.
        if age >= (after / 4).max(1) {
            Verdict::Touch
        } else {
            Verdict::Keep
        }
    } else if seen_at == 0 {
        Verdict::Touch
    } else if age >= after {
        Verdict::Reclaim
    } else {
        Verdict::Keep
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Records refreshed.
    pub touched: usize,
    /// Records deleted with their addresses.
    pub reclaimed: usize,
}

impl Registry {
    /// Turn reclaiming on for this process's registrations (they refresh a record seen
    /// more than a quarter of `after` ago).
    pub fn set_replica_reclaim(&self, after: Duration) {
        self.touch_after
            .store((after.as_secs() / 4).max(1), Relaxed);
    }

    /// One sweep at `now` (Unix seconds) with reclaim time `after`; `connected` holds the
    /// (node, replica id) pairs connected to this coordinator. A record whose guarded
    /// write loses a race is left for the next sweep.
    pub fn sweep_replicas(
        &self,
        connected: &HashSet<(Id, String)>,
        now: u64,
        after: Duration,
    ) -> R<Swept> {
        let mut done = Swept::default();
        for kv in self.store.range("replicas/")? {
            let r = match parse(&kv) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a replica record");
                    continue;
                }
            };
            let here = connected.contains(&(r.node_id, r.replica_id.clone()));
            match verdict(r.seen_at, here, now, after.as_secs()) {
                Verdict::Keep => {}
                Verdict::Touch => done.touched += usize::from(self.touch(&kv, r, now)?),
                Verdict::Reclaim => {
                    let address = format!("ipam/{}", r.mesh_ip);
                    let owner = format!("replica/{}/{}", r.node_id, r.replica_id);
                    let mut ops = vec![Op::Delete(kv.key.clone())];
                    // The address goes too, unless it somehow belongs to someone else.
                    if self
                        .store
                        .get(&address)?
                        .is_some_and(|a| a.value == owner.as_bytes())
                    {
                        ops.push(Op::Delete(address));
                    }
                    let guard = [Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
                    if self.store.txn(&guard, &ops)?.is_some() {
                        tracing::info!(node = %r.node_id, replica = %r.replica_id, mesh_ip = %r.mesh_ip,
                            unseen_secs = now.saturating_sub(r.seen_at), "reclaimed a stale replica and its Mesh IP");
                        done.reclaimed += 1;
                    }
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Ipam;
    use crate::registry::ReplicaRecord;
    use crate::store::Store;
    use crate::store::redb::RedbStore;
    use std::sync::Arc;

    const AFTER: Duration = Duration::from_secs(100);

    fn registry(dir: &std::path::Path) -> (Arc<dyn Store>, Registry) {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("s.redb")).unwrap());
        let ipam = Ipam::new("100.96.0.0/24".parse().unwrap()).unwrap();
        (store.clone(), Registry::new(store, ipam, [7; 32]))
    }

    fn seen_at(store: &dyn Store, node: Id, replica: &str) -> Option<u64> {
        let kv = store.get(&format!("replicas/{node}/{replica}")).unwrap()?;
        Some(parse(&kv).unwrap().seen_at)
    }

    #[test]
    fn a_stale_replica_and_its_address_are_reclaimed_and_a_connected_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, reg) = registry(dir.path());
        let node = reg.create_node("gw", true).unwrap();
        let old = reg.replica_ip(node.id, "old").unwrap();
        reg.replica_ip(node.id, "live").unwrap();
        let connected = HashSet::from([(node.id, "live".to_owned())]);
        let now = unix_now();
        // Not yet stale: nothing happens.
        let swept = reg.sweep_replicas(&connected, now + 10, AFTER).unwrap();
        assert_eq!(swept, Swept::default());
        // Past the reclaim time: the unseen one goes with its address, the connected one
        // is refreshed.
        let later = now + AFTER.as_secs() + 1;
        let swept = reg.sweep_replicas(&connected, later, AFTER).unwrap();
        assert_eq!(
            swept,
            Swept {
                touched: 1,
                reclaimed: 1
            }
        );
        assert_eq!(seen_at(&*store, node.id, "old"), None);
        assert!(store.get(&format!("ipam/{old}")).unwrap().is_none());
        assert_eq!(seen_at(&*store, node.id, "live"), Some(later));
        let names: Vec<_> = reg
            .replicas(node.id)
            .unwrap()
            .into_iter()
            .map(|r| r.replica_id)
            .collect();
        assert_eq!(names, ["live"]);
    }

    #[test]
    fn a_registering_replica_refreshes_a_stale_record_so_the_sweep_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, reg) = registry(dir.path());
        reg.set_replica_reclaim(AFTER);
        let node = reg.create_node("gw", true).unwrap();
        let ip = reg.replica_ip(node.id, "r1").unwrap();
        // Make the record look a reclaim time old.
        let key = format!("replicas/{}/r1", node.id);
        let stale = ReplicaRecord {
            node_id: node.id,
            replica_id: "r1".into(),
            mesh_ip: ip,
            seen_at: unix_now() - AFTER.as_secs() - 5,
        };
        store
            .txn(&[], &[Op::put(key, serde_json::to_vec(&stale).unwrap())])
            .unwrap();
        assert_eq!(reg.replica_ip(node.id, "r1").unwrap(), ip, "same address");
        assert!(
            seen_at(&*store, node.id, "r1").unwrap() >= unix_now() - 1,
            "refreshed"
        );
        let swept = reg
            .sweep_replicas(&HashSet::new(), unix_now(), AFTER)
            .unwrap();
        assert_eq!(swept.reclaimed, 0);
        assert!(store.get(&format!("ipam/{ip}")).unwrap().is_some());
    }

    #[test]
    fn records_from_before_seen_at_start_their_clock_instead_of_going() {
        let dir = tempfile::tempdir().unwrap();
        let (store, reg) = registry(dir.path());
        let node = reg.create_node("gw", true).unwrap();
        let ip = reg.replica_ip(node.id, "r1").unwrap();
        let key = format!("replicas/{}/r1", node.id);
        let legacy = serde_json::json!({"node_id": node.id, "replica_id": "r1", "mesh_ip": ip});
        store.txn(&[], &[Op::put(key, legacy.to_string())]).unwrap();
        let now = unix_now();
        let swept = reg.sweep_replicas(&HashSet::new(), now, AFTER).unwrap();
        assert_eq!(
            swept,
            Swept {
                touched: 1,
                reclaimed: 0
            }
        );
        assert_eq!(seen_at(&*store, node.id, "r1"), Some(now));
    }

    #[test]
    fn verdicts() {
        let after = 100;
        // Connected replicas are refreshed once a quarter of the time has passed.
        assert_eq!(verdict(1000, true, 1010, after), Verdict::Keep);
        assert_eq!(verdict(1000, true, 1025, after), Verdict::Touch);
        assert_eq!(verdict(1000, true, 5000, after), Verdict::Touch);
        // Others are kept until the reclaim time has passed.
        assert_eq!(verdict(1000, false, 1099, after), Verdict::Keep);
        assert_eq!(verdict(1000, false, 1100, after), Verdict::Reclaim);
        // Records from before `seen_at` start their clock instead of going at once.
        assert_eq!(verdict(0, false, 5000, after), Verdict::Touch);
        // A clock that went back reclaims nothing.
        assert_eq!(verdict(5000, false, 1000, after), Verdict::Keep);
    }

    #[test]
    fn sweep_periods_stay_sane() {
        assert_eq!(sweep_period(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(
            sweep_period(Duration::from_secs(80)),
            Duration::from_secs(10)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(7 * 86_400)),
            Duration::from_secs(600)
        );
    }
}
