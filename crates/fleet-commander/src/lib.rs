//! fleet-commander: the FleetCommander service.
//!
//! The map, roughly from the bottom up (the shared state, [`context`], and
//! the loops refer to each other: `Shared` holds the gate, the breaker and
//! leadership, and the loops take `Shared`):
//! - [`config`]: `config/fleet.toml`, environment overrides, validation.
//! - [`metrics`]: metric names, their help, the Prometheus exporter.
//! - [`context`]: what the running service shares ([`Shared`]) and the helpers
//!   every loop uses (pause, publish, seal, tell).
//! - [`supervise`]: the one supervisor: a failed round, a panic, the exit,
//!   one shutdown deadline.
//! - [`auth`]: the gate (who sent a message, and what its key was granted)
//!   and operators' tokens and console sessions.
//! - [`breaker`]: the circuit breaker on Redis.
//! - [`leader`]: the lease: standing by, taking over, keeping it, stepping
//!   down in time.
//! - [`heard`]: how far the commander has heard the fleet (the failure
//!   detector's watermark).
//! - [`status`]: fleet and pool status from the counters, and its publisher
//!   loop, which also samples the fleet's recent past ([`history`]).
//! - the loops: [`allocator`] (allocation), [`reaper`] (retries back
//!   after their backoff, quarantines ended, leases and stuck attempts taken
//!   back), [`health`] (failure detection without false deaths),
//!   [`scaler`] (pool sizing, drains), [`reload`] (live pool tuning),
//!   [`checkpoint`] (the audit log's signed head, written off Redis).
//! - [`governance`]: proposals to the validators, their seals, what an
//!   allowed one does, and the loop that expires them.
//! - [`handlers`]: one file per inbound message kind.
//! - [`subscriber`]: the two pub/sub connections feeding the handlers (one
//!   agent's messages on one channel in order).
//! - [`http`]: the HTTP API and the console.
//! - [`service`]: start, supervise, stop: [`start`] returns a [`Running`]
//!   whose [`Running::wait`] says how it stopped ([`Exit`]).
//!
//! The wire types are `fleet_protocol`; the state in Redis is `fleet_store`.

pub mod config;
mod context;
pub mod metrics;
pub mod status;
mod supervise;

mod allocator;
mod auth;
mod breaker;
pub mod checkpoint;
mod governance;
mod health;
mod heard;
mod leader;
mod reaper;
pub mod reload;
pub mod scaler;

pub mod history;

mod handlers;
mod subscriber;

mod http;
mod service;

pub use config::{Config, ConfigError};
pub use context::Shared;
pub use service::{start, Running, StartError};
pub use supervise::Exit;
