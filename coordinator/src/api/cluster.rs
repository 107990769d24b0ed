//! `GET /api/v1/cluster`: the coordinator cluster's members (name, public and API
//! addresses, `up`/`down`), which member decides elections now (etcd's election), and
//! etcd's health per endpoint. A lone coordinator answers with itself.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::{Api, ok};

/// The handler.
pub(super) async fn cluster(State(api): State<Arc<Api>>) -> Response {
    ok(StatusCode::OK, api.cluster.status().await)
}
