//! Registration, deregistration and status against a real redis-server.

use crate::common::*;
use fleet_agent::{AgentError, AgentSpec};
use fleet_protocol::api;
use fleet_protocol::pool::{AgentStatus, PoolType};
use fleet_protocol::{RefusalReason, Resources};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_an_agent_and_serves_its_record() {
    let h = Harness::start().await;
    let mut registry = h.listen(&h.keys.channels().registry()).await;
    let mut a = h.agent("coder-1", PoolType::Coder).await;
    let reg = a.register(T).await.expect("accepted");
    assert!(!reg.re_registered);
    assert_eq!(reg.record.id, "coder-1");
    assert_eq!(reg.record.pool, PoolType::Coder);
    assert_eq!(reg.record.status, AgentStatus::Idle);
    assert_eq!(
        reg.record.priority, 8,
        "defaults to the pool's priority_level"
    );
    assert_eq!(reg.record.capabilities, vec!["rust"]);
    assert_eq!(reg.heartbeat_interval, Duration::from_millis(100));
    registry
        .wait_for("agent_registered", is("agent_registered", "coder-1"))
        .await;

    // Fresh: status already counts what was acknowledged.
    let (code, fleet) = h.get(api::FLEET).await;
    assert_eq!(code, 200);
    assert_eq!(fleet["totalAgents"], 1);
    assert_eq!(fleet["pools"]["coder"]["byStatus"]["idle"], 1);

    let (code, rec) = h.get(&api::path(api::AGENT, "coder-1")).await;
    assert_eq!(code, 200);
    assert_eq!(rec["pool"], "coder");
    assert_eq!(rec["resources"]["cpu"], 0.25);
    assert_eq!(rec["health"]["failures"], 0);
    assert!(rec["health"]["lastHeartbeat"].as_u64().unwrap() > 0);
    assert_eq!(h.get(&api::path(api::AGENT, "nobody")).await.0, 404);
    assert_eq!(h.get("/v1/agents/bad%20id").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_registration_is_idempotent() {
    let h = Harness::start().await;
    let mut a = h.agent("tester-1", PoolType::Tester).await;
    let first = a.register(T).await.unwrap();
    // The same agent restarted: a new connection, the same id.
    drop(a);
    let mut again = h.agent("tester-1", PoolType::Tester).await;
    let second = again.register(T).await.unwrap();
    assert!(second.re_registered);
    assert_eq!(second.record.registered_at, first.record.registered_at);
    let third = again.register(T).await.unwrap();
    assert!(third.re_registered);
    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["totalAgents"], 1, "{fleet}");
    assert_eq!(fleet["pools"]["tester"]["currentAgents"], 1);

    // The same id cannot move to another pool without deregistering.
    let mut other = h.agent("tester-1", PoolType::Ui).await;
    match other.register(T).await {
        Err(AgentError::Refused { reason, .. }) => assert_eq!(reason, RefusalReason::PoolMismatch),
        r => panic!("expected pool_mismatch, got {r:?}"),
    }
}

/// Sends a raw register message and returns the reply on the agent's channel.
async fn raw_register(h: &Harness, agent_id: &str, fields: Value) -> Value {
    let mut replies = h.listen(&h.keys.channels().agent(agent_id)).await;
    let mut msg = json!({"v": 1, "type": "register", "id": "m-1", "agentId": agent_id});
    for (k, v) in fields.as_object().unwrap() {
        msg[k] = v.clone();
    }
    h.publish(&h.keys.channels().registry(), msg.to_string())
        .await;
    replies
        .wait_for("register_reply", |v| {
            v["type"] == "register_reply" && v["replyTo"] == "m-1"
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_unknown_pool_bad_fields_and_excess_resources_with_a_reason() {
    let h = Harness::start().await;
    let r = raw_register(&h, "x-1", json!({"pool": "wizard"})).await;
    assert_eq!(r["accepted"], false);
    assert_eq!(r["reason"], "unknown_pool");

    let rejected = r#"fleet_messages_rejected_total{channel="registry",reason="invalid_fields"}"#;
    let before = h.metric(rejected).await;
    let r = raw_register(&h, "x-2", json!({"pool": "coder", "priority": 42})).await;
    assert_eq!(r["reason"], "invalid_fields");
    assert!(r["detail"].as_str().unwrap().contains("priority"), "{r}");
    // A field out of its range is counted as a refused message too (the
    // count may land just after the reply).
    wait_until(|| async { h.metric(rejected).await >= before + 1.0 }).await;

    let r = raw_register(
        &h,
        "x-3",
        json!({"pool": "coder", "resources": {"memory": 4096}}),
    )
    .await;
    assert_eq!(r["reason"], "resources_exceed_limits");

    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["totalAgents"], 0);
    wait_until(|| async {
        h.metric(r#"fleet_registrations_total{result="rejected",reason="unknown_pool"}"#)
            .await
            >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_registration_into_a_full_pool() {
    let h = Harness::start_with(|c| {
        c.pools.get_mut(&PoolType::Coordinator).unwrap().max_agents = 2;
    })
    .await;
    for i in 0..2 {
        h.agent(&format!("co-{i}"), PoolType::Coordinator)
            .await
            .register(T)
            .await
            .unwrap();
    }
    let mut third = h.agent("co-2", PoolType::Coordinator).await;
    match third.register(T).await {
        Err(AgentError::Refused { reason, detail }) => {
            assert_eq!(reason, RefusalReason::PoolFull);
            assert!(detail.contains("max_agents (2)"), "{detail}");
        }
        r => panic!("expected pool_full, got {r:?}"),
    }
    // A member re-registering is still welcome in a full pool.
    let mut again = h.agent("co-0", PoolType::Coordinator).await;
    assert!(again.register(T).await.unwrap().re_registered);
    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["pools"]["coordinator"]["currentAgents"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_wide_cap_is_enforced() {
    let h = Harness::start_with(|c| {
        for p in c.pools.values_mut() {
            p.min_agents = 0;
        }
        c.fleet.max_agents = 3;
    })
    .await;
    for (i, pool) in [PoolType::Ui, PoolType::Mobile, PoolType::Devops]
        .iter()
        .enumerate()
    {
        h.agent(&format!("a-{i}"), *pool)
            .await
            .register(T)
            .await
            .unwrap();
    }
    match h.agent("a-3", PoolType::Network).await.register(T).await {
        Err(AgentError::Refused { reason, .. }) => assert_eq!(reason, RefusalReason::FleetFull),
        r => panic!("expected fleet_full, got {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistration_removes_the_agent_everywhere() {
    let h = Harness::start().await;
    let mut a = h.agent("db-1", PoolType::Database).await;
    a.register(T).await.unwrap();
    let mut registry = h.listen(&h.keys.channels().registry()).await;
    assert!(a.deregister(T).await.unwrap());
    registry
        .wait_for("agent_deregistered", is("agent_deregistered", "db-1"))
        .await;
    assert_eq!(h.get(&api::path(api::AGENT, "db-1")).await.0, 404);
    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["totalAgents"], 0);
    let mut c = h.conn().await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}database", h.keys.pool_agents_prefix()))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(members.is_empty());
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(h.keys.heartbeats())
        .arg("db-1")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(score, None);
    // Deregistering twice is harmless.
    assert!(!a.deregister(T).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_totals_by_status_and_pool_on_http_and_pubsub() {
    let h = Harness::start().await;
    let mut agents = Vec::new();
    for (i, pool) in [
        PoolType::Coder,
        PoolType::Coder,
        PoolType::Security,
        PoolType::Ui,
    ]
    .iter()
    .enumerate()
    {
        let mut a = h.agent(&format!("s-{i}"), *pool).await;
        a.register(T).await.unwrap();
        agents.push(a);
    }
    // One coder reports busy, the security agent active.
    agents[1].heartbeat(AgentStatus::Busy, 0.9).await.unwrap();
    agents[2].heartbeat(AgentStatus::Active, 0.4).await.unwrap();
    wait_until(|| async {
        let (_, f) = h.get(api::FLEET).await;
        f["byStatus"]["busy"] == 1 && f["byStatus"]["active"] == 1
    })
    .await;
    let (_, f) = h.get(api::FLEET).await;
    assert_eq!(f["totalAgents"], 4);
    assert_eq!(f["maxAgents"], 1000);
    assert_eq!(f["byStatus"]["idle"], 2);
    assert_eq!(f["pools"]["coder"]["currentAgents"], 2);
    assert_eq!(f["pools"]["coder"]["byStatus"]["busy"], 1);
    assert_eq!(f["pools"]["coder"]["minAgents"], 5);
    assert_eq!(f["pools"]["security"]["byStatus"]["active"], 1);
    assert_eq!(f["pools"].as_object().unwrap().len(), 16);

    let (code, pools) = h.get(api::POOLS).await;
    assert_eq!(code, 200);
    let pools = pools.as_array().unwrap();
    assert_eq!(pools.len(), 16);
    let ui = pools.iter().find(|p| p["type"] == "ui").unwrap();
    assert_eq!(ui["currentAgents"], 1);
    assert_eq!(ui["scalingEnabled"], true);
    assert_eq!(ui["resourceLimits"]["memory_mb"], 512.0);

    // On request over pub/sub, and periodically.
    let mut fleet = h.listen(&h.keys.channels().fleet()).await;
    h.publish(
        &h.keys.channels().fleet(),
        json!({"v": 1, "type": "status_request", "id": "ask-1"}).to_string(),
    )
    .await;
    let reply = fleet
        .wait_for("fleet_status reply", |v| {
            v["type"] == "fleet_status" && v["replyTo"] == "ask-1"
        })
        .await;
    assert_eq!(reply["status"]["totalAgents"], 4);
    let periodic = fleet
        .wait_for("periodic fleet_status", |v| {
            v["type"] == "fleet_status" && v.get("replyTo").is_none()
        })
        .await;
    assert_eq!(periodic["status"]["byStatus"]["busy"], 1);
    let mut pool = h.listen(&h.keys.channels().pool(PoolType::Coder)).await;
    let ps = pool
        .wait_for("pool_status", |v| v["type"] == "pool_status")
        .await;
    assert_eq!(ps["status"]["currentAgents"], 2);

    assert_eq!(h.get(api::HEALTHZ).await.0, 200);
    let (code, ready) = h.get(api::READYZ).await;
    assert_eq!(code, 200, "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_commander_picks_up_the_fleet_where_it_was() {
    let mut h = Harness::start().await;
    let mut agents = Vec::new();
    for i in 0..10 {
        let mut a = h
            .agent_with(AgentSpec {
                id: format!("r-{i}"),
                pool: PoolType::ALL[i % 16],
                priority: Some(3),
                capabilities: vec![],
                resources: Resources::default(),
                capacity: 1,
            })
            .await;
        a.register(T).await.unwrap();
        agents.push(a);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for mut a in agents {
        let s = stop.clone();
        tasks.spawn(async move { a.run(Duration::from_millis(100), Duration::ZERO, s).await });
    }
    let old_epoch = h.commander.as_ref().unwrap().epoch();
    let mut health = h.listen(&h.keys.channels().health()).await;

    h.stop_commander().await.unwrap();
    // Down for twice the failure window: heartbeats go unheard.
    tokio::time::sleep(h.config.failure_window() * 2).await;
    h.start_commander().await;
    assert!(h.commander.as_ref().unwrap().epoch() > old_epoch);

    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["totalAgents"], 10, "{fleet}");
    assert_eq!(fleet["byStatus"]["idle"], 10);
    let (_, rec) = h.get(&api::path(api::AGENT, "r-3")).await;
    assert_eq!(rec["priority"], 3);

    // The restarted commander does not declare the silent-while-it-was-down agents dead.
    let deaths = health
        .collect_for(Duration::from_millis(1000), |v| v["type"] == "agent_failed")
        .await;
    assert!(deaths.is_empty(), "false deaths after restart: {deaths:?}");
    stop.cancel();
    while tasks.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_without_resources_keeps_the_declared_ones_and_the_record_has_capacity() {
    let h = Harness::start().await;
    let mut spec = AgentSpec {
        id: "cap-1".into(),
        pool: PoolType::Coder,
        priority: None,
        capabilities: vec!["rust".into()],
        resources: Resources {
            memory: 300.0,
            cpu: 0.5,
            network: 20.0,
        },
        capacity: 3,
    };
    let mut a = h.agent_with(spec.clone()).await;
    let reg = a.register(T).await.expect("accepted");
    assert_eq!(
        reg.record.capacity, 3,
        "register_reply's record has the capacity"
    );
    let (_, rec) = h.get(&api::path(api::AGENT, "cap-1")).await;
    assert_eq!(rec["capacity"], 3);
    assert_eq!(rec["resources"]["memory"], 300.0);

    // A heartbeat that says nothing of resources, and one that does.
    h.publish(
        &h.keys.channels().health(),
        json!({"v": 1, "type": "heartbeat", "agentId": "cap-1", "status": "idle", "load": 0.7})
            .to_string(),
    )
    .await;
    wait_until(|| async { h.get(&api::path(api::AGENT, "cap-1")).await.1["load"] == 0.7 }).await;
    let (_, rec) = h.get(&api::path(api::AGENT, "cap-1")).await;
    assert_eq!(rec["resources"]["memory"], 300.0, "kept: {rec}");
    assert_eq!(rec["resources"]["cpu"], 0.5, "kept: {rec}");
    spec.resources.memory = 128.0;
    h.publish(
        &h.keys.channels().health(),
        json!({"v": 1, "type": "heartbeat", "agentId": "cap-1", "status": "idle", "load": 0.2,
            "resources": {"memory": 128, "cpu": 0.1, "network": 1}})
        .to_string(),
    )
    .await;
    wait_until(|| async { h.get(&api::path(api::AGENT, "cap-1")).await.1["load"] == 0.2 }).await;
    let (_, rec) = h.get(&api::path(api::AGENT, "cap-1")).await;
    assert_eq!(
        rec["resources"]["memory"], 128.0,
        "current use reported: {rec}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_field_is_answered_and_integral_floats_are_whole_numbers() {
    let h = Harness::start().await;
    // Python writes 7.0 for an integer it computed: accepted as 7.
    let r = raw_register(
        &h,
        "py-1",
        json!({"pool": "coder", "priority": 7.0, "capacity": 2.0}),
    )
    .await;
    assert_eq!(r["accepted"], true, "{r}");
    assert_eq!(
        (
            r["agent"]["priority"].clone(),
            r["agent"]["capacity"].clone()
        ),
        (json!(7), json!(2))
    );

    // A field of the wrong type: refused with a reply that says which.
    let r = raw_register(&h, "py-2", json!({"pool": "coder", "capacity": 2.5})).await;
    assert_eq!(
        (r["accepted"].clone(), r["reason"].clone()),
        (json!(false), json!("invalid_fields"))
    );
    assert!(
        r["detail"].as_str().unwrap().contains("whole number"),
        "{r}"
    );
    let r = raw_register(&h, "py-3", json!({"pool": "coder", "capabilities": "rust"})).await;
    assert_eq!(r["reason"], "invalid_fields", "{r}");

    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["totalAgents"], 1, "only py-1 joined");
    wait_until(|| async {
        h.metric(r#"fleet_messages_rejected_total{channel="registry",reason="invalid_fields"}"#)
            .await
            >= 2.0
    })
    .await;
}

/// Agents that left are listed for a while, with why and what they did;
/// one that comes back is no longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_left_are_listed_until_they_come_back() {
    let h = Harness::start().await;
    let mut a = h.agent("gone-1", PoolType::Tester).await;
    a.register(Duration::from_secs(5)).await.unwrap();
    a.deregister(Duration::from_secs(5)).await.unwrap();
    let (code, list) = h.get(api::DEPARTED).await;
    assert_eq!(code, 200);
    let gone = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "gone-1")
        .unwrap_or_else(|| panic!("gone-1 in {list}"))
        .clone();
    assert_eq!(
        (&gone["pool"], &gone["leftBecause"]),
        (&json!("tester"), &json!("left")),
        "{gone}"
    );
    assert!(gone["leftAt"].as_u64().unwrap() > 0);
    a.register(Duration::from_secs(5)).await.unwrap();
    let (_, list) = h.get(api::DEPARTED).await;
    assert!(
        !list.as_array().unwrap().iter().any(|d| d["id"] == "gone-1"),
        "back again: {list}"
    );
}

/// The connections in CLIENT LIST subscribed to at least `min` channels:
/// (id, subscriptions).
async fn subscribers(h: &Harness, min: u64) -> Vec<(String, u64)> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut h.conn().await)
        .await
        .unwrap();
    list.lines()
        .filter_map(|l| {
            let field = |k: &str| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix(k))
                    .map(str::to_string)
            };
            let sub: u64 = field("sub=")?.parse().ok()?;
            (sub >= min).then(|| (field("id=").unwrap_or_default(), sub))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_sharing_two_connections_are_answered_and_survive_losing_them() {
    let h = Harness::start().await;
    let commander = subscribers(&h, 1).await; // its own, not the agents'
    let routed = || async {
        let mut s = subscribers(&h, 1).await;
        s.retain(|c| !commander.iter().any(|k| k.0 == c.0));
        s
    };
    let router = fleet_agent::Router::new(&h.client, 2).await.unwrap();
    let mut agents = Vec::new();
    for i in 0..20 {
        let id = format!("routed-{i}");
        let publisher = fleet_store::connection::connect(&h.redis.url())
            .await
            .unwrap();
        let a = fleet_agent::Agent::connect_routed(
            &router,
            publisher,
            h.keys.channels().clone(),
            spec(&id, PoolType::Coder),
        )
        .await
        .unwrap()
        .with_credential(&h.credential(&id, PoolType::Coder).await);
        agents.push(a);
    }
    for a in &mut agents {
        a.register(T)
            .await
            .expect("answered through the shared connection");
    }
    // Twenty agents' channels on two connections, not twenty.
    let shared = routed().await;
    assert_eq!(shared.len(), 2, "{shared:?}");
    assert_eq!(shared.iter().map(|s| s.1).sum::<u64>(), 20, "{shared:?}");
    // Both connections lost: made again, every channel subscribed again.
    for (id, _) in &shared {
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut h.conn().await)
            .await
            .unwrap();
    }
    for a in &mut agents {
        let again = a
            .register(WAIT)
            .await
            .expect("answered after the reconnection");
        assert!(again.re_registered);
        assert_eq!(a.refused(), 0);
    }
    let after = routed().await;
    assert_eq!(after.iter().map(|s| s.1).sum::<u64>(), 20, "{after:?}");
    assert!(after.iter().all(|s| !shared.contains(s)), "new connections");
}
