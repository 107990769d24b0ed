//! The REST API (axum): the Cloudflare-style envelope, bearer admin token, and the
//! public probes `/ready` and `/metrics`. Resource handlers live in [`handlers`].

mod cluster;
mod handlers;
mod map;
mod openapi;
mod policies;
mod sysdump;
mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;

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
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "API request failed");
        }
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "success": false,
            "errors": [{"code": self.code, "message": self.message}],
            "messages": [],
            "result": null,
        });
        (self.status, axum::Json(body)).into_response()
    }
}

/// A success envelope.
pub fn ok<T: Serialize>(status: StatusCode, result: T) -> Response {
    let body = json!({"success": true, "errors": [], "messages": [], "result": result});
    (status, axum::Json(body)).into_response()
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

async fn ready(State(api): State<Arc<Api>>) -> Response {
    let store = match api.hub.registry.store().revision() {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("failing: {e}"),
    };
    let quic = if api.quic_ready.load(Relaxed) {
        "ok"
    } else {
        "not listening"
    };
    let mut checks = json!({"store": store, "quic_listener": quic});
    if let Some(cluster) = api.cluster.ready_check() {
        checks["cluster"] = cluster.into();
    }
    let all = checks
        .as_object()
        .is_some_and(|c| c.values().all(|v| v == "ok"));
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    ok(status, json!({"ready": all, "checks": checks}))
}

fn replica_census(api: &Api) -> (usize, Vec<(String, &'static str, usize)>) {
    let (participants, per) = api.hub.census();
    let nodes = api.hub.registry.list_nodes().unwrap_or_default();
    let named = per
        .into_iter()
        .map(|(id, st, n)| {
            let name = nodes
                .iter()
                .find(|x| x.id == id)
                .map_or_else(|| id.to_string(), |x| x.name.clone());
            (name, st, n)
        })
        .collect();
    (participants, named)
}

fn metrics_text(api: &Api) -> String {
    let (participants, replicas) = replica_census(api);
    let mut text = api.hub.metrics.prometheus(participants, &replicas);
    text.push_str(&policies::prometheus(api));
    text
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let text = metrics_text(&api);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn stats(State(api): State<Arc<Api>>) -> Response {
    ok(StatusCode::OK, stats_json(&api))
}

fn stats_json(api: &Api) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed as R;
    let (participants, replicas) = replica_census(api);
    let m = &api.hub.metrics;
    let drops: serde_json::Map<String, serde_json::Value> =
        m.drops().map(|(k, v)| (k.to_owned(), v.into())).collect();
    let replicas: Vec<_> = replicas
        .iter()
        .map(|(n, s, c)| json!({"node": n, "ha_status": s, "count": c}))
        .collect();
    json!({
        "participants_connected": participants,
        "packets_relayed": m.packets.load(R),
        "bytes_relayed": m.bytes.load(R),
        "icmp_errors_sent": m.icmp_errors.load(R),
        "failovers": m.failovers.load(R),
        "registrations": m.registrations.load(R),
        "auth_failures": m.auth_failures.load(R),
        "drops": drops,
        "replicas": replicas,
    })
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, 1002, "no such endpoint")
}

/// The router.
pub fn router(api: Arc<Api>) -> Router {
    let protected = handlers::routes()
        .merge(policies::routes())
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/map", get(map::map))
        .route("/api/v1/support/sysdump", get(sysdump::download))
        .route("/api/v1/cluster", get(cluster::cluster))
        .layer(middleware::from_fn_with_state(api.clone(), auth));
    Router::new()
        .merge(protected)
        .merge(ui::routes())
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(api)
}
