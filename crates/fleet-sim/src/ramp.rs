//! The autoscaling scenario: a step of load on one pool, then quiet, with the
//! simulator's spawner acting on the commander's scale requests. It shows the
//! pool growing to demand and shrinking back, and measures how long each step
//! took, how many scaling events it caused and whether any task was lost.

use crate::sim::Progress;
use crate::spawner::InProcess;
use anyhow::Context;
use fleet_agent::{Assignment, Outcome, Work};
use fleet_protocol::pool::PoolType;
use fleet_protocol::status::PoolView;
use fleet_protocol::Channels;
use fleet_protocol::Scaling;
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct RampOptions {
    pub redis_url: String,
    pub prefix: String,
    pub commander_url: String,
    pub pool: PoolType,
    pub heartbeat: Duration,
    /// How long an agent works on one task.
    pub work: Duration,
    /// Submissions per second during the step.
    pub rate: f64,
    /// How long the step of load lasts.
    pub burst: Duration,
    /// The most any one phase (reaching min, draining the work, shrinking) may take.
    pub phase_timeout: Duration,
    pub progress: bool,
    /// Gives every agent a credential (None: the commander runs open).
    pub issuer: Option<crate::issuer::Issuer>,
    /// The bearer token for the commander's HTTP API (None: it runs open).
    pub http_token: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RampReport {
    pub pool: String,
    pub min_agents: u32,
    pub max_agents: u32,
    /// Live agents when the load started.
    pub start_size: u64,
    pub peak_size: u64,
    /// Load start -> the pool first at its peak size.
    pub grow_ms: f64,
    pub scale_up_events: usize,
    /// Load end -> the pool back at its minimum (None: it did not get there in time).
    pub shrink_ms: Option<f64>,
    pub scale_down_events: usize,
    pub scale_timeouts: usize,
    pub agents_started: u64,
    pub agents_drained: u64,
    pub tasks_submitted: usize,
    pub tasks_completed: usize,
    /// Submitted tasks never completed (must be 0).
    pub tasks_lost: usize,
    /// Pool size never left [min, max] after reaching min.
    pub within_bounds: bool,
}

/// The scenario, subscribed and with its spawner running, before any load.
pub struct Ramp {
    opts: RampOptions,
    events: Arc<Mutex<Vec<(Instant, Scaling)>>>,
    watcher: tokio::task::JoinHandle<()>,
    spawned: Arc<crate::spawner::Spawned>,
    done: Arc<Mutex<HashSet<u64>>>,
    stop: CancellationToken,
    shutdown: CancellationToken,
}

/// Subscribes to the scaling channel and starts the spawner, so that no
/// request from now on is missed (retune the pool after this).
pub async fn prepare(opts: RampOptions, shutdown: CancellationToken) -> anyhow::Result<Ramp> {
    let keys = Channels::new(opts.prefix.clone());
    // Watch the scaling channel: every decision is printed as it happens.
    let events: Arc<Mutex<Vec<(Instant, Scaling)>>> = Default::default();
    let client = fleet_store::connection::client(&opts.redis_url)?;
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(keys.scaling()).await?;
    let seen = events.clone();
    let watcher = tokio::spawn(async move {
        let mut s = ps.into_on_message();
        while let Some(m) = s.next().await {
            if let Ok(e) = serde_json::from_slice::<Scaling>(m.get_payload_bytes()) {
                seen.lock()
                    .expect("no panics while held")
                    .push((Instant::now(), e));
            }
        }
    });
    let stop = shutdown.child_token();
    let done = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let spawned = InProcess {
        redis_url: opts.redis_url.clone(),
        keys,
        heartbeat: opts.heartbeat,
        work: Some(worker(opts.work, done.clone())),
        id_prefix: format!("ramp-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
        issuer: opts.issuer.clone(),
    }
    .start(stop.clone())
    .await?;
    Ok(Ramp {
        opts,
        events,
        watcher,
        spawned,
        done,
        stop,
        shutdown,
    })
}

/// Prepares and runs the scenario against a running commander whose pool
/// has scaling enabled.
pub async fn run(opts: RampOptions, shutdown: CancellationToken) -> anyhow::Result<RampReport> {
    prepare(opts, shutdown).await?.run().await
}

impl Ramp {
    /// Waits for the pool at its minimum, applies the load step, then waits
    /// for the work to drain and the pool to shrink back. Stops its agents.
    pub async fn run(self) -> anyhow::Result<RampReport> {
        let r = self.steps().await;
        self.stop.cancel();
        self.watcher.abort();
        r
    }

    async fn steps(&self) -> anyhow::Result<RampReport> {
        let Ramp {
            opts,
            events,
            spawned,
            done,
            shutdown,
            ..
        } = self;
        let mut progress = Progress::new(opts.progress);
        let http = crate::issuer::http_client(opts.http_token.as_deref())?;
        let base = opts.commander_url.clone();
        let view = pool_view(&http, &base, opts.pool).await?;
        anyhow::ensure!(
            view.scaling_enabled,
            "pool {} does not have scaling_enabled",
            opts.pool
        );
        let mut report = RampReport {
            pool: opts.pool.to_string(),
            min_agents: view.min_agents,
            max_agents: view.max_agents,
            within_bounds: true,
            ..Default::default()
        };
        let mut printed = 0;
        let mut print_events = |progress: &mut Progress, t0: Instant| {
            let evs = events.lock().expect("no panics while held");
            for (at, e) in evs.iter().skip(printed) {
                let t = at.saturating_duration_since(t0).as_secs_f64();
                let line = match e {
                    Scaling::ScaleUp {
                        pool,
                        count,
                        reason,
                        ..
                    } => format!("scale_up   {pool} +{count} ({reason})"),
                    Scaling::ScaleDown {
                        pool,
                        agents,
                        reason,
                        ..
                    } => format!("scale_down {pool} -{} ({reason})", agents.len()),
                    Scaling::ScaleTimeout {
                        pool,
                        direction,
                        missing,
                        ..
                    } => format!("scale_timeout {pool} {direction}: {missing} missing"),
                    Scaling::Unschedulable {
                        pool,
                        task_id,
                        capabilities,
                        ..
                    } => format!("unschedulable {pool} {task_id} needs {capabilities:?}"),
                };
                progress.line(&format!("  t={t:>5.1}s {line}"));
            }
            printed = evs.len();
        };
        let count = |dir: &str, from: Instant| {
            events
                .lock()
                .expect("no panics while held")
                .iter()
                .filter(|(at, e)| *at >= from && kind(e) == dir)
                .count()
        };

        // Phase 0: the pool reaches its minimum (the scaler tops it up).
        let t0 = Instant::now();
        let min = u64::from(report.min_agents);
        let size = wait_size(
            &http,
            &base,
            opts.pool,
            |n| n == min,
            opts.phase_timeout,
            shutdown,
        )
        .await?;
        print_events(&mut progress, t0);
        report.start_size = size;
        progress.line(&format!(
            "{} at its minimum: {size} agents (bounds {}..={})",
            opts.pool, report.min_agents, report.max_agents
        ));

        // Phase 1: a step of load.
        progress.line(&format!(
            "load step: {:.0} tasks/s of {} ms each for {:.1} s (needs ~{:.0} agents)",
            opts.rate,
            opts.work.as_millis(),
            opts.burst.as_secs_f64(),
            opts.rate * opts.work.as_secs_f64()
        ));
        let step = Instant::now();
        let url = format!("{base}/v1/tasks");
        let submitter = {
            let (http, rate, burst, pool) = (http.clone(), opts.rate, opts.burst, opts.pool);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
                let mut sent = Vec::new();
                let mut seq = 0u64;
                while step.elapsed() < burst {
                    tick.tick().await;
                    let body = serde_json::json!({"pool": pool, "payload": {"seq": seq}});
                    let http = http.clone();
                    let url = url.clone();
                    sent.push(tokio::spawn(async move {
                        http.post(&url)
                            .json(&body)
                            .send()
                            .await
                            .and_then(|r| r.error_for_status())
                            .is_ok()
                    }));
                    seq += 1;
                }
                let mut ok = 0;
                for s in sent {
                    ok += usize::from(s.await.unwrap_or(false));
                }
                ok
            })
        };
        let mut size = report.start_size;
        let mut peak_at = step;
        let bounds = u64::from(report.min_agents)..=u64::from(report.max_agents);
        while step.elapsed() < opts.burst && !shutdown.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = live(&http, &base, opts.pool).await?;
            report.within_bounds &= bounds.contains(&n);
            if n > report.peak_size {
                report.peak_size = n;
                peak_at = Instant::now();
            }
            if n != size {
                print_events(&mut progress, t0);
                progress.line(&format!("  {}: {size} -> {n} agents", opts.pool));
                size = n;
            }
        }
        report.tasks_submitted = submitter.await.unwrap_or(0);
        report.grow_ms = peak_at.duration_since(step).as_secs_f64() * 1000.0;
        report.scale_up_events = count("scale_up", step);

        // Phase 2: quiet. The work drains, then the pool shrinks to its minimum.
        let quiet = Instant::now();
        let deadline = quiet + opts.phase_timeout;
        while done.lock().expect("no panics while held").len() < report.tasks_submitted
            && Instant::now() < deadline
            && !shutdown.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            progress.update(&format!(
                "tasks completed {}/{}",
                done.lock().expect("no panics while held").len(),
                report.tasks_submitted
            ));
        }
        loop {
            let n = live(&http, &base, opts.pool).await?;
            report.within_bounds &= bounds.contains(&n);
            if n != size {
                print_events(&mut progress, t0);
                progress.line(&format!("  {}: {size} -> {n} agents", opts.pool));
                size = n;
            }
            if n == min {
                report.shrink_ms = Some(quiet.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() >= deadline || shutdown.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        print_events(&mut progress, t0);
        report.scale_down_events = count("scale_down", quiet);
        report.scale_timeouts = count("scale_timeout", t0);
        report.tasks_completed = done.lock().expect("no panics while held").len();
        report.tasks_lost = report
            .tasks_submitted
            .saturating_sub(report.tasks_completed);
        // A drained agent counts itself once its deregistration is
        // answered, a moment after the commander counted it gone: give the
        // last ones that moment (bounded).
        let settle = Instant::now() + Duration::from_secs(5);
        while spawned.drained() + min < spawned.started() && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report.agents_started = spawned.started();
        report.agents_drained = spawned.drained();
        progress.line(&format!(
        "autoscaling: {} -> {} agents in {:.0} ms ({} scale_up events); back to {} in {} ({} scale_down events); \
         {} agents started, {} drained; tasks {}/{} completed, {} lost",
        report.start_size,
        report.peak_size,
        report.grow_ms,
        report.scale_up_events,
        report.min_agents,
        report
            .shrink_ms
            .map_or("(not reached)".to_string(), |ms| format!("{ms:.0} ms")),
        report.scale_down_events,
        report.agents_started,
        report.agents_drained,
        report.tasks_completed,
        report.tasks_submitted,
        report.tasks_lost
    ));
        Ok(report)
    }
}

fn kind(e: &Scaling) -> &'static str {
    match e {
        Scaling::ScaleUp { .. } => "scale_up",
        Scaling::ScaleDown { .. } => "scale_down",
        Scaling::ScaleTimeout { .. } => "scale_timeout",
        Scaling::Unschedulable { .. } => "unschedulable",
    }
}

/// Works `d` on each task, then completes it, noting its sequence number.
fn worker(d: Duration, done: Arc<Mutex<HashSet<u64>>>) -> Work {
    Arc::new(move |a: Assignment| {
        let done = done.clone();
        Box::pin(async move {
            tokio::time::sleep(d).await;
            if let Some(seq) = a.payload["seq"].as_u64() {
                done.lock().expect("no panics while held").insert(seq);
            }
            Outcome::Complete(serde_json::Value::Null)
        })
    })
}

async fn pool_view(http: &reqwest::Client, base: &str, pool: PoolType) -> anyhow::Result<PoolView> {
    let views: Vec<PoolView> = http
        .get(format!("{base}/v1/pools"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
        .context("GET /v1/pools")?;
    views
        .into_iter()
        .find(|v| v.pool == pool)
        .context("pool missing from /v1/pools")
}

/// Live agents (idle, active, busy) in `pool`.
async fn live(http: &reqwest::Client, base: &str, pool: PoolType) -> anyhow::Result<u64> {
    let v = pool_view(http, base, pool).await?;
    Ok(v.by_status
        .iter()
        .filter(|(s, _)| s.is_live())
        .map(|(_, n)| n)
        .sum())
}

async fn wait_size(
    http: &reqwest::Client,
    base: &str,
    pool: PoolType,
    ok: impl Fn(u64) -> bool,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<u64> {
    let until = Instant::now() + timeout;
    loop {
        let n = live(http, base, pool).await?;
        if ok(n) {
            return Ok(n);
        }
        anyhow::ensure!(
            Instant::now() < until && !shutdown.is_cancelled(),
            "{pool} did not reach its minimum in {timeout:?} (at {n} agents): is a spawner running?"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
