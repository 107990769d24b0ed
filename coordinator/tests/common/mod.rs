//! Helpers shared by the loopback integration tests: the coordinator process, the REST
//! API over plain HTTP, polling.
#![allow(dead_code, reason = "each test crate uses a subset")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshgate_proto::LanInfo;
use meshgate_proto::client::Session;
use serde_json::Value;

pub const LEASE_MS: u64 = 250;

/// The coordinator process; killed (SIGKILL) on drop so a failing test leaves nothing.
pub struct Coordinator {
    child: Child,
    pub api: SocketAddr,
    pub quic: SocketAddr,
    admin: String,
}

impl Coordinator {
    pub fn start(dir: &Path, quic_port: u16) -> Self {
        Self::start_with(dir, quic_port, &[])
    }

    /// Start with extra `serve` arguments (they replace the defaults they name).
    pub fn start_with(dir: &Path, quic_port: u16, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshgate-coordinator"))
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args([
                "--quic-listen",
                &format!("127.0.0.1:{quic_port}"),
                "--api-listen",
                "127.0.0.1:0",
            ])
            .args(
                [
                    ["--lease-ms", &LEASE_MS.to_string()],
                    ["--heartbeat-ms", "50"],
                    ["--name", "test-colo"],
                ]
                .into_iter()
                // A default `extra` sets itself is left out (clap refuses a repeat).
                .filter(|[flag, _]| !extra.contains(flag))
                .flatten(),
            )
            .args(extra)
            .env("MESHGATE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn coordinator");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut api, mut quic) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while api.is_none() || quic.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("coordinator did not print its addresses");
            if let Some(a) = line.strip_prefix("api listening on ") {
                api = a.parse().ok();
            } else if let Some(q) = line.strip_prefix("quic listening on ") {
                quic = q.parse().ok();
            }
        }
        let admin = std::fs::read_to_string(dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            api: api.unwrap(),
            quic: quic.unwrap(),
            admin,
        }
    }

    pub fn kill9(mut self) {
        // Child::kill sends SIGKILL on Unix.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut s = TcpStream::connect(self.api).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.admin,
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status: u16 = resp[9..12].parse().unwrap();
        let (_, body) = resp.split_once("\r\n\r\n").unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// A GET's body as text (`/metrics`).
    pub fn text(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.api).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp.split_once("\r\n\r\n").unwrap().1.to_owned()
    }

    /// One sample's value in `/metrics` (`name` with its labels, as printed).
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.text("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        assert_eq!(v["success"], true);
        v["result"].clone()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn statuses(c: &Coordinator, node: &str) -> Vec<(String, String)> {
    let v = c.ok("GET", &format!("/api/v1/nodes/{node}/connections"), None);
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["ha_status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub async fn recv_within(s: &Session, d: Duration) -> Option<bytes::Bytes> {
    tokio::time::timeout(d, s.recv_packet())
        .await
        .ok()
        .and_then(Result::ok)
}

pub fn lan(last: u8) -> Option<LanInfo> {
    Some(LanInfo {
        ip: Ipv4Addr::new(192, 168, 50, last),
        mac: [2, 0, 0, 0, 0, last],
    })
}
