//! The REST API (axum): the Cloudflare-style envelope, bearer admin token, and the
//! public probes. Resource handlers live in [`handlers`], their bodies in [`schema`] and
//! [`views`]; the OpenAPI document ([`openapi`]) is derived from all of them.

mod cluster;
mod handlers;
mod logs;
mod map;
mod openapi;
mod policies;
pub mod policy_schema;
mod probes;
pub mod schema;
mod sysdump;
mod ui;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub use self::sysdump::offline as offline_sysdump;
use crate::hub::Hub;
use crate::registry::RegistryError;

/// Shared state of the API.
pub struct Api {
    /// Live state and registry.
    pub hub: Arc<Hub>,
    /// Bearer token.
    pub admin_token: String,
    /// The coordinator cluster (or this coordinator alone): what tokens tell agents to
    /// dial, and `GET /api/v1/cluster`.
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Certificate fingerprint tokens pin.
    pub fingerprint: [u8; 32],
    /// Set once the QUIC listener is bound.
    pub quic_ready: AtomicBool,
    /// The QUIC endpoint's connection counts (for `/metrics`).
    pub admission: crate::admission::Admissions,
}

/// An API error: a 4xx/5xx with an envelope saying what is wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 1001, message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let (status, code) = match &e {
            RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, 1002),
            RegistryError::Conflict(_) => (StatusCode::CONFLICT, 1003),
            RegistryError::Invalid(_) => (StatusCode::BAD_REQUEST, 1001),
            RegistryError::Route(_) => (StatusCode::BAD_REQUEST, 1004),
            RegistryError::Ipam(_) => (StatusCode::CONFLICT, 1005),
            RegistryError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 1006),
            RegistryError::Limit(_) => (StatusCode::CONFLICT, 1007),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "API request failed");
        }
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = schema::ErrorEnvelope {
            success: false,
            errors: vec![schema::ErrorItem {
                code: self.code,
                message: self.message,
            }],
            messages: Vec::new(),
            result: None,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

async fn auth(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            1000,
            "missing admin token: send Authorization: Bearer <admin-token>",
        )
        .into_response(),
        Some(t) if !ct_eq(t.trim().as_bytes(), api.admin_token.as_bytes()) => {
            ApiError::new(StatusCode::FORBIDDEN, 1000, "wrong admin token").into_response()
        }
        Some(_) => next.run(req).await,
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, 1002, "no such endpoint")
}

/// Every documented route: the list a new handler file adds its `routes()` to. With
/// `api`, the protected part is behind the admin token; without, only the document is
/// wanted.
fn documented(api: Option<&Arc<Api>>) -> OpenApiRouter<Arc<Api>> {
    let mut protected = handlers::routes()
        .merge(policies::routes())
        .merge(cluster::routes())
        .merge(map::routes())
        .merge(logs::routes())
        .merge(sysdump::routes());
    if let Some(api) = api {
        protected = protected.layer(middleware::from_fn_with_state(api.clone(), auth));
    }
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(protected)
        .merge(probes::routes())
        .merge(openapi::routes())
}

/// The router: the documented routes (serving their own document) and the console.
pub fn router(api: Arc<Api>) -> Router {
    let (routes, doc) = documented(Some(&api)).split_for_parts();
    let doc = openapi::Document(Arc::new(openapi::to_json(&doc).to_string()));
    routes
        .layer(Extension(doc))
        .merge(ui::routes())
        .fallback(not_found)
        .with_state(api)
}

/// The OpenAPI document as [`router`] serves it, built without a running coordinator.
pub fn openapi_document() -> serde_json::Value {
    openapi::to_json(&documented(None).into_openapi())
}
