//! fleet-protocol: what travels between agents, tools and the commander.
//!
//! Everything an SDK author needs and nothing about how the commander keeps
//! state: serde types, Ed25519 signing and session MACs, no Redis. `docs/PROTOCOL.md` is the reference
//! for agent authors; this crate is its implementation.
//!
//! The map:
//! - [`pool`]: the 16 pool types, agent statuses, allocation strategies,
//!   resource limits.
//! - [`channels`]: every pub/sub channel name.
//! - [`inbound`]: agents' and tools' messages (`register`, `heartbeat`,
//!   `deregister`, `status_request`, `task_submit`, task reports), decoded and
//!   validated strictly, with the limits.
//! - [`outbound`]: what the commander publishes (`ToAgent`, events, scaling
//!   requests, `task_submit_reply`).
//! - [`agent`]: an agent's record as served and sent.
//! - [`auth`]: signing and checking messages (Ed25519 over the exact bytes),
//!   keys and credentials.
//! - [`session`]: the cheaper MAC (`FS1`) an agent and the commander share
//!   after a signed registration (X25519, HKDF and HMAC-SHA256).
//! - [`lenient`]: whole numbers written as `7` or `7.0`.
//! - [`task`]: task submissions, validation, records and states.
//! - [`status`]: fleet and pool status as served, and the CLI's table.

pub mod agent;
pub mod api;
pub mod auth;
pub mod channels;
pub mod governance;
pub mod inbound;
pub mod lenient;
pub mod outbound;
pub mod pool;
pub mod session;
pub mod status;
pub mod task;

pub use channels::Channels;
pub use inbound::*;
pub use outbound::*;
pub use pool::{AgentStatus, PoolType};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// Milliseconds since the Unix epoch: the unit of every timestamp on the
/// wire and in Redis.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
