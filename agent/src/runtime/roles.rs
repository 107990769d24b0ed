//! What the coordinators together say this replica is. Each session reports a role, an
//! epoch, the active's LAN identity and a lease; the failover core takes one status.
//!
//! Every coordinator names the same record (cluster members read it from the shared
//! store; a lone coordinator is the only one), so sessions differ only by lag and by what
//! each member may grant at the moment:
//! * a higher epoch is newer: the latest epoch any live session reports wins;
//! * within that epoch, `Active` wins: a member says `Standby` to the recorded active
//!   while it cannot grant (its Welcome before its watch caught up, say), never to
//!   demote it — a change of active always comes with a new epoch;
//! * `Fenced` wins over `Standby`: one member refusing to promote this replica is
//!   enough for it to ask to register anew once it can serve again;
//! * the lease is the latest deadline among the sessions that say `Active` in that
//!   epoch (each grant alone is safe, see `meshgate_proto::lease`).

use std::time::Instant;

use meshgate_proto::{LanInfo, Role};

/// One session's view, or the merged one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Said {
    /// Role.
    pub role: Role,
    /// Node epoch.
    pub epoch: u64,
    /// The active replica's LAN identity.
    pub active: Option<LanInfo>,
    /// Lease deadline, if a lease was granted.
    pub lease_deadline: Option<Instant>,
}

fn rank(role: Role) -> u8 {
    match role {
        Role::Active => 2,
        Role::Fenced => 1,
        Role::Standby => 0,
    }
}

/// The merged view of every session that reported; `None` when none did.
pub fn merge<'a>(said: impl IntoIterator<Item = &'a Said>) -> Option<Said> {
    let said: Vec<&Said> = said.into_iter().collect();
    let epoch = said.iter().map(|s| s.epoch).max()?;
    let latest = || said.iter().filter(move |s| s.epoch == epoch);
    let role = latest()
        .map(|s| s.role)
        .max_by_key(|r| rank(*r))
        .unwrap_or(Role::Standby);
    let lease_deadline = latest()
        .filter(|s| s.role == Role::Active)
        .filter_map(|s| s.lease_deadline)
        .max();
    // Prefer the identity from a session that agrees with the merged role.
    let active = latest()
        .filter(|s| s.role == role)
        .chain(latest())
        .find_map(|s| s.active);
    Some(Said {
        role,
        epoch,
        active,
        lease_deadline,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    fn said(role: Role, epoch: u64, lease_ms: Option<u64>) -> Said {
        let base = Instant::now();
        Said {
            role,
            epoch,
            active: None,
            lease_deadline: lease_ms.map(|ms| base + Duration::from_millis(ms)),
        }
    }

    #[test]
    fn nothing_reported_is_nothing() {
        assert_eq!(merge(&[]), None);
    }

    #[test]
    fn a_lone_session_is_taken_as_it_is() {
        for role in [Role::Active, Role::Standby, Role::Fenced] {
            let s = said(role, 3, (role == Role::Active).then_some(250));
            assert_eq!(merge(&[s]), Some(s));
        }
    }

    #[test]
    fn the_latest_epoch_wins_whatever_older_sessions_say() {
        let old_active = said(Role::Active, 4, Some(250));
        let new_standby = said(Role::Standby, 5, None);
        let m = merge(&[old_active, new_standby]).expect("two reported");
        assert_eq!(
            (m.role, m.epoch, m.lease_deadline),
            (Role::Standby, 5, None)
        );
    }

    #[test]
    fn a_standby_welcome_of_the_same_epoch_does_not_demote() {
        let granting = said(Role::Active, 7, Some(250));
        let not_yet = said(Role::Standby, 7, None);
        for order in [[granting, not_yet], [not_yet, granting]] {
            let m = merge(&order).expect("two reported");
            assert_eq!(m.role, Role::Active);
            assert_eq!(m.lease_deadline, granting.lease_deadline);
        }
    }

    #[test]
    fn the_latest_grant_of_the_epoch_counts() {
        let a = said(Role::Active, 2, Some(100));
        let b = said(Role::Active, 2, Some(240));
        let stale = said(Role::Active, 1, Some(900));
        let m = merge(&[a, stale, b]).expect("reported");
        assert_eq!((m.epoch, m.lease_deadline), (2, b.lease_deadline));
    }

    #[test]
    fn one_fencing_member_fences_a_standby() {
        let m = merge(&[said(Role::Standby, 3, None), said(Role::Fenced, 3, None)]);
        assert_eq!(m.map(|m| m.role), Some(Role::Fenced));
    }

    #[test]
    fn the_active_identity_comes_from_a_session_that_knows_it() {
        let lan = LanInfo {
            ip: Ipv4Addr::new(192, 168, 50, 2),
            mac: [2, 0, 0, 0, 0, 1],
        };
        let knows = Said {
            active: Some(lan),
            ..said(Role::Standby, 3, None)
        };
        let m = merge(&[said(Role::Standby, 3, None), knows]).expect("reported");
        assert_eq!(m.active, Some(lan));
    }
}
