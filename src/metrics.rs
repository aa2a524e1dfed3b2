//! Metric names (Prometheus conventions) and the process-wide exporter.
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
pub const REDIS_ERRORS: &str = "fleet_redis_errors_total";
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
pub const RESULTS_IGNORED: &str = "fleet_task_results_ignored_total";
pub const QUEUE_DEPTH: &str = "fleet_queue_depth";
pub const AGENT_PROBATIONS: &str = "fleet_agent_probations_total";
pub const AGENTS_QUARANTINED: &str = "fleet_agents_quarantined";
pub const POOL_SKEW: &str = "fleet_pool_skew_ratio";
pub const POOL_UTILIZATION: &str = "fleet_pool_utilization_ratio";
pub const QUEUE_OLDEST_SECONDS: &str = "fleet_queue_oldest_wait_seconds";
pub const SCALING_DECISIONS: &str = "fleet_scaling_decisions_total";
pub const SCALE_REQUESTS_UNFULFILLED: &str = "fleet_scale_requests_unfulfilled_total";
pub const AGENTS_DRAINED: &str = "fleet_agents_drained_total";
pub const CONFIG_RELOADS: &str = "fleet_config_reloads_total";
pub const POOL_TASKS_PER_AGENT: &str = "fleet_pool_tasks_per_agent";
pub const ALLOCATION_SECONDS: &str = "fleet_allocation_duration_seconds";
pub const AGENTS: &str = "fleet_agents";
pub const BUILD_INFO: &str = "fleet_build_info";
pub const UPTIME: &str = "fleet_uptime_seconds";
pub const REGISTRATION_SECONDS: &str = "fleet_registration_duration_seconds";
pub const HEARTBEAT_SECONDS: &str = "fleet_heartbeat_duration_seconds";
pub const STATUS_QUERY_SECONDS: &str = "fleet_status_query_duration_seconds";

/// Buckets from 50 µs to 1 s, so sub-millisecond latencies are resolved.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns its handle.
/// (Several commanders in one process, as in tests, share it.)
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static buckets are valid");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // If another recorder is already installed, keep ours private:
            // /metrics still renders what this handle sees.
            let _ = metrics::set_global_recorder(recorder);
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}
