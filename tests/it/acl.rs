//! Redis ACLs from `fleet-commander acl --apply`, on a real redis-server: the
//! commander and an agent work under their users, and an agent, a submitter
//! and the operator are refused (NOPERM) everything else; a withdrawn
//! password ends the connections opened with it; only validators reach the
//! governance channel; the default user is locked only with an admin left.

use crate::common::*;
use fleet_protocol::pool::PoolType;
use serde_json::json;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-commander");

fn cli(commander_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml"),
        ])
        .args(args)
        .env("REDIS_URL", commander_url)
        .env("FLEET_COMMANDER_KEY", test_commander_key())
        .env("FLEET_OPERATOR_PASSWORD", "operator-pw")
        .output()
        .expect("binary runs")
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The command's error code (NOPERM, ...), or "OK".
async fn try_cmd(c: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query_async::<redis::Value>(c).await {
        Ok(_) => "OK".into(),
        Err(e) => e.code().unwrap_or("?").to_string(),
    }
}

async fn try_subscribe(url: &str, channel: &str) -> String {
    let mut ps = redis::Client::open(url)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    match ps.subscribe(channel).await {
        Ok(()) => "OK".into(),
        Err(e) => e.code().unwrap_or("?").to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_submitters_and_operators_get_only_what_they_need() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let admin = redis.url();
    let hostport = admin.trim_start_matches("redis://").to_string();
    let commander_url = format!("redis://fleet-commander:commander-pw@{hostport}");

    // Credentials, as `keys issue` makes them (the default user still works).
    let mut c = fleet_store::connection::connect(&admin).await.unwrap();
    let issuer = test_issuer("swarm:phase-1");
    let a = issuer
        .agent(&mut c, "acl-a", PoolType::Coder, Default::default())
        .await
        .unwrap();
    let _b = issuer
        .agent(&mut c, "acl-b", PoolType::Tester, Default::default())
        .await
        .unwrap();
    let sub = issuer.submitter(&mut c, "ci").await.unwrap();

    // Printed: hashes only, never a password.
    let printed = cli(&commander_url, &["acl", "--admin-url", &admin]);
    assert!(printed.status.success(), "{printed:?}");
    let rules = String::from_utf8_lossy(&printed.stdout);
    assert!(rules.contains("ACL SETUSER fleet-agent-acl-a "), "{rules}");
    for secret in [
        "commander-pw",
        "operator-pw",
        a.redis_password.as_deref().unwrap(),
    ] {
        assert!(!rules.contains(secret), "a password in the rules: {rules}");
    }
    // Locking the default user needs another admin first.
    let mut d = conn(&admin).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("fleet-admin")
        .arg("on")
        .arg(">admin-pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut d)
        .await
        .unwrap();
    let admin_user = format!("redis://fleet-admin:admin-pw@{hostport}");
    let applied = cli(
        &commander_url,
        &[
            "acl",
            "--apply",
            "--admin-url",
            &admin_user,
            "--lock-default",
        ],
    );
    assert!(applied.status.success(), "{applied:?}");

    // The default user is off.
    let refused = redis::Client::open(admin.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    let locked = match refused {
        Err(_) => true,
        Ok(mut c) => try_cmd(&mut c, &["PING"]).await != "OK",
    };
    assert!(locked, "the default user still works");

    // The commander and an agent do their work under their users.
    let addr = free_addr();
    let _commander = commander_process(&commander_url, &addr).await;
    let agent_url = a.redis_url(&admin);
    let client = fleet_store::connection::client(&agent_url).unwrap();
    let publisher = fleet_store::connection::connect(&agent_url).await.unwrap();
    let mut agent = fleet_agent::Agent::connect(
        &client,
        publisher,
        fleet_protocol::Channels::default(),
        spec("acl-a", PoolType::Coder),
    )
    .await
    .unwrap()
    .with_credential(&a);
    agent
        .register(T)
        .await
        .expect("registers under its ACL user");
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let w = work(|t| async move { fleet_agent::Outcome::Complete(json!({"did": t.task_id})) });
    let run = tokio::spawn(async move {
        agent
            .run_with(
                std::time::Duration::from_millis(200),
                std::time::Duration::ZERO,
                s,
                Some(w),
            )
            .await
    });
    let base = format!("http://{addr}");
    let http = authed(&admin_token(&commander_url).await);
    let id = submit_to(&http, &base, json!({"pool": "coder"})).await;
    task_in_state(&http, &base, &id, "completed").await;
    stop.cancel();
    let _ = run.await;

    // An agent: no key, no other agent's channel, no :tasks, no listening in.
    let mut ac = conn(&agent_url).await;
    assert_eq!(
        try_cmd(&mut ac, &["GET", "swarm:phase-1:commander:epoch"]).await,
        "NOPERM"
    );
    assert_eq!(
        try_cmd(&mut ac, &["HGETALL", "swarm:phase-1:agents:acl-a"]).await,
        "NOPERM"
    );
    assert_eq!(
        try_cmd(&mut ac, &["HGETALL", "swarm:phase-1:keys"]).await,
        "NOPERM"
    );
    assert_eq!(try_cmd(&mut ac, &["SET", "elsewhere", "1"]).await, "NOPERM");
    assert_eq!(
        try_cmd(&mut ac, &["PUBLISH", "swarm:phase-1:tasks", "{}"]).await,
        "NOPERM"
    );
    assert_eq!(
        try_cmd(&mut ac, &["PUBLISH", "swarm:phase-1:agent:acl-b", "{}"]).await,
        "NOPERM"
    );
    assert_eq!(
        try_cmd(&mut ac, &["PUBLISH", "swarm:phase-1:health", "{}"]).await,
        "OK"
    );
    assert_eq!(
        try_subscribe(&agent_url, "swarm:phase-1:agent:acl-b").await,
        "NOPERM"
    );
    assert_eq!(
        try_subscribe(&agent_url, "swarm:phase-1:registry").await,
        "NOPERM"
    );
    assert_eq!(
        try_subscribe(&agent_url, "swarm:phase-1:pool:coder").await,
        "OK"
    );

    // A submitter: :tasks only.
    let sub_url = sub.redis_url(&admin);
    let mut sc = conn(&sub_url).await;
    assert_eq!(
        try_cmd(&mut sc, &["PUBLISH", "swarm:phase-1:tasks", "{}"]).await,
        "OK"
    );
    assert_eq!(
        try_cmd(&mut sc, &["PUBLISH", "swarm:phase-1:registry", "{}"]).await,
        "NOPERM"
    );
    assert_eq!(
        try_cmd(&mut sc, &["GET", "swarm:phase-1:commander:epoch"]).await,
        "NOPERM"
    );
    assert_eq!(
        try_subscribe(&sub_url, "swarm:phase-1:reply:ci").await,
        "OK"
    );
    assert_eq!(
        try_subscribe(&sub_url, "swarm:phase-1:reply:ci:job-1").await,
        "OK"
    );
    // Not another submitter's whose name starts the same (`ci-7`).
    assert_eq!(
        try_subscribe(&sub_url, "swarm:phase-1:reply:ci-7").await,
        "NOPERM"
    );

    // The operator: reads, never writes or publishes.
    let op_url = format!("redis://fleet-operator:operator-pw@{hostport}");
    let mut oc = conn(&op_url).await;
    assert_eq!(
        try_cmd(&mut oc, &["HGETALL", "swarm:phase-1:agents:acl-a"]).await,
        "OK"
    );
    assert_eq!(
        try_cmd(
            &mut oc,
            &["HSET", "swarm:phase-1:agents:acl-a", "status", "idle"]
        )
        .await,
        "NOPERM"
    );
    assert_eq!(
        try_cmd(&mut oc, &["PUBLISH", "swarm:phase-1:registry", "{}"]).await,
        "NOPERM"
    );
    assert_eq!(try_cmd(&mut oc, &["FLUSHALL"]).await, "NOPERM");
}

/// Issue 25, item 6: Redis checks a password only at AUTH, so a connection
/// opened with a key's password outlives that key's rotation or revocation
/// unless `acl --apply` ends it; and an agent hears governance only if its
/// key is a validator's; and `--lock-default` keeps someone able to apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_password_ends_its_connections() {
    use futures_util::StreamExt;
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let admin = redis.url();
    let hostport = admin.trim_start_matches("redis://").to_string();
    let commander_url = format!("redis://fleet-commander:commander-pw@{hostport}");
    let mut c = fleet_store::connection::connect(&admin).await.unwrap();
    let issuer = test_issuer("swarm:phase-1");
    let old = issuer
        .agent(&mut c, "acl-r", PoolType::Coder, Default::default())
        .await
        .unwrap();
    let validator = fleet_protocol::auth::Grants {
        validator_weight: Some(1),
        ..Default::default()
    };
    let v = issuer
        .agent(&mut c, "acl-v", PoolType::Coordinator, validator)
        .await
        .unwrap();
    let apply = |admin: &str| cli(&commander_url, &["acl", "--apply", "--admin-url", admin]);
    let applied = apply(&admin);
    assert!(applied.status.success(), "{applied:?}");

    // Governance: the validator's key only.
    let governance = "swarm:phase-1:governance";
    let (old_url, v_url) = (old.redis_url(&admin), v.redis_url(&admin));
    assert_eq!(
        try_cmd(&mut conn(&old_url).await, &["PUBLISH", governance, "{}"]).await,
        "NOPERM"
    );
    assert_eq!(try_subscribe(&old_url, governance).await, "NOPERM");
    assert_eq!(
        try_cmd(&mut conn(&v_url).await, &["PUBLISH", governance, "{}"]).await,
        "OK"
    );
    assert_eq!(try_subscribe(&v_url, governance).await, "OK");

    // Listening with the old password, then rotated out at once.
    let mut ps = redis::Client::open(old_url.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    ps.subscribe("swarm:phase-1:agent:acl-r").await.unwrap();
    let rotated = cli(
        &commander_url,
        &["keys", "rotate", "acl-r", "--overlap-ms", "0"],
    );
    assert!(rotated.status.success(), "{rotated:?}");
    let new =
        fleet_protocol::auth::Credential::parse(&String::from_utf8_lossy(&rotated.stdout)).unwrap();
    let applied = apply(&admin);
    let said = String::from_utf8_lossy(&applied.stdout);
    assert!(said.contains("ended 1 connection(s)"), "{applied:?}");
    // The old subscription ends (nothing more is delivered on it) ...
    let mut stream = ps.into_on_message();
    let ended = tokio::time::timeout(WAIT, stream.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the old connection still listens: {ended:?}"
    );
    // ... the old password is refused, and the new one works.
    let refused = redis::Client::open(old_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    assert!(refused.is_err(), "the old password still works");
    assert_eq!(
        try_cmd(&mut conn(&new.redis_url(&admin)).await, &["PING"]).await,
        "OK"
    );

    // Locking the default user while applying as it: refused, still on.
    let locked = cli(
        &commander_url,
        &["acl", "--apply", "--admin-url", &admin, "--lock-default"],
    );
    assert!(!locked.status.success());
    let err = String::from_utf8_lossy(&locked.stderr);
    assert!(err.contains("fleet-admin"), "says what to do: {err}");
    assert_eq!(try_cmd(&mut conn(&admin).await, &["PING"]).await, "OK");
}

/// Issue 25, item 6: the end of a rotation's overlap reaches Redis without
/// anyone running `acl --apply` again: `acl --apply --watch` applies on
/// every key change and at every overlap's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_watch_ends_an_old_password_when_its_overlap_ends() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let admin = redis.url();
    let hostport = admin.trim_start_matches("redis://").to_string();
    let commander_url = format!("redis://fleet-commander:commander-pw@{hostport}");
    let mut c = fleet_store::connection::connect(&admin).await.unwrap();
    let old = test_issuer("swarm:phase-1")
        .agent(&mut c, "acl-w", PoolType::Coder, Default::default())
        .await
        .unwrap();
    let mut watcher = Command::new(BIN)
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml"),
        ])
        .args(["acl", "--apply", "--watch", "--admin-url", &admin])
        .env("REDIS_URL", &commander_url)
        .env("FLEET_COMMANDER_KEY", test_commander_key())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let works = |url: String| async move {
        match redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
        {
            Ok(mut c) => try_cmd(&mut c, &["PING"]).await == "OK",
            Err(_) => false,
        }
    };
    let old_url = old.redis_url(&admin);
    wait_until(|| works(old_url.clone())).await;
    let rotated = cli(
        &commander_url,
        // Long enough that a loaded machine still sees the overlap.
        &["keys", "rotate", "acl-w", "--overlap-ms", "4000"],
    );
    assert!(rotated.status.success(), "{rotated:?}");
    let new =
        fleet_protocol::auth::Credential::parse(&String::from_utf8_lossy(&rotated.stdout)).unwrap();
    let new_url = new.redis_url(&admin);
    // The new key's password at once; both during the overlap (a check
    // retried for a second: on a loaded machine one connection can time
    // out) ...
    wait_until(|| works(new_url.clone())).await;
    wait_until_within(std::time::Duration::from_secs(1), || works(old_url.clone())).await;
    // ... and the old one no more once it is over, with nobody applying.
    wait_until(|| async { !works(old_url.clone()).await }).await;
    wait_until(|| works(new_url.clone())).await;
    watcher.kill().unwrap();
    let _ = watcher.wait();
}

/// docs/SECURITY.md's ACL steps, in the order printed, on a fresh Redis
/// (its port in place of 6379): they work, the agent connects as its own
/// ACL user (no warning about a missing one) and does a task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_docs_acl_steps_work_in_the_order_printed() {
    use crate::common::docs::{bash, block_after, workdir};
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SECURITY.md")).unwrap();
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let port = redis.port().to_string();
    let steps = block_after(&text, "<!-- acl-steps -->", "sh")
        .replace("127.0.0.1:6379", &format!("127.0.0.1:{port}"))
        .replace("-p 6379 ", &format!("-p {port} "));
    assert!(steps.contains("acl --apply"), "{steps}");
    let dir = workdir();
    let addr = free_addr();
    let bin = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let env = [
        (
            "PATH",
            format!("{bin}:{}", std::env::var("PATH").unwrap_or_default()),
        ),
        ("FLEET_HTTP_ADDR", addr.clone()),
        (
            "FLEET_COMMANDER_KEY",
            test_commander_key().display().to_string(),
        ),
    ];
    // The doc's lines, then a task for the agent (the test's own lines).
    let script = format!(
        "set -euo pipefail\n{steps}\n\
         fleet-commander tokens issue --role operator --name t > t.token\n\
         FLEET_TOKEN_FILE=t.token fleet-commander task submit --pool coder --payload '{{\"n\":1}}' --wait 30s\n\
         redis-cli -p {port} --user default --pass admin-secret --no-auth-warning CLIENT LIST\n\
         kill %2; wait %2; kill %1; wait %1\n"
    );
    let out = bash(&dir, &env, &script).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(dir.join("commander.log")).unwrap_or_default();
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- commander.log\n{log}");
    assert!(out.status.success(), "{all}");
    assert!(stdout.contains("state: completed\n"), "{all}");
    assert!(
        stdout.contains("user=fleet-agent-coder-7"),
        "the agent connected as its ACL user: {all}"
    );
    assert!(
        stdout.contains("user=fleet-commander"),
        "the commander connected as its own user: {all}"
    );
    assert!(!stderr.contains("no ACL user"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `acl` prints the rules before anything is applied, even while the
/// commander's URL names no user; `--apply` then says exactly what to do.
#[test]
fn acl_prints_without_a_user_and_apply_says_what_to_do() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let printed = cli(&redis.url(), &["acl"]);
    assert!(printed.status.success(), "{printed:?}");
    let out = String::from_utf8_lossy(&printed.stdout);
    assert!(out.contains("ACL SETUSER fleet-commander "), "{out}");
    let applied = cli(&redis.url(), &["acl", "--apply"]);
    assert!(!applied.status.success());
    let err = String::from_utf8_lossy(&applied.stderr);
    assert!(
        err.contains("export REDIS_URL=redis://fleet-commander:PASSWORD@"),
        "{err}"
    );
}
