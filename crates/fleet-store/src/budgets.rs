//! Agents' budgets: what each may consume per window, debited with each
//! result (`lua/task_done.lua`); an agent below the minimum is halted. The
//! budget lives in its own hash (`Keys::budget`), so it outlives the
//! agent's registration.

use crate::registry::Registry;
use crate::scripts::BUDGET;
use crate::{Notice, Result};
use redis::aio::ConnectionLike;
use serde::Serialize;
use std::collections::HashMap;

/// An operator's change to an agent's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Adjust {
    /// Add this much to the balance.
    TopUp(f64),
    /// Balance back to the allowance; a new window from now.
    Reset,
    /// An allowance of the agent's own (instead of its pool's), and a reset.
    Allowance(f64),
}

/// An agent's budget as served.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    pub balance: f64,
    /// Its own allowance, if an operator gave it one (else its pool's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance: Option<f64>,
    /// Consumed in this window.
    pub spent: f64,
    /// When the window renews, ms since the epoch; 0: never.
    pub window_ends: u64,
}

/// What an adjustment did.
#[derive(Debug, Clone, PartialEq)]
pub enum Adjusted {
    Done {
        budget: Budget,
        /// The agent was halted and is not any more: the resume to send.
        resume: Option<Notice>,
    },
    UnknownAgent,
    /// The agent's pool has no budget (allowance 0).
    NoBudget,
}

impl Registry {
    /// The agent's budget as stored: `None` if it has none yet (a fresh
    /// one starts at its allowance with its first debit).
    pub async fn budget(&self, conn: &mut impl ConnectionLike, id: &str) -> Result<Option<Budget>> {
        let f: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys().budget(id))
            .query_async(conn)
            .await?;
        let n = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok());
        Ok(n("balance").map(|balance| Budget {
            balance,
            allowance: n("allowance"),
            spent: n("spent").unwrap_or(0.0),
            window_ends: n("windowEnds").unwrap_or(0.0) as u64,
        }))
    }

    /// Tops up, resets or sets an agent's budget; a halted agent back above
    /// the minimum resumes.
    pub async fn adjust_budget(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
        adjust: Adjust,
        now: u64,
    ) -> Result<Adjusted> {
        let (action, amount) = match adjust {
            Adjust::TopUp(a) => ("topup", a),
            Adjust::Reset => ("reset", 0.0),
            Adjust::Allowance(a) => ("allowance", a),
        };
        let r = self
            .call(&BUDGET, id)
            .arg("now", now)
            .arg("action", action)
            .arg("amount", amount)
            .reply(conn)
            .await?;
        Ok(match r.outcome()? {
            "ok" => Adjusted::Done {
                budget: Budget {
                    balance: r.float("balance")?,
                    allowance: Some(r.float("allowance")?),
                    spent: r.float("spent")?,
                    window_ends: r.num("windowEnds")?,
                },
                resume: r.notice(),
            },
            "unknown" => Adjusted::UnknownAgent,
            "no_budget" => Adjusted::NoBudget,
            _ => return Err(r.unexpected()),
        })
    }
}
