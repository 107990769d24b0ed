//! Benchmark row 4, route sync (root; run by `cargo xtask bench`):
//!
//! * the time the agent's netlink code (`Routing::reconcile`, what the runtime calls)
//!   takes to install 10,000 mesh routes — each in the ACTIVE and the STANDBY table, so
//!   20,000 kernel routes, plus the three rules — against `ip -batch` installing exactly
//!   the same, each trial in a fresh namespace;
//! * the time of a flip (`Routing::flip`: the selector rule swap) with those routes in
//!   place, against the same flip with 10 routes.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use meshgate_agent::netlink::{
    DEFAULT_ACTIVE_TABLE as ACTIVE, DEFAULT_PROTOCOL as PROTO, DEFAULT_STANDBY_TABLE as STANDBY,
    DesiredRouting, Netlink, Routing, RoutingConfig, StandbyPath, Table,
};
use meshgate_tests::{
    Netns,
    bench::{self, Better, Figure},
    require_root,
};

const ROW: u8 = 4;
const REPRODUCE: &str = "cargo xtask bench --only route_sync";
const ROUTES: u32 = 10_000;
/// The coordinator and the replica's own Mesh IP, for the bypass and own-source rules.
const COORDINATOR: &str = "10.20.0.1";
const MESH_IP: &str = "100.96.0.5";
const GATEWAY: &str = "192.168.50.10";

/// A namespace like a gateway's: `eth0` on the LAN, `mesh0` standing in for the TUN
/// (veth pairs looped inside the namespace — this kernel has no dummy links; route
/// installation does not care what is behind a link).
fn gateway_ns() -> anyhow::Result<Netns> {
    let ns = Netns::new("rsync")?;
    for (link, addr) in [("eth0", "192.168.50.11/24"), ("mesh0", "100.96.0.5/32")] {
        ns.ip(&format!("link add {link} type veth peer name {link}p"))?;
        ns.ip(&format!("addr add {addr} dev {link}"))?;
        ns.ip(&format!("link set {link}p up"))?;
        ns.ip(&format!("link set {link} up"))?;
    }
    Ok(ns)
}

/// The mesh range plus `n - 1` remote /24s.
fn prefixes(n: u32) -> Vec<String> {
    std::iter::once("100.96.0.0/12".to_owned())
        .chain((1..n).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)))
        .collect()
}

fn desired(n: u32, selected: Table) -> DesiredRouting {
    DesiredRouting {
        prefixes: prefixes(n)
            .iter()
            .map(|p| p.parse().expect("generated prefix is valid"))
            .collect(),
        tun: "mesh0".into(),
        standby: StandbyPath::Via {
            gateway: GATEWAY.parse().expect("literal"),
            iface: "eth0".into(),
        },
        mesh_ip: Some(MESH_IP.parse().expect("literal")),
        coordinator: Some(COORDINATOR.parse().expect("literal")),
        selected,
    }
}

/// The same state as `ip -batch` commands.
fn batch(n: u32) -> String {
    let mut s = String::new();
    for p in prefixes(n) {
        s.push_str(&format!(
            "route add {p} dev mesh0 table {ACTIVE} proto {PROTO}\n\
             route add {p} via {GATEWAY} dev eth0 table {STANDBY} proto {PROTO}\n"
        ));
    }
    s.push_str(&format!(
        "rule add pref 7300 to {COORDINATOR} lookup main proto {PROTO}\n\
         rule add pref 7305 from {MESH_IP} lookup {ACTIVE} proto {PROTO}\n\
         rule add pref 7310 lookup {STANDBY} proto {PROTO}\n"
    ));
    s
}

/// Runs `f` with a fresh netlink connection inside `ns` on a current-thread runtime.
fn in_ns<R: Send>(
    ns: &Netns,
    f: impl AsyncFnOnce(Netlink) -> anyhow::Result<R> + Send,
) -> anyhow::Result<R> {
    ns.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let nl = Netlink::connect()?;
                f(nl).await
            })
    })?
}

/// Checks that both tables hold every route.
fn check_installed(ns: &Netns, n: u32) -> anyhow::Result<()> {
    for table in [ACTIVE, STANDBY] {
        let count = ns.ip(&format!("route show table {table}"))?.lines().count();
        anyhow::ensure!(
            count == n as usize,
            "table {table} holds {count} routes, not {n}"
        );
    }
    Ok(())
}

/// The agent's default logging (`info`, formatted), written nowhere: the agent pays for
/// its per-route log lines, so the benchmark does too.
fn agent_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::sink)
        .try_init();
}

fn install_agent(n: u32) -> anyhow::Result<f64> {
    let ns = gateway_ns()?;
    let took = in_ns(&ns, async |nl| {
        let mut routing = Routing::new(nl, RoutingConfig::default());
        let started = Instant::now();
        routing.reconcile(&desired(n, Table::Standby)).await?;
        Ok(started.elapsed())
    })?;
    check_installed(&ns, n)?;
    Ok(ms(took))
}

fn install_ip_batch(n: u32, file: &std::path::Path) -> anyhow::Result<f64> {
    let ns = gateway_ns()?;
    let started = Instant::now();
    ns.ip(&format!("-batch {}", file.display()))?;
    let took = started.elapsed();
    check_installed(&ns, n)?;
    Ok(ms(took))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
#[ignore = "benchmark, needs root: cargo xtask bench --only route_sync"]
fn bench_route_sync_install() -> anyhow::Result<()> {
    require_root()?;
    let trials = bench::repeats(7);
    agent_logging();
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(batch(ROUTES).as_bytes())?;
    // Interleaved, so both see the same machine load.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        theirs.push(install_ip_batch(ROUTES, file.path())?);
        ours.push(install_agent(ROUTES)?);
    }
    let note = "10,000 prefixes in both tables (20,000 kernel routes) and 3 rules, into a fresh namespace (veth links)";
    bench::record(
        &Figure::new(
            "route_sync.install.ip_batch",
            ROW,
            "`ip -batch`: install 10,000 routes (baseline)",
            "ms",
            Better::Lower,
        )
        .samples(theirs)
        .reproduce(REPRODUCE)
        .note(note),
    )?;
    bench::record(
        &Figure::new(
            "route_sync.install.agent",
            ROW,
            "agent (`Routing::reconcile`): install 10,000 routes",
            "ms",
            Better::Lower,
        )
        .samples(ours)
        .baseline("route_sync.install.ip_batch")
        .target("ratio<=", 1.0)
        .reproduce(REPRODUCE)
        .note(note),
    )?;
    Ok(())
}

/// Flip samples in µs, alternating STANDBY → ACTIVE → STANDBY with `n` routes installed.
fn flips(n: u32, count: usize) -> anyhow::Result<Vec<f64>> {
    let ns = gateway_ns()?;
    let samples = in_ns(&ns, async |nl| {
        let mut routing = Routing::new(nl, RoutingConfig::default());
        routing.reconcile(&desired(n, Table::Standby)).await?;
        let mut samples = Vec::new();
        for i in 0..count {
            let to = if i.is_multiple_of(2) {
                Table::Active
            } else {
                Table::Standby
            };
            let started = Instant::now();
            routing.flip(to).await?;
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        Ok(samples)
    })?;
    // An even number of flips from STANDBY ends on STANDBY, with one selector.
    let selector = ns.ip("rule show pref 7310")?;
    let want = if count.is_multiple_of(2) {
        STANDBY
    } else {
        ACTIVE
    };
    anyhow::ensure!(
        selector.lines().count() == 1 && selector.contains(&format!("lookup {want}")),
        "after {count} flips the selector is {selector:?}"
    );
    Ok(samples)
}

#[test]
#[ignore = "benchmark, needs root: cargo xtask bench --only route_sync"]
fn bench_route_sync_flip() -> anyhow::Result<()> {
    require_root()?;
    let count = bench::repeats(50).max(20);
    let note = "the selector rule swap (add the new rule, then delete the old), as the agent does on promotion and demotion";
    bench::record(
        &Figure::new(
            "route_sync.flip.10",
            ROW,
            "flip active ↔ standby with 10 routes (baseline)",
            "µs",
            Better::Lower,
        )
        .samples(flips(10, count)?)
        .reproduce(REPRODUCE)
        .note(note),
    )?;
    bench::record(
        &Figure::new(
            "route_sync.flip.10000",
            ROW,
            "flip active ↔ standby with 10,000 routes",
            "µs",
            Better::Lower,
        )
        .samples(flips(ROUTES, count)?)
        .baseline("route_sync.flip.10")
        .target("<=", 10_000.0)
        .reproduce(REPRODUCE)
        .note(note),
    )?;
    Ok(())
}
