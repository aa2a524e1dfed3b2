//! Signed identity against a real commander and redis-server: each attack
//! of issue 14 is replayed and must be refused, counted, and change nothing.
//! (The metrics recorder is one per process: each test counts refusals
//! under a channel and reason that no other test in this file produces.)

use crate::common::*;
use fleet_agent::{AgentError, AgentSpec, Outcome};
use fleet_protocol::api;
use fleet_protocol::auth::{Role, Signer};
use fleet_protocol::pool::PoolType;
use fleet_protocol::{now_ms, AgentStatus};
use fleet_store::KeyStore;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A coder agent that holds each task until released.
async fn holder(
    h: &Harness,
    id: &str,
    release: Arc<Notify>,
) -> tokio_util::sync::CancellationToken {
    let w = work(move |a| {
        let r = release.clone();
        async move {
            r.notified().await;
            Outcome::Complete(json!({"by": "holder", "attempt": a.attempt}))
        }
    });
    let (stop, _task) = start_agent(h, id, PoolType::Coder, &["rust"], Some(w)).await;
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_results_change_nothing_and_only_the_holder_completes() {
    let h = Harness::start().await;
    let release = Arc::new(Notify::new());
    let _stop = holder(&h, "a", release.clone()).await;
    let id = submit(&h, json!({"pool": "coder"})).await;
    wait_state(&h, &id, "running").await;

    // As the issue's attacker: agentId and attempt read off :allocation.
    let results = h.keys.channels().results();
    let forged = json!({"v": 1, "type": "task_complete", "taskId": id, "attempt": 1,
                        "agentId": "a", "result": "forged"})
    .to_string();
    h.publish_raw(&results, &forged).await;
    // Signed, but with another agent's key.
    let other = h.credential("b", PoolType::Coder).await.signer();
    h.publish_raw(&results, other.sign(&results, forged.as_bytes(), now_ms()))
        .await;
    // A key nobody issued.
    let stranger = Signer::new("k000000000000", &[9; 32]);
    h.publish_raw(
        &results,
        stranger.sign(&results, forged.as_bytes(), now_ms()),
    )
    .await;
    // b's header on a body it did not sign.
    let b_forged = forged.replace("\"agentId\":\"a\"", "\"agentId\":\"b\"");
    let mut b_tampered = other.sign(&results, b_forged.as_bytes(), now_ms());
    let at = b_tampered
        .windows(6)
        .position(|w| w == b"forged")
        .expect("the result is in the body");
    b_tampered[at] = b'F'; // still JSON, no longer what was signed
    h.publish_raw(&results, b_tampered).await;

    refused(&h, "results", "unsigned").await;
    refused(&h, "results", "wrong_agent").await;
    refused(&h, "results", "unknown_key").await;
    refused(&h, "results", "bad_signature").await;
    let (_, t) = h.get(&api::path(api::TASK, &id)).await;
    assert_eq!(t["state"], "running", "{t}");
    assert_eq!(t["result"], Value::Null);

    release.notify_one();
    let done = wait_state(&h, &id, "completed").await;
    assert_eq!(done["result"]["by"], "holder");
    assert_eq!(done["agentId"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_register_and_deregister_leave_the_agent_and_its_task_alone() {
    let h = Harness::start().await;
    let release = Arc::new(Notify::new());
    let _stop = holder(&h, "a", release.clone()).await;
    let id = submit(&h, json!({"pool": "coder"})).await;
    wait_state(&h, &id, "running").await;

    let registry = h.keys.channels().registry();
    h.publish_raw(
        &registry,
        json!({"v": 1, "type": "deregister", "id": "x1", "agentId": "a"}).to_string(),
    )
    .await;
    let hijack = json!({"v": 1, "type": "register", "id": "x2", "agentId": "a", "pool": "coder",
                        "capabilities": ["evil"], "instance": "attacker"})
    .to_string();
    h.publish_raw(&registry, &hijack).await;
    let other = h.credential("b", PoolType::Coder).await.signer();
    h.publish_raw(
        &registry,
        other.sign(&registry, hijack.as_bytes(), now_ms()),
    )
    .await;
    refused(&h, "registry", "unsigned").await;
    wait_until(|| async { h.metric(&rejected("registry", "unsigned")).await >= 2.0 }).await;
    refused(&h, "registry", "wrong_agent").await;

    let (code, a) = h.get(&api::path(api::AGENT, "a")).await;
    assert_eq!(code, 200, "still registered");
    assert_eq!(a["capabilities"], json!(["rust"]), "{a}");
    let (_, t) = h.get(&api::path(api::TASK, &id)).await;
    assert_eq!(
        (t["state"].as_str(), t["attempt"].as_u64()),
        (Some("running"), Some(1)),
        "not taken back: {t}"
    );
    release.notify_one();
    wait_state(&h, &id, "completed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_heartbeats_do_not_keep_a_dead_agent_alive() {
    let h = Harness::start().await;
    let mut dead = h.agent("k", PoolType::Tester).await;
    dead.register(T).await.unwrap();
    drop(dead); // as if SIGKILLed: no more heartbeats of its own

    let health = h.keys.channels().health();
    let beat = json!({"v": 1, "type": "heartbeat", "agentId": "k", "status": "idle",
                      "load": 0.0})
    .to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let forger = {
        let (stop, url, health) = (stop.clone(), h.redis.url(), health.clone());
        tokio::spawn(async move {
            let c = fleet_store::connection::client(&url).unwrap();
            let mut conn = c.get_multiplexed_async_connection().await.unwrap();
            while !stop.is_cancelled() {
                let _: Result<i64, _> = redis::cmd("PUBLISH")
                    .arg(&health)
                    .arg(&beat)
                    .query_async(&mut conn)
                    .await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    wait_until(|| async { h.get(&api::path(api::AGENT, "k")).await.1["status"] == "failed" }).await;
    assert!(h.metric(&rejected("health", "unsigned")).await >= 1.0);
    stop.cancel();
    forger.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_register_and_deregister_are_refused() {
    let h = Harness::start_with(|c| c.security.window_ms = 1000).await;
    let registry = h.keys.channels().registry();
    let mut wire = tap(&h, &registry).await;
    let mut a = h.agent("r", PoolType::Ui).await;
    a.register(T).await.unwrap();
    let register = next_bytes(&mut wire, "the register").await;
    assert!(register.starts_with(b"FC1 "), "the SDK signs");
    assert!(a.deregister(T).await.unwrap());
    let deregister = loop {
        let b = next_bytes(&mut wire, "the deregister").await;
        if String::from_utf8_lossy(&b).contains("\"deregister\"") {
            break b;
        }
    };

    // A replayed register after the deregister: no phantom agent.
    h.publish_raw(&registry, &register).await;
    refused(&h, "registry", "replay").await;
    assert_eq!(h.get(&api::path(api::AGENT, "r")).await.0, 404);

    // Back for real; a replayed deregister does not remove it.
    a.register(T).await.unwrap();
    h.publish_raw(&registry, &deregister).await;
    wait_until(|| async { h.metric(&rejected("registry", "replay")).await >= 2.0 }).await;
    assert_eq!(h.get(&api::path(api::AGENT, "r")).await.0, 200);

    // Once out of the window, the replay is refused for its age.
    tokio::time::sleep(Duration::from_millis(1100)).await; // the window is time itself
    h.publish_raw(&registry, &deregister).await;
    refused(&h, "registry", "stale_timestamp").await;
    assert_eq!(h.get(&api::path(api::AGENT, "r")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_bound_to_their_pool_and_revocation_and_rotation_take_effect() {
    let h = Harness::start().await;
    let store = KeyStore::new(h.keys.clone());
    let mut conn = fleet_store::connection::connect(&h.redis.url())
        .await
        .unwrap();
    let commander = Signer::new("-", &TEST_SECRET).public();
    let agent = |id: &str, pool: PoolType| {
        let (client, url, channels, id) = (
            h.client.clone(),
            h.redis.url(),
            h.keys.channels().clone(),
            id.to_string(),
        );
        async move {
            let publisher = fleet_store::connection::connect(&url).await.unwrap();
            let spec = AgentSpec {
                id,
                pool,
                priority: None,
                capabilities: vec![],
                resources: Default::default(),
                capacity: 1,
            };
            fleet_agent::Agent::connect(&client, publisher, channels, spec)
                .await
                .unwrap()
        }
    };
    let short = Duration::from_millis(500);

    // A coder's key used to join the tester pool.
    let coder = store
        .issue(
            &mut conn,
            Role::Agent,
            "p1",
            Some(PoolType::Coder),
            Default::default(),
            &commander,
            now_ms(),
        )
        .await
        .unwrap();
    let mut wrong = agent("p1", PoolType::Tester).await.with_credential(&coder);
    assert!(matches!(
        wrong.register(short).await,
        Err(AgentError::Timeout(_))
    ));
    refused(&h, "registry", "wrong_pool").await;
    let mut right = agent("p1", PoolType::Coder).await.with_credential(&coder);
    right.register(T).await.unwrap();

    // Revoked: refused from then on.
    assert_eq!(store.revoke(&mut conn, "p1", now_ms()).await.unwrap(), 1);
    // The key cache hears of it at once (the key channel); heartbeat until
    // one is refused for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.metric(&rejected("health", "revoked_key")).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "revocation never took effect"
        );
        right.heartbeat(AgentStatus::Idle, 0.0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Rotated: the old key works during the overlap, then not; the new one does.
    let old = store
        .issue(
            &mut conn,
            Role::Agent,
            "o1",
            Some(PoolType::Ui),
            Default::default(),
            &commander,
            now_ms(),
        )
        .await
        .unwrap();
    let new = store
        .rotate(&mut conn, "o1", 1500, None, &commander, now_ms())
        .await
        .unwrap()
        .expect("o1 has a key");
    assert_ne!(new.kid, old.kid);
    let mut with_old = agent("o1", PoolType::Ui).await.with_credential(&old);
    with_old.register(T).await.expect("inside the overlap");
    tokio::time::sleep(Duration::from_millis(1600)).await; // the overlap is time itself
    assert!(matches!(
        with_old.register(short).await,
        Err(AgentError::Timeout(_))
    ));
    refused(&h, "registry", "expired_key").await;
    let mut with_new = agent("o1", PoolType::Ui).await.with_credential(&new);
    with_new.register(T).await.expect("the new key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_submit_needs_a_submitter_key() {
    let h = Harness::start().await;
    let tasks = h.keys.channels().tasks();
    let reply = format!("{}ci", h.keys.channels().reply_prefix());
    let mut answers = h.listen(&reply).await;
    let msg = |id: &str| {
        json!({"v": 1, "type": "task_submit", "id": id, "replyChannel": reply,
               "pool": "coder"})
        .to_string()
    };
    h.publish_raw(&tasks, msg("unsigned")).await;
    refused(&h, "tasks", "unsigned").await;
    let agent_key = h.credential("sneaky", PoolType::Coder).await.signer();
    h.publish_raw(
        &tasks,
        agent_key.sign(&tasks, msg("by-agent").as_bytes(), now_ms()),
    )
    .await;
    refused(&h, "tasks", "wrong_role").await;

    let submitter = h.submitter("ci").await.signer();
    // Another submitter's reply channel (`c` asking for `ci`'s, or the
    // other way round): refused, so no submitter hears another's replies.
    let other = h.submitter("c").await.signer();
    h.publish_raw(
        &tasks,
        other.sign(&tasks, msg("not-yours").as_bytes(), now_ms()),
    )
    .await;
    refused(&h, "tasks", "wrong_reply").await;
    h.publish_raw(
        &tasks,
        submitter.sign(&tasks, msg("ok").as_bytes(), now_ms()),
    )
    .await;
    let r = answers
        .wait_for("the reply", |v| v["type"] == "task_submit_reply")
        .await;
    assert_eq!(
        (r["replyTo"].as_str(), r["accepted"].as_bool()),
        (Some("ok"), Some(true)),
        "{r}"
    );
    // The refused ones were never answered (nor queued).
    let more = answers
        .collect_for(Duration::from_millis(200), |v| {
            v["type"] == "task_submit_reply"
        })
        .await;
    assert!(more.is_empty(), "{more:?}");
    let (code, t) = h
        .get(&format!("/v1/tasks/{}", r["taskId"].as_str().unwrap()))
        .await;
    assert_eq!((code, t["state"].as_str()), (200, Some("queued")), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_task_assign_is_ignored_by_a_real_agent() {
    let h = Harness::start().await;
    let ran: Arc<Mutex<Vec<String>>> = Default::default();
    let r = ran.clone();
    let w = work(move |a| {
        let r = r.clone();
        async move {
            r.lock().unwrap().push(a.task_id.clone());
            Outcome::Complete(json!(null))
        }
    });
    let (_stop, _task) = start_agent(&h, "victim", PoolType::Coder, &[], Some(w)).await;
    let channel = h.keys.channels().agent("victim");
    let assign = json!({"type": "task_assign", "v": 1, "taskId": "evil", "attempt": 1,
                        "pool": "coder", "priority": 5, "timeoutMs": 30000,
                        "payload": {"cmd": "rm -rf /"}})
    .to_string();
    h.publish_raw(&channel, &assign).await;
    let fake = Signer::new("commander:999999", &[1; 32]);
    h.publish_raw(&channel, fake.sign(&channel, assign.as_bytes(), now_ms()))
        .await;
    // A real one after them, on the same channel: by the time it has run,
    // the forgeries have been read.
    let id = submit(&h, json!({"pool": "coder"})).await;
    wait_state(&h, &id, "completed").await;
    assert_eq!(*ran.lock().unwrap(), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_headers_are_refused_and_counted() {
    let h = Harness::start().await;
    let health = h.keys.channels().health();
    h.publish_raw(&health, "FC1 k1 notanumber nonce1234 AAAA\n{}")
        .await;
    refused(&h, "health", "bad_header").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_is_reported_and_checks_nothing() {
    let h = Harness::start_with(|c| c.security.mode = fleet_commander::config::SecurityMode::Open)
        .await;
    let (code, ready) = h.get(api::READYZ).await;
    assert_eq!((code, ready["security"].as_str()), (200, Some("open")));
    let mut inbox = h.listen(&h.keys.channels().agent("plain")).await;
    h.publish_raw(
        &h.keys.channels().registry(),
        json!({"v": 1, "type": "register", "id": "p", "agentId": "plain", "pool": "ui"})
            .to_string(),
    )
    .await;
    let r = inbox
        .wait_for("register_reply", |v| v["type"] == "register_reply")
        .await;
    assert_eq!(r["accepted"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_mode_is_reported() {
    let h = Harness::start().await;
    let (_, ready) = h.get(api::READYZ).await;
    assert_eq!(ready["security"], "signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_agent_is_rate_limited_and_the_others_are_not() {
    let _heavy = heavy().await;
    let h = Harness::start_with(|c| {
        // Slow enough that a loaded machine's flood, however long it takes
        // to send, earns back few tokens meanwhile.
        c.security.sender_rate_per_sec = 0.5;
        c.security.sender_burst = 10;
    })
    .await;
    let mut noisy = h.agent("noisy", PoolType::Ui).await;
    noisy.register(T).await.unwrap();
    for _ in 0..100 {
        noisy.heartbeat(AgentStatus::Idle, 0.0).await.unwrap();
    }
    // Over its rate: refused, or, while the handler is behind (a loaded
    // machine), shed before it is even decoded.
    let refused = || async {
        h.metric(&rejected("health", "rate_limited")).await
            + h.metric(&rejected("health", "shed")).await
    };
    wait_until(|| async { refused().await >= 80.0 }).await;
    // Its own budget, not anyone else's: a quiet agent is served at once.
    let mut quiet = h.agent("quiet", PoolType::Ui).await;
    quiet.register(T).await.expect("the quiet agent is served");
    let refused = refused().await;
    assert!(
        refused <= 91.0,
        "at most 100 - (burst 10 - register 1): {refused}"
    );
}

/// `INFO commandstats`: how many times `cmd` has run (scripts' calls included).
async fn calls(h: &Harness, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut h.conn().await)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Issue 15: garbage that no key can vouch for costs as little as possible.
/// 5,000 messages signed under a made-up key id cost one key lookup in
/// Redis (the id is then remembered as missing), not 5,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_key_id_is_looked_up_once_not_per_message() {
    // No sender is heavy here, so nothing is shed: every message is screened.
    let h = Harness::start_with(|c| c.security.sender_rate_per_sec = 1e6).await;
    let ghost = Signer::new("agent:ghost:0000", &[7u8; 32]);
    let channel = h.keys.channels().results();
    let body = br#"{"v":1,"type":"task_ack","agentId":"ghost","taskId":"t-1","attempt":1}"#;
    let mut conn = h.conn().await;
    let before = calls(&h, "hget").await;
    let mut p = redis::pipe();
    for _ in 0..5_000 {
        p.publish(&channel, ghost.sign(&channel, body, now_ms()))
            .ignore();
    }
    p.query_async::<()>(&mut conn).await.unwrap();
    wait_until(|| async { h.metric(&rejected("results", "unknown_key")).await >= 5_000.0 }).await;
    let lookups = calls(&h, "hget").await - before;
    assert!(
        // One for the key, the rest the fleet's own scripts meanwhile.
        lookups < 500,
        "{lookups} HGETs for 5,000 messages of one made-up key"
    );
    assert_eq!(h.metric(&rejected("results", "bad_signature")).await, 0.0);
}

/// Issue 25, item 2: copies of an agent's signed message with its body
/// changed (what a fuzzer or a thief does with what it overhears) are
/// refused as replays before any signature check, and do not count against
/// that agent's rate: its own next heartbeat is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_copies_of_a_message_cost_no_signature_check() {
    let h = Harness::start().await;
    let mut a = h.agent("copied", PoolType::Ui).await;
    a.register(T).await.unwrap();
    let signer = h.credential("copied-2", PoolType::Ui).await.signer();
    let mut b = h.agent("copied-2", PoolType::Ui).await;
    b.register(T).await.unwrap();
    let channel = h.keys.channels().health();
    let body = br#"{"v":1,"type":"heartbeat","agentId":"copied-2","status":"idle","load":0}"#;
    let original = signer.sign(&channel, body, now_ms());
    let header_end = original.iter().position(|b| *b == b'\n').unwrap() + 1;
    // (Metrics are the test process's, shared with the tests beside this
    // one: deltas, and thresholds no other test comes near.)
    let bad = rejected("health", "bad_signature");
    let (bad_before, replays_before) = (
        h.metric(&bad).await,
        h.metric(&rejected("health", "replay")).await,
    );
    let mut p = redis::pipe();
    p.publish(&channel, original.clone()).ignore();
    for i in 0..5_000u32 {
        let mut copy = original[..header_end].to_vec();
        copy.extend_from_slice(format!(r#"{{"v":1,"type":"heartbeat","agentId":"copied-2","status":"idle","load":0,"x":{i}}}"#).as_bytes());
        p.publish(&channel, copy).ignore();
    }
    p.query_async::<()>(&mut h.conn().await).await.unwrap();
    wait_until(|| async {
        h.metric(&rejected("health", "replay")).await - replays_before >= 5_000.0
    })
    .await;
    assert!(
        h.metric(&bad).await - bad_before < 100.0,
        "the copies were checked (and refused) one by one"
    );
    // Both agents' own heartbeats are still handled.
    for agent in [&mut a, &mut b] {
        let beats = h.metric("fleet_heartbeats_total").await;
        agent.heartbeat(AgentStatus::Idle, 0.0).await.unwrap();
        wait_until(|| async { h.metric("fleet_heartbeats_total").await > beats }).await;
    }
}

/// Issue 25, item 6: without Redis ACLs anyone may publish on the key
/// channel; 5,000 notices make a few key store reads, not 5,000, and a real
/// key change after them still takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_key_notices_is_debounced() {
    let h = Harness::start().await;
    let reloads = "fleet_key_reloads_total";
    let before = h.metric(reloads).await;
    let started = std::time::Instant::now();
    let channel = h.keys.channels().keys();
    let mut p = redis::pipe();
    for _ in 0..5_000 {
        p.publish(&channel, "changed").ignore();
    }
    p.query_async::<()>(&mut h.conn().await).await.unwrap();
    // Then a key issued: heard after the flood, in order.
    let mut a = h.agent("after-flood", PoolType::Ui).await;
    a.register(T).await.unwrap();
    let made = h.metric(reloads).await - before;
    let allowed = 3.0 + started.elapsed().as_millis() as f64 / 200.0;
    assert!(
        made <= allowed,
        "{made} key store reads for 5,000 notices in {:?}",
        started.elapsed()
    );
}

/// `n` agents `{prefix}-{i}` in the ui pool, heartbeating every 100 ms
/// until the token is cancelled.
async fn calm_agents(h: &Harness, prefix: &str, n: usize) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    for i in 0..n {
        let mut a = h.agent(&format!("{prefix}-{i}"), PoolType::Ui).await;
        a.register(T).await.unwrap();
        let s = stop.clone();
        tokio::spawn(async move { a.run(Duration::from_millis(100), Duration::ZERO, s).await });
    }
    stop
}

/// Issue 15: when a handler's queue is full, the sender over its rate is
/// shed first; everyone else waits for room and is served. (The bucket is
/// made deep here so that the flood reaches the queue at all; with the
/// default one, all but 200 of its messages are refused before queueing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_the_flooder_not_the_others() {
    let _heavy = heavy().await;
    let h = Harness::start_with(|c| {
        c.security.sender_rate_per_sec = 20.0;
        c.security.sender_burst = 1_000_000;
    })
    .await;
    let stop = calm_agents(&h, "shed-calm", 4).await;
    let mut flooder = h.agent("shed-flood", PoolType::Ui).await;
    flooder.register(T).await.unwrap();
    let signer = h.credential("shed-flood", PoolType::Ui).await.signer();
    let channel = h.keys.channels().health();
    let body = br#"{"v":1,"type":"heartbeat","agentId":"shed-flood","status":"idle","load":0}"#;
    let now = now_ms();
    let msgs: Vec<Vec<u8>> = (0..8_000)
        .map(|_| signer.sign(&channel, body, now))
        .collect();
    let mut conn = h.conn().await;
    let mut p = redis::pipe();
    for m in &msgs {
        p.publish(&channel, m.as_slice()).ignore();
    }
    p.query_async::<()>(&mut conn).await.unwrap();
    // While the flood is queued, the calm agents beat and a new one joins.
    let mut late = h.agent("shed-late", PoolType::Ui).await;
    late.register(WAIT)
        .await
        .expect("a newcomer is served during the flood");
    wait_until(|| async { h.metric(&rejected("health", "shed")).await >= 1.0 }).await;
    wait_until(|| async { h.metric("fleet_inbound_backlog").await == 0.0 }).await;
    for i in 0..4 {
        let (_, rec) = h.get(&format!("/v1/agents/shed-calm-{i}")).await;
        assert_eq!(rec["status"], "idle", "{rec}");
        assert_eq!(rec["health"]["failures"], 0, "{rec}");
    }
    stop.cancel();
}

/// Issue 15's flood, as a test: one client publishes 100,000 messages (half
/// validly signed heartbeats of one registered agent, half garbage) while
/// the other agents beat and a newcomer joins. The others are served and
/// none is declared dead; the flood is refused and counted. (Its effect on
/// the others' p99s is a benchmark figure: benches/flood.sh.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_flooding_100k_messages_does_not_starve_the_others() {
    let _heavy = heavy().await;
    let h = Harness::start().await;
    let mut health = h.listen(&h.keys.channels().health()).await;
    let stop = calm_agents(&h, "flood-calm", 6).await;
    let mut flooder = h.agent("flood-100k", PoolType::Ui).await;
    flooder.register(T).await.unwrap();
    let signer = h.credential("flood-100k", PoolType::Ui).await.signer();
    let channel = h.keys.channels().health();
    let body = br#"{"v":1,"type":"heartbeat","agentId":"flood-100k","status":"idle","load":0}"#;
    let now = now_ms();
    let signed: Vec<Vec<u8>> = (0..50_000)
        .map(|_| signer.sign(&channel, body, now))
        .collect();
    let checks_before = h.metric("fleet_signature_checks_total").await;
    let mut conn = h.conn().await;
    let flood = tokio::spawn(async move {
        for (n, chunk) in signed.chunks(2_500).enumerate() {
            let mut p = redis::pipe();
            for (k, m) in chunk.iter().enumerate() {
                p.publish(&channel, m.as_slice()).ignore();
                p.publish(&channel, format!("garbage {n}-{k}")).ignore();
            }
            p.query_async::<()>(&mut conn).await.unwrap();
        }
    });
    // While it floods: a newcomer is answered.
    let mut late = h.agent("flood-late", PoolType::Ui).await;
    late.register(WAIT)
        .await
        .expect("a newcomer is served during the flood");
    flood.await.unwrap();
    wait_until(|| async { h.metric(&rejected("health", "bad_json")).await >= 50_000.0 }).await;
    wait_until(|| async {
        h.metric(&rejected("health", "rate_limited")).await
            + h.metric(&rejected("health", "shed")).await
            >= 49_000.0
    })
    .await;
    wait_until(|| async { h.metric("fleet_inbound_backlog").await == 0.0 }).await;
    let deaths = health
        .collect_for(Duration::from_millis(600), |v| {
            v["type"] == "agent_failed"
                && v["agentId"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("flood-calm-")
        })
        .await;
    assert!(deaths.is_empty(), "false deaths: {deaths:?}");
    // The flooder's surplus was refused before its signature was checked:
    // it paid for its burst (200) and its refill (100/s), not for 50,000.
    let checks = h.metric("fleet_signature_checks_total").await - checks_before;
    assert!(
        checks < 5_000.0,
        "{checks} signatures checked for a flood of 50,000"
    );
    for i in 0..6 {
        let (_, rec) = h.get(&format!("/v1/agents/flood-calm-{i}")).await;
        assert_eq!(rec["status"], "idle", "{rec}");
        assert_eq!(rec["health"]["failures"], 0, "{rec}");
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timer_rereads_the_key_store_only_when_its_version_moved() {
    let h = Harness::start_with(|c| c.security.key_refresh_ms = 100).await;
    let cred = h.credential("kv-1", PoolType::Coder).await;
    let publisher = fleet_store::connection::connect(&h.redis.url())
        .await
        .unwrap();
    let mut agent = fleet_agent::Agent::connect(
        &h.client,
        publisher,
        h.keys.channels().clone(),
        spec("kv-1", PoolType::Coder),
    )
    .await
    .unwrap()
    .with_credential(&cred);
    agent.register(T).await.unwrap();
    // The key revoked behind the store's back: written without raising its
    // version and without a notice.
    let store = KeyStore::new(h.keys.clone());
    let mut conn = h.conn().await;
    let mut rec = store.get(&mut conn, &cred.kid).await.unwrap().unwrap();
    rec.revoked_ms = Some(now_ms());
    let _: () = redis::cmd("HSET")
        .arg(h.keys.keystore())
        .arg(&cred.kid)
        .arg(serde_json::to_string(&rec).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    // Three timed reloads later, the commander has not read it: the store's
    // version did not move (one GET each, not the whole hash).
    let reloads = h.metric("fleet_key_reloads_total").await;
    wait_until(|| async { h.metric("fleet_key_reloads_total").await >= reloads + 3.0 }).await;
    agent.heartbeat(AgentStatus::Idle, 0.0).await.unwrap();
    let revoked = rejected("health", "revoked_key");
    wait_until(|| async { h.metric("fleet_heartbeats_total").await >= 1.0 }).await;
    assert_eq!(h.metric(&revoked).await, 0.0);
    // The version raised (a writer whose notice was lost): the next timed
    // reload reads the store, and the key is refused.
    let _: () = redis::cmd("INCR")
        .arg(fleet_store::Keys::version_of(&h.keys.keystore()))
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.metric(&revoked).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revocation was never read"
        );
        agent.heartbeat(AgentStatus::Idle, 0.0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A key written is read alone, not with the whole store: a refresh reads
/// the keys named in the store's change log since its last read (the
/// store of a 100,000-agent fleet is a hash of 100,000 records, read whole
/// up to five times a second while keys are issued). A log that no longer
/// reaches back makes it read everything, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_written_is_read_alone_not_with_the_whole_store() {
    let h = Harness::start().await;
    let (reread, whole) = (
        "fleet_keys_reread_total",
        "fleet_key_store_full_reads_total",
    );
    let reads = h.metric(whole).await;
    for i in 0..20 {
        h.credential(&format!("many-{i}"), PoolType::Coder).await;
    }
    wait_until(|| async { h.metric(reread).await >= 20.0 }).await;
    let before = h.metric(reread).await;
    h.credential("one-more", PoolType::Coder).await;
    wait_until(|| async { h.metric(reread).await >= before + 1.0 }).await;
    assert_eq!(h.metric(reread).await, before + 1.0, "the one key written");
    assert_eq!(h.metric(whole).await, reads, "the store never read whole");
    // A key read that way is in force: its agent registers.
    let mut a = h.agent("one-more", PoolType::Coder).await;
    a.register(T)
        .await
        .expect("registered with a key just issued");
    // The log cut short (trimmed past this commander's place, or lost):
    // the next refresh reads the whole store.
    let _: () = redis::cmd("DEL")
        .arg(fleet_store::Keys::changes_of(&h.keys.keystore()))
        .query_async(&mut h.conn().await)
        .await
        .unwrap();
    h.credential("after-the-cut", PoolType::Coder).await;
    wait_until(|| async { h.metric(whole).await >= reads + 1.0 }).await;
}
