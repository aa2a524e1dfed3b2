//! Operators' actions on queues and held tasks, all audited: pause and
//! resume a pool's queue (`POST /v1/pools/{pool}/pause|resume`), clear it
//! (`POST /v1/pools/{pool}/clear`: every waiting task cancelled), the held
//! tasks (`GET /v1/dead-letters`, `GET /v1/poison`, one requeued), and the
//! dead letters in bulk (`POST /v1/dead-letters/requeue|delete` with
//! `{"ids": [...]}` or `{"all": true}`).

use super::auth::AuditDetail;
use super::pools::pool_param;
use super::tasks::task_param;
use super::ApiError;
use crate::context::Shared;
use crate::metrics as m;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_protocol::task::{valid_task_id, TaskRecord};
use fleet_store::tasks::{Cancelled, Held, Requeue};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::info;

/// Most tasks one bulk request acts on (`all` too: call again for more).
pub(super) const BULK_MAX: usize = 500;

/// `POST /v1/pools/{pool}/pause` and `/resume`.
pub(super) async fn pause(
    s: Arc<Shared>,
    pool: String,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    let pool = pool_param(&pool)?;
    let now = fleet_protocol::now_ms();
    let changed = s
        .tasks
        .set_paused(&mut s.redis.clone(), pool, paused, now)
        .await?;
    if changed {
        info!(pool = %pool, paused, "pool queue {}", if paused { "paused" } else { "resumed" });
    }
    if !paused {
        s.wake_pool(pool);
    }
    s.wake_all();
    Ok(Json(
        json!({"pool": pool, "paused": paused, "changed": changed}),
    ))
}

/// `POST /v1/pools/{pool}/clear`: cancels every task waiting in the pool's
/// queue (not those running), up to [`BULK_MAX`] a call.
pub(super) async fn clear(
    State(s): State<Arc<Shared>>,
    Path(pool): Path<String>,
) -> Result<Response, ApiError> {
    let pool = pool_param(&pool)?;
    let mut conn = s.redis.clone();
    let ids = s.tasks.queued_ids(&mut conn, pool, BULK_MAX).await?;
    let now = fleet_protocol::now_ms();
    let mut cancelled = 0u64;
    for id in &ids {
        if let Cancelled::Cancelled(_) = s.tasks.cancel(&mut conn, id, pool, now).await? {
            cancelled += 1;
        }
    }
    metrics::counter!(m::TASKS_CANCELLED).increment(cancelled);
    let left = s
        .tasks
        .queued_ids(&mut conn, pool, 1)
        .await
        .map_or(0, |l| l.len());
    let mut r =
        Json(json!({"pool": pool, "cancelled": cancelled, "more": left > 0})).into_response();
    r.extensions_mut()
        .insert(AuditDetail(format!("cancelled={cancelled}")));
    Ok(r)
}

/// Which dead letters a bulk action is for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Which {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

/// `POST /v1/dead-letters/requeue` and `/delete` (`delete`: false, true).
pub(super) async fn bulk(
    s: Arc<Shared>,
    body: Result<Json<Which>, JsonRejection>,
    delete: bool,
) -> Result<Response, ApiError> {
    let Ok(Json(which)) = body else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "expected {\"ids\": [...]} or {\"all\": true}",
        ));
    };
    if which.all != which.ids.is_empty() || which.ids.len() > BULK_MAX {
        return Err(ApiError::unprocessable(
            "invalid_fields",
            format!("give ids (at most {BULK_MAX}) or all: true"),
        ));
    }
    if let Some(bad) = which.ids.iter().find(|id| !valid_task_id(id)) {
        return Err(ApiError::bad_request("invalid_task_id", bad));
    }
    let mut conn = s.redis.clone();
    let ids = if which.all {
        s.tasks.held_ids(&mut conn, Held::Dead, BULK_MAX).await?
    } else {
        which.ids
    };
    let now = fleet_protocol::now_ms();
    let mut done = Vec::new();
    let mut skipped = Vec::new();
    for id in ids {
        let acted = if delete {
            s.tasks.delete_dead(&mut conn, &id).await?
        } else {
            s.tasks
                .requeue_held(&mut conn, Held::Dead, &id, now)
                .await?
                == Requeue::Queued
        };
        if acted {
            done.push(id);
        } else {
            skipped.push(id);
        }
    }
    if !delete && !done.is_empty() {
        s.wake_all();
    }
    let verb = if delete { "deleted" } else { "requeued" };
    let mut r = Json(json!({verb: done, "notDead": skipped})).into_response();
    r.extensions_mut()
        .insert(AuditDetail(format!("{verb}={}", done.len())));
    Ok(r)
}

/// `GET /v1/dead-letters` (tasks out of retries) and `GET /v1/poison`
/// (tasks that took down `tasks.poison_after` agents): most recent first,
/// at most 500.
pub(super) async fn held(s: Arc<Shared>, which: Held) -> Result<Json<Vec<TaskRecord>>, ApiError> {
    Ok(Json(s.tasks.held(&mut s.reads.clone(), which, 500).await?))
}

/// `POST /v1/dead-letters/{id}/requeue`, `POST /v1/poison/{id}/requeue`:
/// back to its queue with fresh retries (and no casualties).
pub(super) async fn requeue_held(
    s: Arc<Shared>,
    which: Held,
    id: String,
) -> Result<Json<Value>, ApiError> {
    task_param(&id)?;
    let now = fleet_protocol::now_ms();
    match s
        .tasks
        .requeue_held(&mut s.redis.clone(), which, &id, now)
        .await?
    {
        Requeue::Queued => {
            s.wake_all();
            Ok(Json(json!({"requeued": true, "taskId": id})))
        }
        Requeue::NotHeld(state) => {
            let reason = match which {
                Held::Dead => "not_dead",
                Held::Poison => "not_poison",
            };
            Err(ApiError::conflict(reason, format!("task is {state}")))
        }
    }
}
