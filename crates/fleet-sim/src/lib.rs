//! fleet-sim: simulated fleets against a real commander.
//!
//! The map:
//! - [`sim`]: the fleet simulator (`fleet-commander sim`, the load test's
//!   fleet) and its report.
//! - [`spawner`]: acts on the commander's scale requests by starting and
//!   stopping in-process agents (the simulator's, or a model for yours).
//! - [`ramp`]: the autoscaling scenario: a step of load, the spawner acting.
//! - [`issuer`]: credentials for simulated agents (security on).
//! - [`demo`]: the one-command demo (`fleet-commander demo`).
//!
//! Agents here are `fleet_agent` agents: they speak only the protocol.

pub mod demo;
pub mod issuer;
pub mod ramp;
pub mod sim;
pub mod spawner;
