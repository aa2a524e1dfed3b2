//! Operators' tools: `status` (a read of Redis), `task`, `scale`, `drain`,
//! `dead-letters` (the HTTP API) and `config check`. Each returns whether
//! it succeeded.

use super::{
    base_url, call, load, request, BudgetAction, DeadLetterAction, DrainTarget, PoisonAction,
    TaskAction,
};
use anyhow::Context;
use fleet_protocol::status::render;
use fleet_store::Keys;
use std::path::Path;

pub(crate) fn config_check(file: &Path) -> anyhow::Result<bool> {
    let c = load(file)?;
    out!(
        "{}: valid ({} pools, heartbeat {} ms, failure after {} missed)",
        file.display(),
        c.pools.len(),
        c.fleet.heartbeat_interval_ms,
        c.fleet.missed_heartbeats
    );
    Ok(true)
}

/// The fleet table (or JSON), from one read of the counters in Redis.
pub(crate) async fn status(config: &Path, json: bool) -> anyhow::Result<bool> {
    let config = load(config)?;
    let keys = Keys::new(config.fleet.prefix.clone());
    let client = fleet_store::connection::client(&config.redis.url)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {}", config.redis.url))?;
    let counts = fleet_store::registry::read_counts(&mut conn, &keys).await?;
    let now = fleet_protocol::now_ms();
    let s = fleet_commander::status::fleet(&config, &counts, now);
    let leader = fleet_store::lease::holder(&mut conn, &keys).await?;
    let commanders =
        fleet_store::lease::commanders(&mut conn, &keys, now, config.ha.lease_ms).await?;
    // Governance: the validators (n) and the lying ones a 2/3 quorum tolerates.
    let validators: u64 = redis::cmd("SCARD")
        .arg(keys.validators())
        .query_async(&mut conn)
        .await?;
    let tolerance = fleet_protocol::governance::tolerance(validators);
    if json {
        let mut v = serde_json::to_value(&s)?;
        v["leader"] = match &leader {
            Some(h) => serde_json::json!({"id": h.id, "epoch": h.epoch}),
            None => serde_json::Value::Null,
        };
        v["commanders"] = serde_json::to_value(&commanders)?;
        v["validators"] = serde_json::json!({"n": validators, "f": tolerance});
        out!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out_raw!("{}", render(&s));
        out!("validators: {validators} (tolerates f = {tolerance} lying)");
        match &leader {
            Some(h) => out!("\nleader: {} (epoch {})", h.id, h.epoch),
            None => out!("\nleader: none (the lease is free)"),
        }
        for c in &commanders {
            out!(
                "  {:<8} {}  epoch {:<4} at {:<21} renewed {} ms ago",
                c.role.as_str(),
                c.id,
                c.epoch,
                c.address,
                now.saturating_sub(c.renewed_at)
            );
        }
    }
    Ok(true)
}

pub(crate) async fn task(
    config: &Path,
    action: TaskAction,
    url: Option<String>,
) -> anyhow::Result<bool> {
    let base = base_url(config, url)?;
    let http = super::tokens::http_client()?;
    match action {
        TaskAction::Submit {
            pool,
            priority,
            payload,
            capabilities,
            timeout_ms,
            max_retries,
            client_id,
            wait,
        } => {
            let payload: serde_json::Value =
                serde_json::from_str(&payload).context("--payload is not JSON")?;
            let body = serde_json::json!({
                "pool": pool, "priority": priority, "payload": payload,
                "capabilities": capabilities, "timeoutMs": timeout_ms,
                "maxRetries": max_retries, "clientId": client_id,
            });
            let Some(wait) = wait else {
                call(http.post(format!("{base}/v1/tasks")).json(&body)).await?;
                return Ok(true);
            };
            let submitted = request(http.post(format!("{base}/v1/tasks")).json(&body)).await?;
            let id = submitted["task"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            eprintln!(
                "submitted {id}; waiting up to {}",
                humantime::format_duration(wait)
            );
            let deadline = std::time::Instant::now() + wait;
            loop {
                let t = request(http.get(format!("{base}/v1/tasks/{id}"))).await?;
                let state = t["state"].as_str().unwrap_or_default();
                if matches!(state, "completed" | "dead" | "cancelled" | "poison") {
                    out!("{}", serde_json::to_string_pretty(&t)?);
                    return Ok(state == "completed");
                }
                if std::time::Instant::now() >= deadline {
                    out!("{}", serde_json::to_string_pretty(&t)?);
                    anyhow::bail!(
                        "task {id} is still {state} after {}: is an agent of pool {pool} running?",
                        humantime::format_duration(wait)
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        TaskAction::Get { id } => call(http.get(format!("{base}/v1/tasks/{id}"))).await?,
        TaskAction::Cancel { id } => {
            call(http.post(format!("{base}/v1/tasks/{id}/cancel"))).await?
        }
        TaskAction::Evidence { id } => {
            call(http.get(format!("{base}/v1/tasks/{id}/evidence"))).await?
        }
    }
    Ok(true)
}

pub(crate) async fn scale(
    config: &Path,
    pool: String,
    size: String,
    url: Option<String>,
) -> anyhow::Result<bool> {
    let base = base_url(config, url)?;
    let body = if size == "auto" {
        serde_json::json!({"auto": true})
    } else {
        let n: u64 = size
            .parse()
            .context("size must be a number of agents or `auto`")?;
        serde_json::json!({"agents": n})
    };
    let http = super::tokens::http_client()?;
    call(
        http.post(format!("{base}/v1/pools/{pool}/size"))
            .json(&body),
    )
    .await?;
    Ok(true)
}

pub(crate) async fn drain(
    config: &Path,
    target: DrainTarget,
    url: Option<String>,
) -> anyhow::Result<bool> {
    let base = base_url(config, url)?;
    let path = match target {
        DrainTarget::Agent { id } => format!("{base}/v1/agents/{id}/drain"),
        DrainTarget::Pool { pool } => format!("{base}/v1/pools/{pool}/drain"),
    };
    call(super::tokens::http_client()?.post(path)).await?;
    Ok(true)
}

pub(crate) async fn dead_letters(
    config: &Path,
    action: DeadLetterAction,
    url: Option<String>,
) -> anyhow::Result<bool> {
    let base = base_url(config, url)?;
    let http = super::tokens::http_client()?;
    match action {
        DeadLetterAction::List => call(http.get(format!("{base}/v1/dead-letters"))).await?,
        DeadLetterAction::Requeue { id } => {
            call(http.post(format!("{base}/v1/dead-letters/{id}/requeue"))).await?
        }
    }
    Ok(true)
}

pub(crate) async fn poison(
    config: &Path,
    action: PoisonAction,
    url: Option<String>,
) -> anyhow::Result<bool> {
    let base = base_url(config, url)?;
    let http = super::tokens::http_client()?;
    match action {
        PoisonAction::List => call(http.get(format!("{base}/v1/poison"))).await?,
        PoisonAction::Show { id } => {
            call(http.get(format!("{base}/v1/tasks/{id}"))).await?;
            call(http.get(format!("{base}/v1/tasks/{id}/evidence"))).await?
        }
        PoisonAction::Requeue { id } => {
            call(http.post(format!("{base}/v1/poison/{id}/requeue"))).await?
        }
    }
    Ok(true)
}

pub(crate) async fn budget(
    config: &Path,
    action: BudgetAction,
    url: Option<String>,
) -> anyhow::Result<bool> {
    let base = base_url(config, url)?;
    let http = super::tokens::http_client()?;
    let at = |agent: &str| format!("{base}/v1/agents/{agent}/budget");
    let change = |agent: &str, body: serde_json::Value| http.post(at(agent)).json(&body);
    match action {
        BudgetAction::Show { agent } => call(http.get(at(&agent))).await?,
        BudgetAction::Topup { agent, amount } => {
            call(change(&agent, serde_json::json!({"topUp": amount}))).await?
        }
        BudgetAction::Reset { agent } => {
            call(change(&agent, serde_json::json!({"reset": true}))).await?
        }
        BudgetAction::Allowance { agent, amount } => {
            call(change(&agent, serde_json::json!({"allowance": amount}))).await?
        }
    }
    Ok(true)
}
