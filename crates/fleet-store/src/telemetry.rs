//! The one metric the store records itself: how long each script call takes
//! in Redis, by operation. The commander's exporter describes it.

/// `fleet_redis_command_duration_seconds{op}`.
pub const REDIS_COMMAND_SECONDS: &str = "fleet_redis_command_duration_seconds";

/// Runs `f` and records its duration under `op`.
pub(crate) async fn timed<T>(
    op: &'static str,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    let t = std::time::Instant::now();
    let out = f.await;
    metrics::histogram!(REDIS_COMMAND_SECONDS, "op" => op).record(t.elapsed().as_secs_f64());
    out
}
