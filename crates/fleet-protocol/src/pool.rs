//! The 16 pool types and agent statuses.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! pools {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        /// One of the 16 agent pool types of the specification.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum PoolType { $($variant),+ }

        impl PoolType {
            pub const ALL: [PoolType; 16] = [$(PoolType::$variant),+];
            /// Position in [`PoolType::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }
            pub fn as_str(self) -> &'static str {
                match self { $(PoolType::$variant => $name),+ }
            }
        }

        impl FromStr for PoolType {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s { $($name => Ok(PoolType::$variant),)+ _ => Err(UnknownName) }
            }
        }
    };
}

pools! {
    Coder => "coder",
    Tester => "tester",
    Reviewer => "reviewer",
    Architect => "architect",
    Researcher => "researcher",
    Analyst => "analyst",
    Optimizer => "optimizer",
    Security => "security",
    Performance => "performance",
    Ui => "ui",
    Mobile => "mobile",
    Devops => "devops",
    Database => "database",
    Network => "network",
    Infrastructure => "infrastructure",
    Coordinator => "coordinator",
}

impl fmt::Display for PoolType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name did not match any known value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownName;

/// An agent's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Idle,
    Active,
    Busy,
    Failed,
    Recovering,
    /// Its budget fell below the minimum: heartbeating, given no work until
    /// an operator tops it up or its budget window renews.
    Halted,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 6] = [
        AgentStatus::Idle,
        AgentStatus::Active,
        AgentStatus::Busy,
        AgentStatus::Failed,
        AgentStatus::Recovering,
        AgentStatus::Halted,
    ];

    /// Idle, active or busy: registered and heard from.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            AgentStatus::Idle | AgentStatus::Active | AgentStatus::Busy
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Idle => "idle",
            AgentStatus::Active => "active",
            AgentStatus::Busy => "busy",
            AgentStatus::Failed => "failed",
            AgentStatus::Recovering => "recovering",
            AgentStatus::Halted => "halted",
        }
    }

    /// Statuses an agent may report about itself in a heartbeat.
    pub fn is_reportable(self) -> bool {
        matches!(
            self,
            AgentStatus::Idle | AgentStatus::Active | AgentStatus::Busy
        )
    }
}

impl FromStr for AgentStatus {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        AgentStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or(UnknownName)
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a pool picks the agent for its next task (each is a branch of the store's `lua/common.lua`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Higher agent priority, then fewer tasks in hand.
    #[default]
    Priority,
    /// The agent given a task longest ago.
    RoundRobin,
    /// The smallest share of its capacity in use, then reported load.
    LeastLoaded,
    /// The most specialised agent that can do the task.
    CapabilityMatch,
    /// Best success rate, then fastest average task time.
    Performance,
    /// Fewest completed tasks per unit of weight (the agent's priority).
    WeightedFair,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastLoaded => "least_loaded",
            Strategy::CapabilityMatch => "capability_match",
            Strategy::Performance => "performance",
            Strategy::WeightedFair => "weighted_fair",
        }
    }
}

/// Most an agent of the pool may declare at registration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceLimits {
    #[serde(rename = "memory_mb", alias = "memoryMb")]
    pub memory_mb: f64,
    pub cpu: f64,
    #[serde(rename = "network_mbps", alias = "networkMbps")]
    pub network_mbps: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(PoolType::ALL.len(), 16);
        for p in PoolType::ALL {
            assert_eq!(p.as_str().parse::<PoolType>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        for s in AgentStatus::ALL {
            assert_eq!(s.as_str().parse::<AgentStatus>(), Ok(s));
        }
        assert!("coders".parse::<PoolType>().is_err());
    }
}
