//! Behaviour every [`Store`] backend shares, checked on each of them (redb in its unit
//! tests, etcd against a real member).

use super::{Compare, Op, Store};

/// Revisions grow with every write; `range` returns a prefix in key order; a prefix
/// delete removes exactly that prefix.
pub fn revisions_and_range(s: &dyn Store) {
    let r1 = s.put("nodes/a", b"1").unwrap();
    let r2 = s.put("nodes/b", b"2").unwrap();
    s.put("other", b"x").unwrap();
    let r4 = s.put("nodes/a", b"3").unwrap();
    assert!(r1 < r2 && r2 < r4);
    assert_eq!(s.revision().unwrap(), r4);
    let a = s.get("nodes/a").unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.create_revision, a.mod_revision),
        (&b"3"[..], r1, r4)
    );
    let keys: Vec<_> = s
        .range("nodes/")
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["nodes/a", "nodes/b"]);
    s.txn(&[], &[Op::DeletePrefix("nodes/".into())]).unwrap();
    assert!(s.range("nodes/").unwrap().is_empty());
    assert!(s.get("other").unwrap().is_some());
}

/// A failed compare changes nothing and says so with `None`.
pub fn compares_guard_transactions(s: &dyn Store) {
    let absent = || [Compare::Absent("k".into())];
    assert!(s.txn(&absent(), &[Op::put("k", "v")]).unwrap().is_some());
    assert!(s.txn(&absent(), &[Op::put("k", "w")]).unwrap().is_none());
    let rev = s.get("k").unwrap().unwrap().mod_revision;
    let stale = [Compare::ModRevision("k".into(), rev + 9)];
    assert!(s.txn(&stale, &[Op::Delete("k".into())]).unwrap().is_none());
    assert_eq!(s.get("k").unwrap().unwrap().value, b"v");
    let current = [Compare::ModRevision("k".into(), rev)];
    assert!(
        s.txn(&current, &[Op::Delete("k".into())])
            .unwrap()
            .is_some()
    );
    assert!(s.get("k").unwrap().is_none());
}
