//! Gray failure: a replica whose LAN link is up but which cannot reach what it serves
//! (`--health-target`) must not hold or take the active role. Here the replica's route to
//! the LAN host is blackholed, which its link state cannot show.

use std::time::Duration;

use meshgate_tests::{
    ha::{HOST_IP, Ha, SETTLE, wait_ping},
    require_root, wait_until,
};

const HEALTH: &[&str] = &[
    "--health-target",
    HOST_IP,
    "--health-interval-ms",
    "200",
    "--health-timeout-ms",
    "200",
    "--health-fall",
    "2",
    "--health-rise",
    "2",
];

fn cut(ha: &Ha, i: usize) -> anyhow::Result<()> {
    ha.replicas[i]
        .ns
        .ip(&format!("route add blackhole {HOST_IP}/32"))?;
    Ok(())
}

fn mend(ha: &Ha, i: usize) -> anyhow::Result<()> {
    ha.replicas[i]
        .ns
        .ip(&format!("route del blackhole {HOST_IP}/32"))?;
    Ok(())
}

fn wait_role(ha: &Ha, i: usize, role: &str) -> anyhow::Result<serde_json::Value> {
    let mut last = serde_json::Value::Null;
    wait_until(SETTLE, &format!("replica {i} to be {role}"), || {
        last = ha.status(i)?;
        Ok(last["role"] == role)
    })
    .map_err(|e| anyhow::anyhow!("{e}; last status: {last}"))?;
    Ok(last)
}

#[test]
#[ignore = "needs root: network namespaces and XDP (run by `cargo xtask test`)"]
fn unreachable_health_targets_hand_over_and_keep_a_replica_ineligible() -> anyhow::Result<()> {
    require_root()?;
    let mut ha = Ha::new(2)?;
    ha.start_all(HEALTH)?;
    wait_ping(&ha.device, HOST_IP)?;
    let healthy = ha.status(0)?;
    assert_eq!(healthy["health"]["state"], "healthy", "{healthy}");

    // The active loses its targets: it hands over, and stays out while they are silent.
    cut(&ha, 0)?;
    ha.wait_forwarding(1, "active")?;
    let a = wait_role(&ha, 0, "fenced")?;
    assert_eq!(a["health"]["state"], "unhealthy", "{a}");
    assert!(
        a["health"]["targets"][0][1]
            .as_str()
            .is_some_and(|r| r.starts_with("failed")),
        "{a}"
    );
    // The coordinator says why in `connections`.
    let conns = ha.lab.connections(&ha.node.0)?;
    assert!(
        conns
            .iter()
            .any(|c| c["role"] == "fenced" && c["handover_reason"] == "unhealthy"),
        "connections do not show the failed health check: {conns:?}"
    );
    wait_ping(&ha.device, HOST_IP)?;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ha.status(0)?["role"], "fenced", "not back while unhealthy");

    // Targets answer again: it registers again, as a standby.
    mend(&ha, 0)?;
    wait_role(&ha, 0, "standby")?;
    assert_eq!(ha.status(0)?["health"]["state"], "healthy");

    // A standby that loses its targets is not eligible: when the active dies, nobody
    // is promoted in its place.
    cut(&ha, 0)?;
    wait_role(&ha, 0, "fenced")?;
    let b = ha.replicas[1].agent.as_mut().expect("started above");
    b.process.signal(libc::SIGKILL)?;
    std::thread::sleep(Duration::from_secs(2));
    let a = ha.status(0)?;
    assert_ne!(
        a["forwarding"], "active",
        "an unhealthy standby was promoted: {a}"
    );
    // Its targets answer again: now it takes over.
    mend(&ha, 0)?;
    ha.wait_forwarding(0, "active")?;
    Ok(())
}
