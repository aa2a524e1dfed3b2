//! Lists with server-side search, filters, sorting and pagination, for the
//! console and scripts: `GET /v1/agents`, `GET /v1/tasks`, `GET
//! /v1/scaling`. Each answers `{total, offset, limit, items}` (`total`:
//! how many matched before the page was cut).

use super::unavailable;
use crate::context::Shared;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_protocol::agent::AgentRecord;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// A page: at most this many items.
const MAX_LIMIT: usize = 500;

/// `?limit=N`, within `1..=max` (`default` when absent or unreadable).
pub(super) fn limit(q: &HashMap<String, String>, default: usize, max: usize) -> usize {
    q.get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

#[derive(Serialize)]
struct Page<T> {
    total: usize,
    offset: usize,
    limit: usize,
    items: Vec<T>,
}

fn page<T>(mut all: Vec<T>, offset: usize, limit: usize) -> Page<T> {
    let total = all.len();
    let limit = limit.clamp(1, MAX_LIMIT);
    let items = if offset >= total {
        Vec::new()
    } else {
        all.truncate((offset + limit).min(total));
        all.split_off(offset)
    };
    Page {
        total,
        offset,
        limit,
        items,
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
pub(super) async fn agents(State(s): State<Arc<Shared>>, Query(q): Query<AgentQuery>) -> Response {
    let all = match s.registry.all_agents(&mut s.reads.clone()).await {
        Ok(a) => a,
        Err(e) => return unavailable(e),
    };
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
    Json(page(found, q.offset, q.limit.unwrap_or(50))).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct TaskQuery {
    /// A task id or a client id, exactly.
    q: Option<String>,
    pool: Option<String>,
    state: Option<String>,
    /// The agent that holds (or last held) it.
    agent: Option<String>,
    offset: usize,
    limit: Option<usize>,
}

/// `GET /v1/tasks`: the newest tasks (the last `RECENT_TASKS` submitted)
/// that match, newest first; `q` finds any task by its id or client id.
pub(super) async fn tasks(State(s): State<Arc<Shared>>, Query(q): Query<TaskQuery>) -> Response {
    let mut conn = s.reads.clone();
    let ids = match q.q.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        Some(needle) => {
            let mut ids = vec![needle.to_string()];
            match s.tasks.by_client_id(&mut conn, needle).await {
                Ok(Some(id)) if id != needle => ids.push(id),
                Ok(_) => {}
                Err(e) => return unavailable(e),
            }
            ids
        }
        None => match s.tasks.recent_ids(&mut conn).await {
            Ok(ids) => ids,
            Err(e) => return unavailable(e),
        },
    };
    let found = match s.tasks.summaries(&mut conn, &ids).await {
        Ok(f) => f,
        Err(e) => return unavailable(e),
    };
    let found: Vec<_> = found
        .into_iter()
        .filter(|t| {
            q.pool.as_deref().is_none_or(|p| t.pool == p)
                && q.state.as_deref().is_none_or(|st| t.state == st)
                && q.agent
                    .as_deref()
                    .is_none_or(|a| t.agent_id.as_deref() == Some(a))
        })
        .collect();
    Json(page(found, q.offset, q.limit.unwrap_or(50))).into_response()
}

/// `GET /v1/scaling?limit=N`: the newest scaling decisions with their
/// inputs (the fleet's event stream), newest first.
pub(super) async fn scaling(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = limit(&q, 100, MAX_LIMIT);
    let raw: Result<Vec<(String, HashMap<String, String>)>, _> = redis::cmd("XREVRANGE")
        .arg(s.keys.events())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(limit)
        .query_async(&mut s.reads.clone())
        .await;
    let raw = match raw {
        Ok(r) => r,
        Err(e) => return unavailable(e.into()),
    };
    let items: Vec<serde_json::Value> = raw
        .into_iter()
        .filter(|(_, f)| f.get("type").map(String::as_str) == Some("scaling_decision"))
        .filter_map(|(_, f)| serde_json::from_str(f.get("data")?).ok())
        .collect();
    Json(page(items, 0, limit)).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_cut_where_asked() {
        let p = super::page((0..10).collect(), 3, 4);
        assert_eq!((p.total, p.items), (10, vec![3, 4, 5, 6]));
        let p = super::page((0..10).collect::<Vec<i32>>(), 12, 4);
        assert!(p.items.is_empty());
        let p = super::page((0..10).collect(), 8, 4);
        assert_eq!(p.items, vec![8, 9]);
    }
}
