//! Simulated fleets: `demo`, `sim` (the fleet, or the autoscaling scenario
//! with `--ramp`) and `agent` (one Rust agent until Ctrl-C).

use super::{load, shutdown_on_signal, write_report, DemoArgs, SimArgs};
use fleet_agent::{Agent, AgentSpec};
use fleet_commander::config::SecurityMode;
use fleet_protocol::auth::Credential;
use fleet_protocol::{Channels, PoolType, Resources};
use fleet_sim::issuer::Issuer;
use fleet_sim::sim::{self, SimOptions};
use fleet_sim::{demo, ramp};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The demo; false if any figure says something went wrong. One script,
/// top to bottom, as the README tells it: kept in one piece to read so.
pub(crate) async fn demo(args: DemoArgs, config: &Path) -> anyhow::Result<bool> {
    let DemoArgs {
        agents,
        kill,
        batch,
        status_queries,
        heartbeat_ms,
        tasks,
        skip_autoscaling,
        hold,
        report,
    } = args;
    let config = load(config)?;
    let opts = demo::DemoOptions {
        agents,
        kill,
        batch,
        status_queries,
        heartbeat_ms,
        redis_url: std::env::var("REDIS_URL").ok(),
        tasks,
        autoscaling: !skip_autoscaling,
        hold_secs: hold,
    };
    let r = demo::run(config, opts, shutdown_on_signal()).await?;
    write_report(&report, &r)?;
    let scaled = r
        .autoscaling
        .as_ref()
        .is_none_or(|a| a.tasks_lost == 0 && a.shrink_ms.is_some() && a.peak_size > a.start_size);
    let r = r.fleet;
    let tasks_done = r
        .tasks
        .as_ref()
        .is_none_or(|t| t.completed == t.submitted && t.submitted == tasks);
    // Each check that ran: whether it held, what it says when it did, and
    // when not.
    let mut checks = vec![(
        r.registered == r.agents,
        "every agent registered".to_string(),
        format!("{} of {} agents registered", r.registered, r.agents),
    )];
    if r.stopped > 0 {
        checks.push((
            r.detected == r.stopped,
            format!("{} stopped agents detected", r.stopped),
            format!("{} of {} stopped agents detected", r.detected, r.stopped),
        ));
    }
    checks.push((
        r.false_deaths == 0,
        "no live agent declared dead".to_string(),
        format!("{} live agents declared dead", r.false_deaths),
    ));
    if tasks > 0 {
        checks.push((
            tasks_done,
            format!("{tasks} tasks completed"),
            "not every task completed".to_string(),
        ));
    }
    if !skip_autoscaling {
        checks.push((
            scaled,
            "the pool grew under load and shrank back, losing no task".to_string(),
            "autoscaling did not grow and shrink back without loss".to_string(),
        ));
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.0)
        .map(|c| c.2.as_str())
        .collect();
    if failed.is_empty() {
        let held: Vec<&str> = checks.iter().map(|c| c.1.as_str()).collect();
        out!("\ndemo: all checks passed ({})", held.join("; "));
        Ok(true)
    } else {
        out!("\ndemo: FAILED: {}", failed.join("; "));
        Ok(false)
    }
}

/// The simulator against a running commander: its options turned into a
/// run, then the report. Mostly option plumbing, kept in one place.
pub(crate) async fn sim(args: SimArgs, config: &Path) -> anyhow::Result<bool> {
    let SimArgs {
        agents,
        batch,
        join_rate,
        stop,
        status_queries,
        commander_url,
        hold_secs,
        keep,
        tasks,
        task_rate,
        submit_batch,
        subscribers,
        work_ms,
        fail_fraction,
        die_fraction,
        usage,
        spawner,
        churn_per_sec,
        commander_pid,
        ramp,
        ramp_rate,
        ramp_secs,
        report,
    } = args;
    let config = load(config)?;
    let url = commander_url.unwrap_or_else(|| format!("http://{}", config.http.addr));
    // With security on, the simulator issues its agents' keys itself, as an
    // operator would: it needs the commander's key file.
    let issuer = config
        .commander_secret()?
        .map(|s| Issuer::new(&config.fleet.prefix, &s));
    // FLEET_TOKEN if given; with security on, else one issued for this run.
    let http_token = match (super::tokens::bearer()?, &issuer) {
        (Some(t), _) => Some(t),
        (None, Some(i)) => {
            let mut conn = fleet_store::connection::connect(&config.redis.url).await?;
            Some(i.operator_token(&mut conn, "sim").await?)
        }
        (None, None) => None,
    };
    if let Some(pool) = ramp {
        let pool: PoolType = pool
            .parse()
            .map_err(|_| anyhow::anyhow!("--ramp: unknown pool {pool:?}"))?;
        let opts = ramp::RampOptions {
            redis_url: config.redis.url.clone(),
            prefix: config.fleet.prefix.clone(),
            commander_url: url,
            pool,
            heartbeat: config.heartbeat_interval(),
            work: Duration::from_millis(if work_ms == 0 { 300 } else { work_ms }),
            rate: ramp_rate,
            burst: Duration::from_secs(ramp_secs),
            phase_timeout: Duration::from_secs(120),
            progress: true,
            issuer,
            http_token,
        };
        let r = ramp::run(opts, shutdown_on_signal()).await?;
        write_report(&report, &r)?;
        return Ok(r.tasks_lost == 0 && r.shrink_ms.is_some());
    }
    let opts = SimOptions {
        redis_url: config.redis.url.clone(),
        prefix: config.fleet.prefix.clone(),
        subscribers,
        commander_url: Some(url),
        agents,
        batch,
        join_rate,
        heartbeat: config.heartbeat_interval(),
        failure_window: config.failure_window(),
        stop,
        status_queries,
        hold: Duration::from_secs(hold_secs),
        deregister_at_end: !keep,
        pools: PoolType::ALL
            .iter()
            .map(|p| (*p, config.pool(*p).max_agents))
            .collect(),
        progress: true,
        tasks: sim::TaskLoad {
            count: tasks,
            rate: task_rate,
            work: Duration::from_millis(work_ms),
            fail_fraction,
            die_fraction,
            usage,
            batch: submit_batch,
        },
        spawner,
        churn_per_sec,
        commander_pid,
        issuer,
        http_token,
    };
    let r = sim::run(opts, shutdown_on_signal()).await?;
    write_report(&report, &r)?;
    // A task load that was not all accepted and done measured something
    // else than was asked: said, and the run fails.
    if let Some(t) = &r.tasks {
        if t.refused > 0 {
            anyhow::bail!(
                "{} of {} task submissions were refused or failed (the first: {}): \
                 the commander's log says why",
                t.refused,
                t.refused + t.submitted,
                t.first_refusal.as_deref().unwrap_or("?")
            );
        }
        if t.completed < t.submitted {
            anyhow::bail!(
                "{} of {} accepted tasks were not completed within the simulator's wait: \
                 see `fleet-commander tasks list --state queued` (and `dead-letters list`) and the commander's log",
                t.submitted - t.completed,
                t.submitted
            );
        }
    }
    Ok(true)
}

/// One agent, registered until Ctrl-C.
pub(crate) async fn agent(
    config: &Path,
    pool: Option<String>,
    id: Option<String>,
    capabilities: Vec<String>,
    credential: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let config = load(config)?;
    let credential = match credential {
        Some(p) => Some(Credential::parse(&std::fs::read_to_string(&p).map_err(
            |e| anyhow::anyhow!("reading the credential {}: {e}", p.display()),
        )?)?),
        None if config.security.mode == SecurityMode::Signed => anyhow::bail!(
            "security is on (security.mode = \"signed\"): an agent needs a credential. \
             Issue one with `fleet-commander keys issue coder-1 --pool coder --out coder-1.cred`, \
             then run `fleet-commander agent --credential coder-1.cred`"
        ),
        None => None,
    };
    let id = id.or_else(|| credential.as_ref().map(|c| c.subject.clone()));
    // The credential names the pool; --pool may only repeat it.
    let pool: PoolType = match (pool, credential.as_ref().and_then(|c| c.pool)) {
        (Some(p), Some(c)) if p != c.as_str() => {
            anyhow::bail!(
                "--pool {p} but the credential is for pool {c}: its key is refused in any other"
            )
        }
        (_, Some(c)) => c,
        (Some(p), None) => p.parse().map_err(|_| {
            anyhow::anyhow!(
                "unknown pool {p:?} (one of: {})",
                PoolType::ALL.map(PoolType::as_str).join(", ")
            )
        })?,
        (None, None) => anyhow::bail!("--pool is needed (or --credential, which names it)"),
    };
    let spec = AgentSpec {
        id: id.unwrap_or_else(|| format!("{pool}-{}", uuid::Uuid::new_v4().simple())),
        pool,
        priority: None,
        capabilities,
        resources: Resources::default(),
        capacity: 1,
    };
    let channels = Channels::new(config.fleet.prefix.clone());
    let mut agent = Agent::open(&config.redis.url, credential.as_ref(), channels, spec).await?;
    let reg = agent.register(Duration::from_secs(5)).await.map_err(|e| {
        anyhow::anyhow!(
            "{e}: is a commander running on this Redis (fleet-commander run), and is the \
             credential's key issued there (fleet-commander keys list)? The commander's log says \
             why it refused a message"
        )
    })?;
    out!(
        "registered {} in pool {} (re-registered: {}); heartbeating every {:?}; Ctrl-C or SIGTERM to leave",
        reg.record.id, reg.record.pool, reg.re_registered, reg.heartbeat_interval
    );
    let stop = shutdown_on_signal();
    let exit = agent
        .serve(reg.heartbeat_interval, None, stop, LEAVE_GRACE)
        .await;
    out!("left ({exit:?}): deregistered");
    Ok(true)
}

/// How long `agent` finishes its work on SIGTERM before it hands it back.
const LEAVE_GRACE: Duration = Duration::from_secs(30);
