//! fleet-store: the fleet's state in Redis, the source of truth.
//!
//! The map:
//! - [`keys`]: every Redis key name (channels are `fleet_protocol::channels`).
//! - [`audit`]: the audit log, a signed hash chain in a stream.
//! - [`acl`]: the fleet's Redis ACL users, from the key store.
//! - [`tokens`]: operators' bearer tokens for the HTTP API (hashes only).
//! - [`keystore`]: agents' and submitters' public keys, and recent nonces;
//!   a change log of the keys written, so that readers read only those.
//! - [`connection`]: every Redis client and connection (`TCP_NODELAY`, timeouts).
//! - [`lease`]: which commander leads: the lease and the commanders' directory.
//! - [`registry`]: agents: hashes, per-pool sets, heartbeat and failure sorted
//!   sets, status counters; changed only by fenced Lua scripts (`lua/`).
//! - [`budgets`]: agents' budgets (per window; halted below the minimum).
//! - [`governance`]: proposals, validators' votes, sealed decisions.
//! - [`tasks`]: tasks: records, priority queues, leases, retries, dead
//!   letters, evidence; changed only by fenced Lua scripts.
//! - [`scripts`]: the one registry of Lua scripts (`lua/`), and `load_all`;
//!   `script` is the typed contract each is called through (keys and
//!   arguments by name, replies read by name); `records` writes and reads the
//!   hashes of JSON records (keys, tokens) with their version and change log;
//!   [`fields`] lists a task's and an agent's hash fields, once.
//! - [`error`]: [`StoreError`], the one error of this crate.
//! - [`telemetry`]: the script-duration histogram the store records.
//!
//! Every script begins with the fencing check against the commander epoch, so
//! a commander that has been superseded can no longer write.

pub mod acl;
pub mod audit;
pub mod budgets;
pub mod connection;
pub mod error;
pub mod fields;
pub mod governance;
pub mod keys;
pub mod keystore;
pub mod lease;
mod records;
pub mod registry;
mod script;
pub mod scripts;
pub mod tasks;
pub mod telemetry;
pub mod tokens;

pub use error::{Result, StoreError};

/// A signed message's nonce, recorded by the script that acts on the
/// message, in the same round trip: a script that finds it recorded already
/// changes nothing and the call fails with [`StoreError::Replay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    /// `Keys::nonce(kid, nonce)`.
    pub key: String,
    /// How long it is remembered (twice the signature window).
    pub ttl_ms: u64,
}

/// A message a script wrote for an agent (`task_assign`, `task_cancel`,
/// `drain`): the caller publishes it, signed, once the script has returned.
/// Scripts cannot sign, so they never publish to an agent themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub channel: String,
    pub message: String,
}
pub use keys::Keys;
pub use keystore::KeyStore;
pub use registry::Registry;
pub use tasks::TaskStore;
