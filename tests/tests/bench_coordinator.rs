//! Benchmark row 5, coordinator scale (root; run by `cargo xtask bench`): a real
//! `meshgate-coordinator` in the lab's namespace and N real QUIC replicas simulated in
//! this one process — `proto` sessions over a few shared UDP endpoints in a client
//! namespace. For N = 100 and 1,000 (and 5,000 without `--quick`; N/2 HA nodes × 2
//! replicas), each trial on a freshly started coordinator:
//!
//! * the time to connect and register all N (a bounded number of handshakes in flight),
//!   and each connection's own latency;
//! * the coordinator's resident memory per connection (VmRSS after − before, / N);
//! * a promotion storm: every active drops at once; the time until every node's standby
//!   has been told it is active.
//!
//! Growth is shown as the ratio to N = 100 from the same run.
//!
//! Timings are 200 ms heartbeats and 1 s leases up to N = 1,000, not the default 50 ms /
//! 250 ms: at 1,000 replicas the defaults mean 20,000 heartbeats/s, which this one
//! simulating process cannot send on the 2 shared cores it was measured on (its heartbeats
//! fell late, leases expired and replicas flapped). At N = 5,000 even 200 ms is 25,000
//! heartbeats/s: the coordinator alone then needs more than one core (about 50 µs of CPU
//! per heartbeat, `cpu_per_khb`, nearly all of it quinn's packet work: a heartbeat, its
//! grant and their ACKs), and with the simulator beside it the registrations missed their
//! deadlines. So N = 5,000 runs 500 ms heartbeats and 1.5 s leases: 10,000 heartbeats/s.

use std::{
    net::UdpSocket,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use meshgate_proto::{
    Role, Token,
    client::{ConnectOptions, Session},
};
use meshgate_tests::{
    bench::{self, Better, Figure},
    lab::Lab,
    require_root,
};
use tokio::{sync::Semaphore, task::JoinSet};

const ROW: u8 = 5;
const REPRODUCE: &str = "cargo xtask bench --only coordinator";
/// Client UDP sockets the sessions share.
const ENDPOINTS: usize = 4;
/// Client socket buffers (the coordinator asks for the same).
const SOCKET_BUFFER: usize = 4 << 20;
/// Handshakes in flight at once, as a fleet reconnecting with backoff would spread them.
const IN_FLIGHT: usize = 32;
/// Threads creating nodes through the REST API at once.
const API_THREADS: usize = 4;
const STORM_TARGET_MS: f64 = 2000.0;
/// Heartbeat interval and lease of the simulated replicas, in ms, for `n` of them (see
/// the module docs): 200 / 1,000 up to N = 1,000; past it 500 / 1,500, which keeps 10,000
/// heartbeats/s at N = 5,000 and a lease short enough for the storm's 2 s.
fn timings(n: usize) -> (u64, u64) {
    if n <= 1_000 {
        (200, 1_000)
    } else {
        (500, 1_500)
    }
}
/// Clock ticks per second of `/proc/<pid>/stat` CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;
/// How long the steady-state CPU use is measured.
const CPU_WINDOW: Duration = Duration::from_secs(2);
const RSS_TARGET_KIB: f64 = 64.0;

/// One node's replicas.
struct Node {
    token: Token,
    replicas: Vec<Session>,
}

/// The samples of one N.
#[derive(Default)]
struct Samples {
    /// The first trial: every replica is new and gets its Mesh IP (a durable write each).
    register_new_ms: Vec<f64>,
    connect_all_ms: Vec<f64>,
    connect_each_ms: Vec<f64>,
    rss_kib_per_conn: Vec<f64>,
    cpu_percent: Vec<f64>,
    cpu_per_khb: Vec<f64>,
    storm_ms: Vec<f64>,
    api_ms: Vec<f64>,
}

/// Creates `count` HA nodes through the API, `API_THREADS` at a time; returns their
/// tokens and each call's latency in ms.
fn create_nodes(lab: &Lab, count: usize) -> anyhow::Result<(Vec<Token>, Vec<f64>)> {
    let chunks: Vec<Vec<usize>> = (0..API_THREADS)
        .map(|t| (t..count).step_by(API_THREADS).collect())
        .collect();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                s.spawn(move || -> anyhow::Result<Vec<(usize, Token, f64)>> {
                    chunk
                        .iter()
                        .map(|&i| {
                            let started = Instant::now();
                            let (_, token) = lab.create_node(&format!("bench-{i}"), true)?;
                            let ms = started.elapsed().as_secs_f64() * 1e3;
                            Ok((i, Token::decode(&token)?, ms))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an API thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut all: Vec<(usize, Token, f64)> = results.into_iter().flatten().collect();
    all.sort_by_key(|(i, _, _)| *i);
    let latencies = all.iter().map(|(_, _, ms)| *ms).collect();
    Ok((all.into_iter().map(|(_, t, _)| t).collect(), latencies))
}

/// The coordinator's resident set in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// The process's CPU time (user + system) in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the parenthesised name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name in /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i - 3)
            .context("short /proc/<pid>/stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(14)? + ticks(15)?) / USER_HZ)
}

/// Connects both replicas of every node; returns the time for all and each one's latency.
async fn connect_all(
    endpoints: &[quinn::Endpoint],
    nodes: &mut [Node],
) -> anyhow::Result<(Duration, Vec<f64>)> {
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        for r in 0..2 {
            let gate = Arc::clone(&gate);
            let token = node.token.clone();
            let opts = ConnectOptions {
                endpoint: Some(endpoints[(2 * i + r) % endpoints.len()].clone()),
                connect_timeout: Duration::from_secs(60),
                ..ConnectOptions::new(format!("n{i}-r{r}"))
            };
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.expect("never closed");
                let t = Instant::now();
                let session = Session::connect(&token, opts).await;
                (i, session, t.elapsed())
            });
        }
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, session, took) = done.context("a connect task panicked")?;
        nodes[i]
            .replicas
            .push(session.with_context(|| format!("replica of node {i}"))?);
        latencies.push(took.as_secs_f64() * 1e3);
    }
    Ok((started.elapsed(), latencies))
}

/// Waits until every node has one active and one standby, drops every active at once
/// and returns the time until every standby has been promoted.
async fn storm(nodes: &mut [Node]) -> anyhow::Result<Duration> {
    let settled = |nodes: &[Node]| {
        nodes.iter().all(|n| {
            let roles: Vec<Role> = n.replicas.iter().map(|r| r.status().role).collect();
            roles.contains(&Role::Active) && roles.contains(&Role::Standby)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !settled(nodes) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every node has an active and a standby"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut actives = Vec::new();
    let mut promotions = JoinSet::new();
    for node in nodes.iter_mut() {
        let a = node
            .replicas
            .iter()
            .position(|r| r.status().role == Role::Active)
            .expect("settled above");
        actives.push(node.replicas.swap_remove(a));
        let mut standby = node.replicas[0].subscribe();
        promotions.spawn(async move { standby.wait_for(|s| s.role == Role::Active).await.is_ok() });
    }
    let started = Instant::now();
    drop(actives);
    let all = tokio::time::timeout(Duration::from_secs(30), promotions.join_all())
        .await
        .context("not every standby was promoted within 30 s")?;
    anyhow::ensure!(
        all.iter().all(|ok| *ok),
        "a standby's session ended before its promotion"
    );
    Ok(started.elapsed())
}

/// Every trial for `n` connections (`n / 2` HA nodes), each on a restarted coordinator;
/// one more first, in which every replica is new.
fn measure(n: usize, trials: usize, samples: &mut Samples) -> anyhow::Result<()> {
    let (heartbeat_ms, lease_ms) = timings(n);
    let (heartbeat_ms, lease_ms) = (heartbeat_ms.to_string(), lease_ms.to_string());
    let mut lab = Lab::new()?;
    lab.coordinator_args(&[
        "--heartbeat-ms",
        &heartbeat_ms,
        "--lease-ms",
        &lease_ms,
        "--guard-ms",
        "100",
    ]);
    lab.start_coordinator()?;
    let (tokens, api_ms) = create_nodes(&lab, n / 2)?;
    samples.api_ms = api_ms;
    let clients = lab.host("clients")?;
    let sockets = clients.enter(|| {
        (0..ENDPOINTS)
            .map(|_| UdpSocket::bind("0.0.0.0:0"))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    let rt = tokio::runtime::Runtime::new()?;
    let endpoints = rt.block_on(async {
        sockets
            .into_iter()
            .map(|s| {
                // Room for bursts, as the coordinator has: the simulator must not be
                // the one dropping datagrams.
                let state = quinn::udp::UdpSocketState::new((&s).into())?;
                state.set_recv_buffer_size((&s).into(), SOCKET_BUFFER)?;
                state.set_send_buffer_size((&s).into(), SOCKET_BUFFER)?;
                quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    None,
                    s,
                    Arc::new(quinn::TokioRuntime),
                )
            })
            .collect::<std::io::Result<Vec<_>>>()
    })?;
    for _ in 0..=trials {
        // A fresh process, so memory freed by the previous trial does not hide growth.
        if let Some(c) = lab.coordinator() {
            c.kill();
        }
        lab.start_coordinator()?;
        let pid = lab.coordinator().context("started above")?.pid();
        std::thread::sleep(Duration::from_millis(300));
        let before = rss_kib(pid)?;
        let mut nodes: Vec<Node> = tokens
            .iter()
            .map(|t| Node {
                token: t.clone(),
                replicas: Vec::new(),
            })
            .collect();
        let trial = rt.block_on(async {
            let (all, each) = connect_all(&endpoints, &mut nodes).await?;
            let all_ms = all.as_secs_f64() * 1e3;
            if samples.register_new_ms.is_empty() {
                samples.register_new_ms.push(all_ms);
            } else {
                samples.connect_all_ms.push(all_ms);
            }
            samples.connect_each_ms.extend(each);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = rss_kib(pid)?;
            samples.rss_kib_per_conn.push((after - before) / n as f64);
            let cpu0 = cpu_seconds(pid)?;
            tokio::time::sleep(CPU_WINDOW).await;
            let cpu = (cpu_seconds(pid)? - cpu0) / CPU_WINDOW.as_secs_f64();
            samples.cpu_percent.push(cpu * 100.0);
            let heartbeats_per_s = n as f64 * 1e3 / timings(n).0 as f64;
            samples
                .cpu_per_khb
                .push(cpu * 100.0 / (heartbeats_per_s / 1e3));
            let storm = storm(&mut nodes).await?;
            samples.storm_ms.push(storm.as_secs_f64() * 1e3);
            drop(nodes);
            anyhow::Ok(())
        });
        if let Err(e) = trial {
            let log = lab.coordinator().map(|c| c.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(e.context(format!(
                "{n} connections; the coordinator's log ends with:\n{}",
                tail.join("\n")
            )));
        }
    }
    Ok(())
}

fn figure(id: &str, label: &str, unit: &str, samples: Vec<f64>) -> Figure {
    Figure::new(id, ROW, label, unit, Better::Lower)
        .samples(samples)
        .reproduce(REPRODUCE)
}

/// Records every figure of one N; `growth` makes N = 100's figure the baseline.
fn record(n: usize, s: Samples) -> anyhow::Result<()> {
    let growth = |f: Figure, base: &str| {
        if n == 100 {
            f
        } else {
            f.baseline(&format!("{base}.100"))
        }
    };
    let series = [
        (
            "register_new",
            format!(
                "first start: connect and register {n} new replicas, each allocating its Mesh IP"
            ),
            "ms",
            s.register_new_ms,
            None,
        ),
        (
            "connect_all",
            format!("reconnect: connect and register all {n} known replicas"),
            "ms",
            s.connect_all_ms,
            None,
        ),
        (
            "connect_each",
            format!("one replica's connect + registration, {n} connecting"),
            "ms",
            s.connect_each_ms,
            None,
        ),
        (
            "rss_per_conn",
            format!("coordinator resident memory per connection, {n} connected"),
            "KiB",
            s.rss_kib_per_conn,
            Some(RSS_TARGET_KIB),
        ),
        (
            "cpu",
            format!("coordinator CPU with {n} connected and heartbeating"),
            "% core",
            s.cpu_percent,
            None,
        ),
        (
            "cpu_per_khb",
            format!("coordinator CPU per 1,000 heartbeats/s, {n} connected"),
            "% core",
            s.cpu_per_khb,
            None,
        ),
        (
            "storm",
            format!(
                "promotion storm: {} actives drop at once, until every standby is active",
                n / 2
            ),
            "ms",
            s.storm_ms,
            Some(STORM_TARGET_MS),
        ),
        (
            "api_create_node",
            format!(
                "REST API: create one HA node ({} created, {API_THREADS} at a time)",
                n / 2
            ),
            "ms",
            s.api_ms,
            None,
        ),
    ];
    for (key, label, unit, samples, target) in series {
        let mut f = growth(
            figure(&format!("coord.{key}.{n}"), &label, unit, samples),
            &format!("coord.{key}"),
        );
        if let Some(t) = target {
            f = f.target("<=", t);
        }
        f = match key {
            "connect_all" => f.note(&format!(
                "{IN_FLIGHT} handshakes in flight over {ENDPOINTS} client UDP sockets, all N simulated in one process; \
                 heartbeats every 200 ms and leases of 1 s up to N = 1,000, 500 ms and 1.5 s at N = 5,000 (the default 50 ms \
                 would need 20,000 heartbeats/s at N = 1,000 and 100,000 at 5,000, more than the simulator and the coordinator \
                 get on 2 shared cores: `cpu_per_khb` is the coordinator's cost); trials after the first (`register_new`, which allocates every replica's Mesh IP); \
                 `--quick` runs N = 100 and 1,000, the full run adds 5,000; `MESHGATE_BENCH_COORD_SIZES=100,5000` picks others"
            )),
            "storm" => f.note("includes the lease (1 s, 1.5 s at N = 5,000) the coordinator must let expire before it may promote"),
            _ => f,
        };
        bench::record(&f)?;
    }
    Ok(())
}

#[test]
#[ignore = "benchmark, needs root: cargo xtask bench --only coordinator"]
fn bench_coordinator_scale() -> anyhow::Result<()> {
    require_root()?;
    let trials = bench::repeats(5);
    let sizes: Vec<usize> = match std::env::var("MESHGATE_BENCH_COORD_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse())
            .collect::<Result<_, _>>()
            .context("MESHGATE_BENCH_COORD_SIZES: a comma-separated list of even numbers")?,
        Err(_) if bench::quick() => vec![100, 1_000],
        Err(_) => vec![100, 1_000, 5_000],
    };
    for n in sizes {
        let mut s = Samples::default();
        measure(n, trials, &mut s)?;
        record(n, s)?;
    }
    Ok(())
}
