//! The API's bodies as Rust types: what the handlers deserialize and return is what the
//! OpenAPI document describes (`utoipa` derives one from the other), so the document
//! cannot drift from the code. Constraints the registry enforces (name pattern and
//! length, id format, CIDR) are written here once, as reusable schemas.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, ToSchema};

use crate::registry::{DeviceRecord, NodeRecord, RouteRecord};

/// A node's or device's name: 1-63 letters, digits, `-`, `_` or `.` (the registry's rule;
/// names appear in logs, metric labels and URLs).
pub struct Name;

impl utoipa::PartialSchema for Name {
    fn schema() -> RefOr<Schema> {
        label("1-63 letters, digits, '-', '_' or '.', unique among nodes (or devices)")
            .examples(["web-server"])
            .into()
    }
}

impl ToSchema for Name {}

/// A tag on a node or device, which policies name as `tag:NAME`: the same rule as names.
pub struct Tag;

impl utoipa::PartialSchema for Tag {
    fn schema() -> RefOr<Schema> {
        label("1-63 letters, digits, '-', '_' or '.'")
            .examples(["ops"])
            .into()
    }
}

impl ToSchema for Tag {}

/// The registry's rule for names and tags.
fn label(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(1))
        .max_length(Some(63))
        .pattern(Some(r"^[A-Za-z0-9._-]{1,63}$"))
}

/// An object id: 128 random bits as lowercase hex in UUID form (`8-4-4-4-12`). The
/// undashed form (32 hex digits) is accepted too.
#[derive(ToSchema)]
#[schema(
    value_type = String,
    pattern = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$",
    example = "3f2a9c4e-0b1d-4e5f-8a7b-6c5d4e3f2a1b"
)]
pub struct ObjectId(pub String);

/// An IPv4 network in CIDR notation. It must not overlap another node's route or lie
/// inside the mesh range.
#[derive(ToSchema)]
#[schema(
    value_type = String,
    pattern = r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/(3[0-2]|[12]?[0-9])$",
    example = "192.168.50.0/24"
)]
pub struct Cidr(pub String);

/// An IPv4 address.
#[derive(ToSchema)]
#[schema(value_type = String, format = Ipv4, example = "100.96.0.2")]
pub struct Ipv4(pub String);

/// A time in RFC 3339.
#[derive(ToSchema)]
#[schema(value_type = String, format = DateTime, example = "2026-11-30T21:45:46Z")]
pub struct Timestamp(pub String);

/// `{id}` in `/nodes/{id}…` and `/devices/{id}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdPath {
    /// The node's or device's id.
    #[param(value_type = ObjectId)]
    pub id: String,
}

/// `{id}` and `{route_id}` in `/nodes/{id}/routes/{route_id}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RoutePath {
    /// The node's id.
    #[param(value_type = ObjectId)]
    pub id: String,
    /// The route's id.
    #[param(value_type = ObjectId)]
    pub route_id: String,
}

/// The envelope every API answer comes in.
#[derive(Serialize, ToSchema)]
pub struct Envelope<T> {
    /// Whether the call did what was asked.
    pub success: bool,
    /// What went wrong; empty on success.
    pub errors: Vec<ErrorItem>,
    /// Informational messages (none so far).
    pub messages: Vec<String>,
    /// The answer; `null` on failure.
    pub result: T,
}

/// An error envelope: `success` false, `result` null.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Always false.
    pub success: bool,
    /// What went wrong: one entry.
    pub errors: Vec<ErrorItem>,
    /// Always empty.
    pub messages: Vec<String>,
    /// Always null.
    #[schema(schema_with = null)]
    pub result: Option<()>,
}

fn null() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Null)
}

/// One error.
#[derive(Serialize, ToSchema)]
pub struct ErrorItem {
    /// 1000 authentication, 1001 invalid input, 1002 not found, 1003 name taken, 1004
    /// route refused, 1005 address space exhausted, 1006 store failure.
    pub code: u32,
    /// What is wrong, for a person.
    pub message: String,
}

/// A success answer: the status and the typed result, sent in the [`Envelope`].
pub struct Reply<T>(pub StatusCode, pub T);

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        let body = Envelope {
            success: true,
            errors: Vec::new(),
            messages: Vec::new(),
            result: self.1,
        };
        (self.0, Json(body)).into_response()
    }
}

/// `200 OK` with `result`.
pub fn ok<T>(result: T) -> Reply<T> {
    Reply(StatusCode::OK, result)
}

/// `POST /api/v1/nodes`.
#[derive(Deserialize, ToSchema)]
pub struct NewNode {
    /// Unique among nodes.
    #[schema(value_type = Name)]
    pub name: String,
    /// Whether several replicas share the node (active/standby with failover).
    #[serde(default)]
    pub ha: bool,
    /// Tags that policies can name (at most 32; duplicates are dropped).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Tag>>, max_items = 32)]
    pub tags: Option<serde_json::Value>,
}

/// A node.
#[derive(Serialize, ToSchema)]
pub struct NodeView {
    /// Its id.
    #[schema(value_type = ObjectId)]
    pub id: String,
    /// Its name.
    #[schema(value_type = Name)]
    pub name: String,
    /// Whether it is an HA node.
    pub ha: bool,
    /// When it was created.
    #[schema(value_type = Timestamp)]
    pub created_at: String,
    /// Its tags, sorted.
    #[schema(value_type = Vec<Tag>)]
    pub tags: Vec<String>,
}

impl From<&NodeRecord> for NodeView {
    fn from(n: &NodeRecord) -> Self {
        Self {
            id: n.id.to_string(),
            name: n.name.clone(),
            ha: n.ha,
            created_at: n.created_at.clone(),
            tags: n.tags.clone(),
        }
    }
}

/// A node just created, with the token its replicas run with.
#[derive(Serialize, ToSchema)]
pub struct NodeCreated {
    /// The node.
    #[serde(flatten)]
    pub node: NodeView,
    /// The enrolment token every replica of the node uses.
    pub token: String,
}

/// What a delete removed.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    /// The id of the deleted node or device.
    #[schema(value_type = ObjectId)]
    pub id: String,
}

/// `POST /api/v1/nodes/{id}/routes`.
#[derive(Deserialize, ToSchema)]
pub struct NewRoute {
    /// The network to advertise through the node.
    #[schema(value_type = Cidr)]
    pub network: String,
    /// Free text.
    #[serde(default)]
    pub comment: String,
}

/// The whole list of routes a node advertises (replaces what it had).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteList {
    /// The routes; an empty list withdraws them all.
    pub routes: Vec<NewRoute>,
}

/// A route advertised by a node.
#[derive(Serialize, ToSchema)]
pub struct RouteView {
    /// Its id.
    #[schema(value_type = ObjectId)]
    pub id: String,
    /// The network.
    #[schema(value_type = Cidr)]
    pub network: String,
    /// Free text.
    pub comment: String,
    /// The node that advertises it.
    #[schema(value_type = ObjectId)]
    pub node_id: String,
    /// When it was added.
    #[schema(value_type = Timestamp)]
    pub created_at: String,
}

impl From<&RouteRecord> for RouteView {
    fn from(r: &RouteRecord) -> Self {
        Self {
            id: r.id.to_string(),
            network: r.network.to_string(),
            comment: r.comment.clone(),
            node_id: r.node_id.to_string(),
            created_at: r.created_at.clone(),
        }
    }
}

/// `POST /api/v1/devices`.
#[derive(Deserialize, ToSchema)]
pub struct NewDevice {
    /// Unique among devices.
    #[schema(value_type = Name)]
    pub name: String,
    /// Tags that policies can name (at most 32; duplicates are dropped).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Tag>>, max_items = 32)]
    pub tags: Option<serde_json::Value>,
}

/// A device.
#[derive(Serialize, ToSchema)]
pub struct DeviceView {
    /// Its id.
    #[schema(value_type = ObjectId)]
    pub id: String,
    /// Its name.
    #[schema(value_type = Name)]
    pub name: String,
    /// Its Mesh IP.
    #[schema(value_type = Ipv4)]
    pub mesh_ip: String,
    /// When it was enrolled.
    #[schema(value_type = Timestamp)]
    pub created_at: String,
    /// Its tags, sorted.
    #[schema(value_type = Vec<Tag>)]
    pub tags: Vec<String>,
}

impl From<&DeviceRecord> for DeviceView {
    fn from(d: &DeviceRecord) -> Self {
        Self {
            id: d.id.to_string(),
            name: d.name.clone(),
            mesh_ip: d.mesh_ip.to_string(),
            created_at: d.created_at.clone(),
            tags: d.tags.clone(),
        }
    }
}

/// A device just enrolled, with its token.
#[derive(Serialize, ToSchema)]
pub struct DeviceCreated {
    /// The device.
    #[serde(flatten)]
    pub device: DeviceView,
    /// The enrolment token the device's agent runs with.
    pub token: String,
}

/// `GET /ready`: whether the coordinator serves, with each check's state.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// Every check is `ok`.
    pub ready: bool,
    /// Check name (`store`, `quic_listener`, and `cluster` with `--etcd`) to `ok` or what
    /// is failing.
    pub checks: BTreeMap<String, String>,
}

/// `GET /api/v1/stats`: the coordinator's counters since start.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// Agents (replicas and devices) connected now.
    pub participants_connected: usize,
    /// Datagrams relayed.
    pub packets_relayed: u64,
    /// Bytes relayed.
    pub bytes_relayed: u64,
    /// ICMP errors the relay sent back (unreachable destinations, too big).
    pub icmp_errors_sent: u64,
    /// Promotions after an active replica's failure or handover.
    pub failovers: u64,
    /// Accepted registrations.
    pub registrations: u64,
    /// Refused registrations (bad, unknown or revoked tokens).
    pub auth_failures: u64,
    /// Datagrams dropped, by reason.
    pub drops: BTreeMap<String, u64>,
    /// Connected replicas per node and `ha_status`.
    pub replicas: Vec<ReplicaCount>,
}

/// Connected replicas of one node in one `ha_status`.
#[derive(Serialize, ToSchema)]
pub struct ReplicaCount {
    /// The node's name.
    pub node: String,
    /// `active` or `passive`.
    pub ha_status: String,
    /// How many.
    pub count: usize,
}

/// The answers every call behind the admin token may get before it runs.
#[derive(utoipa::IntoResponses)]
pub enum Denied {
    /// No `Authorization: Bearer <admin-token>` header.
    #[response(status = 401)]
    Missing(ErrorEnvelope),
    /// A token that is not the admin token.
    #[response(status = 403)]
    Wrong(ErrorEnvelope),
}
