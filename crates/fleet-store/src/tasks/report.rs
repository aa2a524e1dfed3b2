//! Agents' reports on an attempt: acknowledgement, progress, completion, failure.

use super::*;

/// What an agent's report did, and the halt to send the agent when its
/// budget fell below the minimum with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    pub outcome: Option<ReportOutcome>,
    pub halt: Option<Notice>,
}

/// What an agent's report did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportOutcome {
    Running,
    /// A `task_progress` whose step was not above the last: not progress.
    Repeated,
    Completed(Option<PoolType>),
    Retrying(Option<PoolType>),
    Dead(Option<PoolType>),
    /// The attempt consumed more than the task's `maxCost`: the task is
    /// dead-lettered as `over_budget`.
    OverBudget(Option<PoolType>),
    /// A re-sent result: this attempt had completed the task already.
    Recorded,
}

impl TaskStore {
    /// Applies an agent's report. `outcome` is `None` for a report about an
    /// attempt that is no longer current (duplicate or late): ignored.
    pub async fn report(
        &self,
        conn: &mut impl ConnectionLike,
        kind: ReportKind,
        r: &TaskReport,
        now: u64,
        once: Option<&Once>,
    ) -> Result<Reported> {
        let call = match kind {
            ReportKind::Ack | ReportKind::Progress => TASK_ACK
                .fenced(&self.keys, self.epoch)
                .key("task", self.keys.task(&r.task_id))
                .key("leases", self.keys.leases())
                .key("stalls", self.keys.stalls())
                .key("settings", self.keys.settings())
                .arg(
                    "progress",
                    r.progress.map(|p| p.to_string()).unwrap_or_default(),
                )
                .arg("step", r.step.map(|s| s.to_string()).unwrap_or_default()),
            ReportKind::Complete | ReportKind::Fail => {
                let (outcome, detail) = match kind {
                    ReportKind::Complete => (
                        "completed",
                        r.result.as_ref().map_or("null", RawJson::get).to_string(),
                    ),
                    _ => ("failed", r.error.clone().unwrap_or_default()),
                };
                TASK_DONE
                    .fenced(&self.keys, self.epoch)
                    .key("task", self.keys.task(&r.task_id))
                    .task_keys(&self.keys)
                    .arg("outcome", outcome)
                    .arg("detail", detail)
                    .arg("usage", r.usage.map(|u| u.to_string()).unwrap_or_default())
                    .arg("retention_ms", self.cfg.retention_ms)
                    .arg("backoff_ms", self.cfg.retry_backoff_ms)
                    .arg("backoff_max_ms", self.cfg.retry_backoff_max_ms)
            }
        };
        let reply = call
            .once(&self.keys, once)
            .arg("id", &r.task_id)
            .arg("attempt", r.attempt)
            .arg("agent_id", &r.agent_id)
            .arg("now", now)
            .reply(conn)
            .await?;
        let pool = || reply.pool("pool").ok();
        let outcome = match reply.outcome()? {
            "ok" => Some(ReportOutcome::Running),
            "repeated" => Some(ReportOutcome::Repeated),
            "completed" => Some(ReportOutcome::Completed(pool())),
            "retrying" => Some(ReportOutcome::Retrying(pool())),
            "dead" if reply.text("overBudget").is_ok() => Some(ReportOutcome::OverBudget(pool())),
            "dead" => Some(ReportOutcome::Dead(pool())),
            "recorded" => Some(ReportOutcome::Recorded),
            "stale" => None,
            _ => return Err(reply.unexpected()),
        };
        Ok(Reported {
            outcome,
            halt: reply.notice(),
        })
    }
}
