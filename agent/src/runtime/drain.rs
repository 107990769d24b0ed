//! When a draining agent may leave. Once the coordinator has handed the active role over,
//! the old active is a standby that bounces (XDP hairpin) to the successor whatever LAN
//! hosts still send to its MAC: hosts whose ARP entry for the VIP has not yet taken in
//! the successor's gratuitous ARP (a lost frame, a slow host). Leaving at once would
//! detach XDP and drop those packets; so the agent stays until it has bounced nothing
//! for [`QUIET`], bounded by `--drain-timeout-ms`.

use std::time::{Duration, Instant};

use crate::failover::Forwarding;

/// How long nothing may have been bounced before a drained agent leaves.
pub const QUIET: Duration = Duration::from_millis(200);
/// How often the bounce counter is read meanwhile.
pub const POLL: Duration = Duration::from_millis(50);

/// Tracks the bounce counter of a drained agent. See the module docs.
#[derive(Debug, Default)]
pub struct DrainExit {
    /// The counter when it last changed, and when that was seen.
    seen: Option<(u64, Instant)>,
}

impl DrainExit {
    /// Whether the agent still has traffic to pass on, so it should wait (and poll).
    pub fn bouncing(forwarding: Forwarding) -> bool {
        matches!(
            forwarding,
            Forwarding::Standby {
                active: Some(_),
                ..
            }
        )
    }

    /// Whether a draining agent whose data plane is `forwarding`, having bounced
    /// `bounced` packets so far, may leave at `now`.
    pub fn may_leave(&mut self, forwarding: Forwarding, bounced: u64, now: Instant) -> bool {
        match forwarding {
            Forwarding::Active { .. } => false,
            f if !Self::bouncing(f) => true,
            _ => match self.seen {
                Some((last, since)) if last == bounced => now >= since + QUIET,
                _ => {
                    self.seen = Some((bounced, now));
                    false
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use meshgate_proto::LanInfo;

    use super::*;

    const STANDBY: Forwarding = Forwarding::Standby {
        epoch: 2,
        active: Some(LanInfo {
            ip: Ipv4Addr::new(192, 168, 50, 12),
            mac: [2, 0, 0, 0, 0, 12],
        }),
    };

    #[test]
    fn it_leaves_once_nothing_was_bounced_for_a_while() {
        let mut exit = DrainExit::default();
        let t = Instant::now();
        assert!(!exit.may_leave(Forwarding::Active { epoch: 1 }, 0, t));
        assert!(!exit.may_leave(STANDBY, 10, t));
        assert!(!exit.may_leave(STANDBY, 25, t + QUIET), "still bouncing");
        assert!(!exit.may_leave(STANDBY, 25, t + QUIET + POLL));
        assert!(exit.may_leave(STANDBY, 25, t + QUIET * 2));
    }

    #[test]
    fn with_nothing_to_bounce_to_it_leaves_at_once() {
        let mut exit = DrainExit::default();
        let t = Instant::now();
        assert!(exit.may_leave(Forwarding::Fenced { epoch: 2 }, 0, t));
        let nobody = Forwarding::Standby {
            epoch: 2,
            active: None,
        };
        assert!(exit.may_leave(nobody, 0, t));
    }
}
