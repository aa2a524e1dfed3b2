//! fleet-store: the fleet's state in Redis, the source of truth.
//!
//! The map:
//! - [`keys`]: every Redis key name (channels are `fleet_protocol::channels`).
//! - [`connection`]: every Redis client and connection (`TCP_NODELAY`, timeouts).
//! - [`registry`]: agents: hashes, per-pool sets, heartbeat and failure sorted
//!   sets, status counters; changed only by fenced Lua scripts (`lua/`).
//! - [`tasks`]: tasks: records, priority queues, leases, retries, dead
//!   letters, evidence; changed only by fenced Lua scripts.
//! - [`error`]: [`StoreError`], the one error of this crate.
//! - [`telemetry`]: the script-duration histogram the store records.
//!
//! Every script begins with the fencing check against the commander epoch, so
//! a commander that has been superseded can no longer write.

pub mod connection;
pub mod error;
pub mod keys;
pub mod registry;
mod script;
pub mod tasks;
pub mod telemetry;

pub use error::{Result, StoreError};
pub use keys::Keys;
pub use registry::Registry;
pub use tasks::TaskStore;
