//! Pools: `GET /v1/pools` (each pool's view, queue depth, fairness, pause),
//! draining a pool and fixing its size (both governed when the config says
//! so), and `GET /v1/scaling` (the scaler's recent decisions). Pausing and
//! clearing a pool's queue are in `queues`.

use super::auth::{Actor, AuditDetail};
use super::lists::{limit, page, Page, MAX_LIMIT};
use super::ApiError;
use crate::context::Shared;
use crate::governance::ProposeError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_protocol::pool::PoolType;
use fleet_protocol::status::Fairness;
use fleet_store::StoreError;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// A pool named in a path: 404 `unknown_pool` if there is none by that name.
pub(super) fn pool_param(name: &str) -> Result<PoolType, ApiError> {
    name.parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "unknown_pool", name))
}

/// `GET /v1/pools`: each pool's view, its queue depth (`queued`) and since
/// when an operator paused its queue (`pausedAt`, absent: running).
pub(super) async fn list(State(s): State<Arc<Shared>>) -> Result<Json<Vec<Value>>, ApiError> {
    let mut conn = s.reads.clone();
    let mut conn2 = conn.clone();
    let mut conn3 = conn.clone();
    let mut conn4 = conn.clone();
    let (counts, fair, queued, paused) = tokio::try_join!(
        s.registry.counts(&mut conn2),
        s.tasks.fairness_inputs(&mut conn),
        s.tasks.queue_depths(&mut conn3),
        s.tasks.paused(&mut conn4)
    )?;
    let config = s.config();
    let mut views = crate::status::pools(&config, &counts);
    for (view, c) in views.iter_mut().zip(fair) {
        view.fairness = Some(Fairness::compute(
            c.agents,
            c.fewest,
            c.most,
            c.total,
            config.tasks.max_skew,
        ));
    }
    Ok(Json(
        views
            .into_iter()
            .zip(queued)
            .map(|(v, q)| {
                let mut v = serde_json::to_value(v).unwrap_or_default();
                v["queued"] = json!(q);
                if let Some(at) = v["type"].as_str().and_then(|p| paused.get(p)) {
                    v["pausedAt"] = json!(at);
                }
                v
            })
            .collect(),
    ))
}

/// `POST /v1/pools/{pool}/drain`: drains every agent of the pool (the scaler
/// then replaces them up to the pool's minimum: a rolling restart). When
/// `[governance] actions` names `drain_pool`, it becomes a proposal to the
/// validators instead: 202 with the proposal, or 409 if the quorum cannot
/// be reached now.
pub(super) async fn drain(
    State(s): State<Arc<Shared>>,
    Path(pool): Path<String>,
    actor: Option<Extension<Actor>>,
) -> Result<Response, ApiError> {
    let pool = pool_param(&pool)?;
    if s.config().governance.governs("drain_pool") {
        return proposed(&s, actor, "drain_pool", json!({"pool": pool})).await;
    }
    let drained = crate::governance::drain_pool(&s, pool, "operator").await?;
    Ok(Json(json!({"pool": pool, "draining": drained})).into_response())
}

/// A governed action asked for: 202 with the proposal opened for it, or 409
/// when the live validators cannot reach the quorum now.
async fn proposed(
    s: &Shared,
    actor: Option<Extension<Actor>>,
    action: &str,
    params: Value,
) -> Result<Response, ApiError> {
    let proposer = actor.map_or_else(|| "anonymous".into(), |a| a.0 .0.clone());
    let pool = params["pool"].clone();
    match crate::governance::propose(s, action, params, &proposer).await {
        Ok(opened) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"pool": pool, "proposal": opened})),
        )
            .into_response()),
        Err(ProposeError::Unreachable(why)) => Err(ApiError::conflict("quorum_unreachable", why)),
        Err(ProposeError::Store(e)) => Err(e.into()),
    }
}

/// `POST /v1/pools/{pool}/size` with `{"agents": N}` fixes the pool's size
/// (within its bounds) until `{"auto": true}` hands it back to the scaler.
pub(super) async fn set_size(
    State(s): State<Arc<Shared>>,
    Path(pool): Path<String>,
    actor: Option<Extension<Actor>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let pool = pool_param(&pool)?;
    let Ok(Json(body)) = body else {
        return Err(ApiError::bad_request("invalid_body", "expected JSON"));
    };
    let (answer, detail) = if body["auto"] == true {
        redis::cmd("HDEL")
            .arg(s.keys.manual_sizes())
            .arg(pool.as_str())
            .query_async::<()>(&mut s.redis.clone())
            .await
            .map_err(StoreError::from)?;
        (
            json!({"pool": pool, "size": "auto"}),
            "size=auto".to_string(),
        )
    } else {
        let Some(n) = body["agents"].as_u64() else {
            return Err(ApiError::bad_request(
                "invalid_body",
                "expected {\"agents\": N} or {\"auto\": true}",
            ));
        };
        let config = s.config();
        let pc = config.pool(pool);
        if n < u64::from(pc.min_agents) || n > u64::from(pc.max_agents) {
            return Err(ApiError::unprocessable(
                "out_of_bounds",
                format!(
                    "pool {pool} takes {}..={} agents, asked {n}",
                    pc.min_agents, pc.max_agents
                ),
            ));
        }
        // Past the threshold, a governed size waits for the validators.
        let g = &config.governance;
        if g.governs("scale_pool") && n > u64::from(g.scale_threshold) {
            let params = json!({"pool": pool, "agents": n});
            return proposed(&s, actor, "scale_pool", params).await;
        }
        crate::governance::set_size(&s, pool, n).await?;
        (json!({"pool": pool, "size": n}), format!("agents={n}"))
    };
    let mut r = Json(answer).into_response();
    r.extensions_mut().insert(AuditDetail(detail));
    Ok(r)
}

/// `GET /v1/scaling?limit=N`: the scaler's newest decisions, newest first.
pub(super) async fn scaling(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Page<Value>>, ApiError> {
    let limit = limit(&q, 100, MAX_LIMIT);
    let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
        .arg(s.keys.events())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(limit)
        .query_async(&mut s.reads.clone())
        .await?;
    let items: Vec<Value> = raw
        .into_iter()
        .filter(|(_, f)| f.get("type").map(String::as_str) == Some("scaling_decision"))
        .filter_map(|(_, f)| serde_json::from_str(f.get("data")?).ok())
        .collect();
    Ok(Json(page(items, 0, limit)))
}
