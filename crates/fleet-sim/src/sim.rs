//! The fleet simulator: N agents over the 16 pools, each a real Redis client
//! speaking the protocol (its own subscription, heartbeats, replies). It
//! measures registration latency, status-query latency and how long the
//! commander takes to detect agents that stop heartbeating.

use anyhow::Context;
use fleet_agent::{Agent, AgentError, AgentSpec, Exit};
use fleet_protocol::pool::PoolType;
use fleet_protocol::status::FleetStatus;
use fleet_protocol::Channels;
use fleet_protocol::{Event, Resources};
use futures_util::{stream, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub redis_url: String,
    pub prefix: String,
    /// Pub/sub connections the agents share (their channels spread over
    /// them, [`fleet_agent::Router`]); 0: one per agent, as real agents have.
    pub subscribers: usize,
    /// Commander HTTP base URL (`http://127.0.0.1:8080`) for status queries.
    pub commander_url: Option<String>,
    pub agents: usize,
    /// Registrations in flight at once (a fleet starting up all together).
    pub batch: usize,
    /// Instead of waves of `batch`: agents join at this rate (registrations
    /// per second), each when its turn comes whether or not earlier ones have
    /// been answered (an open loop).
    pub join_rate: Option<f64>,
    pub heartbeat: Duration,
    /// missed_heartbeats x heartbeat interval of the commander.
    pub failure_window: Duration,
    /// Agents that stop heartbeating (as if killed) after registration.
    pub stop: usize,
    pub status_queries: usize,
    /// Keep the fleet running this long before finishing.
    pub hold: Duration,
    /// Deregister the surviving agents at the end.
    pub deregister_at_end: bool,
    /// Pool sizes to spread agents over, with each pool's max.
    pub pools: Vec<(PoolType, u32)>,
    pub progress: bool,
    /// Task load: tasks pushed through the fleet after registration.
    pub tasks: TaskLoad,
    /// Act on the commander's scale requests: start agents on `scale_up`
    /// (doing the same work as the others); drained agents leave.
    pub spawner: bool,
    /// Churn: agents crashed and restarted (re-registering as a new
    /// instance) per second, from the first heartbeat to the end.
    pub churn_per_sec: f64,
    /// The commander's process (on this machine), for its CPU and memory.
    pub commander_pid: Option<u32>,
    /// Gives every agent a credential (None: the commander runs open).
    pub issuer: Option<crate::issuer::Issuer>,
    /// The bearer token for the commander's HTTP API (None: it runs open).
    pub http_token: Option<String>,
}

/// Tasks the simulator submits (over the commander's HTTP API) and its
/// agents do.
#[derive(Debug, Clone, Default)]
pub struct TaskLoad {
    pub count: usize,
    /// Submissions per second; `None`: as fast as possible (64 in flight).
    pub rate: Option<f64>,
    /// How long an agent works on one task.
    pub work: Duration,
    /// Fraction of attempts that fail (and are retried).
    pub fail_fraction: f64,
    /// Fraction of attempts during which the agent dies (stops heartbeating
    /// and never reports); the commander must give the task to another.
    pub die_fraction: f64,
    /// Budget units each completed attempt reports consuming (`usage`; 0:
    /// none reported).
    pub usage: f64,
    /// Tasks per `POST /v1/tasks` when submitting as fast as possible (an
    /// array when above 1; 0 or 1: one task per request).
    pub batch: usize,
}

/// What the task load measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskReport {
    /// Tasks the commander accepted.
    pub submitted: usize,
    /// Tasks whose submission was refused or failed, and the first reason.
    pub refused: usize,
    pub first_refusal: Option<String>,
    pub completed: usize,
    /// Submission sent -> the agent holds the assignment.
    pub dispatch: Latency,
    /// First submission -> last completion.
    pub elapsed_ms: f64,
    pub throughput_per_sec: f64,
    pub attempts_failed: u64,
    /// Agents that died mid-task.
    pub agents_died: usize,
}

/// Latencies in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn from(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SimReport {
    pub agents: usize,
    pub registered: usize,
    pub refused: HashMap<String, usize>,
    pub batch: usize,
    /// Registrations per second when agents joined at a steady rate.
    pub join_rate: Option<f64>,
    pub registration: Latency,
    /// From the first registration sent to the last reply.
    pub registration_total_ms: f64,
    pub status: Latency,
    /// The first status after registration counted every registered agent.
    pub status_fresh: Option<bool>,
    pub stopped: usize,
    pub detected: usize,
    /// From the moment an agent went silent to its `agent_failed` event.
    pub detection: Latency,
    /// From an agent's last heartbeat to its failure, as the commander saw it
    /// (at least missed_heartbeats x interval by design).
    pub detection_after_last_heartbeat: Latency,
    pub detection_bound_ms: f64,
    /// `agent_failed` events for agents that never stopped.
    pub false_deaths: usize,
    pub final_status: Option<FleetStatus>,
    pub tasks: Option<TaskReport>,
    /// Agents the spawner started, and those of them drained.
    pub spawned: u64,
    pub spawned_drained: u64,
    /// Agents crashed and restarted by the churn, and their re-registration.
    pub churned: usize,
    pub churn_registration: Latency,
    /// The machine's floor: a PING from the simulator to Redis every 10 ms for
    /// the whole run, on a connection of its own. No fleet operation can have
    /// a shorter tail than this round trip.
    pub redis_ping: Latency,
    /// The machine's scheduling floor: how late a thread of the simulator
    /// wakes from a 1 ms sleep, for the whole run. Redis needs no part in it.
    pub wakeup_delay: Stalls,
    /// The commander's resource use, when its pid was given.
    pub commander: Option<Usage>,
    /// Heartbeats the commander handled per second after the task load
    /// (from its `fleet_heartbeats_total`).
    pub heartbeats_per_sec: Option<f64>,
    /// Latencies the commander measured itself, by histogram name.
    pub commander_latency: std::collections::BTreeMap<String, Measured>,
}

/// How late a sleeping thread woke: the machine's own stalls (a busy or
/// overcommitted host delays every process, the commander's included).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stalls {
    pub late: Latency,
    /// Wakes later than [`Stalls::LONG`], and the share of the run's time
    /// they took (a latency p99 under 5 ms needs well under 1%).
    pub long: u64,
    pub long_time_percent: f64,
}

impl Stalls {
    pub const LONG: Duration = Duration::from_millis(5);
}

/// Sleeps 1 ms at a time on a thread of its own, until finished or dropped.
struct StallProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Stalls>>,
}

impl StallProbe {
    fn start() -> StallProbe {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut h, mut long, mut long_time) = (hist(), 0, Duration::ZERO);
            let started = Instant::now();
            let nap = Duration::from_millis(1);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                std::thread::sleep(nap);
                let late = t.elapsed().saturating_sub(nap);
                h.record(late.as_micros().max(1) as u64).ok();
                if late >= Stalls::LONG {
                    long += 1;
                    long_time += late;
                }
            }
            Stalls {
                late: Latency::from(&h),
                long,
                long_time_percent: 100.0 * long_time.as_secs_f64()
                    / started.elapsed().as_secs_f64().max(1e-9),
            }
        });
        StallProbe {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Stalls {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let thread = self.thread.take().expect("finished once");
        thread.join().unwrap_or_default()
    }
}

impl Drop for StallProbe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The commander's CPU and memory (from /proc).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// CPU while the task load ran, in % of one core.
    pub tasks_cpu_percent: Option<f64>,
    /// CPU after the task load (heartbeats, churn, detection), in % of one core.
    pub steady_cpu_percent: f64,
    pub steady_secs: f64,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
}

/// CPU seconds used and (resident, peak resident) bytes of a process.
fn proc_sample(pid: u32) -> Option<(f64, u64, u64)> {
    let p = procfs::process::Process::new(pid as i32).ok()?;
    let stat = p.stat().ok()?;
    let status = p.status().ok()?;
    let cpu = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
    Some((
        cpu,
        status.vmrss.unwrap_or(0) * 1024,
        status.vmhwm.unwrap_or(0) * 1024,
    ))
}

/// The commander's /metrics text.
async fn scrape(http: &reqwest::Client, base: &str) -> Option<String> {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// `fleet_heartbeats_total` from the commander's /metrics.
async fn heartbeats_total(http: &reqwest::Client, base: &str) -> Option<f64> {
    let text = scrape(http, base).await?;
    text.lines()
        .filter(|l| l.starts_with("fleet_heartbeats_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// A latency the commander measured itself (its histograms, since start).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    pub count: u64,
    /// Upper bounds of the buckets holding the quantile, interpolated.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Samples above 5 ms (the bucket bound).
    pub over_5ms: u64,
}

/// p50 and p99 of a histogram in Prometheus text, all label sets summed,
/// interpolated within buckets as `histogram_quantile` does.
pub fn histogram_quantiles(text: &str, name: &str) -> Option<Measured> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: std::collections::BTreeMap<u64, f64> = Default::default();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
        *buckets.entry(bound.to_bits()).or_default() += v;
    }
    let mut b: Vec<(f64, f64)> = buckets
        .into_iter()
        .map(|(k, v)| (f64::from_bits(k), v))
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let q = |q: f64| {
        let rank = q * total;
        let (mut lo, mut below) = (0.0, 0.0);
        for &(le, n) in &b {
            if n >= rank {
                if le.is_infinite() {
                    return lo;
                }
                return lo + (le - lo) * (rank - below) / (n - below).max(1e-12);
            }
            (lo, below) = (le, n);
        }
        lo
    };
    let within_5ms = b
        .iter()
        .rev()
        .find(|&&(le, _)| le <= 0.005)
        .map_or(0.0, |&(_, n)| n);
    Some(Measured {
        count: total as u64,
        p50_ms: q(0.5) * 1000.0,
        p99_ms: q(0.99) * 1000.0,
        over_5ms: (total - within_5ms) as u64,
    })
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static bounds")
}

/// Spreads `n` agents over the pools in proportion to their max, capped at it.
pub fn spread(n: usize, pools: &[(PoolType, u32)]) -> Vec<PoolType> {
    let cap: u64 = pools.iter().map(|(_, m)| u64::from(*m)).sum();
    let mut out = Vec::with_capacity(n);
    let mut given: Vec<usize> = pools
        .iter()
        .map(|(_, m)| ((n as u64 * u64::from(*m)) / cap.max(1)) as usize)
        .map(|k| k.min(n))
        .collect();
    for (i, (_, m)) in pools.iter().enumerate() {
        given[i] = given[i].min(*m as usize);
    }
    // Hand out the remainder round-robin where room is left.
    let mut i = 0;
    let mut guard = 0;
    while given.iter().sum::<usize>() < n && guard < n * pools.len().max(1) + 16 {
        if given[i] < pools[i].1 as usize {
            given[i] += 1;
        }
        i = (i + 1) % pools.len();
        guard += 1;
    }
    // Interleave so that any prefix of the list covers every pool.
    let mut left = given.clone();
    while out.len() < n && left.iter().any(|k| *k > 0) {
        for (j, (p, _)) in pools.iter().enumerate() {
            if left[j] > 0 && out.len() < n {
                out.push(*p);
                left[j] -= 1;
            }
        }
    }
    out
}

/// Progress on one line (rewritten in place on a terminal).
pub struct Progress {
    started: Instant,
    enabled: bool,
    tty: bool,
    last: Instant,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Progress {
            started: Instant::now(),
            enabled,
            tty: std::io::stdout().is_terminal(),
            last: Instant::now() - Duration::from_secs(10),
        }
    }
    /// A transient update (throttled when not on a terminal).
    pub fn update(&mut self, msg: &str) {
        if !self.enabled {
            return;
        }
        if self.tty {
            print!(
                "\r\x1b[2K[{:>6.1}s] {msg}",
                self.started.elapsed().as_secs_f64()
            );
            let _ = std::io::stdout().flush();
        } else if self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            println!("[{:>6.1}s] {msg}", self.started.elapsed().as_secs_f64());
        }
    }
    /// A line that stays.
    pub fn line(&mut self, msg: &str) {
        if !self.enabled {
            return;
        }
        if self.tty {
            print!("\r\x1b[2K");
        }
        println!("[{:>6.1}s] {msg}", self.started.elapsed().as_secs_f64());
    }
}

/// Runs the simulation against a commander and Redis that are already up.
pub async fn run(opts: SimOptions, shutdown: CancellationToken) -> anyhow::Result<SimReport> {
    let mut progress = Progress::new(opts.progress);
    let channels = Channels::new(opts.prefix.clone());
    let client = fleet_store::connection::client(&opts.redis_url).context("Redis URL")?;
    let mut publishers = Vec::new();
    for _ in 0..4 {
        publishers.push(fleet_store::connection::connect(&opts.redis_url).await?);
    }
    // From the start: every failure the commander declares (to catch a
    // false death), and the machine's floor.
    let (watcher, mut events) = watch_failures(&client, &channels).await?;
    let probe = StallProbe::start();
    let (ping_hist, stop_ping) = start_ping(&opts.redis_url, &shutdown).await?;

    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let load = Arc::new(LoadState::new(opts.tasks.count));
    let stop_spawned = shutdown.child_token();
    let spawned = start_spawner(
        &opts,
        &channels,
        &load,
        run_id,
        &stop_spawned,
        &mut progress,
    )
    .await?;
    let pools = spread(opts.agents, &opts.pools);
    let agents = connect_agents(
        &opts,
        run_id,
        &pools,
        &client,
        &publishers,
        &channels,
        &mut progress,
    )
    .await?;

    let mut report = SimReport {
        agents: opts.agents,
        batch: opts.batch,
        join_rate: opts.join_rate,
        detection_bound_ms: (opts.failure_window + Duration::from_secs(1)).as_secs_f64() * 1000.0,
        ..Default::default()
    };
    let (live, answered) = register_all(&opts, agents, &mut report, &shutdown, &mut progress).await;
    let http = crate::issuer::http_client(opts.http_token.as_deref())?;
    query_status(&opts, &http, &mut report, &mut progress).await?;
    let fleet = start_fleet(&opts, live, &answered, &load, &shutdown);

    let tasks_from = (Instant::now(), opts.commander_pid.and_then(proc_sample));
    if opts.tasks.count > 0 {
        let base = opts
            .commander_url
            .clone()
            .context("task load needs the commander's HTTP API")?;
        let mut distinct: Vec<PoolType> = Vec::new();
        for p in &pools {
            if !distinct.contains(p) {
                distinct.push(*p);
            }
        }
        let t = run_tasks(
            &http,
            &opts.tasks,
            &base,
            &distinct,
            load.clone(),
            &mut progress,
            &shutdown,
        )
        .await?;
        report.tasks = Some(t);
    }
    let steady_from = (Instant::now(), opts.commander_pid.and_then(proc_sample));
    let beats_from = match &opts.commander_url {
        Some(base) => heartbeats_total(&http, base).await,
        None => None,
    };

    let stopped = stop_some(&opts, &fleet, &mut report, &shutdown, &mut progress).await;
    detect(
        &opts,
        &mut events,
        &stopped,
        &fleet,
        &load,
        &mut report,
        &shutdown,
        &mut progress,
    )
    .await;
    commander_figures(
        &opts,
        &http,
        steady_from.0,
        beats_from,
        &mut report,
        &mut progress,
    )
    .await?;
    report.churned = fleet.churned.load(std::sync::atomic::Ordering::Relaxed);
    report.churn_registration = Latency::from(&fleet.rereg.lock().expect("no panics while held"));
    floor_figures(&mut report, &stop_ping, &ping_hist, probe, &mut progress);
    usage_figures(&opts, tasks_from, steady_from, &mut report, &mut progress);
    if let Some(s) = &spawned {
        report.spawned = s.started();
        report.spawned_drained = s.drained();
        progress.line(&format!(
            "spawner: {} agents started on scale_up, {} drained on scale_down",
            report.spawned, report.spawned_drained
        ));
    }

    // Wind down: stop every agent, then (optionally) deregister the survivors.
    stop_spawned.cancel();
    let Fleet {
        stops, mut tasks, ..
    } = fleet;
    for s in &stops {
        s.cancel();
    }
    let mut survivors = Vec::new();
    while let Some(a) = tasks.join_next().await {
        if let Ok(a) = a {
            if !stopped.contains_key(a.id()) {
                survivors.push(a);
            }
        }
    }
    if opts.deregister_at_end {
        stream::iter(survivors.iter_mut())
            .for_each_concurrent(64, |a| async move {
                let _ = a.deregister(Duration::from_secs(2)).await;
            })
            .await;
    }
    watcher.abort();
    Ok(report)
}

/// A failure the commander declared: when it was heard, the agent, and how
/// long (ms) the agent had been silent then.
type Failure = (Instant, String, u64);

/// Every `agent_failed` on the health channel, from now on (subscribed
/// again after a lost connection: behind Sentinel, on the new master).
async fn watch_failures(
    client: &fleet_store::connection::Client,
    channels: &Channels,
) -> anyhow::Result<(
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<Failure>,
)> {
    let (ev_tx, events) = mpsc::unbounded_channel::<Failure>();
    let channel = channels.health();
    let mut health = client.get_async_pubsub().await?;
    health.subscribe(&channel).await?;
    let client = client.clone();
    let watcher = tokio::spawn(async move {
        loop {
            let mut s = health.into_on_message();
            while let Some(msg) = s.next().await {
                if let Ok(Event::AgentFailed {
                    agent_id,
                    last_heartbeat,
                    ts,
                    ..
                }) = serde_json::from_slice::<Event>(msg.get_payload_bytes())
                {
                    let silent = ts.saturating_sub(last_heartbeat);
                    if ev_tx.send((Instant::now(), agent_id, silent)).is_err() {
                        return;
                    }
                }
            }
            health = loop {
                if ev_tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(mut p) = client.get_async_pubsub().await {
                    if p.subscribe(&channel).await.is_ok() {
                        break p;
                    }
                }
            };
        }
    });
    Ok((watcher, events))
}

/// The machine's floor: a `PING` to Redis every 10 ms on a connection of its
/// own, until the token is cancelled.
async fn start_ping(
    redis_url: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Arc<std::sync::Mutex<Histogram<u64>>>, CancellationToken)> {
    let ping_hist = Arc::new(std::sync::Mutex::new(hist()));
    let stop_ping = shutdown.child_token();
    {
        let (mut conn, h, stop) = (
            fleet_store::connection::connect(redis_url).await?,
            ping_hist.clone(),
            stop_ping.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let t = Instant::now();
                if redis::cmd("PING")
                    .query_async::<()>(&mut conn)
                    .await
                    .is_ok()
                {
                    let us = t.elapsed().as_micros().max(1) as u64;
                    h.lock().expect("no panics while held").record(us).ok();
                }
            }
        });
    }
    Ok((ping_hist, stop_ping))
}

/// With `--spawner`: in-process agents started on the commander's scale_up.
async fn start_spawner(
    opts: &SimOptions,
    channels: &Channels,
    load: &Arc<LoadState>,
    run_id: &str,
    stop: &CancellationToken,
    progress: &mut Progress,
) -> anyhow::Result<Option<Arc<crate::spawner::Spawned>>> {
    Ok(if opts.spawner {
        let steady = TaskLoad {
            die_fraction: 0.0,
            ..opts.tasks.clone()
        };
        let work = (steady.count > 0).then(|| load.work(&steady, "spawned", stop));
        let s = crate::spawner::InProcess {
            redis_url: opts.redis_url.clone(),
            keys: channels.clone(),
            heartbeat: opts.heartbeat,
            work,
            id_prefix: format!("sim-{run_id}-spawned"),
            issuer: opts.issuer.clone(),
        }
        .start(stop.clone())
        .await?;
        progress.line("spawner on: scale_up requests start agents here");
        Some(s)
    } else {
        None
    })
}

/// Every agent connected (each subscribed to its own channel), spread over
/// the pools.
async fn connect_agents(
    opts: &SimOptions,
    run_id: &str,
    pools: &[PoolType],
    client: &fleet_store::connection::Client,
    publishers: &[fleet_store::connection::Conn],
    channels: &Channels,
    progress: &mut Progress,
) -> anyhow::Result<Vec<Agent>> {
    let specs: Vec<AgentSpec> = pools
        .iter()
        .enumerate()
        .map(|(i, pool)| AgentSpec {
            id: format!("sim-{run_id}-{pool}-{i}"),
            pool: *pool,
            priority: None,
            capabilities: vec![pool.as_str().to_string(), "sim".to_string()],
            resources: Resources {
                memory: 256.0,
                cpu: 0.25,
                network: 10.0,
            },
            capacity: 1,
        })
        .collect();

    // Connect every agent (each subscribes to its own channel, on its own
    // connection or on the shared ones).
    let router = match opts.subscribers {
        0 => None,
        n => Some(fleet_agent::Router::new(client, n).await?),
    };
    let mut agents: Vec<Agent> = Vec::with_capacity(specs.len());
    let mut connecting = stream::iter(specs.into_iter().enumerate())
        .map(|(i, spec)| {
            let (client, router) = (client.clone(), router.clone());
            let publisher = publishers[i % publishers.len()].clone();
            let channels = channels.clone();
            async move {
                match router {
                    Some(r) => Agent::connect_routed(&r, publisher, channels, spec).await,
                    None => Agent::connect(&client, publisher, channels, spec).await,
                }
            }
        })
        .buffer_unordered(64);
    while let Some(a) = connecting.next().await {
        agents.push(a.context("connecting an agent")?);
        progress.update(&format!(
            "connecting agents (each subscribes to its own channel): {}/{}",
            agents.len(),
            opts.agents
        ));
    }
    drop(connecting);
    if let Some(issuer) = &opts.issuer {
        agents = issuer.equip(&mut publishers[0].clone(), agents).await?;
        progress.line(&format!(
            "connected {} agents, each signing with a key issued for it",
            agents.len()
        ));
    } else {
        progress.line(&format!("connected {} agents", agents.len()));
    }
    Ok(agents)
}

/// Registers every agent: in waves of `batch` at once (a fleet starting all
/// together), or one after another at `join_rate` per second. Returns the
/// registered agents and when each was answered.
async fn register_all(
    opts: &SimOptions,
    agents: Vec<Agent>,
    report: &mut SimReport,
    shutdown: &CancellationToken,
    progress: &mut Progress,
) -> (Vec<Agent>, Vec<Instant>) {
    let mut reg_hist = hist();
    let mut live: Vec<Agent> = Vec::with_capacity(agents.len());
    // When each live agent's registration was answered: a paced agent beats
    // one interval after that, as a real one would.
    let mut answered: Vec<Instant> = Vec::with_capacity(agents.len());
    let reg_started = Instant::now();
    type Done = (Agent, Instant, Duration, Result<(), AgentError>);
    let mut done: Vec<Done> = Vec::with_capacity(agents.len());
    if let Some(rate) = opts.join_rate.filter(|r| *r > 0.0) {
        // Each agent heartbeats from its registration on, as a real one
        // does, until the whole fleet has joined and the fleet's own loops
        // take over: a slow join must not leave the first ones silent.
        let total = agents.len();
        let joined = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (all_in, _) = tokio::sync::watch::channel(false);
        let all_in = Arc::new(all_in);
        let beat = opts.heartbeat;
        let mut joining: futures_util::stream::FuturesUnordered<_> = agents
            .into_iter()
            .enumerate()
            .map(|(i, mut a)| {
                let (joined, all_in) = (joined.clone(), all_in.clone());
                let mut go = all_in.subscribe();
                async move {
                    let turn = reg_started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(turn.into()).await;
                    let t = Instant::now();
                    let r = register_with_retry(&mut a).await;
                    let took = t.elapsed();
                    if joined.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1 == total {
                        all_in.send_replace(true);
                    }
                    while r.is_ok() {
                        tokio::select! {
                            // (The guard `wait_for` gives is dropped at once:
                            // it must not be held across an await.)
                            _ = async { go.wait_for(|all| *all).await.is_ok() } => break,
                            () = tokio::time::sleep(beat) => {
                                let _ = a.heartbeat(fleet_protocol::AgentStatus::Idle, 0.0).await;
                            }
                        }
                    }
                    (a, t, took, r)
                }
            })
            .collect();
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = joining.next() => next,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    let n = joined.load(std::sync::atomic::Ordering::Acquire);
                    progress.update(&format!("registered {n}/{}", opts.agents));
                    continue;
                }
            };
            let Some(one) = next else { break };
            done.push(one);
        }
    } else {
        let mut pending = agents.into_iter();
        loop {
            let wave: Vec<Agent> = pending.by_ref().take(opts.batch.max(1)).collect();
            if wave.is_empty() || shutdown.is_cancelled() {
                break;
            }
            let wave = wave.into_iter().map(|mut a| async move {
                let t = Instant::now();
                let r = register_with_retry(&mut a).await;
                (a, t, t.elapsed(), r)
            });
            done.extend(futures_util::future::join_all(wave).await);
            progress.update(&format!("registered {}/{}", done.len(), opts.agents));
        }
    }
    for (a, sent, took, r) in done {
        match r {
            Ok(()) => {
                reg_hist.record(took.as_micros().max(1) as u64).ok();
                live.push(a);
                answered.push(sent + took);
            }
            Err(AgentError::Refused { reason, .. }) => {
                *report.refused.entry(format!("{reason:?}")).or_default() += 1;
            }
            Err(e) => *report.refused.entry(e.to_string()).or_default() += 1,
        }
    }
    report.registration_total_ms = reg_started.elapsed().as_secs_f64() * 1000.0;
    report.registered = live.len();
    report.registration = Latency::from(&reg_hist);
    if !report.refused.is_empty() {
        progress.line(&format!("registrations refused: {:?}", report.refused));
    }
    let how = match report.join_rate {
        Some(rate) => format!("joining at {rate:.0}/s"),
        None => format!("{} at once", opts.batch),
    };
    progress.line(&format!(
        "registered {}/{} agents in {:.0} ms, {how} (per registration p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)",
        report.registered,
        opts.agents,
        report.registration_total_ms,
        report.registration.p50_ms,
        report.registration.p99_ms,
        report.registration.max_ms
    ));
    (live, answered)
}

/// Status queries: the first must already count every acknowledged registration.
async fn query_status(
    opts: &SimOptions,
    http: &reqwest::Client,
    report: &mut SimReport,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    if let Some(base) = &opts.commander_url {
        let url = format!("{base}/v1/fleet");
        let mut h = hist();
        for i in 0..opts.status_queries.max(1) {
            let t = Instant::now();
            let status: FleetStatus = http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            h.record(t.elapsed().as_micros().max(1) as u64).ok();
            if i == 0 {
                report.status_fresh = Some(status.live() >= report.registered as u64);
            }
        }
        report.status = Latency::from(&h);
        progress.line(&format!(
            "fleet status x{}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; fresh: {}",
            report.status.count,
            report.status.p50_ms,
            report.status.p99_ms,
            report.status.max_ms,
            report.status_fresh.unwrap_or(false)
        ));
    }
    Ok(())
}

/// The running fleet: each agent on its own task, heartbeating and working.
struct Fleet {
    ids: Vec<String>,
    /// One per agent (cancelling it stops the agent for good, as if killed),
    /// then the churn's.
    stops: Vec<CancellationToken>,
    tasks: tokio::task::JoinSet<Agent>,
    /// Re-registrations of agents restarted by the churn.
    rereg: Arc<std::sync::Mutex<Histogram<u64>>>,
    churned: Arc<std::sync::atomic::AtomicUsize>,
    /// Agents the churn crashed: if a restart is slower than the failure
    /// window, the commander rightly declares them failed; not a false death.
    crashed: Arc<std::sync::Mutex<HashSet<String>>>,
}

/// Heartbeat, each agent on its own task. After waves, first beats are
/// spread over one interval; a paced agent's first beat comes one interval
/// after its registration (soon after now if that time has passed). With
/// churn, a random agent crashes and restarts `churn_per_sec` times a second.
fn start_fleet(
    opts: &SimOptions,
    live: Vec<Agent>,
    answered: &[Instant],
    load: &Arc<LoadState>,
    shutdown: &CancellationToken,
) -> Fleet {
    let mut stops = Vec::with_capacity(live.len());
    let mut tasks = tokio::task::JoinSet::new();
    let crashes: Arc<std::sync::Mutex<Vec<Option<CancellationToken>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; live.len()]));
    let rereg = Arc::new(std::sync::Mutex::new(hist()));
    let ids: Vec<String> = live.iter().map(|a| a.id().to_string()).collect();
    for (i, mut a) in live.into_iter().enumerate() {
        let stop = shutdown.child_token();
        stops.push(stop.clone());
        let interval = opts.heartbeat;
        let spread = (i as f64 * 0.618_034) % 1.0;
        let offset = match opts.join_rate.filter(|r| *r > 0.0) {
            None => interval.mul_f64(spread),
            Some(_) => {
                let (due, now) = (answered[i] + interval, Instant::now());
                if due > now {
                    due - now
                } else {
                    // Overdue: spread over what is left of the failure window
                    // (keeping one interval in hand), not all at once.
                    let silent = now - answered[i];
                    let slack = opts.failure_window.saturating_sub(interval + silent);
                    slack.min(interval).mul_f64(spread)
                }
            }
        };
        let (load, task_load) = (load.clone(), opts.tasks.clone());
        let (crashes, rereg) = (crashes.clone(), rereg.clone());
        tasks.spawn(async move {
            loop {
                // A crash (dying mid-task, or churn) ends one run; a supervisor
                // restarts the agent as a new instance a moment later.
                let crash = stop.child_token();
                crashes.lock().expect("no panics while held")[i] = Some(crash.clone());
                let work = (task_load.count > 0).then(|| load.work(&task_load, a.id(), &crash));
                let exit = a.run_with(interval, offset, crash, work).await;
                if stop.is_cancelled() || exit == Exit::Drained {
                    return a;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                a.new_instance();
                let t = Instant::now();
                if register_with_retry(&mut a).await.is_err() {
                    return a;
                }
                rereg
                    .lock()
                    .expect("no panics while held")
                    .record(t.elapsed().as_micros().max(1) as u64)
                    .ok();
            }
        });
    }
    // Churn: a random agent crashes and restarts, `churn_per_sec` times a second.
    let churned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Agents the churn crashed: if a restart is slower than the failure
    // window, the commander rightly declares them failed; not a false death.
    let crashed: Arc<std::sync::Mutex<HashSet<String>>> = Default::default();
    if opts.churn_per_sec > 0.0 {
        let (crashes, churned, stop) = (crashes.clone(), churned.clone(), shutdown.child_token());
        let (crashed, ids) = (crashed.clone(), ids.clone());
        let stopped_tokens = stops.clone();
        let every = Duration::from_secs_f64(1.0 / opts.churn_per_sec);
        let end = stop.clone();
        stops.push(end); // cancelled with the agents at the end
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let i = rand::random_range(0..stopped_tokens.len());
                if stopped_tokens[i].is_cancelled() {
                    continue; // stopped for good: detection measures it
                }
                let token = crashes.lock().expect("no panics while held")[i].clone();
                if let Some(t) = token {
                    crashed
                        .lock()
                        .expect("no panics while held")
                        .insert(ids[i].clone());
                    t.cancel();
                    churned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    Fleet {
        ids,
        stops,
        tasks,
        rereg,
        churned,
        crashed,
    }
}

/// Stops `opts.stop` agents: they go silent, as if killed. First lets the
/// fleet heartbeat for one interval, so they die at random points of their cycle.
async fn stop_some(
    opts: &SimOptions,
    fleet: &Fleet,
    report: &mut SimReport,
    shutdown: &CancellationToken,
    progress: &mut Progress,
) -> HashMap<String, Instant> {
    let mut stopped: HashMap<String, Instant> = HashMap::new();
    if opts.stop > 0 && !fleet.ids.is_empty() {
        let settle = Instant::now() + opts.heartbeat;
        while Instant::now() < settle && !shutdown.is_cancelled() {
            progress.update("fleet heartbeating");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let step = (fleet.ids.len() / opts.stop.min(fleet.ids.len())).max(1);
        for i in (0..fleet.ids.len()).step_by(step).take(opts.stop) {
            fleet.stops[i].cancel();
            stopped.insert(fleet.ids[i].clone(), Instant::now());
        }
        report.stopped = stopped.len();
        progress.line(&format!(
            "stopped {} agents; the commander must detect them within {:.1} s",
            stopped.len(),
            report.detection_bound_ms / 1000.0
        ));
    }
    stopped
}

/// Waits until the commander has declared every stopped agent failed (or
/// the failure window and 3 s have passed), and for `opts.hold`; counts
/// the detections and any false death.
#[allow(clippy::too_many_arguments)]
async fn detect(
    opts: &SimOptions,
    events: &mut mpsc::UnboundedReceiver<Failure>,
    stopped: &HashMap<String, Instant>,
    fleet: &Fleet,
    load: &LoadState,
    report: &mut SimReport,
    shutdown: &CancellationToken,
    progress: &mut Progress,
) {
    let mut detected: HashSet<String> = HashSet::new();
    let mut det_hist = hist();
    let mut silent_hist = hist();
    let mut false_deaths = HashSet::new();
    let mut on_event = |at: Instant, id: String, silent_ms: u64, report: &mut SimReport| {
        if let Some(t) = stopped.get(&id) {
            if detected.insert(id) {
                det_hist
                    .record(at.duration_since(*t).as_micros().max(1) as u64)
                    .ok();
                silent_hist.record(silent_ms.max(1) * 1000).ok();
            }
        } else if fleet.ids.contains(&id)
            && !load
                .died
                .lock()
                .expect("no panics while held")
                .contains(&id)
            && !fleet
                .crashed
                .lock()
                .expect("no panics while held")
                .contains(&id)
        {
            false_deaths.insert(id);
        }
        report.detected = detected.len();
    };
    let detect_until = Instant::now() + opts.failure_window + Duration::from_secs(3);
    let hold_until = Instant::now() + opts.hold;
    loop {
        let waiting = report.detected < report.stopped;
        let now = Instant::now();
        if (!waiting || now >= detect_until) && now >= hold_until {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.recv() => match ev {
                Some((at, id, silent)) => on_event(at, id, silent, report),
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if waiting {
            progress.update(&format!(
                "waiting for detection: {}/{} stopped agents detected",
                report.detected, report.stopped
            ));
        } else {
            progress.update("fleet running");
        }
    }
    while let Ok((at, id, silent)) = events.try_recv() {
        on_event(at, id, silent, report);
    }
    report.detection = Latency::from(&det_hist);
    report.detection_after_last_heartbeat = Latency::from(&silent_hist);
    report.false_deaths = false_deaths.len();
    if report.stopped > 0 {
        progress.line(&format!(
            "detected {}/{} stopped agents: p50 {:.0} ms, max {:.0} ms after they went silent (bound {:.0} ms); p50 {:.0} ms, max {:.0} ms after their last heartbeat; false deaths: {}",
            report.detected,
            report.stopped,
            report.detection.p50_ms,
            report.detection.max_ms,
            report.detection_bound_ms,
            report.detection_after_last_heartbeat.p50_ms,
            report.detection_after_last_heartbeat.max_ms,
            report.false_deaths
        ));
    }
}

/// What the commander says of itself: the final status, heartbeats handled
/// since `since`, and its latency histograms.
async fn commander_figures(
    opts: &SimOptions,
    http: &reqwest::Client,
    since: Instant,
    beats_from: Option<f64>,
    report: &mut SimReport,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    if let Some(base) = &opts.commander_url {
        let url = format!("{base}/v1/fleet");
        report.final_status = http.get(&url).send().await?.json().await.ok();
        let secs = since.elapsed().as_secs_f64();
        if let (Some(a), Some(b)) = (beats_from, heartbeats_total(http, base).await) {
            report.heartbeats_per_sec = Some((b - a) / secs.max(1e-9));
        }
        if let Some(text) = scrape(http, base).await {
            for name in [
                fleet_commander::metrics::REGISTRATION_SECONDS,
                fleet_commander::metrics::HEARTBEAT_SECONDS,
                fleet_commander::metrics::ALLOCATION_SECONDS,
                fleet_commander::metrics::STATUS_QUERY_SECONDS,
                fleet_commander::metrics::REDIS_COMMAND_SECONDS,
                fleet_commander::metrics::RUNTIME_LAG_SECONDS,
            ] {
                if let Some(m) = histogram_quantiles(&text, name) {
                    progress.line(&format!(
                        "commander-measured {name}: p50 {:.3} ms, p99 {:.3} ms ({} samples, {} over 5 ms)",
                        m.p50_ms, m.p99_ms, m.count, m.over_5ms
                    ));
                    report.commander_latency.insert(name.to_string(), m);
                }
            }
        }
    }
    Ok(())
}

/// The machine's floor over the run: the `PING`s and the sleeping thread.
fn floor_figures(
    report: &mut SimReport,
    stop_ping: &CancellationToken,
    ping_hist: &std::sync::Mutex<Histogram<u64>>,
    probe: StallProbe,
    progress: &mut Progress,
) {
    stop_ping.cancel();
    report.redis_ping = Latency::from(&ping_hist.lock().expect("no panics while held"));
    progress.line(&format!(
        "the machine's floor (no figure above can beat it here): PING to Redis every 10 ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        report.redis_ping.p50_ms, report.redis_ping.p99_ms, report.redis_ping.max_ms
    ));
    report.wakeup_delay = probe.finish();
    let w = &report.wakeup_delay;
    progress.line(&format!(
        "the machine's floor (how busy this machine is): a thread sleeping 1 ms wakes late by p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} times by {} ms or more ({:.2}% of the run)",
        w.late.p50_ms, w.late.p99_ms, w.late.max_ms, w.long, Stalls::LONG.as_millis(), w.long_time_percent
    ));
    if report.churned > 0 {
        progress.line(&format!(
            "churn: {} agents crashed and re-registered (re-registration p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)",
            report.churned,
            report.churn_registration.p50_ms,
            report.churn_registration.p99_ms,
            report.churn_registration.max_ms
        ));
    }
}

/// The commander's CPU and memory (same machine, `--commander-pid`).
fn usage_figures(
    opts: &SimOptions,
    tasks_from: (Instant, Option<(f64, u64, u64)>),
    steady_from: (Instant, Option<(f64, u64, u64)>),
    report: &mut SimReport,
    progress: &mut Progress,
) {
    if let (Some(s0), Some(s1)) = (steady_from.1, opts.commander_pid.and_then(proc_sample)) {
        let steady_secs = steady_from.0.elapsed().as_secs_f64();
        let pct = |c0: f64, c1: f64, secs: f64| 100.0 * (c1 - c0) / secs.max(1e-9);
        let usage = Usage {
            tasks_cpu_percent: match (tasks_from.1, opts.tasks.count > 0) {
                (Some(t0), true) => Some(pct(
                    t0.0,
                    s0.0,
                    steady_from.0.duration_since(tasks_from.0).as_secs_f64(),
                )),
                _ => None,
            },
            steady_cpu_percent: pct(s0.0, s1.0, steady_secs),
            steady_secs,
            rss_mb: s1.1 as f64 / 1048576.0,
            peak_rss_mb: s1.2 as f64 / 1048576.0,
        };
        progress.line(&format!(
            "commander: CPU {:.1}% of a core over {:.0} s after the task load{}; RSS {:.1} MB (peak {:.1} MB); heartbeats handled {:.0}/s",
            usage.steady_cpu_percent,
            usage.steady_secs,
            usage
                .tasks_cpu_percent
                .map_or(String::new(), |p| format!(" ({p:.1}% during it)")),
            usage.rss_mb,
            usage.peak_rss_mb,
            report.heartbeats_per_sec.unwrap_or(0.0)
        ));
        report.commander = Some(usage);
    }
}

/// Shared between the submitter and the agents' work.
struct LoadState {
    sent: Vec<std::sync::OnceLock<Instant>>,
    dispatch: std::sync::Mutex<Histogram<u64>>,
    /// Tasks done, each counted once (a crashed agent may finish work whose
    /// result is never reported; the task then runs again elsewhere).
    completed: std::sync::atomic::AtomicUsize,
    done: Vec<std::sync::atomic::AtomicBool>,
    failed: std::sync::atomic::AtomicU64,
    last_done: std::sync::Mutex<Option<Instant>>,
    all_done: tokio::sync::Notify,
    /// Agents that died mid-task on purpose (not false deaths).
    died: std::sync::Mutex<HashSet<String>>,
}

impl LoadState {
    fn new(n: usize) -> Self {
        LoadState {
            sent: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
            dispatch: std::sync::Mutex::new(hist()),
            completed: Default::default(),
            done: (0..n).map(|_| Default::default()).collect(),
            failed: Default::default(),
            last_done: Default::default(),
            all_done: tokio::sync::Notify::new(),
            died: Default::default(),
        }
    }

    /// What a simulated agent does with a task: note when it arrived, work,
    /// then complete (or fail, for the given fraction of attempts).
    fn work(
        self: &Arc<Self>,
        load: &TaskLoad,
        agent_id: &str,
        stop: &CancellationToken,
    ) -> fleet_agent::Work {
        let me = self.clone();
        let (work, fail, die, usage) =
            (load.work, load.fail_fraction, load.die_fraction, load.usage);
        let (agent_id, stop) = (agent_id.to_string(), stop.clone());
        Arc::new(move |a: fleet_agent::Assignment| {
            let me = me.clone();
            let (agent_id, stop) = (agent_id.clone(), stop.clone());
            Box::pin(async move {
                if die > 0.0 && rand::random::<f64>() < die {
                    me.died
                        .lock()
                        .expect("no panics while held")
                        .insert(agent_id);
                    stop.cancel(); // the agent goes silent with the task
                    return fleet_agent::Outcome::Vanish;
                }
                let seq = a.payload["seq"].as_u64().unwrap_or(u64::MAX) as usize;
                if a.attempt == 1 {
                    if let Some(t) = me.sent.get(seq).and_then(|s| s.get()) {
                        let us = t.elapsed().as_micros().max(1) as u64;
                        me.dispatch
                            .lock()
                            .expect("no panics while held")
                            .record(us)
                            .ok();
                    }
                }
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                if fail > 0.0 && rand::random::<f64>() < fail {
                    me.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return fleet_agent::Outcome::Fail("simulated failure".into());
                }
                let first = me
                    .done
                    .get(seq)
                    .is_some_and(|d| !d.swap(true, std::sync::atomic::Ordering::AcqRel));
                let n = me
                    .completed
                    .fetch_add(usize::from(first), std::sync::atomic::Ordering::AcqRel)
                    + usize::from(first);
                *me.last_done.lock().expect("no panics while held") = Some(Instant::now());
                if n >= me.sent.len() {
                    me.all_done.notify_one();
                }
                let done = fleet_agent::Outcome::Complete(serde_json::Value::Null);
                if usage > 0.0 {
                    fleet_agent::Outcome::Used(Box::new(done), usage)
                } else {
                    done
                }
            })
        })
    }
}

/// POSTs `body`; a standby's `503 not_leader` (refused, nothing written) is
/// sent once more to the leader it names.
async fn post_to_leader(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let r = http.post(url).json(body).send().await?;
    if r.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
        r.error_for_status()?;
        return Ok(());
    }
    let refusal: serde_json::Value = r.json().await?;
    let leader = refusal["leader"]["address"]
        .as_str()
        .filter(|_| refusal["error"] == "not_leader")
        .ok_or_else(|| anyhow::anyhow!("503: {refusal}"))?;
    let mut resent = reqwest::Url::parse(url)?;
    let (host, port) = leader
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("the leader's address {leader:?}"))?;
    resent.set_host(Some(host))?;
    let _ = resent.set_port(Some(port.parse()?));
    http.post(resent)
        .json(body)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Submissions that did not go through: how many tasks, and the first reason.
#[derive(Default)]
struct Refusals {
    count: usize,
    first: Option<String>,
}

impl Refusals {
    fn note(&mut self, tasks: usize, reason: String) {
        self.count += tasks;
        self.first.get_or_insert(reason);
    }
}

/// Submits the task load over HTTP and waits until the agents have done it.
async fn run_tasks(
    http: &reqwest::Client,
    load: &TaskLoad,
    base: &str,
    pools: &[PoolType],
    state: Arc<LoadState>,
    progress: &mut Progress,
    shutdown: &CancellationToken,
) -> anyhow::Result<TaskReport> {
    let http = http.clone();
    let url = format!("{base}/v1/tasks");
    let started = Instant::now();
    let mut refusals = Refusals::default();
    let submit = |seq: usize| {
        let (http, url, state) = (http.clone(), url.clone(), state.clone());
        let pool = pools[seq % pools.len()];
        async move {
            let body = serde_json::json!({"pool": pool, "payload": {"seq": seq}, "maxRetries": 10});
            let _ = state.sent[seq].set(Instant::now());
            post_to_leader(&http, &url, &body).await
        }
    };
    let submitted = match load.rate {
        Some(rate) => {
            let mut set = tokio::task::JoinSet::new();
            let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut tick = tokio::time::interval(gap);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 0..load.count {
                tick.tick().await;
                set.spawn(submit(seq));
                progress.update(&format!(
                    "submitted {}/{} tasks at {rate}/s",
                    seq + 1,
                    load.count
                ));
            }
            let mut ok = 0;
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Ok(())) => ok += 1,
                    Ok(Err(e)) => refusals.note(1, e.to_string()),
                    Err(e) => refusals.note(1, e.to_string()),
                }
            }
            ok
        }
        None if load.batch > 1 => {
            let batches: Vec<Vec<usize>> = (0..load.count)
                .collect::<Vec<_>>()
                .chunks(load.batch)
                .map(<[usize]>::to_vec)
                .collect();
            stream::iter(batches)
                .map(|seqs| {
                    let (http, url, state) = (http.clone(), url.clone(), state.clone());
                    let body: Vec<serde_json::Value> = seqs
                        .iter()
                        .map(|&seq| {
                            let pool = pools[seq % pools.len()];
                            let _ = state.sent[seq].set(Instant::now());
                            serde_json::json!({"pool": pool, "payload": {"seq": seq}, "maxRetries": 10})
                        })
                        .collect();
                    async move {
                        let body = serde_json::Value::Array(body);
                        (seqs.len(), post_to_leader(&http, &url, &body).await)
                    }
                })
                .buffer_unordered(8)
                .fold(0, |n, (k, r)| {
                    let n = match r {
                        Ok(()) => n + k,
                        Err(e) => {
                            refusals.note(k, e.to_string());
                            n
                        }
                    };
                    std::future::ready(n)
                })
                .await
        }
        None => {
            stream::iter(0..load.count)
                .map(submit)
                .buffer_unordered(64)
                .fold(0, |n, r| {
                    let n = match r {
                        Ok(()) => n + 1,
                        Err(e) => {
                            refusals.note(1, e.to_string());
                            n
                        }
                    };
                    std::future::ready(n)
                })
                .await
        }
    };
    let Refusals {
        count: refused,
        first: first_refusal,
    } = refusals;
    if refused > 0 {
        progress.line(&format!(
            "{refused} of {} task submissions were refused or failed (the first: {}); \
             the figures below count only the {submitted} accepted. The commander's log says why.",
            load.count,
            first_refusal.as_deref().unwrap_or("?")
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while state.completed.load(std::sync::atomic::Ordering::Acquire) < submitted
        && Instant::now() < deadline
        && !shutdown.is_cancelled()
    {
        let _ = tokio::time::timeout(Duration::from_millis(200), state.all_done.notified()).await;
        progress.update(&format!(
            "tasks completed {}/{}",
            state.completed.load(std::sync::atomic::Ordering::Acquire),
            submitted
        ));
    }
    let completed = state.completed.load(std::sync::atomic::Ordering::Acquire);
    let end = state
        .last_done
        .lock()
        .expect("no panics while held")
        .unwrap_or_else(Instant::now);
    let elapsed = end.duration_since(started).as_secs_f64();
    let report = TaskReport {
        submitted,
        refused,
        first_refusal,
        completed,
        dispatch: Latency::from(&state.dispatch.lock().expect("no panics while held")),
        elapsed_ms: elapsed * 1000.0,
        throughput_per_sec: completed as f64 / elapsed.max(1e-9),
        attempts_failed: state.failed.load(std::sync::atomic::Ordering::Relaxed),
        agents_died: state.died.lock().expect("no panics while held").len(),
    };
    progress.line(&format!(
        "tasks: {}/{} completed in {:.0} ms ({:.0}/s); dispatch (submitted -> in an agent's hands; all submitted at once, so this is mostly the wait in the queue) p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {} attempts failed and were retried; {} agents died mid-task",
        report.completed,
        report.submitted,
        report.elapsed_ms,
        report.throughput_per_sec,
        report.dispatch.p50_ms,
        report.dispatch.p99_ms,
        report.dispatch.max_ms,
        report.attempts_failed,
        report.agents_died
    ));
    Ok(report)
}

async fn register_with_retry(a: &mut Agent) -> Result<(), AgentError> {
    let mut last = AgentError::Closed;
    for attempt in 0..3 {
        match a.register(Duration::from_secs(2 + attempt)).await {
            Ok(_) => return Ok(()),
            Err(e @ AgentError::Refused { .. }) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let text = "x_bucket{op=\"a\",le=\"0.001\"} 50\nx_bucket{op=\"a\",le=\"0.002\"} 100\n\
                    x_bucket{op=\"a\",le=\"+Inf\"} 100\nx_bucket{op=\"b\",le=\"0.001\"} 50\n\
                    x_bucket{op=\"b\",le=\"0.002\"} 100\nx_bucket{op=\"b\",le=\"+Inf\"} 100\n";
        let m = histogram_quantiles(text, "x").unwrap();
        assert_eq!(m.count, 200);
        assert!((m.p50_ms - 1.0).abs() < 1e-9, "{m:?}");
        assert!((m.p99_ms - 1.98).abs() < 1e-9, "{m:?}");
        assert_eq!(m.over_5ms, 0);
        let slow = "x_bucket{le=\"0.005\"} 7\nx_bucket{le=\"0.01\"} 9\nx_bucket{le=\"+Inf\"} 10\n";
        assert_eq!(histogram_quantiles(slow, "x").unwrap().over_5ms, 3);
        assert!(histogram_quantiles(text, "y").is_none());
    }

    #[test]
    fn spread_respects_pool_max_and_covers_all_pools() {
        let pools: Vec<_> = PoolType::ALL.iter().map(|p| (*p, 10)).collect();
        let s = spread(100, &pools);
        assert_eq!(s.len(), 100);
        let s16 = &s[..16];
        assert_eq!(s16.iter().collect::<HashSet<_>>().len(), 16);
        let s = spread(1000, &pools);
        assert_eq!(s.len(), 160, "capped at the sum of maxima");
    }
}
