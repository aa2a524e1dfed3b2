//! Task submission, idempotency, refusals, priority queues with aging,
//! cancellation, persistence across a commander restart.

use crate::common::*;
use fleet_protocol::api;
use fleet_protocol::pool::PoolType;
use serde_json::{json, Value};
use std::time::Duration;

async fn post(h: &Harness, path: &str, body: Value) -> (u16, Value) {
    let r = h
        .http
        .post(format!("{}{path}", h.base()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_task_is_persisted_with_defaults_and_served() {
    let h = Harness::start().await;
    let (code, body) = post(
        &h,
        api::TASKS,
        json!({"pool": "coder", "payload": {"file": "main.rs", "n": [1, 2]}, "capabilities": ["rust"]}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let t = &body["task"];
    assert_eq!(t["state"], "queued");
    assert_eq!(t["attempt"], 0);
    assert_eq!(t["priority"], 5);
    assert_eq!(t["timeoutMs"], 30000);
    assert_eq!(t["maxRetries"], 3);
    assert_eq!(t["payload"], json!({"file": "main.rs", "n": [1, 2]}));
    let id = t["id"].as_str().unwrap();
    let (code, got) = h.get(&api::path(api::TASK, id)).await;
    assert_eq!(code, 200);
    assert_eq!(got, *t);
    // A well-formed id that names no task, and ids that cannot name one
    // (not the commander's UUIDs: refused before any Redis key is built).
    assert_eq!(h.get(&api::path(api::TASK, NO_TASK)).await.0, 404);
    for bad in [
        "nope",
        "a:b",
        "agent-1",
        "6F1C2A4E-0B1D-4C7E-9A3F-2D5E8B7C1A90",
    ] {
        let (code, body) = h.get(&api::path(api::TASK, bad)).await;
        assert_eq!(
            (code, &body["error"]),
            (400, &json!("invalid_task_id")),
            "{bad}"
        );
        let (code, _) = post(&h, &api::path(api::TASK_CANCEL, bad), json!({})).await;
        assert_eq!(code, 400, "cancel {bad}");
    }
}

/// A well-formed task id that names no task.
const NO_TASK: &str = "00000000-0000-4000-8000-000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_is_idempotent_by_client_id() {
    let h = Harness::start().await;
    let body = json!({"pool": "tester", "clientId": "build-42", "payload": 1});
    let (c1, first) = post(&h, api::TASKS, body.clone()).await;
    let (c2, second) = post(&h, api::TASKS, body.clone()).await;
    assert_eq!((c1, c2), (201, 200));
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["task"]["id"], second["task"]["id"]);
    let mut c = h.conn().await;
    let queued: u64 = redis::cmd("ZCARD")
        .arg(h.keys.queue(PoolType::Tester))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(queued, 1, "one task, however often it is submitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_that_can_never_run_are_refused_with_a_reason() {
    let h = Harness::start_with(|c| {
        c.pools.get_mut(&PoolType::Security).unwrap().capabilities =
            vec!["audit".into(), "pentest".into()];
    })
    .await;
    let cases = [
        (json!({"pool": "wizard"}), 422, "unknown_pool"),
        (
            json!({"pool": "coder", "priority": 0}),
            422,
            "invalid_fields",
        ),
        (
            json!({"pool": "coder", "timeoutMs": 5}),
            422,
            "invalid_fields",
        ),
        (
            json!({"pool": "coder", "clientId": "no spaces"}),
            422,
            "invalid_fields",
        ),
        (
            json!({"pool": "security", "capabilities": ["cooking"]}),
            422,
            "unmatched_capabilities",
        ),
        (json!({"pool": 7}), 400, "invalid_fields"),
    ];
    for (body, code, reason) in cases {
        let (got, resp) = post(&h, api::TASKS, body.clone()).await;
        assert_eq!(
            (got, resp["error"].as_str().unwrap_or("")),
            (code, reason),
            "{body}: {resp}"
        );
    }
    // Offered capabilities are fine.
    let (code, _) = post(
        &h,
        api::TASKS,
        json!({"pool": "security", "capabilities": ["audit"]}),
    )
    .await;
    assert_eq!(code, 201);
    let r = h.post_text(api::TASKS, "{not json").await;
    assert_eq!(r.status().as_u16(), 400);
    assert!(
        h.metric(r#"fleet_tasks_rejected_total{reason="unknown_pool"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_orders_by_priority_and_ages_waiting_tasks_upwards() {
    // One priority level is worth 20 ms of waiting.
    let h = Harness::start_with(|c| c.tasks.aging_ms_per_priority = 20).await;
    let id = |v: &Value| v["task"]["id"].as_str().unwrap().to_string();
    let low = id(&post(&h, api::TASKS, json!({"pool": "ui", "priority": 1}))
        .await
        .1);
    let mid = id(&post(&h, api::TASKS, json!({"pool": "ui", "priority": 5}))
        .await
        .1);
    let high = id(&post(&h, api::TASKS, json!({"pool": "ui", "priority": 10}))
        .await
        .1);
    let mut c = h.conn().await;
    let order = h
        .commander
        .as_ref()
        .unwrap()
        .shared()
        .tasks
        .queued(&mut c, PoolType::Ui, 10)
        .await
        .unwrap();
    assert_eq!(order, vec![high.clone(), mid.clone(), low.clone()]);

    // Nine levels = 180 ms. Once the low task has waited longer than that, a
    // new high-priority task no longer jumps it.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let late = id(&post(&h, api::TASKS, json!({"pool": "ui", "priority": 10}))
        .await
        .1);
    let order = h
        .commander
        .as_ref()
        .unwrap()
        .shared()
        .tasks
        .queued(&mut c, PoolType::Ui, 10)
        .await
        .unwrap();
    assert_eq!(
        order,
        vec![high, mid, low, late],
        "aging lets the old low-priority task go first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_submission_is_acknowledged_after_it_is_persisted() {
    let h = Harness::start().await;
    // A submitter's replies come on its own channel: reply:{its name}[:…].
    let reply_channel = format!("{}test-submitter:me", h.keys.channels().reply_prefix());
    let mut replies = h.listen(&reply_channel).await;
    let msg = json!({"v": 1, "type": "task_submit", "id": "s-1", "replyChannel": reply_channel,
                     "pool": "devops", "priority": 7, "payload": {"deploy": "web"}});
    h.publish(&h.keys.channels().tasks(), msg.to_string()).await;
    let r = replies
        .wait_for("task_submit_reply", |v| {
            v["type"] == "task_submit_reply" && v["replyTo"] == "s-1"
        })
        .await;
    assert_eq!(r["accepted"], true, "{r}");
    let id = r["taskId"].as_str().unwrap();
    let (_, t) = h.get(&api::path(api::TASK, id)).await;
    assert_eq!(t["state"], "queued");
    assert_eq!(t["payload"]["deploy"], "web");

    let bad = json!({"v": 1, "type": "task_submit", "id": "s-2", "replyChannel": reply_channel, "pool": "nowhere"});
    h.publish(&h.keys.channels().tasks(), bad.to_string()).await;
    let r = replies
        .wait_for("refusal", |v| {
            v["type"] == "task_submit_reply" && v["replyTo"] == "s-2"
        })
        .await;
    assert_eq!(r["accepted"], false);
    assert_eq!(r["reason"], "unknown_pool");

    // A mistyped field is answered too, with what was wrong; 8.0 is a whole number.
    let typo = json!({"v": 1, "type": "task_submit", "id": "s-3", "replyChannel": reply_channel,
                      "pool": "devops", "priority": "high"});
    h.publish(&h.keys.channels().tasks(), typo.to_string())
        .await;
    let r = replies
        .wait_for("refusal", |v| {
            v["type"] == "task_submit_reply" && v["replyTo"] == "s-3"
        })
        .await;
    assert_eq!(
        (r["accepted"].clone(), r["reason"].clone()),
        (json!(false), json!("invalid_fields"))
    );
    assert!(
        r["detail"].as_str().unwrap().starts_with("priority:"),
        "{r}"
    );
    let float = json!({"v": 1, "type": "task_submit", "id": "s-4", "replyChannel": reply_channel,
                       "pool": "devops", "priority": 8.0, "timeoutMs": 60000.0});
    h.publish(&h.keys.channels().tasks(), float.to_string())
        .await;
    let r = replies
        .wait_for("acceptance", |v| {
            v["type"] == "task_submit_reply" && v["replyTo"] == "s-4"
        })
        .await;
    assert_eq!(r["accepted"], true, "{r}");
    let (_, t) = h
        .get(&format!("/v1/tasks/{}", r["taskId"].as_str().unwrap()))
        .await;
    assert_eq!(
        (t["priority"].clone(), t["timeoutMs"].clone()),
        (json!(8), json!(60000))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_can_be_cancelled_once() {
    let h = Harness::start().await;
    let (_, b) = post(&h, api::TASKS, json!({"pool": "mobile"})).await;
    let id = b["task"]["id"].as_str().unwrap();
    let (code, r) = post(&h, &api::path(api::TASK_CANCEL, id), json!({})).await;
    assert_eq!(code, 200, "{r}");
    let (_, t) = h.get(&api::path(api::TASK, id)).await;
    assert_eq!(t["state"], "cancelled");
    let (code, r) = post(&h, &api::path(api::TASK_CANCEL, id), json!({})).await;
    assert_eq!(
        (code, r["error"].as_str().unwrap()),
        (409, "not_cancellable")
    );
    let mut c = h.conn().await;
    let queued: u64 = redis::cmd("ZCARD")
        .arg(h.keys.queue(PoolType::Mobile))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(queued, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_tasks_survive_a_commander_restart() {
    let mut h = Harness::start().await;
    let mut ids = Vec::new();
    for p in 1..=5 {
        let (_, b) = post(&h, api::TASKS, json!({"pool": "database", "priority": p})).await;
        ids.push(b["task"]["id"].as_str().unwrap().to_string());
    }
    h.stop_commander().await.unwrap();
    h.start_commander().await;
    for id in &ids {
        let (code, t) = h.get(&api::path(api::TASK, id)).await;
        assert_eq!((code, t["state"].as_str().unwrap()), (200, "queued"));
    }
}

/// The first message on `channel` whose text contains `needle`, as sent.
async fn raw_message(s: &mut redis::aio::PubSubStream, needle: &str) -> String {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, async {
        loop {
            let m = s.next().await.expect("subscribed");
            let text: String = m.get_payload().unwrap();
            if text.contains(needle) {
                return text;
            }
        }
    })
    .await
    .expect("the message in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_and_results_are_kept_byte_for_byte() {
    let h = Harness::start().await;
    let mut a = h.agent("raw-1", PoolType::Analyst).await;
    a.register(Duration::from_secs(5)).await.unwrap();
    let mut ps = h.client.get_async_pubsub().await.unwrap();
    ps.subscribe(h.keys.channels().agent("raw-1"))
        .await
        .unwrap();
    let mut inbox = ps.into_on_message();

    // Unsorted keys, an exponent and an integer past 64 bits: all as written.
    let payload = r#"{"zeta":1,"alpha":1e2,"big":123456789012345678901234567890,"s":"é\n"}"#;
    let body = format!(r#"{{"pool":"analyst","payload":{payload}}}"#);
    let r = h.post_text(api::TASKS, body).await;
    assert_eq!(r.status(), 201);
    let text = r.text().await.unwrap();
    assert!(text.contains(&format!(r#""payload":{payload}"#)), "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["task"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let assign = raw_message(&mut inbox, "task_assign").await;
    assert!(
        assign.contains(&format!(r#""payload":{payload}"#)),
        "{assign}"
    );

    // A result, likewise.
    let result = r#"{"y":2.50,"x":[3e-1]}"#;
    let done = format!(
        r#"{{"v":1,"type":"task_complete","taskId":"{id}","attempt":1,"agentId":"raw-1","result":{result}}}"#
    );
    h.publish(&h.keys.channels().results(), done).await;
    wait_until(|| async { h.get(&api::path(api::TASK, &id)).await.1["state"] == "completed" })
        .await;
    let text = h
        .http
        .get(format!("{}/v1/tasks/{id}", h.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(&format!(r#""payload":{payload}"#)), "{text}");
    assert!(text.contains(&format!(r#""result":{result}"#)), "{text}");
}

/// Issue 16, item 4: with `tasks.durability = "replicated"` a submission is
/// acknowledged once a replica has it (WAIT); with no replica to confirm it,
/// it is refused with 503 `not_replicated` within the timeout, not hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_durability_waits_for_a_replica_and_refuses_without_one() {
    let h = Harness::start_with(|c| {
        c.tasks.durability = fleet_commander::config::Durability::Replicated;
        // Wide enough for a replica on a loaded machine (a CI run saw 300 ms
        // miss with the link up), short enough to see the refusal in time.
        c.tasks.replication_timeout_ms = 1000;
    })
    .await;
    let replica = fleet_testkit::RedisServer::start_replica_of(&h.redis).expect("a replica");
    let mut rc = fleet_store::connection::client(&replica.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    wait_for_replication(&rc, "master_link_status:up").await;
    // ... and the primary counts it as an online replica (what WAIT counts).
    let primary = h.conn().await;
    wait_for_replication(&primary, "state=online").await;
    let post = |n: u32| {
        h.http
            .post(format!("{}/v1/tasks", h.base()))
            .json(&json!({"pool": "ui", "payload": n, "clientId": format!("rep-{n}")}))
            .send()
    };
    let r = post(1).await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "confirmed by the replica");
    let v: Value = r.json().await.unwrap();
    let id = v["task"]["id"].as_str().unwrap().to_string();
    let on_replica: Option<String> = redis::cmd("HGET")
        .arg(h.keys.task(&id))
        .arg("state")
        .query_async(&mut rc)
        .await
        .unwrap();
    assert!(
        on_replica.is_some(),
        "the replica has the task once it is acknowledged"
    );

    drop(replica); // killed: nobody can confirm
    let t = std::time::Instant::now();
    let r = post(2).await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_replicated", "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "refused within the timeout"
    );
    // Its retry (the same clientId) names the same task, which no replica
    // has: refused again, not acknowledged as a duplicate (a Sentinel
    // failover lost such tasks: the primary they were on was resynced away).
    let r = post(2).await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        503,
        "a retry acknowledged unreplicated"
    );
    let r = h
        .post_text(
            api::TASKS,
            r#"[{"pool":"ui","payload":2,"clientId":"rep-2"}]"#,
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tasks"][0]["error"], "not_replicated", "{v}");
    assert!(
        h.metric(r#"fleet_tasks_rejected_total{reason="not_replicated"}"#)
            .await
            >= 1.0
    );
}

/// An operator pauses a pool's queue: its tasks are accepted and wait, none
/// is handed out (an idle agent stands by), the pool says since when; resumed,
/// they run. Cleared, every waiting task is cancelled; each action audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_holds_its_tasks_until_resumed_and_can_be_cleared() {
    let h = Harness::start().await;
    let (stop, _) = start_agent(&h, "pq-1", PoolType::Mobile, &[], None).await;
    let (code, v) = post(&h, &api::path(api::POOL_PAUSE, "mobile"), json!({})).await;
    assert_eq!((code, &v["paused"]), (200, &json!(true)), "{v}");
    let mut alloc = h.listen(&h.keys.channels().allocation()).await;
    let id = submit(&h, json!({"pool": "mobile"})).await;
    let handed = alloc
        .collect_for(Duration::from_millis(500), |v| v["type"] == "task_assigned")
        .await;
    assert!(handed.is_empty(), "a paused queue handed out {handed:?}");
    assert_eq!(h.get(&api::path(api::TASK, &id)).await.1["state"], "queued");
    assert!(h.pool("mobile").await["pausedAt"].as_u64().is_some());
    let (code, _) = post(&h, &api::path(api::POOL_RESUME, "mobile"), json!({})).await;
    assert_eq!(code, 200);
    wait_state(&h, &id, "completed").await;
    assert!(h.pool("mobile").await.get("pausedAt").is_none());

    // Cleared: the waiting tasks are cancelled, nothing else.
    post(&h, &api::path(api::POOL_PAUSE, "mobile"), json!({})).await;
    let ids: Vec<String> =
        futures_util::future::join_all((0..3).map(|_| submit(&h, json!({"pool": "mobile"})))).await;
    let (code, v) = post(&h, &api::path(api::POOL_CLEAR, "mobile"), json!({})).await;
    assert_eq!((code, &v["cancelled"]), (200, &json!(3)), "{v}");
    for id in &ids {
        assert_eq!(
            h.get(&api::path(api::TASK, id)).await.1["state"],
            "cancelled"
        );
    }
    let (_, log) = h.get(api::AUDIT).await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["pause_queue", "resume_queue", "clear_queue"] {
        assert!(actions.contains(&a), "{a} audited: {actions:?}");
    }
    stop.cancel();
}

/// Dead letters in bulk: some requeued by id, the rest deleted with `all`
/// (their records gone), audited with the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_requeued_and_deleted_in_bulk() {
    let h = Harness::start_with(|c| c.tasks.retry_backoff_ms = 10).await;
    let failing = work(|_a| async { fleet_agent::Outcome::Fail("no".into()) });
    let (stop, agent) = start_agent(&h, "dl-1", PoolType::Database, &[], Some(failing)).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = submit(&h, json!({"pool": "database", "maxRetries": 0})).await;
        wait_state(&h, &id, "dead").await;
        ids.push(id);
    }
    // The agent leaves, so that requeued tasks wait in their queue.
    stop.cancel();
    let mut agent = agent.await.unwrap();
    agent.deregister(T).await.unwrap();
    let (code, v) = post(
        &h,
        api::DEAD_LETTERS_REQUEUE,
        json!({"ids": [ids[0], ids[1], NO_TASK]}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["requeued"], json!([ids[0], ids[1]]), "{v}");
    assert_eq!(v["notDead"], json!([NO_TASK]), "{v}");
    for id in &ids[..2] {
        assert_eq!(h.get(&api::path(api::TASK, id)).await.1["state"], "queued");
    }
    let (code, v) = post(&h, api::DEAD_LETTERS_DELETE, json!({"all": true})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["deleted"].as_array().map(Vec::len), Some(2), "{v}");
    for id in &ids[2..] {
        assert_eq!(h.get(&api::path(api::TASK, id)).await.0, 404);
    }
    assert_eq!(h.get(api::DEAD_LETTERS).await.1, json!([]));
    let (code, _) = post(
        &h,
        api::DEAD_LETTERS_DELETE,
        json!({"ids": [], "all": false}),
    )
    .await;
    assert_eq!(code, 422, "ids or all");
    let (_, log) = h.get(api::AUDIT).await;
    let targets: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "delete_dead_letters" || e["action"] == "requeue_bulk")
        .map(|e| e["target"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        targets.iter().any(|t| t.ends_with("deleted=2")),
        "{targets:?}"
    );
    assert!(
        targets.iter().any(|t| t.ends_with("requeued=2")),
        "{targets:?}"
    );
}

/// The commander samples the fleet (every status interval) and serves the
/// last hour at `GET /v1/history`: the console's charts survive a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recent_past_is_sampled_and_served() {
    let h = Harness::start().await;
    let (stop, _) = start_agent(&h, "hist-1", PoolType::Analyst, &[], None).await;
    for _ in 0..3 {
        let id = submit(&h, json!({"pool": "analyst"})).await;
        wait_state(&h, &id, "completed").await;
    }
    wait_until(|| async {
        let (_, v) = h.get(api::HISTORY).await;
        v["samples"]
            .as_array()
            .and_then(|s| s.last().cloned())
            .is_some_and(|s| s["completed"].as_u64() >= Some(3) && s["live"].as_u64() >= Some(1))
    })
    .await;
    let (_, v) = h.get(api::HISTORY).await;
    assert_eq!(v["intervalMs"], h.config.fleet.status_interval_ms);
    let ts: Vec<u64> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ts"].as_u64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "oldest first: {ts:?}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_of_tasks_is_submitted_in_one_round_trip_each_answered_in_order() {
    let h = Harness::start().await;
    let w = work(|a| async move { fleet_agent::Outcome::Complete(json!({"attempt": a.attempt})) });
    let (stop, _agent) = start_agent(&h, "batch-1", PoolType::Coder, &[], Some(w)).await;
    let round_trips = r#"fleet_redis_command_duration_seconds_count{op="submit"}"#;
    let before = h.metric(round_trips).await;
    // A good one, one for no pool, one whose payload must keep its bytes,
    // and the first one's clientId again.
    let r = h
        .post_text(
            api::TASKS,
            r#"[{"pool":"coder","payload":{"n":1},"clientId":"batch-a"},
                {"pool":"wizard"},
                {"pool":"coder","payload":{"big":12345678901234567890123}},
                {"pool":"coder","payload":{"n":4},"clientId":"batch-a"}]"#,
        )
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#"{"big":12345678901234567890123}"#),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let answers = v["tasks"].as_array().expect("one answer per task");
    assert_eq!(answers.len(), 4, "{v}");
    let first = answers[0]["task"]["id"].as_str().unwrap();
    assert_eq!(answers[0]["duplicate"], false);
    assert_eq!(answers[1]["error"], "unknown_pool", "{v}");
    let third = answers[2]["task"]["id"].as_str().unwrap();
    assert_eq!(answers[3]["duplicate"], true);
    assert_eq!(
        answers[3]["task"]["id"], first,
        "the same clientId names the same task"
    );
    assert_eq!(
        h.metric(round_trips).await - before,
        1.0,
        "one round trip for the batch"
    );
    for id in [first, third] {
        task_in_state(&h.http, &h.base(), id, "completed").await;
    }
    // An empty array, one over the limit, or one with a task over one
    // message's size, is refused whole.
    let big = json!({"pool": "coder", "payload": {"pad": "x".repeat(17_000)}});
    let r = h
        .post_text(
            api::TASKS,
            serde_json::to_string(&json!([{"pool": "coder"}, big])).unwrap(),
        )
        .await;
    assert_eq!(r.status().as_u16(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "too_large", "{v}");
    assert!(v["detail"].as_str().unwrap().starts_with("task 1:"), "{v}");
    for n in [0, fleet_protocol::task::MAX_BATCH + 1] {
        let body = serde_json::to_string(&vec![json!({"pool": "coder"}); n]).unwrap();
        let r = h.post_text(api::TASKS, body).await;
        assert_eq!(r.status().as_u16(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_fields", "{v}");
    }
    stop.cancel();
}
