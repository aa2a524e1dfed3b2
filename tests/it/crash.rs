//! A commander process killed with SIGKILL while tasks are queued and in
//! flight, then restarted: every accepted task completes exactly once, and
//! is executed once: a result published while no commander listened is
//! re-sent by its agent until acknowledged (`result_ack`).

use crate::common::*;
use fleet_protocol::pool::PoolType;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_task_completes_exactly_once_across_a_commander_sigkill() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let client = fleet_store::connection::client(&redis.url()).unwrap();
    let keys = fleet_store::Keys::new("swarm:phase-1");
    let addr = free_addr();
    let mut commander = commander_process(&redis.url(), &addr).await;
    let mut events = Events::subscribe(&client, &keys.channels().allocation()).await;

    // Four agents; each task takes 30 ms. Executions are counted per task.
    let workers = Workers::start(
        &redis.url(),
        "swarm:phase-1",
        4,
        PoolType::Coder,
        Duration::from_millis(30),
    )
    .await;

    // 60 accepted tasks, with a 5 s timeout: longer than the commander is
    // down, so a result it missed is re-sent (and counted) before the lease
    // could run out and the task be run again.
    let http = authed(&admin_token(&redis.url()).await);
    let mut ids = Vec::new();
    for n in 0..60 {
        let r = http
            .post(format!("http://{addr}/v1/tasks"))
            .json(&json!({"pool": "coder", "timeoutMs": 5000, "clientId": format!("job-{n}"), "payload": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().await.unwrap();
        ids.push(v["task"]["id"].as_str().unwrap().to_string());
    }
    // Kill it mid-stream: some tasks done, some in flight, some queued.
    wait_until(|| async { workers.executed() >= 10 }).await;
    commander.start_kill().unwrap(); // SIGKILL
    commander.wait().await.unwrap();
    let done_at_kill = workers.executed();
    assert!(done_at_kill < 60, "the kill must land mid-stream");

    tokio::time::sleep(Duration::from_millis(300)).await; // down for a while: results go unheard
    let _restarted = commander_process(&redis.url(), &addr).await;

    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    assert!(
        all_completed(&mut conn, &keys, &ids, Duration::from_secs(60)).await,
        "every accepted task completes after the restart"
    );

    // Exactly one completion per task, whichever commander recorded it.
    let completions = events
        .collect_for(Duration::from_millis(500), |v| {
            v["type"] == "task_completed"
        })
        .await;
    let per_task = completions_per_task(&completions);
    for id in &ids {
        assert_eq!(
            per_task.get(id),
            Some(&1),
            "task {id} completed {:?} times",
            per_task.get(id)
        );
    }
    // And executed once: no result was lost while the commander was down.
    let again = workers.again();
    assert!(again.is_empty(), "tasks executed more than once: {again:?}");
    workers.stop().await;
}
