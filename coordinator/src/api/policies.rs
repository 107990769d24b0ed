//! Network-policy endpoints: policies, settings, tags on nodes and devices, the policy
//! test, and the guard that refuses deleting a device or node a policy references.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, patch, post};
use meshgate_proto::Id;
use serde_json::{Value, json};

use super::handlers::parse_id;
use super::{Api, ApiError, ok};
use crate::policy::counters::Key;
use crate::policy::eval::{self, Packet};
use crate::policy::model::{self, Action, PolicyInput, Protocol};
use crate::policy::world::World;
use crate::policy::{FieldError, Policy, PolicyError, Settings};

type Res = Result<Response, ApiError>;

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

fn policy_json(p: &Policy) -> Value {
    json!({
        "id": p.id.to_string(), "name": p.name, "precedence": p.precedence, "action": p.action,
        "sources": p.sources, "destinations": p.destinations, "protocols": p.protocols,
        "ports": p.ports, "created_at": p.created_at, "updated_at": p.updated_at,
    })
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

async fn create(State(api): State<Arc<Api>>, body: axum::body::Bytes) -> Res {
    let s = spec(&body)?;
    let p = api.hub.policy.book.create(&api.hub.registry, s)?;
    api.policies_changed();
    tracing::info!(policy = %p.name, id = %p.id, precedence = p.precedence, "policy created");
    Ok(ok(StatusCode::CREATED, policy_json(&p)))
}

async fn list(State(api): State<Arc<Api>>) -> Res {
    let ps = api.hub.policy.book.list(&api.hub.registry)?;
    Ok(ok(
        StatusCode::OK,
        ps.iter().map(policy_json).collect::<Vec<_>>(),
    ))
}

async fn show(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Res {
    let p = api
        .hub
        .policy
        .book
        .get(&api.hub.registry, parse_id("policy", &id)?)?;
    let hits = api
        .hub
        .policy
        .counters
        .totals()
        .get(&Key::Policy(p.id))
        .copied()
        .unwrap_or(0);
    let mut v = policy_json(&p);
    v["counters"] = json!({
        "matches": hits,
        "drops": if p.action == Action::Block { hits } else { 0 },
    });
    Ok(ok(StatusCode::OK, v))
}

async fn update(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Res {
    let id = parse_id("policy", &id)?;
    let s = spec(&body)?;
    let p = api.hub.policy.book.update(&api.hub.registry, id, s)?;
    api.policies_changed();
    tracing::info!(policy = %p.name, id = %p.id, "policy updated");
    Ok(ok(StatusCode::OK, policy_json(&p)))
}

async fn remove(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Res {
    let p = api
        .hub
        .policy
        .book
        .delete(&api.hub.registry, parse_id("policy", &id)?)?;
    api.policies_changed();
    tracing::info!(policy = %p.name, id = %p.id, "policy deleted");
    Ok(ok(StatusCode::OK, json!({"id": p.id.to_string()})))
}

async fn get_settings(State(api): State<Arc<Api>>) -> Res {
    let s = api.hub.policy.book.settings(&api.hub.registry)?;
    Ok(ok(StatusCode::OK, s))
}

async fn put_settings(State(api): State<Arc<Api>>, body: axum::body::Bytes) -> Res {
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
    Ok(ok(StatusCode::OK, s))
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

async fn patch_node(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Res {
    let id = parse_id("node", &id)?;
    let tags = tags_of(&body)?;
    let n = api.hub.registry.set_node_tags(id, tags)?;
    api.policies_changed();
    Ok(ok(StatusCode::OK, super::handlers::node_json(&n)))
}

async fn patch_device(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Res {
    let id = parse_id("device", &id)?;
    let tags = tags_of(&body)?;
    let d = api.hub.registry.set_device_tags(id, tags)?;
    api.policies_changed();
    Ok(ok(StatusCode::OK, super::handlers::device_json(&d)))
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

async fn test(State(api): State<Arc<Api>>, body: axum::body::Bytes) -> Res {
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
    Ok(ok(
        StatusCode::OK,
        json!({
            "action": d.action,
            "policy": d.policy.map(|p| json!({"id": p.id.to_string(), "name": p.name, "precedence": p.precedence})),
            "reason": reason,
            "source": src.to_string(),
            "enforced_by": enforced_by,
        }),
    ))
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

/// Adds the policy endpoints (and `tags` on nodes and devices) to the OpenAPI `paths`;
/// `op` makes one operation from a summary and an optional body schema.
pub fn document(paths: &mut Value, op: fn(&str, Option<Value>) -> Value) {
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let list = json!({"type": "array", "items": {"type": "string"}});
    let policy = json!({"type": "object", "required": ["name", "precedence", "action", "sources", "destinations"], "properties": {
        "name": {"type": "string"}, "precedence": {"type": "integer", "minimum": 0},
        "action": {"type": "string", "enum": ["allow", "block"]},
        "sources": {"type": "array", "items": {"type": "string", "description": "any | device:ID | node:ID | tag:NAME | cidr:NETWORK"}},
        "destinations": {"type": "array", "items": {"type": "string", "description": "any | device:ID | node:ID | tag:NAME | cidr:NETWORK"}},
        "protocols": {"type": "array", "items": {"type": "string", "enum": ["tcp", "udp", "icmp"]}},
        "ports": {"type": "array", "items": {"type": "string", "description": "22 or 8000-8100"}}}});
    let tags = json!({"type": "object", "required": ["tags"], "properties": {"tags": list}});
    let add = json!({
        "/api/v1/policies": {
            "get": op("List policies, lowest precedence first", None),
            "post": op("Create a policy", Some(policy.clone()))
        },
        "/api/v1/policies/{id}": {
            "parameters": id,
            "get": op("Show a policy with counters (matches, drops) reported by agents", None),
            "put": op("Replace a policy", Some(policy)),
            "delete": op("Delete a policy", None)
        },
        "/api/v1/policies/test": {"post": op("Which policy decides a packet, and why", Some(json!({"type": "object", "required": ["source", "destination", "protocol"], "properties": {
            "source": {"type": "string", "description": "IPv4 address, device:ID or node:ID"},
            "destination": {"type": "string"}, "protocol": {"type": "string", "enum": ["tcp", "udp", "icmp"]},
            "port": {"type": "integer"}}})))},
        "/api/v1/settings": {
            "get": op("Policy settings", None),
            "put": op("Replace policy settings", Some(json!({"type": "object", "required": ["default_action"], "properties": {"default_action": {"type": "string", "enum": ["allow", "block"]}}})))
        }
    });
    let (Some(paths), Value::Object(add)) = (paths.as_object_mut(), add) else {
        return;
    };
    paths.extend(add);
    for (path, what) in [
        ("/api/v1/nodes/{id}", "node"),
        ("/api/v1/devices/{id}", "device"),
    ] {
        if let Some(p) = paths.get_mut(path).and_then(Value::as_object_mut) {
            p.insert(
                "patch".into(),
                op(&format!("Replace the {what}'s tags"), Some(tags.clone())),
            );
        }
    }
    for path in ["/api/v1/nodes", "/api/v1/devices"] {
        if let Some(props) = paths.get_mut(path).and_then(|p| {
            p["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
                .as_object_mut()
        }) {
            props.insert("tags".into(), list.clone());
        }
    }
}

/// The authenticated policy routes.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/api/v1/policies", get(list).post(create))
        .route("/api/v1/policies/test", post(test))
        .route(
            "/api/v1/policies/{id}",
            get(show).put(update).delete(remove),
        )
        .route("/api/v1/settings", get(get_settings).put(put_settings))
        .route("/api/v1/nodes/{id}", patch(patch_node))
        .route("/api/v1/devices/{id}", patch(patch_device))
}
