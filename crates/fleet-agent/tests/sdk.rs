//! The Rust SDK's own behaviour, against a real `redis-server` and a
//! scripted commander (this file plays the commander's side of
//! docs/PROTOCOL.md, message by message, so each case is exact): a request
//! sent again when no reply comes, a message that arrives before the reply
//! kept for later, a cancelled task stopped, a drain finished and left.

use fleet_agent::{Agent, AgentSpec, Exit, Outcome, Work};
use fleet_protocol::agent::{AgentRecord, Health, Performance};
use fleet_protocol::{AgentStatus, Channels, PoolType, Resources, ToAgent};
use fleet_testkit::RedisServer;
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(15);

/// The commander's side: what agents publish, and a way to answer.
struct Commander {
    channels: Channels,
    conn: redis::aio::MultiplexedConnection,
    heard: mpsc::UnboundedReceiver<Value>,
}

impl Commander {
    async fn start(redis: &RedisServer, channels: &Channels) -> Commander {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut ps = client.get_async_pubsub().await.unwrap();
        for c in [channels.registry(), channels.health(), channels.results()] {
            ps.subscribe(c).await.unwrap();
        }
        let (tx, heard) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = ps.into_on_message();
            while let Some(m) = stream.next().await {
                if let Ok(v) = serde_json::from_slice::<Value>(m.get_payload_bytes()) {
                    let _ = tx.send(v);
                }
            }
        });
        Commander {
            channels: channels.clone(),
            conn: client.get_multiplexed_async_connection().await.unwrap(),
            heard,
        }
    }

    /// The next message of `kind` an agent sent (heartbeats and the rest
    /// skipped), within the bound.
    async fn next(&mut self, kind: &str) -> Value {
        let wait = async {
            loop {
                let m = self.heard.recv().await.expect("listening");
                if m["type"] == kind {
                    return m;
                }
            }
        };
        tokio::time::timeout(BOUND, wait)
            .await
            .unwrap_or_else(|_| panic!("no {kind} within {BOUND:?}"))
    }

    async fn tell(&mut self, agent_id: &str, msg: &ToAgent) {
        redis::cmd("PUBLISH")
            .arg(self.channels.agent(agent_id))
            .arg(serde_json::to_string(msg).unwrap())
            .query_async::<()>(&mut self.conn)
            .await
            .unwrap();
    }

    /// Accepts the registration `register`.
    async fn accept(&mut self, register: &Value) {
        let id = register["agentId"].as_str().unwrap().to_string();
        let reply = ToAgent::RegisterReply {
            v: 1,
            reply_to: register["id"].as_str().unwrap().into(),
            accepted: true,
            re_registered: Some(false),
            agent: Some(Box::new(record(&id))),
            heartbeat_interval_ms: Some(200),
            reason: None,
            detail: None,
            session_key: None,
        };
        self.tell(&id, &reply).await;
    }
}

fn record(id: &str) -> AgentRecord {
    AgentRecord {
        id: id.into(),
        agent_type: "tester".into(),
        pool: PoolType::Tester,
        status: AgentStatus::Idle,
        priority: 5,
        capabilities: Vec::new(),
        performance: Performance {
            tasks_completed: 0,
            avg_task_time: 0.0,
            success_rate: 1.0,
            last_active: 0,
        },
        health: Health {
            last_heartbeat: 0,
            failures: 0,
            recovery_attempts: 0,
            score: 100,
            quarantined_until: 0,
            probation: false,
            stuck: 0,
            stuck_at: 0,
        },
        resources: Resources::default(),
        capacity: 2,
        load: 0.0,
        registered_at: 0,
        draining: false,
    }
}

fn assign(task_id: &str) -> ToAgent {
    ToAgent::TaskAssign {
        v: 1,
        task_id: task_id.into(),
        attempt: 1,
        pool: PoolType::Tester,
        priority: 5,
        timeout_ms: 30_000,
        progress_timeout_ms: 0,
        max_cost: None,
        payload: serde_json::json!({"n": 1}),
    }
}

async fn setup(id: &str) -> (RedisServer, Commander, Agent) {
    let redis = RedisServer::start().expect("redis-server");
    let channels = Channels::new("sdk-test");
    let commander = Commander::start(&redis, &channels).await;
    let spec = AgentSpec {
        id: id.into(),
        pool: PoolType::Tester,
        priority: None,
        capabilities: Vec::new(),
        resources: Resources::default(),
        capacity: 2,
    };
    let agent = Agent::open(&redis.url(), None, channels, spec)
        .await
        .unwrap();
    (redis, commander, agent)
}

/// `agent.register` running on its own task, so that the test can play the
/// commander's side meanwhile.
fn register_in_background(
    mut agent: Agent,
) -> tokio::task::JoinHandle<(
    Agent,
    Result<fleet_agent::Registration, fleet_agent::AgentError>,
)> {
    tokio::spawn(async move {
        let r = agent.register(BOUND).await;
        (agent, r)
    })
}

/// The agent registered, its registration accepted at once.
async fn registered(c: &mut Commander, agent: Agent) -> Agent {
    let registering = register_in_background(agent);
    let reg = c.next("register").await;
    c.accept(&reg).await;
    let (agent, r) = registering.await.unwrap();
    r.expect("registered");
    agent
}

/// The agent running (200 ms heartbeats) with `work` on its own task, until
/// the token is cancelled.
fn run(mut agent: Agent, work: Work) -> (CancellationToken, tokio::task::JoinHandle<Exit>) {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let running = tokio::spawn(async move {
        agent
            .run_with(
                Duration::from_millis(200),
                Duration::ZERO,
                token,
                Some(work),
            )
            .await
    });
    (stop, running)
}

/// No reply to a `register`: it is sent again (every `REQUEST_RETRY`), and
/// the reply to the second is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_reply_is_sent_again() {
    let (_redis, mut c, agent) = setup("retry-1").await;
    let registering = register_in_background(agent);
    let first = c.next("register").await;
    // Not answered: the agent must ask again.
    let second = c.next("register").await;
    // The same request again (registration is idempotent, one id is fine).
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["agentId"], "retry-1");
    c.accept(&second).await;
    let (_agent, r) = tokio::time::timeout(BOUND, registering)
        .await
        .unwrap()
        .unwrap();
    let reg = r.expect("registered on the second try");
    assert_eq!(reg.heartbeat_interval, Duration::from_millis(200));
}

/// A task assigned before the register reply arrives is not lost: it is
/// handed out after the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_before_the_reply_is_kept_for_later() {
    let (_redis, mut c, agent) = setup("early-1").await;
    let registering = register_in_background(agent);
    let reg = c.next("register").await;
    c.tell("early-1", &assign("t-early")).await;
    c.accept(&reg).await;
    let (mut agent, r) = registering.await.unwrap();
    r.unwrap();
    let m = tokio::time::timeout(BOUND, agent.recv()).await.unwrap();
    assert!(
        matches!(&m, ToAgent::TaskAssign { task_id, .. } if task_id == "t-early"),
        "{m:?}"
    );
}

/// Sends `()` when dropped: the work holding it was stopped.
struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A `task_cancel` stops the attempt's work, which reports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_is_stopped() {
    let (_redis, mut c, agent) = setup("cancel-1").await;
    let (tx, stopped) = tokio::sync::oneshot::channel();
    let guard = Arc::new(std::sync::Mutex::new(Some(tx)));
    let work: Work = Arc::new(move |_a| {
        let guard = Dropped(guard.lock().unwrap().take());
        Box::pin(async move {
            let _held = guard;
            std::future::pending::<()>().await;
            Outcome::Complete(Value::Null)
        })
    });
    let agent = registered(&mut c, agent).await;
    let (stop, running) = run(agent, work);
    c.tell("cancel-1", &assign("t-cancel")).await;
    let ack = c.next("task_ack").await;
    assert_eq!(ack["taskId"], "t-cancel");
    c.tell(
        "cancel-1",
        &ToAgent::TaskCancel {
            v: 1,
            task_id: "t-cancel".into(),
            attempt: 1,
        },
    )
    .await;
    tokio::time::timeout(BOUND, stopped)
        .await
        .expect("the work was stopped")
        .unwrap();
    // Idle again: its next heartbeat says so.
    let idle = async {
        loop {
            let hb = c.next("heartbeat").await;
            if hb["status"] == "idle" {
                return hb;
            }
        }
    };
    let hb = tokio::time::timeout(BOUND, idle).await.unwrap();
    assert_eq!(hb["load"], 0.0);
    stop.cancel();
    assert_eq!(running.await.unwrap(), Exit::Stopped);
}

/// A `drain`: the task in hand is finished and reported, then the agent
/// deregisters and returns `Exit::Drained`; meanwhile it heartbeats its
/// real load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_agent_finishes_its_work_then_leaves() {
    let (_redis, mut c, agent) = setup("drain-1").await;
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let work: Work = Arc::new(move |a| {
        let mut go = go_rx.clone();
        Box::pin(async move {
            let _ = go.wait_for(|g| *g).await;
            Outcome::Complete(serde_json::json!({"done": a.task_id}))
        })
    });
    let agent = registered(&mut c, agent).await;
    let (_stop, running) = run(agent, work);
    c.tell("drain-1", &assign("t-drain")).await;
    c.next("task_ack").await;
    // One task of a capacity of two: active, at half load.
    let busy = async {
        loop {
            let hb = c.next("heartbeat").await;
            if hb["status"] == "active" {
                return hb;
            }
        }
    };
    let hb = tokio::time::timeout(BOUND, busy).await.unwrap();
    assert_eq!(hb["load"], 0.5, "{hb}");
    c.tell(
        "drain-1",
        &ToAgent::Drain {
            v: 1,
            reason: "test".into(),
        },
    )
    .await;
    go_tx.send(true).unwrap();
    let done = c.next("task_complete").await;
    assert_eq!(done["result"]["done"], "t-drain");
    c.tell(
        "drain-1",
        &ToAgent::ResultAck {
            v: 1,
            task_id: "t-drain".into(),
            attempt: 1,
            recorded: true,
        },
    )
    .await;
    let dereg = c.next("deregister").await;
    c.tell(
        "drain-1",
        &ToAgent::DeregisterReply {
            v: 1,
            reply_to: dereg["id"].as_str().unwrap().into(),
            removed: true,
        },
    )
    .await;
    let exit = tokio::time::timeout(BOUND, running).await.unwrap().unwrap();
    assert_eq!(exit, Exit::Drained);
}

/// An agent holding more than its capacity (work from before a
/// re-registration still running) heartbeats busy at a load of 1, never
/// above: the commander refuses a load above 1, and an agent whose
/// heartbeats are refused is declared dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_its_capacity_heartbeats_a_load_of_one() {
    let (_redis, mut c, agent) = setup("over-1").await;
    let work: Work = Arc::new(|_| Box::pin(std::future::pending::<Outcome>()));
    let agent = registered(&mut c, agent).await;
    let (stop, running) = run(agent, work);
    // Three tasks for a capacity of two.
    for t in ["t-1", "t-2", "t-3"] {
        c.tell("over-1", &assign(t)).await;
        c.next("task_ack").await;
    }
    // The heartbeats from then on (one may have been sent before the
    // third task came).
    let mut loads = Vec::new();
    while loads.len() < 3 {
        let hb = c.next("heartbeat").await;
        if hb["status"] == "busy" {
            loads.push(hb["load"].as_f64().unwrap());
        }
    }
    assert_eq!(loads, [1.0, 1.0, 1.0]);
    stop.cancel();
    let _ = tokio::time::timeout(BOUND, running).await;
}
