//! Row 6: what network policies cost. TCP throughput device → LAN host through the HA
//! node with 0, 100 and 1,000 policies in the node's filter (rounds interleave the
//! three, so a busy moment of the shared machine hits them alike), and how long a
//! 1,000-policy filter takes from the API call to being in force at the agent.
//!
//! The policies are blocks of other sources, so every new flow of the device walks all of
//! them before the default allow lets it in; "0" is no filter table at all (what a mesh
//! without policies runs). The node's tags select the set: 1,000 policies exist
//! throughout, 100 of them target tag `p100`, the other 900 tag `p1000`.

use std::time::Duration;

use anyhow::Context;
use meshgate_tests::{
    bench::{self, Better, Figure},
    ha::{HOST_IP, Ha},
    reference::iperf::Server,
    require_root, wait_until,
};
use serde_json::json;

const ROW: u8 = 6;
const PORT: u16 = 5201;
/// Quiet time between switching the filter and measuring.
const SETTLE: Duration = Duration::from_secs(2);
const REPRODUCE: &str = "cargo xtask bench --only bench_policy (or, as root after a release \
    build: MESHGATE_BIN_DIR=$PWD/target/release cargo test --release -p meshgate-tests \
    --test bench_policy -- --ignored bench_ --test-threads=1 --nocapture)";
/// (figure id suffix, node tags, policies in the filter).
const SETS: [(&str, &[&str], usize); 3] = [
    ("0", &[], 0),
    ("100", &["p100"], 100),
    ("1000", &["p100", "p1000"], 1000),
];

fn seconds() -> f64 {
    if bench::quick() { 2.0 } else { 5.0 }
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Sets the node's tags and waits until both replicas enforce `rules` rules; returns
/// how long after the API's answer the later of the two put it in force (their status
/// says when), in ms. Then lets the machine settle, so the throughput that follows is
/// not measured while a replica still loads its filter.
fn select(ha: &Ha, tags: &[&str], rules: usize) -> anyhow::Result<f64> {
    let api = ha.lab.api()?;
    let r = api.call(
        "PATCH",
        &format!("/api/v1/nodes/{}", ha.node.0),
        Some(&json!({"tags": tags})),
    )?;
    r.result()?;
    let t0 = unix_ms();
    let mut applied = [0.0f64; 2];
    wait_until(
        Duration::from_secs(30),
        &format!("{rules} rules in force"),
        || {
            for (i, at) in applied.iter_mut().enumerate() {
                let s = ha.status(i)?;
                let n = s["filter"]["rules"].as_array().map_or(0, Vec::len);
                if n != rules || (rules == 0 && s["filter"]["state"] != "none") {
                    return Ok(false);
                }
                *at = s["filter"]["applied_unix_ms"].as_f64().unwrap_or(f64::NAN);
            }
            Ok(true)
        },
    )?;
    let ms = applied[0].max(applied[1]) - t0;
    std::thread::sleep(SETTLE);
    Ok(ms)
}

#[test]
#[ignore = "benchmark, needs root: run by cargo xtask bench"]
fn bench_policy() -> anyhow::Result<()> {
    require_root()?;
    let ha = Ha::started(2)?;
    let api = ha.lab.api()?;
    for i in 0..1000u32 {
        let tag = if i < 100 { "p100" } else { "p1000" };
        let r = api.post(
            "/api/v1/policies",
            &json!({"name": format!("p{i}"), "precedence": i, "action": "block",
                "sources": [format!("cidr:10.{}.{}.0/24", 200 + i / 256, i % 256)],
                "destinations": [format!("tag:{tag}")],
                "protocols": ["tcp"], "ports": [format!("{}-{}", 1000 + i, 2000 + i)]}),
        )?;
        r.result().with_context(|| format!("policy p{i}"))?;
    }
    let dir = tempfile::Builder::new()
        .prefix("meshgate-policy-")
        .tempdir()?;
    let server = Server::start(&ha.host, HOST_IP, PORT, &dir.path().join("iperf3.log"))?;
    let rounds = bench::repeats(5);
    let mut mbit: Vec<Vec<f64>> = vec![Vec::new(); SETS.len()];
    let mut apply = Vec::new();
    for round in 0..rounds {
        for (i, (id, tags, rules)) in SETS.iter().enumerate() {
            let ms = select(&ha, tags, *rules)?;
            if *rules == 1000 {
                apply.push(ms);
            }
            let m = server.tcp(&ha.device, seconds(), false)?;
            eprintln!(
                "round {round}: {id} policies: {m:.0} Mbit/s (filter in force after {ms:.0} ms)"
            );
            mbit[i].push(m);
        }
    }
    for (i, (id, _, rules)) in SETS.iter().enumerate() {
        let mut f = Figure::new(
            &format!("policy.throughput.{id}"),
            ROW,
            &format!("TCP device → LAN host with {rules} policies in the node's filter"),
            "Mbit/s",
            Better::Higher,
        )
        .samples(mbit[i].clone())
        .reproduce(REPRODUCE)
        .note(&format!(
            "iperf3, one TCP stream, {} s runs; rounds interleave 0, 100, 1,000; each policy \
             blocks another /24 on a port range, so a new flow walks all of them; 0 = no table; \
             measured 2 s after both replicas enforce the filter",
            seconds()
        ));
        if *rules > 0 {
            f = f.baseline("policy.throughput.0").target("ratio>=", 0.9);
        }
        bench::record(&f)?;
    }
    bench::record(
        &Figure::new(
            "policy.apply_ms.1000",
            ROW,
            "A 1,000-policy filter in force at both replicas after the API call",
            "ms",
            Better::Lower,
        )
        .samples(apply)
        .target("<=", 1000.0)
        .reproduce(REPRODUCE)
        .note(
            "from the answer to the PATCH of the node's tags (compile, push, nft -f) to the \
             moment the later replica's nft -f returned, as its status reports it",
        ),
    )?;
    Ok(())
}
