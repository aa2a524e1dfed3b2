//! `fleet-commander demo`: Redis (yours via REDIS_URL, or a private one), a
//! commander, and a simulated fleet of 1000 agents, a few of which are killed
//! and detected, then the fleet summary. Then autoscaling: one pool is
//! retuned live for a quick policy, a step of load makes it grow and quiet
//! makes it shrink, with the simulator's spawner starting the agents.

use crate::issuer::Issuer;
use crate::ramp::{self, RampOptions, RampReport};
use crate::sim::{self, SimOptions, SimReport};
use anyhow::Context;
use fleet_commander::config::{Config, ScalingPolicy, SecurityMode};
use fleet_protocol::pool::PoolType;
use fleet_protocol::status;
use fleet_testkit::RedisServer;
use serde::Serialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub agents: usize,
    pub kill: usize,
    pub batch: usize,
    pub status_queries: usize,
    pub heartbeat_ms: Option<u64>,
    pub redis_url: Option<String>,
    /// No-op tasks pushed through the fleet once it is up.
    pub tasks: usize,
    /// Run the autoscaling phase.
    pub autoscaling: bool,
    /// Keep the fleet up this long once its tasks are done (the console).
    pub hold_secs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    #[serde(flatten)]
    pub fleet: SimReport,
    pub autoscaling: Option<RampReport>,
}

/// The pool the autoscaling phase scales, and its bounds there.
const RAMP_POOL: PoolType = PoolType::Coder;
const RAMP_MIN: u32 = 2;
const RAMP_MAX: u32 = 12;

/// A policy quick enough to watch: decisions on 1 s of samples, cooldowns
/// of 1-1.5 s (the shipped defaults are 10 s, 15 s and 60 s).
fn quick_policy() -> ScalingPolicy {
    ScalingPolicy {
        sample_ms: 100,
        window_ms: 1000,
        scale_up_utilization: 0.8,
        scale_up_queue_wait_ms: 500,
        scale_down_utilization: 0.3,
        up_cooldown_ms: 1000,
        down_cooldown_ms: 1500,
        max_step: 4,
        min_lifetime_ms: 1000,
        request_timeout_ms: 5000,
    }
}

pub async fn run(
    mut config: Config,
    opts: DemoOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<DemoReport> {
    let _private; // keeps a private server alive for the demo's duration
    match &opts.redis_url {
        Some(url) => {
            println!("using Redis at {url} (REDIS_URL)");
            config.redis.url = url.clone();
            _private = None;
        }
        None => {
            let server = RedisServer::start().context(
                "no REDIS_URL given and no redis-server could be started.\n\
                 Install Redis (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)\n\
                 or point the demo at one: REDIS_URL=redis://host:6379 fleet-commander demo",
            )?;
            println!(
                "no REDIS_URL given: started a private redis-server on 127.0.0.1:{} (removed at exit)",
                server.port()
            );
            config.redis.url = server.url();
            _private = Some(server);
        }
    }
    if let Some(ms) = opts.heartbeat_ms {
        config.fleet.heartbeat_interval_ms = ms;
        config.fleet.detect_tick_ms = config.fleet.detect_tick_ms.min(ms);
    }
    config.http.addr = "127.0.0.1:0".parse().expect("static address");
    // Security as shipped: the demo's commander gets a key of its own, in a
    // private file removed at exit, and every simulated agent a credential.
    let keyfile = CommanderKey::create()?;
    let issuer = match config.security.mode {
        SecurityMode::Signed => {
            config.security.commander_key_file = keyfile.path.clone();
            println!("security on: every agent signs with a key of its own, issued for the demo");
            Some(Issuer::new(&config.fleet.prefix, &keyfile.secret))
        }
        SecurityMode::Open => None,
    };
    config.validate().map_err(|p| anyhow::anyhow!("{p}"))?;

    // And an operator's token for the HTTP API (status queries, submissions).
    let http_token = match &issuer {
        Some(i) => {
            let mut conn = fleet_store::connection::connect(&config.redis.url).await?;
            Some(i.operator_token(&mut conn, "demo").await?)
        }
        None => None,
    };
    let commander = fleet_commander::start(config.clone(), shutdown.child_token()).await?;
    let base = format!("http://{}", commander.http_addr);
    // It leads at once on a Redis of its own; a lease left by another
    // commander lapses within ha.lease_ms.
    let lead_by = std::time::Instant::now()
        + std::time::Duration::from_millis(config.ha.lease_ms + 2 * config.ha.renew_ms);
    while !commander.leads() {
        anyhow::ensure!(
            std::time::Instant::now() < lead_by,
            "the commander did not take the lead within {} ms",
            config.ha.lease_ms + 2 * config.ha.renew_ms
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    println!(
        "commander up (epoch {}), HTTP API at {base} — try {base}/v1/fleet while the demo runs",
        commander.epoch()
    );
    match &http_token {
        Some(t) => println!("console: {base}/ (sign in with the demo's operator token {t})"),
        None => println!("console: {base}/"),
    }
    println!(
        "heartbeats every {} ms; an agent silent for {} heartbeats is failed",
        config.fleet.heartbeat_interval_ms, config.fleet.missed_heartbeats
    );

    let report = sim::run(
        SimOptions {
            subscribers: 0,
            redis_url: config.redis.url.clone(),
            prefix: config.fleet.prefix.clone(),
            commander_url: Some(base.clone()),
            agents: opts.agents,
            batch: opts.batch,
            join_rate: None,
            heartbeat: config.heartbeat_interval(),
            failure_window: config.failure_window(),
            stop: opts.kill,
            status_queries: opts.status_queries,
            hold: Duration::from_secs(opts.hold_secs),
            deregister_at_end: true,
            pools: fleet_protocol::pool::PoolType::ALL
                .iter()
                .map(|p| (*p, config.pool(*p).max_agents))
                .collect(),
            progress: true,
            tasks: crate::sim::TaskLoad {
                count: opts.tasks,
                ..Default::default()
            },
            spawner: false,
            churn_per_sec: 0.0,
            commander_pid: None,
            issuer: issuer.clone(),
            http_token: http_token.clone(),
        },
        shutdown.clone(),
    )
    .await;
    if let Ok(Some(s)) = report.as_ref().map(|r| r.final_status.as_ref()) {
        println!("\nfleet summary:\n{}", status::render(s));
    }
    let autoscaling = match (&report, opts.autoscaling) {
        (Ok(_), true) if !shutdown.is_cancelled() => Some(
            autoscale(
                &commander,
                &config,
                &base,
                issuer,
                http_token,
                shutdown.clone(),
            )
            .await,
        ),
        _ => None,
    };
    commander.shutdown();
    let stopped = commander.wait().await;
    let fleet = report?;
    if stopped != fleet_commander::Exit::Clean {
        anyhow::bail!("the demo's commander stopped: {stopped:?}");
    }
    Ok(DemoReport {
        fleet,
        autoscaling: autoscaling.transpose()?,
    })
}

/// Retunes one pool live for a quick policy (the others stop scaling), then
/// runs the load step against it with the simulator's spawner.
async fn autoscale(
    commander: &fleet_commander::Running,
    config: &Config,
    base: &str,
    issuer: Option<Issuer>,
    http_token: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<RampReport> {
    let mut pools = config.pools.clone();
    for (p, pc) in pools.iter_mut() {
        pc.scaling_enabled = *p == RAMP_POOL;
    }
    let pc = pools.get_mut(&RAMP_POOL).expect("every pool is configured");
    (pc.min_agents, pc.max_agents) = (RAMP_MIN, RAMP_MAX);
    println!(
        "\nautoscaling: {RAMP_POOL} retuned live to {RAMP_MIN}..={RAMP_MAX} agents with a quick policy \
         (1 s window, cooldowns 1 s up / 1.5 s down); the simulator's spawner starts agents on scale_up"
    );
    let ramp = ramp::prepare(
        RampOptions {
            redis_url: config.redis.url.clone(),
            prefix: config.fleet.prefix.clone(),
            commander_url: base.to_string(),
            pool: RAMP_POOL,
            heartbeat: config.heartbeat_interval(),
            work: Duration::from_millis(300),
            rate: 30.0,
            burst: Duration::from_secs(6),
            phase_timeout: Duration::from_secs(60),
            progress: true,
            issuer,
            http_token,
        },
        shutdown,
    )
    .await?;
    // The spawner listens before the pool is retuned: no request is missed.
    fleet_commander::reload::retune(&commander.shared(), pools, quick_policy())
        .await
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    ramp.run().await
}

/// A commander key in a private file, removed on drop.
pub struct CommanderKey {
    pub path: std::path::PathBuf,
    pub secret: [u8; 32],
}

impl CommanderKey {
    /// A fresh key in a file only this user can read.
    pub fn create() -> anyhow::Result<CommanderKey> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let secret = fleet_protocol::auth::new_secret();
        let path = std::env::temp_dir().join(format!(
            "fleet-commander-{}.key",
            uuid::Uuid::new_v4().simple()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(f, "{}", fleet_protocol::auth::encode_key(&secret))?;
        Ok(CommanderKey { path, secret })
    }
}

impl Drop for CommanderKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
