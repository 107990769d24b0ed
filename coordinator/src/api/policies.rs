//! Network-policy endpoints: policies, settings, tags on nodes and devices, the policy
//! test, and the guard that refuses deleting a device or node a policy references.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use meshgate_proto::Id;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::handlers::parse_id;
use super::policy_schema::{
    DecidingPolicy, PolicyBody, PolicyCounters, PolicyDecision, PolicyQuestion, PolicyShown,
    PolicyView, SettingsBody, TagsBody,
};
use super::schema::{
    Deleted, Denied, DeviceView, Envelope, ErrorEnvelope, IdPath, NodeView, Reply, ok,
};
use super::{Api, ApiError};
use crate::policy::counters::Key;
use crate::policy::eval::{self, Packet};
use crate::policy::model::{self, Action, PolicyInput, Protocol};
use crate::policy::world::World;
use crate::policy::{FieldError, PolicyError, Settings};

type Res<T> = Result<Reply<T>, ApiError>;

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Field(f) => ApiError::bad_request(f.to_string()),
            PolicyError::Conflict(f) => ApiError::new(StatusCode::CONFLICT, 1003, f.to_string()),
            PolicyError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, 1002, e.to_string()),
            PolicyError::Store(_) => {
                tracing::error!(error = %e, "policy request failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 1006, e.to_string())
            }
        }
    }
}

fn field(f: FieldError) -> ApiError {
    ApiError::bad_request(f.to_string())
}

/// The body as a JSON object; anything else is a 400 that says so.
fn object(body: &axum::body::Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "invalid request body: expected a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("invalid request body: {e}"))),
    }
}

fn spec(body: &axum::body::Bytes) -> Result<crate::policy::PolicySpec, ApiError> {
    let m = object(body)?;
    if let Some(k) = m.keys().find(|k| {
        ![
            "name",
            "precedence",
            "action",
            "sources",
            "destinations",
            "protocols",
            "ports",
            "id",
        ]
        .contains(&k.as_str())
    }) {
        return Err(field(FieldError::new(k.clone(), "unknown field")));
    }
    let input: PolicyInput = serde_json::from_value(Value::Object(m))
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    model::parse_spec(&input).map_err(field)
}

impl Api {
    fn policies_changed(&self) {
        self.hub.policy.changed.notify_one();
    }
}

#[utoipa::path(post, path = "/api/v1/policies", tag = "policies", security(("bearer" = [])),
    request_body = PolicyBody,
    responses(
        (status = 201, description = "Created; agents enforce it within a second", body = Envelope<PolicyView>,
            links(
                ("show" = (operation_id = "show_policy", parameters(("id" = "$response.body#/result/id")))),
                ("delete" = (operation_id = "delete_policy", parameters(("id" = "$response.body#/result/id")))),
            )),
        (status = 400, description = "A field is invalid; the message names it", body = ErrorEnvelope),
        (status = 409, description = "The name or precedence is taken", body = ErrorEnvelope),
        Denied,
    ))]
async fn create_policy(State(api): State<Arc<Api>>, body: axum::body::Bytes) -> Res<PolicyView> {
    let s = spec(&body)?;
    let p = api.hub.policy.book.create(&api.hub.registry, s)?;
    api.policies_changed();
    tracing::info!(policy = %p.name, id = %p.id, precedence = p.precedence, "policy created");
    Ok(Reply(StatusCode::CREATED, PolicyView::from(&p)))
}

#[utoipa::path(get, path = "/api/v1/policies", tag = "policies", security(("bearer" = [])),
    responses((status = 200, description = "Every policy, lowest precedence first",
        body = Envelope<Vec<PolicyView>>), Denied))]
async fn list_policies(State(api): State<Arc<Api>>) -> Res<Vec<PolicyView>> {
    let ps = api.hub.policy.book.list(&api.hub.registry)?;
    Ok(ok(ps.iter().map(PolicyView::from).collect()))
}

#[utoipa::path(get, path = "/api/v1/policies/{id}", tag = "policies", security(("bearer" = [])),
    params(IdPath),
    responses(
        (status = 200, description = "The policy with the counters agents reported", body = Envelope<PolicyShown>),
        (status = 404, description = "No such policy", body = ErrorEnvelope),
        Denied,
    ))]
async fn show_policy(State(api): State<Arc<Api>>, Path(id): Path<IdPath>) -> Res<PolicyShown> {
    let p = api
        .hub
        .policy
        .book
        .get(&api.hub.registry, parse_id("policy", &id.id)?)?;
    let hits = api
        .hub
        .policy
        .counters
        .totals()
        .get(&Key::Policy(p.id))
        .copied()
        .unwrap_or(0);
    Ok(ok(PolicyShown {
        policy: PolicyView::from(&p),
        counters: PolicyCounters {
            matches: hits,
            drops: if p.action == Action::Block { hits } else { 0 },
        },
    }))
}

#[utoipa::path(put, path = "/api/v1/policies/{id}", tag = "policies", security(("bearer" = [])),
    params(IdPath),
    request_body = PolicyBody,
    responses(
        (status = 200, description = "Replaced", body = Envelope<PolicyView>),
        (status = 400, description = "A field is invalid; the message names it", body = ErrorEnvelope),
        (status = 404, description = "No such policy", body = ErrorEnvelope),
        (status = 409, description = "The name or precedence is taken", body = ErrorEnvelope),
        Denied,
    ))]
async fn update_policy(
    State(api): State<Arc<Api>>,
    Path(id): Path<IdPath>,
    body: axum::body::Bytes,
) -> Res<PolicyView> {
    let id = parse_id("policy", &id.id)?;
    let s = spec(&body)?;
    let p = api.hub.policy.book.update(&api.hub.registry, id, s)?;
    api.policies_changed();
    tracing::info!(policy = %p.name, id = %p.id, "policy updated");
    Ok(ok(PolicyView::from(&p)))
}

#[utoipa::path(delete, path = "/api/v1/policies/{id}", tag = "policies", security(("bearer" = [])),
    params(IdPath),
    responses(
        (status = 200, description = "Deleted", body = Envelope<Deleted>),
        (status = 404, description = "No such policy", body = ErrorEnvelope),
        Denied,
    ))]
async fn delete_policy(State(api): State<Arc<Api>>, Path(id): Path<IdPath>) -> Res<Deleted> {
    let p = api
        .hub
        .policy
        .book
        .delete(&api.hub.registry, parse_id("policy", &id.id)?)?;
    api.policies_changed();
    tracing::info!(policy = %p.name, id = %p.id, "policy deleted");
    Ok(ok(Deleted {
        id: p.id.to_string(),
    }))
}

#[utoipa::path(get, path = "/api/v1/settings", tag = "policies", security(("bearer" = [])),
    responses((status = 200, description = "The policy settings", body = Envelope<SettingsBody>), Denied))]
async fn get_settings(State(api): State<Arc<Api>>) -> Res<SettingsBody> {
    let s = api.hub.policy.book.settings(&api.hub.registry)?;
    Ok(ok(s.into()))
}

#[utoipa::path(put, path = "/api/v1/settings", tag = "policies", security(("bearer" = [])),
    request_body = SettingsBody,
    responses(
        (status = 200, description = "Replaced", body = Envelope<SettingsBody>),
        (status = 400, description = "Not allow or block, or an unknown field", body = ErrorEnvelope),
        Denied,
    ))]
async fn put_settings(State(api): State<Arc<Api>>, body: axum::body::Bytes) -> Res<SettingsBody> {
    let m = object(&body)?;
    if let Some(k) = m.keys().find(|k| k.as_str() != "default_action") {
        return Err(field(FieldError::new(k.clone(), "unknown field")));
    }
    let default_action = match m.get("default_action").and_then(Value::as_str) {
        Some("allow") => Action::Allow,
        Some("block") => Action::Block,
        _ => {
            return Err(field(FieldError::new(
                "default_action",
                "must be \"allow\" or \"block\"",
            )));
        }
    };
    let s = Settings { default_action };
    api.hub.policy.book.set_settings(&api.hub.registry, s)?;
    api.policies_changed();
    tracing::info!(?default_action, "policy settings changed");
    Ok(ok(s.into()))
}

fn tags_of(body: &axum::body::Bytes) -> Result<Vec<String>, ApiError> {
    let m = object(body)?;
    if let Some(k) = m.keys().find(|k| k.as_str() != "tags") {
        return Err(field(FieldError::new(
            k.clone(),
            "unknown field (only tags can be changed)",
        )));
    }
    let list = match m.get("tags") {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| field(FieldError::new(format!("tags[{i}]"), "must be a string")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(field(FieldError::new("tags", "must be a list of strings"))),
    };
    model::validate_tags(&list).map_err(field)
}

/// Checks `tags` on a create request (absent: none).
pub fn creation_tags(tags: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match tags {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => {
            let list = a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        field(FieldError::new(format!("tags[{i}]"), "must be a string"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            model::validate_tags(&list).map_err(field)
        }
        Some(_) => Err(field(FieldError::new("tags", "must be a list of strings"))),
    }
}

#[utoipa::path(patch, path = "/api/v1/nodes/{id}", tag = "nodes", security(("bearer" = [])),
    params(IdPath),
    request_body = TagsBody,
    responses(
        (status = 200, description = "The node with its new tags", body = Envelope<NodeView>),
        (status = 400, description = "An invalid tag, or a field other than tags", body = ErrorEnvelope),
        (status = 404, description = "No such node", body = ErrorEnvelope),
        Denied,
    ))]
async fn patch_node(
    State(api): State<Arc<Api>>,
    Path(id): Path<IdPath>,
    body: axum::body::Bytes,
) -> Res<NodeView> {
    let id = parse_id("node", &id.id)?;
    let tags = tags_of(&body)?;
    let n = api.hub.registry.set_node_tags(id, tags)?;
    api.policies_changed();
    Ok(ok(NodeView::from(&n)))
}

#[utoipa::path(patch, path = "/api/v1/devices/{id}", tag = "devices", security(("bearer" = [])),
    params(IdPath),
    request_body = TagsBody,
    responses(
        (status = 200, description = "The device with its new tags", body = Envelope<DeviceView>),
        (status = 400, description = "An invalid tag, or a field other than tags", body = ErrorEnvelope),
        (status = 404, description = "No such device", body = ErrorEnvelope),
        Denied,
    ))]
async fn patch_device(
    State(api): State<Arc<Api>>,
    Path(id): Path<IdPath>,
    body: axum::body::Bytes,
) -> Res<DeviceView> {
    let id = parse_id("device", &id.id)?;
    let tags = tags_of(&body)?;
    let d = api.hub.registry.set_device_tags(id, tags)?;
    api.policies_changed();
    Ok(ok(DeviceView::from(&d)))
}

/// Refuses (409) to delete a device or node that policies reference; the caller keeps
/// the returned guard until the delete is done, so no policy can start referencing it
/// meanwhile.
pub fn guard_delete<'a>(
    api: &'a Api,
    id: Id,
    what: &str,
) -> Result<std::sync::MutexGuard<'a, ()>, ApiError> {
    let g = api.hub.policy.book.lock();
    let refs = api.hub.policy.book.refs_to(&api.hub.registry, id)?;
    if !refs.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            1003,
            format!("{what} {id} is referenced by policies {refs:?}; change or delete them first"),
        ));
    }
    Ok(g)
}

fn addr_of(world: &World, source: &str) -> Result<Ipv4Addr, ApiError> {
    if let Ok(ip) = source.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let e: model::Endpoint = source
        .parse()
        .map_err(|m: String| field(FieldError::new("source", m)))?;
    let nets = match &e {
        model::Endpoint::Device(_) | model::Endpoint::Node(_) => world.resolve(&e),
        _ => {
            return Err(field(FieldError::new(
                "source",
                "use an IPv4 address, device:ID or node:ID",
            )));
        }
    };
    nets.iter()
        .find(|n| n.prefix_len() == 32)
        .map(|n| n.addr())
        .ok_or_else(|| {
            field(FieldError::new(
                "source",
                format!("{e} has no Mesh IP (unknown, or no replica has connected yet)"),
            ))
        })
}

#[utoipa::path(post, path = "/api/v1/policies/test", tag = "policies", security(("bearer" = [])),
    request_body = PolicyQuestion,
    responses(
        (status = 200, description = "The decision and the policy that made it", body = Envelope<PolicyDecision>),
        (status = 400, description = "A field is invalid; the message names it", body = ErrorEnvelope),
        Denied,
    ))]
async fn test_policy(State(api): State<Arc<Api>>, body: axum::body::Bytes) -> Res<PolicyDecision> {
    let m = object(&body)?;
    let reg = &api.hub.registry;
    let world = World::load(reg)?;
    let src = addr_of(
        &world,
        m.get("source").and_then(Value::as_str).ok_or_else(|| {
            field(FieldError::new(
                "source",
                "is required (an IPv4 address, device:ID or node:ID)",
            ))
        })?,
    )?;
    let dst: Ipv4Addr = m
        .get("destination")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| field(FieldError::new("destination", "must be an IPv4 address")))?;
    let protocol = match m.get("protocol").and_then(Value::as_str) {
        Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some("icmp") => Protocol::Icmp,
        _ => {
            return Err(field(FieldError::new(
                "protocol",
                "must be tcp, udp or icmp",
            )));
        }
    };
    let port = match (protocol, m.get("port")) {
        (Protocol::Icmp, None | Some(Value::Null)) => None,
        (Protocol::Icmp, Some(_)) => {
            return Err(field(FieldError::new("port", "ICMP has no ports")));
        }
        (_, v) => Some(
            v.and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| field(FieldError::new("port", "must be a port from 1 to 65535")))?,
        ),
    };
    let policies = api.hub.policy.book.list(reg)?;
    let settings = api.hub.policy.book.settings(reg)?;
    let packet = Packet {
        src,
        dst,
        protocol,
        port,
    };
    let d = eval::decide(&world, &policies, settings, &packet);
    let enforced_by: Vec<String> = world
        .devices
        .iter()
        .map(|(id, m)| (format!("device:{id}"), m))
        .chain(world.nodes.iter().map(|(id, m)| (format!("node:{id}"), m)))
        .filter(|(_, m)| m.nets.iter().any(|n| n.contains(&dst)))
        .map(|(name, _)| name)
        .collect();
    let what = match protocol {
        Protocol::Icmp => "icmp".to_string(),
        p => format!(
            "{} port {}",
            json!(p).as_str().unwrap_or("?"),
            port.unwrap_or(0)
        ),
    };
    let reason = match d.policy {
        Some(p) => format!(
            "policy {:?} (precedence {}) is the first that matches {src} -> {dst} {what}: it says {}",
            p.name,
            p.precedence,
            json!(p.action).as_str().unwrap_or("?")
        ),
        None => format!(
            "no policy matches {src} -> {dst} {what}: the default action {} applies",
            json!(settings.default_action).as_str().unwrap_or("?")
        ),
    };
    Ok(ok(PolicyDecision {
        action: d.action.into(),
        policy: d.policy.map(|p| DecidingPolicy {
            id: p.id.to_string(),
            name: p.name.clone(),
            precedence: p.precedence,
        }),
        reason,
        source: src.to_string(),
        enforced_by,
    }))
}

/// Prometheus lines for policy counters.
pub fn prometheus(api: &Api) -> String {
    let names = api
        .hub
        .policy
        .book
        .list(&api.hub.registry)
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.id, (p.name, p.action == Action::Allow)))
        .collect();
    api.hub.policy.counters.prometheus(&names)
}

/// The authenticated policy routes, with their documentation.
pub fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new()
        .routes(routes!(list_policies, create_policy))
        .routes(routes!(test_policy))
        .routes(routes!(show_policy, update_policy, delete_policy))
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(patch_node))
        .routes(routes!(patch_device))
}
