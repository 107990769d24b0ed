//! What an [`super::Election`] takes and gives.

use std::time::{Duration, Instant};

use meshgate_proto::{LanInfo, Role};

/// Identifies one connection of one replica (a reconnect is a new `ConnId`).
pub type ConnId = u64;

/// Something that happened to the node's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A replica registered on connection `conn`.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Its LAN identity, for standbys to hairpin to.
        lan: Option<LanInfo>,
    },
    /// A heartbeat arrived.
    Heartbeat {
        /// From.
        conn: ConnId,
        /// Its sequence number, echoed in the grant.
        seq: u64,
    },
    /// The connection ended.
    Disconnected {
        /// Which.
        conn: ConnId,
    },
    /// The replica asked to hand its active role over (drain or link down).
    HandoverRequested {
        /// Which.
        conn: ConnId,
    },
    /// Time passed.
    Tick,
}

/// A control message the driver must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Lease renewed until `valid_for` after the heartbeat's receipt.
    LeaseGrant {
        /// Epoch.
        epoch: u64,
        /// Lease length.
        valid_for: Duration,
        /// Echoed heartbeat.
        seq: u64,
    },
    /// The receiver's role changed, or the node's active did.
    RoleChange {
        /// Receiver's role.
        role: Role,
        /// Node epoch.
        epoch: u64,
        /// Active's LAN identity.
        active: Option<LanInfo>,
    },
    /// The receiver's handover request completed.
    HandoverDone {
        /// New epoch.
        epoch: u64,
    },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Persist the epoch before any message carrying it leaves.
    PersistEpoch(u64),
    /// Send a control message.
    Send {
        /// To.
        conn: ConnId,
        /// What.
        msg: Out,
    },
    /// A replica became active (metrics, logs). `after_expiry` is the time from the old
    /// lease's expiry to this promotion, when there was an old lease (`None` for a
    /// requested handover, which promotes while the old lease is still valid).
    Promoted {
        /// Who.
        conn: ConnId,
        /// New epoch.
        epoch: u64,
        /// Lease expiry → promotion.
        after_expiry: Option<Duration>,
    },
    /// The active's lease expired.
    LeaseExpired {
        /// Whose.
        conn: ConnId,
        /// Epoch.
        epoch: u64,
    },
    /// A cluster member's store transaction (see [`super::quorum`]).
    Store(super::quorum::ClusterOp),
}

/// Election timings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Lease length (from heartbeat receipt); also the window in which a standby's last
    /// heartbeat must fall to count as healthy.
    pub lease: Duration,
    /// How long a replica that asked for handover keeps forwarding after its successor's
    /// promotion, before it is fenced.
    pub overlap: Duration,
}

/// What the driver allows this coordinator to do for a node now: the seam through which
/// a cluster decides who may promote (one elected decider) and who may renew (any
/// member still in touch with the shared store). A lone coordinator always holds a
/// full permit, except for the hold after a restart (see [`crate::core`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// Whether promotions are allowed at all.
    pub promote: bool,
    /// No promotion before this instant.
    pub not_before: Option<Instant>,
    /// Grants must end by this instant (a grant is shortened, or not made); `None`: no
    /// limit.
    pub renew_until: Option<Instant>,
}

impl Default for Permit {
    fn default() -> Self {
        Self {
            promote: true,
            not_before: None,
            renew_until: None,
        }
    }
}

impl Permit {
    /// Whether a promotion may happen at `now`.
    pub fn may_promote(&self, now: Instant) -> bool {
        self.promote && self.not_before.is_none_or(|t| now >= t)
    }

    /// How long a lease granted at `now` may last, at most `lease`; `None` if none may.
    pub fn grant_len(&self, now: Instant, lease: Duration) -> Option<Duration> {
        let len = match self.renew_until {
            Some(until) => lease.min(until.saturating_duration_since(now)),
            None => lease,
        };
        (!len.is_zero()).then_some(len)
    }
}
