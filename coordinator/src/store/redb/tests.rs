//! The embedded store's own tests; the shared ones are in `store::conformance`.

use super::*;

fn open() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(&dir.path().join("store.redb")).unwrap();
    (dir, s)
}

#[test]
fn revisions_and_range() {
    let (_d, s) = open();
    crate::store::conformance::revisions_and_range(&s);
}

#[test]
fn compares_guard_transactions() {
    let (_d, s) = open();
    crate::store::conformance::compares_guard_transactions(&s);
}

#[test]
fn leases_delete_their_keys() {
    let (_d, s) = open();
    let l = s.lease_grant(Duration::ZERO).unwrap();
    s.txn(
        &[],
        &[Op::Put {
            key: "eph".into(),
            value: vec![1],
            lease: Some(l),
        }],
    )
    .unwrap();
    s.put("keep", b"1").unwrap();
    assert_eq!(s.expire_leases().unwrap(), 1);
    assert!(s.get("eph").unwrap().is_none());
    assert!(s.get("keep").unwrap().is_some());
    assert!(matches!(
        s.lease_keep_alive(l),
        Err(StoreError::UnknownLease(_))
    ));
}

#[tokio::test]
async fn watch_sees_prefix_changes() {
    let (_d, s) = open();
    let mut w = s.watch("routes/");
    s.put("nodes/x", b"1").unwrap();
    s.put("routes/1", b"r").unwrap();
    s.delete("routes/1").unwrap();
    assert!(matches!(w.next().await.unwrap(), WatchEvent::Put(kv) if kv.key == "routes/1"));
    assert!(matches!(w.next().await.unwrap(), WatchEvent::Delete { key, .. } if key == "routes/1"));
}

#[test]
fn concurrent_transactions_share_commits_and_keep_their_own_results() {
    let (_d, s) = open();
    let s = std::sync::Arc::new(s);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut revs = Vec::new();
                for i in 0..25 {
                    let key = format!("k/{t}/{i}");
                    let guard = [Compare::Absent(key.clone())];
                    revs.push(
                        s.txn(&guard, &[Op::put(key.clone(), b"v")])
                            .unwrap()
                            .unwrap(),
                    );
                    // The same guard again must fail: its own earlier write is seen.
                    assert_eq!(s.txn(&guard, &[Op::put(key, b"w")]).unwrap(), None);
                }
                revs
            })
        })
        .collect();
    let mut revs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), 200, "every write has its own revision");
    assert_eq!(s.range("k/").unwrap().len(), 200);
    assert!(s.range("k/").unwrap().iter().all(|kv| kv.value == b"v"));
    let commits = s.group.commits();
    assert!(
        commits < 200,
        "{commits} commits for 200 concurrent writes: nothing was grouped"
    );
}

#[test]
fn a_batch_applies_in_order_and_a_failed_guard_leaves_no_trace() {
    let (_d, s) = open();
    let jobs = [
        Job {
            compares: vec![Compare::Absent("a".into())],
            ops: vec![Op::put("a", b"1")],
        },
        // Sees the first job's write: its guard fails.
        Job {
            compares: vec![Compare::Absent("a".into())],
            ops: vec![Op::put("b", b"2")],
        },
        Job {
            compares: vec![],
            ops: vec![Op::Put {
                key: "c".into(),
                value: b"3".to_vec(),
                lease: Some(99),
            }],
        },
        Job {
            compares: vec![],
            ops: vec![Op::Delete("a".into())],
        },
    ];
    let out = s.commit_batch(&jobs);
    assert!(matches!(out[0], Ok(Some(_))));
    assert!(matches!(out[1], Ok(None)));
    assert!(matches!(out[2], Err(StoreError::UnknownLease(99))));
    assert!(matches!(out[3], Ok(Some(_))));
    assert!(s.get("a").unwrap().is_none());
    assert!(s.get("b").unwrap().is_none());
    assert!(s.get("c").unwrap().is_none());
    assert_eq!(s.group.commits(), 1);
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("store.redb");
    let rev = {
        let s = RedbStore::open(&p).unwrap();
        s.put("a", b"1").unwrap()
    };
    let s = RedbStore::open(&p).unwrap();
    assert_eq!(s.revision().unwrap(), rev);
    assert_eq!(s.get("a").unwrap().unwrap().value, b"1");
}
