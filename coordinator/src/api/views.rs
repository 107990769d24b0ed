//! The API's views of live state (connected replicas, election events, the console's
//! map), as typed bodies the OpenAPI document is derived from. They are the API's
//! contract; the coordinator's internals convert into them here, in one place.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::schema::{DeviceView, Ipv4, NodeView, RouteView, Timestamp};
use crate::hub::{NodeEvent, ReplicaView};

/// Whether a replica is the node's active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HaStatus {
    /// Holds the lease and forwards.
    Active,
    /// Any other connected replica (standby, draining, fenced).
    Passive,
}

/// A connected replica of a node (`GET /api/v1/nodes/{id}/connections`).
#[derive(Serialize, ToSchema)]
pub struct Replica {
    /// The replica's persistent id (chosen by its agent).
    pub id: String,
    /// The node's Mesh IP, as this replica registered it.
    #[schema(value_type = Ipv4)]
    pub mesh_ip: String,
    /// `active` or `passive`.
    pub ha_status: HaStatus,
    /// The raw role: `active`, `standby`, `draining` (handed over, still forwarding until
    /// fenced) or `fenced`.
    pub role: String,
    /// Handed its role over and still forwards until fenced; `ha_status` is `passive`.
    pub draining: bool,
    /// The node's epoch.
    pub epoch: u64,
    /// When it connected.
    #[schema(value_type = Timestamp)]
    pub run_at: String,
    /// Why it asked to hand its role over, if it did: `drain` (shutting down),
    /// `link_down` (its LAN link is down) or `unhealthy` (its `--health-target`s stopped
    /// answering). Such a replica is not promoted until it registers again.
    pub handover_reason: Option<String>,
    /// Its coordinator connections, one per coordinator it is connected to.
    pub conns: Vec<Conn>,
}

/// One coordinator connection of a replica.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Conn {
    /// The coordinator's `--name`.
    pub colo_name: String,
    /// The address the replica connects from.
    pub origin_ip: String,
    /// When the connection opened.
    #[schema(value_type = Timestamp)]
    pub opened_at: String,
}

impl From<ReplicaView> for Replica {
    fn from(r: ReplicaView) -> Self {
        Self {
            id: r.id,
            mesh_ip: r.mesh_ip.to_string(),
            ha_status: if r.ha_status == "active" {
                HaStatus::Active
            } else {
                HaStatus::Passive
            },
            role: r.role.to_owned(),
            draining: r.draining,
            epoch: r.epoch,
            run_at: r.run_at,
            handover_reason: r.handover_reason.map(str::to_owned),
            conns: r
                .conns
                .into_iter()
                .map(|c| serde_json::from_value(c).unwrap_or_default())
                .collect(),
        }
    }
}

/// One election event of a node (`GET /api/v1/nodes/{id}/events`).
#[derive(Serialize, ToSchema)]
pub struct Event {
    /// When, in microseconds since the Unix epoch.
    pub at_unix_us: u64,
    /// `registered`, `disconnected`, `lease_expired`, `handover_requested` or `promoted`.
    pub event: String,
    /// The replica it concerns.
    pub replica: String,
    /// The node's epoch after the event.
    pub epoch: u64,
    /// For `promoted` after a failure: how long after the old lease expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_expiry_ms: Option<u64>,
}

impl From<NodeEvent> for Event {
    fn from(e: NodeEvent) -> Self {
        Self {
            at_unix_us: e.at_unix_us,
            event: e.event.to_owned(),
            replica: e.replica,
            epoch: e.epoch,
            after_expiry_ms: e.after_expiry_ms,
        }
    }
}

/// `GET /api/v1/map`: the whole network in one answer, for the console.
#[derive(Serialize, ToSchema)]
pub struct NetworkMap {
    /// The coordinator's version.
    pub version: String,
    /// Optional API parts this coordinator has (`logs`, `cluster`), so the console asks
    /// only for those.
    pub features: Vec<String>,
    /// The coordinators replicas are connected to.
    pub coordinators: Vec<CoordinatorUse>,
    /// Every node with its replicas, routes and events.
    pub nodes: Vec<MapNode>,
    /// Every device.
    pub devices: Vec<DeviceView>,
}

/// A coordinator and how many replica connections it holds.
#[derive(Serialize, ToSchema)]
pub struct CoordinatorUse {
    /// Its `--name`.
    pub name: String,
    /// Replica connections to it.
    pub replica_connections: usize,
}

/// A node on the map.
#[derive(Serialize, ToSchema)]
pub struct MapNode {
    /// The node.
    #[serde(flatten)]
    pub node: NodeView,
    /// Its connected replicas, as in `connections`.
    pub replicas: Vec<Replica>,
    /// Its routes.
    pub routes: Vec<RouteView>,
    /// Its recent election events.
    pub events: Vec<Event>,
}

/// `GET /api/v1/cluster`: the coordinators sharing this control plane. The cluster module
/// builds it; the API reads it through this type, so the document and the answer agree
/// (a shape the type does not describe is a 500, caught by the tests, not a silent drift).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// `single` (no `--etcd`) or `etcd`.
    pub mode: String,
    /// This coordinator's `--name`.
    #[serde(rename = "self")]
    pub this: String,
    /// The member that decides elections now (etcd's election); null while none does.
    pub decider: Option<String>,
    /// Every member known, up or down.
    pub members: Vec<ClusterMember>,
    /// etcd's health; null without `--etcd`.
    pub etcd: Option<EtcdHealth>,
}

/// One coordinator of the cluster.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ClusterMember {
    /// Its `--name` (the `colo_name` agents see).
    pub name: String,
    /// The `HOST:PORT`s agents dial.
    pub public_addrs: Vec<String>,
    /// Where its REST API listens.
    pub api_addr: String,
    /// When it (last) started.
    #[schema(value_type = Timestamp)]
    pub started_at: String,
    /// `up` (holds its membership lease) or `down`.
    pub status: String,
    /// Whether it is the coordinator answering.
    #[serde(rename = "self")]
    pub this: bool,
}

/// etcd as this coordinator sees it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EtcdHealth {
    /// The key prefix the cluster uses.
    pub prefix: String,
    /// A majority of the endpoints answer healthy.
    pub healthy: bool,
    /// Each endpoint.
    pub endpoints: Vec<EtcdEndpoint>,
}

/// One etcd endpoint.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EtcdEndpoint {
    /// Its URL.
    pub endpoint: String,
    /// It answered without errors.
    pub healthy: bool,
    /// It is the etcd leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
    /// etcd's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The raft term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_term: Option<u64>,
    /// Its revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Why it is unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
