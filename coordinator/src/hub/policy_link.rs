//! What the network-policy push needs from the live state: who is connected, a way to
//! send each one its filter, a signal when connections change, and whose counters a
//! report carries.

use meshgate_proto::{CoordMsg, FilterCounters, Id};
use tokio::sync::watch;

use super::Hub;
use crate::election::ConnId;

impl Hub {
    /// Every connected participant: its connection and its node or device id.
    pub fn policy_targets(&self) -> Vec<(ConnId, Id)> {
        self.lock()
            .sessions
            .iter()
            .map(|(c, s)| (*c, s.id))
            .collect()
    }

    /// Queue a control message on one connection; false if it is gone.
    pub fn send_to(&self, conn: ConnId, msg: CoordMsg) -> bool {
        self.lock()
            .sessions
            .get(&conn)
            .is_some_and(|s| s.ctl.send(msg).is_ok())
    }

    /// Wakes whenever the relay table was rebuilt (connections came, went or changed).
    pub fn relay_changes(&self) -> watch::Receiver<u64> {
        self.relay_version.subscribe()
    }

    /// Records the filter counters an agent reported on `conn`.
    pub fn policy_counters(&self, conn: ConnId, c: &FilterCounters) {
        let who = self
            .lock()
            .sessions
            .get(&conn)
            .map(|s| (s.id, s.replica_id.clone()));
        if let Some((id, replica)) = who {
            self.policy.counters.report(id, &replica, c);
        }
    }
}
