//! The LPM tries: the mesh-bound routes and the subnet's own prefixes, reconciled
//! against what the handle last wrote, so a sync touches only what changed.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{MapError, lpm_trie::Key};
use ipnet::IpNet;
use meshgate_common::{
    Ipv4Key, Ipv6Key, LOCAL_PREFIX_PRESENT, MAX_LOCAL_PREFIXES, MAX_ROUTE_IDS, MAX_ROUTES,
    RouteEntry, map,
};

use super::Dataplane;
use crate::dataplane::{
    DataplaneError,
    routes::{self, RouteDiff},
};

impl Dataplane {
    /// Makes the mesh-bound destinations exactly `routes` (prefix → route id), touching
    /// only entries that differ from the last call. New entries are written before old
    /// ones are removed. On error, the maps hold a prefix of the operations and the
    /// handle remembers exactly what was applied, so the next call repairs the rest.
    pub fn replace_routes(&mut self, routes: &[(IpNet, u32)]) -> Result<RouteDiff, DataplaneError> {
        let desired = routes::desired_routes(routes)?;
        for (&net, &route_id) in &desired {
            if route_id >= MAX_ROUTE_IDS {
                return Err(DataplaneError::RouteIdOutOfRange {
                    net,
                    route_id,
                    max: MAX_ROUTE_IDS,
                });
            }
        }
        let v4 = desired.keys().filter(|n| matches!(n, IpNet::V4(_))).count();
        let v6 = desired.len() - v4;
        if v4.max(v6) > MAX_ROUTES as usize {
            return Err(DataplaneError::TooMany {
                what: "routes",
                count: v4.max(v6),
                max: MAX_ROUTES,
            });
        }
        let plan = routes::plan_routes(&self.routes, &desired);
        for (net, route_id) in plan.upserts {
            let entry = RouteEntry { route_id };
            match net {
                IpNet::V4(n) => self.routes_v4.insert(&key_v4(n), entry, 0),
                IpNet::V6(n) => self.routes_v6.insert(&key_v6(n), entry, 0),
            }
            .map_err(|source| route_error(net, source))?;
            self.routes.insert(net, route_id);
        }
        for net in plan.removals {
            match net {
                IpNet::V4(n) => self.routes_v4.remove(&key_v4(n)),
                IpNet::V6(n) => self.routes_v6.remove(&key_v6(n)),
            }
            .or_else(ignore_not_found)
            .map_err(|source| route_error(net, source))?;
            self.routes.remove(&net);
        }
        Ok(plan.diff)
    }

    /// The routes as installed.
    pub fn routes(&self) -> &BTreeMap<IpNet, u32> {
        &self.routes
    }

    /// Makes the allowed sources of mesh-bound packets exactly `prefixes` (the node's
    /// advertised subnets), diff-based like [`Dataplane::replace_routes`].
    pub fn set_local_prefixes(&mut self, prefixes: &[IpNet]) -> Result<RouteDiff, DataplaneError> {
        let desired: BTreeSet<IpNet> = prefixes.iter().map(IpNet::trunc).collect();
        let v4 = desired.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
        let v6 = desired.len() - v4;
        if v4.max(v6) > MAX_LOCAL_PREFIXES as usize {
            return Err(DataplaneError::TooMany {
                what: "local prefixes",
                count: v4.max(v6),
                max: MAX_LOCAL_PREFIXES,
            });
        }
        let (add, remove) = routes::plan_set(&self.local, &desired);
        let diff = RouteDiff {
            added: add.len(),
            changed: 0,
            removed: remove.len(),
        };
        for net in add {
            match net {
                IpNet::V4(n) => self.local_v4.insert(&key_v4(n), LOCAL_PREFIX_PRESENT, 0),
                IpNet::V6(n) => self.local_v6.insert(&key_v6(n), LOCAL_PREFIX_PRESENT, 0),
            }
            .map_err(|source| local_error(net, source))?;
            self.local.insert(net);
        }
        for net in remove {
            match net {
                IpNet::V4(n) => self.local_v4.remove(&key_v4(n)),
                IpNet::V6(n) => self.local_v6.remove(&key_v6(n)),
            }
            .or_else(ignore_not_found)
            .map_err(|source| local_error(net, source))?;
            self.local.remove(&net);
        }
        Ok(diff)
    }
}

fn key_v4(net: ipnet::Ipv4Net) -> Key<Ipv4Key> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

fn key_v6(net: ipnet::Ipv6Net) -> Key<Ipv6Key> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

fn route_error(net: IpNet, source: MapError) -> DataplaneError {
    let name = match net {
        IpNet::V4(_) => map::ROUTES_V4,
        IpNet::V6(_) => map::ROUTES_V6,
    };
    DataplaneError::Map { name, source }
}

fn local_error(net: IpNet, source: MapError) -> DataplaneError {
    let name = match net {
        IpNet::V4(_) => map::LOCAL_V4,
        IpNet::V6(_) => map::LOCAL_V6,
    };
    DataplaneError::Map { name, source }
}

/// Deleting what is already gone is success (reconciliation).
fn ignore_not_found(error: MapError) -> Result<(), MapError> {
    match &error {
        MapError::KeyNotFound => Ok(()),
        MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        _ => Err(error),
    }
}
