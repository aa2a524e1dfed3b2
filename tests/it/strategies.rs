//! Each allocation strategy chooses the agent it should (the priority,
//! round-robin and performance strategies are in `allocation.rs`).

use crate::common::*;
use fleet_agent::AgentSpec;
use fleet_commander::config::Strategy;
use fleet_protocol::api;
use fleet_protocol::pool::{AgentStatus, PoolType};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn spec(id: &str, pool: PoolType, priority: Option<u8>, caps: &[&str], capacity: u32) -> AgentSpec {
    AgentSpec {
        id: id.into(),
        pool,
        priority,
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        resources: Default::default(),
        capacity,
    }
}

/// Submits a task and returns the agent the allocator chose for it.
async fn chosen(h: &Harness, events: &mut Events, body: serde_json::Value) -> String {
    let id = submit(h, body).await;
    let ev = events
        .wait_for("task_assigned", |v| {
            v["type"] == "task_assigned" && v["taskId"] == id.as_str()
        })
        .await;
    ev["agentId"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_prefers_the_agent_with_the_most_room() {
    let h = Harness::start_with(|c| {
        c.pools.get_mut(&PoolType::Architect).unwrap().strategy = Strategy::LeastLoaded;
        // These agents do not heartbeat: a 10 s window keeps them alive throughout.
        c.fleet.missed_heartbeats = 100;
    })
    .await;
    let mut events = h.listen(&h.keys.channels().allocation()).await;
    // Agents that take tasks but never finish them: their load only grows.
    let mut a = h
        .agent_with(spec("ll-a", PoolType::Architect, None, &[], 4))
        .await;
    let mut b = h
        .agent_with(spec("ll-b", PoolType::Architect, None, &[], 2))
        .await;
    a.register(T).await.unwrap();
    b.register(T).await.unwrap();
    // Equal share in use (none): the lower reported load wins, whatever the id order.
    a.heartbeat(AgentStatus::Idle, 0.9).await.unwrap();
    b.heartbeat(AgentStatus::Idle, 0.1).await.unwrap();
    let pool = json!({"pool": "architect"});
    // The heartbeats travel over pub/sub: wait until both are recorded.
    wait_until(|| async {
        h.get(&api::path(api::AGENT, "ll-b")).await.1["load"] == 0.1
            && h.get(&api::path(api::AGENT, "ll-a")).await.1["load"] == 0.9
    })
    .await;
    assert_eq!(chosen(&h, &mut events, pool.clone()).await, "ll-b");
    // ll-b holds 1 of 2 (50%), ll-a 0 of 4: ll-a.
    assert_eq!(chosen(&h, &mut events, pool.clone()).await, "ll-a");
    // ll-a 1/4 (25%) < ll-b 1/2 (50%): ll-a again, then 2/4 = 50% ties go by load: ll-b.
    assert_eq!(chosen(&h, &mut events, pool.clone()).await, "ll-a");
    assert_eq!(chosen(&h, &mut events, pool.clone()).await, "ll-b");
    // ll-b is full (2/2): everything else goes to ll-a until it is full too.
    assert_eq!(chosen(&h, &mut events, pool.clone()).await, "ll-a");
    assert_eq!(chosen(&h, &mut events, pool.clone()).await, "ll-a");
    let waiting = submit(&h, pool).await;
    let later = events
        .collect_for(Duration::from_millis(300), |v| {
            v["taskId"] == waiting.as_str()
        })
        .await;
    assert!(later.is_empty(), "both full: {later:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_match_keeps_generalists_free_for_what_only_they_can_do() {
    let h = Harness::start_with(|c| {
        c.pools.get_mut(&PoolType::Database).unwrap().strategy = Strategy::CapabilityMatch;
        c.fleet.missed_heartbeats = 100;
    })
    .await;
    let mut events = h.listen(&h.keys.channels().allocation()).await;
    let mut g = h
        .agent_with(spec(
            "db-generalist",
            PoolType::Database,
            None,
            &["sql", "nosql", "graph"],
            1,
        ))
        .await;
    let mut s = h
        .agent_with(spec("db-specialist", PoolType::Database, None, &["sql"], 1))
        .await;
    g.register(T).await.unwrap();
    s.register(T).await.unwrap();
    // Under the priority strategy the two tie and the first id would win.
    assert_eq!(
        chosen(
            &h,
            &mut events,
            json!({"pool": "database", "capabilities": ["sql"]})
        )
        .await,
        "db-specialist"
    );
    assert_eq!(
        chosen(
            &h,
            &mut events,
            json!({"pool": "database", "capabilities": ["graph"]})
        )
        .await,
        "db-generalist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_fair_shares_by_weight_and_stops_at_the_quota() {
    let h = Harness::start_with(|c| {
        let p = c.pools.get_mut(&PoolType::Infrastructure).unwrap();
        p.strategy = Strategy::WeightedFair;
        p.quota = Some(4);
    })
    .await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut running = Vec::new();
    // Weight is the agent's priority: "heavy" counts twice as much as "light".
    for (name, priority) in [("heavy", 10), ("light", 5)] {
        let s = spec(name, PoolType::Infrastructure, Some(priority), &[], 1);
        running.push(start_agent_with(&h, s, Some(recorder(name, &log, false))).await);
    }
    let who = sequential(&h, "infrastructure", 6, &log).await;
    let heavy = who.iter().filter(|w| *w == "heavy").count();
    assert_eq!((heavy, who.len() - heavy), (4, 2), "2:1 by weight: {who:?}");
    // heavy is at its quota of 4: the next two go to light, then nobody is left.
    let who = sequential(&h, "infrastructure", 2, &log).await;
    assert_eq!(&who[6..], ["light", "light"], "{who:?}");
    let mut events = h.listen(&h.keys.channels().allocation()).await;
    let waiting = submit(&h, json!({"pool": "infrastructure"})).await;
    let later = events
        .collect_for(Duration::from_millis(300), |v| {
            v["taskId"] == waiting.as_str()
        })
        .await;
    assert!(later.is_empty(), "both at quota: {later:?}");
    let (_, t) = h.get(&api::path(api::TASK, &waiting)).await;
    assert_eq!(t["state"], "queued");
    let (_, ev) = h.get(&api::path(api::TASK_EVIDENCE, &waiting)).await;
    assert_eq!(ev.as_array().map(Vec::len), Some(0));
    for (s, t) in running {
        s.cancel();
        let _ = t.await;
    }
}
