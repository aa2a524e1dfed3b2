//! Allocation and outcomes: tasks reach the best agent, complete exactly
//! once, survive agents dying, and retry into the dead-letter set.

use crate::common::*;
use fleet_agent::{Assignment, Outcome};
use fleet_protocol::api;
use fleet_protocol::pool::PoolType;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_assigned_acknowledged_and_completed() {
    let h = Harness::start().await;
    let mut events = h.listen(&h.keys.channels().allocation()).await;
    let w = work(|a: Assignment| async move {
        Outcome::Complete(json!({"doubled": a.payload["n"].as_i64().unwrap() * 2}))
    });
    let (stop, task) = start_agent(&h, "w-1", PoolType::Coder, &["rust"], Some(w)).await;
    let id = submit(
        &h,
        json!({"pool": "coder", "capabilities": ["rust"], "payload": {"n": 21}}),
    )
    .await;
    let t = wait_state(&h, &id, "completed").await;
    assert_eq!(t["result"], json!({"doubled": 42}));
    assert_eq!(t["attempt"], 1);
    assert_eq!(t["agentId"], "w-1");
    let ev = events
        .wait_for("task_assigned", |v| {
            v["type"] == "task_assigned" && v["taskId"] == id.as_str()
        })
        .await;
    assert_eq!(ev["agentId"], "w-1");
    events
        .wait_for("task_completed", |v| {
            v["type"] == "task_completed" && v["taskId"] == id.as_str()
        })
        .await;
    let (code, ev) = h.get(&api::path(api::TASK_EVIDENCE, &id)).await;
    assert_eq!(code, 200);
    let ev = ev.as_array().unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["agentId"], "w-1");
    assert_eq!(ev[0]["strategy"], "priority");
    assert_eq!(ev[0]["attempt"], 1);
    assert!(ev[0]["score"].is_number(), "{ev:?}");
    assert!(ev[0]["reason"].as_str().unwrap().contains("rust"), "{ev:?}");
    let mut c = h.conn().await;
    let n: u64 = redis::cmd("XLEN")
        .arg(h.keys.evidence())
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(n >= 1);
    let (_, a) = h.get(&api::path(api::AGENT, "w-1")).await;
    assert_eq!(a["performance"]["tasksCompleted"], 1, "{a}");
    assert_eq!(a["performance"]["successRate"], 1.0);
    assert_eq!(a["status"], "idle");
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highest_priority_task_goes_first() {
    let h = Harness::start().await;
    let low = submit(&h, json!({"pool": "ui", "priority": 1})).await;
    let mid = submit(&h, json!({"pool": "ui", "priority": 5})).await;
    let high = submit(&h, json!({"pool": "ui", "priority": 10})).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let w = work(move |a: Assignment| {
        o.lock().unwrap().push(a.task_id.clone());
        async { Outcome::Complete(Value::Null) }
    });
    let (stop, task) = start_agent(&h, "ui-1", PoolType::Ui, &[], Some(w)).await;
    wait_state(&h, &low, "completed").await;
    assert_eq!(*order.lock().unwrap(), vec![high, mid, low]);
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waits_for_an_agent_with_its_capabilities() {
    let h = Harness::start().await;
    let (s1, t1) = start_agent(&h, "cpu-1", PoolType::Performance, &["cpu"], None).await;
    let id = submit(&h, json!({"pool": "performance", "capabilities": ["gpu"]})).await;
    // Several allocator ticks with only a cpu agent: still queued.
    let (_, t) = h.get(&api::path(api::TASK, &id)).await;
    assert_eq!(t["state"], "queued");
    let mut events = h.listen(&h.keys.channels().allocation()).await;
    let unassigned = events
        .collect_for(Duration::from_millis(300), |v| v["taskId"] == id.as_str())
        .await;
    assert!(unassigned.is_empty(), "{unassigned:?}");
    let (s2, t2) = start_agent(&h, "gpu-1", PoolType::Performance, &["gpu", "cpu"], None).await;
    let t = wait_state(&h, &id, "completed").await;
    assert_eq!(t["agentId"], "gpu-1");
    for s in [s1, s2] {
        s.cancel();
    }
    let _ = (t1.await, t2.await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_joining_where_no_task_waits_cost_no_allocation_round_trip() {
    let h = Harness::start().await;
    // What Redis itself runs (the metrics are shared by the tests in this
    // process): an allocation is the one script call that names a queue.
    let mut monitor = h
        .client
        .resolve()
        .await
        .unwrap()
        .get_async_monitor()
        .await
        .unwrap();
    let mut seen = monitor.on_message::<String>();
    let queue = format!("\"{}\"", h.keys.queue(PoolType::Tester));
    let mut agents = Vec::new();
    for i in 0..12 {
        let mut a = h.agent(&format!("t-{i}"), PoolType::Tester).await;
        a.register(T).await.unwrap();
        agents.push(a);
    }
    let marker = "end-of-joins";
    let _: String = redis::cmd("ECHO")
        .arg(marker)
        .query_async(&mut h.conn().await)
        .await
        .unwrap();
    let mut allocations = 0;
    tokio::time::timeout(WAIT, async {
        while let Some(line) = seen.next().await {
            if line.contains(marker) {
                return;
            }
            if line.contains("\"FCALL\"") && line.contains(&queue) {
                allocations += 1;
            }
        }
    })
    .await
    .expect("the marker command was not seen");
    // Each registration used to wake an allocation script for its pool; with
    // an empty queue there is nothing to hand out. (At most the rounds before
    // the allocator's first look at the queues.)
    assert!(
        allocations <= 2,
        "{allocations} allocation scripts for 12 joins into an empty pool"
    );
    drop(seen);
    // A task that waits is still handed to the next agent to join.
    let id = submit(&h, json!({"pool": "ui"})).await;
    let (s, t) = start_agent(&h, "ui-1", PoolType::Ui, &[], None).await;
    let t1 = wait_state(&h, &id, "completed").await;
    assert_eq!(t1["agentId"], "ui-1");
    s.cancel();
    let _ = t.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_late_results_are_ignored_and_counted() {
    let h = Harness::start().await;
    let mut events = h.listen(&h.keys.channels().allocation()).await;
    let (stop, task) = start_agent(&h, "d-1", PoolType::Tester, &[], None).await;
    let id = submit(&h, json!({"pool": "tester", "payload": 7})).await;
    let done = wait_state(&h, &id, "completed").await;
    let before = h.metric("fleet_task_results_ignored_total").await;
    let results = h.keys.channels().results();
    // The same completion again, one for an old attempt, one from another agent.
    for (attempt, agent) in [(1, "d-1"), (0, "d-1"), (1, "intruder")] {
        let m = json!({"v": 1, "type": "task_complete", "taskId": id, "attempt": attempt,
                       "agentId": agent, "result": "forged"});
        h.publish(&results, m.to_string()).await;
    }
    wait_until(|| async { h.metric("fleet_task_results_ignored_total").await >= before + 3.0 })
        .await;
    let (_, t) = h.get(&api::path(api::TASK, &id)).await;
    assert_eq!(t["result"], done["result"], "the first result stands");
    let completions = events
        .collect_for(Duration::from_millis(300), |v| {
            v["type"] == "task_completed" && v["taskId"] == id.as_str()
        })
        .await;
    assert!(completions.len() <= 1, "completed once: {completions:?}");
    let (_, a) = h.get(&api::path(api::AGENT, "d-1")).await;
    assert_eq!(a["performance"]["tasksCompleted"], 1);
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_with_backoff_then_dead_letter_then_requeue() {
    let h = Harness::start_with(|c| {
        c.tasks.retry_backoff_ms = 20;
        c.tasks.retry_backoff_max_ms = 100;
    })
    .await;
    let healthy = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (hc, at) = (healthy.clone(), attempts.clone());
    let w = work(move |a: Assignment| {
        at.lock().unwrap().push(a.attempt);
        let ok = hc.load(Ordering::SeqCst);
        async move {
            if ok {
                Outcome::Complete(json!("fine"))
            } else {
                Outcome::Fail("disk full".into())
            }
        }
    });
    let (stop, task) = start_agent(&h, "f-1", PoolType::Devops, &[], Some(w)).await;
    let id = submit(&h, json!({"pool": "devops", "maxRetries": 2})).await;
    let t = wait_state(&h, &id, "dead").await;
    assert_eq!(t["attempt"], 3, "1 try + 2 retries");
    assert_eq!(t["error"], "disk full");
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3]);
    let (code, dl) = h.get(api::DEAD_LETTERS).await;
    assert_eq!(code, 200);
    assert!(
        dl.as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str()),
        "{dl}"
    );
    let (_, a) = h.get(&api::path(api::AGENT, "f-1")).await;
    assert_eq!(a["performance"]["successRate"], 0.0);
    // Failures the agent reports are the task's: its health is untouched,
    // so the pool's only agent is never quarantined by a bad task.
    assert_eq!(a["health"]["score"], 100, "{a}");
    // The dead task keeps its agent, and every attempt is in its history.
    assert_eq!(t["agentId"], "f-1", "{t}");
    let history: Vec<(u64, &str, &str, &str)> = t["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["agentId"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
                a["error"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            (1, "f-1", "failed", "disk full"),
            (2, "f-1", "failed", "disk full"),
            (3, "f-1", "failed", "disk full")
        ],
        "{t}"
    );
    assert!(t["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["endedAt"].as_u64() >= a["startedAt"].as_u64()));
    let (_, listed) = h.get("/v1/tasks?agent=f-1").await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id.as_str()),
        "the agent's failed task is listed under it: {listed}"
    );

    healthy.store(true, Ordering::SeqCst);
    let r = h
        .http
        .post(format!("{}/v1/dead-letters/{id}/requeue", h.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let t = wait_state(&h, &id, "completed").await;
    assert_eq!(t["result"], "fine");
    // Its attempt numbers went on from its first life (issue 15): the new
    // life's attempt is not one that an old result could name.
    assert_eq!(t["attempt"], 4, "{t}");
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3, 4]);
    let (_, dl) = h.get(api::DEAD_LETTERS).await;
    assert!(!dl
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == id.as_str()));
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_an_agent_killed_mid_task_completes_elsewhere_exactly_once() {
    let h = Harness::start().await;
    let mut events = h.listen(&h.keys.channels().allocation()).await;
    // The first agent takes the task and dies with it.
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    let hang = work(move |_a: Assignment| {
        s.notify_one();
        async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Outcome::Complete(json!("too late"))
        }
    });
    let (kill, doomed) = start_agent(&h, "doomed", PoolType::Analyst, &[], Some(hang)).await;
    let id = submit(&h, json!({"pool": "analyst", "payload": "report"})).await;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("doomed agent got the task");
    kill.cancel();
    let _ = doomed.await;
    // A healthy agent joins; the task is given back when the dead one is detected.
    let (stop, task) = start_agent(&h, "survivor", PoolType::Analyst, &[], None).await;
    let t = wait_state(&h, &id, "completed").await;
    assert_eq!(t["agentId"], "survivor");
    assert_eq!(t["attempt"], 2);
    let completions = events
        .collect_for(Duration::from_millis(500), |v| {
            v["type"] == "task_completed" && v["taskId"] == id.as_str()
        })
        .await;
    assert!(completions.len() <= 1);
    assert!(
        h.metric(r#"fleet_tasks_orphaned_total{reason="agent_failed"}"#)
            .await
            >= 1.0
    );
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_assignment_goes_back_when_its_lease_runs_out() {
    let h = Harness::start_with(|c| c.tasks.ack_timeout_ms = 200).await;
    // An agent that registers and heartbeats but never acknowledges tasks.
    let mut mute = h.agent("mute", PoolType::Network).await;
    mute.register(T).await.unwrap();
    let stop_mute = CancellationToken::new();
    let sm = stop_mute.clone();
    let mute_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = sm.cancelled() => return mute,
                _ = tick.tick() => {
                    let _ = mute.heartbeat(fleet_protocol::pool::AgentStatus::Idle, 0.0).await;
                }
            }
        }
    });
    let mut events = h.listen(&h.keys.channels().allocation()).await;
    let id = submit(&h, json!({"pool": "network", "maxRetries": 20})).await;
    events
        .wait_for("task_requeued", |v| {
            v["type"] == "task_requeued" && v["taskId"] == id.as_str()
        })
        .await;
    // The script announces the take-back; the reaper counts it just after.
    wait_until(|| async {
        h.metric(r#"fleet_tasks_orphaned_total{reason="lease_expired"}"#)
            .await
            >= 1.0
    })
    .await;
    let (_, a) = h.get(&api::path(api::AGENT, "mute")).await;
    assert!(
        a["performance"]["successRate"].as_f64().unwrap() < 1.0,
        "{a}"
    );

    // A working agent joins while the mute one stays: each expiry costs the
    // mute agent health, so it is quarantined and the task goes to the other.
    let (stop, task) = start_agent(&h, "speaker", PoolType::Network, &[], None).await;
    let t = wait_state(&h, &id, "completed").await;
    assert_eq!(t["agentId"], "speaker");
    assert!(t["attempt"].as_u64().unwrap() >= 2, "{t}");
    let (_, a) = h.get(&api::path(api::AGENT, "mute")).await;
    assert_eq!(a["status"], "idle", "still registered: {a}");
    assert!(a["health"]["score"].as_u64().unwrap() < 100, "{a}");
    stop_mute.cancel();
    let _ = mute_task.await;
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_gives_back_what_it_held_at_once() {
    // A long failure window: only the restart can explain the task coming back.
    let h = Harness::start_with(|c| c.fleet.missed_heartbeats = 100).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    let hang = work(move |_a: Assignment| {
        s.notify_one();
        async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Outcome::Vanish
        }
    });
    let (crash, old) = start_agent(&h, "phoenix", PoolType::Mobile, &[], Some(hang)).await;
    let id = submit(&h, json!({"pool": "mobile"})).await;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the task was taken");
    crash.cancel();
    let _ = old.await;
    // The process restarts: same id, new instance.
    let (stop, task) = start_agent(&h, "phoenix", PoolType::Mobile, &[], None).await;
    let t = wait_state(&h, &id, "completed").await;
    assert_eq!(t["attempt"], 2);
    assert_eq!(t["agentId"], "phoenix");
    assert!(
        h.metric(r#"fleet_tasks_orphaned_total{reason="agent_restarted"}"#)
            .await
            >= 1.0
    );
    let (_, a) = h.get(&api::path(api::AGENT, "phoenix")).await;
    assert_eq!(a["health"]["failures"], 0, "never declared failed: {a}");
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_takes_turns_where_priority_keeps_the_best_agent() {
    use fleet_commander::config::Strategy;
    let h = Harness::start_with(|c| {
        c.pools.get_mut(&PoolType::Reviewer).unwrap().strategy = Strategy::RoundRobin;
        c.pools.get_mut(&PoolType::Researcher).unwrap().strategy = Strategy::Priority;
    })
    .await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut running = Vec::new();
    for (name, pool) in [
        ("rr-a", PoolType::Reviewer),
        ("rr-b", PoolType::Reviewer),
        ("pr-a", PoolType::Researcher),
        ("pr-b", PoolType::Researcher),
    ] {
        running.push(start_agent(&h, name, pool, &[], Some(recorder(name, &log, false))).await);
    }
    let who = sequential(&h, "reviewer", 6, &log).await;
    let a = who.iter().filter(|w| *w == "rr-a").count();
    assert_eq!(
        (a, who.len() - a),
        (3, 3),
        "round robin alternates: {who:?}"
    );
    log.lock().unwrap().clear();
    let who = sequential(&h, "researcher", 6, &log).await;
    let distinct: std::collections::HashSet<_> = who.iter().collect();
    assert_eq!(
        distinct.len(),
        1,
        "priority keeps to one equally good agent: {who:?}"
    );

    // Fairness figures: 3/3 is balanced, 6/0 is a strong imbalance (skew 6).
    let rr = h.pool("reviewer").await["fairness"].clone();
    assert_eq!(rr["label"], "balanced", "{rr}");
    assert_eq!(
        (rr["skewRatio"].as_f64(), rr["tasksPerAgent"].as_f64()),
        (Some(1.0), Some(3.0))
    );
    let pr = h.pool("researcher").await["fairness"].clone();
    assert_eq!(pr["label"], "strong_imbalance", "{pr}");
    assert_eq!(pr["skewRatio"].as_f64(), Some(6.0));
    for (s, t) in running {
        s.cancel();
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn performance_strategy_stops_choosing_an_agent_that_fails() {
    use fleet_commander::config::Strategy;
    let h = Harness::start_with(|c| {
        c.pools.get_mut(&PoolType::Optimizer).unwrap().strategy = Strategy::Performance;
        c.tasks.retry_backoff_ms = 10;
    })
    .await;
    let log = Arc::new(Mutex::new(Vec::new()));
    // "opt-bad" sorts first, so it gets the first task; it fails it.
    let bad = start_agent(
        &h,
        "opt-bad",
        PoolType::Optimizer,
        &[],
        Some(recorder("opt-bad", &log, true)),
    )
    .await;
    let good = start_agent(
        &h,
        "opt-good",
        PoolType::Optimizer,
        &[],
        Some(recorder("opt-good", &log, false)),
    )
    .await;
    let who = sequential(&h, "optimizer", 5, &log).await;
    let bad_attempts = who.iter().filter(|w| *w == "opt-bad").count();
    assert!(
        bad_attempts <= 1,
        "a failing agent is not chosen again: {who:?}"
    );
    assert_eq!(who.iter().filter(|w| *w == "opt-good").count(), 5);
    let mut events = h.listen(&h.keys.channels().allocation()).await;
    let id = submit(&h, json!({"pool": "optimizer"})).await;
    let ev = events
        .wait_for("task_assigned", |v| {
            v["type"] == "task_assigned" && v["taskId"] == id.as_str()
        })
        .await;
    assert_eq!(ev["strategy"], "performance");
    for (s, t) in [bad, good] {
        s.cancel();
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_is_quarantined_then_earns_its_way_back() {
    let h = Harness::start_with(|c| {
        c.tasks.quarantine_ms = 300;
        c.tasks.retry_backoff_ms = 10;
    })
    .await;
    let mut health = h.listen(&h.keys.channels().health()).await;
    let mut alloc = h.listen(&h.keys.channels().allocation()).await;
    let ok = Arc::new(AtomicBool::new(false));
    let o = ok.clone();
    let w = work(move |_a: Assignment| {
        let ok = o.load(Ordering::SeqCst);
        async move {
            if ok {
                Outcome::Complete(Value::Null)
            } else {
                mute().await
            }
        }
    });
    let spec = fleet_agent::AgentSpec {
        id: "flaky".into(),
        pool: PoolType::Security,
        priority: None,
        capabilities: vec![],
        resources: Default::default(),
        capacity: 2,
    };
    let (stop, task) = start_agent_with(&h, spec, Some(w)).await;

    // Three attempts that time out (no result within 300 ms): 100 - 3 x 20
    // = 40, below the line of 50.
    for _ in 0..3 {
        let id = submit(
            &h,
            json!({"pool": "security", "maxRetries": 0, "timeoutMs": 300}),
        )
        .await;
        let t = wait_state(&h, &id, "dead").await;
        assert_eq!(t["attempts"][0]["outcome"], "timed_out", "{t}");
    }
    let q = health
        .wait_for("agent_quarantined", |v| v["type"] == "agent_quarantined")
        .await;
    assert_eq!(
        (q["agentId"].as_str(), q["health"].as_u64()),
        (Some("flaky"), Some(40))
    );
    let until = q["until"].as_u64().unwrap();
    let (_, a) = h.get(&api::path(api::AGENT, "flaky")).await;
    assert_eq!(a["health"]["quarantinedUntil"].as_u64(), Some(until), "{a}");

    // Quarantined: a new task waits for the period to end, not a moment less.
    ok.store(true, Ordering::SeqCst);
    let first = submit(&h, json!({"pool": "security"})).await;
    let second = submit(&h, json!({"pool": "security"})).await;
    health
        .wait_for("agent_probation", |v| {
            v["type"] == "agent_probation" && v["agentId"] == "flaky"
        })
        .await;
    let assigned = alloc
        .wait_for("task_assigned", |v| {
            v["type"] == "task_assigned" && v["taskId"] == first.as_str()
        })
        .await;
    assert!(
        assigned["ts"].as_u64().unwrap() >= until,
        "{assigned} before {until}"
    );
    wait_state(&h, &first, "completed").await;
    wait_state(&h, &second, "completed").await;
    let evidence = h.get(&api::path(api::TASK_EVIDENCE, &second)).await.1;
    assert_eq!(evidence.as_array().map(Vec::len), Some(1), "{evidence}");

    // On probation (health 50, one task at a time) until health reaches 70:
    // two successes so far (60), two more free it.
    let (_, a) = h.get(&api::path(api::AGENT, "flaky")).await;
    assert_eq!(
        (
            a["health"]["score"].as_u64(),
            a["health"]["probation"].as_bool()
        ),
        (Some(60), Some(true)),
        "{a}"
    );
    for _ in 0..2 {
        let id = submit(&h, json!({"pool": "security"})).await;
        wait_state(&h, &id, "completed").await;
    }
    let (_, a) = h.get(&api::path(api::AGENT, "flaky")).await;
    assert_eq!(
        (
            a["health"]["score"].as_u64(),
            a["health"]["probation"].as_bool()
        ),
        (Some(70), Some(false)),
        "{a}"
    );
    assert_eq!(a["health"]["quarantinedUntil"], 0);
    wait_until(|| async { h.metric("fleet_agent_probations_total").await >= 1.0 }).await;
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probation_takes_one_task_at_a_time_and_a_failure_sends_it_back() {
    let h = Harness::start_with(|c| c.tasks.quarantine_ms = 200).await;
    let mut health = h.listen(&h.keys.channels().health()).await;
    // Work that never answers a task whose payload says "mute" (it times
    // out), and holds any other until the test lets it complete.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let w = work(move |a: Assignment| {
        let rx = rx.clone();
        async move {
            if a.payload == "mute" {
                return mute().await;
            }
            rx.lock().await.recv().await;
            Outcome::Complete(Value::Null)
        }
    });
    let spec = fleet_agent::AgentSpec {
        id: "probe".into(),
        pool: PoolType::Coordinator,
        priority: None,
        capabilities: vec![],
        resources: Default::default(),
        capacity: 3,
    };
    let (stop, task) = start_agent_with(&h, spec, Some(w)).await;
    // Put it straight into quarantine: health just above the line, one
    // attempt that times out.
    let mut c = h.conn().await;
    let _: () = redis::cmd("HSET")
        .arg(h.keys.agent("probe"))
        .arg("health")
        .arg(55)
        .query_async(&mut c)
        .await
        .unwrap();
    let id = submit(
        &h,
        json!({"pool": "coordinator", "maxRetries": 0, "timeoutMs": 300, "payload": "mute"}),
    )
    .await;
    wait_state(&h, &id, "dead").await;
    let q = health
        .wait_for("agent_quarantined", |v| v["type"] == "agent_quarantined")
        .await;
    let first_period = q["until"].as_u64().unwrap() - q["ts"].as_u64().unwrap();
    health
        .wait_for("agent_probation", |v| v["type"] == "agent_probation")
        .await;

    // On probation with capacity 3: of three tasks, one runs, two wait.
    // The first times out, but not before the test has looked (1 s).
    let mut alloc = h.listen(&h.keys.channels().allocation()).await;
    let ids = [
        submit(
            &h,
            json!({"pool": "coordinator", "maxRetries": 0, "timeoutMs": 1000, "payload": "mute"}),
        )
        .await,
        submit(&h, json!({"pool": "coordinator"})).await,
        submit(&h, json!({"pool": "coordinator"})).await,
    ];
    alloc
        .wait_for("an assignment", |v| v["type"] == "task_assigned")
        .await;
    let more = alloc
        .collect_for(Duration::from_millis(300), |v| v["type"] == "task_assigned")
        .await;
    assert!(more.is_empty(), "probation is one at a time: {more:?}");
    let running = {
        let mut n = 0;
        for id in &ids {
            if h.get(&api::path(api::TASK, id)).await.1["state"] != "queued" {
                n += 1;
            }
        }
        n
    };
    assert_eq!(running, 1);

    // A timed-out attempt on probation: back to quarantine, twice as long.
    let q = health
        .wait_for("second quarantine", |v| v["type"] == "agent_quarantined")
        .await;
    let second_period = q["until"].as_u64().unwrap() - q["ts"].as_u64().unwrap();
    assert_eq!(second_period, 2 * first_period);
    let (_, a) = h.get(&api::path(api::AGENT, "probe")).await;
    assert_eq!(a["health"]["probation"], false, "{a}");
    // After it, the waiting tasks run (one at a time) and complete.
    for _ in 0..2 {
        tx.send(()).unwrap();
    }
    for id in &ids[1..] {
        wait_state(&h, id, "completed").await;
    }
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_task_stops_it_and_frees_the_agent() {
    let h = Harness::start().await;
    let started = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(AtomicBool::new(false));
    let (s, st) = (started.clone(), stopped.clone());
    // The first task hangs; dropping its future (the cancel) is recorded.
    struct OnDrop(Arc<AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let w = work(move |a: Assignment| {
        let (s, guard) = (s.clone(), OnDrop(st.clone()));
        async move {
            if a.payload == "hang" {
                s.notify_one();
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            std::mem::forget(guard);
            Outcome::Complete(json!("done"))
        }
    });
    let (stop, task) = start_agent(&h, "canceller", PoolType::Ui, &[], Some(w)).await;
    let id = submit(&h, json!({"pool": "ui", "payload": "hang"})).await;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the task started");
    let r = h
        .http
        .post(format!("{}/v1/tasks/{id}/cancel", h.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let t = wait_state(&h, &id, "cancelled").await;
    assert_eq!(t["agentId"], Value::Null, "{t}");
    wait_until(|| async { stopped.load(Ordering::SeqCst) }).await;
    // The agent's slot is free at once: the next task runs on it.
    let next = submit(&h, json!({"pool": "ui", "payload": "quick"})).await;
    let t = wait_state(&h, &next, "completed").await;
    assert_eq!(t["agentId"], "canceller");
    // A cancelled task cannot be cancelled again.
    let r = h
        .http
        .post(format!("{}/v1/tasks/{id}/cancel", h.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    stop.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_agents_never_quarantine_more_than_the_pools_cap() {
    // Four agents that never answer (every attempt times out); quarantine
    // lasts far longer than the test; at most half of the pool (2 of 4)
    // may be out at once.
    let h = Harness::start_with(|c| {
        c.tasks.quarantine_ms = 600_000;
        c.tasks.quarantine_max_percent = 50;
    })
    .await;
    let mut running = Vec::new();
    for i in 0..4 {
        let spec = fleet_agent::AgentSpec {
            id: format!("cap-{i}"),
            pool: PoolType::Database,
            priority: None,
            capabilities: vec![],
            resources: Default::default(),
            capacity: 1,
        };
        let w = work(|_a: Assignment| mute());
        running.push(start_agent_with(&h, spec, Some(w)).await);
    }
    let agent = |i: usize| {
        let h = &h;
        async move { h.get(&format!("/v1/agents/cap-{i}")).await.1 }
    };
    // Tasks, one at a time, until three agents' health is below the line
    // (the pool's strategy keeps choosing the same one of those left): each
    // still finds an agent (it would wait 10 minutes otherwise).
    let mut tasks = 0;
    loop {
        let mut below = 0;
        for i in 0..4 {
            below += usize::from(agent(i).await["health"]["score"].as_u64().unwrap() < 50);
        }
        if below >= 3 {
            break;
        }
        assert!(
            tasks < 40,
            "40 failures and not three agents below the line"
        );
        let id = submit(
            &h,
            json!({"pool": "database", "maxRetries": 0, "timeoutMs": 200}),
        )
        .await;
        wait_state(&h, &id, "dead").await;
        tasks += 1;
    }
    let now = fleet_protocol::now_ms();
    let mut quarantined = 0;
    for i in 0..4 {
        quarantined += usize::from(
            agent(i).await["health"]["quarantinedUntil"]
                .as_u64()
                .unwrap()
                > now,
        );
    }
    assert_eq!(quarantined, 2, "half of the pool, after {tasks} failures");
    // The other two keep the pool in service: a new task is still tried
    // (within the 10 s wait, where a quarantined pool would take 10 minutes).
    let id = submit(
        &h,
        json!({"pool": "database", "maxRetries": 0, "timeoutMs": 200}),
    )
    .await;
    wait_state(&h, &id, "dead").await;
    println!(
        "FIGURES quarantine cap: 4 mute agents, {tasks} failures, 2 quarantined, pool still served"
    );
    for (s, task) in running {
        s.cancel();
        let _ = task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_after_redis_forgot_the_scripts_is_kept_and_served() {
    let h = Harness::start().await;
    let w = work(|_: Assignment| async move { Outcome::Complete(json!("done")) });
    let (stop, task) = start_agent(&h, "w-1", PoolType::Coder, &[], Some(w)).await;
    // As after a Redis restart: submission and allocation go out in one
    // pipeline of FCALLs, which now fail: no such function.
    let mut c = h.conn().await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let id = submit(&h, json!({"pool": "coder", "payload": 1})).await;
    let t = wait_state(&h, &id, "completed").await;
    assert_eq!(t["agentId"], "w-1");
    assert_eq!(t["result"], json!("done"));
    stop.cancel();
    let _ = task.await;
}

/// Work that never answers: its attempt runs until its lease runs out (the
/// agent's failure, unlike a reported one) and the commander cancels it.
async fn mute() -> Outcome {
    std::future::pending().await
}

/// A retry goes to another agent than the attempt that failed when one can
/// take it, and the evidence says so and how many agents were available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_another_agent_when_one_is_free() {
    let h = Harness::start_with(|c| {
        c.tasks.retry_backoff_ms = 20;
        c.tasks.retry_backoff_max_ms = 40;
    })
    .await;
    // Both agents fail the first two attempts and complete the third.
    let w = || {
        work(|a: Assignment| async move {
            if a.attempt < 3 {
                Outcome::Fail(format!("attempt {} failed", a.attempt))
            } else {
                Outcome::Complete(json!("done"))
            }
        })
    };
    let (s1, t1) = start_agent(&h, "re-1", PoolType::Analyst, &[], Some(w())).await;
    let (s2, t2) = start_agent(&h, "re-2", PoolType::Analyst, &[], Some(w())).await;
    let id = submit(&h, json!({"pool": "analyst", "maxRetries": 3})).await;
    let t = wait_state(&h, &id, "completed").await;
    let who: Vec<&str> = t["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agentId"].as_str().unwrap())
        .collect();
    assert_eq!(who.len(), 3, "{t}");
    assert_ne!(
        who[0], who[1],
        "the retry went to the agent that failed: {t}"
    );
    assert_ne!(
        who[1], who[2],
        "the retry went to the agent that failed: {t}"
    );
    // Completed: the earlier attempts' errors are in the history only.
    assert!(t.get("error").is_none(), "{t}");
    assert_eq!(t["attempts"][2]["outcome"], "completed", "{t}");
    let (_, ev) = h.get(&api::path(api::TASK_EVIDENCE, &id)).await;
    let reasons: Vec<&str> = ev
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons[0].contains("among 2 available agents"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains(&format!("a retry: not {}", who[0])),
        "{reasons:?}"
    );
    for (s, t) in [(s1, t1), (s2, t2)] {
        s.cancel();
        let _ = t.await;
    }
}
