//! What `Conn` costs over redis-rs's `ConnectionManager` to one server
//! (the path every command of a fleet without Sentinel takes): 5 rounds,
//! alternated, of 20,000 sequential PINGs and 20,000 with 50 in flight,
//! each way, against a private redis-server. Prints p50, p99 and
//! throughput per round. `cargo bench -p fleet-redis --bench conn_overhead`.

use redis::aio::{ConnectionLike, ConnectionManager};
use std::time::{Duration, Instant};

const N: usize = 20_000;

async fn sequential(c: &mut impl ConnectionLike) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(c).await.unwrap();
        lat.push(t.elapsed());
    }
    lat
}

async fn concurrent<C: ConnectionLike + Clone + Send + 'static>(c: &C) -> Duration {
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let mut c = c.clone();
        set.spawn(async move {
            for _ in 0..N / 50 {
                let _: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
            }
        });
    }
    while set.join_next().await.is_some() {}
    t.elapsed()
}

fn report(name: &str, mut lat: Vec<Duration>, burst: Duration) {
    lat.sort();
    let total: Duration = lat.iter().sum();
    println!(
        "{name:<18} sequential p50 {:>6.1} µs  p99 {:>6.1} µs  {:>7.0}/s | 50 in flight {:>7.0}/s",
        lat[N / 2].as_secs_f64() * 1e6,
        lat[N * 99 / 100].as_secs_f64() * 1e6,
        N as f64 / total.as_secs_f64(),
        N as f64 / burst.as_secs_f64(),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = fleet_testkit::RedisServer::start().expect("redis-server");
        let url = server.url();
        let info = fleet_redis::client(&url).unwrap().resolve().await.unwrap();
        let mut plain = ConnectionManager::new(info).await.unwrap();
        let mut conn = fleet_redis::connect(&url).await.unwrap();
        // Warm both.
        sequential(&mut plain).await;
        sequential(&mut conn).await;
        for round in 1..=5 {
            println!("round {round}");
            let burst = concurrent(&plain).await;
            report("ConnectionManager", sequential(&mut plain).await, burst);
            let burst = concurrent(&conn).await;
            report("fleet_redis::Conn", sequential(&mut conn).await, burst);
        }
    });
}
