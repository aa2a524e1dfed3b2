//! Governance: `GET /v1/governance` (the validators, the governed actions,
//! the newest proposals) and one proposal with its votes and seal.

use super::tasks::task_param;
use super::ApiError;
use crate::context::Shared;
use axum::extract::{Path, State};
use axum::Json;
use fleet_store::governance::Record;
use serde_json::{json, Value};
use std::sync::Arc;

/// `GET /v1/governance`: the validators (n, f = (n-1)/3, live), the
/// governed actions and the newest proposals.
pub(super) async fn get(State(s): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let mut conn = s.reads.clone();
    let v = crate::governance::validators(&s, &mut conn).await?;
    let proposals = s.governance.list(&mut conn, 50).await?;
    let g = s.config().governance.clone();
    Ok(Json(json!({
        "validators": v.count(), "live": v.live, "totalWeight": v.total_weight(),
        "liveWeight": v.live_weight, "tolerance": v.tolerance(), "weights": v.weights,
        "actions": g.actions, "quorum": g.quorum, "deadlineMs": g.deadline_ms,
        "proposals": proposals,
    })))
}

/// `GET /v1/governance/proposals/{id}`: a proposal, its votes as signed, its
/// outcome and seal.
pub(super) async fn proposal(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Record>, ApiError> {
    task_param(&id).map_err(|e| e.with_error("invalid_proposal_id"))?;
    match s.governance.get(&mut s.reads.clone(), &id).await? {
        Some(r) => Ok(Json(r)),
        None => Err(ApiError::not_found(id)),
    }
}
