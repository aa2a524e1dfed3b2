//! Test support: a private redis-server per test, a commander with short
//! intervals, agents, and event listeners with bounded waits.
#![allow(dead_code, unreachable_pub)]

use fleet_agent::{Agent, AgentSpec};
use fleet_commander::config::Config;
use fleet_commander::Running;
use fleet_protocol::api;
use fleet_protocol::auth::{self, Credential, Grants, Signer};
use fleet_protocol::pool::PoolType;
use fleet_protocol::Resources;
use fleet_sim::issuer::Issuer;
use fleet_store::Keys;
use fleet_testkit::RedisServer;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub mod browser;
pub mod docs;
mod ha;
mod tasks;
#[allow(unused_imports)]
pub use ha::*;
#[allow(unused_imports)]
pub use tasks::*;

/// The bound on every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// The test commander's signing secret: fixed, so that every test binary
/// writes the same key file (tests provision their own keys; this one
/// signs nothing outside them).
pub const TEST_SECRET: [u8; 32] = [7; 32];

/// A file holding [`TEST_SECRET`], as `keys init` writes it.
pub fn test_commander_key() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("test-commander.key");
    if !path.exists() {
        // Written whole, then renamed: a concurrent reader sees all or nothing.
        let tmp = dir.join(format!(
            "test-commander.key.{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&tmp, auth::encode_key(&TEST_SECRET) + "\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// An admin's bearer token for the HTTP API of the fleet at `redis_url`.
pub async fn admin_token(redis_url: &str) -> String {
    let mut conn = fleet_store::connection::connect(redis_url).await.unwrap();
    fleet_store::tokens::TokenStore::new(Keys::new("swarm:phase-1"))
        .issue(
            &mut conn,
            "tests",
            fleet_store::tokens::TokenRole::Admin,
            fleet_protocol::now_ms(),
        )
        .await
        .unwrap()
}

/// An HTTP client that sends `token`.
pub fn authed(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

/// Issues keys for the test fleet under `prefix`.
pub fn test_issuer(prefix: &str) -> Issuer {
    Issuer::new(prefix, &TEST_SECRET)
}

/// A credential for one agent, stored in the key store at `redis_url`.
pub async fn credential(redis_url: &str, id: &str, pool: PoolType) -> Credential {
    let mut conn = fleet_store::connection::connect(redis_url).await.unwrap();
    test_issuer("swarm:phase-1")
        .agent(&mut conn, id, pool, Grants::default())
        .await
        .unwrap()
}

/// The shipped config with test-sized intervals: heartbeat 100 ms, failed
/// after 5 missed (500 ms of silence: wide enough for a noisy machine).
pub fn test_config(redis_url: &str) -> Config {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml"))
        .expect("shipped config");
    let mut c = Config::parse("config/fleet.toml", &text).expect("valid");
    c.redis.url = redis_url.to_string();
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    // Each commander's audit checkpoints in a file of its own, not config/.
    c.security.audit_checkpoint_file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(
        format!("audit-{}.checkpoints", uuid::Uuid::new_v4().simple()),
    );
    c.fleet.heartbeat_interval_ms = 100;
    c.fleet.missed_heartbeats = 5;
    c.fleet.detect_tick_ms = 20;
    c.fleet.status_interval_ms = 200;
    c.fleet.workers = 4;
    c.security.commander_key_file = test_commander_key();
    c.ha.lease_ms = 1000;
    c.ha.renew_ms = 200;
    c.validate().expect("test config valid");
    c
}

pub struct Harness {
    pub redis: RedisServer,
    pub config: Config,
    pub commander: Option<Running>,
    /// The commander's runtime, with its own metrics recorder and logs.
    runtime: Option<CommanderRuntime>,
    /// Where the commander's logs go; `None`: the test's output.
    logs: Option<tracing::Dispatch>,
    pub keys: Keys,
    pub client: fleet_store::connection::Client,
    /// Sends `token`, an admin's.
    pub http: reqwest::Client,
    pub token: String,
    /// Keys the raw publisher signs with, by agent id (or `""`: the submitter).
    signers: Mutex<HashMap<String, Signer>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Harness {
        Self::start_inner(tune, None).await
    }

    async fn start_inner(
        tune: impl FnOnce(&mut Config),
        logs: Option<tracing::Dispatch>,
    ) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let redis = RedisServer::start().expect("redis-server on PATH");
        let mut config = test_config(&redis.url());
        tune(&mut config);
        config.validate().expect("tuned test config valid");
        let keys = Keys::new(config.fleet.prefix.clone());
        let client = fleet_store::connection::client(&redis.url()).unwrap();
        let token = admin_token(&redis.url()).await;
        let mut h = Harness {
            redis,
            config,
            commander: None,
            runtime: None,
            logs,
            keys,
            client,
            http: authed(&token),
            token,
            signers: Mutex::new(HashMap::new()),
        };
        h.start_commander().await;
        h
    }

    /// Like [`Harness::start_with`], with the commander's warnings written
    /// to the returned [`Logs`] instead of the test's output.
    pub async fn start_logged(tune: impl FnOnce(&mut Config)) -> (Harness, Logs) {
        let logs = Logs::default();
        let w = logs.clone();
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_env_filter("warn")
                .with_ansi(false)
                .with_writer(move || w.clone())
                .finish(),
        );
        (Self::start_inner(tune, Some(dispatch)).await, logs)
    }

    /// Starts the commander on a runtime of its own: its `/metrics` counts
    /// only what it did, though other tests' commanders run beside it.
    pub async fn start_commander(&mut self) {
        let runtime = CommanderRuntime(Some(
            fleet_commander::metrics::private_runtime(2, self.logs.clone())
                .expect("commander runtime"),
        ));
        let config = self.config.clone();
        let running = runtime
            .handle()
            .spawn(fleet_commander::start(config, CancellationToken::new()))
            .await
            .expect("start does not panic")
            .expect("commander starts");
        wait_until(|| async { running.leads() }).await;
        self.commander = Some(running);
        self.runtime = Some(runtime);
    }

    /// Stops the commander and waits for every task to end.
    /// Stops the commander; it must drain and stop cleanly.
    pub async fn stop_commander(&mut self) -> anyhow::Result<()> {
        let c = self.commander.take().expect("running");
        c.shutdown();
        let exit = tokio::time::timeout(WAIT, c.wait())
            .await
            .expect("commander stops in time");
        self.runtime = None;
        anyhow::ensure!(
            exit == fleet_commander::Exit::Clean,
            "commander stopped: {exit:?}"
        );
        Ok(())
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.commander.as_ref().unwrap().http_addr)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base()))
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (code, body)
    }

    /// One pool's entry in `GET /v1/pools`.
    pub async fn pool(&self, name: &str) -> Value {
        let (_, pools) = self.get(api::POOLS).await;
        pools
            .as_array()
            .expect("GET /v1/pools is a list")
            .iter()
            .find(|p| p["type"] == name)
            .unwrap_or_else(|| panic!("pool {name} in GET /v1/pools"))
            .clone()
    }

    /// POSTs `body` as written (JSON that may be malformed or oversized) to
    /// `path`.
    pub async fn post_text(&self, path: &str, body: impl Into<String>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base()))
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A bearer token of `role` (named `name`) for this fleet's HTTP API.
    pub async fn token(&self, name: &str, role: fleet_store::tokens::TokenRole) -> String {
        let mut conn = fleet_store::connection::connect(&self.redis.url())
            .await
            .unwrap();
        fleet_store::tokens::TokenStore::new(self.keys.clone())
            .issue(&mut conn, name, role, fleet_protocol::now_ms())
            .await
            .unwrap()
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub async fn agent(&self, id: &str, pool: PoolType) -> Agent {
        self.agent_with(AgentSpec {
            id: id.to_string(),
            pool,
            priority: None,
            capabilities: vec!["rust".into()],
            resources: Resources {
                memory: 128.0,
                cpu: 0.25,
                network: 10.0,
            },
            capacity: 1,
        })
        .await
    }

    pub async fn agent_with(&self, spec: AgentSpec) -> Agent {
        let publisher = fleet_store::connection::connect(&self.redis.url())
            .await
            .unwrap();
        let (id, pool) = (spec.id.clone(), spec.pool);
        let a = Agent::connect(&self.client, publisher, self.keys.channels().clone(), spec)
            .await
            .unwrap();
        if self.signed() {
            let grants = Issuer::grants_for(a.spec());
            a.with_credential(&self.credential_with(&id, pool, grants).await)
        } else {
            a
        }
    }

    /// An agent whose key carries exactly `grants`, whatever its spec claims.
    pub async fn agent_keyed(&self, spec: AgentSpec, grants: Grants) -> Agent {
        let publisher = fleet_store::connection::connect(&self.redis.url())
            .await
            .unwrap();
        let (id, pool) = (spec.id.clone(), spec.pool);
        let cred = self.credential_with(&id, pool, grants).await;
        Agent::connect(&self.client, publisher, self.keys.channels().clone(), spec)
            .await
            .unwrap()
            .with_credential(&cred)
    }

    pub fn signed(&self) -> bool {
        self.config.security.mode == fleet_commander::config::SecurityMode::Signed
    }

    /// Issues a key for an agent, granted nothing beyond its pool.
    pub async fn credential(&self, id: &str, pool: PoolType) -> Credential {
        self.credential_with(id, pool, Grants::default()).await
    }

    /// Issues a key for an agent, with `grants`.
    pub async fn credential_with(&self, id: &str, pool: PoolType, grants: Grants) -> Credential {
        let mut conn = fleet_store::connection::connect(&self.redis.url())
            .await
            .unwrap();
        test_issuer(self.keys.prefix())
            .agent(&mut conn, id, pool, grants)
            .await
            .unwrap()
    }

    /// Issues a submitter's key.
    pub async fn submitter(&self, name: &str) -> Credential {
        let mut conn = fleet_store::connection::connect(&self.redis.url())
            .await
            .unwrap();
        test_issuer(self.keys.prefix())
            .submitter(&mut conn, name)
            .await
            .unwrap()
    }

    /// A simulated fleet against this commander, as the tests run one: its
    /// Redis, prefix, API and token, its heartbeat and failure window, every
    /// pool up to its maximum, keys issued; no agents, tasks or phases yet
    /// (each test sets those with `..h.sim_options()`).
    pub fn sim_options(&self) -> fleet_sim::sim::SimOptions {
        fleet_sim::sim::SimOptions {
            redis_url: self.redis.url(),
            prefix: self.config.fleet.prefix.clone(),
            subscribers: 0,
            commander_url: Some(self.base()),
            agents: 0,
            batch: 16,
            join_rate: None,
            heartbeat: self.config.heartbeat_interval(),
            failure_window: self.config.failure_window(),
            stop: 0,
            status_queries: 0,
            hold: Duration::ZERO,
            deregister_at_end: true,
            pools: PoolType::ALL
                .iter()
                .map(|p| (*p, self.config.pool(*p).max_agents))
                .collect(),
            progress: false,
            tasks: Default::default(),
            spawner: false,
            churn_per_sec: 0.0,
            commander_pid: None,
            issuer: Some(test_issuer("swarm:phase-1")),
            http_token: Some(self.token.clone()),
        }
    }

    /// Publishes a payload as its sender would: signed (when security is
    /// on) with the key of the agent it names, or a submitter's. Keys are
    /// issued on first use; an agent's is for the pool the payload names
    /// (coder if none).
    pub async fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) {
        let payload = payload.as_ref();
        if !self.signed() {
            return self.publish_raw(channel, payload).await;
        }
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let agent = v["agentId"].as_str().unwrap_or("").to_string();
        let known = self.signers.lock().unwrap().get(&agent).cloned();
        let signer = match known {
            Some(s) => s,
            None => {
                let cred = if agent.is_empty() {
                    self.submitter("test-submitter").await
                } else {
                    let pool = v["pool"].as_str().and_then(|p| p.parse().ok());
                    // Raw messages claim what a test needs them to.
                    let pool = pool.unwrap_or(PoolType::Coder);
                    self.credential_with(&agent, pool, Grants::ANY).await
                };
                let s = cred.signer();
                self.signers.lock().unwrap().insert(agent, s.clone());
                s
            }
        };
        let signed = signer.sign(channel, payload, seal_ts());
        self.publish_raw(channel, signed).await
    }

    /// Publishes a payload exactly as given (unsigned unless it is).
    pub async fn publish_raw(&self, channel: &str, payload: impl AsRef<[u8]>) {
        let mut c = self.conn().await;
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .query_async::<i64>(&mut c)
            .await
            .unwrap();
    }

    pub async fn listen(&self, channel: &str) -> Events {
        Events::subscribe(&self.client, channel).await
    }

    /// A metric's value from /metrics (0 if absent). `series` is the name
    /// with its labels exactly as rendered, e.g. `fleet_x_total{reason="a"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        parse_metric(&self.metrics().await, series)
    }
}

/// A commander's runtime; dropped from async code, so it shuts down in the
/// background rather than blocking (which would panic).
struct CommanderRuntime(Option<tokio::runtime::Runtime>);

impl CommanderRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("live").handle()
    }
}

impl Drop for CommanderRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A commander's log output, captured.
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn parse_metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| same_series(name, series))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Label order in the exposition is not guaranteed: compare label sets.
fn same_series(a: &str, b: &str) -> bool {
    let split = |s: &str| -> (String, Vec<String>) {
        match s.split_once('{') {
            Some((n, rest)) => {
                let mut labels: Vec<String> = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect();
                labels.sort();
                (n.to_string(), labels)
            }
            None => (s.to_string(), vec![]),
        }
    };
    let (na, la) = split(a);
    let (nb, lb) = split(b);
    na == nb && lb.iter().all(|l| la.contains(l))
}

/// Messages on one channel, parsed as JSON.
pub struct Events {
    rx: mpsc::UnboundedReceiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Events {
    pub async fn subscribe(client: &fleet_store::connection::Client, channel: &str) -> Events {
        let mut ps = client.get_async_pubsub().await.unwrap();
        ps.subscribe(channel).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut s = ps.into_on_message();
            while let Some(m) = s.next().await {
                // Signed or not, the body is the JSON.
                let body = match auth::unframe(m.get_payload_bytes()) {
                    Ok(auth::Unframed::Plain(b)) => b,
                    Ok(auth::Unframed::Signed(s)) => s.body,
                    Err(_) => continue,
                };
                if let Ok(v) = serde_json::from_slice::<Value>(body) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Events { rx, task }
    }

    /// The first message matching `pred`, or a panic after [`WAIT`].
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(what, WAIT, pred).await
    }

    /// The first message matching `pred`, or a panic after `within`.
    pub async fn wait_for_within(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = tokio::time::timeout(within, async {
            while let Some(v) = self.rx.recv().await {
                if pred(&v) {
                    return Some(v);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(v)) => v,
            _ => panic!("timed out after {within:?} waiting for {what}"),
        }
    }

    /// Every message matching `pred` received within `d` (a bounded observation window).
    pub async fn collect_for(&mut self, d: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(d, async {
            while let Some(v) = self.rx.recv().await {
                if pred(&v) {
                    out.push(v);
                }
            }
        })
        .await;
        out
    }
}

pub fn is(kind: &'static str, agent: &str) -> impl Fn(&Value) -> bool {
    let agent = agent.to_string();
    move |v: &Value| v["type"] == kind && v["agentId"] == agent.as_str()
}

/// Held for the whole of a test that loads the machine (a simulated fleet,
/// a flood, a failover under load): one such test at a time, so that in the
/// one test binary two of them never starve each other's commanders (their
/// bounds are set for one). The other tests run beside them as before.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// Waits until `INFO replication` on `conn` contains `needle`.
pub async fn wait_for_replication(conn: &redis::aio::MultiplexedConnection, needle: &str) {
    wait_until(|| {
        let mut c = conn.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            info.contains(needle)
        }
    })
    .await
}

/// A time to seal a message with: now, but later than any this process
/// sealed before (a heartbeat sealed no later than its agent's last one is
/// refused as a replay, and two can fall in one millisecond).
pub fn seal_ts() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = fleet_protocol::now_ms();
    let next = |last: u64| now.max(last + 1);
    match LAST.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| Some(next(l))) {
        Ok(last) | Err(last) => next(last),
    }
}

/// Polls `cond` every 10 ms until true; panics after [`WAIT`].
pub async fn wait_until<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_within(WAIT, cond).await
}

/// [`wait_until`] with a bound of its own.
pub async fn wait_until_within<F, Fut>(bound: Duration, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let ok = tokio::time::timeout(bound, async {
        loop {
            if cond().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "condition not met within {bound:?}");
}

/// The shipped config with a short lease (1 s, renewed every 200 ms), for
/// commander processes.
pub fn process_config() -> std::path::PathBuf {
    process_config_with("short-lease", &[])
}

/// [`process_config`] with more of its text replaced (`from`, `to`).
pub fn process_config_with(name: &str, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let short = [
        ("lease_ms = 5000 ", "lease_ms = 1000 "),
        ("renew_ms = 1000 ", "renew_ms = 200  "),
    ];
    config_file(name, &[&short[..], edits].concat())
}

/// The shipped config with its text replaced (`from`, `to`), written under
/// `name` for this process.
pub fn config_file(name: &str, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml"))
            .expect("shipped config");
    for (from, to) in edits {
        assert!(text.contains(from), "the shipped config has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    let path = std::env::temp_dir().join(format!("fleet-test-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).expect("test config written");
    path
}

/// The real `fleet-commander run` binary on `redis_url` (with
/// [`process_config`]), its HTTP API on `addr`, once it leads and listens.
/// (A commander starts as a standby, and a standby's `/readyz` is 200: an
/// agent that registered then could go unheard.) Killed on drop.
pub async fn commander_process(redis_url: &str, addr: &str) -> tokio::process::Child {
    let child = commander_process_with(redis_url, addr, &process_config()).await;
    wait_leader(addr).await;
    child
}

/// The commander binary with the config file `config`, once it is ready:
/// leading (subscribed, Redis answering) or standing by.
pub async fn commander_process_with(
    redis_url: &str,
    addr: &str,
    config: &std::path::Path,
) -> tokio::process::Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-commander"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("REDIS_URL", redis_url)
        .env("FLEET_HTTP_ADDR", addr)
        .env("FLEET_COMMANDER_KEY", test_commander_key())
        .env(
            "RUST_LOG",
            std::env::var("FLEET_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        // FLEET_TEST_LOG=<filter> shows the commanders' logs.
        .stderr(if std::env::var_os("FLEET_TEST_LOG").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("commander binary starts");
    let url = format!("http://{addr}/readyz");
    wait_until(|| async {
        reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    child
}

/// What `/readyz` of the commander at `addr` says (Null if it does not answer).
pub async fn readyz(addr: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    match r {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Waits until the commander at `addr` leads and listens; its epoch.
pub async fn wait_leader(addr: &str) -> u64 {
    let r = tokio::time::timeout(WAIT, async {
        loop {
            let r = readyz(addr).await;
            if r["role"] == "leader" && r["ready"] == true {
                return r["epoch"].as_u64().expect("an epoch");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("{addr} did not lead within {WAIT:?}"))
}

/// A free loopback address for a server of the test's.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The series of refused messages on `channel` for `reason`.
pub fn rejected(channel: &str, reason: &str) -> String {
    format!(r#"fleet_messages_rejected_total{{channel="{channel}",reason="{reason}"}}"#)
}

/// Waits until the commander has counted a refusal.
pub async fn refused(h: &Harness, channel: &str, reason: &str) {
    let series = rejected(channel, reason);
    wait_until(|| async { h.metric(&series).await >= 1.0 }).await;
}

/// Every payload published on `channel`, byte for byte.
pub async fn tap(h: &Harness, channel: &str) -> mpsc::UnboundedReceiver<Vec<u8>> {
    let mut ps = h.client.get_async_pubsub().await.unwrap();
    ps.subscribe(channel).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = ps.into_on_message();
        while let Some(m) = s.next().await {
            if tx.send(m.get_payload_bytes().to_vec()).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next payload `tap` saw.
pub async fn next_bytes(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>, what: &str) -> Vec<u8> {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("tap open")
}
