//! Network policies end to end, in namespaces, with real TCP, UDP and ICMP through the
//! HA topology (device `laptop` and a second device `intruder` → node `web`, two
//! replicas, LAN host `.100`): default block, allow by tag, by device and by CIDR, port
//! ranges, directionality with stateful replies, precedence, live changes (applied
//! within 1 s, unrelated flows kept, revoked flows cut), counters, failover of the
//! protected subnet with an allowed TCP flow surviving it, and bad input. One topology,
//! many checks, to keep the run short.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use meshgate_tests::{
    Netns,
    ha::{HOST_IP, Ha, SETTLE},
    lab::{API_ADDR, Agent},
    require_root,
    transfer::Transfer,
    wait_until,
};
use serde_json::{Value, json};

/// How long a probe waits before it counts as blocked.
const PROBE: Duration = Duration::from_millis(1200);
/// The contract: a change is in force on every participant within this.
const CHANGE_BOUND: Duration = Duration::from_secs(1);

/// TCP and UDP echo servers on `port` in `ns`, for the rest of the test.
fn echo_servers(ns: &Netns, port: u16) -> anyhow::Result<()> {
    let tcp = ns.enter(|| TcpListener::bind(("0.0.0.0", port)))??;
    std::thread::spawn(move || {
        for conn in tcp.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let udp = ns.enter(|| UdpSocket::bind(("0.0.0.0", port)))??;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    Ok(())
}

/// An open TCP connection from a namespace (a socket stays in the namespace it was
/// made in).
struct Conn(TcpStream);

impl Conn {
    fn open(ns: &Netns, ip: &str, port: u16) -> anyhow::Result<Self> {
        let target = format!("{ip}:{port}");
        let addr: std::net::SocketAddr = target.parse()?;
        let s = ns.enter(move || TcpStream::connect_timeout(&addr, PROBE))??;
        s.set_read_timeout(Some(PROBE))?;
        let mut c = Conn(s);
        anyhow::ensure!(c.echoes(), "no echo on a new connection to {ip}:{port}");
        Ok(c)
    }

    /// Whether a message comes back echoed within [`PROBE`].
    fn echoes(&mut self) -> bool {
        let mut back = [0u8; 5];
        self.0.write_all(b"hello").is_ok()
            && self.0.read_exact(&mut back).is_ok()
            && &back == b"hello"
    }
}

fn tcp_ok(ns: &Netns, ip: &str, port: u16) -> bool {
    Conn::open(ns, ip, port).is_ok()
}

fn udp_ok(ns: &Netns, ip: &str, port: u16) -> bool {
    let target = format!("{ip}:{port}");
    ns.enter(move || -> anyhow::Result<bool> {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.set_read_timeout(Some(PROBE))?;
        s.send_to(b"probe", &target)?;
        let mut buf = [0u8; 16];
        Ok(s.recv_from(&mut buf)
            .is_ok_and(|(n, _)| &buf[..n] == b"probe"))
    })
    .is_ok_and(|r| r.unwrap_or(false))
}

fn ping_ok(ns: &Netns, ip: &str) -> bool {
    ns.exec("ping", &["-c", "1", "-W", "1", ip]).is_ok()
}

struct Mesh {
    ha: Ha,
    intruder: Netns,
    intruder_agent: Agent,
    laptop_id: String,
    laptop_ip: String,
}

impl Mesh {
    fn api(&self, method: &str, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let r = self.ha.lab.api()?.call(method, path, Some(&body))?;
        Ok((r.status, r.body))
    }

    fn ok(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, body) = self.api(method, path, body)?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {body}");
        }
        Ok(body["result"].clone())
    }

    /// The filter digests of the participants that enforce something here.
    fn digests(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for (agent, ns) in [
            (self.ha.agent(0).ok(), &self.ha.replicas[0].ns),
            (self.ha.agent(1).ok(), &self.ha.replicas[1].ns),
            (self.ha.device_agent.as_ref(), &self.ha.device),
            (Some(&self.intruder_agent), &self.intruder),
        ] {
            let Some(agent) = agent else { continue };
            if !agent_alive(agent) {
                continue;
            }
            let s = agent.status(ns)?;
            out.push(s["filter"]["digest"].as_str().unwrap_or("").to_owned());
        }
        Ok(out)
    }

    /// Runs `change`, then waits until every live agent runs a new filter; returns how
    /// long that took from the API's answer.
    fn change(
        &self,
        what: &str,
        change: impl FnOnce(&Self) -> anyhow::Result<Value>,
    ) -> anyhow::Result<Value> {
        let before = self.digests()?;
        let v = change(self)?;
        let t0 = Instant::now();
        // Which agents' filters change depends on the change; wait for the first, then
        // give the others the rest of the bound.
        wait_until(SETTLE, what, || Ok(self.digests()? != before))?;
        let took = t0.elapsed();
        println!("{what}: a new filter in force after {took:?}");
        assert!(took <= CHANGE_BOUND, "{what} took {took:?}");
        std::thread::sleep(CHANGE_BOUND.saturating_sub(took));
        Ok(v)
    }

    fn policy(&self, body: Value) -> anyhow::Result<String> {
        let name = body["name"].as_str().unwrap_or("?").to_owned();
        let v = self.change(&format!("policy {name}"), |m| {
            m.ok("POST", "/api/v1/policies", body)
        })?;
        Ok(v["id"].as_str().context("policy id")?.to_owned())
    }
}

fn agent_alive(agent: &Agent) -> bool {
    Path::new(&format!("/proc/{}", agent.process.pid())).exists()
}

fn started() -> anyhow::Result<Mesh> {
    require_root()?;
    let mut ha = Ha::new(2)?;
    ha.start_all(&[])?;
    let laptop_ip = ha.device_mesh_ip()?;
    let (_, intruder_token) = ha.lab.create_device("intruder")?;
    let intruder = ha.lab.host("intruder")?;
    let intruder_agent = ha
        .lab
        .start_agent(&intruder, "intruder", &intruder_token, &[])?;
    let devices = ha.lab.api()?.get("/api/v1/devices")?.result()?.clone();
    let laptop_id = devices
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "laptop"))
        .and_then(|d| d["id"].as_str())
        .context("laptop id")?
        .to_owned();
    ha.wait_ping(&ha.device, HOST_IP)?;
    ha.wait_ping(&intruder, HOST_IP)?;
    for port in [9100, 9101, 9102, 9105, 9200] {
        echo_servers(&ha.host, port)?;
    }
    echo_servers(&ha.device, 9100)?;
    Ok(Mesh {
        ha,
        intruder,
        intruder_agent,
        laptop_id,
        laptop_ip,
    })
}

#[test]
#[ignore = "needs root: network namespaces"]
fn policies_allow_block_and_survive_failover() -> anyhow::Result<()> {
    let mut m = started()?;
    let lan_replica = "192.168.50.11";

    // Default allow: everything reaches everything, as before policies existed.
    assert!(tcp_ok(&m.ha.device, HOST_IP, 9200) && udp_ok(&m.intruder, HOST_IP, 9105));

    // Bad input changes nothing (the full matrix is in the coordinator's API tests).
    let (status, body) = m.api(
        "POST",
        "/api/v1/policies",
        json!({"name": "x", "precedence": 1,
        "action": "allow", "sources": ["any"], "destinations": ["any"], "ports": ["0"]}),
    )?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("ports[0]:"),
        "{body}"
    );
    assert!(
        m.ok("GET", "/api/v1/policies", json!(null))?
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    // Default block: nothing new gets in, in either direction.
    m.change("default block", |m| {
        m.ok(
            "PUT",
            "/api/v1/settings",
            json!({"default_action": "block"}),
        )
    })?;
    assert!(
        !ping_ok(&m.ha.device, HOST_IP),
        "device → host ICMP must be blocked"
    );
    assert!(
        !tcp_ok(&m.intruder, HOST_IP, 9100),
        "intruder → host TCP must be blocked"
    );
    assert!(
        !udp_ok(&m.ha.device, HOST_IP, 9105),
        "device → host UDP must be blocked"
    );
    assert!(
        !ping_ok(&m.ha.host, &m.laptop_ip),
        "host → device ICMP must be blocked"
    );

    // Allow by tag, TCP 9100-9110 only: replies pass the laptop's own default block.
    m.ok(
        "PATCH",
        &format!("/api/v1/devices/{}", m.laptop_id),
        json!({"tags": ["ops"]}),
    )?;
    let web = m.ha.node.0.clone();
    let ops_web = m.policy(
        json!({"name": "ops-web", "precedence": 100, "action": "allow",
        "sources": ["tag:ops"], "destinations": [format!("node:{web}")],
        "protocols": ["tcp"], "ports": ["9100-9110"]}),
    )?;
    assert!(
        tcp_ok(&m.ha.device, HOST_IP, 9100),
        "tag:ops → web TCP 9100 is allowed"
    );
    assert!(
        !tcp_ok(&m.ha.device, HOST_IP, 9200),
        "port 9200 is outside the range"
    );
    assert!(
        !udp_ok(&m.ha.device, HOST_IP, 9100),
        "UDP is not in the policy"
    );
    assert!(
        !tcp_ok(&m.intruder, HOST_IP, 9100),
        "the intruder has no ops tag"
    );
    assert!(
        !tcp_ok(&m.ha.host, &m.laptop_ip, 9100),
        "the policy does not open the other direction"
    );

    // Allow by device, ICMP to one address: the echo reply passes the intruder's filter.
    let intruder = intruder_id(&m)?;
    m.policy(
        json!({"name": "intruder-ping", "precedence": 200, "action": "allow",
        "sources": [format!("device:{intruder}")], "destinations": [format!("cidr:{HOST_IP}/32")],
        "protocols": ["icmp"]}),
    )?;
    assert!(
        ping_ok(&m.intruder, HOST_IP),
        "device:intruder → host ICMP is allowed"
    );
    assert!(
        !ping_ok(&m.intruder, lan_replica),
        "only the host's /32 is allowed"
    );
    assert!(
        !ping_ok(&m.ha.device, HOST_IP),
        "the laptop has no ICMP policy"
    );

    // Allow by CIDR, UDP: the reply passes the laptop's filter.
    m.policy(
        json!({"name": "laptop-udp", "precedence": 300, "action": "allow",
        "sources": [format!("cidr:{}/32", m.laptop_ip)], "destinations": ["cidr:192.168.50.0/24"],
        "protocols": ["udp"], "ports": ["9105"]}),
    )?;
    assert!(
        udp_ok(&m.ha.device, HOST_IP, 9105),
        "cidr → LAN UDP 9105 is allowed"
    );
    assert!(
        !udp_ok(&m.intruder, HOST_IP, 9105),
        "not from the intruder's address"
    );

    // Precedence, and live changes: a block before the allow cuts the flow it covers at
    // its next packet, while the unrelated established flow goes on.
    let mut kept = Conn::open(&m.ha.device, HOST_IP, 9102)?;
    let mut cut = Conn::open(&m.ha.device, HOST_IP, 9101)?;
    let block = m.policy(json!({"name": "block-9101", "precedence": 50, "action": "block",
        "sources": [format!("device:{}", m.laptop_id)], "destinations": [format!("cidr:{HOST_IP}/32")],
        "protocols": ["tcp"], "ports": ["9101"]}))?;
    assert!(
        kept.echoes(),
        "an unrelated change must not cut an allowed flow"
    );
    assert!(
        !cut.echoes(),
        "a block before the allow cuts the flow it covers"
    );
    assert!(
        !tcp_ok(&m.ha.device, HOST_IP, 9101),
        "precedence 50 block wins over precedence 100 allow"
    );
    assert!(
        tcp_ok(&m.ha.device, HOST_IP, 9100),
        "the allow still covers 9100"
    );

    // Counters: per policy in the API, by policy and reason in /metrics, and the filter
    // in the agent's status; the policy test names the deciding policy.
    wait_until(
        Duration::from_secs(15),
        "drop counters of block-9101",
        || {
            Ok(
                m.ok("GET", &format!("/api/v1/policies/{block}"), json!(null))?["counters"]["drops"]
                    .as_u64() > Some(0),
            )
        },
    )?;
    let shown = m.ok("GET", &format!("/api/v1/policies/{ops_web}"), json!(null))?;
    assert!(shown["counters"]["matches"].as_u64() > Some(0), "{shown}");
    let text = metrics_text(&m)?;
    assert!(
        text.contains("meshgate_policy_drops_total{policy=\"block-9101\",reason=\"policy\"}"),
        "{text}"
    );
    assert!(
        text.contains("meshgate_policy_drops_total{policy=\"default\",reason=\"default\"}"),
        "{text}"
    );
    let active = m.ha.status(0)?;
    assert_eq!(active["filter"]["state"], "enforcing", "{active}");
    assert_eq!(active["filter"]["default_action"], "block");
    assert_eq!(
        active["filter"]["rules"].as_array().map(Vec::len),
        Some(4),
        "{}",
        active["filter"]
    );
    let t = m.ok(
        "POST",
        "/api/v1/policies/test",
        json!({"source": format!("device:{}", m.laptop_id),
        "destination": HOST_IP, "protocol": "tcp", "port": 9101}),
    )?;
    assert_eq!(
        (t["action"].as_str(), t["policy"]["name"].as_str()),
        (Some("block"), Some("block-9101")),
        "{t}"
    );

    // Failover of the protected subnet: an allowed TCP flow survives it, and the new
    // active enforces the same filter.
    let transfer = Transfer::start(
        "device → host",
        (&m.ha.device, &m.ha.host),
        (HOST_IP, 9110),
        6 << 20,
        2 << 20,
    )?;
    std::thread::sleep(Duration::from_millis(800));
    m.ha.replicas[0]
        .agent
        .as_mut()
        .context("replica a")?
        .process
        .kill();
    m.ha.wait_forwarding(1, "active")?;
    let report = transfer.finish()?;
    println!(
        "{}: {} of {} bytes in {:.1} s",
        report.label,
        report.received,
        report.total,
        report.elapsed.as_secs_f64()
    );
    assert!(report.intact(), "{report:?}");
    assert!(
        !tcp_ok(&m.intruder, HOST_IP, 9100),
        "the new active blocks the intruder"
    );
    assert!(
        tcp_ok(&m.ha.device, HOST_IP, 9100),
        "and lets the laptop in"
    );

    // Removing the allow cuts the established flow it allowed.
    let mut revoked = Conn::open(&m.ha.device, HOST_IP, 9102)?;
    m.change("delete ops-web", |m| {
        m.ok(
            "DELETE",
            &format!("/api/v1/policies/{ops_web}"),
            json!(null),
        )
    })?;
    assert!(
        !revoked.echoes(),
        "a removed allow cuts the flows it allowed"
    );
    Ok(())
}

fn intruder_id(m: &Mesh) -> anyhow::Result<String> {
    let devices = m.ok("GET", "/api/v1/devices", json!(null))?;
    devices
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "intruder"))
        .and_then(|d| d["id"].as_str())
        .map(str::to_owned)
        .context("intruder id")
}

/// `/metrics` is Prometheus text, not the JSON the test API client reads.
fn metrics_text(m: &Mesh) -> anyhow::Result<String> {
    m.ha.lab.coord.enter(|| -> anyhow::Result<String> {
        let mut s = TcpStream::connect(API_ADDR)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
}
