//! Every pub/sub channel name, in one place: what an agent subscribes and
//! publishes to. The Redis keys (durable state) are `fleet_store::keys`; they
//! share the prefix but are kept visibly distinct (`…:agents:{id}` is a hash,
//! `…:agent:{id}` is a channel) so that `redis-cli` output is never ambiguous.

use crate::pool::PoolType;

/// The default prefix of every channel and key.
pub const DEFAULT_PREFIX: &str = "swarm:phase-1";

/// Channel names under one prefix (default `swarm:phase-1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    prefix: String,
}

impl Channels {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `status_request` in, `fleet_status` out.
    pub fn fleet(&self) -> String {
        format!("{}:fleet", self.prefix)
    }
    /// `register` / `deregister` in; registry events out.
    pub fn registry(&self) -> String {
        format!("{}:registry", self.prefix)
    }
    /// `heartbeat` in; health events out.
    pub fn health(&self) -> String {
        format!("{}:health", self.prefix)
    }
    /// Allocation events out.
    pub fn allocation(&self) -> String {
        format!("{}:allocation", self.prefix)
    }
    /// Scale requests to spawners.
    pub fn scaling(&self) -> String {
        format!("{}:scaling", self.prefix)
    }
    /// `task_submit` in.
    pub fn tasks(&self) -> String {
        format!("{}:tasks", self.prefix)
    }
    /// Agents' task reports in.
    pub fn results(&self) -> String {
        format!("{}:results", self.prefix)
    }
    /// Governed actions: the commander's proposals and decisions out,
    /// validators' signed votes in.
    pub fn governance(&self) -> String {
        format!("{}:governance", self.prefix)
    }
    /// The commander's own: a key was issued, rotated or revoked (a hint to
    /// reload the key store; the store itself is the truth).
    pub fn keys(&self) -> String {
        format!("{}:keys", self.prefix)
    }
    /// The commander's own clock ticks, published to itself: reading one
    /// proves that everything published before it has been read.
    pub fn ticks(&self) -> String {
        format!("{}:commander:ticks", self.prefix)
    }
    /// Submitters' reply channels must start with this.
    pub fn reply_prefix(&self) -> String {
        format!("{}:reply:", self.prefix)
    }
    /// One agent's channel: replies, assignments, drains, cancellations.
    pub fn agent(&self, agent_id: &str) -> String {
        format!("{}{agent_id}", self.agent_prefix())
    }
    /// The agent whose channel `channel` is, if it is one.
    pub fn agent_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":agent:")
            .filter(|id| !id.is_empty())
    }
    pub fn agent_prefix(&self) -> String {
        format!("{}:agent:", self.prefix)
    }
    /// One pool's channel: `pool_status`.
    pub fn pool(&self, pool: PoolType) -> String {
        format!("{}:pool:{}", self.prefix, pool.as_str())
    }
}

impl Default for Channels {
    fn default() -> Self {
        Channels::new(DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_match_the_spec() {
        let c = Channels::default();
        assert_eq!(c.fleet(), "swarm:phase-1:fleet");
        assert_eq!(c.registry(), "swarm:phase-1:registry");
        assert_eq!(c.health(), "swarm:phase-1:health");
        assert_eq!(c.allocation(), "swarm:phase-1:allocation");
        assert_eq!(c.scaling(), "swarm:phase-1:scaling");
        assert_eq!(c.tasks(), "swarm:phase-1:tasks");
        assert_eq!(c.results(), "swarm:phase-1:results");
        assert_eq!(c.agent("a1"), "swarm:phase-1:agent:a1");
        assert_eq!(c.pool(PoolType::Ui), "swarm:phase-1:pool:ui");
    }
}
