//! The allocator: hands queued tasks to available agents (what the reaper,
//! `crate::reaper`, brings back it hands out again).
//!
//! Every decision is a Lua script (see `src/lua/allocate.lua`): the claim of a
//! task by an agent is atomic in Redis, so two loops or two commanders can
//! never hand one task to two agents. A submission runs its pool's allocation
//! in the same round trip (see `TaskStore::submit_and_allocate`); this loop
//! serves what that leaves: it wakes when an agent frees up in a pool where
//! tasks wait, and every tick regardless.

use crate::context::Shared;
use crate::metrics as m;
use crate::supervise::{round_failed, Backoff};
use fleet_protocol::now_ms;
use fleet_protocol::pool::PoolType;
use fleet_store::connection::Conn;
use fleet_store::StoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tasks one script call may assign; a pool that fills it is served again
/// at once. Defined by the store: the script's queue window is the same number.
pub(crate) const BATCH: usize = fleet_store::tasks::ALLOCATE_BATCH;
/// How often the allocator looks even when nothing woke it.
pub(crate) const TICK: Duration = Duration::from_millis(50);

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
        if rounds
            .iter()
            .any(|(_, r)| r.as_ref().is_ok_and(|a| a.assigned > 0))
            && !shared.replicas_have(conn).await?
        {
            // Told anyway: the agents should not wait on a replica. A
            // failover now may hand these tasks out again.
            tracing::warn!("assignments not yet on enough replicas");
        }
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
