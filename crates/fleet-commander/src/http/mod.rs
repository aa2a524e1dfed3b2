//! The HTTP API: fleet status, pools, agents, tasks, liveness, readiness,
//! metrics, history. Connections are capped and idle ones closed
//! ([`listener`]); a body over `fleet.max_message_bytes` is refused with
//! 413; requests need a bearer token of the right role ([`auth`]). The
//! lists are in [`lists`], budgets in [`budgets`], operators' actions on
//! queues and dead letters in [`queues`], the console in [`console`].

mod auth;
mod budgets;
mod console;
mod listener;
mod lists;
mod queues;

use crate::context::Shared;
use crate::metrics as m;
use axum::extract::rejection::JsonRejection;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_protocol::status::Fairness;
use fleet_protocol::task::valid_task_id;
use fleet_protocol::task::Submission;
use fleet_protocol::valid_agent_id;
use fleet_store::tasks::Held;
use fleet_store::tasks::{Cancelled, Submitted};
use fleet_store::StoreError;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tracing::{error, warn};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let body_limit = shared.config().fleet.max_message_bytes;
    Router::new()
        .route("/v1/fleet", get(fleet))
        .route("/v1/pools", get(pools))
        .route("/v1/agents", get(lists::agents))
        .route("/v1/agents/{id}", get(agent))
        .route("/v1/agents/{id}/drain", post(drain_agent))
        .route(
            "/v1/agents/{id}/budget",
            get(budgets::get).post(budgets::post),
        )
        .route("/v1/pools/{pool}/drain", post(drain_pool))
        .route("/v1/pools/{pool}/size", post(set_pool_size))
        .route(
            "/v1/pools/{pool}/pause",
            post(|State(s), Path(p)| queues::pause(s, p, true)),
        )
        .route(
            "/v1/pools/{pool}/resume",
            post(|State(s), Path(p)| queues::pause(s, p, false)),
        )
        .route("/v1/pools/{pool}/clear", post(queues::clear))
        .route(
            "/v1/dead-letters/requeue",
            post(|State(s), body| queues::bulk(s, body, false)),
        )
        .route(
            "/v1/dead-letters/delete",
            post(|State(s), body| queues::bulk(s, body, true)),
        )
        .route("/v1/tasks", post(submit_task).get(lists::tasks))
        .route("/v1/scaling", get(lists::scaling))
        .route("/v1/tasks/{id}", get(task))
        .route("/v1/tasks/{id}/cancel", post(cancel_task))
        .route("/v1/tasks/{id}/evidence", get(task_evidence))
        .route("/v1/dead-letters", get(|State(s)| held(s, Held::Dead)))
        .route(
            "/v1/dead-letters/{id}/requeue",
            post(|State(s), Path(id)| requeue_held(s, Held::Dead, id)),
        )
        .route("/v1/poison", get(|State(s)| held(s, Held::Poison)))
        .route(
            "/v1/poison/{id}/requeue",
            post(|State(s), Path(id)| requeue_held(s, Held::Poison, id)),
        )
        .route("/v1/audit", get(audit_log))
        .route("/v1/departed", get(departed))
        .route("/v1/commanders", get(commanders))
        .route(
            "/v1/history",
            get(|State(s): State<Arc<Shared>>| async move {
                Json(json!({
                    "intervalMs": s.config().fleet.status_interval_ms,
                    "samples": s.history.samples(),
                }))
            }),
        )
        .route("/v1/governance", get(governance))
        .route("/v1/governance/proposals/{id}", get(proposal))
        .route("/v1/events", get(console::events))
        .route("/", get(console::index))
        .route("/console/app.js", get(console::script))
        .route("/console/app.css", get(console::style))
        .route(
            "/console/session",
            get(console::session)
                .post(console::sign_in)
                .delete(console::sign_out),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
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

/// `GET /v1/audit?limit=N` (admins): the newest entries of the audit log,
/// newest first (100 by default, at most 10,000).
async fn audit_log(
    State(s): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let limit = lists::limit(&q, 100, 10_000);
    match fleet_store::audit::list(&mut s.reads.clone(), &s.keys, limit).await {
        Ok(entries) => Json(entries).into_response(),
        Err(e) => unavailable(e),
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
    if matches!(
        req.uri().path(),
        "/healthz" | "/readyz" | "/metrics" | "/" | "/console/app.js" | "/console/app.css"
    ) {
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

/// A store error, counted and logged here where it is handled, as a 503.
fn unavailable(e: StoreError) -> Response {
    crate::supervise::count("http", &e);
    warn!(reason = e.reason(), error = %e, "HTTP request failed on Redis");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "redis_unavailable", "detail": e.to_string()})),
    )
        .into_response()
}

async fn fleet(State(s): State<Arc<Shared>>) -> Response {
    let started = Instant::now();
    let mut conn = s.reads.clone();
    match s.fleet_status(&mut conn).await {
        Ok(status) => {
            metrics::histogram!(m::STATUS_QUERY_SECONDS).record(started.elapsed());
            Json(status).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn pools(State(s): State<Arc<Shared>>) -> Response {
    let mut conn = s.reads.clone();
    let mut conn2 = conn.clone();
    let mut conn3 = conn.clone();
    let mut conn4 = conn.clone();
    let (counts, fair, queued, paused) = match tokio::try_join!(
        s.registry.counts(&mut conn2),
        s.tasks.fairness_inputs(&mut conn),
        s.tasks.queue_depths(&mut conn3),
        s.tasks.paused(&mut conn4)
    ) {
        Ok(x) => x,
        Err(e) => return unavailable(e),
    };
    let mut views = crate::status::pools(&s.config(), &counts);
    for (view, c) in views.iter_mut().zip(fair) {
        view.fairness = Some(Fairness::compute(
            c.agents,
            c.fewest,
            c.most,
            c.total,
            s.config().tasks.max_skew,
        ));
    }
    // Each pool's queue depth beside its view (`queued`), and since when
    // an operator paused its queue (`pausedAt`, absent: running).
    let views: Vec<serde_json::Value> = views
        .into_iter()
        .zip(queued)
        .map(|(v, q)| {
            let mut v = serde_json::to_value(v).unwrap_or_default();
            v["queued"] = json!(q);
            if let Some(at) = v["type"].as_str().and_then(|p| paused.get(p)) {
                v["pausedAt"] = json!(at);
            }
            v
        })
        .collect();
    Json(views).into_response()
}

/// `GET /v1/departed?limit=N`: agents that left lately, newest first (at
/// most 1,000, each kept for `tasks.health_memory_ms`).
async fn departed(
    State(s): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100usize)
        .min(1000);
    match s.registry.departed(&mut s.reads.clone(), limit).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn agent(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if !valid_agent_id(&id) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_agent_id"})),
        )
            .into_response();
    }
    let mut conn = s.reads.clone();
    match s.registry.agent(&mut conn, &id).await {
        Ok(Some(rec)) => Json(rec).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response(),
        Err(e) => unavailable(e),
    }
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
        || req.uri().path() == "/console/session"
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

/// `GET /v1/commanders`: who leads (the lease), and every commander heard
/// from within a lease, with its role, epoch, address and last renewal.
async fn commanders(State(s): State<Arc<Shared>>) -> Response {
    let mut conn = s.reads.clone();
    let mut conn2 = conn.clone();
    let fresh = s.config().ha.lease_ms;
    let (holder, list) = match tokio::try_join!(
        fleet_store::lease::holder(&mut conn2, &s.keys),
        fleet_store::lease::commanders(&mut conn, &s.keys, fleet_protocol::now_ms(), fresh)
    ) {
        Ok(x) => x,
        Err(e) => return unavailable(e),
    };
    Json(json!({
        "leader": holder.map(|h| json!({"id": h.id, "epoch": h.epoch})),
        "self": s.ha.id(),
        "commanders": list,
    }))
    .into_response()
}

/// Ready when Redis answers and, for the leader, when subscribed to the
/// agent channels (a standby serves reads without listening). Says which.
async fn ready(State(s): State<Arc<Shared>>) -> Response {
    let mut conn = s.redis.clone();
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(&mut conn);
    let redis_ok = match tokio::time::timeout(std::time::Duration::from_secs(1), ping).await {
        Ok(r) => r
            .map_err(|e| crate::supervise::count("readyz", &StoreError::Redis(e)))
            .is_ok(),
        Err(_) => false,
    };
    let listening = s.is_listening();
    let ready = redis_ok && (listening || !s.is_leader());
    let view = s.ha.view();
    let body = Json(
        json!({"ready": ready, "redis": redis_ok, "redisServer": s.redis.server(), "listening": listening,
            "role": view.role.as_str(), "epoch": view.epoch, "id": s.ha.id(),
            "leader": view.leader,
            "breaker": if s.breaker.open_since().is_some() { "open" } else { "closed" },
            "security": s.gate.mode().as_str()}),
    );
    if ready {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics_text(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics::render(&s.metrics),
    )
}

/// `POST /v1/agents/{id}/drain`: no new tasks; the agent finishes what it
/// holds, then deregisters.
async fn drain_agent(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if !valid_agent_id(&id) {
        return error(StatusCode::BAD_REQUEST, "invalid_agent_id", &id);
    }
    let now = fleet_protocol::now_ms();
    match s.drain(&mut s.redis.clone(), &id, now, "operator").await {
        Ok(Some((pool, holding))) => {
            metrics::counter!(m::AGENTS_DRAINED, "pool" => pool.as_str(), "reason" => "operator")
                .increment(1);
            Json(json!({"draining": true, "agentId": id, "pool": pool, "tasksInHand": holding}))
                .into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", &id),
        Err(e) => unavailable(e),
    }
}

fn pool_param(name: &str) -> Result<fleet_protocol::pool::PoolType, Box<Response>> {
    name.parse()
        .map_err(|_| Box::new(error(StatusCode::NOT_FOUND, "unknown_pool", name)))
}

/// `POST /v1/pools/{pool}/drain`: drains every agent of the pool (the scaler
/// then replaces them up to the pool's minimum: a rolling restart). When
/// `[governance] actions` names `drain_pool`, it becomes a proposal to the
/// validators instead: 202 with the proposal, or 409 if the quorum cannot
/// be reached now.
async fn drain_pool(
    State(s): State<Arc<Shared>>,
    Path(pool): Path<String>,
    actor: Option<axum::Extension<auth::Actor>>,
) -> Response {
    let pool = match pool_param(&pool) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if s.config().governance.governs("drain_pool") {
        return proposed(&s, actor, "drain_pool", json!({"pool": pool})).await;
    }
    match crate::governance::drain_pool(&s, pool, "operator").await {
        Ok(drained) => Json(json!({"pool": pool, "draining": drained})).into_response(),
        Err(e) => unavailable(e),
    }
}

/// A governed action asked for: 202 with the proposal opened for it, or 409
/// when the live validators cannot reach the quorum now.
async fn proposed(
    s: &Shared,
    actor: Option<axum::Extension<auth::Actor>>,
    action: &str,
    params: serde_json::Value,
) -> Response {
    let proposer = actor.map_or_else(|| "anonymous".into(), |a| a.0 .0.clone());
    let pool = params["pool"].clone();
    match crate::governance::propose(s, action, params, &proposer).await {
        Ok(Ok(opened)) => (
            StatusCode::ACCEPTED,
            Json(json!({"pool": pool, "proposal": opened})),
        )
            .into_response(),
        Ok(Err(why)) => error(StatusCode::CONFLICT, "quorum_unreachable", why),
        Err(e) => unavailable(e),
    }
}

/// `GET /v1/governance`: the validators (n, f = (n-1)/3, live), the
/// governed actions and the newest proposals.
async fn governance(State(s): State<Arc<Shared>>) -> Response {
    let mut conn = s.reads.clone();
    let v = match crate::governance::validators(&s, &mut conn).await {
        Ok(v) => v,
        Err(e) => return unavailable(e),
    };
    let proposals = match s.governance.list(&mut conn, 50).await {
        Ok(p) => p,
        Err(e) => return unavailable(e),
    };
    let g = s.config().governance.clone();
    Json(json!({
        "validators": v.count(), "live": v.live, "totalWeight": v.total_weight(),
        "liveWeight": v.live_weight, "tolerance": v.tolerance(), "weights": v.weights,
        "actions": g.actions, "quorum": g.quorum, "deadlineMs": g.deadline_ms,
        "proposals": proposals,
    }))
    .into_response()
}

/// `GET /v1/governance/proposals/{id}`: a proposal, its votes as signed, its
/// outcome and seal.
async fn proposal(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if !valid_task_id(&id) {
        return error(StatusCode::BAD_REQUEST, "invalid_proposal_id", &id);
    }
    match s.governance.get(&mut s.reads.clone(), &id).await {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", &id),
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/pools/{pool}/size` with `{"agents": N}` fixes the pool's size
/// (within its bounds) until `{"auto": true}` hands it back to the scaler.
async fn set_pool_size(
    State(s): State<Arc<Shared>>,
    Path(pool): Path<String>,
    actor: Option<axum::Extension<auth::Actor>>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let pool = match pool_param(&pool) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let Ok(Json(body)) = body else {
        return error(StatusCode::BAD_REQUEST, "invalid_body", "expected JSON");
    };
    let config = s.config();
    let pc = config.pool(pool);
    let mut conn = s.redis.clone();
    let key = s.keys.manual_sizes();
    let r = if body["auto"] == true {
        redis::cmd("HDEL")
            .arg(&key)
            .arg(pool.as_str())
            .query_async::<()>(&mut conn)
            .await
            .map(|_| json!({"pool": pool, "size": "auto"}))
            .map_err(StoreError::from)
    } else {
        let Some(n) = body["agents"].as_u64() else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "expected {\"agents\": N} or {\"auto\": true}",
            );
        };
        if n < u64::from(pc.min_agents) || n > u64::from(pc.max_agents) {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "out_of_bounds",
                format!(
                    "pool {pool} takes {}..={} agents, asked {n}",
                    pc.min_agents, pc.max_agents
                ),
            );
        }
        // Past the threshold, a governed size waits for the validators.
        let g = &config.governance;
        if g.governs("scale_pool") && n > u64::from(g.scale_threshold) {
            let params = json!({"pool": pool, "agents": n});
            return proposed(&s, actor, "scale_pool", params).await;
        }
        crate::governance::set_size(&s, pool, n)
            .await
            .map(|_| json!({"pool": pool, "size": n}))
    };
    match r {
        Ok(v) => {
            let detail = match &v["size"] {
                serde_json::Value::String(auto) => format!("size={auto}"),
                n => format!("agents={n}"),
            };
            let mut r = Json(v).into_response();
            r.extensions_mut().insert(auth::AuditDetail(detail));
            r
        }
        Err(e) => unavailable(e),
    }
}

fn error(code: StatusCode, error: &str, detail: impl std::fmt::Display) -> Response {
    (
        code,
        Json(json!({"error": error, "detail": detail.to_string()})),
    )
        .into_response()
}

/// `POST /v1/tasks`: 201 with the task once it is persisted; 200 with the
/// same task for a repeated `clientId`; 422 with the reason if it can never run.
async fn submit_task(
    State(s): State<Arc<Shared>>,
    body: Result<Json<Submission>, JsonRejection>,
) -> Response {
    let Json(sub) = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            metrics::counter!(m::TASKS_REJECTED, "reason" => "too_large").increment(1);
            return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text());
        }
        Err(e) => {
            metrics::counter!(m::TASKS_REJECTED, "reason" => "invalid_fields").increment(1);
            return error(StatusCode::BAD_REQUEST, "invalid_fields", e.body_text());
        }
    };
    let mut conn = s.redis.clone();
    let id = match crate::handlers::task_submit::submit(&s, &mut conn, &sub).await {
        Ok(Ok(Submitted::Accepted(t))) => {
            // The record as persisted: no need to read it back.
            return (
                StatusCode::CREATED,
                Json(SubmitAnswer {
                    task: &t,
                    duplicate: false,
                }),
            )
                .into_response();
        }
        Ok(Ok(Submitted::Duplicate(id))) => id,
        Ok(Err((reason, detail))) => {
            let status = match reason {
                // On the primary, not yet safe from a failover: retry.
                fleet_protocol::task::SubmitRefusal::NotReplicated => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            return error(status, reason.as_str(), detail);
        }
        Err(StoreError::Fenced) => {
            s.on_fenced();
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "fenced",
                "another commander took over",
            );
        }
        Err(e) => return unavailable(e),
    };
    match s.tasks.get(&mut conn, &id).await {
        Ok(Some(t)) => {
            let body = SubmitAnswer {
                task: &t,
                duplicate: true,
            };
            (StatusCode::OK, Json(body)).into_response()
        }
        Ok(None) => (
            StatusCode::OK,
            Json(json!({"taskId": id, "duplicate": true})),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/tasks`'s answer: the task as persisted, serialised as a struct so
/// that its payload keeps its bytes (a `json!` value would re-serialise it).
#[derive(serde::Serialize)]
struct SubmitAnswer<'a> {
    task: &'a fleet_protocol::task::TaskRecord,
    duplicate: bool,
}

async fn task(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if !valid_task_id(&id) {
        return error(StatusCode::BAD_REQUEST, "invalid_task_id", &id);
    }
    match s.tasks.get(&mut s.reads.clone(), &id).await {
        Ok(Some(t)) => Json(t).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", &id),
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/tasks/{id}/cancel`: a task that has not finished. A running one
/// is taken from its agent (told with `task_cancel`), whose slot frees at once.
async fn cancel_task(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if !valid_task_id(&id) {
        return error(StatusCode::BAD_REQUEST, "invalid_task_id", &id);
    }
    let mut conn = s.redis.clone();
    let task = match s.tasks.get(&mut conn, &id).await {
        Ok(Some(t)) => t,
        Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", &id),
        Err(e) => return unavailable(e),
    };
    match s
        .tasks
        .cancel(&mut conn, &id, task.pool, fleet_protocol::now_ms())
        .await
    {
        Ok(Cancelled::Cancelled(notice)) => {
            if let Err(e) = s.tell(&mut conn, notice.into_iter().collect()).await {
                return unavailable(e);
            }
            metrics::counter!(m::TASKS_CANCELLED).increment(1);
            s.wake_pool(task.pool);
            Json(json!({"cancelled": true, "taskId": id})).into_response()
        }
        Ok(Cancelled::Unknown) => error(StatusCode::NOT_FOUND, "not_found", &id),
        Ok(Cancelled::NotCancellable(state)) => error(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!("task is {state}"),
        ),
        Err(e) => unavailable(e),
    }
}

/// `GET /v1/dead-letters` (tasks out of retries) and `GET /v1/poison`
/// (tasks that took down `tasks.poison_after` agents): most recent first,
/// at most 500.
async fn held(s: Arc<Shared>, which: Held) -> Response {
    match s.tasks.held(&mut s.reads.clone(), which, 500).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/dead-letters/{id}/requeue`, `POST /v1/poison/{id}/requeue`:
/// back to its queue with fresh retries (and no casualties).
async fn requeue_held(s: Arc<Shared>, which: Held, id: String) -> Response {
    if !valid_task_id(&id) {
        return error(StatusCode::BAD_REQUEST, "invalid_task_id", &id);
    }
    match s
        .tasks
        .requeue_held(&mut s.redis.clone(), which, &id, fleet_protocol::now_ms())
        .await
    {
        Ok(Ok(())) => {
            s.wake_all();
            Json(json!({"requeued": true, "taskId": id})).into_response()
        }
        Ok(Err(state)) => {
            let reason = match which {
                Held::Dead => "not_dead",
                Held::Poison => "not_poison",
            };
            error(StatusCode::CONFLICT, reason, format!("task is {state}"))
        }
        Err(e) => unavailable(e),
    }
}

/// `GET /v1/tasks/{id}/evidence`: every allocation decision for the task,
/// with the strategy, the chosen agent's score and the reason.
async fn task_evidence(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if !valid_task_id(&id) {
        return error(StatusCode::BAD_REQUEST, "invalid_task_id", &id);
    }
    match s.tasks.evidence(&mut s.reads.clone(), &id).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => unavailable(e),
    }
}
