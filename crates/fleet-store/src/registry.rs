//! The agent registry in Redis.
//!
//! Layout (names in [`crate::keys`]): one hash per agent, a set per pool, a
//! sorted set of live agents by last heartbeat, a sorted set of failed agents
//! by failure time, and a hash of `{pool}:{status}` counters. Every change
//! that touches more than one key is one Lua script, and every script begins
//! with the fencing check against the commander epoch, so a commander that
//! has been superseded can no longer write.

pub use crate::error::{Result, StoreError};
use crate::keys::Keys;
use crate::script::{Call, Reply, ScriptDef};
use crate::scripts::{DRAIN, FAIL, HEARTBEAT, REGISTER, REMOVE};
use crate::{Notice, Once};
use fleet_protocol::agent::{AgentRecord, Health, Performance};
use fleet_protocol::{AgentStatus, PoolType, Resources};
use redis::aio::ConnectionLike;
use redis::ToRedisArgs;
use std::collections::{BTreeMap, HashMap};

/// The record of a newly registered agent.
pub fn fresh_record(a: &NewAgent<'_>, now: u64) -> AgentRecord {
    AgentRecord {
        id: a.id.to_string(),
        agent_type: a.agent_type.to_string(),
        pool: a.pool,
        status: AgentStatus::Idle,
        priority: a.priority,
        capabilities: a.capabilities.to_vec(),
        performance: Performance {
            tasks_completed: 0,
            avg_task_time: 0.0,
            success_rate: 0.0,
            last_active: now,
        },
        health: Health {
            last_heartbeat: now,
            failures: 0,
            recovery_attempts: 0,
            score: 100,
            quarantined_until: 0,
            probation: false,
            stuck: 0,
            stuck_at: 0,
        },
        resources: a.resources,
        capacity: a.capacity,
        load: 0.0,
        registered_at: now,
        draining: false,
    }
}

/// Builds a record from an agent hash's fields; `None` if a required field is missing or bad.
pub fn agent_from_fields(fields: &HashMap<String, String>) -> Option<AgentRecord> {
    let s = |k: &str| fields.get(k).map(String::as_str);
    let n = |k: &str| s(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let u = |k: &str| s(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(AgentRecord {
        id: s("id")?.to_string(),
        agent_type: s("type").unwrap_or_default().to_string(),
        pool: s("pool")?.parse().ok()?,
        status: s("status")?.parse().ok()?,
        priority: s("priority").and_then(|v| v.parse().ok()).unwrap_or(5),
        capabilities: s("capabilities")
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default(),
        performance: Performance {
            tasks_completed: u("tasksCompleted"),
            avg_task_time: n("avgTaskTime"),
            success_rate: n("successRate"),
            last_active: u("lastActive"),
        },
        health: Health {
            last_heartbeat: u("lastHeartbeat"),
            failures: u("failures") as u32,
            recovery_attempts: u("recoveryAttempts") as u32,
            score: s("health").and_then(|v| v.parse().ok()).unwrap_or(100),
            quarantined_until: u("quarantinedUntil"),
            probation: s("probation") == Some("1"),
            stuck: u("stuck") as u32,
            stuck_at: u("stuckAt"),
        },
        resources: Resources {
            memory: n("memory"),
            cpu: n("cpu"),
            network: n("network"),
        },
        capacity: s("capacity").and_then(|v| v.parse().ok()).unwrap_or(1),
        load: n("load"),
        registered_at: u("registeredAt"),
        draining: s("draining") == Some("1"),
    })
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterOutcome {
    /// A new agent. `announced`: the script already published the
    /// pre-rendered reply and event.
    /// `halt`: its budget is below the minimum; the halt to send it after
    /// the reply.
    Registered {
        record: AgentRecord,
        announced: bool,
        halt: Option<crate::Notice>,
    },
    /// `orphans`: tasks the previous instance held, given back.
    ReRegistered {
        record: AgentRecord,
        orphans: Orphans,
        halt: Option<crate::Notice>,
    },
    PoolFull,
    FleetFull,
    /// The id is registered in another pool.
    PoolMismatch(String),
}

/// What a heartbeat did.
#[derive(Debug, Clone, PartialEq)]
pub enum HeartbeatOutcome {
    /// Its nonce was recorded already: nothing changed.
    Replay,
    Unknown,
    Ok,
    /// A failed agent was heard again.
    Recovering(PoolType),
    /// A recovering agent is back in service.
    Recovered(PoolType),
    /// A halted agent's budget window renewed: it gets work again; the
    /// resume to send it.
    Resumed(Option<crate::Notice>),
}

/// What the failure check did.
#[derive(Debug, Clone, PartialEq)]
pub enum FailOutcome {
    /// Heard from in time (or not registered any more): nothing done.
    Fresh,
    Failed {
        pool: PoolType,
        failures: u32,
        last_heartbeat: u64,
        orphans: Orphans,
    },
    Removed {
        pool: PoolType,
        failures: u32,
        last_heartbeat: u64,
        orphans: Orphans,
    },
}

/// Tasks an agent held when it failed, left or restarted: given back at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Orphans {
    pub requeued: u32,
    pub dead: u32,
    /// Held as poison: they took down `tasks.poison_after` agents.
    pub poisoned: u32,
}

/// Agents per pool and status, from the counters hash.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub by_pool: BTreeMap<PoolType, BTreeMap<AgentStatus, u64>>,
}

impl Counts {
    pub fn get(&self, pool: PoolType, status: AgentStatus) -> u64 {
        self.by_pool
            .get(&pool)
            .and_then(|m| m.get(&status))
            .copied()
            .unwrap_or(0)
    }
    pub fn pool_total(&self, pool: PoolType) -> u64 {
        self.by_pool
            .get(&pool)
            .map(|m| m.values().sum())
            .unwrap_or(0)
    }
    pub fn total(&self) -> u64 {
        self.by_pool.values().flat_map(|m| m.values()).sum()
    }
}

/// Messages for a new agent, rendered in advance, that the register script
/// publishes itself, saving a round trip on the common path.
#[derive(Debug, Clone, Copy)]
pub struct Announce<'a> {
    pub agent_channel: &'a str,
    pub reply: &'a str,
    pub registry_channel: &'a str,
    pub event: &'a str,
}

/// Registration as the registry needs it (already validated).
#[derive(Debug, Clone)]
pub struct NewAgent<'a> {
    pub id: &'a str,
    pub pool: PoolType,
    pub agent_type: &'a str,
    pub priority: u8,
    pub capabilities: &'a [String],
    pub resources: Resources,
    pub pool_max: u32,
    pub fleet_max: u32,
    /// Tasks the agent takes at once.
    pub capacity: u32,
    /// The agent process's instance id: a new one on re-registration means
    /// the agent restarted and lost what it held.
    pub instance: &'a str,
    /// The X25519 public key (base64) of the session it set up; empty for none.
    pub session_key: &'a str,
}

/// The Redis-backed registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    keys: Keys,
    /// The fencing token every write carries.
    epoch: u64,
}

/// An agent that left the registry lately (`GET /v1/departed`): what it was
/// and why it went, kept for the health memory (`tasks.health_memory_ms`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Departed {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub left_at: u64,
    /// `left` (deregistered), `expired` (failed, never came back),
    /// `max_failures` (removed after repeated failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_because: Option<String>,
    pub registered_at: u64,
    pub tasks_completed: u64,
    pub tasks_failed: u64,
    pub health: u64,
}

impl Registry {
    /// The newest `limit` agents that left and have not come back.
    pub async fn departed(
        &self,
        conn: &mut impl ConnectionLike,
        limit: usize,
    ) -> Result<Vec<Departed>> {
        let ids: Vec<(String, u64)> = redis::cmd("ZREVRANGE")
            .arg(self.keys.departed())
            .arg(0)
            .arg(limit.saturating_sub(1))
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for (id, _) in &ids {
            p.hgetall(format!("{}{id}", self.keys.agent_history_prefix()))
                .exists(self.keys.agent(id));
        }
        let raw: Vec<redis::Value> = p.query_async(conn).await?;
        let mut out = Vec::new();
        for ((id, at), pair) in ids.into_iter().zip(raw.chunks(2)) {
            let back: bool = redis::from_redis_value_ref(&pair[1])?;
            if back {
                continue;
            }
            let h: HashMap<String, String> = redis::from_redis_value_ref(&pair[0])?;
            let n = |k: &str| h.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            out.push(Departed {
                pool: h.get("pool").filter(|p| !p.is_empty()).cloned(),
                left_at: at,
                left_because: h.get("leftBecause").cloned(),
                registered_at: n("registeredAt"),
                tasks_completed: n("tasksCompleted"),
                tasks_failed: n("tasksFailed"),
                health: h.get("health").and_then(|v| v.parse().ok()).unwrap_or(100),
                id,
            });
        }
        Ok(out)
    }

    pub fn new(keys: Keys, epoch: u64) -> Self {
        Self { keys, epoch }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Takes over as the commander allowed to write: increments the epoch and
    /// returns it. Any older commander's next write is refused.
    pub async fn claim_epoch(conn: &mut impl ConnectionLike, keys: &Keys) -> Result<u64> {
        Ok(redis::cmd("INCR")
            .arg(keys.epoch())
            .query_async(conn)
            .await?)
    }

    /// A call of one of the registry's scripts on agent `id`.
    pub(crate) fn call<'s>(&'s self, script: &'s ScriptDef, id: &str) -> Call<'s> {
        script
            .fenced(&self.keys, self.epoch)
            .key("agent", self.keys.agent(id))
            .key("heartbeats", self.keys.heartbeats())
            .key("failed", self.keys.failed())
            .task_keys(&self.keys)
            .arg("id", id)
    }

    pub async fn register(
        &self,
        conn: &mut impl ConnectionLike,
        a: &NewAgent<'_>,
        now: u64,
        announce: Option<&Announce<'_>>,
        once: Option<&Once>,
    ) -> Result<RegisterOutcome> {
        let caps = serde_json::to_string(a.capabilities).unwrap_or_else(|_| "[]".into());
        let mut call = self
            .call(&REGISTER, a.id)
            .once(&self.keys, once)
            .arg("pool", a.pool.as_str())
            .arg("pool_max", a.pool_max)
            .arg("fleet_max", a.fleet_max)
            .arg("now", now)
            .arg("type", a.agent_type)
            .arg("priority", a.priority)
            .arg("capabilities", caps)
            .arg("memory", a.resources.memory)
            .arg("cpu", a.resources.cpu)
            .arg("network", a.resources.network)
            .arg("capacity", a.capacity)
            .arg("instance", a.instance)
            .arg("session", a.session_key);
        // Declared arguments are always given: empty when there is no announcement.
        let x = announce.copied().unwrap_or(Announce {
            agent_channel: "",
            reply: "",
            registry_channel: "",
            event: "",
        });
        call = call
            .arg("reply_channel", x.agent_channel)
            .arg("reply", x.reply)
            .arg("event_channel", x.registry_channel)
            .arg("event", x.event);
        let r = call.reply(conn).await?;
        let record = || registered_record(&r, a, now);
        Ok(match r.outcome()? {
            "registered" => RegisterOutcome::Registered {
                record: record()?,
                announced: false,
                halt: r.notice(),
            },
            "announced" => RegisterOutcome::Registered {
                record: record()?,
                announced: true,
                halt: None,
            },
            "reregistered" => RegisterOutcome::ReRegistered {
                record: record()?,
                halt: r.notice(),
                orphans: Orphans {
                    requeued: r.num("requeued")?,
                    dead: r.num("dead")?,
                    poisoned: r.num("poisoned")?,
                },
            },
            "pool_full" => RegisterOutcome::PoolFull,
            "fleet_full" => RegisterOutcome::FleetFull,
            "pool_mismatch" => RegisterOutcome::PoolMismatch(r.text("pool")?.to_string()),
            _ => return Err(r.unexpected()),
        })
    }

    /// The X25519 public key of agent `id`'s session, if it has one.
    pub async fn session_key(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
    ) -> Result<Option<String>> {
        Ok(redis::cmd("HGET")
            .arg(self.keys.agent(id))
            .arg("sessionKey")
            .query_async(conn)
            .await?)
    }

    /// Records `batch` in one script call, in order, each heartbeat with
    /// the time it was sealed (None: unsigned, not checked): one outcome per
    /// heartbeat. A heartbeat sealed no later than the last one recorded for
    /// its agent (since it registered) is a replay, and changes nothing.
    pub async fn heartbeats(
        &self,
        conn: &mut impl ConnectionLike,
        batch: &[(&fleet_protocol::Heartbeat, Option<u64>)],
        now: u64,
    ) -> Result<Vec<HeartbeatOutcome>> {
        fn bytes(v: impl ToRedisArgs) -> Vec<u8> {
            v.to_redis_args().concat()
        }
        let mut call = HEARTBEAT
            .fenced(&self.keys, self.epoch)
            .key("heartbeats", self.keys.heartbeats())
            .key("failed", self.keys.failed())
            .task_keys(&self.keys)
            .arg("now", now);
        for (hb, sealed_at) in batch {
            let r = hb.resources;
            // Empty resources: keep what the agent declared at registration.
            let or_empty = |f: fn(&Resources) -> String| r.as_ref().map(f).unwrap_or_default();
            call = call.item(vec![
                ("id", bytes(hb.agent_id.as_str())),
                ("status", bytes(hb.status.as_str())),
                ("load", bytes(hb.load)),
                ("memory", bytes(or_empty(|r| r.memory.to_string()))),
                ("cpu", bytes(or_empty(|r| r.cpu.to_string()))),
                ("network", bytes(or_empty(|r| r.network.to_string()))),
                ("sealed_at", bytes(sealed_at.unwrap_or(0))),
            ]);
        }
        let notable: Vec<(usize, String, String, String, String)> = call.run(conn).await?;
        let mut out = vec![HeartbeatOutcome::Ok; batch.len()];
        for (n, outcome, pool, channel, message) in notable {
            let pool = || {
                pool.parse::<PoolType>()
                    .map_err(|_| StoreError::Reply(format!("heartbeat: unknown pool {pool:?}")))
            };
            let slot = out
                .get_mut(n.wrapping_sub(1))
                .ok_or_else(|| StoreError::Reply(format!("heartbeat: no heartbeat {n}")))?;
            *slot = match outcome.as_str() {
                "replay" => HeartbeatOutcome::Replay,
                "unknown" => HeartbeatOutcome::Unknown,
                "recovering" => HeartbeatOutcome::Recovering(pool()?),
                "recovered" => HeartbeatOutcome::Recovered(pool()?),
                "resumed" => HeartbeatOutcome::Resumed(
                    (!channel.is_empty()).then_some(Notice { channel, message }),
                ),
                other => return Err(StoreError::Reply(format!("heartbeat: {other:?}"))),
            };
        }
        Ok(out)
    }

    /// Fails `id` if its last heartbeat is still at or before `cutoff`.
    pub async fn fail_if_stale(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
        cutoff: u64,
        now: u64,
        max_failures: u32,
    ) -> Result<FailOutcome> {
        let r = self
            .call(&FAIL, id)
            .arg("cutoff", cutoff)
            .arg("now", now)
            .arg("max_failures", max_failures)
            .reply(conn)
            .await?;
        let orphans = || -> Result<Orphans> {
            Ok(Orphans {
                requeued: r.num("requeued")?,
                dead: r.num("dead")?,
                poisoned: r.num("poisoned")?,
            })
        };
        Ok(match r.outcome()? {
            "fresh" | "gone" => FailOutcome::Fresh,
            "failed" => FailOutcome::Failed {
                pool: r.pool("pool")?,
                failures: r.num("failures")?,
                last_heartbeat: r.num("lastHeartbeat")?,
                orphans: orphans()?,
            },
            "removed" => FailOutcome::Removed {
                pool: r.pool("pool")?,
                failures: r.num("failures")?,
                last_heartbeat: r.num("lastHeartbeat")?,
                orphans: orphans()?,
            },
            _ => return Err(r.unexpected()),
        })
    }

    /// Removes `id` and gives back its tasks. With `failed_before`, only if
    /// it is failed since at or before that time. Returns the pool it was in,
    /// if it was removed.
    pub async fn remove(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
        failed_before: Option<u64>,
        now: u64,
        once: Option<&Once>,
    ) -> Result<Option<(PoolType, Orphans)>> {
        let r = self
            .call(&REMOVE, id)
            .once(&self.keys, once)
            .arg(
                "failed_before",
                failed_before.map(|c| c.to_string()).unwrap_or_default(),
            )
            .arg("now", now)
            .reply(conn)
            .await?;
        match r.outcome()? {
            "removed" => Ok(Some((
                r.pool("pool")?,
                Orphans {
                    requeued: r.num("requeued")?,
                    dead: r.num("dead")?,
                    poisoned: 0,
                },
            ))),
            "kept" | "unknown" => Ok(None),
            _ => Err(r.unexpected()),
        }
    }

    /// Drains an agent: no new tasks; it is told to finish what it holds and
    /// deregister. Returns its pool, the tasks in its hands and the drain
    /// message to publish, or `None` if unknown.
    pub async fn drain(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
        now: u64,
        reason: &str,
    ) -> Result<Option<(PoolType, u64, Option<Notice>)>> {
        let r = DRAIN
            .fenced(&self.keys, self.epoch)
            .task_keys(&self.keys)
            .arg("id", id)
            .arg("now", now)
            .arg("reason", reason)
            .reply(conn)
            .await?;
        match r.outcome()? {
            "draining" => Ok(Some((r.pool("pool")?, r.num("inflight")?, r.notice()))),
            "unknown" => Ok(None),
            _ => Err(r.unexpected()),
        }
    }

    /// Live agents whose last heartbeat is at or before `cutoff`, oldest first.
    pub async fn stale(
        &self,
        conn: &mut impl ConnectionLike,
        cutoff: u64,
        limit: usize,
    ) -> Result<Vec<String>> {
        scored_upto(conn, &self.keys.heartbeats(), cutoff, limit).await
    }

    /// Failed agents failed at or before `cutoff`.
    pub async fn failed_before(
        &self,
        conn: &mut impl ConnectionLike,
        cutoff: u64,
        limit: usize,
    ) -> Result<Vec<String>> {
        scored_upto(conn, &self.keys.failed(), cutoff, limit).await
    }

    pub async fn agent(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
    ) -> Result<Option<AgentRecord>> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.agent(id))
            .query_async(conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        agent_from_fields(&fields)
            .map(Some)
            .ok_or_else(|| StoreError::Reply(format!("agent {id}: bad record")))
    }

    /// Every registered agent's record (16 SMEMBERS, then the records
    /// pipelined 500 at a time): for listing, not for hot paths.
    pub async fn all_agents(&self, conn: &mut impl ConnectionLike) -> Result<Vec<AgentRecord>> {
        let mut p = redis::pipe();
        for pool in PoolType::ALL {
            p.cmd("SMEMBERS").arg(self.keys.pool_agents(pool));
        }
        let sets: Vec<Vec<String>> = p.query_async(conn).await?;
        let ids: Vec<String> = sets.into_iter().flatten().collect();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut p = redis::pipe();
            for id in chunk {
                p.cmd("HGETALL").arg(self.keys.agent(id));
            }
            let rows: Vec<HashMap<String, String>> = p.query_async(conn).await?;
            out.extend(rows.iter().filter_map(agent_from_fields));
        }
        Ok(out)
    }

    /// One HGETALL of the counters: the whole fleet's shape.
    pub async fn counts(&self, conn: &mut impl ConnectionLike) -> Result<Counts> {
        read_counts(conn, &self.keys).await
    }
}

/// Reads the counters without a commander epoch (for the CLI).
pub async fn read_counts(conn: &mut impl ConnectionLike, keys: &Keys) -> Result<Counts> {
    let raw: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.counts())
        .query_async(conn)
        .await?;
    let mut counts = Counts::default();
    for (field, n) in raw {
        let Some((pool, status)) = field.split_once(':') else {
            continue;
        };
        let (Ok(pool), Ok(status)) = (pool.parse::<PoolType>(), status.parse::<AgentStatus>())
        else {
            continue;
        };
        if n > 0 {
            counts
                .by_pool
                .entry(pool)
                .or_default()
                .insert(status, n as u64);
        }
    }
    Ok(counts)
}

/// The `limit` members of a sorted set with the highest scores (the newest,
/// where the score is a time), highest first.
pub(crate) async fn newest(
    conn: &mut impl ConnectionLike,
    key: &str,
    limit: usize,
) -> Result<Vec<String>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    Ok(redis::cmd("ZREVRANGE")
        .arg(key)
        .arg(0)
        .arg(limit - 1)
        .query_async(conn)
        .await?)
}

/// Members of a sorted set scored at or below `max`, lowest first.
pub(crate) async fn scored_upto(
    conn: &mut impl ConnectionLike,
    key: &str,
    max: u64,
    limit: usize,
) -> Result<Vec<String>> {
    Ok(redis::cmd("ZRANGEBYSCORE")
        .arg(key)
        .arg("-inf")
        .arg(max)
        .arg("LIMIT")
        .arg(0)
        .arg(limit)
        .query_async(conn)
        .await?)
}

/// The record of an agent just registered: what it declared, plus the
/// history a re-registration keeps, as the register script replied.
fn registered_record(r: &Reply, a: &NewAgent<'_>, now: u64) -> Result<AgentRecord> {
    Ok(AgentRecord {
        performance: Performance {
            tasks_completed: r.num("tasksCompleted")?,
            avg_task_time: r.float("avgTaskTime")?,
            success_rate: r.float("successRate")?,
            last_active: now,
        },
        health: Health {
            last_heartbeat: now,
            failures: r.num("failures")?,
            recovery_attempts: r.num("recoveryAttempts")?,
            score: r.num("health")?,
            quarantined_until: r.num("quarantinedUntil")?,
            probation: r.text("probation")? == "1",
            ..fresh_record(a, now).health
        },
        registered_at: r.num("registeredAt")?,
        status: if r.text("halted").is_ok() {
            AgentStatus::Halted
        } else {
            AgentStatus::Idle
        },
        ..fresh_record(a, now)
    })
}
