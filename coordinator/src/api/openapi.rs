//! The OpenAPI 3.1 document, derived from the handlers: each handler's
//! `#[utoipa::path]` names its path, parameters, body and answers by their Rust types
//! (see [`super::schema`]), and `utoipa_axum` registers a route and its documentation in
//! one call. Served at `GET /api/v1/openapi.json`, without a token.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Api;

/// The document's frame; the paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "meshgate coordinator",
        description = "Nodes, their routes and replicas, devices, and the coordinator's probes. \
            Calls under /api/v1 except stats and this document need \
            `Authorization: Bearer <admin-token>` (the token is in the data directory's \
            `admin-token`). Every answer is the envelope \
            `{success, errors: [{code, message}], messages, result}`."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "nodes", description = "Gateway nodes and their replicas"),
        (name = "routes", description = "Networks a node advertises into the mesh"),
        (name = "devices", description = "Client devices"),
        (name = "probes", description = "Readiness, metrics and counters (no token)"),
        (name = "policies", description = "Network policies and their settings"),
        (name = "cluster", description = "The coordinators sharing this control plane"),
        (name = "console", description = "What the web console reads"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme that the handlers' `security(("bearer" = []))` names.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON, as served.
pub fn to_json(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut json = serde_json::to_value(doc).expect("the document is plain data and serialises");
    camel_case_links(&mut json);
    json
}

/// utoipa 5.5 writes a Link object's fields in snake case (`operation_id`); OpenAPI
/// names them in camel case (`operationId`), and validators reject the former.
fn camel_case_links(json: &mut serde_json::Value) {
    let Some(paths) = json.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(v) = link.remove(snake) {
                link.insert(camel.to_owned(), v);
            }
        }
    }
}

/// The finished document as JSON, shared with the handler that serves it.
#[derive(Clone)]
pub struct Document(pub Arc<String>);

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "probes",
    responses((status = 200, description = "This document (OpenAPI 3.1)",
        body = Object, content_type = "application/json")))]
async fn document(Extension(doc): Extension<Document>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_owned(),
    )
        .into_response()
}

/// The route serving the document (public).
pub fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new().routes(routes!(document))
}
