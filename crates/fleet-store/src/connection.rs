//! Redis connections: every client this crate's users open comes from
//! [`fleet_redis`] (URLs, TLS, Sentinel, failover); re-exported here so that
//! the store's callers need one crate.

pub use fleet_redis::{client, connect, count_round_trips, url, Client, Conn, ConnectError};
