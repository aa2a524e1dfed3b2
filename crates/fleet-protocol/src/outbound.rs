//! What the commander publishes: messages to one agent, scaling requests,
//! events, and the reply to a task submission.

use crate::inbound::RefusalReason;
use crate::pool::{PoolType, Strategy};
use crate::status::{FleetStatus, PoolCounts};
use serde::{Deserialize, Serialize};
// Outbound: what the commander publishes.

/// Sent to one agent on `swarm:phase-1:agent:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    #[serde(rename_all = "camelCase")]
    RegisterReply {
        v: u32,
        reply_to: String,
        accepted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re_registered: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<Box<crate::agent::AgentRecord>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heartbeat_interval_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<RefusalReason>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// The commander's X25519 public key, when it took the agent's
        /// `sessionKey`: the session is set up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_key: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    DeregisterReply {
        v: u32,
        reply_to: String,
        removed: bool,
    },
    /// A task for this agent: acknowledge it (`task_ack`), then report
    /// `task_complete` or `task_fail` for this `attempt`.
    #[serde(rename_all = "camelCase")]
    TaskAssign {
        v: u32,
        task_id: String,
        attempt: u32,
        pool: PoolType,
        priority: u8,
        timeout_ms: u64,
        /// Report a rising `step` at least this often, or the attempt is
        /// taken back as stuck (0: not watched).
        #[serde(default)]
        progress_timeout_ms: u64,
        /// The most `usage` this attempt may report before the task fails
        /// as `over_budget`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_cost: Option<f64>,
        payload: serde_json::Value,
    },
    /// The commander does not know this agent (never registered, or removed
    /// after repeated failures): register again.
    #[serde(rename_all = "camelCase")]
    Reregister { v: u32, reason: String },
    /// Take no new work, finish what you hold, then deregister.
    #[serde(rename_all = "camelCase")]
    Drain { v: u32, reason: String },
    /// The task was cancelled: stop working on this attempt; a result for it
    /// would be ignored.
    #[serde(rename_all = "camelCase")]
    TaskCancel {
        v: u32,
        task_id: String,
        attempt: u32,
    },
    /// The commander has read this attempt's `task_complete` or `task_fail`:
    /// stop re-sending it. `recorded`: it counted (or, re-sent, had already
    /// completed the task); false: the attempt was no longer current and the
    /// report was ignored.
    #[serde(rename_all = "camelCase")]
    ResultAck {
        v: u32,
        task_id: String,
        attempt: u32,
        recorded: bool,
    },
    /// Your budget fell below its minimum (`balance`, in `unit`): you get no
    /// new work until `resume`. Finish or drop what you hold; keep
    /// heartbeating.
    #[serde(rename_all = "camelCase")]
    Halt {
        v: u32,
        reason: String,
        balance: f64,
        unit: String,
    },
    /// Your budget is above its minimum again (a top-up, a reset, a new
    /// window): you get work again.
    #[serde(rename_all = "camelCase")]
    Resume { v: u32, balance: f64 },
}

/// On `swarm:phase-1:scaling`, from the commander to spawners.
/// Requests carry an id: a spawner acts on each id once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Scaling {
    /// Start `count` more agents in `pool`.
    #[serde(rename_all = "camelCase")]
    ScaleUp {
        v: u32,
        id: String,
        pool: PoolType,
        count: u32,
        reason: String,
        ts: u64,
    },
    /// These agents are being drained and will deregister once idle.
    #[serde(rename_all = "camelCase")]
    ScaleDown {
        v: u32,
        id: String,
        pool: PoolType,
        agents: Vec<String>,
        reason: String,
        ts: u64,
    },
    /// Request `id` was not fulfilled in time: `missing` agents never came (up)
    /// or never left (down).
    #[serde(rename_all = "camelCase")]
    ScaleTimeout {
        v: u32,
        id: String,
        pool: PoolType,
        direction: String,
        missing: u32,
        ts: u64,
    },
    /// `taskId` has waited a whole scaling window for capabilities that no
    /// agent of `pool` declares: it does not grow the pool (a spawner that
    /// can start such an agent may). Sent once per task.
    #[serde(rename_all = "camelCase")]
    Unschedulable {
        v: u32,
        pool: PoolType,
        task_id: String,
        capabilities: Vec<String>,
        waited_ms: u64,
        ts: u64,
    },
}

/// Leadership events on `swarm:phase-1:fleet` (beside the fleet status):
/// one each time a commander takes over as the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Leadership {
    #[serde(rename_all = "camelCase")]
    CommanderTookOver {
        v: u32,
        commander_id: String,
        epoch: u64,
        /// Its HTTP API.
        address: String,
        /// The commander that led before, if the lease still named it.
        previous: Option<String>,
        ts: u64,
    },
}

/// Health events on `swarm:phase-1:health` and registry events on
/// `swarm:phase-1:registry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    #[serde(rename_all = "camelCase")]
    AgentRegistered {
        v: u32,
        agent_id: String,
        pool: PoolType,
        re_registered: bool,
        ts: u64,
    },
    #[serde(rename_all = "camelCase")]
    AgentDeregistered {
        v: u32,
        agent_id: String,
        pool: PoolType,
        ts: u64,
    },
    #[serde(rename_all = "camelCase")]
    AgentFailed {
        v: u32,
        agent_id: String,
        pool: PoolType,
        last_heartbeat: u64,
        failures: u32,
        ts: u64,
    },
    #[serde(rename_all = "camelCase")]
    AgentRecovering {
        v: u32,
        agent_id: String,
        pool: PoolType,
        ts: u64,
    },
    #[serde(rename_all = "camelCase")]
    AgentRecovered {
        v: u32,
        agent_id: String,
        pool: PoolType,
        ts: u64,
    },
    #[serde(rename_all = "camelCase")]
    AgentRemoved {
        v: u32,
        agent_id: String,
        pool: PoolType,
        reason: String,
        ts: u64,
    },
    /// Health fell below the quarantine line (published by the outcome
    /// script): no new work until `until` (ms since the epoch).
    #[serde(rename_all = "camelCase")]
    AgentQuarantined {
        v: u32,
        agent_id: String,
        health: u32,
        until: u64,
        ts: u64,
    },
    /// Quarantine over: on probation, one task at a time.
    #[serde(rename_all = "camelCase")]
    AgentProbation { v: u32, agent_id: String, ts: u64 },
    /// The agent's budget fell below its minimum: halted, no new work.
    #[serde(rename_all = "camelCase")]
    AgentHalted {
        v: u32,
        agent_id: String,
        balance: f64,
        ts: u64,
    },
    /// A halted agent's budget is above its minimum again: it gets work.
    #[serde(rename_all = "camelCase")]
    AgentResumed {
        v: u32,
        agent_id: String,
        balance: f64,
        ts: u64,
    },
    /// The agent heartbeats but showed no progress on `taskId` within its
    /// progress timeout: the task was taken back (published by the script
    /// with the agent's quarantine); `count` is how often it was stuck.
    #[serde(rename_all = "camelCase")]
    AgentStuck {
        v: u32,
        agent_id: String,
        task_id: String,
        attempt: u32,
        count: u32,
        ts: u64,
    },
}

/// Task events on `swarm:phase-1:allocation`, published by the store's
/// scripts as each decision happens (the allocation channel is for watching;
/// the task's record in Redis is the truth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: TaskEventKind,
    pub task_id: String,
    pub pool: PoolType,
    /// The agent that held (or now holds) the attempt; empty when the task
    /// was cancelled before it was assigned.
    pub agent_id: String,
    pub attempt: u32,
    /// `task_assigned` only: the pool's strategy that chose the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    pub ts: u64,
}

/// What happened to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskEventKind {
    /// The task went to `agentId` for this attempt.
    TaskAssigned,
    TaskCompleted,
    /// The attempt failed; the task waits out its backoff.
    TaskRetrying,
    /// Out of retries: dead-lettered.
    TaskDead,
    /// Taken back from its agent (lease ran out, agent dead or stuck):
    /// back in its queue.
    TaskRequeued,
    TaskCancelled,
    /// Taken back, and its attempts took down `tasks.poison_after` agents:
    /// held in the poison set until an operator requeues it.
    TaskPoisoned,
}

/// The reply to `task_submit`, on the submitter's reply channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "task_submit_reply", rename_all = "camelCase")]
pub struct TaskSubmitReply {
    pub v: u32,
    pub reply_to: String,
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<crate::task::SubmitRefusal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `fleet_status` on the fleet channel (periodic, or a reply to `status_request`).
#[derive(Serialize)]
#[serde(tag = "type", rename = "fleet_status")]
pub struct FleetStatusMessage<'a> {
    pub v: u32,
    #[serde(rename = "replyTo", skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<&'a str>,
    pub status: &'a FleetStatus,
}

/// `pool_status` on a pool's channel.
#[derive(Serialize)]
#[serde(tag = "type", rename = "pool_status")]
pub struct PoolStatusMessage<'a> {
    pub v: u32,
    pub pool: PoolType,
    pub status: &'a PoolCounts,
}
