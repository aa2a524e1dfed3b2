//! The allocator: hands queued tasks to available agents. Beside it, the
//! reaper brings retries back after their backoff, ends quarantines and takes
//! tasks back from agents whose lease ran out.
//!
//! Every decision is a Lua script (see `src/lua/allocate.lua`): the claim of a
//! task by an agent is atomic in Redis, so two loops or two commanders can
//! never hand one task to two agents. A submission runs its pool's allocation
//! in the same round trip (see `TaskStore::submit_and_allocate`); this loop
//! serves what that leaves: it wakes when an agent frees up in a pool where
//! tasks wait, and every tick regardless. The reaper's scans run on their own
//! tick, so a new task never waits behind them.

use crate::context::{publish, Shared};
use crate::metrics as m;
use crate::supervise::{round_failed, Backoff};
use fleet_protocol::now_ms;
use fleet_protocol::pool::PoolType;
use fleet_protocol::{Event, VERSION};
use fleet_store::connection::Conn;
use fleet_store::registry::Orphans;
use fleet_store::tasks::{Requeued, Takeback};
use fleet_store::StoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Tasks one script call may assign; a pool that fills it is served again
/// at once. Defined by the store: the script's queue window is the same number.
pub(crate) const BATCH: usize = fleet_store::tasks::ALLOCATE_BATCH;
/// How often the allocator looks even when nothing woke it.
const TICK: Duration = Duration::from_millis(50);

pub(crate) async fn allocator(shared: Arc<Shared>, mut conn: Conn) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::new();
    loop {
        // A wake serves the pools that changed; the tick also serves every
        // pool where tasks wait (a wake lost or not yet due).
        let full = tokio::select! {
            _ = shared.shutdown_token().cancelled() => return,
            _ = shared.alloc_wake.notified() => false,
            _ = tick.tick() => true,
        };
        let mask = shared.dirty_pools.swap(0, Ordering::AcqRel);
        match round(&shared, &mut conn, full, mask).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                shared.dirty_pools.fetch_or(mask, Ordering::AcqRel);
                if !round_failed(&shared, "allocate", e, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

/// Brings back retries whose backoff is over, ends quarantines whose period
/// is over and takes back tasks whose lease ran out, every tick; wakes the
/// allocator when that gave it something to do.
pub(crate) async fn reaper(shared: Arc<Shared>, mut conn: Conn) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::new();
    loop {
        tokio::select! {
            _ = shared.shutdown_token().cancelled() => return,
            _ = tick.tick() => {}
        }
        match reap(&shared, &mut conn).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                if !round_failed(&shared, "reap", e, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

async fn reap(shared: &Shared, conn: &mut Conn) -> Result<(), StoreError> {
    let now = now_ms();
    if shared.tasks.release_delayed(conn, now, 512).await? > 0 {
        shared.wake_all();
    }
    for agent_id in shared.tasks.parole(conn, now, 256).await? {
        metrics::counter!(m::AGENT_PROBATIONS).increment(1);
        info!(agent_id, "quarantine over: on probation");
        let ev = Event::AgentProbation {
            v: VERSION,
            agent_id,
            ts: now,
        };
        publish(conn, shared.keys.channels().health(), &ev).await?;
        shared.wake_all();
    }
    // A deadline that passed while nobody listened (a takeover, a lost
    // subscription) may have been met: an agent re-sends a result with
    // every heartbeat until it is acknowledged. So attempts expire only once
    // the commander has listened for two heartbeat intervals (crate::heard).
    let listen = 2 * shared.config().fleet.heartbeat_interval_ms;
    if shared.heard.cutoff(listen, now).is_none() {
        return Ok(());
    }
    let mut expired = Orphans::default();
    for id in shared.tasks.expired_leases(conn, now, 512).await? {
        take_back(shared, conn, &id, now, Takeback::Lease, &mut expired).await?;
    }
    shared.on_orphans(expired, "lease_expired");
    // An attempt is stuck when no progress was handled by its deadline: the
    // deadline is judged against what the commander has handled, not the
    // clock, so a report still queued in the commander counts.
    let mut stuck = Orphans::default();
    let handled = shared.heard.through().min(now);
    for id in shared.tasks.stalled(conn, handled, 512).await? {
        take_back(shared, conn, &id, handled, Takeback::Stuck, &mut stuck).await?;
    }
    shared.on_orphans(stuck, "stuck");
    crate::governance::expire(shared).await?;
    let (dead, poison) = shared.tasks.held_counts(conn).await?;
    metrics::gauge!(m::DEAD_LETTERS).set(dead as f64);
    metrics::gauge!(m::POISON_TASKS).set(poison as f64);
    Ok(())
}

/// Takes one attempt back from its agent (its lease ran out, or it is
/// stuck) and tells the agent to stop.
async fn take_back(
    shared: &Shared,
    conn: &mut Conn,
    id: &str,
    now: u64,
    why: Takeback,
    tally: &mut Orphans,
) -> Result<(), StoreError> {
    let Some(taken) = shared.tasks.expire(conn, id, now, why).await? else {
        return Ok(());
    };
    match taken.to {
        Requeued::Queued => tally.requeued += 1,
        Requeued::Dead => tally.dead += 1,
        Requeued::Poison => tally.poisoned += 1,
    }
    let agent_id = taken.agent;
    if why == Takeback::Stuck {
        metrics::counter!(m::AGENTS_STUCK).increment(1);
        warn!(
            task_id = id,
            agent_id, "agent stuck: no progress on its task in time; task taken back"
        );
    }
    shared
        .tell(conn, taken.notice.into_iter().collect())
        .await?;
    Ok(())
}

async fn round(shared: &Shared, conn: &mut Conn, full: bool, dirty: u32) -> Result<(), StoreError> {
    let started = Instant::now();
    let now = now_ms();
    // A pool is served when something changed in it, or, on the tick, when
    // tasks wait in it (one pipeline of ZCARDs rather than a script per pool).
    let mut pools: Vec<PoolType> = PoolType::ALL
        .into_iter()
        .filter(|p| dirty & (1 << p.index()) != 0)
        .collect();
    if full {
        let depths = shared.tasks.queue_depths(conn).await?;
        for (pool, depth) in PoolType::ALL.into_iter().zip(depths) {
            metrics::gauge!(m::QUEUE_DEPTH, "pool" => pool.as_str()).set(depth as f64);
            shared.note_queue(pool, depth);
            if depth > 0 && !pools.contains(&pool) {
                pools.push(pool);
            }
        }
    }
    let mut assigned_any = false;
    while !pools.is_empty() {
        let rounds = futures_util::future::join_all(pools.iter().map(|&p| {
            let mut c = conn.clone();
            async move { (p, shared.tasks.allocate(&mut c, p, BATCH, now).await) }
        }))
        .await;
        pools.clear();
        for (pool, r) in rounds {
            let a = r?;
            let (assigned, queued) = (a.assigned, a.queued);
            shared.tell(conn, a.notices).await?;
            assigned_any |= assigned > 0;
            if noted(shared, pool, assigned, queued) {
                pools.push(pool);
            }
        }
    }
    if assigned_any {
        metrics::histogram!(m::ALLOCATION_SECONDS).record(started.elapsed());
    }
    Ok(())
}

/// Notes one pool's allocation; true when it filled a batch (more may wait).
fn noted(shared: &Shared, pool: PoolType, assigned: u64, queued: u64) -> bool {
    shared.note_queue(pool, queued);
    metrics::gauge!(m::QUEUE_DEPTH, "pool" => pool.as_str()).set(queued as f64);
    if assigned > 0 {
        metrics::counter!(m::TASKS_ASSIGNED, "pool" => pool.as_str()).increment(assigned);
    }
    assigned as usize >= BATCH
}

/// Records an allocation made beside a submission (one pool, one script
/// call begun at `started`); a full batch leaves the rest to the allocator.
pub(crate) fn record(
    shared: &Shared,
    pool: PoolType,
    assigned: u64,
    queued: u64,
    started: Instant,
) {
    if assigned > 0 {
        metrics::histogram!(m::ALLOCATION_SECONDS).record(started.elapsed());
    }
    if noted(shared, pool, assigned, queued) {
        shared.wake_pool(pool);
    }
}
