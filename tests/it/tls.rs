//! TLS to Redis: a redis-server with --tls-port, a CA and certificates made
//! for the test, client certificates required. The commander, the CLI, the
//! Rust SDK and the Python SDK work over rediss://; a client without the
//! client certificate, or that does not trust the CA, gets nothing.

use crate::common::*;
use fleet_protocol::pool::PoolType;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_a_task_over_tls() {
    let redis = fleet_testkit::RedisServer::start_tls().expect("redis-server with TLS, openssl");
    let url = redis.tls_url().unwrap();
    let files = redis.tls_files().unwrap().clone();
    let tls_port = url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();

    // Without a client certificate, or trusting only the system's roots: refused.
    for bad in [
        format!(
            "rediss://127.0.0.1:{tls_port}/?ssl_ca_certs={}",
            files.ca.display()
        ),
        format!(
            "rediss://127.0.0.1:{tls_port}/?ssl_certfile={}&ssl_keyfile={}",
            files.client_cert.display(),
            files.client_key.display()
        ),
    ] {
        let c = fleet_store::connection::client(&bad).unwrap();
        let ping = async {
            let mut conn = c.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        let r = tokio::time::timeout(WAIT, ping).await.expect("bounded");
        assert!(r.is_err(), "{bad} was let in");
    }

    // The commander over TLS.
    let addr = free_addr();
    let _commander = commander_process(&url, &addr).await;

    // A Rust SDK agent over TLS does a task.
    let base = format!("http://{addr}");
    let http = authed(&admin_token(&url).await);
    let cred = credential(&url, "tls-1", PoolType::Coder).await;
    let client = fleet_store::connection::client(&url).unwrap();
    let publisher = fleet_store::connection::connect(&url).await.unwrap();
    let mut agent = fleet_agent::Agent::connect(
        &client,
        publisher,
        Default::default(),
        spec("tls-1", PoolType::Coder),
    )
    .await
    .unwrap()
    .with_credential(&cred);
    agent.register(T).await.expect("registered over TLS");
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let w = work(|_| async { fleet_agent::Outcome::Complete(json!("over tls")) });
    let run = tokio::spawn(async move {
        agent
            .run_with(Duration::from_millis(200), Duration::ZERO, s, Some(w))
            .await
    });
    let id = submit_to(&http, &base, json!({"pool": "coder"})).await;
    assert_eq!(
        task_in_state(&http, &base, &id, "completed").await["result"],
        "over tls"
    );

    // The CLI over TLS.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-commander"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml"),
        ])
        .args(["keys", "list", "--json"])
        .env("REDIS_URL", &url)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .any(|k| k["subject"] == "tls-1"),
        "the key store read over TLS: {keys}"
    );
    stop.cancel();
    let _ = run.await;

    // The Python SDK over TLS (redis-py reads the same URL parameters).
    let mut py = credential(&url, "tls-py", PoolType::Ui).await;
    (py.redis_user, py.redis_password) = (None, None);
    let id = submit_to(&http, &base, json!({"pool": "ui", "payload": "hi"})).await;
    let out = python_example(&url, &py, 1).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        task_in_state(&http, &base, &id, "completed").await["result"]["by"],
        "python"
    );
}
