//! Network-policy enforcement: the filter the coordinator compiled for this participant,
//! rendered as an nftables table of its own and checked by the kernel on every packet
//! that arrives from the tunnel — the input path for the agent's own Mesh IP, the forward
//! path (TUN → LAN) for a node's subnets.
//!
//! Why this shape (see the README's "Network policies"):
//! * Replies pass by conntrack state: a packet from the mesh in a flow's reply direction
//!   belongs to a flow this side (or its LAN) opened. Packets in a flow's original
//!   direction are checked against the rules.
//! * Each ruleset has a *generation*, kept in the conntrack mark of the flows it allowed.
//!   A flow already allowed under the current generation takes one rule; after a change
//!   its next packet is checked once against the new rules. So an unrelated change cuts
//!   nothing, while a flow the new rules no longer allow (a removed allow, a new block)
//!   stops at its next packet.
//! * TCP flows are picked up mid-stream (`nf_conntrack_tcp_loose`, on by default): after
//!   a failover the new active checks an established flow's next packet and marks it.
//! * The ruleset is replaced in one `nft -f` transaction; conntrack is left alone.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use meshgate_proto::{Filter, FilterCounters, FilterRule, Id};
use serde::{Deserialize, Serialize};

/// The nftables table the policy filter owns (the MSS clamp has its own).
pub const TABLE: &str = "meshgate_policy";

/// Gathers the chunks of one filter.
#[derive(Debug, Default)]
pub struct Assembly {
    digest: u64,
    parts: Vec<Option<Filter>>,
}

impl Assembly {
    /// Adds a chunk; returns the whole filter (rules in order) once every chunk of its
    /// digest is here. A chunk of another digest starts over: only the newest counts.
    pub fn add(&mut self, f: Filter) -> Option<Filter> {
        let total = usize::from(f.chunks.max(1));
        if f.digest != self.digest || self.parts.len() != total {
            self.digest = f.digest;
            self.parts = vec![None; total];
        }
        let i = usize::from(f.chunk);
        if i >= total {
            return None;
        }
        self.parts[i] = Some(f);
        if self.parts.iter().any(Option::is_none) {
            return None;
        }
        let mut parts = std::mem::take(&mut self.parts).into_iter().flatten();
        let mut whole = parts.next()?;
        for p in parts {
            whole.rules.extend(p.rules);
        }
        whole.chunk = 0;
        whole.chunks = 1;
        Some(whole)
    }
}

fn merge_ports(ports: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut v = ports.to_vec();
    v.sort();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn set<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

fn proto_name(n: u8) -> String {
    match n {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        other => other.to_string(),
    }
}

/// One rule's matches, in nft syntax.
fn matches(r: &FilterRule) -> String {
    let mut m = String::new();
    if !r.sources.iter().any(|n| n.prefix_len() == 0) {
        let _ = write!(m, "ip saddr {} ", set(&r.sources));
    }
    if !r.destinations.iter().any(|n| n.prefix_len() == 0) {
        let _ = write!(m, "ip daddr {} ", set(&r.destinations));
    }
    if !r.protocols.is_empty() {
        let _ = write!(
            m,
            "meta l4proto {} ",
            set(r.protocols.iter().map(|p| proto_name(*p)))
        );
    }
    if !r.ports.is_empty() {
        let ports = merge_ports(&r.ports).into_iter().map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        });
        let _ = write!(m, "th dport {} ", set(ports));
    }
    m
}

/// The whole nft script that replaces the table with `f`, under `generation` (nonzero).
/// `None` when the filter enforces nothing (no rules, default allow): the table goes.
pub fn render(tun: &str, f: &Filter, generation: u32) -> Option<String> {
    let mut s = format!("add table ip {TABLE}\ndelete table ip {TABLE}\n");
    if f.rules.is_empty() && f.default_allow {
        return None;
    }
    let _ = writeln!(s, "table ip {TABLE} {{");
    for hook in ["input", "forward"] {
        let _ = writeln!(
            s,
            "  chain {hook} {{\n    type filter hook {hook} priority filter; policy accept;\n    iifname \"{tun}\" jump from_mesh\n  }}"
        );
    }
    let _ = writeln!(s, "  chain from_mesh {{");
    let _ = writeln!(s, "    ct direction reply accept");
    let _ = writeln!(s, "    ct state related accept");
    let _ = writeln!(s, "    ct state established ct mark {generation:#x} accept");
    let allow = format!("ct mark set {generation:#x} accept");
    for r in &f.rules {
        let verdict = if r.allow { allow.as_str() } else { "drop" };
        let _ = writeln!(
            s,
            "    {}counter {verdict} comment \"p:{}\"",
            matches(r),
            r.policy
        );
    }
    let default = if f.default_allow {
        allow.as_str()
    } else {
        "drop"
    };
    let _ = writeln!(s, "    counter {default} comment \"default\"");
    let _ = writeln!(s, "  }}\n}}");
    Some(s)
}

/// The script that removes the table (nothing to do if it is not there).
pub fn render_remove() -> String {
    format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// Packet counts by rule comment (`p:ID` or `default`), from `nft -j list table`.
pub fn parse_counters(json: &str) -> anyhow::Result<HashMap<String, u64>> {
    let v: serde_json::Value = serde_json::from_str(json).context("nft printed no JSON")?;
    let mut out = HashMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        let Some(comment) = rule["comment"].as_str() else {
            continue;
        };
        let packets: u64 = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["counter"]["packets"].as_u64())
            .sum();
        *out.entry(comment.to_owned()).or_default() += packets;
    }
    Ok(out)
}

/// What `status` shows about the filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterStatus {
    /// `enforcing`, `none` (nothing to enforce) or `error: ...`.
    pub state: String,
    /// The digest of the filter in force.
    pub digest: String,
    /// `allow` or `block`.
    pub default_action: String,
    /// The rules in force, in order: `allow|block <policy>: <matches>`.
    pub rules: Vec<String>,
    /// Packets that matched each rule's policy (or `default`).
    pub matches: HashMap<String, u64>,
}

impl FilterStatus {
    /// The status of `f` once applied.
    pub fn of(f: &Filter, state: &str) -> Self {
        Self {
            state: state.into(),
            digest: format!("{:016x}", f.digest),
            default_action: if f.default_allow { "allow" } else { "block" }.into(),
            rules: f
                .rules
                .iter()
                .map(|r| {
                    let m = matches(r);
                    format!(
                        "{} {}: {}",
                        if r.allow { "allow" } else { "block" },
                        r.policy,
                        if m.is_empty() {
                            "everything"
                        } else {
                            m.trim_end()
                        }
                    )
                })
                .collect(),
            matches: HashMap::new(),
        }
    }
}

/// The filter's lines in `status`'s human form.
pub fn human(out: &mut String, f: &FilterStatus) {
    let _ = writeln!(
        out,
        "  filter       {} ({} rules, default {}, digest {})",
        f.state,
        f.rules.len(),
        f.default_action,
        f.digest
    );
    let hits = |key: &str| f.matches.get(key).copied().unwrap_or(0);
    for r in &f.rules {
        let policy = r
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .trim_end_matches(':');
        let _ = writeln!(out, "    {r} [{} packets]", hits(&format!("p:{policy}")));
    }
    let default = if f.default_action == "allow" {
        "default_allow"
    } else {
        "default_drop"
    };
    let _ = writeln!(
        out,
        "    default {} [{} packets]",
        f.default_action,
        hits(default)
    );
}

/// Cumulative counters: those of replaced rulesets plus the table's current ones.
#[derive(Debug, Default)]
pub struct Totals {
    base: HashMap<String, u64>,
    current: HashMap<String, u64>,
    default_allow: bool,
}

impl Totals {
    /// The table is about to be replaced: keep what it counted.
    pub fn fold(&mut self, default_allow: bool) {
        for (k, v) in self.current.drain() {
            let key = if k == "default" {
                if self.default_allow {
                    "default_allow"
                } else {
                    "default_drop"
                }
                .to_owned()
            } else {
                k
            };
            *self.base.entry(key).or_default() += v;
        }
        self.default_allow = default_allow;
    }

    /// The live table's counts.
    pub fn set_current(&mut self, c: HashMap<String, u64>) {
        self.current = c;
    }

    /// Everything, by `p:ID`, `default_allow`, `default_drop`.
    pub fn all(&self) -> HashMap<String, u64> {
        let mut out = self.base.clone();
        for (k, v) in &self.current {
            let key = if k == "default" {
                if self.default_allow {
                    "default_allow"
                } else {
                    "default_drop"
                }
            } else {
                k
            };
            *out.entry(key.to_owned()).or_default() += v;
        }
        out
    }

    /// As the coordinator wants them.
    pub fn report(&self) -> FilterCounters {
        let all = self.all();
        let mut c = FilterCounters {
            default_drops: all.get("default_drop").copied().unwrap_or(0),
            default_allows: all.get("default_allow").copied().unwrap_or(0),
            ..Default::default()
        };
        c.policies = all
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("p:")?.parse::<Id>().ok()?, *v)))
            .collect();
        c.policies.sort();
        c
    }
}

/// Runs `nft` with `args`, feeding it `script`; returns its stdout.
pub fn nft(args: &[&str], script: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("nft stdin")?;
    if let Some(s) = script {
        stdin
            .write_all(s.as_bytes())
            .context("failed to write to nft")?;
    }
    drop(stdin);
    let out = child.wait_with_output().context("failed to wait for nft")?;
    if !out.status.success() {
        bail!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
