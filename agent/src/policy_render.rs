//! The nft script that puts a filter in force (see [`crate::policy`] for the shape of
//! the table and why).
//!
//! A list of more than one network, port range or protocol becomes a *named* set,
//! shared by every rule with the same list: most rules of a filter name the same
//! destinations (the participant's own networks), and nft builds an anonymous set per
//! rule otherwise — for 1,000 policies that made `nft -f` take 0.4–1.6 s instead of
//! 0.1 s. A single item is matched directly, with no set at all.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use meshgate_proto::{Filter, FilterRule, Id};

use crate::policy::TABLE;

/// What a match list holds, and so the type of its set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Net,
    Port,
    Proto,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Net => "net_",
            Kind::Port => "port_",
            Kind::Proto => "proto_",
        }
    }

    fn spec(self) -> &'static str {
        match self {
            Kind::Net => "type ipv4_addr; flags interval; auto-merge;",
            Kind::Port => "type inet_service; flags interval; auto-merge;",
            Kind::Proto => "type inet_proto;",
        }
    }
}

/// Whether `name` is one of the sets [`render`] makes.
fn is_ours(name: &str) -> bool {
    [Kind::Net, Kind::Port, Kind::Proto]
        .iter()
        .any(|k| name.starts_with(k.prefix()))
}

/// Merges touching and overlapping port ranges.
pub fn merge_ports(ports: &[(u16, u16)]) -> Vec<(u16, u16)> {
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

fn proto_name(n: u8) -> String {
    match n {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        other => other.to_string(),
    }
}

/// One rule's matches, each list written by `list`.
fn matches_with(r: &FilterRule, list: &mut impl FnMut(Kind, Vec<String>) -> String) -> String {
    let strings = |v: &[ipnet::Ipv4Net]| v.iter().map(ToString::to_string).collect();
    let mut m = String::new();
    if !r.sources.iter().any(|n| n.prefix_len() == 0) {
        let _ = write!(m, "ip saddr {} ", list(Kind::Net, strings(&r.sources)));
    }
    if !r.destinations.iter().any(|n| n.prefix_len() == 0) {
        let _ = write!(m, "ip daddr {} ", list(Kind::Net, strings(&r.destinations)));
    }
    if !r.protocols.is_empty() {
        let protos = r.protocols.iter().map(|p| proto_name(*p)).collect();
        let _ = write!(m, "meta l4proto {} ", list(Kind::Proto, protos));
    }
    if !r.ports.is_empty() {
        let ports = merge_ports(&r.ports)
            .into_iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        let _ = write!(m, "th dport {} ", list(Kind::Port, ports));
    }
    m
}

fn inline(items: &[String]) -> String {
    format!("{{ {} }}", items.join(", "))
}

/// One rule's matches in nft syntax, every list inline (what `status` shows).
pub fn matches(r: &FilterRule) -> String {
    matches_with(r, &mut |_, items| inline(&items))
}

/// The name of a policy's counter object: `p_` and the id's 32 hex digits.
pub fn counter_name(policy: &Id) -> String {
    let hex: String = policy.0.iter().map(|b| format!("{b:02x}")).collect();
    format!("p_{hex}")
}

/// The counter of the default verdict.
fn default_counter(allow: bool) -> &'static str {
    if allow {
        "default_allow"
    } else {
        "default_drop"
    }
}

/// A script and the sets it leaves in the table (the next render deletes those it no
/// longer needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The `nft -f` input.
    pub script: String,
    /// Names of the named sets the table holds once it ran.
    pub sets: Vec<String>,
}

/// The whole nft script that puts `f` in force under `generation` (nonzero), replacing
/// the chains' rules and the sets' elements in one transaction. Counters are named
/// objects that outlive the replacement, so nothing has to be read before it; `stale`
/// are counters of policies the filter no longer has and `old_sets` the sets the table
/// holds now, deleted in the same transaction when unused. `None` when the filter
/// enforces nothing (no rules, default allow): the table goes ([`render_remove`]).
pub fn render(
    tun: &str,
    f: &Filter,
    generation: u32,
    stale: &[String],
    old_sets: &[String],
) -> Option<Rendered> {
    if f.rules.is_empty() && f.default_allow {
        return None;
    }
    let t = format!("ip {TABLE}");
    let allow = format!("ct mark set {generation:#x} accept");
    let mut sets: BTreeMap<(Kind, Vec<String>), String> = BTreeMap::new();
    let mut rules = Vec::with_capacity(f.rules.len());
    for r in &f.rules {
        let mut list = |kind: Kind, items: Vec<String>| {
            if let [one] = items.as_slice() {
                return one.clone();
            }
            let n = sets.len();
            let name = sets
                .entry((kind, items))
                .or_insert_with(|| format!("{}{n}", kind.prefix()));
            format!("@{name}")
        };
        let verdict = if r.allow { allow.as_str() } else { "drop" };
        let c = counter_name(&r.policy);
        let m = matches_with(r, &mut list);
        rules.push(format!("{m}counter name \"{c}\" {verdict}"));
    }

    let mut s = format!("add table {t}\n");
    for hook in ["input", "forward"] {
        let _ = writeln!(
            s,
            "add chain {t} {hook} {{ type filter hook {hook} priority filter; policy accept; }}"
        );
    }
    let _ = writeln!(s, "add chain {t} from_mesh");
    for chain in ["input", "forward", "from_mesh"] {
        let _ = writeln!(s, "flush chain {t} {chain}");
    }
    let mut counters: Vec<String> = f.rules.iter().map(|r| counter_name(&r.policy)).collect();
    counters.extend(["default_allow".into(), "default_drop".into()]);
    counters.sort();
    counters.dedup();
    for c in &counters {
        let _ = writeln!(s, "add counter {t} {c}");
    }
    for c in stale.iter().filter(|c| counters.binary_search(c).is_err()) {
        let _ = writeln!(s, "delete counter {t} {c}");
    }
    // The chains were flushed above, so no rule refers to a set any more.
    let names: Vec<String> = sets.values().cloned().collect();
    for old in old_sets.iter().filter(|o| is_ours(o) && !names.contains(o)) {
        let _ = writeln!(s, "delete set {t} {old}");
    }
    for ((kind, items), name) in &sets {
        let _ = writeln!(s, "add set {t} {name} {{ {} }}", kind.spec());
        let _ = writeln!(s, "flush set {t} {name}");
        let _ = writeln!(s, "add element {t} {name} {}", inline(items));
    }
    for hook in ["input", "forward"] {
        let _ = writeln!(s, "add rule {t} {hook} iifname \"{tun}\" jump from_mesh");
    }
    let mut rule = |r: &str| {
        let _ = writeln!(s, "add rule {t} from_mesh {r}");
    };
    rule("ct direction reply accept");
    rule("ct state related accept");
    rule(&format!(
        "ct state established ct mark {generation:#x} accept"
    ));
    for r in &rules {
        rule(r);
    }
    let default = if f.default_allow {
        allow.as_str()
    } else {
        "drop"
    };
    let c = default_counter(f.default_allow);
    rule(&format!("counter name \"{c}\" {default}"));
    Some(Rendered {
        script: s,
        sets: names,
    })
}

/// The script that removes the table (nothing to do if it is not there).
pub fn render_remove() -> String {
    format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// The names of the sets [`render`] made, from `nft -j list sets table ip
/// meshgate_policy` (a table a previous run left).
pub fn parse_sets(json: &str) -> anyhow::Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(json).context("nft printed no JSON")?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["set"]["name"].as_str())
        .filter(|n| is_ours(n))
        .map(str::to_owned)
        .collect())
}
