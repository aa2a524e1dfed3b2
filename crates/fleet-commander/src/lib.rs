//! fleet-commander: the FleetCommander service.
//!
//! The map, from the bottom up (each module uses only those above it):
//! - [`config`]: `config/fleet.toml`, environment overrides, validation.
//! - [`metrics`]: metric names, their help, the Prometheus exporter.
//! - [`context`]: what the running service shares ([`Shared`]) and the helpers
//!   every loop uses (pause, publish).
//! - [`supervise`]: the one supervisor: a failed round, a panic, the exit.
//! - [`status`]: fleet and pool status from the counters, and its publisher
//!   loop, which also samples the fleet's recent past ([`history`]).
//! - the loops: [`allocator`] (allocation and the reaper of leases and
//!   retries), [`health`] (failure detection without false deaths),
//!   [`scaler`] (pool sizing, drains), [`reload`] (live pool tuning),
//!   [`checkpoint`] (the audit log's signed head, written off Redis).
//! - [`handlers`]: one file per inbound message kind.
//! - [`subscriber`]: the pub/sub connection feeding the handlers in order.
//! - [`http`]: the HTTP API.
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
