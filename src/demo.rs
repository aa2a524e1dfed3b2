//! `fleet-commander demo`: Redis (yours via REDIS_URL, or a private one), a
//! commander, and a simulated fleet of 1000 agents, a few of which are killed
//! and detected, then the fleet summary.

use crate::config::Config;
use crate::redis_server::RedisServer;
use crate::sim::{self, SimOptions, SimReport};
use crate::status;
use anyhow::Context;
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
}

pub async fn run(
    mut config: Config,
    opts: DemoOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<SimReport> {
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
    config
        .validate()
        .map_err(|(f, r)| anyhow::anyhow!("{f}: {r}"))?;

    let commander = crate::commander::start(config.clone(), shutdown.child_token()).await?;
    let base = format!("http://{}", commander.http_addr);
    println!(
        "commander up (epoch {}), HTTP API at {base} — try {base}/v1/fleet while the demo runs",
        commander.epoch
    );
    println!(
        "heartbeats every {} ms; an agent silent for {} heartbeats is failed",
        config.fleet.heartbeat_interval_ms, config.fleet.missed_heartbeats
    );

    let report = sim::run(
        SimOptions {
            redis_url: config.redis.url.clone(),
            prefix: config.fleet.prefix.clone(),
            commander_url: Some(base),
            agents: opts.agents,
            batch: opts.batch,
            heartbeat: config.heartbeat_interval(),
            failure_window: config.failure_window(),
            stop: opts.kill,
            status_queries: opts.status_queries,
            hold: Duration::ZERO,
            deregister_at_end: false,
            pools: crate::pool::PoolType::ALL
                .iter()
                .map(|p| (*p, config.pool(*p).max_agents))
                .collect(),
            progress: true,
            tasks: crate::sim::TaskLoad {
                count: opts.tasks,
                ..Default::default()
            },
        },
        shutdown.clone(),
    )
    .await;
    commander.shutdown();
    let stopped = commander.wait().await;
    let report = report?;
    stopped?;
    if let Some(s) = &report.final_status {
        println!("\nfleet summary:\n{}", status::render(s));
    }
    Ok(report)
}
