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
//! * The rules are replaced in one `nft -f` transaction (the table, its chains and its
//!   named counters stay); conntrack is left alone.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

pub use crate::policy_render::{
    Rendered, counter_name, matches, merge_ports, parse_sets, render, render_remove,
};
use meshgate_proto::{Filter, FilterCounters, Id};
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

/// Packet counts by counter name, from `nft -j list counters table ip meshgate_policy`
/// (listing only the counter objects is several times cheaper than the whole table).
pub fn parse_counters(json: &str) -> anyhow::Result<HashMap<String, u64>> {
    let v: serde_json::Value = serde_json::from_str(json).context("nft printed no JSON")?;
    let mut out = HashMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["counter"];
        if let (Some(name), Some(packets)) = (c["name"].as_str(), c["packets"].as_u64()) {
            out.insert(name.to_owned(), packets);
        }
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
    /// Packets that matched each policy (by id), `default_allow` and `default_drop`.
    pub matches: HashMap<String, u64>,
    /// When the filter was put in force (or the attempt failed), ms since the Unix epoch.
    #[serde(default)]
    pub applied_unix_ms: u64,
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
            applied_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
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

/// Cumulative counters by counter name: what the table counts now plus what counters
/// that were deleted or recreated (a removed policy, the table removed) had counted.
#[derive(Debug, Default)]
pub struct Totals {
    base: HashMap<String, u64>,
    last: HashMap<String, u64>,
}

impl Totals {
    /// A fresh reading of the table's counters (empty once the table is gone).
    pub fn observe(&mut self, now: HashMap<String, u64>) {
        for (k, old) in self.last.drain() {
            if now.get(&k).is_none_or(|n| *n < old) {
                *self.base.entry(k).or_default() += old;
            }
        }
        self.last = now;
    }

    /// The counters of the table now (to delete those a new filter does not use).
    pub fn names(&self) -> Vec<String> {
        self.last.keys().cloned().collect()
    }

    /// Everything, by counter name.
    pub fn all(&self) -> HashMap<String, u64> {
        let mut out = self.base.clone();
        for (k, v) in &self.last {
            *out.entry(k.clone()).or_default() += v;
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
            .filter_map(|(k, v)| Some((k.strip_prefix("p_")?.parse::<Id>().ok()?, *v)))
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
