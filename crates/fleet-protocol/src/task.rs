//! Tasks: what a submission must hold, the record the commander keeps, and
//! the messages that carry them.

use crate::inbound::{valid_agent_id, MAX_CAPABILITIES, MAX_CAPABILITY_LEN};
use crate::pool::PoolType;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Task and proposal ids are the commander's own: lowercase hyphenated UUIDs
/// (`8-4-4-4-12` hex digits). Anything else names no task, and is refused
/// before it reaches a Redis key.
pub fn valid_task_id(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// JSON kept as it was written, byte for byte: key order, number literals
/// (`1e2`, integers past 64 bits) and all. Payloads and results are opaque to
/// the commander, so it never re-serialises them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// `null`.
    pub fn null() -> RawJson {
        RawJson::from_text("null".into()).expect("null is JSON")
    }

    /// Checks that `text` is JSON and keeps it as is.
    pub fn from_text(text: String) -> Result<RawJson, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(RawJson)
    }

    /// `v` as JSON text.
    pub fn from_value(v: &Value) -> RawJson {
        RawJson::from_text(v.to_string()).expect("a Value is JSON")
    }

    /// Parsed, for reading it.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }
}

impl Default for RawJson {
    fn default() -> Self {
        RawJson::null()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// A task's place in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting in its pool's queue.
    Queued,
    /// Given to an agent, not yet acknowledged.
    Assigned,
    /// Acknowledged by the agent.
    Running,
    /// Failed; waiting out its backoff before it is queued again.
    Retrying,
    Completed,
    /// Out of retries: in the dead-letter set.
    Dead,
    Cancelled,
    /// Its attempts ended with their agents dying or stuck too often: held
    /// in the poison set until an operator requeues it.
    Poison,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Completed => "completed",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
            TaskState::Poison => "poison",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Dead | TaskState::Cancelled | TaskState::Poison
        )
    }
}

impl std::str::FromStr for TaskState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "queued" => TaskState::Queued,
            "assigned" => TaskState::Assigned,
            "running" => TaskState::Running,
            "retrying" => TaskState::Retrying,
            "completed" => TaskState::Completed,
            "dead" => TaskState::Dead,
            "cancelled" => TaskState::Cancelled,
            "poison" => TaskState::Poison,
            _ => return Err(()),
        })
    }
}

/// A task as submitted (HTTP body, or the fields of `task_submit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Submission {
    pub pool: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// 1 (lowest) to 10 (highest); default 5.
    #[serde(default, deserialize_with = "crate::lenient::opt_u8")]
    pub priority: Option<u8>,
    /// Opaque to the commander; handed to the agent as is, byte for byte.
    #[serde(default)]
    pub payload: RawJson,
    /// How long an agent may work on one attempt before it is taken back.
    #[serde(default, deserialize_with = "crate::lenient::opt_u64")]
    pub timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "crate::lenient::opt_u32")]
    pub max_retries: Option<u32>,
    /// Idempotency key: the same client id always names the same task.
    #[serde(default)]
    pub client_id: Option<String>,
    /// An attempt with no progress (a `task_progress` with a higher step)
    /// for this long is taken back and its agent flagged stuck; default:
    /// the pool's `progress_timeout_ms` (0: not watched).
    #[serde(default, deserialize_with = "crate::lenient::opt_u64")]
    pub progress_timeout_ms: Option<u64>,
    /// The most one attempt may consume (`usage`, in the budget unit); an
    /// attempt that reports more fails as `over_budget`.
    #[serde(default)]
    pub max_cost: Option<f64>,
}

/// Why a submission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmitRefusal {
    UnknownPool,
    UnmatchedCapabilities,
    InvalidFields,
    Unavailable,
    /// `tasks.durability = "replicated"` and no replica confirmed the task
    /// in time: it is on the primary, but a failover could lose it.
    NotReplicated,
}

impl SubmitRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            SubmitRefusal::UnknownPool => "unknown_pool",
            SubmitRefusal::UnmatchedCapabilities => "unmatched_capabilities",
            SubmitRefusal::InvalidFields => "invalid_fields",
            SubmitRefusal::Unavailable => "unavailable",
            SubmitRefusal::NotReplicated => "not_replicated",
        }
    }
}

/// A submission checked against the configuration, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTask {
    pub pool: PoolType,
    pub capabilities: Vec<String>,
    pub priority: u8,
    pub payload: String,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub client_id: Option<String>,
    /// None: the pool's `progress_timeout_ms`, read when the attempt starts;
    /// 0: not watched.
    pub progress_timeout_ms: Option<u64>,
    /// None: no limit.
    pub max_cost: Option<f64>,
}

/// What a submission gets for the fields it leaves out (`[tasks]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskDefaults {
    pub timeout_ms: u64,
    pub max_retries: u32,
}

pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
pub const MAX_RETRIES: u32 = 100;
/// Tasks in one `POST /v1/tasks` with an array, at most.
pub const MAX_BATCH: usize = 1000;

impl Submission {
    /// Checks every rule; `offered` is the pool's declared capabilities
    /// (empty: the pool accepts any). One rule after another, each a few
    /// lines: kept whole so that the rules read as one list.
    pub fn validate(
        &self,
        offered: impl Fn(PoolType) -> Vec<String>,
        defaults: TaskDefaults,
    ) -> Result<ValidTask, (SubmitRefusal, String)> {
        let invalid = |d: String| (SubmitRefusal::InvalidFields, d);
        if crate::inbound::json_depth(self.payload.get().as_bytes())
            > crate::inbound::MAX_JSON_DEPTH
        {
            return Err(invalid(format!(
                "payload: arrays and objects nested deeper than {}",
                crate::inbound::MAX_JSON_DEPTH
            )));
        }
        let pool: PoolType = self.pool.parse().map_err(|_| {
            (
                SubmitRefusal::UnknownPool,
                format!(
                    "unknown pool {:?}",
                    self.pool.chars().take(40).collect::<String>()
                ),
            )
        })?;
        let priority = self.priority.unwrap_or(5);
        if !(1..=10).contains(&priority) {
            return Err(invalid(format!("priority: must be 1..=10, got {priority}")));
        }
        if self.capabilities.len() > MAX_CAPABILITIES
            || self.capabilities.iter().any(|c| {
                c.is_empty() || c.len() > MAX_CAPABILITY_LEN || c.chars().any(char::is_control)
            })
        {
            return Err(invalid(format!(
                "capabilities: at most {MAX_CAPABILITIES}, each 1..={MAX_CAPABILITY_LEN} printable characters"
            )));
        }
        let offers = offered(pool);
        if !offers.is_empty() {
            if let Some(missing) = self.capabilities.iter().find(|c| !offers.contains(c)) {
                return Err((
                    SubmitRefusal::UnmatchedCapabilities,
                    format!("pool {pool} offers no capability {missing:?}"),
                ));
            }
        }
        let timeout_ms = self.timeout_ms.unwrap_or(defaults.timeout_ms);
        if !(100..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid(format!(
                "timeoutMs: must be 100..={MAX_TIMEOUT_MS}, got {timeout_ms}"
            )));
        }
        let max_retries = self.max_retries.unwrap_or(defaults.max_retries);
        if max_retries > MAX_RETRIES {
            return Err(invalid(format!("maxRetries: at most {MAX_RETRIES}")));
        }
        if let Some(c) = &self.client_id {
            if !valid_agent_id(c) {
                return Err(invalid(
                    "clientId: must be 1..=128 characters of [A-Za-z0-9._:-]".into(),
                ));
            }
        }
        let progress_timeout_ms = self.progress_timeout_ms;
        if let Some(t) = progress_timeout_ms.filter(|&t| t != 0) {
            if !(100..=MAX_TIMEOUT_MS).contains(&t) {
                return Err(invalid(format!(
                    "progressTimeoutMs: must be 0 (not watched) or 100..={MAX_TIMEOUT_MS}, got {t}"
                )));
            }
        }
        if let Some(c) = self.max_cost {
            if !(c.is_finite() && c >= 0.0) {
                return Err(invalid("maxCost: must be a number >= 0".into()));
            }
        }
        Ok(ValidTask {
            pool,
            progress_timeout_ms,
            max_cost: self.max_cost,
            capabilities: self.capabilities.clone(),
            priority,
            payload: self.payload.get().to_string(),
            timeout_ms,
            max_retries,
            client_id: self.client_id.clone(),
        })
    }
}

/// A task as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub pool: PoolType,
    pub capabilities: Vec<String>,
    pub priority: u8,
    pub payload: RawJson,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub state: TaskState,
    /// Attempts started so far (the current one, while assigned or running).
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub submitted_at: u64,
    pub updated_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<RawJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The submission's `progressTimeoutMs` (absent: the pool's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
    /// What its attempts consumed so far (`usage`, in the budget unit).
    #[serde(default)]
    pub usage: f64,
    /// Agents its attempts took down (dead, restarted or stuck on it): at
    /// `tasks.poison_after` the task is held as poison.
    #[serde(default)]
    pub casualties: u32,
    /// Every attempt, oldest first (the newest 50): the ended ones with
    /// their outcome, then the current one while assigned or running.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// One attempt at a task: who, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub agent_id: String,
    pub started_at: u64,
    /// Absent while the attempt runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// `completed`, `failed` (the agent reported it), `over_budget`,
    /// `timed_out` (its lease ran out), `stuck`, `agent_lost` (died or
    /// restarted), `agent_left`, `cancelled`; `running` while it runs.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::valid_task_id;

    #[test]
    fn task_ids_are_the_commanders_uuids() {
        assert!(valid_task_id("6f1c2a4e-0b1d-4c7e-9a3f-2d5e8b7c1a90"));
        for bad in [
            "",
            "nope",
            "agent-1",
            "a:b",
            "6F1C2A4E-0B1D-4C7E-9A3F-2D5E8B7C1A90",
            "6f1c2a4e0b1d4c7e9a3f2d5e8b7c1a90",
            "{6f1c2a4e-0b1d-4c7e-9a3f-2d5e8b7c1a90}",
            "6f1c2a4e-0b1d-4c7e-9a3f-2d5e8b7c1a9g",
            "6f1c2a4e-0b1d-4c7e-9a3f-2d5e8b7c1a90x",
            "6f1c2a4e-0b1d-4c7e-9a3f_2d5e8b7c1a90",
        ] {
            assert!(!valid_task_id(bad), "{bad:?} accepted");
        }
    }
}
