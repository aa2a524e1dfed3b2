//! `config/fleet.toml`: loading, environment overrides and validation.
//!
//! A bad file fails at start with the field and the reason of every problem
//! it has (each section's `validate` adds to one [`Problems`]); nothing is
//! guessed. Writing what the scripts read into Redis is `crate::reload`'s.

use fleet_protocol::pool::PoolType;
pub use fleet_protocol::pool::{ResourceLimits, Strategy};
use fleet_protocol::task::TaskDefaults;
use fleet_store::tasks::{HealthPolicy, PoolSettings, TaskPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub redis: RedisConfig,
    pub fleet: FleetConfig,
    pub http: HttpConfig,
    #[serde(default)]
    pub tasks: TaskConfig,
    /// Autoscaling defaults; each pool may override any of them.
    #[serde(default)]
    pub scaling: ScalingPolicy,
    /// Logging; `RUST_LOG` wins over it.
    #[serde(default)]
    pub log: LogConfig,
    /// Who may send what (docs/SECURITY.md).
    #[serde(default)]
    pub security: SecurityConfig,
    /// Leadership among commanders sharing one Redis (docs/OPERATIONS.md).
    #[serde(default)]
    pub ha: HaConfig,
    /// Agents' budgets (issue 18): what each may consume per window.
    #[serde(default)]
    pub budgets: BudgetConfig,
    /// Actions that need a quorum of validators' votes (issue 18).
    #[serde(default)]
    pub governance: GovernanceConfig,
    #[serde(deserialize_with = "pools_by_name")]
    pub pools: BTreeMap<PoolType, PoolConfig>,
    /// The file this came from; the commander watches it and applies edits
    /// (and re-reads it on SIGHUP).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
}

/// Reads `[pools.NAME]` tables keyed by name, so errors name the pool and an
/// unknown name is refused with the list of known ones.
fn pools_by_name<'de, D>(de: D) -> Result<BTreeMap<PoolType, PoolConfig>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let raw = BTreeMap::<String, PoolConfig>::deserialize(de)?;
    raw.into_iter()
        .map(|(name, pc)| match name.parse::<PoolType>() {
            Ok(p) => Ok((p, pc)),
            Err(_) => Err(D::Error::custom(format!(
                "unknown pool {name:?}; the pools are {}",
                PoolType::ALL.map(|p| p.as_str()).join(", ")
            ))),
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`, `rediss://…` (TLS) or
    /// `redis+sentinel://host:port,host:port/master` (fleet_redis::url);
    /// overridden by `REDIS_URL`.
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Prefix of every key and channel (`swarm:phase-1`).
    pub prefix: String,
    /// Fleet-wide cap on registered agents.
    pub max_agents: u32,
    /// How often agents heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Missed heartbeats before an agent is declared failed.
    pub missed_heartbeats: u32,
    /// Failures after which an agent is removed from the registry.
    pub max_failures: u32,
    /// How long a failed agent that never comes back stays listed.
    pub failed_retention_ms: u64,
    /// How often the failure detector looks for stale agents.
    pub detect_tick_ms: u64,
    /// How often a `fleet_status` message goes out on the fleet channel.
    pub status_interval_ms: u64,
    /// Larger inbound messages are refused unread.
    pub max_message_bytes: usize,
    /// Message handlers; messages of one agent always go to the same handler, in order.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Threads of the commander's async runtime (`run`); 0 means one per core.
    /// One keeps every wake-up on one thread: the lowest tails measured here.
    #[serde(default = "default_runtime_threads")]
    pub runtime_threads: usize,
    /// On SIGTERM or SIGINT the service stops taking messages and its loops
    /// drain for at most this long; what is still running then is aborted.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP API and `/metrics`; overridden by `FLEET_HTTP_ADDR`.
    pub addr: SocketAddr,
    /// Connections served at once; more wait until one closes.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// A connection that moves no byte for this long is closed.
    #[serde(default = "default_http_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// `/metrics` needs a viewer token too (it is open by default, for scrapers).
    #[serde(default)]
    pub protect_metrics: bool,
    /// Connections the kernel queues before they are accepted (capped by
    /// net.core.somaxconn): a burst of connects beyond it waits for a
    /// retransmit, about a second.
    #[serde(default = "default_http_listen_backlog")]
    pub listen_backlog: u32,
}

fn default_http_listen_backlog() -> u32 {
    defaults::HTTP_LISTEN_BACKLOG
}

fn default_http_max_connections() -> usize {
    defaults::HTTP_MAX_CONNECTIONS
}

fn default_http_idle_timeout_ms() -> u64 {
    defaults::HTTP_IDLE_TIMEOUT_MS
}

/// `[ha]`: any number of commanders run against one Redis; the one holding
/// the lease leads, the others stand by (crate::leader).
///
/// The defaults follow client-go's leader election (15 s lease, 10 s renew
/// deadline, 2 s retry), scaled to this fleet's clock: agents heartbeat
/// every 5 s and an unacknowledged assignment comes back after 5 s, so a
/// takeover should fit within one heartbeat. The lease is 5 s and renewed
/// every 1 s, so a leader survives four lost renewals in a row (a Redis
/// blip, a slow disk, a long pause) before anyone may take over; it gives
/// up leading itself once it has not renewed for `lease_ms - renew_ms`
/// (4 s), a full renewal before the lease can lapse in Redis. Standbys try
/// every `renew_ms`, so a dead leader is replaced within lease + renew (at
/// most 6 s); a leader stopped with SIGTERM releases the lease and is
/// replaced within one `renew_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// The lease lapses this long after its last renewal.
    pub lease_ms: u64,
    /// The leader renews, and standbys try to take the lease, this often.
    pub renew_ms: u64,
    /// The address other commanders and clients are told to reach this one
    /// at (`GET /v1/commanders`, a standby's 503); the bound `http.addr` if
    /// empty. Overridden by `FLEET_ADVERTISE_ADDR`.
    pub advertise_addr: String,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            lease_ms: defaults::HA_LEASE_MS,
            renew_ms: defaults::HA_RENEW_MS,
            advertise_addr: String::new(),
        }
    }
}

/// `[security]`: signed messages (the default) or open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    pub mode: SecurityMode,
    /// The commander's Ed25519 secret, base64 on one line (`fleet-commander
    /// keys init` writes it). A relative path is relative to the config
    /// file's directory. Overridden by `FLEET_COMMANDER_KEY`.
    pub commander_key_file: std::path::PathBuf,
    /// A message's timestamp may be this far from the commander's clock.
    pub window_ms: u64,
    /// After `keys rotate`, the old key keeps working this long.
    pub rotation_overlap_ms: u64,
    /// The key store is re-read this often (and at once when a key changes).
    pub key_refresh_ms: u64,
    /// Each agent's (and submitter's) messages, per second, on average ...
    pub sender_rate_per_sec: f64,
    /// ... with bursts of up to this many (a token bucket per sender).
    pub sender_burst: u32,
    /// Where the leader appends signed checkpoints of the audit log's head,
    /// one JSON line each (relative to the config file's directory; ""
    /// for none). Ship the file off the host: `audit verify --checkpoint`.
    pub audit_checkpoint_file: std::path::PathBuf,
    /// How often a checkpoint is written (when the log has grown).
    pub audit_checkpoint_ms: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            mode: SecurityMode::Signed,
            commander_key_file: "commander.key".into(),
            window_ms: fleet_protocol::auth::DEFAULT_WINDOW_MS,
            rotation_overlap_ms: defaults::SECURITY_ROTATION_OVERLAP_MS,
            key_refresh_ms: defaults::SECURITY_KEY_REFRESH_MS,
            sender_rate_per_sec: defaults::SECURITY_SENDER_RATE_PER_SEC,
            sender_burst: defaults::SECURITY_SENDER_BURST,
            audit_checkpoint_file: "audit.checkpoints".into(),
            audit_checkpoint_ms: defaults::SECURITY_AUDIT_CHECKPOINT_MS,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    /// Every agent and submitter message must be signed by a known key; the
    /// commander signs what it sends to agents.
    Signed,
    /// Nothing is checked or signed: local experiments only. Warned about at
    /// every start and reported by `/readyz`.
    Open,
}

impl SecurityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityMode::Signed => "signed",
            SecurityMode::Open => "open",
        }
    }
}

impl Config {
    /// Where the commander's key is: relative paths are under the config
    /// file's directory.
    pub fn commander_key_path(&self) -> std::path::PathBuf {
        self.beside(&self.security.commander_key_file)
    }

    /// Where the audit checkpoints go, if anywhere.
    pub fn audit_checkpoint_path(&self) -> Option<std::path::PathBuf> {
        let f = &self.security.audit_checkpoint_file;
        (!f.as_os_str().is_empty()).then(|| self.beside(f))
    }

    /// `f`, relative to the config file's directory unless absolute.
    fn beside(&self, f: &Path) -> std::path::PathBuf {
        match self.source.as_deref().and_then(Path::parent) {
            Some(dir) if f.is_relative() => dir.join(f),
            _ => f.to_path_buf(),
        }
    }

    /// The commander's signing secret (None when open), read from its file.
    pub fn commander_secret(&self) -> Result<Option<[u8; 32]>, ConfigError> {
        if self.security.mode == SecurityMode::Open {
            return Ok(None);
        }
        let path = self.commander_key_path();
        let source = self
            .source
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "config".into());
        let err = |reason: String| ConfigError::one(&source, "security.commander_key_file", reason);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            err(format!(
                "cannot read {}: {e} (create it with `fleet-commander keys init`, \
                 or set security.mode = \"open\" for a local experiment)",
                path.display()
            ))
        })?;
        fleet_protocol::auth::decode_key(&text)
            .map(Some)
            .ok_or_else(|| {
                err(format!(
                    "{} is not a key (32 bytes, base64)",
                    path.display()
                ))
            })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `fleet_commander=debug,warn`...
    #[serde(default)]
    pub level: Option<String>,
}

/// When a pool grows or shrinks (see `src/scaler/README.md`). Fleet defaults in
/// `[scaling]`; a pool overrides any of them in `[pools.NAME.scaling]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingPolicy {
    /// How often the scaler samples demand and decides.
    pub sample_ms: u64,
    /// Decisions look at the samples of this window, never at one alone.
    pub window_ms: u64,
    /// Grow when utilisation (agents holding tasks / live agents) averages at least this ...
    pub scale_up_utilization: f64,
    /// ... or the oldest waiting task has waited this long on average over the window.
    pub scale_up_queue_wait_ms: u64,
    /// Shrink only when utilisation stayed at or below this for the whole window
    /// with nothing queued (hysteresis: well below the up threshold).
    pub scale_down_utilization: f64,
    /// After growing, no further growth for this long; no shrinking either.
    pub up_cooldown_ms: u64,
    /// After shrinking, no further shrinking for this long; no growth either,
    /// unless the pool is below its minimum.
    pub down_cooldown_ms: u64,
    /// Most agents added or retired by one decision.
    pub max_step: u32,
    /// Agents younger than this are not retired.
    pub min_lifetime_ms: u64,
    /// A request not fulfilled within this time is reported (log, metric, event).
    pub request_timeout_ms: u64,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        ScalingPolicy {
            sample_ms: defaults::SCALING_SAMPLE_MS,
            window_ms: defaults::SCALING_WINDOW_MS,
            scale_up_utilization: defaults::SCALING_SCALE_UP_UTILIZATION,
            scale_up_queue_wait_ms: defaults::SCALING_SCALE_UP_QUEUE_WAIT_MS,
            scale_down_utilization: defaults::SCALING_SCALE_DOWN_UTILIZATION,
            up_cooldown_ms: defaults::SCALING_UP_COOLDOWN_MS,
            down_cooldown_ms: defaults::SCALING_DOWN_COOLDOWN_MS,
            max_step: defaults::SCALING_MAX_STEP,
            min_lifetime_ms: defaults::SCALING_MIN_LIFETIME_MS,
            request_timeout_ms: defaults::SCALING_REQUEST_TIMEOUT_MS,
        }
    }
}

/// A pool's overrides of [`ScalingPolicy`]; what is absent comes from `[scaling]`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScalingOverrides {
    pub scale_up_utilization: Option<f64>,
    pub scale_up_queue_wait_ms: Option<u64>,
    pub scale_down_utilization: Option<f64>,
    pub up_cooldown_ms: Option<u64>,
    pub down_cooldown_ms: Option<u64>,
    pub max_step: Option<u32>,
    pub min_lifetime_ms: Option<u64>,
}

impl ScalingPolicy {
    fn with(mut self, o: &ScalingOverrides) -> ScalingPolicy {
        macro_rules! take {
            ($($f:ident),*) => { $(if let Some(v) = o.$f { self.$f = v; })* };
        }
        take!(
            scale_up_utilization,
            scale_up_queue_wait_ms,
            scale_down_utilization,
            up_cooldown_ms,
            down_cooldown_ms,
            max_step,
            min_lifetime_ms
        );
        self
    }

    fn validate(&self, at: &str, p: &mut Problems) {
        let f = |k: &str| format!("{at}.{k}");
        let (up, down) = (self.scale_up_utilization, self.scale_down_utilization);
        if !(up.is_finite() && up > 0.0 && up <= 1.0) {
            p.add(
                f("scale_up_utilization"),
                format!("must be in (0, 1], got {up}"),
            );
        } else if !(down.is_finite() && down >= 0.0 && down < up) {
            p.add(
                f("scale_down_utilization"),
                format!("must be >= 0 and below scale_up_utilization ({up}), got {down}"),
            );
        }
        if self.max_step == 0 {
            p.add(f("max_step"), "must be at least 1");
        }
        for (k, v) in [
            ("sample_ms", self.sample_ms),
            ("window_ms", self.window_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if v == 0 {
                p.add(f(k), "must be at least 1");
            }
        }
        if self.window_ms < self.sample_ms {
            p.add(f("window_ms"), "must be >= sample_ms");
        }
    }
}

/// Task handling: defaults for submissions, leases, retries, aging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TaskConfig {
    /// How long one attempt may run when the submission does not say.
    pub default_timeout_ms: u64,
    pub default_max_retries: u32,
    /// Waiting this long counts as much as one priority level, so that low
    /// priority never starves.
    pub aging_ms_per_priority: u64,
    /// An assigned task not acknowledged within this time goes back to the queue.
    pub ack_timeout_ms: u64,
    /// Retry backoff: base x 2^(attempt-1), capped.
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// How long a client id keeps naming the same task.
    pub idempotency_ttl_ms: u64,
    /// How long a finished task's record is kept.
    pub retention_ms: u64,
    /// Skew (max/min tasks per agent in a pool) above which a pool is
    /// labelled `strong_imbalance`; up to it, `mild_imbalance` (over 1.5).
    pub max_skew: f64,
    /// Agent health (0-100, 100 at registration): a completed task adds
    /// `health_success_step`, a failed or expired attempt takes
    /// `health_failure_step`, so failures count more than successes.
    pub health_success_step: u32,
    pub health_failure_step: u32,
    /// Below this an agent is quarantined: no new work for `quarantine_ms`
    /// (doubling with each repeat, up to 8x).
    pub quarantine_below: u32,
    pub quarantine_ms: u64,
    /// At most this share (%) of a pool's live agents is in quarantine at
    /// once (always at least one agent), so failing agents never take a
    /// whole pool out of service; 100 turns the cap off.
    pub quarantine_max_percent: u32,
    /// After quarantine an agent is on probation: one task at a time, back
    /// to quarantine on a failure, free again once its health reaches this.
    pub probation_until: u32,
    /// Window of the per-agent quota of `weighted_fair` pools.
    pub quota_window_ms: u64,
    /// How long an agent's health score and quarantine are kept after it
    /// deregisters or is removed, so that leaving and registering again is
    /// no way out of quarantine.
    pub health_memory_ms: u64,
    /// When a submission is acknowledged: `async` once the primary has it;
    /// `replicated` once `WAIT` confirms that `replicas` replicas have it
    /// too (within `replication_timeout_ms`, else it is refused as
    /// `not_replicated`).
    pub durability: Durability,
    pub replicas: u32,
    pub replication_timeout_ms: u64,
    /// An attempt that shows no progress (a `task_progress` with a higher
    /// step) for this long is taken back and its agent flagged stuck and
    /// quarantined, unless the task or the pool says otherwise; 0: not watched.
    pub progress_timeout_ms: u64,
    /// A task whose attempts took down this many agents (dead, restarted,
    /// stuck, or dead soon after its lease ran out) is held as poison until an operator
    /// requeues it; 0: never.
    pub poison_after: u32,
}

/// See [`TaskConfig::durability`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    Async,
    Replicated,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            default_timeout_ms: defaults::TASKS_DEFAULT_TIMEOUT_MS,
            default_max_retries: defaults::TASKS_DEFAULT_MAX_RETRIES,
            aging_ms_per_priority: defaults::TASKS_AGING_MS_PER_PRIORITY,
            ack_timeout_ms: defaults::TASKS_ACK_TIMEOUT_MS,
            retry_backoff_ms: defaults::TASKS_RETRY_BACKOFF_MS,
            retry_backoff_max_ms: defaults::TASKS_RETRY_BACKOFF_MAX_MS,
            idempotency_ttl_ms: defaults::TASKS_IDEMPOTENCY_TTL_MS,
            retention_ms: defaults::TASKS_RETENTION_MS,
            max_skew: defaults::TASKS_MAX_SKEW,
            health_success_step: defaults::TASKS_HEALTH_SUCCESS_STEP,
            health_failure_step: defaults::TASKS_HEALTH_FAILURE_STEP,
            quarantine_below: defaults::TASKS_QUARANTINE_BELOW,
            quarantine_ms: defaults::TASKS_QUARANTINE_MS,
            quarantine_max_percent: defaults::TASKS_QUARANTINE_MAX_PERCENT,
            probation_until: defaults::TASKS_PROBATION_UNTIL,
            quota_window_ms: defaults::TASKS_QUOTA_WINDOW_MS,
            health_memory_ms: defaults::TASKS_HEALTH_MEMORY_MS,
            durability: Durability::Async,
            replicas: defaults::TASKS_REPLICAS,
            replication_timeout_ms: defaults::TASKS_REPLICATION_TIMEOUT_MS,
            progress_timeout_ms: defaults::TASKS_PROGRESS_TIMEOUT_MS,
            poison_after: defaults::TASKS_POISON_AFTER,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub min_agents: u32,
    pub max_agents: u32,
    /// 1 (lowest) to 10 (highest).
    pub priority_level: u8,
    pub scaling_enabled: bool,
    pub resource_limits: ResourceLimits,
    /// How the pool picks an agent for a task.
    #[serde(default)]
    pub strategy: Strategy,
    /// Capabilities the pool offers; a task needing another is refused.
    /// Empty (the default): any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// `weighted_fair` only: the most tasks one agent may be given per
    /// quota window (`tasks.quota_window_ms`). None: no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u32>,
    /// Overrides of the `[scaling]` defaults for this pool.
    #[serde(default)]
    pub scaling: ScalingOverrides,
    /// Overrides `tasks.progress_timeout_ms` for this pool's tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_timeout_ms: Option<u64>,
    /// Overrides `budgets.allowance` for this pool's agents (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
}

/// The actions `[governance] actions` may name.
pub const GOVERNABLE: &[&str] = &["drain_pool", "scale_pool"];

/// `[governance]`: the actions named here become proposals that the
/// validator agents (capability `validator`, weight from a `weight:N`
/// capability, else 1) vote on; each runs only once the weighted `allow`
/// reaches `quorum` of the validators' total weight, before `deadline_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceConfig {
    pub actions: Vec<String>,
    /// Share of the registered validators' total weight that must allow.
    pub quorum: f64,
    pub deadline_ms: u64,
    /// `scale_pool`: setting a pool's size above this needs a quorum.
    pub scale_threshold: u32,
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        GovernanceConfig {
            actions: Vec::new(),
            quorum: defaults::GOVERNANCE_QUORUM,
            deadline_ms: defaults::GOVERNANCE_DEADLINE_MS,
            scale_threshold: defaults::GOVERNANCE_SCALE_THRESHOLD,
        }
    }
}

impl GovernanceConfig {
    pub fn governs(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action)
    }
}

/// `[budgets]`: each agent may consume `allowance` (its pool's `budget`, or
/// this default; 0: no budget) per window; agents report what each attempt
/// consumed (`usage`), debited with its result. Below `min_balance` the
/// agent is halted until an operator tops it up or the window renews.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// What the numbers count (tokens, cents, ...): a label.
    pub unit: String,
    pub allowance: f64,
    pub min_balance: f64,
    /// Budgets renew every window (aligned to the epoch: a day renews at
    /// midnight UTC); 0: never.
    pub window_ms: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            unit: "tokens".into(),
            allowance: defaults::BUDGETS_ALLOWANCE,
            min_balance: defaults::BUDGETS_MIN_BALANCE,
            window_ms: defaults::BUDGETS_WINDOW_MS,
        }
    }
}

/// Every default a setting takes when the file leaves it out, by section
/// (`SECTION_FIELD`); what each means is on its field.
pub mod defaults {
    /// Long enough for the handlers to work through a full queue and for
    /// HTTP requests in flight to finish; short of the 30 s most supervisors
    /// (systemd, Kubernetes) wait before SIGKILL.
    pub const FLEET_SHUTDOWN_GRACE_MS: u64 = 10_000;
    pub const FLEET_WORKERS: usize = 8;
    pub const FLEET_RUNTIME_THREADS: usize = 1;
    pub const HTTP_IDLE_TIMEOUT_MS: u64 = 30_000;
    pub const HTTP_MAX_CONNECTIONS: usize = 512;
    pub const HTTP_LISTEN_BACKLOG: u32 = 4096;
    pub const HA_LEASE_MS: u64 = 5_000;
    pub const HA_RENEW_MS: u64 = 1_000;
    pub const SECURITY_ROTATION_OVERLAP_MS: u64 = 3_600_000;
    pub const SECURITY_KEY_REFRESH_MS: u64 = 5_000;
    pub const SECURITY_SENDER_RATE_PER_SEC: f64 = 100.0;
    pub const SECURITY_SENDER_BURST: u32 = 200;
    pub const SECURITY_AUDIT_CHECKPOINT_MS: u64 = 60_000;
    pub const SCALING_SAMPLE_MS: u64 = 1_000;
    pub const SCALING_WINDOW_MS: u64 = 10_000;
    pub const SCALING_SCALE_UP_UTILIZATION: f64 = 0.8;
    pub const SCALING_SCALE_UP_QUEUE_WAIT_MS: u64 = 2_000;
    pub const SCALING_SCALE_DOWN_UTILIZATION: f64 = 0.3;
    pub const SCALING_UP_COOLDOWN_MS: u64 = 15_000;
    pub const SCALING_DOWN_COOLDOWN_MS: u64 = 60_000;
    pub const SCALING_MAX_STEP: u32 = 10;
    pub const SCALING_MIN_LIFETIME_MS: u64 = 60_000;
    pub const SCALING_REQUEST_TIMEOUT_MS: u64 = 30_000;
    pub const TASKS_DEFAULT_TIMEOUT_MS: u64 = 30_000;
    pub const TASKS_DEFAULT_MAX_RETRIES: u32 = 3;
    pub const TASKS_AGING_MS_PER_PRIORITY: u64 = 2_000;
    pub const TASKS_ACK_TIMEOUT_MS: u64 = 5_000;
    pub const TASKS_RETRY_BACKOFF_MS: u64 = 500;
    pub const TASKS_RETRY_BACKOFF_MAX_MS: u64 = 30_000;
    pub const TASKS_IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;
    pub const TASKS_RETENTION_MS: u64 = 24 * 3600 * 1000;
    pub const TASKS_MAX_SKEW: f64 = 3.0;
    pub const TASKS_HEALTH_SUCCESS_STEP: u32 = 5;
    pub const TASKS_HEALTH_FAILURE_STEP: u32 = 20;
    pub const TASKS_QUARANTINE_BELOW: u32 = 50;
    pub const TASKS_QUARANTINE_MS: u64 = 30_000;
    pub const TASKS_QUARANTINE_MAX_PERCENT: u32 = 50;
    pub const TASKS_PROBATION_UNTIL: u32 = 70;
    pub const TASKS_QUOTA_WINDOW_MS: u64 = 60_000;
    pub const TASKS_HEALTH_MEMORY_MS: u64 = 3_600_000;
    pub const TASKS_REPLICAS: u32 = 1;
    pub const TASKS_REPLICATION_TIMEOUT_MS: u64 = 500;
    pub const TASKS_PROGRESS_TIMEOUT_MS: u64 = 60_000;
    pub const TASKS_POISON_AFTER: u32 = 2;
    pub const GOVERNANCE_QUORUM: f64 = 2.0 / 3.0;
    pub const GOVERNANCE_DEADLINE_MS: u64 = 30_000;
    pub const GOVERNANCE_SCALE_THRESHOLD: u32 = 100;
    pub const BUDGETS_ALLOWANCE: f64 = 0.0;
    pub const BUDGETS_MIN_BALANCE: f64 = 0.0;
    pub const BUDGETS_WINDOW_MS: u64 = 86_400_000;
}

/// Why a progress timeout is refused: 0 (off) or 100 ms ..= 24 h.
fn progress_timeout_refused(v: u64) -> Option<String> {
    let max = fleet_protocol::task::MAX_TIMEOUT_MS;
    (v != 0 && !(100..=max).contains(&v))
        .then(|| format!("must be 0 (off) or 100..={max}, got {v}"))
}

fn default_runtime_threads() -> usize {
    defaults::FLEET_RUNTIME_THREADS
}

fn default_shutdown_grace_ms() -> u64 {
    defaults::FLEET_SHUTDOWN_GRACE_MS
}

fn default_workers() -> usize {
    defaults::FLEET_WORKERS
}

/// Why a configuration was refused: the field and the reason (the first
/// problem found), and any other problem of the same file (`also`).
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {field}: {reason}{}", also_text(also))]
pub struct ConfigError {
    pub source_name: String,
    pub field: String,
    pub reason: String,
    pub also: Vec<Problem>,
}

fn also_text(also: &[Problem]) -> String {
    also.iter()
        .map(|p| format!("\n  and {}: {}", p.field, p.reason))
        .collect()
}

impl ConfigError {
    /// One problem, from somewhere other than validation.
    fn one(source_name: impl Into<String>, field: &str, reason: String) -> ConfigError {
        ConfigError {
            source_name: source_name.into(),
            field: field.into(),
            reason,
            also: Vec::new(),
        }
    }
}

/// A rule a setting breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

/// Every problem validation found, in the order found; each section's
/// `validate` adds to it.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn into_result(self) -> Result<(), Problems> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// The problems as the error of the file `source_name`.
    pub fn into_error(self, source_name: impl Into<String>) -> ConfigError {
        let mut all = self.0.into_iter();
        let first = all.next().unwrap_or_else(|| Problem {
            field: "(config)".into(),
            reason: "refused".into(),
        });
        ConfigError {
            source_name: source_name.into(),
            field: first.field,
            reason: first.reason,
            also: all.collect(),
        }
    }

    /// Every problem.
    pub fn all(&self) -> &[Problem] {
        &self.0
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self
            .0
            .iter()
            .map(|p| format!("{}: {}", p.field, p.reason))
            .collect();
        f.write_str(&lines.join("; "))
    }
}

impl Config {
    /// What the task scripts take from `[tasks]`.
    pub fn task_policy(&self) -> TaskPolicy {
        let t = &self.tasks;
        TaskPolicy {
            aging_ms_per_priority: t.aging_ms_per_priority,
            ack_timeout_ms: t.ack_timeout_ms,
            retry_backoff_ms: t.retry_backoff_ms,
            retry_backoff_max_ms: t.retry_backoff_max_ms,
            idempotency_ttl_ms: t.idempotency_ttl_ms,
            retention_ms: t.retention_ms,
        }
    }

    /// What a submission gets for the fields it leaves out.
    pub fn task_defaults(&self) -> TaskDefaults {
        TaskDefaults {
            timeout_ms: self.tasks.default_timeout_ms,
            max_retries: self.tasks.default_max_retries,
        }
    }

    /// The agent-health policy of `[tasks]`.
    pub fn health_policy(&self) -> HealthPolicy {
        let t = &self.tasks;
        HealthPolicy {
            success_step: t.health_success_step,
            failure_step: t.health_failure_step,
            quarantine_below: t.quarantine_below,
            quarantine_ms: t.quarantine_ms,
            quarantine_max_percent: t.quarantine_max_percent,
            probation_until: t.probation_until,
            quota_window_ms: t.quota_window_ms,
            memory_ms: t.health_memory_ms,
            poison_after: t.poison_after,
            failure_window_ms: self.failure_window().as_millis() as u64,
        }
    }

    /// Each pool's strategy and quota, as the scripts read them.
    pub fn pool_settings(&self) -> Vec<PoolSettings> {
        self.pools
            .iter()
            .map(|(pool, pc)| PoolSettings {
                pool: *pool,
                strategy: pc.strategy,
                quota: pc.quota,
                progress_timeout_ms: pc
                    .progress_timeout_ms
                    .unwrap_or(self.tasks.progress_timeout_ms),
                allowance: self.allowance(*pool),
            })
            .collect()
    }

    /// The default path the binary reads.
    pub const DEFAULT_PATH: &'static str = "config/fleet.toml";

    /// Reads, parses and validates a file, then applies environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(&name, "(file)", format!("cannot read: {e}")))?;
        let mut config = Config::parse(&name, &text)?;
        config.apply_env(|k| std::env::var(k).ok())?;
        config
            .validate()
            .map_err(|p| p.into_error(format!("{name} (after environment overrides)")))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates TOML text without reading the environment.
    pub fn parse(source_name: &str, text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let reason = e.to_string().trim().replace('\n', " ");
            ConfigError::one(source_name, "(syntax)", reason)
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::one(source_name, &field, inner.message().trim().to_string())
        })?;
        config.validate().map_err(|p| p.into_error(source_name))?;
        Ok(config)
    }

    /// Deployment overrides: `REDIS_URL` (or `FLEET_REDIS_URL`), `FLEET_HTTP_ADDR`,
    /// `FLEET_PREFIX`, `FLEET_ADVERTISE_ADDR`, `FLEET_COMMANDER_KEY`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(url) = get("FLEET_REDIS_URL").or_else(|| get("REDIS_URL")) {
            self.redis.url = url;
        }
        if let Some(addr) = get("FLEET_HTTP_ADDR") {
            self.http.addr = addr.parse().map_err(|e| {
                let reason = format!("not a socket address ({e}): {addr:?}");
                ConfigError::one("environment", "FLEET_HTTP_ADDR", reason)
            })?;
        }
        if let Some(prefix) = get("FLEET_PREFIX") {
            self.fleet.prefix = prefix;
        }
        if let Some(addr) = get("FLEET_ADVERTISE_ADDR") {
            self.ha.advertise_addr = addr;
        }
        if let Some(file) = get("FLEET_COMMANDER_KEY") {
            // A path in the environment is relative to the working directory.
            let file = std::path::PathBuf::from(file);
            self.security.commander_key_file = std::path::absolute(&file).unwrap_or(file);
        }
        Ok(())
    }

    /// Checks every rule the types cannot express, section by section, and
    /// returns every broken one, not only the first.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut p = Problems::default();
        self.redis.validate(&mut p);
        self.http.validate(&mut p);
        self.security.validate(&mut p);
        self.log.validate(&mut p);
        self.fleet.validate(&mut p);
        for pool in PoolType::ALL {
            if !self.pools.contains_key(&pool) {
                p.add(
                    format!("pools.{pool}"),
                    "missing: all 16 pools must be configured",
                );
            }
        }
        self.tasks.validate(&mut p);
        self.validate_budgets(&mut p);
        self.governance.validate(&mut p);
        self.ha.validate(&mut p);
        self.scaling.validate("scaling", &mut p);
        self.validate_pools(&mut p);
        p.into_result()
    }

    /// `[budgets]`, and each pool's own allowance.
    fn validate_budgets(&self, p: &mut Problems) {
        let b = &self.budgets;
        if b.unit.is_empty()
            || b.unit.len() > 32
            || !b
                .unit
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            p.add(
                "budgets.unit",
                format!("must be 1..=32 of [A-Za-z0-9_], got {:?}", b.unit),
            );
        }
        for (name, v) in [
            ("budgets.allowance", b.allowance),
            ("budgets.min_balance", b.min_balance),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                p.add(name, format!("must be a number >= 0, got {v}"));
            }
        }
        for (pool, pc) in &self.pools {
            if let Some(v) = pc.budget {
                if !(v.is_finite() && v >= 0.0) {
                    p.add(
                        format!("pools.{pool}.budget"),
                        format!("must be a number >= 0, got {v}"),
                    );
                }
            }
        }
    }

    /// A pool's budget allowance per window (0: its agents have none).
    pub fn allowance(&self, pool: PoolType) -> f64 {
        self.pool(pool).budget.unwrap_or(self.budgets.allowance)
    }

    /// Each `[pools.NAME]`, and their minima against the fleet's cap.
    fn validate_pools(&self, p: &mut Problems) {
        let mut min_sum: u64 = 0;
        for (pool, pc) in &self.pools {
            let at = |k: &str| format!("pools.{pool}.{k}");
            if pc.max_agents == 0 {
                p.add(at("max_agents"), "must be at least 1");
            }
            if pc.min_agents > pc.max_agents {
                p.add(
                    at("min_agents"),
                    format!(
                        "must be <= max_agents ({}), got {}",
                        pc.max_agents, pc.min_agents
                    ),
                );
            }
            if !(1..=10).contains(&pc.priority_level) {
                p.add(
                    at("priority_level"),
                    format!("must be 1..=10, got {}", pc.priority_level),
                );
            }
            let r = &pc.resource_limits;
            for (name, v) in [
                ("memory_mb", r.memory_mb),
                ("cpu", r.cpu),
                ("network_mbps", r.network_mbps),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    p.add(
                        at(&format!("resource_limits.{name}")),
                        format!("must be a positive number, got {v}"),
                    );
                }
            }
            if let Some(q) = pc.quota {
                if q == 0 {
                    p.add(at("quota"), "must be at least 1");
                } else if pc.strategy != Strategy::WeightedFair {
                    p.add(
                        at("quota"),
                        "applies only with strategy = \"weighted_fair\"",
                    );
                }
            }
            if let Some(reason) = pc.progress_timeout_ms.and_then(progress_timeout_refused) {
                p.add(at("progress_timeout_ms"), reason);
            }
            self.scaling_for(*pool)
                .validate(&format!("pools.{pool}.scaling"), p);
            min_sum += u64::from(pc.min_agents);
        }
        if min_sum > u64::from(self.fleet.max_agents) {
            p.add(
                "fleet.max_agents",
                format!("is below the sum of the pools' min_agents ({min_sum})"),
            );
        }
    }

    /// A pool's scaling policy: the fleet defaults with its overrides.
    pub fn scaling_for(&self, pool: PoolType) -> ScalingPolicy {
        self.scaling.with(&self.pool(pool).scaling)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.fleet.heartbeat_interval_ms)
    }

    /// Silence after which an agent is declared failed.
    pub fn failure_window(&self) -> Duration {
        self.heartbeat_interval() * self.fleet.missed_heartbeats
    }

    pub fn pool(&self, pool: PoolType) -> &PoolConfig {
        &self.pools[&pool]
    }
}

impl RedisConfig {
    fn validate(&self, p: &mut Problems) {
        let schemes = ["redis://", "rediss://", "unix://", "redis+sentinel://"];
        if !schemes.iter().any(|s| self.url.starts_with(s)) {
            p.add(
                "redis.url",
                format!(
                    "must start with redis://, rediss://, redis+sentinel:// or unix://, got {:?}",
                    fleet_store::connection::url::redacted(&self.url)
                ),
            );
        } else if let Err(e) = fleet_store::connection::url::parse(&self.url) {
            p.add("redis.url", e.to_string());
        }
    }
}

impl HttpConfig {
    fn validate(&self, p: &mut Problems) {
        if self.max_connections == 0 {
            p.add("http.max_connections", "must be at least 1");
        }
        if !(1..=65_535).contains(&self.listen_backlog) {
            p.add(
                "http.listen_backlog",
                format!("must be 1..=65535, got {}", self.listen_backlog),
            );
        }
        if !(100..=3_600_000).contains(&self.idle_timeout_ms) {
            p.add(
                "http.idle_timeout_ms",
                format!("must be 100..=3600000, got {}", self.idle_timeout_ms),
            );
        }
    }
}

impl SecurityConfig {
    fn validate(&self, p: &mut Problems) {
        if !(1_000..=600_000).contains(&self.window_ms) {
            p.add(
                "security.window_ms",
                format!("must be 1000..=600000, got {}", self.window_ms),
            );
        }
        if !(self.sender_rate_per_sec > 0.0 && self.sender_rate_per_sec <= 1e6) {
            p.add(
                "security.sender_rate_per_sec",
                format!(
                    "must be above 0 and at most 1e6, got {}",
                    self.sender_rate_per_sec
                ),
            );
        }
        if self.sender_burst == 0 {
            p.add("security.sender_burst", "must be at least 1");
        }
        if !(100..=600_000).contains(&self.key_refresh_ms) {
            p.add(
                "security.key_refresh_ms",
                format!("must be 100..=600000, got {}", self.key_refresh_ms),
            );
        }
        if !(1_000..=86_400_000).contains(&self.audit_checkpoint_ms) {
            p.add(
                "security.audit_checkpoint_ms",
                format!("must be 1000..=86400000, got {}", self.audit_checkpoint_ms),
            );
        }
    }
}

impl LogConfig {
    fn validate(&self, p: &mut Problems) {
        if let Some(level) = &self.level {
            if let Err(e) = level.parse::<tracing_subscriber::EnvFilter>() {
                p.add("log.level", format!("not a log filter: {e}"));
            }
        }
    }
}

impl FleetConfig {
    fn validate(&self, p: &mut Problems) {
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            p.add("fleet.prefix", "must be non-empty without whitespace");
        }
        if self.max_agents == 0 {
            p.add("fleet.max_agents", "must be at least 1");
        }
        if !(10..=600_000).contains(&self.heartbeat_interval_ms) {
            p.add(
                "fleet.heartbeat_interval_ms",
                format!("must be 10..=600000, got {}", self.heartbeat_interval_ms),
            );
        }
        if !(1..=100).contains(&self.missed_heartbeats) {
            p.add("fleet.missed_heartbeats", "must be 1..=100");
        }
        if self.max_failures == 0 {
            p.add("fleet.max_failures", "must be at least 1");
        }
        if self.detect_tick_ms == 0 || self.detect_tick_ms > self.heartbeat_interval_ms {
            p.add("fleet.detect_tick_ms", "must be 1..=heartbeat_interval_ms");
        }
        if self.status_interval_ms == 0 {
            p.add("fleet.status_interval_ms", "must be at least 1");
        }
        if !(256..=1 << 20).contains(&self.max_message_bytes) {
            p.add("fleet.max_message_bytes", "must be 256..=1048576");
        }
        if !(1..=256).contains(&self.workers) {
            p.add("fleet.workers", "must be 1..=256");
        }
        if !(100..=300_000).contains(&self.shutdown_grace_ms) {
            p.add("fleet.shutdown_grace_ms", "must be 100..=300000");
        }
        if self.runtime_threads > 64 {
            p.add("fleet.runtime_threads", "must be 0..=64 (0: one per core)");
        }
    }
}

impl TaskConfig {
    fn validate(&self, p: &mut Problems) {
        for (name, v) in [
            ("tasks.default_timeout_ms", self.default_timeout_ms),
            ("tasks.aging_ms_per_priority", self.aging_ms_per_priority),
            ("tasks.ack_timeout_ms", self.ack_timeout_ms),
            ("tasks.retry_backoff_ms", self.retry_backoff_ms),
            ("tasks.idempotency_ttl_ms", self.idempotency_ttl_ms),
            ("tasks.retention_ms", self.retention_ms),
            ("tasks.quarantine_ms", self.quarantine_ms),
            ("tasks.quota_window_ms", self.quota_window_ms),
            ("tasks.health_memory_ms", self.health_memory_ms),
            ("tasks.replication_timeout_ms", self.replication_timeout_ms),
        ] {
            if v == 0 {
                p.add(name, "must be at least 1");
            }
        }
        if self.replicas == 0 {
            p.add("tasks.replicas", "must be at least 1");
        }
        if !(self.max_skew.is_finite() && self.max_skew >= 1.5) {
            p.add("tasks.max_skew", "must be a number >= 1.5");
        }
        if self.retry_backoff_max_ms < self.retry_backoff_ms {
            p.add(
                "tasks.retry_backoff_max_ms",
                "must be >= tasks.retry_backoff_ms",
            );
        }
        for (name, v) in [
            ("tasks.health_success_step", self.health_success_step),
            ("tasks.health_failure_step", self.health_failure_step),
        ] {
            if !(1..=100).contains(&v) {
                p.add(name, format!("must be 1..=100, got {v}"));
            }
        }
        if !(1..=100).contains(&self.quarantine_max_percent) {
            p.add(
                "tasks.quarantine_max_percent",
                format!("must be 1..=100, got {}", self.quarantine_max_percent),
            );
        }
        if self.probation_until > 100 {
            p.add("tasks.probation_until", "must be at most 100");
        } else if self.quarantine_below >= self.probation_until {
            p.add(
                "tasks.quarantine_below",
                "must be below tasks.probation_until (both 0..=100)",
            );
        }
        if self.default_max_retries > fleet_protocol::task::MAX_RETRIES {
            p.add("tasks.default_max_retries", "must be at most 100");
        }
        if let Some(reason) = progress_timeout_refused(self.progress_timeout_ms) {
            p.add("tasks.progress_timeout_ms", reason);
        }
    }
}

impl GovernanceConfig {
    fn validate(&self, p: &mut Problems) {
        if !(self.quorum > 0.5 && self.quorum <= 1.0) {
            p.add(
                "governance.quorum",
                format!("must be above 0.5 and at most 1, got {}", self.quorum),
            );
        }
        if !(100..=3_600_000).contains(&self.deadline_ms) {
            p.add(
                "governance.deadline_ms",
                format!("must be 100..=3600000, got {}", self.deadline_ms),
            );
        }
        if let Some(a) = self
            .actions
            .iter()
            .find(|a| !GOVERNABLE.contains(&a.as_str()))
        {
            p.add(
                "governance.actions",
                format!(
                    "unknown action {a:?}; governable: {}",
                    GOVERNABLE.join(", ")
                ),
            );
        }
    }
}

impl HaConfig {
    fn validate(&self, p: &mut Problems) {
        if !(50..=60_000).contains(&self.renew_ms) {
            p.add(
                "ha.renew_ms",
                format!("must be 50..=60000, got {}", self.renew_ms),
            );
        } else if self.lease_ms < 3 * self.renew_ms {
            p.add(
                "ha.lease_ms",
                format!(
                    "must be at least 3 x ha.renew_ms ({}), so that one lost renewal does not \
                     end a term; got {}",
                    3 * self.renew_ms,
                    self.lease_ms
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/fleet.toml"
        ))
        .unwrap()
    }

    #[test]
    fn shipped_config_is_valid() {
        let c = Config::parse("fleet.toml", &shipped()).unwrap();
        assert_eq!(c.pools.len(), 16);
        assert_eq!(c.fleet.prefix, "swarm:phase-1");
        assert_eq!(c.fleet.heartbeat_interval_ms, 5000);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = shipped().replacen("max_agents = 200", "max_agents = \"lots\"", 1);
        let e = Config::parse("f", &bad).unwrap_err();
        assert_eq!(e.field, "pools.coder.max_agents", "{e}");

        let bad = shipped().replacen("priority_level = 8", "priority_level = 11", 1);
        let e = Config::parse("f", &bad).unwrap_err();
        assert_eq!(e.field, "pools.coder.priority_level", "{e}");
        assert!(e.reason.contains("1..=10"));

        let bad = shipped().replacen("[pools.coder]", "[pools.coders]", 1);
        let e = Config::parse("f", &bad).unwrap_err();
        assert_eq!(e.field, "pools", "{e}");
        assert!(e.reason.contains("unknown pool \"coders\""), "{e}");

        let bad = shipped().replacen("min_agents = 5", "min_agents = 500", 1);
        let e = Config::parse("f", &bad).unwrap_err();
        assert_eq!(e.field, "pools.coder.min_agents", "{e}");

        let bad = shipped().replacen(
            "quarantine_max_percent = 50",
            "quarantine_max_percent = 0",
            1,
        );
        let e = Config::parse("f", &bad).unwrap_err();
        assert_eq!(e.field, "tasks.quarantine_max_percent", "{e}");

        let bad = shipped().replacen("runtime_threads = 1", "runtime_threads = 100", 1);
        let e = Config::parse("f", &bad).unwrap_err();
        assert_eq!(e.field, "fleet.runtime_threads", "{e}");

        let bad = shipped().replacen("heartbeat_interval_ms", "heartbeat_intervall_ms", 1);
        let e = Config::parse("f", &bad).unwrap_err();
        assert!(e.reason.contains("heartbeat_intervall_ms"), "{e}");
    }

    /// A file with several mistakes names them all at once, in one error.
    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let bad = shipped()
            .replacen("priority_level = 8", "priority_level = 11", 1)
            .replacen(
                "quarantine_max_percent = 50",
                "quarantine_max_percent = 0",
                1,
            )
            .replacen("runtime_threads = 1", "runtime_threads = 100", 1);
        let e = Config::parse("f", &bad).unwrap_err();
        let mut fields: Vec<&str> = std::iter::once(e.field.as_str())
            .chain(e.also.iter().map(|p| p.field.as_str()))
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "fleet.runtime_threads",
                "pools.coder.priority_level",
                "tasks.quarantine_max_percent"
            ],
            "{e}"
        );
        let text = e.to_string();
        assert!(text.contains("\n  and "), "{text}");
    }

    #[test]
    fn environment_overrides_redis_url() {
        let mut c = Config::parse("f", &shipped()).unwrap();
        c.apply_env(|k| (k == "REDIS_URL").then(|| "redis://10.0.0.1:7000".to_string()))
            .unwrap();
        assert_eq!(c.redis.url, "redis://10.0.0.1:7000");
        let e = c
            .apply_env(|k| (k == "FLEET_HTTP_ADDR").then(|| "nope".to_string()))
            .unwrap_err();
        assert_eq!(e.field, "FLEET_HTTP_ADDR");
    }
}
