//! Stale replica records are reclaimed after `--replica-reclaim-secs`: a node whose
//! hosts were reinstalled (new replica ids) is not locked out by its old records for
//! ever, and a replica that stays connected keeps its record and Mesh IP.

mod common;

use std::time::Duration;

use common::{Coordinator, free_udp_port};
use meshgate_proto::client::{ClientError, ConnectOptions, Session};
use meshgate_proto::{RefuseCode, Token};
use serde_json::json;

const MAX_REPLICAS: usize = 16;

async fn register(token: &Token, replica: &str) -> Result<Session, ClientError> {
    Session::connect(token, ConnectOptions::new(replica)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unseen_replicas_are_reclaimed_and_connected_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start_with(
        &dir.path().join("data"),
        free_udp_port(),
        &["--replica-reclaim-secs", "3"],
    );
    let node = c.ok(
        "POST",
        "/api/v1/nodes",
        Some(json!({"name": "gw", "ha": true})),
    );
    let token = Token::decode(node["token"].as_str().unwrap()).unwrap();
    // One replica stays connected throughout; fifteen come and go.
    let live = register(&token, "live").await.expect("first replica");
    let live_ip = live.welcome().mesh_ip;
    for i in 1..MAX_REPLICAS {
        register(&token, &format!("old-{i}"))
            .await
            .expect("within the cap")
            .goodbye()
            .await;
    }
    // The node is full: a new replica id is refused...
    match register(&token, "reinstalled").await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, RefuseCode::TOO_MANY_REPLICAS),
        other => panic!("expected a refusal at the cap, got {:?}", other.map(|_| ())),
    }
    // ...until the unseen records are reclaimed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let fresh = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match register(&token, "reinstalled").await {
            Ok(s) => break s,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "still refused 20 s after a 3 s reclaim time: {e}"
            ),
        }
    };
    assert_ne!(fresh.welcome().mesh_ip, live_ip);
    // The connected replica kept its record: its address is unchanged on reconnect.
    assert!(
        live.connection().close_reason().is_none(),
        "the live session stayed up"
    );
    live.goodbye().await;
    let again = register(&token, "live").await.expect("reconnects");
    assert_eq!(again.welcome().mesh_ip, live_ip);
}
