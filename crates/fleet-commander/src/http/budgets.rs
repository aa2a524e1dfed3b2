//! `GET /v1/agents/{id}/budget`, `POST /v1/agents/{id}/budget`: an agent's
//! budget, and an operator's top-up, reset or own allowance (audited as
//! `budget`). A halted agent back above the minimum resumes at once.

use super::agents::agent_param;
use super::ApiError;
use crate::context::Shared;
use crate::metrics as m;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_store::budgets::{Adjust, Adjusted, Budget};
use serde::Deserialize;
use serde_json::{json, Value};
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

fn view(s: &Shared, id: &str, pool: fleet_protocol::PoolType, b: Option<Budget>) -> Json<Value> {
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
}

pub(super) async fn get(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    agent_param(&id)?;
    let mut conn = s.reads.clone();
    let Some(rec) = s.registry.agent(&mut conn, &id).await? else {
        return Err(ApiError::not_found(id));
    };
    let budget = s.registry.budget(&mut conn, &id).await?;
    Ok(view(&s, &id, rec.pool, budget))
}

/// `POST /v1/agents/{id}/budget` with exactly one of `{"topUp": X}`,
/// `{"reset": true}`, `{"allowance": X}`.
pub(super) async fn post(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<Change>, JsonRejection>,
) -> Result<Response, ApiError> {
    agent_param(&id)?;
    let Json(change) = body?;
    let adjust = change
        .adjust()
        .map_err(|why| ApiError::unprocessable("invalid_fields", why))?;
    let detail = match &adjust {
        Adjust::TopUp(v) => format!("topUp={v}"),
        Adjust::Reset => "reset".to_string(),
        Adjust::Allowance(v) => format!("allowance={v}"),
    };
    let mut r = apply(&s, &id, adjust).await?.into_response();
    r.extensions_mut().insert(super::auth::AuditDetail(detail));
    Ok(r)
}

async fn apply(s: &Shared, id: &str, adjust: Adjust) -> Result<Json<Value>, ApiError> {
    let mut conn = s.redis.clone();
    let now = fleet_protocol::now_ms();
    match s.registry.adjust_budget(&mut conn, id, adjust, now).await? {
        Adjusted::Done { budget, resume } => {
            metrics::counter!(m::BUDGET_TOPUPS).increment(1);
            let resumed = resume.is_some();
            if let Some(r) = resume {
                metrics::counter!(m::AGENTS_RESUMED).increment(1);
                info!(
                    agent_id = id,
                    "budget above its minimum again: agent resumed"
                );
                s.tell(&mut conn, vec![r]).await?;
                s.wake_all();
            }
            let mut v = json!({"agentId": id, "resumed": resumed, "balance": budget.balance,
                "allowance": budget.allowance, "spent": budget.spent,
                "windowEnds": budget.window_ends});
            v["unit"] = json!(s.config().budgets.unit);
            Ok(Json(v))
        }
        Adjusted::UnknownAgent => Err(ApiError::not_found(id)),
        Adjusted::NoBudget => Err(ApiError::conflict(
            "no_budget",
            "the agent's pool has no budget (allowance 0)",
        )),
    }
}
