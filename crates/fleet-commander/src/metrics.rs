//! Metric names (Prometheus conventions) and the exporter: process-wide,
//! or one per runtime for several commanders in one process.
//!
//! Labels come from small fixed sets (pool, status, reason, channel, op),
//! never an agent id.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const REGISTRATIONS: &str = "fleet_registrations_total";
pub const DEREGISTRATIONS: &str = "fleet_deregistrations_total";
pub const HEARTBEATS: &str = "fleet_heartbeats_total";
pub const AGENTS_FAILED: &str = "fleet_agents_failed_total";
pub const AGENTS_RECOVERED: &str = "fleet_agents_recovered_total";
pub const AGENTS_REMOVED: &str = "fleet_agents_removed_total";
pub const MESSAGES_REJECTED: &str = "fleet_messages_rejected_total";
pub const SIGNATURE_CHECKS: &str = "fleet_signature_checks_total";
pub const BREAKER_OPEN: &str = "fleet_redis_breaker_open";
pub const LEADER: &str = "fleet_commander_leader";
pub const EPOCH: &str = "fleet_commander_epoch";
pub const TERMS: &str = "fleet_commander_terms_total";
pub const SUBMIT_REPLICATION_SECONDS: &str = "fleet_submit_replication_seconds";
pub const REDIS_ERRORS: &str = "fleet_redis_errors_total";
/// Every `op` of [`REDIS_ERRORS`] ([`redis_error`] and
/// round_failed callers), shown at 0 from the start.
pub const OPS: [&str; 16] = [
    "allocate",
    "audit",
    "checkpoint",
    "detect",
    "handle",
    "http",
    "keys",
    "lease",
    "proposal_expiry",
    "readyz",
    "reap",
    "register",
    "scale",
    "status",
    "submit",
    "tick",
];
pub const SUBSCRIBER_RECONNECTS: &str = "fleet_subscriber_reconnects_total";
pub const CONTACT_LAPSES: &str = "fleet_contact_lapses_total";
pub const DETECTION_SKIPPED: &str = "fleet_detection_skipped_total";
pub const TASKS_SUBMITTED: &str = "fleet_tasks_submitted_total";
pub const TASKS_REJECTED: &str = "fleet_tasks_rejected_total";
pub const TASKS_CANCELLED: &str = "fleet_tasks_cancelled_total";
pub const TASKS_ASSIGNED: &str = "fleet_tasks_assigned_total";
pub const TASKS_COMPLETED: &str = "fleet_tasks_completed_total";
pub const TASKS_FAILED: &str = "fleet_tasks_failed_total";
pub const TASKS_RETRIED: &str = "fleet_tasks_retried_total";
pub const TASKS_DEAD: &str = "fleet_tasks_dead_lettered_total";
pub const TASKS_ORPHANED: &str = "fleet_tasks_orphaned_total";
pub const TASKS_POISONED: &str = "fleet_tasks_poisoned_total";
pub const POISON_TASKS: &str = "fleet_poison_tasks";
pub const DEAD_LETTERS: &str = "fleet_dead_letters";
pub const AGENTS_STUCK: &str = "fleet_agents_stuck_total";
pub const PROGRESS_REPEATED: &str = "fleet_task_progress_repeated_total";
pub const BUDGET_USAGE: &str = "fleet_budget_usage_total";
pub const VALIDATORS: &str = "fleet_validators";
pub const VALIDATORS_LIVE: &str = "fleet_validators_live";
pub const AUDIT_CHECKPOINT_SEQ: &str = "fleet_audit_checkpoint_seq";
pub const KEY_RELOADS: &str = "fleet_key_reloads_total";
pub const KEYS_REREAD: &str = "fleet_keys_reread_total";
pub const KEY_STORE_READS: &str = "fleet_key_store_full_reads_total";
pub const BYZANTINE_TOLERANCE: &str = "fleet_byzantine_tolerance";
pub const PROPOSALS: &str = "fleet_proposals_total";
pub const PROPOSAL_SECONDS: &str = "fleet_proposal_decision_seconds";
pub const VOTES: &str = "fleet_votes_total";
pub const VOTES_REJECTED: &str = "fleet_votes_rejected_total";
pub const AGENTS_HALTED: &str = "fleet_agents_halted_total";
pub const AGENTS_RESUMED: &str = "fleet_agents_resumed_total";
pub const BUDGET_TOPUPS: &str = "fleet_budget_topups_total";
pub const TASKS_OVER_BUDGET: &str = "fleet_tasks_over_budget_total";
pub const RESULTS_IGNORED: &str = "fleet_task_results_ignored_total";
pub const QUEUE_DEPTH: &str = "fleet_queue_depth";
pub const INBOUND_BACKLOG: &str = "fleet_inbound_backlog";
pub const HTTP_CONNECTIONS: &str = "fleet_http_connections";
pub const HTTP_IDLE_CLOSED: &str = "fleet_http_idle_closed_total";
pub const HTTP_REJECTED: &str = "fleet_http_rejected_total";
pub const INBOUND_LAG: &str = "fleet_inbound_lag_seconds";
pub const AGENT_PROBATIONS: &str = "fleet_agent_probations_total";
pub const AGENTS_QUARANTINED: &str = "fleet_agents_quarantined";
pub const POOL_SKEW: &str = "fleet_pool_skew_ratio";
pub const POOL_UTILIZATION: &str = "fleet_pool_utilization_ratio";
pub const QUEUE_OLDEST_SECONDS: &str = "fleet_queue_oldest_wait_seconds";
pub const SCALING_DECISIONS: &str = "fleet_scaling_decisions_total";
pub const SCALE_REQUESTS_UNFULFILLED: &str = "fleet_scale_requests_unfulfilled_total";
pub const SCALE_REQUESTS_UNANSWERED: &str = "fleet_scale_requests_unanswered";
pub const TASKS_UNSCHEDULABLE: &str = "fleet_tasks_unschedulable";
pub const AGENTS_DRAINED: &str = "fleet_agents_drained_total";
pub const CONFIG_RELOADS: &str = "fleet_config_reloads_total";
pub const POOL_TASKS_PER_AGENT: &str = "fleet_pool_tasks_per_agent";
pub const ALLOCATION_SECONDS: &str = "fleet_allocation_duration_seconds";
pub const AGENTS: &str = "fleet_agents";
pub const BUILD_INFO: &str = "fleet_build_info";
pub const UPTIME: &str = "fleet_uptime_seconds";
pub const REGISTRATION_SECONDS: &str = "fleet_registration_duration_seconds";
pub const HEARTBEAT_SECONDS: &str = "fleet_heartbeat_duration_seconds";
/// Redis round trips each handled message took (by message kind).
pub const ROUND_TRIPS: &str = "fleet_redis_round_trips_per_message";
pub const STATUS_QUERY_SECONDS: &str = "fleet_status_query_duration_seconds";
pub const REDIS_RECONNECTS: &str = "fleet_redis_reconnects_total";
pub use fleet_store::telemetry::REDIS_COMMAND_SECONDS;
pub const RUNTIME_LAG_SECONDS: &str = "fleet_runtime_lag_seconds";
pub const POOL_MIN_AGENTS: &str = "fleet_pool_min_agents";
pub const POOL_MAX_AGENTS: &str = "fleet_pool_max_agents";

/// Buckets from 50 µs to 1 s, so sub-millisecond latencies are resolved.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// The exposition text, with the process metrics (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, ...) read at this moment.
pub fn render(handle: &PrometheusHandle) -> String {
    PROCESS.get_or_init(Default::default).collect();
    handle.render()
}

/// The recorder with the commander's buckets.
fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| {
            // Votes come over seconds: 1 ms to 2 min.
            b.set_buckets_for_metric(
                Matcher::Full(PROPOSAL_SECONDS.into()),
                &[
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0,
                ],
            )
        })
        .and_then(|b| {
            // Round trips are counted: one, two, a few.
            b.set_buckets_for_metric(
                Matcher::Full(ROUND_TRIPS.into()),
                &[0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0],
            )
        })
        .expect("static buckets are valid")
        .build_recorder()
}

/// Describes every metric and shows the fixed label sets at 0, in
/// whichever recorder is current.
fn announce() {
    PROCESS.get_or_init(Default::default).describe();
    describe();
    initialize();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

thread_local! {
    /// Set on the threads of a [`private_runtime`]: their recorder's handle.
    static PRIVATE: std::cell::RefCell<Option<PrometheusHandle>> = const { std::cell::RefCell::new(None) };
}

/// The handle `/metrics` renders: the process-wide recorder, installed on
/// first use, or on a [`private_runtime`]'s threads that runtime's own.
pub fn install() -> PrometheusHandle {
    if let Some(handle) = PRIVATE.with(|p| p.borrow().clone()) {
        return handle;
    }
    HANDLE
        .get_or_init(|| {
            let recorder = recorder();
            let handle = recorder.handle();
            // If another recorder is already installed, keep ours private:
            // /metrics still renders what this handle sees.
            let _ = metrics::set_global_recorder(recorder);
            announce();
            handle
        })
        .clone()
}

/// A multi-threaded runtime whose threads record into a recorder of their
/// own (and log to `logs`, if given), so that several commanders in one
/// process each count only their own: the test suite runs a commander per
/// test, concurrently, in one binary. A commander started on it (every task
/// it spawns stays on it) serves only its own figures on `/metrics`. The
/// recorder lives as long as the process.
pub fn private_runtime(
    threads: usize,
    logs: Option<tracing::Dispatch>,
) -> std::io::Result<tokio::runtime::Runtime> {
    let recorder: &'static metrics_exporter_prometheus::PrometheusRecorder =
        Box::leak(Box::new(recorder()));
    let handle = recorder.handle();
    metrics::with_local_recorder(recorder, announce);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("commander")
        .enable_all()
        .on_thread_start(move || {
            // For the thread's life: the guards are never dropped.
            std::mem::forget(metrics::set_default_local_recorder(recorder));
            if let Some(d) = &logs {
                std::mem::forget(tracing::dispatcher::set_default(d));
            }
            PRIVATE.with(|p| *p.borrow_mut() = Some(handle.clone()));
        })
        .build()
}

/// Records in `fleet_runtime_lag_seconds`, every 100 ms, how late the
/// runtime woke this task: a stall that delays every message, whether
/// something in the commander held the runtime or the machine did not run
/// the process. (Tokio's timer has 1 ms granularity: up to 1 ms is normal.)
pub async fn watch_runtime_lag(shutdown: tokio_util::sync::CancellationToken) {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(100);
    loop {
        let due = tokio::time::Instant::now() + EVERY;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        metrics::histogram!(RUNTIME_LAG_SECONDS).record(late.as_secs_f64());
    }
}

/// HELP text for every metric (shown by Prometheus and required by `promtool check metrics`).
/// A table, not logic, and long because it names every metric: kept in one
/// function so that each metric's help is next to the others.
fn describe() {
    use metrics::{describe_counter as c, describe_gauge as g, describe_histogram as h};
    c!(
        REGISTRATIONS,
        "Registrations handled, by pool and result (accepted, re_registered, rejected) and reason."
    );
    c!(DEREGISTRATIONS, "Agents that deregistered.");
    c!(HEARTBEATS, "Heartbeats handled.");
    c!(
        AGENTS_FAILED,
        "Agents declared failed (missed heartbeats), by pool."
    );
    c!(AGENTS_RECOVERED, "Failed agents that came back, by pool.");
    c!(
        AGENTS_REMOVED,
        "Agents removed from the registry, by reason."
    );
    c!(
        MESSAGES_REJECTED,
        "Inbound messages refused, by channel and reason."
    );
    c!(
        SIGNATURE_CHECKS,
        "Signatures (scheme=ed25519) and session MACs (scheme=session) checked (what passed every cheaper check first)."
    );
    c!(
        KEY_RELOADS,
        "Key store refreshes (on a key-change notice, at most 5/s, or on the refresh timer): each reads the store's version, then only the keys written since, or the whole store when its change log does not reach back."
    );
    c!(
        KEY_STORE_READS,
        "Reads of the whole key store: at start, and when its change log does not reach back to the last read."
    );
    c!(
        KEYS_REREAD,
        "Key records read again by a refresh because they were written since the last (the rest of the store is not read)."
    );
    c!(REDIS_ERRORS, "Redis commands that failed, by operation.");
    c!(
        REDIS_RECONNECTS,
        "Commands that failed because the command connection dropped; each drop makes it reconnect."
    );
    c!(
        SUBSCRIBER_RECONNECTS,
        "Reconnections of the pub/sub subscriber to Redis."
    );
    c!(
        CONTACT_LAPSES,
        "Times the commander lost Redis long enough to distrust heartbeat ages."
    );
    c!(
        HTTP_REJECTED,
        "HTTP requests refused for their token: missing_token, invalid_token, forbidden."
    );
    c!(
        HTTP_IDLE_CLOSED,
        "HTTP connections closed: why=idle (http.idle_timeout_ms without progress) or evicted (the quietest, to make room at http.max_connections)."
    );
    c!(
        DETECTION_SKIPPED,
        "Detector ticks skipped because the commander was not listening."
    );
    c!(TASKS_SUBMITTED, "Tasks accepted, by pool.");
    c!(TASKS_REJECTED, "Task submissions refused, by reason.");
    c!(TASKS_CANCELLED, "Tasks cancelled.");
    c!(
        TASKS_ASSIGNED,
        "Task attempts assigned to an agent, by pool."
    );
    c!(TASKS_COMPLETED, "Tasks completed, by pool.");
    c!(TASKS_FAILED, "Task attempts that failed, by pool.");
    c!(
        TASKS_RETRIED,
        "Failed attempts queued again for a retry, by pool."
    );
    c!(TASKS_DEAD, "Tasks moved to the dead-letter set, by pool.");
    c!(
        TASKS_ORPHANED,
        "Tasks taken back from an agent that died or left, by reason."
    );
    c!(
        TASKS_POISONED,
        "Tasks held as poison: their attempts took down tasks.poison_after agents."
    );
    c!(
        AGENTS_STUCK,
        "Attempts taken back because the agent showed no progress in time (agent flagged stuck)."
    );
    c!(
        PROGRESS_REPEATED,
        "task_progress reports whose step was not above the last (not progress)."
    );
    c!(
        BUDGET_USAGE,
        "Budget units agents reported consuming (usage), rounded up per report."
    );
    c!(
        AGENTS_HALTED,
        "Agents halted: their budget fell below its minimum."
    );
    c!(
        AGENTS_RESUMED,
        "Halted agents resumed (a top-up, a reset, or a new budget window)."
    );
    c!(BUDGET_TOPUPS, "Budget top-ups and resets by operators.");
    c!(
        PROPOSALS,
        "Governance proposals, by outcome (opened, refused, allowed, denied, quarantined, expired)."
    );
    c!(VOTES, "Validators' votes counted, by vote.");
    c!(
        VOTES_REJECTED,
        "Votes refused, by reason (not_validator, duplicate, late, wrong_hash, unknown)."
    );
    c!(
        TASKS_OVER_BUDGET,
        "Tasks dead-lettered as over_budget: an attempt used more than the task's maxCost."
    );
    c!(
        RESULTS_IGNORED,
        "Task results ignored (stale attempt, unknown task), by reason."
    );
    c!(
        AGENT_PROBATIONS,
        "Agents released from quarantine onto probation."
    );
    c!(
        SCALING_DECISIONS,
        "Scaling decisions, by pool and direction."
    );
    c!(
        SCALE_REQUESTS_UNFULFILLED,
        "Scale requests not fulfilled in time, by pool and direction."
    );
    c!(
        AGENTS_DRAINED,
        "Agents drained (by the scaler or an operator), by pool."
    );
    c!(
        CONFIG_RELOADS,
        "Configuration reloads, by result (applied, rejected)."
    );
    g!(
        SCALE_REQUESTS_UNANSWERED,
        "Scale-up requests in a row that no spawner answered, by pool (0: answered, or none asked); the scaler backs off while it is above 0."
    );
    g!(
        TASKS_UNSCHEDULABLE,
        "Tasks at the head of the pool's queue that need capabilities no agent of the pool declares, waiting longer than the pool's scaling window; they never grow the pool."
    );
    g!(AGENTS, "Registered agents, by pool and status.");
    g!(AGENTS_QUARANTINED, "Agents in quarantine (given no tasks).");
    g!(QUEUE_DEPTH, "Tasks waiting in the queue, by pool.");
    g!(VALIDATORS, "Registered validator agents (n).");
    g!(VALIDATORS_LIVE, "Validator agents live now.");
    g!(
        AUDIT_CHECKPOINT_SEQ,
        "The audit entry the newest checkpoint written to security.audit_checkpoint_file names."
    );
    g!(
        BYZANTINE_TOLERANCE,
        "Lying validators a 2/3 quorum tolerates: f = (n-1)/3."
    );
    g!(
        POISON_TASKS,
        "Tasks held as poison, waiting for an operator."
    );
    g!(
        DEAD_LETTERS,
        "Tasks in the dead letters (out of retries), waiting for an operator."
    );
    g!(HTTP_CONNECTIONS, "Open connections to the HTTP API.");
    g!(
        LEADER,
        "1 while this commander leads (holds the lease), 0 while it stands by."
    );
    g!(
        EPOCH,
        "The epoch this commander leads with; while it stands by, the leader's it last saw."
    );
    c!(
        TERMS,
        "Terms this commander has led, by how they ended (stepped_down, fenced, stopped, failed)."
    );
    g!(
        BREAKER_OPEN,
        "1 while the circuit breaker on Redis is open (Redis does not answer), else 0."
    );
    g!(
        INBOUND_BACKLOG,
        "Messages read from Redis and not yet handled."
    );
    g!(
        INBOUND_LAG,
        metrics::Unit::Seconds,
        "How far behind the clock the commander has heard the fleet (read and handled); failure detection judges silence up to there."
    );
    g!(
        QUEUE_OLDEST_SECONDS,
        metrics::Unit::Seconds,
        "How long the oldest waiting task has waited, by pool."
    );
    g!(
        POOL_UTILIZATION,
        "Agents holding tasks / live agents, by pool."
    );
    g!(
        POOL_SKEW,
        "Most / fewest tasks given to one agent of the pool."
    );
    g!(POOL_TASKS_PER_AGENT, "Tasks given per agent, by pool.");
    g!(POOL_MIN_AGENTS, "The pool's configured minimum size.");
    g!(POOL_MAX_AGENTS, "The pool's configured maximum size.");
    g!(BUILD_INFO, "Always 1; the version is a label.");
    g!(
        UPTIME,
        metrics::Unit::Seconds,
        "Seconds since the commander started."
    );
    h!(
        PROPOSAL_SECONDS,
        metrics::Unit::Seconds,
        "Governance proposals: opened to decided (by the votes or the deadline)."
    );
    h!(
        SUBMIT_REPLICATION_SECONDS,
        metrics::Unit::Seconds,
        "With tasks.durability = \"replicated\": a submission's time to its WAIT's answer."
    );
    h!(
        REGISTRATION_SECONDS,
        metrics::Unit::Seconds,
        "Time to handle a registration (message in to reply out)."
    );
    h!(
        RUNTIME_LAG_SECONDS,
        metrics::Unit::Seconds,
        "How late the commander's runtime runs a timer due every 100 ms: the time every task in it waited (the runtime busy, or the process not scheduled)."
    );
    h!(
        HEARTBEAT_SECONDS,
        metrics::Unit::Seconds,
        "Time to record a heartbeat: its batch's checks, script call and replies (not the up to 5 ms it waits for its batch to fill)."
    );
    h!(
        ROUND_TRIPS,
        "Redis round trips one handled agent or submitter message took (its checks, scripts and replies), by message kind."
    );
    h!(
        ALLOCATION_SECONDS,
        metrics::Unit::Seconds,
        "Time to hand out tasks: an allocator round, or a submission's persist-and-allocate round trip, that assigned at least one."
    );
    h!(
        STATUS_QUERY_SECONDS,
        metrics::Unit::Seconds,
        "Time to answer a fleet status query."
    );
    h!(
        REDIS_COMMAND_SECONDS,
        metrics::Unit::Seconds,
        "Redis round trip of one script call, by operation."
    );
}

/// Creates the series of the fixed label sets at zero, so that a dashboard
/// shows 0 rather than "no data" before the first event, and `rate()` sees
/// the first increment. Long (a list, label set by label set) on purpose:
/// each line is one series a dashboard reads.
fn initialize() {
    use fleet_protocol::pool::PoolType;
    use metrics::counter;
    for pool in PoolType::ALL.map(PoolType::as_str) {
        for name in [
            AGENTS_FAILED,
            AGENTS_RECOVERED,
            AGENTS_DRAINED,
            TASKS_SUBMITTED,
            TASKS_ASSIGNED,
            TASKS_COMPLETED,
            TASKS_FAILED,
            TASKS_RETRIED,
            TASKS_DEAD,
        ] {
            counter!(name, "pool" => pool).absolute(0);
        }
        for direction in ["up", "down"] {
            counter!(SCALING_DECISIONS, "pool" => pool, "direction" => direction).absolute(0);
            counter!(SCALE_REQUESTS_UNFULFILLED, "pool" => pool, "direction" => direction)
                .absolute(0);
        }
        metrics::gauge!(SCALE_REQUESTS_UNANSWERED, "pool" => pool).set(0.0);
        metrics::gauge!(TASKS_UNSCHEDULABLE, "pool" => pool).set(0.0);
    }
    for channel in [
        "registry",
        "health",
        "fleet",
        "tasks",
        "results",
        "governance",
    ] {
        for reason in [
            "oversized",
            "too_deep",
            "bad_json",
            "unsupported_version",
            "unknown_type",
            "wrong_channel",
            "invalid_fields",
        ] {
            counter!(MESSAGES_REJECTED, "channel" => channel, "reason" => reason).absolute(0);
        }
    }
    counter!(REGISTRATIONS, "result" => "accepted", "reason" => "none").absolute(0);
    for op in OPS {
        counter!(REDIS_ERRORS, "op" => op).absolute(0);
    }
    counter!(TASKS_REJECTED, "reason" => "invalid_fields").absolute(0);
    counter!(REDIS_RECONNECTS, "conn" => "commands").absolute(0);
    for reason in [
        "agent_failed",
        "agent_left",
        "agent_restarted",
        "lease_expired",
        "stuck",
    ] {
        counter!(TASKS_ORPHANED, "reason" => reason).absolute(0);
    }
    for result in ["applied", "rejected"] {
        counter!(CONFIG_RELOADS, "result" => result).absolute(0);
    }
    for scheme in ["ed25519", "session"] {
        counter!(SIGNATURE_CHECKS, "scheme" => scheme).absolute(0);
    }
    for name in [
        AGENT_PROBATIONS,
        CONTACT_LAPSES,
        DEREGISTRATIONS,
        DETECTION_SKIPPED,
        HEARTBEATS,
        KEY_RELOADS,
        KEYS_REREAD,
        KEY_STORE_READS,
        SUBSCRIBER_RECONNECTS,
        TASKS_CANCELLED,
        TASKS_POISONED,
        AGENTS_STUCK,
        PROGRESS_REPEATED,
        BUDGET_USAGE,
        AGENTS_HALTED,
        AGENTS_RESUMED,
        BUDGET_TOPUPS,
        TASKS_OVER_BUDGET,
    ] {
        counter!(name).absolute(0);
    }
    metrics::gauge!(POISON_TASKS).set(0.0);
    metrics::gauge!(DEAD_LETTERS).set(0.0);
    for name in [VALIDATORS, VALIDATORS_LIVE, BYZANTINE_TOLERANCE] {
        metrics::gauge!(name).set(0.0);
    }
    for outcome in [
        "opened",
        "refused",
        "allowed",
        "denied",
        "quarantined",
        "expired",
    ] {
        counter!(PROPOSALS, "outcome" => outcome).absolute(0);
    }
    for reason in [
        "not_validator",
        "duplicate",
        "late",
        "wrong_hash",
        "unknown",
    ] {
        counter!(VOTES_REJECTED, "reason" => reason).absolute(0);
    }
    metrics::gauge!(BREAKER_OPEN).set(0.0);
    metrics::gauge!(LEADER).set(0.0);
}

/// Counts a store error where it is handled: `fleet_redis_errors_total{op}`,
/// and `fleet_redis_reconnects_total{conn="commands"}` when the connection
/// dropped (the connection manager reconnects).
pub(crate) fn redis_error(op: &'static str, e: &fleet_store::StoreError) {
    metrics::counter!(REDIS_ERRORS, "op" => op).increment(1);
    if e.is_connection_dropped() {
        metrics::counter!(REDIS_RECONNECTS, "conn" => "commands").increment(1);
    }
}

#[cfg(test)]
mod tests {
    /// Every op the code counts Redis errors under is in [`super::OPS`]
    /// (the list drifted once: eight ops were missing).
    #[test]
    fn every_counted_op_is_listed() {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut ops = std::collections::BTreeSet::new();
        for text in &files {
            for marker in [
                "metrics::redis_error(\"",
                "round_failed(&shared, \"",
                "round_failed(shared, \"",
            ] {
                for (i, _) in text.match_indices(marker) {
                    let rest = &text[i + marker.len()..];
                    if let Some(end) = rest.find('"') {
                        ops.insert(rest[..end].to_string());
                    }
                }
            }
        }
        assert!(ops.len() >= 10, "found {ops:?}");
        let missing: Vec<_> = ops
            .iter()
            .filter(|o| !super::OPS.contains(&o.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "ops counted but not in OPS: {missing:?}"
        );
    }
}
