//! [`EtcdStore`] against a real etcd (Debian's `etcd-server`, installed by
//! `cargo xtask setup`), started per test on loopback ports in a temp dir.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// One etcd member on 127.0.0.1, killed on drop.
pub(crate) struct TestEtcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("loopback has free ports")
        .port()
}

impl TestEtcd {
    pub(crate) fn start() -> Self {
        let mut e = Self {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        e.spawn();
        e
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let child = Command::new("etcd")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                self.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                self.peer_port
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{}",
                self.peer_port
            ))
            .args(["--logger=zap", "--log-level=error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed: run `cargo xtask setup` (Debian etcd-server)");
        self.child = Some(child);
    }

    /// kill -9, then start again on the same data dir and ports.
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn store(&self, root: &str) -> EtcdStore {
        let etcd = Etcd::connect(&[self.url()]).expect("a well-formed endpoint");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match EtcdStore::open(etcd.clone(), root) {
                Ok(s) => return s,
                Err(e) if Instant::now() > deadline => panic!("etcd never answered: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, StoreError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn behaves_like_the_embedded_store() {
    let e = TestEtcd::start();
    let s = e.store("/t/kv/");
    let other = e.store("/t/other/");
    other.put("nodes/z", b"elsewhere").unwrap();
    crate::store::conformance::revisions_and_range(&s);
    crate::store::conformance::compares_guard_transactions(&s);
    assert!(
        other.get("nodes/z").unwrap().is_some(),
        "roots keep stores apart"
    );
    // One transaction writing a key twice: etcd refuses that, the store lets the last win.
    s.txn(&[], &[Op::put("meta/v", "1"), Op::put("meta/v", "2")])
        .unwrap()
        .expect("no compare to fail");
    assert_eq!(s.get("meta/v").unwrap().unwrap().value, b"2");
}

#[test]
fn leases_are_etcd_leases() {
    let e = TestEtcd::start();
    let s = e.store("/t/kv/");
    let l = s.lease_grant(Duration::from_millis(1500)).unwrap();
    let put = |key: &str, lease| Op::Put {
        key: key.into(),
        value: vec![1],
        lease: Some(lease),
    };
    s.txn(&[], &[put("eph", l)]).unwrap();
    assert_eq!(s.get("eph").unwrap().unwrap().lease, Some(l));
    s.lease_keep_alive(l).unwrap();
    s.lease_revoke(l).unwrap();
    assert!(s.get("eph").unwrap().is_none());
    let r = s.lease_keep_alive(l);
    assert!(
        matches!(r, Err(StoreError::UnknownLease(x)) if x == l),
        "{r:?}"
    );
    assert!(matches!(
        s.lease_revoke(l),
        Err(StoreError::UnknownLease(_))
    ));
    assert!(matches!(
        s.txn(&[], &[put("eph", l)]),
        Err(StoreError::UnknownLease(_))
    ));
    // etcd expires a lapsed lease itself.
    let short = s.lease_grant(Duration::from_secs(1)).unwrap();
    s.txn(&[], &[put("short", short)]).unwrap();
    assert_eq!(s.expire_leases().unwrap(), 0);
    let gone = Instant::now() + Duration::from_secs(10);
    while s.get("short").unwrap().is_some() {
        assert!(Instant::now() < gone, "etcd did not expire the lease");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn next(w: &mut Watch) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(15), w.next())
        .await
        .expect("an event within 15 s")
        .expect("no lag")
}

fn put_of(ev: &WatchEvent) -> (&str, &[u8]) {
    match ev {
        WatchEvent::Put(kv) => (&kv.key, &kv.value),
        WatchEvent::Delete { key, .. } => panic!("expected a put, got a delete of {key}"),
    }
}

/// Also shows that the synchronous calls are safe on a multi-thread runtime's worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_etcd_restarts_without_loss_or_repeat() {
    let mut e = TestEtcd::start();
    let s = e.store("/t/kv/");
    let mut w = s.watch("k/");
    s.put("k/1", b"a").unwrap();
    s.put("elsewhere", b"-").unwrap();
    assert_eq!(put_of(&next(&mut w).await), ("k/1", &b"a"[..]));
    e.restart();
    retry("a put after the restart", || s.put("k/2", b"b"));
    s.delete("k/1").unwrap();
    assert_eq!(put_of(&next(&mut w).await), ("k/2", &b"b"[..]));
    assert!(matches!(next(&mut w).await, WatchEvent::Delete { key, .. } if key == "k/1"));
    s.put("k/3", b"c").unwrap();
    // Nothing repeated: the next event is the new one.
    assert_eq!(put_of(&next(&mut w).await), ("k/3", &b"c"[..]));
}

/// And on a current-thread runtime, where blocking the only thread must not deadlock.
#[tokio::test(flavor = "current_thread")]
async fn a_compacted_watch_delivers_exactly_the_difference() {
    let e = TestEtcd::start();
    let s = e.store("/t/kv/");
    for k in ["a", "b", "c"] {
        s.put(k, b"1").unwrap();
    }
    let snapshot = Cursor::from_snapshot(&s.range("").unwrap(), s.revision().unwrap());
    s.put("b", b"2").unwrap();
    s.delete("c").unwrap();
    s.put("d", b"1").unwrap();
    let now = s.revision().unwrap();
    let mut c = s.etcd.client();
    s.etcd
        .block(async move { c.compact(now as i64, None).await })
        .expect("compaction");
    // A watcher that had seen only the snapshot resumes into compacted history.
    let (tx, rx) = broadcast::channel(16);
    let mut w = Watch::new(String::new(), rx);
    let task = s.etcd.handle().spawn(watch_loop(
        s.etcd.client(),
        s.root.clone(),
        snapshot,
        move |b, _| publish(&tx, b),
    ));
    assert_eq!(put_of(&next(&mut w).await), ("b", &b"2"[..]));
    assert_eq!(put_of(&next(&mut w).await), ("d", &b"1"[..]));
    assert!(matches!(next(&mut w).await, WatchEvent::Delete { key, .. } if key == "c"));
    // Then it goes on from the present, without repeating anything.
    s.put("e", b"1").unwrap();
    assert_eq!(put_of(&next(&mut w).await), ("e", &b"1"[..]));
    task.abort();
}
