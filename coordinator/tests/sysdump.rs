//! Support archives on loopback: `GET /api/v1/support/sysdump` from a running coordinator
//! with a connected replica, and `meshgate-coordinator sysdump --data-dir` after it
//! stopped. Both hold what an operator needs and none of the secrets: the admin token,
//! every node and device token, the token key and the TLS key.

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;

use base64::Engine as _;
use common::*;
use meshgate_proto::Token;
use meshgate_proto::client::{ConnectOptions, Session};
use serde_json::json;

/// Every file of a `tar.gz`, by its path below the top directory.
fn files(bytes: &[u8]) -> BTreeMap<String, String> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut out = BTreeMap::new();
    for e in tar.entries().expect("a tar archive") {
        let mut e = e.expect("a tar entry");
        let path = e.path().expect("a path").display().to_string();
        let (top, name) = path
            .split_once('/')
            .expect("files live under one directory");
        assert!(top.starts_with("meshgate-sysdump-"), "{path}");
        let mut text = String::new();
        e.read_to_string(&mut text).expect("text files");
        out.insert(name.to_owned(), text);
    }
    out
}

/// The raw response (status, head, body) of an HTTP GET.
fn get(c: &Coordinator, path: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(c.api).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, resp[split + 4..].to_vec())
}

/// Fails if any secret appears in any file, or the raw key bytes in the archive.
fn assert_no_secrets(files: &BTreeMap<String, String>, raw: &[u8], secrets: &[String], key: &[u8]) {
    for (name, text) in files {
        for s in secrets {
            assert!(!text.contains(s.as_str()), "{name} contains the secret {s}");
        }
    }
    let gz = flate2::read::GzDecoder::new(raw);
    let mut plain = Vec::new();
    std::io::BufReader::new(gz).read_to_end(&mut plain).unwrap();
    assert!(
        !plain.windows(key.len()).any(|w| w == key),
        "raw key bytes in the archive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysdumps_hold_the_state_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), free_udp_port());
    let node = c.ok(
        "POST",
        "/api/v1/nodes",
        Some(json!({"name": "web", "ha": true})),
    );
    let id = node["id"].as_str().unwrap().to_owned();
    c.ok(
        "POST",
        &format!("/api/v1/nodes/{id}/routes"),
        Some(json!({"network": "192.168.50.0/24"})),
    );
    let device = c.ok("POST", "/api/v1/devices", Some(json!({"name": "laptop"})));
    let node_token = node["token"].as_str().unwrap().to_owned();
    let token = Token::decode(&node_token).unwrap();
    let _replica = Session::connect(
        &token,
        ConnectOptions {
            lan: lan(2),
            ..ConnectOptions::new("replica-a")
        },
    )
    .await
    .unwrap();

    let admin = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
    let key = std::fs::read(dir.path().join("token-key")).unwrap();
    let tls_key = std::fs::read(dir.path().join("key.der")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let secrets = vec![
        admin.trim().to_owned(),
        node_token.clone(),
        device["token"].as_str().unwrap().to_owned(),
        key.iter().map(|b| format!("{b:02x}")).collect(),
        b64.encode(&key),
        b64.encode(&tls_key),
        // Any 24 characters of the token's body would give most of it away.
        node_token[10..34].to_owned(),
    ];

    let (status, _, _) = get(&c, "/api/v1/support/sysdump", None);
    assert_eq!(status, 401, "the sysdump needs the admin token");
    let (status, head, body) = get(&c, "/api/v1/support/sysdump", Some(admin.trim()));
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: application/gzip"), "{head}");
    assert!(
        head.contains("attachment; filename=\"meshgate-sysdump-"),
        "{head}"
    );
    let live = files(&body);
    for f in [
        "versions.json",
        "config.json",
        "data-dir.txt",
        "nodes.json",
        "devices.json",
        "routes.json",
        "stats.json",
        "metrics.txt",
        "logs/coordinator.log",
        "INDEX",
    ] {
        assert!(live.contains_key(f), "{f} missing: {:?}", live.keys());
    }
    let nodes: serde_json::Value = serde_json::from_str(&live["nodes.json"]).unwrap();
    assert_eq!(nodes[0]["name"], "web");
    assert_eq!(nodes[0]["connections"][0]["id"], "replica-a");
    assert_eq!(nodes[0]["connections"][0]["ha_status"], "active");
    assert!(live["nodes.json"].contains("\"registered\""), "no events");
    assert!(live["devices.json"].contains("laptop"));
    assert!(live["routes.json"].contains("192.168.50.0/24"));
    assert!(live["versions.json"].contains(env!("CARGO_PKG_VERSION")));
    assert!(live["config.json"].contains("--data-dir"));
    assert!(live["metrics.txt"].contains("meshgate_"));
    assert!(live["logs/coordinator.log"].contains("coordinator started"));
    assert!(
        live["data-dir.txt"].contains("admin-token"),
        "the listing names files"
    );
    assert_no_secrets(&live, &body, &secrets, &key);

    // Offline needs the store to itself: refused while the coordinator runs, then fine.
    let offline = |out: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_meshgate-coordinator"))
            .args(["sysdump", "--data-dir"])
            .arg(dir.path())
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let out_path = dir.path().join("dump.tar.gz");
    let busy = offline(&out_path);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("/api/v1/support/sysdump"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    drop(_replica);
    c.kill9();
    let done = offline(&out_path);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let raw = std::fs::read(&out_path).unwrap();
    let cold = files(&raw);
    assert!(cold.contains_key("NOTE"));
    let nodes: serde_json::Value = serde_json::from_str(&cold["nodes.json"]).unwrap();
    assert_eq!(nodes[0]["name"], "web");
    assert_eq!(nodes[0]["replicas_known"][0]["replica_id"], "replica-a");
    assert!(cold["routes.json"].contains("192.168.50.0/24"));
    assert_no_secrets(&cold, &raw, &secrets, &key);
}
