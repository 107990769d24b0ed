//! A deterministic simulation of meshgate's control plane, in the manner of FoundationDB's
//! simulator and TigerBeetle's VOPR: the coordinator's real [`Core`] (with its real
//! elections) and the agents' real failover cores (`meshgate_agent::failover`, with the
//! real lease tracker of `meshgate_proto::lease`) exchange the real control messages
//! over a simulated network, on a virtual clock, with every random choice drawn from one
//! seeded RNG. So a seed is a complete, replayable history.
//!
//! Each run: one HA node with two or three replicas; a chaotic phase in which the
//! network drops, delays, duplicates and reorders messages, replicas are frozen
//! (SIGSTOP), partitioned, killed, drained and restarted, and the coordinator is
//! restarted (losing its memory and any epoch write still in flight); then the faults
//! heal, and finally the active replica is killed on a clean network.
//!
//! Cluster runs put two or three coordinators, each the real core as a member
//! (`meshgate_coordinator::election::quorum`), on a modelled etcd ([`etcd`]: linearizable
//! transactions with a delay, leader changes that stall it, member keys that expire),
//! with agents connected to every coordinator that accept grants from any of them. Their
//! faults add coordinator crashes and restarts, a coordinator cut off from etcd or from
//! the agents, etcd stalls and a slow etcd; after healing, one coordinator dies for good
//! while the active is healthy, and only then is the active killed.
//!
//! Checked after every step ([`check`]):
//! * at most one replica forwards, except a replica that asked for handover overlapping
//!   its successor (older epoch);
//! * epochs never go back: each promotion's epoch exceeds every epoch any coordinator run
//!   ever sent;
//! * once everything has healed and every replica is registered, the node has a
//!   forwarding replica within the restart hold, a lease, a heartbeat and a tick;
//! * after the active's death on a clean network, a successor forwards within a lease and
//!   a tick (plus the network's and the store's latency);
//! * (cluster) while only a coordinator dies, the healthy active keeps forwarding in the
//!   same epoch and nobody is promoted.
//!
//! [`Core`]: meshgate_coordinator::core::Core

mod agent;
pub mod check;
mod coord;
mod etcd;
mod faults;
mod world;

use std::time::Duration;

use meshgate_coordinator::election::quorum::QuorumTimings;

/// Member-key timings of cluster runs: the production ones scaled down five-fold (as
/// are the etcd stalls, 100–400 ms here against 1–2 s), so a run that lets a member key
/// expire stays short.
pub const CLUSTER_TIMINGS: QuorumTimings = QuorumTimings {
    member_ttl: Duration::from_secs(1),
    keepalive: Duration::from_millis(100),
    guard: Duration::from_millis(100),
};

pub use check::Violation;
pub use world::World;

/// Timings and switches of one run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Lease length.
    pub lease: Duration,
    /// Agent guard.
    pub guard: Duration,
    /// Coordinator tick.
    pub tick: Duration,
    /// Whether a restarted coordinator holds promotions for the longest lease (the fix
    /// under test); `false` reproduces the coordinator without the hold.
    pub restart_hold: bool,
    /// A cluster run: two or three coordinators on a modelled etcd, agents connected to
    /// all of them.
    pub cluster: bool,
    /// (Cluster) members fence themselves later than etcd expires their key: the broken
    /// configuration the self-fencing rule exists to prevent.
    pub fence_late: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(50),
            lease: Duration::from_millis(250),
            guard: Duration::from_millis(50),
            tick: Duration::from_millis(10),
            restart_hold: true,
            cluster: false,
            fence_late: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Events processed.
    pub steps: u64,
    /// Promotions seen.
    pub promotions: u64,
    /// Coordinator restarts.
    pub restarts: u64,
    /// Outage after the clean kill of the active, if it was measured.
    pub outage: Option<Duration>,
}

/// Runs one seed. On a violation, the error holds the invariant broken and the trace
/// (when `trace` is set, every step; else the run is repeated with tracing to get it).
pub fn run(seed: u64, params: Params) -> Result<Outcome, Box<Violation>> {
    match World::new(seed, params, false).run() {
        Ok(o) => Ok(o),
        Err(_) => {
            let err = World::new(seed, params, true)
                .run()
                .expect_err("a seed replays exactly, so the traced run fails too");
            Err(err)
        }
    }
}
