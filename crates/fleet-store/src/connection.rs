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

/// A client for `url` whose connections set `TCP_NODELAY`.
///
/// `rediss://` is TLS (rustls). The server is checked against the system's
/// roots, or against the CA of `ssl_ca_certs=<pem file>`; a client
/// certificate is `ssl_certfile=<pem>&ssl_keyfile=<pem>`. These are
/// redis-py's names, so one URL serves the Rust and the Python side:
/// `rediss://user:pass@host:6380/0?ssl_ca_certs=/etc/fleet/ca.pem`.
pub fn client(url: &str) -> redis::RedisResult<redis::Client> {
    let (url, tls) = tls_files(url)?;
    let info = url.as_str().into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    let info = info.set_tcp_settings(tcp);
    match tls {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    }
}

/// Splits the TLS file parameters off a URL and reads the files.
fn tls_files(url: &str) -> redis::RedisResult<(String, Option<redis::TlsCertificates>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let (mut ca, mut cert, mut key, mut rest) = (None, None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ssl_ca_certs", v)) => ca = Some(v),
            Some(("ssl_certfile", v)) => cert = Some(v),
            Some(("ssl_keyfile", v)) => key = Some(v),
            _ => rest.push(pair),
        }
    }
    let mut url = base.to_string();
    if !rest.is_empty() {
        url = format!("{url}?{}", rest.join("&"));
    }
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok((url, None));
    }
    let invalid = |what: String| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "TLS", what))
    };
    if !url.starts_with("rediss://") {
        return Err(invalid("ssl_* parameters need a rediss:// URL".into()));
    }
    let read = |p: &str| std::fs::read(p).map_err(|e| invalid(format!("reading {p}: {e}")));
    let client_tls = match (cert, key) {
        (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
            client_cert: read(c)?,
            client_key: read(k)?,
        }),
        (None, None) => None,
        _ => return Err(invalid("ssl_certfile and ssl_keyfile go together".into())),
    };
    let root_cert = ca.map(read).transpose()?;
    Ok((
        url,
        Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }),
    ))
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
    fn tls_files_are_read_from_the_url_and_removed_from_it() {
        let (url, tls) = super::tls_files("redis://h:1/0").unwrap();
        assert_eq!((url.as_str(), tls.is_none()), ("redis://h:1/0", true));
        let e = super::tls_files("redis://h:1/0?ssl_ca_certs=/x").unwrap_err();
        assert!(e.to_string().contains("rediss://"), "{e}");
        let e = super::tls_files("rediss://h:1/0?ssl_ca_certs=/nonexistent/ca.pem").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = super::tls_files("rediss://h:1/0?ssl_certfile=/a").unwrap_err();
        assert!(e.to_string().contains("together"), "{e}");
    }

    #[test]
    fn clients_send_without_delay() {
        let c = super::client("redis://127.0.0.1:6390/2").unwrap();
        assert!(c.get_connection_info().tcp_settings().nodelay());
        assert_eq!(c.get_connection_info().redis_settings().db(), 2);
    }
}
