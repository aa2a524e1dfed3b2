//! Submissions and cancellation: a task persisted (and, in the same round trip,
//! allocated in its pool), idempotent by client id; a task cancelled before it finishes.

use super::*;

/// What a submission did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Persisted and queued: the record as stored.
    Accepted(Box<TaskRecord>),
    /// The client id already names this task.
    Duplicate(String),
}

impl Submitted {
    /// The task's id (the new one's, or the one its client id names).
    pub fn id(&self) -> &str {
        match self {
            Submitted::Accepted(t) => &t.id,
            Submitted::Duplicate(id) => id,
        }
    }
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

impl TaskStore {
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
            .add_command(self.submit_call(t, &id, now).cmd()?)
            .add_command(self.allocate_call(t.pool, max, now).cmd()?);
        let mut replies: Vec<redis::RedisResult<Value>> =
            crate::telemetry::timed("submit", p.query_async(conn)).await?;
        let allocated = replies.pop().and_then(|r| r.ok());
        let submitted = match replies.pop() {
            Some(Ok(v)) => Reply::parse("submit", v)?,
            // The library lost (a Redis restart): nothing ran; the plain
            // call loads it again.
            Some(Err(e)) if crate::script::missing(&e) => {
                return Ok((self.submit(conn, t, now).await?, None));
            }
            Some(Err(e)) => return Err(from_script(e)),
            None => return Err(StoreError::Reply("submit: no reply".into())),
        };
        let allocated = allocated.and_then(|v| Allocation::parse(v).ok());
        Ok((Self::submitted(&submitted, id, t, now)?, allocated))
    }

    /// Persists several tasks in one round trip: a pipeline of their
    /// submissions, then one allocation for each pool they went to. What
    /// each submission did, in order, and each pool's allocation (None if it
    /// failed: then the allocator must look at the pool).
    pub async fn submit_many(
        &self,
        conn: &mut impl ConnectionLike,
        tasks: &[&ValidTask],
        max: usize,
        now: u64,
    ) -> Result<(Vec<Submitted>, Vec<(PoolType, Option<Allocation>)>)> {
        let ids: Vec<String> = tasks
            .iter()
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let mut pools: Vec<PoolType> = Vec::new();
        for t in tasks {
            if !pools.contains(&t.pool) {
                pools.push(t.pool);
            }
        }
        let mut p = redis::pipe();
        p.ignore_errors();
        for (t, id) in tasks.iter().zip(&ids) {
            p.add_command(self.submit_call(t, id, now).cmd()?);
        }
        for pool in &pools {
            p.add_command(self.allocate_call(*pool, max, now).cmd()?);
        }
        let mut replies: Vec<redis::RedisResult<Value>> =
            crate::telemetry::timed("submit", p.query_async(conn)).await?;
        let allocations = replies.split_off(tasks.len());
        let mut out = Vec::with_capacity(tasks.len());
        for ((t, id), r) in tasks.iter().zip(ids).zip(replies) {
            out.push(match r {
                Ok(v) => Self::submitted(&Reply::parse("submit", v)?, id, t, now)?,
                // The library lost (a Redis restart): this one did not run;
                // the plain call loads it again.
                Err(e) if crate::script::missing(&e) => self.submit(conn, t, now).await?,
                Err(e) => return Err(from_script(e)),
            });
        }
        let allocated = pools
            .into_iter()
            .zip(allocations)
            .map(|(pool, r)| (pool, r.ok().and_then(|v| Allocation::parse(v).ok())))
            .collect();
        Ok((out, allocated))
    }

    pub(super) fn submit_call(&self, t: &ValidTask, id: &str, now: u64) -> Call<'_> {
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

    pub(super) fn submitted(
        reply: &Reply,
        id: String,
        t: &ValidTask,
        now: u64,
    ) -> Result<Submitted> {
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
}
