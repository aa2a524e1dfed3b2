//! The FleetCommander service: wires the subscriber, the per-agent-ordered
//! message handlers, the failure detector, the status publisher and the HTTP
//! API together under one shutdown signal.
//!
//! Flow: one pub/sub connection listens on the registry, health and fleet
//! channels. Each payload is size-checked and decoded there, then handed to a
//! handler chosen by a hash of the agent id, so one agent's messages are
//! handled in order while different agents' are handled concurrently. Every
//! state change is a Lua script in Redis (the source of truth); replies and
//! events are published only after the script has returned.

use crate::config::Config;
use crate::keys::Keys;
use crate::metrics as m;
use crate::pool::PoolType;
use crate::protocol::{
    self, Channel, Decoded, Event, Inbound, RefusalReason, Register, TaskSubmit, TaskSubmitReply,
    ToAgent, VERSION,
};
use crate::registry::{
    now_ms, AgentRecord, Announce, HeartbeatOutcome, NewAgent, RegisterOutcome, Registry,
    RegistryError,
};
use crate::status::{FleetStatus, PoolCounts};
use crate::task::{Submission, SubmitRefusal};
use crate::tasks::{ReportOutcome, Submitted, TaskStore};
use anyhow::Context;
use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use redis::aio::{ConnectionLike, ConnectionManager};
use serde::Serialize;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

/// State shared by the commander's tasks.
pub struct Shared {
    /// The running configuration; pool settings are replaced on a reload.
    config: std::sync::RwLock<Arc<Config>>,
    pub keys: Keys,
    pub registry: Registry,
    pub tasks: TaskStore,
    /// One multiplexed, self-reconnecting connection: concurrent commands
    /// from every handler are pipelined on it.
    pub redis: ConnectionManager,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// When the current pub/sub subscription was confirmed (ms); 0 while not
    /// listening. The detector never declares an agent dead for a time the
    /// commander could not hear it.
    pub listening_since: AtomicU64,
    /// Wakes the allocator: a task arrived, an agent freed up, tasks came back.
    pub alloc_wake: tokio::sync::Notify,
    /// Pools (bit per [`PoolType::index`]) the allocator should look at next.
    pub dirty_pools: std::sync::atomic::AtomicU32,
    /// Pools where tasks may be waiting, as of the allocator's last look (a
    /// bit per pool, all set at start). An agent freeing up or joining wakes
    /// the allocator only for these: an empty queue needs no round trip.
    pub waiting_pools: std::sync::atomic::AtomicU32,
    /// New registrations per pool since start (the scaler's fulfilment check).
    pub(crate) registered_counts: [AtomicU64; 16],
    fenced: AtomicBool,
    shutdown: CancellationToken,
}

impl Shared {
    /// The configuration now in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("no panics while held").clone()
    }

    /// New registrations in `pool` since start.
    pub fn registered(&self, pool: PoolType) -> u64 {
        self.registered_counts[pool.index()].load(Ordering::Acquire)
    }

    pub(crate) fn set_config(&self, c: Config) {
        *self.config.write().expect("no panics while held") = Arc::new(c);
    }

    pub fn is_listening(&self) -> bool {
        self.listening_since.load(Ordering::Acquire) != 0
    }

    /// Another commander claimed a newer epoch: stop everything.
    pub(crate) fn on_fenced(&self) {
        if !self.fenced.swap(true, Ordering::AcqRel) {
            error!(
                epoch = self.registry.epoch(),
                "a newer commander took over; this one stops writing and shuts down"
            );
            self.shutdown.cancel();
        }
    }

    /// Asks the allocator to look at one pool: a task arrived or came back.
    pub fn wake_pool(&self, pool: PoolType) {
        self.waiting_pools
            .fetch_or(1 << pool.index(), Ordering::AcqRel);
        self.dirty_pools
            .fetch_or(1 << pool.index(), Ordering::AcqRel);
        self.alloc_wake.notify_one();
    }

    /// An agent of `pool` joined or freed up: the allocator looks at the pool
    /// if tasks may be waiting there (the tick looks at every queue anyway).
    pub fn agent_free(&self, pool: PoolType) {
        if self.waiting_pools.load(Ordering::Acquire) & (1 << pool.index()) != 0 {
            self.dirty_pools
                .fetch_or(1 << pool.index(), Ordering::AcqRel);
            self.alloc_wake.notify_one();
        }
    }

    /// Asks the allocator to look at every pool.
    pub fn wake_all(&self) {
        self.waiting_pools.store(u32::MAX, Ordering::Release);
        self.dirty_pools.store(u32::MAX, Ordering::Release);
        self.alloc_wake.notify_one();
    }

    /// Records what the allocator saw of a pool's queue.
    pub(crate) fn note_queue(&self, pool: PoolType, depth: u64) {
        let bit = 1 << pool.index();
        if depth > 0 {
            self.waiting_pools.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.waiting_pools.fetch_and(!bit, Ordering::AcqRel);
            // A task that arrived since the look has marked the pool dirty.
            if self.dirty_pools.load(Ordering::Acquire) & bit != 0 {
                self.waiting_pools.fetch_or(bit, Ordering::AcqRel);
            }
        }
    }

    /// Counts tasks given back by an agent and lets the allocator hand them out.
    pub(crate) fn on_orphans(&self, o: crate::registry::Orphans, reason: &'static str) {
        if o.requeued + o.dead > 0 {
            metrics::counter!(m::TASKS_ORPHANED, "reason" => reason)
                .increment(u64::from(o.requeued + o.dead));
            if o.dead > 0 {
                metrics::counter!(m::TASKS_DEAD, "pool" => "any").increment(u64::from(o.dead));
            }
            info!(
                requeued = o.requeued,
                dead = o.dead,
                reason,
                "tasks given back"
            );
            self.wake_all();
        }
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Counters read and assembled into the fleet view.
    pub async fn fleet_status(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> Result<FleetStatus, RegistryError> {
        let counts = self.registry.counts(conn).await?;
        Ok(FleetStatus::assemble(&self.config(), &counts, now_ms()))
    }
}

/// A started commander.
pub struct Running {
    pub http_addr: SocketAddr,
    pub epoch: u64,
    pub shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Asks every task to stop.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Waits until every task has stopped. An error if the commander stopped
    /// because a newer one took over.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    error!("a commander task panicked: {e}");
                }
            }
            // One task ending (other than by shutdown) ends the service.
            self.shared.shutdown.cancel();
        }
        if self.shared.fenced.load(Ordering::Acquire) {
            anyhow::bail!("stopped: superseded by a newer commander");
        }
        Ok(())
    }
}

/// Starts a commander: claims the epoch, loads the scripts, binds HTTP and
/// spawns every task. Stops when `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    let keys = Keys::new(config.fleet.prefix.clone());
    let mut redis = crate::connection::connect(&config.redis.url).await?;
    // The detector has its own connection, so that its round-trip check
    // measures Redis, not the handlers' queue.
    let detector_conn = crate::connection::connect(&config.redis.url).await?;
    let allocator_conn = crate::connection::connect(&config.redis.url).await?;
    let epoch = Registry::claim_epoch(&mut redis, &keys).await?;
    Registry::load_scripts(&mut redis).await?;
    TaskStore::load_scripts(&mut redis).await?;
    crate::tasks::write_settings(&mut redis, &keys, &config).await?;

    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("binding the HTTP API on {}", config.http.addr))?;
    let http_addr = listener.local_addr()?;

    let shared = Arc::new(Shared {
        registry: Registry::new(keys.clone(), epoch),
        tasks: TaskStore::new(keys.clone(), epoch, config.tasks.clone()),
        keys,
        redis,
        metrics: m::install(),
        started: Instant::now(),
        listening_since: AtomicU64::new(0),
        alloc_wake: tokio::sync::Notify::new(),
        dirty_pools: std::sync::atomic::AtomicU32::new(0),
        waiting_pools: std::sync::atomic::AtomicU32::new(u32::MAX),
        registered_counts: Default::default(),
        fenced: AtomicBool::new(false),
        shutdown,
        config: std::sync::RwLock::new(config),
    });

    let mut tasks = JoinSet::new();
    let mut senders = Vec::new();
    for n in 0..shared.config().fleet.workers {
        let (tx, rx) = mpsc::channel(1024);
        senders.push(tx);
        tasks.spawn(handler(shared.clone(), rx).instrument(info_span!("handler", n)));
    }
    tasks.spawn(subscriber(shared.clone(), senders).instrument(info_span!("subscriber")));
    tasks.spawn(
        crate::health::detector(shared.clone(), detector_conn).instrument(info_span!("detector")),
    );
    tasks.spawn(status_loop(shared.clone()).instrument(info_span!("status")));
    tasks.spawn(m::watch_runtime_lag(shared.shutdown_token().clone()));
    tasks.spawn(
        crate::allocator::allocator(shared.clone(), allocator_conn)
            .instrument(info_span!("allocator")),
    );
    tasks.spawn(
        crate::allocator::reaper(shared.clone(), shared.redis.clone())
            .instrument(info_span!("reaper")),
    );
    tasks.spawn(crate::http::serve(shared.clone(), listener).instrument(info_span!("http")));
    tasks.spawn(
        crate::scaler::scaler(shared.clone(), shared.redis.clone())
            .instrument(info_span!("scaler")),
    );
    if let Some(path) = shared.config().source.clone() {
        tasks.spawn(crate::reload::watch(shared.clone(), path).instrument(info_span!("reload")));
    }

    info!(%http_addr, epoch, prefix = shared.keys.prefix(), "commander started");
    Ok(Running {
        http_addr,
        epoch,
        shared,
        tasks,
    })
}

/// Sleeps for `d` unless shutdown comes first; false on shutdown.
pub(crate) async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

// ---------------------------------------------------------------------------
// Subscriber

async fn subscriber(shared: Arc<Shared>, senders: Vec<mpsc::Sender<Inbound>>) {
    let channels = [
        (shared.keys.registry_channel(), Channel::Registry),
        (shared.keys.health_channel(), Channel::Health),
        (shared.keys.fleet_channel(), Channel::Fleet),
        (shared.keys.tasks_channel(), Channel::Tasks),
        (shared.keys.results_channel(), Channel::Results),
    ];
    let client = match crate::connection::client(&shared.config().redis.url) {
        Ok(c) => c,
        Err(e) => {
            error!("invalid Redis URL: {e}");
            shared.shutdown.cancel();
            return;
        }
    };
    let max = shared.config().fleet.max_message_bytes;
    let mut backoff = Duration::from_millis(50);
    let mut next_shard = 0usize;
    while !shared.shutdown.is_cancelled() {
        let connected = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(channels.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>())
                .await?;
            Ok::<_, redis::RedisError>(ps)
        }
        .await;
        let mut ps = match connected {
            Ok(ps) => ps,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot subscribe");
                if !pause(&shared.shutdown, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        shared.listening_since.store(now_ms(), Ordering::Release);
        info!("listening on the registry, health, fleet, tasks and results channels");
        let mut stream = ps.on_message();
        loop {
            let msg = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                msg = stream.next() => msg,
            };
            let Some(msg) = msg else { break };
            let Some(channel) = channels
                .iter()
                .find(|(name, _)| name == msg.get_channel_name())
                .map(|(_, c)| *c)
            else {
                continue;
            };
            let inbound = match protocol::decode(channel, msg.get_payload_bytes(), max) {
                Ok(Decoded::Message(i)) => i,
                Ok(Decoded::Own) => continue,
                Err(rej) => {
                    metrics::counter!(m::MESSAGES_REJECTED,
                        "channel" => channel.as_str(), "reason" => rej.label())
                    .increment(1);
                    warn!(channel = channel.as_str(), reason = %rej, "message refused");
                    continue;
                }
            };
            let shard = match inbound.agent_id() {
                Some(id) => {
                    let mut h = DefaultHasher::new();
                    id.hash(&mut h);
                    h.finish() as usize % senders.len()
                }
                None => {
                    next_shard = (next_shard + 1) % senders.len();
                    next_shard
                }
            };
            if senders[shard].send(inbound).await.is_err() {
                return; // handlers gone: shutting down
            }
        }
        drop(stream);
        shared.listening_since.store(0, Ordering::Release);
        metrics::counter!(m::SUBSCRIBER_RECONNECTS).increment(1);
        warn!("lost the pub/sub connection; failure detection paused until re-subscribed");
    }
}

// ---------------------------------------------------------------------------
// Handlers

async fn handler(shared: Arc<Shared>, mut rx: mpsc::Receiver<Inbound>) {
    let mut conn = shared.redis.clone();
    loop {
        let msg = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            msg = rx.recv() => match msg { Some(m) => m, None => return },
        };
        let span = info_span!(
            "message",
            kind = msg.kind(),
            agent_id = msg.agent_id().unwrap_or("-"),
            task_id = msg.task_id().unwrap_or("-")
        );
        match handle(&shared, &mut conn, msg).instrument(span).await {
            Ok(()) => {}
            Err(RegistryError::Fenced) => {
                shared.on_fenced();
                return;
            }
            Err(e) => {
                metrics::counter!(m::REDIS_ERRORS, "op" => "handle").increment(1);
                warn!(error = %e, "handling failed; message dropped (agents retry)");
            }
        }
    }
}

async fn handle(
    shared: &Shared,
    conn: &mut ConnectionManager,
    msg: Inbound,
) -> Result<(), RegistryError> {
    let keys = &shared.keys;
    match msg {
        Inbound::Register(r) => register(shared, conn, r).await,
        Inbound::Deregister(d) => {
            let removed = shared
                .registry
                .remove(conn, &d.agent_id, None, now_ms())
                .await?;
            if let Some((_, orphans)) = removed {
                shared.on_orphans(orphans, "agent_left");
            }
            let removed = removed.map(|(pool, _)| pool);
            let reply = ToAgent::DeregisterReply {
                v: VERSION,
                reply_to: d.id,
                removed: removed.is_some(),
            };
            let mut p = redis::pipe();
            p.publish(keys.agent_channel(&d.agent_id), json(&reply))
                .ignore();
            if let Some(pool) = removed {
                metrics::counter!(m::DEREGISTRATIONS).increment(1);
                let ev = Event::AgentDeregistered {
                    v: VERSION,
                    agent_id: d.agent_id.clone(),
                    pool,
                    ts: now_ms(),
                };
                p.publish(keys.registry_channel(), json(&ev)).ignore();
                debug!(pool = %pool, "deregistered");
            }
            p.query_async::<()>(conn).await?;
            Ok(())
        }
        Inbound::Heartbeat(hb) => {
            let started = Instant::now();
            let outcome = shared.registry.heartbeat(conn, &hb, now_ms()).await?;
            metrics::counter!(m::HEARTBEATS).increment(1);
            let ts = now_ms();
            match outcome {
                HeartbeatOutcome::Ok => {}
                HeartbeatOutcome::Unknown => {
                    let reply = ToAgent::Reregister {
                        v: VERSION,
                        reason: "unknown_agent".into(),
                    };
                    publish(conn, keys.agent_channel(&hb.agent_id), &reply).await?;
                }
                HeartbeatOutcome::Recovering(pool) => {
                    info!(pool = %pool, "failed agent heard again: recovering");
                    let ev = Event::AgentRecovering {
                        v: VERSION,
                        agent_id: hb.agent_id,
                        pool,
                        ts,
                    };
                    publish(conn, keys.health_channel(), &ev).await?;
                }
                HeartbeatOutcome::Recovered(pool) => {
                    metrics::counter!(m::AGENTS_RECOVERED, "pool" => pool.as_str()).increment(1);
                    info!(pool = %pool, "agent recovered");
                    let ev = Event::AgentRecovered {
                        v: VERSION,
                        agent_id: hb.agent_id,
                        pool,
                        ts,
                    };
                    publish(conn, keys.health_channel(), &ev).await?;
                }
            }
            metrics::histogram!(m::HEARTBEAT_SECONDS).record(started.elapsed());
            Ok(())
        }
        Inbound::TaskSubmit(req) => submit_task(shared, conn, req).await,
        Inbound::Report(kind, r) => {
            let pool = |p: Option<PoolType>| p.map(PoolType::as_str).unwrap_or("unknown");
            match shared.tasks.report(conn, kind, &r, now_ms()).await? {
                None => {
                    metrics::counter!(m::RESULTS_IGNORED, "kind" => kind.as_str()).increment(1);
                    debug!(task_id = %r.task_id, attempt = r.attempt, kind = kind.as_str(),
                        "report for an attempt that is not current: ignored");
                }
                Some(ReportOutcome::Running) => {}
                Some(ReportOutcome::Completed(p)) => {
                    metrics::counter!(m::TASKS_COMPLETED, "pool" => pool(p)).increment(1);
                    freed(shared, p);
                }
                Some(ReportOutcome::Retrying(p)) => {
                    metrics::counter!(m::TASKS_FAILED, "pool" => pool(p)).increment(1);
                    metrics::counter!(m::TASKS_RETRIED, "pool" => pool(p)).increment(1);
                    wake(shared, p);
                }
                Some(ReportOutcome::Dead(p)) => {
                    metrics::counter!(m::TASKS_FAILED, "pool" => pool(p)).increment(1);
                    metrics::counter!(m::TASKS_DEAD, "pool" => pool(p)).increment(1);
                    warn!(task_id = %r.task_id, "task out of retries: dead-lettered");
                    freed(shared, p);
                }
            }
            Ok(())
        }
        Inbound::StatusRequest(req) => {
            let status = shared.fleet_status(conn).await?;
            let msg = FleetStatusMessage {
                v: VERSION,
                reply_to: Some(&req.id),
                status: &status,
            };
            publish(conn, keys.fleet_channel(), &msg).await
        }
    }
}

async fn register(
    shared: &Shared,
    conn: &mut ConnectionManager,
    r: Register,
) -> Result<(), RegistryError> {
    let started = Instant::now();
    let keys = &shared.keys;
    let config = &shared.config();
    let refuse = |reason: RefusalReason, detail: String| ToAgent::RegisterReply {
        v: VERSION,
        reply_to: r.id.clone(),
        accepted: false,
        re_registered: None,
        agent: None,
        heartbeat_interval_ms: None,
        reason: Some(reason),
        detail: Some(detail),
    };
    let accepted = |rec: AgentRecord, again: bool| {
        let ev = Event::AgentRegistered {
            v: VERSION,
            agent_id: r.agent_id.clone(),
            pool: rec.pool,
            re_registered: again,
            ts: now_ms(),
        };
        let reply = ToAgent::RegisterReply {
            v: VERSION,
            reply_to: r.id.clone(),
            accepted: true,
            re_registered: Some(again),
            agent: Some(Box::new(rec)),
            heartbeat_interval_ms: Some(config.fleet.heartbeat_interval_ms),
            reason: None,
            detail: None,
        };
        (reply, Some(ev))
    };

    let (reply, event) = match protocol::check_registration(&r) {
        Err(x) => (refuse(x.reason, x.detail), None),
        Ok(pool) => {
            let pc = config.pool(pool);
            let (lim, res) = (pc.resource_limits, r.resources);
            if res.memory > lim.memory_mb || res.cpu > lim.cpu || res.network > lim.network_mbps {
                let detail = format!(
                    "pool {pool} allows at most memory {} MB, cpu {}, network {} Mbps",
                    lim.memory_mb, lim.cpu, lim.network_mbps
                );
                (refuse(RefusalReason::ResourcesExceedLimits, detail), None)
            } else {
                let new = NewAgent {
                    id: &r.agent_id,
                    pool,
                    agent_type: r.agent_type.as_deref().unwrap_or(pool.as_str()),
                    priority: r.priority.unwrap_or(pc.priority_level),
                    capabilities: &r.capabilities,
                    resources: res,
                    pool_max: pc.max_agents,
                    fleet_max: config.fleet.max_agents,
                    capacity: r.capacity.unwrap_or(1),
                    instance: r.instance.as_deref().unwrap_or(""),
                };
                // The common case, a new agent, is answered by the script itself
                // (one round trip); the other outcomes are answered below.
                let now = now_ms();
                let (fresh_reply, fresh_event) = accepted(AgentRecord::fresh(&new, now), false);
                let reply_json = json(&fresh_reply);
                let event_json = fresh_event.as_ref().map(json).unwrap_or_default();
                let agent_channel = keys.agent_channel(&r.agent_id);
                let registry_channel = keys.registry_channel();
                let announce = Announce {
                    agent_channel: &agent_channel,
                    reply: &reply_json,
                    registry_channel: &registry_channel,
                    event: &event_json,
                };
                match shared
                    .registry
                    .register(conn, &new, now, Some(&announce))
                    .await
                {
                    Ok(RegisterOutcome::Registered {
                        announced: true, ..
                    }) => {
                        shared.agent_free(pool);
                        crate::scaler::note_registered(shared, pool);
                        metrics::counter!(m::REGISTRATIONS, "result" => "accepted", "reason" => "none")
                            .increment(1);
                        metrics::histogram!(m::REGISTRATION_SECONDS).record(started.elapsed());
                        debug!("registered");
                        return Ok(());
                    }
                    Ok(RegisterOutcome::Registered { record, .. }) => {
                        crate::scaler::note_registered(shared, pool);
                        accepted(record, false)
                    }
                    Ok(RegisterOutcome::ReRegistered { record, orphaned }) => {
                        shared.on_orphans(
                            crate::registry::Orphans {
                                requeued: orphaned,
                                dead: 0,
                            },
                            "agent_restarted",
                        );
                        accepted(record, true)
                    }
                    Ok(RegisterOutcome::PoolFull) => (
                        refuse(
                            RefusalReason::PoolFull,
                            format!("pool {pool} is at max_agents ({})", pc.max_agents),
                        ),
                        None,
                    ),
                    Ok(RegisterOutcome::FleetFull) => (
                        refuse(
                            RefusalReason::FleetFull,
                            format!("fleet is at max_agents ({})", config.fleet.max_agents),
                        ),
                        None,
                    ),
                    Ok(RegisterOutcome::PoolMismatch(other)) => (
                        refuse(
                            RefusalReason::PoolMismatch,
                            format!("agent is registered in pool {other}; deregister first"),
                        ),
                        None,
                    ),
                    Err(RegistryError::Fenced) => return Err(RegistryError::Fenced),
                    Err(e) => {
                        warn!(error = %e, "registration failed in Redis");
                        let detail = "registry unavailable, retry".to_string();
                        (refuse(RefusalReason::Unavailable, detail), None)
                    }
                }
            }
        }
    };

    if let Some(Event::AgentRegistered { pool, .. }) = &event {
        shared.agent_free(*pool);
    }
    let mut p = redis::pipe();
    p.publish(keys.agent_channel(&r.agent_id), json(&reply))
        .ignore();
    if let Some(ev) = &event {
        p.publish(keys.registry_channel(), json(ev)).ignore();
    }
    p.query_async::<()>(conn).await?;
    if let ToAgent::RegisterReply { reason, detail, .. } = &reply {
        match reason {
            None => {
                metrics::counter!(m::REGISTRATIONS, "result" => "accepted", "reason" => "none")
                    .increment(1);
                debug!("re-registered");
            }
            Some(reason) => {
                metrics::counter!(m::REGISTRATIONS, "result" => "rejected", "reason" => reason.as_str())
                    .increment(1);
                info!(
                    reason = reason.as_str(),
                    detail = detail.as_deref().unwrap_or(""),
                    "registration refused"
                );
            }
        }
    }
    metrics::histogram!(m::REGISTRATION_SECONDS).record(started.elapsed());
    Ok(())
}

/// Validates and persists a task; the outcome, and the reason for a refusal.
pub async fn submit(
    shared: &Shared,
    conn: &mut ConnectionManager,
    s: &Submission,
) -> Result<Result<Submitted, (SubmitRefusal, String)>, RegistryError> {
    let cfg = &shared.config();
    let valid = match s.validate(|p| cfg.pool(p).capabilities.clone(), &cfg.tasks) {
        Ok(v) => v,
        Err((reason, detail)) => {
            metrics::counter!(m::TASKS_REJECTED, "reason" => reason.as_str()).increment(1);
            info!(reason = reason.as_str(), detail, "task refused");
            return Ok(Err((reason, detail)));
        }
    };
    let started = Instant::now();
    let (out, allocated) = shared
        .tasks
        .submit_and_allocate(conn, &valid, crate::allocator::BATCH, now_ms())
        .await?;
    match allocated {
        Some((assigned, queued)) => {
            crate::allocator::record(shared, valid.pool, assigned, queued, started)
        }
        None => shared.wake_pool(valid.pool),
    }
    if let Submitted::Accepted(t) = &out {
        let id = &t.id;
        metrics::counter!(m::TASKS_SUBMITTED, "pool" => valid.pool.as_str()).increment(1);
        debug!(task_id = %id, pool = %valid.pool, "task accepted");
    }
    Ok(Ok(out))
}

async fn submit_task(
    shared: &Shared,
    conn: &mut ConnectionManager,
    req: TaskSubmit,
) -> Result<(), RegistryError> {
    let outcome = match submit(shared, conn, &req.task).await {
        Ok(o) => o,
        Err(RegistryError::Fenced) => return Err(RegistryError::Fenced),
        Err(e) => {
            warn!(error = %e, "task submission failed in Redis");
            Err((
                SubmitRefusal::Unavailable,
                "task store unavailable, retry".into(),
            ))
        }
    };
    let Some(channel) = req.reply_channel else {
        return Ok(());
    };
    if !channel.starts_with(&shared.keys.reply_channel_prefix()) {
        metrics::counter!(m::MESSAGES_REJECTED, "channel" => "tasks", "reason" => "invalid_field")
            .increment(1);
        warn!(
            channel,
            "replyChannel outside the reply prefix: no reply sent"
        );
        return Ok(());
    }
    let duplicate = matches!(outcome, Ok(Submitted::Duplicate(_)));
    let reply = match outcome {
        Ok(Submitted::Accepted(t)) => TaskSubmitReply {
            v: VERSION,
            reply_to: req.id,
            accepted: true,
            duplicate,
            task_id: Some(t.id),
            reason: None,
            detail: None,
        },
        Ok(Submitted::Duplicate(id)) => TaskSubmitReply {
            v: VERSION,
            reply_to: req.id,
            accepted: true,
            duplicate,
            task_id: Some(id),
            reason: None,
            detail: None,
        },
        Err((reason, detail)) => TaskSubmitReply {
            v: VERSION,
            reply_to: req.id,
            accepted: false,
            duplicate: false,
            task_id: None,
            reason: Some(reason),
            detail: Some(detail),
        },
    };
    publish(conn, channel, &reply).await
}

/// A task of `pool` went back to its queue (a retry).
fn wake(shared: &Shared, pool: Option<PoolType>) {
    match pool {
        Some(p) => shared.wake_pool(p),
        None => shared.wake_all(),
    }
}

/// The agent that reported freed a slot in `pool`.
fn freed(shared: &Shared, pool: Option<PoolType>) {
    match pool {
        Some(p) => shared.agent_free(p),
        None => shared.wake_all(),
    }
}

/// `fleet_status` on the fleet channel (periodic, or a reply to `status_request`).
#[derive(Serialize)]
#[serde(tag = "type", rename = "fleet_status")]
struct FleetStatusMessage<'a> {
    v: u32,
    #[serde(rename = "replyTo", skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    status: &'a FleetStatus,
}

/// `pool_status` on a pool's channel.
#[derive(Serialize)]
#[serde(tag = "type", rename = "pool_status")]
struct PoolStatusMessage<'a> {
    v: u32,
    pool: PoolType,
    status: &'a PoolCounts,
}

pub(crate) fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("protocol types always serialize")
}

pub(crate) async fn publish(
    conn: &mut impl ConnectionLike,
    channel: String,
    msg: &impl Serialize,
) -> Result<(), RegistryError> {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(json(msg))
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Periodic status

async fn status_loop(shared: Arc<Shared>) {
    let every = Duration::from_millis(shared.config().fleet.status_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.metrics.run_upkeep();
        metrics::gauge!(m::UPTIME).set(shared.started.elapsed().as_secs_f64());
        if let Err(e) = publish_status(&shared).await {
            if matches!(e, RegistryError::Fenced) {
                shared.on_fenced();
                return;
            }
            metrics::counter!(m::REDIS_ERRORS, "op" => "status").increment(1);
            warn!(error = %e, "periodic status failed; retrying next tick");
        }
    }
}

async fn publish_status(shared: &Shared) -> Result<(), RegistryError> {
    let mut conn = shared.redis.clone();
    let status = shared.fleet_status(&mut conn).await?;
    for (pool, pc) in &status.pools {
        metrics::gauge!(m::POOL_MIN_AGENTS, "pool" => pool.as_str()).set(pc.min_agents);
        metrics::gauge!(m::POOL_MAX_AGENTS, "pool" => pool.as_str()).set(pc.max_agents);
        for (st, n) in &pc.by_status {
            metrics::gauge!(m::AGENTS, "pool" => pool.as_str(), "status" => st.as_str())
                .set(*n as f64);
        }
    }
    if let Ok(fair) = shared.tasks.fairness_inputs(&mut conn).await {
        for (pool, agents, min, max, total) in fair {
            let f = crate::status::Fairness::compute(
                agents,
                min,
                max,
                total,
                shared.config().tasks.max_skew,
            );
            metrics::gauge!(m::POOL_SKEW, "pool" => pool.as_str()).set(f.skew_ratio);
            metrics::gauge!(m::POOL_TASKS_PER_AGENT, "pool" => pool.as_str())
                .set(f.tasks_per_agent);
        }
    }
    let quarantined: u64 = redis::cmd("ZCARD")
        .arg(shared.keys.quarantine())
        .query_async(&mut conn)
        .await?;
    metrics::gauge!(m::AGENTS_QUARANTINED).set(quarantined as f64);
    let mut p = redis::pipe();
    let msg = FleetStatusMessage {
        v: VERSION,
        reply_to: None,
        status: &status,
    };
    p.publish(shared.keys.fleet_channel(), json(&msg)).ignore();
    for (pool, pc) in &status.pools {
        let msg = PoolStatusMessage {
            v: VERSION,
            pool: *pool,
            status: pc,
        };
        p.publish(shared.keys.pool_channel(*pool), json(&msg))
            .ignore();
    }
    p.query_async::<()>(&mut conn).await?;
    Ok(())
}
