//! Every Redis key name, in one place (the channel names are
//! [`fleet_protocol::channels`], under the same prefix).
//!
//! Keys and channels live in separate Redis namespaces, but we still keep them
//! visibly distinct (`…:agents:{id}` is a hash, `…:agent:{id}` is a channel) so
//! that `redis-cli` output is never ambiguous.

use fleet_protocol::{Channels, PoolType};
use std::sync::Arc;

/// Key and channel names under one prefix (default `swarm:phase-1`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    channels: Channels,
    /// The `+task` group's values (`crate::script::task_group`), named
    /// once rather than on every script call.
    task_group: Arc<[String]>,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let mut keys = Self {
            channels: Channels::new(prefix.clone()),
            prefix,
            task_group: Arc::from([]),
        };
        keys.task_group = crate::script::task_group(&keys).into();
        keys
    }

    /// The `+task` group's keys, then its arguments, in declared order.
    pub(crate) fn task_group(&self) -> &[String] {
        &self.task_group
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The channel names under the same prefix.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    // ---- keys ----

    /// Hash: one agent's record.
    pub fn agent(&self, agent_id: &str) -> String {
        format!("{}:agents:{agent_id}", self.prefix)
    }
    /// Set: ids of the agents in one pool (the per-pool index).
    pub fn pool_agents(&self, pool: PoolType) -> String {
        format!("{}{}", self.pool_agents_prefix(), pool.as_str())
    }
    /// The prefix of [`Keys::pool_agents`], for Lua scripts that learn the pool
    /// from the agent's hash.
    pub fn pool_agents_prefix(&self) -> String {
        format!("{}:pool-agents:", self.prefix)
    }
    /// Sorted set: live agents (idle, active, busy, recovering) scored by their
    /// last heartbeat in ms. Stale agents are found with one ZRANGEBYSCORE.
    pub fn heartbeats(&self) -> String {
        format!("{}:heartbeats", self.prefix)
    }
    /// Sorted set: failed agents scored by the time they were declared failed.
    pub fn failed(&self) -> String {
        format!("{}:failed", self.prefix)
    }
    /// Hash: `{pool}:{status}` -> number of agents, maintained by the scripts,
    /// so fleet status is one HGETALL.
    pub fn counts(&self) -> String {
        format!("{}:counts", self.prefix)
    }
    /// Hash: one task's record.
    pub fn task(&self, task_id: &str) -> String {
        format!("{}{task_id}", self.task_prefix())
    }
    /// Sorted set (capped): the most recently submitted tasks, scored by
    /// submission time: the index the console and `GET /v1/tasks` list.
    pub fn recent_tasks(&self) -> String {
        format!("{}:recent-tasks", self.prefix)
    }
    /// The prefix of [`Keys::task`], for Lua scripts that walk task ids.
    pub fn task_prefix(&self) -> String {
        format!("{}:tasks:", self.prefix)
    }
    /// String: client id (idempotency key) -> task id, expiring.
    pub fn task_client(&self, client_id: &str) -> String {
        format!("{}{client_id}", self.task_client_prefix())
    }
    /// The prefix of [`Keys::task_client`], for Lua scripts.
    pub fn task_client_prefix(&self) -> String {
        format!("{}:task-client:", self.prefix)
    }
    /// Sorted set: a pool's waiting tasks, lowest score first
    /// (enqueue time minus priority x aging step).
    pub fn queue(&self, pool: PoolType) -> String {
        format!("{}{}", self.queue_prefix(), pool.as_str())
    }
    pub fn queue_prefix(&self) -> String {
        format!("{}:queue:", self.prefix)
    }
    /// Sorted set: a pool's agents that can take a task now, best first.
    pub fn available(&self, pool: PoolType) -> String {
        format!("{}{}", self.available_prefix(), pool.as_str())
    }
    pub fn available_prefix(&self) -> String {
        format!("{}:available:", self.prefix)
    }
    /// Set: the tasks an agent holds.
    pub fn agent_tasks(&self, agent_id: &str) -> String {
        format!("{}{agent_id}", self.agent_tasks_prefix())
    }
    pub fn agent_tasks_prefix(&self) -> String {
        format!("{}:agent-tasks:", self.prefix)
    }
    /// The prefix of [`Keys::agent`].
    pub fn agent_prefix(&self) -> String {
        format!("{}:agents:", self.prefix)
    }
    /// The prefix of [`Keys::agent_channel`].
    pub fn agent_channel_prefix(&self) -> String {
        format!("{}:agent:", self.prefix)
    }
    /// Sorted set: a pool's agents scored by tasks completed (fairness figures).
    pub fn pool_done(&self, pool: PoolType) -> String {
        format!("{}{}", self.pool_done_prefix(), pool.as_str())
    }
    pub fn pool_done_prefix(&self) -> String {
        format!("{}:pool-done:", self.prefix)
    }
    /// Stream (capped): every allocation decision, with its reason.
    pub fn evidence(&self) -> String {
        format!("{}:evidence", self.prefix)
    }
    /// List: one task's allocation decisions, as written before they moved
    /// into the task's record (field `decisions`): read for such tasks and
    /// deleted with a dead letter; nothing writes it now.
    pub fn task_evidence(&self, task_id: &str) -> String {
        format!("{}{task_id}", self.task_evidence_prefix())
    }
    pub fn task_evidence_prefix(&self) -> String {
        format!("{}:task-evidence:", self.prefix)
    }
    /// Hash: the settings the scripts read, written from the config at start
    /// and on reload: `{pool}` -> allocation strategy, `{pool}:quota` -> the
    /// weighted-fair quota, `health` -> the health policy (JSON).
    pub fn settings(&self) -> String {
        format!("{}:settings", self.prefix)
    }
    /// Sorted set: quarantined agents scored by when their probation may start.
    pub fn quarantine(&self) -> String {
        format!("{}:quarantine", self.prefix)
    }
    /// Hash: an agent's budget (balance, allowance, spent, windowEnds); it
    /// outlives the agent's registration, so leaving is no way to a fresh one.
    pub fn budget(&self, agent_id: &str) -> String {
        format!("{}{agent_id}", self.budget_prefix())
    }
    pub fn budget_prefix(&self) -> String {
        format!("{}:budget:", self.prefix)
    }
    /// Set: the registered agents with the `validator` capability (kept by
    /// the registration and removal scripts, so counting them reads no
    /// agent it does not need).
    pub fn validators(&self) -> String {
        format!("{}:validators", self.prefix)
    }
    /// Hash: a governance proposal (its fields, then its decision and seal).
    pub fn proposal(&self, id: &str) -> String {
        format!("{}:proposal:{id}", self.prefix)
    }
    /// Hash: a proposal's votes, by validator: the signed message as sent.
    pub fn proposal_votes(&self, id: &str) -> String {
        format!("{}:proposal-votes:{id}", self.prefix)
    }
    /// Sorted set: open proposals, scored by their deadline.
    pub fn proposals_open(&self) -> String {
        format!("{}:proposals:open", self.prefix)
    }
    /// Sorted set: every proposal, scored by when it was opened (capped).
    pub fn proposals(&self) -> String {
        format!("{}:proposals", self.prefix)
    }
    /// Set with expiry: tasks whose lease ran out in an agent's hands lately;
    /// if the agent is then declared dead (or restarts), each counts the
    /// death as its casualty (a task that kills its agent before the ack
    /// loses its lease before the agent is found dead).
    pub fn lapsed_prefix(&self) -> String {
        format!("{}:lapsed:", self.prefix)
    }
    /// Sorted set (capped): agents that left the registry lately
    /// (deregistered, expired, removed after repeated failures), scored by
    /// when; what each was is in its history hash ([`Keys::agent_history_prefix`]).
    pub fn departed(&self) -> String {
        format!("{}:departed", self.prefix)
    }
    /// Hash with expiry: an agent's health and quarantine, kept for a while
    /// after it leaves so that registering again does not wipe them.
    pub fn agent_history_prefix(&self) -> String {
        format!("{}:agent-history:", self.prefix)
    }
    /// String with expiry: tasks an agent was given in the current quota window.
    pub fn agent_quota_prefix(&self) -> String {
        format!("{}:agent-quota:", self.prefix)
    }
    /// Hash: pool -> when an operator paused its queue (`fleet-commander
    /// queue pause`): its tasks are accepted and wait, none is handed out.
    pub fn paused(&self) -> String {
        format!("{}:paused", self.prefix)
    }
    /// Hash: pool -> agents an operator fixed it at (`fleet-commander scale`);
    /// absent: the scaler decides.
    pub fn manual_sizes(&self) -> String {
        format!("{}:manual-sizes", self.prefix)
    }
    /// Stream (capped): fleet events with their inputs, e.g. every scaling decision.
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
    /// Sorted set: tasks waiting out a retry backoff, scored by when they may run.
    pub fn delayed(&self) -> String {
        format!("{}:delayed", self.prefix)
    }
    /// Sorted set: assigned tasks scored by lease deadline.
    pub fn leases(&self) -> String {
        format!("{}:leases", self.prefix)
    }
    /// Sorted set: dead-lettered tasks scored by when they died.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }
    /// Sorted set: running attempts watched for progress, scored by when
    /// they are stuck unless the agent reports a new step.
    pub fn stalls(&self) -> String {
        format!("{}:stalls", self.prefix)
    }
    /// Sorted set: poison tasks (too many of their attempts ended with the
    /// agent dead or stuck), scored by when they were set aside.
    pub fn poison(&self) -> String {
        format!("{}:poison", self.prefix)
    }
    /// Hash: key id -> the key's record (`fleet_protocol::auth::KeyRecord`,
    /// JSON; public keys only).
    pub fn keystore(&self) -> String {
        format!("{}:keys", self.prefix)
    }
    /// Hash: token id -> an operator token's record (`tokens::TokenRecord`,
    /// JSON; the token's SHA-256, never the token).
    pub fn tokens(&self) -> String {
        format!("{}:tokens", self.prefix)
    }
    /// String: a records hash's version (`…:keys:version`,
    /// `…:tokens:version`), raised by every write, so that a reader can tell
    /// that nothing changed without reading the hash.
    pub fn version_of(hash: &str) -> String {
        format!("{hash}:version")
    }
    /// Stream: which records of a records hash each write changed (its
    /// change log, trimmed to about 10,000 writes), so that a reader can
    /// read only those.
    pub fn changes_of(hash: &str) -> String {
        format!("{hash}:changes")
    }
    /// Stream: the audit log, one entry per privileged action, chained.
    pub fn audit(&self) -> String {
        format!("{}:audit", self.prefix)
    }
    /// Hash: the audit log's newest entry (seq, hash), and the anchor the
    /// chain starts from after a trim (anchor_seq, anchor_hash).
    pub fn audit_head(&self) -> String {
        format!("{}:audit:head", self.prefix)
    }
    /// String with a TTL: a nonce seen under a key (replay protection).
    pub fn nonce(&self, kid: &str, nonce: &str) -> String {
        format!("{}:nonce:{kid}:{nonce}", self.prefix)
    }
    pub fn nonce_prefix(&self) -> String {
        format!("{}:nonce:", self.prefix)
    }
    /// String `"<epoch> <commander id>"`, with a TTL: the leader's lease.
    pub fn lease(&self) -> String {
        format!("{}:commander:lease", self.prefix)
    }
    /// Hash: commander id → its JSON entry (role, epoch, address, last seen).
    pub fn commanders(&self) -> String {
        format!("{}:commanders", self.prefix)
    }
    /// String: the epoch of the commander allowed to write (fencing token).
    pub fn epoch(&self) -> String {
        format!("{}:commander:epoch", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_under_the_prefix() {
        let k = Keys::new("swarm:phase-1");
        assert_eq!(k.task("t1"), "swarm:phase-1:tasks:t1");
        assert_eq!(k.queue(PoolType::Ui), "swarm:phase-1:queue:ui");
        assert_eq!(
            k.pool_agents(PoolType::Coder),
            format!("{}coder", k.pool_agents_prefix())
        );
        assert_eq!(k.channels().fleet(), "swarm:phase-1:fleet");
    }
}
