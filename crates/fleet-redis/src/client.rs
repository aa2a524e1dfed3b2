//! [`Client`]: opens connections to the server a URL names; behind
//! Sentinel, to whichever server is the master at the time of connecting.

use crate::url::{self, SentinelTarget, Target, TlsPaths};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{ErrorKind, IntoConnectionInfo, RedisError, RedisResult};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long asking the sentinels for the master may take (a frozen
/// sentinel must not hang a reconnect).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where connections go. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

// One per client, behind its Arc: the sizes of the variants do not matter.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Direct(redis::Client),
    Sentinel(Watched),
}

/// A master behind Sentinel: the sentinels (and their cached
/// connections), and how to connect to the master they name.
struct Watched {
    target: SentinelTarget,
    sentinel: Mutex<Sentinel>,
    node: SentinelNodeConnectionInfo,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Client {
    /// Reads `url` (see [`crate::url`]) and its TLS files; no I/O to Redis.
    pub fn open(url: &str) -> RedisResult<Client> {
        let inner = match url::parse(url)? {
            Target::Direct { url, tls } => Inner::Direct(direct(&url, &tls)?),
            Target::Sentinel(target) => {
                let sentinel = Sentinel::build(target.sentinel_infos()?)?;
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(target.node_settings()?)
                    .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
                Inner::Sentinel(Watched {
                    target,
                    sentinel: Mutex::new(sentinel),
                    node,
                })
            }
        };
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// True if connections go to the master behind Sentinel.
    pub fn is_sentinel(&self) -> bool {
        matches!(*self.inner, Inner::Sentinel(_))
    }

    /// What this client connects to, without passwords.
    pub fn describe(&self) -> String {
        match &*self.inner {
            Inner::Direct(c) => format!("{:?}", c.get_connection_info().addr()),
            Inner::Sentinel(w) => format!(
                "master {:?} of sentinels {}",
                w.target.master,
                w.target.sentinels.join(",")
            ),
        }
    }

    /// The database connections select.
    pub fn db(&self) -> i64 {
        match &*self.inner {
            Inner::Direct(c) => c.get_connection_info().redis_settings().db(),
            Inner::Sentinel(w) => w.target.db,
        }
    }

    /// A redis-rs client for the server to use now: behind Sentinel, the
    /// master the sentinels name (and that says it is the master).
    pub async fn resolve(&self) -> RedisResult<redis::Client> {
        match &*self.inner {
            Inner::Direct(c) => Ok(c.clone()),
            Inner::Sentinel(w) => {
                let Watched {
                    target,
                    sentinel,
                    node,
                } = w;
                let ask = async {
                    let mut s = sentinel.lock().await;
                    s.async_master_for(&target.master, Some(node)).await
                };
                match tokio::time::timeout(RESOLVE_TIMEOUT, ask).await {
                    Ok(r) => r,
                    Err(_) => Err(RedisError::from((
                        ErrorKind::Io,
                        "Sentinel",
                        format!(
                            "no sentinel of {} named the master {:?} within {RESOLVE_TIMEOUT:?}",
                            target.sentinels.join(","),
                            target.master
                        ),
                    ))),
                }
            }
        }
    }

    /// A pub/sub connection to the master now.
    pub async fn get_async_pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        self.resolve().await?.get_async_pubsub().await
    }

    /// A multiplexed connection to the master now (it does not follow a
    /// failover: [`crate::Conn`] does).
    pub async fn get_multiplexed_async_connection(
        &self,
    ) -> RedisResult<redis::aio::MultiplexedConnection> {
        self.resolve()
            .await?
            .get_multiplexed_async_connection()
            .await
    }
}

/// The redis-rs client for one server, with `TCP_NODELAY` and TLS files.
fn direct(url: &str, tls: &TlsPaths) -> RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    let info = info.set_tcp_settings(tcp);
    if tls == &TlsPaths::default() {
        return redis::Client::open(info);
    }
    let invalid = |what: String| RedisError::from((ErrorKind::InvalidClientConfig, "TLS", what));
    let read = |p: &str| std::fs::read(p).map_err(|e| invalid(format!("reading {p}: {e}")));
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
            client_cert: read(c)?,
            client_key: read(k)?,
        }),
        _ => None,
    };
    let root_cert = tls.ca.as_deref().map(read).transpose()?;
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_must_exist() {
        let e = Client::open("rediss://h:1/0?ssl_ca_certs=/nonexistent/ca.pem").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn clients_send_without_delay() {
        let c = Client::open("redis://127.0.0.1:6390/2").unwrap();
        let Inner::Direct(r) = &*c.inner else {
            panic!()
        };
        assert!(r.get_connection_info().tcp_settings().nodelay());
        assert_eq!(c.db(), 2);
        let s = Client::open("redis+sentinel://127.0.0.1:1/fleet/3").unwrap();
        assert!(s.is_sentinel() && s.db() == 3);
    }
}
