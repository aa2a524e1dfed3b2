//! Live pool tuning: the commander watches its config file (and re-reads it
//! on SIGHUP) and applies the pool settings and scaling policy of a valid
//! edit without a restart. An invalid edit is refused with its reason; the
//! running configuration stays. [`write_settings`] writes what the scripts
//! read from the config (health policy, budgets, each pool's strategy and
//! quota) into Redis, at start and on each applied edit.

use crate::config::{Config, ConfigError, PoolConfig, Problems, ScalingPolicy};
use crate::context::Shared;
use crate::metrics as m;
use crate::supervise::pause;
use fleet_protocol::pool::PoolType;
use fleet_store::Keys;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// How often the file is looked at.
const POLL: Duration = Duration::from_secs(1);

pub(crate) async fn watch(shared: Arc<Shared>, path: PathBuf) {
    let mut last = std::fs::read(&path).ok();
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        let signalled = tokio::select! {
            _ = shared.shutdown_token().cancelled() => return,
            _ = hangup => true,
            keep = pause(shared.shutdown_token(), POLL) => {
                if !keep { return; }
                false
            }
        };
        let now = std::fs::read(&path).ok();
        if !signalled && now == last {
            continue;
        }
        last = now;
        match apply(&shared, &path).await {
            Ok(changed) => {
                metrics::counter!(m::CONFIG_RELOADS, "result" => "applied").increment(1);
                info!(path = %path.display(), ?changed, "configuration reloaded");
                let target = path.display().to_string();
                shared
                    .audit("config:file", "config_applied", &target, "ok")
                    .await;
            }
            Err(e) => {
                metrics::counter!(m::CONFIG_RELOADS, "result" => "rejected").increment(1);
                error!(error = %e, "configuration edit refused; the running configuration stays");
                let target = path.display().to_string();
                shared
                    .audit("config:file", "config_refused", &target, &e.to_string())
                    .await;
            }
        }
    }
}

/// Reads, validates and applies `path`. Returns the pools whose settings changed.
pub async fn apply(shared: &Shared, path: &Path) -> Result<Vec<String>, ConfigError> {
    let file = Config::load(path)?;
    let old = shared.config();
    let restart_only = [
        ("redis", to_json(&file.redis) != to_json(&old.redis)),
        ("fleet", to_json(&file.fleet) != to_json(&old.fleet)),
        ("http", to_json(&file.http) != to_json(&old.http)),
        ("tasks", file.tasks != old.tasks),
    ];
    for (section, differs) in restart_only {
        if differs {
            warn!(
                section,
                "changed in the file; applied at the next restart, not now"
            );
        }
    }
    retune(shared, file.pools, file.scaling)
        .await
        .map_err(|p| p.into_error(path.display().to_string()))
}

/// Validates and applies new pool settings and scaling policy to a running
/// commander, keeping its agents and tasks. Returns the pools that changed,
/// or every offending field and why.
pub async fn retune(
    shared: &Shared,
    pools: BTreeMap<PoolType, PoolConfig>,
    scaling: ScalingPolicy,
) -> Result<Vec<String>, Problems> {
    let old = shared.config();
    let mut new = (*old).clone();
    new.pools = pools;
    new.scaling = scaling;
    new.validate()?;
    let changed: Vec<String> = new
        .pools
        .iter()
        .filter(|(p, pc)| old.pools.get(p) != Some(pc))
        .map(|(p, _)| p.to_string())
        .collect();
    if let Err(e) = write_settings(&mut shared.redis.clone(), &shared.keys, &new).await {
        let mut p = Problems::default();
        p.add("(redis)", format!("could not store the pool settings: {e}"));
        return Err(p);
    }
    shared.set_config(new);
    shared.wake_all();
    Ok(changed)
}

fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Writes what the scripts read from `config` into Redis (at start, and on
/// a reload).
pub async fn write_settings(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    config: &Config,
) -> fleet_store::Result<()> {
    let b = &config.budgets;
    let budget = fleet_store::tasks::BudgetPolicy {
        unit: b.unit.clone(),
        min_balance: b.min_balance,
        window_ms: b.window_ms,
    };
    fleet_store::tasks::write_settings(
        conn,
        keys,
        &config.health_policy(),
        &budget,
        &config.pool_settings(),
    )
    .await
}
