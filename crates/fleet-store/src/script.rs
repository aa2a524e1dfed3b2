//! The typed Rust↔Lua contract.
//!
//! Each script declares its keys and arguments by name in its first two
//! lines:
//!
//! ```text
//! --! keys: epoch agent heartbeats failed +task
//! --! args: epoch id now status load memory cpu network +task
//! ```
//!
//! (`+task` is [`TASK_KEYS`] / [`TASK_ARGS`], what every task-aware part of
//! the prelude reads; a script is bound and passed only the part of it that
//! it, or the prelude it keeps, names). From the declaration, [`ScriptDef`] generates the
//! first lines of the script, binding `KEY.<name>`, `A.<name>` and `K` (the
//! named keys, and each `prefix.<name>` argument under `<name>`), and a
//! [`Call`] puts each value it is given by name into its declared place. So
//! neither side names a position: the order exists only on the wire, derived
//! from the one declaration, and a call that misses or adds a name fails
//! before it reaches Redis. (Passing the names themselves on every call was
//! measured at 10 µs more per script call inside Redis (15 against 5);
//! binding them from the declaration costs about 4 more (9 against 5).)
//!
//! A script that acts on a batch declares the fields of one item in a third
//! line (`--! batch: id status load`): the items of [`Call::item`] follow
//! the arguments, each field in its declared place, and the script reads
//! them as `BATCH[i].<name>`.
//!
//! Replies with more than one field are flat name, value lists (`reply()`
//! in the prelude), read by name through [`Reply`].

use crate::error::{from_script, Result, StoreError};
use crate::keys::Keys;
use redis::aio::ConnectionLike;
use redis::{FromRedisValue, ToRedisArgs};
use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;

/// The prelude scripts have after their bindings (each the part it uses:
/// [`prelude_for`]): fencing, counters,
/// agent availability, task hand-back, and every message a script builds.
const PRELUDE: &str = include_str!("lua/common.lua");

/// The prelude's text (what the library's version is hashed from).
pub(crate) fn prelude() -> &'static str {
    PRELUDE
}

/// The keys of the `+task` group.
pub(crate) const TASK_KEYS: &[&str] = &[
    "counts",
    "leases",
    "dead",
    "delayed",
    "settings",
    "quarantine",
    "stalls",
    "poison",
    "validators",
    "departed",
];
/// The arguments of the `+task` group: key prefixes, and the allocation channel.
pub(crate) const TASK_ARGS: &[&str] = &[
    "prefix.agent",
    "prefix.available",
    "prefix.agent_tasks",
    "prefix.task",
    "prefix.queue",
    "prefix.pool_done",
    "prefix.quota",
    "prefix.pool_agents",
    "prefix.agent_channel",
    "prefix.history",
    "prefix.budget",
    "prefix.lapsed",
    "allocation_channel",
];

/// True when the server has no such function: it lost the library (a
/// restart without persistence, a flush). The caller loads it again.
pub(crate) fn missing(e: &redis::RedisError) -> bool {
    e.to_string().contains("Function not found")
}

/// The library of every script, loaded once (`FUNCTION LOAD`): the prelude
/// at its top, defined once when the library loads rather than on every
/// call (measured: about 8 µs of Redis a call), then each script as a
/// function. `KEY`, `A` and `K` are the library's, set at the start of each
/// call, which also empties the prelude's per-call caches.
pub(crate) fn library(hash: &str, defs: &[&ScriptDef]) -> String {
    let mut lib = format!("#!lua name=fleet_{hash}\nlocal KEY, A, K\n{PRELUDE}\n");
    for d in defs {
        lib.push_str(&d.body);
    }
    lib
}

/// The values of the `+task` group ([`TASK_KEYS`], then [`TASK_ARGS`]),
/// which [`Keys`] keeps.
pub(crate) fn task_group(keys: &Keys) -> Vec<String> {
    let c = keys.channels();
    vec![
        keys.counts(),
        keys.leases(),
        keys.dead(),
        keys.delayed(),
        keys.settings(),
        keys.quarantine(),
        keys.stalls(),
        keys.poison(),
        keys.validators(),
        keys.departed(),
        keys.agent_prefix(),
        keys.available_prefix(),
        keys.agent_tasks_prefix(),
        keys.task_prefix(),
        keys.queue_prefix(),
        keys.pool_done_prefix(),
        keys.agent_quota_prefix(),
        keys.pool_agents_prefix(),
        c.agent_prefix(),
        keys.agent_history_prefix(),
        keys.budget_prefix(),
        keys.lapsed_prefix(),
        c.allocation(),
    ]
}

/// A script, its declared keys and arguments: a function of the library
/// ([`library`]), called by name (`FCALL`).
pub(crate) struct ScriptDef {
    op: &'static str,
    keys: Vec<String>,
    args: Vec<String>,
    /// Each declared key's and argument's place, by name.
    key_at: HashMap<String, usize>,
    arg_at: HashMap<String, usize>,
    /// The fields of a batch's item (`--! batch:`), if it takes one.
    batch: Vec<String>,
    /// Its function's name in the library (`fleet_<library hash>_<op>`).
    fname: String,
    /// Its function's registration, as the library carries it.
    body: String,
}

/// The function's first lines: `KEY`, `A` and `K` (the library's, set on
/// every call) bound from the declared names, each to its place in KEYS or
/// ARGV.
fn bindings(keys: &[String], args: &[String], batch: &[String]) -> String {
    let bind = |names: &[String], from: &str| -> Vec<String> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("[\"{n}\"] = {from}[{}]", i + 1))
            .collect()
    };
    let mut k = bind(keys, "KEYS");
    k.extend(args.iter().enumerate().filter_map(|(i, n)| {
        n.strip_prefix("prefix.")
            .map(|p| format!("[\"{p}\"] = ARGV[{}]", i + 1))
    }));
    let batch = if batch.is_empty() {
        String::new()
    } else {
        let fields: Vec<String> = batch
            .iter()
            .enumerate()
            .map(|(i, n)| format!("[\"{n}\"] = ARGV[i + {i}]"))
            .collect();
        format!(
            "local BATCH = {{}}\nfor i = {}, #ARGV, {} do BATCH[#BATCH + 1] = {{{}}} end\n",
            args.len() + 1,
            batch.len(),
            fields.join(", ")
        )
    };
    format!(
        "KEY = {{{}}}\nA = {{{}}}\nK = {{{}}}\n{batch}",
        bind(keys, "KEYS").join(", "),
        bind(args, "ARGV").join(", "),
        k.join(", ")
    )
}

/// The part of the prelude a script uses. The prelude is a list of
/// top-level definitions (a `local function`, a `function encode.<name>`, a
/// `local` value, each with the comment above it); one is kept when the
/// script names it or a kept one does, in the prelude's order. What it keeps
/// says which of the `+task` group's values the script is given.
fn prelude_for(source: &str) -> String {
    let defs = definitions(PRELUDE);
    let mut need = words(source);
    let mut kept = vec![false; defs.len()];
    loop {
        let mut grew = false;
        for (i, (name, text)) in defs.iter().enumerate() {
            if !kept[i] && need.contains(name) {
                kept[i] = true;
                need.extend(words(text));
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    defs.iter()
        .zip(kept)
        .filter(|(_, k)| *k)
        .map(|((_, text), _)| *text)
        .collect()
}

/// The prelude's top-level definitions: (the name each defines, its text
/// with the comment lines right above it).
fn definitions(prelude: &str) -> Vec<(&str, &str)> {
    let lines: Vec<(usize, &str)> = prelude
        .split_inclusive('\n')
        .scan(0, |at, l| {
            let start = *at;
            *at += l.len();
            Some((start, l))
        })
        .collect();
    let opens = |l: &str| {
        !l.trim().is_empty()
            && !l.starts_with(char::is_whitespace)
            && !["--", "end", "}"].iter().any(|p| l.starts_with(p))
    };
    let mut starts = Vec::new();
    for (i, &(_, l)) in lines.iter().enumerate() {
        if opens(l) {
            let mut first = i;
            while first > 0 && lines[first - 1].1.starts_with("--") {
                first -= 1;
            }
            let name = l
                .strip_prefix("local function ")
                .or_else(|| l.strip_prefix("function "))
                .or_else(|| l.strip_prefix("local "))
                .and_then(|rest| rest.split(|c: char| !is_word(c)).next())
                .unwrap_or_else(|| {
                    panic!("common.lua: a top-level line that defines nothing: {l:?}")
                });
            starts.push((lines[first].0, name));
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(i, &(at, name))| {
            let end = starts.get(i + 1).map_or(prelude.len(), |s| s.0);
            (name, &prelude[at..end])
        })
        .collect()
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The names a piece of Lua mentions, comments left out.
fn words(lua: &str) -> std::collections::HashSet<&str> {
    lua.lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .flat_map(|l| l.split(|c: char| !is_word(c)))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The fields a piece of Lua reads from a table by name, as `T.name`
/// (`K.counts`, `A.now`), comments left out.
fn fields_named(lua: &str) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for line in lua.lines().map(|l| l.split("--").next().unwrap_or("")) {
        let b = line.as_bytes();
        for (i, _) in line.match_indices('.') {
            let table = line[..i].rsplit(|c: char| !is_word(c)).next().unwrap_or("");
            let name: String = line[i + 1..].chars().take_while(|&c| is_word(c)).collect();
            let before = i.checked_sub(table.len() + 1).map(|j| b[j]);
            // `x.y` only: not `..` (concatenation) nor a number.
            if !table.is_empty() && !name.is_empty() && before != Some(b'.') {
                out.insert(format!("{table}.{name}"));
            }
        }
    }
    out
}

impl ScriptDef {
    /// `source` is the script file; `op` names it in metrics and errors.
    pub(crate) fn new(op: &'static str, source: &str) -> ScriptDef {
        let declared = |tag: &str, group: &[&str]| -> Vec<String> {
            let line = source
                .lines()
                .find_map(|l| l.strip_prefix(tag))
                .unwrap_or_else(|| panic!("script {op}: no `{tag}` line"));
            line.split_whitespace()
                .flat_map(|n| match n {
                    "+task" => group.iter().map(|g| g.to_string()).collect(),
                    _ => vec![n.to_string()],
                })
                .collect()
        };
        // Of the `+task` group, only what the script or the prelude it
        // keeps names: each value passed costs every call (about 0.15 µs a
        // value in Redis, measured), named or not.
        let prelude = prelude_for(source);
        let named = fields_named(&format!("{prelude}{source}"));
        let used = |n: &String| {
            let (table, name) = match n.strip_prefix("prefix.") {
                Some(p) => ("K", p),
                None => ("", n.as_str()),
            };
            let grouped = TASK_KEYS.contains(&n.as_str()) || TASK_ARGS.contains(&n.as_str());
            !grouped
                || ["K", "KEY", "A"]
                    .iter()
                    .filter(|t| table.is_empty() || **t == table)
                    .any(|t| named.contains(&format!("{t}.{name}")))
        };
        let keys: Vec<String> = declared("--! keys:", TASK_KEYS)
            .into_iter()
            .filter(used)
            .collect();
        let args: Vec<String> = declared("--! args:", TASK_ARGS)
            .into_iter()
            .filter(used)
            .collect();
        let batch: Vec<String> = source
            .lines()
            .find_map(|l| l.strip_prefix("--! batch:"))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let head = bindings(&keys, &args, &batch);
        let at = |names: &[String]| -> HashMap<String, usize> {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect()
        };
        let fname = format!("fleet_{}_{op}", crate::scripts::library_hash());
        let body = format!(
            "redis.register_function('{fname}', function(KEYS, ARGV)\nreset_caches()\n{head}{source}\nend)\n"
        );
        ScriptDef {
            op,
            fname,
            body,
            key_at: at(&keys),
            arg_at: at(&args),
            keys,
            args,
            batch,
        }
    }

    /// Its name, in metrics and errors: the file's name.
    #[cfg(test)]
    pub(crate) fn op(&self) -> &'static str {
        self.op
    }

    /// A call of a state-changing script: the epoch key and the caller's
    /// epoch (the fencing check every such script begins with).
    pub(crate) fn fenced<'s>(&'s self, keys: &Keys, epoch: u64) -> Call<'s> {
        self.call().key("epoch", keys.epoch()).arg("epoch", epoch)
    }

    /// A call of a script that any tool may run, commander or not (the
    /// audit log's append): no fencing.
    pub(crate) fn call(&self) -> Call<'_> {
        Call {
            def: self,
            keys: Vec::with_capacity(self.keys.len()),
            args: Vec::with_capacity(self.args.len()),
            items: Vec::new(),
        }
    }
}

/// One call of a script, its keys and arguments named.
pub(crate) struct Call<'s> {
    def: &'s ScriptDef,
    keys: Vec<(&'static str, Cow<'s, [u8]>)>,
    args: Vec<(&'static str, Cow<'s, [u8]>)>,
    items: Vec<Vec<(&'static str, Vec<u8>)>>,
}

impl<'s> Call<'s> {
    pub(crate) fn key(mut self, name: &'static str, key: String) -> Self {
        self.keys.push((name, Cow::Owned(key.into_bytes())));
        self
    }

    pub(crate) fn arg(mut self, name: &'static str, value: impl ToRedisArgs) -> Self {
        let mut v = value.to_redis_args();
        let one = if v.len() == 1 {
            v.pop().unwrap_or_default()
        } else {
            v.concat()
        };
        self.args.push((name, Cow::Owned(one)));
        self
    }

    /// One item of the batch (`--! batch:`), its fields by name.
    pub(crate) fn item(mut self, fields: Vec<(&'static str, Vec<u8>)>) -> Self {
        self.items.push(fields);
        self
    }

    /// The `+task` group: the keys and prefixes the task-aware parts of the
    /// prelude use (named once, in [`Keys`]).
    pub(crate) fn task_keys(mut self, keys: &'s Keys) -> Self {
        let values = keys.task_group();
        let (k, a) = values.split_at(TASK_KEYS.len());
        for (n, v) in TASK_KEYS.iter().zip(k) {
            self.keys.push((n, Cow::Borrowed(v.as_bytes())));
        }
        for (n, v) in TASK_ARGS.iter().zip(a) {
            self.args.push((n, Cow::Borrowed(v.as_bytes())));
        }
        self
    }

    /// The `once`/`once_ttl` pair of a script that records the nonce of the
    /// message it acts on (none: a placeholder key and ttl 0, not checked).
    pub(crate) fn once(self, keys: &Keys, once: Option<&crate::Once>) -> Self {
        match once {
            Some(o) => self.key("once", o.key.clone()).arg("once_ttl", o.ttl_ms),
            None => self.key("once", keys.nonce("-", "-")).arg("once_ttl", 0),
        }
    }

    /// The `FCALL` command, every value in its declared place; an error
    /// if a declared name was not given or a given one is not declared.
    pub(crate) fn cmd(&self) -> Result<redis::Cmd> {
        let def = self.def;
        let contract =
            |what: &str, n: &str| StoreError::Reply(format!("script {}: {what} {n:?}", def.op));
        // Each given value in its declared place (the first, if given twice).
        let place = |given: &'_ [(&'static str, Cow<'_, [u8]>)],
                     at: &HashMap<String, usize>,
                     declared: &[String],
                     what: &str|
         -> Result<Vec<usize>> {
            let mut slots = vec![usize::MAX; declared.len()];
            for (i, (n, _)) in given.iter().enumerate() {
                let Some(&at) = at.get(*n) else {
                    // A `+task` value the script does not name: not passed.
                    if TASK_KEYS.contains(n) || TASK_ARGS.contains(n) {
                        continue;
                    }
                    return Err(contract(&format!("undeclared {what}"), n));
                };
                if slots[at] == usize::MAX {
                    slots[at] = i;
                }
            }
            if let Some(at) = slots.iter().position(|&s| s == usize::MAX) {
                return Err(contract(&format!("missing {what}"), &declared[at]));
            }
            Ok(slots)
        };
        let keys = place(&self.keys, &def.key_at, &def.keys, "key")?;
        let args = place(&self.args, &def.arg_at, &def.args, "argument")?;
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(&def.fname).arg(keys.len());
        for i in keys {
            cmd.arg(&*self.keys[i].1);
        }
        for i in args {
            cmd.arg(&*self.args[i].1);
        }
        for item in &self.items {
            if let Some((n, _)) = item.iter().find(|(n, _)| !def.batch.iter().any(|d| d == n)) {
                return Err(contract("undeclared batch field", n));
            }
            for d in &def.batch {
                let (_, v) = item
                    .iter()
                    .find(|(n, _)| n == d)
                    .ok_or_else(|| contract("missing batch field", d))?;
                cmd.arg(v.as_slice());
            }
        }
        Ok(cmd)
    }

    /// Runs the script (timed under its op); `FENCED` becomes
    /// [`StoreError::Fenced`]. A server without the library (restarted
    /// without persistence, flushed) is given it, and the call made again.
    pub(crate) async fn run<T: FromRedisValue>(self, conn: &mut impl ConnectionLike) -> Result<T> {
        let cmd = self.cmd()?;
        let call = async {
            match cmd.query_async(conn).await {
                Err(e) if missing(&e) => {
                    crate::scripts::load_library(conn).await?;
                    cmd.query_async(conn).await
                }
                r => r,
            }
        };
        crate::telemetry::timed(self.def.op, call)
            .await
            .map_err(from_script)
    }

    /// Runs the script and reads its name, value reply.
    pub(crate) async fn reply(self, conn: &mut impl ConnectionLike) -> Result<Reply> {
        let op = self.def.op;
        let fields: HashMap<String, String> = self.run(conn).await?;
        if fields.get("outcome").map(String::as_str) == Some("replay") {
            return Err(StoreError::Replay);
        }
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

    /// The message a script wrote for an agent, if it wrote one.
    pub(crate) fn notice(&self) -> Option<crate::Notice> {
        Some(crate::Notice {
            channel: self.fields.get("channel")?.clone(),
            message: self.fields.get("message")?.clone(),
        })
    }

    /// The `outcome` field every multi-field reply carries.
    pub(crate) fn outcome(&self) -> Result<&str> {
        self.text("outcome")
    }

    pub(crate) fn unexpected(&self) -> StoreError {
        StoreError::Reply(format!("{}: {:?}", self.op, self.fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> ScriptDef {
        ScriptDef::new(
            "t",
            "--! keys: epoch queue\n--! args: epoch pool now\nreturn 1",
        )
    }

    #[test]
    fn a_script_gets_the_prelude_it_uses_and_no_more() {
        let defined = |lua: &str| -> Vec<String> {
            definitions(lua)
                .iter()
                .map(|(n, _)| n.to_string())
                .collect()
        };
        let all = defined(PRELUDE);
        for name in [
            "fenced",
            "replayed",
            "release_agent",
            "place",
            "orphan_all",
            "encode",
        ] {
            assert!(all.iter().any(|n| n == name), "{name} is in the prelude");
        }
        // What release_agent calls comes with it, and what nothing calls
        // stays out.
        let kept = defined(&prelude_for(
            "release_agent(aid, tid, now, 'completed', 5, counts)",
        ));
        for name in [
            "release_agent",
            "judge",
            "may_quarantine",
            "place",
            "move",
            "strategy",
            "strategies",
            "read",
        ] {
            assert!(kept.iter().any(|n| n == name), "{name} kept: {kept:?}");
        }
        for name in ["orphan_all", "requeue", "remember", "fenced", "HISTORY_MAX"] {
            assert!(!kept.iter().any(|n| n == name), "{name} left out: {kept:?}");
        }
        // A name in a comment is no use of it.
        assert!(prelude_for("-- orphan_all\nreturn 1").is_empty());
        // Every line of the prelude after its header is in one definition.
        let covered: usize = definitions(PRELUDE).iter().map(|(_, t)| t.len()).sum();
        let header = PRELUDE.find("\n\n").expect("a header, then a blank line") + 2;
        assert_eq!(covered + header, PRELUDE.len());
    }

    #[test]
    fn a_call_must_give_exactly_the_declared_names() {
        let keys = Keys::new("p");
        let d = def();
        let full = || {
            d.fenced(&keys, 1)
                .key("queue", "q".into())
                .arg("pool", "ui")
        };
        assert!(full().arg("now", 5).cmd().is_ok());
        let missing = full()
            .cmd()
            .map(|_| ())
            .expect_err("a missing argument is refused");
        assert!(
            missing.to_string().contains("missing argument \"now\""),
            "{missing}"
        );
        let extra = full()
            .arg("now", 5)
            .arg("later", 6)
            .cmd()
            .map(|_| ())
            .unwrap_err();
        assert!(
            extra.to_string().contains("undeclared argument \"later\""),
            "{extra}"
        );
        let key = d
            .fenced(&keys, 1)
            .arg("pool", "ui")
            .arg("now", 5)
            .cmd()
            .map(|_| ())
            .unwrap_err();
        assert!(key.to_string().contains("missing key \"queue\""), "{key}");
    }

    #[test]
    fn a_batch_item_must_give_exactly_the_declared_fields() {
        let keys = Keys::new("p");
        let d = ScriptDef::new(
            "t",
            "--! keys: epoch\n--! args: epoch now\n--! batch: id load\nreturn #BATCH",
        );
        let call = || d.fenced(&keys, 1).arg("now", 5);
        let item = |fields: &[(&'static str, &str)]| {
            fields
                .iter()
                .map(|(n, v)| (*n, v.as_bytes().to_vec()))
                .collect::<Vec<_>>()
        };
        // Fields in any order: each goes to its declared place.
        assert!(call()
            .item(item(&[("load", "0.5"), ("id", "a1")]))
            .item(item(&[("id", "a2"), ("load", "0")]))
            .cmd()
            .is_ok());
        let missing = call()
            .item(item(&[("id", "a1")]))
            .cmd()
            .map(|_| ())
            .unwrap_err();
        assert!(
            missing.to_string().contains("missing batch field \"load\""),
            "{missing}"
        );
        let extra = call()
            .item(item(&[("id", "a1"), ("load", "1"), ("cpu", "2")]))
            .cmd()
            .map(|_| ())
            .unwrap_err();
        assert!(
            extra.to_string().contains("undeclared batch field \"cpu\""),
            "{extra}"
        );
        let head = bindings(&d.keys, &d.args, &d.batch);
        assert!(
            head.contains("for i = 3, #ARGV, 2 do BATCH[#BATCH + 1] = {[\"id\"] = ARGV[i + 0], [\"load\"] = ARGV[i + 1]} end"),
            "{head}"
        );
    }

    #[test]
    fn the_bindings_follow_the_declaration() {
        let d = ScriptDef::new(
            "t",
            "--! keys: epoch +task\n--! args: epoch id +task\nreturn 1",
        );
        assert_eq!(d.keys, ["epoch"]);
        assert_eq!(d.args, ["epoch", "id"]);
        assert!(d.body.starts_with("redis.register_function('fleet_"));
    }

    #[test]
    fn of_the_task_group_a_script_is_given_only_what_it_names() {
        // Named by the script (KEY.counts, K.agent .. id, the allocation
        // channel), and by the prelude it keeps (place(): K.available,
        // K.settings through strategy(), K.quota); a name in a comment is
        // not a use.
        let d = ScriptDef::new(
            "t",
            "--! keys: epoch +task\n--! args: epoch id +task\n\
             -- K.dead\n\
             redis.call('HGET', KEY.counts, K.agent .. A.id)\n\
             redis.call('PUBLISH', A.allocation_channel, 'x')\n\
             place(A.id, 'coder', {})\nreturn 1",
        );
        assert_eq!(d.keys, ["epoch", "counts", "settings"]);
        assert_eq!(
            d.args,
            [
                "epoch",
                "id",
                "prefix.agent",
                "prefix.available",
                "prefix.quota",
                "allocation_channel"
            ]
        );
        // A call gives the whole group; what the script does not name is
        // not passed.
        let keys = Keys::new("p");
        let cmd = d
            .fenced(&keys, 1)
            .task_keys(&keys)
            .arg("id", "a-1")
            .cmd()
            .expect("the group's other values are left out, not refused");
        let sent: Vec<String> = cmd
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(sent[2], "3", "three keys: {sent:?}");
        assert!(sent.contains(&keys.counts()), "{sent:?}");
        assert!(!sent.contains(&keys.dead()), "{sent:?}");
    }
}
