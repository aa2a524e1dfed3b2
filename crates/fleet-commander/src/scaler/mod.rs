//! The scaler: sizes every pool to its demand, within its bounds.
//!
//! Every `sample_ms` it reads each pool's demand (utilisation = agents holding
//! tasks / live agents, queue depth, the age of the longest-waiting task at
//! the head of the queue). Decisions look at a full window of samples, never
//! one alone; growth and shrinkage each have a cooldown, and a change of
//! direction waits for both, so a pool cannot flap faster than its cooldowns.
//!
//! The commander does not start processes. It publishes `scale_up` (pool,
//! count, reason) and `scale_down` (the agents it retires) on the scaling
//! channel, each with an id, and a spawner acts on them. Retired agents are
//! drained: no new tasks, they finish what they hold, then deregister. A
//! request not fulfilled in time is reported (`scale_timeout`).
//!
//! Safe without a spawner: a growth request that nobody answers (no agent
//! came) makes the pool wait before asking again, the request timeout
//! doubling each time up to [`MAX_RETRY_MS`]; it is logged once, and the
//! gauge `fleet_scale_requests_unanswered` says how many in a row went
//! unanswered. And a queued task that needs capabilities no agent of its
//! pool declares never drives growth: it is left out of the demand, and once
//! it has waited a whole window it is announced (`unschedulable`). Nor does
//! a queue an operator paused.

use crate::config::Config;
use crate::context::{publish, Shared};
use crate::metrics as m;
use crate::supervise::pause;
use crate::supervise::{round_failed, Backoff};

mod policy;
use fleet_protocol::now_ms;
use fleet_protocol::pool::{AgentStatus, PoolType};
use fleet_protocol::{Scaling, VERSION};
use fleet_store::connection::Conn;
use fleet_store::StoreError;
pub use policy::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Scaling events kept in the fleet event stream (approximately).
const EVENTS_CAP: u64 = 10_000;
/// Tasks at the head of a queue whose age is looked at.
const HEAD: isize = 8;
/// How long an agent's declared capabilities are trusted before they are
/// read again (only for pools with a task that needs some at the head).
const CAPS_TTL_MS: u64 = 5_000;

/// A request waiting to be fulfilled.
#[derive(Debug)]
struct Request {
    id: String,
    pool: PoolType,
    direction: Direction,
    /// Up: the agents asked for.
    count: u32,
    /// Up: the pool's registration count at which it is fulfilled.
    until_registered: u64,
    /// Down: the agents still to leave.
    agents: Vec<String>,
    deadline: u64,
}

/// A queued task that no agent of its pool declares the capabilities for.
#[derive(Debug)]
struct Stranded {
    pool: PoolType,
    task_id: String,
    capabilities: Vec<String>,
    waited_ms: u64,
}

/// What the scaler remembers between rounds.
#[derive(Debug, Default)]
struct Memory {
    states: HashMap<PoolType, PoolState>,
    requests: Vec<Request>,
    /// Per pool: when its agents' capabilities were read, and them.
    caps: HashMap<PoolType, (u64, Vec<HashSet<String>>)>,
    /// Tasks announced as unschedulable (each is announced once).
    flagged: HashSet<String>,
    /// Per pool: its unschedulable tasks at the last round.
    stranded: HashMap<PoolType, u64>,
}

pub(crate) async fn scaler(shared: Arc<Shared>, mut conn: Conn) {
    let mut mem = Memory::default();
    let mut backoff = Backoff::new();
    loop {
        let every = Duration::from_millis(shared.config().scaling.sample_ms);
        if !pause(shared.shutdown_token(), every).await {
            return;
        }
        if !shared.leading() {
            continue; // past its lease: no requests in an old term's name
        }
        match round(&shared, &mut conn, &mut mem).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                if !round_failed(&shared, "scale", e, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

/// Reads every pool's demand; returns it with the queued tasks (at the
/// head of each queue) that no agent of their pool could run.
async fn sample(
    shared: &Shared,
    conn: &mut Conn,
    now: u64,
    caps: &mut HashMap<PoolType, (u64, Vec<HashSet<String>>)>,
) -> Result<(Vec<(PoolType, Sample)>, Vec<Stranded>), StoreError> {
    let status = crate::status::current(shared, conn).await?;
    let heads = queue_heads(shared, conn, now).await?;
    // A paused queue waits for an operator, not for more agents.
    let paused = shared.tasks.paused(conn).await?;
    let mut out = Vec::new();
    let mut stranded = Vec::new();
    for (pool, (depth, head)) in PoolType::ALL.into_iter().zip(heads) {
        let c = &status.pools[&pool].by_status;
        let n = |s: AgentStatus| c.get(&s).copied().unwrap_or(0);
        let mut oldest = 0;
        let (mut servable, mut unservable) = (0u64, 0u64);
        for (id, waited, need) in head {
            let fits = need.is_empty()
                || pool_caps(shared, conn, pool, now, caps)
                    .await?
                    .iter()
                    .any(|have| need.iter().all(|c| have.contains(c)));
            if fits {
                servable += 1;
                oldest = oldest.max(waited);
            } else {
                unservable += 1;
                stranded.push(Stranded {
                    pool,
                    task_id: id,
                    capabilities: need,
                    waited_ms: waited,
                });
            }
        }
        // The queue's depth in tasks the pool could run, estimated from its
        // head when some there cannot be run.
        let queued = if unservable == 0 {
            depth
        } else {
            (depth * servable).div_ceil(servable + unservable)
        };
        let (queued, oldest) = if paused.contains_key(pool.as_str()) {
            (0, 0)
        } else {
            (queued, oldest)
        };
        let live = n(AgentStatus::Idle) + n(AgentStatus::Active) + n(AgentStatus::Busy);
        let s = Sample {
            at: now,
            live,
            held: n(AgentStatus::Failed) + n(AgentStatus::Recovering) + n(AgentStatus::Halted),
            busy: (n(AgentStatus::Active) + n(AgentStatus::Busy)).min(live),
            queued,
            oldest_wait_ms: oldest,
        };
        metrics::gauge!(m::POOL_UTILIZATION, "pool" => pool.as_str()).set(s.utilization());
        metrics::gauge!(m::QUEUE_OLDEST_SECONDS, "pool" => pool.as_str())
            .set(oldest as f64 / 1000.0);
        out.push((pool, s));
    }
    Ok((out, stranded))
}

/// Each pool's queue depth, and the tasks at the head of its queue that
/// still exist: id, how long it has waited, the capabilities it needs.
/// Two pipelines, whatever the number of pools.
async fn queue_heads(
    shared: &Shared,
    conn: &mut Conn,
    now: u64,
) -> Result<Vec<(u64, Vec<(String, u64, Vec<String>)>)>, StoreError> {
    let keys = &shared.keys;
    let mut p = redis::pipe();
    for pool in PoolType::ALL {
        p.zcard(keys.queue(pool))
            .zrange(keys.queue(pool), 0, HEAD - 1);
    }
    let raw: Vec<redis::Value> = p.query_async(conn).await?;
    let mut heads = Vec::new();
    let mut depth = Vec::new();
    for pair in raw.chunks(2) {
        depth.push(redis::from_redis_value_ref::<u64>(&pair[0])?);
        heads.push(redis::from_redis_value_ref::<Vec<String>>(&pair[1])?);
    }
    let mut p = redis::pipe();
    for id in heads.iter().flatten() {
        p.cmd("HMGET")
            .arg(keys.task(id))
            .arg(&["submittedAt", "capabilities"]);
    }
    let rows: Vec<(Option<u64>, Option<String>)> = if heads.iter().all(Vec::is_empty) {
        Vec::new()
    } else {
        p.query_async(conn).await?
    };
    let mut rows = rows.into_iter();
    Ok(depth
        .into_iter()
        .zip(heads)
        .map(|(d, ids)| {
            let head = ids
                .into_iter()
                .filter_map(|id| {
                    let (at, need) = rows.next()?;
                    let need = need
                        .and_then(|j| serde_json::from_str::<Vec<String>>(&j).ok())
                        .unwrap_or_default();
                    Some((id, now.saturating_sub(at?), need))
                })
                .collect();
            (d, head)
        })
        .collect())
}

/// The capabilities each registered agent of `pool` declares, read again
/// after [`CAPS_TTL_MS`].
async fn pool_caps<'a>(
    shared: &Shared,
    conn: &mut Conn,
    pool: PoolType,
    now: u64,
    cache: &'a mut HashMap<PoolType, (u64, Vec<HashSet<String>>)>,
) -> Result<&'a [HashSet<String>], StoreError> {
    let fresh = cache
        .get(&pool)
        .is_some_and(|(at, _)| now < at + CAPS_TTL_MS);
    if !fresh {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(shared.keys.pool_agents(pool))
            .query_async(conn)
            .await?;
        let mut p = redis::pipe();
        for id in &ids {
            p.hget(shared.keys.agent(id), "capabilities");
        }
        let raw: Vec<Option<String>> = if ids.is_empty() {
            Vec::new()
        } else {
            p.query_async(conn).await?
        };
        let sets = raw
            .into_iter()
            .map(|j| {
                j.and_then(|j| serde_json::from_str::<HashSet<String>>(&j).ok())
                    .unwrap_or_default()
            })
            .collect();
        cache.insert(pool, (now, sets));
    }
    Ok(&cache[&pool].1)
}

async fn round(shared: &Shared, conn: &mut Conn, mem: &mut Memory) -> Result<(), StoreError> {
    let config = shared.config();
    let now = now_ms();
    settle(shared, conn, mem, now).await?;
    let (samples, stranded) = sample(shared, conn, now, &mut mem.caps).await?;
    strand(shared, conn, &config, mem, stranded, now).await?;
    let manual: HashMap<String, u32> = redis::cmd("HGETALL")
        .arg(shared.keys.manual_sizes())
        .query_async(conn)
        .await?;
    let mut wants = Vec::new();
    let mut heading: u64 = 0;
    for (pool, s) in samples {
        let p = config.scaling_for(pool);
        let st = mem.states.entry(pool).or_default();
        st.record(s, p.window_ms);
        if st.unanswered > 0 && shared.registered(pool) > st.registered_then {
            info!(pool = %pool, "an agent registered: scale requests are answered again");
            answered(st, pool);
        }
        // Failed agents count against the fleet cap too, as at registration.
        heading +=
            (s.live + s.held + u64::from(st.pending_up)).saturating_sub(u64::from(st.pending_down));
        let pc = config.pool(pool);
        let fixed = manual.get(pool.as_str()).copied();
        if !pc.scaling_enabled && fixed.is_none() {
            continue;
        }
        if let Some(w) = decide(&p, pc.min_agents, pc.max_agents, fixed, st, now) {
            wants.push((pool, w));
        }
    }
    let room = u64::from(config.fleet.max_agents).saturating_sub(heading);
    let wanted: Vec<_> = wants.iter().map(|(p, w)| (*p, w.count)).collect();
    for (pool, w) in share_cap(&config, wants, room) {
        let asked = wanted.iter().find(|(p, _)| *p == pool).map_or(0, |x| x.1);
        let st = mem.states.get_mut(&pool).expect("sampled");
        let inputs = *st.samples.back().expect("sampled");
        let d = Decision {
            pool,
            want: &w,
            asked,
            inputs,
        };
        act(shared, conn, &config, &d, st, &mut mem.requests, now).await?;
        st.samples.clear(); // the next decision sees a fresh window
    }
    Ok(())
}

/// A pool's requests are answered (again): it may grow when it needs to.
fn answered(st: &mut PoolState, pool: PoolType) {
    st.unanswered = 0;
    st.retry_at = None;
    metrics::gauge!(m::SCALE_REQUESTS_UNANSWERED, "pool" => pool.as_str()).set(0.0);
}

/// Tasks no agent of their pool can run: once one has waited a whole
/// window it is announced on the scaling channel (once), counted in the
/// gauge, and its pool logged once while it has any.
async fn strand(
    shared: &Shared,
    conn: &mut Conn,
    config: &Config,
    mem: &mut Memory,
    stranded: Vec<Stranded>,
    now: u64,
) -> Result<(), StoreError> {
    let mut counts: HashMap<PoolType, u64> = HashMap::new();
    let mut seen = HashSet::new();
    for t in stranded {
        if t.waited_ms < config.scaling_for(t.pool).window_ms {
            continue;
        }
        *counts.entry(t.pool).or_default() += 1;
        seen.insert(t.task_id.clone());
        if mem.flagged.contains(&t.task_id) {
            continue;
        }
        if mem.stranded.get(&t.pool).copied().unwrap_or(0) == 0 {
            warn!(pool = %t.pool, task_id = %t.task_id, capabilities = ?t.capabilities,
                waited_ms = t.waited_ms,
                "unschedulable: no agent of the pool declares the capabilities this task needs; it does not grow the pool (fleet_tasks_unschedulable)");
        }
        let msg = Scaling::Unschedulable {
            v: VERSION,
            pool: t.pool,
            task_id: t.task_id.clone(),
            capabilities: t.capabilities,
            waited_ms: t.waited_ms,
            ts: now,
        };
        publish(conn, shared.keys.channels().scaling(), &msg).await?;
        mem.flagged.insert(t.task_id);
    }
    mem.flagged.retain(|id| seen.contains(id));
    for pool in PoolType::ALL {
        let n = counts.get(&pool).copied().unwrap_or(0);
        if mem.stranded.insert(pool, n).unwrap_or(0) != n {
            metrics::gauge!(m::TASKS_UNSCHEDULABLE, "pool" => pool.as_str()).set(n as f64);
        }
    }
    Ok(())
}

/// What the policy decided for one pool, with what it saw.
struct Decision<'a> {
    pool: PoolType,
    want: &'a Want,
    /// What the pool wanted before the fleet's cap cut it.
    asked: u32,
    /// The newest sample.
    inputs: Sample,
}

/// Publishes one decision, records it, and tracks the request.
async fn act(
    shared: &Shared,
    conn: &mut Conn,
    config: &Config,
    d: &Decision<'_>,
    st: &mut PoolState,
    requests: &mut Vec<Request>,
    now: u64,
) -> Result<(), StoreError> {
    let (pool, w) = (d.pool, d.want);
    let p = config.scaling_for(pool);
    let id = uuid::Uuid::new_v4().to_string();
    let deadline = now + p.request_timeout_ms;
    let msg = match w.direction {
        Direction::Up => {
            st.pending_up += w.count;
            st.last_up = Some(now);
            requests.push(Request {
                id: id.clone(),
                pool,
                direction: Direction::Up,
                count: w.count,
                until_registered: shared.registered(pool) + u64::from(w.count),
                agents: Vec::new(),
                deadline,
            });
            Scaling::ScaleUp {
                v: VERSION,
                id: id.clone(),
                pool,
                count: w.count,
                reason: w.reason.to_string(),
                ts: now,
            }
        }
        Direction::Down => {
            let agents = retirees(shared, conn, pool, w.count, p.min_lifetime_ms, now).await?;
            if agents.is_empty() {
                return Ok(()); // nobody old enough to retire yet
            }
            for a in &agents {
                shared.drain(conn, a, now, "scale_down").await?;
            }
            st.pending_down += agents.len() as u32;
            st.last_down = Some(now);
            requests.push(Request {
                id: id.clone(),
                pool,
                direction: Direction::Down,
                count: agents.len() as u32,
                until_registered: 0,
                agents: agents.clone(),
                deadline,
            });
            Scaling::ScaleDown {
                v: VERSION,
                id: id.clone(),
                pool,
                agents,
                reason: w.reason.to_string(),
                ts: now,
            }
        }
    };
    let count = match &msg {
        Scaling::ScaleDown { agents, .. } => agents.len() as u32,
        _ => w.count,
    };
    metrics::counter!(m::SCALING_DECISIONS, "pool" => pool.as_str(), "direction" => w.direction.as_str())
        .increment(1);
    // A retry nobody is expected to answer was said once already.
    log_decision(d, count, st.unanswered > 0);
    record(shared, conn, d, count, &id, now).await?;
    publish(conn, shared.keys.channels().scaling(), &msg).await
}

/// Logs a decision with its inputs: at debug when it repeats a request
/// nobody answered (said once already), else at info.
fn log_decision(d: &Decision<'_>, count: u32, quiet: bool) {
    let (pool, w, asked, inputs) = (d.pool, d.want, d.asked, d.inputs);
    macro_rules! decision {
        ($level:ident) => {
            $level!(pool = %pool, direction = w.direction.as_str(), count, asked, reason = w.reason,
                live = inputs.live, busy = inputs.busy, queued = inputs.queued,
                oldest_wait_ms = inputs.oldest_wait_ms, "scaling decision")
        };
    }
    if quiet {
        decision!(debug);
    } else {
        decision!(info);
    }
}

/// A decision in the events stream, with its inputs.
async fn record(
    shared: &Shared,
    conn: &mut Conn,
    d: &Decision<'_>,
    count: u32,
    id: &str,
    now: u64,
) -> Result<(), StoreError> {
    let (pool, w, asked, inputs) = (d.pool, d.want, d.asked, &d.inputs);
    let record = serde_json::json!({
        "id": id, "pool": pool, "direction": w.direction.as_str(), "count": count,
        "asked": asked, "reason": w.reason, "live": inputs.live, "busy": inputs.busy,
        "queued": inputs.queued, "oldestWaitMs": inputs.oldest_wait_ms,
        "utilization": inputs.utilization(), "ts": now,
    });
    redis::cmd("XADD")
        .arg(shared.keys.events())
        .arg("MAXLEN")
        .arg("~")
        .arg(EVENTS_CAP)
        .arg("*")
        .arg("type")
        .arg("scaling_decision")
        .arg("data")
        .arg(record.to_string())
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Picks the agents to retire: never one younger than `min_lifetime_ms`,
/// idle ones before ones holding tasks, the oldest first.
async fn retirees(
    shared: &Shared,
    conn: &mut Conn,
    pool: PoolType,
    count: u32,
    min_lifetime_ms: u64,
    now: u64,
) -> Result<Vec<String>, StoreError> {
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(shared.keys.pool_agents(pool))
        .query_async(conn)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = redis::pipe();
    for id in &ids {
        p.cmd("HMGET").arg(shared.keys.agent(id)).arg(&[
            "status",
            "inflight",
            "registeredAt",
            "draining",
        ]);
    }
    type Row = (Option<String>, Option<u64>, Option<u64>, Option<String>);
    let rows: Vec<Row> = p.query_async(conn).await?;
    let mut candidates: Vec<(u64, u64, &String)> = ids
        .iter()
        .zip(rows)
        .filter_map(|(id, (status, inflight, born, draining))| {
            let working = matches!(status.as_deref(), Some("idle" | "active" | "busy"));
            let old = born.is_some_and(|b| now >= b + min_lifetime_ms);
            (working && old && draining.as_deref() != Some("1"))
                .then(|| (inflight.unwrap_or(0), born.unwrap_or(0), id))
        })
        .collect();
    candidates.sort();
    Ok(candidates
        .into_iter()
        .take(count as usize)
        .map(|(_, _, id)| id.clone())
        .collect())
}

/// Marks requests fulfilled, and reports those past their deadline. A
/// growth request nobody answered at all makes its pool back off; the
/// pools newly without an answer are logged in one line.
async fn settle(
    shared: &Shared,
    conn: &mut Conn,
    mem: &mut Memory,
    now: u64,
) -> Result<(), StoreError> {
    let mut kept = Vec::new();
    let mut unanswered: Vec<(PoolType, u64)> = Vec::new();
    for mut r in std::mem::take(&mut mem.requests) {
        let st = mem.states.entry(r.pool).or_default();
        let missing = match r.direction {
            Direction::Up => {
                let have = shared.registered(r.pool);
                let left = r.until_registered.saturating_sub(have);
                st.pending_up = st.pending_up.min(left as u32);
                left as u32
            }
            Direction::Down => {
                let mut p = redis::pipe();
                for a in &r.agents {
                    p.exists(shared.keys.agent(a));
                }
                let alive: Vec<bool> = p.query_async(conn).await?;
                let before = r.agents.len() as u32;
                r.agents = r
                    .agents
                    .into_iter()
                    .zip(alive)
                    .filter_map(|(a, alive)| alive.then_some(a))
                    .collect();
                let gone = before - r.agents.len() as u32;
                st.pending_down = st.pending_down.saturating_sub(gone);
                r.agents.len() as u32
            }
        };
        if missing == 0 {
            if r.direction == Direction::Up && st.unanswered > 0 {
                info!(pool = %r.pool, "scale_up answered again");
                answered(st, r.pool);
            }
            continue;
        }
        if now >= r.deadline {
            metrics::counter!(m::SCALE_REQUESTS_UNFULFILLED, "pool" => r.pool.as_str(),
                "direction" => r.direction.as_str())
            .increment(1);
            match r.direction {
                Direction::Up => st.pending_up = st.pending_up.saturating_sub(missing),
                Direction::Down => st.pending_down = st.pending_down.saturating_sub(missing),
            }
            if r.direction == Direction::Up && missing >= r.count {
                // Nobody answered: ask again later, each time later still.
                st.unanswered += 1;
                st.registered_then = shared.registered(r.pool);
                let timeout = shared.config().scaling_for(r.pool).request_timeout_ms;
                let delay = retry_delay(timeout, st.unanswered);
                st.retry_at = Some(now + delay);
                metrics::gauge!(m::SCALE_REQUESTS_UNANSWERED, "pool" => r.pool.as_str())
                    .set(f64::from(st.unanswered));
                if st.unanswered == 1 {
                    unanswered.push((r.pool, delay));
                } else {
                    debug!(request = %r.id, pool = %r.pool, unanswered = st.unanswered,
                        retry_in_ms = delay, "scale_up still unanswered");
                }
            } else {
                warn!(request = %r.id, pool = %r.pool, direction = r.direction.as_str(), missing,
                    "scaling request not fulfilled in time");
            }
            let msg = Scaling::ScaleTimeout {
                v: VERSION,
                id: r.id.clone(),
                pool: r.pool,
                direction: r.direction.as_str().to_string(),
                missing,
                ts: now,
            };
            publish(conn, shared.keys.channels().scaling(), &msg).await?;
            continue;
        }
        kept.push(r);
    }
    mem.requests = kept;
    if let Some(&(_, delay)) = unanswered.first() {
        let pools: Vec<&str> = unanswered.iter().map(|(p, _)| p.as_str()).collect();
        warn!(pools = %pools.join(","), retry_in_ms = delay, max_retry_ms = MAX_RETRY_MS,
            "no spawner answered scale_up (no agent came): asking again later, the wait doubling each time; \
             run a spawner on the scaling channel (docs/OPERATIONS.md, Autoscaling) or start agents by hand");
    }
    Ok(())
}

/// Agents registered per pool since start (the scaler counts fulfilment with it).
pub(crate) fn note_registered(shared: &Shared, pool: PoolType) {
    shared.registered_counts[pool.index()].fetch_add(1, Ordering::AcqRel);
}
