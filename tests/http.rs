//! The HTTP API's limits: idle or half-sent connections are closed after
//! http.idle_timeout_ms, so they cannot hold the connection slots; a body
//! over the limit is refused with 413.

mod common;

use common::*;
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
    // A fifth client is still served: the idle ones are closed.
    let r = tokio::time::timeout(WAIT, reqwest::get(format!("{}/v1/fleet", h.base())))
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
    assert!(h.metric("fleet_http_idle_closed_total").await >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_with_413() {
    let h = Harness::start().await;
    let big = "x".repeat(h.config.fleet.max_message_bytes + 1);
    let r = h
        .http
        .post(format!("{}/v1/tasks", h.base()))
        .header("content-type", "application/json")
        .body(format!(r#"{{"pool":"coder","payload":"{big}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
}
