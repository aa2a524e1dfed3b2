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
    /// users can connect. Refused when --admin-url is that user: nobody
    /// could apply ACLs (or a revocation) again.
    #[arg(long, requires = "apply")]
    lock_default: bool,
    /// Keep applying: at once when a key changes (issued, rotated, revoked)
    /// and when a rotated-out key's overlap ends, so that its password
    /// stops working in Redis then, without anyone running this again.
    #[arg(long, requires = "apply")]
    watch: bool,
}

/// The commander's user the docs suggest.
const COMMANDER: &str = "fleet-commander";

/// The read-only operator's user (its password: `FLEET_OPERATOR_PASSWORD`).
const OPERATOR: &str = "fleet-operator";

/// `acl`: prints the ACL file for the key store, or applies it (and
/// watches); the steps in order, kept in one piece to read as the docs tell them.
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
    let mut fleet = vec![acl::commander(&keys, &user, &pass_hash)];
    match std::env::var("FLEET_OPERATOR_PASSWORD") {
        Ok(p) if !p.is_empty() => fleet.push(acl::operator(&keys, OPERATOR, &sha256_hex(&p))),
        _ => eprintln!("note: FLEET_OPERATOR_PASSWORD is not set: no {OPERATOR} user"),
    }
    let admin_url = args.admin_url.as_deref().unwrap_or(&config.redis.url);
    let mut conn = fleet_store::connection::connect(admin_url).await?;
    if args.watch {
        return watch(admin_url, &keys, &fleet, &mut conn).await;
    }
    let records = KeyStore::new(keys.clone()).all(&mut conn).await?;
    let (holders, gone) = acl::holders(&keys, &records, now_ms());
    let mut users = fleet;
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
    if args.lock_default {
        let me: String = redis::cmd("ACL")
            .arg("WHOAMI")
            .query_async(&mut conn)
            .await?;
        anyhow::ensure!(
            me != "default",
            "--lock-default would switch off the very user applying it ({me}), and nobody could \
             run `acl --apply` (or make a revocation reach Redis) again. Make an admin user first \
             (redis-cli ACL SETUSER fleet-admin on '>ADMIN-PASSWORD' '~*' '&*' '+@all') and pass \
             --admin-url redis://fleet-admin:ADMIN-PASSWORD@host:port"
        );
    }
    let ended = apply(&mut conn, &users, &gone).await?;
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
        "applied {} user(s), removed {}, ended {ended} connection(s) of withdrawn passwords{}",
        users.len(),
        gone.len(),
        if args.lock_default {
            "; the default user is off"
        } else {
            ""
        }
    );
    save(&mut conn).await;
    Ok(true)
}

/// `--watch`: applies now, then again on every key-change notice and at
/// every rotated-out key's end (and each minute, in case a notice was lost).
async fn watch(
    admin_url: &str,
    keys: &Keys,
    fleet: &[AclUser],
    conn: &mut fleet_store::connection::Conn,
) -> anyhow::Result<bool> {
    use futures_util::StreamExt;
    let mut notices = fleet_store::connection::client(admin_url)?
        .get_async_pubsub()
        .await?;
    notices.subscribe(keys.channels().keys()).await?;
    let mut notices = notices.into_on_message();
    let mut last = None;
    loop {
        let now = now_ms();
        let records = KeyStore::new(keys.clone()).all(conn).await?;
        let (holders, gone) = acl::holders(keys, &records, now);
        let mut users = fleet.to_vec();
        users.extend(holders);
        let lines: Vec<String> = users
            .iter()
            .map(AclUser::line)
            .chain(gone.clone())
            .collect();
        if last.as_ref() != Some(&lines) {
            let ended = apply(conn, &users, &gone).await?;
            out!(
                "applied {} user(s), removed {}, ended {ended} connection(s) of withdrawn passwords",
                users.len(),
                gone.len()
            );
            save(conn).await;
            last = Some(lines);
        }
        // The next overlap to end, if any is sooner than the minute.
        let next = records
            .iter()
            .filter(|r| r.revoked_ms.is_none())
            .filter_map(|r| r.expires_ms)
            .filter(|t| *t > now)
            .min()
            .map_or(60_000, |t| (t - now + 10).min(60_000));
        tokio::select! {
            n = notices.next() => if n.is_none() {
                anyhow::bail!("lost the connection to Redis (key-change notices)");
            },
            _ = tokio::time::sleep(std::time::Duration::from_millis(next)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(true),
        }
    }
}

/// Applies `users` and removes `gone`. Connections opened with a password
/// the new rules withdraw would stay open (Redis checks a password only at
/// AUTH): they are ended. How many were.
async fn apply(
    conn: &mut fleet_store::connection::Conn,
    users: &[AclUser],
    gone: &[String],
) -> anyhow::Result<u64> {
    let mut ended = 0;
    for AclUser { name, rules } in users {
        let before = passwords(conn, name).await?;
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg(rules)
            .query_async::<()>(&mut *conn)
            .await
            .with_context(|| format!("ACL SETUSER {name}"))?;
        let now = passwords(conn, name).await?;
        if before.iter().any(|p| !now.contains(p)) {
            ended += kill_user(conn, name).await?;
        }
    }
    for g in gone {
        ended += kill_user(conn, g).await?;
        redis::cmd("ACL")
            .arg("DELUSER")
            .arg(g)
            .query_async::<()>(&mut *conn)
            .await
            .with_context(|| format!("ACL DELUSER {g}"))?;
    }
    Ok(ended)
}

/// `ACL SAVE`: the rules outlive a Redis restart only with an aclfile.
async fn save(conn: &mut fleet_store::connection::Conn) {
    if let Err(e) = redis::cmd("ACL").arg("SAVE").query_async::<()>(conn).await {
        eprintln!("note: ACL SAVE: {e} (without an aclfile the rules last until Redis restarts; run acl --apply again then)");
    }
}

/// The password hashes Redis holds for `user` (none if it has no such user).
async fn passwords(
    conn: &mut fleet_store::connection::Conn,
    user: &str,
) -> anyhow::Result<Vec<String>> {
    let v: redis::Value = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(user)
        .query_async(conn)
        .await?;
    // A map (RESP3) or a flat list of field, value (RESP2).
    let fields: Vec<(redis::Value, redis::Value)> = match v {
        redis::Value::Map(m) => m,
        redis::Value::Array(a) => a
            .chunks(2)
            .filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone())))
            .collect(),
        _ => return Ok(Vec::new()),
    };
    Ok(fields
        .into_iter()
        .find(|(k, _)| redis::from_redis_value::<String>(k.clone()).is_ok_and(|k| k == "passwords"))
        .and_then(|(_, v)| redis::from_redis_value::<Vec<String>>(v).ok())
        .unwrap_or_default())
}

/// Ends every connection authenticated as `user`; how many.
async fn kill_user(conn: &mut fleet_store::connection::Conn, user: &str) -> anyhow::Result<u64> {
    Ok(redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(user)
        .query_async::<u64>(conn)
        .await
        .unwrap_or(0))
}
