//! `GET /api/v1/map`: the whole network in one answer — nodes with their connected
//! replicas, routes and election events, devices, and the coordinators the replicas are
//! connected to — so the console redraws from one consistent poll instead of 3 calls per
//! node.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schema::{Denied, DeviceView, Envelope, NodeView, Reply, RouteView, ok};
use super::views::{CoordinatorUse, Event, MapNode, NetworkMap, Replica};
use super::{Api, ApiError};

/// Optional endpoints the console may use (`logs`: per-node replica logs, `cluster`:
/// `GET /api/v1/cluster`).
const FEATURES: &[&str] = &["cluster", "logs"];

#[utoipa::path(get, path = "/api/v1/map", tag = "console", security(("bearer" = [])),
    responses((status = 200, description = "The whole network", body = Envelope<NetworkMap>), Denied))]
async fn map(State(api): State<Arc<Api>>) -> Result<Reply<NetworkMap>, ApiError> {
    let reg = &api.hub.registry;
    let mut coordinators: BTreeMap<String, usize> = BTreeMap::new();
    let mut nodes = Vec::new();
    for n in reg.list_nodes()? {
        let replicas: Vec<Replica> = api
            .hub
            .connections(n.id)
            .into_iter()
            .map(Replica::from)
            .collect();
        for c in replicas.iter().flat_map(|r| &r.conns) {
            *coordinators.entry(c.colo_name.clone()).or_default() += 1;
        }
        nodes.push(MapNode {
            node: NodeView::from(&n),
            replicas,
            routes: reg.routes_of(n.id)?.iter().map(RouteView::from).collect(),
            events: api
                .hub
                .events
                .of(n.id)
                .into_iter()
                .map(Event::from)
                .collect(),
        });
    }
    Ok(ok(NetworkMap {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
        coordinators: coordinators
            .into_iter()
            .map(|(name, replica_connections)| CoordinatorUse {
                name,
                replica_connections,
            })
            .collect(),
        nodes,
        devices: reg.list_devices()?.iter().map(DeviceView::from).collect(),
    }))
}

/// The console's data route (behind the admin token), with its documentation.
pub fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new().routes(routes!(map))
}
