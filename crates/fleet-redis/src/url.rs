//! What a Redis URL names.
//!
//! - `redis://[user:pass@]host:port[/db]`: one server.
//! - `rediss://…`: the same over TLS (rustls). The server is checked against
//!   the system's roots, or against the CA of `ssl_ca_certs=<pem file>`; a
//!   client certificate is `ssl_certfile=<pem>&ssl_keyfile=<pem>`. These
//!   are redis-py's names, so one URL serves the Rust and the Python side:
//!   `rediss://user:pass@host:6380/0?ssl_ca_certs=/etc/fleet/ca.pem`.
//! - `redis+sentinel://[user:pass@]host:port[,host:port…]/master[/db]`: the
//!   master that the sentinels at those addresses know as `master`. The user
//!   and password are the master's (and its replicas'); sentinels that need
//!   a password of their own take `?sentinel_password=…` (and
//!   `sentinel_username=…`). TLS behind Sentinel is not supported yet.

use redis::{ErrorKind, IntoConnectionInfo, RedisError, RedisResult};

/// A parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server: the URL as redis-rs reads it, and its TLS files' paths.
    Direct { url: String, tls: TlsPaths },
    /// The master named `master`, as the sentinels at `sentinels` say.
    Sentinel(SentinelTarget),
}

/// `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// `host:port` of each sentinel.
    pub sentinels: Vec<String>,
    pub master: String,
    /// The master's user and password (`user:pass`), if any.
    pub userinfo: Option<String>,
    pub db: i64,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
}

impl SentinelTarget {
    /// The user, password and database for the master, as redis-rs holds them.
    pub(crate) fn node_settings(&self) -> RedisResult<redis::RedisConnectionInfo> {
        let auth = self
            .userinfo
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let info = format!("redis://{auth}127.0.0.1:1/{}", self.db).into_connection_info()?;
        Ok(info.redis_settings().clone())
    }

    /// Each sentinel as redis-rs connects to it.
    pub(crate) fn sentinel_infos(&self) -> RedisResult<Vec<redis::ConnectionInfo>> {
        let auth = match (&self.sentinel_username, &self.sentinel_password) {
            (None, None) => String::new(),
            (u, p) => format!(
                "{}:{}@",
                u.as_deref().unwrap_or(""),
                p.as_deref().unwrap_or("")
            ),
        };
        self.sentinels
            .iter()
            .map(|s| format!("redis://{auth}{s}").into_connection_info())
            .collect()
    }
}

fn invalid(what: impl Into<String>) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, "Redis URL", what.into()))
}

/// Reads `url`.
pub fn parse(url: &str) -> RedisResult<Target> {
    if url.starts_with("rediss+sentinel://") {
        return Err(invalid(
            "TLS behind Sentinel (rediss+sentinel://) is not supported yet",
        ));
    }
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        return parse_sentinel(rest).map(Target::Sentinel);
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut tls, mut rest) = (TlsPaths::default(), Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ssl_ca_certs", v)) => tls.ca = Some(v.to_string()),
            Some(("ssl_certfile", v)) => tls.cert = Some(v.to_string()),
            Some(("ssl_keyfile", v)) => tls.key = Some(v.to_string()),
            _ => rest.push(pair),
        }
    }
    let mut url = base.to_string();
    if !rest.is_empty() {
        url = format!("{url}?{}", rest.join("&"));
    }
    if tls != TlsPaths::default() && !url.starts_with("rediss://") {
        return Err(invalid("ssl_* parameters need a rediss:// URL"));
    }
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(invalid("ssl_certfile and ssl_keyfile go together"));
    }
    url.as_str().into_connection_info()?;
    Ok(Target::Direct { url, tls })
}

fn parse_sentinel(rest: &str) -> RedisResult<SentinelTarget> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest
        .split_once('/')
        .ok_or_else(|| invalid("redis+sentinel:// needs the master's name: …/MASTER"))?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                h.to_string()
            } else {
                format!("{h}:26379")
            }
        })
        .collect();
    if sentinels.is_empty() {
        return Err(invalid("redis+sentinel:// names no sentinel"));
    }
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let master = parts
        .next()
        .ok_or_else(|| invalid("redis+sentinel:// needs the master's name: …/MASTER"))?
        .to_string();
    let db = match parts.next() {
        Some(d) => d
            .parse()
            .map_err(|_| invalid(format!("database {d:?} is not a number")))?,
        None => 0,
    };
    let mut t = SentinelTarget {
        sentinels,
        master,
        userinfo,
        db,
        sentinel_username: None,
        sentinel_password: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sentinel_username", v)) => t.sentinel_username = Some(v.to_string()),
            Some(("sentinel_password", v)) => t.sentinel_password = Some(v.to_string()),
            _ => return Err(invalid(format!("unknown parameter {pair:?} for Sentinel"))),
        }
    }
    t.sentinel_infos()?;
    t.node_settings()?;
    Ok(t)
}

/// The user and password connections authenticate with (behind Sentinel,
/// to the master).
pub fn user_and_password(url: &str) -> RedisResult<(Option<String>, Option<String>)> {
    let settings = match parse(url)? {
        Target::Direct { url, .. } => url
            .as_str()
            .into_connection_info()?
            .redis_settings()
            .clone(),
        Target::Sentinel(t) => t.node_settings()?,
    };
    Ok((
        settings.username().map(str::to_string),
        settings.password().map(str::to_string),
    ))
}

/// `url` with any password replaced by `***` (for logs and errors).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let rest = match rest.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((u, _)) => format!("{u}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => rest.to_string(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.contains("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{rest}?{q}"),
        None => format!("{scheme}://{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_read_from_the_url_and_removed_from_it() {
        let Target::Direct { url, tls } = parse("redis://h:1/0").unwrap() else {
            panic!()
        };
        assert_eq!((url.as_str(), tls), ("redis://h:1/0", TlsPaths::default()));
        let e = parse("redis://h:1/0?ssl_ca_certs=/x").unwrap_err();
        assert!(e.to_string().contains("rediss://"), "{e}");
        let Target::Direct { url, tls } = parse("rediss://h:1/0?ssl_ca_certs=/ca.pem").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (url.as_str(), tls.ca.as_deref()),
            ("rediss://h:1/0", Some("/ca.pem"))
        );
        let e = parse("rediss://h:1/0?ssl_certfile=/a").unwrap_err();
        assert!(e.to_string().contains("together"), "{e}");
    }

    #[test]
    fn sentinel_urls() {
        let Target::Sentinel(t) =
            parse("redis+sentinel://fleet-commander:pw@10.0.0.1:26379,10.0.0.2,10.0.0.3:26380/fleet/2?sentinel_password=s")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            t.sentinels,
            ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26380"]
        );
        assert_eq!((t.master.as_str(), t.db), ("fleet", 2));
        let node = t.node_settings().unwrap();
        assert_eq!(
            (node.username(), node.password(), node.db()),
            (Some("fleet-commander"), Some("pw"), 2)
        );
        assert_eq!(
            user_and_password("redis+sentinel://fleet-commander:pw@h:1/fleet").unwrap(),
            (Some("fleet-commander".into()), Some("pw".into()))
        );
        let s = &t.sentinel_infos().unwrap()[0];
        assert_eq!(s.redis_settings().password(), Some("s"));

        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel:///fleet",
            "redis+sentinel://h:1/fleet/x",
            "redis+sentinel://h:1/fleet?ssl_ca_certs=/a",
            "rediss+sentinel://h:1/fleet",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis+sentinel://u:secret@h:1,h:2/m?sentinel_password=s2"),
            "redis+sentinel://u:***@h:1,h:2/m?sentinel_password=***"
        );
        assert_eq!(redacted("redis://h:1/0"), "redis://h:1/0");
    }
}
