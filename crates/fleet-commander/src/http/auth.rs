//! Who may use the HTTP API: a bearer token (`fleet-commander tokens
//! issue`), or the console's session cookie holding one, whose role covers
//! the request. GET needs a viewer, anything
//! else an operator; `/healthz` and `/readyz` are open, and `/metrics`
//! unless `http.protect_metrics`. With `security.mode = "open"` nothing is
//! checked. A refusal is 401 (no or an unknown token) or 403 (a role too
//! weak), counted in `fleet_http_rejected_total{reason}` and logged.

use crate::context::Shared;
use crate::metrics as m;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleet_store::tokens::TokenRole;
use std::sync::Arc;
use tracing::warn;

/// Who made a request (`token:<name>`, or `anonymous` with security open),
/// for the handlers that record it (a proposal's proposer).
#[derive(Debug, Clone)]
pub(crate) struct Actor(pub String);

pub(crate) async fn require(
    State(s): State<Arc<Shared>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let audited = audited(req.method(), &path);
    let open = matches!(path.as_str(), "/healthz" | "/readyz")
        || super::console::is_open(&path)
        || (path == "/metrics" && !s.config().http.protect_metrics);
    if open {
        return next.run(req).await;
    }
    if !s.gate.signed() {
        req.extensions_mut().insert(Actor("anonymous".into()));
        return record(&s, "anonymous", audited, &path, next.run(req).await).await;
    }
    let need = if path.starts_with("/v1/audit") {
        TokenRole::Admin
    } else if req.method() == Method::GET || req.method() == Method::HEAD {
        TokenRole::Viewer
    } else {
        TokenRole::Operator
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Else the console's session cookie; a write made with it must carry
    // the console's header, which a cross-site form cannot set.
    let token = match bearer {
        Some(t) => Some(t),
        None => {
            let t = super::console::cookie_token(req.headers());
            let write = !matches!(*req.method(), Method::GET | Method::HEAD);
            if t.is_some() && write && !super::console::from_console(req.headers()) {
                return refuse(StatusCode::FORBIDDEN, "csrf", &path);
            }
            t
        }
    };
    let Some(token) = token else {
        return refuse(StatusCode::UNAUTHORIZED, "missing_token", &path);
    };
    let (name, role) = match s.gate.token_role(&mut s.reads.clone(), token).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            refused_token(&s, &path).await;
            return refuse(StatusCode::UNAUTHORIZED, "invalid_token", &path);
        }
        Err(e) => return super::ApiError::from(e).into_response(),
    };
    if role < need {
        return refuse(StatusCode::FORBIDDEN, "forbidden", &path);
    }
    let actor = format!("token:{name}");
    req.extensions_mut().insert(Actor(actor.clone()));
    record(&s, &actor, audited, &path, next.run(req).await).await
}

/// The audit log's name for a privileged request, if it is one.
fn audited(method: &Method, path: &str) -> Option<&'static str> {
    if method != Method::POST {
        return None;
    }
    let p: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match p.as_slice() {
        ["v1", "agents", _, "drain"] | ["v1", "pools", _, "drain"] => Some("drain"),
        ["v1", "pools", _, "size"] => Some("scale"),
        ["v1", "pools", _, "pause"] => Some("pause_queue"),
        ["v1", "pools", _, "resume"] => Some("resume_queue"),
        ["v1", "pools", _, "clear"] => Some("clear_queue"),
        ["v1", "dead-letters", "requeue"] => Some("requeue_bulk"),
        ["v1", "dead-letters", "delete"] => Some("delete_dead_letters"),
        ["v1", "agents", _, "budget"] => Some("budget"),
        ["v1", "tasks", _, "cancel"] => Some("cancel"),
        ["v1", "dead-letters", _, "requeue"] => Some("requeue"),
        ["v1", "poison", _, "requeue"] => Some("requeue_poison"),
        _ => None,
    }
}

/// What a privileged handler did, for its audit entry (e.g. `agents=12`):
/// set on the response, read by [`record`]. The request's body is the
/// handler's, so the middleware cannot see it.
#[derive(Debug, Clone)]
pub(crate) struct AuditDetail(pub(crate) String);

/// Writes a privileged request and its outcome to the audit log.
async fn record(
    s: &Shared,
    actor: &str,
    action: Option<&'static str>,
    path: &str,
    response: Response,
) -> Response {
    if let Some(action) = action {
        let status = response.status();
        let result = if status.is_success() {
            "ok".to_string()
        } else {
            status.as_u16().to_string()
        };
        let target = match response.extensions().get::<AuditDetail>() {
            Some(d) => format!("{path} {}", d.0),
            None => path.to_string(),
        };
        s.audit(actor, action, &target, &result).await;
    }
    response
}

/// A request with a token that is not valid (unknown, revoked, expired):
/// audited as `token_refused`, the first at once and then at most one entry
/// a minute counting those since (only the leader writes the log).
pub(super) async fn refused_token(s: &Arc<Shared>, path: &str) {
    let write = |s: Arc<Shared>, n: u64, path: String| async move {
        if s.signer.is_some() {
            let result = format!("{n} refused since the last such entry");
            s.audit("http", "token_refused", &path, &result).await;
        }
    };
    match s.gate.refused_token() {
        crate::auth::Refused::Now(n) => write(s.clone(), n, path.to_string()).await,
        crate::auth::Refused::Later(wait) => {
            let (s, path) = (s.clone(), path.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(n) = s.gate.refused_tokens_due() {
                    write(s, n, path).await;
                }
            });
        }
        crate::auth::Refused::Counted => {}
    }
}

fn refuse(status: StatusCode, reason: &'static str, path: &str) -> Response {
    metrics::counter!(m::HTTP_REJECTED, "reason" => reason).increment(1);
    warn!(reason, path, "HTTP request refused");
    let mut r = super::ApiError::new(status, reason, path).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r.into_response()
}
