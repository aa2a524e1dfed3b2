//! Tasks in Redis: submission, lookup, cancellation.
//!
//! Layout (names in [`crate::keys`]): one hash per task; one sorted set per
//! pool as its queue, scored `enqueue time - priority x aging step` so that
//! higher priority goes first and waiting ages a task upwards; a sorted set of
//! tasks waiting out a retry backoff, one of leases, one of dead letters. A
//! task is acknowledged to its submitter only after the script that persists
//! it has returned.

use crate::error::{from_script, Result, StoreError};
use crate::keys::Keys;
use crate::registry::scored_upto;
use crate::script::{Call, Reply};
use crate::scripts::{
    ALLOCATE, CANCEL, DLQ_DELETE, DLQ_REQUEUE, EXPIRE, PAROLE, POOL_PAUSE, RELEASE, SUBMIT,
    TASK_ACK, TASK_DONE,
};
use crate::{Notice, Once};
use fleet_protocol::pool::Strategy;
use fleet_protocol::task::{RawJson, TaskRecord, ValidTask};
use fleet_protocol::{PoolType, ReportKind, TaskReport};
use redis::aio::ConnectionLike;
use redis::Value;
use std::collections::HashMap;

/// Tasks one allocate call may assign (and the window of the queue it reads;
/// it chooses among twice as many agents). A pool that fills a batch is
/// served again at once.
pub const ALLOCATE_BATCH: usize = 64;

/// How many of the newest tasks [`Keys::recent_tasks`] indexes (what
/// `GET /v1/tasks` can list; any task is found by its id or client id).
pub const RECENT_TASKS: u64 = 10_000;

/// Allocation decisions kept in the evidence stream (approximately).
pub const EVIDENCE_CAP: u64 = 100_000;

/// What a submission did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Persisted and queued: the record as stored.
    Accepted(Box<TaskRecord>),
    /// The client id already names this task.
    Duplicate(String),
}

/// What a cancellation did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// With the task_cancel for the agent that held it, if one did.
    Cancelled(Option<Notice>),
    Unknown,
    /// Already started or finished: in this state.
    NotCancellable(String),
}

/// One allocation round of a pool.
#[derive(Debug, Default)]
pub struct Allocation {
    pub assigned: u64,
    /// Tasks still waiting in the pool's queue.
    pub queued: u64,
    /// The `task_assign` messages, to publish.
    pub notices: Vec<Notice>,
}

impl Allocation {
    fn parse(v: Value) -> Result<Allocation> {
        let items: Vec<Value> = redis::from_redis_value(v)?;
        let mut items = items.into_iter();
        let mut num = || -> Result<u64> {
            let v = items
                .next()
                .ok_or_else(|| StoreError::Reply("allocate: short reply".into()))?;
            Ok(redis::from_redis_value(v)?)
        };
        let (assigned, queued) = (num()?, num()?);
        let rest: Vec<String> = items
            .map(redis::from_redis_value)
            .collect::<std::result::Result<_, _>>()?;
        let notices = rest
            .chunks_exact(2)
            .map(|c| Notice {
                channel: c[0].clone(),
                message: c[1].clone(),
            })
            .collect();
        Ok(Allocation {
            assigned,
            queued,
            notices,
        })
    }
}

/// What the task scripts take from the `[tasks]` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPolicy {
    /// Waiting this long counts as much as one priority level.
    pub aging_ms_per_priority: u64,
    /// An assigned task not acknowledged within this time goes back to the queue.
    pub ack_timeout_ms: u64,
    /// Retry backoff: base x 2^(attempt-1), capped.
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// How long a client id keeps naming the same task.
    pub idempotency_ttl_ms: u64,
    /// How long a finished task's record is kept.
    pub retention_ms: u64,
}

/// The agent-health policy the outcome scripts apply (`[tasks]` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthPolicy {
    /// Health gained per completed task, lost per failed or expired attempt.
    pub success_step: u32,
    pub failure_step: u32,
    /// Quarantined below this score, for `quarantine_ms` (doubling per repeat).
    pub quarantine_below: u32,
    pub quarantine_ms: u64,
    /// At most this share (%) of a pool's live agents quarantined at once.
    pub quarantine_max_percent: u32,
    /// Probation ends at this score.
    pub probation_until: u32,
    /// Window of the per-agent quota of `weighted_fair` pools.
    pub quota_window_ms: u64,
    /// How long an agent's health and quarantine outlive its registration.
    pub memory_ms: u64,
    /// A task whose attempts took down this many agents (dead, restarted,
    /// stuck) is held as poison; 0: never.
    pub poison_after: u32,
    /// Silence after which an agent is declared failed (a lease that ran
    /// out in its hands counts as a casualty if it dies within twice this).
    pub failure_window_ms: u64,
}

/// Agents' budgets, as the scripts read them (pools' allowances are in
/// [`PoolSettings`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPolicy {
    pub unit: String,
    /// Below this balance an agent is halted.
    pub min_balance: f64,
    /// Budgets renew every window (aligned to the epoch); 0: never.
    pub window_ms: u64,
}

/// One pool's allocation settings, as the scripts read them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolSettings {
    pub pool: PoolType,
    pub strategy: Strategy,
    /// Tasks per agent per quota window (`weighted_fair`).
    pub quota: Option<u32>,
    /// An attempt with no new progress step for this long is stuck
    /// (unless its task says otherwise); 0: not watched.
    pub progress_timeout_ms: u64,
    /// Each agent's budget per window; 0: none.
    pub allowance: f64,
}

/// Queue score: lower runs first. One priority level is worth
/// `aging_ms_per_priority` of waiting.
pub fn queue_score(enqueued_at: u64, priority: u8, cfg: &TaskPolicy) -> f64 {
    enqueued_at as f64 - f64::from(priority) * cfg.aging_ms_per_priority as f64
}

#[derive(Debug, Clone)]
pub struct TaskStore {
    keys: Keys,
    epoch: u64,
    cfg: TaskPolicy,
}

impl TaskStore {
    pub fn new(keys: Keys, epoch: u64, cfg: TaskPolicy) -> Self {
        Self { keys, epoch, cfg }
    }

    pub async fn submit(
        &self,
        conn: &mut impl ConnectionLike,
        t: &ValidTask,
        now: u64,
    ) -> Result<Submitted> {
        let id = uuid::Uuid::new_v4().to_string();
        let reply = self.submit_call(t, &id, now).reply(conn).await?;
        Self::submitted(&reply, id, t, now)
    }

    /// Persists a task and runs its pool's allocation in the same round trip
    /// (a pipeline), so that a task which finds a free agent is handed out at
    /// once. The allocation's (assigned, still queued), or None if it failed:
    /// then the allocator must look at the pool.
    pub async fn submit_and_allocate(
        &self,
        conn: &mut impl ConnectionLike,
        t: &ValidTask,
        max: usize,
        now: u64,
    ) -> Result<(Submitted, Option<Allocation>)> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut p = redis::pipe();
        p.ignore_errors()
            .invoke_script(&self.submit_call(t, &id, now).invocation()?)
            .invoke_script(&self.allocate_call(t.pool, max, now).invocation()?);
        let mut replies: Vec<redis::RedisResult<Value>> =
            crate::telemetry::timed("submit", p.query_async(conn)).await?;
        let allocated = replies.pop().and_then(|r| r.ok());
        let submitted = match replies.pop() {
            Some(Ok(v)) => Reply::parse("submit", v)?,
            // Scripts flushed (a Redis restart): nothing ran; the plain call reloads them.
            Some(Err(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                return Ok((self.submit(conn, t, now).await?, None));
            }
            Some(Err(e)) => return Err(from_script(e)),
            None => return Err(StoreError::Reply("submit: no reply".into())),
        };
        let allocated = allocated.and_then(|v| Allocation::parse(v).ok());
        Ok((Self::submitted(&submitted, id, t, now)?, allocated))
    }

    fn submit_call(&self, t: &ValidTask, id: &str, now: u64) -> Call<'static> {
        let client = t.client_id.as_deref().unwrap_or("");
        // A placeholder key when there is no client id: the script never touches it.
        let client_key = self
            .keys
            .task_client(if client.is_empty() { "-" } else { client });
        let caps = serde_json::to_string(&t.capabilities).unwrap_or_else(|_| "[]".into());
        SUBMIT
            .fenced(&self.keys, self.epoch)
            .key("task", self.keys.task(id))
            .key("client", client_key)
            .key("queue", self.keys.queue(t.pool))
            .key("recent", self.keys.recent_tasks())
            .arg("id", id)
            .arg("client_id", client)
            .arg("pool", t.pool.as_str())
            .arg("capabilities", caps)
            .arg("priority", t.priority)
            .arg("payload", &t.payload)
            .arg("timeout_ms", t.timeout_ms)
            .arg("max_retries", t.max_retries)
            .arg(
                "progress_timeout_ms",
                t.progress_timeout_ms
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )
            .arg(
                "max_cost",
                t.max_cost.map(|v| v.to_string()).unwrap_or_default(),
            )
            .arg("now", now)
            .arg("score", queue_score(now, t.priority, &self.cfg))
            .arg("idempotency_ttl_ms", self.cfg.idempotency_ttl_ms)
            .arg("recent_max", RECENT_TASKS)
    }

    fn submitted(reply: &Reply, id: String, t: &ValidTask, now: u64) -> Result<Submitted> {
        match reply.outcome()? {
            "accepted" => Ok(Submitted::Accepted(Box::new(TaskRecord {
                id,
                client_id: t.client_id.clone(),
                pool: t.pool,
                capabilities: t.capabilities.clone(),
                priority: t.priority,
                payload: RawJson::from_text(t.payload.clone()).unwrap_or_default(),
                timeout_ms: t.timeout_ms,
                max_retries: t.max_retries,
                state: fleet_protocol::task::TaskState::Queued,
                attempt: 0,
                agent_id: None,
                submitted_at: now,
                updated_at: now,
                result: None,
                error: None,
                progress_timeout_ms: t.progress_timeout_ms,
                max_cost: t.max_cost,
                usage: 0.0,
                casualties: 0,
                attempts: Vec::new(),
            }))),
            "duplicate" => Ok(Submitted::Duplicate(reply.text("id")?.to_string())),
            _ => Err(reply.unexpected()),
        }
    }

    pub async fn get(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
    ) -> Result<Option<TaskRecord>> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.task(id))
            .query_async(conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        task_from_fields(&fields)
            .map(Some)
            .ok_or_else(|| StoreError::Reply(format!("task {id}: bad record")))
    }

    /// The ids of the newest tasks, newest first (the recent index:
    /// [`RECENT_TASKS`] at most).
    pub async fn recent_ids(&self, conn: &mut impl ConnectionLike) -> Result<Vec<String>> {
        Ok(redis::cmd("ZREVRANGE")
            .arg(self.keys.recent_tasks())
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await?)
    }

    /// The id of the task a client id names, while it is remembered.
    pub async fn by_client_id(
        &self,
        conn: &mut impl ConnectionLike,
        client_id: &str,
    ) -> Result<Option<String>> {
        Ok(redis::cmd("GET")
            .arg(self.keys.task_client(client_id))
            .query_async(conn)
            .await?)
    }

    /// A summary of each task of `ids`, in order, leaving out those whose
    /// record has expired. Pipelined, 500 at a time.
    pub async fn summaries(
        &self,
        conn: &mut impl ConnectionLike,
        ids: &[String],
    ) -> Result<Vec<TaskSummary>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut p = redis::pipe();
            for id in chunk {
                p.cmd("HMGET")
                    .arg(self.keys.task(id))
                    .arg(&TaskSummary::FIELDS);
            }
            let rows: Vec<Vec<Option<String>>> = p.query_async(conn).await?;
            out.extend(rows.into_iter().filter_map(TaskSummary::from_row));
        }
        Ok(out)
    }

    pub async fn cancel(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
        pool: PoolType,
        now: u64,
    ) -> Result<Cancelled> {
        let r = CANCEL
            .fenced(&self.keys, self.epoch)
            .key("task", self.keys.task(id))
            .key("queue", self.keys.queue(pool))
            .task_keys(&self.keys)
            .arg("id", id)
            .arg("now", now)
            .arg("retention_ms", self.cfg.retention_ms)
            .reply(conn)
            .await?;
        Ok(match r.outcome()? {
            "cancelled" => Cancelled::Cancelled(r.notice()),
            "unknown" => Cancelled::Unknown,
            "not_cancellable" => Cancelled::NotCancellable(r.text("state")?.to_string()),
            _ => return Err(r.unexpected()),
        })
    }

    /// Ends the quarantine of agents whose period is over (they go on
    /// probation). Returns their ids.
    pub async fn parole(
        &self,
        conn: &mut impl ConnectionLike,
        now: u64,
        max: usize,
    ) -> Result<Vec<String>> {
        PAROLE
            .fenced(&self.keys, self.epoch)
            .task_keys(&self.keys)
            .arg("now", now)
            .arg("max", max)
            .run(conn)
            .await
    }

    /// Tasks waiting in a pool's queue.
    pub async fn queue_depth(&self, conn: &mut impl ConnectionLike, pool: PoolType) -> Result<u64> {
        Ok(redis::cmd("ZCARD")
            .arg(self.keys.queue(pool))
            .query_async(conn)
            .await?)
    }

    /// Tasks waiting in every pool's queue, in [`PoolType::ALL`] order (one round trip).
    pub async fn queue_depths(&self, conn: &mut impl ConnectionLike) -> Result<Vec<u64>> {
        let mut p = redis::pipe();
        for pool in PoolType::ALL {
            p.zcard(self.keys.queue(pool));
        }
        Ok(p.query_async(conn).await?)
    }

    /// The ids at the head of a pool's queue, in the order they will run.
    pub async fn queued(
        &self,
        conn: &mut impl ConnectionLike,
        pool: PoolType,
        n: usize,
    ) -> Result<Vec<String>> {
        Ok(redis::cmd("ZRANGE")
            .arg(self.keys.queue(pool))
            .arg(0)
            .arg(n.saturating_sub(1))
            .query_async(conn)
            .await?)
    }

    /// Hands up to `max` of a pool's queued tasks to its available agents.
    pub async fn allocate(
        &self,
        conn: &mut impl ConnectionLike,
        pool: PoolType,
        max: usize,
        now: u64,
    ) -> Result<Allocation> {
        Allocation::parse(self.allocate_call(pool, max, now).run(conn).await?)
    }

    fn allocate_call(&self, pool: PoolType, max: usize, now: u64) -> Call<'static> {
        ALLOCATE
            .fenced(&self.keys, self.epoch)
            .key("queue", self.keys.queue(pool))
            .key("evidence", self.keys.evidence())
            .key("paused", self.keys.paused())
            .task_keys(&self.keys)
            .arg("pool", pool.as_str())
            .arg("max", max)
            .arg("now", now)
            .arg("ack_ms", self.cfg.ack_timeout_ms)
            .arg("evidence_cap", EVIDENCE_CAP)
            .arg("retention_ms", self.cfg.retention_ms)
            .arg("prefix.task_evidence", self.keys.task_evidence_prefix())
    }

    /// Applies an agent's report. `outcome` is `None` for a report about an
    /// attempt that is no longer current (duplicate or late): ignored.
    pub async fn report(
        &self,
        conn: &mut impl ConnectionLike,
        kind: ReportKind,
        r: &TaskReport,
        now: u64,
        once: Option<&Once>,
    ) -> Result<Reported> {
        let call = match kind {
            ReportKind::Ack | ReportKind::Progress => TASK_ACK
                .fenced(&self.keys, self.epoch)
                .key("task", self.keys.task(&r.task_id))
                .key("leases", self.keys.leases())
                .key("stalls", self.keys.stalls())
                .key("settings", self.keys.settings())
                .arg(
                    "progress",
                    r.progress.map(|p| p.to_string()).unwrap_or_default(),
                )
                .arg("step", r.step.map(|s| s.to_string()).unwrap_or_default()),
            ReportKind::Complete | ReportKind::Fail => {
                let (outcome, detail) = match kind {
                    ReportKind::Complete => (
                        "completed",
                        r.result.as_ref().map_or("null", RawJson::get).to_string(),
                    ),
                    _ => ("failed", r.error.clone().unwrap_or_default()),
                };
                TASK_DONE
                    .fenced(&self.keys, self.epoch)
                    .key("task", self.keys.task(&r.task_id))
                    .task_keys(&self.keys)
                    .arg("outcome", outcome)
                    .arg("detail", detail)
                    .arg("usage", r.usage.map(|u| u.to_string()).unwrap_or_default())
                    .arg("retention_ms", self.cfg.retention_ms)
                    .arg("backoff_ms", self.cfg.retry_backoff_ms)
                    .arg("backoff_max_ms", self.cfg.retry_backoff_max_ms)
            }
        };
        let reply = call
            .once(&self.keys, once)
            .arg("id", &r.task_id)
            .arg("attempt", r.attempt)
            .arg("agent_id", &r.agent_id)
            .arg("now", now)
            .reply(conn)
            .await?;
        let pool = || reply.pool("pool").ok();
        let outcome = match reply.outcome()? {
            "ok" => Some(ReportOutcome::Running),
            "repeated" => Some(ReportOutcome::Repeated),
            "completed" => Some(ReportOutcome::Completed(pool())),
            "retrying" => Some(ReportOutcome::Retrying(pool())),
            "dead" if reply.text("overBudget").is_ok() => Some(ReportOutcome::OverBudget(pool())),
            "dead" => Some(ReportOutcome::Dead(pool())),
            "recorded" => Some(ReportOutcome::Recorded),
            "stale" => None,
            _ => return Err(reply.unexpected()),
        };
        Ok(Reported {
            outcome,
            halt: reply.notice(),
        })
    }

    /// Leases that ran out at or before `now`.
    pub async fn expired_leases(
        &self,
        conn: &mut impl ConnectionLike,
        now: u64,
        limit: usize,
    ) -> Result<Vec<String>> {
        scored_upto(conn, &self.keys.leases(), now, limit).await
    }

    /// Attempts that showed no progress in time, at or before `now`.
    pub async fn stalled(
        &self,
        conn: &mut impl ConnectionLike,
        now: u64,
        limit: usize,
    ) -> Result<Vec<String>> {
        scored_upto(conn, &self.keys.stalls(), now, limit).await
    }

    /// Takes a task back from an agent whose lease ran out, or that is
    /// stuck on it: `None` if there was nothing to take back (the attempt
    /// finished, or its lease is still fresh).
    pub async fn expire(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
        now: u64,
        why: Takeback,
    ) -> Result<Option<TakenBack>> {
        let r = EXPIRE
            .fenced(&self.keys, self.epoch)
            .key("task", self.keys.task(id))
            .task_keys(&self.keys)
            .arg("id", id)
            .arg("now", now)
            .arg("why", why.as_str())
            .reply(conn)
            .await?;
        let to = match r.outcome()? {
            "queued" => Requeued::Queued,
            "dead" => Requeued::Dead,
            "poison" => Requeued::Poison,
            "fresh" | "stale" | "gone" => return Ok(None),
            _ => return Err(r.unexpected()),
        };
        Ok(Some(TakenBack {
            to,
            agent: r.text("agent")?.to_string(),
            notice: r.notice(),
        }))
    }

    /// Moves retries whose backoff is over back to their queues; returns how many pools got tasks.
    pub async fn release_delayed(
        &self,
        conn: &mut impl ConnectionLike,
        now: u64,
        limit: usize,
    ) -> Result<usize> {
        let pools: Vec<String> = RELEASE
            .fenced(&self.keys, self.epoch)
            .task_keys(&self.keys)
            .arg("now", now)
            .arg("max", limit)
            .run(conn)
            .await?;
        Ok(pools.len())
    }

    /// Tasks held aside (dead letters or poison), most recent first.
    pub async fn held(
        &self,
        conn: &mut impl ConnectionLike,
        which: Held,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        let ids = crate::registry::newest(conn, &self.held_key(which), limit).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for the page, not one per task.
        let mut p = redis::pipe();
        for id in &ids {
            p.hgetall(self.keys.task(id));
        }
        let rows: Vec<HashMap<String, String>> = p.query_async(conn).await?;
        Ok(rows.iter().filter_map(task_from_fields).collect())
    }

    /// The ids of the newest `limit` tasks held aside.
    pub async fn held_ids(
        &self,
        conn: &mut impl ConnectionLike,
        which: Held,
        limit: usize,
    ) -> Result<Vec<String>> {
        crate::registry::newest(conn, &self.held_key(which), limit).await
    }

    /// Deletes a dead letter for good (record, evidence, client id); false
    /// if the task is not in the dead letters.
    pub async fn delete_dead(&self, conn: &mut impl ConnectionLike, id: &str) -> Result<bool> {
        let r = DLQ_DELETE
            .fenced(&self.keys, self.epoch)
            .key("task", self.keys.task(id))
            .key("dead", self.keys.dead())
            .key("evidence", self.keys.task_evidence(id))
            .key("recent", self.keys.recent_tasks())
            .arg("id", id)
            .arg("prefix.task_client", self.keys.task_client_prefix())
            .reply(conn)
            .await?;
        Ok(match r.outcome()? {
            "deleted" => true,
            "not_dead" => false,
            _ => return Err(r.unexpected()),
        })
    }

    /// Pauses (`true`) or resumes a pool's queue; whether that changed it.
    pub async fn set_paused(
        &self,
        conn: &mut impl ConnectionLike,
        pool: PoolType,
        paused: bool,
        now: u64,
    ) -> Result<bool> {
        let r = POOL_PAUSE
            .fenced(&self.keys, self.epoch)
            .key("paused", self.keys.paused())
            .arg("pool", pool.as_str())
            .arg("paused", if paused { "1" } else { "0" })
            .arg("now", now)
            .reply(conn)
            .await?;
        Ok(match r.outcome()? {
            "paused" | "resumed" => true,
            "unchanged" => false,
            _ => return Err(r.unexpected()),
        })
    }

    /// The paused pools, with when each was paused.
    pub async fn paused(&self, conn: &mut impl ConnectionLike) -> Result<HashMap<String, u64>> {
        Ok(redis::cmd("HGETALL")
            .arg(self.keys.paused())
            .query_async(conn)
            .await?)
    }

    /// The ids of up to `max` tasks waiting in a pool's queue, first first.
    pub async fn queued_ids(
        &self,
        conn: &mut impl ConnectionLike,
        pool: PoolType,
        max: usize,
    ) -> Result<Vec<String>> {
        Ok(redis::cmd("ZRANGE")
            .arg(self.keys.queue(pool))
            .arg(0)
            .arg(max.saturating_sub(1))
            .query_async(conn)
            .await?)
    }

    /// How many tasks are held aside: (dead letters, poison), in one round trip.
    pub async fn held_counts(&self, conn: &mut impl ConnectionLike) -> Result<(u64, u64)> {
        Ok(redis::pipe()
            .zcard(self.held_key(Held::Dead))
            .zcard(self.held_key(Held::Poison))
            .query_async(conn)
            .await?)
    }

    fn held_key(&self, which: Held) -> String {
        match which {
            Held::Dead => self.keys.dead(),
            Held::Poison => self.keys.poison(),
        }
    }

    /// Sends a task held aside back to its queue with fresh retries (and,
    /// from poison, no casualties). `Err(state)` if it is not held there.
    pub async fn requeue_held(
        &self,
        conn: &mut impl ConnectionLike,
        which: Held,
        id: &str,
        now: u64,
    ) -> Result<std::result::Result<(), String>> {
        let r = DLQ_REQUEUE
            .fenced(&self.keys, self.epoch)
            .key("task", self.keys.task(id))
            .task_keys(&self.keys)
            .arg("id", id)
            .arg("now", now)
            .arg("from", which.as_str())
            .reply(conn)
            .await?;
        Ok(match r.outcome()? {
            "queued" => Ok(()),
            "not_held" => Err(r.text("state")?.to_string()),
            _ => return Err(r.unexpected()),
        })
    }
}

/// The sets where tasks are held aside until an operator acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Out of retries.
    Dead,
    /// Took down `tasks.poison_after` agents.
    Poison,
}

impl Held {
    pub fn as_str(self) -> &'static str {
        match self {
            Held::Dead => "dead",
            Held::Poison => "poison",
        }
    }
}

/// Why a commander takes an attempt back from its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeback {
    /// The attempt's lease ran out.
    Lease,
    /// The agent showed no progress within the progress timeout.
    Stuck,
}

impl Takeback {
    pub fn as_str(self) -> &'static str {
        match self {
            Takeback::Lease => "lease",
            Takeback::Stuck => "stuck",
        }
    }
}

/// What an agent's report did, and the halt to send the agent when its
/// budget fell below the minimum with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    pub outcome: Option<ReportOutcome>,
    pub halt: Option<Notice>,
}

/// What an agent's report did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportOutcome {
    Running,
    /// A `task_progress` whose step was not above the last: not progress.
    Repeated,
    Completed(Option<PoolType>),
    Retrying(Option<PoolType>),
    Dead(Option<PoolType>),
    /// The attempt consumed more than the task's `maxCost`: the task is
    /// dead-lettered as `over_budget`.
    OverBudget(Option<PoolType>),
    /// A re-sent result: this attempt had completed the task already.
    Recorded,
}

/// How a pool's completed tasks are shared among its agents: the inputs of
/// its fairness figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completions {
    pub pool: PoolType,
    /// Agents that completed at least one task.
    pub agents: u64,
    /// The fewest tasks one of them completed.
    pub fewest: u64,
    /// The most.
    pub most: u64,
    /// The pool's completions in all.
    pub total: u64,
}

/// An attempt taken back from its agent ([`TaskStore::expire`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenBack {
    /// Where the task went.
    pub to: Requeued,
    /// The agent it was taken from.
    pub agent: String,
    /// The agent's `task_cancel`, to publish.
    pub notice: Option<Notice>,
}

/// Where a task taken back goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeued {
    /// Back to its queue, for another attempt.
    Queued,
    /// Out of retries: dead-lettered.
    Dead,
    /// It took down too many agents: held as poison.
    Poison,
}

impl TaskStore {
    /// Per pool, how its completions are shared ([`Completions`]), from the
    /// pool's completion sorted set and the counters hash; one round trip.
    pub async fn fairness_inputs(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> Result<Vec<Completions>> {
        let mut p = redis::pipe();
        for pool in PoolType::ALL {
            let key = self.keys.pool_done(pool);
            p.cmd("ZCARD").arg(&key);
            p.cmd("ZRANGE").arg(&key).arg(0).arg(0).arg("WITHSCORES");
            p.cmd("ZRANGE").arg(&key).arg(-1).arg(-1).arg("WITHSCORES");
            p.cmd("HGET")
                .arg(self.keys.counts())
                .arg(format!("{pool}:done"));
        }
        type Row = (u64, Vec<(String, f64)>, Vec<(String, f64)>, Option<u64>);
        let rows: Vec<Row> = {
            let raw: Vec<Value> = p.query_async(conn).await?;
            raw.chunks(4)
                .map(|c| -> Result<Row> {
                    Ok((
                        redis::from_redis_value_ref(&c[0])?,
                        redis::from_redis_value_ref(&c[1])?,
                        redis::from_redis_value_ref(&c[2])?,
                        redis::from_redis_value_ref(&c[3])?,
                    ))
                })
                .collect::<Result<_>>()?
        };
        Ok(PoolType::ALL
            .into_iter()
            .zip(rows)
            .map(|(pool, (n, lo, hi, total))| {
                let score = |v: &[(String, f64)]| v.first().map(|x| x.1 as u64).unwrap_or(0);
                Completions {
                    pool,
                    agents: n,
                    fewest: score(&lo),
                    most: score(&hi),
                    total: total.unwrap_or(0),
                }
            })
            .collect())
    }

    /// A task's allocation decisions, oldest first.
    pub async fn evidence(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
    ) -> Result<Vec<serde_json::Value>> {
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.keys.task_evidence(id))
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await?;
        Ok(raw
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect())
    }
}

/// Writes what the scripts read from the config: each pool's strategy and
/// quota, and the health policy. Called at start (and on a config reload).
pub async fn write_settings(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    health: &HealthPolicy,
    budget: &BudgetPolicy,
    pools: &[PoolSettings],
) -> Result<()> {
    let (poison_after, failure_window) = (health.poison_after, health.failure_window_ms);
    let health = serde_json::json!({
        "up": health.success_step,
        "down": health.failure_step,
        "below": health.quarantine_below,
        "clear": health.probation_until,
        "period": health.quarantine_ms,
        "cap": health.quarantine_max_percent,
        "window": health.quota_window_ms,
        "memory": health.memory_ms,
    });
    let mut pipe = redis::pipe();
    pipe.atomic()
        .hset(keys.settings(), "health", health.to_string())
        .hset(keys.settings(), "healthChannel", keys.channels().health())
        .hset(keys.settings(), "poisonAfter", poison_after)
        .hset(keys.settings(), "failureWindow", failure_window)
        .hset(keys.settings(), "budgetMin", budget.min_balance)
        .hset(keys.settings(), "budgetWindow", budget.window_ms)
        .hset(keys.settings(), "budgetUnit", &budget.unit);
    for p in pools {
        pipe.hset(keys.settings(), p.pool.as_str(), p.strategy.as_str());
        match p.quota {
            Some(q) => pipe.hset(keys.settings(), format!("{}:quota", p.pool), q),
            None => pipe.hdel(keys.settings(), format!("{}:quota", p.pool)),
        };
        pipe.hset(
            keys.settings(),
            format!("{}:progressTimeout", p.pool),
            p.progress_timeout_ms,
        );
        pipe.hset(
            keys.settings(),
            format!("{}:allowance", p.pool),
            p.allowance,
        );
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// Builds a task record from its hash's fields; `None` if a required field is missing or bad.
pub fn task_from_fields(f: &HashMap<String, String>) -> Option<TaskRecord> {
    let s = |k: &str| f.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let u = |k: &str| s(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(TaskRecord {
        id: s("id")?.to_string(),
        client_id: s("clientId").map(str::to_string),
        pool: s("pool")?.parse().ok()?,
        capabilities: s("capabilities")
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default(),
        priority: u("priority") as u8,
        payload: s("payload")
            .and_then(|v| RawJson::from_text(v.to_string()).ok())
            .unwrap_or_default(),
        timeout_ms: u("timeoutMs"),
        max_retries: u("maxRetries") as u32,
        state: s("state")?.parse().ok()?,
        attempt: u("attempt") as u32,
        agent_id: s("agent").filter(|a| !a.is_empty()).map(str::to_string),
        submitted_at: u("submittedAt"),
        updated_at: u("updatedAt"),
        result: s("result").and_then(|v| RawJson::from_text(v.to_string()).ok()),
        error: s("error").map(str::to_string),
        progress_timeout_ms: s("progressTimeoutMs").and_then(|v| v.parse().ok()),
        max_cost: s("maxCost").and_then(|v| v.parse().ok()),
        usage: s("usage").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        casualties: u("casualties") as u32,
        attempts: attempts(f),
    })
}

/// The attempts of a task: its history (`history`, written by the scripts'
/// `attempt_ended`), then the current attempt while one is held.
fn attempts(f: &HashMap<String, String>) -> Vec<fleet_protocol::task::Attempt> {
    let mut all: Vec<fleet_protocol::task::Attempt> = f
        .get("history")
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    let state = f.get("state").map(String::as_str);
    if let (Some("assigned" | "running"), Some(agent)) = (state, f.get("agent")) {
        all.push(fleet_protocol::task::Attempt {
            attempt: f.get("attempt").and_then(|a| a.parse().ok()).unwrap_or(0),
            agent_id: agent.clone(),
            started_at: f
                .get("assignedAt")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            ended_at: None,
            outcome: "running".into(),
            error: None,
        });
    }
    all
}

/// A task as listed (`GET /v1/tasks`): no payload or result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSummary {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub pool: String,
    pub state: String,
    pub priority: u8,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub submitted_at: u64,
    pub updated_at: u64,
}

impl TaskSummary {
    const FIELDS: [&'static str; 10] = [
        "id",
        "clientId",
        "pool",
        "state",
        "priority",
        "attempt",
        "agent",
        "submittedAt",
        "updatedAt",
        "lastAgent",
    ];

    fn from_row(row: Vec<Option<String>>) -> Option<TaskSummary> {
        let [id, client, pool, state, priority, attempt, agent, submitted, updated, last]: [Option<
            String,
        >;
            10] = row.try_into().ok()?;
        let num = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Some(TaskSummary {
            id: id?,
            client_id: client.filter(|c| !c.is_empty()),
            pool: pool?,
            state: state?,
            priority: num(priority).min(255) as u8,
            attempt: num(attempt) as u32,
            // The agent that holds it, else the last one that tried it.
            agent_id: agent
                .filter(|a| !a.is_empty())
                .or(last.filter(|a| !a.is_empty())),
            submitted_at: num(submitted),
            updated_at: num(updated),
        })
    }
}
