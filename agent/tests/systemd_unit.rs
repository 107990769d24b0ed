//! The shipped systemd unit passes `systemd-analyze verify` (pointed at the binary this
//! build produced, since the unit names the installed path), and the example environment
//! file only sets variables the agent reads.

use std::process::Command;

const UNIT: &str = include_str!("../systemd/meshgate-agent.service");
const ENV_EXAMPLE: &str = include_str!("../systemd/agent.env.example");

#[test]
fn the_unit_verifies() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let env = dir.path().join("agent.env");
    std::fs::write(&env, ENV_EXAMPLE).expect("the temp dir is writable");
    let unit = UNIT
        .replace(
            "/usr/local/bin/meshgate-agent",
            env!("CARGO_BIN_EXE_meshgate-agent"),
        )
        .replace("/etc/meshgate/agent.env", &env.display().to_string());
    let path = dir.path().join("meshgate-agent.service");
    std::fs::write(&path, unit).expect("the temp dir is writable");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (cargo xtask setup installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify also checks the units this one pulls in; only lines about ours count.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("meshgate-agent"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn the_example_env_sets_only_known_variables() {
    let help = Command::new(env!("CARGO_BIN_EXE_meshgate-agent"))
        .args(["run", "--help"])
        .output()
        .expect("the agent binary runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for line in ENV_EXAMPLE.lines().map(|l| l.trim_start_matches('#')) {
        let Some((var, _)) = line.split_once('=') else {
            continue;
        };
        if var.starts_with("MESHGATE_") && var != "MESHGATE_LOG" {
            assert!(
                help.contains(var),
                "{var} from agent.env.example is not a `run` flag's env var"
            );
        }
    }
}

/// The settings of `section` (`[Unit]`, `[Service]`), as `key=value` lines.
fn section(name: &str) -> Vec<&'static str> {
    UNIT.lines()
        .skip_while(|l| l.trim() != name)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect()
}

#[test]
fn systemd_never_gives_up_restarting_and_cleans_up_after_a_crash() {
    let unit = section("[Unit]");
    assert!(
        unit.contains(&"StartLimitIntervalSec=0"),
        "without it, a few quick failures stop the agent for good: {unit:?}"
    );
    let service = section("[Service]");
    assert!(service.contains(&"Restart=on-failure"), "{service:?}");
    let post = service
        .iter()
        .find_map(|l| l.strip_prefix("ExecStopPost="))
        .expect("an ExecStopPost removes what a killed agent left");
    let mut words = post.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/meshgate-agent"));
    let sub = words.next().expect("a subcommand");
    let help = Command::new(env!("CARGO_BIN_EXE_meshgate-agent"))
        .args([sub, "--help"])
        .output()
        .expect("the agent binary runs");
    assert!(help.status.success(), "`meshgate-agent {sub}` exists");
}

#[test]
fn kernel_tunables_are_protected_except_what_the_agent_writes() {
    let service = section("[Service]");
    assert!(
        service.contains(&"ProtectKernelTunables=yes"),
        "{service:?}"
    );
    let writable = format!(
        "ReadWritePaths=/proc/sys/{}",
        meshgate_agent::sysctl::WRITABLE_SUBTREE.trim_end_matches('/')
    );
    assert!(service.contains(&writable.as_str()), "{service:?}");
}
