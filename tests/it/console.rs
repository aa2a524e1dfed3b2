//! Issue 17: the operators' console in a real browser (Debian's chromium,
//! headless, through chromedriver) against a real commander with a small
//! fleet of Rust SDK agents. Signs in as an operator and as a viewer and
//! checks what each sees and may do; XSS probes (an agent whose capability
//! is `<script>alert(1)</script>`, a task whose payload holds HTML) render
//! as text. Screenshots of each page: `target/console-screenshots/`.

use crate::common::browser::{click, find, Driver};
use crate::common::*;
use fantoccini::{Client, Locator};
use fleet_protocol::pool::PoolType;
use fleet_store::tokens::{TokenRole, TokenStore};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "swarm:phase-1";
const XSS_CAP: &str = "<script>alert(1)</script>";
const XSS_PAYLOAD: &str = "<img src=x onerror=alert(2)><b>bold</b>";

fn shots() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// The text of `css` once `ok` holds for it (within the wait).
async fn text_when(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let last = std::sync::Mutex::new(String::new());
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(e) = c.find(Locator::Css(css)).await {
                if let Ok(t) = e.text().await {
                    if ok(&t) {
                        return t;
                    }
                    *last.lock().unwrap() = t;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "{css} never matched within {WAIT:?}; last seen: {:?}",
            last.lock().unwrap()
        )
    })
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.unwrap().len()
}

/// Opens `hash` (a console route) as a person following a link would.
async fn go(c: &Client, base: &str, hash: &str) {
    if hash.is_empty() {
        c.goto(&format!("{base}/")).await.unwrap();
    } else {
        c.execute("location.hash = arguments[0];", vec![json!(hash)])
            .await
            .unwrap();
    }
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    browser::sign_in(c, base, token).await;
    text_when(c, "#summary", |t| t.contains("agents")).await;
}

/// Evaluates `js` (a script returning a promise or a value) in the page.
async fn eval(c: &Client, js: &str) -> Value {
    c.execute_async(
        &format!("const done = arguments[arguments.length - 1]; Promise.resolve(({js})).then(done, e => done(String(e)));"),
        vec![],
    )
    .await
    .unwrap()
}

async fn token(url: &str, name: &str, role: TokenRole) -> String {
    let mut conn = fleet_store::connection::connect(url).await.unwrap();
    TokenStore::new(fleet_store::Keys::new(PREFIX))
        .issue(&mut conn, name, role, fleet_protocol::now_ms())
        .await
        .unwrap()
}

/// One agent of `pool` with `capabilities`, running until `stop`.
async fn agent(
    url: &str,
    id: &str,
    pool: PoolType,
    capabilities: &[&str],
    stop: &CancellationToken,
) {
    let client = fleet_store::connection::client(url).unwrap();
    let publisher = fleet_store::connection::connect(url).await.unwrap();
    let mut s = spec(id, pool);
    s.capabilities = capabilities.iter().map(|c| c.to_string()).collect();
    let mut a =
        fleet_agent::Agent::connect(&client, publisher, fleet_protocol::Channels::default(), s)
            .await
            .unwrap()
            .with_credential(&credential(url, id, pool).await);
    a.register(T).await.unwrap();
    let stop = stop.clone();
    tokio::spawn(async move {
        a.run_with(Duration::from_millis(500), Duration::ZERO, stop, None)
            .await
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let url = redis.url();
    let addr = free_addr();
    let _commander = commander_process(&url, &addr).await;
    let base = format!("http://{addr}");
    let (operator, viewer, admin) = (
        token(&url, "ops", TokenRole::Operator).await,
        token(&url, "watcher", TokenRole::Viewer).await,
        token(&url, "root", TokenRole::Admin).await,
    );
    let workers = Workers::start(&url, PREFIX, 3, PoolType::Coder, Duration::from_millis(20)).await;
    let stop = CancellationToken::new();
    agent(&url, "xss-probe", PoolType::Tester, &[XSS_CAP], &stop).await;
    agent(&url, "ui-probe-7", PoolType::Ui, &["python"], &stop).await;
    let api = authed(&admin);
    let task = submit_to(
        &api,
        &base,
        json!({"pool": "coder", "payload": {"html": XSS_PAYLOAD}, "clientId": "console-1"}),
    )
    .await;
    let done = task_in_state(&api, &base, &task, "completed").await;
    let ran_on = done["agentId"].as_str().unwrap().to_string();

    let d = Driver::start().await;
    let c = d.browser().await;

    // The page and its assets carry a CSP; signing in keeps the token out of the URL.
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let started = Instant::now();
    sign_in(&c, &base, &operator).await;
    let first_render = started.elapsed();
    assert!(!c.current_url().await.unwrap().as_str().contains(&operator));

    // Overview: the tiles say what the fleet holds.
    let coder = text_when(&c, "[data-pool=coder] .size", |t| t.starts_with("3 /")).await;
    assert!(coder.starts_with("3 / "), "{coder}");
    text_when(&c, "[data-pool=tester] .count-idle", |t| t == "1").await;
    // Governance: no validator in this fleet, so f = 0 and nothing governed.
    text_when(&c, "#validators", |t| {
        t.starts_with("0 validators") && t.contains("f = 0")
    })
    .await;
    text_when(&c, "[data-pool=ui] .size", |t| t.starts_with("1 /")).await;
    // What needs an operator, said in words: pools below their minimum
    // (this fleet has no spawner), and the totals.
    let warnings = text_when(&c, "#warnings", |t| t.contains("below their minimum")).await;
    assert!(warnings.contains("tester (1 of 3)"), "{warnings}");
    text_when(&c, "#totals", |t| t.contains("tasks completed")).await;
    // Counts in the navigation.
    text_when(&c, "nav", |t| t.contains("Dead letters (0)")).await;
    // Fairness is not judged on a pool that had almost no work.
    let fairness = text_when(&c, "[data-pool=coder]", |t| t.contains("fairness")).await;
    assert!(fairness.contains("too little work to judge"), "{fairness}");
    shot(&c, "overview").await;

    // Live: a new agent shows on the open page (no reload), and the tile
    // that shows it is the same element, updated in place (nothing under
    // the pointer is rebuilt).
    eval(
        &c,
        "(window.__tile = document.querySelector('[data-pool=ui]'), 1)",
    )
    .await;
    let joined = Instant::now();
    agent(&url, "ui-late", PoolType::Ui, &[], &stop).await;
    text_when(&c, "[data-pool=ui] .size", |t| t.starts_with("2 /")).await;
    let live = joined.elapsed();
    assert_eq!(
        eval(
            &c,
            "window.__tile === document.querySelector('[data-pool=ui]')"
        )
        .await,
        json!(true),
        "the tile was rebuilt by a live refresh"
    );

    // Agents: search an id, then filter by pool and status.
    go(&c, &base, "#/agents").await;
    let q = find(&c, "#q").await;
    q.send_keys("probe-7").await.unwrap();
    text_when(&c, "#agents tbody", |t| {
        t.contains("ui-probe-7") && !t.contains("xss-probe")
    })
    .await;
    assert_eq!(count(&c, "#agents tbody tr").await, 1);
    go(&c, &base, "#/agents?pool=coder&status=idle").await;
    c.refresh().await.unwrap();
    text_when(&c, "#agents tbody", |t| t.contains("coder-0")).await;
    let rows = c.find_all(Locator::Css("#agents tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        let t = r.text().await.unwrap();
        assert!(t.contains("coder") && !t.contains("tester"), "{t}");
    }
    shot(&c, "agents").await;

    // XSS probes render as text: the capability, the payload.
    go(&c, &base, "#/agents?pool=tester").await;
    c.refresh().await.unwrap();
    let caps = text_when(&c, "#agents tbody", |t| t.contains("xss-probe")).await;
    assert!(caps.contains(XSS_CAP), "{caps}");
    go(&c, &base, &format!("#/tasks/{task}")).await;
    c.refresh().await.unwrap();
    let payload = text_when(&c, "#payload", |t| t.contains("onerror")).await;
    assert!(payload.contains(XSS_PAYLOAD), "{payload}");
    assert_eq!(
        eval(
            &c,
            "document.querySelectorAll('main img, main b, main script').length"
        )
        .await,
        json!(0)
    );
    assert_eq!(
        eval(&c, "document.querySelectorAll('script').length").await,
        json!(1),
        "only app.js"
    );

    // A task's evidence names the agent it went to.
    let evidence = text_when(&c, "#evidence", |t| t.contains(&ran_on)).await;
    assert!(evidence.contains("strategy"), "{evidence}");
    // The timeline is the task's attempts: who, when, how it ended.
    let timeline = text_when(&c, "#timeline", |t| t.contains("attempt 1 by")).await;
    assert!(
        timeline.contains(&format!("attempt 1 by {ran_on}")) && timeline.contains("completed"),
        "{timeline}"
    );
    shot(&c, "task").await;

    // A cookie-authenticated write without the console's header: refused (CSRF).
    let csrf = eval(
        &c,
        "fetch('/v1/agents/coder-1/drain', {method: 'POST'}).then(r => r.status)",
    )
    .await;
    assert_eq!(csrf, json!(403));

    // An operator drains an agent: confirmed, shown live, audited.
    let target = if ran_on == "coder-2" {
        "coder-1"
    } else {
        "coder-2"
    };
    go(&c, &base, &format!("#/agents/{target}")).await;
    c.refresh().await.unwrap();
    click(&c, "#drain-agent").await;
    find(&c, "#confirm-ok").await.click().await.unwrap();
    text_when(&c, "#toast", |t| t.contains("draining")).await;
    // The agent (holding nothing) leaves at once; the open page follows by
    // itself (no reload: the deregistration's event).
    text_when(&c, "#main", |t| t.contains("No such agent")).await;
    shot(&c, "agent-drained").await;
    // The agents page lists it among those that left, and why.
    go(&c, &base, "#/agents").await;
    let left = text_when(&c, "#departed", |t| t.contains(target)).await;
    assert!(left.contains("left"), "{left}");
    let audit: Value = api
        .get(format!("{base}/v1/audit?limit=20"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let drained = audit.as_array().unwrap().iter().any(|e| {
        e["action"] == "drain"
            && e["actor"] == "token:ops"
            && e["target"].as_str().unwrap().contains(target)
    });
    assert!(drained, "the drain is in the audit log: {audit}");

    // An operator gives a pool's size back to the scaler (prompt, confirm).
    go(&c, &base, "#/scaling").await;
    // (Found again if a live refresh redrew the table in between.)
    click(&c, "button.scale[data-pool=coder]").await;
    c.send_alert_text("auto").await.unwrap();
    c.accept_alert().await.unwrap();
    find(&c, "#confirm-ok").await.click().await.unwrap();
    text_when(&c, "#toast", |t| t.contains("Pool coder: auto")).await;
    // Pause a pool's queue, then resume it, from the same page.
    click(&c, "button.pause-queue[data-pool=ui]").await;
    find(&c, "#confirm-ok").await.click().await.unwrap();
    text_when(&c, "#toast", |t| t.contains("ui's queue paused")).await;
    text_when(&c, "#pools", |t| t.contains("paused")).await;
    click(&c, "button.resume-queue[data-pool=ui]").await;
    find(&c, "#confirm-ok").await.click().await.unwrap();
    text_when(&c, "#toast", |t| t.contains("ui's queue resumed")).await;

    for (page, name) in [
        ("#/dead-letters", "dead-letters"),
        ("#/poison", "poison"),
        ("#/scaling", "scaling"),
        ("#/tasks", "tasks"),
    ] {
        go(&c, &base, page).await;
        c.refresh().await.unwrap();
        text_when(&c, "main h1", |t| !t.is_empty()).await;
        shot(&c, name).await;
    }
    assert_eq!(
        count(&c, "nav a[href='#/audit']").await,
        0,
        "the audit log is for admins"
    );
    find(&c, "#sign-out").await.click().await.unwrap();
    text_when(&c, "#sign-in", |_| true).await;

    // A viewer sees no action, and is refused (403) if it tries anyway.
    sign_in(&c, &base, &viewer).await;
    go(&c, &base, "#/agents/coder-0").await;
    c.refresh().await.unwrap();
    text_when(&c, "#agent-status", |t| !t.is_empty()).await;
    // The agent's budget (the shipped allowance, untouched), without a top-up.
    text_when(&c, "#agent-budget", |t| {
        t.contains("of 1,000,000 tokens left")
    })
    .await;
    assert_eq!(count(&c, "#drain-agent, #top-up").await, 0);
    go(&c, &base, "#/scaling").await;
    c.refresh().await.unwrap();
    text_when(&c, "#pools tbody", |t| t.contains("coder")).await;
    assert_eq!(count(&c, "button.scale, button.drain-pool").await, 0);
    shot(&c, "viewer").await;
    let tried = eval(
        &c,
        "fetch('/v1/agents/coder-0/drain', {method: 'POST', headers: {'x-fleet-console': '1'}}).then(r => r.status)",
    )
    .await;
    assert_eq!(tried, json!(403));

    // On a phone's screen.
    c.set_window_size(390, 844).await.unwrap();
    go(&c, &base, "#/").await;
    text_when(&c, "[data-pool=coder] .size", |t| !t.is_empty()).await;
    shot(&c, "phone-overview").await;

    // A standby serves the console too, read-only: its writes are refused.
    let standby_addr = free_addr();
    let _standby = commander_process_with(&url, &standby_addr, &process_config()).await;
    let standby = format!("http://{standby_addr}");
    assert_eq!(readyz(&standby_addr).await["role"], "standby");
    let page = reqwest::get(format!("{standby}/")).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let cookie = format!("fleet_session={operator}");
    let refused = reqwest::Client::new()
        .post(format!("{standby}/v1/agents/coder-0/drain"))
        .header("cookie", &cookie)
        .header("x-fleet-console", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503, "a standby refuses writes");
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"], "not_leader");

    println!(
        "console: first render {} ms after signing in; a new agent on the open page {} ms after it registered; screenshots in {}",
        first_render.as_millis(),
        live.as_millis(),
        shots().display()
    );
    c.close().await.unwrap();
    stop.cancel();
    workers.stop().await;
}
