//! A spawner: acts on the commander's scaling requests.
//!
//! The commander never starts processes; it publishes `scale_up` on the
//! scaling channel and something that can start agents acts on it. This one
//! calls a function for each request, once per request id (a request seen
//! twice, e.g. from a restarted commander re-announcing it, is ignored).
//! `scale_down` needs no action here: the named agents are drained and
//! deregister by themselves.

use crate::issuer::Issuer;
use fleet_agent::{Agent, AgentSpec, Exit, Work};
use fleet_protocol::pool::PoolType;
use fleet_protocol::Channels;
use fleet_protocol::Scaling;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub struct Spawner {
    pubsub: redis::aio::PubSub,
}

impl Spawner {
    /// Subscribes to the scaling channel; requests published from now on are seen.
    pub async fn subscribe(redis_url: &str, keys: &Channels) -> redis::RedisResult<Spawner> {
        let client = fleet_store::connection::client(redis_url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(keys.scaling()).await?;
        Ok(Spawner { pubsub })
    }

    /// Calls `spawn(pool, count)` for each new `scale_up` until `stop`.
    pub async fn run(mut self, mut spawn: impl FnMut(PoolType, u32), stop: CancellationToken) {
        let mut seen = HashSet::new();
        let mut messages = self.pubsub.on_message();
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = messages.next() => match m {
                    Some(m) => m,
                    None => {
                        warn!("scaling subscription ended");
                        return;
                    }
                },
            };
            let Ok(req) = serde_json::from_slice::<Scaling>(msg.get_payload_bytes()) else {
                continue;
            };
            if let Scaling::ScaleUp {
                id,
                pool,
                count,
                reason,
                ..
            } = req
            {
                if seen.insert(id.clone()) {
                    info!(request = %id, pool = %pool, count, reason, "spawning agents");
                    spawn(pool, count);
                }
            }
        }
    }
}

/// What an [`InProcess`] spawner has done.
#[derive(Debug, Default)]
pub struct Spawned {
    /// Agents started (and registered).
    pub started: AtomicU64,
    /// Agents that were drained and left by themselves.
    pub drained: AtomicU64,
    /// Agents that could not be started.
    pub failed: AtomicU64,
}

impl Spawned {
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }
    pub fn drained(&self) -> u64 {
        self.drained.load(Ordering::Acquire)
    }
}

/// The simulator's spawner: each `scale_up` starts agents in this process,
/// each a real Redis client speaking the protocol and doing `work` (or
/// completing every task at once). A drained agent finishes, deregisters and
/// is gone; `stop` makes every agent go silent.
pub struct InProcess {
    pub redis_url: String,
    pub keys: Channels,
    pub heartbeat: Duration,
    pub work: Option<Work>,
    /// Agent ids start with this (ids must be unique in the fleet).
    pub id_prefix: String,
    /// Gives every agent a credential (None: the commander runs open).
    pub issuer: Option<crate::issuer::Issuer>,
}

impl InProcess {
    /// Subscribes, then acts on requests until `stop`.
    pub async fn start(self, stop: CancellationToken) -> anyhow::Result<Arc<Spawned>> {
        let spawner = Spawner::subscribe(&self.redis_url, &self.keys).await?;
        let client = fleet_store::connection::client(&self.redis_url)?;
        let publisher = fleet_store::connection::connect(&self.redis_url).await?;
        let stats = Arc::new(Spawned::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(PoolType, u32)>();
        tokio::spawn(spawner.run(
            move |pool, n| {
                let _ = tx.send((pool, n));
            },
            stop.clone(),
        ));
        let s = stats.clone();
        tokio::spawn(async move {
            let mut k = 0u64;
            while let Some((pool, n)) = rx.recv().await {
                for _ in 0..n {
                    k += 1;
                    let spec = AgentSpec {
                        id: format!("{}-{pool}-{k}", self.id_prefix),
                        pool,
                        priority: None,
                        capabilities: vec![pool.as_str().to_string()],
                        resources: Default::default(),
                        capacity: 1,
                    };
                    let (client, publisher, keys) =
                        (client.clone(), publisher.clone(), self.keys.clone());
                    let (work, stop, s, beat) =
                        (self.work.clone(), stop.clone(), s.clone(), self.heartbeat);
                    let issuer = self.issuer.clone();
                    let grants = Issuer::grants_for(&spec);
                    tokio::spawn(async move {
                        let (id, pool) = (spec.id.clone(), spec.pool);
                        let mut conn = publisher.clone();
                        let connected = async {
                            let a = Agent::connect(&client, publisher, keys, spec).await?;
                            Ok::<_, anyhow::Error>(match &issuer {
                                Some(i) => {
                                    a.with_credential(&i.agent(&mut conn, &id, pool, grants).await?)
                                }
                                None => a,
                            })
                        };
                        let mut a = match connected.await {
                            Ok(a) => a,
                            Err(e) => {
                                s.failed.fetch_add(1, Ordering::AcqRel);
                                warn!(error = %e, "spawned agent could not connect");
                                return;
                            }
                        };
                        if let Err(e) = a.register(beat.max(Duration::from_secs(2))).await {
                            s.failed.fetch_add(1, Ordering::AcqRel);
                            warn!(agent_id = a.id(), error = %e, "spawned agent not registered");
                            return;
                        }
                        s.started.fetch_add(1, Ordering::AcqRel);
                        if a.run_with(beat, beat, stop, work).await == Exit::Drained {
                            s.drained.fetch_add(1, Ordering::AcqRel);
                        }
                    });
                }
            }
        });
        Ok(stats)
    }
}
