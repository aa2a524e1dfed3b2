//! The one registry of scripts: every Lua script the store runs, by name,
//! and [`load_all`], which loads them (one Redis Functions library, each script
//! a function of it) into a server once at start so that no first call pays
//! for it. A script exists only here; the modules that
//! call one import its static from this list (the lint test below keeps it
//! that way). Each script's keys and arguments are declared in its own first
//! two lines and bound by name ([`crate::script`]).

use crate::error::Result;
use crate::script::ScriptDef;
use redis::aio::ConnectionLike;
use std::sync::LazyLock;

/// Declares each script (`STATIC = "file"`, the file in `src/lua/` without
/// `.lua`, which is also its name in metrics and errors) and [`ALL`].
macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident = $op:literal;)*) => {
        $(
            $(#[$doc])*
            pub(crate) static $name: LazyLock<ScriptDef> = LazyLock::new(|| {
                ScriptDef::new($op, include_str!(concat!("lua/", $op, ".lua")))
            });
        )*
        /// Every script, in the library's order.
        pub(crate) static ALL: &[&LazyLock<ScriptDef>] = &[$(&$name),*];
        /// Every script's source: what the library's name is hashed from.
        static SOURCES: &[&str] = &[$(include_str!(concat!("lua/", $op, ".lua"))),*];
    };
}

scripts! {
    // Leadership.
    /// Takes the lease when it is free or lapsed, with a new epoch.
    LEASE_ACQUIRE = "lease_acquire";
    /// Extends the lease its holder has.
    LEASE_RENEW = "lease_renew";
    /// Gives the lease up.
    LEASE_RELEASE = "lease_release";

    // Agents.
    /// Registration (and re-registration), with its nonce.
    REGISTER = "register";
    /// A batch of heartbeats.
    HEARTBEAT = "heartbeat";
    /// Marks agents failed (missed heartbeats) and hands their work back.
    FAIL = "fail";
    /// Removes an agent (deregistration or long failure).
    REMOVE = "remove";
    /// An agent told to finish what it holds and take nothing new.
    DRAIN = "drain";
    /// An agent's budget: spend, halt and resume.
    BUDGET = "budget";

    // Tasks.
    /// A submission, idempotent by client id.
    SUBMIT = "submit";
    /// Cancels a task that has not finished.
    CANCEL = "cancel";
    /// Hands queued tasks to agents.
    ALLOCATE = "allocate";
    /// An agent's acknowledgement of an assignment.
    TASK_ACK = "task_ack";
    /// A completion or failure report.
    TASK_DONE = "task_done";
    /// Takes back attempts whose deadline has passed.
    EXPIRE = "expire";
    /// Moves retries whose backoff is over back to their queues.
    RELEASE = "release";
    /// A held (dead or poison) task back to its queue.
    DLQ_REQUEUE = "dlq_requeue";
    /// Deletes a dead letter for good.
    DLQ_DELETE = "dlq_delete";
    /// Lets a quarantined agent take work again.
    PAROLE = "parole";
    /// Pauses or resumes a pool's queue.
    POOL_PAUSE = "pool_pause";

    // Governance.
    /// Opens a proposal.
    PROPOSAL_OPEN = "proposal_open";
    /// A validator's vote.
    VOTE = "vote";
    /// Closes proposals whose deadline has passed.
    PROPOSAL_EXPIRE = "proposal_expire";
    /// Stores a decided proposal's seal.
    PROPOSAL_SEAL = "proposal_seal";

    // Audit.
    /// Appends to the audit log's hash chain (any tool may; not fenced).
    AUDIT_APPEND = "audit_append";
}

/// The library's version: a hash of the prelude and every script. It names
/// the library and each of its functions, so that commanders of two builds
/// sharing a Redis each call their own.
pub(crate) fn library_hash() -> &'static str {
    static HASH: LazyLock<String> = LazyLock::new(|| {
        let all: String = std::iter::once(crate::script::prelude())
            .chain(SOURCES.iter().copied())
            .collect();
        redis::Script::new(&all).get_hash()[..12].to_string()
    });
    &HASH
}

/// Loads the library of every script into the server behind `conn`
/// (`FUNCTION LOAD REPLACE`), so that the first real call of each finds it.
pub async fn load_all(conn: &mut impl ConnectionLike) -> Result<()> {
    Ok(load_library(conn).await?)
}

/// Loads the library (again: a server restarted without persistence).
pub(crate) async fn load_library(conn: &mut impl ConnectionLike) -> redis::RedisResult<()> {
    static LIBRARY: LazyLock<String> = LazyLock::new(|| {
        let defs: Vec<&ScriptDef> = ALL.iter().map(|s| &***s).collect();
        crate::script::library(library_hash(), &defs)
    });
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY.as_str())
        .query_async::<String>(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every `.rs` and `.lua` file of the repository's own code (not what
    /// npm installs for the BullMQ bench, nor build output).
    fn sources() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut todo = vec![
            root.join("crates"),
            root.join("src"),
            root.join("tests"),
            root.join("benches"),
        ];
        let mut out = Vec::new();
        while let Some(dir) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let p = e.unwrap().path();
                let vendored = p.ends_with("node_modules") || p.ends_with("target");
                if p.is_dir() && !vendored {
                    todo.push(p);
                } else if p.extension().is_some_and(|x| x == "rs" || x == "lua") {
                    out.push(p);
                }
            }
        }
        assert!(out.len() > 50, "found only {} sources", out.len());
        out
    }

    /// One line's code, without its comment.
    fn code<'a>(path: &Path, line: &'a str) -> &'a str {
        let marker = if path.extension().is_some_and(|x| x == "lua") {
            "--"
        } else {
            "//"
        };
        line.split(marker).next().unwrap_or("")
    }

    /// No script is made outside this registry (and `script.rs`, which
    /// builds them), and none reads a position: every value comes through
    /// its declared name (only the binder in `script.rs` writes positions).
    /// The needles are built so that this file does not match.
    #[test]
    fn scripts_live_in_the_registry_and_read_names_not_positions() {
        let positions = [concat!("KEYS", "["), concat!("ARGV", "[")];
        let makers = [concat!("Script", "::new("), concat!("ScriptDef", "::new(")];
        let mut found = Vec::new();
        for path in sources() {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            for (i, line) in text.lines().enumerate() {
                let code = code(&path, line);
                let at = format!("{}:{}: {line}", path.display(), i + 1);
                // `script.rs` is the binder: it writes the positions, once.
                if name != "script.rs" && positions.iter().any(|n| code.contains(n)) {
                    found.push(format!("reads a position: {at}"));
                }
                let allowed = name == "scripts.rs" || name == "script.rs";
                if !allowed && makers.iter().any(|n| code.contains(n)) {
                    found.push(format!("a script outside the registry: {at}"));
                }
            }
        }
        assert!(found.is_empty(), "{}", found.join("\n"));
    }

    /// The scripts read a task's or an agent's hash by names that
    /// [`crate::fields`] lists: a misspelt name would read as a missing
    /// field, silently. (The call is `read(key, 'name', ...)`; keys named
    /// otherwise than below are other hashes.)
    #[test]
    fn scripts_read_only_listed_fields() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/lua");
        let mut found = Vec::new();
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for call in text.split(concat!(" read", "(")).skip(1) {
                let args = &call[..call.find(')').expect("a closed call")];
                let (key, names) = args.split_once(',').unwrap_or((args, ""));
                let key = key.trim();
                let listed = match key {
                    "task" | "KEY.task" => crate::fields::TASK,
                    _ if key.starts_with("K.task ..") => crate::fields::TASK,
                    "agent" | "KEY.agent" => crate::fields::AGENT,
                    _ if key.starts_with("K.agent ..") => crate::fields::AGENT,
                    _ => continue,
                };
                for name in names.split(',').map(|n| n.trim().trim_matches('\'')) {
                    checked += 1;
                    if !listed.contains(&name) {
                        found.push(format!("{}: {key}: '{name}'", path.display()));
                    }
                }
            }
        }
        assert!(
            checked > 50,
            "only {checked} names found: is the parser right?"
        );
        assert!(found.is_empty(), "not in fields.rs:\n{}", found.join("\n"));
    }

    /// Every file in `src/lua/` but the prelude is in the registry.
    #[test]
    fn every_lua_file_is_registered() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/lua");
        let registered: Vec<&str> = super::ALL.iter().map(|s| s.op()).collect();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            if stem != "common" {
                assert!(
                    registered.contains(&stem.as_str()),
                    "{stem}.lua is not in the registry"
                );
            }
        }
    }
}
