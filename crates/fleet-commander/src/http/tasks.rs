//! Tasks: submitting one (`POST /v1/tasks`), the list (`GET /v1/tasks`:
//! search by id or client id, filters, a page), one task, cancelling it,
//! and its allocation evidence. Dead letters and poison are in `queues`.

use super::lists::{page, Page};
use super::ApiError;
use crate::context::Shared;
use crate::handlers::task_submit::SubmitError;
use crate::metrics as m;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_protocol::task::{valid_task_id, Submission, SubmitRefusal, TaskRecord, MAX_BATCH};
use fleet_store::tasks::{Cancelled, Submitted, TaskSummary};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::Arc;

/// A task id from a path: 400 `invalid_task_id` unless it is the commander's
/// kind (fleet_protocol::task::valid_task_id).
pub(super) fn task_param(id: &str) -> Result<(), ApiError> {
    if valid_task_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid_task_id", id))
    }
}

/// `POST /v1/tasks`'s answer: the task as persisted, serialised as a struct
/// so that its payload keeps its bytes (a `json!` value would re-serialise
/// it), and whether it was a repeated `clientId`.
#[derive(serde::Serialize)]
pub(super) struct SubmitAnswer {
    task: TaskRecord,
    duplicate: bool,
}

/// A batch's body may be this many times `fleet.max_message_bytes` (1 MiB
/// as shipped); each task in it, and a single task, at most one message.
pub(super) const BATCH_BODY_FACTOR: usize = 64;

/// `POST /v1/tasks`: 201 with the task once it is persisted; 200 with the
/// same task for a repeated `clientId`; 422 with the reason if it can never
/// run; 503 if it is not yet safe from a failover (retry). With an array of
/// up to [`MAX_BATCH`] tasks, all are persisted in one round trip: 200 with
/// what each came to, in order (`SubmitAnswer`, or its error and detail).
pub(super) async fn submit(
    State(s): State<Arc<Shared>>,
    body: Result<Json<Box<RawValue>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(raw) = body.map_err(|e| refused(ApiError::from(e)))?;
    let limit = s.config().fleet.max_message_bytes;
    let text = raw.get();
    if text.trim_start().starts_with('[') {
        let items: Vec<Box<RawValue>> = serde_json::from_str(text)
            .map_err(|e| refused(ApiError::bad_request("invalid_fields", e)))?;
        let mut subs = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            subs.push(parse(item.get(), limit).map_err(|e| e.about(&format!("task {i}")))?);
        }
        return submit_many(&s, &subs).await;
    }
    let sub = parse(text, limit)?;
    let mut conn = s.redis.clone();
    let outcome = crate::handlers::task_submit::submit(&s, &mut conn, &sub).await;
    let (status, answer) = answer(&s, &mut conn, outcome).await?;
    Ok((status, Json(answer)).into_response())
}

/// One task's submission from its JSON: 413 `too_large` over one message's
/// limit, 400 `invalid_fields` if it does not parse (both counted).
fn parse(text: &str, limit: usize) -> Result<Submission, ApiError> {
    if text.len() > limit {
        let detail = format!("a task is at most {limit} bytes (fleet.max_message_bytes)");
        return Err(refused(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            detail,
        )));
    }
    serde_json::from_str(text).map_err(|e| refused(ApiError::bad_request("invalid_fields", e)))
}

/// A body the submission could not be read from, counted.
fn refused(e: ApiError) -> ApiError {
    let reason = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "invalid_fields"
    };
    metrics::counter!(m::TASKS_REJECTED, "reason" => reason).increment(1);
    e.with_error(reason)
}

async fn submit_many(s: &Shared, subs: &[Submission]) -> Result<Response, ApiError> {
    if subs.is_empty() || subs.len() > MAX_BATCH {
        metrics::counter!(m::TASKS_REJECTED, "reason" => "invalid_fields").increment(1);
        return Err(ApiError::bad_request(
            "invalid_fields",
            format!("an array of 1 to {MAX_BATCH} tasks, got {}", subs.len()),
        ));
    }
    let mut conn = s.redis.clone();
    let outcomes = crate::handlers::task_submit::submit_many(s, &mut conn, subs).await?;
    let mut answers = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        answers.push(match answer(s, &mut conn, outcome).await {
            Ok((_, a)) => a,
            Err(e) if e.is_failure() => return Err(e),
            Err(e) => Answer::Refused(e.body()),
        });
    }
    Ok(Json(BatchAnswer { tasks: answers }).into_response())
}

/// What one submission came to, as `POST /v1/tasks` answers it.
async fn answer(
    s: &Shared,
    conn: &mut fleet_store::connection::Conn,
    outcome: Result<Submitted, SubmitError>,
) -> Result<(StatusCode, Answer), ApiError> {
    let id = match outcome {
        Ok(Submitted::Accepted(task)) => {
            // The record as persisted: no need to read it back.
            let answer = SubmitAnswer {
                task: *task,
                duplicate: false,
            };
            return Ok((StatusCode::CREATED, Answer::Task(Box::new(answer))));
        }
        Ok(Submitted::Duplicate(id)) => id,
        Err(SubmitError::Store(e)) => return Err(e.into()),
        Err(SubmitError::Refused(reason, detail)) => {
            let status = match reason {
                // On the primary, not yet safe from a failover: retry.
                SubmitRefusal::NotReplicated => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            return Err(ApiError::new(status, reason.as_str(), detail));
        }
    };
    Ok(match s.tasks.get(conn, &id).await? {
        Some(task) => (
            StatusCode::OK,
            Answer::Task(Box::new(SubmitAnswer {
                task,
                duplicate: true,
            })),
        ),
        // Gone since (deleted from the dead letters): the id is all there is.
        None => (
            StatusCode::OK,
            Answer::Gone(json!({"taskId": id, "duplicate": true})),
        ),
    })
}

/// A submission's answer: the task, only its id (a duplicate since deleted),
/// or, in a batch, why it was refused (`{"error", "detail"}`).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Answer {
    Task(Box<SubmitAnswer>),
    Gone(Value),
    Refused(Value),
}

/// `POST /v1/tasks` with an array: each task's answer, in order (serialised
/// as structs, so that payloads keep their bytes).
#[derive(serde::Serialize)]
struct BatchAnswer {
    tasks: Vec<Answer>,
}

/// `GET /v1/tasks/{id}`: the task's record.
pub(super) async fn get(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<TaskRecord>, ApiError> {
    task_param(&id)?;
    match s.tasks.get(&mut s.reads.clone(), &id).await? {
        Some(t) => Ok(Json(t)),
        None => Err(ApiError::not_found(id)),
    }
}

/// `POST /v1/tasks/{id}/cancel`: a task that has not finished. A running one
/// is taken from its agent (told with `task_cancel`), whose slot frees at once.
pub(super) async fn cancel(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    task_param(&id)?;
    let mut conn = s.redis.clone();
    let Some(task) = s.tasks.get(&mut conn, &id).await? else {
        return Err(ApiError::not_found(id));
    };
    let now = fleet_protocol::now_ms();
    match s.tasks.cancel(&mut conn, &id, task.pool, now).await? {
        Cancelled::Cancelled(notice) => {
            s.tell(&mut conn, notice.into_iter().collect()).await?;
            metrics::counter!(m::TASKS_CANCELLED).increment(1);
            s.wake_pool(task.pool);
            Ok(Json(json!({"cancelled": true, "taskId": id})))
        }
        Cancelled::Unknown => Err(ApiError::not_found(id)),
        Cancelled::NotCancellable(state) => Err(ApiError::conflict(
            "not_cancellable",
            format!("task is {state}"),
        )),
    }
}

/// `GET /v1/tasks/{id}/evidence`: every allocation decision for the task,
/// with the strategy, the chosen agent's score and the reason.
pub(super) async fn evidence(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    task_param(&id)?;
    Ok(Json(s.tasks.evidence(&mut s.reads.clone(), &id).await?))
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
pub(super) async fn list(
    State(s): State<Arc<Shared>>,
    Query(q): Query<TaskQuery>,
) -> Result<Json<Page<TaskSummary>>, ApiError> {
    let mut conn = s.reads.clone();
    let ids = match q.q.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        Some(needle) => {
            let mut ids = vec![needle.to_string()];
            if let Some(id) = s.tasks.by_client_id(&mut conn, needle).await? {
                if id != needle {
                    ids.push(id);
                }
            }
            ids
        }
        None => s.tasks.recent_ids(&mut conn).await?,
    };
    let found = s.tasks.summaries(&mut conn, &ids).await?;
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
    Ok(Json(page(found, q.offset, q.limit.unwrap_or(50))))
}
