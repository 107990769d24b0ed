//! What the network-policy push needs from the live state: who is connected, a way to
//! send each one its filter, a signal when connections change, and whose counters a
//! report carries.

use meshgate_proto::{CoordMsg, FilterCounters, Id};
use tokio::sync::{mpsc, watch};

use super::Hub;
use crate::election::ConnId;

impl Hub {
    /// Every connected participant: its connection and its node or device id.
    pub fn policy_targets(&self) -> Vec<(ConnId, Id)> {
        let st = self.lock();
        st.io
            .keys()
            .filter_map(|c| st.core.session_owner(*c).map(|(id, _)| (*c, id)))
            .collect()
    }

    /// Queue a control message on one connection; false if it is gone or its queue is
    /// full (the next sweep tries again).
    pub fn send_to(&self, conn: ConnId, msg: CoordMsg) -> bool {
        self.lock().io.get(&conn).is_some_and(|io| {
            !matches!(
                io.ctl.try_send(msg),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        })
    }

    /// Wakes whenever the relay table was rebuilt (connections came, went or changed).
    pub fn relay_changes(&self) -> watch::Receiver<u64> {
        self.relay_version.subscribe()
    }

    /// Records the filter counters an agent reported on `conn`.
    pub fn policy_counters(&self, conn: ConnId, c: &FilterCounters) {
        let who = self.lock().core.session_owner(conn);
        if let Some((id, replica)) = who {
            self.policy.counters.report(id, &replica, c);
        }
    }
}
