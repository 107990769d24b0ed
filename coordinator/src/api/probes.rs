//! The public probes: readiness, Prometheus metrics and the JSON counters. They need no
//! token (monitoring systems scrape them) and show no secrets: counts only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Api;
use super::schema::{Envelope, Readiness, ReplicaCount, Reply, Stats, ok};

#[utoipa::path(get, path = "/ready", tag = "probes",
    responses(
        (status = 200, description = "Every check is ok", body = Envelope<Readiness>),
        (status = 503, description = "A check is failing; `checks` says which", body = Envelope<Readiness>),
    ))]
async fn ready(State(api): State<Arc<Api>>) -> Reply<Readiness> {
    let store = match api.hub.registry.store().revision() {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("failing: {e}"),
    };
    let quic = if api.quic_ready.load(Relaxed) {
        "ok"
    } else {
        "not listening"
    };
    let mut checks = BTreeMap::from([
        ("store".to_owned(), store),
        ("quic_listener".to_owned(), quic.to_owned()),
    ]);
    if let Some(cluster) = api.cluster.ready_check() {
        checks.insert("cluster".to_owned(), cluster);
    }
    let ready = checks.values().all(|v| v == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Reply(status, Readiness { ready, checks })
}

/// Connected participants, and connected replicas per (node name, `ha_status`).
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

#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        body = String, content_type = "text/plain")))]
async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let text = metrics_text(&api);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The Prometheus text `/metrics` serves (also written into sysdumps).
pub(super) fn metrics_text(api: &Api) -> String {
    let (participants, replicas) = replica_census(api);
    let mut text = api.hub.metrics.prometheus(participants, &replicas);
    text.push_str(&super::policies::prometheus(api));
    text
}

#[utoipa::path(get, path = "/api/v1/stats", tag = "probes",
    responses((status = 200, description = "Counters since start", body = Envelope<Stats>)))]
async fn stats(State(api): State<Arc<Api>>) -> Reply<Stats> {
    ok(stats_of(&api))
}

/// The counters `/api/v1/stats` answers with (also written into sysdumps).
pub(super) fn stats_of(api: &Api) -> Stats {
    let (participants, replicas) = replica_census(api);
    let m = &api.hub.metrics;
    Stats {
        participants_connected: participants,
        packets_relayed: m.packets.load(Relaxed),
        bytes_relayed: m.bytes.load(Relaxed),
        icmp_errors_sent: m.icmp_errors.load(Relaxed),
        failovers: m.failovers.load(Relaxed),
        registrations: m.registrations.load(Relaxed),
        auth_failures: m.auth_failures.load(Relaxed),
        drops: m.drops().map(|(k, v)| (k.to_owned(), v)).collect(),
        replicas: replicas
            .into_iter()
            .map(|(node, ha_status, count)| ReplicaCount {
                node,
                ha_status: ha_status.to_owned(),
                count,
            })
            .collect(),
    }
}

/// The probes, with their documentation.
pub fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new()
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(stats))
}
