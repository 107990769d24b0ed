//! The web console in a real headless Chromium: sign in with the admin token, see the HA
//! node's replicas, the device and the route on the map, kill the active replica and see
//! the standby's promotion (and the timeline's `promoted` event) without a reload, see
//! both replicas' flip records in the node's combined logs and narrow them to one
//! replica with the filter, and no errors in the browser console. `tests/console/drive.py` drives the browser (Selenium
//! and Debian's chromedriver, which `cargo xtask setup` installs); this test builds the
//! topology and does the killing.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use meshgate_tests::{
    ha::{Ha, SETTLE},
    lab::API_ADDR,
    require_root, wait_until, wait_until_ok,
};

/// Chromium's start, the sign-in and the first map take seconds on a loaded machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("console/drive.py")
}

#[test]
#[ignore = "needs root: network namespaces, XDP, and Chromium in the coordinator's namespace"]
fn console_shows_the_map_and_a_failover_live() -> anyhow::Result<()> {
    require_root()?;
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        anyhow::ensure!(
            Path::new(tool).is_file(),
            "{tool} is missing: run `cargo xtask setup`"
        );
    }
    let mut ha = Ha::new(2)?;
    ha.start_all(&[])?;
    ha.wait_ping(&ha.device, meshgate_tests::ha::HOST_IP)?;

    let work = ha.lab.dir.path().join("console");
    std::fs::create_dir_all(&work)?;
    let token = std::fs::read_to_string(ha.lab.data_dir().join("admin-token"))?;
    let mut cmd = ha.lab.coord.command("python3");
    cmd.arg(script())
        .arg(format!("http://{API_ADDR}/ui/"))
        .arg(&work)
        .env("MESHGATE_ADMIN_TOKEN", token.trim());
    // The driver's process group (python, chromedriver, Chromium) dies with this guard.
    let mut driver = ha
        .lab
        .coord
        .spawn("console-driver", cmd, &ha.lab.log("console-driver"))?;

    let active_file = work.join("active");
    wait_until(
        BROWSER_TIMEOUT,
        "the console to show an active replica",
        || {
            if !driver.is_running() {
                bail!("the browser driver exited early:\n{}", driver.log());
            }
            Ok(active_file.is_file())
        },
    )?;
    let active = std::fs::read_to_string(&active_file)?;
    let i = ha
        .replicas
        .iter()
        .position(|r| r.replica_id.as_deref() == Some(active.as_str()))
        .with_context(|| format!("the console's active replica {active} is not one of ours"))?;
    anyhow::ensure!(
        ha.status(i)?["forwarding"] == "active",
        "the console shows replica {} as active, but its agent is not",
        ha.replicas[i].name
    );
    if let Some(agent) = ha.replicas[i].agent.as_mut() {
        agent.process.kill();
    }
    std::fs::write(work.join("killed"), b"")?;
    ha.wait_forwarding(1 - i, "active")?;

    let result_file = work.join("result.json");
    let result: serde_json::Value = wait_until_ok(
        SETTLE + BROWSER_TIMEOUT,
        "the browser driver's verdict",
        || {
            if let Ok(text) = std::fs::read_to_string(&result_file) {
                return Ok(serde_json::from_str(&text)?);
            }
            if !driver.is_running() {
                bail!("the browser driver exited without a verdict");
            }
            bail!("no verdict yet")
        },
    )
    .with_context(|| driver.log())?;
    println!("console driver: {result}");
    anyhow::ensure!(
        result["ok"] == true,
        "the console check failed: {}\n{}",
        result["error"],
        driver.log()
    );
    anyhow::ensure!(result["after"] == ha.replicas[1 - i].replica_id.as_deref().unwrap_or(""));
    // The panel showed lines of both replicas, as the agents sent them (the driver also
    // checked that the filter narrows them to each one).
    let shown: Vec<&str> = result["log_replicas"]
        .as_array()
        .context("no log lines in the verdict")?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    for r in &ha.replicas {
        let id = r.replica_id.as_deref().context("a replica without id")?;
        anyhow::ensure!(
            shown.contains(&id),
            "replica {}'s logs are not in the panel: {shown:?}",
            r.name
        );
    }
    Ok(())
}
