//! Operators' tools over the HTTP API (`--url`, a token from FLEET_TOKEN or
//! FLEET_TOKEN_FILE): `status`, `agents`, `tasks`, `scale`, `drain`,
//! `dead-letters`, `poison`, `budget`; and `config check`. Each returns
//! whether it succeeded. Tables and lines for people, `--json` for scripts.

use super::{
    base_url, call, load, render, request, AgentsAction, BudgetAction, DeadLetterAction,
    DrainTarget, PoisonAction, QueueAction, TaskAction,
};
use anyhow::Context;
use fleet_protocol::api;
use fleet_protocol::pool::AgentStatus;
use fleet_protocol::status::FleetStatus;
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

/// The fleet: a table of pools (agents by status, queued tasks), who leads,
/// the validators; over the HTTP API (a viewer's token). Long because it
/// prints four sections in a row, each read straight from one response.
pub(crate) async fn status(config: &Path, url: Option<String>) -> anyhow::Result<bool> {
    let base = base_url(config, url)?;
    let http = super::tokens::http_client()?;
    let fleet = request(http.get(format!("{base}{}", api::FLEET))).await?;
    let pools = request(http.get(format!("{base}{}", api::POOLS))).await?;
    let commanders = request(http.get(format!("{base}{}", api::COMMANDERS))).await?;
    let gov = request(http.get(format!("{base}{}", api::GOVERNANCE))).await?;
    // Agents in quarantine (given no tasks), by pool.
    let q = request(http.get(format!("{base}{}?quarantined=true&limit=500", api::AGENTS))).await?;
    let quarantined = |pool: &str| {
        q["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["pool"] == pool)
            .count()
    };
    let (n, f) = (gov["validators"].clone(), gov["tolerance"].clone());
    if super::json() {
        let mut v = fleet;
        v["leader"] = commanders["leader"].clone();
        v["commanders"] = commanders["commanders"].clone();
        v["validators"] = serde_json::json!({"n": n, "f": f});
        for p in pools.as_array().into_iter().flatten() {
            if let Some(name) = p["type"].as_str() {
                v["pools"][name]["queued"] = p["queued"].clone();
                v["pools"][name]["quarantined"] = quarantined(name).into();
            }
        }
        out!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    let s: FleetStatus = serde_json::from_value(fleet).context("GET /v1/fleet")?;
    let queued = |pool: &str| {
        pools
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["type"] == pool)
            .and_then(|p| p["queued"].as_u64())
            .unwrap_or(0)
    };
    let by =
        |c: &std::collections::BTreeMap<AgentStatus, u64>, st| c.get(&st).copied().unwrap_or(0);
    out!(
        "fleet: {} agents (max {}) | idle {} active {} busy {} failed {} recovering {} halted {}",
        s.total_agents,
        s.max_agents,
        by(&s.by_status, AgentStatus::Idle),
        by(&s.by_status, AgentStatus::Active),
        by(&s.by_status, AgentStatus::Busy),
        by(&s.by_status, AgentStatus::Failed),
        by(&s.by_status, AgentStatus::Recovering),
        by(&s.by_status, AgentStatus::Halted),
    );
    let rows: Vec<serde_json::Value> = s
        .pools
        .iter()
        .map(|(pool, p)| {
            let c = &p.by_status;
            serde_json::json!({
                "pool": pool.as_str(), "agents": p.current_agents,
                "bounds": format!("{}..{}", p.min_agents, p.max_agents),
                "idle": by(c, AgentStatus::Idle), "active": by(c, AgentStatus::Active),
                "busy": by(c, AgentStatus::Busy), "failed": by(c, AgentStatus::Failed),
                "recovering": by(c, AgentStatus::Recovering), "halted": by(c, AgentStatus::Halted),
                "quarantined": quarantined(pool.as_str()),
                "queued": queued(pool.as_str()),
            })
        })
        .collect();
    let cols = [
        ("pool", "/pool"),
        ("agents", "/agents"),
        ("min..max", "/bounds"),
        ("idle", "/idle"),
        ("active", "/active"),
        ("busy", "/busy"),
        ("failed", "/failed"),
        ("recovering", "/recovering"),
        ("halted", "/halted"),
        ("quarantined", "/quarantined"),
        ("queued", "/queued"),
    ];
    out!("{}", render::table(&rows, &cols));
    out!("validators: {n} (tolerates f = {f} lying)");
    match commanders["leader"].as_object() {
        Some(l) => out!(
            "\nleader: {} (epoch {})",
            l["id"].as_str().unwrap_or("?"),
            l["epoch"]
        ),
        None => out!("\nleader: none (the lease is free)"),
    }
    for c in commanders["commanders"].as_array().into_iter().flatten() {
        out!(
            "  {:<8} {}  epoch {:<4} at {:<21} renewed {}",
            c["role"].as_str().unwrap_or("?"),
            c["id"].as_str().unwrap_or("?"),
            c["epoch"],
            c["address"].as_str().unwrap_or("?"),
            render::ago(c["renewedAt"].as_u64().unwrap_or(0))
        );
    }
    Ok(true)
}

/// `agents list|get`.
pub(crate) async fn agents(
    config: &Path,
    action: AgentsAction,
    url: Option<String>,
) -> anyhow::Result<bool> {
    let base = base_url(config, url)?;
    let http = super::tokens::http_client()?;
    match action {
        AgentsAction::List {
            pool,
            status,
            capability,
            page,
        } => {
            let q = page.query(&[
                ("pool", pool),
                ("status", status),
                ("capability", capability),
            ]);
            let page = request(http.get(format!("{base}{}", api::AGENTS)).query(&q)).await?;
            super::print(&page, |p| {
                let items = p["items"].as_array().cloned().unwrap_or_default();
                let cols = [
                    ("id", "/id"),
                    ("pool", "/pool"),
                    ("status", "/status"),
                    ("load", "/load"),
                    ("health", "/health/score"),
                    ("done", "/performance/tasksCompleted"),
                    ("success", "/performance/successRate"),
                    ("heartbeat", "/health/lastHeartbeat"),
                    ("quarantined until", "/health/quarantinedUntil"),
                    ("draining", "/draining"),
                ];
                format!(
                    "{}\n{} of {} agents\n",
                    render::table(&items, &cols),
                    items.len(),
                    p["total"]
                )
            });
        }
        AgentsAction::Get { id } => {
            call(http.get(format!("{base}{}", api::path(api::AGENT, &id)))).await?
        }
        AgentsAction::Departed { limit } => {
            let list = request(http.get(format!("{base}{}?limit={limit}", api::DEPARTED))).await?;
            super::print(&list, |l| {
                let items = l.as_array().cloned().unwrap_or_default();
                let cols = [
                    ("id", "/id"),
                    ("pool", "/pool"),
                    ("left", "/leftAt"),
                    ("why", "/leftBecause"),
                    ("done", "/tasksCompleted"),
                    ("failed", "/tasksFailed"),
                    ("health", "/health"),
                ];
                format!(
                    "{}\n{} agent(s)\n",
                    render::table(&items, &cols),
                    items.len()
                )
            });
        }
    }
    Ok(true)
}

/// The columns of a task list.
const TASK_COLUMNS: [(&str, &str); 7] = [
    ("id", "/id"),
    ("pool", "/pool"),
    ("state", "/state"),
    ("attempt", "/attempt"),
    ("agent", "/agentId"),
    ("submitted", "/submittedAt"),
    ("updated", "/updatedAt"),
];

/// A list of tasks as a table (or JSON).
fn tasks_table(list: &serde_json::Value) {
    super::print(list, |l| {
        let items = l
            .as_array()
            .or_else(|| l["items"].as_array())
            .cloned()
            .unwrap_or_default();
        format!(
            "{}\n{} task(s)\n",
            render::table(&items, &TASK_COLUMNS),
            items.len()
        )
    });
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
                call(http.post(format!("{base}{}", api::TASKS)).json(&body)).await?;
                return Ok(true);
            };
            let submitted = request(http.post(format!("{base}{}", api::TASKS)).json(&body)).await?;
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
                let t = request(http.get(format!("{base}{}", api::path(api::TASK, &id)))).await?;
                let state = t["state"].as_str().unwrap_or_default();
                if matches!(state, "completed" | "dead" | "cancelled" | "poison") {
                    super::print(&t, render::record);
                    return Ok(state == "completed");
                }
                if std::time::Instant::now() >= deadline {
                    super::print(&t, render::record);
                    anyhow::bail!(
                        "task {id} is still {state} after {}: is an agent of pool {pool} running?",
                        humantime::format_duration(wait)
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        TaskAction::List {
            pool,
            state,
            agent,
            page,
        } => {
            let q = page.query(&[("pool", pool), ("state", state), ("agent", agent)]);
            tasks_table(&request(http.get(format!("{base}{}", api::TASKS)).query(&q)).await?);
        }
        TaskAction::Get { id } => {
            call(http.get(format!("{base}{}", api::path(api::TASK, &id)))).await?
        }
        TaskAction::Cancel { id } => {
            call(http.post(format!("{base}{}", api::path(api::TASK_CANCEL, &id)))).await?
        }
        TaskAction::Evidence { id } => {
            call(http.get(format!("{base}{}", api::path(api::TASK_EVIDENCE, &id)))).await?
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
        http.post(format!("{base}{}", api::path(api::POOL_SIZE, &pool)))
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
        DrainTarget::Agent { id } => format!("{base}{}", api::path(api::AGENT_DRAIN, &id)),
        DrainTarget::Pool { pool } => format!("{base}{}", api::path(api::POOL_DRAIN, &pool)),
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
        DeadLetterAction::List => {
            tasks_table(&request(http.get(format!("{base}{}", api::DEAD_LETTERS))).await?)
        }
        DeadLetterAction::Requeue(w) if !w.all && w.ids.len() == 1 => {
            call(http.post(format!(
                "{base}{}",
                api::path(api::DEAD_LETTER_REQUEUE, &w.ids[0])
            )))
            .await?
        }
        DeadLetterAction::Requeue(w) => {
            call(
                http.post(format!("{base}{}", api::DEAD_LETTERS_REQUEUE))
                    .json(&w.body()),
            )
            .await?
        }
        DeadLetterAction::Delete(w) => {
            call(
                http.post(format!("{base}{}", api::DEAD_LETTERS_DELETE))
                    .json(&w.body()),
            )
            .await?
        }
    }
    Ok(true)
}

/// `queue pause|resume|clear POOL`.
pub(crate) async fn queue(
    config: &Path,
    action: QueueAction,
    url: Option<String>,
) -> anyhow::Result<bool> {
    let base = base_url(config, url)?;
    let http = super::tokens::http_client()?;
    let (pool, path) = match &action {
        QueueAction::Pause { pool } => (pool, api::POOL_PAUSE),
        QueueAction::Resume { pool } => (pool, api::POOL_RESUME),
        QueueAction::Clear { pool } => (pool, api::POOL_CLEAR),
    };
    call(http.post(format!("{base}{}", api::path(path, pool)))).await?;
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
        PoisonAction::List => {
            tasks_table(&request(http.get(format!("{base}{}", api::POISON))).await?)
        }
        PoisonAction::Show { id } => {
            call(http.get(format!("{base}{}", api::path(api::TASK, &id)))).await?;
            call(http.get(format!("{base}{}", api::path(api::TASK_EVIDENCE, &id)))).await?
        }
        PoisonAction::Requeue { id } => {
            call(http.post(format!("{base}{}", api::path(api::POISON_REQUEUE, &id)))).await?
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
    let at = |agent: &str| format!("{base}{}", api::path(api::AGENT_BUDGET, agent));
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
