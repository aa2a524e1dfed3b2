//! Issue 16, item 4: Redis behind Sentinel, on real servers: a master, two
//! replicas and three sentinels on loopback; the commander, its agents (the
//! Rust SDK) and the test all connect with a `redis+sentinel://` URL. The
//! master is SIGKILLed mid-load. With `tasks.durability = "replicated"`
//! every accepted task survives the failover: none is lost, none runs twice,
//! and no live agent is declared dead although Redis was gone for seconds.
//!
//! The time from the kill until a task submitted afterwards has been
//! completed (everything back: the sentinels' failover, the commander and
//! the agents following it, a replica confirming writes again) is printed.

use crate::common::*;
use fleet_protocol::pool::PoolType;
use fleet_testkit::{RedisServer, Sentinels};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PREFIX: &str = "swarm:phase-1";
/// A failover takes a few seconds (the master is down after 1 s without a
/// reply, then the sentinels elect and promote): the bound for each step.
const BOUND: Duration = Duration::from_secs(40);

fn config() -> std::path::PathBuf {
    process_config_with(
        "sentinel",
        &[
            (
                "heartbeat_interval_ms = 5000",
                "heartbeat_interval_ms = 400",
            ),
            ("missed_heartbeats = 3 ", "missed_heartbeats = 2 "),
            ("detect_tick_ms = 250", "detect_tick_ms = 50"),
            ("durability = \"async\"", "durability = \"replicated\""),
        ],
    )
}

/// Submits task `n` (clientId `sentinel-{n}`) until a commander accepts it;
/// its id.
async fn submit(http: &reqwest::Client, addr: &str, n: usize) -> String {
    let body = json!({"pool": "coder", "timeoutMs": 15000, "clientId": format!("sentinel-{n}"), "payload": n});
    let deadline = Instant::now() + BOUND;
    loop {
        assert!(
            Instant::now() < deadline,
            "task {n} not accepted within {BOUND:?}"
        );
        let r = http
            .post(format!("http://{addr}/v1/tasks"))
            .json(&body)
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        if let Ok(r) = r {
            if matches!(r.status().as_u16(), 200 | 201) {
                let v: Value = r.json().await.unwrap();
                return v["task"]["id"].as_str().unwrap().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_load_loses_nothing_and_runs_nothing_twice() {
    let _heavy = heavy().await;
    let mut master = RedisServer::start().expect("redis-server");
    let replicas = [
        RedisServer::start_replica_of(&master).expect("replica"),
        RedisServer::start_replica_of(&master).expect("replica"),
    ];
    let sentinels = Sentinels::start(&master, "fleet", 3, 2).expect("sentinels");
    let url = sentinels.url(None);
    let keys = fleet_store::Keys::new(PREFIX);

    let addr = free_addr();
    let _commander = commander_process_with(&url, &addr, &config()).await;
    wait_leader(&addr).await;
    let workers = Workers::start(&url, PREFIX, 4, PoolType::Coder, Duration::from_millis(20)).await;
    let http = authed(&admin_token(&url).await);

    // A stream of submissions; the master dies a third of the way in.
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(submit(&http, &addr, n).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until(|| async { workers.executed() >= 10 }).await;
    master.kill(); // SIGKILL
    let killed = Instant::now();
    let first_after = submit(&http, &addr, 30).await;
    let accepted_in = killed.elapsed();
    ids.push(first_after.clone());
    let mut conn = fleet_store::connection::connect(&url).await.unwrap();
    assert!(
        all_completed(&mut conn, &keys, std::slice::from_ref(&first_after), BOUND).await,
        "a task submitted after the failover completes"
    );
    let back_in = killed.elapsed();
    for n in 31..60 {
        ids.push(submit(&http, &addr, n).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promoted = sentinels.master_port();
    assert!(
        replicas.iter().any(|r| Some(r.port()) == promoted),
        "a replica was promoted ({promoted:?})"
    );

    let done = all_completed(&mut conn, &keys, &ids, BOUND).await;
    let states: Vec<Option<String>> = {
        let mut p = redis::pipe();
        for id in &ids {
            p.hget(keys.task(id), "state");
        }
        p.query_async(&mut conn).await.unwrap()
    };
    let lost = states.iter().filter(|s| s.is_none()).count();
    let again = workers.again();
    let deaths: u64 = redis::cmd("ZCARD")
        .arg(keys.failed())
        .query_async(&mut conn)
        .await
        .unwrap();
    println!(
        "Sentinel failover: first submission accepted {} ms after the kill, completed (everything back) {} ms; \
         {} tasks: lost {lost}, executed again {}, false deaths {deaths}",
        accepted_in.as_millis(),
        back_in.as_millis(),
        ids.len(),
        again.len()
    );
    assert!(done, "every accepted task completes: {states:?}");
    assert_eq!(lost, 0, "accepted tasks missing after the failover");
    assert!(again.is_empty(), "executed more than once: {again:?}");
    assert_eq!(deaths, 0, "live agents declared dead");

    // The CLI's Redis tools take the same URL and read from the new master.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-commander"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml"),
            "keys",
            "list",
            "--json",
        ])
        .env("REDIS_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    let agents = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["role"] == "agent")
        .count();
    assert!(
        agents >= 4,
        "the workers' keys, read through Sentinel: {keys}"
    );
    workers.stop().await;
}
