//! Lease timing: the arithmetic that keeps at most one replica forwarding.
//!
//! # The safety argument
//!
//! The coordinator and the agent each keep their own view of the active replica's lease,
//! measured on their own monotonic clocks:
//!
//! * the **coordinator** starts the lease when it *receives* a heartbeat:
//!   `expiry = received_at + lease`, and promotes a standby only after `expiry`;
//! * the **agent** starts it when it *sent* that heartbeat, and subtracts a guard:
//!   `deadline = sent_at + lease - guard`, and stops forwarding at `deadline`.
//!
//! A heartbeat is received after it is sent, so `sent_at <= received_at` in real time,
//! and hence `deadline < expiry` whatever the network delay — provided the two clocks
//! advance at about the same rate over one lease. The `guard` absorbs what is left:
//! clock-rate drift over `lease` (ppm-scale), and the agent's own latency between the
//! deadline passing and its data plane actually being fenced (timer wake-up, a map
//! write). A lease granted for a heartbeat that took longer than `lease - guard` to be
//! answered is already expired when it arrives, and the agent treats it so.
//!
//! The grant's epoch must match the agent's current role's epoch; grants of another epoch
//! are ignored, so a delayed grant can never revive a deposed active.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::messages::Timings;

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT_MS: u32 = 50;
/// Default lease length: five heartbeats, so four consecutive losses are survived and a
/// dead active is replaced within ~`lease` + one tick.
pub const DEFAULT_LEASE_MS: u32 = 250;
/// Default guard subtracted by the agent.
pub const DEFAULT_GUARD_MS: u32 = 50;

impl Default for Timings {
    fn default() -> Self {
        Self {
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            lease_ms: DEFAULT_LEASE_MS,
            guard_ms: DEFAULT_GUARD_MS,
        }
    }
}

impl Timings {
    /// Check the relations the safety argument needs: a heartbeat fits several times in
    /// a lease, and the guard leaves a usable lease.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_ms == 0 {
            return Err("heartbeat must be > 0 ms".into());
        }
        if self.lease_ms < self.heartbeat_ms.saturating_mul(2) {
            return Err(format!(
                "lease ({} ms) must be at least two heartbeats ({} ms each)",
                self.lease_ms, self.heartbeat_ms
            ));
        }
        if self.guard_ms >= self.lease_ms - self.heartbeat_ms {
            return Err(format!(
                "guard ({} ms) must be shorter than lease minus one heartbeat ({} ms)",
                self.guard_ms,
                self.lease_ms - self.heartbeat_ms
            ));
        }
        Ok(())
    }
}

/// The coordinator's lease expiry for a heartbeat received at `received_at`.
pub fn coordinator_expiry(received_at: Instant, lease: Duration) -> Instant {
    received_at + lease
}

/// The agent's forwarding deadline for a grant answering a heartbeat sent at `sent_at`.
/// Always strictly before [`coordinator_expiry`] of the same heartbeat when `guard > 0`.
pub fn agent_deadline(sent_at: Instant, lease: Duration, guard: Duration) -> Instant {
    sent_at + lease.saturating_sub(guard)
}

/// How many sent heartbeats the tracker remembers; grants for older ones are ignored.
const SENT_WINDOW: usize = 64;

/// Agent-side lease bookkeeping: remembers when each heartbeat was sent and turns
/// [`crate::messages::CoordMsg::LeaseGrant`]s into a forwarding deadline.
#[derive(Debug, Clone)]
pub struct LeaseTracker {
    guard: Duration,
    epoch: Option<u64>,
    deadline: Option<Instant>,
    sent: VecDeque<(u64, Instant)>,
}

impl LeaseTracker {
    /// A tracker with no lease.
    pub fn new(guard: Duration) -> Self {
        Self {
            guard,
            epoch: None,
            deadline: None,
            sent: VecDeque::with_capacity(SENT_WINDOW),
        }
    }

    /// Record that heartbeat `seq` was sent at `at`.
    pub fn sent(&mut self, seq: u64, at: Instant) {
        if self.sent.len() == SENT_WINDOW {
            self.sent.pop_front();
        }
        self.sent.push_back((seq, at));
    }

    /// The agent became active in `epoch` (or `None`: it is not active). Any lease of
    /// another epoch is dropped at once.
    pub fn set_epoch(&mut self, epoch: Option<u64>) {
        if self.epoch != epoch {
            self.deadline = None;
        }
        self.epoch = epoch;
    }

    /// Start a lease from a known send time (e.g. the Hello that got an active Welcome).
    pub fn grant_from(&mut self, epoch: u64, sent_at: Instant, valid_for: Duration) {
        if self.epoch != Some(epoch) {
            return;
        }
        let d = agent_deadline(sent_at, valid_for, self.guard);
        self.deadline = Some(self.deadline.map_or(d, |old| old.max(d)));
    }

    /// Apply a grant for heartbeat `seq`. Returns whether it extended the lease.
    pub fn grant(&mut self, epoch: u64, seq: u64, valid_for: Duration) -> bool {
        let Some(&(_, sent_at)) = self.sent.iter().find(|(s, _)| *s == seq) else {
            return false;
        };
        let before = self.deadline;
        self.grant_from(epoch, sent_at, valid_for);
        self.deadline != before
    }

    /// Whether the agent may forward at `now`.
    pub fn is_valid(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now < d)
    }

    /// When forwarding must stop, if there is a lease.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_deadline_precedes_coordinator_expiry() {
        let t0 = Instant::now();
        let lease = Duration::from_millis(250);
        let guard = Duration::from_millis(50);
        for delay_ms in [0u64, 1, 10, 100, 300] {
            let received = t0 + Duration::from_millis(delay_ms);
            assert!(agent_deadline(t0, lease, guard) < coordinator_expiry(received, lease));
        }
    }

    #[test]
    fn tracker_grants_by_send_time_and_epoch() {
        let t0 = Instant::now();
        let mut t = LeaseTracker::new(Duration::from_millis(50));
        t.sent(1, t0);
        assert!(!t.grant(3, 1, Duration::from_millis(250)), "not active yet");
        t.set_epoch(Some(3));
        assert!(!t.grant(2, 1, Duration::from_millis(250)), "stale epoch");
        assert!(t.grant(3, 1, Duration::from_millis(250)));
        assert!(t.is_valid(t0 + Duration::from_millis(199)));
        assert!(!t.is_valid(t0 + Duration::from_millis(200)));
        assert!(!t.grant(3, 99, Duration::from_millis(250)), "unknown seq");
        t.set_epoch(None);
        assert!(!t.is_valid(t0));
    }

    #[test]
    fn timings_validation() {
        assert!(Timings::default().validate().is_ok());
        assert!(
            Timings {
                heartbeat_ms: 100,
                lease_ms: 150,
                guard_ms: 10
            }
            .validate()
            .is_err()
        );
        assert!(
            Timings {
                heartbeat_ms: 50,
                lease_ms: 250,
                guard_ms: 200
            }
            .validate()
            .is_err()
        );
        assert!(
            Timings {
                heartbeat_ms: 0,
                lease_ms: 250,
                guard_ms: 10
            }
            .validate()
            .is_err()
        );
    }
}
