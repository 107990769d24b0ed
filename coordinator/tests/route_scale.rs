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

    // One call with the whole list (one durable write), as a gateway with a large
    // table would do; then a few single additions on top.
    let started = Instant::now();
    let path = format!("/api/v1/nodes/{id}/routes");
    let list = |n: usize| json!({"routes": (0..n).map(|i| json!({"network": net(i)})).collect::<Vec<_>>()});
    let set = c.ok("PUT", &path, Some(list(ROUTES - 10)));
    assert_eq!(set.as_array().unwrap().len(), ROUTES - 10);
    for i in ROUTES - 10..ROUTES {
        c.ok("POST", &path, Some(json!({"network": net(i)})));
    }
    println!("{ROUTES} routes added in {:.1?}", started.elapsed());

    // A replica registering now gets the whole table with its Welcome; one connected
    // throughout has followed it.
    let late = Session::connect(&token, ConnectOptions::new("late"))
        .await
        .expect("registers with a table larger than one frame");
    // The coordinator's table follows the store through its watch, so a registration
    // right after the writes may start from a table a moment old and catch up.
    poll("the late replica's table", Duration::from_secs(20), || {
        (late.status().routes.entries.len() == ROUTES + 1).then_some(())
    })
    .await;
    poll("the early replica's table", Duration::from_secs(20), || {
        (early.status().routes.entries.len() == ROUTES + 1).then_some(())
    })
    .await;
    assert!(early.status().closed.is_none());

    // The per-node cap is a 409 with a message, not a silent failure, both for a list
    // one over it (nothing is changed) and for one more route on a full node.
    let (status, err) = c.call("PUT", &path, Some(list(PER_NODE_CAP + 1)));
    assert_eq!(status, 409, "{err}");
    assert_eq!(
        c.ok("GET", &path, None).as_array().unwrap().len(),
        ROUTES,
        "a refused list changed nothing"
    );
    c.ok("PUT", &path, Some(list(PER_NODE_CAP)));
    let (status, err) = c.call("POST", &path, Some(json!({"network": "172.16.0.0/24"})));
    assert_eq!(status, 409, "{err}");
    assert!(
        err["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{err}"
    );
    // Withdrawing by list keeps the routes that stay, by id.
    let kept = c.ok("PUT", &path, Some(list(2)));
    assert_eq!(kept.as_array().unwrap().len(), 2);
    poll(
        "the early replica's shrunk table",
        Duration::from_secs(20),
        || (early.status().routes.entries.len() == 3).then_some(()),
    )
    .await;
}
