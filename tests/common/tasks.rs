//! Helpers for tests that run tasks: agents doing given work, submission
//! over HTTP, waiting for a task's state.

use super::*;
use fleet_agent::{Agent, AgentSpec, Assignment, Outcome, Work};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

pub const T: Duration = Duration::from_secs(5);

pub fn work<F, Fut>(f: F) -> Work
where
    F: Fn(Assignment) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    Arc::new(move |a| Box::pin(f(a)))
}

/// Registers and runs an agent doing `w` until the token is cancelled.
pub async fn start_agent(
    h: &Harness,
    id: &str,
    pool: PoolType,
    caps: &[&str],
    w: Option<Work>,
) -> (CancellationToken, JoinHandle<Agent>) {
    let spec = AgentSpec {
        id: id.into(),
        pool,
        priority: None,
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        resources: Default::default(),
        capacity: 1,
    };
    start_agent_with(h, spec, w).await
}

/// Registers and runs an agent described by `spec`, doing `w`.
pub async fn start_agent_with(
    h: &Harness,
    spec: AgentSpec,
    w: Option<Work>,
) -> (CancellationToken, JoinHandle<Agent>) {
    let mut a = h.agent_with(spec).await;
    a.register(T).await.unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        a.run_with(Duration::from_millis(100), Duration::ZERO, s, w)
            .await;
        a
    });
    (stop, task)
}

pub async fn submit(h: &Harness, body: Value) -> String {
    submit_to(&h.http, &h.base(), body).await
}

/// Submits a task to the commander whose HTTP API is at `base`; its id.
pub async fn submit_to(http: &reqwest::Client, base: &str, body: Value) -> String {
    let r = http
        .post(format!("{base}/v1/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    v["task"]["id"].as_str().unwrap().to_string()
}

/// A task as the commander at `base` serves it, once it is in `state`.
pub async fn task_in_state(http: &reqwest::Client, base: &str, id: &str, state: &str) -> Value {
    let url = format!("{base}/v1/tasks/{id}");
    let get = || async {
        http.get(&url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    wait_until(|| async { get().await["state"] == state }).await;
    get().await
}

/// An agent of `pool` with no capabilities, one task at a time.
pub fn spec(id: &str, pool: PoolType) -> AgentSpec {
    AgentSpec {
        id: id.into(),
        pool,
        priority: None,
        capabilities: vec![],
        resources: Default::default(),
        capacity: 1,
    }
}

/// Runs examples/python_agent.py with a credential (written to a file) until
/// it has done `tasks` tasks; its output.
pub async fn python_example(
    url: &str,
    cred: &fleet_protocol::auth::Credential,
    tasks: u32,
) -> std::process::Output {
    let file =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.cred", cred.subject));
    std::fs::write(&file, serde_json::to_string(cred).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_agent.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .args([
            "--url",
            url,
            "--credential",
            file.to_str().unwrap(),
            "--tasks",
            &tasks.to_string(),
        ])
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("the python agent finishes")
        .expect("python3 runs (pip install redis cryptography)")
}

pub async fn wait_state(h: &Harness, id: &str, state: &str) -> Value {
    let path = format!("/v1/tasks/{id}");
    wait_until(|| async { h.get(&path).await.1["state"] == state }).await;
    h.get(&path).await.1
}

/// Runs `n` tasks one after another through a pool and returns who did each.
pub async fn sequential(
    h: &Harness,
    pool: &str,
    n: usize,
    log: &Arc<Mutex<Vec<String>>>,
) -> Vec<String> {
    for _ in 0..n {
        let id = submit(h, json!({"pool": pool, "maxRetries": 5})).await;
        wait_state(h, &id, "completed").await;
    }
    log.lock().unwrap().clone()
}

pub fn recorder(name: &str, log: &Arc<Mutex<Vec<String>>>, fail: bool) -> Work {
    let (name, log) = (name.to_string(), log.clone());
    work(move |_a: Assignment| {
        log.lock().unwrap().push(name.clone());
        let fail = fail;
        async move {
            if fail {
                Outcome::Fail("always".into())
            } else {
                Outcome::Complete(Value::Null)
            }
        }
    })
}
