//! The registry's records (as stored, JSON) and its errors.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use meshgate_proto::{Id, TokenError};
use serde::{Deserialize, Serialize};

use crate::ipam::IpamError;
use crate::routes::RouteError;
use crate::store::StoreError;

/// A node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Id.
    pub id: Id,
    /// Unique name.
    pub name: String,
    /// Whether more than one replica may connect.
    pub ha: bool,
    /// RFC 3339.
    pub created_at: String,
    /// SHA-256 of the token secret.
    pub token_hash: [u8; 32],
    /// Tags network policies refer to (`tag:NAME`).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Id.
    pub id: Id,
    /// Unique name.
    pub name: String,
    /// Its Mesh IP.
    pub mesh_ip: Ipv4Addr,
    /// RFC 3339.
    pub created_at: String,
    /// SHA-256 of the token secret.
    pub token_hash: [u8; 32],
    /// Tags network policies refer to (`tag:NAME`).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A route advertised by a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteRecord {
    /// Id.
    pub id: Id,
    /// Advertising node.
    pub node_id: Id,
    /// Network.
    pub network: Ipv4Net,
    /// Free text.
    pub comment: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A replica of a node, known by its persistent replica id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// Node.
    pub node_id: Id,
    /// Agent-chosen id.
    pub replica_id: String,
    /// Its Mesh IP.
    pub mesh_ip: Ipv4Addr,
    /// When a coordinator last saw it connected, in seconds since the Unix epoch (0: a
    /// record from before this field; treated as seen at the next sweep). Stale records
    /// are reclaimed ([`super::reclaim`]).
    #[serde(default)]
    pub seen_at: u64,
}

/// Why a registry operation failed; the API maps these to 4xx/5xx.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such object.
    #[error("{0} not found")]
    NotFound(String),
    /// Name taken.
    #[error("{0}")]
    Conflict(String),
    /// Bad field.
    #[error("{0}")]
    Invalid(String),
    /// Route refused.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// No address left.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A documented limit would be exceeded.
    #[error("{0}")]
    Limit(String),
}

/// Replicas (persistent replica ids, each with a Mesh IP) a node may have. A node token
/// cannot allocate addresses beyond this; the check comes before any allocation.
pub const MAX_REPLICAS_PER_NODE: usize = 16;

/// Why a token was refused at registration.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Not a token at all.
    #[error("malformed token: {0}")]
    Malformed(#[from] TokenError),
    /// No such node/device, or the secret does not match.
    #[error("unknown token")]
    Unknown,
    /// The node/device was deleted.
    #[error("token was revoked (its node or device was deleted)")]
    Revoked,
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who a valid token belongs to.
#[derive(Debug, Clone)]
pub enum Participant {
    /// A node.
    Node(NodeRecord),
    /// A device.
    Device(DeviceRecord),
}
