//! The integration tests, in one binary: each module drives the commander
//! (in process, on a runtime of its own, or as the real binary) against
//! real servers that `common` starts on free loopback ports.
//!
//! One binary, not one per file: the support code compiles and links once.
//! Tests run concurrently; each commander in this process records into a
//! metrics registry of its own (`fleet_commander::metrics::private_runtime`),
//! so a test's `/metrics` shows only what its commander did.

mod common;

mod acl;
mod allocation;
mod audit;
mod cli;
mod console;
mod crash;
mod exit;
mod first_hour;
mod governance;
mod guardrails;
mod ha;
mod health;
mod http;
mod observability;
mod protocol_doc;
mod python_agent;
mod registry;
mod robustness;
mod scaling;
mod security;
mod sentinel;
mod sessions;
mod strategies;
mod tasks;
mod tls;
