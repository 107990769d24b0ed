//! Shared by the root-only kernel tests: running async agent code inside a namespace and
//! reading kernel state back through `ip -j`.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::future::Future;

use meshgate_tests::Netns;
use serde_json::Value;

/// Runs `f` on a current-thread tokio runtime on a thread inside `ns`, so every netlink,
/// TUN and packet socket it opens belongs to `ns` (as do child processes it spawns).
pub fn run_in<F, Fut, R>(ns: &Netns, f: F) -> anyhow::Result<R>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = anyhow::Result<R>>,
    R: Send,
{
    ns.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(f())
    })?
}

/// `ip -j <args>` in `ns`, parsed.
pub fn ip_json(ns: &Netns, args: &str) -> anyhow::Result<Vec<Value>> {
    let out = ns.ip(&format!("-j {args}"))?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_str(&out)?)
}

/// The routes of `table`, each as `dst dev X` / `dst via G dev X` / `dst unreachable`,
/// sorted; only those with `proto` when given.
pub fn routes(ns: &Netns, table: u32) -> anyhow::Result<Vec<String>> {
    // A table that never existed (or was emptied) is an error for `ip route show`.
    let Ok(list) = ip_json(ns, &format!("route show table {table}")) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = list
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            let target = if s("type") == "unreachable" {
                "unreachable".to_owned()
            } else if r.get("gateway").is_some() {
                format!("via {} dev {}", s("gateway"), s("dev"))
            } else {
                format!("dev {}", s("dev"))
            };
            format!("{} {target} proto {}", s("dst"), s("protocol"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The IPv4 rules with `protocol`, each as `pref P [from S] [to D] lookup T`, sorted.
pub fn rules(ns: &Netns, protocol: &str) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = ip_json(ns, "rule show")?
        .iter()
        .filter(|r| r["protocol"].as_str() == Some(protocol))
        .map(|r| {
            let mut s = format!("pref {}", r["priority"]);
            if let Some(src) = r["src"].as_str().filter(|s| *s != "all") {
                s += &format!(" from {src}");
            }
            if let Some(dst) = r["dst"].as_str() {
                s += &format!(" to {dst}");
            }
            s + &format!(" lookup {}", r["table"].as_str().unwrap_or_default())
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The IPv4 addresses of `dev` as `a.b.c.d/len`.
pub fn addrs(ns: &Netns, dev: &str) -> anyhow::Result<Vec<String>> {
    let list = ip_json(ns, &format!("-4 addr show dev {dev}"))?;
    Ok(list
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            )
        })
        .collect())
}

/// Owned strings, for comparing with the helpers above.
pub fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}
