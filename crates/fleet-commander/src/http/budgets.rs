//! `GET /v1/agents/{id}/budget`, `POST /v1/agents/{id}/budget`: an agent's
//! budget, and an operator's top-up, reset or own allowance (audited as
//! `budget`). A halted agent back above the minimum resumes at once.

use super::{error, unavailable};
use crate::context::Shared;
use crate::metrics as m;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_protocol::valid_agent_id;
use fleet_store::budgets::{Adjust, Adjusted, Budget};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tracing::info;

/// The body of `POST /v1/agents/{id}/budget`: exactly one of the three.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Change {
    top_up: Option<f64>,
    #[serde(default)]
    reset: bool,
    allowance: Option<f64>,
}

impl Change {
    fn adjust(&self) -> Result<Adjust, &'static str> {
        let amount = |v: f64| {
            (0.0..=1e15)
                .contains(&v)
                .then_some(v)
                .ok_or("amounts are numbers 0..=1e15")
        };
        match (self.top_up, self.reset, self.allowance) {
            (Some(v), false, None) => Ok(Adjust::TopUp(amount(v)?)),
            (None, true, None) => Ok(Adjust::Reset),
            (None, false, Some(v)) => Ok(Adjust::Allowance(amount(v)?)),
            _ => Err("give exactly one of topUp, reset: true, allowance"),
        }
    }
}

fn view(s: &Shared, id: &str, pool: fleet_protocol::PoolType, b: Option<Budget>) -> Response {
    let config = s.config();
    let own = b.as_ref().and_then(|b| b.allowance);
    let allowance = own.unwrap_or(config.allowance(pool));
    Json(json!({
        "agentId": id,
        "unit": config.budgets.unit,
        "minBalance": config.budgets.min_balance,
        "allowance": allowance,
        "ownAllowance": own.is_some(),
        // None stored yet: the first debit starts it at the allowance.
        "balance": b.as_ref().map_or(allowance, |b| b.balance),
        "spent": b.as_ref().map_or(0.0, |b| b.spent),
        "windowEnds": b.as_ref().map_or(0, |b| b.window_ends),
    }))
    .into_response()
}

pub(super) async fn get(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if !valid_agent_id(&id) {
        return error(StatusCode::BAD_REQUEST, "invalid_agent_id", &id);
    }
    let mut conn = s.reads.clone();
    let rec = match s.registry.agent(&mut conn, &id).await {
        Ok(Some(rec)) => rec,
        Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", &id),
        Err(e) => return unavailable(e),
    };
    match s.registry.budget(&mut conn, &id).await {
        Ok(b) => view(&s, &id, rec.pool, b),
        Err(e) => unavailable(e),
    }
}

pub(super) async fn post(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(change): Json<Change>,
) -> Response {
    if !valid_agent_id(&id) {
        return error(StatusCode::BAD_REQUEST, "invalid_agent_id", &id);
    }
    let adjust = match change.adjust() {
        Ok(a) => a,
        Err(why) => return error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_fields", why),
    };
    let detail = match &adjust {
        Adjust::TopUp(v) => format!("topUp={v}"),
        Adjust::Reset => "reset".to_string(),
        Adjust::Allowance(v) => format!("allowance={v}"),
    };
    let mut r = apply(&s, &id, adjust).await;
    r.extensions_mut().insert(super::auth::AuditDetail(detail));
    r
}

async fn apply(s: &Shared, id: &str, adjust: Adjust) -> Response {
    let mut conn = s.redis.clone();
    let now = fleet_protocol::now_ms();
    match s.registry.adjust_budget(&mut conn, id, adjust, now).await {
        Ok(Adjusted::Done { budget, resume }) => {
            metrics::counter!(m::BUDGET_TOPUPS).increment(1);
            let resumed = resume.is_some();
            if let Some(r) = resume {
                metrics::counter!(m::AGENTS_RESUMED).increment(1);
                info!(
                    agent_id = id,
                    "budget above its minimum again: agent resumed"
                );
                if let Err(e) = s.tell(&mut conn, vec![r]).await {
                    return unavailable(e);
                }
                s.wake_all();
            }
            let mut v = json!({"agentId": id, "resumed": resumed, "balance": budget.balance,
                "allowance": budget.allowance, "spent": budget.spent,
                "windowEnds": budget.window_ends});
            v["unit"] = json!(s.config().budgets.unit);
            Json(v).into_response()
        }
        Ok(Adjusted::UnknownAgent) => error(StatusCode::NOT_FOUND, "not_found", id),
        Ok(Adjusted::NoBudget) => error(
            StatusCode::CONFLICT,
            "no_budget",
            "the agent's pool has no budget (allowance 0)",
        ),
        Err(e) => unavailable(e),
    }
}
