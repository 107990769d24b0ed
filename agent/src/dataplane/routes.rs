//! Route and local-prefix reconciliation: compute the difference between what the maps
//! hold and what is wanted, so a change rewrites only the entries that changed.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::DataplaneError;

/// What a `replace_routes` / `set_local_prefixes` call changed in the maps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteDiff {
    /// Entries inserted.
    pub added: usize,
    /// Entries whose route id was rewritten.
    pub changed: usize,
    /// Entries deleted.
    pub removed: usize,
}

/// The operations that turn `current` into `desired`: upserts, then removals.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RoutePlan {
    /// Prefixes to insert or overwrite, with their route id.
    pub upserts: Vec<(IpNet, u32)>,
    /// Prefixes to delete.
    pub removals: Vec<IpNet>,
    /// The counts for the caller.
    pub diff: RouteDiff,
}

/// Normalises and deduplicates the wanted routes. Host bits are cleared
/// (`10.0.0.1/24` is `10.0.0.0/24`); the same prefix twice with different ids is an
/// error, since which one should win is a caller bug.
pub(super) fn desired_routes(
    routes: &[(IpNet, u32)],
) -> Result<BTreeMap<IpNet, u32>, DataplaneError> {
    let mut desired = BTreeMap::new();
    for &(net, route_id) in routes {
        let net = net.trunc();
        if let Some(first) = desired.insert(net, route_id)
            && first != route_id
        {
            return Err(DataplaneError::DuplicateRoute {
                net,
                first,
                second: route_id,
            });
        }
    }
    Ok(desired)
}

/// Plans the map operations from `current` to `desired`. Upserts come before removals
/// so that replacing a broad route by narrower ones never leaves a destination
/// uncovered in between.
pub(super) fn plan_routes(
    current: &BTreeMap<IpNet, u32>,
    desired: &BTreeMap<IpNet, u32>,
) -> RoutePlan {
    let mut plan = RoutePlan::default();
    for (&net, &id) in desired {
        match current.get(&net) {
            None => {
                plan.upserts.push((net, id));
                plan.diff.added += 1;
            }
            Some(&old) if old != id => {
                plan.upserts.push((net, id));
                plan.diff.changed += 1;
            }
            Some(_) => {}
        }
    }
    for net in current.keys() {
        if !desired.contains_key(net) {
            plan.removals.push(*net);
            plan.diff.removed += 1;
        }
    }
    plan
}

/// Plans a set of prefixes (no values): `(to insert, to remove)`.
pub(super) fn plan_set(
    current: &BTreeSet<IpNet>,
    desired: &BTreeSet<IpNet>,
) -> (Vec<IpNet>, Vec<IpNet>) {
    (
        desired.difference(current).copied().collect(),
        current.difference(desired).copied().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test literal is a valid prefix")
    }

    #[test]
    fn plan_only_touches_what_changed() {
        let current = desired_routes(&[
            (net("10.0.0.0/8"), 1),
            (net("10.1.0.0/16"), 2),
            (net("fd00::/8"), 3),
        ])
        .expect("no duplicates");
        let desired = desired_routes(&[
            (net("10.0.0.0/8"), 1),
            (net("10.1.0.0/16"), 7),
            (net("192.168.0.0/16"), 4),
        ])
        .expect("no duplicates");
        let plan = plan_routes(&current, &desired);
        assert_eq!(
            plan.upserts,
            vec![(net("10.1.0.0/16"), 7), (net("192.168.0.0/16"), 4)]
        );
        assert_eq!(plan.removals, vec![net("fd00::/8")]);
        assert_eq!(
            plan.diff,
            RouteDiff {
                added: 1,
                changed: 1,
                removed: 1
            }
        );
        assert_eq!(plan_routes(&desired, &desired), RoutePlan::default());
    }

    #[test]
    fn host_bits_are_cleared_and_duplicates_refused() {
        let desired = desired_routes(&[(net("10.0.0.1/24"), 1), (net("10.0.0.0/24"), 1)])
            .expect("same id twice is fine");
        assert_eq!(
            desired.into_iter().collect::<Vec<_>>(),
            vec![(net("10.0.0.0/24"), 1)]
        );
        assert!(matches!(
            desired_routes(&[(net("10.0.0.0/24"), 1), (net("10.0.0.9/24"), 2)]),
            Err(DataplaneError::DuplicateRoute {
                first: 1,
                second: 2,
                ..
            })
        ));
    }

    #[test]
    fn set_plan() {
        let current: BTreeSet<_> = [net("10.0.0.0/24"), net("10.0.1.0/24")].into();
        let desired: BTreeSet<_> = [net("10.0.1.0/24"), net("10.0.2.0/24")].into();
        assert_eq!(
            plan_set(&current, &desired),
            (vec![net("10.0.2.0/24")], vec![net("10.0.0.0/24")])
        );
    }
}
