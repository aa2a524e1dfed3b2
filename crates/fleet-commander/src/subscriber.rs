//! The subscriber: one pub/sub connection on the registry, health, fleet,
//! tasks and results channels. Each payload is size-checked and decoded
//! here, then handed to a handler chosen by a hash of the agent id, so one
//! agent's messages are handled in order while different agents' are
//! handled concurrently.

use crate::context::{pause, Shared};
use crate::metrics as m;
use fleet_protocol::{decode, now_ms, Channel, Decoded, Inbound};
use futures_util::StreamExt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// Listens on the inbound channels, decodes and size-checks each payload,
/// and hands it to the handler of its agent. Resubscribes after a lost
/// connection; failure detection pauses until it is listening again.
pub(crate) async fn run(shared: Arc<Shared>, senders: Vec<mpsc::Sender<Inbound>>) {
    let channels = [
        (shared.keys.channels().registry(), Channel::Registry),
        (shared.keys.channels().health(), Channel::Health),
        (shared.keys.channels().fleet(), Channel::Fleet),
        (shared.keys.channels().tasks(), Channel::Tasks),
        (shared.keys.channels().results(), Channel::Results),
    ];
    let client = match fleet_store::connection::client(&shared.config().redis.url) {
        Ok(c) => c,
        Err(e) => {
            error!("invalid Redis URL: {e}");
            shared.shutdown.cancel();
            return;
        }
    };
    let max = shared.config().fleet.max_message_bytes;
    let mut backoff = Duration::from_millis(50);
    let mut next_shard = 0usize;
    while !shared.shutdown.is_cancelled() {
        let connected = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(channels.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>())
                .await?;
            Ok::<_, redis::RedisError>(ps)
        }
        .await;
        let mut ps = match connected {
            Ok(ps) => ps,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot subscribe");
                if !pause(&shared.shutdown, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        shared.listening_since.store(now_ms(), Ordering::Release);
        info!("listening on the registry, health, fleet, tasks and results channels");
        let mut stream = ps.on_message();
        loop {
            let msg = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                msg = stream.next() => msg,
            };
            let Some(msg) = msg else { break };
            let Some(channel) = channels
                .iter()
                .find(|(name, _)| name == msg.get_channel_name())
                .map(|(_, c)| *c)
            else {
                continue;
            };
            let inbound = match decode(channel, msg.get_payload_bytes(), max) {
                Ok(Decoded::Message(i)) => i,
                Ok(Decoded::Own) => continue,
                Err(rej) => {
                    metrics::counter!(m::MESSAGES_REJECTED,
                        "channel" => channel.as_str(), "reason" => rej.label())
                    .increment(1);
                    warn!(channel = channel.as_str(), reason = %rej, "message refused");
                    continue;
                }
            };
            let shard = match inbound.agent_id() {
                Some(id) => {
                    let mut h = DefaultHasher::new();
                    id.hash(&mut h);
                    h.finish() as usize % senders.len()
                }
                None => {
                    next_shard = (next_shard + 1) % senders.len();
                    next_shard
                }
            };
            if senders[shard].send(inbound).await.is_err() {
                return; // handlers gone: shutting down
            }
        }
        drop(stream);
        shared.listening_since.store(0, Ordering::Release);
        metrics::counter!(m::SUBSCRIBER_RECONNECTS).increment(1);
        warn!("lost the pub/sub connection; failure detection paused until re-subscribed");
    }
}
