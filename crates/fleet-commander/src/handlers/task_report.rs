//! `task_ack`, `task_progress`, `task_complete`, `task_fail`: an agent's
//! report on the attempt it holds. A report for an attempt that is not
//! current (late, duplicated) is ignored and counted.

use super::{freed, wake};
use crate::context::Shared;
use crate::metrics as m;
use fleet_protocol::{now_ms, PoolType, ReportKind, TaskReport};
use fleet_store::tasks::ReportOutcome;
use fleet_store::{Once, StoreError};
use redis::aio::ConnectionManager;
use tracing::{debug, warn};

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut ConnectionManager,
    kind: ReportKind,
    r: TaskReport,
    once: Option<&Once>,
) -> Result<(), StoreError> {
    let pool = |p: Option<PoolType>| p.map(PoolType::as_str).unwrap_or("unknown");
    match shared.tasks.report(conn, kind, &r, now_ms(), once).await? {
        None => {
            metrics::counter!(m::RESULTS_IGNORED, "kind" => kind.as_str()).increment(1);
            debug!(task_id = %r.task_id, attempt = r.attempt, kind = kind.as_str(),
                "report for an attempt that is not current: ignored");
        }
        Some(ReportOutcome::Running) => {}
        Some(ReportOutcome::Completed(p)) => {
            metrics::counter!(m::TASKS_COMPLETED, "pool" => pool(p)).increment(1);
            freed(shared, p);
        }
        Some(ReportOutcome::Retrying(p)) => {
            metrics::counter!(m::TASKS_FAILED, "pool" => pool(p)).increment(1);
            metrics::counter!(m::TASKS_RETRIED, "pool" => pool(p)).increment(1);
            wake(shared, p);
        }
        Some(ReportOutcome::Dead(p)) => {
            metrics::counter!(m::TASKS_FAILED, "pool" => pool(p)).increment(1);
            metrics::counter!(m::TASKS_DEAD, "pool" => pool(p)).increment(1);
            warn!(task_id = %r.task_id, "task out of retries: dead-lettered");
            freed(shared, p);
        }
    }
    Ok(())
}
