//! The operators' view, proven: a commander and a simulated fleet on
//! loopback, a real Prometheus (Debian's `prometheus` package) scraping it,
//! `promtool` checking the shipped config and the scraped metrics, and every
//! PromQL expression of the Grafana dashboards evaluated against Prometheus,
//! which must answer with at least one series. Also the docker stack's files,
//! checked without a Docker engine.

use crate::common::*;
use fleet_commander::config::ScalingPolicy;
use fleet_protocol::api;
use fleet_protocol::pool::PoolType;
use fleet_sim::sim::{self, SimOptions, TaskLoad};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use yaml_rust2::{Yaml, YamlLoader};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} not on PATH: install Debian's prometheus package (apt-get install prometheus); .ci/run does")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);
impl TempDir {
    fn new() -> TempDir {
        let d = std::env::temp_dir().join(format!("fc-prom-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shipped scrape config, pointed at `target` and scraping every second.
fn scrape_config(target: &str) -> String {
    let shipped =
        std::fs::read_to_string(format!("{ROOT}/docker/prometheus/prometheus.yml")).unwrap();
    assert!(shipped.contains("\"commander:8080\""), "shipped target");
    shipped
        .replace(", \"commander-b:8080\"", "")
        .replace("\"commander:8080\"", &format!("\"{target}\""))
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn start_prometheus(target: &str) -> Prometheus {
    let dir = TempDir::new();
    let config = dir.0.join("prometheus.yml");
    std::fs::write(&config, scrape_config(target)).unwrap();
    let (ok, out) = promtool(&["check", "config", config.to_str().unwrap()], None);
    assert!(ok, "promtool check config (test copy): {out}");
    let port = free_port();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let p = Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let http = reqwest::Client::new();
    let ready = format!("{}/-/ready", p.base);
    let until = Instant::now() + Duration::from_secs(30);
    while !matches!(http.get(&ready).send().await, Ok(r) if r.status().is_success()) {
        assert!(Instant::now() < until, "prometheus not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p
}

/// An instant query: (error, number of series).
async fn query(http: &reqwest::Client, base: &str, expr: &str) -> Result<usize, String> {
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/query"), [("query", expr)])
        .map_err(|e| e.to_string())?;
    let r: Value = http
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if r["status"] != "success" {
        return Err(format!("{}: {}", r["errorType"], r["error"]));
    }
    Ok(r["data"]["result"].as_array().map_or(0, Vec::len))
}

/// Every `expr` of every dashboard, with Grafana's variables substituted.
fn dashboard_queries() -> Vec<(String, String, String)> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    for entry in std::fs::read_dir(format!("{ROOT}/grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for panel in d["panels"].as_array().unwrap() {
            let mut exprs = Vec::new();
            walk(panel, &mut exprs);
            assert!(
                !exprs.is_empty(),
                "panel without a query: {}",
                panel["title"]
            );
            for e in exprs {
                all.push((
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    panel["title"].as_str().unwrap_or("?").to_string(),
                    e.replace("$__rate_interval", "1m")
                        .replace("$__interval", "15s")
                        .replace("$__range", "5m"),
                ));
            }
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let _heavy = heavy().await;
    let queries = dashboard_queries();
    assert!(queries.len() >= 40, "four dashboards: {}", queries.len());
    // A fleet with something of everything: tasks failing and retried, an
    // agent dying mid-task, agents killed and detected, a pool scaling.
    let h = Harness::start_with(|c| {
        for pc in c.pools.values_mut() {
            pc.scaling_enabled = false;
        }
        c.pools.get_mut(&PoolType::Coder).unwrap().scaling_enabled = true;
        // A 2 s failure window: agents, commander and Prometheus share this
        // process and the machine; a starved host must not fake a death.
        c.fleet.missed_heartbeats = 20;
        // Failing agents sit out briefly: the test waits for every task.
        c.tasks.quarantine_ms = 500;
        // Agents die at random mid-task: a task hit twice by chance is not poison.
        c.tasks.poison_after = 0;
        c.scaling = ScalingPolicy {
            sample_ms: 100,
            window_ms: 500,
            request_timeout_ms: 1000,
            ..c.scaling
        };
    })
    .await;
    let target = h.commander.as_ref().unwrap().http_addr.to_string();
    let prom = start_prometheus(&target).await;
    let stop_sim = CancellationToken::new();
    let sim = tokio::spawn(sim::run(
        SimOptions {
            subscribers: 0,
            redis_url: h.redis.url(),
            prefix: h.config.fleet.prefix.clone(),
            commander_url: Some(h.base()),
            agents: 48,
            batch: 16,
            join_rate: None,
            heartbeat: h.config.heartbeat_interval(),
            failure_window: h.config.failure_window(),
            stop: 2,
            status_queries: 20,
            hold: Duration::from_secs(4),
            deregister_at_end: false,
            pools: PoolType::ALL
                .iter()
                .map(|p| (*p, h.config.pool(*p).max_agents))
                .collect(),
            progress: false,
            tasks: TaskLoad {
                count: 300,
                rate: Some(100.0),
                work: Duration::from_millis(5),
                fail_fraction: 0.1,
                die_fraction: 0.01,
                usage: 1.0,
                batch: 1,
            },
            spawner: false,
            churn_per_sec: 2.0,
            commander_pid: None,
            issuer: Some(test_issuer("swarm:phase-1")),
            http_token: Some(h.token.clone()),
        },
        stop_sim.clone(),
    ));
    // A malformed message, refused and counted.
    let mut conn = h.client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(h.keys.channels().registry())
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();

    // promtool lints what the commander exposes.
    let text = h.metrics().await;
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics: {out}");

    // Every query answers with data once Prometheus has scraped a few times.
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(60);
    let mut failing: Vec<String>;
    loop {
        failing = Vec::new();
        for (file, panel, expr) in &queries {
            match query(&http, &prom.base, expr).await {
                Ok(n) if n > 0 => {}
                Ok(_) => failing.push(format!("{file} / {panel}: no series: {expr}")),
                Err(e) => panic!("{file} / {panel}: query error {e}: {expr}"),
            }
        }
        if failing.is_empty() || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        failing.is_empty(),
        "queries without data:\n{}",
        failing.join("\n")
    );
    let scrapes = query(
        &http,
        &prom.base,
        r#"count_over_time(up{job="fleet-commander"}[5m]) >= 2"#,
    )
    .await
    .unwrap();
    assert_eq!(scrapes, 1, "prometheus scraped the commander");
    // The simulator ends when every task is done; if that takes too long,
    // stop it and say what was left, with the commander's view of the pools.
    let mut sim = sim;
    let (finished, outcome) = match tokio::time::timeout(Duration::from_secs(60), &mut sim).await {
        Ok(done) => (true, done),
        Err(_) => {
            stop_sim.cancel();
            let done = tokio::time::timeout(Duration::from_secs(20), sim)
                .await
                .expect("the simulator stops when asked");
            (false, done)
        }
    };
    let report = outcome.unwrap().unwrap();
    let (_, pools) = h.get(api::POOLS).await;
    assert!(
        finished,
        "the simulator did not finish in 60 s: {}\npools: {pools}",
        serde_json::to_string(&report).unwrap()
    );
    assert_eq!(
        report.false_deaths,
        0,
        "{}",
        serde_json::to_string(&report).unwrap()
    );
    println!(
        "FIGURES observability: {} dashboard queries, every one with data",
        queries.len()
    );
}

#[test]
fn the_shipped_prometheus_config_passes_promtool() {
    let path = format!("{ROOT}/docker/prometheus/prometheus.yml");
    let (ok, out) = promtool(&["check", "config", &path], None);
    assert!(ok, "{out}");
}

fn yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap();
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .remove(0)
}

/// What can be checked of the docker stack without a Docker engine: the
/// compose file parses, every file it mounts or builds from exists, the
/// services the configs name exist, and the Grafana provisioning matches
/// the dashboards.
#[test]
fn the_docker_stack_is_consistent() {
    let compose = yaml("docker/compose.yml");
    let services = compose["services"].as_hash().expect("services");
    let names: Vec<&str> = services.keys().filter_map(Yaml::as_str).collect();
    for want in [
        "redis",
        "commander",
        "commander-b",
        "prometheus",
        "grafana",
        "sim",
    ] {
        assert!(names.contains(&want), "service {want} in compose.yml");
    }
    let docker = Path::new(ROOT).join("docker");
    for (name, svc) in services {
        for v in svc["volumes"].as_vec().into_iter().flatten() {
            let spec = v.as_str().unwrap();
            let src = spec.split(':').next().unwrap();
            if src.starts_with('.') {
                assert!(
                    docker.join(src).exists(),
                    "{name:?} mounts {src}, which does not exist"
                );
            }
        }
        if let Some(ctx) = svc["build"]["context"].as_str() {
            let dockerfile = svc["build"]["dockerfile"].as_str().unwrap();
            assert!(docker.join(ctx).join(dockerfile).is_file(), "{dockerfile}");
        }
        for p in svc["ports"].as_vec().into_iter().flatten() {
            assert!(
                p.as_str().unwrap().starts_with("127.0.0.1:"),
                "{name:?} publishes {p:?} beyond loopback"
            );
        }
    }
    // The commander's config mount is the shipped file, and it is valid.
    fleet_commander::config::Config::load(&Path::new(ROOT).join("config/fleet.toml")).unwrap();
    // Prometheus scrapes the commander service on its port.
    let prom = yaml("docker/prometheus/prometheus.yml");
    let targets: Vec<_> = prom["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(targets, ["commander:8080", "commander-b:8080"]);
    // Grafana's datasource is that Prometheus, with the uid the dashboards use.
    let ds = yaml("grafana/provisioning/datasources/prometheus.yml");
    let ds = &ds["datasources"][0];
    assert_eq!(ds["url"].as_str(), Some("http://prometheus:9090"));
    let uid = ds["uid"].as_str().unwrap();
    let provider = yaml("grafana/provisioning/dashboards/fleet.yml");
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards"),
        "where compose.yml mounts grafana/dashboards"
    );
    let dashboards: Vec<_> = std::fs::read_dir(format!("{ROOT}/grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        dashboards.len(),
        4,
        "overview, pools, tasks and latency, health"
    );
    for d in dashboards {
        let text = std::fs::read_to_string(&d).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        for p in v["panels"].as_array().unwrap() {
            assert_eq!(
                p["datasource"]["uid"],
                uid,
                "{}: {}",
                d.display(),
                p["title"]
            );
        }
    }
    // The image runs as a non-root user.
    let dockerfile = std::fs::read_to_string(docker.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("\nUSER "), "non-root user");
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
}

/// `fleet_redis_round_trips_per_message{kind}` counts the round trips each
/// handled message took: heartbeats that come together share one script
/// call (their nonces recorded in it), and a registration is one (the
/// script publishes its reply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handled_message_counts_its_redis_round_trips() {
    let h = Harness::start().await;
    let series = |kind: &str, part: &str| {
        format!("fleet_redis_round_trips_per_message_{part}{{kind=\"{kind}\"}}")
    };
    let before = (
        h.metric(&series("heartbeat", "count")).await,
        h.metric(&series("heartbeat", "sum")).await,
        h.metric(&series("register", "count")).await,
        h.metric(&series("register", "sum")).await,
    );
    let mut agents = Vec::new();
    for i in 0..10 {
        let mut a = h.agent(&format!("trips-{i}"), PoolType::Tester).await;
        a.register(T).await.unwrap();
        agents.push(a);
    }
    for _ in 0..3 {
        futures_util::future::join_all(
            agents
                .iter_mut()
                .map(|a| a.heartbeat(fleet_protocol::AgentStatus::Idle, 0.0)),
        )
        .await
        .into_iter()
        .for_each(|r| r.unwrap());
    }
    wait_until(|| async { h.metric(&series("heartbeat", "count")).await >= before.0 + 30.0 }).await;
    let beats = h.metric(&series("heartbeat", "count")).await - before.0;
    let trips = h.metric(&series("heartbeat", "sum")).await - before.1;
    // Each script call counted once, shared out among its heartbeats: at
    // least one call (three rounds), and fewer calls than heartbeats.
    assert!(
        (1.0..beats).contains(&trips.round()),
        "{trips} round trips for {beats} heartbeats sent ten at a time"
    );
    let regs = h.metric(&series("register", "count")).await - before.2;
    let trips = h.metric(&series("register", "sum")).await - before.3;
    assert!(regs >= 1.0, "the registration is counted");
    assert!(
        (regs..=3.0 * regs).contains(&trips),
        "{trips} round trips for {regs} registrations"
    );
}

/// Two commanders in one process count apart: each `/metrics` shows only
/// what its own commander did (the suite runs every test's commander in one
/// binary, concurrently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commanders_in_one_process_count_apart() {
    let a = Harness::start().await;
    let b = Harness::start().await;
    let series = r#"fleet_messages_rejected_total{channel="registry",reason="bad_json"}"#;
    a.publish_raw(&a.keys.channels().registry(), "{not json")
        .await;
    wait_until(|| async { a.metric(series).await >= 1.0 }).await;
    assert_eq!(b.metric(series).await, 0.0, "b counted a's refusal");
    assert!(
        b.metrics()
            .await
            .contains("# HELP process_cpu_seconds_total"),
        "each registry describes the process metrics"
    );
}
