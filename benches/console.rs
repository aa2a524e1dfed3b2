//! The console's figures (issue 17): a commander (release build, shipped
//! config, security on) on a private redis-server with a simulated fleet of
//! AGENTS agents (`fleet-commander sim`, 5 s heartbeats), and CONSOLES
//! headless chromium pages on the overview, signed in.
//!
//! - the page and its assets: bytes;
//! - first render: a reload of the signed-in overview, from navigation start
//!   to the first page drawn with data (`fleet-first-render` mark), p50/max;
//! - live: an agent of the `ui` pool registers and deregisters 20 times;
//!   each page records (a MutationObserver) when the `ui` tile changed:
//!   from the registration's reply (or the deregistration's) to the change
//!   on the page, p50/p99 over every page;
//! - the commander's CPU over 15 s without consoles, then with them open.
//!
//! HTTP_CONSOLES=1: the consoles are HTTP clients asking what the overview
//! page asks (events, then its reads), without a browser: the commander's
//! side of ten consoles, on a machine that cannot also run ten chromiums.
//!
//! The browsers run at `nice 19` (BROWSER_NICE): they stand for operators on
//! their own machines, and ten chromiums at the fleet's priority take the
//! CPU 10,000 agents' commander needs on a 2-core machine.
//!
//!   cargo bench --bench console                      # AGENTS=1000 CONSOLES=10
//!   AGENTS=10000 cargo bench --bench console         # pool maxima x10

#[path = "../tests/it/common/mod.rs"]
mod common;

use common::browser::{find, Driver};
use common::*;
use fantoccini::Client;
use fleet_protocol::pool::PoolType;
use serde_json::Value;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The commander's CPU time (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Percent of one core the commander used over `window`.
async fn cpu(pid: u32, window: Duration) -> f64 {
    let t0 = cpu_ticks(pid);
    tokio::time::sleep(window).await;
    (cpu_ticks(pid) - t0) as f64 / 100.0 / window.as_secs_f64() * 100.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// A console without a browser: what the overview page asks of the
/// commander, from an HTTP client. The events stream; after each `change`,
/// the fleet, the pools and the commanders; every 5 s, /metrics and the
/// governance view. It notes when it saw the `ui` pool's size change.
async fn http_console(
    base: String,
    token: String,
    seen: std::sync::Arc<std::sync::Mutex<(u64, u64)>>,
) {
    let http = authed(&token);
    let mut events = http.get(format!("{base}/v1/events")).send().await.unwrap();
    let mut slow_at = Instant::now() - Duration::from_secs(10);
    let mut buf = String::new();
    let mut refresh = true;
    loop {
        if refresh {
            refresh = false;
            let get = |p: &str| http.get(format!("{base}{p}")).send();
            let (_fleet, pools, _cmd) =
                tokio::join!(get("/v1/fleet"), get("/v1/pools"), get("/v1/commanders"));
            if slow_at.elapsed() >= Duration::from_secs(5) {
                slow_at = Instant::now();
                let _ = tokio::join!(get("/metrics"), get("/v1/governance"));
            }
            if let Ok(r) = pools {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if let Some(ui) = v
                    .as_array()
                    .and_then(|a| a.iter().find(|p| p["type"] == "ui"))
                {
                    let n = ui["currentAgents"].as_u64().unwrap_or(0);
                    let mut s = seen.lock().unwrap();
                    if s.0 != n {
                        *s = (n, fleet_protocol::now_ms());
                    }
                }
            }
        }
        match events.chunk().await {
            Ok(Some(c)) => {
                buf.push_str(&String::from_utf8_lossy(&c));
                while let Some(i) = buf.find("\n\n") {
                    if buf[..i].contains("event: change") {
                        refresh = true;
                    }
                    buf.drain(..i + 2);
                }
            }
            _ => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn http_consoles(
    base: &str,
    url: &str,
    token: &str,
    consoles: usize,
    pid: u32,
    quiet: f64,
    bytes: usize,
    (l50, l99): (f64, f64),
    agents: usize,
    mut sim: tokio::process::Child,
    config: &std::path::Path,
) {
    let mut seen = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..consoles {
        let s = std::sync::Arc::new(std::sync::Mutex::new((u64::MAX, 0u64)));
        tasks.push(tokio::spawn(http_console(
            base.to_string(),
            token.to_string(),
            s.clone(),
        )));
        seen.push(s);
    }
    wait_until(|| async { seen.iter().all(|s| s.lock().unwrap().0 != u64::MAX) }).await;
    let open = cpu(pid, Duration::from_secs(15)).await;
    let client = fleet_store::connection::client(url).unwrap();
    let mut lat = Vec::new();
    for i in 0..20 {
        let id = format!("bench-ui-{i}");
        let mut a = bench_agent(&client, url, &id).await;
        for step in 0..2 {
            let before: Vec<u64> = seen.iter().map(|s| s.lock().unwrap().0).collect();
            let at = toggle(&mut a, step == 0).await;
            for (s, was) in seen.iter().zip(&before) {
                let deadline = Instant::now() + WAIT;
                loop {
                    let (n, t) = *s.lock().unwrap();
                    if n != *was {
                        lat.push(t.saturating_sub(at) as f64);
                        break;
                    }
                    assert!(Instant::now() < deadline, "a console never saw the change");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!(
        "console (HTTP clients, no browser), {agents} agents, {consoles} consoles: page + assets {bytes} bytes; \
         change -> client p50 {p50:.0} ms, p99 {p99:.0} ms (n={}); commander CPU {quiet:.1}% of a core without consoles, {open:.1}% with them; \
         GET /v1/agents (filtered, a page of 50) p50 {l50:.1} ms, max {l99:.1} ms",
        lat.len()
    );
    for t in tasks {
        t.abort();
    }
    let _ = sim.kill().await;
    let _ = std::fs::remove_file(config);
}

/// The bench's agent of the `ui` pool, signed with a key of its own.
async fn bench_agent(
    client: &fleet_store::connection::Client,
    url: &str,
    id: &str,
) -> fleet_agent::Agent {
    let publisher = fleet_store::connection::connect(url).await.unwrap();
    fleet_agent::Agent::connect(
        client,
        publisher,
        fleet_protocol::Channels::default(),
        spec(id, PoolType::Ui),
    )
    .await
    .unwrap()
    .with_credential(&credential(url, id, PoolType::Ui).await)
}

/// Registers (`up`) or deregisters the bench's agent; when the reply came
/// (ms). Both are idempotent: a request that got no reply in time (a
/// saturated machine) is sent again, up to five times.
async fn toggle(a: &mut fleet_agent::Agent, up: bool) -> u64 {
    let mut tries = 0;
    loop {
        tries += 1;
        let r = if up {
            a.register(T).await.map(|_| ())
        } else {
            a.deregister(T).await.map(|_| ())
        };
        match r {
            Ok(()) => return fleet_protocol::now_ms(),
            Err(e) if tries < 5 => eprintln!("retrying: {e}"),
            Err(e) => panic!("no reply after {tries} tries: {e}"),
        }
    }
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

fn main() {
    // The SDK's warnings (a reply refused, a lost subscription) on stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let agents = env("AGENTS", 1000);
    let consoles = env("CONSOLES", 10);
    let bin = env!("CARGO_BIN_EXE_fleet-commander");
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let url = redis.url();
    let addr = free_addr();
    let base = format!("http://{addr}");
    // Room for the fleet and the test agent (as benches/loadtest.sh for
    // 10,000): pool maxima x10, cap 12000.
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml")).unwrap();
    let config =
        std::env::temp_dir().join(format!("fleet-console-bench-{}.toml", std::process::id()));
    let text: String = shipped
        .lines()
        .map(|l| match l.strip_prefix("max_agents = ") {
            Some(rest) => {
                let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                let tail = &rest[n.len()..];
                let n: u64 = n.parse().unwrap_or(0);
                let m = if n == 1000 { 12000 } else { n * 10 };
                format!("max_agents = {m}{tail}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&config, text).unwrap();
    let commander = commander_process_with(&url, &addr, &config).await;
    wait_leader(&addr).await;
    let pid = commander.id().unwrap();
    let token = admin_token(&url).await;
    let api = authed(&token);

    // The fleet.
    let mut sim = tokio::process::Command::new(bin)
        .args(["--config"])
        .arg(&config)
        .args([
            "sim",
            "--agents",
            &agents.to_string(),
            "--hold-secs",
            "900",
            "--stop",
            "0",
            "--status-queries",
            "0",
            "--tasks",
            "0",
            "--join-rate",
            &(agents / 5).max(200).to_string(),
        ])
        .args(["--commander-url", &base])
        .env("REDIS_URL", &url)
        .env("FLEET_COMMANDER_KEY", test_commander_key())
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the simulator");
    let joined = Instant::now();
    loop {
        let v: Value = api
            .get(format!("{base}/v1/fleet"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["totalAgents"].as_u64() >= Some(agents as u64) {
            break;
        }
        assert!(
            joined.elapsed() < Duration::from_secs(120),
            "the fleet did not join: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{agents} agents registered in {:.1} s",
        joined.elapsed().as_secs_f64()
    );

    // The page.
    let mut bytes = 0;
    for p in ["/", "/console/app.js", "/console/app.css"] {
        bytes += reqwest::get(format!("{base}{p}"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len();
    }

    // The agents page's query (a filter and a page of 50), 20 times.
    let mut list = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = api
            .get(format!(
                "{base}/v1/agents?pool=coder&status=idle&sort=lastHeartbeat&limit=50"
            ))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        r.bytes().await.unwrap();
        list.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (l50, l99) = (pct(&mut list, 0.5), pct(&mut list, 0.99));

    let quiet = cpu(pid, Duration::from_secs(15)).await;

    if std::env::var("HTTP_CONSOLES").is_ok() {
        return http_consoles(
            &base,
            &url,
            &token,
            consoles,
            pid,
            quiet,
            bytes,
            (l50, l99),
            agents,
            sim,
            &config,
        )
        .await;
    }
    // The consoles.
    let driver = Driver::start_niced(env("BROWSER_NICE", 19) as u8).await;
    let mut pages = Vec::new();
    for _ in 0..consoles {
        let c = driver.browser().await;
        common::browser::sign_in(&c, &base, &token).await;
        pages.push(c);
    }
    // First render of a reload, signed in.
    let mut first = Vec::new();
    for c in &pages {
        c.refresh().await.unwrap();
        find(c, "[data-pool=ui] .size").await;
        let ms = loop {
            let v = js(c, "const m = performance.getEntriesByName('fleet-first-render'); return m.length ? m[0].startTime : null;").await;
            if let Some(ms) = v.as_f64() {
                break ms;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        first.push(ms);
    }
    let open = cpu(pid, Duration::from_secs(15)).await;

    // Live: the ui tile, watched on every page.
    for c in &pages {
        js(c, "window.__changes = []; new MutationObserver(() => window.__changes.push(Date.now()))\
               .observe(document.querySelector('#tiles'), {subtree: true, childList: true, characterData: true}); \
               window.__ui = () => document.querySelector('[data-pool=ui] .size').textContent; return 1;").await;
    }
    let client = fleet_store::connection::client(&url).unwrap();
    let mut lat = Vec::new();
    for i in 0..20 {
        let id = format!("bench-ui-{i}");
        let mut a = bench_agent(&client, &url, &id).await;
        for step in 0..2 {
            let before: Vec<Value> = {
                let mut v = Vec::new();
                for c in &pages {
                    v.push(js(c, "return window.__ui();").await);
                }
                v
            };
            let at = toggle(&mut a, step == 0).await;
            for (c, was) in pages.iter().zip(&before) {
                let deadline = Instant::now() + WAIT;
                loop {
                    let v = js(
                        c,
                        "return [window.__ui(), window.__changes.slice(-1)[0] || 0];",
                    )
                    .await;
                    if v[0] != *was {
                        let changed = v[1].as_f64().unwrap_or(0.0);
                        lat.push((changed - at as f64).max(0.0));
                        break;
                    }
                    assert!(Instant::now() < deadline, "a page never showed the change");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let (f50, fmax) = (pct(&mut first, 0.5), pct(&mut first, 1.0));
    println!(
        "console, {agents} agents, {consoles} consoles: page + assets {bytes} bytes; first render p50 {f50:.0} ms, max {fmax:.0} ms; \
         change -> page p50 {p50:.0} ms, p99 {p99:.0} ms (n={}); commander CPU {quiet:.1}% of a core without consoles, {open:.1}% with them; \
         GET /v1/agents (filtered, a page of 50) p50 {l50:.1} ms, max {l99:.1} ms",
        lat.len()
    );
    for c in pages {
        let _ = c.close().await;
    }
    drop(driver);
    let _ = sim.kill().await;
    let _ = std::fs::remove_file(&config);
}
