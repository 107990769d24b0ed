//! `GET /api/v1/cluster`: the coordinator cluster's members (name, public and API
//! addresses, `up`/`down`), which member decides elections now (etcd's election), and
//! etcd's health per endpoint. A lone coordinator answers with itself.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schema::{Denied, Envelope, Reply, ok};
use super::views::ClusterStatus;
use super::{Api, ApiError};

#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster", security(("bearer" = [])),
    responses((status = 200, description = "The members, the decider and etcd's health",
        body = Envelope<ClusterStatus>), Denied))]
async fn cluster(State(api): State<Arc<Api>>) -> Result<Reply<ClusterStatus>, ApiError> {
    let status = serde_json::from_value(api.cluster.status().await).map_err(|e| {
        tracing::error!(error = %e, "the cluster status does not have its documented shape");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            1006,
            format!("cluster status: {e}"),
        )
    })?;
    Ok(ok(status))
}

/// The cluster route (behind the admin token), with its documentation.
pub fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new().routes(routes!(cluster))
}
