//! `cargo xtask demo`: the README's main command. Builds what is missing, builds an HA
//! gateway topology in network namespaces (coordinator on its embedded store, two replicas
//! of one node, a LAN host, a device), shows traffic flowing both ways, kills the active
//! replica with `kill -9` while numbered probes run, and prints the failover's timeline and
//! the measured outage in each direction. Everything is torn down at the end, on error and
//! on Ctrl-C; `--keep` leaves it running for exploration.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use meshgate_tests::{
    Netns,
    failover::{FailoverRun, Fault},
    ha::{
        HOST_IP, Ha, LAN_CIDR, SECOND_GATEWAY, SECOND_HOST_IP, SECOND_LAN_CIDR, VIP, tcp_echo,
        udp_echo,
    },
    lab::{COORDINATOR_IP, QUIC_PORT, bin},
};

use crate::{cmd, ebpf, setup};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Leave the topology running afterwards (prints how to explore and remove it).
    #[arg(long)]
    keep: bool,
    /// Remove what an earlier `--keep` run left: its namespaces and their processes.
    #[arg(long, conflicts_with = "keep")]
    clean: bool,
    /// The same story on a coordinator cluster: three etcd members and three
    /// coordinators with `--etcd`; a coordinator is killed, then the active replica.
    #[arg(long, conflicts_with_all = ["keep", "clean"])]
    cluster: bool,
    /// Skip `cargo xtask setup` (for a machine known to be ready).
    #[arg(long, env = "MESHGATE_SKIP_SETUP")]
    skip_setup: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "the demo builds network namespaces and loads XDP programs: run it as root \
             (`sudo -E cargo xtask demo`)"
        );
    }
    let demo_dir = cmd::workspace_root().join("target/demo");
    if args.clean {
        return clean(&demo_dir);
    }
    build(args.skip_setup)?;
    // SAFETY: no other thread exists yet; the lab reads these when it starts processes.
    unsafe {
        std::env::set_var(
            "MESHGATE_BIN_DIR",
            cmd::workspace_root().join("target/release"),
        );
        std::env::set_var("MESHGATE_LAB_PARENT", &demo_dir);
    }
    watch_ctrl_c();
    if args.cluster {
        return crate::demo_cluster::show();
    }
    let started = Instant::now();
    let mut ha = topology()?;
    let result = show(&mut ha);
    let logs = save_logs(&ha, &demo_dir.join("logs"));
    if let Err(e) = &result {
        eprintln!("\n!! the demo failed: {e:#}");
    }
    match logs {
        Ok(dir) => println!("\nlogs: {}", dir.display()),
        Err(e) => eprintln!("could not save the logs: {e:#}"),
    }
    if args.keep && result.is_ok() {
        keep(ha)?;
    } else {
        print!("tearing down the namespaces … ");
        drop(ha);
        println!("done ({:.0?} in all)", started.elapsed());
        if result.is_ok() {
            println!("explore it yourself: `cargo xtask demo --keep`");
        }
    }
    result
}

fn build(skip_setup: bool) -> anyhow::Result<()> {
    if !skip_setup {
        setup::run()?;
    }
    ebpf::build()?;
    cmd::step("building the release binaries (the first time takes a few minutes)");
    cmd::run(
        cmd::clean_cargo(None)
            .current_dir(cmd::workspace_root())
            .args([
                "build",
                "--release",
                "-p",
                "meshgate-agent",
                "-p",
                "meshgate-coordinator",
            ]),
    )
}

/// On Ctrl-C (or SIGTERM) the guards cannot run: a watcher removes this run's namespaces,
/// which kills every process in them, and exits.
fn watch_ctrl_c() {
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    std::thread::spawn(|| {
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                eprintln!("\ninterrupted: removing the demo's namespaces and processes …");
                let n = meshgate_tests::remove_run(std::process::id());
                eprintln!("removed {n} namespaces");
                std::process::exit(130);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

pub(crate) fn say(what: &str) {
    println!("\n==> {what}");
}

pub(crate) fn timed<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    use std::io::Write;
    print!("    {what} … ");
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let r = f();
    match &r {
        Ok(_) => println!("ok ({:.1} s)", started.elapsed().as_secs_f64()),
        Err(_) => println!("FAILED"),
    }
    r
}

fn topology() -> anyhow::Result<Ha> {
    say("building the topology in network namespaces");
    let mut ha = timed(
        "coordinator (embedded store), transport bridge, LAN bridge, node `web` with its route",
        || Ha::new(2)?.with_second_node(),
    )?;
    timed("replica a", || {
        ha.start_replica(0, &[])?;
        ha.wait_forwarding(0, "active").map(drop)
    })?;
    timed("replica b", || {
        ha.start_replica(1, &[])?;
        ha.wait_forwarding(1, "standby").map(drop)
    })?;
    timed("node `db` (one replica, its own LAN)", || {
        ha.start_second_node(&[])
    })?;
    timed("device `laptop`", || ha.start_device())?;
    let device_ip = ha.device_mesh_ip()?;
    let gw = VIP.split('/').next().unwrap_or(VIP);
    println!();
    println!("    coordinator   {COORDINATOR_IP}:{QUIC_PORT} (QUIC), API on its loopback");
    println!("    node `web`    HA, advertises {LAN_CIDR}, gateway VIP {gw}");
    for (i, r) in ha.replicas.iter().enumerate() {
        let s = ha.status(i)?;
        println!(
            "    replica {}     LAN {}, Mesh IP {}, {} (XDP {})",
            r.name,
            r.lan_ip,
            s["mesh_ip"].as_str().unwrap_or("?"),
            s["forwarding"].as_str().unwrap_or("?"),
            s["xdp_mode"].as_str().unwrap_or("?"),
        );
    }
    println!("    LAN host      {HOST_IP}, routes 100.96.0.0/12 via {gw}");
    println!(
        "    node `db`     advertises {SECOND_LAN_CIDR}, gateway {}, LAN host {SECOND_HOST_IP}",
        SECOND_GATEWAY.split('/').next().unwrap_or(SECOND_GATEWAY)
    );
    println!("    device        Mesh IP {device_ip}");
    Ok(ha)
}

fn show(ha: &mut Ha) -> anyhow::Result<()> {
    let device_ip = ha.device_mesh_ip()?;
    say("traffic through the active replica");
    ha.wait_ping(&ha.device, HOST_IP)?;
    ha.wait_ping(&ha.host, &device_ip)?;
    println!(
        "    device → LAN host   ping {}, TCP 200 kB echoed, UDP echoed",
        rtt(&ha.device, HOST_IP)?
    );
    tcp_echo(&ha.host, &ha.device, HOST_IP, 5001, &vec![7u8; 200_000])?;
    udp_echo(&ha.host, &ha.device, HOST_IP, 5003)?;
    println!(
        "    LAN host → device   ping {}, TCP echoed, UDP echoed",
        rtt(&ha.host, &device_ip)?
    );
    tcp_echo(&ha.device, &ha.host, &device_ip, 5002, b"from the LAN")?;
    udp_echo(&ha.device, &ha.host, &device_ip, 5004)?;
    let site = ha.site()?;
    ha.wait_ping(&ha.host, SECOND_HOST_IP)?;
    println!(
        "    LAN host → db's LAN host {SECOND_HOST_IP}   ping {} (subnet to subnet through the mesh)",
        rtt(&ha.host, SECOND_HOST_IP)?
    );
    tcp_echo(
        &site.host,
        &ha.host,
        SECOND_HOST_IP,
        5005,
        &vec![9u8; 100_000],
    )?;

    say("kill -9 of the active replica, with probes running both ways (500 packets/s each)");
    let run = ha.measure_failover(Fault::Kill, 9300, Duration::from_millis(1000))?;
    print_run(&run);

    let old = ha.replicas[run.from].name.clone();
    timed(
        &format!("restarting replica {old}: it rejoins as standby, no flap back"),
        || {
            ha.start_replica(run.from, &[])?;
            ha.wait_forwarding(run.from, "standby")?;
            ha.wait_forwarding(run.to, "active").map(drop)
        },
    )?;

    say(&format!(
        "`meshgate-agent status` on replica {}, the new active",
        ha.replicas[run.to].name
    ));
    let state = &ha.agent(run.to)?.state_dir;
    let status = ha.replicas[run.to].ns.exec(
        &bin("meshgate-agent")?.display().to_string(),
        &["status", "--state-dir", &state.display().to_string()],
    )?;
    for line in status.lines() {
        println!("    {line}");
    }
    Ok(())
}

fn print_run(run: &FailoverRun) {
    for (at, what) in run.timeline() {
        println!("    {at:>8.1} ms  {what}");
    }
    println!();
    for (dir, flow) in [("inbound ", &run.inbound), ("outbound", &run.outbound)] {
        println!(
            "    outage {dir}  {:>4} ms   {} ({} of {} probes lost)",
            flow.outage().as_millis(),
            flow.label,
            flow.lost(),
            flow.sent,
        );
    }
    let agents = run.max_agent_actives();
    println!(
        "    roles sampled every 50 ms ({} samples): {}",
        run.samples.len(),
        if agents <= 1 && run.max_api_actives() <= 1 {
            "never two actives".to_owned()
        } else {
            format!("!! up to {agents} replicas forwarding at once")
        }
    );
}

/// `0.31 ms` from three pings.
fn rtt(ns: &Netns, dst: &str) -> anyhow::Result<String> {
    let out = ns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", dst])?;
    let avg = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .context("no ping summary")?;
    Ok(format!("{avg} ms"))
}

/// Copies the run's logs out of the lab dir, which goes with the topology.
fn save_logs(ha: &Ha, to: &Path) -> anyhow::Result<PathBuf> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    for entry in std::fs::read_dir(ha.lab.dir.path())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log")
            && let Some(name) = path.file_name()
        {
            std::fs::copy(&path, to.join(name))?;
        }
    }
    Ok(to.to_owned())
}

/// Leaves everything running: forgets the guards and prints how to look and how to stop.
fn keep(ha: Ha) -> anyhow::Result<()> {
    let agent = bin("meshgate-agent")?;
    say("the topology keeps running (--keep)");
    println!(
        "    namespaces: `ip netns list | grep mgt-{}-`",
        std::process::id()
    );
    for (i, r) in ha.replicas.iter().enumerate() {
        if let Ok(a) = ha.agent(i) {
            println!(
                "    ip netns exec {} {} status --state-dir {}",
                r.ns.name(),
                agent.display(),
                a.state_dir.display()
            );
        }
    }
    println!("    ip netns exec {} ping {HOST_IP}", ha.device.name());
    println!(
        "    admin API: ip netns exec {} curl -s -H \"Authorization: Bearer $(cat {}/admin-token)\" http://127.0.0.1:7080/api/v1/nodes",
        ha.lab.coord.name(),
        ha.lab.data_dir().display()
    );
    println!("    remove it all: cargo xtask demo --clean");
    std::mem::forget(ha);
    Ok(())
}

/// Removes what `--keep` runs left: namespaces whose demo process is gone (with the
/// processes in them) and their lab directories.
fn clean(demo_dir: &Path) -> anyhow::Result<()> {
    cmd::step("removing the namespaces and processes of finished runs");
    meshgate_tests::sweep_stale();
    if let Ok(entries) = std::fs::read_dir(demo_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("meshgate-lab-"))
            {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("remove {}", path.display()))?;
                eprintln!("    removed {}", path.display());
            }
        }
    }
    Ok(())
}
