//! `GET /api/v1/nodes/{id}/logs` on loopback, no root: two replicas of an HA node send
//! log batches over their control streams with the real protocol client; the API
//! answers them tagged with the sending replica, filters by replica and `since`, clips
//! hostile text, refuses bad queries and unknown nodes in the envelope.

mod common;

use std::time::Duration;

use common::*;
use meshgate_proto::client::{ConnectOptions, Session};
use meshgate_proto::logs::{MAX_TEXT, clip};
use meshgate_proto::{LogBatch, LogLevel, LogRecord, Token};
use serde_json::{Value, json};

fn record(level: LogLevel, text: &str) -> LogRecord {
    LogRecord {
        at_unix_us: 1_700_000_000_000_000,
        level,
        target: "meshgate_agent::flip".into(),
        text: text.into(),
    }
}

fn lines(c: &Coordinator, node: &str, query: &str) -> Vec<Value> {
    c.ok("GET", &format!("/api/v1/nodes/{node}/logs{query}"), None)
        .as_array()
        .expect("the result is a list")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_logs_are_tagged_filtered_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("data"), free_udp_port());
    let node = c.ok(
        "POST",
        "/api/v1/nodes",
        Some(json!({"name": "web", "ha": true})),
    );
    let id = node["id"].as_str().unwrap().to_owned();
    let token = Token::decode(node["token"].as_str().unwrap()).unwrap();
    let mut opts = ConnectOptions::new("replica-a");
    opts.lan = lan(11);
    let a = Session::connect(&token, opts).await.unwrap();
    let mut opts = ConnectOptions::new("replica-b");
    opts.lan = lan(12);
    let b = Session::connect(&token, opts).await.unwrap();
    assert!(lines(&c, &id, "").is_empty());

    a.control().send_logs(LogBatch {
        records: vec![
            record(LogLevel::Info, "flip applied epoch=1 to=Active"),
            record(LogLevel::Warn, "cannot reach the coordinator"),
        ],
        dropped: 0,
    });
    let hostile = format!("{}\x1b[2J", "x".repeat(1 << 17));
    b.control().send_logs(LogBatch {
        records: vec![record(LogLevel::Error, &hostile)],
        dropped: 0,
    });
    let all = poll("three lines", Duration::from_secs(5), || {
        let v = lines(&c, &id, "");
        (v.len() == 3).then_some(v)
    })
    .await;
    let by_replica =
        |r: &str| -> Vec<Value> { all.iter().filter(|l| l["replica"] == r).cloned().collect() };
    let from_a = by_replica("replica-a");
    assert_eq!(from_a.len(), 2, "{all:?}");
    assert_eq!(from_a[0]["message"], "flip applied epoch=1 to=Active");
    assert_eq!(from_a[0]["level"], "info");
    assert_eq!(from_a[0]["target"], "meshgate_agent::flip");
    assert_eq!(from_a[0]["at_unix_us"], 1_700_000_000_000_000u64);
    assert!(from_a[0]["received_unix_us"].as_u64().unwrap() > 1_700_000_000_000_000);
    assert_eq!(from_a[1]["level"], "warn");
    let from_b = by_replica("replica-b");
    assert_eq!(from_b[0]["level"], "error");
    let text = from_b[0]["message"].as_str().unwrap();
    assert!(text.len() <= MAX_TEXT, "{}", text.len());
    assert_eq!(text, clip(&hostile, MAX_TEXT));
    assert!(!text.contains('\x1b'));
    let seqs: Vec<u64> = all.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "newest last: {seqs:?}"
    );

    // The filters.
    assert_eq!(lines(&c, &id, "?replica=replica-a"), from_a);
    assert_eq!(lines(&c, &id, "?replica=replica-b"), from_b);
    assert!(lines(&c, &id, "?replica=nobody").is_empty());
    let since = format!("?since={}", seqs[1]);
    assert_eq!(lines(&c, &id, &since), all[2..].to_vec());
    assert_eq!(lines(&c, &id, "?limit=1"), all[2..].to_vec());
    let both = format!("?replica=replica-a&since={}", seqs[0]);
    assert_eq!(lines(&c, &id, &both), from_a[1..].to_vec());

    // Bad queries and unknown nodes: the envelope, nothing else.
    for bad in [
        "?since=-1",
        "?since=x",
        "?limit=0",
        "?limit=5000",
        "?replica=a%20b",
    ] {
        let (status, body) = c.call("GET", &format!("/api/v1/nodes/{id}/logs{bad}"), None);
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["success"], false);
        assert!(body["errors"][0]["message"].is_string(), "{body}");
    }
    let unknown = "00000000-0000-4000-8000-000000000000";
    let (status, body) = c.call("GET", &format!("/api/v1/nodes/{unknown}/logs"), None);
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errors"][0]["code"], 1002);

    // The console asks for logs only where the map says they exist.
    let map = c.ok("GET", "/api/v1/map", None);
    assert!(
        map["features"].as_array().unwrap().contains(&json!("logs")),
        "{map}"
    );

    drop((a, b));
}
