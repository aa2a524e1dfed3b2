//! Takeover time, with the shipped `[ha]` defaults (lease 5 s, renewed every
//! 1 s): three commander processes (release build) on one redis-server
//! with AOF, eight agents, tasks submitted at about 60/s to whichever
//! commander takes them. The leader is SIGKILLed `KILLS` times (10 by
//! default; the killed one comes back as a standby), then stopped with
//! SIGTERM `TERMS` times (3). Each takeover is timed from the signal to the
//! first allocation by the new leader. Reports p50 and max, and the tasks
//! lost, executed twice and the false deaths over the whole run.
//!
//!   cargo bench --bench takeover            # KILLS=10 TERMS=3 by default

#[path = "../tests/it/common/mod.rs"]
mod common;

use common::*;
use fleet_protocol::pool::PoolType;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PREFIX: &str = "swarm:phase-1";

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn summary(name: &str, v: &[u64]) {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return;
    }
    println!(
        "{name}: n={} p50={} ms max={} ms all={v:?}",
        s.len(),
        s[s.len() / 2],
        s[s.len() - 1]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let kills = count("KILLS", 10);
    let terms = count("TERMS", 3);
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let client = fleet_store::connection::client(&redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    let keys = fleet_store::Keys::new(PREFIX);
    // The shipped lease; agents' failure window 3 x 5 s as shipped.
    let config = config_file("takeover", &[]);
    let mut nodes = vec![Node::start(&redis.url(), &config).await];
    wait_leader(&nodes[0].addr).await;
    for _ in 0..2 {
        nodes.push(Node::start(&redis.url(), &config).await);
    }
    let mut health = Events::subscribe(&client, &keys.channels().health()).await;
    let mut assigned = Events::subscribe(&client, &keys.channels().allocation()).await;
    let mut all = Events::subscribe(&client, &keys.channels().allocation()).await;
    let workers = Workers::start(
        &redis.url(),
        PREFIX,
        8,
        PoolType::Coder,
        Duration::from_millis(20),
    )
    .await;
    let addrs = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>(),
    ));
    let http = authed(&admin_token(&redis.url()).await);
    let rounds = kills + terms;
    // Enough tasks to keep submitting through every round (about 7 s each).
    let stream = submit_stream(http, addrs.clone(), rounds * 450, Duration::from_millis(15));
    let (mut by_kill, mut by_term) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let before = workers.executed();
        wait_until(|| async { workers.executed() >= before + 20 }).await;
        let i = leader_of(&nodes).await;
        let mut old = nodes.remove(i);
        addrs.lock().unwrap().retain(|a| *a != old.addr);
        let sig = if round < kills { "-KILL" } else { "-TERM" };
        let at = fleet_protocol::now_ms();
        old.signal(sig);
        // An allocation a SIGKILLed leader made as the signal landed is not
        // the new leader's: look only after it has gone. (On SIGTERM the old
        // leader stops allocating at once, and releases the lease before it
        // exits.)
        let after = if round < kills {
            let _ = old.child.wait().await;
            fleet_protocol::now_ms()
        } else {
            at
        };
        let first = assigned
            .wait_for_within(
                "an allocation by the new leader",
                Duration::from_secs(30),
                |v| v["type"] == "task_assigned" && v["ts"].as_u64() > Some(after),
            )
            .await;
        let took = first["ts"].as_u64().unwrap() - at;
        println!("round {round} {sig}: {took} ms");
        let _ = old.child.wait().await;
        if round < kills {
            &mut by_kill
        } else {
            &mut by_term
        }
        .push(took);
        let _ = old.child.wait().await;
        let back = Node::start(&redis.url(), &config).await;
        addrs.lock().unwrap().push(back.addr.clone());
        nodes.push(back);
    }
    let ids = stream.await.unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let done = all_completed(&mut conn, &keys, &ids, Duration::from_secs(120)).await;
    let per_task = completions_per_task(
        &all.collect_for(Duration::from_millis(500), |v| {
            v["type"] == "task_completed"
        })
        .await,
    );
    let lost = ids.iter().filter(|id| !per_task.contains_key(*id)).count();
    let twice = per_task.values().filter(|n| **n > 1).count();
    let deaths = health
        .collect_for(Duration::from_millis(100), |v| v["type"] == "agent_failed")
        .await
        .len();
    summary(
        "takeover after SIGKILL (kill -> first allocation)",
        &by_kill,
    );
    summary(
        "takeover after SIGTERM (signal -> first allocation)",
        &by_term,
    );
    println!(
        "tasks accepted {}, all completed {done}, lost {lost}, completed twice {twice}, \
         executed more than once {}, false deaths {deaths}",
        ids.len(),
        workers.again().len()
    );
    // What each task run more than once went through (its record).
    for (id, n) in workers.again() {
        let rec: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.task(&id))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let mut rec: Vec<_> = rec.into_iter().filter(|(k, _)| k != "payload").collect();
        rec.sort();
        println!("  run {n} times: {id} {rec:?}");
    }
    workers.stop().await;
}
