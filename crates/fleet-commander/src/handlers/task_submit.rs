//! `task_submit` on the tasks channel, and the submission path it shares
//! with `POST /v1/tasks`: validate, persist, and allocate the pool in the
//! same round trip.

use crate::context::Shared;
use crate::metrics as m;
use fleet_protocol::task::{Submission, SubmitRefusal};
use fleet_protocol::{now_ms, TaskSubmit, TaskSubmitReply, VERSION};
use fleet_store::connection::Conn;
use fleet_store::tasks::Submitted;
use fleet_store::StoreError;
use std::time::Instant;
use tracing::{debug, info, warn};

/// Why a submission was not taken: refused (a reason and a detail for the
/// submitter), or Redis failed under it.
#[derive(Debug)]
pub(crate) enum SubmitError {
    Refused(SubmitRefusal, String),
    Store(StoreError),
}

impl From<StoreError> for SubmitError {
    fn from(e: StoreError) -> Self {
        SubmitError::Store(e)
    }
}

impl From<redis::RedisError> for SubmitError {
    fn from(e: redis::RedisError) -> Self {
        SubmitError::Store(e.into())
    }
}

/// Validates and persists a task: accepted, or a duplicate of the task its
/// client id names.
pub(crate) async fn submit(
    shared: &Shared,
    conn: &mut Conn,
    s: &Submission,
) -> Result<Submitted, SubmitError> {
    let cfg = &shared.config();
    let valid = match s.validate(|p| cfg.pool(p).capabilities.clone(), cfg.task_defaults()) {
        Ok(v) => v,
        Err((reason, detail)) => {
            metrics::counter!(m::TASKS_REJECTED, "reason" => reason.as_str()).increment(1);
            info!(reason = reason.as_str(), detail, "task refused");
            return Err(SubmitError::Refused(reason, detail));
        }
    };
    let started = Instant::now();
    let mut replicated = shared.submit_conn.clone();
    let c = replicated.as_mut().unwrap_or(conn);
    let (out, allocated) = shared
        .tasks
        .submit_and_allocate(c, &valid, crate::allocator::BATCH, now_ms())
        .await?;
    if let (Some(c), Submitted::Accepted(t)) = (replicated.as_mut(), &out) {
        // Acknowledged only once enough replicas have it (a duplicate was
        // acknowledged when it was first accepted).
        let want = cfg.tasks.replicas;
        let got: u32 = redis::cmd("WAIT")
            .arg(want)
            .arg(cfg.tasks.replication_timeout_ms)
            .query_async(c)
            .await?;
        metrics::histogram!(m::SUBMIT_REPLICATION_SECONDS).record(started.elapsed());
        if got < want {
            metrics::counter!(m::TASKS_REJECTED, "reason" => "not_replicated").increment(1);
            warn!(
                replicas = got,
                want, "task not confirmed by enough replicas: refused"
            );
            // It is on the primary and will run; the client may retry with
            // the same clientId, which names the same task.
            if let Some(a) = allocated {
                shared.tell(conn, a.notices).await?;
            }
            return Err(SubmitError::Refused(
                SubmitRefusal::NotReplicated,
                format!("task {} is on the primary, but {got} of {want} replicas confirmed it within {} ms", t.id, cfg.tasks.replication_timeout_ms),
            ));
        }
    }
    match allocated {
        Some(a) => {
            crate::allocator::record(shared, valid.pool, a.assigned, a.queued, started);
            shared.tell(conn, a.notices).await?;
        }
        None => shared.wake_pool(valid.pool),
    }
    if let Submitted::Accepted(t) = &out {
        let id = &t.id;
        metrics::counter!(m::TASKS_SUBMITTED, "pool" => valid.pool.as_str()).increment(1);
        debug!(task_id = %id, pool = %valid.pool, "task accepted");
    }
    Ok(out)
}

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut Conn,
    req: TaskSubmit,
) -> Result<(), StoreError> {
    let outcome = match submit(shared, conn, &req.task).await {
        Ok(o) => Ok(o),
        Err(SubmitError::Refused(reason, detail)) => Err((reason, detail)),
        Err(SubmitError::Store(StoreError::Fenced)) => return Err(StoreError::Fenced),
        Err(SubmitError::Store(e)) => {
            crate::metrics::redis_error("submit", &e);
            warn!(reason = e.reason(), error = %e, "task submission failed in Redis");
            Err((
                SubmitRefusal::Unavailable,
                "task store unavailable, retry".into(),
            ))
        }
    };
    if let Err((
        r @ (SubmitRefusal::InvalidFields
        | SubmitRefusal::UnknownPool
        | SubmitRefusal::UnmatchedCapabilities),
        _,
    )) = &outcome
    {
        // A field out of its range, or a task no pool can run, is a refused
        // message like any other.
        metrics::counter!(m::MESSAGES_REJECTED, "channel" => "tasks", "reason" => r.as_str())
            .increment(1);
    }
    reply(shared, conn, req.id, req.reply_channel, outcome).await
}

/// Answers a submission on its reply channel, if it gave one under the reply prefix.
pub(super) async fn reply(
    shared: &Shared,
    conn: &mut Conn,
    id: String,
    reply_channel: Option<String>,
    outcome: Result<Submitted, (SubmitRefusal, String)>,
) -> Result<(), StoreError> {
    let Some(channel) = reply_channel else {
        return Ok(());
    };
    if !channel.starts_with(&shared.keys.channels().reply_prefix()) {
        metrics::counter!(m::MESSAGES_REJECTED, "channel" => "tasks", "reason" => "invalid_fields")
            .increment(1);
        warn!(
            channel,
            "replyChannel outside the reply prefix: no reply sent"
        );
        return Ok(());
    }
    let duplicate = matches!(outcome, Ok(Submitted::Duplicate(_)));
    let reply = match outcome {
        Ok(Submitted::Accepted(t)) => TaskSubmitReply {
            v: VERSION,
            reply_to: id.clone(),
            accepted: true,
            duplicate,
            task_id: Some(t.id),
            reason: None,
            detail: None,
        },
        Ok(Submitted::Duplicate(id)) => TaskSubmitReply {
            v: VERSION,
            reply_to: id.clone(),
            accepted: true,
            duplicate,
            task_id: Some(id),
            reason: None,
            detail: None,
        },
        Err((reason, detail)) => TaskSubmitReply {
            v: VERSION,
            reply_to: id.clone(),
            accepted: false,
            duplicate: false,
            task_id: None,
            reason: Some(reason),
            detail: Some(detail),
        },
    };
    shared.send(conn, channel, &reply).await
}
