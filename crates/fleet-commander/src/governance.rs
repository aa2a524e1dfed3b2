//! Governed actions (issue 18): an action named in `[governance] actions`
//! becomes a proposal to the validator agents; it runs only once their
//! weighted `allow` reaches the quorum. Votes are counted, and proposals
//! decided, by `fleet_store`'s vote script; this module opens proposals,
//! seals decisions into the audit log and carries out what was allowed.
//! `docs/GUARDRAILS.md` ("Quorum votes") says what a quorum guarantees.

use crate::context::Shared;
use crate::metrics as m;
use fleet_protocol::governance::{tolerance, weight, Announcement, Outcome, VALIDATOR};
use fleet_protocol::{now_ms, AgentStatus, PoolType, VERSION};
use fleet_store::governance::{seal, Proposal};
use fleet_store::StoreError;
use redis::aio::ConnectionLike;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// The validators as the registry has them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Validators {
    /// Every registered validator and its weight.
    pub weights: BTreeMap<String, u64>,
    /// Weight of those live now (idle, active or busy).
    pub live_weight: u64,
    pub live: u64,
}

impl Validators {
    pub(crate) fn count(&self) -> u64 {
        self.weights.len() as u64
    }
    pub(crate) fn total_weight(&self) -> u64 {
        self.weights.values().sum()
    }
    /// f = (n-1)/3: how many lying validators a 2/3 quorum tolerates.
    pub(crate) fn tolerance(&self) -> u64 {
        tolerance(self.count())
    }
}

pub(crate) async fn validators(
    shared: &Shared,
    conn: &mut (impl ConnectionLike + Send),
) -> Result<Validators, StoreError> {
    let mut v = Validators::default();
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(shared.keys.validators())
        .query_async(conn)
        .await?;
    for id in ids {
        let Some(a) = shared.registry.agent(conn, &id).await? else {
            continue;
        };
        if !a.capabilities.iter().any(|c| c == VALIDATOR) {
            continue;
        }
        let w = weight(&a.capabilities);
        if a.status.is_live() || a.status == AgentStatus::Halted {
            v.live_weight += w;
            v.live += 1;
        }
        v.weights.insert(a.id, w);
    }
    metrics::gauge!(m::VALIDATORS).set(v.count() as f64);
    metrics::gauge!(m::VALIDATORS_LIVE).set(v.live as f64);
    metrics::gauge!(m::BYZANTINE_TOLERANCE).set(v.tolerance() as f64);
    Ok(v)
}

/// An opened proposal, as the caller reports it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Opened {
    pub proposal_id: String,
    pub hash: String,
    pub quorum: u64,
    pub total_weight: u64,
    pub deadline: u64,
}

/// Why a governed action was not proposed: the live validators cannot reach
/// the quorum now (said why), or Redis failed under it.
#[derive(Debug)]
pub(crate) enum ProposeError {
    Unreachable(String),
    Store(StoreError),
}

impl From<StoreError> for ProposeError {
    fn from(e: StoreError) -> Self {
        ProposeError::Store(e)
    }
}

/// Opens a proposal for `action` and announces it to the validators, or
/// says why it cannot be: no validators, or fewer live than the quorum
/// needs (refused at once rather than left to expire).
pub(crate) async fn propose(
    shared: &Shared,
    action: &str,
    params: serde_json::Value,
    proposer: &str,
) -> Result<Opened, ProposeError> {
    let mut conn = shared.redis.clone();
    let v = validators(shared, &mut conn).await?;
    let g = shared.config().governance.clone();
    let total = v.total_weight();
    let quorum = ((g.quorum * total as f64).ceil() as u64).max(1);
    if total == 0 {
        metrics::counter!(m::PROPOSALS, "outcome" => "refused").increment(1);
        return Err(ProposeError::Unreachable(
            "no validators are registered".into(),
        ));
    }
    if v.live_weight < quorum {
        metrics::counter!(m::PROPOSALS, "outcome" => "refused").increment(1);
        return Err(ProposeError::Unreachable(format!(
            "live validators' weight {} is below the quorum {quorum} (of {total})",
            v.live_weight
        )));
    }
    let now = now_ms();
    let p = Proposal {
        id: uuid::Uuid::new_v4().to_string(),
        action: action.into(),
        params,
        proposer: proposer.into(),
        created_at: now,
        deadline: now + g.deadline_ms,
        quorum,
        total_weight: total,
        validators: v.weights,
    };
    let hash = shared.governance.open(&mut conn, &p).await?;
    let ann = Announcement::Proposal {
        v: VERSION,
        proposal_id: p.id.clone(),
        action: p.action.clone(),
        params: p.params.clone(),
        hash: hash.clone(),
        quorum,
        total_weight: total,
        deadline: p.deadline,
    };
    shared
        .send(&mut conn, shared.keys.channels().governance(), &ann)
        .await?;
    metrics::counter!(m::PROPOSALS, "outcome" => "opened").increment(1);
    info!(proposal_id = p.id, action, quorum, total, "proposal opened");
    Ok(Opened {
        proposal_id: p.id,
        hash,
        quorum,
        total_weight: total,
        deadline: p.deadline,
    })
}

/// A proposal was decided (by a vote, or its deadline): seal it into the
/// audit log, announce it, and carry out what was allowed.
pub(crate) async fn decided(shared: &Shared, id: &str, outcome: Outcome) -> Result<(), StoreError> {
    let mut conn = shared.redis.clone();
    let Some(rec) = shared.governance.get(&mut conn, id).await? else {
        return Ok(());
    };
    let sealed = seal(&rec.hash, &rec.votes, outcome);
    shared.governance.set_seal(&mut conn, id, &sealed).await?;
    shared
        .audit(
            "governance",
            "governance",
            &format!("proposal:{id}"),
            &format!("{} seal={sealed}", outcome.as_str()),
        )
        .await;
    let ts = now_ms();
    let ann = Announcement::Decision {
        v: VERSION,
        proposal_id: id.to_string(),
        outcome,
        seal: sealed,
        ts,
    };
    shared
        .send(&mut conn, shared.keys.channels().governance(), &ann)
        .await?;
    metrics::counter!(m::PROPOSALS, "outcome" => outcome.as_str()).increment(1);
    metrics::histogram!(m::PROPOSAL_SECONDS)
        .record(ts.saturating_sub(rec.proposal.created_at) as f64 / 1000.0);
    info!(
        proposal_id = id,
        outcome = outcome.as_str(),
        action = rec.proposal.action,
        "proposal decided"
    );
    if outcome == Outcome::Allowed {
        execute(shared, &rec.proposal).await?;
    }
    Ok(())
}

/// Carries out an allowed proposal.
async fn execute(shared: &Shared, p: &Proposal) -> Result<(), StoreError> {
    match p.action.as_str() {
        "drain_pool" => {
            let Some(pool) = p.params["pool"]
                .as_str()
                .and_then(|s| s.parse::<PoolType>().ok())
            else {
                warn!(
                    proposal_id = p.id,
                    "drain_pool without a pool: nothing done"
                );
                return Ok(());
            };
            let drained = drain_pool(shared, pool, "governance").await?;
            info!(proposal_id = p.id, pool = %pool, agents = drained.len(), "allowed: pool draining");
        }
        "scale_pool" => {
            let pool = p.params["pool"]
                .as_str()
                .and_then(|s| s.parse::<PoolType>().ok());
            match (pool, p.params["agents"].as_u64()) {
                (Some(pool), Some(n)) => {
                    set_size(shared, pool, n).await?;
                    info!(proposal_id = p.id, pool = %pool, agents = n, "allowed: pool size set");
                }
                _ => warn!(
                    proposal_id = p.id,
                    "scale_pool without a pool and a size: nothing done"
                ),
            }
        }
        other => warn!(
            proposal_id = p.id,
            action = other,
            "no such action: nothing done"
        ),
    }
    Ok(())
}

/// Fixes `pool`'s size at `n` agents until it is handed back to the scaler.
pub(crate) async fn set_size(shared: &Shared, pool: PoolType, n: u64) -> Result<(), StoreError> {
    redis::cmd("HSET")
        .arg(shared.keys.manual_sizes())
        .arg(pool.as_str())
        .arg(n)
        .query_async::<()>(&mut shared.redis.clone())
        .await?;
    Ok(())
}

/// Drains every agent of `pool`; the ones drained.
pub(crate) async fn drain_pool(
    shared: &Shared,
    pool: PoolType,
    reason: &str,
) -> Result<Vec<String>, StoreError> {
    let mut conn = shared.redis.clone();
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(shared.keys.pool_agents(pool))
        .query_async(&mut conn)
        .await?;
    let now = now_ms();
    let mut drained = Vec::new();
    for id in ids {
        if shared.drain(&mut conn, &id, now, reason).await?.is_some() {
            drained.push(id);
        }
    }
    metrics::counter!(m::AGENTS_DRAINED, "pool" => pool.as_str(), "reason" => "operator")
        .increment(drained.len() as u64);
    Ok(drained)
}

/// How often proposals past their deadline are looked for.
const EXPIRY_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// The loop that expires proposals past their deadline.
pub(crate) async fn expiry(shared: std::sync::Arc<Shared>) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = crate::supervise::Backoff::new();
    loop {
        tokio::select! {
            _ = shared.shutdown_token().cancelled() => return,
            _ = tick.tick() => {}
        }
        match expire(&shared).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                if !crate::supervise::round_failed(&shared, "proposal_expiry", e, &mut backoff)
                    .await
                {
                    return;
                }
            }
        }
    }
}

/// Proposals past their deadline: expired, sealed, announced.
async fn expire(shared: &Shared) -> Result<(), StoreError> {
    let mut conn = shared.redis.clone();
    for id in shared.governance.expire_due(&mut conn, now_ms()).await? {
        decided(shared, &id, Outcome::Expired).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weight_comes_from_its_capability() {
        let caps = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(weight(&caps(&["validator"])), 1);
        assert_eq!(weight(&caps(&["validator", "weight:3"])), 3);
        assert_eq!(weight(&caps(&["weight:0"])), 1);
        assert_eq!(weight(&caps(&["weight:1000"])), 100);
    }
}
