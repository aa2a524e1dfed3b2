//! Fleet status as it travels: `GET /v1/fleet`, `GET /v1/pools`, the
//! `fleet_status` and `pool_status` messages, and the CLI's table.

use crate::pool::{AgentStatus, PoolType, ResourceLimits, Strategy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /v1/fleet`, `fleet-commander status`, and the `fleet_status` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    pub total_agents: u64,
    pub max_agents: u32,
    pub by_status: BTreeMap<AgentStatus, u64>,
    pub pools: BTreeMap<PoolType, PoolCounts>,
    /// When the counters were read (ms since the epoch).
    pub generated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolCounts {
    pub current_agents: u64,
    pub min_agents: u32,
    pub max_agents: u32,
    pub by_status: BTreeMap<AgentStatus, u64>,
}

/// How evenly a pool's work is spread over its agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fairness {
    pub tasks_per_agent: f64,
    pub min_tasks: u64,
    pub max_tasks: u64,
    /// max / max(1, min).
    pub skew_ratio: f64,
    /// `balanced` (skew <= 1.5), `mild_imbalance` (up to the configured
    /// max skew) or `strong_imbalance`.
    pub label: String,
}

impl Fairness {
    pub fn compute(agents: u64, min: u64, max: u64, total: u64, max_skew: f64) -> Fairness {
        let skew = max as f64 / (min.max(1)) as f64;
        let label = if skew <= 1.5 {
            "balanced"
        } else if skew <= max_skew {
            "mild_imbalance"
        } else {
            "strong_imbalance"
        };
        Fairness {
            tasks_per_agent: if agents == 0 {
                0.0
            } else {
                total as f64 / agents as f64
            },
            min_tasks: min,
            max_tasks: max,
            skew_ratio: skew,
            label: label.to_string(),
        }
    }
}

/// `GET /v1/pools`: the spec's Pool Configuration with live counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    #[serde(rename = "type")]
    pub pool: PoolType,
    pub min_agents: u32,
    pub max_agents: u32,
    pub current_agents: u64,
    pub priority_level: u8,
    pub scaling_enabled: bool,
    pub resource_limits: ResourceLimits,
    pub strategy: Strategy,
    pub by_status: BTreeMap<AgentStatus, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fairness: Option<Fairness>,
}

impl FleetStatus {
    /// Agents that can take work: idle, active or busy.
    pub fn live(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| s.is_live())
            .map(|(_, n)| n)
            .sum()
    }
}

/// A human-readable table of the fleet, for the CLI and the demo.
pub fn render(status: &FleetStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet: {} agents (max {}) | idle {} active {} busy {} failed {} recovering {} halted {}",
        status.total_agents,
        status.max_agents,
        status.by_status[&AgentStatus::Idle],
        status.by_status[&AgentStatus::Active],
        status.by_status[&AgentStatus::Busy],
        status.by_status[&AgentStatus::Failed],
        status.by_status[&AgentStatus::Recovering],
        status.by_status[&AgentStatus::Halted],
    );
    let _ = writeln!(
        out,
        "{:<15} {:>6} {:>9}  {:>5} {:>6} {:>5} {:>6} {:>10} {:>6}",
        "pool", "agents", "min..max", "idle", "active", "busy", "failed", "recovering", "halted"
    );
    for (pool, p) in &status.pools {
        let g = |s| p.by_status[&s];
        let _ = writeln!(
            out,
            "{:<15} {:>6} {:>9}  {:>5} {:>6} {:>5} {:>6} {:>10} {:>6}",
            pool.as_str(),
            p.current_agents,
            format!("{}..{}", p.min_agents, p.max_agents),
            g(AgentStatus::Idle),
            g(AgentStatus::Active),
            g(AgentStatus::Busy),
            g(AgentStatus::Failed),
            g(AgentStatus::Recovering),
            g(AgentStatus::Halted),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fairness_labels_follow_the_skew() {
        let f = Fairness::compute(4, 10, 12, 44, 3.0);
        assert_eq!(
            (f.skew_ratio, f.label.as_str(), f.tasks_per_agent),
            (1.2, "balanced", 11.0)
        );
        assert_eq!(Fairness::compute(2, 4, 10, 14, 3.0).label, "mild_imbalance");
        assert_eq!(
            Fairness::compute(2, 1, 10, 11, 3.0).label,
            "strong_imbalance"
        );
        // An agent with nothing done counts as 1, not as a division by zero.
        let f = Fairness::compute(2, 0, 2, 2, 3.0);
        assert_eq!((f.skew_ratio, f.label.as_str()), (2.0, "mild_imbalance"));
        assert_eq!(Fairness::compute(0, 0, 0, 0, 3.0).tasks_per_agent, 0.0);
    }
}
