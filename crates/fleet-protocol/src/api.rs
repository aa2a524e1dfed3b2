//! The HTTP API's paths, defined once: the commander routes them, and the
//! CLI and the tests build their requests from them. A `{id}` or `{pool}`
//! in a path is filled by [`path`]. (The console's `app.js` cannot import
//! Rust; its paths are checked against these by a test.)

pub const FLEET: &str = "/v1/fleet";
pub const POOLS: &str = "/v1/pools";
pub const POOL_DRAIN: &str = "/v1/pools/{pool}/drain";
pub const POOL_SIZE: &str = "/v1/pools/{pool}/size";
pub const POOL_PAUSE: &str = "/v1/pools/{pool}/pause";
pub const POOL_RESUME: &str = "/v1/pools/{pool}/resume";
pub const POOL_CLEAR: &str = "/v1/pools/{pool}/clear";
pub const AGENTS: &str = "/v1/agents";
pub const AGENT: &str = "/v1/agents/{id}";
pub const AGENT_DRAIN: &str = "/v1/agents/{id}/drain";
pub const AGENT_BUDGET: &str = "/v1/agents/{id}/budget";
pub const DEPARTED: &str = "/v1/departed";
pub const TASKS: &str = "/v1/tasks";
pub const TASK: &str = "/v1/tasks/{id}";
pub const TASK_CANCEL: &str = "/v1/tasks/{id}/cancel";
pub const TASK_EVIDENCE: &str = "/v1/tasks/{id}/evidence";
pub const DEAD_LETTERS: &str = "/v1/dead-letters";
pub const DEAD_LETTERS_REQUEUE: &str = "/v1/dead-letters/requeue";
pub const DEAD_LETTERS_DELETE: &str = "/v1/dead-letters/delete";
pub const DEAD_LETTER_REQUEUE: &str = "/v1/dead-letters/{id}/requeue";
pub const POISON: &str = "/v1/poison";
pub const POISON_REQUEUE: &str = "/v1/poison/{id}/requeue";
pub const SCALING: &str = "/v1/scaling";
pub const AUDIT: &str = "/v1/audit";
pub const COMMANDERS: &str = "/v1/commanders";
pub const HISTORY: &str = "/v1/history";
pub const GOVERNANCE: &str = "/v1/governance";
pub const PROPOSAL: &str = "/v1/governance/proposals/{id}";
pub const EVENTS: &str = "/v1/events";
pub const CONSOLE: &str = "/";
pub const CONSOLE_SCRIPT: &str = "/console/app.js";
pub const CONSOLE_STYLE: &str = "/console/app.css";
pub const CONSOLE_SESSION: &str = "/console/session";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";

/// Every path, for the tests that check the docs and the console use them.
pub const ALL: &[&str] = &[
    FLEET,
    POOLS,
    POOL_DRAIN,
    POOL_SIZE,
    POOL_PAUSE,
    POOL_RESUME,
    POOL_CLEAR,
    AGENTS,
    AGENT,
    AGENT_DRAIN,
    AGENT_BUDGET,
    DEPARTED,
    TASKS,
    TASK,
    TASK_CANCEL,
    TASK_EVIDENCE,
    DEAD_LETTERS,
    DEAD_LETTERS_REQUEUE,
    DEAD_LETTERS_DELETE,
    DEAD_LETTER_REQUEUE,
    POISON,
    POISON_REQUEUE,
    SCALING,
    AUDIT,
    COMMANDERS,
    HISTORY,
    GOVERNANCE,
    PROPOSAL,
    EVENTS,
    CONSOLE,
    CONSOLE_SCRIPT,
    CONSOLE_STYLE,
    CONSOLE_SESSION,
    HEALTHZ,
    READYZ,
    METRICS,
];

/// `template` with its one placeholder (`{id}`, `{pool}`) replaced by
/// `value`: `path(TASK, "abc")` is `/v1/tasks/abc`.
pub fn path(template: &str, value: impl std::fmt::Display) -> String {
    match (template.find('{'), template.find('}')) {
        (Some(a), Some(b)) if a < b => format!("{}{value}{}", &template[..a], &template[b + 1..]),
        _ => template.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_filled_in_its_one_place() {
        assert_eq!(path(TASK_CANCEL, "t-1"), "/v1/tasks/t-1/cancel");
        assert_eq!(path(POOL_SIZE, "ui"), "/v1/pools/ui/size");
        assert_eq!(path(FLEET, "x"), "/v1/fleet");
        for p in ALL {
            assert_eq!(p.matches('{').count(), p.matches('}').count(), "{p}");
            assert!(p.matches('{').count() <= 1, "{p}");
        }
    }
}
