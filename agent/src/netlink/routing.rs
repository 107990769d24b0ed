//! [`Routing`]: the ACTIVE and STANDBY tables prepared side by side, the rules around
//! them, the flip between them, and the cleanup of everything.
//!
//! Rules, per IP version in use (`P` = our `proto`):
//! ```text
//! 7300  to <coordinator> lookup main        (bypass: the tunnel never routes into itself)
//! 7305  from <mesh ip> lookup ACTIVE        (a standby's own traffic uses its own tunnel)
//! 7310  lookup ACTIVE | STANDBY             (the selector; a flip swaps only this)
//! ```
//! Our tables hold only mesh prefixes, so other traffic falls through to `main`.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tracing::{info, warn};

use super::{
    Error, Netlink, RoutingConfig,
    routes::{RouteKey, RouteSet, RouteTarget, plan},
    rules::{Family, MAIN_TABLE, RuleSet, RuleSpec},
};

/// Which table the selector rule points at: the failover core's own vocabulary.
pub use crate::failover::Table;

/// What the STANDBY table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StandbyPath {
    /// Nothing (a device, which never selects STANDBY).
    Empty,
    /// Every IPv4 mesh prefix `unreachable`: a standby that does not know the active fails
    /// fast rather than leaking mesh traffic to its default route.
    Unreachable,
    /// Every IPv4 mesh prefix `via <gateway> dev <iface>`. The gateway must be inside a
    /// subnet configured on `iface`, or the kernel refuses the routes.
    Via {
        /// The active replica's LAN IPv4.
        gateway: Ipv4Addr,
        /// The LAN interface.
        iface: String,
    },
}

/// The whole desired routing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRouting {
    /// Every mesh-bound prefix: the mesh CIDR and the remote routes.
    pub prefixes: Vec<IpNet>,
    /// The TUN's name; it must exist and be up (the kernel refuses routes into a down link).
    pub tun: String,
    /// The STANDBY table's contents. IPv6 prefixes are never in it (no IPv6 LAN gateway
    /// is known), so a standby's IPv6 mesh traffic falls through to `main`.
    pub standby: StandbyPath,
    /// Our Mesh IP, for the own-source rule.
    pub mesh_ip: Option<IpAddr>,
    /// The coordinator's address, for the bypass rule.
    pub coordinator: Option<IpAddr>,
    /// Which table the selector points at.
    pub selected: Table,
}

/// What a reconciliation changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Routes added.
    pub routes_added: usize,
    /// Routes whose target was replaced.
    pub routes_replaced: usize,
    /// Routes deleted.
    pub routes_removed: usize,
    /// Rules added.
    pub rules_added: usize,
    /// Rules deleted.
    pub rules_removed: usize,
}

/// What [`Routing::cleanup`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Routes deleted.
    pub routes: usize,
    /// Rules deleted.
    pub rules: usize,
    /// Addresses deleted.
    pub addresses: usize,
}

/// The agent's routing state in the kernel. Not `Clone`: one owner serialises changes.
pub struct Routing {
    nl: Netlink,
    config: RoutingConfig,
    /// The rules last installed, so a flip needs no dump.
    rules: Option<RuleSet>,
    selected: Option<Table>,
}

impl Routing {
    /// A handle over `nl` (whose socket fixes the network namespace).
    pub fn new(nl: Netlink, config: RoutingConfig) -> Self {
        Self {
            nl,
            config,
            rules: None,
            selected: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// The table the selector points at, once reconciled.
    pub fn selected(&self) -> Option<Table> {
        self.selected
    }

    /// Makes the kernel hold exactly `desired`: dumps our routes and rules, applies only
    /// the difference, and removes whatever a previous run left.
    pub async fn reconcile(&mut self, desired: &DesiredRouting) -> Result<ReconcileReport, Error> {
        let started = Instant::now();
        let tun = self.nl.link_index(&desired.tun).await?;
        let lan = match &desired.standby {
            StandbyPath::Via { gateway, iface } => {
                Some((*gateway, self.nl.link_index(iface).await?))
            }
            _ => None,
        };
        let want_routes = desired_routes(&self.config, desired, tun, lan);
        let tables = [self.config.active_table, self.config.standby_table];
        let proto = self.config.protocol;
        let have_routes = self.nl.our_routes(&tables, proto).await?;
        let route_plan = plan(&want_routes, &have_routes);
        self.nl.apply_route_plan(&route_plan, proto).await?;

        let want_rules = desired_rules(&self.config, desired);
        let have_rules = self.nl.our_rules(proto).await?;
        let (rules_added, rules_removed) =
            self.nl.apply_rules(&want_rules, &have_rules, proto).await?;
        self.rules = Some(want_rules);
        self.selected = Some(desired.selected);

        let report = ReconcileReport {
            routes_added: route_plan.add.len(),
            routes_replaced: route_plan.replace.len(),
            routes_removed: route_plan.remove.len(),
            rules_added,
            rules_removed,
        };
        info!(
            ?report,
            selected = ?desired.selected,
            elapsed_us = started.elapsed().as_micros() as u64,
            "routing reconciled"
        );
        Ok(report)
    }

    /// Points the selector at `to`: per IP version, one rule add and one rule delete (none
    /// if already there). Returns how long the kernel took.
    pub async fn flip(&mut self, to: Table) -> Result<Duration, Error> {
        let Some(current) = self.rules.clone() else {
            return Err(Error::NotReconciled);
        };
        let started = Instant::now();
        let from = self.selected;
        let table = self.table(to);
        let want: RuleSet = current
            .iter()
            .map(|r| {
                if r.priority == self.config.select_priority && r.src.is_none() && r.dst.is_none() {
                    RuleSpec { table, ..*r }
                } else {
                    *r
                }
            })
            .collect();
        let proto = self.config.protocol;
        self.nl.apply_rules(&want, &current, proto).await?;
        self.rules = Some(want);
        self.selected = Some(to);
        let took = started.elapsed();
        info!(
            ?from,
            ?to,
            table,
            took_us = took.as_micros() as u64,
            "routing flipped"
        );
        Ok(took)
    }

    /// Removes every rule tagged with our `proto`, every route so tagged in our two tables and every
    /// address tagged with it: what a clean exit or a fresh start after a crash needs.
    pub async fn cleanup(&mut self) -> Result<CleanupReport, Error> {
        let proto = self.config.protocol;
        let rules = self.nl.our_rules(proto).await?;
        self.nl.apply_rules(&RuleSet::new(), &rules, proto).await?;
        let tables = [self.config.active_table, self.config.standby_table];
        let routes = self.nl.our_routes(&tables, proto).await?;
        let removal = plan(&RouteSet::new(), &routes);
        self.nl.apply_route_plan(&removal, proto).await?;
        let mut addresses = 0;
        for a in self.nl.addresses().await? {
            if a.proto == proto {
                self.nl.remove_address(a.index, a.net).await?;
                addresses += 1;
            }
        }
        self.rules = None;
        self.selected = None;
        let report = CleanupReport {
            routes: removal.remove.len(),
            rules: rules.len(),
            addresses,
        };
        if report == CleanupReport::default() {
            info!("routing cleanup: nothing of ours in the kernel");
        } else {
            warn!(?report, "routing cleanup removed our kernel state");
        }
        Ok(report)
    }

    fn table(&self, t: Table) -> u32 {
        match t {
            Table::Active => self.config.active_table,
            Table::Standby => self.config.standby_table,
        }
    }
}

/// The desired contents of both tables.
pub fn desired_routes(
    config: &RoutingConfig,
    desired: &DesiredRouting,
    tun: u32,
    lan: Option<(Ipv4Addr, u32)>,
) -> RouteSet {
    let mut set = RouteSet::new();
    for dst in desired.prefixes.iter().map(IpNet::trunc) {
        set.insert(
            RouteKey {
                table: config.active_table,
                dst,
            },
            RouteTarget::Dev(tun),
        );
        let standby = match (&desired.standby, dst, lan) {
            (_, IpNet::V6(_), _) | (StandbyPath::Empty, _, _) => None,
            (StandbyPath::Unreachable, _, _) => Some(RouteTarget::Unreachable),
            (StandbyPath::Via { .. }, _, Some((gw, lan))) => Some(RouteTarget::Via(gw, lan)),
            (StandbyPath::Via { .. }, _, None) => Some(RouteTarget::Unreachable),
        };
        if let Some(target) = standby {
            set.insert(
                RouteKey {
                    table: config.standby_table,
                    dst,
                },
                target,
            );
        }
    }
    set
}

/// The desired rules: per IP version that has a mesh prefix, the selector, and the
/// bypass and own-source rules where an address of that version is known.
pub fn desired_rules(config: &RoutingConfig, desired: &DesiredRouting) -> RuleSet {
    let mut set = RuleSet::new();
    let selected = match desired.selected {
        Table::Active => config.active_table,
        Table::Standby => config.standby_table,
    };
    for family in [Family::V4, Family::V6] {
        if !desired.prefixes.iter().any(|p| Family::of(p) == family) {
            continue;
        }
        set.insert(RuleSpec {
            family,
            priority: config.select_priority,
            src: None,
            dst: None,
            table: selected,
        });
        let host = |ip: IpAddr| IpNet::from(ip);
        if let Some(coord) = desired.coordinator.map(host)
            && Family::of(&coord) == family
        {
            set.insert(RuleSpec {
                family,
                priority: config.bypass_priority,
                src: None,
                dst: Some(coord),
                table: MAIN_TABLE,
            });
        }
        if let Some(own) = desired.mesh_ip.map(host)
            && Family::of(&own) == family
        {
            set.insert(RuleSpec {
                family,
                priority: config.own_source_priority,
                src: Some(own),
                dst: None,
                table: config.active_table,
            });
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> DesiredRouting {
        DesiredRouting {
            prefixes: vec![
                "100.96.0.0/12".parse().unwrap(),
                "10.1.2.3/16".parse().unwrap(),
            ],
            tun: "mesh0".into(),
            standby: StandbyPath::Via {
                gateway: "192.168.50.2".parse().unwrap(),
                iface: "eth0".into(),
            },
            mesh_ip: Some("100.96.0.5".parse().unwrap()),
            coordinator: Some("203.0.113.7".parse().unwrap()),
            selected: Table::Standby,
        }
    }

    #[test]
    fn both_tables_hold_every_prefix_truncated() {
        let c = RoutingConfig::default();
        let set = desired_routes(
            &c,
            &desired(),
            9,
            Some(("192.168.50.2".parse().unwrap(), 3)),
        );
        assert_eq!(set.len(), 4);
        let k = RouteKey {
            table: c.standby_table,
            dst: "10.1.0.0/16".parse().unwrap(),
        };
        assert_eq!(
            set[&k],
            RouteTarget::Via("192.168.50.2".parse().unwrap(), 3)
        );
    }

    #[test]
    fn ipv4_only_state_has_three_ipv4_rules() {
        let c = RoutingConfig::default();
        let rules = desired_rules(&c, &desired());
        assert_eq!(rules.len(), 3);
        assert!(rules.iter().all(|r| r.family == Family::V4));
        assert!(
            rules
                .iter()
                .any(|r| r.priority == c.select_priority && r.table == c.standby_table)
        );
    }
}
