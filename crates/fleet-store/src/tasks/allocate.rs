//! Queues and allocation: queue depths and heads, handing queued tasks to
//! agents, pausing a pool's queue, the fairness inputs and the allocation evidence.

use super::*;

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
    pub(super) fn parse(v: Value) -> Result<Allocation> {
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

impl TaskStore {
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

    pub(super) fn allocate_call(&self, pool: PoolType, max: usize, now: u64) -> Call<'_> {
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
        let decisions: Option<String> = redis::cmd("HGET")
            .arg(self.keys.task(id))
            .arg("decisions")
            .query_async(conn)
            .await?;
        if let Some(d) = decisions {
            return Ok(serde_json::from_str(&d).unwrap_or_default());
        }
        // Written before decisions moved into the record: a list of its own.
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
