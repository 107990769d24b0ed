//! Drives the core's cluster election from etcd: a thin layer that decides nothing. It
//! carries three things, each in one task on the etcd runtime:
//!
//! * the watch over `{prefix}/cluster/` ([`keys::View`]): one consistent read, then a
//!   watch from the revision after it that resumes after reconnects and compactions
//!   without losing or repeating a change ([`crate::store::etcd::watch_loop`]);
//! * the core's store transactions ([`Output::Store`](crate::core::Output::Store)), each
//!   one etcd transaction ([`txn`]) whose result goes back as [`ClusterEvent::Done`];
//! * registration and the decider campaign ([`super::Membership`]), which report through
//!   the same channel.
//!
//! Everything reaches the core in one queue, in the order each task produced it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::members::Events;
use super::{keys, txn};
use crate::core::Input;
use crate::election::quorum::ClusterEvent;
use crate::hub::Hub;
use crate::store::etcd::{Etcd, cursor::Cursor, read_all, retrying, unavailable, watch_loop};

/// Pause before the first read is tried again.
const READ_RETRY: Duration = Duration::from_millis(200);

/// The running driver; its tasks end when it is dropped.
pub struct Driver {
    tasks: Vec<JoinHandle<()>>,
    events: Events,
}

impl Driver {
    /// Starts driving `hub`'s core (a cluster member named `me`) from the keys under
    /// `root` (`{prefix}/cluster/`). Call from the coordinator's runtime: the events are
    /// fed to the hub there.
    pub fn start(etcd: Arc<Etcd>, root: String, me: String, hub: Arc<Hub>) -> Self {
        let (events, mut rx) = mpsc::unbounded_channel::<ClusterEvent>();
        let feed_hub = hub.clone();
        let feed = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                feed_hub.input(Input::Cluster(ev));
            }
        });
        let watch = etcd
            .handle()
            .spawn(follow(etcd.clone(), root.clone(), events.clone()));
        let (ops_tx, mut ops) = mpsc::unbounded_channel();
        if hub.cluster_ops.set(ops_tx).is_err() {
            tracing::error!("the hub already has a cluster driver");
        }
        let (client, done) = (etcd.client(), events.clone());
        let handle = etcd.handle().clone();
        let txns = etcd.handle().spawn(async move {
            while let Some(op) = ops.recv().await {
                let (client, root, me, done) =
                    (client.clone(), root.clone(), me.clone(), done.clone());
                // Side by side: one node's slow transaction does not hold up another's.
                handle.spawn(async move {
                    let ok = txn::run(client, &root, &me, &op).await;
                    let _ = done.send(ClusterEvent::Done { op, ok });
                });
            }
        });
        Self {
            tasks: vec![feed, watch, txns],
            events,
        }
    }

    /// Where registration reports ([`super::Membership::start`]).
    pub fn events(&self) -> Events {
        self.events.clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The initial read and then the watch, as [`ClusterEvent`]s.
async fn follow(etcd: Arc<Etcd>, root: String, events: Events) {
    let (kvs, revision) = loop {
        let range = root.clone();
        let read = retrying(etcd.client(), unavailable, move |c| {
            read_all(c, range.clone())
        });
        match read.await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the cluster keys; retrying");
                tokio::time::sleep(READ_RETRY).await;
            }
        }
    };
    let (mut view, first) = keys::View::snapshot(&kvs, revision);
    for ev in first {
        let _ = events.send(ev);
    }
    let cursor = Cursor::from_snapshot(&kvs, revision);
    watch_loop(etcd.client(), root, cursor, move |batch, revision| {
        for ev in view.apply(batch, revision) {
            // The receiver lives as long as the hub; a send fails only at exit.
            let _ = events.send(ev);
        }
    })
    .await;
}
