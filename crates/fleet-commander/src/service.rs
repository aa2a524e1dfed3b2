//! The service's start, supervision and shutdown: claims the epoch, loads
//! the scripts, binds HTTP, and runs every loop under one [`Supervisor`].

use crate::config::Config;
use crate::context::Shared;
use crate::metrics as m;
use crate::supervise::{Exit, Supervisor};
use fleet_store::{Keys, Registry, TaskStore};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Messages a handler may have queued before the subscriber waits for it.
const HANDLER_QUEUE: usize = 1024;

/// A started commander.
pub struct Running {
    pub http_addr: SocketAddr,
    pub epoch: u64,
    pub shared: Arc<Shared>,
    supervisor: Supervisor,
}

impl Running {
    /// Asks every task to stop (they drain within the grace period).
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Waits until the service has stopped, and says how.
    pub async fn wait(self) -> Exit {
        let grace = Duration::from_millis(self.shared.config().fleet.shutdown_grace_ms);
        self.supervisor.wait(grace, &self.shared.fenced).await
    }
}

/// Why a commander could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Connect(#[from] fleet_store::connection::ConnectError),
    #[error("preparing Redis (epoch, scripts, settings): {0}")]
    Store(#[from] fleet_store::StoreError),
    #[error("binding the HTTP API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Starts a commander. Stops when `shutdown` is cancelled, when a newer
/// commander fences it, or when one of its loops fails.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    let secret = config.commander_secret()?;
    let config = Arc::new(config);
    let keys = Keys::new(config.fleet.prefix.clone());
    let mut redis = fleet_store::connection::connect(&config.redis.url).await?;
    // The detector has its own connection, so that its round-trip check
    // measures Redis, not the handlers' queue; the allocator has its own so
    // that its batches do not queue behind the handlers' scripts.
    let detector_conn = fleet_store::connection::connect(&config.redis.url).await?;
    let allocator_conn = fleet_store::connection::connect(&config.redis.url).await?;
    let submit_conn = match config.tasks.durability {
        crate::config::Durability::Replicated => {
            Some(fleet_store::connection::connect(&config.redis.url).await?)
        }
        crate::config::Durability::Async => None,
    };
    let epoch = Registry::claim_epoch(&mut redis, &keys).await?;
    Registry::load_scripts(&mut redis).await?;
    TaskStore::load_scripts(&mut redis).await?;
    crate::config::write_settings(&mut redis, &keys, &config).await?;

    let addr = config.http.addr;
    let bind = |source| StartError::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    let http_addr = listener.local_addr().map_err(bind)?;

    let signer = secret.map(|s| crate::auth::commander_signer(&s, epoch));
    let shared = Arc::new(Shared::new(
        config,
        keys,
        epoch,
        redis,
        signer,
        shutdown.clone(),
        submit_conn,
    ));
    shared
        .audit(
            &format!("commander:{epoch}"),
            "commander_took_over",
            &format!("epoch {epoch}"),
            "ok",
        )
        .await;
    if shared.gate.signed() {
        let mut conn = shared.redis.clone();
        let n = shared.gate.reload(&mut conn).await?;
        info!(
            keys = n,
            "security on: agents' and submitters' messages must be signed"
        );
    } else {
        warn!(
            "security.mode = \"open\": messages are neither checked nor signed; \
             anyone who can publish to Redis commands this fleet. For local experiments only"
        );
    }

    let mut sup = Supervisor::new(shutdown);
    let mut senders = Vec::new();
    for _ in 0..shared.config().fleet.workers {
        let (tx, rx) = mpsc::channel(HANDLER_QUEUE);
        senders.push(tx);
        sup.spawn("handler", crate::handlers::run(shared.clone(), rx));
    }
    sup.spawn(
        "subscriber",
        crate::subscriber::run(shared.clone(), senders),
    );
    sup.spawn("ticker", crate::subscriber::ticker(shared.clone()));
    sup.spawn(
        "detector",
        crate::health::detector(shared.clone(), detector_conn),
    );
    sup.spawn("status", crate::status::publisher(shared.clone()));
    sup.spawn(
        "runtime_lag",
        m::watch_runtime_lag(shared.shutdown_token().clone()),
    );
    sup.spawn(
        "allocator",
        crate::allocator::allocator(shared.clone(), allocator_conn),
    );
    sup.spawn(
        "reaper",
        crate::allocator::reaper(shared.clone(), shared.redis.clone()),
    );
    sup.spawn("http", crate::http::serve(shared.clone(), listener));
    if shared.gate.signed() {
        sup.spawn("keys", crate::auth::refresh(shared.clone()));
    }
    sup.spawn(
        "scaler",
        crate::scaler::scaler(shared.clone(), shared.redis.clone()),
    );
    if let Some(path) = shared.config().source.clone() {
        sup.spawn("reload", crate::reload::watch(shared.clone(), path));
    }

    info!(%http_addr, epoch, prefix = shared.keys.prefix(), "commander started");
    Ok(Running {
        http_addr,
        epoch,
        shared,
        supervisor: sup,
    })
}
