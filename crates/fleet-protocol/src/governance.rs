//! Governed actions (issue 18): a privileged action becomes a proposal that
//! validator agents vote on with signed votes; it runs only once a weighted
//! quorum allows it. `docs/GUARDRAILS.md` ("Quorum votes") is the reference.

use serde::{Deserialize, Serialize};

/// Longest reason a vote may give.
pub const MAX_REASON_LEN: usize = 512;

/// The capability that makes an agent a validator.
pub const VALIDATOR: &str = "validator";

/// A validator's answer to a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Allow,
    /// Refuse, and hold what it is about aside (a governed task goes to the
    /// poison set for operators).
    Quarantine,
    Deny,
}

impl Choice {
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Allow => "allow",
            Choice::Quarantine => "quarantine",
            Choice::Deny => "deny",
        }
    }
}

/// `vote` on `swarm:phase-1:governance`, signed with the validator's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Vote {
    pub proposal_id: String,
    pub agent_id: String,
    pub vote: Choice,
    /// The proposal's `hash`, as announced: the vote is for exactly that.
    pub hash: String,
    #[serde(default)]
    pub reason: String,
}

/// How a proposal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Weighted `allow` reached the quorum: the action ran.
    Allowed,
    /// Enough weight said deny (or quarantine, or nothing) that the quorum
    /// could no longer be reached.
    Denied,
    /// As denied, with more weight for quarantine than for deny.
    Quarantined,
    /// The deadline passed first.
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Quarantined => "quarantined",
            Outcome::Expired => "expired",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "allowed" => Outcome::Allowed,
            "denied" => Outcome::Denied,
            "quarantined" => Outcome::Quarantined,
            "expired" => Outcome::Expired,
            _ => return Err(()),
        })
    }
}

/// What the commander publishes on `swarm:phase-1:governance` (signed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Announcement {
    /// A proposal is open: validators, vote before `deadline`.
    #[serde(rename_all = "camelCase")]
    Proposal {
        v: u32,
        proposal_id: String,
        action: String,
        params: serde_json::Value,
        /// What votes must name: sha256 of the proposal's canonical JSON.
        hash: String,
        /// Allowing weight needed, and the validators' total.
        quorum: u64,
        total_weight: u64,
        deadline: u64,
    },
    /// A proposal is decided; `seal` is in the audit log.
    #[serde(rename_all = "camelCase")]
    Decision {
        v: u32,
        proposal_id: String,
        outcome: Outcome,
        seal: String,
        ts: u64,
    },
}

/// Heaviest weight a validator may have.
pub const MAX_WEIGHT: u64 = 100;

/// A validator's weight as its capabilities declare it: `weight:N`
/// (1..=100), else 1. Its key's grant bounds it (crate::auth::Grants).
pub fn weight(capabilities: &[String]) -> u64 {
    capabilities
        .iter()
        .find_map(|c| c.strip_prefix("weight:")?.parse::<u64>().ok())
        .map_or(1, |w| w.clamp(1, MAX_WEIGHT))
}

/// Byzantine tolerance of `n` validators of equal weight: f = (n-1)/3.
pub fn tolerance(n: u64) -> u64 {
    n.saturating_sub(1) / 3
}
