//! A short history of each node's election: registrations, disconnects, lease expiries,
//! handover requests and promotions, with wall-clock times. `GET
//! /api/v1/nodes/{id}/events` shows it, so an operator (and `cargo xtask demo`) can line a
//! failover up against what the agents and the traffic saw.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use meshgate_proto::Id;

/// Events kept per node (oldest dropped first).
const KEEP: usize = 64;

/// One election event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeEvent {
    /// When, in microseconds since the Unix epoch.
    pub at_unix_us: u64,
    /// `registered`, `disconnected`, `lease_expired`, `handover_requested`, `promoted`.
    pub event: &'static str,
    /// The replica it concerns.
    pub replica: String,
    /// The node's epoch after the event.
    pub epoch: u64,
    /// For `promoted` after a failure: how long after the old lease expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_expiry_ms: Option<u64>,
}

/// Every node's recent events.
#[derive(Default)]
pub struct EventLog(Mutex<HashMap<Id, VecDeque<NodeEvent>>>);

impl EventLog {
    /// Notes an event now.
    pub fn record(
        &self,
        node: Id,
        event: &'static str,
        replica: &str,
        epoch: u64,
        after_expiry_ms: Option<u64>,
    ) {
        let at_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let q = log.entry(node).or_default();
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(NodeEvent {
            at_unix_us,
            event,
            replica: replica.to_owned(),
            epoch,
            after_expiry_ms,
        });
    }

    /// A node's events, oldest first.
    pub fn of(&self, node: Id) -> Vec<NodeEvent> {
        let log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.get(&node)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a deleted node.
    pub fn forget(&self, node: Id) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_events_in_order() {
        let log = EventLog::default();
        let node = Id([1; 16]);
        for i in 0..(KEEP as u64 + 5) {
            log.record(node, "promoted", "a", i, None);
        }
        let v = log.of(node);
        assert_eq!(v.len(), KEEP);
        assert_eq!(v[0].epoch, 5);
        assert_eq!(v[KEEP - 1].epoch, KEEP as u64 + 4);
        assert!(v.windows(2).all(|w| w[0].at_unix_us <= w[1].at_unix_us));
        log.forget(node);
        assert!(log.of(node).is_empty());
    }
}
