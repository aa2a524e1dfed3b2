//! How the binary stops, as a supervisor sees it: SIGTERM drains and exits
//! 0; a commander fenced by a newer one exits 75 (a bad config's 64 is in
//! robustness.rs; a panicking loop's 1 is in the supervisor's unit tests).

mod common;

use common::*;
use tokio::process::Child;

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
    let child = commander_process(&redis.url(), &free_addr()).await;
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
    let child = commander_process(&redis.url(), &free_addr()).await;
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
