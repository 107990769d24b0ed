//! Elections across a cluster of coordinators on one shared store (etcd), with no I/O:
//! what a member may grant, when it must say it stopped, and when the decider may
//! promote. [`Quorum`] is the member's own state (registration, keep-alives, the
//! decider role, who else is live); [`super::shared::Shared`] is one node's election on
//! this member. Store transactions leave as [`ClusterOp`]s; what the store said (their
//! results, and its watch) comes back as [`ClusterEvent`]s.
//!
//! # The rules
//!
//! The store records, per node, the current epoch and its active replica
//! (`elected/<node>` = `"<epoch> <replica>"`), changed only by compare-and-swap.
//!
//! 1. **Grants from any member.** Every member renews the lease of the recorded active
//!    of the recorded epoch whenever it hears that replica's heartbeat, as the lone
//!    coordinator does (`meshgate_proto::lease`: the member's expiry is `received_at +
//!    lease`, the agent's deadline `sent_at + lease - guard` comes first). An agent
//!    forwards while any grant of its epoch is unexpired (its deadline is the maximum).
//! 2. **Lapse marks.** When a member's own expiry for the active passes (or the active
//!    asked to hand over), it stops granting that (node, epoch) and then writes a mark
//!    `lapse/<node>/<epoch>/<member>` whose value is its current registration (lease
//!    id), guarded by "the node's record is still (epoch, active)". A member with a mark
//!    grants nothing in that epoch. If it hears the active again before a promotion it
//!    may retract: "if the record is still (epoch, active), delete my mark"; it grants
//!    again only once that transaction committed.
//! 3. **Promotion only by the decider, only with every live member's mark.** The member
//!    elected by etcd's election promotes node N from epoch e to e + 1 in one
//!    transaction: the record is still (e, active) AND the `joined` key (bumped by every
//!    registration) is unchanged since the decider read the member list AND every member
//!    key in that list has a mark for (N, e) carrying that member's current lease → put
//!    (e + 1, winner) and delete the marks of e. A member whose key expired counts as
//!    lapsed. Epoch 0 has no active and nobody grants in it, so the first promotion
//!    needs no marks.
//! 4. **Self-fencing.** A member grants only while `last acknowledged keep-alive's send
//!    time + member TTL - guard` lies ahead on its own clock, and every grant is cut to
//!    end by then; it also grants nothing before its watch has caught up with its own
//!    registration's revision.
//! 5. **Restarts.** A member writes marks only after its restart hold (the longest lease
//!    any run may have granted has passed since it started). A new run registers under
//!    a new lease (its marks carry it, so marks of an earlier run never count for it) and
//!    then revokes the previous run's lease.
//!
//! # Safety argument
//!
//! **At most one forwarder.** Suppose replica B is promoted to e + 1 while A, active in
//! e, still forwards. A forwards only under a grant of epoch e from some member M (agents
//! ignore grants of other epochs, `meshgate_proto::lease`), and the grant's agent
//! deadline precedes M's expiry for it. The promotion's transaction committed at some
//! instant P; consider M at P:
//! * M's key was live in the decider's list (the `joined` guard makes that list a
//!   superset of the members registered at P whose registration is older than the
//!   list; a registration after the list was read fails the transaction). The mark of
//!   (N, e) with M's current lease existed at P, so M wrote it after its own expiry of
//!   its last grant, had stopped granting before, and had not retracted (a retraction
//!   deletes the mark, and M grants again only after it committed, which would then
//!   precede P and make the compare fail). An earlier run of M cannot have written a mark
//!   with M's current lease. A grant M made in an earlier run ended before that run's
//!   crash + lease, and M's current run marks nothing before start + restart hold, which
//!   is later. So every grant of M in e expired, on M's clock and hence on A's, before P.
//! * M's key was not in the list, or expired: M's grants all end (coordinator side) by
//!   `keep-alive sent + TTL - guard`, before etcd can expire the key (`received + TTL`),
//!   which happened before the decider saw it gone, before P. A member registering after
//!   the list was read changes `joined` and voids the transaction; one registered
//!   earlier is in the list.
//!
//! So at P no grant of e is valid, and A's deadline (the maximum over its grants) has
//! passed. Grants of e made after P are impossible: granting needs no mark, and a member
//! without a mark at P was not live at P; a member that re-registers after P catches up
//! with its registration's revision, which follows P, so it knows e + 1 before it grants.
//!
//! **Epochs never go back.** The record changes only by compare-and-swap from e to
//! `max(e, highest epoch any agent reported) + 1`, and members send only epochs they
//! read from the store (which etcd keeps durably), so every epoch an agent hears is
//! durable and a new one exceeds it.
//!
//! **No needless failover.** A promotion needs every live member's mark. An active that
//! keeps reaching any live member M keeps M's expiry ahead, so M never marks (or it
//! retracts), and nobody is promoted — whichever other coordinators die, are cut off or
//! restart. A dead member's key expires after the TTL and then it no longer counts; it
//! never blocked the active.
//!
//! **Cut off from etcd and from agents.** It stops granting at its fence, before its key
//! can expire; the others keep granting the active if it reaches them; if it reaches
//! nobody, every live member marks and the decider promotes once the cut-off member's key
//! expired (at most the member TTL after the cut). Cut off from etcd only: it keeps
//! granting until its fence, harmlessly (nobody can promote without it before its key
//! expires). Cut off from agents only: it marks; nothing happens while others hear the
//! active.
//!
//! **etcd leader change.** etcd stalls (writes and keep-alives wait) for ~1–2 s and then
//! restarts every lease's TTL, which only postpones expiries. With the member TTL of
//! [`MEMBER_TTL`] and keep-alives every [`KEEPALIVE_EVERY`], a stall shorter than
//! `TTL - guard - keep-alive interval` fences nobody, so the data plane does not notice
//! it; promotions wait for the stall to end.
//!
//! **Liveness.** After an active's death every live member's expiry passes within a
//! lease, marks are written in one store round trip, the decider sees them through its
//! watch and promotes in one more: outage ≈ lease + two round trips + the watch. If a
//! member dies at the same time, its key has to expire first (≤ the member TTL).
//!
//! A lone coordinator (no `--etcd`) is this with one member whose marks are its own
//! memory: "every live member lapsed" is "my lease expired", which is what
//! [`super::Election`] checks — and only a lone coordinator can let a handing-over
//! replica overlap its successor, since it alone fences it; in a cluster a handover is a
//! lapse without the wait for missed heartbeats.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meshgate_proto::Id;

/// TTL of a member's key in etcd (whole seconds there). Long enough that an etcd leader
/// election (1–2 s, up to ~4 s seen under load) fences nobody; short enough that a dead
/// member blocks a failover of an active that dies with it for only a few seconds.
pub const MEMBER_TTL: Duration = Duration::from_secs(5);
/// How often a member renews its key.
pub const KEEPALIVE_EVERY: Duration = Duration::from_millis(500);
/// Subtracted from the member TTL on the member's own clock: clock-rate drift over the
/// TTL and the latency between deciding to grant and the grant being counted.
pub const FENCE_GUARD: Duration = Duration::from_millis(500);

/// The member-key timings (the simulation scales them down with its runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumTimings {
    /// TTL of the member key.
    pub member_ttl: Duration,
    /// Keep-alive interval.
    pub keepalive: Duration,
    /// Fence guard.
    pub guard: Duration,
}

impl Default for QuorumTimings {
    fn default() -> Self {
        Self {
            member_ttl: MEMBER_TTL,
            keepalive: KEEPALIVE_EVERY,
            guard: FENCE_GUARD,
        }
    }
}

/// A store transaction a member asks for; its result comes back as a [`ClusterEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterOp {
    /// If the node's record is (`epoch`, `active`), put this member's mark (value: its
    /// `lease`).
    Lapse {
        /// Node.
        node: Id,
        /// Epoch whose lease lapsed here.
        epoch: u64,
        /// Its recorded active.
        active: String,
        /// This member's registration.
        lease: u64,
    },
    /// If the node's record is (`epoch`, `active`), delete this member's mark.
    Retract {
        /// Node.
        node: Id,
        /// Epoch.
        epoch: u64,
        /// Its recorded active.
        active: String,
    },
    /// If the record is `from` (absent when `None`), `joined` is unchanged and every
    /// member in `members` has a mark for `from` carrying its lease: record `to`, delete
    /// the marks of `from`.
    Promote {
        /// Node.
        node: Id,
        /// The record now: (epoch, active).
        from: Option<(u64, String)>,
        /// The new record.
        to: (u64, String),
        /// Live members and their leases, as the decider saw them.
        members: Vec<(String, u64)>,
        /// The `joined` key's revision then.
        joined: u64,
    },
}

/// What a member learns from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// This member is registered under `lease` at store revision `revision`.
    Registered {
        /// Its lease.
        lease: u64,
        /// Revision of the registration.
        revision: u64,
        /// When the registration request was sent (it starts the fence like a
        /// keep-alive).
        sent_at: Instant,
    },
    /// A keep-alive sent at `sent_at` was acknowledged.
    KeptAlive {
        /// Send time.
        sent_at: Instant,
    },
    /// The registration is gone (lease expired or unknown): stop granting at once.
    Lost,
    /// The watch has delivered everything up to `revision`.
    Caught {
        /// Revision.
        revision: u64,
    },
    /// Whether this member decides now.
    Decider(bool),
    /// The live members (name → lease) and the `joined` key's revision.
    Members {
        /// Live members.
        live: BTreeMap<String, u64>,
        /// `joined`'s revision.
        joined: u64,
    },
    /// A node's record.
    Elected {
        /// Node.
        node: Id,
        /// Epoch.
        epoch: u64,
        /// Active replica.
        active: String,
    },
    /// A mark appeared (`lease` set) or went away.
    Mark {
        /// Node.
        node: Id,
        /// Epoch.
        epoch: u64,
        /// Member.
        member: String,
        /// Its value, or `None`: deleted.
        lease: Option<u64>,
    },
    /// The result of a [`ClusterOp`]: `Some(true)` committed, `Some(false)` a compare
    /// failed, `None` unknown (error, timeout: it may have committed).
    Done {
        /// The op.
        op: ClusterOp,
        /// Its result.
        ok: Option<bool>,
    },
}

/// This member's standing in the cluster, as far as it can prove it.
#[derive(Debug, Clone)]
pub struct Quorum {
    /// `--name`.
    pub me: String,
    /// Member-key timings.
    pub timings: QuorumTimings,
    lease: Option<u64>,
    registered_rev: u64,
    caught: u64,
    fence: Option<Instant>,
    /// No marks before this (restart hold).
    pub hold_until: Instant,
    /// Whether etcd's election names this member.
    pub decider: bool,
    /// Live members and their leases.
    pub live: BTreeMap<String, u64>,
    /// `joined`'s revision.
    pub joined: u64,
}

impl Quorum {
    /// A member started at `now` that must not mark before `now + hold`.
    pub fn new(me: String, now: Instant, hold: Duration) -> Self {
        Self {
            me,
            timings: QuorumTimings::default(),
            lease: None,
            registered_rev: 0,
            caught: 0,
            fence: None,
            hold_until: now + hold,
            decider: false,
            live: BTreeMap::new(),
            joined: 0,
        }
    }

    /// Applies a member-level event; returns `false` if it concerns a node instead.
    pub fn apply(&mut self, ev: &ClusterEvent) -> bool {
        match *ev {
            ClusterEvent::Registered {
                lease,
                revision,
                sent_at,
            } => {
                self.lease = Some(lease);
                self.registered_rev = revision;
                self.fence = Some(self.fence_from(sent_at));
            }
            ClusterEvent::KeptAlive { sent_at } => {
                if self.lease.is_some() {
                    let f = self.fence_from(sent_at);
                    self.fence = Some(self.fence.map_or(f, |old| old.max(f)));
                }
            }
            ClusterEvent::Lost => {
                self.lease = None;
                self.fence = None;
                self.decider = false;
            }
            ClusterEvent::Caught { revision } => self.caught = self.caught.max(revision),
            ClusterEvent::Decider(d) => self.decider = d && self.lease.is_some(),
            ClusterEvent::Members { ref live, joined } => {
                self.live = live.clone();
                self.joined = joined;
            }
            _ => return false,
        }
        true
    }

    fn fence_from(&self, sent_at: Instant) -> Instant {
        sent_at + self.timings.member_ttl.saturating_sub(self.timings.guard)
    }

    /// This member's registration (its marks carry it).
    pub fn lease(&self) -> Option<u64> {
        self.lease
    }

    /// Until when grants made now may last; `None`: no grant at all (not registered,
    /// fenced, or the watch has not caught up with the registration).
    pub fn grant_until(&self, now: Instant) -> Option<Instant> {
        self.lease?;
        if self.caught < self.registered_rev {
            return None;
        }
        self.fence.filter(|f| now < *f)
    }

    /// Whether marks may be written now (registered, caught up, past the restart hold).
    pub fn may_mark(&self, now: Instant) -> bool {
        self.lease.is_some() && self.caught >= self.registered_rev && now >= self.hold_until
    }

    /// Whether this member may propose promotions now.
    pub fn may_promote(&self, now: Instant) -> bool {
        self.decider && self.grant_until(now).is_some()
    }
}
