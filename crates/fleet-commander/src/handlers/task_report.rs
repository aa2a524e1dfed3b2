//! `task_ack`, `task_progress`, `task_complete`, `task_fail`: an agent's
//! report on the attempt it holds. A report for an attempt that is not
//! current (late, duplicated) is ignored and counted. Every result is
//! acknowledged (`result_ack`), after its script has stored it: agents
//! re-send a result until then, so one published while no commander
//! listened (a restart, a takeover) is not lost.

use super::{freed, wake};
use crate::context::Shared;
use crate::metrics as m;
use fleet_protocol::{now_ms, PoolType, ReportKind, TaskReport, ToAgent, VERSION};
use fleet_store::connection::Conn;
use fleet_store::tasks::ReportOutcome;
use fleet_store::{Once, StoreError};
use tracing::{debug, warn};

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut Conn,
    kind: ReportKind,
    r: TaskReport,
    once: Option<&Once>,
) -> Result<(), StoreError> {
    let result = matches!(kind, ReportKind::Complete | ReportKind::Fail);
    let ack = |recorded| {
        let channel = shared.keys.channels().agent(&r.agent_id);
        let ack = ToAgent::ResultAck {
            v: VERSION,
            task_id: r.task_id.clone(),
            attempt: r.attempt,
            recorded,
        };
        let sealed = shared.seal(&channel, crate::context::json(&ack));
        (channel, sealed)
    };
    // The ack goes after the script's reply, not from inside the script:
    // published with the write, it reached agents before a replica had the
    // write, and a Sentinel failover then lost results already acknowledged
    // (the task ran twice: tests/it/sentinel.rs). With durability
    // `replicated` it waits for the replicas too.
    // With durability `replicated`, on the connection whose writes WAIT
    // confirms (so that the wait holds up no other handler).
    let mut replicated = shared.submit_conn.clone();
    let reported = shared
        .tasks
        .report(
            replicated.as_mut().unwrap_or(conn),
            kind,
            &r,
            now_ms(),
            once,
        )
        .await?;
    let outcome = reported.outcome;
    // Debited once per attempt: not for a re-sent result (`Recorded`).
    let debited = matches!(
        outcome,
        Some(
            ReportOutcome::Completed(_)
                | ReportOutcome::Retrying(_)
                | ReportOutcome::Dead(_)
                | ReportOutcome::OverBudget(_)
        )
    );
    if let Some(u) = r.usage.filter(|_| debited) {
        metrics::counter!(m::BUDGET_USAGE).increment(u.ceil() as u64);
    }
    if let Some(halt) = reported.halt {
        metrics::counter!(m::AGENTS_HALTED).increment(1);
        warn!(agent_id = %r.agent_id, "budget below its minimum: agent halted");
        shared.tell(conn, vec![halt]).await?;
    }
    if result {
        // Not acknowledged until the replicas have it (durability
        // `replicated`): the agent re-sends it, and the copy is acknowledged.
        let confirmed = match replicated.as_mut() {
            Some(c) => shared.replicas_have(c).await?,
            None => true,
        };
        if !confirmed {
            warn!(task_id = %r.task_id, "result not yet on enough replicas: not acknowledged");
            counted(shared, kind, &r, outcome);
            return Ok(());
        }
        // Read (and stored, if it counted): the agent may stop re-sending.
        let (channel, sealed) = ack(outcome.is_some());
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(sealed)
            .query_async::<()>(conn)
            .await?;
    }
    counted(shared, kind, &r, outcome);
    Ok(())
}

/// Counts what the report did, logs what deserves it, and wakes the
/// allocator where a slot freed or a task came back.
fn counted(shared: &Shared, kind: ReportKind, r: &TaskReport, outcome: Option<ReportOutcome>) {
    let pool = |p: Option<PoolType>| p.map(PoolType::as_str).unwrap_or("unknown");
    match outcome {
        Some(ReportOutcome::Recorded) => {
            // A duplicate changes nothing (and is counted as such); its ack
            // says recorded because its first copy counted.
            metrics::counter!(m::RESULTS_IGNORED, "kind" => kind.as_str()).increment(1);
            debug!(task_id = %r.task_id, attempt = r.attempt, "result re-sent: already recorded");
        }
        None => {
            metrics::counter!(m::RESULTS_IGNORED, "kind" => kind.as_str()).increment(1);
            debug!(task_id = %r.task_id, attempt = r.attempt, kind = kind.as_str(),
                "report for an attempt that is not current: ignored");
        }
        Some(ReportOutcome::Running) => {}
        Some(ReportOutcome::Repeated) => {
            metrics::counter!(m::PROGRESS_REPEATED).increment(1);
            debug!(task_id = %r.task_id, attempt = r.attempt, step = ?r.step,
                "progress with a step already reported: not progress");
        }
        Some(ReportOutcome::Completed(p)) => {
            metrics::counter!(m::TASKS_COMPLETED, "pool" => pool(p)).increment(1);
            shared.history.completed();
            freed(shared, p);
        }
        Some(ReportOutcome::Retrying(p)) => {
            metrics::counter!(m::TASKS_FAILED, "pool" => pool(p)).increment(1);
            shared.history.failed();
            metrics::counter!(m::TASKS_RETRIED, "pool" => pool(p)).increment(1);
            wake(shared, p);
        }
        Some(ReportOutcome::OverBudget(p)) => {
            metrics::counter!(m::TASKS_FAILED, "pool" => pool(p)).increment(1);
            shared.history.failed();
            metrics::counter!(m::TASKS_DEAD, "pool" => pool(p)).increment(1);
            metrics::counter!(m::TASKS_OVER_BUDGET).increment(1);
            warn!(task_id = %r.task_id, usage = ?r.usage, "attempt over the task's maxCost: dead-lettered as over_budget");
            freed(shared, p);
        }
        Some(ReportOutcome::Dead(p)) => {
            metrics::counter!(m::TASKS_FAILED, "pool" => pool(p)).increment(1);
            shared.history.failed();
            metrics::counter!(m::TASKS_DEAD, "pool" => pool(p)).increment(1);
            warn!(task_id = %r.task_id, "task out of retries: dead-lettered");
            freed(shared, p);
        }
    }
}
