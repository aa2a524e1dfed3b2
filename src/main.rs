//! The `fleet-commander` binary: starts things up. The logic lives in the library.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use fleet_commander::agent::{Agent, AgentSpec};
use fleet_commander::config::Config;
use fleet_commander::keys::Keys;
use fleet_commander::pool::PoolType;
use fleet_commander::protocol::Resources;
use fleet_commander::sim::SimOptions;
use fleet_commander::{commander, demo, registry, sim, status};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The commander allocates and frees small buffers for every message; mimalloc
/// does that with less CPU than the system allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Commands a fleet of AI agents through Redis")]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "FLEET_CONFIG", default_value = Config::DEFAULT_PATH)]
    config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the commander (registry, health, status, HTTP API).
    Run,
    /// The main job: Redis, a commander and a simulated fleet of 1000 agents.
    Demo {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Agents to kill (they stop heartbeating) once the fleet is up.
        #[arg(long, default_value_t = 5)]
        kill: usize,
        /// Registrations in flight at once.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        #[arg(long, default_value_t = 1000)]
        status_queries: usize,
        /// Override the heartbeat interval (ms) for a quicker demo.
        #[arg(long)]
        heartbeat_ms: Option<u64>,
        /// No-op tasks pushed through the fleet once it is up.
        #[arg(long, default_value_t = 5000)]
        tasks: usize,
        /// Skip the autoscaling phase (a pool growing and shrinking with load).
        #[arg(long)]
        skip_autoscaling: bool,
        /// Write the measurements as JSON.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Simulate agents against a running commander.
    Sim {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Instead of waves of --batch: agents join one after another at this
        /// many registrations per second, whether or not earlier ones have been
        /// answered (an open loop).
        #[arg(long)]
        join_rate: Option<f64>,
        /// Agents that stop heartbeating after registration.
        #[arg(long, default_value_t = 0)]
        stop: usize,
        #[arg(long, default_value_t = 1000)]
        status_queries: usize,
        /// Commander HTTP API, for status queries (default: http://{http.addr} from the config).
        #[arg(long)]
        commander_url: Option<String>,
        /// Keep the fleet running this many seconds.
        #[arg(long, default_value_t = 0)]
        hold_secs: u64,
        /// Leave the agents registered at the end (default: deregister them).
        #[arg(long)]
        keep: bool,
        /// Tasks to push through the fleet (submitted over the HTTP API).
        #[arg(long, default_value_t = 0)]
        tasks: usize,
        /// Submissions per second (default: as fast as possible).
        #[arg(long)]
        task_rate: Option<f64>,
        /// How long an agent works on one task.
        #[arg(long, default_value_t = 0)]
        work_ms: u64,
        /// Fraction of attempts that fail (and are retried).
        #[arg(long, default_value_t = 0.0)]
        fail_fraction: f64,
        /// Fraction of attempts during which the agent dies (its task must be
        /// completed by another agent once the death is detected).
        #[arg(long, default_value_t = 0.0)]
        die_fraction: f64,
        /// Act on the commander's scale requests: start agents on scale_up.
        #[arg(long)]
        spawner: bool,
        /// Agents crashed and restarted (re-registering) per second.
        #[arg(long, default_value_t = 0.0)]
        churn_per_sec: f64,
        /// The commander's pid (same machine): report its CPU and memory.
        #[arg(long)]
        commander_pid: Option<u32>,
        /// Instead of the fleet: the autoscaling scenario on this pool (which
        /// must have scaling_enabled): a step of load, then quiet, with the
        /// spawner on. Uses --work-ms (300 if 0), --ramp-rate and --ramp-secs.
        #[arg(long)]
        ramp: Option<String>,
        /// Submissions per second during the load step.
        #[arg(long, default_value_t = 30.0)]
        ramp_rate: f64,
        /// How long the load step lasts.
        #[arg(long, default_value_t = 6)]
        ramp_secs: u64,
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Print the fleet status (read from Redis).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run one agent until Ctrl-C.
    Agent {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long = "capability")]
        capabilities: Vec<String>,
    },
    /// Submit, inspect and cancel tasks (through the commander's HTTP API).
    Task {
        #[command(subcommand)]
        action: TaskAction,
        /// Commander HTTP API (default: http://{http.addr} from the config).
        #[arg(long, global = true)]
        url: Option<String>,
    },
    /// List and requeue dead-lettered tasks (through the HTTP API).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
        #[arg(long, global = true)]
        url: Option<String>,
    },
    /// Fix a pool's size (within its bounds), or `auto` to hand it back to the scaler.
    Scale {
        pool: String,
        /// A number of agents, or `auto`.
        size: String,
        #[arg(long)]
        url: Option<String>,
    },
    /// Retire an agent or every agent of a pool without losing work: no new
    /// tasks, they finish what they hold, then deregister.
    Drain {
        #[command(subcommand)]
        target: DrainTarget,
        #[arg(long, global = true)]
        url: Option<String>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum TaskAction {
    /// Submit a task; prints it once the commander has persisted it.
    Submit {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        priority: Option<u8>,
        /// JSON handed to the agent as is.
        #[arg(long, default_value = "null")]
        payload: String,
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        #[arg(long)]
        timeout_ms: Option<u64>,
        #[arg(long)]
        max_retries: Option<u32>,
        /// Idempotency key: submitting again with it returns the same task.
        #[arg(long)]
        client_id: Option<String>,
    },
    /// Show a task.
    Get { id: String },
    /// Cancel a task that has not finished (a running one is taken from its agent).
    Cancel { id: String },
    /// Why each attempt went to the agent it did (strategy, score, reason).
    Evidence { id: String },
}

#[derive(Subcommand)]
enum DrainTarget {
    Agent { id: String },
    Pool { pool: String },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// Tasks out of retries, most recent first.
    List,
    /// Send a dead-lettered task back to its queue with fresh retries.
    Requeue { id: String },
}

/// Sends a request to the HTTP API and prints the JSON answer; an error
/// status is an error.
async fn call(req: reqwest::RequestBuilder) -> anyhow::Result<()> {
    let r = req
        .send()
        .await
        .context("reaching the commander's HTTP API")?;
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        anyhow::bail!("{status}: {body}");
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a configuration file without running anything.
    Check { file: PathBuf },
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// Cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        t.cancel();
    });
    token
}

fn write_report(path: &Option<PathBuf>, report: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", p.display()))?;
        println!("report written to {}", p.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Demo { .. } | Command::Sim { .. } | Command::Status { .. }
    );
    let config = Config::load(&cli.config).ok();
    // RUST_LOG, else the config's log.level, else info (warn for the noisy commands).
    let level = config.as_ref().and_then(|c| c.log.level.clone());
    let default = level.unwrap_or_else(|| if quiet { "warn" } else { "info" }.to_string());
    init_logging(cli.log_format, &default);
    // The commander's runtime size comes from the config (TOKIO_WORKER_THREADS
    // wins); the other commands use tokio's default, one thread per core.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let (Command::Run, Some(c), None) = (
        &cli.command,
        &config,
        std::env::var_os("TOKIO_WORKER_THREADS"),
    ) {
        if c.fleet.runtime_threads > 0 {
            builder.worker_threads(c.fleet.runtime_threads);
        }
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config {
            action: ConfigAction::Check { file },
        } => {
            let c = load(&file)?;
            println!(
                "{}: valid ({} pools, heartbeat {} ms, failure after {} missed)",
                file.display(),
                c.pools.len(),
                c.fleet.heartbeat_interval_ms,
                c.fleet.missed_heartbeats
            );
        }
        Command::Run => {
            let config = load(&cli.config)?;
            let running = commander::start(config, shutdown_on_signal()).await?;
            running.wait().await?;
        }
        Command::Demo {
            agents,
            kill,
            batch,
            status_queries,
            heartbeat_ms,
            tasks,
            skip_autoscaling,
            report,
        } => {
            let config = load(&cli.config)?;
            let opts = demo::DemoOptions {
                agents,
                kill,
                batch,
                status_queries,
                heartbeat_ms,
                redis_url: std::env::var("REDIS_URL").ok(),
                tasks,
                autoscaling: !skip_autoscaling,
            };
            let r = demo::run(config, opts, shutdown_on_signal()).await?;
            write_report(&report, &r)?;
            let scaled = r.autoscaling.as_ref().is_none_or(|a| {
                a.tasks_lost == 0 && a.shrink_ms.is_some() && a.peak_size > a.start_size
            });
            let r = r.fleet;
            let tasks_done = r
                .tasks
                .as_ref()
                .is_none_or(|t| t.completed == t.submitted && t.submitted == tasks);
            let ok = r.registered == r.agents
                && r.detected == r.stopped
                && r.false_deaths == 0
                && tasks_done
                && scaled;
            if !ok {
                eprintln!("demo finished with problems: see the figures above");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Sim {
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
            work_ms,
            fail_fraction,
            die_fraction,
            spawner,
            churn_per_sec,
            commander_pid,
            ramp,
            ramp_rate,
            ramp_secs,
            report,
        } => {
            let config = load(&cli.config)?;
            let url = commander_url.unwrap_or_else(|| format!("http://{}", config.http.addr));
            if let Some(pool) = ramp {
                let pool: PoolType = pool
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--ramp: unknown pool {pool:?}"))?;
                let opts = fleet_commander::ramp::RampOptions {
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
                };
                let r = fleet_commander::ramp::run(opts, shutdown_on_signal()).await?;
                write_report(&report, &r)?;
                return Ok(if r.tasks_lost == 0 && r.shrink_ms.is_some() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            let opts = SimOptions {
                redis_url: config.redis.url.clone(),
                prefix: config.fleet.prefix.clone(),
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
                },
                spawner,
                churn_per_sec,
                commander_pid,
            };
            let r = sim::run(opts, shutdown_on_signal()).await?;
            write_report(&report, &r)?;
        }
        Command::Status { json } => {
            let config = load(&cli.config)?;
            let keys = Keys::new(config.fleet.prefix.clone());
            let client = fleet_commander::connection::client(&config.redis.url)?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("connecting to Redis at {}", config.redis.url))?;
            let counts = registry::read_counts(&mut conn, &keys).await?;
            let s = status::FleetStatus::assemble(&config, &counts, registry::now_ms());
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status::render(&s));
            }
        }
        Command::Task { action, url } => {
            let config = load(&cli.config)?;
            let base = url.unwrap_or_else(|| format!("http://{}", config.http.addr));
            let http = reqwest::Client::new();
            match action {
                TaskAction::Submit {
                    pool,
                    priority,
                    payload,
                    capabilities,
                    timeout_ms,
                    max_retries,
                    client_id,
                } => {
                    let payload: serde_json::Value =
                        serde_json::from_str(&payload).context("--payload is not JSON")?;
                    let body = serde_json::json!({
                        "pool": pool, "priority": priority, "payload": payload,
                        "capabilities": capabilities, "timeoutMs": timeout_ms,
                        "maxRetries": max_retries, "clientId": client_id,
                    });
                    call(http.post(format!("{base}/v1/tasks")).json(&body)).await?;
                }
                TaskAction::Get { id } => call(http.get(format!("{base}/v1/tasks/{id}"))).await?,
                TaskAction::Cancel { id } => {
                    call(http.post(format!("{base}/v1/tasks/{id}/cancel"))).await?
                }
                TaskAction::Evidence { id } => {
                    call(http.get(format!("{base}/v1/tasks/{id}/evidence"))).await?
                }
            }
        }
        Command::Scale { pool, size, url } => {
            let config = load(&cli.config)?;
            let base = url.unwrap_or_else(|| format!("http://{}", config.http.addr));
            let body = if size == "auto" {
                serde_json::json!({"auto": true})
            } else {
                let n: u64 = size
                    .parse()
                    .context("size must be a number of agents or `auto`")?;
                serde_json::json!({"agents": n})
            };
            let http = reqwest::Client::new();
            call(
                http.post(format!("{base}/v1/pools/{pool}/size"))
                    .json(&body),
            )
            .await?;
        }
        Command::Drain { target, url } => {
            let config = load(&cli.config)?;
            let base = url.unwrap_or_else(|| format!("http://{}", config.http.addr));
            let http = reqwest::Client::new();
            let path = match target {
                DrainTarget::Agent { id } => format!("{base}/v1/agents/{id}/drain"),
                DrainTarget::Pool { pool } => format!("{base}/v1/pools/{pool}/drain"),
            };
            call(http.post(path)).await?;
        }
        Command::DeadLetters { action, url } => {
            let config = load(&cli.config)?;
            let base = url.unwrap_or_else(|| format!("http://{}", config.http.addr));
            let http = reqwest::Client::new();
            match action {
                DeadLetterAction::List => call(http.get(format!("{base}/v1/dead-letters"))).await?,
                DeadLetterAction::Requeue { id } => {
                    call(http.post(format!("{base}/v1/dead-letters/{id}/requeue"))).await?
                }
            }
        }
        Command::Agent {
            pool,
            id,
            capabilities,
        } => {
            let config = load(&cli.config)?;
            let pool: PoolType = pool
                .parse()
                .map_err(|_| anyhow::anyhow!("unknown pool {pool:?}"))?;
            let keys = Keys::new(config.fleet.prefix.clone());
            let client = fleet_commander::connection::client(&config.redis.url)?;
            let publisher = fleet_commander::connection::connect(&config.redis.url).await?;
            let spec = AgentSpec {
                id: id.unwrap_or_else(|| format!("{pool}-{}", uuid::Uuid::new_v4().simple())),
                pool,
                priority: None,
                capabilities,
                resources: Resources::default(),
                capacity: 1,
            };
            let mut agent = Agent::connect(&client, publisher, keys, spec).await?;
            let reg = agent.register(Duration::from_secs(5)).await?;
            println!(
                "registered {} in pool {} (re-registered: {}); heartbeating every {:?}; Ctrl-C to leave",
                reg.record.id, reg.record.pool, reg.re_registered, reg.heartbeat_interval
            );
            let stop = shutdown_on_signal();
            agent
                .run(reg.heartbeat_interval, Duration::ZERO, stop)
                .await;
            let removed = agent.deregister(Duration::from_secs(5)).await?;
            println!("deregistered: {removed}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
