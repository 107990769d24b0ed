//! Resource handlers: nodes, their routes and connections, devices.
//!
//! Each handler carries a `#[utoipa::path]` that names its path, parameters, body and
//! answers by their Rust types; [`routes`] registers the handlers and their documentation
//! together (`utoipa_axum::routes!`), so a route cannot exist undocumented. A new
//! handler file in `api/` follows the same pattern and adds its `routes()` in `mod.rs`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use meshgate_proto::{Id, Kind};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schema::{
    Deleted, Denied, DeviceCreated, DeviceView, Envelope, ErrorEnvelope, IdPath, NewDevice,
    NewNode, NewRoute, NodeCreated, NodeView, Reply, RouteList, RoutePath, RouteView, ok,
};
use super::views::{Event, Replica};
use super::{Api, ApiError};

type Res<T> = Result<Reply<T>, ApiError>;

/// A JSON request body whose rejection is an [`ApiError`] in the envelope.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T> FromRequest<S> for Body<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|j| Self(j.0))
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {}", e.body_text())))
    }
}

/// Parses an id from a path; a malformed one is as absent as an unknown one.
pub(super) fn parse_id(what: &str, s: &str) -> Result<Id, ApiError> {
    s.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            1002,
            format!("{what} {s:?} not found (not a valid id)"),
        )
    })
}

impl Api {
    fn token(&self, kind: Kind, id: Id) -> String {
        self.hub
            .registry
            .token(kind, id, self.cluster.token_addrs(), self.fingerprint)
            .encode()
    }
}

#[utoipa::path(post, path = "/api/v1/nodes", tag = "nodes", security(("bearer" = [])),
    request_body = NewNode,
    responses(
        (status = 201, description = "Created; the token is what every replica runs with",
            body = Envelope<NodeCreated>,
            links(
                ("show" = (operation_id = "show_node", parameters(("id" = "$response.body#/result/id")))),
                ("delete" = (operation_id = "delete_node", parameters(("id" = "$response.body#/result/id")))),
                ("routes" = (operation_id = "add_route", parameters(("id" = "$response.body#/result/id")))),
            )),
        (status = 400, description = "Invalid name or body", body = ErrorEnvelope),
        (status = 409, description = "The name is taken", body = ErrorEnvelope),
        Denied,
    ))]
async fn create_node(State(api): State<Arc<Api>>, Body(b): Body<NewNode>) -> Res<NodeCreated> {
    let tags = super::policies::creation_tags(b.tags.as_ref())?;
    let n = api
        .hub
        .registry
        .create_node_tagged(b.name.trim(), b.ha, tags)?;
    tracing::info!(node = %n.name, id = %n.id, ha = n.ha, "node created");
    let token = api.token(Kind::Node, n.id);
    Ok(Reply(
        StatusCode::CREATED,
        NodeCreated {
            node: NodeView::from(&n),
            token,
        },
    ))
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, description = "Every node", body = Envelope<Vec<NodeView>>), Denied))]
async fn list_nodes(State(api): State<Arc<Api>>) -> Res<Vec<NodeView>> {
    let nodes = api.hub.registry.list_nodes()?;
    Ok(ok(nodes.iter().map(NodeView::from).collect()))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes", security(("bearer" = [])),
    params(IdPath),
    responses(
        (status = 200, description = "The node", body = Envelope<NodeView>),
        (status = 404, description = "No such node", body = ErrorEnvelope),
        Denied,
    ))]
async fn show_node(State(api): State<Arc<Api>>, Path(p): Path<IdPath>) -> Res<NodeView> {
    let n = api.hub.registry.node(parse_id("node", &p.id)?)?;
    Ok(ok(NodeView::from(&n)))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes", security(("bearer" = [])),
    params(IdPath),
    responses(
        (status = 200, description = "Deleted with its routes and Mesh IPs; its replicas are disconnected",
            body = Envelope<Deleted>),
        (status = 404, description = "No such node", body = ErrorEnvelope),
        (status = 409, description = "A policy references the node", body = ErrorEnvelope),
        Denied,
    ))]
async fn delete_node(State(api): State<Arc<Api>>, Path(p): Path<IdPath>) -> Res<Deleted> {
    let id = parse_id("node", &p.id)?;
    let guard = super::policies::guard_delete(&api, id, "node")?;
    let n = api.hub.registry.delete_node(id)?;
    drop(guard);
    tracing::info!(node = %n.name, id = %n.id, "node deleted");
    Ok(ok(Deleted {
        id: n.id.to_string(),
    }))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/token", tag = "nodes", security(("bearer" = [])),
    params(IdPath),
    responses(
        (status = 200, description = "The node's token (all replicas use it)", body = Envelope<String>),
        (status = 404, description = "No such node", body = ErrorEnvelope),
        Denied,
    ))]
async fn node_token(State(api): State<Arc<Api>>, Path(p): Path<IdPath>) -> Res<String> {
    let n = api.hub.registry.node(parse_id("node", &p.id)?)?;
    Ok(ok(api.token(Kind::Node, n.id)))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/connections", tag = "nodes", security(("bearer" = [])),
    params(IdPath),
    responses(
        (status = 200, description = "The node's connected replicas, oldest first", body = Envelope<Vec<Replica>>),
        (status = 404, description = "No such node", body = ErrorEnvelope),
        Denied,
    ))]
async fn connections(State(api): State<Arc<Api>>, Path(p): Path<IdPath>) -> Res<Vec<Replica>> {
    let n = api.hub.registry.node(parse_id("node", &p.id)?)?;
    Ok(ok(api
        .hub
        .connections(n.id)
        .into_iter()
        .map(Replica::from)
        .collect()))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/events", tag = "nodes", security(("bearer" = [])),
    params(IdPath),
    responses(
        (status = 200, description = "The node's recent election events, oldest first", body = Envelope<Vec<Event>>),
        (status = 404, description = "No such node", body = ErrorEnvelope),
        Denied,
    ))]
async fn events(State(api): State<Arc<Api>>, Path(p): Path<IdPath>) -> Res<Vec<Event>> {
    let n = api.hub.registry.node(parse_id("node", &p.id)?)?;
    Ok(ok(api
        .hub
        .events
        .of(n.id)
        .into_iter()
        .map(Event::from)
        .collect()))
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/routes", tag = "routes", security(("bearer" = [])),
    params(IdPath),
    request_body = NewRoute,
    responses(
        (status = 201, description = "Advertised; every agent gets the new route table", body = Envelope<RouteView>,
            links(("delete" = (operation_id = "delete_route", parameters(
                ("id" = "$request.path.id"), ("route_id" = "$response.body#/result/id")))))),
        (status = 400, description = "Not a CIDR, overlapping another node's route, or inside the mesh range",
            body = ErrorEnvelope),
        (status = 404, description = "No such node", body = ErrorEnvelope),
        (status = 409, description = "Over the per-node or per-mesh route limit", body = ErrorEnvelope),
        Denied,
    ))]
async fn add_route(
    State(api): State<Arc<Api>>,
    Path(p): Path<IdPath>,
    Body(b): Body<NewRoute>,
) -> Res<RouteView> {
    let node = parse_id("node", &p.id)?;
    let r = api.hub.registry.add_route(node, &b.network, &b.comment)?;
    tracing::info!(%node, network = %r.network, "route added");
    Ok(Reply(StatusCode::CREATED, RouteView::from(&r)))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/routes", tag = "routes", security(("bearer" = [])),
    params(IdPath),
    responses(
        (status = 200, description = "The node's routes", body = Envelope<Vec<RouteView>>),
        (status = 404, description = "No such node", body = ErrorEnvelope),
        Denied,
    ))]
async fn list_routes(State(api): State<Arc<Api>>, Path(p): Path<IdPath>) -> Res<Vec<RouteView>> {
    let routes = api.hub.registry.routes_of(parse_id("node", &p.id)?)?;
    Ok(ok(routes.iter().map(RouteView::from).collect()))
}

#[utoipa::path(put, path = "/api/v1/nodes/{id}/routes", tag = "routes", security(("bearer" = [])),
    params(IdPath),
    request_body = RouteList,
    responses(
        (status = 200, description = "The node now advertises exactly these; every agent gets the new table",
            body = Envelope<Vec<RouteView>>),
        (status = 400, description = "A network that is not a CIDR, is listed twice, overlaps another node's route or lies inside the mesh range; nothing was changed",
            body = ErrorEnvelope),
        (status = 404, description = "No such node", body = ErrorEnvelope),
        (status = 409, description = "Over the per-node or per-mesh route limit; nothing was changed", body = ErrorEnvelope),
        Denied,
    ))]
async fn set_routes(
    State(api): State<Arc<Api>>,
    Path(p): Path<IdPath>,
    Body(b): Body<RouteList>,
) -> Res<Vec<RouteView>> {
    let node = parse_id("node", &p.id)?;
    let wanted: Vec<(String, String)> = b
        .routes
        .into_iter()
        .map(|r| (r.network, r.comment))
        .collect();
    let routes = api.hub.registry.set_routes(node, &wanted)?;
    tracing::info!(%node, routes = routes.len(), "route list replaced");
    Ok(ok(routes.iter().map(RouteView::from).collect()))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}/routes/{route_id}", tag = "routes", security(("bearer" = [])),
    params(RoutePath),
    responses(
        (status = 200, description = "Withdrawn; the deleted route", body = Envelope<RouteView>),
        (status = 404, description = "No such node or route", body = ErrorEnvelope),
        Denied,
    ))]
async fn delete_route(State(api): State<Arc<Api>>, Path(p): Path<RoutePath>) -> Res<RouteView> {
    let r = api
        .hub
        .registry
        .delete_route(parse_id("node", &p.id)?, parse_id("route", &p.route_id)?)?;
    Ok(ok(RouteView::from(&r)))
}

#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", security(("bearer" = [])),
    request_body = NewDevice,
    responses(
        (status = 201, description = "Enrolled with a Mesh IP; the token is what its agent runs with",
            body = Envelope<DeviceCreated>,
            links(("delete" = (operation_id = "delete_device", parameters(("id" = "$response.body#/result/id")))))),
        (status = 400, description = "Invalid name or body", body = ErrorEnvelope),
        (status = 409, description = "The name is taken, or no Mesh IP is left", body = ErrorEnvelope),
        Denied,
    ))]
async fn create_device(
    State(api): State<Arc<Api>>,
    Body(b): Body<NewDevice>,
) -> Res<DeviceCreated> {
    let tags = super::policies::creation_tags(b.tags.as_ref())?;
    let d = api.hub.registry.create_device_tagged(b.name.trim(), tags)?;
    tracing::info!(device = %d.name, id = %d.id, mesh_ip = %d.mesh_ip, "device enrolled");
    let token = api.token(Kind::Device, d.id);
    Ok(Reply(
        StatusCode::CREATED,
        DeviceCreated {
            device: DeviceView::from(&d),
            token,
        },
    ))
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", security(("bearer" = [])),
    responses((status = 200, description = "Every device with its Mesh IP", body = Envelope<Vec<DeviceView>>), Denied))]
async fn list_devices(State(api): State<Arc<Api>>) -> Res<Vec<DeviceView>> {
    let devices = api.hub.registry.list_devices()?;
    Ok(ok(devices.iter().map(DeviceView::from).collect()))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices", security(("bearer" = [])),
    params(IdPath),
    responses(
        (status = 200, description = "Deleted; its agent is disconnected", body = Envelope<Deleted>),
        (status = 404, description = "No such device", body = ErrorEnvelope),
        (status = 409, description = "A policy references the device", body = ErrorEnvelope),
        Denied,
    ))]
async fn delete_device(State(api): State<Arc<Api>>, Path(p): Path<IdPath>) -> Res<Deleted> {
    let id = parse_id("device", &p.id)?;
    let guard = super::policies::guard_delete(&api, id, "device")?;
    let d = api.hub.registry.delete_device(id)?;
    drop(guard);
    Ok(ok(Deleted {
        id: d.id.to_string(),
    }))
}

/// The authenticated resource routes, with their documentation.
pub fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new()
        .routes(routes!(list_nodes, create_node))
        .routes(routes!(show_node, delete_node))
        .routes(routes!(node_token))
        .routes(routes!(connections))
        .routes(routes!(events))
        .routes(routes!(list_routes, add_route, set_routes))
        .routes(routes!(delete_route))
        .routes(routes!(list_devices, create_device))
        .routes(routes!(delete_device))
}
