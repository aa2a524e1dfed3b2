//! The typed Rust↔Lua contract.
//!
//! Every script is called through a [`Call`]: each key has a name and goes in
//! KEYS; each argument has a name. On the wire, ARGV starts with the names of
//! the KEYS (ARGV[i] names KEYS[i]) and goes on with name, value pairs. The
//! prelude of every script (`lua/common.lua`) turns them into two tables,
//! `KEY.<name>` and `A.<name>`, so neither side depends on a position.
//! Arguments named `prefix.<name>` are the prefixes of keys a script finds at
//! run time (an agent's hash, a pool's queue); the prelude puts them, and the
//! named keys, into `K`.
//!
//! Replies with more than one field are flat name, value lists, read by name
//! through [`Reply`].

use crate::error::{from_script, Result, StoreError};
use crate::keys::Keys;
use redis::aio::ConnectionLike;
use redis::{FromRedisValue, Script, ScriptInvocation, ToRedisArgs};
use std::collections::HashMap;
use std::str::FromStr;

/// The prelude every script starts with: the contract above, fencing,
/// counters, agent availability, task hand-back, and every message a script
/// builds.
const PRELUDE: &str = include_str!("lua/common.lua");

/// A script with the prelude; loaded once per server, then run by SHA.
pub(crate) fn lua(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// One call of a script, its keys and arguments named.
pub(crate) struct Call<'s> {
    script: &'s Script,
    op: &'static str,
    keys: Vec<(&'static str, String)>,
    args: Vec<(&'static str, Vec<u8>)>,
}

impl<'s> Call<'s> {
    /// A call of a state-changing script: the epoch key and the caller's epoch
    /// (the fencing check every such script begins with).
    pub(crate) fn fenced(script: &'s Script, op: &'static str, keys: &Keys, epoch: u64) -> Self {
        Call {
            script,
            op,
            keys: Vec::with_capacity(8),
            args: Vec::with_capacity(24),
        }
        .key("epoch", keys.epoch())
        .arg("epoch", epoch)
    }

    pub(crate) fn key(mut self, name: &'static str, key: String) -> Self {
        self.keys.push((name, key));
        self
    }

    pub(crate) fn arg(mut self, name: &'static str, value: impl ToRedisArgs) -> Self {
        let mut v = value.to_redis_args();
        let one = if v.len() == 1 {
            v.pop().unwrap_or_default()
        } else {
            v.concat()
        };
        self.args.push((name, one));
        self
    }

    /// The keys and prefixes the task-aware parts of the prelude use.
    pub(crate) fn task_keys(self, keys: &Keys) -> Self {
        self.key("counts", keys.counts())
            .key("leases", keys.leases())
            .key("dead", keys.dead())
            .key("delayed", keys.delayed())
            .key("settings", keys.settings())
            .key("quarantine", keys.quarantine())
            .arg("prefix.agent", keys.agent_prefix())
            .arg("prefix.available", keys.available_prefix())
            .arg("prefix.agent_tasks", keys.agent_tasks_prefix())
            .arg("prefix.task", keys.task_prefix())
            .arg("prefix.queue", keys.queue_prefix())
            .arg("prefix.pool_done", keys.pool_done_prefix())
            .arg("prefix.quota", keys.agent_quota_prefix())
            .arg("prefix.pool_agents", keys.pool_agents_prefix())
            .arg("prefix.agent_channel", keys.channels().agent_prefix())
            .arg("allocation_channel", keys.channels().allocation())
    }

    /// The invocation, for a pipeline.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'s> {
        let mut inv = self.script.prepare_invoke();
        for (_, k) in &self.keys {
            inv.key(k);
        }
        for (n, _) in &self.keys {
            inv.arg(*n);
        }
        for (n, v) in &self.args {
            inv.arg(*n).arg(v.as_slice());
        }
        inv
    }

    /// Runs the script (timed under its op); `FENCED` becomes [`StoreError::Fenced`].
    pub(crate) async fn run<T: FromRedisValue>(self, conn: &mut impl ConnectionLike) -> Result<T> {
        let inv = self.invocation();
        crate::telemetry::timed(self.op, inv.invoke_async(conn))
            .await
            .map_err(from_script)
    }

    /// Runs the script and reads its name, value reply.
    pub(crate) async fn reply(self, conn: &mut impl ConnectionLike) -> Result<Reply> {
        let op = self.op;
        let fields: HashMap<String, String> = self.run(conn).await?;
        Ok(Reply { op, fields })
    }
}

/// A script's reply, read by field name.
#[derive(Debug)]
pub(crate) struct Reply {
    op: &'static str,
    fields: HashMap<String, String>,
}

impl Reply {
    /// A reply that came back in a pipeline.
    pub(crate) fn parse(op: &'static str, v: redis::Value) -> Result<Reply> {
        Ok(Reply {
            op,
            fields: redis::from_redis_value(v)?,
        })
    }

    pub(crate) fn text(&self, name: &str) -> Result<&str> {
        self.fields
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| StoreError::Reply(format!("{}: no field {name}", self.op)))
    }

    /// A number; Lua's floats (`12.0`) are accepted for integers.
    pub(crate) fn num<T: FromStr + TryFrom<u64>>(&self, name: &str) -> Result<T> {
        let s = self.text(name)?;
        s.parse::<T>()
            .ok()
            .or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .and_then(|f| T::try_from(f as u64).ok())
            })
            .ok_or_else(|| StoreError::Reply(format!("{}: {name} is not a number: {s:?}", self.op)))
    }

    pub(crate) fn float(&self, name: &str) -> Result<f64> {
        let s = self.text(name)?;
        s.parse()
            .map_err(|_| StoreError::Reply(format!("{}: {name} is not a number: {s:?}", self.op)))
    }

    pub(crate) fn pool(&self, name: &str) -> Result<fleet_protocol::PoolType> {
        let s = self.text(name)?;
        s.parse()
            .map_err(|_| StoreError::Reply(format!("{}: unknown pool {s:?}", self.op)))
    }

    /// The `outcome` field every multi-field reply carries.
    pub(crate) fn outcome(&self) -> Result<&str> {
        self.text("outcome")
    }

    pub(crate) fn unexpected(&self) -> StoreError {
        StoreError::Reply(format!("{}: {:?}", self.op, self.fields))
    }
}
