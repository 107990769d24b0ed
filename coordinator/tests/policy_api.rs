//! The network-policy API on loopback, no root: validation that names the field and
//! changes nothing, references that block deletes, persistence across kill -9, the
//! policy test, and filters pushed to a connected participant within 1 s of a change.

mod common;

use std::time::{Duration, Instant};

use common::*;
use meshgate_proto::client::{ConnectOptions, Session};
use meshgate_proto::{CoordMsg, Filter, Token};
use serde_json::{Value, json};

fn refused(c: &Coordinator, method: &str, path: &str, body: Value, status: u16, field: &str) {
    let (st, v) = c.call(method, path, Some(body.clone()));
    assert_eq!(st, status, "{method} {path} {body}: {v}");
    let msg = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with(&format!("{field}:")) || msg.contains(field),
        "{body}: {msg} should name {field}"
    );
}

/// The next filter (all chunks) the session receives within `d`.
async fn next_filter(s: &mut Session, d: Duration) -> Option<Filter> {
    let deadline = Instant::now() + d;
    let mut rules = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next_event()).await {
            Ok(Some(CoordMsg::Filter(f))) => {
                rules.extend(f.rules.clone());
                if f.chunk + 1 == f.chunks {
                    return Some(Filter { rules, ..*f });
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_api_and_push() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let quic_port = free_udp_port();
    let c = Coordinator::start(&data, quic_port);

    assert_eq!(
        c.ok("GET", "/api/v1/settings", None)["default_action"],
        "allow"
    );
    refused(
        &c,
        "PUT",
        "/api/v1/settings",
        json!({"default_action": "deny"}),
        400,
        "default_action",
    );
    refused(
        &c,
        "PUT",
        "/api/v1/settings",
        json!({"default": "block"}),
        400,
        "default",
    );

    refused(
        &c,
        "POST",
        "/api/v1/devices",
        json!({"name": "x", "tags": ["bad tag"]}),
        400,
        "tags[0]",
    );
    refused(
        &c,
        "POST",
        "/api/v1/nodes",
        json!({"name": "x", "tags": "ops"}),
        400,
        "tags",
    );
    assert!(
        c.ok("GET", "/api/v1/devices", None)
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing created"
    );
    let laptop = c.ok(
        "POST",
        "/api/v1/devices",
        Some(json!({"name": "laptop", "tags": ["ops", "ops"]})),
    );
    assert_eq!(laptop["tags"], json!(["ops"]));
    let db = c.ok(
        "POST",
        "/api/v1/nodes",
        Some(json!({"name": "db", "ha": true, "tags": ["db"]})),
    );
    let (lid, did) = (laptop["id"].as_str().unwrap(), db["id"].as_str().unwrap());
    c.ok(
        "POST",
        &format!("/api/v1/nodes/{did}/routes"),
        Some(json!({"network": "192.168.50.0/24"})),
    );

    let good = json!({"name": "ssh", "precedence": 100, "action": "allow",
        "sources": ["tag:ops"], "destinations": [format!("node:{did}")],
        "protocols": ["tcp"], "ports": ["22"]});
    let bad = [
        ("name", json!(null), "name"),
        ("precedence", json!(1.5), "precedence"),
        ("action", json!("deny"), "action"),
        (
            "sources",
            json!(["device:00000000-0000-0000-0000-000000000000"]),
            "sources[0]",
        ),
        (
            "destinations",
            json!(["cidr:192.168.50.1/24"]),
            "destinations[0]",
        ),
        ("protocols", json!(["gre"]), "protocols[0]"),
        ("ports", json!(["22-21"]), "ports[0]"),
        ("bogus", json!(1), "bogus"),
    ];
    for (k, v, field) in bad {
        let mut b = good.clone();
        b[k] = v;
        refused(&c, "POST", "/api/v1/policies", b, 400, field);
    }
    refused(
        &c,
        "POST",
        "/api/v1/policies",
        json!([1]),
        400,
        "JSON object",
    );
    assert!(
        c.ok("GET", "/api/v1/policies", None)
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing stored"
    );

    let ssh = c.ok("POST", "/api/v1/policies", Some(good.clone()));
    let sid = ssh["id"].as_str().unwrap().to_owned();
    let mut dup = good.clone();
    dup["name"] = json!("other");
    refused(
        &c,
        "POST",
        "/api/v1/policies",
        dup.clone(),
        409,
        "precedence",
    );
    dup["precedence"] = json!(50);
    dup["name"] = json!("ssh");
    refused(&c, "POST", "/api/v1/policies", dup, 409, "name");
    refused(
        &c,
        "PUT",
        &format!("/api/v1/policies/{sid}"),
        json!({"name": "ssh"}),
        400,
        "precedence",
    );
    refused(
        &c,
        "PATCH",
        &format!("/api/v1/devices/{lid}"),
        json!({"tags": [1]}),
        400,
        "tags[0]",
    );
    refused(
        &c,
        "PATCH",
        &format!("/api/v1/devices/{lid}"),
        json!({"name": "x"}),
        400,
        "name",
    );
    assert_eq!(
        c.call(
            "GET",
            "/api/v1/policies/00000000-0000-0000-0000-000000000000",
            None
        )
        .0,
        404
    );

    // A referenced node cannot be deleted: that would silently change what the policy means.
    refused(
        &c,
        "DELETE",
        &format!("/api/v1/nodes/{did}"),
        json!({}),
        409,
        "ssh",
    );
    c.ok("GET", &format!("/api/v1/nodes/{did}"), None);

    // The policy test names the deciding policy, and the default otherwise.
    let t = c.ok("POST", "/api/v1/policies/test", Some(json!({"source": format!("device:{lid}"), "destination": "192.168.50.7", "protocol": "tcp", "port": 22})));
    assert_eq!(
        (t["action"].as_str(), t["policy"]["name"].as_str()),
        (Some("allow"), Some("ssh")),
        "{t}"
    );
    assert_eq!(t["enforced_by"], json!([format!("node:{did}")]));
    let t = c.ok("POST", "/api/v1/policies/test", Some(json!({"source": "100.96.0.77", "destination": "192.168.50.7", "protocol": "tcp", "port": 22})));
    assert!(t["policy"].is_null() && t["action"] == "allow", "{t}");
    assert!(t["reason"].as_str().unwrap().contains("default"), "{t}");
    refused(
        &c,
        "POST",
        "/api/v1/policies/test",
        json!({"source": "x", "destination": "1.2.3.4", "protocol": "tcp", "port": 1}),
        400,
        "source",
    );
    refused(
        &c,
        "POST",
        "/api/v1/policies/test",
        json!({"source": "1.1.1.1", "destination": "1.2.3.4", "protocol": "icmp", "port": 1}),
        400,
        "port",
    );

    // A connected device gets its filter, and a new one within a second of a change.
    let token = Token::decode(laptop["token"].as_str().unwrap()).unwrap();
    let mut s = Session::connect(&token, ConnectOptions::new("laptop-1"))
        .await
        .unwrap();
    let f = next_filter(&mut s, Duration::from_secs(2))
        .await
        .expect("a first filter");
    assert!(
        f.default_allow && f.rules.is_empty(),
        "the laptop is no policy's destination: {f:?}"
    );
    let to_laptop = c.ok("POST", "/api/v1/policies", Some(json!({"name": "no-ping", "precedence": 10,
        "action": "block", "sources": ["any"], "destinations": ["tag:ops"], "protocols": ["icmp"]})));
    let changed = Instant::now();
    let f = next_filter(&mut s, Duration::from_secs(1))
        .await
        .expect("a new filter within 1 s");
    assert_eq!(f.rules.len(), 1, "{f:?}");
    assert!(!f.rules[0].allow && f.rules[0].protocols == vec![1]);
    assert_eq!(
        f.rules[0].destinations,
        vec![
            format!("{}/32", laptop["mesh_ip"].as_str().unwrap())
                .parse()
                .unwrap()
        ]
    );
    eprintln!("filter pushed {:?} after the change", changed.elapsed());
    c.ok(
        "PUT",
        "/api/v1/settings",
        Some(json!({"default_action": "block"})),
    );
    let f = next_filter(&mut s, Duration::from_secs(1))
        .await
        .expect("a new filter within 1 s");
    assert!(!f.default_allow);
    // Untagging the laptop takes it out of the policy.
    c.ok(
        "PATCH",
        &format!("/api/v1/devices/{lid}"),
        Some(json!({"tags": []})),
    );
    let f = next_filter(&mut s, Duration::from_secs(1))
        .await
        .expect("a new filter within 1 s");
    assert!(f.rules.is_empty(), "{f:?}");
    drop(s);
    let shown = c.ok(
        "GET",
        &format!("/api/v1/policies/{}", to_laptop["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(shown["counters"]["matches"], 0);

    // Everything survives kill -9.
    c.kill9();
    let c = Coordinator::start(&data, quic_port);
    assert_eq!(
        c.ok("GET", "/api/v1/settings", None)["default_action"],
        "block"
    );
    let ps = c.ok("GET", "/api/v1/policies", None);
    let names: Vec<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["no-ping", "ssh"], "in precedence order");
    assert_eq!(
        c.ok("GET", &format!("/api/v1/policies/{sid}"), None)["ports"],
        json!(["22"])
    );
    let devs = c.ok("GET", "/api/v1/devices", None);
    assert_eq!(devs[0]["tags"], json!([]));
    assert_eq!(
        c.ok("GET", &format!("/api/v1/nodes/{did}"), None)["tags"],
        json!(["db"])
    );

    // Once nothing references it, the node can go.
    c.ok("DELETE", &format!("/api/v1/policies/{sid}"), None);
    c.ok("DELETE", &format!("/api/v1/nodes/{did}"), None);
    assert!(c.call("GET", "/metrics", None).0 == 200);
}

/// Policies trust source addresses at the destination because the relay forwards only
/// what a sender may send: a device its own Mesh IP, a node's active replica its own
/// Mesh IP or its node's routes — not another node's routes, and a standby nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_refuses_spoofed_sources() {
    use std::net::Ipv4Addr;

    use meshgate_proto::datagram::test_udp_packet;

    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("data"), free_udp_port());
    let mk = |name: &str, net: &str| {
        let n = c.ok(
            "POST",
            "/api/v1/nodes",
            Some(json!({"name": name, "ha": true})),
        );
        let id = n["id"].as_str().unwrap().to_owned();
        c.ok(
            "POST",
            &format!("/api/v1/nodes/{id}/routes"),
            Some(json!({"network": net})),
        );
        Token::decode(n["token"].as_str().unwrap()).unwrap()
    };
    let (ta, _tb) = (mk("a", "192.168.50.0/24"), mk("b", "192.168.60.0/24"));
    let dev = c.ok("POST", "/api/v1/devices", Some(json!({"name": "laptop"})));
    let dev_ip: Ipv4Addr = dev["mesh_ip"].as_str().unwrap().parse().unwrap();
    let d = Session::connect(
        &Token::decode(dev["token"].as_str().unwrap()).unwrap(),
        ConnectOptions::new("laptop-1"),
    )
    .await
    .unwrap();
    let active = Session::connect(
        &ta,
        ConnectOptions {
            lan: lan(2),
            ..ConnectOptions::new("a-1")
        },
    )
    .await
    .unwrap();
    let standby = Session::connect(
        &ta,
        ConnectOptions {
            lan: lan(3),
            ..ConnectOptions::new("a-2")
        },
    )
    .await
    .unwrap();
    poll("an active lease", Duration::from_secs(2), || {
        active.may_forward().then_some(())
    })
    .await;
    let drops = |why: &str| {
        c.ok("GET", "/api/v1/stats", None)["drops"][why]
            .as_u64()
            .unwrap()
    };

    let own = test_udp_packet(Ipv4Addr::new(192, 168, 50, 7), dev_ip, b"own route");
    active.send_packet(&own).unwrap();
    assert_eq!(
        &recv_within(&d, Duration::from_secs(2))
            .await
            .expect("own route passes")[..],
        &own[..]
    );
    let spoofed0 = drops("spoofed");
    active
        .send_packet(&test_udp_packet(
            Ipv4Addr::new(192, 168, 60, 7),
            dev_ip,
            b"b's route",
        ))
        .unwrap();
    assert!(
        recv_within(&d, Duration::from_millis(300)).await.is_none(),
        "another node's route is refused"
    );
    assert_eq!(drops("spoofed"), spoofed0 + 1);
    let not_active0 = drops("not_active");
    standby
        .send_packet(&test_udp_packet(
            standby.welcome().mesh_ip,
            dev_ip,
            b"standby",
        ))
        .unwrap();
    assert!(
        recv_within(&d, Duration::from_millis(300)).await.is_none(),
        "a standby sends nothing"
    );
    assert_eq!(drops("not_active"), not_active0 + 1);
}
