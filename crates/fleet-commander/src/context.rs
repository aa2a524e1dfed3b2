//! What every part of the running service shares. [`Base`] lives as long
//! as the process: the connections, the gate, the breaker, this
//! commander's view of leadership, the clock, the fleet's recent past.
//! [`Shared`] lives as long as a term: the configuration in force, the
//! stores bound to the term's epoch, the allocator's wake-ups, the term's
//! shutdown; it derefs to its `Base`. And the helpers every loop uses
//! (publishing, sealing, telling agents).
//!
//! It uses only the data it holds (config, metrics, auth's gate, breaker,
//! ha, heard, history); the loops, the handlers and the HTTP API use it
//! (lib.rs has the map, and a test that keeps it true).

use crate::auth::Gate;
use crate::config::Config;
use crate::metrics as m;
use fleet_protocol::auth::Signer;
use fleet_protocol::{now_ms, PoolType};
use fleet_store::connection::Conn;
use fleet_store::registry::Orphans;
use fleet_store::{Keys, Notice, Registry, StoreError, TaskStore};
use metrics_exporter_prometheus::PrometheusHandle;
use redis::aio::ConnectionLike;
use serde::Serialize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// What lives as long as the process, across terms (crate::service): the
/// connections, this commander's identity and view of leadership, the
/// breaker, the gate, the clock, the fleet's recent past. A [`Shared`]
/// derefs to it.
#[derive(Clone)]
pub struct Base {
    pub(crate) keys: Keys,
    pub(crate) redis: Conn,
    pub(crate) reads: Conn,
    pub(crate) submit_conn: Option<Conn>,
    pub(crate) ha: Arc<crate::ha::Ha>,
    pub(crate) breaker: Arc<crate::breaker::Breaker>,
    /// Who is who: keys, token cache, senders' buckets.
    pub(crate) gate: Arc<Gate>,
    pub(crate) started: Instant,
    /// The fleet's recent past (crate::history), across terms.
    pub(crate) history: Arc<crate::history::History>,
}

/// State shared by the commander's tasks during one term: as the leader
/// (with its epoch) or standing by (epoch 0: any write would be fenced).
/// What outlives the term is its [`Base`] (`shared.redis`, `shared.gate`,
/// ... through `Deref`).
pub struct Shared {
    base: Base,
    /// The running configuration; pool settings are replaced on a reload.
    pub(crate) config: std::sync::RwLock<Arc<Config>>,
    pub registry: Registry,
    pub tasks: TaskStore,
    pub governance: fleet_store::governance::Governance,
    pub metrics: PrometheusHandle,
    /// When the current pub/sub subscription was confirmed (ms); 0 while not
    /// listening. The detector never declares an agent dead for a time the
    /// commander could not hear it.
    pub listening_since: AtomicU64,
    /// Wakes the allocator: a task arrived, an agent freed up, tasks came back.
    pub alloc_wake: tokio::sync::Notify,
    /// Pools (bit per [`PoolType::index`]) the allocator should look at next.
    pub dirty_pools: AtomicU32,
    /// Pools where tasks may be waiting, as of the allocator's last look (a
    /// bit per pool, all set at start). An agent freeing up or joining wakes
    /// the allocator only for these: an empty queue needs no round trip.
    pub waiting_pools: AtomicU32,
    /// New registrations per pool since start (the scaler's fulfilment check).
    pub(crate) registered_counts: [AtomicU64; 16],
    /// Why the term ended, once it has (crate::leader).
    pub(crate) ended: std::sync::OnceLock<&'static str>,
    /// Until when (ms since `started`) the lease is surely still this
    /// term's: its last renewal plus `lease_ms - renew_ms`.
    lease_until_ms: AtomicU64,
    /// The term's end: shutdown, or the lease lost.
    pub(crate) shutdown: CancellationToken,
    /// Leading or standing by, for this whole term.
    pub(crate) role: fleet_store::lease::Role,
    /// Privileged actions, chained and signed (fleet_store::audit).
    pub(crate) audit: fleet_store::audit::AuditLog,
    /// How far the fleet has been heard: read and handled (crate::heard).
    pub(crate) heard: crate::heard::Heard,
    /// Signs what the commander sends to agents and submitters; None when
    /// security is open.
    pub(crate) signer: Option<Signer>,
    /// Agents' session secrets: what they send is MACed, not signed, and
    /// so is what the commander sends them.
    pub(crate) sessions: crate::sessions::Sessions,
}

impl std::ops::Deref for Shared {
    type Target = Base;

    fn deref(&self) -> &Base {
        &self.base
    }
}

impl Shared {
    /// The state of a term: leading with `epoch` and `signer`, or standing
    /// by (epoch 0, no signer).
    pub(crate) fn new(
        config: Arc<Config>,
        base: &Base,
        role: fleet_store::lease::Role,
        epoch: u64,
        signer: Option<Signer>,
        sessions: crate::sessions::Sessions,
        shutdown: CancellationToken,
    ) -> Shared {
        let keys = base.keys.clone();
        Shared {
            sessions,
            heard: Default::default(),
            role,
            audit: fleet_store::audit::AuditLog::new(keys.clone(), signer.clone()),
            signer,
            registry: Registry::new(keys.clone(), epoch),
            tasks: TaskStore::new(keys.clone(), epoch, config.task_policy()),
            governance: fleet_store::governance::Governance::new(keys, epoch),
            metrics: m::install(),
            base: base.clone(),
            listening_since: AtomicU64::new(0),
            alloc_wake: tokio::sync::Notify::new(),
            dirty_pools: AtomicU32::new(0),
            waiting_pools: AtomicU32::new(u32::MAX),
            registered_counts: Default::default(),
            ended: std::sync::OnceLock::new(),
            lease_until_ms: AtomicU64::new(0),
            shutdown,
            config: std::sync::RwLock::new(config),
        }
    }

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

    /// Another commander claimed a newer epoch: this term ends, and the
    /// commander stands by (crate::service).
    pub(crate) fn on_fenced(&self) {
        if self.ended.set("fenced").is_ok() {
            metrics::gauge!(m::LEADER).set(0.0);
            error!(
                epoch = self.registry.epoch(),
                "a newer commander took over: this one stops writing and stands by"
            );
            self.shutdown.cancel();
        }
    }

    /// Ends the term for `reason` (the first reason given wins).
    pub(crate) fn end_term(&self, reason: &'static str) {
        if self.ended.set(reason).is_ok() {
            metrics::gauge!(m::LEADER).set(0.0);
            self.shutdown.cancel();
        }
    }

    /// Whether this term leads.
    pub fn is_leader(&self) -> bool {
        self.role == fleet_store::lease::Role::Leader
    }

    /// The lease is surely this term's until `t` (crate::leader::keep).
    pub(crate) fn lease_until(&self, t: Instant) {
        let ms = t.saturating_duration_since(self.started).as_millis() as u64;
        self.lease_until_ms.store(ms, Ordering::Release);
    }

    /// Whether this term may still act as the leader now: not ended, and
    /// within its lease. What it publishes unfenced (pool status, scaling
    /// requests) waits on this, so a leader woken from a pause says nothing
    /// before it steps down.
    pub(crate) fn leading(&self) -> bool {
        self.ended.get().is_none()
            && (self.started.elapsed().as_millis() as u64)
                < self.lease_until_ms.load(Ordering::Acquire)
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
    pub(crate) fn on_orphans(&self, o: Orphans, reason: &'static str) {
        let all = o.requeued + o.dead + o.poisoned;
        if all > 0 {
            metrics::counter!(m::TASKS_ORPHANED, "reason" => reason).increment(u64::from(all));
            if o.dead > 0 {
                metrics::counter!(m::TASKS_DEAD, "pool" => "any").increment(u64::from(o.dead));
            }
            if o.poisoned > 0 {
                metrics::counter!(m::TASKS_POISONED).increment(u64::from(o.poisoned));
                warn!(
                    poisoned = o.poisoned,
                    reason, "tasks held as poison: they took down too many agents"
                );
            }
            info!(
                requeued = o.requeued,
                dead = o.dead,
                poisoned = o.poisoned,
                reason,
                "tasks given back"
            );
            self.wake_all();
        }
    }

    /// `body` as published on `channel`: MACed with the agent's session on
    /// an agent's channel when it has one, else signed; as it is when
    /// security is open.
    pub(crate) fn seal(&self, channel: &str, body: String) -> String {
        let Some(signer) = &self.signer else {
            return body;
        };
        let session = self
            .keys
            .channels()
            .agent_of(channel)
            .and_then(|id| self.sessions.cached(id));
        let framed = match session {
            Some(s) => s.seal(signer.kid(), channel, body.as_bytes(), now_ms()),
            None => signer.sign(channel, body.as_bytes(), now_ms()),
        };
        String::from_utf8(framed).expect("an ASCII header on UTF-8 JSON")
    }

    /// `body` as published on `channel`, signed whatever the session (a
    /// `register_reply`: the agent learns its session from it).
    pub(crate) fn sign(&self, channel: &str, body: String) -> String {
        match &self.signer {
            Some(s) => String::from_utf8(s.sign(channel, body.as_bytes(), now_ms()))
                .expect("an ASCII header on UTF-8 JSON"),
            None => body,
        }
    }

    /// Publishes a message to an agent or a submitter, signed.
    pub(crate) async fn send(
        &self,
        conn: &mut impl ConnectionLike,
        channel: String,
        msg: &impl Serialize,
    ) -> Result<(), StoreError> {
        let payload = self.seal(&channel, json(msg));
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<()>(conn)
            .await?;
        Ok(())
    }

    /// With `tasks.durability = "replicated"`: waits (at most
    /// `tasks.replication_timeout_ms`) until `tasks.replicas` replicas have
    /// every write made so far on `conn`, and says whether they do. With
    /// `async`: true at once. What an agent is told of a write (an
    /// assignment, a result's ack) waits for this, so that a failover
    /// cannot take back what it was told.
    pub(crate) async fn replicas_have(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> Result<bool, StoreError> {
        let t = &self.config().tasks;
        if t.durability != crate::config::Durability::Replicated {
            return Ok(true);
        }
        let got: u32 = redis::cmd("WAIT")
            .arg(t.replicas)
            .arg(t.replication_timeout_ms)
            .query_async(conn)
            .await?;
        Ok(got >= t.replicas)
    }

    /// Publishes, signed, what scripts wrote for agents (one round trip).
    pub(crate) async fn tell(
        &self,
        conn: &mut impl ConnectionLike,
        notices: Vec<Notice>,
    ) -> Result<(), StoreError> {
        if notices.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        for n in notices {
            let payload = self.seal(&n.channel, n.message);
            p.publish(n.channel, payload).ignore();
        }
        p.query_async::<()>(conn).await?;
        Ok(())
    }

    /// Drains an agent and tells it (signed). Its pool and the tasks in its
    /// hands, or None if unknown.
    pub(crate) async fn drain(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
        now: u64,
        reason: &str,
    ) -> Result<Option<(PoolType, u64)>, StoreError> {
        let Some((pool, holding, notice)) = self.registry.drain(conn, id, now, reason).await?
        else {
            return Ok(None);
        };
        self.tell(conn, notice.into_iter().collect()).await?;
        Ok(Some((pool, holding)))
    }

    /// Writes one entry to the audit log; a failure is counted and logged
    /// (the action it records has happened).
    pub(crate) async fn audit(&self, actor: &str, action: &str, target: &str, result: &str) {
        let mut conn = self.redis.clone();
        if let Err(e) = self
            .audit
            .append(&mut conn, actor, action, target, result)
            .await
        {
            crate::metrics::redis_error("audit", &e);
            error!(error = %e, actor, action, target, "cannot write the audit log");
        }
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// A message as JSON (protocol types always serialize).
pub(crate) fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("protocol types always serialize")
}

/// Publishes one payload as it is.
async fn publish_raw(
    conn: &mut impl ConnectionLike,
    channel: String,
    payload: String,
) -> Result<(), StoreError> {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Publishes one message, unsigned (events).
pub(crate) async fn publish(
    conn: &mut impl ConnectionLike,
    channel: String,
    msg: &impl Serialize,
) -> Result<(), StoreError> {
    publish_raw(conn, channel, json(msg)).await
}
