//! Control messages: what travels, framed (see [`crate::frame`]), on the one
//! bidirectional QUIC stream the agent opens right after the handshake.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::id::Id;
use crate::logs::LogBatch;
use crate::routes::RoutesPart;
use crate::token::Kind;

/// Version of the control protocol carried in [`Hello::protocol_version`]. The frame
/// version byte guards the encoding; this number guards the message semantics.
pub const PROTOCOL_VERSION: u16 = 2;

/// A node replica's LAN identity, used by standbys to hairpin packets to the active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanInfo {
    /// The replica's own (not the VIP) IPv4 address on its LAN interface.
    pub ip: Ipv4Addr,
    /// The LAN interface's MAC address.
    pub mac: [u8; 6],
}

/// Agent → coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// First message on a connection: authenticate and register.
    Hello(Hello),
    /// Lease renewal; sent every `heartbeat_ms`. `seq` increases by one per heartbeat
    /// and is echoed in [`CoordMsg::LeaseGrant`] so the agent knows when it was sent.
    Heartbeat {
        /// Sequence number, echoed back.
        seq: u64,
    },
    /// Ask the coordinator to move the active role elsewhere before this replica stops.
    RequestHandover {
        /// Why.
        reason: HandoverReason,
    },
    /// The agent is leaving on purpose; the coordinator may close the connection.
    Goodbye,
    /// Packet counters of the network-policy filter this agent enforces, cumulative
    /// since the agent started; sent every few seconds while a filter is installed.
    FilterCounters(FilterCounters),
    /// The agent's own recent warnings, errors and role flips, oldest first; at most one
    /// batch per [`crate::logs::BATCH_EVERY_MS`], each bounded (see [`crate::logs`]).
    /// A coordinator built before this message existed takes it for a malformed frame
    /// and closes the connection (as with `FilterCounters`): upgrade coordinators first.
    Logs(LogBatch),
}

/// Registration: the first message an agent sends. Its `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u16,
    /// The full token string (the coordinator checks its secret's hash).
    pub token: String,
    /// Persistent replica id from the agent's state dir (see [`crate::id::new_replica_id`]).
    pub replica_id: String,
    /// LAN address and MAC; `Some` for a node replica with a LAN interface.
    pub lan: Option<LanInfo>,
    /// Free-form agent build string, for logs and the API.
    pub agent_version: String,
    /// The highest node epoch this agent has seen; the coordinator's next promotion
    /// moves past it, so epochs never go back even if the coordinator lost a write.
    pub seen_epoch: u64,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("protocol_version", &self.protocol_version)
            .field("token", &"<redacted>")
            .field("replica_id", &self.replica_id)
            .field("lan", &self.lan)
            .field("agent_version", &self.agent_version)
            .field("seen_epoch", &self.seen_epoch)
            .finish()
    }
}

/// Why a replica asks for handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoverReason {
    /// Orderly shutdown or maintenance.
    Drain,
    /// The LAN link went down: this replica can no longer serve the subnet.
    LinkDown,
    /// Its health targets (`--health-target`) stopped answering: it still has its LAN
    /// link but cannot reach what the subnet is for. Sent only by agents of this
    /// version or later; an older coordinator takes it for a malformed frame.
    Unhealthy,
}

/// A replica's role in its node's HA group; the same type the XDP program enforces.
pub use meshgate_common::Role;

/// Heartbeat and lease timings, chosen by the coordinator and sent in [`Welcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// How often the agent sends [`AgentMsg::Heartbeat`].
    pub heartbeat_ms: u32,
    /// How long a lease lasts from the coordinator's receipt of a heartbeat.
    pub lease_ms: u32,
    /// Safety margin the agent subtracts from its own deadline (see [`crate::lease`]).
    pub guard_ms: u32,
}

/// One entry of the route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// Destination network.
    pub network: Ipv4Net,
    /// The node that advertises it; `None` for the mesh range itself.
    pub node: Option<Id>,
}

/// The full route table: the mesh range plus every node's routes. Sent whole on every
/// change, as [`RoutesPart`]s of bounded size (see [`crate::routes`]); a full table makes
/// a lost update harmless. An agent ignores a table whose `version` is not newer than the
/// one it has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// Monotonic version; higher is newer.
    pub version: u64,
    /// The routes, mesh range first.
    pub entries: Vec<RouteEntry>,
}

/// Coordinator → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordMsg {
    /// Registration accepted.
    Welcome(Box<Welcome>),
    /// Lease renewed: valid for `valid_for_ms` from when heartbeat `seq` was *sent*
    /// (agent side, minus the guard) — see [`crate::lease`].
    LeaseGrant {
        /// Epoch of the lease; must equal the agent's current epoch.
        epoch: u64,
        /// Lease length.
        valid_for_ms: u32,
        /// The heartbeat being answered.
        seq: u64,
    },
    /// This replica's role changed (promotion, demotion, fencing, or a new active
    /// elsewhere whose LAN identity standbys need for hairpinning).
    RoleChange {
        /// The new role of the receiving replica.
        role: Role,
        /// The node's current epoch.
        epoch: u64,
        /// The active replica's LAN identity, if there is an active with one.
        active: Option<LanInfo>,
    },
    /// One part of the route table; the whole table follows every Welcome and every
    /// change (see [`crate::routes`]).
    Routes(RoutesPart),
    /// The coordinator refuses or ends the session; the connection closes after this.
    Refused {
        /// Machine-readable reason ([`RefuseCode`] constants).
        code: RefuseCode,
        /// Human-readable reason.
        reason: String,
    },
    /// A handover requested by this replica finished: another replica is active now.
    HandoverDone {
        /// The new epoch.
        epoch: u64,
    },
    /// One chunk of the network-policy filter this agent enforces on packets arriving
    /// from the tunnel (see [`Filter`]).
    Filter(Box<Filter>),
    /// The coordinators of the cluster and which one this is: sent after the route table
    /// that follows the Welcome, and again whenever the membership changes. Agents keep a
    /// connection to every member (up to their limit), so they learn joins and leaves
    /// here rather than from a new token.
    Members(Members),
}

/// The coordinator cluster as one member describes it (see [`CoordMsg::Members`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// The sending coordinator's `--name` (the `colo_name` of this connection).
    pub you_reached: String,
    /// Every live member, the sender included, in name order.
    pub members: Vec<Member>,
    /// The sender has lost the cluster's store (etcd has not answered it for
    /// [`CUT_OFF_AFTER_MS`]): it grants no lease, its view of the actives may be stale,
    /// and its member list is only itself. Agents send through another member while one
    /// answers, and keep the member list they had.
    #[serde(default)]
    pub cut_off: bool,
}

/// How long a member may go without an answer from the cluster's store before it says it
/// is cut off ([`Members::cut_off`]): longer than a store leader election usually takes
/// (1–2 s), well inside the member's TTL (5 s), after which another member may promote.
pub const CUT_OFF_AFTER_MS: u64 = 2000;

/// One coordinator of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its `--name`.
    pub name: String,
    /// The `HOST:PORT`s agents dial, in order of preference.
    pub public_addrs: Vec<String>,
}

/// The network-policy filter of one participant: the rules in which it (or a subnet it
/// advertises) is a destination, with every source and destination resolved to
/// networks, in precedence order (first match decides). Sent whole, in as many chunks as
/// [`crate::frame::MAX_FRAME`] requires; the agent applies it once it holds every chunk
/// of one `digest`, and ignores a digest it already enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Content hash of the whole filter (all chunks); names the set of chunks.
    pub digest: u64,
    /// This chunk's index, from 0.
    pub chunk: u16,
    /// How many chunks the filter has (at least 1).
    pub chunks: u16,
    /// Whether a packet that no rule matches is let through. A filter with no rules
    /// that allows by default enforces nothing (the agent removes its table).
    pub default_allow: bool,
    /// This chunk's rules; their order across chunks is the order of evaluation.
    pub rules: Vec<FilterRule>,
}

/// One compiled policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRule {
    /// The policy this rule comes from (counters are reported by it).
    pub policy: Id,
    /// Allow (and let replies through) or block.
    pub allow: bool,
    /// Source networks; `0.0.0.0/0` for any.
    pub sources: Vec<Ipv4Net>,
    /// Destination networks, already narrowed to the receiving participant's own.
    pub destinations: Vec<Ipv4Net>,
    /// IP protocol numbers; empty: any.
    pub protocols: Vec<u8>,
    /// Inclusive destination port ranges (TCP and UDP only); empty: any.
    pub ports: Vec<(u16, u16)>,
}

/// Cumulative packet counts of an agent's filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterCounters {
    /// Packets that matched each policy's rule (allowed flow checks or drops).
    pub policies: Vec<(Id, u64)>,
    /// Packets dropped because no rule matched and the default is block.
    pub default_drops: u64,
    /// Packets let through because no rule matched and the default is allow.
    pub default_allows: u64,
}

/// Registration result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Node or device.
    pub kind: Kind,
    /// The node's or device's id.
    pub id: Id,
    /// The node's or device's name.
    pub name: String,
    /// Echo of the registered replica id.
    pub replica_id: String,
    /// This participant's Mesh IP.
    pub mesh_ip: Ipv4Addr,
    /// The whole mesh range.
    pub mesh_cidr: Ipv4Net,
    /// Initial role.
    pub role: Role,
    /// The node's current epoch (0 for devices).
    pub epoch: u64,
    /// Timings to use.
    pub timings: Timings,
    /// The active replica's LAN identity, if any.
    pub active: Option<LanInfo>,
    /// Version of the route table, whose parts follow the Welcome at once.
    pub routes_version: u64,
}

/// Machine-readable refusal code. A newtype over `u16` rather than an enum, so a newer
/// coordinator's unknown code still decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RefuseCode(pub u16);

impl RefuseCode {
    /// The token string is not a token.
    pub const MALFORMED_TOKEN: Self = Self(1);
    /// No node or device with that id, or the secret does not match.
    pub const UNKNOWN_TOKEN: Self = Self(2);
    /// The node or device was deleted.
    pub const REVOKED_TOKEN: Self = Self(3);
    /// Too many failed attempts from this address; retry later.
    pub const RATE_LIMITED: Self = Self(4);
    /// Protocol version not supported.
    pub const VERSION_MISMATCH: Self = Self(5);
    /// The replica id is not acceptable.
    pub const BAD_REPLICA_ID: Self = Self(6);
    /// Another connection registered the same replica id; this one is closed.
    pub const REPLACED: Self = Self(7);
    /// A message made no sense at this point (e.g. Heartbeat before Hello).
    pub const PROTOCOL_VIOLATION: Self = Self(8);
    /// Coordinator-side failure (store, IPAM exhausted).
    pub const INTERNAL: Self = Self(9);
    /// The node or device was deleted while connected.
    pub const DELETED: Self = Self(10);
    /// A second replica tried to join a node created without `ha`.
    pub const NOT_HA: Self = Self(11);
    /// The node has as many replicas (replica ids) as it may have.
    pub const TOO_MANY_REPLICAS: Self = Self(12);
    /// The connection broke the protocol's limits (a heartbeat flood).
    pub const ABUSE: Self = Self(13);
}
