//! Heartbeats, failure detection, recovery and removal, and no false deaths
//! when the commander cannot hear the fleet.

use crate::common::*;
use fleet_agent::Agent;
use fleet_protocol::api;
use fleet_protocol::pool::PoolType;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(5);
const BEAT: Duration = Duration::from_millis(100);

/// Heartbeats on a task until stopped; hands the agent back.
fn beat(mut a: Agent) -> (CancellationToken, JoinHandle<Agent>) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        a.run(BEAT, Duration::ZERO, s).await;
        a
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_fails_then_recovers_when_heard_again() {
    let h = Harness::start().await;
    let mut health = h.listen(&h.keys.channels().health()).await;
    let mut a = h.agent("hb-1", PoolType::Tester).await;
    a.register(T).await.unwrap();
    let (stop, task) = beat(a);
    let mut other = h.agent("hb-2", PoolType::Tester).await;
    other.register(T).await.unwrap();
    let (stop_other, other_task) = beat(other);

    // Silence: failed after 3 missed heartbeats.
    stop.cancel();
    let a = task.await.unwrap();
    let ev = health
        .wait_for("agent_failed", is("agent_failed", "hb-1"))
        .await;
    assert_eq!(ev["pool"], "tester");
    assert_eq!(ev["failures"], 1);
    let silent = ev["ts"].as_u64().unwrap() - ev["lastHeartbeat"].as_u64().unwrap();
    assert!(
        silent >= h.config.failure_window().as_millis() as u64,
        "failed only after the window: silent {silent} ms"
    );
    let (_, rec) = h.get(&api::path(api::AGENT, "hb-1")).await;
    assert_eq!(rec["status"], "failed");
    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["byStatus"]["failed"], 1);
    assert_eq!(
        fleet["byStatus"]["idle"], 1,
        "the other agent is alive: {fleet}"
    );

    // Heard again: recovering, then idle.
    let (stop, task) = beat(a);
    health
        .wait_for("agent_recovering", is("agent_recovering", "hb-1"))
        .await;
    health
        .wait_for("agent_recovered", is("agent_recovered", "hb-1"))
        .await;
    let (_, rec) = h.get(&api::path(api::AGENT, "hb-1")).await;
    assert_eq!(rec["status"], "idle");
    assert_eq!(rec["health"]["failures"], 1);
    assert_eq!(rec["health"]["recoveryAttempts"], 1);
    let m = h.metrics().await;
    assert!(parse_metric(&m, r#"fleet_agents_failed_total{pool="tester"}"#) >= 1.0);
    assert!(parse_metric(&m, r#"fleet_agents_recovered_total{pool="tester"}"#) >= 1.0);

    // The agent that kept beating was never failed.
    let (_, rec) = h.get(&api::path(api::AGENT, "hb-2")).await;
    assert_eq!(rec["health"]["failures"], 0);
    stop.cancel();
    stop_other.cancel();
    let _ = (task.await, other_task.await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_remove_the_agent_and_it_can_register_again() {
    let h = Harness::start_with(|c| c.fleet.max_failures = 2).await;
    let mut health = h.listen(&h.keys.channels().health()).await;
    let mut a = h.agent("flaky-1", PoolType::Network).await;
    a.register(T).await.unwrap();

    // First failure, recovery.
    let (stop, task) = beat(a);
    stop.cancel();
    let a = task.await.unwrap();
    health
        .wait_for("1st agent_failed", is("agent_failed", "flaky-1"))
        .await;
    let (stop, task) = beat(a);
    health
        .wait_for("agent_recovered", is("agent_recovered", "flaky-1"))
        .await;
    // Second failure: removed.
    stop.cancel();
    let a = task.await.unwrap();
    let ev = health
        .wait_for("2nd agent_failed", is("agent_failed", "flaky-1"))
        .await;
    assert_eq!(ev["failures"], 2);
    let ev = health
        .wait_for("agent_removed", is("agent_removed", "flaky-1"))
        .await;
    assert_eq!(ev["reason"], "max_failures");
    assert_eq!(h.get(&api::path(api::AGENT, "flaky-1")).await.0, 404);
    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["totalAgents"], 0);

    // When it comes back, the commander tells it to register again, and it does.
    let mut registry = h.listen(&h.keys.channels().registry()).await;
    let (stop, task) = beat(a);
    let ev = registry
        .wait_for("re-registration", is("agent_registered", "flaky-1"))
        .await;
    assert_eq!(ev["reRegistered"], false, "a fresh record after removal");
    let (_, rec) = h.get(&api::path(api::AGENT, "flaky-1")).await;
    assert_eq!(rec["health"]["failures"], 0, "{rec}");
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_agent_that_never_returns_is_removed_after_retention() {
    let h = Harness::start_with(|c| c.fleet.failed_retention_ms = 200).await;
    let mut health = h.listen(&h.keys.channels().health()).await;
    let mut a = h.agent("gone-1", PoolType::Mobile).await;
    a.register(T).await.unwrap();
    drop(a); // never heartbeats
    health
        .wait_for("agent_failed", is("agent_failed", "gone-1"))
        .await;
    let ev = health
        .wait_for("agent_removed", is("agent_removed", "gone-1"))
        .await;
    assert_eq!(ev["reason"], "expired");
    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["totalAgents"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_deaths_while_redis_is_frozen_and_detection_resumes_after() {
    let h = Harness::start().await;
    let mut running = Vec::new();
    for i in 0..5 {
        let mut a = h.agent(&format!("live-{i}"), PoolType::ALL[i]).await;
        a.register(T).await.unwrap();
        running.push(beat(a));
    }
    let mut health = h.listen(&h.keys.channels().health()).await;

    // Freeze Redis for 3 failure windows: nobody can be heard, nobody is dead.
    h.redis.pause();
    tokio::time::sleep(h.config.failure_window() * 3).await;
    h.redis.resume();
    let deaths = health
        .collect_for(Duration::from_millis(1500), |v| v["type"] == "agent_failed")
        .await;
    assert!(
        deaths.is_empty(),
        "false deaths after a Redis stall: {deaths:?}"
    );
    let (_, fleet) = h.get(api::FLEET).await;
    assert_eq!(fleet["byStatus"]["idle"], 5, "{fleet}");
    assert!(h.metric("fleet_contact_lapses_total").await >= 1.0);

    // Detection still works once contact is back.
    let (stop, task) = running.remove(0);
    stop.cancel();
    let _ = task.await;
    health
        .wait_for("agent_failed", is("agent_failed", "live-0"))
        .await;
    for (s, t) in running {
        s.cancel();
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_reconnects_after_its_connection_is_killed() {
    let h = Harness::start().await;
    let mut c = h.conn().await;
    // The commander's subscriber is the client with the most subscriptions.
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .unwrap();
    let subs = |l: &str| -> u32 {
        l.split(' ')
            .find_map(|f| f.strip_prefix("sub="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let id = list
        .lines()
        .max_by_key(|l| subs(l))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("the commander's subscriber connection")
        .to_string();
    let before = h.metric("fleet_subscriber_reconnects_total").await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    wait_until(|| async { h.metric("fleet_subscriber_reconnects_total").await > before }).await;
    wait_until(|| async { h.get(api::READYZ).await.0 == 200 }).await;
    // Still serving registrations (the agent retries, as the protocol says).
    let mut a = h.agent("after-1", PoolType::Ui).await;
    let mut ok = false;
    for _ in 0..3 {
        if a.register(Duration::from_secs(2)).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "registration served after the subscriber reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_the_fleet_registers_again() {
    let mut h = Harness::start().await;
    let mut running = Vec::new();
    for i in 0..4 {
        let mut a = h.agent(&format!("rs-{i}"), PoolType::ALL[i]).await;
        a.register(T).await.unwrap();
        running.push(beat(a));
    }
    let drops = r#"fleet_redis_reconnects_total{conn="commands"}"#;
    let before = h.metric(drops).await;
    // Redis dies and comes back with nothing (no persistence).
    h.redis.restart().expect("redis restarts");
    // The commander survives (not fenced by the lost epoch), tells the agents
    // it does not know them, and they register again.
    wait_until(|| async {
        let (code, f) = h.get(api::FLEET).await;
        code == 200 && f["totalAgents"] == 4 && f["byStatus"]["idle"] == 4
    })
    .await;
    assert!(
        h.metric(drops).await > before,
        "the dropped connection is counted"
    );
    // The keys the commander knew are written back (a reload of the empty
    // store would otherwise have forgotten every agent).
    let _: () = redis::cmd("PUBLISH")
        .arg(h.keys.channels().keys())
        .arg("changed")
        .query_async(&mut h.conn().await)
        .await
        .unwrap();
    wait_until(|| async {
        let n: u64 = redis::cmd("HLEN")
            .arg(h.keys.keystore())
            .query_async(&mut h.conn().await)
            .await
            .unwrap();
        n >= 4
    })
    .await;
    assert!(!h
        .commander
        .as_ref()
        .unwrap()
        .shared()
        .shutdown_token()
        .is_cancelled());
    for (s, t) in running.drain(..) {
        s.cancel();
        let _ = t.await;
    }
    // And it still works normally.
    let mut late = h.agent("rs-late", PoolType::Ui).await;
    late.register(T).await.unwrap();
    h.stop_commander().await.expect("stops cleanly, not fenced");
}

/// Issue 15: the commander's own backlog is not silence. A flood of validly
/// signed heartbeats from one agent keeps the commander busy for several
/// failure windows; the other agents, whose heartbeats wait behind it, are
/// never declared dead, and a really dead one is still found afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_deaths_while_the_commander_works_through_a_backlog() {
    let _heavy = heavy().await;
    // No rate limit: every one of the flood's messages is checked and
    // handled (with one, all but the first few are refused before queueing).
    let h = Harness::start_with(|c| {
        c.security.sender_rate_per_sec = 1e6;
        c.security.sender_burst = 1_000_000;
    })
    .await;
    let mut health = h.listen(&h.keys.channels().health()).await;
    let mut honest = Vec::new();
    for i in 0..8 {
        let mut a = h.agent(&format!("calm-{i}"), PoolType::Ui).await;
        a.register(WAIT).await.unwrap();
        honest.push(beat(a));
    }
    let mut flooder = h.agent("flood", PoolType::Ui).await;
    flooder.register(WAIT).await.unwrap();

    // 16,000 heartbeats for the flooder, each signed with its own key (so
    // every one is checked and handled, in order, by the heartbeats'
    // handler, the calm agents' behind them), published in pipelines.
    // (Recorded in batches, a heartbeat costs mostly its signature check:
    // 4,000 no longer kept the commander busy for a window.)
    let cred = h.credential("flood", PoolType::Ui).await.signer();
    let channel = h.keys.channels().health();
    let body = br#"{"v":1,"type":"heartbeat","agentId":"flood","status":"idle","load":0}"#;
    let now = fleet_protocol::now_ms();
    // Each sealed later than the one before: each is recorded, none a replay.
    let msgs: Vec<Vec<u8>> = (0..16_000)
        .map(|i| cred.sign(&channel, body, now + i))
        .collect();
    let mut conn = h.conn().await;
    for chunk in msgs.chunks(2_000) {
        let mut p = redis::pipe();
        for m in chunk {
            p.publish(&channel, m.as_slice()).ignore();
        }
        p.query_async::<()>(&mut conn).await.unwrap();
    }
    // The commander falls behind by more than a failure window (500 ms) ...
    wait_until(|| async {
        let m = h.metrics().await;
        parse_metric(&m, "fleet_inbound_lag_seconds") > 0.5
    })
    .await;
    // ... and catches up; meanwhile no calm agent was failed.
    wait_until(|| async { h.metric("fleet_inbound_backlog").await == 0.0 }).await;
    let failed = health
        .collect_for(Duration::from_millis(600), |v| {
            v["type"] == "agent_failed" && v["agentId"].as_str().unwrap_or("").starts_with("calm-")
        })
        .await;
    assert!(
        failed.is_empty(),
        "false deaths behind the backlog: {failed:?}"
    );

    // Detection still works: one calm agent dies for real and is found.
    let (stop, task) = honest.pop().unwrap();
    stop.cancel();
    let dead = task.await.unwrap();
    let id = dead.id().to_string();
    drop(dead);
    health
        .wait_for("agent_failed", is("agent_failed", &id))
        .await;
    for (s, _) in honest {
        s.cancel();
    }
}

/// Issue 15: a message too big for the subscriber's output buffer makes
/// Redis drop the commander's subscriber. Sent again and again, faster than
/// the failure window, it must not postpone failure detection for ever: a
/// deaf spell postpones detection by its own length only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_dropped_again_and_again_still_detects_a_dead_agent() {
    let h = Harness::start().await;
    let window = h.config.failure_window();
    let mut health = h.listen(&h.keys.channels().health()).await;
    let mut a = h.agent("dropped-1", PoolType::Ui).await;
    a.register(T).await.unwrap();
    let (stop, task) = beat(a);
    // Any pub/sub client over 64 KiB of pending output is disconnected.
    let mut admin = h.conn().await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("pubsub 64kb 0 0")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let dropper = {
        let mut conn = h.conn().await;
        // On a channel the test's own listener is not on.
        let channel = h.keys.channels().results();
        tokio::spawn(async move {
            let big = vec![b'x'; 100 * 1024];
            loop {
                // Twice per window: with the window restarted at each drop,
                // nobody would ever be found dead.
                let _: Result<(), _> = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&big)
                    .query_async(&mut conn)
                    .await;
                tokio::time::sleep(window / 2).await;
            }
        })
    };
    wait_until(|| async { h.metric("fleet_subscriber_reconnects_total").await >= 3.0 }).await;
    let drops_before = h.metric("fleet_subscriber_reconnects_total").await;
    stop.cancel();
    let _ = task.await;
    let ev = health
        .wait_for("agent_failed", is("agent_failed", "dropped-1"))
        .await;
    let silent = ev["ts"].as_u64().unwrap() - ev["lastHeartbeat"].as_u64().unwrap();
    assert!(
        silent >= window.as_millis() as u64,
        "failed only after a window: silent {silent} ms"
    );
    // The silence (a window or more) spanned at least one more drop.
    assert!(
        h.metric("fleet_subscriber_reconnects_total").await > drops_before,
        "the subscriber kept being dropped meanwhile"
    );
    dropper.abort();
}

/// Issue 16, item 5: Redis frozen for 10 s. The circuit breaker opens:
/// writes get a fast 503 with Retry-After, reads say that no current data
/// can be served; when Redis is back the service recovers by itself, and
/// no agent was declared dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_requests_fail_fast_and_the_service_recovers() {
    let h = Harness::start().await;
    let mut a = h.agent("brk-1", PoolType::Ui).await;
    a.register(T).await.unwrap();
    let (stop, task) = beat(a);
    assert_eq!(h.metric("fleet_redis_breaker_open").await, 0.0);
    let epoch = || async {
        let e: u64 = redis::cmd("GET")
            .arg(h.keys.epoch())
            .query_async(&mut h.conn().await)
            .await
            .unwrap();
        e
    };
    let before = epoch().await;

    h.redis.pause();
    let down = std::time::Instant::now();
    wait_until(|| async { h.metric("fleet_redis_breaker_open").await == 1.0 }).await;
    let submit = |n: u32| {
        h.http
            .post(format!("{}/v1/tasks", h.base()))
            .json(&serde_json::json!({"pool": "ui", "payload": n}))
            .send()
    };
    let t = std::time::Instant::now();
    let r = submit(1).await.unwrap();
    let write_ms = t.elapsed().as_millis();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(write_ms < 1000, "a write waited {write_ms} ms");
    let t = std::time::Instant::now();
    let (code, body) = h.get(api::FLEET).await;
    assert_eq!(code, 503);
    assert_eq!(body["current"], false, "{body}");
    assert!(t.elapsed() < Duration::from_secs(1));
    let (code, ready) = h.get(api::READYZ).await;
    assert_eq!((code, ready["breaker"].as_str()), (503, Some("open")));

    // Down for 10 s in all (the scenario, not a synchronisation).
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    h.redis.resume();
    wait_until(|| async { h.metric("fleet_redis_breaker_open").await == 0.0 }).await;
    // Unable to renew its lease, the commander stepped down meanwhile (a
    // standby elsewhere might have taken over); with Redis back, it takes
    // the lease again by itself.
    wait_until(|| async { h.commander.as_ref().unwrap().leads() }).await;
    // The tries to take the lease back that timed out while Redis was
    // frozen ran one after another when it woke: they claimed one epoch,
    // not one each (which left the commander with a stale one, and it
    // stepped down again at once).
    let after = epoch().await;
    assert!(
        after - before <= 2,
        "epoch {before} -> {after}: the queued tries claimed an epoch each"
    );
    let r = submit(2).await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "writes work again");
    let (_, rec) = h.get(&api::path(api::AGENT, "brk-1")).await;
    assert_eq!(rec["health"]["failures"], 0, "no false death: {rec}");
    stop.cancel();
    let _ = task.await;
}
