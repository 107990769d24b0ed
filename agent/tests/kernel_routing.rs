//! Root-only: the ACTIVE/STANDBY tables, their rules and the flip, in namespaces.
//!
//! `gw` is the replica under test: `eth0` on a LAN shared with `active` (the active
//! replica, 192.168.50.10, which owns 10.20.1.1), and `mesh0`, a veth standing in for the
//! TUN (its tx counter shows what the kernel sent "into the tunnel").

mod common;

use std::time::Duration;

use common::{addrs, ip_json, routes, rules, run_in, strs};
use meshgate_agent::netlink::{
    DesiredRouting, Netlink, ReconcileReport, Routing, RoutingConfig, StandbyPath, Table,
};
use meshgate_tests::{Netns, require_root, veth};

const ACTIVE: u32 = meshgate_agent::netlink::DEFAULT_ACTIVE_TABLE;
const STANDBY: u32 = meshgate_agent::netlink::DEFAULT_STANDBY_TABLE;
const PROTO: &str = "109";

struct Net {
    gw: Netns,
    active: Netns,
}

fn net() -> anyhow::Result<Net> {
    let gw = Netns::new("gw")?;
    let active = Netns::new("act")?;
    veth(&gw, "eth0", &active, "eth0")?;
    gw.ip("addr add 192.168.50.11/24 dev eth0")?;
    active.ip("addr add 192.168.50.10/24 dev eth0")?;
    active.ip("addr add 10.20.1.1/32 dev lo")?;
    gw.ip("link add mesh0 type veth peer name meshp")?;
    gw.ip("link set mesh0 up")?;
    gw.ip("link set meshp up")?;
    gw.ip("addr add 100.96.0.5/32 dev mesh0")?;
    // The coordinator (10.20.0.1) is reached through main's default route.
    gw.ip("route add default via 192.168.50.254 dev eth0")?;
    Ok(Net { gw, active })
}

fn desired(prefixes: &[&str], selected: Table) -> DesiredRouting {
    DesiredRouting {
        prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        tun: "mesh0".into(),
        standby: StandbyPath::Via {
            gateway: "192.168.50.10".parse().unwrap(),
            iface: "eth0".into(),
        },
        mesh_ip: Some("100.96.0.5".parse().unwrap()),
        coordinator: Some("10.20.0.1".parse().unwrap()),
        selected,
    }
}

fn expected_rules(selected: u32) -> Vec<String> {
    strs(&[
        "pref 7300 to 10.20.0.1 lookup main",
        "pref 7305 from 100.96.0.5 lookup 7301",
        &format!("pref 7310 lookup {selected}"),
    ])
}

/// `ip route get` in `ns`, as "dev X" or "via G dev X".
fn route_get(ns: &Netns, args: &str) -> anyhow::Result<String> {
    let r = &ip_json(ns, &format!("route get {args}"))?[0];
    let dev = r["dev"].as_str().unwrap_or_default();
    Ok(match r["gateway"].as_str() {
        Some(gw) => format!("via {gw} dev {dev}"),
        None => format!("dev {dev}"),
    })
}

fn tx_packets(ns: &Netns, dev: &str) -> anyhow::Result<u64> {
    let l = &ip_json(ns, &format!("-s link show dev {dev}"))?[0];
    Ok(l["stats64"]["tx"]["packets"].as_u64().unwrap_or_default())
}

fn ping(ns: &Netns, dst: &str) -> bool {
    ns.exec("ping", &["-c", "1", "-W", "1", "-q", dst]).is_ok()
}

#[test]
#[ignore = "needs root: network namespaces"]
fn reconcile_converges_from_a_previous_run_and_applies_only_the_difference() -> anyhow::Result<()> {
    require_root()?;
    let Net {
        gw,
        active: _active,
    } = net()?;
    // What a crashed run left: a stale route, a route with the wrong target, a stale
    // selector and a rule at a priority no longer used; plus someone else's route in our
    // table, which is not ours to touch.
    gw.ip("route add 192.0.2.0/24 dev mesh0 table 7301 proto 109")?;
    gw.ip("route add 10.20.0.0/16 via 192.168.50.99 dev eth0 table 7301 proto 109")?;
    gw.ip("route add 198.51.100.0/24 dev mesh0 table 7301 proto static")?;
    gw.ip("rule add pref 7310 lookup 7302 proto 109")?;
    gw.ip("rule add pref 7000 lookup 7301 proto 109")?;

    run_in(&gw, || async {
        let nl = Netlink::connect()?;
        // ... and a VIP (iproute2 6.1 cannot tag an address, so plant it ourselves).
        let eth0 = nl.link_index("eth0").await?;
        nl.add_address(eth0, "192.168.50.1/24".parse()?, 109)
            .await?;
        let mut routing = Routing::new(nl, RoutingConfig::default());

        let first = routing
            .reconcile(&desired(&["100.96.0.0/12", "10.20.0.0/16"], Table::Active))
            .await?;
        assert_eq!(
            first,
            ReconcileReport {
                routes_added: 3,
                routes_replaced: 1,
                routes_removed: 1,
                rules_added: 3,
                rules_removed: 2,
            }
        );
        assert_eq!(
            routes(&gw, ACTIVE)?,
            strs(&[
                "10.20.0.0/16 dev mesh0 proto 109",
                "100.96.0.0/12 dev mesh0 proto 109",
                "198.51.100.0/24 dev mesh0 proto static",
            ])
        );
        assert_eq!(
            routes(&gw, STANDBY)?,
            strs(&[
                "10.20.0.0/16 via 192.168.50.10 dev eth0 proto 109",
                "100.96.0.0/12 via 192.168.50.10 dev eth0 proto 109",
            ])
        );
        assert_eq!(rules(&gw, PROTO)?, expected_rules(ACTIVE));

        let again = routing
            .reconcile(&desired(&["100.96.0.0/12", "10.20.0.0/16"], Table::Active))
            .await?;
        assert_eq!(
            again,
            ReconcileReport::default(),
            "a converged state needs nothing"
        );

        let changed = routing
            .reconcile(&desired(&["100.96.0.0/12", "172.16.0.0/12"], Table::Active))
            .await?;
        assert_eq!(
            changed,
            ReconcileReport {
                routes_added: 2,
                routes_removed: 2,
                ..ReconcileReport::default()
            },
            "one prefix swapped: one add and one delete per table, rules untouched"
        );
        assert_eq!(
            routes(&gw, STANDBY)?,
            strs(&[
                "100.96.0.0/12 via 192.168.50.10 dev eth0 proto 109",
                "172.16.0.0/12 via 192.168.50.10 dev eth0 proto 109",
            ])
        );

        let cleaned = routing.cleanup().await?;
        assert_eq!(
            (cleaned.routes, cleaned.rules, cleaned.addresses),
            (4, 3, 1)
        );
        anyhow::Ok(())
    })?;

    assert_eq!(
        routes(&gw, ACTIVE)?,
        strs(&["198.51.100.0/24 dev mesh0 proto static"])
    );
    assert_eq!(routes(&gw, STANDBY)?, Vec::<String>::new());
    assert_eq!(rules(&gw, PROTO)?, Vec::<String>::new());
    assert_eq!(addrs(&gw, "eth0")?, strs(&["192.168.50.11/24"]));
    Ok(())
}

#[test]
#[ignore = "needs root: network namespaces"]
fn flip_moves_mesh_traffic_between_the_tun_and_the_active_replica() -> anyhow::Result<()> {
    require_root()?;
    let Net {
        gw,
        active: _active,
    } = net()?;
    run_in(&gw, || async {
        let mut routing = Routing::new(Netlink::connect()?, RoutingConfig::default());
        assert!(matches!(
            routing.flip(Table::Standby).await,
            Err(meshgate_agent::netlink::Error::NotReconciled)
        ));
        routing
            .reconcile(&desired(&["100.96.0.0/12", "10.20.0.0/16"], Table::Active))
            .await?;

        // ACTIVE: mesh-bound traffic goes into the "TUN".
        assert_eq!(route_get(&gw, "10.20.1.1")?, "dev mesh0");
        let tx = tx_packets(&gw, "mesh0")?;
        assert!(
            !ping(&gw, "10.20.1.1"),
            "nothing answers inside the fake TUN"
        );
        assert!(tx_packets(&gw, "mesh0")? > tx, "the ping went into mesh0");

        // STANDBY: the same traffic goes to the active replica, which answers.
        let took = routing.flip(Table::Standby).await?;
        assert!(took < Duration::from_secs(1), "a flip took {took:?}");
        assert_eq!(
            rules(&gw, PROTO)?,
            expected_rules(STANDBY),
            "exactly one selector"
        );
        assert_eq!(route_get(&gw, "10.20.1.1")?, "via 192.168.50.10 dev eth0");
        assert!(
            ping(&gw, "10.20.1.1"),
            "the active replica answers through the LAN"
        );
        // Our own Mesh IP's traffic still uses our own tunnel ...
        assert_eq!(route_get(&gw, "10.20.1.1 from 100.96.0.5")?, "dev mesh0");
        // ... and the coordinator, inside an advertised subnet, is reached through main.
        assert_eq!(route_get(&gw, "10.20.0.1")?, "via 192.168.50.254 dev eth0");

        routing.flip(Table::Active).await?;
        assert_eq!(rules(&gw, PROTO)?, expected_rules(ACTIVE));
        assert_eq!(route_get(&gw, "10.20.1.1")?, "dev mesh0");
        assert!(!ping(&gw, "10.20.1.1"));
        routing.flip(Table::Active).await?;
        assert_eq!(
            rules(&gw, PROTO)?,
            expected_rules(ACTIVE),
            "a flip to the same table is a no-op"
        );

        routing.cleanup().await?;
        anyhow::Ok(())
    })?;
    assert_eq!(rules(&gw, PROTO)?, Vec::<String>::new());
    assert_eq!(route_get(&gw, "10.20.1.1")?, "via 192.168.50.254 dev eth0");
    Ok(())
}
