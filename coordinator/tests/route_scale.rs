//! A large route table on loopback: 12,500 routes added through the API, then agents
//! (the real protocol client) register and receive all of them, in bounded frames; the
//! documented per-node cap is refused with a 4xx. It prints the API's rate (a speed
//! target belongs in a benchmark, not in an assertion).

mod common;

use std::time::{Duration, Instant};

use common::*;
use meshgate_proto::Token;
use meshgate_proto::client::{ConnectOptions, Session};
use serde_json::json;

const ROUTES: usize = 12_500;
/// `MAX_ROUTES_PER_NODE` in the coordinator's registry.
const PER_NODE_CAP: usize = 16_384;

fn net(i: usize) -> String {
    format!("10.{}.{}.0/24", i / 256, i % 256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 16,385 API calls, each a store commit (minutes on a loaded machine)"]
async fn twelve_thousand_five_hundred_routes_reach_every_agent() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("data"), free_udp_port());
    let node = c.ok(
        "POST",
        "/api/v1/nodes",
        Some(json!({"name": "big", "ha": true})),
    );
    let id = node["id"].as_str().unwrap().to_owned();
    let token = Token::decode(node["token"].as_str().unwrap()).unwrap();
    let early = Session::connect(&token, ConnectOptions::new("early"))
        .await
        .unwrap();

    let started = Instant::now();
    let path = format!("/api/v1/nodes/{id}/routes");
    for i in 0..ROUTES {
        c.ok("POST", &path, Some(json!({"network": net(i)})));
    }
    let took = started.elapsed();
    println!(
        "{ROUTES} routes added in {took:.1?} ({:.0} routes/s)",
        ROUTES as f64 / took.as_secs_f64()
    );

    // A replica registering now gets the whole table with its Welcome; one connected
    // throughout has followed it.
    let late = Session::connect(&token, ConnectOptions::new("late"))
        .await
        .expect("registers with a table larger than one frame");
    assert_eq!(late.status().routes.entries.len(), ROUTES + 1);
    poll("the early replica's table", Duration::from_secs(20), || {
        (early.status().routes.entries.len() == ROUTES + 1).then_some(())
    })
    .await;
    assert!(early.status().closed.is_none());

    // The per-node cap is a 409 with a message, not a silent failure.
    for i in ROUTES..PER_NODE_CAP {
        c.ok("POST", &path, Some(json!({"network": net(i)})));
    }
    let (status, err) = c.call("POST", &path, Some(json!({"network": "172.16.0.0/24"})));
    assert_eq!(status, 409, "{err}");
    assert!(
        err["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{err}"
    );
}
