//! Fleet and pool status, assembled from one read of the counters hash plus
//! the pool configuration (no per-agent reads), and the loop that publishes
//! it.

use crate::config::{Config, PoolConfig};
use crate::context::{json, Shared};
use crate::metrics as m;
use crate::supervise::{round_failed, Backoff};
use fleet_protocol::pool::{AgentStatus, PoolType};
use fleet_protocol::status::{Fairness, FleetStatus, PoolCounts, PoolView};
use fleet_protocol::{FleetStatusMessage, PoolStatusMessage, VERSION};
use fleet_store::registry::Counts;
use fleet_store::StoreError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn zeroed() -> BTreeMap<AgentStatus, u64> {
    AgentStatus::ALL.into_iter().map(|s| (s, 0)).collect()
}

/// The fleet's status now: its counters read and assembled.
pub(crate) async fn current(
    shared: &Shared,
    conn: &mut impl redis::aio::ConnectionLike,
) -> Result<FleetStatus, StoreError> {
    let counts = shared.registry.counts(conn).await?;
    Ok(fleet(&shared.config(), &counts, fleet_protocol::now_ms()))
}

/// `GET /v1/fleet` and the `fleet_status` message.
pub fn fleet(config: &Config, counts: &Counts, now: u64) -> FleetStatus {
    let mut by_status = zeroed();
    let mut pools = BTreeMap::new();
    for pool in PoolType::ALL {
        let pc = config.pool(pool);
        let mut pool_by_status = zeroed();
        for s in AgentStatus::ALL {
            let n = counts.get(pool, s);
            *pool_by_status.get_mut(&s).expect("all statuses") = n;
            *by_status.get_mut(&s).expect("all statuses") += n;
        }
        pools.insert(
            pool,
            PoolCounts {
                current_agents: pool_by_status.values().sum(),
                min_agents: pc.min_agents,
                max_agents: pc.max_agents,
                by_status: pool_by_status,
            },
        );
    }
    FleetStatus {
        total_agents: by_status.values().sum(),
        max_agents: config.fleet.max_agents,
        by_status,
        pools,
        generated_at: now,
    }
}

/// `GET /v1/pools`, without the fairness figures (the caller adds them).
pub fn pools(config: &Config, counts: &Counts) -> Vec<PoolView> {
    PoolType::ALL
        .into_iter()
        .map(|pool| {
            let PoolConfig {
                min_agents,
                max_agents,
                priority_level,
                scaling_enabled,
                resource_limits,
                strategy,
                ..
            } = *config.pool(pool);
            let by_status: BTreeMap<_, _> = AgentStatus::ALL
                .into_iter()
                .map(|s| (s, counts.get(pool, s)))
                .collect();
            PoolView {
                pool,
                min_agents,
                max_agents,
                current_agents: by_status.values().sum(),
                priority_level,
                scaling_enabled,
                resource_limits,
                strategy,
                by_status,
                fairness: None,
            }
        })
        .collect()
}

/// Publishes `fleet_status` and every `pool_status` each
/// `fleet.status_interval_ms`, and sets the fleet gauges.
pub(crate) async fn publisher(shared: Arc<Shared>) {
    let every = Duration::from_millis(shared.config().fleet.status_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.metrics.run_upkeep();
        metrics::gauge!(m::UPTIME).set(shared.started.elapsed().as_secs_f64());
        match publish_status(&shared).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                if !round_failed(&shared, "status", e, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

async fn publish_status(shared: &Shared) -> Result<(), StoreError> {
    if !shared.leading() {
        return Ok(()); // past its lease: a paused leader's last words
    }
    let mut conn = shared.redis.clone();
    let status = current(shared, &mut conn).await?;
    for (pool, pc) in &status.pools {
        metrics::gauge!(m::POOL_MIN_AGENTS, "pool" => pool.as_str()).set(pc.min_agents);
        metrics::gauge!(m::POOL_MAX_AGENTS, "pool" => pool.as_str()).set(pc.max_agents);
        for (st, n) in &pc.by_status {
            metrics::gauge!(m::AGENTS, "pool" => pool.as_str(), "status" => st.as_str())
                .set(*n as f64);
        }
    }
    if let Ok(fair) = shared.tasks.fairness_inputs(&mut conn).await {
        for c in fair {
            let pool = c.pool;
            let f = Fairness::compute(
                c.agents,
                c.fewest,
                c.most,
                c.total,
                shared.config().tasks.max_skew,
            );
            metrics::gauge!(m::POOL_SKEW, "pool" => pool.as_str()).set(f.skew_ratio);
            metrics::gauge!(m::POOL_TASKS_PER_AGENT, "pool" => pool.as_str())
                .set(f.tasks_per_agent);
        }
    }
    let quarantined: u64 = redis::cmd("ZCARD")
        .arg(shared.keys.quarantine())
        .query_async(&mut conn)
        .await?;
    // The fleet's recent past, for the console's charts.
    let by = |s: AgentStatus| status.by_status.get(&s).copied().unwrap_or(0);
    let queued: u64 = shared.tasks.queue_depths(&mut conn).await?.iter().sum();
    shared.history.record(
        status.generated_at,
        by(AgentStatus::Idle) + by(AgentStatus::Active) + by(AgentStatus::Busy),
        by(AgentStatus::Active) + by(AgentStatus::Busy),
        queued,
    );
    metrics::gauge!(m::AGENTS_QUARANTINED).set(quarantined as f64);
    let mut p = redis::pipe();
    let msg = FleetStatusMessage {
        v: VERSION,
        reply_to: None,
        status: &status,
    };
    p.publish(shared.keys.channels().fleet(), json(&msg))
        .ignore();
    for (pool, pc) in &status.pools {
        let msg = PoolStatusMessage {
            v: VERSION,
            pool: *pool,
            status: pc,
        };
        let ch = shared.keys.channels().pool(*pool);
        p.publish(&ch, shared.seal(&ch, json(&msg))).ignore();
    }
    p.query_async::<()>(&mut conn).await?;
    Ok(())
}
