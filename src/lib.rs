//! fleet-commander: commands a fleet of AI agents through Redis.
//!
//! The map:
//! - [`config`]: `config/fleet.toml`, environment overrides, validation.
//! - [`pool`]: the 16 pool types and the agent statuses.
//! - [`keys`]: every Redis key and channel name.
//! - [`connection`]: Redis clients and connections (`TCP_NODELAY`, reconnects).
//! - [`protocol`]: the versioned JSON agent protocol (see `docs/PROTOCOL.md`).
//! - [`registry`]: the registry in Redis: hashes, per-pool sets, heartbeat
//!   sorted sets, counters, all changed by fenced Lua scripts.
//! - [`health`]: failure detection without false deaths.
//! - [`allocator`]: hands queued tasks to agents; leases and retries.
//! - [`status`]: fleet and pool status assembly.
//! - [`task`]: task submissions, records and states.
//! - [`tasks`]: tasks in Redis: submission, queues, cancellation.
//! - [`commander`]: the service: subscriber, handlers, status loop, shutdown.
//! - [`http`]: the HTTP API.
//! - [`metrics`]: metric names and the Prometheus exporter.
//! - [`agent`]: a Rust agent client speaking the protocol.
//! - [`reload`]: live pool tuning from the config file.
//! - [`scaler`]: sizes pools to demand; scale requests, drains.
//! - [`spawner`]: acts on scale requests (the simulator's, or yours).
//! - [`sim`]: the fleet simulator and its report.
//! - [`ramp`]: the autoscaling scenario (a step of load, the spawner acting).
//! - [`redis_server`]: a private `redis-server` for the demo and the tests.
//! - [`demo`]: the one-command demo.

pub mod agent;
pub mod allocator;
pub mod commander;
pub mod config;
pub mod connection;
pub mod demo;
pub mod health;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod ramp;
pub mod redis_server;
pub mod registry;
pub mod reload;
pub mod scaler;
pub mod sim;
pub mod spawner;
pub mod status;
pub mod task;
pub mod tasks;
