//! `fleet-commander keys`: the commander's own key, and agents' and
//! submitters' credentials (docs/SECURITY.md).

use super::load;
use clap::{Args, Subcommand};
use fleet_protocol::auth::{self, Credential, Grants, PublicKey, Role, Signer};
use fleet_protocol::{now_ms, PoolType};
use fleet_store::{KeyStore, Keys};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub(crate) enum KeysAction {
    /// Create the commander's signing key (security.commander_key_file).
    Init {
        /// Replace an existing key: every credential issued so far then
        /// names a commander key that no longer signs.
        #[arg(long)]
        force: bool,
    },
    /// Issue a credential and print it, once (it holds the secret); or
    /// many at once, each to its own file in --out-dir.
    Issue {
        /// The agent's id (or, with --submitter, the submitter's name);
        /// several with --out-dir.
        #[arg(required_unless_present = "from")]
        subjects: Vec<String>,
        /// Also issue for every id in this file (one per line; # comments).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Write each credential to DIR/<id>.cred (mode 0600): needed for
        /// more than one.
        #[arg(long, conflicts_with = "out")]
        out_dir: Option<PathBuf>,
        /// The agent's pool: its key is refused in any other.
        #[arg(long, required_unless_present = "submitter")]
        pool: Option<String>,
        /// A submitter's credential (task_submit), not an agent's.
        #[arg(long, conflicts_with = "pool")]
        submitter: bool,
        /// Write the credential to this file (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Issue one more key even though the subject has a usable one
        /// (both then work: usually `rotate` is what you want).
        #[arg(long)]
        again: bool,
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// List the keys: id, role, subject, pool, state (never a secret).
    List,
    /// Revoke every key of an agent or submitter at once, or one key by its
    /// id (`--kid`: the old key after a rotation, the new one kept).
    Revoke {
        /// The agent's id, or the submitter's name.
        #[arg(required_unless_present = "kid")]
        subject: Option<String>,
        /// One key's id (`keys list` shows them).
        #[arg(long, conflicts_with = "subject")]
        kid: Option<String>,
    },
    /// Issue a new key; the old one keeps working for the overlap, then stops.
    Rotate {
        /// The agent's id, or the submitter's name.
        subject: String,
        /// How long the old key keeps working (default security.rotation_overlap_ms).
        #[arg(long)]
        overlap_ms: Option<u64>,
        /// Write the new credential to this file (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Grants of the new key (unset: the old key's).
        #[command(flatten)]
        grants: GrantArgs,
    },
}

/// What an agent's key may claim when it registers (docs/SECURITY.md,
/// "Grants"): without them, no validator, its pool's priority, capacity 1.
#[derive(Args, Default)]
pub(crate) struct GrantArgs {
    /// The agent may register as a validator of at most this weight.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100))]
    validator_weight: Option<u64>,
    /// The highest priority it may register with (default: its pool's).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=10))]
    max_priority: Option<u8>,
    /// The most tasks it may take at once (default 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_capacity: Option<u32>,
}

impl GrantArgs {
    fn given(&self) -> bool {
        self.validator_weight.is_some()
            || self.max_priority.is_some()
            || self.max_capacity.is_some()
    }

    fn grants(&self) -> Grants {
        Grants {
            validator_weight: self.validator_weight,
            max_priority: self.max_priority,
            max_capacity: self.max_capacity,
        }
    }
}

/// `keys ...`: one arm per subcommand (kept as one match, as clap declares them).
pub(crate) async fn keys(config: &Path, action: KeysAction) -> anyhow::Result<bool> {
    let config = load(config)?;
    if let KeysAction::Init { force } = action {
        let path = config.commander_key_path();
        if path.exists() && !force {
            anyhow::bail!(
                "{} exists; keep it (credentials issued so far depend on it) or pass --force",
                path.display()
            );
        }
        let secret = auth::new_secret();
        write_private(&path, &format!("{}\n", auth::encode_key(&secret)))?;
        let public = Signer::new("-", &secret).public();
        out!(
            "commander key written to {} (public key {})",
            path.display(),
            auth::encode_key(&public.to_bytes())
        );
        return Ok(true);
    }
    let store = KeyStore::new(Keys::new(config.fleet.prefix.clone()));
    let mut conn = fleet_store::connection::connect(&config.redis.url).await?;
    let commander = || -> anyhow::Result<PublicKey> {
        let secret = config.commander_secret()?.ok_or_else(|| {
            anyhow::anyhow!("security.mode is \"open\": there are no keys to issue")
        })?;
        Ok(Signer::new("-", &secret).public())
    };
    let now = now_ms();
    match action {
        KeysAction::Init { .. } => unreachable!("handled above"),
        KeysAction::Issue {
            mut subjects,
            from,
            out_dir,
            pool,
            submitter,
            out,
            again,
            grants,
        } => {
            if let Some(f) = &from {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
                subjects.extend(
                    text.lines()
                        .map(|l| l.split('#').next().unwrap_or("").trim())
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
            anyhow::ensure!(!subjects.is_empty(), "no id to issue a key for");
            anyhow::ensure!(
                subjects.len() == 1 || out_dir.is_some(),
                "{} ids: pass --out-dir DIR, and each credential goes to DIR/<id>.cred",
                subjects.len()
            );
            anyhow::ensure!(
                !(submitter && grants.given()),
                "grants (--validator-weight, --max-priority, --max-capacity) are an agent's; \
                 a submitter's key has none"
            );
            let grants = grants.grants();
            let (role, pool) = if submitter {
                (Role::Submitter, None)
            } else {
                let p = pool.unwrap_or_default();
                let p: PoolType = p
                    .parse()
                    .map_err(|_| anyhow::anyhow!("unknown pool {p:?}"))?;
                (Role::Agent, Some(p))
            };
            let mut seen = std::collections::HashSet::new();
            for s in &subjects {
                check_subject(s)?;
                anyhow::ensure!(seen.insert(s.as_str()), "{s} is named twice");
            }
            // A second key for the same subject would silently keep the
            // first one working: say so instead.
            let all = store.all(&mut conn).await?;
            for subject in &subjects {
                let usable = all
                    .iter()
                    .filter(|r| r.subject == *subject && r.usable(now).is_ok())
                    .count();
                if usable > 0 && !again {
                    anyhow::bail!(
                        "{subject} already has {usable} usable key(s): `keys rotate {subject}` replaces it \
                         (the old one keeps working for the overlap), `keys revoke {subject}` ends it, \
                         and --again issues one more beside it (nothing was issued)"
                    );
                }
            }
            let commander = commander()?;
            let (records, creds): (Vec<_>, Vec<_>) = subjects
                .iter()
                .map(|s| fleet_store::keystore::new_key(role, s, pool, grants, &commander, now))
                .unzip();
            // Written before the store learns of them: no key without its credential.
            if let Some(dir) = &out_dir {
                for c in &creds {
                    let text = format!("{}\n", serde_json::to_string(c)?);
                    write_private(&dir.join(format!("{}.cred", c.subject)), &text)?;
                }
            }
            for chunk in records.chunks(500) {
                store.put(&mut conn, chunk).await?;
            }
            for c in &creds {
                super::audit::record(
                    &config,
                    &mut conn,
                    "key_issued",
                    &format!("{} ({})", c.subject, c.kid),
                    &format!("grants {}", grants.describe()),
                )
                .await?;
            }
            match &out_dir {
                None => hand_over(&creds[0], out.as_deref())?,
                Some(dir) => eprintln!(
                    "{} credential(s) written to {}/<id>.cred; run `fleet-commander acl --apply` for their Redis users",
                    creds.len(),
                    dir.display()
                ),
            }
        }
        KeysAction::List => {
            let all = store.all(&mut conn).await?;
            if super::json() {
                out!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                out!(
                    "{:<14} {:<10} {:<28} {:<15} {:<13} GRANTS",
                    "KID",
                    "ROLE",
                    "SUBJECT",
                    "POOL",
                    "STATE"
                );
                for r in all {
                    let role = serde_json::to_value(r.role)?;
                    out!(
                        "{:<14} {:<10} {:<28} {:<15} {:<13} {}",
                        r.kid,
                        role.as_str().unwrap_or("?"),
                        r.subject,
                        r.pool.map(|p| p.as_str()).unwrap_or("-"),
                        r.state(now),
                        r.grants.describe()
                    );
                }
            }
        }
        KeysAction::Revoke { subject, kid } => {
            let (n, subject) = match (subject, kid) {
                (Some(s), _) => (store.revoke(&mut conn, &s, now).await?, s),
                (None, Some(k)) => (store.revoke_key(&mut conn, &k, now).await?, k),
                (None, None) => unreachable!("clap requires one"),
            };
            if n == 0 {
                eprintln!("{subject} has no usable key");
                return Ok(false);
            }
            super::audit::record(
                &config,
                &mut conn,
                "key_revoked",
                &subject,
                &format!("{n} key(s)"),
            )
            .await?;
            out!("revoked {n} key(s) of {subject}; the commander refuses them from now on");
        }
        KeysAction::Rotate {
            subject,
            overlap_ms,
            out,
            grants,
        } => {
            let overlap = overlap_ms.unwrap_or(config.security.rotation_overlap_ms);
            let grants = grants.given().then(|| grants.grants());
            let Some(cred) = store
                .rotate(&mut conn, &subject, overlap, grants, &commander()?, now)
                .await?
            else {
                eprintln!("{subject} has no usable key to rotate; issue one");
                return Ok(false);
            };
            super::audit::record(
                &config,
                &mut conn,
                "key_rotated",
                &format!("{subject} ({})", cred.kid),
                &match grants {
                    Some(g) => format!("grants {}", g.describe()),
                    None => "grants kept".into(),
                },
            )
            .await?;
            eprintln!("the old key of {subject} keeps working for {overlap} ms");
            hand_over(&cred, out.as_deref())?;
        }
    }
    Ok(true)
}

fn check_subject(s: &str) -> anyhow::Result<()> {
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    anyhow::ensure!(ok, "{s:?}: an id is 1-128 of A-Z a-z 0-9 - _ . :");
    Ok(())
}

/// Prints a credential, or writes it to a private file.
fn hand_over(c: &Credential, out: Option<&Path>) -> anyhow::Result<()> {
    let text = format!("{}\n", serde_json::to_string(c)?);
    match out {
        Some(p) => {
            write_private(p, &text)?;
            eprintln!(
                "credential {} for {} written to {}",
                c.kid,
                c.subject,
                p.display()
            );
        }
        None => {
            eprintln!(
                "credential {} for {} (shown once; keep it secret):",
                c.kid, c.subject
            );
            std::io::stdout().write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

/// Writes a file only its owner can read.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
