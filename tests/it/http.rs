//! The HTTP API's limits: idle or half-sent connections are closed after
//! http.idle_timeout_ms, and the quietest makes room for a new client at
//! http.max_connections, so they cannot hold the API; a body over the limit
//! is refused with 413; every request needs a token of the right role.

use crate::common::*;
use fleet_protocol::api;
use fleet_protocol::pool::PoolType;
use fleet_store::tokens::TokenRole;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_cannot_starve_the_api() {
    let h = Harness::start_with(|c| {
        c.http.max_connections = 4;
        c.http.idle_timeout_ms = 300;
    })
    .await;
    let addr = h.commander.as_ref().unwrap().http_addr;
    // Every slot taken: two connections that say nothing, two that send
    // half a request and stop.
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /v1/fleet HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        held.push(s);
    }
    // A fifth client is served at once: the quietest connection makes room.
    let r = tokio::time::timeout(WAIT, h.http.get(format!("{}/v1/fleet", h.base())).send())
        .await
        .expect("served within the bound")
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for mut s in held {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the server closed the idle connection");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    // On a connection of its own: the pooled one is about as old as the
    // 300 ms idle timeout, and the server may be closing it right now.
    let text = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .get(format!("{}/metrics", h.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evicted = parse_metric(&text, r#"fleet_http_idle_closed_total{why="evicted"}"#);
    let idle = parse_metric(&text, r#"fleet_http_idle_closed_total{why="idle"}"#);
    assert!(
        evicted >= 1.0 && evicted + idle >= 4.0,
        "evicted {evicted}, idle {idle}"
    );
}

/// Issue 25, item 10: the listen backlog is the configured one, not std's
/// 128 (2,000 simultaneous connects stalled a probe about a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_is_configurable() {
    let h = Harness::start_with(|c| c.http.listen_backlog = 1000).await;
    let port = h.commander.as_ref().unwrap().http_addr.port();
    // `ss -ltn` shows a listening socket's backlog as its Send-Q.
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let backlog: Vec<&str> = text.split_whitespace().collect();
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .map_or(4096, |s| s.trim().parse().unwrap_or(4096));
    assert_eq!(
        backlog.get(2).copied(),
        Some(&*1000.min(somaxconn).to_string()),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_with_413() {
    let h = Harness::start().await;
    let big = "x".repeat(h.config.fleet.max_message_bytes + 1);
    let r = h
        .post_text(
            api::TASKS,
            format!(r#"{{"pool":"coder","payload":"{big}"}}"#),
        )
        .await;
    assert_eq!(r.status().as_u16(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_needs_a_token_of_the_right_role() {
    let h = Harness::start().await;
    let base = h.base();
    let anon = reqwest::Client::new();
    let code = |r: reqwest::Response| r.status().as_u16();
    // Open: liveness, readiness, metrics (for scrapers; http.protect_metrics closes it).
    for path in [api::HEALTHZ, api::READYZ, api::METRICS] {
        assert_eq!(
            code(anon.get(format!("{base}{path}")).send().await.unwrap()),
            200,
            "{path}"
        );
    }
    // No token, a made-up one: 401.
    let r = anon.get(format!("{base}/v1/fleet")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let fake = authed(&format!("fct_{}_{}", "0".repeat(12), "1".repeat(32)));
    assert_eq!(
        code(fake.get(format!("{base}/v1/fleet")).send().await.unwrap()),
        401
    );
    assert_eq!(
        code(
            authed("Bearer nonsense")
                .get(format!("{base}/v1/fleet"))
                .send()
                .await
                .unwrap()
        ),
        401
    );

    // A viewer reads but may not act: 403.
    let mut conn = fleet_store::connection::connect(&h.redis.url())
        .await
        .unwrap();
    let store = fleet_store::tokens::TokenStore::new(h.keys.clone());
    let now = fleet_protocol::now_ms();
    use fleet_store::tokens::TokenRole;
    let viewer = authed(
        &store
            .issue(&mut conn, "grafana", TokenRole::Viewer, now)
            .await
            .unwrap(),
    );
    assert_eq!(
        code(viewer.get(format!("{base}/v1/fleet")).send().await.unwrap()),
        200
    );
    let task = serde_json::json!({"pool": "coder"});
    let r = viewer
        .post(format!("{base}/v1/tasks"))
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = viewer
        .post(format!("{base}/v1/pools/coder/size"))
        .json(&serde_json::json!({"agents": 6}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // An operator acts.
    let op_token = store
        .issue(&mut conn, "ci", TokenRole::Operator, now)
        .await
        .unwrap();
    let op = authed(&op_token);
    assert_eq!(
        code(
            op.post(format!("{base}/v1/tasks"))
                .json(&task)
                .send()
                .await
                .unwrap()
        ),
        201
    );

    // Revoked: refused from then on (the commander hears of it at once).
    assert_eq!(store.revoke(&mut conn, "ci", now).await.unwrap(), 1);
    wait_until(|| async {
        op.get(format!("{base}/v1/fleet"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
            == 401
    })
    .await;
    assert!(
        h.metric(r#"fleet_http_rejected_total{reason="forbidden"}"#)
            .await
            >= 2.0
    );
    assert!(
        h.metric(r#"fleet_http_rejected_total{reason="missing_token"}"#)
            .await
            >= 1.0
    );
}

/// A write made with the console's cookie needs the console's header, and
/// exactly `1`; signing out is such a write too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_writes_need_the_console_header_exactly() {
    let h = Harness::start().await;
    let base = h.base();
    let plain = reqwest::Client::new();
    let signed_in = plain
        .post(format!("{base}/console/session"))
        .header("x-fleet-console", "1")
        .json(&serde_json::json!({"token": h.token}))
        .send()
        .await
        .unwrap();
    assert!(signed_in.status().is_success(), "{signed_in:?}");
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let drain = |header: Option<&'static str>| {
        let mut r = plain
            .post(format!("{base}/v1/agents/nobody/drain"))
            .header("cookie", &cookie);
        if let Some(v) = header {
            r = r.header("x-fleet-console", v);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    for refused in [None, Some("0"), Some(""), Some("true")] {
        assert_eq!(drain(refused).await, 403, "x-fleet-console: {refused:?}");
    }
    assert_eq!(drain(Some("1")).await, 404, "through to the handler");
    let out = |header: Option<&'static str>| {
        let mut r = plain
            .delete(format!("{base}/console/session"))
            .header("cookie", &cookie);
        if let Some(v) = header {
            r = r.header("x-fleet-console", v);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(out(None).await, 403, "a cross-site sign-out is refused");
    assert_eq!(out(Some("1")).await, 200);
}

/// Issue 25, item 7: the console's cookie is a session of its own, not the
/// token: signing out ends it (a copy no longer works), revoking the token
/// ends its sessions, and tokens expire. Refused tokens are audited, a few
/// entries for a storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_sign_out_tokens_expire_and_refusals_are_audited() {
    let h = Harness::start().await;
    let base = h.base();
    let plain = reqwest::Client::new();
    let mut conn = fleet_store::connection::connect(&h.redis.url())
        .await
        .unwrap();
    let store = fleet_store::tokens::TokenStore::new(h.keys.clone());
    let now = fleet_protocol::now_ms();
    let ops = store
        .issue_until(&mut conn, "ops", TokenRole::Operator, now, None, None)
        .await
        .unwrap();
    let sign_in = || async {
        let r = plain
            .post(format!("{base}/console/session"))
            .json(&serde_json::json!({"token": ops}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{r:?}");
        let c = r.headers()["set-cookie"].to_str().unwrap().to_string();
        c.split(';').next().unwrap().to_string()
    };
    let with_cookie = |cookie: String| {
        let url = format!("{base}/v1/fleet");
        let plain = plain.clone();
        async move {
            plain
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let cookie = sign_in().await;
    assert!(!cookie.contains(&ops), "the cookie holds the token itself");
    assert_eq!(with_cookie(cookie.clone()).await, 200);
    let out = plain
        .delete(format!("{base}/console/session"))
        .header("cookie", &cookie)
        .header("x-fleet-console", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 200);
    assert_eq!(
        with_cookie(cookie.clone()).await,
        401,
        "a copy of the cookie still works"
    );
    // Revoking the token ends the sessions opened with it.
    let second = sign_in().await;
    assert_eq!(with_cookie(second.clone()).await, 200);
    assert!(
        store
            .revoke(&mut conn, "ops", fleet_protocol::now_ms())
            .await
            .unwrap()
            >= 2
    );
    wait_until(|| async { with_cookie(second.clone()).await == 401 }).await;

    // A token that expires.
    let brief = store
        .issue_until(
            &mut conn,
            "brief",
            TokenRole::Viewer,
            now,
            Some(fleet_protocol::now_ms() + 300),
            None,
        )
        .await
        .unwrap();
    let get = |t: String| {
        let url = format!("{base}/v1/fleet");
        let plain = plain.clone();
        async move {
            plain
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let first = get(brief.clone()).await;
    wait_until(|| async { get(brief.clone()).await == 401 }).await;
    assert_eq!(first, 200, "worked before it expired");

    // Fifty guesses more: the first refusal (the signed-out cookie) was
    // audited at once; those within the minute after it wait for the next
    // entry, a minute on: one entry, not fifty.
    for i in 0..50 {
        get(format!("fct_{:012}_{}", i, "x".repeat(32))).await;
    }
    let log = fleet_store::audit::list(&mut conn, &h.keys, 1000)
        .await
        .unwrap();
    let entries: Vec<_> = log.iter().filter(|e| e.action == "token_refused").collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (
            entries[0].actor.as_str(),
            entries[0].target.as_str(),
            entries[0].result.as_str()
        ),
        ("http", api::FLEET, "1 refused since the last such entry")
    );
}

/// Reads an event stream until its next `change` (true) or its end (false),
/// within [`WAIT`].
async fn next_change<B: AsRef<[u8]>>(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<B>> + Unpin),
) -> bool {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await {
                Some(Ok(b)) if String::from_utf8_lossy(b.as_ref()).contains("change") => {
                    return true
                }
                Some(Ok(_)) => continue,
                _ => return false,
            }
        }
    })
    .await
    .expect("a change or the end, in time")
}

/// An event stream opened with a token ends once the token is revoked: no
/// change is streamed to it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_ends_its_event_stream() {
    let h = Harness::start().await;
    let mut conn = fleet_store::connection::connect(&h.redis.url())
        .await
        .unwrap();
    let store = fleet_store::tokens::TokenStore::new(h.keys.clone());
    let now = fleet_protocol::now_ms();
    let token = store
        .issue(
            &mut conn,
            "watcher",
            fleet_store::tokens::TokenRole::Viewer,
            now,
        )
        .await
        .unwrap();
    let r = authed(&token)
        .get(format!("{}/v1/events", h.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut stream = r.bytes_stream();
    // Changes flow: an agent joins.
    let mut a = h.agent("ev-1", PoolType::Coder).await;
    a.register(std::time::Duration::from_secs(5)).await.unwrap();
    assert!(next_change(&mut stream).await, "the stream carries changes");
    // Revoked; then more changes: the stream ends instead of carrying them.
    assert_eq!(store.revoke(&mut conn, "watcher", now).await.unwrap(), 1);
    wait_until(|| async {
        authed(&token)
            .get(format!("{}/v1/fleet", h.base()))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
            == 401
    })
    .await;
    a.deregister(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        !next_change(&mut stream).await,
        "a change was streamed to a revoked token"
    );
}
