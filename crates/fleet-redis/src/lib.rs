//! fleet-redis: how every part of the fleet reaches Redis. The commander,
//! the CLI, the Rust SDK and the simulator open every client and connection
//! here, so they all read the same URLs and all follow a failover the same
//! way.
//!
//! The map:
//! - [`url`]: what a URL names: one server (`redis://`, `rediss://` with
//!   TLS files), or a master behind Sentinel (`redis+sentinel://`).
//! - [`Client`]: opens connections to whichever server is the master now
//!   (asking the sentinels each time it connects).
//! - [`Conn`]: a command connection that reconnects by itself and, behind
//!   Sentinel, moves to the new master after a failover; [`count_round_trips`]
//!   says how many round trips a piece of work made on it.
//!
//! Every connection sets `TCP_NODELAY`. redis-rs leaves Nagle's algorithm on;
//! on a connection that carries several requests at once (the commander's
//! handlers share one, the simulated agents share a few publishers) a small
//! write then waits for the previous one to be acknowledged, which costs up
//! to a delayed-ACK timeout (40 ms on Linux) at the tail.

mod client;
mod conn;
pub mod url;

pub use client::Client;
pub use conn::{count_round_trips, Conn};

/// A client for `url` (no I/O yet: a bad URL fails here).
pub fn client(url: &str) -> redis::RedisResult<Client> {
    Client::open(url)
}

/// Redis could not be reached (or the URL is not a Redis URL).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach Redis at {url} (set REDIS_URL or redis.url): {source}")]
pub struct ConnectError {
    /// The URL without its passwords.
    pub url: String,
    #[source]
    pub source: redis::RedisError,
}

/// A self-reconnecting command connection with bounded timeouts, to the
/// master behind Sentinel if the URL names one.
pub async fn connect(url: &str) -> Result<Conn, ConnectError> {
    let failed = |source| ConnectError {
        url: url::redacted(url),
        source,
    };
    let client = client(url).map_err(failed)?;
    Conn::new(client).await.map_err(failed)
}
