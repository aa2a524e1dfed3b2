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

use crate::config::{Config, ScalingPolicy};
use crate::context::{pause, publish, Shared};
use crate::metrics as m;
use crate::supervise::{round_failed, Backoff};
use fleet_protocol::now_ms;
use fleet_protocol::pool::{AgentStatus, PoolType};
use fleet_protocol::{Scaling, VERSION};
use fleet_store::connection::Conn;
use fleet_store::StoreError;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Scaling events kept in the fleet event stream (approximately).
const EVENTS_CAP: u64 = 10_000;
/// Tasks at the head of a queue whose age is looked at.
const HEAD: isize = 8;
/// The longest a pool waits between growth requests that nobody answers.
pub const MAX_RETRY_MS: u64 = 600_000;
/// How long an agent's declared capabilities are trusted before they are
/// read again (only for pools with a task that needs some at the head).
const CAPS_TTL_MS: u64 = 5_000;

/// One reading of a pool's demand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: u64,
    /// Agents that can work: idle, active, busy (not failed or recovering;
    /// retiring ones count until they leave, and the scaler subtracts its own).
    pub live: u64,
    /// Agents registered but not working (failed, recovering, halted): they keep
    /// their place against max_agents until they return or are removed.
    pub held: u64,
    /// Agents holding at least one task.
    pub busy: u64,
    /// Tasks waiting that an agent of the pool could run (tasks needing
    /// capabilities that no agent declares are left out).
    pub queued: u64,
    /// How long the longest-waiting of the next tasks to run has waited (ms).
    pub oldest_wait_ms: u64,
}

impl Sample {
    pub fn utilization(&self) -> f64 {
        if self.live == 0 {
            if self.queued > 0 {
                1.0
            } else {
                0.0
            }
        } else {
            self.busy as f64 / self.live as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// What the policy wants for one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    pub direction: Direction,
    pub count: u32,
    pub reason: &'static str,
}

/// A pool's memory between samples.
#[derive(Debug, Default)]
pub struct PoolState {
    pub samples: VecDeque<Sample>,
    pub last_up: Option<u64>,
    pub last_down: Option<u64>,
    /// Agents requested and not yet registered.
    pub pending_up: u32,
    /// Agents retiring and not yet gone.
    pub pending_down: u32,
    /// Growth requests in a row that nobody answered (no agent came).
    pub unanswered: u32,
    /// While nobody answers: no growth request before this time.
    pub retry_at: Option<u64>,
    /// The pool's registrations when the last request went unanswered: one
    /// more means somebody answers after all.
    pub registered_then: u64,
}

/// How long a pool waits before asking again after its `unanswered`-th
/// request in a row went unanswered: the request timeout, doubling, capped.
pub fn retry_delay(request_timeout_ms: u64, unanswered: u32) -> u64 {
    let doubled = request_timeout_ms.saturating_mul(1u64 << unanswered.saturating_sub(1).min(20));
    doubled.min(MAX_RETRY_MS.max(request_timeout_ms))
}

impl PoolState {
    fn record(&mut self, s: Sample, window_ms: u64) {
        self.samples.push_back(s);
        while self
            .samples
            .front()
            .is_some_and(|f| f.at + window_ms < s.at)
        {
            self.samples.pop_front();
        }
    }

    /// The samples cover a whole window.
    fn window_full(&self, p: &ScalingPolicy) -> bool {
        match (self.samples.front(), self.samples.back()) {
            (Some(f), Some(b)) => b.at - f.at + p.sample_ms >= p.window_ms,
            _ => false,
        }
    }

    /// Both cooldowns have passed: the pool may change in either direction.
    fn cooled(&self, p: &ScalingPolicy, now: u64) -> bool {
        self.last_up.is_none_or(|t| now >= t + p.up_cooldown_ms)
            && self.last_down.is_none_or(|t| now >= t + p.down_cooldown_ms)
    }
}

/// The policy for one pool: what it wants now, before the fleet cap.
/// `manual`: a size an operator fixed, which replaces demand.
///
/// Kept whole (about 90 lines) on purpose: it is the rules in their order of
/// precedence, read top to bottom (the bounds and a fixed size first, then
/// the window and cooldowns, then growth, then shrinkage); pieces would hide
/// that order. It is pure, and unit-tested below.
pub fn decide(
    p: &ScalingPolicy,
    min: u32,
    max: u32,
    manual: Option<u32>,
    st: &PoolState,
    now: u64,
) -> Option<Want> {
    let last = st.samples.back()?;
    // The size the pool is heading for, counting requests in flight.
    let size = (last.live + u64::from(st.pending_up)).saturating_sub(u64::from(st.pending_down));
    let size = u32::try_from(size).unwrap_or(u32::MAX);
    // Growth the pool's bound allows: failed agents still hold their places,
    // and asking for an agent that could not register would only time out.
    let room =
        max.saturating_sub(size.saturating_add(u32::try_from(last.held).unwrap_or(u32::MAX)));
    // Nobody answered the last request: no growth until the retry is due.
    let room = if st.retry_at.is_some_and(|t| now < t) {
        0
    } else {
        room
    };
    let floor = manual.unwrap_or(min).clamp(min, max);
    if size < floor && room > 0 {
        let reason = if manual.is_some() {
            "manual"
        } else {
            "below_min"
        };
        return Some(Want {
            direction: Direction::Up,
            count: (floor - size).min(p.max_step).min(room),
            reason,
        });
    }
    let ceiling = manual.unwrap_or(max).clamp(min, max);
    if size > ceiling && st.pending_down == 0 {
        let reason = if manual.is_some() {
            "manual"
        } else {
            "above_max"
        };
        return Some(Want {
            direction: Direction::Down,
            count: (size - ceiling).min(p.max_step),
            reason,
        });
    }
    if manual.is_some() || !st.window_full(p) || !st.cooled(p, now) {
        return None;
    }
    let n = st.samples.len() as f64;
    let mean = |f: &dyn Fn(&Sample) -> f64| st.samples.iter().map(f).sum::<f64>() / n;
    let util = mean(&|s| s.utilization());
    let wait = mean(&|s| s.oldest_wait_ms as f64);
    let busy = mean(&|s| s.busy as f64);
    let queued = mean(&|s| s.queued as f64);
    if (util >= p.scale_up_utilization || wait >= p.scale_up_queue_wait_ms as f64)
        && room > 0
        && st.pending_up == 0
    {
        // Enough agents for the work in hand and the work waiting, at the
        // utilisation that would not trigger growth again.
        let wanted = ((busy + queued) / p.scale_up_utilization).ceil() as u32;
        let count = wanted.saturating_sub(size).clamp(1, p.max_step).min(room);
        let reason = if util >= p.scale_up_utilization {
            "utilization"
        } else {
            "queue_wait"
        };
        return Some(Want {
            direction: Direction::Up,
            count,
            reason,
        });
    }
    let quiet = st
        .samples
        .iter()
        .all(|s| s.utilization() <= p.scale_down_utilization && s.queued == 0);
    if quiet && size > min && st.pending_down == 0 {
        let wanted = ((busy / p.scale_up_utilization).ceil() as u32).max(min);
        let count = size.saturating_sub(wanted).min(p.max_step);
        if count > 0 {
            return Some(Want {
                direction: Direction::Down,
                count,
                reason: "low_utilization",
            });
        }
    }
    None
}

/// Grants growth within the fleet-wide cap, highest pool priority first.
/// `room`: agents the fleet may still add. Returns the wants as granted
/// (growth cut to what fits; shrinkage always passes).
pub fn share_cap(
    config: &Config,
    wants: Vec<(PoolType, Want)>,
    mut room: u64,
) -> Vec<(PoolType, Want)> {
    let mut wants = wants;
    wants.sort_by_key(|(p, w)| {
        (
            w.direction == Direction::Up,
            std::cmp::Reverse(config.pool(*p).priority_level),
            p.index(),
        )
    });
    wants
        .into_iter()
        .filter_map(|(p, mut w)| {
            if w.direction == Direction::Up {
                let granted = u64::from(w.count).min(room);
                room -= granted;
                if granted == 0 {
                    return None;
                }
                w.count = granted as u32;
            }
            Some((p, w))
        })
        .collect()
}

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
    let status = shared.fleet_status(conn).await?;
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
    // A paused queue waits for an operator, not for more agents.
    let paused = shared.tasks.paused(conn).await?;
    let mut out = Vec::new();
    let mut stranded = Vec::new();
    for (i, pool) in PoolType::ALL.into_iter().enumerate() {
        let c = &status.pools[&pool].by_status;
        let n = |s: AgentStatus| c.get(&s).copied().unwrap_or(0);
        // The head's tasks that still exist: (id, waited, capabilities).
        let head: Vec<(&String, u64, Vec<String>)> = heads[i]
            .iter()
            .filter_map(|id| {
                let (at, need) = rows.next()?;
                let need = need
                    .and_then(|j| serde_json::from_str::<Vec<String>>(&j).ok())
                    .unwrap_or_default();
                Some((id, now.saturating_sub(at?), need))
            })
            .collect();
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
                    task_id: id.clone(),
                    capabilities: need,
                    waited_ms: waited,
                });
            }
        }
        // The queue's depth in tasks the pool could run, estimated from its
        // head when some there cannot be run.
        let queued = if unservable == 0 {
            depth[i]
        } else {
            (depth[i] * servable).div_ceil(servable + unservable)
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
        act(
            shared,
            conn,
            &config,
            pool,
            &w,
            asked,
            inputs,
            st,
            &mut mem.requests,
            now,
        )
        .await?;
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

/// Publishes one decision, records it, and tracks the request.
#[allow(clippy::too_many_arguments)]
async fn act(
    shared: &Shared,
    conn: &mut Conn,
    config: &Config,
    pool: PoolType,
    w: &Want,
    asked: u32,
    inputs: Sample,
    st: &mut PoolState,
    requests: &mut Vec<Request>,
    now: u64,
) -> Result<(), StoreError> {
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
    macro_rules! decision {
        ($level:ident) => {
            $level!(pool = %pool, direction = w.direction.as_str(), count, asked, reason = w.reason,
                live = inputs.live, busy = inputs.busy, queued = inputs.queued,
                oldest_wait_ms = inputs.oldest_wait_ms, "scaling decision")
        };
    }
    if st.unanswered > 0 {
        decision!(debug);
    } else {
        decision!(info);
    }
    record(shared, conn, pool, w, count, asked, &inputs, &id, now).await?;
    publish(conn, shared.keys.channels().scaling(), &msg).await
}

/// A decision in the events stream, with its inputs.
#[allow(clippy::too_many_arguments)]
async fn record(
    shared: &Shared,
    conn: &mut Conn,
    pool: PoolType,
    w: &Want,
    count: u32,
    asked: u32,
    inputs: &Sample,
    id: &str,
    now: u64,
) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalingPolicy {
        ScalingPolicy {
            sample_ms: 100,
            window_ms: 300,
            up_cooldown_ms: 1_000,
            down_cooldown_ms: 2_000,
            max_step: 5,
            ..ScalingPolicy::default()
        }
    }

    fn state(samples: &[(u64, u64, u64)], t0: u64) -> PoolState {
        let mut st = PoolState::default();
        for (i, &(live, busy, queued)) in samples.iter().enumerate() {
            st.record(
                Sample {
                    at: t0 + i as u64 * 100,
                    live,
                    held: 0,
                    busy,
                    queued,
                    oldest_wait_ms: 0,
                },
                300,
            );
        }
        st
    }

    #[test]
    fn one_busy_sample_is_not_a_trend() {
        let st = state(&[(4, 4, 10)], 0);
        assert_eq!(decide(&policy(), 1, 20, None, &st, 0), None);
    }

    #[test]
    fn sustained_load_grows_the_pool_by_at_most_max_step() {
        let st = state(&[(4, 4, 10), (4, 4, 12), (4, 4, 14)], 0);
        let w = decide(&policy(), 1, 20, None, &st, 200).unwrap();
        assert_eq!(
            (w.direction, w.count, w.reason),
            (Direction::Up, 5, "utilization")
        );
        // Never above max.
        let w = decide(&policy(), 1, 6, None, &st, 200).unwrap();
        assert_eq!(w.count, 2);
    }

    #[test]
    fn cooldowns_stop_flapping() {
        let mut st = state(&[(4, 0, 0), (4, 0, 0), (4, 0, 0)], 10_000);
        st.last_up = Some(9_500); // grew 500 ms ago; up cooldown is 1 s
        assert_eq!(decide(&policy(), 1, 20, None, &st, 10_200), None);
        st.last_up = Some(9_000);
        let w = decide(&policy(), 1, 20, None, &st, 10_200).unwrap();
        assert_eq!((w.direction, w.count), (Direction::Down, 3));
        st.last_down = Some(10_200);
        let busy = state(&[(1, 1, 9), (1, 1, 9), (1, 1, 9)], 11_000);
        let busy = PoolState {
            last_down: st.last_down,
            ..busy
        };
        assert_eq!(
            decide(&policy(), 1, 20, None, &busy, 11_200),
            None,
            "down cooldown 2 s"
        );
        assert!(decide(&policy(), 1, 20, None, &busy, 12_200).is_some());
    }

    #[test]
    fn shrinking_needs_a_whole_quiet_window_and_stops_at_min() {
        let st = state(&[(6, 0, 0), (6, 3, 0), (6, 0, 0)], 0);
        assert_eq!(decide(&policy(), 2, 20, None, &st, 200), None);
        let st = state(&[(6, 0, 0), (6, 0, 0), (6, 0, 0)], 0);
        let w = decide(&policy(), 2, 20, None, &st, 200).unwrap();
        assert_eq!((w.direction, w.count), (Direction::Down, 4));
    }

    #[test]
    fn below_min_is_topped_up_at_once_and_requests_in_flight_count() {
        let mut st = state(&[(1, 0, 0)], 0);
        st.last_up = Some(0);
        let w = decide(&policy(), 3, 20, None, &st, 0).unwrap();
        assert_eq!(
            (w.direction, w.count, w.reason),
            (Direction::Up, 2, "below_min")
        );
        st.pending_up = 2;
        assert_eq!(decide(&policy(), 3, 20, None, &st, 0), None);
    }

    #[test]
    fn failed_agents_keep_their_places_against_max() {
        // 10 live and 1 failed in a pool of at most 12: room for one more,
        // whatever the load asks (the registration bound counts the failed one).
        let mut st = state(&[(10, 10, 40), (10, 10, 40), (10, 10, 40)], 0);
        for s in st.samples.iter_mut() {
            s.held = 1;
        }
        let w = decide(&policy(), 1, 12, None, &st, 200).unwrap();
        assert_eq!((w.direction, w.count), (Direction::Up, 1));
        // Full once the failed ones are counted: nothing to ask for.
        for s in st.samples.iter_mut() {
            s.held = 2;
        }
        assert_eq!(decide(&policy(), 1, 12, None, &st, 200), None);
        // Below min with no room: no request that could not be fulfilled.
        let mut st = state(&[(1, 0, 0)], 0);
        st.samples.back_mut().unwrap().held = 3;
        assert_eq!(decide(&policy(), 2, 4, None, &st, 0), None);
    }

    #[test]
    fn a_pool_nobody_answers_waits_longer_each_time_before_asking_again() {
        let mut st = state(&[(0, 0, 0)], 0);
        st.unanswered = 1;
        st.retry_at = Some(5_000);
        assert_eq!(decide(&policy(), 2, 20, None, &st, 4_999), None);
        let w = decide(&policy(), 2, 20, None, &st, 5_000).unwrap();
        assert_eq!((w.direction, w.reason), (Direction::Up, "below_min"));
        let delays: Vec<u64> = (1..=7).map(|n| retry_delay(30_000, n)).collect();
        assert_eq!(
            delays,
            [30_000, 60_000, 120_000, 240_000, 480_000, 600_000, 600_000]
        );
        assert_eq!(retry_delay(30_000, u32::MAX), MAX_RETRY_MS);
        // Backing off stops growth, not shrinking.
        let mut quiet = state(&[(6, 0, 0), (6, 0, 0), (6, 0, 0)], 0);
        quiet.retry_at = Some(u64::MAX);
        let w = decide(&policy(), 2, 20, None, &quiet, 200).unwrap();
        assert_eq!(w.direction, Direction::Down);
    }

    #[test]
    fn a_manual_size_replaces_demand() {
        let st = state(&[(2, 2, 50), (2, 2, 50), (2, 2, 50)], 0);
        let w = decide(&policy(), 1, 20, Some(5), &st, 200).unwrap();
        assert_eq!((w.count, w.reason), (3, "manual"));
        let st = state(&[(5, 5, 50), (5, 5, 50), (5, 5, 50)], 0);
        assert_eq!(decide(&policy(), 1, 20, Some(5), &st, 200), None);
    }

    #[test]
    fn the_fleet_cap_goes_to_the_higher_priority_pool_first() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/fleet.toml"
        ))
        .unwrap();
        let c = Config::parse("fleet.toml", &text).unwrap();
        let up = |count| Want {
            direction: Direction::Up,
            count,
            reason: "utilization",
        };
        // coder is priority 8, ui lower.
        assert!(c.pool(PoolType::Coder).priority_level > c.pool(PoolType::Ui).priority_level);
        let got = share_cap(&c, vec![(PoolType::Ui, up(4)), (PoolType::Coder, up(4))], 5);
        assert_eq!(got, vec![(PoolType::Coder, up(4)), (PoolType::Ui, up(1))]);
    }
}
