//! `GET /api/v1/nodes/{id}/logs`: the combined log of a node's replicas — the warnings,
//! errors and role flips their agents sent over the control stream — each line tagged
//! with the replica it came from and numbered in order of arrival, so a client polls
//! with `since` for what is new. What is kept, and its bounds, is
//! [`crate::hub::logbook`]; with a cluster every member keeps its own copy (agents send
//! their records to every coordinator they are connected to).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use meshgate_proto::id::valid_replica_id;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::handlers::parse_id;
use super::schema::{Denied, Envelope, ErrorEnvelope, IdPath, Reply, ok};
use super::{Api, ApiError};
use crate::hub::logbook::{self, Line};

/// Lines answered when the query does not say.
const DEFAULT_LIMIT: usize = 200;
/// Most lines one answer carries: every line a node can hold.
const MAX_LIMIT: usize = logbook::PER_REPLICA * logbook::REPLICAS;

/// The query of `GET /api/v1/nodes/{id}/logs`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Only this replica's lines (a replica id, as `connections` lists them).
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64)]
    pub replica: Option<String>,
    /// Only lines whose `seq` is greater: pass the last `seq` you saw to get what is new.
    /// (Signed, as the document's `int64` is: sequence numbers never get near the top.)
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// At most this many lines, the newest (default 200).
    #[param(minimum = 1, maximum = 2048)]
    pub limit: Option<usize>,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Something failed.
    Error,
    /// Something is wrong or degraded.
    Warn,
    /// A role flip (target `meshgate_agent::flip`) or another notable event.
    Info,
}

impl From<meshgate_proto::LogLevel> for Level {
    fn from(l: meshgate_proto::LogLevel) -> Self {
        match l {
            meshgate_proto::LogLevel::Error => Self::Error,
            meshgate_proto::LogLevel::Warn => Self::Warn,
            meshgate_proto::LogLevel::Info => Self::Info,
        }
    }
}

/// One line of a node's combined replica log.
#[derive(Serialize, ToSchema)]
pub struct LogLine {
    /// Its number in the order the coordinator received lines (for `since`).
    pub seq: u64,
    /// The replica it came from.
    pub replica: String,
    /// When the replica's agent logged it (the agent's clock), microseconds since the
    /// Unix epoch.
    pub at_unix_us: u64,
    /// When this coordinator received it, microseconds since the Unix epoch.
    pub received_unix_us: u64,
    /// `error`, `warn` or `info`.
    pub level: Level,
    /// The module that logged it (`meshgate_agent::flip` for role flips and handovers;
    /// `meshgate_coordinator::logs` for the coordinator's note of lines lost on the way).
    pub target: String,
    /// The message and its fields (`text key=value …`), at most 1,024 bytes.
    pub message: String,
}

impl From<Line> for LogLine {
    fn from(l: Line) -> Self {
        Self {
            seq: l.seq,
            replica: l.replica,
            at_unix_us: l.at_unix_us,
            received_unix_us: l.received_unix_us,
            level: l.level.into(),
            target: l.target,
            message: l.text,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/logs", tag = "nodes", security(("bearer" = [])),
    params(IdPath, LogParams),
    responses(
        (status = 200, description = "The node's recent replica log lines that match, oldest first (newest last)",
            body = Envelope<Vec<LogLine>>),
        (status = 400, description = "An invalid replica id, since or limit", body = ErrorEnvelope),
        (status = 404, description = "No such node", body = ErrorEnvelope),
        Denied,
    ))]
async fn node_logs(
    State(api): State<Arc<Api>>,
    Path(p): Path<IdPath>,
    query: Result<Query<LogParams>, QueryRejection>,
) -> Result<Reply<Vec<LogLine>>, ApiError> {
    let node = api.hub.registry.node(parse_id("node", &p.id)?)?;
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    if let Some(r) = q.replica.as_deref().filter(|r| !valid_replica_id(r)) {
        return Err(ApiError::bad_request(format!(
            "replica {r:?} is not a replica id (1-64 of A-Z a-z 0-9 . _ -)"
        )));
    }
    let since = q
        .since
        .map(|s| {
            u64::try_from(s)
                .map_err(|_| ApiError::bad_request(format!("since must be 0 or more, not {s}")))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}, not {limit}"
        )));
    }
    let lines = api.hub.node_logs(
        node.id,
        logbook::Query {
            replica: q.replica.as_deref(),
            since,
            limit,
        },
    );
    Ok(ok(lines.into_iter().map(LogLine::from).collect()))
}

/// The log route (behind the admin token), with its documentation.
pub fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new().routes(routes!(node_logs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_limit_is_the_enforced_one() {
        assert_eq!(
            MAX_LIMIT, 2048,
            "update #[param(maximum)] of LogParams::limit"
        );
    }
}
