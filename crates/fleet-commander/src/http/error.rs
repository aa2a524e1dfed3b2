//! [`ApiError`]: every refusal and failure an HTTP handler answers with, as
//! `{"error": "<code>", "detail": "..."}` and its status. Turning one into a
//! response is pure: a Redis failure is only *carried* in the response's
//! extensions, and [`count_failures`], a layer, counts and logs it once (as
//! in axum's error-handling example). Handlers return
//! `Result<Json<T>, ApiError>` and use `?`.

use crate::context::Shared;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_store::StoreError;
use serde_json::json;
use std::sync::Arc;
use tracing::warn;

/// A refusal (4xx) or failure (5xx) of one request.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    /// A stable code clients match on (`not_found`, `invalid_task_id`, ...).
    error: &'static str,
    /// For people: what was wrong, or what to do.
    detail: String,
    /// The store error behind a 503, for [`count_failures`].
    cause: Option<Arc<StoreError>>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: &'static str, detail: impl ToString) -> Self {
        ApiError {
            status,
            error,
            detail: detail.to_string(),
            cause: None,
        }
    }

    /// 400: the request cannot mean anything (a malformed id or body).
    pub(crate) fn bad_request(error: &'static str, detail: impl ToString) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, detail)
    }

    /// 404 `not_found`: nothing by that name.
    pub(crate) fn not_found(what: impl ToString) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 409: the thing is not in a state that allows it.
    pub(crate) fn conflict(error: &'static str, detail: impl ToString) -> Self {
        Self::new(StatusCode::CONFLICT, error, detail)
    }

    /// 422: well-formed, but not something that can be done.
    pub(crate) fn unprocessable(error: &'static str, detail: impl ToString) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, error, detail)
    }

    /// The same, under another code.
    pub(crate) fn with_error(mut self, error: &'static str) -> Self {
        self.error = error;
        self
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The same, its detail saying what it is about (`task 3: ...`).
    pub(crate) fn about(mut self, what: &str) -> Self {
        self.detail = format!("{what}: {}", self.detail);
        self
    }

    /// Whether Redis failed under the request (not a refusal).
    pub(crate) fn is_failure(&self) -> bool {
        self.cause.is_some()
    }

    /// The body as answered: `{"error", "detail"}` (an item of a batch's answer).
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({"error": self.error, "detail": self.detail})
    }
}

/// Redis failed under the request: 503 (`fenced` when another commander took
/// over, as a client should then go to the new leader).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (error, detail) = match &e {
            StoreError::Fenced => ("fenced", "another commander took over".to_string()),
            other => ("redis_unavailable", other.to_string()),
        };
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error,
            detail,
            cause: Some(Arc::new(e)),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::from(e).into()
    }
}

/// A body that is not the JSON asked for: 413 `too_large` over the body
/// limit, otherwise 400 `invalid_body` with what serde said.
impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text())
        } else {
            Self::bad_request("invalid_body", e.body_text())
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::bad_request("invalid_path", e.body_text())
    }
}

/// The store error a response carries, for [`count_failures`].
#[derive(Clone)]
struct Failure(Arc<StoreError>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(cause) = self.cause {
            r.extensions_mut().insert(Failure(cause));
        }
        r
    }
}

/// The layer that counts (`fleet_redis_errors_total{op="http"}`) and logs
/// each request that failed on Redis, and steps down on `fenced`.
pub(crate) async fn count_failures(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A shared buffer's count, not a copy: this runs for every request.
    let uri = req.uri().clone();
    let r = next.run(req).await;
    if let Some(Failure(e)) = r.extensions().get::<Failure>() {
        crate::metrics::redis_error("http", e);
        warn!(reason = e.reason(), error = %e, path = uri.path(), "HTTP request failed on Redis");
        if matches!(**e, StoreError::Fenced) {
            s.on_fenced();
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    async fn answer(e: ApiError) -> (StatusCode, serde_json::Value, bool) {
        // Served through a router, as a handler's error is.
        let app = Router::new().route(
            "/",
            get(move || {
                let e = ApiError {
                    status: e.status,
                    error: e.error,
                    detail: e.detail.clone(),
                    cause: e.cause.clone(),
                };
                async move { Err::<(), _>(e) }
            }),
        );
        let req = axum::http::Request::get("/")
            .body(axum::body::Body::empty())
            .unwrap();
        let r = app.oneshot(req).await.unwrap();
        let status = r.status();
        let carried = r.extensions().get::<Failure>().is_some();
        let body = to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap(), carried)
    }

    #[tokio::test]
    async fn each_error_maps_to_its_status_and_code() {
        let (st, v, carried) = answer(ApiError::not_found("t-1")).await;
        assert_eq!(
            (st, &v["error"], &v["detail"]),
            (StatusCode::NOT_FOUND, &json!("not_found"), &json!("t-1"))
        );
        assert!(!carried, "a refusal is not a failure");
        let (st, v, _) = answer(ApiError::bad_request("invalid_task_id", "x")).await;
        assert_eq!(
            (st, &v["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_task_id"))
        );
        let (st, v, _) = answer(ApiError::conflict("not_cancellable", "done")).await;
        assert_eq!(
            (st, &v["error"]),
            (StatusCode::CONFLICT, &json!("not_cancellable"))
        );
        let (st, _, _) = answer(ApiError::unprocessable("out_of_bounds", "9")).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[tokio::test]
    async fn a_store_failure_is_a_503_that_carries_its_cause() {
        let e: ApiError = StoreError::Reply("boom".into()).into();
        let (st, v, carried) = answer(e).await;
        assert_eq!(
            (st, &v["error"]),
            (StatusCode::SERVICE_UNAVAILABLE, &json!("redis_unavailable"))
        );
        assert!(carried, "the layer must see the cause to count it");
        let (st, v, carried) = answer(StoreError::Fenced.into()).await;
        assert_eq!(
            (st, &v["error"]),
            (StatusCode::SERVICE_UNAVAILABLE, &json!("fenced"))
        );
        assert!(carried);
    }

    #[tokio::test]
    async fn extractors_reject_into_it() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[allow(dead_code)]
            n: u32,
        }
        let app = Router::new().route(
            "/",
            axum::routing::post(|b: Result<Json<Body>, JsonRejection>| async move {
                b.map(|_| "ok").map_err(ApiError::from)
            }),
        );
        for (body, status, code) in [
            ("{\"n\": \"x\"}", StatusCode::BAD_REQUEST, "invalid_body"),
            ("not json", StatusCode::BAD_REQUEST, "invalid_body"),
        ] {
            let req = axum::http::Request::post("/")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .unwrap();
            let r = app.clone().oneshot(req).await.unwrap();
            assert_eq!(r.status(), status, "{body}");
            let v: serde_json::Value =
                serde_json::from_slice(&to_bytes(r.into_body(), 1 << 20).await.unwrap()).unwrap();
            assert_eq!(v["error"], code, "{body}");
        }
    }
}
