//! Connection limits against the real binary on loopback: before authentication, the
//! cap on all connections, the cap on one source's unregistered connections, QUIC
//! address validation and malformed Hellos counted by the rate limiter; after it, the
//! bounded control queue of a peer that does not read.

mod common;

use std::time::Duration;

use common::{Coordinator, free_udp_port, poll};
use meshgate_proto::client::{ClientError, ConnectOptions, SERVER_NAME, Session, client_config};
use meshgate_proto::{RefuseCode, Token};
use serde_json::json;

/// A device's token from a fresh coordinator started with `flags`.
fn start(dir: &tempfile::TempDir, flags: &[&str]) -> (Coordinator, Token) {
    let c = Coordinator::start_with(&dir.path().join("data"), free_udp_port(), flags);
    let device = c.ok("POST", "/api/v1/devices", Some(json!({"name": "probe"})));
    let token = Token::decode(device["token"].as_str().unwrap()).unwrap();
    (c, token)
}

/// A QUIC connection that completes its handshake and never says Hello.
async fn silent(
    ep: &quinn::Endpoint,
    token: &Token,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let remote = token.addrs[0].parse().unwrap();
    ep.connect_with(
        client_config(token.fingerprint).unwrap(),
        remote,
        SERVER_NAME,
    )
    .unwrap()
    .await
}

fn client() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

fn refused(r: Result<quinn::Connection, quinn::ConnectionError>) -> bool {
    matches!(r, Err(quinn::ConnectionError::ConnectionClosed(ref c))
        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_more_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (c, token) = start(&dir, &["--max-connections", "2"]);
    let ep = client();
    let a = silent(&ep, &token).await.expect("first connection");
    let _b = silent(&ep, &token).await.expect("second connection");
    assert!(
        refused(silent(&ep, &token).await),
        "a third connection over the cap"
    );
    assert_eq!(
        c.metric("meshgate_connections_refused_total{limit=\"total\"}"),
        1
    );
    assert_eq!(c.metric("meshgate_connections{state=\"unregistered\"}"), 2);
    a.close(0u32.into(), b"done");
    // The slot comes back once the coordinator has seen the close.
    let mut tries = 0;
    loop {
        tries += 1;
        match silent(&ep, &token).await {
            Ok(_) => break,
            Err(e) => assert!(tries < 50, "still refused after the close: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_is_capped_on_unregistered_connections_only() {
    let dir = tempfile::tempdir().unwrap();
    let (c, token) = start(&dir, &["--max-unauthenticated-per-source", "2"]);
    // A registered session does not count against its address's cap...
    let session = Session::connect(&token, ConnectOptions::new("laptop"))
        .await
        .expect("registers");
    let ep = client();
    let _a = silent(&ep, &token)
        .await
        .expect("first unregistered connection");
    let _b = silent(&ep, &token)
        .await
        .expect("second unregistered connection");
    // ...but a third unregistered one from 127.0.0.1 is challenged, then refused.
    assert!(
        refused(silent(&ep, &token).await),
        "a third unregistered connection"
    );
    assert_eq!(
        c.metric("meshgate_connections_refused_total{limit=\"per_source\"}"),
        1
    );
    assert!(
        c.metric("meshgate_quic_retries_total") >= 1,
        "challenged before refused"
    );
    assert_eq!(c.metric("meshgate_connections{state=\"registered\"}"), 1);
    assert!(
        session.connection().close_reason().is_none(),
        "the registered session survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_address_validation_always_on_clients_still_register() {
    let dir = tempfile::tempdir().unwrap();
    let (c, token) = start(&dir, &["--validate-addresses-above", "0"]);
    let session = Session::connect(&token, ConnectOptions::new("laptop"))
        .await
        .expect("registers after a Retry");
    assert!(c.metric("meshgate_quic_retries_total") >= 1);
    assert!(session.connection().close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_hellos_count_towards_the_rate_limit() {
    use meshgate_proto::stream::read_frame;
    let dir = tempfile::tempdir().unwrap();
    let (c, token) = start(&dir, &[]);
    let ep = client();
    for i in 0..5 {
        let conn = silent(&ep, &token).await.expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        // A 3-byte frame that is not a message.
        send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            read_frame::<meshgate_proto::CoordMsg>(&mut recv),
        )
        .await
        .expect("answered");
        assert!(
            matches!(reply, Ok(Some(meshgate_proto::CoordMsg::Refused { code, .. })) if code == RefuseCode::PROTOCOL_VIOLATION),
            "malformed Hello {i}: {reply:?}"
        );
    }
    poll("the failures counted", Duration::from_secs(5), || {
        (c.metric("meshgate_auth_failures_total") >= 5).then_some(())
    })
    .await;
    match Session::connect(&token, ConnectOptions::new("laptop")).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, RefuseCode::RATE_LIMITED),
        Err(e) => panic!("expected a rate-limit refusal, got {e}"),
        Ok(_) => panic!("a source that sent five malformed Hellos registered at once"),
    }
}

/// A registered peer that stops reading its control stream cannot make the coordinator
/// queue without bound: once its bounded control queue is full it is disconnected.
/// The peer keeps heartbeating (each one answered by a lease grant) with a 2 KiB stream
/// window, so the coordinator's writer blocks and its queue fills within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_its_control_stream_is_disconnected() {
    use meshgate_proto::stream::{read_frame, write_frame};
    use meshgate_proto::{AgentMsg, CoordMsg, Hello, PROTOCOL_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start_with(
        &dir.path().join("data"),
        free_udp_port(),
        &["--heartbeat-ms", "10", "--lease-ms", "100"],
    );
    let node = c.ok(
        "POST",
        "/api/v1/nodes",
        Some(json!({"name": "gw", "ha": true})),
    );
    let token = Token::decode(node["token"].as_str().unwrap()).unwrap();
    let mut cfg = client_config(token.fingerprint).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(2048));
    cfg.transport_config(std::sync::Arc::new(transport));
    let conn = client()
        .connect_with(cfg, token.addrs[0].parse().unwrap(), SERVER_NAME)
        .unwrap()
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        token: token.encode(),
        replica_id: meshgate_proto::id::new_replica_id(),
        lan: common::lan(1),
        agent_version: "test".into(),
        seen_epoch: 0,
    };
    write_frame(&mut send, &AgentMsg::Hello(hello))
        .await
        .unwrap();
    match read_frame::<CoordMsg>(&mut recv).await {
        Ok(Some(CoordMsg::Welcome(_))) => {}
        other => panic!("expected a Welcome, got {other:?}"),
    }
    // From here on nothing is read: grants pile up in the coordinator.
    let started = std::time::Instant::now();
    let mut seq = 0u64;
    while conn.close_reason().is_none() && started.elapsed() < Duration::from_secs(60) {
        seq += 1;
        if write_frame(&mut send, &AgentMsg::Heartbeat { seq })
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the coordinator closed the connection of a peer that does not read");
    match reason {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(&a.reason[..], b"control queue full", "{a:?}")
        }
        other => panic!("closed for another reason: {other:?} after {seq} heartbeats"),
    }
    assert!(
        c.call("GET", "/api/v1/stats", None).0 == 200,
        "the coordinator still serves"
    );
}
