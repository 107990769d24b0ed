use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::*;

const LEASE: Duration = Duration::from_millis(200);

fn peer(n: u8) -> LanInfo {
    LanInfo {
        ip: Ipv4Addr::new(192, 168, 50, n),
        mac: [2, 0, 0, 0, 0, n],
    }
}

fn status(role: Role, epoch: u64, active: Option<LanInfo>, deadline: Option<Instant>) -> Event {
    Event::Status {
        role,
        epoch,
        active,
        lease_deadline: deadline,
    }
}

/// The kernel as the actions leave it, to check the invariants after every batch.
#[derive(Debug, Default)]
struct Kernel {
    xdp: Option<Role>,
    vip: bool,
    table: Option<Table>,
    peer: Option<LanInfo>,
    /// Where XDP bounces to, once set (a standby's table peer is written there too).
    hairpin: Option<LanInfo>,
    /// In the last batch: where XDP bounced to the moment it became a standby.
    hairpin_on_standby: Option<Option<LanInfo>>,
    /// Set when the VIP was acquired while XDP or the routing table was not yet active.
    violated: Option<String>,
}

impl Kernel {
    fn apply(&mut self, actions: &[Action]) {
        self.hairpin_on_standby = None;
        for a in actions {
            match a {
                Action::SetXdpRole { role, .. } => {
                    if *role == Role::Standby && self.xdp != Some(Role::Standby) {
                        self.hairpin_on_standby = Some(self.hairpin);
                    }
                    self.xdp = Some(*role);
                }
                Action::AcquireVip => {
                    if self.xdp != Some(Role::Active) || self.table != Some(Table::Active) {
                        self.violated =
                            Some(format!("VIP acquired before XDP/table active: {actions:?}"));
                    }
                    self.vip = true;
                }
                Action::ReleaseVip => self.vip = false,
                Action::SelectTable(t) => self.table = Some(*t),
                Action::SetActivePeer(p) => {
                    self.peer = *p;
                    if p.is_some() {
                        self.hairpin = *p;
                    }
                }
                Action::SetHairpin(p) => self.hairpin = Some(*p),
                Action::InstallRoutes(_) | Action::RequestHandover(_) => {}
            }
        }
    }
}

fn started() -> (Failover, Kernel) {
    let core = Failover::new(Mode::Node);
    let mut kernel = Kernel::default();
    kernel.apply(&core.initial_actions());
    (core, kernel)
}

#[test]
fn promotion_orders_routes_then_xdp_then_vip() {
    let (mut core, _) = started();
    let now = Instant::now();
    let actions = core.handle(now, status(Role::Active, 1, None, Some(now + LEASE)));
    assert_eq!(
        actions,
        vec![
            Action::SelectTable(Table::Active),
            Action::SetXdpRole {
                role: Role::Active,
                epoch: 1
            },
            Action::AcquireVip,
        ]
    );
    assert_eq!(core.forwarding(), Forwarding::Active { epoch: 1 });
    assert_eq!(core.next_deadline(), Some(now + LEASE));
}

/// Active → standby of `active` in `epoch`: XDP bounces to the successor at once, then the
/// VIP goes, then the standby table is pointed and selected.
fn demotion_to_standby(active: LanInfo, epoch: u64) -> Vec<Action> {
    vec![
        Action::SetHairpin(active),
        Action::SetXdpRole {
            role: Role::Standby,
            epoch,
        },
        Action::ReleaseVip,
        Action::SetActivePeer(Some(active)),
        Action::SelectTable(Table::Standby),
    ]
}

#[test]
fn demotion_orders_xdp_then_vip_then_routes() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Active, 1, None, Some(now + LEASE)));
    let actions = core.handle(now, status(Role::Standby, 2, Some(peer(3)), None));
    assert_eq!(actions, demotion_to_standby(peer(3), 2));
}

#[test]
fn an_expired_lease_fences_before_the_coordinator_says_anything() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Active, 4, None, Some(now + LEASE)));
    assert!(
        core.handle(now + LEASE / 2, Event::Tick).is_empty(),
        "still within the lease"
    );
    let actions = core.handle(now + LEASE, Event::Tick);
    assert_eq!(
        actions[0],
        Action::SetXdpRole {
            role: Role::Fenced,
            epoch: 4
        }
    );
    assert!(actions.contains(&Action::ReleaseVip));
    assert_eq!(core.forwarding(), Forwarding::Fenced { epoch: 4 });
    assert_eq!(core.next_deadline(), None);
}

#[test]
fn a_frozen_active_fences_before_it_applies_anything_else_when_it_wakes() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Active, 1, None, Some(now + LEASE)));
    // Frozen past the deadline: no tick came. The first event after the wake, whatever it
    // is, first fences; only then is it applied.
    let woke = now + LEASE * 5;
    let a: Ipv4Net = "100.96.0.0/12".parse().unwrap();
    let actions = core.handle(woke, Event::Routes(vec![a]));
    assert_eq!(
        actions[..2],
        [
            Action::SetXdpRole {
                role: Role::Fenced,
                epoch: 1
            },
            Action::ReleaseVip
        ]
    );
    assert_eq!(actions.last(), Some(&Action::InstallRoutes(vec![a])));
    // The coordinator's news that another replica took over then makes it a standby.
    let actions = core.handle(woke, status(Role::Standby, 2, Some(peer(3)), None));
    assert!(
        !actions.iter().any(|a| matches!(
            a,
            Action::AcquireVip
                | Action::SetXdpRole {
                    role: Role::Active,
                    ..
                }
        )),
        "{actions:?}"
    );
    assert_eq!(
        core.forwarding(),
        Forwarding::Standby {
            epoch: 2,
            active: Some(peer(3))
        }
    );
}

#[test]
fn a_promoted_standby_waits_for_its_grant_as_a_standby() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Standby, 1, Some(peer(2)), None));
    // The RoleChange comes first, its grant a moment later: nothing changes meanwhile.
    let own = Some(peer(3));
    assert!(
        core.handle(now, status(Role::Active, 2, own, None))
            .is_empty()
    );
    let actions = core.handle(now, status(Role::Active, 2, own, Some(now + LEASE)));
    assert_eq!(actions[0], Action::SelectTable(Table::Active));
    assert_eq!(core.forwarding(), Forwarding::Active { epoch: 2 });
}

#[test]
fn a_renewed_lease_keeps_forwarding_without_steps() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Active, 1, None, Some(now + LEASE)));
    let later = now + LEASE / 2;
    assert!(
        core.handle(later, status(Role::Active, 1, None, Some(later + LEASE)))
            .is_empty()
    );
    assert!(core.handle(now + LEASE, Event::Tick).is_empty());
}

#[test]
fn a_grant_from_any_coordinator_extends_the_lease_of_the_current_epoch() {
    let (mut core, _) = started();
    let now = Instant::now();
    // Two coordinators renew the same lease; their statuses arrive interleaved.
    core.handle(now, status(Role::Active, 3, None, Some(now + LEASE)));
    let later = now + LEASE / 2;
    core.handle(later, status(Role::Active, 3, None, Some(later + LEASE)));
    // The other coordinator's status still carries the earlier grant (or none yet):
    // the later deadline stays.
    core.handle(later, status(Role::Active, 3, None, Some(now + LEASE)));
    core.handle(later, status(Role::Active, 3, None, None));
    assert_eq!(core.lease_deadline(), Some(later + LEASE));
    assert!(
        core.handle(now + LEASE, Event::Tick).is_empty(),
        "still forwarding"
    );
    assert_eq!(core.forwarding(), Forwarding::Active { epoch: 3 });
    // The one still granting dies: the lease runs out on its own.
    let actions = core.handle(later + LEASE, Event::Tick);
    assert!(matches!(
        actions[0],
        Action::SetXdpRole {
            role: Role::Fenced,
            ..
        }
    ));
}

#[test]
fn a_grant_of_an_older_epoch_from_another_coordinator_extends_nothing() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Active, 4, None, Some(now + LEASE)));
    let later = now + LEASE / 2;
    core.handle(later, status(Role::Active, 3, None, Some(later + LEASE)));
    assert_eq!(core.lease_deadline(), Some(now + LEASE));
    // A newer epoch replaces the lease, even with an earlier deadline: a promotion
    // elsewhere voids what this replica held.
    core.handle(later, status(Role::Standby, 5, Some(peer(2)), None));
    assert_eq!(core.lease_deadline(), None);
    core.handle(
        later,
        status(Role::Active, 5, None, Some(later + LEASE / 4)),
    );
    assert_eq!(core.lease_deadline(), Some(later + LEASE / 4));
}

#[test]
fn a_demotion_from_any_coordinator_ends_the_lease() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Active, 2, None, Some(now + LEASE)));
    core.handle(now, status(Role::Fenced, 2, None, None));
    assert_eq!(core.lease_deadline(), None);
    assert_eq!(core.forwarding(), Forwarding::Fenced { epoch: 2 });
}

#[test]
fn a_message_of_an_older_epoch_changes_nothing() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Standby, 5, Some(peer(2)), None));
    assert!(
        core.handle(now, status(Role::Active, 4, None, Some(now + LEASE)))
            .is_empty()
    );
    assert_eq!(
        core.forwarding(),
        Forwarding::Standby {
            epoch: 5,
            active: Some(peer(2))
        }
    );
}

#[test]
fn a_standby_follows_the_active_peer() {
    let (mut core, _) = started();
    let now = Instant::now();
    let first = core.handle(now, status(Role::Standby, 1, Some(peer(2)), None));
    assert_eq!(
        first,
        vec![
            Action::SetActivePeer(Some(peer(2))),
            Action::SetXdpRole {
                role: Role::Standby,
                epoch: 1
            }
        ]
    );
    let moved = core.handle(now, status(Role::Standby, 2, Some(peer(3)), None));
    assert_eq!(
        moved,
        vec![
            Action::SetActivePeer(Some(peer(3))),
            Action::SetXdpRole {
                role: Role::Standby,
                epoch: 2
            }
        ]
    );
}

#[test]
fn drain_and_link_down_ask_for_handover_once() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Active, 1, None, Some(now + LEASE)));
    assert_eq!(
        core.handle(now, Event::Link { up: false }),
        vec![Action::RequestHandover(HandoverReason::LinkDown)]
    );
    assert!(
        core.handle(now, Event::Drain).is_empty(),
        "one request per term as active"
    );

    let (mut core, _) = started();
    core.handle(now, status(Role::Active, 1, None, Some(now + LEASE)));
    assert_eq!(
        core.handle(now, Event::Drain),
        vec![Action::RequestHandover(HandoverReason::Drain)]
    );
    assert!(core.draining());
}

#[test]
fn a_drained_active_bounces_to_its_successor_once_fenced() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Active, 1, None, Some(now + LEASE)));
    core.handle(now, Event::Drain);
    // The coordinator fences it after the overlap and names the successor.
    let actions = core.handle(now, status(Role::Fenced, 2, Some(peer(3)), None));
    assert_eq!(actions, demotion_to_standby(peer(3), 2));
    // Fenced without a drain (or without a successor) forwards nothing, not even a bounce.
    let (mut core, _) = started();
    core.handle(now, status(Role::Active, 1, None, Some(now + LEASE)));
    core.handle(now, status(Role::Fenced, 2, Some(peer(3)), None));
    assert_eq!(core.forwarding(), Forwarding::Fenced { epoch: 2 });
}

#[test]
fn a_standby_asks_to_be_fenced_only_when_it_cannot_serve() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Standby, 1, Some(peer(2)), None));
    assert!(core.handle(now, Event::Drain).is_empty());
    assert_eq!(
        core.handle(now, Event::Link { up: false }),
        vec![Action::RequestHandover(HandoverReason::LinkDown)]
    );
    assert!(!core.serviceable());

    let (mut core, _) = started();
    core.handle(now, status(Role::Standby, 1, Some(peer(2)), None));
    assert_eq!(
        core.handle(now, Event::Health { healthy: false }),
        vec![Action::RequestHandover(HandoverReason::Unhealthy)],
        "health targets that stop answering make a standby ineligible"
    );
    assert!(core.handle(now, Event::Tick).is_empty(), "asked once");
    core.handle(now, status(Role::Fenced, 1, Some(peer(2)), None));
    assert_eq!(core.forwarding(), Forwarding::Fenced { epoch: 1 });
    assert!(core.handle(now, Event::Health { healthy: true }).is_empty());
    assert!(core.serviceable(), "the runtime registers it again then");
}

#[test]
fn an_active_whose_health_targets_fail_hands_over() {
    let (mut core, _) = started();
    let now = Instant::now();
    core.handle(now, status(Role::Active, 1, None, Some(now + LEASE)));
    assert_eq!(
        core.handle(now, Event::Health { healthy: false }),
        vec![Action::RequestHandover(HandoverReason::Unhealthy)]
    );
    assert_eq!(
        core.forwarding(),
        Forwarding::Active { epoch: 1 },
        "it keeps forwarding until the successor is promoted"
    );
}

#[test]
fn routes_are_installed_once_per_change() {
    let (mut core, _) = started();
    let now = Instant::now();
    let a: Ipv4Net = "100.96.0.0/12".parse().unwrap();
    let b: Ipv4Net = "10.1.0.0/16".parse().unwrap();
    assert_eq!(
        core.handle(now, Event::Routes(vec![a, b])),
        vec![Action::InstallRoutes(vec![b, a])]
    );
    assert!(core.handle(now, Event::Routes(vec![b, a])).is_empty());
}

#[test]
fn a_device_forwards_without_xdp_or_vip() {
    let mut core = Failover::new(Mode::Device);
    assert_eq!(
        core.initial_actions(),
        vec![Action::SelectTable(Table::Active)]
    );
    let now = Instant::now();
    let actions = core.handle(now, status(Role::Active, 0, None, None));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(core.forwarding(), Forwarding::Active { epoch: 0 });
    assert!(core.handle(now, Event::Drain).is_empty());
}

#[derive(Debug, Clone)]
enum Step {
    Status {
        role: u8,
        epoch_delta: u8,
        peer: Option<u8>,
        lease: bool,
    },
    Disconnected,
    Link(bool),
    Health(bool),
    Drain,
    Advance(u16),
    /// Time passes without a tick: the process was frozen.
    Freeze(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3, 0u8..3, proptest::option::of(1u8..4), any::<bool>()).prop_map(
            |(role, epoch_delta, peer, lease)| Step::Status {
                role,
                epoch_delta,
                peer,
                lease
            }
        ),
        Just(Step::Disconnected),
        any::<bool>().prop_map(Step::Link),
        any::<bool>().prop_map(Step::Health),
        Just(Step::Drain),
        (0u16..400).prop_map(Step::Advance),
        (0u16..400).prop_map(Step::Freeze),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// After every event: the data plane forwards only with a valid lease of the current
    /// role; the kernel state the actions built matches the core's view; the VIP is only
    /// acquired once routes and XDP are active.
    #[test]
    fn forwarding_needs_a_valid_lease_and_the_kernel_follows(steps in proptest::collection::vec(step(), 1..60)) {
        let (mut core, mut kernel) = started();
        let mut now = Instant::now();
        let mut epoch = 0u64;
        let mut enforced_epoch = 0u64;
        for s in steps {
            let event = match s {
                Step::Status { role, epoch_delta, peer: p, lease } => {
                    epoch += u64::from(epoch_delta);
                    let role = [Role::Active, Role::Standby, Role::Fenced][usize::from(role)];
                    let deadline = (lease && role == Role::Active).then(|| now + LEASE);
                    status(role, epoch, p.map(peer), deadline)
                }
                Step::Disconnected => Event::Disconnected,
                Step::Link(up) => Event::Link { up },
                Step::Health(healthy) => Event::Health { healthy },
                Step::Drain => Event::Drain,
                Step::Advance(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    Event::Tick
                }
                Step::Freeze(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    continue;
                }
            };
            let expired = matches!(core.forwarding(), Forwarding::Active { .. })
                && core.lease_deadline().is_none_or(|d| now >= d);
            let actions = core.handle(now, event);
            if expired {
                // Woken past its deadline: the first step takes XDP out of the active role.
                prop_assert!(
                    matches!(actions.first(), Some(Action::SetXdpRole { role, .. }) if *role != Role::Active),
                    "{:?}", actions
                );
            }
            kernel.apply(&actions);
            prop_assert!(kernel.violated.is_none(), "{:?}", kernel.violated);
            let forwarding = core.forwarding();
            if let Forwarding::Active { .. } = forwarding {
                prop_assert_eq!(core.role(), Role::Active);
                prop_assert!(core.lease_deadline().is_some_and(|d| now < d));
                prop_assert_eq!(kernel.table, Some(Table::Active));
                prop_assert!(kernel.vip);
            } else {
                prop_assert_eq!(kernel.table, Some(Table::Standby));
                prop_assert!(!kernel.vip);
            }
            prop_assert_eq!(kernel.xdp, Some(forwarding.role()));
            if let Forwarding::Standby { active, .. } = forwarding {
                prop_assert_eq!(kernel.peer, active);
                // Bouncing to the right MAC from the moment XDP became a standby.
                if let (Some(at_switch), Some(_)) = (kernel.hairpin_on_standby, active) {
                    prop_assert_eq!(at_switch, active);
                }
            }
            // Epochs only grow in what the data plane enforces.
            prop_assert!(forwarding.epoch() >= enforced_epoch);
            enforced_epoch = forwarding.epoch();
        }
    }
}
