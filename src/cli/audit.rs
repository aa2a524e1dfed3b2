//! `fleet-commander audit`: the audit log (list, verify, trim, checkpoint),
//! and the entries the CLI's own privileged commands write.

use super::load;
use clap::Subcommand;
use fleet_commander::Config;
use fleet_protocol::auth::Signer;
use fleet_store::audit::{self, AuditLog, Checkpoint, Verdict};
use fleet_store::Keys;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub(crate) enum AuditAction {
    /// The newest entries, newest first.
    List {
        /// How many entries, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Check the chain and the commander's signatures; names the first entry
    /// edited, deleted or inserted (exit status 1 then).
    Verify {
        /// Signed checkpoints kept elsewhere (the commander's
        /// security.audit_checkpoint_file, or lines of `audit checkpoint`):
        /// the log must still reach each, through the same entry.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Keep only the newest N entries; the last removed one becomes the
    /// anchor the chain is checked from (an audit_trimmed entry names it).
    Trim {
        /// How many of the newest entries to keep.
        #[arg(long)]
        keep: usize,
    },
    /// Print the log's head signed by the commander, one JSON line, or
    /// append it to a file: keep it off this host.
    Checkpoint {
        /// Append to this file instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The checkpoints in `path`, one JSON line each, all signed by `commander`.
pub(crate) fn read_checkpoints(
    path: &Path,
    commander: &fleet_protocol::auth::PublicKey,
) -> anyhow::Result<Vec<Checkpoint>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{} line {}", path.display(), n + 1);
        let cp: Checkpoint = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}: not a checkpoint: {e}", at()))?;
        anyhow::ensure!(
            cp.valid(commander),
            "{}: not signed by this commander's key; a forged checkpoint, or another fleet's",
            at()
        );
        out.push(cp);
    }
    Ok(out)
}

/// The commander's signer, when security is on (the CLI runs on its host).
fn signer(config: &Config) -> anyhow::Result<Option<Signer>> {
    Ok(config
        .commander_secret()?
        .map(|s| Signer::new("commander:cli", &s)))
}

/// Writes what a CLI command did to the audit log.
pub(crate) async fn record(
    config: &Config,
    conn: &mut fleet_store::connection::Conn,
    action: &str,
    target: &str,
    result: &str,
) -> anyhow::Result<()> {
    let actor = format!("cli:{}", operator());
    AuditLog::new(Keys::new(config.fleet.prefix.clone()), signer(config)?)
        .append(conn, &actor, action, target, result)
        .await?;
    Ok(())
}

/// Who runs the CLI, as `user@host`: `USER` or `LOGNAME`, else the name
/// /etc/passwd gives the process's uid (a container may set neither), else
/// `uid:N`; the host from the kernel.
fn operator() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .or_else(|| {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .to_string();
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            Some(
                passwd
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
                    })
                    .unwrap_or(format!("uid:{uid}")),
            )
        })
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// `audit ...`: one arm per subcommand (kept as one match, as clap declares them).
pub(crate) async fn audit_cmd(config: &Path, action: AuditAction) -> anyhow::Result<bool> {
    let config = load(config)?;
    let keys = Keys::new(config.fleet.prefix.clone());
    let mut conn = fleet_store::connection::connect(&config.redis.url).await?;
    match action {
        AuditAction::List { limit } => {
            let entries = audit::list(&mut conn, &keys, limit).await?;
            if super::json() {
                out!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                out!(
                    "{:>6} {:<14} {:<24} {:<20} {:<32} RESULT",
                    "SEQ",
                    "TS",
                    "ACTOR",
                    "ACTION",
                    "TARGET"
                );
                for e in entries {
                    out!(
                        "{:>6} {:<14} {:<24} {:<20} {:<32} {}",
                        e.seq,
                        e.ts,
                        e.actor,
                        e.action,
                        e.target,
                        e.result
                    );
                }
            }
            Ok(true)
        }
        AuditAction::Verify { checkpoint } => {
            let public = signer(&config)?.map(|s| s.public());
            let checkpoints = match (&checkpoint, &public) {
                (Some(path), Some(pk)) => read_checkpoints(path, pk)?,
                (Some(_), None) => anyhow::bail!(
                    "security.mode is \"open\": there is no commander key to check checkpoints with"
                ),
                (None, _) => Vec::new(),
            };
            match audit::verify(&mut conn, &keys, public.as_ref(), &checkpoints).await? {
                Verdict::Intact { entries, head_seq } => {
                    let newest = checkpoints.iter().map(|c| c.seq).max();
                    match newest {
                        Some(s) => out!(
                            "intact: {entries} entries, through entry {head_seq}; reaches all {} checkpoints (newest at entry {s})",
                            checkpoints.len()
                        ),
                        None => out!("intact: {entries} entries, through entry {head_seq} (no checkpoint given: a log cut short or rolled back would pass; see docs/SECURITY.md)"),
                    }
                    Ok(true)
                }
                Verdict::Broken { seq, what } => {
                    out!("broken at entry {seq}: {what}");
                    Ok(false)
                }
            }
        }
        AuditAction::Trim { keep } => {
            let actor = format!("cli:{}", operator());
            let n = AuditLog::new(keys, signer(&config)?)
                .trim(&mut conn, keep, &actor)
                .await?;
            out!("removed {n} entries; the chain is checked from the last one removed (an audit_trimmed entry names it)");
            Ok(true)
        }
        AuditAction::Checkpoint { out } => {
            let signer = signer(&config)?.ok_or_else(|| {
                anyhow::anyhow!("security.mode is \"open\": there is no commander key to sign with")
            })?;
            let log = AuditLog::new(keys, Some(signer));
            let Some(cp) = log.checkpoint(&mut conn, fleet_protocol::now_ms()).await? else {
                eprintln!("the audit log is empty: nothing to checkpoint");
                return Ok(false);
            };
            match out {
                Some(path) => {
                    fleet_commander::checkpoint::append(&path, &cp)
                        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                    eprintln!(
                        "checkpoint of entry {} appended to {}",
                        cp.seq,
                        path.display()
                    );
                }
                None => out!("{}", serde_json::to_string(&cp)?),
            }
            Ok(true)
        }
    }
}
