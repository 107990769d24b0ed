use std::time::{Duration, Instant, SystemTime};

use meshgate_proto::{CoordMsg, Id, Kind, RefuseCode, Role, Timings};

use super::*;

const NODE: Id = Id([5; 16]);
const LEASE: Duration = Duration::from_millis(250);

fn core(t0: Instant, hold: Duration) -> Core {
    let cfg = Config {
        timings: Timings::default(),
        overlap: Duration::from_millis(150),
        mesh: "100.96.0.0/12".parse().expect("valid CIDR"),
        restart_hold: hold,
        member: None,
    };
    Core::new(cfg, t0)
}

fn reg(session: SessionId, replica: &str, stored: u64, seen: u64) -> Input {
    Input::Register(Box::new(Registration {
        session,
        kind: Kind::Node,
        id: NODE,
        name: "gw".into(),
        ha: true,
        replica_id: replica.into(),
        mesh_ip: [100, 96, 0, session as u8].into(),
        lan: None,
        origin: "127.0.0.1:1".parse().expect("valid address"),
        opened_at: SystemTime::UNIX_EPOCH,
        stored_epoch: stored,
        seen_epoch: seen,
    }))
}

fn sends(out: &[Output]) -> Vec<(SessionId, CoordMsg)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { session, msg } => Some((*session, msg.clone())),
            _ => None,
        })
        .collect()
}

fn persisted(out: &[Output]) -> Vec<(Id, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::PersistEpochs(e) => Some(e.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn welcome(msg: &CoordMsg) -> (Role, u64) {
    match msg {
        CoordMsg::Welcome(w) => (w.role, w.epoch),
        other => panic!("expected a Welcome, got {other:?}"),
    }
}

#[test]
fn a_promotion_leaves_only_once_its_epoch_is_durable() {
    let t0 = Instant::now();
    let mut c = core(t0, Duration::ZERO);
    let out = c.handle(t0, reg(1, "a", 3, 0));
    assert!(sends(&out).is_empty(), "the Welcome carries epoch 4: held");
    assert_eq!(persisted(&out), vec![(NODE, 4)]);
    let out = c.handle(t0, Input::EpochsDurable(vec![(NODE, 4)]));
    let s = sends(&out);
    assert_eq!(welcome(&s[0].1), (Role::Active, 4));
    assert_eq!(c.durable_epoch(NODE), 4);
    assert_eq!(c.epoch_of(NODE), Some(4), "what a live sysdump reports");
    assert_eq!(c.epoch_of(Id::random()), None);
}

#[test]
fn a_restarted_core_promotes_nobody_before_the_hold_ends() {
    let t0 = Instant::now();
    let mut c = core(t0, LEASE);
    let out = c.handle(t0 + Duration::from_millis(5), reg(1, "a", 7, 0));
    assert_eq!(welcome(&sends(&out)[0].1), (Role::Standby, 7));
    let mut t = t0;
    while t < t0 + LEASE - Duration::from_millis(10) {
        t += Duration::from_millis(10);
        let out = c.handle(t, Input::Heartbeat { session: 1, seq: 1 });
        assert!(persisted(&out).is_empty());
        assert!(
            persisted(&c.handle(t, Input::Tick)).is_empty(),
            "promoted at {t:?}"
        );
    }
    let out = c.handle(t0 + LEASE, Input::Tick);
    assert_eq!(persisted(&out), vec![(NODE, 8)]);
    assert!(sends(&out).is_empty());
    let out = c.handle(t0 + LEASE, Input::EpochsDurable(vec![(NODE, 8)]));
    assert!(sends(&out).iter().any(|(s, m)| *s == 1
        && matches!(
            m,
            CoordMsg::RoleChange {
                role: Role::Active,
                epoch: 8,
                ..
            }
        )));
}

#[test]
fn the_next_epoch_moves_past_what_an_agent_reports() {
    let t0 = Instant::now();
    let mut c = core(t0, Duration::ZERO);
    let out = c.handle(t0, reg(1, "a", 2, 9));
    assert_eq!(persisted(&out), vec![(NODE, 10)]);
}

#[test]
fn a_heartbeat_flood_closes_the_session() {
    let t0 = Instant::now();
    let mut c = core(t0, Duration::ZERO);
    c.handle(t0, reg(1, "a", 0, 0));
    c.handle(t0, Input::EpochsDurable(vec![(NODE, 1)]));
    let closed = (0..1000u64).any(|seq| {
        c.handle(t0, Input::Heartbeat { session: 1, seq })
            .iter()
            .any(|o| matches!(o, Output::Close { session: 1, code, .. } if *code == RefuseCode::ABUSE))
    });
    assert!(closed);
}

#[test]
fn deleting_a_node_closes_its_sessions_and_a_second_replica_of_a_non_ha_node_is_refused() {
    let t0 = Instant::now();
    let mut c = core(t0, Duration::ZERO);
    c.handle(t0, reg(1, "a", 0, 0));
    let Input::Register(mut r) = reg(2, "b", 0, 0) else {
        unreachable!("reg builds a registration")
    };
    r.ha = false;
    let out = c.handle(t0, Input::Register(r));
    assert!(out.iter().any(
        |o| matches!(o, Output::Close { session: 2, code, .. } if *code == RefuseCode::NOT_HA)
    ));
    let out = c.handle(t0, Input::Deleted(NODE));
    assert!(out.iter().any(
        |o| matches!(o, Output::Close { session: 1, code, .. } if *code == RefuseCode::DELETED)
    ));
    assert!(c.participants().is_empty());
}
