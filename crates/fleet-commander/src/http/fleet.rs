//! The fleet and this process: `GET /v1/fleet` (the fleet's status),
//! `/v1/history` (the console's charts), `/v1/commanders` (who leads),
//! `/readyz`, `/metrics`.

use super::ApiError;
use crate::context::Shared;
use crate::metrics as m;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use fleet_protocol::status::FleetStatus;
use fleet_store::StoreError;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// `GET /v1/fleet`: every pool's agents by status, tasks and fairness.
pub(super) async fn status(State(s): State<Arc<Shared>>) -> Result<Json<FleetStatus>, ApiError> {
    let started = Instant::now();
    let status = crate::status::current(&s, &mut s.reads.clone()).await?;
    metrics::histogram!(m::STATUS_QUERY_SECONDS).record(started.elapsed());
    Ok(Json(status))
}

/// `GET /v1/history`: the fleet's recent samples (agents, busy, queued).
pub(super) async fn history(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "intervalMs": s.config().fleet.status_interval_ms,
        "samples": s.history.samples(),
    }))
}

/// `GET /v1/commanders`: who leads (the lease), and every commander heard
/// from within a lease, with its role, epoch, address and last renewal.
pub(super) async fn commanders(State(s): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let mut conn = s.reads.clone();
    let mut conn2 = conn.clone();
    let fresh = s.config().ha.lease_ms;
    let (holder, list) = tokio::try_join!(
        fleet_store::lease::holder(&mut conn2, &s.keys),
        fleet_store::lease::commanders(&mut conn, &s.keys, fleet_protocol::now_ms(), fresh)
    )?;
    Ok(Json(json!({
        "leader": holder.map(|h| json!({"id": h.id, "epoch": h.epoch})),
        "self": s.ha.id(),
        "commanders": list,
    })))
}

/// `GET /readyz`: ready when Redis answers and, for the leader, when
/// subscribed to the agent channels (a standby serves reads without
/// listening). Says which; 503 when not ready.
pub(super) async fn ready(State(s): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    let mut conn = s.redis.clone();
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(&mut conn);
    let redis_ok = match tokio::time::timeout(std::time::Duration::from_secs(1), ping).await {
        Ok(r) => r
            .map_err(|e| crate::metrics::redis_error("readyz", &StoreError::Redis(e)))
            .is_ok(),
        Err(_) => false,
    };
    let listening = s.is_listening();
    let ready = redis_ok && (listening || !s.is_leader());
    let view = s.ha.view();
    let body = Json(
        json!({"ready": ready, "redis": redis_ok, "redisServer": s.redis.server(), "listening": listening,
            "role": view.role.as_str(), "epoch": view.epoch, "id": s.ha.id(),
            "leader": view.leader,
            "breaker": if s.breaker.open_since().is_some() { "open" } else { "closed" },
            "security": s.gate.mode().as_str()}),
    );
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// `GET /metrics`: the Prometheus text.
pub(super) async fn metrics_text(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics::render(&s.metrics),
    )
}
