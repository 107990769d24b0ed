//! One etcd client on a runtime of its own, callable from synchronous code anywhere.
//!
//! [`super::super::Store`] is synchronous (redb is), but the etcd client is async. Its
//! futures run on a dedicated one-thread runtime; a caller blocks on a channel for the
//! reply. That is safe from inside the coordinator's tokio workers too: the future never
//! runs on the caller's runtime, so a blocked worker cannot starve it, and on a
//! multi-thread runtime the caller first tells tokio it is about to block
//! (`block_in_place`) so that the worker's other tasks move to another thread.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use crate::store::StoreError;

/// How long one etcd request may take before the call fails. A 3-member etcd elects a
/// new leader in 1–5 s; a request in that window fails after this and the API answers
/// 500, rather than hanging the client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting to one endpoint may take before the client tries another.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings find a member that died without closing its connections.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// The etcd client and the runtime its futures run on.
pub struct Etcd {
    client: Client,
    handle: Handle,
    endpoints: Vec<String>,
    runtime: Option<Runtime>,
}

impl Etcd {
    /// Connect to the cluster at `endpoints` (`http://HOST:PORT`). Connections are made
    /// lazily: this fails only on malformed endpoints, not on unreachable ones.
    pub fn connect(endpoints: &[String]) -> Result<Arc<Self>, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("etcd runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let eps = endpoints.to_vec();
        let client = block_on(&handle, async move {
            Client::connect(eps, Some(Self::options(REQUEST_TIMEOUT))).await
        })
        .map_err(|e| StoreError::Backend(format!("etcd connect: {e}")))?;
        Ok(Arc::new(Self {
            client,
            handle,
            endpoints: endpoints.to_vec(),
            runtime: Some(runtime),
        }))
    }

    fn options(timeout: Duration) -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(timeout)
            .with_keep_alive(KEEPALIVE, KEEPALIVE)
            // A member cut off from its quorum answers "no leader" at once instead of
            // serving stale reads or holding writes until the timeout.
            .with_require_leader(true)
    }

    /// A client bound to one endpoint only (for per-member health), with `timeout`.
    pub async fn single(endpoint: String, timeout: Duration) -> Result<Client, etcd_client::Error> {
        Client::connect([endpoint], Some(Self::options(timeout))).await
    }

    /// A handle to the client (cheap: it shares the connections).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The endpoints given at start.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The runtime the client runs on, for background tasks.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Run `f` on the etcd runtime and wait for its result, from any thread.
    pub fn block<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        block_on(&self.handle, f)
    }

    /// Run `f` on the etcd runtime and await its result from another runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        self.handle.spawn(f).await.ok()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime inside another one panics; this does not wait.
            rt.shutdown_background();
        }
    }
}

fn block_on<T: Send + 'static>(handle: &Handle, f: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        // The receiver only goes away if the caller panicked meanwhile.
        let _ = tx.send(f.await);
    });
    let wait = move || {
        rx.recv()
            .expect("the etcd runtime outlives every call made through it")
    };
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}
