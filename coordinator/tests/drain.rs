//! Lossless drain on loopback, no root: the real coordinator binary, two replicas and a
//! device through the real protocol client. The active asks for handover while numbered
//! datagrams flow both ways every 2 ms; none may be lost: a requested handover
//! overlaps the old and the new active, so it costs nothing.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use meshgate_proto::client::{ConnectOptions, Session};
use meshgate_proto::datagram::test_udp_packet;
use meshgate_proto::{HandoverReason, Role, Token};
use serde_json::json;

const OVERLAP_MS: u64 = 150;
const EVERY: Duration = Duration::from_millis(2);

fn seq_of(pkt: &[u8]) -> Option<u64> {
    // IPv4 (20 bytes, no options) + UDP (8) header, then our 8-byte sequence number.
    pkt.get(28..36)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// Record the sequence numbers of everything `s` receives into `into`.
fn collect(s: Arc<Session>, into: Arc<Mutex<BTreeSet<u64>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(p) = s.recv_packet().await {
            if let Some(n) = seq_of(&p) {
                into.lock().unwrap().insert(n);
            }
        }
    })
}

/// When `s` first reports `role`.
fn first_seen(s: &Session, role: Role) -> tokio::task::JoinHandle<Instant> {
    let mut rx = s.subscribe();
    tokio::spawn(async move {
        loop {
            if rx.borrow_and_update().role == role {
                return Instant::now();
            }
            rx.changed().await.expect("session status channel closed");
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hands_over_without_losing_a_datagram() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start_with(
        &dir.path().join("data"),
        free_udp_port(),
        &["--handover-overlap-ms", &OVERLAP_MS.to_string()],
    );
    let node = c.ok(
        "POST",
        "/api/v1/nodes",
        Some(json!({"name": "web-server", "ha": true})),
    );
    let node_id = node["id"].as_str().unwrap().to_owned();
    c.ok(
        "POST",
        &format!("/api/v1/nodes/{node_id}/routes"),
        Some(json!({"network": "192.168.50.0/24"})),
    );
    let token = Token::decode(node["token"].as_str().unwrap()).unwrap();
    let device = c.ok("POST", "/api/v1/devices", Some(json!({"name": "laptop"})));
    let dev_token = Token::decode(device["token"].as_str().unwrap()).unwrap();
    let dev_ip: Ipv4Addr = device["mesh_ip"].as_str().unwrap().parse().unwrap();
    let host = Ipv4Addr::new(192, 168, 50, 7);

    let connect = |id: &'static str, last: u8| {
        let token = token.clone();
        async move {
            let opts = ConnectOptions {
                lan: lan(last),
                ..ConnectOptions::new(id)
            };
            Arc::new(Session::connect(&token, opts).await.unwrap())
        }
    };
    let a = connect("replica-a", 2).await;
    let b = connect("replica-b", 3).await;
    assert_eq!(a.welcome().role, Role::Active);
    assert_eq!(b.welcome().role, Role::Standby);
    poll("active lease on replica a", Duration::from_secs(2), || {
        a.may_forward().then_some(())
    })
    .await;
    let dev = Arc::new(
        Session::connect(&dev_token, ConnectOptions::new("laptop-1"))
            .await
            .unwrap(),
    );

    let (at_a, at_b, at_dev) = (Arc::default(), Arc::default(), Arc::default());
    let collectors = [
        collect(a.clone(), Arc::clone(&at_a)),
        collect(b.clone(), Arc::clone(&at_b)),
        collect(dev.clone(), Arc::clone(&at_dev)),
    ];
    let b_active = first_seen(&b, Role::Active);
    let a_fenced = first_seen(&a, Role::Fenced);

    // Device → subnet, and subnet → device from whichever replica may forward, one
    // numbered datagram each way every 2 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (a, b, dev, stop) = (a.clone(), b.clone(), dev.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            let (mut sent_up, mut sent_down, mut gaps) = (0u64, BTreeSet::new(), 0u32);
            for n in 0u64.. {
                tick.tick().await;
                if stop.load(Relaxed) {
                    break;
                }
                let body = n.to_be_bytes();
                dev.send_packet(&test_udp_packet(dev_ip, host, &body))
                    .expect("device sends");
                sent_up = n + 1;
                let down = test_udp_packet(host, dev_ip, &body);
                let mut sent = false;
                for r in [&a, &b] {
                    if r.may_forward() && r.send_packet(&down).is_ok() {
                        sent = true;
                    }
                }
                if sent {
                    sent_down.insert(n);
                } else {
                    gaps += 1;
                }
            }
            (sent_up, sent_down, gaps)
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    a.request_handover(HandoverReason::Drain);
    let promoted = tokio::time::timeout(Duration::from_secs(2), b_active)
        .await
        .expect("standby promoted")
        .unwrap();
    // Exactly one `active` in the API from the promotion on; the draining one is passive.
    let st = statuses(&c, &node_id);
    assert_eq!(
        st.iter().filter(|(_, s)| s == "active").collect::<Vec<_>>(),
        [&("replica-b".to_owned(), "active".to_owned())],
        "{st:?}"
    );
    let fenced = tokio::time::timeout(Duration::from_secs(2), a_fenced)
        .await
        .expect("drained replica fenced")
        .unwrap();
    eprintln!(
        "promotion {:?} after the request, fence {:?} after the promotion",
        promoted - asked,
        fenced - promoted
    );
    assert!(
        promoted - asked < Duration::from_millis(LEASE_MS - 50),
        "promotion did not wait for the old lease: {:?}",
        promoted - asked
    );
    assert!(
        fenced - promoted >= Duration::from_millis(OVERLAP_MS - 20),
        "fenced before the overlap ended: {:?}",
        fenced - promoted
    );
    assert!(!a.may_forward(), "fenced replica must not forward");
    assert!(b.may_forward());
    assert_eq!(a.status().epoch, b.status().epoch);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Relaxed);
    let (sent_up, sent_down, gaps) = traffic.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in collectors {
        t.abort();
    }

    let (at_a, at_b, at_dev) = (
        at_a.lock().unwrap().clone(),
        at_b.lock().unwrap().clone(),
        at_dev.lock().unwrap().clone(),
    );
    let lost_up: Vec<u64> = (0..sent_up)
        .filter(|n| !at_a.contains(n) && !at_b.contains(n))
        .collect();
    let lost_down: Vec<u64> = sent_down.difference(&at_dev).copied().collect();
    eprintln!(
        "up: {sent_up} sent, {} at a, {} at b; down: {} sent, {} received, {gaps} ticks with no forwarder",
        at_a.len(),
        at_b.len(),
        sent_down.len(),
        at_dev.len()
    );
    assert!(!at_a.is_empty() && !at_b.is_empty(), "traffic moved to b");
    assert!(lost_up.is_empty(), "device → subnet lost {lost_up:?}");
    assert!(lost_down.is_empty(), "subnet → device lost {lost_down:?}");
    assert_eq!(gaps, 0, "a moment with no replica allowed to forward");
    let stats = c.ok("GET", "/api/v1/stats", None);
    eprintln!("stats: {stats}");
}
