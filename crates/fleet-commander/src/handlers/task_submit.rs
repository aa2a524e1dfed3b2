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

/// Validates a submission against the pools' settings (counted and logged
/// when refused).
fn validate(
    shared: &Shared,
    s: &Submission,
) -> Result<fleet_protocol::task::ValidTask, SubmitError> {
    let cfg = &shared.config();
    s.validate(|p| cfg.pool(p).capabilities.clone(), cfg.task_defaults())
        .map_err(|(reason, detail)| {
            metrics::counter!(m::TASKS_REJECTED, "reason" => reason.as_str()).increment(1);
            info!(reason = reason.as_str(), detail, "task refused");
            SubmitError::Refused(reason, detail)
        })
}

/// With `tasks.replicas` set: how many replicas confirmed the writes so far
/// on this connection, and whether that is enough (else counted and logged).
async fn replicated(
    shared: &Shared,
    c: &mut Conn,
    started: Instant,
) -> Result<Result<(), String>, StoreError> {
    let cfg = shared.config();
    let want = cfg.tasks.replicas;
    let got: u32 = redis::cmd("WAIT")
        .arg(want)
        .arg(cfg.tasks.replication_timeout_ms)
        .query_async(c)
        .await?;
    metrics::histogram!(m::SUBMIT_REPLICATION_SECONDS).record(started.elapsed());
    if got >= want {
        return Ok(Ok(()));
    }
    warn!(
        replicas = got,
        want, "task not confirmed by enough replicas: refused"
    );
    Ok(Err(format!(
        "{got} of {want} replicas confirmed it within {} ms",
        cfg.tasks.replication_timeout_ms
    )))
}

/// Counts an accepted task.
fn accepted(out: &Submitted, pool: fleet_protocol::PoolType) {
    if let Submitted::Accepted(t) = out {
        metrics::counter!(m::TASKS_SUBMITTED, "pool" => pool.as_str()).increment(1);
        debug!(task_id = %t.id, pool = %pool, "task accepted");
    }
}

/// Validates and persists a task: accepted, or a duplicate of the task its
/// client id names.
pub(crate) async fn submit(
    shared: &Shared,
    conn: &mut Conn,
    s: &Submission,
) -> Result<Submitted, SubmitError> {
    let valid = validate(shared, s)?;
    let started = Instant::now();
    let mut replicated_conn = shared.submit_conn.clone();
    let c = replicated_conn.as_mut().unwrap_or(conn);
    let (out, allocated) = shared
        .tasks
        .submit_and_allocate(c, &valid, crate::allocator::BATCH, now_ms())
        .await?;
    if let Some(c) = replicated_conn.as_mut() {
        // Acknowledged only once enough replicas have it. A duplicate too:
        // it may be the retry of one refused here as not yet replicated (its
        // script wrote after the task, so the wait covers the task).
        if let Err(short) = replicated(shared, c, started).await? {
            metrics::counter!(m::TASKS_REJECTED, "reason" => "not_replicated").increment(1);
            // It is on the primary and will run; the client may retry with
            // the same clientId, which names the same task.
            if let Some(a) = allocated {
                shared.tell(conn, a.notices).await?;
            }
            return Err(SubmitError::Refused(
                SubmitRefusal::NotReplicated,
                format!("task {} is on the primary, but {short}", out.id()),
            ));
        }
    }
    hand_out(shared, conn, valid.pool, allocated, started).await?;
    accepted(&out, valid.pool);
    Ok(out)
}

/// Validates and persists several tasks in one round trip (`POST /v1/tasks`
/// with an array): what each came to, in order. A refused one refuses only
/// itself; a Redis failure fails them all.
pub(crate) async fn submit_many(
    shared: &Shared,
    conn: &mut Conn,
    subs: &[Submission],
) -> Result<Vec<Result<Submitted, SubmitError>>, StoreError> {
    let checked: Vec<_> = subs.iter().map(|s| validate(shared, s)).collect();
    let valid: Vec<_> = checked.iter().filter_map(|c| c.as_ref().ok()).collect();
    let (stored, short) = if valid.is_empty() {
        (Vec::new(), None)
    } else {
        let started = Instant::now();
        let mut replicated_conn = shared.submit_conn.clone();
        let c = replicated_conn.as_mut().unwrap_or(conn);
        let (stored, allocations) = shared
            .tasks
            .submit_many(c, &valid, crate::allocator::BATCH, now_ms())
            .await?;
        let short = match replicated_conn.as_mut() {
            Some(c) => replicated(shared, c, started).await?.err(),
            None => None,
        };
        for (pool, allocated) in allocations {
            hand_out(shared, conn, pool, allocated, started).await?;
        }
        (stored, short)
    };
    let mut stored = stored.into_iter();
    Ok(checked
        .into_iter()
        .map(|c| {
            let v = c?;
            let s = stored.next().expect("one stored per valid submission");
            match &short {
                Some(short) => {
                    metrics::counter!(m::TASKS_REJECTED, "reason" => "not_replicated").increment(1);
                    Err(SubmitError::Refused(
                        SubmitRefusal::NotReplicated,
                        format!("task {} is on the primary, but {short}", s.id()),
                    ))
                }
                None => {
                    accepted(&s, v.pool);
                    Ok(s)
                }
            }
        })
        .collect())
}

/// What the allocation run with a submission did: recorded and told, or,
/// if it failed, the pool handed to the allocator.
async fn hand_out(
    shared: &Shared,
    conn: &mut Conn,
    pool: fleet_protocol::PoolType,
    allocated: Option<fleet_store::tasks::Allocation>,
    started: Instant,
) -> Result<(), StoreError> {
    match allocated {
        Some(a) => {
            crate::allocator::record(shared, pool, a.assigned, a.queued, started);
            shared.tell(conn, a.notices).await
        }
        None => {
            shared.wake_pool(pool);
            Ok(())
        }
    }
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
