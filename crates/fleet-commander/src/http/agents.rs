//! Agents: `GET /v1/agents` (search, filters, sorting, a page), one
//! agent, draining one, and `GET /v1/departed` (who left lately). An
//! agent's budget is in `budgets`.

use super::lists::{page, Page};
use super::ApiError;
use crate::context::Shared;
use crate::metrics as m;
use axum::extract::{Path, Query, State};
use axum::Json;
use fleet_protocol::agent::AgentRecord;
use fleet_protocol::valid_agent_id;
use fleet_store::registry::Departed;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// An agent id from a path: 400 `invalid_agent_id` unless it could be one.
pub(super) fn agent_param(id: &str) -> Result<(), ApiError> {
    if valid_agent_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid_agent_id", id))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct AgentQuery {
    /// Part of the id (case-insensitive).
    q: Option<String>,
    pool: Option<String>,
    status: Option<String>,
    /// One capability, exactly.
    capability: Option<String>,
    quarantined: Option<bool>,
    draining: Option<bool>,
    /// id (default), pool, status, lastHeartbeat, score, tasksCompleted, load.
    sort: Option<String>,
    /// asc (default) or desc.
    order: Option<String>,
    offset: usize,
    limit: Option<usize>,
}

/// `GET /v1/agents`: the registered agents that match, a page of them.
pub(super) async fn list(
    State(s): State<Arc<Shared>>,
    Query(q): Query<AgentQuery>,
) -> Result<Json<Page<AgentRecord>>, ApiError> {
    let all = s.registry.all_agents(&mut s.reads.clone()).await?;
    let now = fleet_protocol::now_ms();
    let needle =
        q.q.as_deref()
            .map(str::to_lowercase)
            .filter(|n| !n.is_empty());
    let mut found: Vec<AgentRecord> = all
        .into_iter()
        .filter(|a| {
            needle
                .as_deref()
                .is_none_or(|n| a.id.to_lowercase().contains(n))
                && q.pool.as_deref().is_none_or(|p| a.pool.as_str() == p)
                && q.status.as_deref().is_none_or(|st| a.status.as_str() == st)
                && q.capability
                    .as_deref()
                    .is_none_or(|c| a.capabilities.iter().any(|x| x == c))
                && q.quarantined
                    .is_none_or(|want| (a.health.quarantined_until > now) == want)
                && q.draining.is_none_or(|want| a.draining == want)
        })
        .collect();
    match q.sort.as_deref().unwrap_or("id") {
        "pool" => found.sort_by(|a, b| (a.pool.as_str(), &a.id).cmp(&(b.pool.as_str(), &b.id))),
        "status" => {
            found.sort_by(|a, b| (a.status.as_str(), &a.id).cmp(&(b.status.as_str(), &b.id)))
        }
        "lastHeartbeat" => found.sort_by_key(|a| a.health.last_heartbeat),
        "score" => found.sort_by_key(|a| a.health.score),
        "tasksCompleted" => found.sort_by_key(|a| a.performance.tasks_completed),
        "load" => found.sort_by(|a, b| a.load.total_cmp(&b.load)),
        _ => found.sort_by(|a, b| a.id.cmp(&b.id)),
    }
    if q.order.as_deref() == Some("desc") {
        found.reverse();
    }
    Ok(Json(page(found, q.offset, q.limit.unwrap_or(50))))
}

/// `GET /v1/agents/{id}`: the agent's record.
pub(super) async fn get(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<AgentRecord>, ApiError> {
    agent_param(&id)?;
    match s.registry.agent(&mut s.reads.clone(), &id).await? {
        Some(rec) => Ok(Json(rec)),
        None => Err(ApiError::not_found(id)),
    }
}

/// `POST /v1/agents/{id}/drain`: no new tasks; the agent finishes what it
/// holds, then deregisters.
pub(super) async fn drain(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    agent_param(&id)?;
    let now = fleet_protocol::now_ms();
    let Some((pool, holding)) = s.drain(&mut s.redis.clone(), &id, now, "operator").await? else {
        return Err(ApiError::not_found(id));
    };
    metrics::counter!(m::AGENTS_DRAINED, "pool" => pool.as_str(), "reason" => "operator")
        .increment(1);
    Ok(Json(
        json!({"draining": true, "agentId": id, "pool": pool, "tasksInHand": holding}),
    ))
}

/// `GET /v1/departed?limit=N`: agents that left lately, newest first (at
/// most 1,000, each kept for `tasks.health_memory_ms`).
pub(super) async fn departed(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Departed>>, ApiError> {
    let limit = super::lists::limit(&q, 100, 1000);
    Ok(Json(
        s.registry.departed(&mut s.reads.clone(), limit).await?,
    ))
}
