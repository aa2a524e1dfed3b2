//! `fleet-commander acl [--apply]`: the fleet's Redis ACL users (see
//! `fleet_store::acl`), printed, or applied to a Redis server.

use super::load;
use anyhow::Context;
use fleet_protocol::now_ms;
use fleet_store::acl::{self, AclUser};
use fleet_store::keystore::sha256_hex;
use fleet_store::{KeyStore, Keys};
use std::path::Path;

#[derive(clap::Args)]
pub(crate) struct AclArgs {
    /// Apply the rules (ACL SETUSER; ACL DELUSER for users whose every key is
    /// revoked or expired) instead of printing them.
    #[arg(long)]
    apply: bool,
    /// Connect as this to apply (default: redis.url). Before any ACL exists,
    /// that is Redis's `default` user.
    #[arg(long)]
    admin_url: Option<String>,
    /// Then switch off Redis's `default` user, so that only the fleet's
    /// users can connect.
    #[arg(long, requires = "apply")]
    lock_default: bool,
}

/// The commander's user the docs suggest.
const COMMANDER: &str = "fleet-commander";

/// The read-only operator's user (its password: `FLEET_OPERATOR_PASSWORD`).
const OPERATOR: &str = "fleet-operator";

pub(crate) async fn acl(config: &Path, args: AclArgs) -> anyhow::Result<bool> {
    let config = load(config)?;
    let keys = Keys::new(config.fleet.prefix.clone());
    let named = fleet_store::connection::url::user_and_password(&config.redis.url)?;
    let (user, pass_hash) = match named {
        (Some(user), Some(pass)) => (user, sha256_hex(&pass)),
        _ if args.apply => anyhow::bail!(
            "redis.url names no user for the commander, so it would connect as Redis's default user \
             and gain nothing from ACLs. Give it one first: \
             export REDIS_URL=redis://fleet-commander:PASSWORD@127.0.0.1:6379 (or redis.url in the config), \
             then run this again with --admin-url naming a user that may run ACL SETUSER \
             (e.g. --admin-url redis://127.0.0.1:6379 while Redis has no ACLs yet); docs/SECURITY.md, Redis ACLs"
        ),
        _ => {
            eprintln!(
                "note: redis.url names no user: the commander's rules are shown for user {COMMANDER} \
                 with the password hash <sha256-of-PASSWORD>; before --apply, set \
                 REDIS_URL=redis://{COMMANDER}:PASSWORD@host:port (docs/SECURITY.md, Redis ACLs)"
            );
            (COMMANDER.to_string(), "<sha256-of-PASSWORD>".to_string())
        }
    };
    let mut users = vec![acl::commander(&keys, &user, &pass_hash)];
    match std::env::var("FLEET_OPERATOR_PASSWORD") {
        Ok(p) if !p.is_empty() => users.push(acl::operator(&keys, OPERATOR, &sha256_hex(&p))),
        _ => eprintln!("note: FLEET_OPERATOR_PASSWORD is not set: no {OPERATOR} user"),
    }
    let admin_url = args.admin_url.as_deref().unwrap_or(&config.redis.url);
    let mut conn = fleet_store::connection::connect(admin_url).await?;
    let records = KeyStore::new(keys.clone()).all(&mut conn).await?;
    let (holders, gone) = acl::holders(&keys, &records, now_ms());
    users.extend(holders);

    if !args.apply {
        for u in &users {
            out!("{}", u.line());
        }
        for g in &gone {
            out!("ACL DELUSER {g}");
        }
        return Ok(true);
    }
    for AclUser { name, rules } in &users {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg(rules)
            .query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("ACL SETUSER {name}"))?;
    }
    for g in &gone {
        redis::cmd("ACL")
            .arg("DELUSER")
            .arg(g)
            .query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("ACL DELUSER {g}"))?;
    }
    if args.lock_default {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("off")
            .query_async::<()>(&mut conn)
            .await
            .context("ACL SETUSER default off")?;
    }
    out!(
        "applied {} user(s), removed {}{}",
        users.len(),
        gone.len(),
        if args.lock_default {
            "; the default user is off"
        } else {
            ""
        }
    );
    // Kept across a Redis restart only with an aclfile.
    if let Err(e) = redis::cmd("ACL")
        .arg("SAVE")
        .query_async::<()>(&mut conn)
        .await
    {
        eprintln!("note: ACL SAVE: {e} (without an aclfile the rules last until Redis restarts; run acl --apply again then)");
    }
    Ok(true)
}
