//! The agent's answers to bad input: a malformed or missing token, a missing interface, a
//! VIP outside the interface's subnet, an unreachable coordinator. Each must say what is
//! wrong, and none may leave anything in the kernel.

use std::{process::Command, time::Duration};

use meshgate_proto::{Id, Kind, Token};
use meshgate_tests::{Netns, lab::bin, require_root, wait_until_ok};

/// A well-formed token for a coordinator that is not there (port 9 on the namespace's
/// own loopback: nothing listens, and no packet leaves the namespace).
fn token(kind: Kind) -> String {
    Token {
        kind,
        id: Id::random(),
        secret: [7; 32],
        addrs: vec!["127.0.0.1:9".into()],
        fingerprint: [1; 32],
    }
    .encode()
}

fn agent(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("meshgate-agent").expect("the agent is built"))
        .args(args)
        .output()
        .expect("the agent runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_malformed_token_exits_at_once_naming_the_token() {
    let (ok, err) = agent(&[
        "run",
        "--token",
        "not-a-token",
        "--state-dir",
        "/nonexistent/never-created",
    ]);
    assert!(!ok);
    assert!(err.contains("the token is malformed"), "{err}");
}

#[test]
fn no_token_says_how_to_give_one() {
    let (ok, err) = agent(&["run", "--state-dir", "/nonexistent/never-created"]);
    assert!(!ok);
    assert!(
        err.contains("--token") && err.contains("--token-file"),
        "{err}"
    );
}

#[test]
fn status_without_an_agent_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, err) = agent(&["status", "--state-dir", &dir.path().display().to_string()]);
    assert!(!ok);
    assert!(err.contains("no agent answers"), "{err}");
}

fn lan_ns() -> anyhow::Result<Netns> {
    let ns = Netns::new("bad")?;
    ns.ip("link add eth1 type veth peer name eth2")?;
    ns.ip("link set eth1 up")?;
    ns.ip("link set eth2 up")?;
    ns.ip("addr add 192.168.77.2/24 dev eth1")?;
    Ok(ns)
}

fn run_in(ns: &Netns, state: &std::path::Path, extra: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = ns
        .command(bin("meshgate-agent")?)
        .args(["run", "--token", &token(Kind::Node), "--state-dir"])
        .arg(state)
        .args(extra)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn assert_untouched(ns: &Netns) -> anyhow::Result<()> {
    assert!(ns.ip("link show mesh0").is_err(), "a TUN was left behind");
    let rules = ns.ip("rule show")?;
    assert!(
        !rules.contains("7301") && !rules.contains("7302"),
        "rules were left behind: {rules}"
    );
    assert!(
        !ns.ip("link show eth1")?.contains("xdp"),
        "XDP was left behind"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_missing_interface_or_a_vip_outside_its_subnet_is_refused() -> anyhow::Result<()> {
    require_root()?;
    let ns = lan_ns()?;
    let state = tempfile::tempdir()?;
    let (ok, err) = run_in(
        &ns,
        state.path(),
        &["--lan-iface", "nope0", "--gateway-ip", "192.168.77.1/24"],
    )?;
    assert!(
        !ok && err.contains("--lan-iface nope0: no such interface"),
        "{err}"
    );
    assert_untouched(&ns)?;
    let (ok, err) = run_in(
        &ns,
        state.path(),
        &["--lan-iface", "eth1", "--gateway-ip", "10.1.2.1/24"],
    )?;
    assert!(!ok && err.contains("outside every IPv4 subnet"), "{err}");
    assert_untouched(&ns)?;
    let (ok, err) = run_in(&ns, state.path(), &[])?;
    assert!(!ok && err.contains("needs --lan-iface"), "{err}");
    assert_untouched(&ns)?;
    Ok(())
}

#[test]
#[ignore = "needs root: network namespaces"]
fn an_unreachable_coordinator_is_retried_and_shown_disconnected() -> anyhow::Result<()> {
    require_root()?;
    let ns = lan_ns()?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let mut cmd = ns.command(bin("meshgate-agent")?);
    cmd.args([
        "run",
        "--token",
        &token(Kind::Node),
        "--lan-iface",
        "eth1",
        "--gateway-ip",
        "192.168.77.1/24",
    ])
    .arg("--state-dir")
    .arg(&state);
    let mut agent = ns.spawn("agent", cmd, &dir.path().join("agent.log"))?;
    let status = wait_until_ok(
        Duration::from_secs(15),
        "a status saying disconnected",
        || {
            let out = Command::new(bin("meshgate-agent")?)
                .args(["status", "--json", "--state-dir"])
                .arg(&state)
                .output()?;
            let s: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            anyhow::ensure!(
                s["connection"]["state"] == "disconnected",
                "state is {}",
                s["connection"]["state"]
            );
            Ok(s)
        },
    )?;
    assert_eq!(
        status["forwarding"], "fenced",
        "nothing forwards without a coordinator"
    );
    wait_until_ok(Duration::from_secs(10), "two retry log lines", || {
        let n = agent
            .log()
            .matches("cannot reach the coordinator; retrying")
            .count();
        anyhow::ensure!(n >= 2, "{n} so far");
        Ok(())
    })?;
    // A clean stop (SIGTERM while not active) leaves nothing behind.
    agent.signal(libc::SIGTERM)?;
    let exit = agent.wait_exit(Duration::from_secs(10))?;
    assert!(exit.success(), "{exit}: {}", agent.log());
    assert_untouched(&ns)?;
    Ok(())
}
