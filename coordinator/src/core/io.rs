//! What goes into the [`super::Core`] and what comes out.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use meshgate_proto::{CoordMsg, Id, Kind, LanInfo, RefuseCode, RouteTable, Timings};

use crate::election::quorum::{ClusterEvent, ClusterOp};
use crate::election::{self, Permit};

/// A connection of a registered participant (the driver picks unique ids).
pub type SessionId = election::ConnId;

/// How the core behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Heartbeat and lease timings sent to agents.
    pub timings: Timings,
    /// How long a replica that asked for handover overlaps its successor.
    pub overlap: Duration,
    /// The mesh range.
    pub mesh: Ipv4Net,
    /// The longest lease an earlier run may have granted: no promotion before this long
    /// after start (see the module docs).
    pub restart_hold: Duration,
    /// `Some(name)`: a member of a coordinator cluster on a shared store, electing with
    /// the others ([`crate::election::quorum`]); `None`: a lone coordinator.
    pub member: Option<String>,
}

impl Config {
    pub(super) fn lease(&self) -> Duration {
        Duration::from_millis(self.timings.lease_ms.into())
    }
}

/// Who a Hello's token belongs to, as the driver found it in the store.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The new session.
    pub session: SessionId,
    /// Node or device.
    pub kind: Kind,
    /// Node or device id.
    pub id: Id,
    /// Its name.
    pub name: String,
    /// Whether more than one replica may connect.
    pub ha: bool,
    /// Replica id (devices: as presented).
    pub replica_id: String,
    /// Its Mesh IP.
    pub mesh_ip: Ipv4Addr,
    /// LAN identity of a node replica.
    pub lan: Option<LanInfo>,
    /// Remote address.
    pub origin: SocketAddr,
    /// When it connected (wall clock, for the API).
    pub opened_at: SystemTime,
    /// The node's epoch in the store.
    pub stored_epoch: u64,
    /// The highest epoch the agent has seen (from its Hello).
    pub seen_epoch: u64,
}

/// Something that happened.
#[derive(Debug, Clone)]
pub enum Input {
    /// A participant authenticated.
    Register(Box<Registration>),
    /// A session's connection ended.
    Closed(SessionId),
    /// A heartbeat arrived.
    Heartbeat {
        /// From.
        session: SessionId,
        /// Its sequence number.
        seq: u64,
    },
    /// A replica asked to hand its role over.
    HandoverRequested {
        /// From.
        session: SessionId,
        /// Why, as the agent says (shown in `connections`).
        reason: meshgate_proto::HandoverReason,
    },
    /// Time passed.
    Tick,
    /// These epochs are on disk now.
    EpochsDurable(Vec<(Id, u64)>),
    /// Persisting these epochs failed; they will be asked for again.
    EpochsFailed(Vec<(Id, u64)>),
    /// The route table changed.
    Routes(Arc<RouteTable>),
    /// A node or device was deleted.
    Deleted(Id),
    /// What this coordinator may grant from now on (lone coordinator).
    Permit(Permit),
    /// What the shared store said (cluster member).
    Cluster(ClusterEvent),
}

/// An election event worth keeping (event log, metrics, logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    /// The node.
    pub node: Id,
    /// `registered`, `disconnected`, `lease_expired`, `handover_requested`, `promoted`.
    pub event: &'static str,
    /// The replica it concerns.
    pub replica: String,
    /// The node's epoch.
    pub epoch: u64,
    /// For a promotion after a failure: time from the old lease's expiry.
    pub after_expiry: Option<Duration>,
}

/// What the driver must do, in order.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send a control message on a session.
    Send {
        /// To.
        session: SessionId,
        /// What.
        msg: CoordMsg,
    },
    /// Refuse or end a session: send `Refused`, then close.
    Close {
        /// Which.
        session: SessionId,
        /// Why (code).
        code: RefuseCode,
        /// Why (text).
        reason: String,
    },
    /// Write these epochs to the store (each as a maximum), then feed back
    /// [`Input::EpochsDurable`].
    PersistEpochs(Vec<(Id, u64)>),
    /// Roles or sessions changed: rebuild the relay table from [`Core::relay_view`].
    Relay,
    /// Send this route table to every session.
    Routes(Arc<RouteTable>),
    /// Record an election event.
    Event(NodeEvent),
    /// Run this transaction on the shared store, then feed back
    /// [`ClusterEvent::Done`] (cluster member).
    Store(ClusterOp),
}
