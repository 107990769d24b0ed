//! Combined replica logs end to end: the real agents of an HA node send their flip
//! records over the control stream, a failover happens (the active's agent is killed),
//! and `GET /api/v1/nodes/{id}/logs` shows the flips of both replicas, each tagged with
//! the replica that applied it, with `?replica=` narrowing to one.

use std::time::Duration;

use anyhow::{Context, ensure};
use meshgate_tests::{ha::Ha, require_root, wait_until_ok};
use serde_json::Value;

/// Agents send a batch every 500 ms; the rest is a loaded machine's slack.
const SHIPPED: Duration = Duration::from_secs(10);

/// The node's log lines for `query` (e.g. `?replica=…`).
fn logs(ha: &Ha, query: &str) -> anyhow::Result<Vec<Value>> {
    let path = format!("/api/v1/nodes/{}/logs{query}", ha.node.0);
    let r = ha.lab.api()?.get(&path)?;
    r.result()?
        .as_array()
        .cloned()
        .context("the logs result is not a list")
}

/// The flip record of `replica` that made it active at `epoch`, once it is there.
fn wait_flip_to_active(ha: &Ha, replica: &str, epoch: u64) -> anyhow::Result<Value> {
    wait_until_ok(SHIPPED, &format!("{replica}'s flip to active"), || {
        let lines = logs(ha, "")?;
        lines
            .iter()
            .find(|l| {
                let text = l["message"].as_str().unwrap_or("");
                l["replica"] == replica
                    && l["target"] == "meshgate_agent::flip"
                    && l["level"] == "info"
                    && text.starts_with("flip applied")
                    && text.contains(&format!("epoch={epoch} "))
                    && text.contains("to=Active")
            })
            .cloned()
            .with_context(|| format!("not among {} lines: {lines:#?}", lines.len()))
    })
}

fn last_flip_epoch(ha: &Ha, i: usize) -> anyhow::Result<u64> {
    ha.status(i)?["last_flip"]["epoch"]
        .as_u64()
        .context("no last_flip in the agent's status")
}

#[test]
#[ignore = "needs root: network namespaces, XDP"]
fn both_replicas_flips_reach_the_logs_endpoint_tagged_and_filterable() -> anyhow::Result<()> {
    require_root()?;
    let mut ha = Ha::new(2)?;
    // Replica a active, b standby (and the device, which sends no logs).
    ha.start_all(&[])?;
    let ids: Vec<String> = ha
        .replicas
        .iter()
        .map(|r| r.replica_id.clone().context("a replica without id"))
        .collect::<anyhow::Result<_>>()?;

    let first = wait_flip_to_active(&ha, &ids[0], last_flip_epoch(&ha, 0)?)?;
    println!("replica a: {first}");

    // Failover: the active's agent dies at once; the standby is promoted.
    if let Some(agent) = ha.replicas[0].agent.as_mut() {
        agent.process.kill();
    }
    ha.wait_forwarding(1, "active")?;
    let epoch = last_flip_epoch(&ha, 1)?;
    let second = wait_flip_to_active(&ha, &ids[1], epoch)?;
    println!("replica b: {second}");
    ensure!(
        second["seq"].as_u64() > first["seq"].as_u64(),
        "the successor's flip is not newer: {first} {second}"
    );

    // The filter: each replica's own lines, and nothing of the other's.
    for (i, id) in ids.iter().enumerate() {
        let mine = logs(&ha, &format!("?replica={id}"))?;
        ensure!(
            mine.iter().all(|l| l["replica"] == id.as_str()),
            "?replica={id} returned another replica's lines: {mine:#?}"
        );
        let flip = if i == 0 { &first } else { &second };
        ensure!(
            mine.iter().any(|l| l["seq"] == flip["seq"]),
            "?replica={id} misses its flip {flip}: {mine:#?}"
        );
    }
    // `since` leaves out what came before.
    let newer = logs(&ha, &format!("?since={}", first["seq"]))?;
    ensure!(
        newer
            .iter()
            .all(|l| l["seq"].as_u64() > first["seq"].as_u64())
    );
    ensure!(newer.iter().any(|l| l["seq"] == second["seq"]));
    Ok(())
}
