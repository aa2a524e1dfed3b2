//! How the binary stops, as a supervisor sees it: SIGTERM drains and exits
//! 0; a commander fenced by a newer one exits 75 (a bad config's 64 is in
//! robustness.rs; a panicking loop's 1 is in the supervisor's unit tests).

mod common;

use common::*;
use std::process::Stdio;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_fleet-commander");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleet.toml");

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A commander process on `redis`, ready (subscribed, Redis answering).
async fn commander(redis: &fleet_testkit::RedisServer) -> Child {
    let addr = free_addr();
    let child = Command::new(BIN)
        .args(["--config", CONFIG, "run"])
        .env("REDIS_URL", redis.url())
        .env("FLEET_HTTP_ADDR", &addr)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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

async fn exit_code(mut child: Child) -> Option<i32> {
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the commander exits in time")
        .expect("wait")
        .code()
}

#[tokio::test]
async fn sigterm_drains_and_exits_0() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let child = commander(&redis).await;
    let pid = child.id().expect("running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(exit_code(child).await, Some(0));
}

#[tokio::test]
async fn a_commander_fenced_by_a_newer_one_exits_75() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let child = commander(&redis).await;
    // A newer commander's claim: the running one's next write is refused
    // (its reaper writes every 50 ms).
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: u64 = redis::cmd("INCR")
        .arg(fleet_store::Keys::new("swarm:phase-1").epoch())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exit_code(child).await, Some(75));
}
