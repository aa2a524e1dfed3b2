//! Who may use the HTTP API: a bearer token (`fleet-commander tokens
//! issue`) whose role covers the request. GET needs a viewer, anything
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

pub(crate) async fn require(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/readyz")
        || (path == "/metrics" && !s.config().http.protect_metrics)
        || !s.gate.signed();
    if open {
        return next.run(req).await;
    }
    let need = if req.method() == Method::GET || req.method() == Method::HEAD {
        TokenRole::Viewer
    } else {
        TokenRole::Operator
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return refuse(StatusCode::UNAUTHORIZED, "missing_token", path);
    };
    let role = match s.gate.token_role(&mut s.redis.clone(), token).await {
        Ok(Some(r)) => r,
        Ok(None) => return refuse(StatusCode::UNAUTHORIZED, "invalid_token", path),
        Err(e) => return super::unavailable(e),
    };
    if role < need {
        return refuse(StatusCode::FORBIDDEN, "forbidden", path);
    }
    next.run(req).await
}

fn refuse(status: StatusCode, reason: &'static str, path: &str) -> Response {
    metrics::counter!(m::HTTP_REJECTED, "reason" => reason).increment(1);
    warn!(reason, path, "HTTP request refused");
    let mut r = super::error(status, reason, path);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r.into_response()
}
