//! Issue 16: active and standby commanders on one Redis, as real processes.
//! The leader is SIGKILLed under load (three times in a row), SIGSTOPped for
//! twice its lease, stopped with SIGTERM; two standbys race for the lease.
//! Every run counts tasks lost (0), executions beyond one per task (0) and
//! false deaths (0).
//!
//! The commanders here lease for 1 s (renewed every 200 ms); agents
//! heartbeat every 500 ms and are failed after 800 ms of silence (2 x 400
//! ms). A takeover (about 1 s) is longer than that allowance, so a new
//! leader that judged silence by the clock, rather than listening for a
//! full window first, would fail live agents (seen, with the check
//! removed: 10 false deaths and 5 re-executions in 3 takeovers). And an
//! assignment is acknowledged within 800 ms, shorter than a takeover too:
//! an acknowledgement or result lost in the takeover is re-sent with the
//! agent's next heartbeat, which a new leader expiring attempts at once
//! would not wait for.

use crate::common::*;
use fleet_protocol::pool::PoolType;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "swarm:phase-1";

fn config() -> std::path::PathBuf {
    process_config_with(
        "ha",
        &[
            (
                "heartbeat_interval_ms = 5000",
                "heartbeat_interval_ms = 400",
            ),
            ("missed_heartbeats = 3 ", "missed_heartbeats = 2 "),
            ("ack_timeout_ms = 5000", "ack_timeout_ms = 800"),
            ("detect_tick_ms = 250", "detect_tick_ms = 50"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_leader_three_times_under_load_and_nothing_is_lost_or_run_twice() {
    let _heavy = heavy().await;
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let client = fleet_store::connection::client(&redis.url()).unwrap();
    let keys = fleet_store::Keys::new(PREFIX);
    let mut nodes = vec![Node::start(&redis.url(), &config()).await];
    wait_leader(&nodes[0].addr).await;
    nodes.push(Node::start(&redis.url(), &config()).await);
    let mut health = Events::subscribe(&client, &keys.channels().health()).await;
    let mut assigned = Events::subscribe(&client, &keys.channels().allocation()).await;
    let mut all = Events::subscribe(&client, &keys.channels().allocation()).await;
    let workers = Workers::start(
        &redis.url(),
        PREFIX,
        4,
        PoolType::Coder,
        Duration::from_millis(20),
    )
    .await;

    let addrs = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>(),
    ));
    let http = authed(&admin_token(&redis.url()).await);
    let stream = submit_stream(http, addrs.clone(), 240, Duration::from_millis(15));
    let mut takeovers = Vec::new();
    for round in 1..=3 {
        wait_until(|| async { workers.executed() >= round * 50 }).await;
        let i = leader_of(&nodes).await;
        let mut dead = nodes.remove(i);
        addrs.lock().unwrap().retain(|a| *a != dead.addr);
        let killed = fleet_protocol::now_ms();
        dead.child.start_kill().unwrap(); // SIGKILL
        dead.child.wait().await.unwrap();
        let gone = fleet_protocol::now_ms();
        // The first allocation after the old leader is gone is the new one's.
        let first = assigned
            .wait_for("an allocation by the new leader", |v| {
                v["type"] == "task_assigned" && v["ts"].as_u64() > Some(gone)
            })
            .await;
        takeovers.push(first["ts"].as_u64().unwrap() - killed);
        leader_of(&nodes).await;
        // A fresh standby for the next round.
        let fresh = Node::start(&redis.url(), &config()).await;
        addrs.lock().unwrap().push(fresh.addr.clone());
        nodes.push(fresh);
    }
    let ids = stream.await.unwrap();
    assert_eq!(ids.len(), 240);
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let done = all_completed(&mut conn, &keys, &ids, Duration::from_secs(60)).await;
    let per_task = completions_per_task(
        &all.collect_for(Duration::from_millis(300), |v| {
            v["type"] == "task_completed"
        })
        .await,
    );
    let lost: Vec<_> = ids
        .iter()
        .filter(|id| !per_task.contains_key(*id))
        .collect();
    let twice: Vec<_> = per_task.iter().filter(|(_, n)| **n > 1).collect();
    let again = workers.again();
    let deaths = health
        .collect_for(Duration::from_millis(100), |v| v["type"] == "agent_failed")
        .await;
    println!(
        "takeovers (kill to first allocation) {takeovers:?} ms; lost {}, completed twice {}, \
         executed again {}, false deaths {}",
        lost.len(),
        twice.len(),
        again.len(),
        deaths.len()
    );
    assert!(done, "every accepted task completes");
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(twice.is_empty(), "completed more than once: {twice:?}");
    assert!(again.is_empty(), "executed more than once: {again:?}");
    assert!(deaths.is_empty(), "false deaths: {deaths:?}");
    workers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_for_twice_its_lease_is_fenced_and_steps_down_when_it_wakes() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let client = fleet_store::connection::client(&redis.url()).unwrap();
    let keys = fleet_store::Keys::new(PREFIX);
    // Pool status every 200 ms: one is due the moment the old leader wakes.
    let config = process_config_with(
        "ha-stop",
        &[
            (
                "heartbeat_interval_ms = 5000",
                "heartbeat_interval_ms = 400",
            ),
            ("missed_heartbeats = 3 ", "missed_heartbeats = 2 "),
            ("ack_timeout_ms = 5000", "ack_timeout_ms = 800"),
            ("detect_tick_ms = 250", "detect_tick_ms = 50"),
            ("status_interval_ms = 5000", "status_interval_ms = 200"),
        ],
    );
    let old = Node::start(&redis.url(), &config).await;
    let old_epoch = wait_leader(&old.addr).await;
    let new = Node::start(&redis.url(), &config).await;
    assert_eq!(new.role().await, "standby");
    let mut health = Events::subscribe(&client, &keys.channels().health()).await;
    let mut all = Events::subscribe(&client, &keys.channels().allocation()).await;
    let workers = Workers::start(
        &redis.url(),
        PREFIX,
        3,
        PoolType::Coder,
        Duration::from_millis(20),
    )
    .await;
    let addrs = Arc::new(Mutex::new(vec![old.addr.clone(), new.addr.clone()]));
    let http = authed(&admin_token(&redis.url()).await);
    let stream = submit_stream(http, addrs, 150, Duration::from_millis(20));
    wait_until(|| async { workers.executed() >= 30 }).await;

    old.signal("-STOP");
    let stopped = Instant::now();
    let new_epoch = wait_leader(&new.addr).await;
    assert!(new_epoch > old_epoch);
    // Twice the lease in all (the scenario, not a synchronisation).
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(stopped.elapsed())).await;
    // What is said on a pool's channel from now on (pool_status, signed).
    let said = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe(keys.channels().pool(PoolType::Coder))
        .await
        .unwrap();
    let listening = {
        let said = said.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut s = ps.into_on_message();
            while let Some(m) = s.next().await {
                let text = String::from_utf8_lossy(m.get_payload_bytes()).to_string();
                said.lock().unwrap().push(text);
            }
        })
    };
    old.signal("-CONT");
    // It wakes as a leader past its deadline: it steps down (in the same
    // process) instead of writing, and stands by behind the new leader;
    // it says nothing in its old term's name first (no pool_status).
    wait_until(|| async { old.role().await == "standby" }).await;
    let zombie = format!("FC1 commander:{old_epoch} ");
    let heard_new = format!("FC1 commander:{new_epoch} ");
    wait_until(|| async {
        said.lock()
            .unwrap()
            .iter()
            .any(|m| m.starts_with(&heard_new))
    })
    .await;
    listening.abort();
    let old_said = said
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.starts_with(&zombie))
        .count();
    assert_eq!(
        old_said, 0,
        "the woken leader published under its old epoch"
    );
    let metrics = old.metrics().await;
    let ended = parse_metric(
        &metrics,
        r#"fleet_commander_terms_total{ended="lease_not_renewed"}"#,
    ) + parse_metric(&metrics, r#"fleet_commander_terms_total{ended="fenced"}"#);
    assert_eq!(ended, 1.0, "its term ended once, refused or unrenewed");
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let holder = fleet_store::lease::holder(&mut conn, &keys).await.unwrap();
    assert_eq!(
        holder.map(|h| h.epoch),
        Some(new_epoch),
        "the new leader keeps the lease"
    );
    let epoch: u64 = redis::cmd("GET")
        .arg(keys.epoch())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(epoch, new_epoch, "nobody claimed another epoch");

    let ids = stream.await.unwrap();
    let done = all_completed(&mut conn, &keys, &ids, Duration::from_secs(60)).await;
    let per_task = completions_per_task(
        &all.collect_for(Duration::from_millis(300), |v| {
            v["type"] == "task_completed"
        })
        .await,
    );
    let again = workers.again();
    let deaths = health
        .collect_for(Duration::from_millis(100), |v| v["type"] == "agent_failed")
        .await;
    println!(
        "SIGSTOP: lost {}, executed again {}, false deaths {}",
        ids.iter().filter(|id| !per_task.contains_key(*id)).count(),
        again.len(),
        deaths.len()
    );
    assert!(done, "every accepted task completes");
    assert!(per_task.values().all(|n| *n == 1), "{per_task:?}");
    assert!(again.is_empty(), "executed more than once: {again:?}");
    assert!(deaths.is_empty(), "false deaths: {deaths:?}");
    workers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_over_at_once_without_waiting_for_the_lease() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    // A lease far longer than the wait: only a release explains a takeover.
    let long = process_config_with("long-lease", &[("lease_ms = 1000 ", "lease_ms = 60000 ")]);
    let a = free_addr();
    let mut first = commander_process_with(&redis.url(), &a, &long).await;
    wait_leader(&a).await;
    let b = free_addr();
    let _second = commander_process_with(&redis.url(), &b, &long).await;
    assert_eq!(readyz(&b).await["role"], "standby");
    let pid = first.id().unwrap().to_string();
    let t = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    wait_leader(&b).await;
    println!("SIGTERM handover: {} ms", t.elapsed().as_millis());
    let exit = tokio::time::timeout(WAIT, first.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_standbys_exactly_one_takes_over_and_says_so() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let client = fleet_store::connection::client(&redis.url()).unwrap();
    let keys = fleet_store::Keys::new(PREFIX);
    let mut nodes = vec![Node::start(&redis.url(), &config()).await];
    let first_epoch = wait_leader(&nodes[0].addr).await;
    nodes.push(Node::start(&redis.url(), &config()).await);
    nodes.push(Node::start(&redis.url(), &config()).await);
    let http = authed(&admin_token(&redis.url()).await);

    // Standbys serve reads, refuse writes with the leader's address, and
    // every commander is listed with its role.
    let standby = &nodes[1];
    let r = http
        .get(format!("http://{}/v1/fleet", standby.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .post(format!("http://{}/v1/tasks", standby.addr))
        .json(&json!({"pool": "coder"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_leader");
    assert_eq!(body["leader"]["address"], nodes[0].addr.as_str(), "{body}");
    let listed = || async {
        http.get(format!("http://{}/v1/commanders", nodes[2].addr))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    wait_until(|| async { listed().await["commanders"].as_array().map(Vec::len) == Some(3) }).await;
    let v = listed().await;
    let roles: Vec<_> = v["commanders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(roles, ["leader", "standby", "standby"], "{v}");
    assert_eq!(v["commanders"][0]["address"], nodes[0].addr.as_str());
    assert_eq!(v["leader"]["epoch"], first_epoch);

    let mut fleet = Events::subscribe(&client, &keys.channels().fleet()).await;
    let mut dead = nodes.remove(0);
    dead.child.start_kill().unwrap();
    dead.child.wait().await.unwrap();
    let winner = leader_of(&nodes).await;
    // For two leases more: one leader, one standby, one takeover said.
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        let roles = [nodes[0].role().await, nodes[1].role().await];
        assert_eq!(
            roles.iter().filter(|r| **r == "leader").count(),
            1,
            "{roles:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let said = fleet
        .collect_for(Duration::from_millis(100), |v| {
            v["type"] == "commander_took_over"
        })
        .await;
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(said[0]["address"], nodes[winner].addr.as_str());
    assert!(said[0]["epoch"].as_u64().unwrap() > first_epoch);
    let audit = http
        .get(format!("http://{}/v1/audit", nodes[winner].addr))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let took: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "commander_took_over")
        .collect();
    assert_eq!(
        took.len(),
        2,
        "the first leader's and the winner's: {audit}"
    );
    let other = 1 - winner;
    assert_eq!(nodes[other].role().await, "standby");
    let m = nodes[winner].metrics().await;
    assert_eq!(parse_metric(&m, "fleet_commander_leader"), 1.0);
    let m = nodes[other].metrics().await;
    assert_eq!(parse_metric(&m, "fleet_commander_leader"), 0.0);
}

/// Issue 25, item 9: a leader cut off from Redis (frozen) steps down within
/// lease - renew of its last renewal (800 ms here) and says so at once
/// (`fleet_commander_leader` 0), not when its stuck calls give up; when
/// Redis is back it takes its own lease again at once, with a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_redis_steps_down_within_its_deadline() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let node = Node::start(&redis.url(), &config()).await;
    let first = wait_leader(&node.addr).await;
    let leading = || async { parse_metric(&node.metrics().await, "fleet_commander_leader") };
    wait_until(|| async { leading().await == 1.0 }).await;
    redis.pause();
    let frozen = Instant::now();
    wait_until(|| async { leading().await == 0.0 }).await;
    let took = frozen.elapsed();
    redis.resume();
    assert!(
        took <= Duration::from_millis(800 + 400),
        "stepped down {took:?} after Redis froze (deadline 800 ms after the last renewal)"
    );
    // Back: it leads again under a new epoch, without waiting out the
    // lease that still names it.
    wait_until(|| async {
        let r = readyz(&node.addr).await;
        r["role"] == "leader" && r["epoch"].as_u64() > Some(first)
    })
    .await;
}
