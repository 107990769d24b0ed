//! Unit and property tests of the election state machine.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const LEASE: Duration = Duration::from_millis(250);
const OVERLAP: Duration = Duration::from_millis(100);

const CFG: Config = Config {
    lease: LEASE,
    overlap: OVERLAP,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn new() -> (Election, Instant) {
    (Election::new(CFG, 0), Instant::now())
}

fn promoted(actions: &[Action]) -> Option<(ConnId, u64)> {
    actions.iter().find_map(|a| match a {
        Action::Promoted { conn, epoch, .. } => Some((*conn, *epoch)),
        _ => None,
    })
}

#[test]
fn first_replica_is_active_second_is_standby() {
    let (mut e, t) = new();
    let a = e.handle(t, Event::Connected { conn: 1, lan: None });
    assert_eq!(promoted(&a), Some((1, 1)));
    assert!(a.contains(&Action::PersistEpoch(1)));
    assert!(
        !a.iter().any(|x| matches!(x, Action::Send { conn: 1, .. })),
        "welcome suffices"
    );
    e.handle(t, Event::Connected { conn: 2, lan: None });
    assert_eq!(e.role(1), Some(Role::Active));
    assert_eq!(e.role(2), Some(Role::Standby));
    assert_eq!(e.active(t), Some(1));
}

#[test]
fn heartbeats_renew_only_the_active_lease() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    e.handle(t, Event::Connected { conn: 2, lan: None });
    for i in 1..20u64 {
        let now = t + ms(50 * i);
        let a1 = e.handle(now, Event::Heartbeat { conn: 1, seq: i });
        assert!(a1.contains(&Action::Send {
            conn: 1,
            msg: Out::LeaseGrant {
                epoch: 1,
                valid_for: LEASE,
                seq: i
            }
        }));
        assert!(
            e.handle(now, Event::Heartbeat { conn: 2, seq: i })
                .is_empty()
        );
    }
    assert_eq!(e.active(t + ms(1000)), Some(1));
}

#[test]
fn promotion_waits_for_lease_expiry_after_disconnect() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    e.handle(t + ms(10), Event::Connected { conn: 2, lan: None });
    e.handle(t + ms(20), Event::Connected { conn: 3, lan: None });
    e.handle(t + ms(100), Event::Heartbeat { conn: 1, seq: 1 }); // lease to 350
    assert!(
        e.handle(t + ms(120), Event::Disconnected { conn: 1 })
            .is_empty()
    );
    for now in [200u64, 300, 349] {
        e.handle(t + ms(now), Event::Heartbeat { conn: 2, seq: now });
        e.handle(t + ms(now), Event::Heartbeat { conn: 3, seq: now });
        assert_eq!(
            promoted(&e.handle(t + ms(now), Event::Tick)),
            None,
            "at {now} ms"
        );
    }
    let a = e.handle(t + ms(360), Event::Tick);
    assert_eq!(promoted(&a), Some((2, 2)), "longest-connected standby wins");
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Promoted { after_expiry: Some(d), .. } if *d == ms(10)
    )));
    assert!(a.contains(&Action::Send {
        conn: 3,
        msg: Out::RoleChange {
            role: Role::Standby,
            epoch: 2,
            active: None
        }
    }));
}

#[test]
fn recovered_replica_rejoins_as_standby() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    e.handle(t, Event::Connected { conn: 2, lan: None });
    e.handle(t + ms(1), Event::Disconnected { conn: 1 });
    e.handle(t + ms(200), Event::Heartbeat { conn: 2, seq: 1 });
    assert_eq!(promoted(&e.handle(t + ms(260), Event::Tick)), Some((2, 2)));
    e.handle(t + ms(300), Event::Connected { conn: 3, lan: None });
    assert_eq!(e.role(3), Some(Role::Standby));
    assert_eq!(e.active(t + ms(300)), Some(2));
}

#[test]
fn missed_heartbeats_depose_a_connected_active() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    e.handle(t, Event::Connected { conn: 2, lan: None });
    e.handle(t + ms(200), Event::Heartbeat { conn: 2, seq: 1 });
    let a = e.handle(t + ms(250), Event::Tick);
    assert_eq!(promoted(&a), Some((2, 2)));
    assert!(a.contains(&Action::Send {
        conn: 1,
        msg: Out::RoleChange {
            role: Role::Standby,
            epoch: 2,
            active: None
        }
    }));
    // Its late heartbeat does not win it back and gets no grant.
    assert!(
        e.handle(t + ms(260), Event::Heartbeat { conn: 1, seq: 9 })
            .is_empty()
    );
}

#[test]
fn lone_replica_returns_after_silence_with_new_epoch() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    let a = e.handle(t + ms(400), Event::Heartbeat { conn: 1, seq: 5 });
    assert_eq!(promoted(&a), Some((1, 2)));
}

fn lan_of(last: u8) -> LanInfo {
    LanInfo {
        ip: [192, 168, 50, last].into(),
        mac: [2, 0, 0, 0, 0, last],
    }
}

/// Heartbeats from every one of `conns` at `at`, returning all actions.
fn beat(e: &mut Election, at: Instant, conns: &[ConnId]) -> Vec<Action> {
    conns
        .iter()
        .flat_map(|&conn| e.handle(at, Event::Heartbeat { conn, seq: 0 }))
        .collect()
}

fn sent_to(actions: &[Action], to: ConnId) -> Vec<Out> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn, msg } if *conn == to => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

/// What a drained replica hears when fenced; `HandoverDone` follows when its lease lapses.
fn fenced(epoch: u64, active: Option<LanInfo>) -> Vec<Out> {
    vec![Out::RoleChange {
        role: Role::Fenced,
        epoch,
        active,
    }]
}

#[test]
fn drain_with_standby_promotes_first_and_fences_after_overlap() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    let lan = Some(lan_of(3));
    e.handle(t, Event::Connected { conn: 2, lan });
    beat(&mut e, t + ms(50), &[1, 2]); // lease to 300
    let a = e.handle(t + ms(60), Event::HandoverRequested { conn: 1 });
    let p = a.iter().find(|x| matches!(x, Action::Promoted { .. }));
    assert_eq!(
        p,
        Some(&Action::Promoted {
            conn: 2,
            epoch: 2,
            after_expiry: None
        }),
        "promoted at once, while the old lease still runs"
    );
    assert!(a.contains(&Action::PersistEpoch(2)));
    let role = Out::RoleChange {
        role: Role::Active,
        epoch: 2,
        active: lan,
    };
    // The successor may forward at once: a grant for the heartbeat it sent before.
    let grant = Out::LeaseGrant {
        epoch: 2,
        valid_for: LEASE,
        seq: 0,
    };
    assert_eq!(sent_to(&a, 2), [role, grant]);
    assert!(
        sent_to(&a, 1).is_empty(),
        "the draining one hears nothing yet"
    );
    let now = t + ms(60);
    assert_eq!(e.active(now), Some(2));
    assert_eq!(e.forwarder(now), Some(2), "traffic goes to the successor");
    assert_eq!(e.draining(), Some(1));
    assert!(e.may_send(1, now) && e.may_send(2, now));
    assert_eq!(e.role(1), Some(Role::Active), "as its agent was told");

    // During the overlap the draining replica is still renewed, in its own epoch.
    let a = e.handle(t + ms(100), Event::Heartbeat { conn: 1, seq: 7 });
    let grant = Out::LeaseGrant {
        epoch: 1,
        valid_for: LEASE,
        seq: 7,
    };
    assert_eq!(sent_to(&a, 1), [grant]);
    beat(&mut e, t + ms(100), &[2]);
    assert!(e.handle(t + ms(159), Event::Tick).is_empty());

    // Overlap (100 ms from the promotion) over: fenced, no longer renewed; what it sent
    // before hearing so is still relayed until its lease (renewed at 100) lapses.
    let a = e.handle(t + ms(160), Event::Tick);
    assert_eq!(sent_to(&a, 1), fenced(2, lan));
    assert_eq!(e.draining(), None);
    assert!(e.may_send(1, t + ms(160)));
    assert!(
        e.handle(t + ms(170), Event::Heartbeat { conn: 1, seq: 8 })
            .is_empty()
    );
    assert!(e.handle(t + ms(349), Event::Tick).is_empty());
    let a = e.handle(t + ms(350), Event::Tick);
    assert_eq!(sent_to(&a, 1), [Out::HandoverDone { epoch: 2 }]);
    assert!(!e.may_send(1, t + ms(350)));
    // A fenced replica is never promoted again, even as the last one standing.
    e.handle(t + ms(360), Event::Disconnected { conn: 2 });
    assert_eq!(
        promoted(&e.handle(t + ms(900), Event::Heartbeat { conn: 1, seq: 9 })),
        None
    );
}

#[test]
fn drain_without_standby_changes_nothing_until_one_appears() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    let a = e.handle(t + ms(10), Event::HandoverRequested { conn: 1 });
    assert!(a.is_empty(), "{a:?}");
    let a = e.handle(t + ms(50), Event::Heartbeat { conn: 1, seq: 1 });
    assert!(matches!(
        a[..],
        [Action::Send {
            msg: Out::LeaseGrant { epoch: 1, .. },
            ..
        }]
    ));
    assert_eq!(e.active(t + ms(50)), Some(1));
    assert_eq!(e.draining(), None);
    // The request is remembered: a standby that shows up takes over at once.
    let a = e.handle(t + ms(60), Event::Connected { conn: 2, lan: None });
    assert_eq!(promoted(&a), Some((2, 2)));
    assert!(
        sent_to(&a, 2).is_empty(),
        "the Welcome carries its role: {a:?}"
    );
    assert_eq!(e.role(2), Some(Role::Active));
    assert_eq!(e.draining(), Some(1));
    beat(&mut e, t + ms(100), &[1, 2]);
    assert_eq!(
        sent_to(&e.handle(t + ms(160), Event::Tick), 1),
        fenced(2, None)
    );
}

#[test]
fn draining_replica_dying_during_overlap_leaves_the_successor() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    e.handle(t, Event::Connected { conn: 2, lan: None });
    beat(&mut e, t + ms(50), &[1, 2]);
    e.handle(t + ms(60), Event::HandoverRequested { conn: 1 });
    let a = e.handle(t + ms(80), Event::Disconnected { conn: 1 });
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(e.draining(), None);
    for i in 1..10 {
        let now = t + ms(80 + 50 * i);
        let a = beat(&mut e, now, &[2]);
        assert!(promoted(&a).is_none());
        assert_eq!(e.active(now), Some(2));
    }
}

#[test]
fn successor_dying_during_overlap_keeps_the_draining_one_serving() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    e.handle(t, Event::Connected { conn: 2, lan: None });
    beat(&mut e, t + ms(50), &[1, 2]);
    e.handle(t + ms(60), Event::HandoverRequested { conn: 1 }); // 2's lease to 310
    e.handle(t + ms(70), Event::Disconnected { conn: 2 });
    assert_eq!(e.forwarder(t + ms(70)), Some(1), "relay falls back to it");
    // Past the overlap: not fenced, still renewed in its old epoch.
    for now in [100u64, 150, 200, 250, 300] {
        let a = beat(&mut e, t + ms(now), &[1]);
        assert!(
            matches!(sent_to(&a, 1)[..], [Out::LeaseGrant { epoch: 1, .. }]),
            "at {now}: {a:?}"
        );
        assert_eq!(e.draining(), Some(1));
    }
    // The strict rule for the lost successor; then the draining one serves on.
    assert_eq!(promoted(&e.handle(t + ms(309), Event::Tick)), None);
    let a = e.handle(t + ms(310), Event::Tick);
    assert!(a.contains(&Action::LeaseExpired { conn: 2, epoch: 2 }));
    assert_eq!(promoted(&a), Some((1, 3)));
    let role = Out::RoleChange {
        role: Role::Active,
        epoch: 3,
        active: None,
    };
    let grant = Out::LeaseGrant {
        epoch: 3,
        valid_for: LEASE,
        seq: 0,
    };
    assert_eq!(sent_to(&a, 1), [role, grant]);
    assert_eq!(e.draining(), None);
    let a = e.handle(t + ms(320), Event::Heartbeat { conn: 1, seq: 1 });
    assert!(matches!(
        sent_to(&a, 1)[..],
        [Out::LeaseGrant { epoch: 3, .. }]
    ));
    // Its request still stands: a new standby takes over.
    let a = e.handle(t + ms(330), Event::Connected { conn: 4, lan: None });
    assert_eq!(promoted(&a), Some((4, 4)));
    assert_eq!(e.draining(), Some(1));
}

#[test]
fn successor_dying_during_overlap_hands_on_to_the_next_standby() {
    let (mut e, t) = new();
    for conn in 1..=3 {
        e.handle(t + ms(conn), Event::Connected { conn, lan: None });
    }
    beat(&mut e, t + ms(50), &[1, 2, 3]);
    assert_eq!(
        promoted(&e.handle(t + ms(60), Event::HandoverRequested { conn: 1 })),
        Some((2, 2))
    );
    e.handle(t + ms(70), Event::Disconnected { conn: 2 });
    for now in [100u64, 150, 200, 250, 300] {
        beat(&mut e, t + ms(now), &[1, 3]);
    }
    let a = e.handle(t + ms(310), Event::Tick);
    assert_eq!(promoted(&a), Some((3, 3)));
    assert!(sent_to(&a, 1).is_empty(), "still draining: {a:?}");
    assert_eq!(e.draining(), Some(1));
    // A fresh overlap from the new promotion.
    beat(&mut e, t + ms(350), &[1, 3]);
    assert!(sent_to(&e.handle(t + ms(409), Event::Tick), 1).is_empty());
    let a = e.handle(t + ms(410), Event::Tick);
    assert_eq!(sent_to(&a, 1), fenced(3, None));
}

#[test]
fn second_drain_request_waits_for_the_first() {
    let (mut e, t) = new();
    for conn in 1..=3 {
        e.handle(t + ms(conn), Event::Connected { conn, lan: None });
    }
    beat(&mut e, t + ms(50), &[1, 2, 3]);
    assert_eq!(
        promoted(&e.handle(t + ms(60), Event::HandoverRequested { conn: 1 })),
        Some((2, 2))
    );
    // The draining one asking again changes nothing.
    assert!(
        e.handle(t + ms(61), Event::HandoverRequested { conn: 1 })
            .is_empty()
    );
    // The successor asks too: deferred until the first handover ends.
    assert!(
        e.handle(t + ms(80), Event::HandoverRequested { conn: 2 })
            .is_empty()
    );
    beat(&mut e, t + ms(100), &[1, 2, 3]);
    beat(&mut e, t + ms(150), &[1, 2, 3]);
    let a = e.handle(t + ms(160), Event::Tick);
    assert_eq!(sent_to(&a, 1), fenced(2, None));
    assert_eq!(
        promoted(&a),
        None,
        "not while the first one's sends are relayed"
    );
    for now in [200u64, 250, 300, 350] {
        beat(&mut e, t + ms(now), &[2, 3]);
    }
    // The first one's lease (renewed at 150) lapses: its handover is done; the second
    // one's starts.
    let a = e.handle(t + ms(400), Event::Tick);
    assert_eq!(sent_to(&a, 1)[0], Out::HandoverDone { epoch: 2 });
    assert_eq!(promoted(&a), Some((3, 3)), "then the second handover");
    assert_eq!(e.draining(), Some(2));
    beat(&mut e, t + ms(450), &[2, 3]);
    let a = e.handle(t + ms(500), Event::Tick);
    assert_eq!(sent_to(&a, 2), fenced(3, None));
    assert_eq!(e.active(t + ms(500)), Some(3));
}

#[test]
fn link_down_standby_is_fenced() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    e.handle(t, Event::Connected { conn: 2, lan: None });
    let a = e.handle(t + ms(10), Event::HandoverRequested { conn: 2 });
    assert!(matches!(
        sent_to(&a, 2)[..],
        [Out::RoleChange {
            role: Role::Fenced,
            ..
        }]
    ));
    // It is no successor for a later drain.
    assert!(
        e.handle(t + ms(20), Event::HandoverRequested { conn: 1 })
            .is_empty()
    );
}

#[test]
fn persisted_epoch_resumes() {
    let mut e = Election::new(CFG, 41);
    let a = e.handle(Instant::now(), Event::Connected { conn: 7, lan: None });
    assert_eq!(promoted(&a), Some((7, 42)));
}

#[derive(Debug, Clone)]
enum Op {
    Connect,
    Heartbeat(usize),
    Disconnect(usize),
    Handover(usize),
    Tick,
}

fn op() -> impl Strategy<Value = (u64, Op)> {
    let op = prop_oneof![
        2 => Just(Op::Connect),
        8 => any::<usize>().prop_map(Op::Heartbeat),
        2 => any::<usize>().prop_map(Op::Disconnect),
        1 => any::<usize>().prop_map(Op::Handover),
        4 => Just(Op::Tick),
    ];
    (0u64..120, op)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    /// Safety and liveness over random event sequences. "Rights" are what the machine
    /// has granted a replica (a promotion or a lease grant, valid for one lease, ended
    /// early only by a RoleChange that is not `Active`):
    /// * at a promotion, no other replica holds rights, except one that asked for
    ///   handover (the draining one): never two actives with valid leases otherwise;
    /// * two replicas hold rights only during a handover: the draining one asked, and
    ///   it is fenced at the first event after the overlap, unless the successor is no
    ///   longer healthy or the draining one is gone (its rights then lapse on their own);
    /// * epochs only grow, and every grant carries the epoch its receiver was promoted in;
    /// * whenever the lease has run out and a healthy replica exists, there is an active
    ///   (so an active appears within one lease of losing the old one);
    /// * no lease reaches further than one lease length into the future.
    #[test]
    fn invariants(ops in proptest::collection::vec(op(), 1..120)) {
        let (mut e, t0) = new();
        let mut now = t0;
        let mut next_conn: ConnId = 0;
        let mut conns: Vec<ConnId> = Vec::new();
        // conn -> (rights until, epoch it was promoted in)
        let mut rights: HashMap<ConnId, (Instant, u64)> = HashMap::new();
        let mut asked: HashSet<ConnId> = HashSet::new();
        // (draining, successor, promoted at) of the latest promotion during a handover.
        let mut overlap: Option<(ConnId, ConnId, Instant)> = None;
        let mut last_epoch = 0;
        for (seq, (dt, op)) in (1u64..).zip(ops) {
            now += Duration::from_millis(dt);
            let pick = |i: usize| (!conns.is_empty()).then(|| conns[i % conns.len()]);
            // A request counts once its sender holds rights, which a promotion applied
            // in the same call (time first) may only give it below.
            let mut requester = None;
            let event = match op {
                Op::Connect => {
                    next_conn += 1;
                    conns.push(next_conn);
                    Event::Connected { conn: next_conn, lan: None }
                }
                Op::Heartbeat(i) => match pick(i) {
                    Some(conn) => Event::Heartbeat { conn, seq },
                    None => Event::Tick,
                },
                Op::Disconnect(i) => match pick(i) {
                    Some(conn) => {
                        conns.retain(|c| *c != conn);
                        Event::Disconnected { conn }
                    }
                    None => Event::Tick,
                },
                Op::Handover(i) => match pick(i) {
                    Some(conn) => {
                        requester = Some(conn);
                        Event::HandoverRequested { conn }
                    }
                    None => Event::Tick,
                },
                Op::Tick => Event::Tick,
            };
            for a in e.handle(now, event) {
                if let Some(r) = requester
                    && rights.get(&r).is_some_and(|(u, _)| now < *u)
                {
                    asked.insert(r);
                }
                match a {
                    Action::Promoted { conn, epoch, .. } => {
                        let others: Vec<ConnId> = rights.iter()
                            .filter(|(c, (until, _))| **c != conn && now < *until)
                            .map(|(c, _)| *c)
                            .collect();
                        prop_assert!(others.len() <= 1, "promoted {conn} while {others:?} hold leases");
                        if let Some(&other) = others.first() {
                            prop_assert!(asked.contains(&other),
                                "promoted {conn} while {other}, which did not ask, holds a lease");
                            overlap = Some((other, conn, now));
                        }
                        prop_assert!(epoch > last_epoch, "epoch did not grow");
                        last_epoch = epoch;
                        rights.insert(conn, (now + LEASE, epoch));
                    }
                    Action::Send { conn, msg: Out::LeaseGrant { epoch, .. } } => {
                        let held = rights.get(&conn).map(|(_, e)| *e);
                        prop_assert_eq!(Some(epoch), held, "grant in a foreign epoch");
                        prop_assert!(epoch <= last_epoch);
                        rights.insert(conn, (now + LEASE, epoch));
                    }
                    Action::Send { conn, msg: Out::RoleChange { role, epoch, .. } } => {
                        prop_assert!(epoch <= last_epoch.max(e.epoch()));
                        if role != Role::Active {
                            rights.remove(&conn);
                            asked.remove(&conn);
                        }
                    }
                    Action::PersistEpoch(epoch) => prop_assert!(epoch <= last_epoch.max(e.epoch())),
                    _ => {}
                }
            }
            if let Some(r) = requester
                && rights.get(&r).is_some_and(|(u, _)| now < *u)
            {
                asked.insert(r);
            }
            prop_assert!(e.epoch() >= last_epoch);
            let lease_valid = e.lease_expiry().is_some_and(|x| now < x);
            let healthy = conns.iter().any(|c| e.is_healthy(*c, now));
            prop_assert!(lease_valid || !healthy || e.active(now).is_some(),
                "healthy replica but no active and no lease");
            if let Some(x) = e.lease_expiry() {
                prop_assert!(x <= now + LEASE);
            }
            let valid: Vec<ConnId> = rights.iter()
                .filter(|(_, (until, _))| now < *until)
                .map(|(c, _)| *c)
                .collect();
            prop_assert!(valid.len() <= 2, "{valid:?} all hold leases");
            if valid.len() == 2 {
                let (d, s, since) = overlap.expect("two leases without a handover");
                prop_assert!(valid.contains(&d) && valid.contains(&s), "{valid:?} vs {d}/{s}");
                prop_assert!(asked.contains(&d));
                let bounded = now < since + OVERLAP
                    || !e.is_healthy(s, now)
                    || !conns.contains(&d);
                prop_assert!(bounded, "draining {d} not fenced after the overlap");
            }
            let actives = e.replicas().filter(|(_, r)| *r == Role::Active).count();
            prop_assert!(actives <= 1 + usize::from(e.draining().is_some()));
            prop_assert!(e.draining() != e.active(now) || e.draining().is_none());
        }
    }
}
