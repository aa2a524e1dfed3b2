//! Many agents' channels over a few pub/sub connections.
//!
//! A real agent subscribes to its channel on a connection of its own
//! ([`crate::Agent::connect`]). A simulator running thousands of agents in
//! one process cannot open a connection each (100,000 agents would be
//! 100,000 sockets on both sides), so it shares a [`Router`]: a fixed
//! number of pub/sub connections, each carrying the channels whose hash
//! lands on it and handing every message to its agent's queue. A lost
//! connection is made again and its channels subscribed again, as an
//! agent's own connection is.

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Vec<u8>>>>>;

/// A few pub/sub connections shared by many agents. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    shards: Arc<Vec<Shard>>,
}

struct Shard {
    /// Where subscriptions go; replaced when the connection is made again.
    sink: Arc<tokio::sync::Mutex<PubSubSink>>,
    routes: Routes,
}

/// One agent's share of a [`Router`]: its channel's messages, in order.
/// Dropping it stops the delivery (the subscription stays until the
/// connection is next made again).
pub(crate) struct Route {
    pub(crate) rx: mpsc::UnboundedReceiver<Vec<u8>>,
    channel: String,
    routes: Routes,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.routes
            .lock()
            .expect("no panics while held")
            .remove(&self.channel);
    }
}

impl Router {
    /// `connections` pub/sub connections to the Redis `client` names (at
    /// least one), each with a task that hands its messages out.
    pub async fn new(
        client: &fleet_redis::Client,
        connections: usize,
    ) -> redis::RedisResult<Router> {
        let mut shards = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let (sink, stream) = client.get_async_pubsub().await?.split();
            let sink = Arc::new(tokio::sync::Mutex::new(sink));
            let routes: Routes = Default::default();
            tokio::spawn(deliver(
                client.clone(),
                sink.clone(),
                stream,
                routes.clone(),
            ));
            shards.push(Shard { sink, routes });
        }
        Ok(Router {
            shards: Arc::new(shards),
        })
    }

    /// Subscribes `channel` (before returning, so that no reply is missed)
    /// and gives its messages to the returned route.
    pub(crate) async fn attach(&self, channel: &str) -> redis::RedisResult<Route> {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        let shard = &self.shards[h.finish() as usize % self.shards.len()];
        let (tx, rx) = mpsc::unbounded_channel();
        shard
            .routes
            .lock()
            .expect("no panics while held")
            .insert(channel.to_string(), tx);
        shard.sink.lock().await.subscribe(channel).await?;
        Ok(Route {
            rx,
            channel: channel.to_string(),
            routes: shard.routes.clone(),
        })
    }
}

/// Hands each message to its channel's route; when the connection is lost,
/// makes it again (every 200 ms until it can) and subscribes every routed
/// channel again.
async fn deliver(
    client: fleet_redis::Client,
    sink: Arc<tokio::sync::Mutex<PubSubSink>>,
    mut stream: redis::aio::PubSubStream,
    routes: Routes,
) {
    loop {
        while let Some(msg) = stream.next().await {
            let tx = routes
                .lock()
                .expect("no panics while held")
                .get(msg.get_channel_name())
                .cloned();
            if let Some(tx) = tx {
                let _ = tx.send(msg.get_payload_bytes().to_vec());
            }
        }
        if Arc::strong_count(&sink) == 1 {
            return; // the router is gone
        }
        stream = loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(ps) = client.get_async_pubsub().await else {
                continue;
            };
            let (mut new_sink, new_stream) = ps.split();
            let channels: Vec<String> = routes
                .lock()
                .expect("no panics while held")
                .keys()
                .cloned()
                .collect();
            if !channels.is_empty() {
                if let Err(e) = new_sink.subscribe(channels).await {
                    warn!(error = %e, "a shared pub/sub connection could not resubscribe; again");
                    continue;
                }
            }
            *sink.lock().await = new_sink;
            break new_stream;
        };
    }
}
