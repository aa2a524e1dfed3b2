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
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 5] = [
        AgentStatus::Idle,
        AgentStatus::Active,
        AgentStatus::Busy,
        AgentStatus::Failed,
        AgentStatus::Recovering,
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
