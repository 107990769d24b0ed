//! Resource handlers: nodes, their routes and connections, devices.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use meshgate_proto::{Id, Kind};
use serde::Deserialize;
use serde_json::json;

use super::{Api, ApiError, ok};
use crate::registry::{DeviceRecord, NodeRecord, RouteRecord};

type Res = Result<Response, ApiError>;
type Body<T> = Result<axum::Json<T>, JsonRejection>;

fn body<T>(b: Body<T>) -> Result<T, ApiError> {
    b.map(|j| j.0)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {}", e.body_text())))
}

pub(super) fn parse_id(what: &str, s: &str) -> Result<Id, ApiError> {
    s.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            1002,
            format!("{what} {s:?} not found (not a valid id)"),
        )
    })
}

pub(super) fn node_json(n: &NodeRecord) -> serde_json::Value {
    json!({"id": n.id.to_string(), "name": n.name, "ha": n.ha, "created_at": n.created_at, "tags": n.tags})
}

pub(super) fn route_json(r: &RouteRecord) -> serde_json::Value {
    json!({"id": r.id.to_string(), "network": r.network.to_string(), "comment": r.comment, "node_id": r.node_id.to_string(), "created_at": r.created_at})
}

pub(super) fn device_json(d: &DeviceRecord) -> serde_json::Value {
    json!({"id": d.id.to_string(), "name": d.name, "mesh_ip": d.mesh_ip.to_string(), "created_at": d.created_at, "tags": d.tags})
}

impl Api {
    fn token(&self, kind: Kind, id: Id) -> String {
        self.hub
            .registry
            .token(kind, id, self.cluster.token_addrs(), self.fingerprint)
            .encode()
    }
}

#[derive(Deserialize)]
struct NewNode {
    name: String,
    #[serde(default)]
    ha: bool,
    #[serde(default)]
    tags: Option<serde_json::Value>,
}

async fn create_node(State(api): State<Arc<Api>>, b: Body<NewNode>) -> Res {
    let b = body(b)?;
    let tags = super::policies::creation_tags(b.tags.as_ref())?;
    let n = api
        .hub
        .registry
        .create_node_tagged(b.name.trim(), b.ha, tags)?;
    tracing::info!(node = %n.name, id = %n.id, ha = n.ha, "node created");
    let mut v = node_json(&n);
    v["token"] = api.token(Kind::Node, n.id).into();
    Ok(ok(StatusCode::CREATED, v))
}

async fn list_nodes(State(api): State<Arc<Api>>) -> Res {
    let nodes: Vec<_> = api
        .hub
        .registry
        .list_nodes()?
        .iter()
        .map(node_json)
        .collect();
    Ok(ok(StatusCode::OK, nodes))
}

async fn show_node(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Res {
    let n = api.hub.registry.node(parse_id("node", &id)?)?;
    Ok(ok(StatusCode::OK, node_json(&n)))
}

async fn delete_node(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Res {
    let id = parse_id("node", &id)?;
    let guard = super::policies::guard_delete(&api, id, "node")?;
    let n = api.hub.registry.delete_node(id)?;
    drop(guard);
    api.hub.participant_deleted(n.id);
    tracing::info!(node = %n.name, id = %n.id, "node deleted");
    Ok(ok(StatusCode::OK, json!({"id": n.id.to_string()})))
}

async fn node_token(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Res {
    let n = api.hub.registry.node(parse_id("node", &id)?)?;
    Ok(ok(StatusCode::OK, api.token(Kind::Node, n.id)))
}

async fn connections(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Res {
    let n = api.hub.registry.node(parse_id("node", &id)?)?;
    Ok(ok(StatusCode::OK, api.hub.connections(n.id)))
}

async fn events(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Res {
    let n = api.hub.registry.node(parse_id("node", &id)?)?;
    Ok(ok(StatusCode::OK, api.hub.events.of(n.id)))
}

#[derive(Deserialize)]
struct NewRoute {
    network: String,
    #[serde(default)]
    comment: String,
}

async fn add_route(State(api): State<Arc<Api>>, Path(id): Path<String>, b: Body<NewRoute>) -> Res {
    let node = parse_id("node", &id)?;
    let b = body(b)?;
    let r = api.hub.registry.add_route(node, &b.network, &b.comment)?;
    api.hub.routes_changed();
    tracing::info!(%node, network = %r.network, "route added");
    Ok(ok(StatusCode::CREATED, route_json(&r)))
}

async fn list_routes(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Res {
    let routes: Vec<_> = api
        .hub
        .registry
        .routes_of(parse_id("node", &id)?)?
        .iter()
        .map(route_json)
        .collect();
    Ok(ok(StatusCode::OK, routes))
}

async fn delete_route(
    State(api): State<Arc<Api>>,
    Path((id, route)): Path<(String, String)>,
) -> Res {
    let r = api
        .hub
        .registry
        .delete_route(parse_id("node", &id)?, parse_id("route", &route)?)?;
    api.hub.routes_changed();
    Ok(ok(StatusCode::OK, route_json(&r)))
}

#[derive(Deserialize)]
struct NewDevice {
    name: String,
    #[serde(default)]
    tags: Option<serde_json::Value>,
}

async fn create_device(State(api): State<Arc<Api>>, b: Body<NewDevice>) -> Res {
    let b = body(b)?;
    let tags = super::policies::creation_tags(b.tags.as_ref())?;
    let d = api.hub.registry.create_device_tagged(b.name.trim(), tags)?;
    tracing::info!(device = %d.name, id = %d.id, mesh_ip = %d.mesh_ip, "device enrolled");
    let mut v = device_json(&d);
    v["token"] = api.token(Kind::Device, d.id).into();
    Ok(ok(StatusCode::CREATED, v))
}

async fn list_devices(State(api): State<Arc<Api>>) -> Res {
    let devices: Vec<_> = api
        .hub
        .registry
        .list_devices()?
        .iter()
        .map(device_json)
        .collect();
    Ok(ok(StatusCode::OK, devices))
}

async fn delete_device(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Res {
    let id = parse_id("device", &id)?;
    let guard = super::policies::guard_delete(&api, id, "device")?;
    let d = api.hub.registry.delete_device(id)?;
    drop(guard);
    api.hub.participant_deleted(d.id);
    Ok(ok(StatusCode::OK, json!({"id": d.id.to_string()})))
}

/// The authenticated resource routes.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/api/v1/nodes", get(list_nodes).post(create_node))
        .route("/api/v1/nodes/{id}", get(show_node).delete(delete_node))
        .route("/api/v1/nodes/{id}/token", get(node_token))
        .route("/api/v1/nodes/{id}/connections", get(connections))
        .route("/api/v1/nodes/{id}/events", get(events))
        .route(
            "/api/v1/nodes/{id}/routes",
            get(list_routes).post(add_route),
        )
        .route("/api/v1/nodes/{id}/routes/{route_id}", delete(delete_route))
        .route("/api/v1/devices", get(list_devices).post(create_device))
        .route("/api/v1/devices/{id}", delete(delete_device))
}
