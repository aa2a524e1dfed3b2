//! The HTTP API: fleet status, pools, agents, liveness, readiness, metrics.

use crate::commander::Shared;
use crate::metrics as m;
use crate::protocol::valid_agent_id;
use crate::status::PoolView;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tracing::{error, warn};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/fleet", get(fleet))
        .route("/v1/pools", get(pools))
        .route("/v1/agents/{id}", get(agent))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(shared)
}

pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let token = shared.shutdown_token().clone();
    let app = router(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
    {
        error!("HTTP server stopped: {e}");
    }
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    warn!(error = %e, "HTTP request failed on Redis");
    metrics::counter!(m::REDIS_ERRORS, "op" => "http").increment(1);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "redis_unavailable", "detail": e.to_string()})),
    )
        .into_response()
}

async fn fleet(State(s): State<Arc<Shared>>) -> Response {
    let started = Instant::now();
    let mut conn = s.redis.clone();
    match s.fleet_status(&mut conn).await {
        Ok(status) => {
            metrics::histogram!(m::STATUS_QUERY_SECONDS).record(started.elapsed());
            Json(status).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn pools(State(s): State<Arc<Shared>>) -> Response {
    let mut conn = s.redis.clone();
    match s.registry.counts(&mut conn).await {
        Ok(counts) => Json(PoolView::assemble(&s.config, &counts)).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn agent(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if !valid_agent_id(&id) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_agent_id"})),
        )
            .into_response();
    }
    let mut conn = s.redis.clone();
    match s.registry.agent(&mut conn, &id).await {
        Ok(Some(rec)) => Json(rec).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response(),
        Err(e) => unavailable(e),
    }
}

/// Ready when subscribed to the agent channels and Redis answers.
async fn ready(State(s): State<Arc<Shared>>) -> Response {
    let redis_ok = redis::cmd("PING")
        .query_async::<String>(&mut s.redis.clone())
        .await
        .is_ok();
    let listening = s.is_listening();
    let body =
        Json(json!({"ready": redis_ok && listening, "redis": redis_ok, "listening": listening}));
    if redis_ok && listening {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics_text(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
