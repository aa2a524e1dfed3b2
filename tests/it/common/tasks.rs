//! Helpers for tests that run tasks: agents doing given work, submission
//! over HTTP, waiting for a task's state.

use super::*;
use fleet_agent::{Agent, AgentSpec, Assignment, Outcome, Work};
use fleet_protocol::api;
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

/// Submits a task to the commander whose HTTP API is at `base`; its id. A
/// 503 (a term changing hands, Redis slow on a busy machine) is retried as
/// its `Retry-After` says a client should, within [`WAIT`].
pub async fn submit_to(http: &reqwest::Client, base: &str, body: Value) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = http
            .post(format!("{base}/v1/tasks"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status == 503 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "{v}");
        return v["task"]["id"].as_str().unwrap().to_string();
    }
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
    let path = api::path(api::TASK, id);
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            if h.get(&path).await.1["state"] == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let task = h.get(&path).await.1;
    assert!(
        reached.is_ok(),
        "task {id} not {state} within {WAIT:?}: {task}"
    );
    task
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

/// Agents of `pool` (one task at a time, heartbeats every 500 ms) run by
/// this test against the Redis at `redis_url`, each task taking `work`;
/// every execution is counted by task id.
pub struct Workers {
    pub executions: Arc<Mutex<HashMap<String, u32>>>,
    stop: CancellationToken,
    agents: tokio::task::JoinSet<()>,
}

impl Workers {
    pub async fn start(
        redis_url: &str,
        prefix: &str,
        n: usize,
        pool: PoolType,
        work: Duration,
    ) -> Workers {
        let client = fleet_store::connection::client(redis_url).unwrap();
        let keys = Keys::new(prefix);
        let executions: Arc<Mutex<HashMap<String, u32>>> = Default::default();
        let stop = CancellationToken::new();
        let mut agents = tokio::task::JoinSet::new();
        for i in 0..n {
            let ex = executions.clone();
            let w: Work = Arc::new(move |a: Assignment| {
                let ex = ex.clone();
                Box::pin(async move {
                    tokio::time::sleep(work).await;
                    *ex.lock().unwrap().entry(a.task_id.clone()).or_default() += 1;
                    Outcome::Complete(json!({"by": a.attempt}))
                })
            });
            let id = format!("{}-{i}", pool.as_str());
            let publisher = fleet_store::connection::connect(redis_url).await.unwrap();
            let mut a =
                Agent::connect(&client, publisher, keys.channels().clone(), spec(&id, pool))
                    .await
                    .unwrap()
                    .with_credential(&credential(redis_url, &id, pool).await);
            a.register(T).await.unwrap();
            let s = stop.clone();
            agents.spawn(async move {
                a.run_with(Duration::from_millis(500), Duration::ZERO, s, Some(w))
                    .await;
            });
        }
        Workers {
            executions,
            stop,
            agents,
        }
    }

    /// Tasks executed at least once.
    pub fn executed(&self) -> usize {
        self.executions.lock().unwrap().len()
    }

    /// Tasks executed more than once, with how often.
    pub fn again(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self
            .executions
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (id.clone(), *n))
            .collect();
        v.sort();
        v
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.agents.join_next().await.is_some() {}
    }
}

/// Waits (up to `within`) until every task of `ids` is completed in Redis.
pub async fn all_completed(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    ids: &[String],
    within: Duration,
) -> bool {
    tokio::time::timeout(within, async {
        loop {
            let mut p = redis::pipe();
            for id in ids {
                p.hget(keys.task(id), "state");
            }
            // A read may fail once while its connection follows a failover
            // (the connection reconnects by itself): read again.
            let states: Option<Vec<Option<String>>> = p.query_async(conn).await.ok();
            if states.is_some_and(|s| s.iter().all(|s| s.as_deref() == Some("completed"))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok()
}

/// How many `task_completed` events each task of `ids` had.
pub fn completions_per_task(events: &[Value]) -> HashMap<String, u32> {
    let mut per_task: HashMap<String, u32> = HashMap::new();
    for c in events.iter().filter(|v| v["type"] == "task_completed") {
        *per_task
            .entry(c["taskId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    per_task
}
