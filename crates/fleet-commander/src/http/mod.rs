//! The HTTP API, one file per resource: the fleet and the process
//! ([`fleet`]: status, history, commanders, liveness, readiness, metrics),
//! [`pools`], [`agents`], [`budgets`], [`tasks`], operators' actions on
//! queues and held tasks ([`queues`]), [`governance`], the [`audit`] log,
//! and the [`console`]. Every path is a constant of `fleet_protocol::api`.
//! Every handler answers `Result<_, ApiError>` ([`error`]); a layer counts
//! and logs the ones that failed on Redis. Connections are capped and idle
//! ones closed ([`listener`]); a body over `fleet.max_message_bytes` is
//! refused with 413; requests need a bearer token of the right role
//! ([`auth`]); [`lists`] pages the long lists.

mod agents;
mod audit;
mod auth;
mod budgets;
mod console;
mod error;
mod fleet;
mod governance;
mod listener;
mod lists;
mod pools;
mod queues;
mod tasks;

use crate::context::Shared;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_protocol::api;
use fleet_store::tasks::Held;
use serde_json::json;
use std::sync::Arc;
use tracing::error;

pub(crate) use error::ApiError;

/// Every route, then the layers. Kept as one table on purpose (one line per
/// route): the API at a glance, in the order of `fleet_protocol::api`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let body_limit = shared.config().fleet.max_message_bytes;
    Router::new()
        .route(api::FLEET, get(fleet::status))
        .route(api::HISTORY, get(fleet::history))
        .route(api::COMMANDERS, get(fleet::commanders))
        .route(api::HEALTHZ, get(|| async { "ok" }))
        .route(api::READYZ, get(fleet::ready))
        .route(api::METRICS, get(fleet::metrics_text))
        .route(api::POOLS, get(pools::list))
        .route(api::POOL_DRAIN, post(pools::drain))
        .route(api::POOL_SIZE, post(pools::set_size))
        .route(
            api::POOL_PAUSE,
            post(|State(s), Path(p)| queues::pause(s, p, true)),
        )
        .route(
            api::POOL_RESUME,
            post(|State(s), Path(p)| queues::pause(s, p, false)),
        )
        .route(api::POOL_CLEAR, post(queues::clear))
        .route(api::SCALING, get(pools::scaling))
        .route(api::AGENTS, get(agents::list))
        .route(api::AGENT, get(agents::get))
        .route(api::AGENT_DRAIN, post(agents::drain))
        .route(api::AGENT_BUDGET, get(budgets::get).post(budgets::post))
        .route(api::DEPARTED, get(agents::departed))
        .route(
            api::TASKS,
            // An array of tasks may be larger than one message; each task in
            // it is held to the one-message limit by the handler.
            post(tasks::submit)
                .layer(DefaultBodyLimit::max(body_limit * tasks::BATCH_BODY_FACTOR))
                .get(tasks::list),
        )
        .route(api::TASK, get(tasks::get))
        .route(api::TASK_CANCEL, post(tasks::cancel))
        .route(api::TASK_EVIDENCE, get(tasks::evidence))
        .route(
            api::DEAD_LETTERS,
            get(|State(s)| queues::held(s, Held::Dead)),
        )
        .route(
            api::DEAD_LETTERS_REQUEUE,
            post(|State(s), body| queues::bulk(s, body, false)),
        )
        .route(
            api::DEAD_LETTERS_DELETE,
            post(|State(s), body| queues::bulk(s, body, true)),
        )
        .route(
            api::DEAD_LETTER_REQUEUE,
            post(|State(s), Path(id)| queues::requeue_held(s, Held::Dead, id)),
        )
        .route(api::POISON, get(|State(s)| queues::held(s, Held::Poison)))
        .route(
            api::POISON_REQUEUE,
            post(|State(s), Path(id)| queues::requeue_held(s, Held::Poison, id)),
        )
        .route(api::AUDIT, get(audit::list))
        .route(api::GOVERNANCE, get(governance::get))
        .route(api::PROPOSAL, get(governance::proposal))
        .route(api::EVENTS, get(console::events))
        .route(api::CONSOLE, get(console::index))
        .route(api::CONSOLE_SCRIPT, get(console::script))
        .route(api::CONSOLE_STYLE, get(console::style))
        .route(
            api::CONSOLE_SESSION,
            get(console::session)
                .post(console::sign_in)
                .delete(console::sign_out),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            leader_only,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            auth::require,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            fail_fast,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            error::count_failures,
        ))
        .layer(axum::middleware::from_fn(console::headers))
        .with_state(shared)
}

/// One router for the whole process that hands each request to the
/// current term's (crate::service): a standby's, then a leader's.
pub(crate) fn switching(current: impl Fn() -> Router + Clone + Send + Sync + 'static) -> Router {
    Router::new().fallback(move |req: axum::extract::Request| {
        let router = current();
        async move {
            use tower::ServiceExt;
            match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        }
    })
}

/// Serves `app` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    http: crate::config::HttpConfig,
    app: Router,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let token = shutdown;
    let listener = listener::Limited::new(
        listener,
        http.max_connections,
        std::time::Duration::from_millis(http.idle_timeout_ms),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
    {
        error!("HTTP server stopped: {e}");
    }
}

/// How long a request may wait on Redis before it is answered with 503.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Seconds a client is asked to wait before retrying while Redis is out.
const RETRY_AFTER_S: u64 = 1;

/// The circuit breaker's side of HTTP (crate::breaker): while it is open,
/// every request that needs Redis is answered at once with 503 and
/// `Retry-After` (reads say that no current data can be served); and no
/// request waits on Redis longer than `REQUEST_TIMEOUT`. `/healthz`,
/// `/readyz` and `/metrics` are always served.
async fn fail_fast(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let always = [
        api::HEALTHZ,
        api::READYZ,
        api::METRICS,
        api::CONSOLE,
        api::CONSOLE_SCRIPT,
        api::CONSOLE_STYLE,
    ];
    if always.contains(&path) {
        return next.run(req).await;
    }
    if let Some(since) = s.breaker.open_since() {
        return redis_out(since);
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        // Timed out: unavailable since the request came in, as far as it knows.
        Err(_) => redis_out(
            s.breaker
                .open_since()
                .unwrap_or_else(|| fleet_protocol::now_ms() - REQUEST_TIMEOUT.as_millis() as u64),
        ),
    }
}

fn redis_out(since: u64) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": "redis_unavailable",
            "current": false,
            "detail": "Redis does not answer: nothing was changed, and no current data can be served",
            "unavailableSince": since,
            "retryAfterS": RETRY_AFTER_S,
        })),
    )
        .into_response();
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(RETRY_AFTER_S),
    );
    r
}

/// A standby serves reads; a write is refused with 503, `Retry-After`, and
/// the leader's address (`leader`), where the client should send it. (Not
/// forwarded: the client's token and its retry policy stay the client's,
/// and a write is never applied twice by a forward that timed out.)
async fn leader_only(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if s.is_leader()
        || matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        )
        || req.uri().path() == api::CONSOLE_SESSION
    {
        return next.run(req).await;
    }
    let view = s.ha.view();
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": "not_leader",
            "detail": "this commander stands by: send writes to the leader",
            "leader": view.leader,
            "retryAfterS": RETRY_AFTER_S,
        })),
    )
        .into_response();
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(RETRY_AFTER_S),
    );
    r
}
