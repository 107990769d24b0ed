//! End-to-end on loopback, no root: the real `meshgate-coordinator` binary, the real
//! protocol client (`meshgate_proto::client`), the REST API over HTTP.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use meshgate_proto::client::{ConnectOptions, Session};
use meshgate_proto::datagram::test_udp_packet;
use meshgate_proto::{Role, Token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_failover_relay_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let quic_port = free_udp_port();
    let c = Coordinator::start(&data, quic_port);

    // Bad input is refused with a message and changes nothing.
    assert_eq!(
        c.call("POST", "/api/v1/nodes", Some(json!({"ha": true}))).0,
        400
    );
    let node = c.ok(
        "POST",
        "/api/v1/nodes",
        Some(json!({"name": "web-server", "ha": true})),
    );
    let node_id = node["id"].as_str().unwrap().to_owned();
    let (st, err) = c.call("POST", "/api/v1/nodes", Some(json!({"name": "web-server"})));
    assert_eq!(st, 409, "{err}");
    let (st, err) = c.call(
        "POST",
        &format!("/api/v1/nodes/{node_id}/routes"),
        Some(json!({"network": "192.168.50.1/24"})),
    );
    assert_eq!(st, 400);
    assert!(
        err["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("host bits"),
        "{err}"
    );
    assert_eq!(
        c.call(
            "POST",
            &format!("/api/v1/nodes/{node_id}/routes"),
            Some(json!({"network": "100.96.5.0/24"}))
        )
        .0,
        400
    );
    c.ok(
        "POST",
        &format!("/api/v1/nodes/{node_id}/routes"),
        Some(json!({"network": "192.168.50.0/24", "comment": "lan"})),
    );
    assert_eq!(
        c.ok("GET", "/api/v1/nodes", None).as_array().unwrap().len(),
        1
    );

    let token = Token::decode(node["token"].as_str().unwrap()).unwrap();
    assert_eq!(token.addrs, [c.quic.to_string()]);
    let device = c.ok("POST", "/api/v1/devices", Some(json!({"name": "laptop"})));
    let dev_token = Token::decode(device["token"].as_str().unwrap()).unwrap();
    let dev_ip: Ipv4Addr = device["mesh_ip"].as_str().unwrap().parse().unwrap();

    // Two replicas: the first is active, the second passive.
    let a = Session::connect(
        &token,
        ConnectOptions {
            lan: lan(2),
            ..ConnectOptions::new("replica-a")
        },
    )
    .await
    .unwrap();
    assert_eq!(a.welcome().role, Role::Active);
    let b = Session::connect(
        &token,
        ConnectOptions {
            lan: lan(3),
            ..ConnectOptions::new("replica-b")
        },
    )
    .await
    .unwrap();
    assert_eq!(b.welcome().role, Role::Standby);
    assert_eq!(
        b.welcome().active,
        lan(2),
        "standby learns the active's LAN identity"
    );
    assert_eq!(
        b.status().routes.entries.len(),
        2,
        "mesh range + the node's route"
    );
    let (ip_a, ip_b) = (a.welcome().mesh_ip, b.welcome().mesh_ip);
    assert_ne!(ip_a, ip_b);
    let mut st = statuses(&c, &node_id);
    st.sort();
    assert_eq!(
        st,
        [
            ("replica-a".into(), "active".into()),
            ("replica-b".into(), "passive".into())
        ]
    );
    poll("active lease on replica a", Duration::from_secs(2), || {
        a.may_forward().then_some(())
    })
    .await;
    assert!(!b.may_forward());

    // A datagram from the device to a routed address reaches the active, not the standby.
    let dev = Session::connect(&dev_token, ConnectOptions::new("laptop-1"))
        .await
        .unwrap();
    assert_eq!(dev.welcome().mesh_ip, dev_ip);
    let pkt = test_udp_packet(dev_ip, Ipv4Addr::new(192, 168, 50, 7), b"hello subnet");
    dev.send_packet(&pkt).unwrap();
    let got = recv_within(&a, Duration::from_secs(2))
        .await
        .expect("active got the packet");
    assert_eq!(&got[..], &pkt[..]);
    assert!(
        recv_within(&b, Duration::from_millis(300)).await.is_none(),
        "standby must not get it"
    );
    // A spoofed source is dropped and counted.
    dev.send_packet(&test_udp_packet(
        Ipv4Addr::new(100, 96, 9, 9),
        Ipv4Addr::new(192, 168, 50, 7),
        b"x",
    ))
    .unwrap();
    assert!(recv_within(&a, Duration::from_millis(300)).await.is_none());
    let stats = c.ok("GET", "/api/v1/stats", None);
    assert_eq!(stats["drops"]["spoofed"], 1, "{stats}");
    // The active's reply from inside its subnet reaches the device.
    let reply = test_udp_packet(Ipv4Addr::new(192, 168, 50, 7), dev_ip, b"reply");
    a.send_packet(&reply).unwrap();
    assert_eq!(
        &recv_within(&dev, Duration::from_secs(2))
            .await
            .expect("reply")[..],
        &reply[..]
    );

    // Drop the active: the standby is promoted within the expiry time.
    let dropped = Instant::now();
    drop(a);
    poll("promotion of replica b", Duration::from_secs(3), || {
        (statuses(&c, &node_id) == [("replica-b".to_owned(), "active".to_owned())]).then_some(())
    })
    .await;
    let took = dropped.elapsed();
    eprintln!("failover observed after {took:?} (lease {LEASE_MS} ms)");
    assert!(
        took >= Duration::from_millis(LEASE_MS - 60),
        "promoted before the old lease could expire: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(LEASE_MS + 200),
        "failover too slow: {took:?}"
    );
    poll(
        "replica b learns its promotion",
        Duration::from_secs(1),
        || (b.status().role == Role::Active).then_some(()),
    )
    .await;
    dev.send_packet(&pkt).unwrap();
    assert!(
        recv_within(&b, Duration::from_secs(2)).await.is_some(),
        "new active gets traffic"
    );

    // kill -9 and restart: nodes, routes, tokens and Mesh IPs are unchanged.
    let before = (
        c.ok("GET", "/api/v1/nodes", None),
        c.ok("GET", &format!("/api/v1/nodes/{node_id}/routes"), None),
        c.ok("GET", &format!("/api/v1/nodes/{node_id}/token"), None),
        c.ok("GET", "/api/v1/devices", None),
    );
    assert_eq!(before.2, node["token"]);
    drop((b, dev));
    c.kill9();
    let c = Coordinator::start(&data, quic_port);
    let after = (
        c.ok("GET", "/api/v1/nodes", None),
        c.ok("GET", &format!("/api/v1/nodes/{node_id}/routes"), None),
        c.ok("GET", &format!("/api/v1/nodes/{node_id}/token"), None),
        c.ok("GET", "/api/v1/devices", None),
    );
    assert_eq!(before, after);
    let b2 = Session::connect(&token, ConnectOptions::new("replica-b"))
        .await
        .unwrap();
    let a2 = Session::connect(&token, ConnectOptions::new("replica-a"))
        .await
        .unwrap();
    assert_eq!(
        (a2.welcome().mesh_ip, b2.welcome().mesh_ip),
        (ip_a, ip_b),
        "Mesh IPs are stable"
    );
    // The restarted coordinator promotes nobody until a lease granted by its predecessor
    // must have lapsed; then the longest-connected replica, in a newer epoch.
    assert_eq!(b2.welcome().role, Role::Standby);
    let restarted = Instant::now();
    let mut st = b2.subscribe();
    let active = tokio::time::timeout(
        Duration::from_secs(2),
        st.wait_for(|s| s.role == Role::Active),
    )
    .await
    .expect("promoted after the restart hold")
    .unwrap()
    .epoch;
    assert!(restarted.elapsed() < Duration::from_millis(2 * LEASE_MS));
    assert!(active > 2, "epoch persisted across restart: {active}");

    // Deleting the node revokes its token with a distinct error.
    c.ok("DELETE", &format!("/api/v1/nodes/{node_id}"), None);
    match Session::connect(&token, ConnectOptions::new("replica-c")).await {
        Err(meshgate_proto::client::ClientError::Refused { code, .. }) => {
            assert_eq!(code, meshgate_proto::RefuseCode::REVOKED_TOKEN)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a deleted node's token was accepted"),
    }
}

/// Before its Hello is accepted, a peer cannot make the coordinator buffer a large frame:
/// a length prefix over `MAX_HELLO_FRAME` is refused from the header alone, with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_first_frame_is_refused_before_authentication() {
    use meshgate_proto::client::{SERVER_NAME, client_config};
    use meshgate_proto::frame::MAX_HELLO_FRAME;
    use meshgate_proto::stream::read_frame;
    use meshgate_proto::{CoordMsg, RefuseCode};

    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("data"), free_udp_port());
    let device = c.ok("POST", "/api/v1/devices", Some(json!({"name": "probe"})));
    let token = Token::decode(device["token"].as_str().unwrap()).unwrap();
    let remote = token.addrs[0]
        .parse()
        .expect("a token address is HOST:PORT");
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(
            client_config(token.fingerprint).unwrap(),
            remote,
            SERVER_NAME,
        )
        .unwrap()
        .await
        .expect("the handshake needs no token");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let big = u32::try_from(MAX_HELLO_FRAME + 1).unwrap();
    send.write_all(&big.to_be_bytes()).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), read_frame::<CoordMsg>(&mut recv))
        .await
        .expect("answered without waiting for the body");
    match reply {
        Ok(Some(CoordMsg::Refused { code, reason })) => {
            assert_eq!(code, RefuseCode::PROTOCOL_VIOLATION);
            assert!(reason.contains("exceeds the limit"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
