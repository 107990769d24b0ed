//! `meshgate-agent sysdump`: the kernel state an agent manages on this host, in one
//! `tar.gz` for a bug report — links, addresses, policy rules, every routing table,
//! neighbours, the `inet meshgate` nftables table, XDP programs and their maps (with
//! bpftool when installed), the sysctls the agent sets, the running agent's status and
//! versions. It reads what the kernel shows and the status socket; it changes nothing.
//! Secrets are redacted by [`meshgate_sysdump`] (the token is never read into it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshgate_sysdump::Archive;
use serde_json::Value;

use crate::{state_dir, status};

/// `(file, program, arguments)` of every command whose output goes in.
const COMMANDS: &[(&str, &str, &[&str])] = &[
    ("ip/link.txt", "ip", &["-d", "-s", "link", "show"]),
    ("ip/addr.txt", "ip", &["-d", "addr", "show"]),
    ("ip/rule.txt", "ip", &["rule", "show"]),
    ("ip/route.txt", "ip", &["route", "show", "table", "all"]),
    ("ip/neigh.txt", "ip", &["neigh", "show"]),
    (
        "nft/meshgate.txt",
        "nft",
        &["list", "table", "inet", "meshgate"],
    ),
    ("bpf/prog.txt", "bpftool", &["prog", "show"]),
    ("bpf/map.txt", "bpftool", &["map", "show"]),
    ("bpf/net.txt", "bpftool", &["net", "show"]),
];

/// The sysctls the agent sets (per interface ones for every interface).
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv4/conf/*/rp_filter",
    "net/ipv4/conf/*/send_redirects",
];

/// Writes the archive for the agent whose state dir is `state_dir`.
pub async fn collect(state_dir: &Path, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let mut a = Archive::new(&top_dir(), secrets());
    a.json("versions.json", &versions())?;
    let report = status::query(&state_dir::status_socket(state_dir), timeout).await;
    match report {
        Ok(r) => a.json("status.json", &serde_json::to_value(&r)?)?,
        Err(e) => a.text(
            "status.json",
            &format!("no running agent answered: {e:#}\n"),
        )?,
    }
    for (file, program, args) in COMMANDS {
        a.text(file, &run(program, args))?;
    }
    for (id, dump) in meshgate_maps() {
        a.text(&format!("bpf/map-{id}.txt"), &dump)?;
    }
    a.text("sysctl.txt", &sysctls())?;
    a.text("state-dir.txt", &meshgate_sysdump::dir_listing(state_dir))?;
    Ok(a.finish()?)
}

fn top_dir() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("meshgate-agent-sysdump-{now}")
}

/// The token this host's agent uses, wherever the environment says it is, so that it is
/// redacted should any output quote it.
fn secrets() -> Vec<String> {
    let mut out: Vec<String> = std::env::var("MESHGATE_TOKEN").ok().into_iter().collect();
    let file =
        std::env::var("MESHGATE_TOKEN_FILE").unwrap_or_else(|_| "/etc/meshgate/token".into());
    if let Ok(t) = std::fs::read_to_string(file) {
        out.push(t.trim().to_owned());
    }
    out
}

/// A command's output, or why there is none (a missing tool is not an error here).
fn run(program: &str, args: &[&str]) -> String {
    let line = format!("$ {program} {}\n", args.join(" "));
    match Command::new(program).args(args).output() {
        Ok(o) => format!(
            "{line}{}{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            if o.status.success() {
                String::new()
            } else {
                format!("({})\n", o.status)
            }
        ),
        Err(e) => format!("{line}not run: {e}\n"),
    }
}

fn version_of(program: &str, arg: &str) -> Value {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .into()
}

fn versions() -> Value {
    let mut v = meshgate_sysdump::host_info();
    v.insert("meshgate_agent".into(), env!("CARGO_PKG_VERSION").into());
    v.insert(
        "protocol_version".into(),
        meshgate_proto::PROTOCOL_VERSION.into(),
    );
    for (tool, arg) in [("ip", "-V"), ("nft", "--version"), ("bpftool", "--version")] {
        v.insert(tool.into(), version_of(tool, arg));
    }
    Value::Object(v)
}

/// The contents of the maps of meshgate's XDP programs (`xdp_gateway`, …), by map id.
fn meshgate_maps() -> Vec<(u64, String)> {
    let Ok(o) = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
    else {
        return Vec::new();
    };
    let progs: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let mut ids: Vec<u64> = progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "xdp" && p["name"].as_str().is_some_and(|n| n.starts_with("xdp_")))
        .flat_map(|p| p["map_ids"].as_array().cloned().unwrap_or_default())
        .filter_map(|id| id.as_u64())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .map(|id| (id, run("bpftool", &["map", "dump", "id", &id.to_string()])))
        .collect()
}

fn sysctls() -> String {
    let mut out = String::new();
    for pattern in SYSCTLS {
        let paths: Vec<PathBuf> = match pattern.split_once("/*/") {
            Some((dir, leaf)) => std::fs::read_dir(Path::new("/proc/sys").join(dir))
                .map(|d| d.flatten().map(|e| e.path().join(leaf)).collect())
                .unwrap_or_default(),
            None => vec![Path::new("/proc/sys").join(pattern)],
        };
        let mut paths = paths;
        paths.sort();
        for p in paths {
            if let Ok(v) = std::fs::read_to_string(&p) {
                let name = p
                    .strip_prefix("/proc/sys")
                    .unwrap_or(&p)
                    .display()
                    .to_string();
                out.push_str(&format!("{} = {}\n", name.replace('/', "."), v.trim()));
            }
        }
    }
    out
}
