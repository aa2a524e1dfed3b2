//! A commander process killed with SIGKILL while tasks are queued and in
//! flight, then restarted: every accepted task completes exactly once, and
//! is executed once: a result published while no commander listened is
//! re-sent by its agent until acknowledged (`result_ack`).

mod common;

use common::*;
use fleet_agent::{AgentSpec, Assignment, Outcome, Work};
use fleet_protocol::pool::PoolType;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_task_completes_exactly_once_across_a_commander_sigkill() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let client = fleet_store::connection::client(&redis.url()).unwrap();
    let keys = fleet_store::Keys::new("swarm:phase-1");
    let addr = free_addr();
    let mut commander = commander_process(&redis.url(), &addr).await;
    let mut events = Events::subscribe(&client, &keys.channels().allocation()).await;

    // Four agents; each task takes 30 ms. Executions are counted per task.
    let executions: Arc<Mutex<HashMap<String, u32>>> = Default::default();
    let stop = CancellationToken::new();
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..4 {
        let ex = executions.clone();
        let w: Work = Arc::new(move |a: Assignment| {
            let ex = ex.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                *ex.lock().unwrap().entry(a.task_id.clone()).or_default() += 1;
                Outcome::Complete(json!({"by": a.attempt}))
            })
        });
        let publisher = fleet_store::connection::connect(&redis.url())
            .await
            .unwrap();
        let mut a = fleet_agent::Agent::connect(
            &client,
            publisher,
            keys.channels().clone(),
            AgentSpec {
                id: format!("crash-{i}"),
                pool: PoolType::Coder,
                priority: None,
                capabilities: vec![],
                resources: Default::default(),
                capacity: 1,
            },
        )
        .await
        .unwrap()
        .with_credential(&credential(&redis.url(), &format!("crash-{i}"), PoolType::Coder).await);
        a.register(Duration::from_secs(5)).await.unwrap();
        let s = stop.clone();
        agents.spawn(async move {
            a.run_with(Duration::from_millis(500), Duration::ZERO, s, Some(w))
                .await
        });
    }

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
    wait_until(|| async { executions.lock().unwrap().len() >= 10 }).await;
    commander.start_kill().unwrap(); // SIGKILL
    commander.wait().await.unwrap();
    let done_at_kill = executions.lock().unwrap().len();
    assert!(done_at_kill < 60, "the kill must land mid-stream");

    tokio::time::sleep(Duration::from_millis(300)).await; // down for a while: results go unheard
    let _restarted = commander_process(&redis.url(), &addr).await;

    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let all_done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let mut done = 0;
            for id in &ids {
                let state: Option<String> = redis::cmd("HGET")
                    .arg(keys.task(id))
                    .arg("state")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if state.as_deref() == Some("completed") {
                    done += 1;
                }
            }
            if done == ids.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        all_done.is_ok(),
        "every accepted task completes after the restart"
    );

    // Exactly one completion per task, whichever commander recorded it.
    let completions = events
        .collect_for(Duration::from_millis(500), |v| {
            v["type"] == "task_completed"
        })
        .await;
    let mut per_task: HashMap<String, u32> = HashMap::new();
    for c in &completions {
        *per_task
            .entry(c["taskId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            per_task.get(id),
            Some(&1),
            "task {id} completed {:?} times",
            per_task.get(id)
        );
    }
    // And executed once: no result was lost while the commander was down.
    let again: Vec<(String, u32)> = executions
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id.clone(), *n))
        .collect();
    assert!(again.is_empty(), "tasks executed more than once: {again:?}");
    stop.cancel();
    while agents.join_next().await.is_some() {}
}
