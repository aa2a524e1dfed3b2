//! Failure detection.
//!
//! Live agents sit in a sorted set scored by their last heartbeat, so each
//! tick is one ZRANGEBYSCORE for the agents silent longer than
//! `missed_heartbeats x heartbeat_interval`, then one atomic script per stale
//! agent that re-checks the score before failing it.
//!
//! No false deaths: an agent is only declared dead when the commander has
//! *listened* (subscribed, and in timely contact with Redis) for a whole
//! window since its last heartbeat, and silence is measured up to what the
//! commander has heard (read and handled: crate::heard), so its own backlog
//! never counts as silence. A lost subscription, a stalled Redis or a slow
//! round trip postpones detection by its own length; after a start,
//! detection waits a full window.

use crate::context::{publish, Shared};
use crate::heard::Deafness;
use crate::metrics as m;
use crate::supervise::pause;
use crate::supervise::{round_failed, Backoff};
use fleet_protocol::now_ms;
use fleet_protocol::{Event, VERSION};
use fleet_store::connection::Conn;
use fleet_store::registry::{FailOutcome, Registry};
use fleet_store::StoreError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Stale agents handled per tick; the rest wait for the next tick.
const BATCH: usize = 1000;

/// A Redis round trip slower than this counts as a lapse in contact.
const SLOW_ROUND_TRIP: Duration = Duration::from_millis(250);

/// A probe unanswered for this long counts as failed (the breaker's).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

pub(crate) async fn detector(shared: Arc<Shared>, mut conn: Conn) {
    let cfg = &shared.config().fleet;
    let tick = Duration::from_millis(cfg.detect_tick_ms);
    let window = shared.config().failure_window().as_millis() as u64;
    // Contact with Redis is confirmed by each tick's query; a gap longer than
    // this between confirmations means we may have missed heartbeats.
    let max_gap = tick * 2 + SLOW_ROUND_TRIP;
    let mut last_contact: Option<(Instant, u64)> = None;
    let mut backoff = Backoff::new();
    while pause(shared.shutdown_token(), tick).await {
        let c = &mut conn;
        let now = now_ms();
        metrics::gauge!(m::INBOUND_BACKLOG).set(shared.heard.backlog() as f64);
        metrics::gauge!(m::INBOUND_LAG)
            .set(now.saturating_sub(shared.heard.through().min(now)) as f64 / 1000.0);
        // Silence counts only while listening (crate::heard), and up to
        // what has been heard: a heartbeat still queued here counts.
        let cutoff = shared.heard.cutoff(window, now);
        let stale = match probe(&shared, c, cutoff.unwrap_or(0)).await {
            Ok(s) => s,
            Err(why) => {
                lapse(&shared, why, last_contact, now);
                last_contact = None;
                continue;
            }
        };
        let previous = last_contact.replace((Instant::now(), now_ms()));
        match previous {
            Some((t, _)) if t.elapsed() <= max_gap => {}
            Some(_) => {
                lapse(&shared, "gap in contact with Redis", previous, now);
                continue;
            }
            None => {
                // In contact again (or for the first time).
                shared.heard.hearing(Deafness::NoContact, now_ms());
                continue;
            }
        }
        let Some(cutoff) = cutoff else {
            if !stale.is_empty() {
                metrics::counter!(m::DETECTION_SKIPPED).increment(1);
            }
            continue; // not a full window listened to: cannot tell silence from deafness
        };
        let result = fail_stale(&shared, c, &stale, cutoff, now).await;
        let result = match result {
            Ok(()) => expire_failed(&shared, c, now).await,
            e => e,
        };
        match result {
            Ok(()) => backoff.reset(),
            Err(e) => {
                if !round_failed(&shared, "detect", e, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

/// The tick's query for silent agents, which is also the circuit breaker's
/// probe (crate::breaker): the agents silent since `cutoff`, or why contact
/// with Redis lapsed (an error, no answer in time, or a slow round trip).
async fn probe(shared: &Shared, conn: &mut Conn, cutoff: u64) -> Result<Vec<String>, &'static str> {
    let before = Instant::now();
    let stale =
        tokio::time::timeout(PROBE_TIMEOUT, shared.registry.stale(conn, cutoff, BATCH)).await;
    let rtt = before.elapsed();
    match stale {
        Ok(Ok(s)) if rtt <= SLOW_ROUND_TRIP => {
            shared.breaker.ok();
            Ok(s)
        }
        Ok(Ok(_)) => {
            shared.breaker.ok();
            Err("slow Redis round trip")
        }
        Err(_) => {
            shared.breaker.failed();
            Err("Redis does not answer")
        }
        Ok(Err(e)) => {
            shared.breaker.failed();
            crate::metrics::redis_error("detect", &e);
            warn!(reason = e.reason(), error = %e, "detector query failed");
            Err("Redis error")
        }
    }
}

/// A lapse in contact with Redis: messages may have been missed since the
/// last confirmed contact (`since`; now, if none), until contact is back.
fn lapse(shared: &Shared, why: &str, since: Option<(Instant, u64)>, now: u64) {
    shared
        .heard
        .deaf(Deafness::NoContact, since.map_or(now, |(_, ms)| ms));
    if since.is_none() {
        return; // still out of contact: the span is open already
    }
    metrics::counter!(m::CONTACT_LAPSES).increment(1);
    warn!(
        why,
        "lapse in contact: the time until contact is back does not count as silence"
    );
}

async fn fail_stale(
    shared: &Shared,
    conn: &mut Conn,
    stale: &[String],
    cutoff: u64,
    now: u64,
) -> Result<(), StoreError> {
    let reg: &Registry = &shared.registry;
    let max_failures = shared.config().fleet.max_failures;
    // Scripts sent concurrently on one multiplexed connection are pipelined.
    let base = conn.clone();
    for chunk in stale.chunks(64) {
        let outcomes = futures_util::future::join_all(chunk.iter().map(|id| {
            let mut c = base.clone();
            async move {
                (
                    id,
                    reg.fail_if_stale(&mut c, id, cutoff, now, max_failures)
                        .await,
                )
            }
        }))
        .await;
        for (id, outcome) in outcomes {
            let (pool, failures, last_heartbeat, removed, orphans) = match outcome? {
                FailOutcome::Fresh => continue,
                FailOutcome::Failed {
                    pool,
                    failures,
                    last_heartbeat,
                    orphans,
                } => (pool, failures, last_heartbeat, false, orphans),
                FailOutcome::Removed {
                    pool,
                    failures,
                    last_heartbeat,
                    orphans,
                } => (pool, failures, last_heartbeat, true, orphans),
            };
            shared.on_orphans(orphans, "agent_failed");
            metrics::counter!(m::AGENTS_FAILED, "pool" => pool.as_str()).increment(1);
            info!(agent_id = %id, pool = %pool, failures, silent_ms = now - last_heartbeat, "agent failed");
            let ev = Event::AgentFailed {
                v: VERSION,
                agent_id: id.clone(),
                pool,
                last_heartbeat,
                failures,
                ts: now,
            };
            publish(conn, shared.keys.channels().health(), &ev).await?;
            if removed {
                removed_event(shared, conn, id, pool, "max_failures", now).await?;
            }
        }
    }
    Ok(())
}

/// Removes failed agents that never came back within the retention time.
async fn expire_failed(shared: &Shared, conn: &mut Conn, now: u64) -> Result<(), StoreError> {
    let cutoff = now.saturating_sub(shared.config().fleet.failed_retention_ms);
    let expired = shared.registry.failed_before(conn, cutoff, BATCH).await?;
    for id in expired {
        if let Some((pool, orphans)) = shared
            .registry
            .remove(conn, &id, Some(cutoff), now, None)
            .await?
        {
            shared.on_orphans(orphans, "agent_failed");
            removed_event(shared, conn, &id, pool, "expired", now).await?;
        }
    }
    Ok(())
}

async fn removed_event(
    shared: &Shared,
    conn: &mut Conn,
    id: &str,
    pool: fleet_protocol::pool::PoolType,
    reason: &'static str,
    now: u64,
) -> Result<(), StoreError> {
    metrics::counter!(m::AGENTS_REMOVED, "reason" => reason).increment(1);
    info!(agent_id = %id, pool = %pool, reason, "agent removed from the registry");
    let ev = Event::AgentRemoved {
        v: VERSION,
        agent_id: id.to_string(),
        pool,
        reason: reason.to_string(),
        ts: now,
    };
    publish(conn, shared.keys.channels().health(), &ev).await
}
