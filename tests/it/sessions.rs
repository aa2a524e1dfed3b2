//! Sessions (`FS1`): after a signed registration an agent and the commander
//! MAC what they send instead of signing it. Against a real commander and
//! redis-server: the MACs are taken both ways, a forged, replayed or
//! misplaced one is refused and counted, and a new term derives the same
//! sessions from what Redis holds.

use crate::common::*;
use fleet_agent::{Agent, Outcome};
use fleet_protocol::auth::Credential;
use fleet_protocol::pool::PoolType;
use fleet_protocol::session::Exchange;
use fleet_protocol::{now_ms, AgentStatus};
use serde_json::{json, Value};

const SESSION_CHECKS: &str = r#"fleet_signature_checks_total{scheme="session"}"#;
const SIGNATURE_CHECKS: &str = r#"fleet_signature_checks_total{scheme="ed25519"}"#;

/// A coder agent with its credential (to forge in its name).
async fn keyed(h: &Harness, id: &str, sessions: bool) -> (Agent, Credential) {
    let cred = h.credential(id, PoolType::Coder).await;
    let publisher = fleet_store::connection::connect(&h.redis.url())
        .await
        .unwrap();
    let agent = Agent::connect(
        &h.client,
        publisher,
        h.keys.channels().clone(),
        spec(id, PoolType::Coder),
    )
    .await
    .unwrap()
    .with_credential(&cred)
    .with_sessions(sessions);
    (agent, cred)
}

/// A session as someone without the agent's X25519 secret could make one:
/// with the commander's real public key, for the agent's id.
fn forged_session(agent_id: &str) -> fleet_protocol::session::Session {
    let commander = Exchange::for_commander(&TEST_SECRET).public_b64();
    let mine = Exchange::random();
    mine.session(&commander, agent_id, &mine.public_b64())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_replaces_signatures_both_ways() {
    let h = Harness::start().await;
    let mut heard = tap(&h, &h.keys.channels().agent("sess-1")).await;
    let w = work(|a| async move { Outcome::Complete(json!({"attempt": a.attempt})) });
    let (stop, agent) = start_agent(&h, "sess-1", PoolType::Coder, &[], Some(w)).await;
    // The reply that sets the session up is signed.
    let reply = next_bytes(&mut heard, "register_reply").await;
    assert!(
        reply.starts_with(b"FC1 "),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    let signatures = h.metric(SIGNATURE_CHECKS).await;
    let id = submit(&h, json!({"pool": "coder", "payload": {"n": 1}})).await;
    task_in_state(&h.http, &h.base(), &id, "completed").await;
    // The assignment came MACed; the agent took it (it completed the task).
    loop {
        let m = next_bytes(&mut heard, "task_assign").await;
        if String::from_utf8_lossy(&m).contains("\"task_assign\"") {
            assert!(m.starts_with(b"FS1 "), "{}", String::from_utf8_lossy(&m));
            break;
        }
    }
    // The agent's result and heartbeats were checked by MAC: a few more
    // heartbeats, and not one signature checked since registration.
    let macs = h.metric(SESSION_CHECKS).await;
    assert!(macs >= 1.0, "the result was MACed");
    wait_until(|| async { h.metric(SESSION_CHECKS).await >= macs + 3.0 }).await;
    assert_eq!(h.metric(SIGNATURE_CHECKS).await, signatures);
    stop.cancel();
    assert!(agent.await.unwrap().in_session());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_misplaced_macs_are_refused() {
    let h = Harness::start().await;
    let health = h.keys.channels().health();
    let (mut agent, cred) = keyed(&h, "sess-2", true).await;
    agent.register(T).await.unwrap();
    assert!(agent.in_session());

    // A heartbeat of its own, replayed byte for byte.
    let mut beats = tap(&h, &health).await;
    agent.heartbeat(AgentStatus::Idle, 0.0).await.unwrap();
    let beat = next_bytes(&mut beats, "the agent's heartbeat").await;
    assert!(beat.starts_with(b"FS1 "));
    h.publish_raw(&health, &beat).await;
    refused(&h, "health", "replay").await;

    // A session made up by someone who knows the commander's public key and
    // the agent's key id, but not the agent's X25519 secret.
    let body = json!({"v": 1, "type": "heartbeat", "agentId": "sess-2", "status": "busy",
                      "load": 1.0})
    .to_string();
    let forged = forged_session("sess-2").seal(&cred.kid, &health, body.as_bytes(), now_ms());
    h.publish_raw(&health, &forged).await;
    refused(&h, "health", "bad_signature").await;

    // A registration must be signed: a MACed one is refused whatever its MAC.
    let register = json!({"v": 1, "type": "register", "id": "r1", "agentId": "sess-2",
                          "pool": "coder"})
    .to_string();
    let registry = h.keys.channels().registry();
    let framed = forged_session("sess-2").seal(&cred.kid, &registry, register.as_bytes(), now_ms());
    h.publish_raw(&registry, &framed).await;
    refused(&h, "registry", "unsigned").await;

    // Nothing of it changed the agent.
    let (_, rec) = h
        .get(&fleet_protocol::api::path(
            fleet_protocol::api::AGENT,
            "sess-2",
        ))
        .await;
    assert_eq!(rec["status"], "idle", "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_without_a_session_is_refused_and_the_agent_told_to_register() {
    let h = Harness::start().await;
    // Registered signing everything: the commander holds no session for it.
    let (mut agent, cred) = keyed(&h, "sess-3", false).await;
    agent.register(T).await.unwrap();
    assert!(!agent.in_session());
    let mut heard = tap(&h, &h.keys.channels().agent("sess-3")).await;
    let health = h.keys.channels().health();
    let body = json!({"v": 1, "type": "heartbeat", "agentId": "sess-3", "status": "idle",
                      "load": 0.0})
    .to_string();
    for _ in 0..3 {
        let framed = forged_session("sess-3").seal(&cred.kid, &health, body.as_bytes(), now_ms());
        h.publish_raw(&health, &framed).await;
    }
    wait_until(|| async { h.metric(&rejected("health", "no_session")).await >= 3.0 }).await;
    // Told once (not once per message), signed: register again.
    let told = next_bytes(&mut heard, "reregister").await;
    assert!(told.starts_with(b"FC1 "));
    let (_, body) = String::from_utf8_lossy(&told)
        .split_once('\n')
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["reason"].as_str()),
        (Some("reregister"), Some("no_session"))
    );
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), heard.recv())
            .await
            .is_err(),
        "told more than once"
    );
    // And registering again sets a session up.
    let (mut again, _) = keyed(&h, "sess-3", true).await;
    again.register(T).await.unwrap();
    assert!(again.in_session());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_term_derives_the_same_sessions_from_redis() {
    let mut h = Harness::start().await;
    let (mut agent, _) = keyed(&h, "sess-4", true).await;
    agent.register(T).await.unwrap();
    assert!(agent.in_session());
    // A new term (as after a takeover): its cache of sessions starts empty.
    h.stop_commander().await.unwrap();
    h.start_commander().await;
    let mut heard = tap(&h, &h.keys.channels().agent("sess-4")).await;
    agent.heartbeat(AgentStatus::Idle, 0.0).await.unwrap();
    wait_until(|| async { h.metric(SESSION_CHECKS).await >= 1.0 }).await;
    wait_until(|| async { h.metric("fleet_heartbeats_total").await >= 1.0 }).await;
    assert_eq!(h.metric(&rejected("health", "bad_signature")).await, 0.0);
    assert_eq!(h.metric(&rejected("health", "no_session")).await, 0.0);
    // What the new term sends the agent is MACed with that session, and taken.
    let id = submit(&h, json!({"pool": "coder", "payload": {"n": 4}})).await;
    let assign = next_bytes(&mut heard, "task_assign").await;
    assert!(
        assign.starts_with(b"FS1 "),
        "{}",
        String::from_utf8_lossy(&assign)
    );
    let got = tokio::time::timeout(WAIT, agent.recv())
        .await
        .expect("the agent takes it");
    assert!(
        matches!(&got, fleet_protocol::ToAgent::TaskAssign { task_id, .. } if *task_id == id),
        "{got:?}"
    );
    assert_eq!(agent.refused(), 0);
}
