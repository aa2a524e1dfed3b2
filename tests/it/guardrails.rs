//! Guardrails for autonomous agents (issue 18): stuck agents (heartbeating,
//! no progress), and poison tasks (a task that takes down every agent that
//! runs it), on a real redis-server.

use crate::common::*;
use fleet_agent::{Agent, Outcome};
use fleet_protocol::api;
use fleet_protocol::pool::{AgentStatus, PoolType};
use fleet_protocol::ToAgent;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A harness whose pools quarantine without a cap and hold a task as poison
/// after 2 casualties (the shipped default).
async fn harness() -> Harness {
    Harness::start_with(|c| {
        c.tasks.quarantine_max_percent = 100;
        c.tasks.poison_after = 2;
    })
    .await
}

/// An agent driven by hand: it takes one assignment, acknowledges it, then
/// heartbeats and reports progress every 100 ms with a step that rises
/// (`rising`) or stays at 1, and completes after `finish_after` reports if
/// given. Returns when cancelled or done.
async fn stepper(
    mut a: Agent,
    rising: bool,
    finish_after: Option<u64>,
    stop: CancellationToken,
) -> Agent {
    a.register(T).await.unwrap();
    let mut held: Option<(String, u32)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut step = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return a,
            m = a.recv() => match m {
                ToAgent::TaskAssign { task_id, attempt, .. } if held.is_none() => {
                    a.ack(&task_id, attempt).await.unwrap();
                    held = Some((task_id, attempt));
                }
                ToAgent::TaskCancel { task_id, .. }
                    if held.as_ref().is_some_and(|(t, _)| *t == task_id) =>
                {
                    held = None;
                }
                _ => {}
            },
            _ = tick.tick() => {
                let status = if held.is_some() { AgentStatus::Busy } else { AgentStatus::Idle };
                a.heartbeat(status, 0.0).await.unwrap();
                if let Some((task, attempt)) = held.clone() {
                    if rising {
                        step += 1;
                    } else {
                        step = 1;
                    }
                    a.progress(&task, attempt, None, Some(step)).await.unwrap();
                    if finish_after.is_some_and(|n| step >= n) {
                        a.complete(&task, attempt, json!({"steps": step})).await.unwrap();
                        held = None;
                    }
                }
            }
        }
    }
}

fn stuck_event(agent: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == "agent_stuck" && v["agentId"] == agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_heartbeats_but_never_progresses_loses_the_task_and_is_flagged() {
    let h = harness().await;
    let mut health = h.listen(&h.keys.channels().health()).await;
    // It acknowledges (its work is long), then heartbeats and says nothing.
    let hang = work(|_| std::future::pending::<Outcome>());
    let (stop_stuck, stuck) = start_agent(&h, "hang-1", PoolType::Tester, &[], Some(hang)).await;
    let id = submit(
        &h,
        json!({"pool": "tester", "payload": {"n": 1}, "timeoutMs": 60000, "progressTimeoutMs": 500}),
    )
    .await;
    let running = wait_state(&h, &id, "running").await;
    assert_eq!(running["agentId"], "hang-1");
    let (stop_ok, ok) = start_agent(&h, "ok-1", PoolType::Tester, &[], None).await;

    let ev = health.wait_for("agent_stuck", stuck_event("hang-1")).await;
    assert_eq!(ev["taskId"], id.as_str());
    assert_eq!(ev["count"], 1);
    // Taken back long before its 60 s lease, and done by the other agent.
    let done = wait_state(&h, &id, "completed").await;
    assert_eq!(done["agentId"], "ok-1");
    assert_eq!(done["casualties"], 1);
    let (_, rec) = h.get(&api::path(api::AGENT, "hang-1")).await;
    assert_eq!(rec["health"]["stuck"], 1, "{rec}");
    assert!(rec["health"]["stuckAt"].as_u64().unwrap() > 0);
    assert!(
        rec["health"]["quarantinedUntil"].as_u64().unwrap() > fleet_protocol::now_ms(),
        "a stuck agent is quarantined: {rec}"
    );
    // (The metrics are process-wide: other tests of this file add to them.)
    wait_until(|| async { h.metric("fleet_agents_stuck_total").await >= 1.0 }).await;
    assert!(
        h.metric(r#"fleet_tasks_orphaned_total{reason="stuck"}"#)
            .await
            >= 1.0
    );
    stop_stuck.cancel();
    stop_ok.cancel();
    let _ = (stuck.await, ok.await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_step_is_not_progress_and_a_rising_one_is() {
    let h = harness().await;
    let mut health = h.listen(&h.keys.channels().health()).await;

    // Rising steps for 1.5 s, three times the progress timeout: never
    // stuck, and it completes its own task.
    let stop = CancellationToken::new();
    let a = h.agent("climb-1", PoolType::Tester).await;
    let climber = tokio::spawn(stepper(a, true, Some(15), stop.clone()));
    wait_until(|| async { h.get(&api::path(api::AGENT, "climb-1")).await.0 == 200 }).await;
    let id = submit(
        &h,
        json!({"pool": "tester", "payload": {}, "timeoutMs": 60000, "progressTimeoutMs": 500}),
    )
    .await;
    let done = wait_state(&h, &id, "completed").await;
    assert_eq!(done["agentId"], "climb-1");
    assert_eq!(done["casualties"], 0);
    assert!(health
        .collect_for(Duration::from_millis(300), stuck_event("climb-1"))
        .await
        .is_empty());
    stop.cancel();
    climber.await.unwrap();

    // The same agent repeating step 1 every 100 ms is stuck after 500 ms.
    let stop = CancellationToken::new();
    let a = h.agent("loop-1", PoolType::Reviewer).await;
    let looper = tokio::spawn(stepper(a, false, None, stop.clone()));
    wait_until(|| async { h.get(&api::path(api::AGENT, "loop-1")).await.0 == 200 }).await;
    let id = submit(
        &h,
        json!({"pool": "reviewer", "payload": {}, "timeoutMs": 60000, "progressTimeoutMs": 500}),
    )
    .await;
    let ev = health.wait_for("agent_stuck", stuck_event("loop-1")).await;
    assert_eq!(ev["taskId"], id.as_str());
    assert!(h.metric("fleet_task_progress_repeated_total").await >= 2.0);
    let (stop_ok, ok) = start_agent(&h, "ok-2", PoolType::Reviewer, &[], None).await;
    let done = wait_state(&h, &id, "completed").await;
    assert_eq!(done["agentId"], "ok-2");
    stop.cancel();
    stop_ok.cancel();
    let _ = (looper.await, ok.await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_its_agents_is_held_as_poison_after_two() {
    let h = harness().await;
    let lethal = Arc::new(AtomicBool::new(true));
    // Each agent "crashes" (goes silent, as a dead process) when it takes
    // the poison task while `lethal` holds.
    let mut agents = Vec::new();
    for id in ["pz-1", "pz-2", "pz-3"] {
        let stop = CancellationToken::new();
        let (die, lethal) = (stop.clone(), lethal.clone());
        let w = work(move |a| {
            let die = die.clone();
            let kill = a.payload["poison"] == true && lethal.load(Ordering::SeqCst);
            async move {
                if kill {
                    die.cancel();
                    std::future::pending::<()>().await;
                }
                Outcome::Complete(json!({"ok": true}))
            }
        });
        let mut a = h.agent_with(spec(id, PoolType::Analyst)).await;
        a.register(T).await.unwrap();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            a.run_with(Duration::from_millis(100), Duration::ZERO, s, Some(w))
                .await
        });
        agents.push((id, stop, task));
    }
    let id = submit(&h, json!({"pool": "analyst", "payload": {"poison": true}})).await;

    let held = wait_state(&h, &id, "poison").await;
    assert_eq!(held["casualties"], 2, "{held}");
    // Two agents died of it; the third never took it and still works.
    let dead: Vec<&str> = agents
        .iter()
        .filter(|(_, stop, _)| stop.is_cancelled())
        .map(|(id, _, _)| *id)
        .collect();
    assert_eq!(dead.len(), 2, "exactly two agents died: {dead:?}");
    let alive = agents
        .iter()
        .find(|(_, stop, _)| !stop.is_cancelled())
        .unwrap()
        .0;
    let other = submit(&h, json!({"pool": "analyst", "payload": {"n": 2}})).await;
    assert_eq!(wait_state(&h, &other, "completed").await["agentId"], alive);

    let (code, list) = h.get(api::POISON).await;
    assert_eq!(code, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    wait_until(|| async { h.metric("fleet_tasks_poisoned_total").await >= 1.0 }).await;
    wait_until(|| async { h.metric("fleet_poison_tasks").await >= 1.0 }).await;

    // Fixed: an operator requeues it and the surviving agent completes it.
    lethal.store(false, Ordering::SeqCst);
    let r = h
        .http
        .post(format!("{}/v1/poison/{id}/requeue", h.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let done = wait_state(&h, &id, "completed").await;
    assert_eq!(done["agentId"], alive);
    assert_eq!(done["casualties"], 0);
    // Only a poison task can be requeued from there.
    let r = h
        .http
        .post(format!("{}/v1/poison/{id}/requeue", h.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let (_, audit) = h.get(api::AUDIT).await;
    assert!(
        audit.to_string().contains("requeue_poison"),
        "the requeue is audited: {audit}"
    );
    for (_, stop, task) in agents {
        stop.cancel();
        let _ = task.await;
    }
}

/// An agent that heartbeats every 250 ms and dies (goes silent) the moment
/// it is given a task, before acknowledging it.
async fn doomed(mut a: Agent, died: CancellationToken) {
    a.register(T).await.unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            m = a.recv() => if let ToAgent::TaskAssign { .. } = m {
                died.cancel();
                return;
            },
            _ = tick.tick() => {
                let _ = a.heartbeat(AgentStatus::Idle, 0.0).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_agents_die_before_the_ack_still_takes_down_at_most_two() {
    // The ack lease (200 ms) runs out before an agent is found dead (1 s of
    // silence): the task waits out the failure window instead of going to
    // the next agent, and the deaths count against it.
    let h = Harness::start_with(|c| {
        c.tasks.ack_timeout_ms = 200;
        c.fleet.missed_heartbeats = 10;
        c.tasks.poison_after = 2;
    })
    .await;
    let mut deaths = Vec::new();
    let mut runs = Vec::new();
    for id in ["dz-1", "dz-2", "dz-3", "dz-4"] {
        let died = CancellationToken::new();
        let a = h.agent_with(spec(id, PoolType::Mobile)).await;
        runs.push(tokio::spawn(doomed(a, died.clone())));
        deaths.push(died);
    }
    wait_until(|| async { h.pool("mobile").await["currentAgents"] == 4 }).await;
    let id = submit(&h, json!({"pool": "mobile", "payload": {"poison": true}})).await;
    let held = wait_state(&h, &id, "poison").await;
    assert_eq!(held["casualties"], 2, "{held}");
    let dead = deaths.iter().filter(|d| d.is_cancelled()).count();
    assert_eq!(dead, 2, "the task reached exactly two agents");
    for r in runs {
        r.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_out_of_budget_is_halted_until_topped_up_and_max_cost_is_enforced() {
    let h = Harness::start_with(|c| {
        c.budgets.allowance = 10.0;
        c.budgets.min_balance = 1.0;
        c.budgets.window_ms = 0;
    })
    .await;
    let mut health = h.listen(&h.keys.channels().health()).await;
    // Every attempt consumes 4 units.
    let spend = work(|_| async { Outcome::Used(Box::new(Outcome::Complete(json!({}))), 4.0) });
    let (stop, agent) = start_agent(&h, "spend-1", PoolType::Ui, &[], Some(spend)).await;
    for _ in 0..3 {
        let id = submit(&h, json!({"pool": "ui", "payload": {}})).await;
        let done = wait_state(&h, &id, "completed").await;
        assert_eq!(done["usage"], 4.0);
    }
    // 10 - 12 = -2, below the minimum of 1: halted.
    let ev = health
        .wait_for("agent_halted", |v| {
            v["type"] == "agent_halted" && v["agentId"] == "spend-1"
        })
        .await;
    assert_eq!(ev["balance"], -2.0);
    let (_, rec) = h.get(&api::path(api::AGENT, "spend-1")).await;
    assert_eq!(rec["status"], "halted", "{rec}");
    let (_, b) = h.get(&api::path(api::AGENT_BUDGET, "spend-1")).await;
    assert_eq!(
        (b["balance"].as_f64(), b["spent"].as_f64()),
        (Some(-2.0), Some(12.0)),
        "{b}"
    );
    // It heartbeats on, and gets no work.
    let waiting = submit(&h, json!({"pool": "ui", "payload": {}})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, t) = h.get(&api::path(api::TASK, &waiting)).await;
    assert_eq!(t["state"], "queued", "{t}");
    let (_, rec) = h.get(&api::path(api::AGENT, "spend-1")).await;
    assert_eq!(rec["status"], "halted", "heartbeats keep it halted: {rec}");
    assert!(h.metric("fleet_agents_halted_total").await >= 1.0);

    // Topped up: it resumes and takes the waiting task.
    let r = h
        .http
        .post(format!("{}/v1/agents/spend-1/budget", h.base()))
        .json(&json!({"topUp": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["resumed"].as_bool(), v["balance"].as_f64()),
        (Some(true), Some(8.0)),
        "{v}"
    );
    health
        .wait_for("agent_resumed", |v| {
            v["type"] == "agent_resumed" && v["agentId"] == "spend-1"
        })
        .await;
    assert_eq!(
        wait_state(&h, &waiting, "completed").await["agentId"],
        "spend-1"
    );
    let (_, audit) = h.get(api::AUDIT).await;
    assert!(
        audit.to_string().contains("\"budget\""),
        "top-up audited: {audit}"
    );
    // Refused: two changes at once, and a negative amount.
    for bad in [json!({"topUp": 1, "reset": true}), json!({"topUp": -5})] {
        let r = h
            .http
            .post(format!("{}/v1/agents/spend-1/budget", h.base()))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 422, "{bad}");
    }

    // A task whose attempt costs more than its maxCost fails as over_budget.
    let id = submit(&h, json!({"pool": "ui", "payload": {}, "maxCost": 3})).await;
    let dead = wait_state(&h, &id, "dead").await;
    assert!(
        dead["error"].as_str().unwrap().starts_with("over_budget"),
        "{dead}"
    );
    wait_until(|| async { h.metric("fleet_tasks_over_budget_total").await >= 1.0 }).await;
    stop.cancel();
    let _ = agent.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_agent_resumes_when_its_budget_window_renews() {
    // Windows of 1.5 s: an agent halted in one works again in the next.
    let h = Harness::start_with(|c| {
        c.budgets.allowance = 5.0;
        c.budgets.min_balance = 1.0;
        c.budgets.window_ms = 1500;
    })
    .await;
    let mut health = h.listen(&h.keys.channels().health()).await;
    let spend = work(|_| async { Outcome::Used(Box::new(Outcome::Complete(json!({}))), 6.0) });
    let (stop, agent) = start_agent(&h, "window-1", PoolType::Ui, &[], Some(spend)).await;
    let id = submit(&h, json!({"pool": "ui", "payload": {}})).await;
    wait_state(&h, &id, "completed").await;
    let halted = health
        .wait_for("agent_halted", |v| {
            v["type"] == "agent_halted" && v["agentId"] == "window-1"
        })
        .await;
    let resumed = health
        .wait_for("agent_resumed", |v| {
            v["type"] == "agent_resumed" && v["agentId"] == "window-1"
        })
        .await;
    assert_eq!(resumed["balance"], 5.0, "a full allowance: {resumed}");
    let (_, b) = h.get(&api::path(api::AGENT_BUDGET, "window-1")).await;
    assert!(
        b["windowEnds"].as_u64().unwrap() > halted["ts"].as_u64().unwrap(),
        "a new window: {b}"
    );
    let id = submit(&h, json!({"pool": "ui", "payload": {}})).await;
    assert_eq!(
        wait_state(&h, &id, "completed").await["agentId"],
        "window-1"
    );
    stop.cancel();
    let _ = agent.await;
}
