//! fleet-commander: the FleetCommander service.
//!
//! The map, from the bottom up. Each module uses only modules above it in
//! this list (a test, `layers_hold`, keeps it so):
//! - [`config`]: `config/fleet.toml`, environment overrides, validation.
//! - [`metrics`]: metric names, their help, the Prometheus exporter (one per
//!   process, or one per runtime for several commanders in one process),
//!   and the count of a Redis error where it is handled.
//! - [`heard`]: how far the commander has heard the fleet (the failure
//!   detector's watermark).
//! - [`history`]: the fleet's recent past, for the console's charts.
//! - [`sessions`]: agents' session secrets (the `FS1` MACs agreed at
//!   registration), one term's cache of them.
//! - [`auth`]: the gate (who sent a message, and what its key was granted)
//!   and operators' tokens and console sessions.
//! - [`breaker`]: the circuit breaker on Redis.
//! - [`ha`]: this commander's view of leadership (who, role, epoch).
//! - [`context`]: what the running service shares: [`Shared`], a term's
//!   state (its epoch's stores, wake-ups, shutdown), over its `Base`, what
//!   lives as long as the process (connections, gate, breaker, view of
//!   leadership); and the helpers every loop uses (publish, seal, tell).
//! - [`supervise`]: the one supervisor: a failed round, a pause, a panic,
//!   the exit, one shutdown deadline.
//! - [`status`]: fleet and pool status from the counters, and its publisher
//!   loop, which also samples the fleet's recent past.
//! - the loops: [`allocator`] (allocation), [`reaper`] (retries back after
//!   their backoff, quarantines ended, leases and stuck attempts taken
//!   back), [`health`] (failure detection without false deaths), [`scaler`]
//!   (pool sizing, drains; the pure policy and its rules in `scaler/`),
//!   [`leader`] (the lease: standing by, taking over, keeping it, stepping
//!   down in time), [`key_refresh`] (the gate's keys), [`reload`] (live pool
//!   tuning, and the settings the scripts read), [`checkpoint`] (the audit
//!   log's signed head, written off Redis), [`governance`] (proposals to the
//!   validators, their seals, what an allowed one does, their expiry).
//! - [`subscriber`]: the two pub/sub connections feeding the handlers (one
//!   agent's messages on one channel in order).
//! - [`handlers`]: one file per inbound message kind; heartbeats have a
//!   handler of their own that records them in batches.
//! - [`http`]: the HTTP API (one file per resource) and the console.
//! - [`service`]: start, supervise, stop: [`start`] returns a [`Running`]
//!   whose [`Running::wait`] says how it stopped ([`Exit`]).
//!
//! The wire types are `fleet_protocol`; the state in Redis is `fleet_store`.

pub mod config;
pub mod metrics;

mod heard;
pub mod history;

mod auth;
mod breaker;
mod ha;
mod sessions;

mod context;
mod supervise;

pub mod status;

mod allocator;
pub mod checkpoint;
mod governance;
mod health;
mod key_refresh;
mod leader;
mod reaper;
pub mod reload;
pub mod scaler;

mod subscriber;

mod handlers;

mod http;
mod service;

pub use config::{Config, ConfigError};
pub use context::Shared;
pub use service::{start, Running, StartError};
pub use supervise::Exit;

#[cfg(test)]
mod tests {
    /// The map's order, bottom first: a module may use only those before it.
    const LAYERS: &[&str] = &[
        "config",
        "metrics",
        "heard",
        "history",
        "sessions",
        "auth",
        "breaker",
        "ha",
        "context",
        "supervise",
        "status",
        "allocator",
        "reaper",
        "health",
        "scaler",
        "leader",
        "key_refresh",
        "reload",
        "checkpoint",
        "governance",
        "subscriber",
        "handlers",
        "http",
        "service",
    ];

    /// Every `crate::<module>` a module's files name (comments left out).
    fn uses(module: &str) -> Vec<String> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join(format!("{module}.rs"))];
        let mut dirs = vec![src.join(module)];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        let mut out = Vec::new();
        for f in files.iter().filter(|f| f.exists()) {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                let code = line.split("//").next().unwrap_or("");
                for (i, _) in code.match_indices("crate::") {
                    let name: String = code[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if name != module && !out.contains(&name) {
                        out.push(name);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn layers_hold() {
        let mut wrong = Vec::new();
        for (i, module) in LAYERS.iter().enumerate() {
            for used in uses(module) {
                match LAYERS.iter().position(|m| *m == used) {
                    Some(j) if j < i => {}
                    _ => wrong.push(format!("{module} uses {used}")),
                }
            }
        }
        assert!(wrong.is_empty(), "against the map in lib.rs: {wrong:?}");
        // Every module is on the map.
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for e in std::fs::read_dir(src).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().replace(".rs", "");
            if name != "lib" && !name.ends_with(".md") {
                assert!(LAYERS.contains(&name.as_str()), "{name} is not on the map");
            }
        }
    }
}
