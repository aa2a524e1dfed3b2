//! A spawner: acts on the commander's scaling requests.
//!
//! The commander never starts processes; it publishes `scale_up` on the
//! scaling channel and something that can start agents acts on it. This one
//! calls a function for each request, once per request id (a request seen
//! twice, e.g. from a restarted commander re-announcing it, is ignored).
//! `scale_down` needs no action here: the named agents are drained and
//! deregister by themselves.

use crate::keys::Keys;
use crate::pool::PoolType;
use crate::protocol::Scaling;
use futures_util::StreamExt;
use std::collections::HashSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub struct Spawner {
    pubsub: redis::aio::PubSub,
}

impl Spawner {
    /// Subscribes to the scaling channel; requests published from now on are seen.
    pub async fn subscribe(redis_url: &str, keys: &Keys) -> redis::RedisResult<Spawner> {
        let client = redis::Client::open(redis_url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(keys.scaling_channel()).await?;
        Ok(Spawner { pubsub })
    }

    /// Calls `spawn(pool, count)` for each new `scale_up` until `stop`.
    pub async fn run(mut self, mut spawn: impl FnMut(PoolType, u32), stop: CancellationToken) {
        let mut seen = HashSet::new();
        let mut messages = self.pubsub.on_message();
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = messages.next() => match m {
                    Some(m) => m,
                    None => {
                        warn!("scaling subscription ended");
                        return;
                    }
                },
            };
            let Ok(req) = serde_json::from_slice::<Scaling>(msg.get_payload_bytes()) else {
                continue;
            };
            if let Scaling::ScaleUp {
                id,
                pool,
                count,
                reason,
                ..
            } = req
            {
                if seen.insert(id.clone()) {
                    info!(request = %id, pool = %pool, count, reason, "spawning agents");
                    spawn(pool, count);
                }
            }
        }
    }
}
