//! The agent as a gateway, end to end in namespaces: a coordinator, one device, two
//! replicas of one HA node on a bridged LAN and a LAN host that routes the mesh via the
//! VIP. Checks traffic both ways, the kernel state the agents leave, a drained handover,
//! and recovery from SIGKILL.

use std::time::Duration;

use meshgate_tests::{
    Netns,
    ha::{HOST_IP, Ha},
    require_root,
    traffic::connectivity,
    wait_until,
};

const ACTIVE_TABLE: &str = "7301";
const STANDBY_TABLE: &str = "7302";
const VIP_ADDR: &str = "192.168.50.1";

/// The selector rule (priority 7310) and the table it points at.
fn selected_table(ns: &Netns) -> anyhow::Result<Option<String>> {
    let rules: serde_json::Value = serde_json::from_str(&ns.ip("-j rule show")?)?;
    let tables: Vec<String> = rules
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["priority"] == 7310)
        .map(|r| {
            r["table"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| r["table"].to_string())
        })
        .collect();
    anyhow::ensure!(tables.len() <= 1, "more than one selector rule: {tables:?}");
    Ok(tables.into_iter().next())
}

fn has_vip(ns: &Netns) -> anyhow::Result<bool> {
    Ok(ns
        .ip("-4 addr show dev eth1")?
        .contains(&format!("{VIP_ADDR}/24")))
}

/// Nothing of the agent left in the namespace: rules, tables, VIP, TUN, XDP.
fn assert_clean(ns: &Netns) -> anyhow::Result<()> {
    assert_eq!(selected_table(ns)?, None, "a selector rule is left");
    let rules = ns.ip("rule show")?;
    assert!(
        !rules.contains("7301") && !rules.contains("7302"),
        "rules left: {rules}"
    );
    for table in [ACTIVE_TABLE, STANDBY_TABLE] {
        let routes = ns
            .ip(&format!("route show table {table}"))
            .unwrap_or_default();
        assert!(
            routes.trim().is_empty(),
            "table {table} still has routes: {routes}"
        );
    }
    assert!(!has_vip(ns)?, "the VIP is left");
    assert!(ns.ip("link show mesh0").is_err(), "the TUN is left");
    let link = ns.ip("link show eth1")?;
    assert!(!link.contains("xdp"), "an XDP program is left: {link}");
    Ok(())
}

fn started(xdp: &str) -> anyhow::Result<Ha> {
    require_root()?;
    let mut ha = Ha::new(2)?;
    ha.start_all(&["--xdp-mode", xdp])?;
    Ok(ha)
}

#[test]
#[ignore = "needs root: network namespaces"]
fn traffic_flows_both_ways_and_only_the_active_holds_the_vip() -> anyhow::Result<()> {
    traffic_flows_both_ways("auto")
}

#[test]
#[ignore = "needs root: network namespaces"]
fn the_kernel_path_carries_the_same_traffic_with_xdp_off() -> anyhow::Result<()> {
    traffic_flows_both_ways("off")
}

fn traffic_flows_both_ways(xdp: &str) -> anyhow::Result<()> {
    let ha = started(xdp)?;
    // The LAN is a bridge of veths without XDP on the bridge side, where native XDP_TX
    // drops the hairpin: `auto` takes skb there (see `xdp_auto_mode.rs`).
    assert_eq!(
        ha.status(0)?["xdp_mode"],
        if xdp == "off" { "off" } else { "skb" }
    );
    let device_ip = ha.device_mesh_ip()?;

    connectivity(&ha.device, &device_ip, &ha.host, HOST_IP, 5001)?;

    let (a, b) = (&ha.replicas[0].ns, &ha.replicas[1].ns);
    assert_eq!(selected_table(a)?.as_deref(), Some(ACTIVE_TABLE));
    assert_eq!(selected_table(b)?.as_deref(), Some(STANDBY_TABLE));
    let active_routes = a.ip(&format!("route show table {ACTIVE_TABLE}"))?;
    assert!(
        active_routes.contains("100.96.0.0/12 dev mesh0"),
        "{active_routes}"
    );
    let standby_routes = b.ip(&format!("route show table {STANDBY_TABLE}"))?;
    let a_ip = &ha.replicas[0].lan_ip;
    assert!(
        standby_routes.contains(&format!("100.96.0.0/12 via {a_ip} dev eth1")),
        "{standby_routes}"
    );
    assert!(
        has_vip(a)? && !has_vip(b)?,
        "the VIP must be on the active only"
    );

    // What the coordinator says matches.
    let conns = ha.lab.connections(&ha.node.0)?;
    let active: Vec<_> = conns
        .iter()
        .filter(|c| c["ha_status"] == "active")
        .collect();
    assert_eq!(active.len(), 1, "{conns:?}");
    Ok(())
}

#[test]
#[ignore = "needs root: network namespaces"]
fn sigterm_hands_over_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let mut ha = started("auto")?;
    ha.wait_ping(&ha.device, HOST_IP)?;

    let agent = ha.replicas[0].agent.as_mut().expect("started above");
    agent.process.signal(libc::SIGTERM)?;
    let status = agent.process.wait_exit(Duration::from_secs(15))?;
    assert!(status.success(), "the drained agent exits 0, got {status}");
    ha.wait_forwarding(1, "active")?;
    assert_clean(&ha.replicas[0].ns)?;
    assert!(has_vip(&ha.replicas[1].ns)?, "the VIP moved to b");
    ha.wait_ping(&ha.device, HOST_IP)?;
    ha.wait_ping(&ha.host, &ha.device_mesh_ip()?)?;
    Ok(())
}

#[test]
#[ignore = "needs root: network namespaces"]
fn after_sigkill_a_restart_converges_to_exactly_the_desired_state() -> anyhow::Result<()> {
    let mut ha = started("auto")?;
    // Kill the standby so the node keeps its active; then restart it over its leftovers.
    ha.replicas[1]
        .agent
        .as_mut()
        .expect("started above")
        .process
        .signal(libc::SIGKILL)?;
    ha.replicas[1]
        .agent
        .as_mut()
        .expect("started above")
        .process
        .wait_exit(Duration::from_secs(5))?;
    let b = &ha.replicas[1].ns;
    assert_eq!(
        selected_table(b)?.as_deref(),
        Some(STANDBY_TABLE),
        "SIGKILL leaves the rule behind"
    );
    ha.replicas[1].agent = None;
    ha.start_replica(1, &[])?;
    ha.wait_forwarding(1, "standby")?;
    let b = &ha.replicas[1].ns;
    assert_eq!(selected_table(b)?.as_deref(), Some(STANDBY_TABLE));
    let rules = b.ip("rule show")?;
    assert_eq!(
        rules.matches("lookup 7302").count(),
        1,
        "exactly one selector rule: {rules}"
    );
    let standby_routes = b.ip(&format!("route show table {STANDBY_TABLE}"))?;
    assert_eq!(
        standby_routes.matches("100.96.0.0/12").count(),
        1,
        "{standby_routes}"
    );

    // Now kill the active: the restarted standby takes over, both directions flow.
    ha.replicas[0]
        .agent
        .as_mut()
        .expect("started above")
        .process
        .signal(libc::SIGKILL)?;
    ha.wait_forwarding(1, "active")?;
    wait_until(Duration::from_secs(10), "the VIP on b", || {
        has_vip(&ha.replicas[1].ns)
    })?;
    ha.wait_ping(&ha.device, HOST_IP)?;
    ha.wait_ping(&ha.host, &ha.device_mesh_ip()?)?;
    Ok(())
}
