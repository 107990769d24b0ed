//! Unit and property tests of the election state machine.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const LEASE: Duration = Duration::from_millis(250);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn new() -> (Election, Instant) {
    (Election::new(Config { lease: LEASE }, 0), Instant::now())
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

#[test]
fn drain_promotes_successor_then_fences() {
    let (mut e, t) = new();
    let lan = LanInfo {
        ip: [192, 168, 50, 3].into(),
        mac: [2, 0, 0, 0, 0, 3],
    };
    e.handle(t, Event::Connected { conn: 1, lan: None });
    e.handle(
        t,
        Event::Connected {
            conn: 2,
            lan: Some(lan),
        },
    );
    e.handle(t + ms(50), Event::Heartbeat { conn: 1, seq: 1 }); // lease to 300
    e.handle(t + ms(60), Event::HandoverRequested { conn: 1 });
    let a = e.handle(t + ms(100), Event::Heartbeat { conn: 1, seq: 2 });
    assert!(a.is_empty(), "a draining active is not renewed: {a:?}");
    e.handle(t + ms(250), Event::Heartbeat { conn: 2, seq: 1 });
    assert_eq!(e.active(t + ms(299)), Some(1), "old lease still runs");
    let a = e.handle(t + ms(300), Event::Tick);
    assert_eq!(promoted(&a), Some((2, 2)));
    assert!(a.contains(&Action::Send {
        conn: 1,
        msg: Out::RoleChange {
            role: Role::Fenced,
            epoch: 2,
            active: Some(lan)
        }
    }));
    assert!(a.contains(&Action::Send {
        conn: 1,
        msg: Out::HandoverDone { epoch: 2 }
    }));
    // A fenced replica is never promoted again, even as the last one standing.
    e.handle(t + ms(310), Event::Disconnected { conn: 2 });
    assert_eq!(
        promoted(&e.handle(t + ms(900), Event::Heartbeat { conn: 1, seq: 3 })),
        None
    );
}

#[test]
fn drain_without_successor_keeps_serving() {
    let (mut e, t) = new();
    e.handle(t, Event::Connected { conn: 1, lan: None });
    e.handle(t + ms(10), Event::HandoverRequested { conn: 1 });
    let a = e.handle(t + ms(50), Event::Heartbeat { conn: 1, seq: 1 });
    assert!(matches!(
        a[..],
        [Action::Send {
            msg: Out::LeaseGrant { .. },
            ..
        }]
    ));
}

#[test]
fn persisted_epoch_resumes() {
    let mut e = Election::new(Config { lease: LEASE }, 41);
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

    /// Safety and liveness over random event sequences:
    /// * a promotion never happens while another replica's granted lease is still valid
    ///   (so never two actives with valid leases);
    /// * epochs only grow;
    /// * whenever the lease has run out and a healthy replica exists, there is an active
    ///   (so an active appears within one lease of losing the old one);
    /// * no lease reaches further than one lease length into the future.
    #[test]
    fn invariants(ops in proptest::collection::vec(op(), 1..120)) {
        let (mut e, t0) = new();
        let mut now = t0;
        let mut next_conn: ConnId = 0;
        let mut conns: Vec<ConnId> = Vec::new();
        let mut granted: HashMap<ConnId, Instant> = HashMap::new();
        let mut last_epoch = 0;
        for (seq, (dt, op)) in (1u64..).zip(ops) {
            now += Duration::from_millis(dt);
            let pick = |i: usize| (!conns.is_empty()).then(|| conns[i % conns.len()]);
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
                    Some(conn) => Event::HandoverRequested { conn },
                    None => Event::Tick,
                },
                Op::Tick => Event::Tick,
            };
            for a in e.handle(now, event) {
                match a {
                    Action::Promoted { conn, epoch, .. } => {
                        for (other, until) in &granted {
                            prop_assert!(*other == conn || *until <= now,
                                "promoted {conn} while {other} holds a lease");
                        }
                        prop_assert!(epoch > last_epoch, "epoch did not grow");
                        last_epoch = epoch;
                        granted.insert(conn, now + LEASE);
                    }
                    Action::Send { conn, msg: Out::LeaseGrant { epoch, .. } } => {
                        prop_assert_eq!(epoch, last_epoch);
                        granted.insert(conn, now + LEASE);
                    }
                    Action::Send { msg: Out::RoleChange { epoch, .. }, .. }
                    | Action::PersistEpoch(epoch) => prop_assert!(epoch <= last_epoch.max(e.epoch())),
                    _ => {}
                }
            }
            prop_assert!(e.epoch() >= last_epoch);
            let lease_valid = e.lease_expiry().is_some_and(|x| now < x);
            let healthy = conns.iter().any(|c| e.is_healthy(*c, now));
            prop_assert!(lease_valid || !healthy || e.active(now).is_some(),
                "healthy replica but no active and no lease");
            if let Some(x) = e.lease_expiry() {
                prop_assert!(x <= now + LEASE);
            }
            let actives = e.replicas().filter(|(_, r)| *r == Role::Active).count();
            prop_assert!(actives <= 1);
        }
    }
}
