//! Operators' actions on queues, all audited: pause and resume a pool's
//! queue (`POST /v1/pools/{pool}/pause|resume`), clear it (`POST
//! /v1/pools/{pool}/clear`: every waiting task cancelled), and the dead
//! letters in bulk (`POST /v1/dead-letters/requeue|delete` with `{"ids":
//! [...]}` or `{"all": true}`).

use super::auth::AuditDetail;
use super::{error, pool_param, unavailable};
use crate::context::Shared;
use crate::metrics as m;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_protocol::task::valid_task_id;
use fleet_store::tasks::{Cancelled, Held};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tracing::info;

/// Most tasks one bulk request acts on (`all` too: call again for more).
pub(super) const BULK_MAX: usize = 500;

/// `POST /v1/pools/{pool}/pause` and `/resume`.
pub(super) async fn pause(s: Arc<Shared>, pool: String, paused: bool) -> Response {
    let pool = match pool_param(&pool) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let now = fleet_protocol::now_ms();
    match s
        .tasks
        .set_paused(&mut s.redis.clone(), pool, paused, now)
        .await
    {
        Ok(changed) => {
            if changed {
                info!(pool = %pool, paused, "pool queue {}", if paused { "paused" } else { "resumed" });
            }
            if !paused {
                s.wake_pool(pool);
            }
            s.wake_all();
            Json(json!({"pool": pool, "paused": paused, "changed": changed})).into_response()
        }
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/pools/{pool}/clear`: cancels every task waiting in the pool's
/// queue (not those running), up to [`BULK_MAX`] a call.
pub(super) async fn clear(State(s): State<Arc<Shared>>, Path(pool): Path<String>) -> Response {
    let pool = match pool_param(&pool) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let mut conn = s.redis.clone();
    let ids = match s.tasks.queued_ids(&mut conn, pool, BULK_MAX).await {
        Ok(ids) => ids,
        Err(e) => return unavailable(e),
    };
    let now = fleet_protocol::now_ms();
    let mut cancelled = 0u64;
    for id in &ids {
        match s.tasks.cancel(&mut conn, id, pool, now).await {
            Ok(Cancelled::Cancelled(_)) => cancelled += 1,
            Ok(_) => {}
            Err(e) => return unavailable(e),
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
    r
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
) -> Response {
    let Ok(Json(which)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "expected {\"ids\": [...]} or {\"all\": true}",
        );
    };
    if which.all != which.ids.is_empty() || which.ids.len() > BULK_MAX {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_fields",
            format!("give ids (at most {BULK_MAX}) or all: true"),
        );
    }
    if let Some(bad) = which.ids.iter().find(|id| !valid_task_id(id)) {
        return error(StatusCode::BAD_REQUEST, "invalid_task_id", bad);
    }
    let mut conn = s.redis.clone();
    let ids = if which.all {
        match s.tasks.held_ids(&mut conn, Held::Dead, BULK_MAX).await {
            Ok(ids) => ids,
            Err(e) => return unavailable(e),
        }
    } else {
        which.ids
    };
    let now = fleet_protocol::now_ms();
    let mut done = Vec::new();
    let mut skipped = Vec::new();
    for id in ids {
        let r = if delete {
            s.tasks
                .delete_dead(&mut conn, &id)
                .await
                .map(|gone| gone.then_some(()).ok_or(()))
        } else {
            s.tasks
                .requeue_held(&mut conn, Held::Dead, &id, now)
                .await
                .map(|r| r.map_err(|_| ()))
        };
        match r {
            Ok(Ok(())) => done.push(id),
            Ok(Err(())) => skipped.push(id),
            Err(e) => return unavailable(e),
        }
    }
    if !delete && !done.is_empty() {
        s.wake_all();
    }
    let verb = if delete { "deleted" } else { "requeued" };
    let mut r = Json(json!({verb: done, "notDead": skipped})).into_response();
    r.extensions_mut()
        .insert(AuditDetail(format!("{verb}={}", done.len())));
    r
}
