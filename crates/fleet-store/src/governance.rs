//! Governance proposals: a governed action waits for a weighted quorum of
//! validators' signed votes (`lua/vote.lua` counts each and decides,
//! atomically). A decided proposal is sealed: the sha256 of its hash, every
//! vote as signed, and the outcome; the seal goes into the audit log. Every
//! write is a script fenced by the commander's epoch, like the registry's.

use crate::keys::Keys;
use crate::scripts::{PROPOSAL_EXPIRE, PROPOSAL_OPEN, PROPOSAL_SEAL, VOTE};
use crate::Result;
use fleet_protocol::governance::{Outcome, Vote};
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// Proposals kept in the listing (older ones stay readable by id).
const KEPT: usize = 1_000;

/// What a proposal asks, as hashed and announced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proposal {
    pub id: String,
    /// `drain_pool`, `task`.
    pub action: String,
    pub params: serde_json::Value,
    /// Who asked (an operator token's name, or a submitter).
    pub proposer: String,
    pub created_at: u64,
    pub deadline: u64,
    /// Allowing weight needed.
    pub quorum: u64,
    pub total_weight: u64,
    /// The validators registered when it opened, and their weights.
    pub validators: BTreeMap<String, u64>,
}

impl Proposal {
    /// sha256 (hex) of the proposal's JSON, its fields in a fixed order:
    /// what every vote names.
    pub fn hash(&self) -> String {
        fleet_protocol::auth::hex(&Sha256::digest(
            serde_json::to_vec(self).expect("a proposal serializes"),
        ))
    }
}

/// A proposal as stored, with its votes and, once decided, its outcome and seal.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub proposal: Proposal,
    pub hash: String,
    /// `open`, or the outcome.
    pub state: String,
    /// Weight for each choice so far.
    pub weights: BTreeMap<String, u64>,
    /// Each vote as its validator signed it (header line and body).
    pub votes: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
}

/// What one vote did.
#[derive(Debug, Clone, PartialEq)]
pub enum Voted {
    /// Counted; the proposal is still open.
    Counted,
    /// Counted, and it decided the proposal.
    Decided(Outcome),
    /// Refused, and why.
    Refused(VoteRefusal),
}

/// Why a vote was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteRefusal {
    /// No such proposal.
    Unknown,
    /// The proposal is decided or past its deadline.
    Late,
    /// The voter is not among the proposal's validators.
    NotValidator,
    /// The vote names another version of the proposal.
    WrongHash,
    /// The validator has voted on it already.
    Duplicate,
}

impl VoteRefusal {
    /// Its name in metrics (`reason`) and logs, as the script says it.
    pub fn as_str(self) -> &'static str {
        match self {
            VoteRefusal::Unknown => "unknown",
            VoteRefusal::Late => "late",
            VoteRefusal::NotValidator => "not_validator",
            VoteRefusal::WrongHash => "wrong_hash",
            VoteRefusal::Duplicate => "duplicate",
        }
    }
}

/// The seal of a decision: sha256 (hex) over the proposal's hash, each vote
/// as signed (by validator id), and the outcome, one per line.
pub fn seal(hash: &str, votes: &BTreeMap<String, String>, outcome: Outcome) -> String {
    let mut h = Sha256::new();
    h.update(hash.as_bytes());
    for (agent, message) in votes {
        h.update(b"\n");
        h.update(agent.as_bytes());
        h.update(b"\n");
        h.update(message.len().to_string().as_bytes());
        h.update(b"\n");
        h.update(message.as_bytes());
    }
    h.update(b"\n");
    h.update(outcome.as_str().as_bytes());
    fleet_protocol::auth::hex(&h.finalize())
}

#[derive(Debug, Clone)]
pub struct Governance {
    keys: Keys,
    /// The writer's epoch (0 for one that only reads).
    epoch: u64,
}

impl Governance {
    pub fn new(keys: Keys, epoch: u64) -> Governance {
        Governance { keys, epoch }
    }

    /// Stores a new proposal, open until its deadline; returns its hash.
    pub async fn open(&self, conn: &mut impl ConnectionLike, p: &Proposal) -> Result<String> {
        let hash = p.hash();
        let validators = serde_json::to_string(&p.validators).expect("weights serialize");
        let params = serde_json::to_string(&p.params).expect("params serialize");
        let r = PROPOSAL_OPEN
            .fenced(&self.keys, self.epoch)
            .key("proposal", self.keys.proposal(&p.id))
            .key("open", self.keys.proposals_open())
            .key("all", self.keys.proposals())
            .arg("id", &p.id)
            .arg("action", &p.action)
            .arg("params", params)
            .arg("proposer", &p.proposer)
            .arg("created_at", p.created_at)
            .arg("deadline", p.deadline)
            .arg("quorum", p.quorum)
            .arg("total_weight", p.total_weight)
            .arg("validators", validators)
            .arg("hash", hash.as_str())
            .arg("kept", KEPT)
            .reply(conn)
            .await?;
        match r.outcome()? {
            "opened" => Ok(hash),
            _ => Err(r.unexpected()),
        }
    }

    /// Counts a validator's vote (`message`: the vote as signed).
    pub async fn vote(
        &self,
        conn: &mut impl ConnectionLike,
        vote: &Vote,
        message: &str,
        now: u64,
    ) -> Result<Voted> {
        let r = VOTE
            .fenced(&self.keys, self.epoch)
            .key("proposal", self.keys.proposal(&vote.proposal_id))
            .key("votes", self.keys.proposal_votes(&vote.proposal_id))
            .key("open", self.keys.proposals_open())
            .arg("agent_id", &vote.agent_id)
            .arg("vote", vote.vote.as_str())
            .arg("hash", &vote.hash)
            .arg("message", message)
            .arg("now", now)
            .reply(conn)
            .await?;
        Ok(match r.outcome()? {
            "counted" => Voted::Counted,
            "decided" => Voted::Decided(r.text("decision")?.parse().map_err(|_| r.unexpected())?),
            "unknown" => Voted::Refused(VoteRefusal::Unknown),
            "late" => Voted::Refused(VoteRefusal::Late),
            "not_validator" => Voted::Refused(VoteRefusal::NotValidator),
            "wrong_hash" => Voted::Refused(VoteRefusal::WrongHash),
            "duplicate" => Voted::Refused(VoteRefusal::Duplicate),
            _ => return Err(r.unexpected()),
        })
    }

    /// Open proposals whose deadline passed: each is marked expired (if it
    /// still was open) and returned.
    pub async fn expire_due(
        &self,
        conn: &mut impl ConnectionLike,
        now: u64,
    ) -> Result<Vec<String>> {
        let due: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.proposals_open())
            .arg("-inf")
            .arg(now)
            .arg("BYSCORE")
            .query_async(conn)
            .await?;
        let mut out = Vec::new();
        for id in due {
            let r = PROPOSAL_EXPIRE
                .fenced(&self.keys, self.epoch)
                .key("proposal", self.keys.proposal(&id))
                .key("open", self.keys.proposals_open())
                .arg("id", &id)
                .arg("now", now)
                .reply(conn)
                .await?;
            match r.outcome()? {
                "expired" => out.push(id),
                "decided" => {}
                _ => return Err(r.unexpected()),
            }
        }
        Ok(out)
    }

    /// Records a decided proposal's seal.
    pub async fn set_seal(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
        seal: &str,
    ) -> Result<()> {
        let r = PROPOSAL_SEAL
            .fenced(&self.keys, self.epoch)
            .key("proposal", self.keys.proposal(id))
            .arg("seal", seal)
            .reply(conn)
            .await?;
        match r.outcome()? {
            "sealed" => Ok(()),
            _ => Err(r.unexpected()),
        }
    }

    /// A proposal with its votes; `None` if unknown.
    pub async fn get(&self, conn: &mut impl ConnectionLike, id: &str) -> Result<Option<Record>> {
        let f: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.proposal(id))
            .query_async(conn)
            .await?;
        if f.is_empty() {
            return Ok(None);
        }
        let votes: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.proposal_votes(id))
            .query_async(conn)
            .await?;
        let s = |k: &str| f.get(k).cloned().unwrap_or_default();
        let n = |k: &str| s(k).parse::<u64>().unwrap_or(0);
        let proposal = Proposal {
            id: s("id"),
            action: s("action"),
            params: serde_json::from_str(&s("params")).unwrap_or_default(),
            proposer: s("proposer"),
            created_at: n("createdAt"),
            deadline: n("deadline"),
            quorum: n("quorum"),
            total_weight: n("totalWeight"),
            validators: serde_json::from_str(&s("validators")).unwrap_or_default(),
        };
        let weights = ["allow", "quarantine", "deny"]
            .into_iter()
            .map(|c| (c.to_string(), n(&format!("w_{c}"))))
            .collect();
        Ok(Some(Record {
            proposal,
            hash: s("hash"),
            state: s("state"),
            weights,
            votes,
            seal: f.get("seal").cloned(),
            decided_at: f.get("decidedAt").and_then(|v| v.parse().ok()),
        }))
    }

    /// The newest proposals, newest first.
    pub async fn list(&self, conn: &mut impl ConnectionLike, limit: usize) -> Result<Vec<Record>> {
        let ids = crate::registry::newest(conn, &self.keys.proposals(), limit).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.get(conn, &id).await? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_changes_with_any_vote_or_the_outcome() {
        let mut votes = BTreeMap::new();
        votes.insert("v1".to_string(), "FC1 a 1 n s\n{}".to_string());
        let a = seal("h", &votes, Outcome::Allowed);
        assert_eq!(a.len(), 64);
        assert_ne!(a, seal("h", &votes, Outcome::Denied));
        assert_ne!(a, seal("h2", &votes, Outcome::Allowed));
        votes.insert("v2".to_string(), "x".to_string());
        assert_ne!(a, seal("h", &votes, Outcome::Allowed));
    }
}
