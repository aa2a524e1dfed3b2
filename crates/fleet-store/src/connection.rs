//! Redis connections: every client this crate opens comes from here.
//!
//! redis-rs leaves Nagle's algorithm on by default. On a connection that
//! carries several requests at once (the commander's handlers share one, the
//! simulated agents share a few publishers) a small write then waits for the
//! previous one to be acknowledged, which costs up to a delayed-ACK timeout
//! (40 ms on Linux) at the tail. Every connection here sets `TCP_NODELAY`.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;
use std::time::Duration;

/// A client for `url` whose connections send without delay.
/// A client for `url` whose connections set `TCP_NODELAY`.
pub fn client(url: &str) -> redis::RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    redis::Client::open(info.set_tcp_settings(tcp))
}

/// A multiplexed connection that reconnects by itself after Redis restarts.
/// Redis could not be reached (or the URL is not a Redis URL).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach Redis at {url} (set REDIS_URL or redis.url): {source}")]
pub struct ConnectError {
    pub url: String,
    #[source]
    pub source: redis::RedisError,
}

/// A self-reconnecting command connection with bounded timeouts.
pub async fn connect(url: &str) -> Result<ConnectionManager, ConnectError> {
    let failed = |source| ConnectError {
        url: url.to_string(),
        source,
    };
    let client = client(url).map_err(failed)?;
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_with_config(client, cfg)
        .await
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn clients_send_without_delay() {
        let c = super::client("redis://127.0.0.1:6390/2").unwrap();
        assert!(c.get_connection_info().tcp_settings().nodelay());
        assert_eq!(c.get_connection_info().redis_settings().db(), 2);
    }
}
