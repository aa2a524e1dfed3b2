//! How the binary stops, as a supervisor sees it: SIGTERM drains and exits
//! 0; a commander fenced by a newer one does not exit but stands by (a bad
//! config's 64 is in robustness.rs; a panicking loop's 1 is in the
//! supervisor's unit tests).

use crate::common::*;
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
async fn a_fenced_commander_does_not_exit_it_stands_by_and_leads_again() {
    let redis = fleet_testkit::RedisServer::start().expect("redis-server");
    let addr = free_addr();
    let mut child = commander_process(&redis.url(), &addr).await;
    let first = wait_leader(&addr).await;
    // A newer claim of the epoch (as a commander that took over would make):
    // the running one's next write, or renewal, is refused.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let claimed: u64 = redis::cmd("INCR")
        .arg(fleet_store::Keys::new("swarm:phase-1").epoch())
        .query_async(&mut conn)
        .await
        .unwrap();
    // Its term ends (counted), it releases its own lease, and with nobody
    // else leading it takes the lease again: a newer epoch, same process.
    wait_until(|| async {
        readyz(&addr).await["epoch"]
            .as_u64()
            .is_some_and(|e| e > claimed)
    })
    .await;
    let again = wait_leader(&addr).await;
    assert!(
        again > claimed && claimed > first,
        "{first} {claimed} {again}"
    );
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        parse_metric(&metrics, r#"fleet_commander_terms_total{ended="fenced"}"#),
        1.0
    );
    assert!(child.try_wait().unwrap().is_none(), "still running");
}
