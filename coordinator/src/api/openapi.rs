//! A hand-written OpenAPI 3.0 document for the contract in DESIGN.md. Hand-written
//! rather than derived, because the contract is the fixed point and the code follows it.

use axum::Json;
use serde_json::{Value, json};

fn op(summary: &str, body: Option<Value>) -> Value {
    let mut o = json!({
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {
            "200": {"description": "success envelope", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}},
            "4XX": {"description": "error envelope saying what is wrong"}
        }
    });
    if let Some(schema) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    o
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<Value> {
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "meshgate coordinator", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Envelope": {"type": "object", "properties": {
                "success": {"type": "boolean"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}}},
                "messages": {"type": "array"},
                "result": {}
            }}}
        },
        "paths": {
            "/api/v1/nodes": {
                "get": op("List nodes", None),
                "post": op("Create a node; result has id, name, ha, token", Some(json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "ha": {"type": "boolean"}}})))
            },
            "/api/v1/nodes/{id}": {"parameters": id, "get": op("Show a node", None), "delete": op("Delete a node, its routes and Mesh IPs", None)},
            "/api/v1/nodes/{id}/token": {"parameters": id, "get": op("The node's token", None)},
            "/api/v1/nodes/{id}/connections": {"parameters": id, "get": op("Connected replicas with ha_status", None)},
            "/api/v1/nodes/{id}/events": {"parameters": id, "get": op("Recent election events (registered, disconnected, lease_expired, handover_requested, promoted) with at_unix_us", None)},
            "/api/v1/nodes/{id}/routes": {
                "parameters": id,
                "get": op("List the node's routes", None),
                "post": op("Advertise a CIDR", Some(json!({"type": "object", "required": ["network"], "properties": {"network": {"type": "string"}, "comment": {"type": "string"}}})))
            },
            "/api/v1/nodes/{id}/routes/{route_id}": {"delete": op("Withdraw a route", None)},
            "/api/v1/devices": {
                "get": op("List devices with Mesh IPs", None),
                "post": op("Enrol a device; result has token", Some(json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}})))
            },
            "/api/v1/devices/{id}": {"parameters": id, "delete": op("Delete a device", None)},
            "/api/v1/stats": {"get": op("JSON counters", None)},
            "/api/v1/cluster": {"get": op("The coordinator cluster: members (name, public_addrs, api_addr, status up/down), which member decides elections, etcd health per endpoint; a lone coordinator lists itself", None)},
            "/api/v1/map": {"get": op("The whole network for the console: coordinators, nodes with replicas, routes and events, devices", None)},
            "/api/v1/support/sysdump": {"get": {"summary": "A support archive (tar.gz): versions, configuration, nodes, replicas, routes, events, counters, metrics, recent logs; secrets redacted", "security": [{"bearer": []}], "responses": {"200": {"description": "the archive", "content": {"application/gzip": {}}}, "4XX": {"description": "error envelope"}}}},
            "/ui/": {"get": {"summary": "The web console (static page; the API calls it makes need the token)", "responses": {"200": {"description": "HTML"}}}},
            "/ready": {"get": {"summary": "Readiness with named checks (store, quic_listener, and cluster with --etcd)", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus text", "responses": {"200": {"description": "metrics"}}}}
        }
    });
    super::policies::document(&mut doc["paths"], op);
    Json(doc)
}
