//! The reaper: on its own tick (so that a new task never waits behind its
//! scans), brings retries back after their backoff, ends quarantines whose
//! period is over, and takes tasks back from agents whose lease ran out or
//! that made no progress in time (a Takeback, each a fenced script that
//! also tells the agent). It wakes the allocator when that gave it work.
//! Governance proposals expire in a loop of their own
//! (`crate::governance::expiry`).

use crate::allocator::TICK;
use crate::context::{publish, Shared};
use crate::metrics as m;
use crate::supervise::{round_failed, Backoff};
use fleet_protocol::now_ms;
use fleet_protocol::{Event, VERSION};
use fleet_store::connection::Conn;
use fleet_store::registry::Orphans;
use fleet_store::tasks::{Requeued, Takeback};
use fleet_store::StoreError;
use std::sync::Arc;
use tracing::{info, warn};

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
