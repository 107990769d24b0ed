//! Unit tests of one node's election on a cluster member.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::election::quorum::ClusterEvent;

const LEASE: Duration = Duration::from_millis(250);
const NODE: Id = Id([7; 16]);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A registered, caught-up member `me` among `live` (name → lease), deciding or not.
fn member(t: Instant, me: &str, live: &[(&str, u64)], decider: bool) -> Quorum {
    let mut q = Quorum::new(me.into(), t, LEASE);
    let lease = live.iter().find(|(m, _)| *m == me).map_or(1, |(_, l)| *l);
    q.apply(&ClusterEvent::Registered {
        lease,
        revision: 5,
        sent_at: t,
    });
    q.apply(&ClusterEvent::Caught { revision: 5 });
    let live: BTreeMap<String, u64> = live.iter().map(|(m, l)| ((*m).into(), *l)).collect();
    q.apply(&ClusterEvent::Members { live, joined: 4 });
    q.apply(&ClusterEvent::Decider(decider));
    q
}

fn grants(actions: &[Action]) -> Vec<(ConnId, u64, Duration)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                conn,
                msg: Out::LeaseGrant {
                    epoch, valid_for, ..
                },
            } => Some((*conn, *epoch, *valid_for)),
            _ => None,
        })
        .collect()
}

fn ops(actions: &[Action]) -> Vec<ClusterOp> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Store(op) => Some(op.clone()),
            _ => None,
        })
        .collect()
}

/// Node with replicas "a" (conn 1, recorded active in epoch 3) and "b" (conn 2).
fn node(t: Instant, q: &Quorum) -> Shared {
    let mut s = Shared::new(NODE, LEASE, t);
    s.connected(t, q, 1, "a".into(), None, 0);
    s.connected(t, q, 2, "b".into(), None, 0);
    s.elected(t, q, 3, "a".into());
    s
}

#[test]
fn grants_the_recorded_active_then_marks_and_retracts() {
    let t = Instant::now();
    let q = member(t, "c1", &[("c1", 11)], false);
    let mut s = node(t, &q);
    let a = s.handle(t + ms(50), &q, Event::Heartbeat { conn: 1, seq: 1 });
    assert_eq!(grants(&a), vec![(1, 3, LEASE)]);
    assert!(grants(&s.handle(t + ms(60), &q, Event::Heartbeat { conn: 2, seq: 1 })).is_empty());
    // Past the hold and this member's expiry: it stops and writes its mark.
    let late = t + ms(400);
    let a = s.handle(late, &q, Event::Tick);
    let lapse = ClusterOp::Lapse {
        node: NODE,
        epoch: 3,
        active: "a".into(),
        lease: 11,
    };
    assert_eq!(ops(&a), vec![lapse.clone()]);
    s.done(late, &q, lapse, Some(true));
    // Heard again: no grant until the retraction committed.
    let a = s.handle(late + ms(10), &q, Event::Heartbeat { conn: 1, seq: 2 });
    let retract = ClusterOp::Retract {
        node: NODE,
        epoch: 3,
        active: "a".into(),
    };
    assert_eq!(ops(&a), vec![retract.clone()]);
    assert!(grants(&a).is_empty());
    let a = s.done(late + ms(20), &q, retract, Some(true));
    assert_eq!(
        grants(&a),
        vec![(1, 3, LEASE)],
        "the last heartbeat is granted"
    );
}

#[test]
fn no_grant_before_registration_catches_up_and_grants_end_at_the_fence() {
    let t = Instant::now();
    let mut q = Quorum::new("c1".into(), t, LEASE);
    let mut s = node(t, &q);
    assert!(grants(&s.handle(t, &q, Event::Heartbeat { conn: 1, seq: 1 })).is_empty());
    q.apply(&ClusterEvent::Registered {
        lease: 1,
        revision: 9,
        sent_at: t,
    });
    assert!(q.grant_until(t).is_none(), "watch not caught up yet");
    q.apply(&ClusterEvent::Caught { revision: 9 });
    let fence = t + q.timings.member_ttl - q.timings.guard;
    let near = fence - ms(100);
    let a = s.handle(near, &q, Event::Heartbeat { conn: 1, seq: 2 });
    assert_eq!(grants(&a), vec![(1, 3, ms(100))], "cut to end at the fence");
    assert!(grants(&s.handle(fence, &q, Event::Heartbeat { conn: 1, seq: 3 })).is_empty());
}

#[test]
fn the_decider_promotes_only_with_every_live_members_mark() {
    let t = Instant::now();
    let q = member(t, "c1", &[("c1", 11), ("c2", 12)], true);
    let mut s = node(t, &q);
    let late = t + ms(400);
    let lapse = ops(&s.handle(late, &q, Event::Heartbeat { conn: 2, seq: 9 })).remove(0);
    let a = s.done(late, &q, lapse, Some(true));
    assert!(ops(&a).is_empty(), "c2 has not marked");
    s.mark_seen(3, "c2".into(), Some(99));
    assert!(
        ops(&s.handle(late, &q, Event::Tick)).is_empty(),
        "a mark of another run"
    );
    s.mark_seen(3, "c2".into(), Some(12));
    let a = s.handle(late + ms(1), &q, Event::Tick);
    let promote = ClusterOp::Promote {
        node: NODE,
        from: Some((3, "a".into())),
        to: (4, "b".into()),
        members: vec![("c1".into(), 11), ("c2".into(), 12)],
        joined: 4,
    };
    assert_eq!(ops(&a), vec![promote.clone()]);
    let a = s.done(late + ms(5), &q, promote, Some(true));
    assert_eq!(
        grants(&a),
        vec![(2, 4, LEASE)],
        "the winner forwards at once"
    );
    assert_eq!((s.epoch(), s.active()), (4, Some(2)));
}

#[test]
fn a_restarted_member_marks_only_after_its_hold() {
    let t = Instant::now();
    let mut q = member(t, "c1", &[("c1", 11)], false);
    q.hold_until = t + ms(1000);
    let mut s = node(t, &q);
    assert!(ops(&s.handle(t + ms(500), &q, Event::Tick)).is_empty());
    assert_eq!(ops(&s.handle(t + ms(1000), &q, Event::Tick)).len(), 1);
}

#[test]
fn a_mark_of_an_earlier_registration_is_written_again_under_the_new_lease() {
    let t = Instant::now();
    let mut q = member(t, "c1", &[("c1", 11), ("c2", 12)], false);
    let mut s = node(t, &q);
    let late = t + ms(400);
    let lapse = ops(&s.handle(late, &q, Event::Tick)).remove(0);
    assert!(ops(&s.done(late, &q, lapse, Some(true))).is_empty());
    // The member lost its registration and registered again: the decider now waits for
    // a mark carrying lease 21.
    q.apply(&ClusterEvent::Lost);
    q.apply(&ClusterEvent::Registered {
        lease: 21,
        revision: 8,
        sent_at: late,
    });
    q.apply(&ClusterEvent::Caught { revision: 8 });
    let a = s.handle(late + ms(10), &q, Event::Tick);
    let again = ClusterOp::Lapse {
        node: NODE,
        epoch: 3,
        active: "a".into(),
        lease: 21,
    };
    assert_eq!(ops(&a), vec![again.clone()]);
    assert!(grants(&a).is_empty());
    s.done(late + ms(20), &q, again, Some(true));
    assert!(
        ops(&s.handle(late + ms(30), &q, Event::Tick)).is_empty(),
        "written once under the live lease"
    );
}

#[test]
fn a_promotion_is_reported_when_the_watch_shows_it_before_the_answer() {
    let t = Instant::now();
    let q = member(t, "c1", &[("c1", 11)], true);
    let mut s = node(t, &q);
    let late = t + ms(400);
    let lapse = ops(&s.handle(late, &q, Event::Heartbeat { conn: 2, seq: 9 })).remove(0);
    let promote = ops(&s.done(late, &q, lapse, Some(true))).remove(0);
    let a = s.elected(late + ms(2), &q, 4, "b".into());
    assert_eq!(grants(&a), vec![(2, 4, LEASE)]);
    let a = s.done(late + ms(3), &q, promote, Some(true));
    let promoted: Vec<_> = a
        .iter()
        .filter(|x| {
            matches!(
                x,
                Action::Promoted {
                    conn: 2,
                    epoch: 4,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(promoted.len(), 1, "{a:?}");
    assert!(grants(&a).is_empty(), "adopted once");
}
