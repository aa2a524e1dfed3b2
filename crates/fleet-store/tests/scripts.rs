//! The Rust↔Lua contract against a real redis-server: every message a
//! script builds decodes as its Rust type and says what the call did; the
//! batch size is one constant on both sides; fencing refuses an old epoch.

use fleet_protocol::task::{TaskDefaults, ValidTask};
use fleet_protocol::{
    PoolType, ReportKind, Resources, TaskEvent, TaskEventKind, TaskReport, ToAgent,
};
use fleet_store::budgets::{Adjust, Adjusted};
use fleet_store::connection::Conn;
use fleet_store::registry::{HeartbeatOutcome, NewAgent, RegisterOutcome};
use fleet_store::tasks::{
    HealthPolicy, PoolSettings, ReportOutcome, Submitted, Takeback, TaskPolicy, ALLOCATE_BATCH,
};
use fleet_store::{Keys, Registry, StoreError, TaskStore};
use fleet_testkit::RedisServer;
use futures_util::StreamExt;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const POOL: PoolType = PoolType::Coder;

struct Store {
    _redis: RedisServer,
    url: String,
    conn: Conn,
    keys: Keys,
    registry: Registry,
    tasks: TaskStore,
}

/// A task of the test pool with this payload and retries, validated.
fn valid_task(payload: &str, max_retries: u32) -> ValidTask {
    let t = fleet_protocol::task::Submission {
        pool: POOL.as_str().into(),
        capabilities: vec![],
        priority: Some(7),
        payload: serde_json::from_str(payload).unwrap(),
        timeout_ms: Some(5000),
        max_retries: Some(max_retries),
        client_id: None,
        progress_timeout_ms: None,
        max_cost: None,
    };
    let defaults = TaskDefaults {
        timeout_ms: 1000,
        max_retries: 1,
    };
    t.validate(|_| vec![], defaults).unwrap()
}

async fn store() -> Store {
    let redis = RedisServer::start().expect("redis-server on PATH");
    let url = redis.url();
    let mut conn = fleet_store::connection::connect(&url).await.unwrap();
    let keys = Keys::new("swarm:phase-1");
    let epoch = Registry::claim_epoch(&mut conn, &keys).await.unwrap();
    let health = HealthPolicy {
        success_step: 5,
        failure_step: 60, // one failure quarantines
        quarantine_below: 50,
        quarantine_ms: 30_000,
        quarantine_max_percent: 100,
        probation_until: 70,
        quota_window_ms: 60_000,
        memory_ms: 60_000,
        poison_after: 2,
        failure_window_ms: 500,
    };
    let pools: Vec<PoolSettings> = PoolType::ALL
        .into_iter()
        .map(|pool| PoolSettings {
            pool,
            strategy: Default::default(),
            quota: None,
            progress_timeout_ms: 0,
            allowance: 0.0,
        })
        .collect();
    let budget = fleet_store::tasks::BudgetPolicy {
        unit: "tokens".into(),
        min_balance: 0.0,
        window_ms: 0,
    };
    fleet_store::tasks::write_settings(&mut conn, &keys, &health, &budget, &pools)
        .await
        .unwrap();
    let policy = TaskPolicy {
        aging_ms_per_priority: 2000,
        ack_timeout_ms: 10_000,
        retry_backoff_ms: 100,
        retry_backoff_max_ms: 1000,
        idempotency_ttl_ms: 60_000,
        retention_ms: 60_000,
    };
    Store {
        registry: Registry::new(keys.clone(), epoch),
        tasks: TaskStore::new(keys.clone(), epoch, policy),
        _redis: redis,
        url,
        conn,
        keys,
    }
}

impl Store {
    /// Every field a task's or an agent's hash holds now is one that
    /// `fleet_store::fields` lists (the scripts and Rust write only those).
    async fn stored_fields_are_listed(&mut self) {
        let all: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut self.conn)
            .await
            .unwrap();
        let mut seen = 0;
        for key in all {
            let (task, agent) = (self.keys.task(""), self.keys.agent(""));
            let listed = match () {
                _ if key.strip_prefix(&task).is_some_and(|id| !id.contains(':')) => {
                    fleet_store::fields::TASK
                }
                _ if key.strip_prefix(&agent).is_some_and(|id| !id.contains(':')) => {
                    fleet_store::fields::AGENT
                }
                _ => continue,
            };
            let names: Vec<String> = redis::cmd("HKEYS")
                .arg(&key)
                .query_async(&mut self.conn)
                .await
                .unwrap();
            for n in names {
                seen += 1;
                assert!(
                    listed.contains(&n.as_str()),
                    "{key} holds {n}: not in fields.rs"
                );
            }
        }
        assert!(seen > 0, "no task or agent hash to check");
    }

    async fn agent(&mut self, id: &str, capacity: u32) {
        let caps: Vec<String> = vec![];
        let new = NewAgent {
            id,
            pool: POOL,
            agent_type: "coder",
            priority: 5,
            capabilities: &caps,
            resources: Resources::default(),
            pool_max: 10_000,
            fleet_max: 10_000,
            capacity,
            instance: "i1",
            // Any text: the store keeps it, the commander checks it.
            session_key: "zo060cy2M+x7cMF4FKXHbs0CloUFDTRHRboFhw5YfVk=",
        };
        let out = self
            .registry
            .register(&mut self.conn, &new, now(), None, None)
            .await;
        assert!(
            matches!(
                out,
                Ok(RegisterOutcome::Registered { .. } | RegisterOutcome::ReRegistered { .. })
            ),
            "{out:?}"
        );
    }

    async fn submit(&mut self, payload: &str) -> String {
        self.submit_with(payload, 0).await
    }

    async fn submit_with(&mut self, payload: &str, max_retries: u32) -> String {
        let valid = valid_task(payload, max_retries);
        match self
            .tasks
            .submit(&mut self.conn, &valid, now())
            .await
            .unwrap()
        {
            Submitted::Accepted(t) => t.id,
            other => panic!("{other:?}"),
        }
    }

    /// `agent` reports its attempt `attempt` of `task` failed.
    async fn fail(
        &mut self,
        task: &str,
        attempt: u32,
        agent: &str,
    ) -> Option<fleet_store::tasks::ReportOutcome> {
        let report = TaskReport {
            task_id: task.to_string(),
            attempt,
            agent_id: agent.into(),
            progress: None,
            step: None,
            usage: None,
            result: None,
            error: Some("it \"broke\"".into()),
        };
        self.tasks
            .report(&mut self.conn, ReportKind::Fail, &report, now(), None)
            .await
            .unwrap()
            .outcome
    }

    async fn listen(&self, channel: String) -> redis::aio::PubSubStream {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut ps = client.get_async_pubsub().await.unwrap();
        ps.subscribe(channel).await.unwrap();
        ps.into_on_message()
    }
}

/// What a task event says: its kind, task, agent and attempt.
fn said(ev: &TaskEvent) -> (TaskEventKind, &str, &str, u32) {
    (
        ev.kind,
        ev.task_id.as_str(),
        ev.agent_id.as_str(),
        ev.attempt,
    )
}

fn now() -> u64 {
    fleet_protocol::now_ms()
}

/// The next message, decoded as `T`; it must say everything it carried
/// (decoding and encoding again gives the same JSON).
async fn next<T>(s: &mut redis::aio::PubSubStream) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let msg = tokio::time::timeout(WAIT, s.next())
        .await
        .expect("a message in time")
        .expect("subscribed");
    let raw: serde_json::Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
    let typed: T = serde_json::from_value(raw.clone())
        .unwrap_or_else(|e| panic!("{raw} does not decode as its Rust type: {e}"));
    assert_eq!(
        serde_json::to_value(&typed).unwrap(),
        raw,
        "a field was lost or renamed"
    );
    typed
}

#[tokio::test]
async fn lua_built_messages_decode_as_their_rust_types() {
    let mut s = store().await;
    let channels = s.keys.channels().clone();
    let inbox = channels.agent("a1");
    // Scripts write what agents are told; the caller publishes it, signed.
    let told = |n: Option<&fleet_store::Notice>| -> ToAgent {
        let n = n.expect("a message for the agent");
        assert_eq!(n.channel, inbox);
        serde_json::from_str(&n.message).expect("a ToAgent")
    };
    let mut allocation = s.listen(channels.allocation()).await;
    let mut health = s.listen(channels.health()).await;
    s.agent("a1", 2).await;

    // task_assign, with a payload that needs escaping, and task_assigned.
    let payload = r#"{"cmd":"echo \"hi\"\n","n":[1,2.5,null],"ok":true}"#;
    let id = s.submit(payload).await;
    let a = s
        .tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, now())
        .await
        .unwrap();
    assert_eq!((a.assigned, a.queued, a.notices.len()), (1, 0, 1));
    match told(a.notices.first()) {
        ToAgent::TaskAssign {
            v,
            task_id,
            attempt,
            pool,
            priority,
            timeout_ms,
            progress_timeout_ms,
            max_cost,
            payload: p,
        } => {
            assert_eq!((progress_timeout_ms, max_cost), (0, None));
            assert_eq!(
                (v, task_id.as_str(), attempt, pool),
                (1, id.as_str(), 1, POOL)
            );
            assert_eq!((priority, timeout_ms), (7, 5000));
            assert_eq!(
                p,
                serde_json::from_str::<serde_json::Value>(payload).unwrap()
            );
        }
        other => panic!("{other:?}"),
    }
    let ev = next::<TaskEvent>(&mut allocation).await;
    assert_eq!(
        said(&ev),
        (TaskEventKind::TaskAssigned, id.as_str(), "a1", 1)
    );
    assert_eq!(ev.strategy, Some(fleet_protocol::pool::Strategy::Priority));

    // task_cancel to the agent, task_cancelled to everyone.
    let out = s.tasks.cancel(&mut s.conn, &id, POOL, now()).await.unwrap();
    let fleet_store::tasks::Cancelled::Cancelled(notice) = out else {
        panic!("{out:?}")
    };
    match told(notice.as_ref()) {
        ToAgent::TaskCancel {
            task_id, attempt, ..
        } => assert_eq!((task_id, attempt), (id.clone(), 1)),
        other => panic!("{other:?}"),
    }
    let ev = next::<TaskEvent>(&mut allocation).await;
    assert_eq!((ev.kind, ev.strategy), (TaskEventKind::TaskCancelled, None));

    // A failed attempt with no retries left: task_dead. The failure was
    // reported, so it is the task's: the agent's health is untouched.
    let id = s.submit("null").await;
    let a = s
        .tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, now())
        .await
        .unwrap();
    assert!(matches!(
        told(a.notices.first()),
        ToAgent::TaskAssign { .. }
    ));
    let ev = next::<TaskEvent>(&mut allocation).await;
    assert_eq!(ev.kind, TaskEventKind::TaskAssigned);
    let out = s.fail(&id, 1, "a1").await;
    assert_eq!(
        out,
        Some(fleet_store::tasks::ReportOutcome::Dead(Some(POOL)))
    );
    let ev = next::<TaskEvent>(&mut allocation).await;
    assert_eq!(
        (ev.kind, ev.task_id, ev.agent_id.as_str()),
        (TaskEventKind::TaskDead, id.clone(), "a1")
    );
    let rec = s.registry.agent(&mut s.conn, "a1").await.unwrap().unwrap();
    assert_eq!(rec.health.score, 100, "{rec:?}");
    let dead = s.tasks.get(&mut s.conn, &id).await.unwrap().unwrap();
    assert_eq!(
        dead.agent_id.as_deref(),
        Some("a1"),
        "a dead task keeps its agent"
    );
    let outcomes: Vec<_> = dead
        .attempts
        .iter()
        .map(|a| (a.attempt, a.agent_id.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [(1, "a1", "failed")], "{dead:?}");
    assert_eq!(dead.attempts[0].error.as_deref(), Some("it \"broke\""));

    // An attempt whose lease runs out is the agent's failure: its health
    // falls below the line: agent_quarantined.
    let id = s.submit("null").await;
    s.tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, now())
        .await
        .unwrap();
    let ev = next::<TaskEvent>(&mut allocation).await;
    assert_eq!(ev.kind, TaskEventKind::TaskAssigned);
    s.tasks
        .expire(&mut s.conn, &id, now() + 3_600_000, Takeback::Lease)
        .await
        .unwrap();
    match next::<fleet_protocol::Event>(&mut health).await {
        fleet_protocol::Event::AgentQuarantined {
            agent_id, health, ..
        } => {
            assert_eq!((agent_id.as_str(), health), ("a1", 40))
        }
        other => panic!("{other:?}"),
    }

    // drain.
    let drained = s
        .registry
        .drain(&mut s.conn, "a1", now(), "operator: \"retire\"")
        .await
        .unwrap();
    let Some((pool, 0, notice)) = drained else {
        panic!("{drained:?}")
    };
    assert_eq!(pool, POOL);
    match told(notice.as_ref()) {
        ToAgent::Drain { reason, .. } => assert_eq!(reason, "operator: \"retire\""),
        other => panic!("{other:?}"),
    }
    s.stored_fields_are_listed().await;
}

#[tokio::test]
async fn one_allocate_call_hands_out_one_batch() {
    let mut s = store().await;
    s.agent("big", (ALLOCATE_BATCH * 2) as u32).await;
    let extra = 5;
    for _ in 0..ALLOCATE_BATCH + extra {
        s.submit("{}").await;
    }
    let a = s
        .tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, now())
        .await
        .unwrap();
    assert_eq!(
        (a.assigned, a.queued),
        (ALLOCATE_BATCH as u64, extra as u64)
    );
    assert_eq!(a.notices.len(), ALLOCATE_BATCH);
    let a = s
        .tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, now())
        .await
        .unwrap();
    assert_eq!((a.assigned, a.queued), (extra as u64, 0));
}

/// Heartbeats recorded in one call, in order, each as alone: a known
/// agent's is recorded, an unknown one's says so, a failed one recovers, and
/// one sealed no later than its agent's last recorded one (a replay, in the
/// same batch or a later one) changes nothing, until the agent registers
/// again.
#[tokio::test]
async fn heartbeats_in_one_call_are_each_recorded_as_alone() {
    let mut s = store().await;
    s.agent("a1", 1).await;
    s.agent("a2", 1).await;
    s.agent("a3", 1).await;
    // a3 missed its heartbeats.
    let stale = s
        .registry
        .fail_if_stale(&mut s.conn, "a3", now() + 1, now(), 5)
        .await
        .unwrap();
    assert!(
        matches!(stale, fleet_store::registry::FailOutcome::Failed { .. }),
        "{stale:?}"
    );
    let hb = |id: &str, load: f64| fleet_protocol::Heartbeat {
        agent_id: id.into(),
        status: fleet_protocol::AgentStatus::Idle,
        load,
        resources: Some(Resources {
            memory: 0.5,
            cpu: 0.25,
            network: 0.1,
        }),
        seq: None,
    };
    let (a1, ghost, a2, a3, again) = (
        hb("a1", 0.3),
        hb("ghost", 0.0),
        hb("a2", 0.7),
        hb("a3", 0.0),
        hb("a1", 0.9),
    );
    let sealed = now();
    let batch = [
        (&a1, Some(sealed)),
        (&ghost, None),
        (&a2, None),
        (&a3, None),
        (&again, Some(sealed)),
    ];
    let at = now();
    let out = s
        .registry
        .heartbeats(&mut s.conn, &batch, at)
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            HeartbeatOutcome::Ok,
            HeartbeatOutcome::Unknown,
            HeartbeatOutcome::Ok,
            HeartbeatOutcome::Recovering(POOL),
            HeartbeatOutcome::Replay,
        ]
    );
    for (id, load) in [("a1", "0.3"), ("a2", "0.7")] {
        let (stored_load, last, cpu): (String, u64, String) = redis::cmd("HMGET")
            .arg(s.keys.agent(id))
            .arg("load")
            .arg("lastHeartbeat")
            .arg("cpu")
            .query_async(&mut s.conn)
            .await
            .unwrap();
        assert_eq!(
            (stored_load.as_str(), last, cpu.as_str()),
            (load, at, "0.25"),
            "{id}: the first heartbeat's, not the replay's"
        );
    }
    // Later: an older seal is a replay, a newer one is recorded.
    let out = s
        .registry
        .heartbeats(
            &mut s.conn,
            &[(&again, Some(sealed - 1)), (&again, Some(sealed + 1))],
            now(),
        )
        .await
        .unwrap();
    assert_eq!(out, [HeartbeatOutcome::Replay, HeartbeatOutcome::Ok]);
    // Registered again (another instance, maybe another clock): its
    // heartbeats' order starts afresh.
    s.agent("a1", 1).await;
    let out = s
        .registry
        .heartbeats(&mut s.conn, &[(&a1, Some(sealed - 5))], now())
        .await
        .unwrap();
    assert_eq!(out, [HeartbeatOutcome::Ok]);
    s.stored_fields_are_listed().await;
}

#[tokio::test]
async fn a_superseded_epoch_is_fenced_and_changes_nothing() {
    let mut s = store().await;
    s.agent("a1", 1).await;
    // A newer commander claims the epoch.
    Registry::claim_epoch(&mut s.conn, &s.keys).await.unwrap();
    let hb = fleet_protocol::Heartbeat {
        agent_id: "a1".into(),
        status: fleet_protocol::AgentStatus::Busy,
        load: 0.9,
        resources: None,
        seq: None,
    };
    let out = s
        .registry
        .heartbeats(&mut s.conn, &[(&hb, None)], now())
        .await;
    assert!(matches!(out, Err(StoreError::Fenced)), "{out:?}");
    let rec = s.registry.agent(&mut s.conn, "a1").await.unwrap().unwrap();
    assert_eq!(
        rec.status,
        fleet_protocol::AgentStatus::Idle,
        "the fenced write changed nothing"
    );
}

#[tokio::test]
async fn tasks_taken_back_are_announced_and_their_agent_is_told() {
    let mut s = store().await;
    let channels = s.keys.channels().clone();
    let inbox = channels.agent("a1");
    // Scripts write what agents are told; the caller publishes it, signed.
    let told = |n: Option<&fleet_store::Notice>| -> ToAgent {
        let n = n.expect("a message for the agent");
        assert_eq!(n.channel, inbox);
        serde_json::from_str(&n.message).expect("a ToAgent")
    };
    let mut allocation = s.listen(channels.allocation()).await;
    s.agent("a1", 1).await;
    let id = s.submit_with("{}", 3).await;
    let a = s
        .tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, now())
        .await
        .unwrap();
    assert!(matches!(
        told(a.notices.first()),
        ToAgent::TaskAssign { .. }
    ));
    assert_eq!(
        next::<TaskEvent>(&mut allocation).await.kind,
        TaskEventKind::TaskAssigned
    );

    // The lease runs out: the agent is told to stop, everyone that it went back.
    let later = now() + 3_600_000;
    let out = s
        .tasks
        .expire(&mut s.conn, &id, later, fleet_store::tasks::Takeback::Lease)
        .await
        .unwrap();
    let Some(taken) = out else { panic!("expired") };
    assert_eq!(taken.to, fleet_store::tasks::Requeued::Queued);
    match told(taken.notice.as_ref()) {
        ToAgent::TaskCancel {
            task_id, attempt, ..
        } => assert_eq!((task_id.as_str(), attempt), (id.as_str(), 1)),
        other => panic!("{other:?}"),
    }
    let ev = next::<TaskEvent>(&mut allocation).await;
    assert_eq!(
        (ev.kind, ev.agent_id.as_str(), ev.attempt),
        (TaskEventKind::TaskRequeued, "a1", 1)
    );

    // a1 was not heard from since it got the task: it may have died of it,
    // so the task waits out the failure window before anyone else gets it.
    let held = s.tasks.get(&mut s.conn, &id).await.unwrap().unwrap();
    assert_eq!(held.state, fleet_protocol::task::TaskState::Retrying);
    assert_eq!(
        s.tasks
            .release_delayed(&mut s.conn, later + 500, 10)
            .await
            .unwrap(),
        1
    );

    // Another agent takes it and leaves: taken back, and announced the same way.
    s.agent("a2", 1).await;
    s.tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, later + 500)
        .await
        .unwrap();
    let ev = next::<TaskEvent>(&mut allocation).await;
    assert_eq!(
        (ev.kind, ev.agent_id.as_str()),
        (TaskEventKind::TaskAssigned, "a2")
    );
    let removed = s
        .registry
        .remove(&mut s.conn, "a2", None, now(), None)
        .await
        .unwrap();
    assert_eq!(removed.map(|(_, o)| o.requeued), Some(1));
    let ev = next::<TaskEvent>(&mut allocation).await;
    assert_eq!(
        said(&ev),
        (TaskEventKind::TaskRequeued, id.as_str(), "a2", 2)
    );
    s.stored_fields_are_listed().await;
}

#[tokio::test]
async fn leaving_and_registering_again_keeps_health_and_quarantine() {
    let mut s = store().await;
    s.agent("a1", 1).await;
    let id = s.submit("{}").await;
    s.tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, now())
        .await
        .unwrap();
    // Its lease runs out (a failure of the agent's, unlike a reported one).
    s.tasks
        .expire(&mut s.conn, &id, now() + 3_600_000, Takeback::Lease)
        .await
        .unwrap();
    let rec = s.registry.agent(&mut s.conn, "a1").await.unwrap().unwrap();
    assert!(rec.health.quarantined_until > now(), "quarantined: {rec:?}");

    // Deregister and come straight back: still quarantined, still at 40.
    s.registry
        .remove(&mut s.conn, "a1", None, now(), None)
        .await
        .unwrap();
    s.agent("a1", 1).await;
    let back = s.registry.agent(&mut s.conn, "a1").await.unwrap().unwrap();
    assert_eq!(back.health.score, 40);
    assert_eq!(back.health.quarantined_until, rec.health.quarantined_until);
    s.submit("{}").await;
    let a = s
        .tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, now())
        .await
        .unwrap();
    assert_eq!(a.assigned, 0, "a quarantined agent gets no task");
    s.stored_fields_are_listed().await;
}

/// The guardrails' messages (issue 18), built by the scripts: a stuck
/// agent's event, the poisoned task's, an agent's halt and resume with
/// their events. Each decodes as its Rust type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrail_messages_decode_as_their_rust_types() {
    let mut s = store().await;
    // One casualty poisons; attempts are watched for progress (100 ms);
    // agents have 5 units, halted below 1.
    let health = HealthPolicy {
        success_step: 5,
        failure_step: 20,
        quarantine_below: 50,
        quarantine_ms: 30_000,
        quarantine_max_percent: 100,
        probation_until: 70,
        quota_window_ms: 60_000,
        memory_ms: 60_000,
        poison_after: 1,
        failure_window_ms: 500,
    };
    let budget = fleet_store::tasks::BudgetPolicy {
        unit: "tokens".into(),
        min_balance: 1.0,
        window_ms: 0,
    };
    let pools: Vec<PoolSettings> = PoolType::ALL
        .into_iter()
        .map(|pool| PoolSettings {
            pool,
            strategy: Default::default(),
            quota: None,
            progress_timeout_ms: 100,
            allowance: 5.0,
        })
        .collect();
    fleet_store::tasks::write_settings(&mut s.conn, &s.keys, &health, &budget, &pools)
        .await
        .unwrap();
    let channels = s.keys.channels().clone();
    let mut allocation = s.listen(channels.allocation()).await;
    let mut health_events = s.listen(channels.health()).await;
    let report = |task: &str, attempt: u32, agent: &str| TaskReport {
        task_id: task.to_string(),
        attempt,
        agent_id: agent.into(),
        progress: None,
        step: Some(1),
        usage: None,
        result: None,
        error: None,
    };

    // a1 acknowledges, then shows no progress: stuck, and the task poison.
    // Its task_assign says how often it must show progress (the pool's
    // 100 ms).
    s.agent("a1", 1).await;
    let id = s.submit("{}").await;
    let a = s
        .tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, now())
        .await
        .unwrap();
    let n = a.notices.first().expect("a task_assign");
    match serde_json::from_str::<ToAgent>(&n.message).expect("a ToAgent") {
        ToAgent::TaskAssign {
            progress_timeout_ms,
            max_cost,
            ..
        } => assert_eq!((progress_timeout_ms, max_cost), (100, None)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        next::<TaskEvent>(&mut allocation).await.kind,
        TaskEventKind::TaskAssigned
    );
    let acked = s
        .tasks
        .report(
            &mut s.conn,
            ReportKind::Ack,
            &report(&id, 1, "a1"),
            now(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(acked.outcome, Some(ReportOutcome::Running));
    let repeated = s
        .tasks
        .report(
            &mut s.conn,
            ReportKind::Progress,
            &report(&id, 1, "a1"),
            now(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(repeated.outcome, Some(ReportOutcome::Repeated));
    let later = now() + 1000;
    let stalled = s.tasks.stalled(&mut s.conn, later, 10).await.unwrap();
    assert_eq!(stalled, std::slice::from_ref(&id));
    let out = s
        .tasks
        .expire(&mut s.conn, &id, later, Takeback::Stuck)
        .await
        .unwrap();
    assert_eq!(
        out.map(|t| (t.to, t.agent)),
        Some((fleet_store::tasks::Requeued::Poison, "a1".into()))
    );
    match next::<fleet_protocol::Event>(&mut health_events).await {
        fleet_protocol::Event::AgentStuck {
            agent_id,
            task_id,
            count,
            ..
        } => assert_eq!(
            (agent_id.as_str(), task_id.as_str(), count),
            ("a1", id.as_str(), 1)
        ),
        other => panic!("{other:?}"),
    }
    // ... and quarantined by the health rules, whatever its score.
    assert!(matches!(
        next::<fleet_protocol::Event>(&mut health_events).await,
        fleet_protocol::Event::AgentQuarantined { ref agent_id, .. } if agent_id == "a1"
    ));
    let ev = next::<TaskEvent>(&mut allocation).await;
    assert_eq!(
        said(&ev),
        (TaskEventKind::TaskPoisoned, id.as_str(), "a1", 1)
    );

    // a2 completes a task that cost 5.5 of its 5: halted, then topped up.
    s.agent("a2", 1).await;
    let id = s.submit("{}").await;
    s.tasks
        .allocate(&mut s.conn, POOL, ALLOCATE_BATCH, now())
        .await
        .unwrap();
    next::<TaskEvent>(&mut allocation).await;
    let mut done = report(&id, 1, "a2");
    (done.step, done.usage) = (None, Some(5.5));
    let reported = s
        .tasks
        .report(&mut s.conn, ReportKind::Complete, &done, now(), None)
        .await
        .unwrap();
    let halt = reported.halt.expect("a halt for a2");
    assert_eq!(halt.channel, channels.agent("a2"));
    match serde_json::from_str::<ToAgent>(&halt.message).unwrap() {
        ToAgent::Halt { balance, unit, .. } => {
            assert_eq!((balance, unit.as_str()), (-0.5, "tokens"))
        }
        other => panic!("{other:?}"),
    }
    match next::<fleet_protocol::Event>(&mut health_events).await {
        fleet_protocol::Event::AgentHalted {
            agent_id, balance, ..
        } => {
            assert_eq!((agent_id.as_str(), balance), ("a2", -0.5))
        }
        other => panic!("{other:?}"),
    }
    let adjusted = s
        .registry
        .adjust_budget(&mut s.conn, "a2", Adjust::TopUp(2.25), now())
        .await
        .unwrap();
    let Adjusted::Done { budget, resume } = adjusted else {
        panic!("{adjusted:?}")
    };
    assert_eq!(budget.balance, 1.75);
    match serde_json::from_str::<ToAgent>(&resume.expect("a resume").message).unwrap() {
        ToAgent::Resume { balance, .. } => assert_eq!(balance, 1.75),
        other => panic!("{other:?}"),
    }
    match next::<fleet_protocol::Event>(&mut health_events).await {
        fleet_protocol::Event::AgentResumed {
            agent_id, balance, ..
        } => {
            assert_eq!((agent_id.as_str(), balance), ("a2", 1.75))
        }
        other => panic!("{other:?}"),
    }
    s.stored_fields_are_listed().await;
}

/// Issue 25, item 9: a commander that stepped down (its Redis froze, say)
/// takes its own lease back at once, with a new epoch, rather than waiting
/// it out; anyone else still waits for it to lapse.
#[tokio::test]
async fn a_lease_that_names_its_taker_is_taken_back_with_a_new_epoch() {
    use fleet_store::lease::{Acquire, Lease};
    let mut s = store().await;
    let keys = fleet_store::Keys::new("swarm:phase-1");
    let a = Lease::new(keys.clone(), "commander-a", 60_000, 1_000);
    let b = Lease::new(keys.clone(), "commander-a2", 60_000, 1_000);
    let Acquire::Leading(first) = a.acquire(&mut s.conn).await.unwrap() else {
        panic!("a free lease is taken");
    };
    // Another (whose id ends like it) waits.
    assert!(matches!(
        b.acquire(&mut s.conn).await.unwrap(),
        Acquire::Held(_)
    ));
    // A try sent again within renew_ms of the taking (one that waited in a
    // frozen Redis): the same epoch, not a second one.
    let Acquire::Leading(again) = a.acquire(&mut s.conn).await.unwrap() else {
        panic!("its own lease, tried again");
    };
    assert_eq!(again, first, "a try sent again claims no new epoch");
    // Its own lease, not renewed for longer than renew_ms (a term it
    // stepped down from): taken back, a newer epoch, the old term fenced.
    let _: () = redis::cmd("PEXPIRE")
        .arg(keys.lease())
        .arg(30_000)
        .query_async(&mut s.conn)
        .await
        .unwrap();
    let Acquire::Leading(second) = a.acquire(&mut s.conn).await.unwrap() else {
        panic!("its own lease is taken back");
    };
    assert!(second > first);
    assert!(
        !a.renew(&mut s.conn, first).await.unwrap(),
        "the old term is fenced"
    );
    assert!(a.renew(&mut s.conn, second).await.unwrap());
    assert!(matches!(
        b.acquire(&mut s.conn).await.unwrap(),
        Acquire::Held(_)
    ));
}

/// Issue 26: governance writes are fenced like every other: a commander
/// whose epoch was superseded can neither open a proposal, count a vote,
/// expire one nor seal one.
#[tokio::test]
async fn governance_writes_are_fenced() {
    use fleet_protocol::governance::{Choice, Vote};
    use fleet_store::governance::{Governance, Proposal, Voted};
    let mut s = store().await;
    let epoch: u64 = redis::cmd("GET")
        .arg(s.keys.epoch())
        .query_async(&mut s.conn)
        .await
        .unwrap();
    fleet_store::scripts::load_all(&mut s.conn).await.unwrap();
    let old = Governance::new(s.keys.clone(), epoch);
    let p = |id: &str| Proposal {
        id: id.into(),
        action: "drain_pool".into(),
        params: serde_json::json!({"pool": "ui"}),
        proposer: "ops".into(),
        created_at: now(),
        deadline: now() + 60_000,
        quorum: 1,
        total_weight: 1,
        validators: [("v1".to_string(), 1)].into_iter().collect(),
    };
    // While current: opened.
    let hash = old.open(&mut s.conn, &p("p1")).await.unwrap();
    // A newer commander claims the epoch: every write of the old one is refused.
    Registry::claim_epoch(&mut s.conn, &s.keys).await.unwrap();
    let opened = old.open(&mut s.conn, &p("p2")).await;
    assert!(matches!(opened, Err(StoreError::Fenced)), "{opened:?}");
    assert!(
        old.get(&mut s.conn, "p2").await.unwrap().is_none(),
        "opened anyway"
    );
    let vote = Vote {
        proposal_id: "p1".into(),
        agent_id: "v1".into(),
        vote: Choice::Allow,
        hash,
        reason: String::new(),
    };
    let voted = old.vote(&mut s.conn, &vote, "signed", now()).await;
    assert!(matches!(voted, Err(StoreError::Fenced)), "{voted:?}");
    let expired = old.expire_due(&mut s.conn, now() + 120_000).await;
    assert!(matches!(expired, Err(StoreError::Fenced)), "{expired:?}");
    let sealed = old.set_seal(&mut s.conn, "p1", "x").await;
    assert!(matches!(sealed, Err(StoreError::Fenced)), "{sealed:?}");
    let rec = old.get(&mut s.conn, "p1").await.unwrap().unwrap();
    assert_eq!(
        (rec.state.as_str(), rec.votes.len(), rec.seal),
        ("open", 0, None)
    );
    // The current commander's vote counts.
    let current = Governance::new(s.keys.clone(), epoch + 1);
    let voted = current
        .vote(&mut s.conn, &vote, "signed", now())
        .await
        .unwrap();
    assert!(matches!(voted, Voted::Decided(_)), "{voted:?}");
}

/// The index of recent tasks is trimmed by one submission in 16, not by
/// each: it holds a little more than its bound, and lists exactly the
/// newest `RECENT_TASKS`.
#[tokio::test]
async fn the_recent_index_stays_near_its_bound_and_lists_the_newest() {
    let mut s = store().await;
    let valid = valid_task("null", 0);
    let batch = vec![&valid; 1000];
    let total = fleet_store::tasks::RECENT_TASKS as usize + 1000;
    let mut newest = Vec::new();
    for _ in 0..total / 1000 {
        let (out, _) = s
            .tasks
            .submit_many(&mut s.conn, &batch, ALLOCATE_BATCH, now())
            .await
            .unwrap();
        newest = out.iter().map(|o| o.id().to_string()).collect();
        tokio::time::sleep(Duration::from_millis(2)).await; // a later score
    }
    let held: usize = redis::cmd("ZCARD")
        .arg(s.keys.recent_tasks())
        .query_async(&mut s.conn)
        .await
        .unwrap();
    assert!(
        held >= fleet_store::tasks::RECENT_TASKS as usize && held < total - 500,
        "{held} held of {total} submitted"
    );
    let listed = s.tasks.recent_ids(&mut s.conn).await.unwrap();
    assert_eq!(listed.len(), fleet_store::tasks::RECENT_TASKS as usize);
    let first: std::collections::HashSet<_> = listed[..1000].iter().collect();
    assert!(
        newest.iter().all(|id| first.contains(id)),
        "the newest are listed first"
    );
}
