//! `GET /api/v1/map`: the whole network in one answer — nodes with their connected
//! replicas, routes and election events, devices, and the coordinators the replicas are
//! connected to — so the console redraws from one consistent poll instead of 3 calls per
//! node.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::handlers::{device_json, node_json, route_json};
use super::{Api, ApiError, ok};

/// Optional endpoints the console may use (`logs`: per-node replica logs, `cluster`:
/// `GET /api/v1/cluster`).
const FEATURES: &[&str] = &["cluster"];

/// `GET /api/v1/map`.
pub async fn map(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let reg = &api.hub.registry;
    let mut coordinators: BTreeMap<String, usize> = BTreeMap::new();
    let mut nodes = Vec::new();
    for n in reg.list_nodes()? {
        let replicas = api.hub.connections(n.id);
        for r in &replicas {
            for c in &r.conns {
                let name = c["colo_name"].as_str().unwrap_or_default().to_owned();
                *coordinators.entry(name).or_default() += 1;
            }
        }
        let routes: Vec<Value> = reg.routes_of(n.id)?.iter().map(route_json).collect();
        let mut v = node_json(&n);
        v["replicas"] = json!(replicas);
        v["routes"] = routes.into();
        v["events"] = json!(api.hub.events.of(n.id));
        nodes.push(v);
    }
    let devices: Vec<Value> = reg.list_devices()?.iter().map(device_json).collect();
    let coordinators: Vec<Value> = coordinators
        .into_iter()
        .map(|(name, replica_connections)| json!({"name": name, "replica_connections": replica_connections}))
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            // Optional API parts this coordinator has, so the console asks only for those.
            "features": FEATURES,
            "coordinators": coordinators,
            "nodes": nodes,
            "devices": devices,
        }),
    ))
}
