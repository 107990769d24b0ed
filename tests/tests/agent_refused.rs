//! An agent the coordinator refuses (its token unknown, revoked or deleted) keeps trying,
//! slowly, instead of exiting: under systemd an exit ends, after a few quick restarts,
//! with nobody trying at all, so a coordinator fixed later (here: its store restored from
//! a backup that still has the device) would never see the agent again.

use std::time::Duration;

use meshgate_tests::{lab::Agent, lab::Lab, require_root, wait_until};

#[test]
#[ignore = "needs root: network namespaces (run by `cargo xtask test`)"]
fn a_refused_agent_backs_off_and_joins_once_the_coordinator_accepts_it() -> anyhow::Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    lab.start_coordinator()?;
    let (device_id, token) = lab.create_device("laptop")?;
    // A backup of the store with the device in it.
    lab.coordinator().expect("started above").kill();
    let store = lab.data_dir().join("store.redb");
    let backup = lab.dir.path().join("store.redb.backup");
    std::fs::copy(&store, &backup)?;
    lab.start_coordinator()?;
    lab.api()?
        .delete(&format!("/api/v1/devices/{device_id}"))?
        .result()?;

    let ns = lab.host("device")?;
    let state = lab.dir.path().join("state-device");
    let mut agent = Agent::spawn(
        &ns,
        "device",
        &token,
        &["--refused-retry-ms", "300"],
        &state,
        &lab.log("agent-device"),
    )?;
    let mut last = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(20),
        "the agent to report the refusal",
        || {
            anyhow::ensure!(
                agent.process.is_running(),
                "the agent exited: {}",
                agent.process.log()
            );
            last = agent.status(&ns).unwrap_or_default();
            Ok(last["connection"]["state"] == "refused")
        },
    )?;
    let error = last["connection"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("refused this agent"), "{last}");
    // It keeps trying, and does not exit.
    wait_until(Duration::from_secs(20), "a second refusal", || {
        anyhow::ensure!(
            agent.process.is_running(),
            "the agent exited: {}",
            agent.process.log()
        );
        Ok(agent.process.log().matches("refused this agent").count() >= 2)
    })?;

    // The operator restores the store: the device exists again.
    lab.coordinator().expect("started above").kill();
    std::fs::copy(&backup, &store)?;
    lab.start_coordinator()?;
    wait_until(Duration::from_secs(30), "the agent to join", || {
        anyhow::ensure!(
            agent.process.is_running(),
            "the agent exited: {}",
            agent.process.log()
        );
        Ok(agent
            .status(&ns)
            .is_ok_and(|s| s["connection"]["state"] == "connected"))
    })?;
    Ok(())
}
