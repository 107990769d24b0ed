//! The public probes: readiness, Prometheus metrics and the JSON counters. They need no
//! token (monitoring systems scrape them) and show no secrets: counts only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use meshgate_proto::Id;

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

/// Connected participants, and connected replicas per (node name, `ha_status`). One
/// pass over the census and one over the nodes: linear in the number of nodes.
fn replica_census(api: &Api) -> (usize, Vec<(String, &'static str, usize)>) {
    let (participants, per) = api.hub.census();
    let nodes = api.hub.registry.list_nodes().unwrap_or_default();
    (participants, named(per, nodes))
}

/// The census with node names for ids (the id where a node is gone).
fn named(
    per: Vec<(Id, &'static str, usize)>,
    nodes: Vec<crate::registry::NodeRecord>,
) -> Vec<(String, &'static str, usize)> {
    let names: HashMap<Id, String> = nodes.into_iter().map(|n| (n.id, n.name)).collect();
    per.into_iter()
        .map(|(id, st, n)| {
            let name = names.get(&id).cloned().unwrap_or_else(|| id.to_string());
            (name, st, n)
        })
        .collect()
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
    let mut text = api
        .hub
        .metrics
        .prometheus(participants, api.admission.counts(), &replicas);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn census_rows_get_their_node_names_and_a_gone_node_its_id() {
        let nodes = (0..3u8)
            .map(|i| crate::registry::NodeRecord {
                id: Id([i; 16]),
                name: format!("gw{i}"),
                ha: true,
                created_at: String::new(),
                token_hash: [0; 32],
                tags: Vec::new(),
            })
            .collect();
        let gone = Id([9; 16]);
        let per = vec![
            (Id([2; 16]), "active", 1),
            (gone, "passive", 2),
            (Id([0; 16]), "passive", 3),
        ];
        assert_eq!(
            named(per, nodes),
            vec![
                ("gw2".to_owned(), "active", 1),
                (gone.to_string(), "passive", 2),
                ("gw0".to_owned(), "passive", 3),
            ]
        );
    }
}
