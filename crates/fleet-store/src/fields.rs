//! The fields of the two hashes that nearly every script touches, a task's
//! and an agent's: their one list, in one place. Rust parses the records by
//! these names ([`crate::tasks::task_from_fields`], the registry's agent
//! parser); the scripts read them by name (`read(key, ...)` in
//! `lua/common.lua`). Two tests hold the contract: every name a script reads
//! from these hashes is listed here (`scripts.rs`, a lint), and every field a
//! real run leaves in them is listed here (`tests/scripts.rs`).

/// A task's hash (`{prefix}:task:{id}`).
pub const TASK: &[&str] = &[
    "id",
    "clientId",
    "pool",
    "capabilities",
    "priority",
    "payload",
    "timeoutMs",
    "progressTimeoutMs",
    "maxRetries",
    "maxCost",
    "score",
    "state",
    "attempt",
    "retryBase",
    "agent",
    "lastAgent",
    "assignedAt",
    "submittedAt",
    "updatedAt",
    "step",
    "progress",
    "result",
    "error",
    "usage",
    "casualties",
    "history",
    "decisions",
    "watchMs",
];

/// An agent's hash (`{prefix}:agent:{id}`).
pub const AGENT: &[&str] = &[
    "id",
    "sessionKey",
    "type",
    "pool",
    "instance",
    "status",
    "priority",
    "capabilities",
    "capacity",
    "load",
    "memory",
    "cpu",
    "network",
    "inflight",
    "registeredAt",
    "lastHeartbeat",
    "sealedAt",
    "lastActive",
    "lastAssigned",
    "tasksCompleted",
    "tasksFailed",
    "avgTaskTime",
    "successRate",
    "failures",
    "recoveryAttempts",
    "health",
    "quarantinedUntil",
    "quarantines",
    "probation",
    "stuck",
    "stuckAt",
    "draining",
    "drainingSince",
    "halted",
];
