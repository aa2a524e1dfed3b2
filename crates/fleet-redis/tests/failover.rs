//! Behind Sentinel, on real servers: a master, a replica and three
//! sentinels on loopback. When the master is killed, a `Conn` (and every
//! clone of it) moves to the promoted replica by itself, and a new pub/sub
//! connection goes there too. A `Conn` to one server does not move.

use fleet_testkit::{RedisServer, Sentinels};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(30);

async fn set(c: &mut fleet_redis::Conn, v: u64) -> redis::RedisResult<()> {
    redis::cmd("SET").arg("k").arg(v).query_async(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_follows_the_master_through_a_failover() {
    let mut master = RedisServer::start().expect("redis-server");
    let replica = RedisServer::start_replica_of(&master).expect("replica");
    let sentinels = Sentinels::start(&master, "fleet", 3, 2).expect("sentinels");
    let url = sentinels.url(None);

    let mut conn = fleet_redis::connect(&url).await.expect("connects");
    let mut clone = conn.clone();
    assert_eq!(conn.server(), format!("127.0.0.1:{}", master.port()));
    set(&mut conn, 1).await.expect("writes to the master");

    master.kill();
    let killed = Instant::now();
    let mut errors = 0;
    let mut v = 2;
    loop {
        assert!(
            killed.elapsed() < BOUND,
            "no write succeeded within {BOUND:?}"
        );
        match set(&mut conn, v).await {
            Ok(()) => break,
            Err(_) => errors += 1,
        }
        v += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "writes back {} ms after the kill ({errors} refused meanwhile)",
        killed.elapsed().as_millis()
    );
    let promoted = format!("127.0.0.1:{}", replica.port());
    assert_eq!(conn.server(), promoted, "moved to the promoted replica");
    assert_eq!(clone.server(), promoted, "and its clones with it");
    set(&mut clone, 100)
        .await
        .expect("a clone writes there at once");
    let got: u64 = redis::cmd("GET")
        .arg("k")
        .query_async(&mut clone)
        .await
        .unwrap();
    assert_eq!(got, 100);

    // A new pub/sub connection goes to the new master.
    let client = fleet_redis::client(&url).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe("ch").await.unwrap();
    let n: u64 = redis::cmd("PUBLISH")
        .arg("ch")
        .arg("hi")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1, "the subscriber is on the master the publisher uses");
    assert_eq!(sentinels.master_port(), Some(replica.port()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_connection_reconnects_to_the_same_server() {
    let mut server = RedisServer::start().expect("redis-server");
    let mut conn = fleet_redis::connect(&server.url()).await.unwrap();
    set(&mut conn, 1).await.unwrap();
    server.restart().unwrap();
    let start = Instant::now();
    while set(&mut conn, 2).await.is_err() {
        assert!(start.elapsed() < BOUND, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(conn.server(), format!("127.0.0.1:{}", server.port()));
}

#[tokio::test]
async fn no_sentinel_answering_is_an_error_not_a_hang() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let start = Instant::now();
    let e = fleet_redis::connect(&format!("redis+sentinel://127.0.0.1:{port}/fleet"))
        .await
        .err()
        .expect("no sentinel: an error");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(e.to_string().contains("cannot reach Redis"), "{e}");
}
