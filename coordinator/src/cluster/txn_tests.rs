//! The election's transactions against a real etcd (Debian's `etcd-server`, started on
//! loopback per test): each guard holds, and fails, as [`crate::election::quorum`] says.

use meshgate_proto::Id;

use super::*;
use crate::cluster::keys;
use crate::store::Store as _;
use crate::store::etcd::live_tests::TestEtcd;
use crate::store::etcd::{Etcd, EtcdStore};

const ROOT: &str = "/t/cluster/";
const NODE: Id = Id([5; 16]);

fn op(etcd: &Etcd, me: &str, op: ClusterOp) -> Option<bool> {
    let (client, me) = (etcd.client(), me.to_owned());
    etcd.block(async move { run(client, ROOT, &me, &op).await })
}

fn lapse(epoch: u64, active: &str, lease: u64) -> ClusterOp {
    ClusterOp::Lapse {
        node: NODE,
        epoch,
        active: active.into(),
        lease,
    }
}

fn promote(
    from: Option<(u64, &str)>,
    to: (u64, &str),
    members: &[(&str, u64)],
    joined: u64,
) -> ClusterOp {
    ClusterOp::Promote {
        node: NODE,
        from: from.map(|(e, a)| (e, a.to_owned())),
        to: (to.0, to.1.to_owned()),
        members: members.iter().map(|(m, l)| ((*m).to_owned(), *l)).collect(),
        joined,
    }
}

#[test]
fn the_guards_hold_and_fail_as_the_election_needs() {
    let e = TestEtcd::start();
    // The store only to wait until etcd answers, and to read what the transactions did.
    let s: EtcdStore = e.store(ROOT);
    let etcd = Etcd::connect(&[e.url()]).expect("a well-formed endpoint");
    let joined = s.put(keys::JOINED, b"c2").expect("etcd answers");

    // The first promotion needs no marks, only no record yet and `joined` unchanged.
    assert_eq!(
        op(&etcd, "c1", promote(None, (1, "a"), &[], joined - 1)),
        Some(false)
    );
    assert_eq!(
        op(&etcd, "c1", promote(None, (1, "a"), &[], joined)),
        Some(true)
    );
    assert_eq!(
        op(&etcd, "c1", promote(None, (1, "b"), &[], joined)),
        Some(false)
    );

    // Marks only while the record is (epoch, active).
    assert_eq!(op(&etcd, "c1", lapse(1, "b", 11)), Some(false));
    assert_eq!(op(&etcd, "c1", lapse(1, "a", 11)), Some(true));
    let c1 = s
        .get(&keys::mark(NODE, 1, "c1"))
        .unwrap()
        .expect("c1's mark");
    assert_eq!(c1.value, b"11");

    // A promotion needs every listed member's mark with its lease.
    let members = [("c1", 11), ("c2", 12)];
    let next = promote(Some((1, "a")), (2, "b"), &members, joined);
    assert_eq!(op(&etcd, "c1", next.clone()), Some(false), "c2 has no mark");
    assert_eq!(op(&etcd, "c2", lapse(1, "a", 99)), Some(true));
    assert_eq!(
        op(&etcd, "c1", next.clone()),
        Some(false),
        "c2's mark of another lease"
    );
    assert_eq!(op(&etcd, "c2", lapse(1, "a", 12)), Some(true));
    // A member that joined after the list was read voids it.
    let later = s.put(keys::JOINED, b"c3").unwrap();
    assert_eq!(op(&etcd, "c1", next), Some(false), "joined moved");
    let next = promote(Some((1, "a")), (2, "b"), &members, later);
    // A retraction takes c1's mark back: no promotion without it.
    let retract = ClusterOp::Retract {
        node: NODE,
        epoch: 1,
        active: "a".into(),
    };
    assert_eq!(op(&etcd, "c1", retract.clone()), Some(true));
    assert_eq!(op(&etcd, "c1", next.clone()), Some(false), "c1 retracted");
    assert_eq!(op(&etcd, "c1", lapse(1, "a", 11)), Some(true));
    assert_eq!(op(&etcd, "c1", next), Some(true));

    // The record moved on and the old epoch's marks are gone, so nothing of epoch 1 can
    // be written or retracted any more.
    let rec = s.get(&keys::elected(NODE)).unwrap().expect("the record");
    assert_eq!(rec.value, keys::record(2, "b").as_bytes());
    assert!(s.range(&keys::marks(NODE, 1)).unwrap().is_empty());
    assert_eq!(op(&etcd, "c2", lapse(1, "a", 12)), Some(false));
    assert_eq!(op(&etcd, "c1", retract), Some(false));
}
