//! The operators' console: one page and its script and style, embedded in
//! the binary and served at `/` by every commander (a standby's is
//! read-only: its writes are refused like any other); signing in; and the
//! live feed it listens to.
//!
//! - **Signing in** (`POST /console/session` with `{"token": …}`) checks a
//!   bearer token (`fleet-commander tokens issue`) and sets it as an
//!   `HttpOnly`, `SameSite=Strict` cookie: the token never travels in a URL
//!   and the page's script cannot read it. `GET` says who is signed in;
//!   `DELETE` signs out.
//! - **Cross-site requests**: a request authenticated by the cookie that
//!   changes anything must carry `X-Fleet-Console: 1`, a header a
//!   cross-site form cannot set (besides the cookie being `SameSite=Strict`);
//!   see `auth::require`.
//! - **Live**: `GET /v1/events` is a server-sent event stream. It sends
//!   `change` (with the kinds: registry, health, allocation, scaling,
//!   fleet) when the fleet changes: the first at once, then at most every
//!   250 ms while changes go on, and nothing otherwise; agents' heartbeats
//!   are not changes. Every page listens to one subscription of the
//!   process. The page refetches what it shows; it never polls.
//! - Every response here carries a content security policy that allows
//!   only this origin's script and style, no inline script, no framing.

use super::ApiError;
use crate::context::Shared;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_protocol::api;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// The cookie that carries the signed-in token.
pub(super) const COOKIE: &str = "fleet_session";

/// How long a console session lasts (its cookie too).
const SESSION_MS: u64 = 12 * 3600 * 1000;
/// Events to one page are at least this far apart.
const COALESCE: Duration = Duration::from_millis(250);

/// The header every cookie-authenticated write must carry.
pub(super) const CSRF_HEADER: &str = "x-fleet-console";

/// Whether a request carries the console's header, exactly `1` (a
/// cross-site form can set no header at all; any other value is refused
/// too, so that the rule is the one the docs state).
pub(super) fn from_console(headers: &HeaderMap) -> bool {
    headers
        .get(CSRF_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1")
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Paths served without a token: the page, its assets, signing in.
pub(super) fn is_open(path: &str) -> bool {
    matches!(
        path,
        api::CONSOLE | api::CONSOLE_SCRIPT | api::CONSOLE_STYLE | api::CONSOLE_SESSION
    )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub(super) async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

pub(super) async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

pub(super) async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// Adds the console's security headers to every response.
pub(super) async fn headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// The token in the session cookie, if any.
pub(super) fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

#[derive(Deserialize)]
pub(super) struct SignIn {
    token: String,
}

/// `POST /console/session`: checks the token, sets the cookie.
pub(super) async fn sign_in(
    State(s): State<Arc<Shared>>,
    body: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let token = body.token.trim();
    // A cookie value cannot hold these; no token has them either.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            api::CONSOLE_SESSION,
        )
        .into_response();
    }
    let mut conn = s.redis.clone();
    let (name, role, session) = match s.gate.open_session(&mut conn, token, SESSION_MS).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            metrics::counter!(crate::metrics::HTTP_REJECTED, "reason" => "invalid_token")
                .increment(1);
            tracing::warn!(reason = "invalid_token", "console sign-in refused");
            super::auth::refused_token(&s, api::CONSOLE_SESSION).await;
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                api::CONSOLE_SESSION,
            )
            .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut r =
        Json(json!({"signedIn": true, "name": name, "userRole": role.as_str()})).into_response();
    // The cookie holds the session, never the token signed in with.
    let cookie = format!(
        "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_MS / 1000
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /console/session`: who is signed in (and whether anyone must be).
pub(super) async fn session(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let view = s.ha.view();
    let base = json!({"role": view.role.as_str(), "leader": view.leader});
    if !s.gate.signed() {
        return Json(
            json!({"signedIn": true, "name": "anonymous", "userRole": "admin",
            "open": true, "commander": base}),
        )
        .into_response();
    }
    let Some(token) = cookie_token(&headers) else {
        return Json(json!({"signedIn": false, "commander": base})).into_response();
    };
    match s.gate.token_role(&mut s.reads.clone(), token).await {
        Ok(Some((name, role))) => Json(json!({"signedIn": true, "name": name,
            "userRole": role.as_str(), "commander": base}))
        .into_response(),
        Ok(None) => Json(json!({"signedIn": false, "commander": base})).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `DELETE /console/session`: signs out: the session is revoked (a copy of
/// the cookie no longer works) and the cookie cleared. Like every write
/// with the cookie, only from the console (its header).
pub(super) async fn sign_out(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !from_console(&headers) {
        metrics::counter!(crate::metrics::HTTP_REJECTED, "reason" => "csrf").increment(1);
        return ApiError::new(StatusCode::FORBIDDEN, "csrf", api::CONSOLE_SESSION).into_response();
    }
    if let Some(session) = cookie_token(&headers) {
        if let Err(e) = s.gate.close_session(&mut s.redis.clone(), session).await {
            return ApiError::from(e).into_response();
        }
    }
    let mut r = Json(json!({"signedIn": false})).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        ))
        .expect("a valid header"),
    );
    r
}

/// `GET /v1/events`: a `change` event whenever the fleet changed. Every
/// page listens to one subscription of this process ([`hub`]), so ten open
/// consoles cost Redis and the commander what one does (a subscription per
/// page made Redis deliver every heartbeat once per page: at 10,000 agents
/// and 10 pages, 20,000 messages a second).
///
/// The stream ends at its next event once the token that opened it is
/// revoked (revocation takes effect at once here too).
pub(super) async fn events(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let changes = hub(&s).subscribe();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or_else(|| cookie_token(&headers))
        .map(str::to_string);
    // The first change after a quiet spell goes out at once; more within
    // 250 ms of the last event are gathered into the next one.
    let state = (changes, None::<tokio::time::Instant>);
    let stream = futures_util::stream::unfold(state, move |(mut rx, last)| {
        let (s, token) = (s.clone(), token.clone());
        async move {
            let mut kinds = BTreeSet::new();
            let mut take = |r: Result<&'static str, RecvError>| match r {
                Ok(k) => {
                    kinds.insert(k);
                    true
                }
                // Fell behind: something changed.
                Err(RecvError::Lagged(_)) => {
                    kinds.insert("fleet");
                    true
                }
                Err(RecvError::Closed) => false,
            };
            if !take(rx.recv().await) {
                return None;
            }
            if let Some(last) = last {
                let gather = tokio::time::sleep_until(last + COALESCE);
                tokio::pin!(gather);
                loop {
                    tokio::select! {
                        _ = &mut gather => break,
                        r = rx.recv() => if !take(r) { break },
                    }
                }
            }
            // Only to a token still valid now: a revoked one ends the stream.
            if s.gate.signed() {
                let Some(t) = &token else { return None };
                match s.gate.token_role(&mut s.reads.clone(), t).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return None, // revoked: the stream ends
                    Err(_) => {}             // Redis trouble: the breaker answers the next request
                }
            }
            let data = json!({"kinds": kinds, "ts": fleet_protocol::now_ms()}).to_string();
            let ev = Event::default().event("change").data(data);
            Some((
                Ok::<_, std::convert::Infallible>(ev),
                (rx, Some(tokio::time::Instant::now())),
            ))
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// The process's one subscription to the event channels of a fleet (its
/// Redis URL and prefix), started by the first page that listens and kept,
/// resubscribing after a lost connection (behind Sentinel, on the new
/// master), while the runtime runs: it outlives a leader's term, as the
/// HTTP server does.
fn hub(s: &Shared) -> broadcast::Sender<&'static str> {
    type Hubs = HashMap<String, (broadcast::Sender<&'static str>, tokio::task::JoinHandle<()>)>;
    static HUBS: OnceLock<Mutex<Hubs>> = OnceLock::new();
    let url = s.config().redis.url.clone();
    let c = s.keys.channels().clone();
    let key = format!("{url} {}", c.fleet());
    let mut hubs = HUBS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some((tx, task)) = hubs.get(&key) {
        if !task.is_finished() {
            return tx.clone();
        }
    }
    let (tx, _) = broadcast::channel(256);
    let out = tx.clone();
    let channels = [
        c.registry(),
        c.health(),
        c.allocation(),
        c.scaling(),
        c.fleet(),
    ];
    let task = tokio::spawn(async move {
        let Ok(client) = fleet_store::connection::client(&url) else {
            return;
        };
        loop {
            let subscribed = async {
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(&channels).await?;
                Ok::<_, redis::RedisError>(ps)
            }
            .await;
            if let Ok(ps) = subscribed {
                let mut msgs = ps.into_on_message();
                while let Some(m) = msgs.next().await {
                    if let Some(kind) = change_kind(&channels, &m) {
                        let _ = out.send(kind);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    hubs.insert(key, (tx.clone(), task));
    tx
}

/// What a message on one of the event channels changed, if anything:
/// agents' heartbeats and requests are not changes of state.
fn change_kind(channels: &[String; 5], m: &redis::Msg) -> Option<&'static str> {
    let name = m.get_channel_name();
    let kind = ["registry", "health", "allocation", "scaling", "fleet"]
        .into_iter()
        .zip(channels.iter())
        .find(|(_, c)| c.as_str() == name)?
        .0;
    let payload = m.get_payload_bytes();
    let noise: [&[u8]; 2] = [b"\"type\":\"heartbeat\"", b"\"type\":\"status_request\""];
    let is_noise = noise
        .iter()
        .any(|n| payload.windows(n.len()).any(|w| w == *n));
    (!is_noise).then_some(kind)
}

#[cfg(test)]
mod tests {
    /// `{id}`, `${encodeURIComponent(id)}`, `${p.type}` and a trailing `/`
    /// that a variable is appended to all become `{}`; a query is dropped.
    fn shape(path: &str) -> String {
        let path = path.split('?').next().unwrap_or(path);
        let mut out = String::new();
        let mut depth = 0;
        let mut chars = path.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '$' if chars.peek() == Some(&'{') => {}
                '{' => {
                    if depth == 0 {
                        out.push_str("{}");
                    }
                    depth += 1;
                }
                '}' => depth -= 1,
                _ if depth > 0 => {}
                _ => out.push(c),
            }
        }
        if out.ends_with('/') {
            out.push_str("{}");
        }
        out
    }

    /// Every API path the console's script asks for is one the commander
    /// routes (the script cannot import `fleet_protocol::api`).
    #[test]
    fn the_console_asks_only_for_routed_paths() {
        let routed: Vec<String> = fleet_protocol::api::ALL.iter().map(|p| shape(p)).collect();
        let mut asked = 0;
        for (i, line) in super::SCRIPT.lines().enumerate() {
            for quote in ['"', '\'', '`'] {
                for (n, part) in line.split(quote).enumerate() {
                    if n % 2 == 1 && (part.starts_with("/v1/") || part.starts_with("/console/")) {
                        asked += 1;
                        let s = shape(part);
                        assert!(
                            routed.contains(&s),
                            "app.js:{}: {part} ({s}) is not routed",
                            i + 1
                        );
                    }
                }
            }
        }
        assert!(asked > 30, "found only {asked} paths in app.js");
    }
}
