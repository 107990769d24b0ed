//! Routes in the two dedicated tables, by reconciliation: a desired map keyed by
//! (table, prefix) is diffed against what the kernel holds with our `proto`, and only the
//! difference is applied.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};
use tracing::{debug, info, warn};

use super::{Error, Netlink, is_exists, is_not_found};

/// Identifies one of our routes: its table and destination prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// The table id.
    pub table: u32,
    /// The destination prefix (always in its canonical, truncated form).
    pub dst: IpNet,
}

/// Where a route sends packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// `dev <ifindex>` (scope link), e.g. into the TUN.
    Dev(u32),
    /// `via <gateway> dev <ifindex>`.
    Via(Ipv4Addr, u32),
    /// `unreachable`: fail fast instead of leaking mesh traffic to the default route.
    Unreachable,
}

/// The route set of our tables.
pub type RouteSet = BTreeMap<RouteKey, RouteTarget>;

/// What a reconciliation must do to turn `actual` into `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Missing routes.
    pub add: Vec<(RouteKey, RouteTarget)>,
    /// Routes whose target differs.
    pub replace: Vec<(RouteKey, RouteTarget)>,
    /// Routes that should not be there.
    pub remove: Vec<(RouteKey, RouteTarget)>,
}

/// The pure diff.
pub fn plan(desired: &RouteSet, actual: &RouteSet) -> RoutePlan {
    let mut plan = RoutePlan::default();
    for (key, target) in desired {
        match actual.get(key) {
            None => plan.add.push((*key, *target)),
            Some(have) if have != target => plan.replace.push((*key, *target)),
            Some(_) => {}
        }
    }
    for (key, target) in actual {
        if !desired.contains_key(key) {
            plan.remove.push((*key, *target));
        }
    }
    plan
}

impl Netlink {
    /// Our routes (tagged `proto`) in `tables`, both families. Routes of another `proto`
    /// in our tables are not ours to remove; they are logged.
    pub async fn our_routes(&self, tables: &[u32], proto: u8) -> Result<RouteSet, Error> {
        let mut set = RouteSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            for msg in self
                .dump(RouteNetlinkMessage::GetRoute(req), "dump routes")
                .await?
            {
                let RouteNetlinkMessage::NewRoute(route) = msg else {
                    continue;
                };
                let Some((key, target)) = parse(&route) else {
                    continue;
                };
                if !tables.contains(&key.table) {
                    continue;
                }
                if u8::from(route.header.protocol) != proto {
                    warn!(table = key.table, dst = %key.dst, proto = u8::from(route.header.protocol),
                        "a route of another owner sits in our table; leaving it alone");
                    continue;
                }
                set.insert(key, target);
            }
        }
        Ok(set)
    }

    /// Applies a plan. Additions and replacements go first so that a prefix that moves
    /// between targets is never missing; "exists" on add and "not found" on delete mean
    /// someone else already did the work.
    pub async fn apply_route_plan(&self, plan: &RoutePlan, proto: u8) -> Result<(), Error> {
        for (key, target) in &plan.add {
            let msg = message(*key, *target, proto);
            let res = self
                .ack(
                    RouteNetlinkMessage::NewRoute(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                    || format!("add route {} table {}", key.dst, key.table),
                )
                .await;
            match res {
                Ok(()) => info!(table = key.table, dst = %key.dst, ?target, "route added"),
                Err(e) if is_exists(&e) => {
                    debug!(table = key.table, dst = %key.dst, "route already exists; replacing");
                    self.replace_route(*key, *target, proto).await?;
                }
                Err(e) => return Err(e),
            }
        }
        for (key, target) in &plan.replace {
            self.replace_route(*key, *target, proto).await?;
            info!(table = key.table, dst = %key.dst, ?target, "route replaced");
        }
        for (key, target) in &plan.remove {
            let msg = message(*key, *target, proto);
            let res = self
                .ack(RouteNetlinkMessage::DelRoute(msg), 0, || {
                    format!("delete route {} table {}", key.dst, key.table)
                })
                .await;
            match res {
                Ok(()) => info!(table = key.table, dst = %key.dst, "route removed"),
                Err(e) if is_not_found(&e) => {
                    debug!(table = key.table, dst = %key.dst, "route already gone");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn replace_route(
        &self,
        key: RouteKey,
        target: RouteTarget,
        proto: u8,
    ) -> Result<(), Error> {
        let msg = message(key, target, proto);
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("replace route {} table {}", key.dst, key.table),
        )
        .await
    }
}

fn message(key: RouteKey, target: RouteTarget, proto: u8) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = match key.dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    h.destination_prefix_length = key.dst.prefix_len();
    h.protocol = RouteProtocol::from(proto);
    // Ids above 255 do not fit the header; the kernel reads RTA_TABLE then.
    h.table = u8::try_from(key.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.attributes.push(RouteAttribute::Table(key.table));
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            key.dst.network(),
        )));
    match target {
        RouteTarget::Dev(oif) => {
            msg.header.kind = RouteType::Unicast;
            msg.header.scope = RouteScope::Link;
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        RouteTarget::Via(gw, oif) => {
            msg.header.kind = RouteType::Unicast;
            msg.header.scope = RouteScope::Universe;
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        RouteTarget::Unreachable => {
            msg.header.kind = RouteType::Unreachable;
            msg.header.scope = RouteScope::Universe;
        }
    }
    msg
}

/// Reads a dumped route back into our model; `None` for anything we never install
/// (multipath, other types, cache entries).
fn parse(route: &RouteMessage) -> Option<(RouteKey, RouteTarget)> {
    let mut table = u32::from(route.header.table);
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = ip(a),
            RouteAttribute::Gateway(a) => gw = ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let len = route.header.destination_prefix_length;
    let dst = match (dst, route.header.address_family) {
        (Some(a), _) => IpNet::new(a, len).ok()?,
        (None, AddressFamily::Inet) => IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0).ok()?,
        (None, AddressFamily::Inet6) => {
            IpNet::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0).ok()?
        }
        _ => return None,
    };
    let target = match (route.header.kind, gw, oif) {
        (RouteType::Unreachable, _, _) => RouteTarget::Unreachable,
        (RouteType::Unicast, Some(IpAddr::V4(gw)), Some(oif)) => RouteTarget::Via(gw, oif),
        (RouteType::Unicast, None, Some(oif)) => RouteTarget::Dev(oif),
        // A shape we never install (another type, an IPv6 gateway, multipath): a target
        // no desired route has, so the diff replaces or removes it.
        _ => RouteTarget::Dev(u32::MAX),
    };
    Some((
        RouteKey {
            table,
            dst: dst.trunc(),
        },
        target,
    ))
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(table: u32, dst: &str) -> RouteKey {
        RouteKey {
            table,
            dst: dst.parse().unwrap(),
        }
    }

    #[test]
    fn plan_adds_replaces_and_removes_only_the_difference() {
        let desired = RouteSet::from([
            (key(1, "10.0.0.0/8"), RouteTarget::Dev(5)),
            (key(1, "192.168.1.0/24"), RouteTarget::Dev(5)),
            (
                key(2, "10.0.0.0/8"),
                RouteTarget::Via("192.168.50.2".parse().unwrap(), 3),
            ),
        ]);
        let actual = RouteSet::from([
            (key(1, "10.0.0.0/8"), RouteTarget::Dev(5)),
            (key(2, "10.0.0.0/8"), RouteTarget::Unreachable),
            (key(2, "172.16.0.0/12"), RouteTarget::Dev(5)),
        ]);
        let p = plan(&desired, &actual);
        assert_eq!(p.add, vec![(key(1, "192.168.1.0/24"), RouteTarget::Dev(5))]);
        assert_eq!(
            p.replace,
            vec![(
                key(2, "10.0.0.0/8"),
                RouteTarget::Via("192.168.50.2".parse().unwrap(), 3)
            )]
        );
        assert_eq!(
            p.remove,
            vec![(key(2, "172.16.0.0/12"), RouteTarget::Dev(5))]
        );
        assert_eq!(plan(&desired, &desired), RoutePlan::default());
    }

    #[test]
    fn a_built_message_parses_back_to_the_same_route() {
        for (k, t) in [
            (key(7301, "100.96.0.0/12"), RouteTarget::Dev(4)),
            (
                key(200, "10.1.0.0/16"),
                RouteTarget::Via("192.168.50.2".parse().unwrap(), 2),
            ),
            (key(7302, "fd00::/64"), RouteTarget::Unreachable),
        ] {
            assert_eq!(parse(&message(k, t, 109)), Some((k, t)));
        }
    }
}
