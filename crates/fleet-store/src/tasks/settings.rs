//! What the scripts read from the config: the task, health and budget policies
//! and each pool's settings, written into Redis.

use super::*;

/// What the task scripts take from the `[tasks]` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPolicy {
    /// Waiting this long counts as much as one priority level.
    pub aging_ms_per_priority: u64,
    /// An assigned task not acknowledged within this time goes back to the queue.
    pub ack_timeout_ms: u64,
    /// Retry backoff: base x 2^(attempt-1), capped.
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// How long a client id keeps naming the same task.
    pub idempotency_ttl_ms: u64,
    /// How long a finished task's record is kept.
    pub retention_ms: u64,
}

/// The agent-health policy the outcome scripts apply (`[tasks]` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthPolicy {
    /// Health gained per completed task, lost per failed or expired attempt.
    pub success_step: u32,
    pub failure_step: u32,
    /// Quarantined below this score, for `quarantine_ms` (doubling per repeat).
    pub quarantine_below: u32,
    pub quarantine_ms: u64,
    /// At most this share (%) of a pool's live agents quarantined at once.
    pub quarantine_max_percent: u32,
    /// Probation ends at this score.
    pub probation_until: u32,
    /// Window of the per-agent quota of `weighted_fair` pools.
    pub quota_window_ms: u64,
    /// How long an agent's health and quarantine outlive its registration.
    pub memory_ms: u64,
    /// A task whose attempts took down this many agents (dead, restarted,
    /// stuck) is held as poison; 0: never.
    pub poison_after: u32,
    /// Silence after which an agent is declared failed (a lease that ran
    /// out in its hands counts as a casualty if it dies within twice this).
    pub failure_window_ms: u64,
}

/// Agents' budgets, as the scripts read them (pools' allowances are in
/// [`PoolSettings`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPolicy {
    pub unit: String,
    /// Below this balance an agent is halted.
    pub min_balance: f64,
    /// Budgets renew every window (aligned to the epoch); 0: never.
    pub window_ms: u64,
}

/// One pool's allocation settings, as the scripts read them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolSettings {
    pub pool: PoolType,
    pub strategy: Strategy,
    /// Tasks per agent per quota window (`weighted_fair`).
    pub quota: Option<u32>,
    /// An attempt with no new progress step for this long is stuck
    /// (unless its task says otherwise); 0: not watched.
    pub progress_timeout_ms: u64,
    /// Each agent's budget per window; 0: none.
    pub allowance: f64,
}

/// Writes what the scripts read from the config: each pool's strategy and
/// quota, and the health policy. Called at start (and on a config reload).
pub async fn write_settings(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    health: &HealthPolicy,
    budget: &BudgetPolicy,
    pools: &[PoolSettings],
) -> Result<()> {
    let (poison_after, failure_window) = (health.poison_after, health.failure_window_ms);
    let health = serde_json::json!({
        "up": health.success_step,
        "down": health.failure_step,
        "below": health.quarantine_below,
        "clear": health.probation_until,
        "period": health.quarantine_ms,
        "cap": health.quarantine_max_percent,
        "window": health.quota_window_ms,
        "memory": health.memory_ms,
    });
    let mut pipe = redis::pipe();
    pipe.atomic()
        .hset(keys.settings(), "health", health.to_string())
        .hset(keys.settings(), "healthChannel", keys.channels().health())
        .hset(keys.settings(), "poisonAfter", poison_after)
        .hset(keys.settings(), "failureWindow", failure_window)
        .hset(keys.settings(), "budgetMin", budget.min_balance)
        .hset(keys.settings(), "budgetWindow", budget.window_ms)
        .hset(keys.settings(), "budgetUnit", &budget.unit);
    for p in pools {
        pipe.hset(keys.settings(), p.pool.as_str(), p.strategy.as_str());
        match p.quota {
            Some(q) => pipe.hset(keys.settings(), format!("{}:quota", p.pool), q),
            None => pipe.hdel(keys.settings(), format!("{}:quota", p.pool)),
        };
        pipe.hset(
            keys.settings(),
            format!("{}:progressTimeout", p.pool),
            p.progress_timeout_ms,
        );
        pipe.hset(
            keys.settings(),
            format!("{}:allowance", p.pool),
            p.allowance,
        );
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}
