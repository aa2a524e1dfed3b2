//! `fleet-commander tokens`: operators' bearer tokens for the HTTP API.

use super::keys::write_private;
use super::load;
use clap::Subcommand;
use fleet_protocol::now_ms;
use fleet_store::tokens::{TokenRole, TokenStore};
use fleet_store::Keys;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub(crate) enum TokensAction {
    /// Issue a token and print it, once (only its hash is kept).
    Issue {
        /// viewer (GET), operator (also submit, cancel, drain, scale,
        /// requeue) or admin (also keys, tokens, audit).
        #[arg(long)]
        role: TokenRole,
        /// Who holds it (for the list, the log and revocation).
        #[arg(long)]
        name: String,
        /// Write it to this file (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// How long it works (`90d`, `12h`, ...), or `never`.
        #[arg(long, default_value = "90d")]
        ttl: String,
    },
    /// The tokens: id, name, role, state (never a token).
    List,
    /// Revoke the tokens with this name (or this id), at once.
    Revoke {
        /// The token's name (or id).
        name: String,
    },
}

/// `tokens ...`: one arm per subcommand (kept as one match, as clap declares them).
pub(crate) async fn tokens(config: &Path, action: TokensAction) -> anyhow::Result<bool> {
    let config = load(config)?;
    let store = TokenStore::new(Keys::new(config.fleet.prefix.clone()));
    let mut conn = fleet_store::connection::connect(&config.redis.url).await?;
    match action {
        TokensAction::Issue {
            role,
            name,
            out,
            ttl,
        } => {
            let now = now_ms();
            let expires = match ttl.as_str() {
                "never" => None,
                t => {
                    let d = humantime::parse_duration(t)
                        .map_err(|e| anyhow::anyhow!("--ttl {t:?}: {e} (say 90d, 12h or never)"))?;
                    Some(now + d.as_millis() as u64)
                }
            };
            let token = store
                .issue_until(&mut conn, &name, role, now, expires, None)
                .await?;
            super::audit::record(
                &config,
                &mut conn,
                "token_issued",
                &format!("{name} ({})", role.as_str()),
                &match expires {
                    Some(t) => format!("expires {}", super::render::when(t)),
                    None => "never expires".into(),
                },
            )
            .await?;
            match out {
                Some(p) => {
                    write_private(&p, &format!("{token}\n"))?;
                    eprintln!(
                        "{} token for {name} written to {}",
                        role.as_str(),
                        p.display()
                    );
                }
                None => {
                    eprintln!("{} token for {name} (shown once):", role.as_str());
                    out!("{token}");
                }
            }
        }
        TokensAction::List => {
            let all = store.all(&mut conn).await?;
            if super::json() {
                out!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(true);
            }
            out!(
                "{:<14} {:<24} {:<10} {:<8} {:<26} KIND",
                "ID",
                "NAME",
                "ROLE",
                "STATE",
                "EXPIRES"
            );
            let now = now_ms();
            for t in all {
                let expires = t
                    .expires_ms
                    .map_or("never".to_string(), super::render::when);
                let kind = match &t.session_of {
                    Some(p) => format!("console session of {p}"),
                    None => "token".into(),
                };
                out!(
                    "{:<14} {:<24} {:<10} {:<8} {:<26} {kind}",
                    t.id,
                    t.name,
                    t.role.as_str(),
                    t.state(now),
                    expires
                );
            }
        }
        TokensAction::Revoke { name } => {
            let n = store.revoke(&mut conn, &name, now_ms()).await?;
            if n == 0 {
                eprintln!("no active token named {name}");
                return Ok(false);
            }
            super::audit::record(
                &config,
                &mut conn,
                "token_revoked",
                &name,
                &format!("{n} token(s)"),
            )
            .await?;
            out!("revoked {n} token(s) of {name}");
        }
    }
    Ok(true)
}

/// The bearer token the CLI sends: `FLEET_TOKEN`, else the file named by
/// `FLEET_TOKEN_FILE`.
pub(crate) fn bearer() -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("FLEET_TOKEN") {
        return Ok(Some(t.trim().to_string()));
    }
    match std::env::var("FLEET_TOKEN_FILE") {
        Ok(f) => Ok(Some(
            std::fs::read_to_string(&f)
                .map_err(|e| anyhow::anyhow!("reading FLEET_TOKEN_FILE {f}: {e}"))?
                .trim()
                .to_string(),
        )),
        Err(_) => Ok(None),
    }
}

/// An HTTP client that sends the bearer token, if there is one.
pub(crate) fn http_client() -> anyhow::Result<reqwest::Client> {
    fleet_sim::issuer::http_client(bearer()?.as_deref())
}
