//! An agent's record as it travels: the spec's Agent Configuration, served by
//! `GET /v1/agents/{id}` and sent in `register_reply`.

use crate::inbound::Resources;
use crate::pool::{AgentStatus, PoolType};
use serde::{Deserialize, Serialize};

/// The spec's Agent Configuration, as stored and as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    pub id: String,
    #[serde(rename = "type")]
    pub agent_type: String,
    pub pool: PoolType,
    pub status: AgentStatus,
    pub priority: u8,
    pub capabilities: Vec<String>,
    pub performance: Performance,
    pub health: Health,
    pub resources: Resources,
    /// Tasks the agent works on at once.
    #[serde(default = "one")]
    pub capacity: u32,
    pub load: f64,
    pub registered_at: u64,
    /// Being retired: no new tasks; it deregisters once it has finished.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Performance {
    pub tasks_completed: u64,
    pub avg_task_time: f64,
    pub success_rate: f64,
    pub last_active: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub last_heartbeat: u64,
    pub failures: u32,
    pub recovery_attempts: u32,
    /// 0-100: task failures take from it, successes give back (less).
    pub score: u32,
    /// Quarantined (no new work) until this time, ms since the epoch; 0: not.
    pub quarantined_until: u64,
    /// Back from quarantine: one task at a time until the score recovers.
    pub probation: bool,
    /// Times the agent was found stuck: heartbeating, but no progress on a
    /// task within its progress timeout.
    #[serde(default)]
    pub stuck: u32,
    /// When it was last found stuck, ms since the epoch; 0: never.
    #[serde(default)]
    pub stuck_at: u64,
}

fn one() -> u32 {
    1
}
