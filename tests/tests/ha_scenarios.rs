//! End-to-end scenarios of the HA gateway, in namespaces: connectivity between
//! devices, LAN hosts and two subnets (a), a coordinator killed and restarted (f), every
//! replica down and one back (g), anti-spoofing at XDP and at the relay (i), and path MTU
//! (j). Each test builds its own topology ([`Ha`]); the guards tear it down.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use anyhow::Context;
use meshgate_tests::{
    Netns,
    ha::{HOST_IP, Ha, SECOND_HOST_IP, SETTLE, udp_echo},
    require_root,
    traffic::{connectivity, pattern, ping, tcp_send, udp_probe},
    wait_until, wait_until_ok,
};
use serde_json::{Value, json};

/// A topology with `replicas` replicas of `web` (the first active) and the device, all
/// started with default flags.
fn started(replicas: usize) -> anyhow::Result<Ha> {
    require_root()?;
    let mut ha = Ha::new(replicas)?;
    ha.start_all(&[])?;
    Ok(ha)
}

/// A counter from `status --json` (`counters.<group>.<name>`); absent counts as 0.
fn counter(status: &Value, group: &str, name: &str) -> u64 {
    status["counters"][group][name].as_u64().unwrap_or(0)
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_devices_hosts_and_two_subnets_reach_each_other() -> anyhow::Result<()> {
    require_root()?;
    let mut ha = Ha::new(2)?.with_second_node()?;
    ha.start_second_node(&[])?;
    ha.start_all(&[])?;
    let device_ip = ha.device_mesh_ip()?;
    let site = ha.site()?;

    connectivity(&ha.device, &device_ip, &ha.host, HOST_IP, 5100)?;
    connectivity(&ha.host, HOST_IP, &site.host, SECOND_HOST_IP, 5110)?;
    connectivity(&ha.device, &device_ip, &site.host, SECOND_HOST_IP, 5120)?;

    // The subnet traffic crossed the mesh through both gateways' XDP, not some shortcut.
    let web = ha.status(0)?;
    let db = site
        .agent
        .as_ref()
        .context("db started above")?
        .status(&site.ns)?;
    assert!(
        counter(&web, "xdp_routes", "192.168.60.0/24") > 0,
        "web's XDP never sent anything toward db's subnet: {web}"
    );
    assert!(
        counter(&db, "xdp_routes", "192.168.50.0/24") > 0,
        "db's XDP never sent anything toward web's subnet: {db}"
    );
    let routes = |s: &Value| s["routes"].to_string();
    assert!(routes(&web).contains("192.168.60.0/24"), "{web}");
    assert!(routes(&db).contains("192.168.50.0/24"), "{db}");
    Ok(())
}

/// What must survive a coordinator restart: nodes, routes, devices and every Mesh IP,
/// as the API and the agents report them.
fn identities(ha: &Ha) -> anyhow::Result<Value> {
    let api = ha.lab.api()?;
    let pick = |list: &Value, fields: &[&str]| -> Vec<Value> {
        let mut out: Vec<Value> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| {
                fields
                    .iter()
                    .map(|f| ((*f).to_owned(), item[*f].clone()))
                    .collect()
            })
            .collect();
        out.sort_by_key(Value::to_string);
        out
    };
    let nodes = api.get("/api/v1/nodes")?.result()?.clone();
    let routes = api
        .get(&format!("/api/v1/nodes/{}/routes", ha.node.0))?
        .result()?
        .clone();
    let devices = api.get("/api/v1/devices")?.result()?.clone();
    let conns = Value::Array(ha.lab.connections(&ha.node.0)?);
    let mut agents = Vec::new();
    for i in 0..ha.replicas.len() {
        agents.push(ha.status(i)?["mesh_ip"].clone());
    }
    agents.push(json!(ha.device_mesh_ip()?));
    Ok(json!({
        "nodes": pick(&nodes, &["id", "name", "ha"]),
        "routes": pick(&routes, &["id", "network"]),
        "devices": pick(&devices, &["id", "name", "mesh_ip"]),
        "replicas": pick(&conns, &["id", "mesh_ip"]),
        "agents": agents,
    }))
}

/// Exactly one replica active, in the coordinator's `connections` and in the agents'
/// data planes, every other one standby; returns the active's index.
fn one_active(ha: &Ha) -> anyhow::Result<usize> {
    let conns = ha.lab.connections(&ha.node.0)?;
    anyhow::ensure!(conns.len() == ha.replicas.len(), "connections: {conns:?}");
    let active = conns.iter().filter(|c| c["ha_status"] == "active").count();
    anyhow::ensure!(active == 1, "{active} active in connections: {conns:?}");
    let mut forwarding = Vec::new();
    for i in 0..ha.replicas.len() {
        let s = ha.status(i)?;
        anyhow::ensure!(
            s["connection"]["state"] == "connected",
            "replica {i}: {}",
            s["connection"]
        );
        forwarding.push(s["forwarding"].as_str().unwrap_or_default().to_owned());
    }
    let actives: Vec<usize> = (0..forwarding.len())
        .filter(|i| forwarding[*i] == "active")
        .collect();
    anyhow::ensure!(
        actives.len() == 1 && forwarding.iter().all(|f| f == "active" || f == "standby"),
        "agents forward as {forwarding:?}"
    );
    Ok(actives[0])
}

#[test]
#[ignore = "needs root: network namespaces"]
fn f_coordinator_kill9_and_restart_keeps_identities_and_traffic_resumes() -> anyhow::Result<()> {
    let mut ha = started(2)?;
    let device_ip = ha.device_mesh_ip()?;
    ha.wait_ping(&ha.device, HOST_IP)?;
    let before = identities(&ha)?;

    let device = ha.device_agent.as_ref().context("device started")?;
    let sessions = |s: Value| s["connection"]["sessions"].as_u64().unwrap_or(0);
    let device_sessions = sessions(device.status(&ha.device)?);

    let killed = Instant::now();
    ha.lab.coordinator().context("the coordinator runs")?.kill();
    ha.lab.start_coordinator()?;

    // Every agent reconnects by itself (a new session each), and the node ends up with
    // exactly one active.
    let active = wait_until_ok(SETTLE, "agents to reconnect with one active", || {
        one_active(&ha)
    })
    .with_context(|| format!("coordinator log:\n{}", log(&ha, "coordinator-1")))?;
    wait_until(SETTLE, "the device to open a new session", || {
        let s = device.status(&ha.device)?;
        Ok(s["connection"]["state"] == "connected" && sessions(s) > device_sessions)
    })?;
    // The restarted coordinator resets its predecessor's connections (same reset key), so
    // nobody waits for the 10 s QUIC idle timeout.
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "reconnecting took {:?}",
        killed.elapsed()
    );
    assert_eq!(
        identities(&ha)?,
        before,
        "nodes, routes or Mesh IPs changed across the restart"
    );
    ha.wait_ping(&ha.device, HOST_IP)?;
    ha.wait_ping(&ha.host, &device_ip)?;
    udp_echo(&ha.host, &ha.device, HOST_IP, 5200)?;
    udp_echo(&ha.device, &ha.host, &device_ip, 5201)?;
    // Still exactly one, after traffic too.
    assert_eq!(one_active(&ha)?, active);
    Ok(())
}

fn log(ha: &Ha, name: &str) -> String {
    std::fs::read_to_string(ha.lab.log(name)).unwrap_or_default()
}

/// Whether `out` (ping's output) reports an ICMP destination-unreachable answer.
fn unreachable(out: &str) -> bool {
    out.contains("Unreachable")
}

#[test]
#[ignore = "needs root: network namespaces"]
fn g_with_every_replica_down_senders_get_errors_and_one_restart_restores_traffic()
-> anyhow::Result<()> {
    let mut ha = started(2)?;
    let device_ip = ha.device_mesh_ip()?;
    ha.wait_ping(&ha.device, HOST_IP)?;
    ha.wait_ping(&ha.host, &device_ip)?;

    for r in &mut ha.replicas {
        let agent = r.agent.as_mut().context("started above")?;
        agent.process.signal(libc::SIGKILL)?;
        agent.process.wait_exit(Duration::from_secs(5))?;
    }
    wait_until(SETTLE, "the coordinator to see no active replica", || {
        let conns = ha.lab.connections(&ha.node.0)?;
        Ok(!conns.iter().any(|c| c["ha_status"] == "active"))
    })?;

    // Device → LAN host: the relay answers with ICMP destination unreachable.
    let mut last = String::new();
    wait_until(SETTLE, "ping from the device to say Unreachable", || {
        last = ping(&ha.device, &["-c", "1", "-W", "1", HOST_IP])?;
        Ok(unreachable(&last))
    })
    .with_context(|| format!("last ping: {last}"))?;
    assert!(
        last.contains("From 100.96.0.0 "),
        "the relay (the mesh range's network address) answers: {last}"
    );
    assert!(ha.lab.stats()?["icmp_errors_sent"].as_u64() > Some(0));
    let udp = udp_probe(
        &ha.device,
        &format!("{HOST_IP}:5300"),
        b"anyone?",
        Duration::from_secs(2),
    )?;
    let errno = udp.as_ref().err().and_then(std::io::Error::raw_os_error);
    assert!(
        matches!(errno, Some(libc::ENETUNREACH | libc::EHOSTUNREACH)),
        "a UDP sender on the device must get ENETUNREACH/EHOSTUNREACH, got {udp:?}"
    );

    // LAN host → device: nobody forwards for the mesh, and the host's sender hears so.
    // SIGKILL leaves the VIP on the dead active's interface, so its kernel (no tunnel,
    // no route) answers "Net Unreachable"; without the VIP the host's own ARP would fail
    // with "Host Unreachable". Either is an error, not a black hole.
    let out = ping(&ha.host, &["-c", "2", "-W", "1", &device_ip])?;
    assert!(
        unreachable(&out),
        "ping from the LAN host must report Unreachable: {out}"
    );

    // One replica back: the former standby, so the dead active's stale VIP stays on the
    // LAN and the new active's gratuitous ARP must win the hosts over.
    ha.replicas[1].agent = None;
    ha.start_replica(1, &[])?;
    ha.wait_forwarding(1, "active")
        .with_context(|| log(&ha, "agent-replica-b"))?;
    ha.wait_ping(&ha.device, HOST_IP)?;
    ha.wait_ping(&ha.host, &device_ip)?;
    udp_echo(&ha.host, &ha.device, HOST_IP, 5301)?;
    udp_echo(&ha.device, &ha.host, &device_ip, 5302)?;
    Ok(())
}

/// Sends one UDP datagram from `src` (an address in `ns`) to `dst`.
fn send_udp_from(ns: &Netns, src: &str, dst: &str, payload: &[u8]) -> anyhow::Result<()> {
    let (src, dst, payload) = (src.to_owned(), dst.to_owned(), payload.to_vec());
    ns.enter(move || -> anyhow::Result<()> {
        let s = UdpSocket::bind((src.as_str(), 0)).with_context(|| format!("bind {src}"))?;
        s.send_to(&payload, &dst)
            .with_context(|| format!("send {src} -> {dst}"))?;
        Ok(())
    })?
}

#[test]
#[ignore = "needs root: network namespaces"]
fn i_spoofed_sources_and_standby_datagrams_are_dropped_and_counted() -> anyhow::Result<()> {
    const PORT: u16 = 5400;
    const SPOOFED: &str = "10.55.0.9";
    let ha = started(2)?;
    let device_ip = ha.device_mesh_ip()?;
    ha.wait_ping(&ha.host, &device_ip)?;
    let target = format!("{device_ip}:{PORT}");

    // Everything the device receives on PORT until a while after the final marker.
    let socket = ha.device.enter(|| UdpSocket::bind(("0.0.0.0", PORT)))??;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let receiver = std::thread::spawn(move || {
        let mut got: Vec<(String, Vec<u8>)> = Vec::new();
        let mut deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                if &buf[..n] == b"marker" {
                    deadline = deadline.min(Instant::now() + Duration::from_millis(500));
                }
                got.push((from.ip().to_string(), buf[..n].to_vec()));
            }
        }
        got
    });

    let xdp_before = counter(&ha.status(0)?, "xdp_verdicts", "drop_spoofed");
    let (spoofed_before, not_active_before) =
        (ha.lab.drops("spoofed")?, ha.lab.drops("not_active")?);

    // 1. From the LAN, with a source outside the node's routes: XDP on the active drops it.
    ha.host.ip(&format!("addr add {SPOOFED}/32 dev eth0"))?;
    for _ in 0..5 {
        send_udp_from(&ha.host, SPOOFED, &target, b"spoofed-from-lan")?;
    }
    // 2. From the active gateway itself, past XDP, straight into its tunnel: the relay
    //    drops it, as the source is neither the replica's Mesh IP nor inside its routes.
    let active = &ha.replicas[0].ns;
    active.ip(&format!("addr add {SPOOFED}/32 dev lo"))?;
    for _ in 0..5 {
        send_udp_from(active, SPOOFED, &target, b"spoofed-from-gateway")?;
    }
    // 3. From the standby's own Mesh IP, which its own-source rule sends into its own
    //    tunnel: the relay refuses datagrams from a replica that is not active.
    let standby_ip = ha.status(1)?["mesh_ip"]
        .as_str()
        .context("the standby has a Mesh IP")?
        .to_owned();
    for _ in 0..5 {
        send_udp_from(
            &ha.replicas[1].ns,
            &standby_ip,
            &target,
            b"from-the-standby",
        )?;
    }
    // The control: a legitimate datagram from the LAN host arrives.
    wait_until(SETTLE, "the XDP spoof counter", || {
        Ok(counter(&ha.status(0)?, "xdp_verdicts", "drop_spoofed") >= xdp_before + 5)
    })?;
    send_udp_from(&ha.host, HOST_IP, &target, b"marker")?;
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    assert_eq!(
        got,
        vec![(HOST_IP.to_owned(), b"marker".to_vec())],
        "the device must receive only the legitimate datagram"
    );

    let status = ha.status(0)?;
    assert!(
        counter(&status, "xdp_verdicts", "drop_spoofed") >= xdp_before + 5,
        "XDP must count the spoofed LAN datagrams: {status}"
    );
    let stats = ha.lab.stats()?;
    assert!(
        ha.lab.drops("spoofed")? >= spoofed_before + 5,
        "the relay must count the spoofed datagrams from the gateway: {stats}"
    );
    assert!(
        ha.lab.drops("not_active")? >= not_active_before + 5,
        "the relay must count the standby's datagrams: {stats}"
    );
    let standby = ha.status(1)?;
    assert!(
        standby["counters"]["tun_to_mesh"].as_u64().unwrap_or(0) >= 5,
        "the standby did send into its tunnel: {standby}"
    );
    Ok(())
}

/// Sends `SIZE` pseudo-random bytes over one TCP connection and checks that they arrive
/// intact; returns the MSS the receiver uses.
fn bulk(server: &Netns, client: &Netns, ip: &str, port: u16) -> anyhow::Result<u32> {
    const SIZE: usize = 10 << 20;
    let sent = pattern(SIZE, u64::from(port));
    let got = tcp_send(server, client, ip, port, &sent)?;
    anyhow::ensure!(
        got.bytes == sent,
        "{} -> {ip}: {} of {SIZE} bytes arrived, intact: {}",
        client.name(),
        got.bytes.len(),
        got.bytes == sent
    );
    Ok(got.server_mss)
}

/// The tunnel MTU path MTU discovery settles at on these namespaces' 1500-byte links: the
/// largest UDP payload of an Ethernet IPv4 path (1472) less what QUIC adds to a DATAGRAM
/// frame (short header, packet number, frame header, AEAD tag).
const SETTLED_TUN_MTU: u64 = 1434;

/// Waits until the agent in `ns` (its `status`) runs its tunnel at [`SETTLED_TUN_MTU`].
fn wait_settled_mtu(ns: &Netns, status: impl Fn() -> anyhow::Result<Value>) -> anyhow::Result<()> {
    wait_until(
        SETTLE,
        &format!("{}'s tunnel MTU to reach {SETTLED_TUN_MTU}", ns.name()),
        || Ok(status()?["tun_mtu"].as_u64() == Some(SETTLED_TUN_MTU)),
    )
}

#[test]
#[ignore = "needs root: network namespaces"]
fn j_large_transfers_and_path_mtu_work_both_ways() -> anyhow::Result<()> {
    require_root()?;
    let mut ha = Ha::new(2)?.with_second_node()?;
    ha.start_second_node(&[])?;
    ha.start_all(&[])?;
    let device_ip = ha.device_mesh_ip()?;
    ha.wait_ping(&ha.device, HOST_IP)?;
    ha.wait_ping(&ha.host, &device_ip)?;
    // The tunnel MTU (and the MSS clamp with it) follows path MTU discovery, which raises
    // it shortly after a gateway connects: the clamp checked below is the settled one, on
    // both gateways the LAN-to-LAN flows cross.
    let site = ha.site()?;
    let site_agent = site
        .agent
        .as_ref()
        .context("the second node's agent runs")?;
    wait_settled_mtu(&ha.replicas[0].ns, || ha.status(0))?;
    wait_settled_mtu(&site.ns, || site_agent.status(&site.ns))?;
    let mtu = SETTLED_TUN_MTU;
    assert!(
        (576..1500).contains(&mtu),
        "the tunnel MTU ({mtu}) is below the LAN's, or this test proves nothing"
    );
    let clamped = u32::try_from(mtu)? - 40;

    bulk(&ha.host, &ha.device, HOST_IP, 5500)?;
    bulk(&ha.device, &ha.host, &device_ip, 5501)?;
    // Between two LAN hosts both ends have a 1500-byte MTU: only the gateways' MSS clamp
    // keeps the segments small enough for the tunnels.
    ha.wait_ping(&ha.host, SECOND_HOST_IP)?;
    for (server, client, ip, port) in [
        (&site.host, &ha.host, SECOND_HOST_IP, 5502),
        (&ha.host, &site.host, HOST_IP, 5503),
    ] {
        let mss = bulk(server, client, ip, port)?;
        assert!(
            mss <= clamped,
            "{} sends with MSS {mss}: the SYN was not clamped to {clamped}",
            server.name()
        );
    }
    // Full-size packets with DF: the sender learns the path MTU instead of losing them.
    let out = ping(
        &ha.host,
        &["-c", "2", "-W", "1", "-M", "do", "-s", "1472", &device_ip],
    )?;
    let lower = out.to_lowercase();
    assert!(
        lower.contains("frag needed") || lower.contains("mtu"),
        "ping -M do -s 1472 from the LAN host must report the MTU: {out}"
    );
    let out = ping(
        &ha.device,
        &["-c", "1", "-W", "1", "-M", "do", "-s", "1472", HOST_IP],
    )?;
    assert!(
        out.to_lowercase().contains("mtu"),
        "ping -M do -s 1472 from the device must report the MTU: {out}"
    );
    let udp = udp_probe(
        &ha.host,
        &format!("{device_ip}:5502"),
        &[0u8; 1472],
        Duration::from_secs(2),
    )?;
    let errno = udp.as_ref().err().and_then(std::io::Error::raw_os_error);
    assert_eq!(
        errno,
        Some(libc::EMSGSIZE),
        "a 1500-byte UDP datagram with DF must fail with EMSGSIZE: {udp:?}"
    );
    for (from, to) in [(&ha.host, device_ip.as_str()), (&ha.device, HOST_IP)] {
        let out = ping(from, &["-c", "1", "-W", "2", "-M", "do", "-s", "1000", to])?;
        assert!(
            out.contains(" 0% packet loss"),
            "ping -s 1000 must pass: {out}"
        );
    }
    Ok(())
}
