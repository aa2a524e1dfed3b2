//! Which commander leads: the lease, and the directory of commanders.
//!
//! The lease is one key, `"<epoch> <commander id>"` with a TTL. Taking it
//! (`lua/lease_acquire.lua`) claims the next epoch in the same script, so
//! the fencing every other script does (`fenced()` in the prelude) refuses
//! the previous leader's next write. The leader extends it
//! (`lease_renew.lua`) and gives it up on a clean stop
//! (`lease_release.lua`); a standby takes it once it is gone.
//!
//! The directory is a hash of what each commander last said of itself: its
//! role, epoch, address and when. It is for people (`GET /v1/commanders`,
//! `fleet-commander status`); leadership is decided by the lease alone.

use crate::scripts::{LEASE_ACQUIRE, LEASE_RELEASE, LEASE_RENEW};
use crate::{Keys, Result, StoreError};
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Who holds the lease: its epoch and commander id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub epoch: u64,
    pub id: String,
}

impl Holder {
    /// The lease's value, `"<epoch> <id>"`.
    fn parse(v: &str) -> Option<Holder> {
        let (epoch, id) = v.split_once(' ')?;
        Some(Holder {
            epoch: epoch.parse().ok()?,
            id: id.to_string(),
        })
    }
}

/// What a try to take the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// This commander leads now, with this epoch.
    Leading(u64),
    /// Another holds it (None: a value this version cannot read).
    Held(Option<Holder>),
}

/// One commander's hold on (or wait for) the lease.
#[derive(Debug, Clone)]
pub struct Lease {
    keys: Keys,
    id: String,
    lease_ms: u64,
    /// How often the holder renews (`ha.renew_ms`): a try to take the
    /// lease within this of its holder taking or renewing it is a try sent
    /// again, and claims no new epoch (`lease_acquire.lua`).
    renew_ms: u64,
}

impl Lease {
    pub fn new(keys: Keys, id: impl Into<String>, lease_ms: u64, renew_ms: u64) -> Lease {
        Lease {
            keys,
            id: id.into(),
            lease_ms,
            renew_ms,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Takes the lease if it is free (claiming the next epoch).
    pub async fn acquire(&self, conn: &mut impl ConnectionLike) -> Result<Acquire> {
        let r = LEASE_ACQUIRE
            .call()
            .key("epoch", self.keys.epoch())
            .key("lease", self.keys.lease())
            .arg("id", &self.id)
            .arg("lease_ms", self.lease_ms)
            .arg("renew_ms", self.renew_ms)
            .reply(conn)
            .await?;
        match r.outcome()? {
            "acquired" => Ok(Acquire::Leading(r.num("epoch")?)),
            "held" => Ok(Acquire::Held(Holder::parse(r.text("holder")?))),
            _ => Err(r.unexpected()),
        }
    }

    /// Extends the lease held with `epoch`: false if it is no longer this
    /// commander's (lapsed, taken, or a newer epoch claimed).
    pub async fn renew(&self, conn: &mut impl ConnectionLike, epoch: u64) -> Result<bool> {
        let r = LEASE_RENEW
            .call()
            .key("epoch", self.keys.epoch())
            .key("lease", self.keys.lease())
            .arg("epoch", epoch)
            .arg("id", &self.id)
            .arg("lease_ms", self.lease_ms)
            .reply(conn)
            .await?;
        match r.outcome()? {
            "renewed" => Ok(true),
            "lost" => Ok(false),
            _ => Err(r.unexpected()),
        }
    }

    /// Gives up the lease held with `epoch`; false if it was not held.
    pub async fn release(&self, conn: &mut impl ConnectionLike, epoch: u64) -> Result<bool> {
        let r = LEASE_RELEASE
            .call()
            .key("epoch", self.keys.epoch())
            .key("lease", self.keys.lease())
            .arg("epoch", epoch)
            .arg("id", &self.id)
            .reply(conn)
            .await?;
        match r.outcome()? {
            "released" => Ok(true),
            "not_held" => Ok(false),
            _ => Err(r.unexpected()),
        }
    }
}

/// The current holder of the lease, if any.
pub async fn holder(conn: &mut impl ConnectionLike, keys: &Keys) -> Result<Option<Holder>> {
    let v: Option<String> = redis::cmd("GET")
        .arg(keys.lease())
        .query_async(conn)
        .await?;
    Ok(v.as_deref().and_then(Holder::parse))
}

/// A commander's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

/// What a commander last said of itself in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Commander {
    pub id: String,
    pub role: Role,
    /// The epoch it leads with; for a standby, the leader's it last saw.
    pub epoch: u64,
    /// Where its HTTP API is reached.
    pub address: String,
    /// When it last renewed the lease (a leader) or looked at it (a standby), ms.
    pub renewed_at: u64,
    /// When it took this role, ms.
    pub since: u64,
}

/// Writes `c` into the directory.
pub async fn announce(conn: &mut impl ConnectionLike, keys: &Keys, c: &Commander) -> Result<()> {
    let json = serde_json::to_string(c).map_err(|e| StoreError::Reply(e.to_string()))?;
    redis::cmd("HSET")
        .arg(keys.commanders())
        .arg(&c.id)
        .arg(json)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// One commander's entry in the directory, if it has one.
pub async fn commander(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    id: &str,
) -> Result<Option<Commander>> {
    let v: Option<String> = redis::cmd("HGET")
        .arg(keys.commanders())
        .arg(id)
        .query_async(conn)
        .await?;
    Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
}

/// Takes a commander out of the directory (a clean stop).
pub async fn forget(conn: &mut impl ConnectionLike, keys: &Keys, id: &str) -> Result<()> {
    redis::cmd("HDEL")
        .arg(keys.commanders())
        .arg(id)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// The commanders heard from within `fresh_ms` of `now`, leader first. An
/// entry silent for ten times that (a killed commander) is deleted.
pub async fn commanders(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    now: u64,
    fresh_ms: u64,
) -> Result<Vec<Commander>> {
    let all: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.commanders())
        .query_async(conn)
        .await?;
    let mut live = Vec::new();
    let mut gone = Vec::new();
    for (id, v) in all {
        match serde_json::from_str::<Commander>(&v) {
            Ok(c) if now.saturating_sub(c.renewed_at) <= fresh_ms => live.push(c),
            Ok(c) if now.saturating_sub(c.renewed_at) <= fresh_ms * 10 => {}
            _ => gone.push(id),
        }
    }
    if !gone.is_empty() {
        redis::cmd("HDEL")
            .arg(keys.commanders())
            .arg(&gone)
            .query_async::<()>(conn)
            .await?;
    }
    live.sort_by(|a, b| (a.role != Role::Leader, &a.id).cmp(&(b.role != Role::Leader, &b.id)));
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_value_names_epoch_and_holder() {
        assert_eq!(
            Holder::parse("7 c-1"),
            Some(Holder {
                epoch: 7,
                id: "c-1".into()
            })
        );
        assert_eq!(Holder::parse("seven c-1"), None);
        assert_eq!(Holder::parse("7"), None);
    }
}
