//! Support archives: `GET /api/v1/support/sysdump` from the running coordinator, and
//! [`offline`] (`meshgate-coordinator sysdump --data-dir DIR`) from a stopped one's data
//! directory. Both hold versions, configuration, nodes, replicas, routes, devices and
//! events; the live one adds connections, counters, metrics and the recent log lines.
//! Secrets never go in: the admin token, the token key, the TLS key and every token are
//! never read into the archive, and [`meshgate_sysdump`] redacts them (and anything
//! shaped like them) from every file in case a log line or setting carried one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use meshgate_proto::Kind;
use meshgate_sysdump::Archive;
use serde_json::{Value, json};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::probes::{metrics_text, stats_of};
use super::schema::{Denied, DeviceView, NodeView, RouteView};
use super::{Api, ApiError};
use crate::hub::Hub;
use crate::registry::Registry;

/// `GET /api/v1/support/sysdump`: a `tar.gz`.
#[utoipa::path(get, path = "/api/v1/support/sysdump", tag = "console", security(("bearer" = [])),
    responses((status = 200, description = "A support archive (tar.gz): versions, configuration, \
        nodes, replicas, routes, events, counters, metrics, recent logs; secrets redacted",
        body = Vec<u8>, content_type = "application/gzip"), Denied))]
async fn download(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let cluster = api.cluster.status().await;
    let built = tokio::task::spawn_blocking(move || live(&api, &cluster))
        .await
        .map_err(|e| anyhow::anyhow!("sysdump task failed: {e}"))
        .and_then(|r| r);
    let bytes = built.map_err(|e| {
        tracing::error!(error = format!("{e:#}"), "sysdump failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            1006,
            format!("sysdump failed: {e:#}"),
        )
    })?;
    let name = format!("attachment; filename=\"{}.tar.gz\"", top_dir());
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        bytes,
    )
        .into_response())
}

fn live(api: &Api, cluster: &Value) -> anyhow::Result<Vec<u8>> {
    let reg = &api.hub.registry;
    let data_dir = own_data_dir();
    let mut secrets = data_dir.as_deref().map(dir_secrets).unwrap_or_default();
    secrets.push(api.admin_token.clone());
    for n in reg.list_nodes()? {
        secrets.push(token(api, Kind::Node, n.id));
    }
    for d in reg.list_devices()? {
        secrets.push(token(api, Kind::Device, d.id));
    }
    let mut a = Archive::new(&top_dir(), secrets);
    common(&mut a, data_dir.as_deref())?;
    registry(&mut a, reg, Some(&api.hub))?;
    a.json("cluster.json", cluster)?;
    a.json("stats.json", &serde_json::to_value(stats_of(api))?)?;
    a.text("metrics.txt", &metrics_text(api))?;
    a.text("logs/coordinator.log", &crate::sysdump_logs::snapshot())?;
    Ok(a.finish()?)
}

fn token(api: &Api, kind: Kind, id: meshgate_proto::Id) -> String {
    api.hub
        .registry
        .token(kind, id, api.cluster.token_addrs(), api.fingerprint)
        .encode()
}

/// A support archive from the data directory of a coordinator that is not running (the
/// store admits one process at a time; ask a running one through the API).
pub fn offline(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let store_path = data_dir.join("store.redb");
    anyhow::ensure!(
        store_path.is_file(),
        "{} has no store.redb: not a coordinator data directory",
        data_dir.display()
    );
    let key: [u8; 32] = std::fs::read(data_dir.join("token-key"))
        .context("failed to read token-key")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("token-key must be 32 bytes"))?;
    let store = crate::store::redb::RedbStore::open(&store_path).with_context(|| {
        format!(
            "failed to open {} (a running coordinator holds it: use GET /api/v1/support/sysdump)",
            store_path.display()
        )
    })?;
    let ipam = crate::ipam::Ipam::new("100.96.0.0/12".parse().expect("a valid CIDR literal"))
        .context("IPAM")?;
    let reg = Registry::new(Arc::new(store), ipam, key);
    let mut a = Archive::new(&top_dir(), dir_secrets(data_dir));
    a.text(
        "NOTE",
        "Written offline from the data directory: no live connections, counters, metrics or logs.\n",
    )?;
    common(&mut a, Some(data_dir))?;
    registry(&mut a, &reg, None)?;
    Ok(a.finish()?)
}

fn top_dir() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    format!("meshgate-sysdump-{}", now.replace(':', ""))
}

/// The data directory this process serves, from its own command line or environment.
fn own_data_dir() -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    let from_args = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--data-dir=")
            .map(str::to_owned)
            .or_else(|| {
                (a == "--data-dir")
                    .then(|| args.get(i + 1).cloned())
                    .flatten()
            })
    });
    from_args
        .or_else(|| std::env::var("MESHGATE_DATA_DIR").ok())
        .map(PathBuf::from)
}

/// The data directory's secrets in the forms they could appear in: the admin token, and
/// the token key as hex and base64.
fn dir_secrets(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string(dir.join("admin-token")) {
        out.push(t.trim().to_owned());
    }
    if let Ok(k) = std::fs::read(dir.join("token-key")) {
        out.push(k.iter().map(|b| format!("{b:02x}")).collect());
        out.push(base64::engine::general_purpose::STANDARD.encode(&k));
        out.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&k));
    }
    out
}

/// Versions, configuration (this process's arguments and `MESHGATE_*` environment) and a
/// listing of the data directory (names, sizes and modes; never contents).
fn common(a: &mut Archive, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let mut versions = meshgate_sysdump::host_info();
    versions.insert(
        "meshgate_coordinator".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    versions.insert(
        "protocol_version".into(),
        meshgate_proto::PROTOCOL_VERSION.into(),
    );
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    versions.insert("generated_at".into(), now.to_string().into());
    a.json("versions.json", &Value::Object(versions))?;
    let env: serde_json::Map<String, Value> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MESHGATE_") || k == "RUST_LOG")
        .map(|(k, v)| (k, v.into()))
        .collect();
    let args: Vec<String> = std::env::args().collect();
    a.json("config.json", &json!({"args": args, "env": env}))?;
    a.text("config-args.txt", &(args.join(" ") + "\n"))?;
    if let Some(dir) = data_dir {
        a.text("data-dir.txt", &meshgate_sysdump::dir_listing(dir))?;
    }
    Ok(())
}

/// Nodes (with epoch, known replicas, routes and, live, connections and events),
/// devices, routes, network policies and settings, and the store's revision.
fn registry(a: &mut Archive, reg: &Registry, hub: Option<&Hub>) -> anyhow::Result<()> {
    let mut nodes = Vec::new();
    for n in reg.list_nodes()? {
        let mut v = serde_json::to_value(NodeView::from(&n))?;
        // Live, the election's epoch (under `--etcd` the registry's is not the cluster's).
        v["epoch"] = hub
            .and_then(|h| h.epoch(n.id))
            .or_else(|| reg.epoch(n.id).ok())
            .into();
        v["replicas_known"] = reg
            .replicas(n.id)?
            .iter()
            .map(|r| json!({"replica_id": r.replica_id, "mesh_ip": r.mesh_ip.to_string()}))
            .collect();
        v["routes"] = views(reg.routes_of(n.id)?.iter().map(RouteView::from))?;
        if let Some(hub) = hub {
            v["connections"] = json!(hub.connections(n.id));
            v["events"] = json!(hub.events.of(n.id));
        }
        nodes.push(v);
    }
    a.json("nodes.json", &Value::Array(nodes))?;
    let devices = views(reg.list_devices()?.iter().map(DeviceView::from))?;
    a.json("devices.json", &devices)?;
    let routes = views(reg.all_routes()?.iter().map(RouteView::from))?;
    a.json("routes.json", &routes)?;
    let book = crate::policy::book::Book::default();
    let policies = book
        .list(reg)
        .map_err(|e| anyhow::anyhow!("policies: {e}"))?;
    let settings = book
        .settings(reg)
        .map_err(|e| anyhow::anyhow!("settings: {e}"))?;
    a.json(
        "policies.json",
        &json!({"settings": settings, "policies": policies}),
    )?;
    a.json(
        "store.json",
        &json!({"revision": reg.store().revision().ok()}),
    )?;
    Ok(())
}

/// API views as one JSON array.
fn views<T: serde::Serialize>(items: impl Iterator<Item = T>) -> serde_json::Result<Value> {
    items
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// The sysdump route (behind the admin token), with its documentation.
pub fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new().routes(routes!(download))
}
