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

use crate::config::{Config, ScalingPolicy};
use crate::context::{pause, publish, Shared};
use crate::metrics as m;
use crate::supervise::{round_failed, Backoff};
use fleet_protocol::now_ms;
use fleet_protocol::pool::{AgentStatus, PoolType};
use fleet_protocol::{Scaling, VERSION};
use fleet_store::connection::Conn;
use fleet_store::StoreError;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Scaling events kept in the fleet event stream (approximately).
const EVENTS_CAP: u64 = 10_000;
/// Tasks at the head of a queue whose age is looked at.
const HEAD: isize = 8;

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
    /// Up: the pool's registration count at which it is fulfilled.
    until_registered: u64,
    /// Down: the agents still to leave.
    agents: Vec<String>,
    deadline: u64,
}

pub(crate) async fn scaler(shared: Arc<Shared>, mut conn: Conn) {
    let mut states: HashMap<PoolType, PoolState> = HashMap::new();
    let mut requests: Vec<Request> = Vec::new();
    let mut backoff = Backoff::new();
    loop {
        let every = Duration::from_millis(shared.config().scaling.sample_ms);
        if !pause(shared.shutdown_token(), every).await {
            return;
        }
        match round(&shared, &mut conn, &mut states, &mut requests).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                if !round_failed(&shared, "scale", e, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

/// Reads every pool's demand.
async fn sample(
    shared: &Shared,
    conn: &mut Conn,
    now: u64,
) -> Result<Vec<(PoolType, Sample)>, StoreError> {
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
        p.hget(keys.task(id), "submittedAt");
    }
    let submitted: Vec<Option<u64>> = if heads.iter().all(Vec::is_empty) {
        Vec::new()
    } else {
        p.query_async(conn).await?
    };
    let mut at = submitted.into_iter();
    let mut out = Vec::new();
    for (i, pool) in PoolType::ALL.into_iter().enumerate() {
        let c = &status.pools[&pool].by_status;
        let n = |s: AgentStatus| c.get(&s).copied().unwrap_or(0);
        let oldest = heads[i]
            .iter()
            .filter_map(|_| at.next().flatten())
            .map(|t| now.saturating_sub(t))
            .max()
            .unwrap_or(0);
        let live = n(AgentStatus::Idle) + n(AgentStatus::Active) + n(AgentStatus::Busy);
        let s = Sample {
            at: now,
            live,
            held: n(AgentStatus::Failed) + n(AgentStatus::Recovering) + n(AgentStatus::Halted),
            busy: (n(AgentStatus::Active) + n(AgentStatus::Busy)).min(live),
            queued: depth[i],
            oldest_wait_ms: oldest,
        };
        metrics::gauge!(m::POOL_UTILIZATION, "pool" => pool.as_str()).set(s.utilization());
        metrics::gauge!(m::QUEUE_OLDEST_SECONDS, "pool" => pool.as_str())
            .set(oldest as f64 / 1000.0);
        out.push((pool, s));
    }
    Ok(out)
}

async fn round(
    shared: &Shared,
    conn: &mut Conn,
    states: &mut HashMap<PoolType, PoolState>,
    requests: &mut Vec<Request>,
) -> Result<(), StoreError> {
    let config = shared.config();
    let now = now_ms();
    settle(shared, conn, requests, states, now).await?;
    let samples = sample(shared, conn, now).await?;
    let manual: HashMap<String, u32> = redis::cmd("HGETALL")
        .arg(shared.keys.manual_sizes())
        .query_async(conn)
        .await?;
    let mut wants = Vec::new();
    let mut heading: u64 = 0;
    for (pool, s) in samples {
        let p = config.scaling_for(pool);
        let st = states.entry(pool).or_default();
        st.record(s, p.window_ms);
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
        let st = states.get_mut(&pool).expect("sampled");
        let inputs = *st.samples.back().expect("sampled");
        act(
            shared, conn, &config, pool, &w, asked, inputs, st, requests, now,
        )
        .await?;
        st.samples.clear(); // the next decision sees a fresh window
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
    record(shared, conn, pool, w, count, asked, &inputs, &id, now).await?;
    publish(conn, shared.keys.channels().scaling(), &msg).await
}

/// A decision in the log, the metric and the events stream, with its inputs.
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
    metrics::counter!(m::SCALING_DECISIONS, "pool" => pool.as_str(), "direction" => w.direction.as_str())
        .increment(1);
    info!(pool = %pool, direction = w.direction.as_str(), count, asked, reason = w.reason,
        live = inputs.live, busy = inputs.busy, queued = inputs.queued,
        oldest_wait_ms = inputs.oldest_wait_ms, "scaling decision");
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

/// Marks requests fulfilled, and reports those past their deadline.
async fn settle(
    shared: &Shared,
    conn: &mut Conn,
    requests: &mut Vec<Request>,
    states: &mut HashMap<PoolType, PoolState>,
    now: u64,
) -> Result<(), StoreError> {
    let mut kept = Vec::new();
    for mut r in std::mem::take(requests) {
        let st = states.entry(r.pool).or_default();
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
            continue;
        }
        if now >= r.deadline {
            metrics::counter!(m::SCALE_REQUESTS_UNFULFILLED, "pool" => r.pool.as_str(),
                "direction" => r.direction.as_str())
            .increment(1);
            warn!(request = %r.id, pool = %r.pool, direction = r.direction.as_str(), missing,
                "scaling request not fulfilled in time");
            match r.direction {
                Direction::Up => st.pending_up = st.pending_up.saturating_sub(missing),
                Direction::Down => st.pending_down = st.pending_down.saturating_sub(missing),
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
    *requests = kept;
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
