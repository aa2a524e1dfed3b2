//! `GET /v1/audit?limit=N` (admins): the newest entries of the audit log,
//! newest first (100 by default, at most 10,000).

use super::ApiError;
use crate::context::Shared;
use axum::extract::{Query, State};
use axum::Json;
use fleet_store::audit::AuditEntry;
use std::collections::HashMap;
use std::sync::Arc;

pub(super) async fn list(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = super::lists::limit(&q, 100, 10_000);
    Ok(Json(
        fleet_store::audit::list(&mut s.reads.clone(), &s.keys, limit).await?,
    ))
}
