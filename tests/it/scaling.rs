//! Pools that size themselves: the scaler with a spawner, against a real
//! commander and Redis. Prints the figures the README quotes.

use crate::common::*;
use fleet_agent::{Assignment, Outcome, Work};
use fleet_commander::config::{Config, ScalingPolicy};
use fleet_protocol::api;
use fleet_protocol::pool::PoolType;
use fleet_sim::spawner::{InProcess, Spawned};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Only `pools` scale; fast test-sized policy.
fn scaling_config(c: &mut Config, pools: &[(PoolType, u32, u32)]) {
    for pc in c.pools.values_mut() {
        pc.scaling_enabled = false;
    }
    for &(p, min, max) in pools {
        let pc = c.pools.get_mut(&p).unwrap();
        pc.scaling_enabled = true;
        pc.min_agents = min;
        pc.max_agents = max;
    }
    c.scaling = ScalingPolicy {
        sample_ms: 50,
        window_ms: 200,
        scale_up_utilization: 0.8,
        scale_up_queue_wait_ms: 300,
        scale_down_utilization: 0.3,
        up_cooldown_ms: 500,
        down_cooldown_ms: 800,
        max_step: 3,
        min_lifetime_ms: 0,
        request_timeout_ms: 5_000,
    };
}

/// The simulator's spawner: starts agents when the commander asks, each
/// doing `work`.
async fn spawner(h: &Harness, work: Work, stop: CancellationToken) -> Arc<Spawned> {
    InProcess {
        redis_url: h.redis.url(),
        keys: h.keys.channels().clone(),
        heartbeat: Duration::from_millis(100),
        work: Some(work),
        id_prefix: "spawned".into(),
        issuer: Some(test_issuer(h.keys.prefix())),
    }
    .start(stop)
    .await
    .unwrap()
}

fn sleepy(ms: u64) -> Work {
    work(move |_a: Assignment| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Outcome::Complete(Value::Null)
    })
}

async fn live(h: &Harness, pool: &str) -> u64 {
    let p = h.pool(pool).await;
    ["idle", "active", "busy"]
        .iter()
        .map(|s| p["byStatus"][s].as_u64().unwrap_or(0))
        .sum()
}

/// Direction changes must be at least a cooldown apart.
fn assert_no_flapping(events: &[Value], min_gap_ms: u64) -> usize {
    let mut changes = 0;
    for pair in events.windows(2) {
        if pair[0]["type"] != pair[1]["type"] {
            changes += 1;
            let gap = pair[1]["ts"].as_u64().unwrap() - pair[0]["ts"].as_u64().unwrap();
            assert!(
                gap >= min_gap_ms,
                "direction changed after {gap} ms: {events:?}"
            );
        }
    }
    changes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_demand_up_and_down_without_losing_a_task() {
    let h = Harness::start_with(|c| scaling_config(c, &[(PoolType::Tester, 1, 6)])).await;
    let mut scaling = h.listen(&h.keys.channels().scaling()).await;
    let stop = CancellationToken::new();
    spawner(&h, sleepy(150), stop.clone()).await;
    // Below its minimum of 1 at start: topped up.
    let first = scaling
        .wait_for("scale_up to the minimum", |v| v["type"] == "scale_up")
        .await;
    assert_eq!(
        (first["count"].as_u64(), first["reason"].as_str()),
        (Some(1), Some("below_min"))
    );
    wait_until(|| async { live(&h, "tester").await == 1 }).await;

    // A burst: 60 tasks of 150 ms on 1 agent. The pool grows to its max of 6.
    let step = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(submit(&h, json!({"pool": "tester"})).await);
    }
    let max_seen = AtomicU64::new(0);
    wait_until(|| async {
        let n = live(&h, "tester").await;
        max_seen.fetch_max(n, Ordering::AcqRel);
        n == 6
    })
    .await;
    let grow_ms = step.elapsed().as_millis();
    for id in &ids {
        wait_state(&h, id, "completed").await;
    }
    // Quiet: back to the minimum by draining, and nothing lost.
    let quiet = Instant::now();
    wait_until(|| async { live(&h, "tester").await == 1 }).await;
    let shrink_ms = quiet.elapsed().as_millis();
    let events = scaling
        .collect_for(Duration::from_millis(300), |v| {
            v["type"] == "scale_up" || v["type"] == "scale_down"
        })
        .await;
    let mut all = vec![first];
    all.extend(events);
    let ups = all.iter().filter(|v| v["type"] == "scale_up").count();
    let downs = all.iter().filter(|v| v["type"] == "scale_down").count();
    let changes = assert_no_flapping(&all, 500);
    for id in &ids {
        let (_, t) = h.get(&api::path(api::TASK, id)).await;
        assert_eq!(t["state"], "completed", "{t}");
        assert_eq!(t["attempt"], 1, "never taken from an agent: {t}");
    }
    assert!(max_seen.load(Ordering::Acquire) <= 6);
    assert_eq!(changes, 1, "up, then down: {all:?}");
    println!(
        "FIGURES ramp: 1 -> 6 agents in {grow_ms} ms ({ups} scale_up events incl. the top-up), \
         6 -> 1 in {shrink_ms} ms ({downs} scale_down events), tasks lost 0 of 60"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oscillating_load_changes_direction_at_most_once_per_cooldown() {
    let h = Harness::start_with(|c| scaling_config(c, &[(PoolType::Reviewer, 1, 5)])).await;
    let mut scaling = h.listen(&h.keys.channels().scaling()).await;
    let stop = CancellationToken::new();
    spawner(&h, sleepy(100), stop.clone()).await;
    wait_until(|| async { live(&h, "reviewer").await == 1 }).await;
    // Bursts every 250 ms, faster than either cooldown, for 3 s.
    let until = Instant::now() + Duration::from_secs(3);
    let mut ids = Vec::new();
    let mut on = true;
    while Instant::now() < until {
        if on {
            for _ in 0..8 {
                ids.push(submit(&h, json!({"pool": "reviewer"})).await);
            }
        }
        on = !on;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = live(&h, "reviewer").await;
        assert!((1..=5).contains(&n), "within bounds: {n}");
    }
    for id in &ids {
        wait_state(&h, id, "completed").await;
    }
    let events = scaling
        .collect_for(Duration::from_millis(200), |v| {
            v["type"] == "scale_up" || v["type"] == "scale_down"
        })
        .await;
    let changes = assert_no_flapping(&events, 500);
    println!(
        "FIGURES oscillating: {} scaling events, {changes} direction changes in 3 s of bursts every 250 ms",
        events.len()
    );
    stop.cancel();
}

/// No spawner runs: a pool below its minimum asks, nobody answers, and it
/// asks again ever later (the request timeout doubling) instead of at every
/// sample; the gauge counts the unanswered requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_spawner_unanswered_requests_back_off() {
    let h = Harness::start_with(|c| {
        scaling_config(c, &[(PoolType::Reviewer, 2, 6)]);
        c.scaling.request_timeout_ms = 200;
    })
    .await;
    let mut scaling = h.listen(&h.keys.channels().scaling()).await;
    let ups = scaling
        .collect_for(Duration::from_secs(4), |v| {
            v["type"] == "scale_up" && v["pool"] == "reviewer"
        })
        .await;
    // Asked at 0, then after 200 + 200, 400, 800, 1600 ms: 5 in 4 s (at
    // every 250 ms without the backoff: 16).
    assert!(
        (2..=6).contains(&ups.len()),
        "{} requests in 4 s: {ups:?}",
        ups.len()
    );
    let gaps: Vec<u64> = ups
        .windows(2)
        .map(|w| w[1]["ts"].as_u64().unwrap() - w[0]["ts"].as_u64().unwrap())
        .collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "each wait longer than the last: {gaps:?}"
    );
    let unanswered = h
        .metric(r#"fleet_scale_requests_unanswered{pool="reviewer"}"#)
        .await;
    assert!(unanswered >= 2.0, "gauge: {unanswered}");
    // An agent comes after all: answered, the gauge back to 0.
    let (stop, _) = start_agent(&h, "r-1", PoolType::Reviewer, &[], None).await;
    wait_until(|| async {
        h.metric(r#"fleet_scale_requests_unanswered{pool="reviewer"}"#)
            .await
            == 0.0
    })
    .await;
    stop.cancel();
}

/// A task that needs a capability no agent of its pool declares (the pool
/// declares none, so it is accepted) never grows the pool: it is announced
/// once as unschedulable and counted in the gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_nobody_in_the_pool_can_run_grows_nothing() {
    let h = Harness::start_with(|c| scaling_config(c, &[(PoolType::Tester, 1, 6)])).await;
    let (stop_t1, _) = start_agent(&h, "t-1", PoolType::Tester, &["rust"], None).await;
    wait_until(|| async { live(&h, "tester").await == 1 }).await;
    let mut scaling = h.listen(&h.keys.channels().scaling()).await;
    let id = submit(&h, json!({"pool": "tester", "capabilities": ["gpu"]})).await;
    // Queue wait 300 ms, window 200 ms, up cooldown 500 ms: without the
    // check the pool grows about every 500 ms.
    let seen = scaling
        .collect_for(Duration::from_secs(3), |v| v["pool"] == "tester")
        .await;
    let ups: Vec<_> = seen.iter().filter(|v| v["type"] == "scale_up").collect();
    assert!(ups.is_empty(), "grew for a task nobody can run: {ups:?}");
    let flagged: Vec<_> = seen
        .iter()
        .filter(|v| v["type"] == "unschedulable")
        .collect();
    assert_eq!(flagged.len(), 1, "announced once: {seen:?}");
    assert_eq!(flagged[0]["taskId"], id.as_str());
    assert_eq!(flagged[0]["capabilities"], json!(["gpu"]));
    assert_eq!(
        h.metric(r#"fleet_tasks_unschedulable{pool="tester"}"#)
            .await,
        1.0
    );
    assert_eq!(live(&h, "tester").await, 1);
    // Once an agent that has the capability joins, the task runs.
    let (stop, _) = start_agent(&h, "t-gpu", PoolType::Tester, &["gpu"], None).await;
    wait_state(&h, &id, "completed").await;
    wait_until(|| async {
        h.metric(r#"fleet_tasks_unschedulable{pool="tester"}"#)
            .await
            == 0.0
    })
    .await;
    stop.cancel();
    stop_t1.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimum_is_restored_after_agents_die() {
    let h = Harness::start_with(|c| scaling_config(c, &[(PoolType::Mobile, 2, 4)])).await;
    let stop = CancellationToken::new();
    let started = spawner(&h, sleepy(10), stop.clone()).await;
    wait_until(|| async { live(&h, "mobile").await == 2 }).await;
    // Both agents die at once (their processes stop without a word).
    stop.cancel();
    let stop = CancellationToken::new();
    let again = spawner(&h, sleepy(10), stop.clone()).await;
    // On a loaded machine a spawned agent may miss its 2 s registration
    // reply: the scaler then asks again after its request timeout (5 s).
    // One such round must fit in the bound.
    let bound = Duration::from_secs(25);
    wait_until_within(bound, || async { again.started() >= 2 }).await;
    wait_until_within(bound, || async { live(&h, "mobile").await == 2 }).await;
    assert_eq!(started.started(), 2);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_cap_goes_to_the_higher_priority_pool() {
    let h = Harness::start_with(|c| {
        scaling_config(c, &[(PoolType::Coder, 0, 6), (PoolType::Ui, 0, 6)]);
        for pc in c.pools.values_mut() {
            pc.min_agents = 0;
        }
        c.fleet.max_agents = 4;
    })
    .await;
    assert!(
        h.config.pool(PoolType::Coder).priority_level > h.config.pool(PoolType::Ui).priority_level
    );
    let stop = CancellationToken::new();
    spawner(&h, sleepy(60_000), stop.clone()).await;
    for _ in 0..10 {
        submit(&h, json!({"pool": "coder"})).await;
        submit(&h, json!({"pool": "ui"})).await;
    }
    wait_until(|| async { live(&h, "coder").await + live(&h, "ui").await == 4 }).await;
    // Several cooldowns later, still within the cap, coder first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (coder, ui) = (live(&h, "coder").await, live(&h, "ui").await);
    assert_eq!((coder, ui), (3, 1), "max_step 3 to coder, the rest to ui");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_drain_finishes_the_work_then_the_agent_leaves() {
    let h = Harness::start().await;
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    let w = work(move |_a: Assignment| {
        let s = s.clone();
        async move {
            s.notify_one();
            tokio::time::sleep(Duration::from_millis(400)).await;
            Outcome::Complete(json!("finished"))
        }
    });
    let (_stop, task) = start_agent(&h, "retiree", PoolType::Devops, &[], Some(w)).await;
    let id = submit(&h, json!({"pool": "devops"})).await;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .unwrap();
    let r = h
        .http
        .post(format!("{}/v1/agents/retiree/drain", h.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, a) = h.get(&api::path(api::AGENT, "retiree")).await;
    assert_eq!(a["draining"], true, "{a}");
    // Draining: a new task waits rather than go to it.
    let other = submit(&h, json!({"pool": "devops"})).await;
    let t = wait_state(&h, &id, "completed").await;
    assert_eq!(t["result"], "finished");
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the agent stops")
        .unwrap();
    let (code, _) = h.get(&api::path(api::AGENT, "retiree")).await;
    assert_eq!(code, 404, "deregistered");
    let (_, t) = h.get(&api::path(api::TASK, &other)).await;
    assert_eq!(t["state"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_config_is_applied_live_and_an_invalid_one_changes_nothing() {
    let dir = tempdir();
    let path = dir.join("fleet.toml");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml")).unwrap();
    std::fs::write(&path, &shipped).unwrap();
    let p = path.clone();
    let h = Harness::start_with(move |c| c.source = Some(p)).await;
    let (_stop, task) = start_agent(&h, "stayer", PoolType::Reviewer, &[], None).await;
    let edited = shipped.replacen(
        "[pools.reviewer]\nmin_agents = 2\nmax_agents = 80",
        "[pools.reviewer]\nstrategy = \"round_robin\"\nmin_agents = 2\nmax_agents = 40",
        1,
    );
    assert_ne!(edited, shipped, "the edit applies to the shipped file");
    std::fs::write(&path, &edited).unwrap();
    wait_until(|| async { h.pool("reviewer").await["maxAgents"] == 40 }).await;
    assert_eq!(h.pool("reviewer").await["strategy"], "round_robin");
    assert_eq!(
        h.get(&api::path(api::AGENT, "stayer")).await.0,
        200,
        "agents stay"
    );
    let id = submit(&h, json!({"pool": "reviewer"})).await;
    let ev = wait_state(&h, &id, "completed").await;
    assert_eq!(ev["agentId"], "stayer");

    // An invalid edit: refused, counted, and the running config stays.
    let before = h
        .metric(r#"fleet_config_reloads_total{result="rejected"}"#)
        .await;
    std::fs::write(
        &path,
        edited.replacen("max_agents = 40", "max_agents = 0", 1),
    )
    .unwrap();
    wait_until(|| async {
        h.metric(r#"fleet_config_reloads_total{result="rejected"}"#)
            .await
            > before
    })
    .await;
    assert_eq!(h.pool("reviewer").await["maxAgents"], 40);
    drop(task);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fc-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The demo's scenario (`fleet-commander sim --ramp`): the report it prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ramp_scenario_grows_shrinks_and_reports_no_loss() {
    let h = Harness::start_with(|c| scaling_config(c, &[(PoolType::Coder, 2, 8)])).await;
    let ramp = fleet_sim::ramp::prepare(
        fleet_sim::ramp::RampOptions {
            redis_url: h.redis.url(),
            prefix: h.config.fleet.prefix.clone(),
            commander_url: h.base(),
            pool: PoolType::Coder,
            heartbeat: Duration::from_millis(100),
            work: Duration::from_millis(150),
            rate: 40.0,
            burst: Duration::from_secs(2),
            phase_timeout: WAIT,
            progress: false,
            issuer: Some(test_issuer("swarm:phase-1")),
            http_token: Some(h.token.clone()),
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let r = ramp.run().await.unwrap();
    assert_eq!(r.start_size, 2, "{r:?}");
    assert!(r.peak_size > 2 && r.peak_size <= 8, "{r:?}");
    assert!(r.within_bounds, "{r:?}");
    assert!(r.scale_up_events >= 1 && r.scale_down_events >= 1, "{r:?}");
    assert!(r.shrink_ms.is_some(), "back at the minimum: {r:?}");
    assert!(r.tasks_submitted >= 40, "{r:?}");
    assert_eq!(r.tasks_lost, 0, "{r:?}");
    assert_eq!(r.tasks_completed, r.tasks_submitted);
    assert!(r.agents_drained >= r.peak_size - 2, "{r:?}");
    println!(
        "FIGURES ramp scenario: 2 -> {} agents in {:.0} ms ({} scale_up), back to 2 in {:.0} ms ({} scale_down), {} tasks, 0 lost",
        r.peak_size,
        r.grow_ms,
        r.scale_up_events,
        r.shrink_ms.unwrap(),
        r.scale_down_events,
        r.tasks_submitted
    );
}

/// `fleet-commander sim --spawner`: demand in a scaling pool makes the
/// commander ask for agents, which the simulator starts and which take the
/// sim's tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_spawns_the_agents_the_commander_asks_for() {
    let _heavy = heavy().await;
    let h = Harness::start_with(|c| scaling_config(c, &[(PoolType::Mobile, 0, 4)])).await;
    let mut scaling = h.listen(&h.keys.channels().scaling()).await;
    let report = fleet_sim::sim::run(
        fleet_sim::sim::SimOptions {
            subscribers: 0,
            redis_url: h.redis.url(),
            prefix: h.config.fleet.prefix.clone(),
            commander_url: Some(h.base()),
            agents: 16,
            batch: 16,
            join_rate: None,
            heartbeat: h.config.heartbeat_interval(),
            failure_window: h.config.failure_window(),
            stop: 0,
            status_queries: 1,
            hold: Duration::ZERO,
            deregister_at_end: true,
            pools: PoolType::ALL.iter().map(|p| (*p, 1)).collect(),
            progress: false,
            tasks: fleet_sim::sim::TaskLoad {
                count: 96, // 6 per pool, one agent each
                work: Duration::from_millis(300),
                ..Default::default()
            },
            spawner: true,
            churn_per_sec: 0.0,
            commander_pid: None,
            issuer: Some(test_issuer("swarm:phase-1")),
            http_token: Some(h.token.clone()),
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let ups: u64 = scaling
        .collect_for(Duration::from_millis(100), |v| {
            v["type"] == "scale_up" && v["pool"] == "mobile"
        })
        .await
        .iter()
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    let tasks = report.tasks.as_ref().unwrap();
    assert_eq!(tasks.completed, 96, "{report:?}");
    assert!(ups >= 1, "mobile was busy and queued: {report:?}");
    assert!(
        report.spawned >= 1 && report.spawned <= ups,
        "{} spawned for {ups} requested",
        report.spawned
    );
    assert_eq!(report.false_deaths, 0);
}

/// The real binary with the shipped config, no spawner anywhere and a task
/// that no agent of its pool can run: once started it logs next to nothing
/// (here with the scaler's request timeout and window at 1 s, 30 and 10
/// times quicker than shipped, so 6 s stand for minutes), every line it
/// writes to a pipe is plain JSON, and no pool is asked to grow for the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commander_without_a_spawner_stays_quiet() {
    use tokio::io::AsyncBufReadExt;
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let addr = free_addr();
    let config = process_config_with(
        "quiet",
        &[
            ("sample_ms = 1000 ", "sample_ms = 100  "),
            ("window_ms = 10000 ", "window_ms = 1000  "),
            ("request_timeout_ms = 30000", "request_timeout_ms = 1000 "),
        ],
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-commander"))
        .arg("--config")
        .arg(&config)
        .args(["run", "--log-format", "json"])
        .env("REDIS_URL", redis.url())
        .env("FLEET_HTTP_ADDR", &addr)
        .env("FLEET_COMMANDER_KEY", test_commander_key())
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("commander binary starts");
    let lines = Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let mut reader = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = reader.next_line().await {
            sink.lock().unwrap().push((Instant::now(), l));
        }
    });
    wait_leader(&addr).await;
    let http = authed(&admin_token(&redis.url()).await);
    let id = submit_to(
        &http,
        &format!("http://{addr}"),
        json!({"pool": "coder", "capabilities": ["gpu"]}),
    )
    .await;
    // Start-up: the first requests (one line per pool), their timeout (one
    // line for all), the unschedulable task (one line).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let all = lines.lock().unwrap().clone();
    let after: Vec<&String> = all
        .iter()
        .filter(|(at, _)| *at >= settled)
        .map(|(_, l)| l)
        .collect();
    assert!(
        after.len() < 10,
        "{} lines in 6 s once started: {after:#?}",
        after.len()
    );
    for (_, l) in &all {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(!l.contains('\u{1b}'), "colour codes in a pipe: {l}");
        // A key twice in one object (e.g. a span's name and a field
        // called name) would be lost by most JSON readers.
        let spans = v["spans"].as_array().cloned().unwrap_or_default();
        for s in spans.iter().chain(std::iter::once(&v["span"])) {
            let text = s.to_string();
            assert_eq!(
                text.matches("\"name\"").count(),
                usize::from(s.is_object()),
                "{l}"
            );
        }
    }
    assert!(
        all.iter()
            .any(|(_, l)| l.contains("unschedulable") && l.contains(&id)),
        "the unschedulable task is logged once: {all:#?}"
    );
    let (_, scaling) = {
        let r = http
            .get(format!("http://{addr}/v1/scaling?limit=500"))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    let grown: Vec<&Value> = scaling
        .as_array()
        .or_else(|| scaling["items"].as_array())
        .expect("a list of decisions")
        .iter()
        .filter(|d| d["pool"] == "coder" && d["reason"] != "below_min")
        .collect();
    assert!(grown.is_empty(), "coder grew for the task: {grown:?}");
}
