//! The stale-replica sweep: the I/O around [`crate::registry::reclaim`].

use std::sync::Arc;
use std::time::Duration;

use super::Hub;
use crate::registry::reclaim::{sweep_period, unix_now};

/// Sweep every [`sweep_period`] of `after` for as long as the runtime runs; registrations
/// refresh their records from now on too.
pub fn spawn(hub: Arc<Hub>, after: Duration) {
    hub.registry.set_replica_reclaim(after);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(sweep_period(after));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let h = hub.clone();
            let swept = tokio::task::spawn_blocking(move || {
                let connected = h.lock().core.connected_replicas();
                h.registry.sweep_replicas(&connected, unix_now(), after)
            })
            .await;
            match swept {
                Ok(Ok(s)) if s.reclaimed > 0 => {
                    tracing::info!(reclaimed = s.reclaimed, "stale replicas reclaimed");
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "replica sweep failed; retrying later"),
                Err(e) => tracing::error!(error = %e, "replica sweep panicked"),
            }
        }
    });
}
