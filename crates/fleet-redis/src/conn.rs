//! [`Conn`]: the command connection every part of the fleet uses.
//!
//! To one server it is redis-rs's `ConnectionManager`: multiplexed, and it
//! reconnects by itself after Redis restarts. Behind Sentinel that is not
//! enough: a `ConnectionManager` reconnects to the address it was built
//! with, which after a failover is a dead server or a replica (redis-rs
//! issue #1438). So behind Sentinel, a command that fails as a connection
//! failure, or as `READONLY`/`MASTERDOWN`/`LOADING`, makes the connection
//! ask the sentinels for the master; if it is another server, the
//! connection moves there, and every clone with it. The failed command is
//! not retried (a script may have run): its caller sees the error, as it
//! would for a dropped connection, and the next command goes to the new
//! master.

use crate::Client;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The sentinels are asked at most this often by one connection.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// A self-reconnecting, multiplexed command connection. Cheap to clone;
/// clones share the connection.
#[derive(Clone)]
pub struct Conn {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Direct(ConnectionManager, Arc<str>),
    Following(Arc<Following>),
}

struct Following {
    client: Client,
    current: RwLock<Current>,
    /// When the sentinels were last asked; held while asking.
    asked: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct Current {
    conn: ConnectionManager,
    server: String,
}

fn config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

fn server_of(c: &redis::Client) -> String {
    match c.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        other => format!("{other:?}"),
    }
}

/// True for an error after which the master may be elsewhere.
fn master_may_have_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
        || e.to_string().contains("READONLY")
}

impl Conn {
    pub(crate) async fn new(client: Client) -> RedisResult<Conn> {
        let resolved = client.resolve().await?;
        let server = server_of(&resolved);
        let conn = ConnectionManager::new_with_config(resolved, config()).await?;
        if !client.is_sentinel() {
            return Ok(Conn {
                kind: Kind::Direct(conn, server.into()),
            });
        }
        Ok(Conn {
            kind: Kind::Following(Arc::new(Following {
                client,
                current: RwLock::new(Current { conn, server }),
                asked: tokio::sync::Mutex::new(None),
            })),
        })
    }

    /// The `host:port` of the server commands go to now.
    pub fn server(&self) -> String {
        match &self.kind {
            Kind::Direct(_, server) => server.to_string(),
            Kind::Following(f) => f.now().server,
        }
    }

    fn manager(&self) -> ConnectionManager {
        match &self.kind {
            Kind::Direct(c, _) => c.clone(),
            Kind::Following(f) => f.now().conn,
        }
    }

    async fn after(&self, e: &RedisError) {
        if let Kind::Following(f) = &self.kind {
            if master_may_have_moved(e) {
                f.follow().await;
            }
        }
    }
}

impl Following {
    fn now(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the sentinels for the master and moves there if it changed.
    async fn follow(&self) {
        // Another clone is asking already: its answer serves this one too.
        let Ok(mut asked) = self.asked.try_lock() else {
            return;
        };
        if asked.is_some_and(|t| t.elapsed() < FOLLOW_INTERVAL) {
            return;
        }
        *asked = Some(Instant::now());
        let resolved = match self.client.resolve().await {
            Ok(r) => r,
            Err(e) => {
                warn!("no master from the sentinels yet: {e}");
                return;
            }
        };
        let server = server_of(&resolved);
        let old = self.now().server;
        if server == old {
            return;
        }
        match ConnectionManager::new_with_config(resolved, config()).await {
            Ok(conn) => {
                info!(from = %old, to = %server, "Redis failover: commands go to the new master");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Current { conn, server };
            }
            Err(e) => warn!(master = %server, "cannot connect to the new master yet: {e}"),
        }
    }
}

tokio::task_local! {
    /// Round trips made on any [`Conn`] by the task inside [`count_round_trips`].
    static ROUND_TRIPS: std::cell::Cell<u32>;
}

/// Runs `work`, and says how many Redis round trips it made on [`Conn`]s
/// (a command, or a whole pipeline, is one; a script loaded again after
/// NOSCRIPT is two more). Costs nothing outside such a scope.
pub async fn count_round_trips<F: std::future::Future>(work: F) -> (F::Output, u32) {
    ROUND_TRIPS
        .scope(std::cell::Cell::new(0), async {
            let out = work.await;
            (out, ROUND_TRIPS.with(std::cell::Cell::get))
        })
        .await
}

fn round_trip() {
    let _ = ROUND_TRIPS.try_with(|n| n.set(n.get() + 1));
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        round_trip();
        Box::pin(async move {
            let r = self.manager().req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.after(e).await;
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        round_trip();
        Box::pin(async move {
            let r = self
                .manager()
                .req_packed_commands(pipeline, offset, count)
                .await;
            if let Err(e) = &r {
                self.after(e).await;
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.kind {
            Kind::Direct(c, _) => c.get_db(),
            Kind::Following(f) => f.client.db(),
        }
    }
}
