//! The service's start, terms and stop.
//!
//! [`start`] connects, loads the scripts, binds HTTP, and runs the node: a
//! loop of terms (crate::leader). Standing by, the commander serves reads
//! and tries to take the lease; leading, it runs every loop of the service
//! under one [`Supervisor`] until the lease is lost or shutdown, then
//! releases the lease and stands by again. One HTTP server serves the whole
//! process; each request goes to the current term's router.

use crate::config::Config;
use crate::context::{Base, Shared};
use crate::metrics as m;
use crate::supervise::{Exit, Supervisor};
use fleet_protocol::{now_ms, Leadership};
use fleet_store::connection::Conn;
use fleet_store::lease::{self, Lease, Role};
use fleet_store::Keys;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Messages a handler may have queued before the subscriber waits for it.
const HANDLER_QUEUE: usize = 1024;

/// A started commander.
pub struct Running {
    pub http_addr: SocketAddr,
    node: Arc<Node>,
    shutdown: CancellationToken,
    supervisor: Supervisor,
}

impl Running {
    /// Asks every task to stop (they drain within the grace period); a
    /// leader releases the lease.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The current term's state (a standby's while it stands by).
    pub fn shared(&self) -> Arc<Shared> {
        self.node.current().0
    }

    /// The epoch it leads with; 0 while it stands by.
    pub fn epoch(&self) -> u64 {
        self.shared().registry.epoch()
    }

    /// This commander's id (in the lease and `GET /v1/commanders`).
    pub fn id(&self) -> &str {
        self.node.base.ha.id()
    }

    /// Whether it leads and is listening to the fleet.
    pub fn leads(&self) -> bool {
        let s = self.shared();
        s.is_leader() && s.is_listening()
    }

    /// Waits until the service has stopped, and says how.
    pub async fn wait(self) -> Exit {
        let grace = Duration::from_millis(self.node.config().fleet.shutdown_grace_ms);
        // A term drains within the grace period; the HTTP server after it.
        self.supervisor.wait(grace * 2).await
    }
}

/// Why a commander could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Connect(#[from] fleet_store::connection::ConnectError),
    #[error("preparing Redis (scripts): {0}")]
    Store(#[from] fleet_store::StoreError),
    #[error("binding the HTTP API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Starts a commander: it leads at once if no other does, else stands by.
/// Stops when `shutdown` is cancelled or a loop fails.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    let secret = config.commander_secret()?;
    let keys = Keys::new(config.fleet.prefix.clone());
    let url = &config.redis.url;
    let mut redis = fleet_store::connection::connect(url).await?;
    // The detector has its own connection, so that its round-trip check
    // measures Redis, not the handlers' queue; the allocator has its own so
    // that its batches do not queue behind the handlers' scripts.
    let detector_conn = fleet_store::connection::connect(url).await?;
    let allocator_conn = fleet_store::connection::connect(url).await?;
    // And the HTTP API's reads, so that they never queue ahead of a script.
    let reads = fleet_store::connection::connect(url).await?;
    let submit_conn = match config.tasks.durability {
        crate::config::Durability::Replicated => Some(fleet_store::connection::connect(url).await?),
        crate::config::Durability::Async => None,
    };
    fleet_store::scripts::load_all(&mut redis).await?;

    let addr = config.http.addr;
    let bind = |source| StartError::Bind { addr, source };
    let listener = listen(addr, config.http.listen_backlog).map_err(bind)?;
    let http_addr = listener.local_addr().map_err(bind)?;
    let address = match config.ha.advertise_addr.as_str() {
        "" => http_addr.to_string(),
        a => a.to_string(),
    };
    let id = format!("commander-{}", uuid::Uuid::new_v4().simple());
    let ha = crate::ha::Ha::new(
        Lease::new(keys.clone(), id, config.ha.lease_ms, config.ha.renew_ms),
        address,
    );
    let base = Base {
        keys: keys.clone(),
        redis,
        reads,
        submit_conn,
        ha: Arc::new(ha),
        breaker: Default::default(),
        gate: Arc::new(crate::auth::Gate::new(&config, keys.clone())),
        started: Instant::now(),
        history: Default::default(),
    };
    let config = Arc::new(config);
    let http_config = config.http.clone();
    let standby = standby_state(config.clone(), &base, shutdown.child_token());
    let node = Arc::new(Node {
        current: RwLock::new((standby.clone(), crate::http::router(standby))),
        config: RwLock::new(config),
        base,
        secret,
        gate_loaded: AtomicBool::new(false),
        detector_conn,
        allocator_conn,
    });

    let mut sup = Supervisor::new(shutdown.clone());
    let n = node.clone();
    let app = crate::http::switching(move || n.current().1);
    sup.spawn(
        "http",
        crate::http::serve(listener, http_config, app, shutdown.clone()),
    );
    sup.spawn("node", node.clone().run(shutdown.clone()));
    info!(%http_addr, id = node.base.ha.id(), prefix = node.base.keys.prefix(), "commander started");
    Ok(Running {
        http_addr,
        node,
        shutdown,
        supervisor: sup,
    })
}

/// A commander process, through its terms.
struct Node {
    base: Base,
    secret: Option<[u8; 32]>,
    /// Whether the key store was loaded once (the refresh loop keeps it so).
    gate_loaded: AtomicBool,
    detector_conn: Conn,
    allocator_conn: Conn,
    /// The configuration, carried from term to term (a reload applies to
    /// the next term too).
    config: RwLock<Arc<Config>>,
    /// The current term's state, and its router.
    current: RwLock<(Arc<Shared>, axum::Router)>,
}

fn standby_state(config: Arc<Config>, base: &Base, token: CancellationToken) -> Arc<Shared> {
    Arc::new(Shared::new(
        config,
        base,
        Role::Standby,
        0,
        None,
        crate::sessions::Sessions::new(None),
        token,
    ))
}

impl Node {
    fn config(&self) -> Arc<Config> {
        self.config.read().expect("no panics while held").clone()
    }

    fn current(&self) -> (Arc<Shared>, axum::Router) {
        self.current.read().expect("no panics while held").clone()
    }

    fn install(&self, shared: Arc<Shared>) {
        let router = crate::http::router(shared.clone());
        *self.current.write().expect("no panics while held") = (shared, router);
    }

    /// Terms until shutdown. A leader's term that fails (a loop panicked or
    /// ended on its own) ends the process.
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut first = true;
        loop {
            let standby = if first {
                first = false;
                self.current().0
            } else {
                let s = standby_state(self.config(), &self.base, shutdown.child_token());
                self.install(s.clone());
                s
            };
            self.base.ha.become_(Role::Standby, 0);
            let Some((epoch, acquired)) = self.stand_by(&standby).await else {
                break;
            };
            match self.lead(epoch, acquired, &shutdown).await {
                Exit::Failed(why) => {
                    error!(why, "the leader's term failed: stopping");
                    return;
                }
                Exit::Clean if shutdown.is_cancelled() => break,
                Exit::Clean => {}
            }
        }
        let mut conn = self.base.redis.clone();
        let forget = lease::forget(&mut conn, &self.base.keys, self.base.ha.id());
        let _ = tokio::time::timeout(Duration::from_secs(1), forget).await;
    }

    /// Stands by until this commander takes the lease (its epoch, and when)
    /// or shutdown.
    async fn stand_by(&self, shared: &Arc<Shared>) -> Option<(u64, Instant)> {
        let refresh = async {
            if shared.gate.signed() {
                crate::key_refresh::refresh(shared.clone()).await
            } else {
                std::future::pending().await
            }
        };
        let epoch = tokio::select! {
            e = crate::leader::stand_by(shared) => e,
            () = refresh => None,
        };
        shared.shutdown.cancel();
        epoch
    }

    /// One term as the leader, with `epoch`: until the lease is lost or
    /// shutdown; the lease is released at the end.
    async fn lead(&self, epoch: u64, acquired: Instant, shutdown: &CancellationToken) -> Exit {
        let previous = self.base.ha.view().leader.map(|l| l.id);
        self.base.ha.become_(Role::Leader, epoch);
        let config = self.config();
        let signer = self
            .secret
            .map(|s| crate::auth::commander_signer(&s, epoch));
        let shared = Arc::new(Shared::new(
            config,
            &self.base,
            Role::Leader,
            epoch,
            signer,
            crate::sessions::Sessions::new(self.secret.as_ref()),
            shutdown.child_token(),
        ));
        let exit = match self.prepare(&shared).await {
            Ok(()) => {
                self.install(shared.clone());
                let sup = self.spawn_loops(&shared, acquired);
                self.took_over(&shared, previous).await;
                sup.wait(Duration::from_millis(
                    shared.config().fleet.shutdown_grace_ms,
                ))
                .await
            }
            Err(e) => {
                crate::metrics::redis_error("lease", &e);
                warn!(error = %e, "cannot prepare to lead: standing by");
                shared.end_term("not_prepared");
                Exit::Clean
            }
        };
        let ended = match (&exit, shutdown.is_cancelled()) {
            (Exit::Failed(_), _) => "failed",
            (_, true) => "stopped",
            _ => shared.ended.get().copied().unwrap_or("stepped_down"),
        };
        metrics::counter!(m::TERMS, "ended" => ended).increment(1);
        let mut conn = self.base.redis.clone();
        let release = self.base.ha.lease.release(&mut conn, epoch);
        let released = matches!(
            tokio::time::timeout(Duration::from_secs(1), release).await,
            Ok(Ok(true))
        );
        info!(epoch, ended, released, "the term is over");
        *self.config.write().expect("no panics while held") = shared.config();
        exit
    }

    /// What a new leader does before its loops start: the settings the
    /// scripts read, and the key store.
    async fn prepare(&self, shared: &Shared) -> Result<(), fleet_store::StoreError> {
        let mut conn = shared.redis.clone();
        crate::reload::write_settings(&mut conn, &shared.keys, &shared.config()).await?;
        if shared.gate.signed() && !self.gate_loaded.load(Ordering::Acquire) {
            let n = shared.gate.reload(&mut conn).await?;
            self.gate_loaded.store(true, Ordering::Release);
            info!(
                keys = n,
                "security on: agents' and submitters' messages must be signed"
            );
        } else if !shared.gate.signed() {
            warn!(
                "security.mode = \"open\": messages are neither checked nor signed; \
                 anyone who can publish to Redis commands this fleet. For local experiments only"
            );
        }
        Ok(())
    }

    /// Says, on the fleet channel and in the audit log, that this commander
    /// leads now.
    async fn took_over(&self, shared: &Shared, previous: Option<String>) {
        let epoch = shared.registry.epoch();
        let ha = &shared.ha;
        info!(epoch, id = ha.id(), previous, "leading");
        shared
            .audit(
                &format!("commander:{epoch}"),
                "commander_took_over",
                &format!("epoch {epoch} {} at {}", ha.id(), ha.address),
                "ok",
            )
            .await;
        let ev = Leadership::CommanderTookOver {
            v: fleet_protocol::VERSION,
            commander_id: ha.id().to_string(),
            epoch,
            address: ha.address.clone(),
            previous,
            ts: now_ms(),
        };
        let mut conn = shared.redis.clone();
        let channel = shared.keys.channels().fleet();
        if let Err(e) = crate::context::publish(&mut conn, channel, &ev).await {
            crate::metrics::redis_error("status", &e);
        }
        let _ = lease::announce(&mut conn, &shared.keys, &ha.entry()).await;
    }

    /// Every loop of a leader's term, under one supervisor.
    fn spawn_loops(&self, shared: &Arc<Shared>, acquired: Instant) -> Supervisor {
        let mut sup = Supervisor::new(shared.shutdown.clone());
        let mut senders = Vec::new();
        for _ in 0..shared.config().fleet.workers {
            let (tx, rx) = mpsc::channel(HANDLER_QUEUE);
            senders.push(tx);
            sup.spawn("handler", crate::handlers::run(shared.clone(), rx));
        }
        let (heartbeats, rx) = mpsc::channel(HANDLER_QUEUE);
        sup.spawn(
            "heartbeats",
            crate::handlers::heartbeat::run(shared.clone(), rx),
        );
        let senders = crate::subscriber::Queues {
            handlers: senders,
            heartbeats,
        };
        let ha = shared.config().ha.clone();
        shared.lease_until(acquired + Duration::from_millis(ha.lease_ms - ha.renew_ms));
        sup.spawn("lease", crate::leader::keep(shared.clone(), acquired));
        sup.spawn(
            "subscriber",
            crate::subscriber::run(shared.clone(), senders),
        );
        sup.spawn("ticker", crate::subscriber::ticker(shared.clone()));
        sup.spawn(
            "detector",
            crate::health::detector(shared.clone(), self.detector_conn.clone()),
        );
        sup.spawn("status", crate::status::publisher(shared.clone()));
        sup.spawn(
            "runtime_lag",
            m::watch_runtime_lag(shared.shutdown_token().clone()),
        );
        sup.spawn(
            "allocator",
            crate::allocator::allocator(shared.clone(), self.allocator_conn.clone()),
        );
        sup.spawn(
            "reaper",
            crate::reaper::reaper(shared.clone(), shared.redis.clone()),
        );
        sup.spawn("proposal_expiry", crate::governance::expiry(shared.clone()));
        if shared.gate.signed() {
            sup.spawn("keys", crate::key_refresh::refresh(shared.clone()));
        }
        sup.spawn(
            "scaler",
            crate::scaler::scaler(shared.clone(), shared.redis.clone()),
        );
        if let Some(path) = shared.config().source.clone() {
            sup.spawn("reload", crate::reload::watch(shared.clone(), path));
        }
        if let (Some(path), true) = (
            shared.config().audit_checkpoint_path(),
            shared.gate.signed(),
        ) {
            sup.spawn(
                "checkpoint",
                crate::checkpoint::writer(shared.clone(), path),
            );
        }
        sup
    }
}

/// Binds the HTTP API's socket with `backlog` (std's bind uses 128).
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
