//! Where the replica log records agents send ([`meshgate_proto::AgentMsg::Logs`]) meet
//! the [`LogBook`]: the connection says which node and replica they come from.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use meshgate_proto::{Id, LogBatch};

use super::Hub;
use super::logbook::{Line, LogBook, Query};
use crate::election::ConnId;

impl Hub {
    /// Keeps the records an agent sent on `conn`, tagged with its replica id.
    pub fn agent_logs(&self, conn: ConnId, batch: LogBatch) {
        let Some((id, replica)) = self.lock().core.session_owner(conn) else {
            return;
        };
        let now_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.book()
            .ingest(Instant::now(), now_unix_us, id, &replica, batch);
    }

    /// A node's kept log lines that match `q`, oldest first.
    pub fn node_logs(&self, node: Id, q: Query<'_>) -> Vec<Line> {
        self.book().query(node, q)
    }

    /// Forgets a deleted participant's log lines.
    pub fn forget_logs(&self, id: Id) {
        self.book().forget(id);
    }

    fn book(&self) -> std::sync::MutexGuard<'_, LogBook> {
        super::lock(&self.logs)
    }
}
