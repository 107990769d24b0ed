//! Allocation with several allocators on one store (cluster members sharing etcd).

use std::net::Ipv4Addr;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use std::collections::HashSet;

use super::*;
use crate::ipam::IpamError;
use crate::store::redb::RedbStore;
use crate::store::{KeyValue, LeaseId, Watch};

/// A store where another allocator wins the next `races` transactions that write an
/// address: just before such a transaction, the address (and, for a replica, the
/// replica's record) is written by "someone else".
struct Racing {
    inner: RedbStore,
    races: StdMutex<usize>,
    /// A key deleted just before the next transaction.
    delete_first: StdMutex<Option<String>>,
}

impl Racing {
    fn race(&self, ops: &[Op]) {
        if let Some(key) = self.delete_first.lock().unwrap().take() {
            self.inner.delete(&key).unwrap();
        }
        let mut left = self.races.lock().unwrap();
        if *left == 0 {
            return;
        }
        *left -= 1;
        for op in ops {
            if let Op::Put { key, value, .. } = op
                && (key.starts_with("ipam/") || key.starts_with("replicas/"))
            {
                let theirs: Vec<u8> = if key.starts_with("ipam/") {
                    b"\"someone-else\"".to_vec()
                } else {
                    value.clone()
                };
                self.inner.put(key, &theirs).unwrap();
            }
        }
    }
}

impl Store for Racing {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key)
    }
    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.range(prefix)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>, StoreError> {
        self.race(ops);
        self.inner.txn(compares, ops)
    }
    fn revision(&self) -> Result<u64, StoreError> {
        self.inner.revision()
    }
    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.lease_grant(ttl)
    }
    fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.lease_keep_alive(lease)
    }
    fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.lease_revoke(lease)
    }
    fn expire_leases(&self) -> Result<usize, StoreError> {
        self.inner.expire_leases()
    }
    fn watch(&self, prefix: &str) -> Watch {
        self.inner.watch(prefix)
    }
}

fn racing(dir: &std::path::Path, races: usize) -> (Arc<Racing>, Registry) {
    let store = Arc::new(Racing {
        inner: RedbStore::open(&dir.join("store.redb")).unwrap(),
        races: StdMutex::new(races),
        delete_first: StdMutex::new(None),
    });
    let reg = Registry::new(
        store.clone(),
        Ipam::new("100.96.0.0/24".parse().unwrap()).unwrap(),
        [9; 32],
    );
    (store, reg)
}

fn owner(store: &dyn Store, ip: Ipv4Addr) -> String {
    let kv = store
        .get(&format!("ipam/{ip}"))
        .unwrap()
        .expect("allocated");
    String::from_utf8(kv.value).unwrap()
}

#[test]
fn a_device_never_gets_an_address_another_allocator_took() {
    let dir = tempfile::tempdir().unwrap();
    let (store, reg) = racing(dir.path(), 3);
    let dev = reg.create_device("laptop").unwrap();
    assert_eq!(owner(&*store, dev.mesh_ip), format!("device/{}", dev.id));
    assert_eq!(reg.device(dev.id).unwrap().mesh_ip, dev.mesh_ip);
    // The three addresses lost to the other allocator are theirs; this one comes after
    // them (each lost race skips a random stretch of at most 2^attempt addresses).
    let taken: Vec<_> = store.inner.range("ipam/").unwrap();
    assert_eq!(taken.len(), 4);
    assert!(
        dev.mesh_ip > Ipv4Addr::new(100, 96, 0, 3) && dev.mesh_ip <= Ipv4Addr::new(100, 96, 0, 10)
    );
}

#[test]
fn a_replica_registered_through_two_members_at_once_gets_one_address() {
    let dir = tempfile::tempdir().unwrap();
    let (store, reg) = racing(dir.path(), 0);
    let node = reg.create_node("gw", true).unwrap();
    *store.races.lock().unwrap() = 1;
    // The other member registers the same replica (same record, same address) just
    // before this one writes: this member must answer with that address, not a refusal.
    let ip = reg.replica_ip(node.id, "r1").unwrap();
    assert_eq!(reg.replicas(node.id).unwrap().len(), 1);
    assert_eq!(reg.replica_ip(node.id, "r1").unwrap(), ip);
}

#[test]
fn two_registries_on_one_store_never_hand_out_an_address_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let ipam = Ipam::new("100.96.0.0/24".parse().unwrap()).unwrap();
    let regs: Vec<Arc<Registry>> = (0..2)
        .map(|_| Arc::new(Registry::new(store.clone(), ipam, [9; 32])))
        .collect();
    let node = regs[0].create_node("gw", true).unwrap();
    let threads: Vec<_> = regs
        .iter()
        .enumerate()
        .map(|(i, reg)| {
            let reg = reg.clone();
            std::thread::spawn(move || {
                for k in 0..60 {
                    reg.create_device(&format!("d{i}-{k}")).unwrap();
                    if k < 8 {
                        reg.replica_ip(node.id, &format!("r{i}-{k}")).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let devices = regs[1].list_devices().unwrap();
    let replicas = regs[1].replicas(node.id).unwrap();
    assert_eq!((devices.len(), replicas.len()), (120, 16));
    let mut seen = HashSet::new();
    for d in &devices {
        assert!(seen.insert(d.mesh_ip), "{} handed out twice", d.mesh_ip);
        assert_eq!(owner(&*store, d.mesh_ip), format!("device/{}", d.id));
    }
    for r in &replicas {
        assert!(seen.insert(r.mesh_ip), "{} handed out twice", r.mesh_ip);
    }
    assert_eq!(store.range("ipam/").unwrap().len(), 136);
}

#[test]
fn a_full_range_past_the_probes_is_found_by_one_scan_and_exhaustion_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let ipam = Ipam::new("100.96.0.0/25".parse().unwrap()).unwrap();
    let reg = Registry::new(store.clone(), ipam, [9; 32]);
    // Take 100 addresses behind the allocator's back, leaving .101-.126 free; the
    // cursor at .0 means the first 100 probes all fail.
    for last in 1..=100u8 {
        store
            .put(&format!("ipam/100.96.0.{last}"), b"\"other\"")
            .unwrap();
    }
    let mut got = Vec::new();
    for k in 0..26 {
        got.push(
            reg.create_device(&format!("d{k}"))
                .unwrap()
                .mesh_ip
                .octets()[3],
        );
    }
    assert_eq!(got, (101..=126).collect::<Vec<u8>>());
    assert!(matches!(
        reg.create_device("one-too-many"),
        Err(RegistryError::Ipam(IpamError::Exhausted(_)))
    ));
}

#[test]
fn concurrent_registrations_never_exceed_the_replica_cap() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let ipam = Ipam::new("100.96.0.0/24".parse().unwrap()).unwrap();
    let reg = Arc::new(Registry::new(store.clone(), ipam, [9; 32]));
    let node = reg.create_node("gw", true).unwrap();
    // Twice the cap, all at once: the writes happen outside the mutex, the count may not.
    let threads: Vec<_> = (0..2 * MAX_REPLICAS_PER_NODE)
        .map(|k| {
            let reg = reg.clone();
            std::thread::spawn(move || reg.replica_ip(node.id, &format!("r{k}")))
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, MAX_REPLICAS_PER_NODE);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, RegistryError::Limit(_)))
    );
    assert_eq!(reg.replicas(node.id).unwrap().len(), MAX_REPLICAS_PER_NODE);
    assert_eq!(store.range("ipam/").unwrap().len(), MAX_REPLICAS_PER_NODE);
}

#[test]
fn a_node_deleted_while_its_replica_registers_gets_no_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (store, reg) = racing(dir.path(), 0);
    let node = reg.create_node("gw", true).unwrap();
    // The node is deleted after the registry read it, just before the replica's write.
    *store.delete_first.lock().unwrap() = Some(format!("nodes/{}", node.id));
    assert!(reg.replica_ip(node.id, "r1").is_err());
    assert!(store.range("replicas/").unwrap().is_empty());
    assert!(
        store.range("ipam/").unwrap().is_empty(),
        "an address leaked"
    );
}
