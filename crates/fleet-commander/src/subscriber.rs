//! The subscriber: two pub/sub connections, one for the health channel
//! (heartbeats, and the ticks the failure detector's watermark reads) and
//! one for the rest (registry, fleet, tasks, results, governance, keys), so
//! that a flood of one never waits in the same socket ahead of the other:
//! registrations and results are not read behind a backlog of heartbeats,
//! nor heartbeats behind a flood of anything else. An agent's messages on
//! one channel stay in order; the SDKs wait for the register reply before
//! heartbeating. Each lane keeps its own per-sender rates (who is heavy is
//! judged per lane) and replay pre-check; the queue shares are common. Each
//! payload is size-checked, screened
//! (crate::auth::Gate::screen) and decoded here, then handed to a handler
//! chosen by a hash of the agent id, so one agent's messages are handled in
//! order while different agents' are handled concurrently; heartbeats go to
//! their own handler, which records them in batches
//! (crate::handlers::heartbeat).
//!
//! The handlers' queues are bounded. What can be refused without a
//! signature check (garbage, unknown keys, senders over their budget) never
//! enters one. A sender that has sent more than its sustained rate in the
//! current second is *heavy*: it may have at most
//! `MAX_QUEUED_PER_HEAVY_SENDER` messages queued, and when a queue is full
//! its messages are shed rather than waited for (counted as `shed`). Anyone
//! else's message waits for room, so a heartbeat is never shed for someone
//! else's flood, and a flood never fills the queue the others wait on.
//!
//! A signature header seen before (the same key id and nonce) is refused as
//! a replay here, before it counts against its key's rate: copies of an
//! agent's message, tampered or not, cannot make that agent look heavy and
//! have its own messages shed. Pub/sub delivers in publish order, so the
//! first seen is the original. (The nonce kept in Redis stays the rule;
//! this is its cheap first look.)

use crate::auth::Seal;
use crate::context::Shared;
use crate::heard::Deafness;
use crate::metrics as m;
use crate::supervise::pause;
use fleet_protocol::auth::{unframe, AuthError, Unframed};
use fleet_protocol::{decode, now_ms, Channel, Decoded, Inbound};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// Which of the two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// The health channel and the ticks: what failure detection hears.
    Health,
    /// Every other inbound channel, and key-change notices.
    Rest,
}

/// Listens on the inbound channels (two connections, [`Lane`]), decodes and
/// size-checks each payload, and hands it to the handler of its agent.
pub(crate) async fn run(shared: Arc<Shared>, senders: Queues) {
    let queued: Arc<Queued> = Default::default();
    tokio::join!(
        listen(
            shared.clone(),
            senders.clone(),
            Lane::Health,
            queued.clone()
        ),
        listen(shared, senders, Lane::Rest, queued),
    );
}

/// One connection's loop. Resubscribes after a lost connection; failure
/// detection pauses until the health lane is listening again.
async fn listen(shared: Arc<Shared>, senders: Queues, lane: Lane, queued: Arc<Queued>) {
    let client = match fleet_store::connection::client(&shared.config().redis.url) {
        Ok(c) => c,
        Err(e) => {
            // Returning while the service runs stops it with a failure.
            error!("invalid Redis URL: {e}");
            return;
        }
    };
    let mut router = Router::new(&shared, senders, queued);
    let mut backoff = Duration::from_millis(50);
    while !shared.shutdown.is_cancelled() {
        let connected = async {
            let mut ps = client.get_async_pubsub().await?;
            let mut names: Vec<&str> = router
                .channels
                .iter()
                .filter(|(_, c)| (*c == Channel::Health) == (lane == Lane::Health))
                .map(|(c, _)| c.as_str())
                .collect();
            match lane {
                Lane::Health => names.push(&router.ticks_channel),
                Lane::Rest => names.push(&router.keys_channel),
            }
            ps.subscribe(names).await?;
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
        if lane == Lane::Health {
            shared.listening_since.store(now_ms(), Ordering::Release);
            shared.heard.hearing(Deafness::Unsubscribed, now_ms());
            info!("listening on the health channel");
        } else {
            info!("listening on the registry, fleet, tasks, results and governance channels");
        }
        let mut stream = ps.on_message();
        loop {
            let msg = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                msg = stream.next() => msg,
            };
            let Some(msg) = msg else { break };
            if !router.route(&msg).await {
                return; // handlers gone: shutting down
            }
        }
        drop(stream);
        metrics::counter!(m::SUBSCRIBER_RECONNECTS).increment(1);
        if lane == Lane::Rest {
            warn!("lost the pub/sub connection of the registry, tasks and results; resubscribing");
            continue;
        }
        // What Redis had buffered for us is gone: deaf since we last had
        // read everything.
        shared
            .heard
            .deaf(Deafness::Unsubscribed, shared.heard.caught_up());
        shared.listening_since.store(0, Ordering::Release);
        warn!("lost the pub/sub connection; failure detection paused until re-subscribed");
    }
}

/// The handlers' queues: the message handlers' (an agent's messages always
/// go to the same one) and the heartbeats' (crate::handlers::heartbeat).
#[derive(Clone)]
pub(crate) struct Queues {
    pub(crate) handlers: Vec<mpsc::Sender<Envelope>>,
    pub(crate) heartbeats: mpsc::Sender<Envelope>,
}

/// A decoded message and its signature, for a handler.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) msg: Inbound,
    /// None: it came unsigned.
    pub(crate) seal: Option<Seal>,
    pub(crate) channel: Channel,
    /// Its place in the order read (crate::heard): handled when dropped.
    pub(crate) seq: u64,
    /// Its place in its sender's count of queued messages.
    pub(crate) _queued: QueuedGuard,
}

/// Messages queued for the handlers, by sender (key id, or agent id).
#[derive(Debug, Default)]
pub(crate) struct Queued(std::sync::Mutex<HashMap<String, u32>>);

impl Queued {
    fn count(&self, sender: &str) -> u32 {
        let map = self.0.lock().expect("no panics while held");
        map.get(sender).copied().unwrap_or(0)
    }

    fn add(self: &Arc<Self>, sender: String) -> QueuedGuard {
        let mut map = self.0.lock().expect("no panics while held");
        match map.get_mut(&sender) {
            Some(n) => *n += 1,
            None => {
                map.insert(sender.clone(), 1);
            }
        }
        QueuedGuard {
            queued: self.clone(),
            sender,
        }
    }
}

/// Takes one message off its sender's count when dropped (handled).
#[derive(Debug)]
pub(crate) struct QueuedGuard {
    queued: Arc<Queued>,
    sender: String,
}

impl Drop for QueuedGuard {
    fn drop(&mut self) {
        let mut map = self.queued.0.lock().expect("no panics while held");
        if let Some(n) = map.get_mut(&self.sender) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.sender);
            }
        }
    }
}

/// A sender over its rate with this many messages queued already is shed:
/// a flood never fills a queue that others wait on.
const MAX_QUEUED_PER_HEAVY_SENDER: u32 = 16;

/// Publishes the commander's ticks to itself (crate::heard), so that what
/// it has read is known even when it is busy.
pub(crate) async fn ticker(shared: Arc<Shared>) {
    let every = Duration::from_millis(shared.config().fleet.detect_tick_ms.min(100));
    let channel = shared.keys.channels().ticks();
    let mut conn = shared.redis.clone();
    while pause(&shared.shutdown, every).await {
        let token = shared.heard.tick();
        let sent = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(token)
            .query_async::<()>(&mut conn)
            .await;
        if let Err(e) = sent {
            crate::metrics::redis_error("tick", &e.into());
        }
    }
}

/// Decodes a payload and sends it to its handler.
struct Router {
    shared: Arc<Shared>,
    channels: [(String, Channel); 6],
    keys_channel: String,
    ticks_channel: String,
    senders: Queues,
    max_bytes: usize,
    /// Messages without an agent go round the handlers.
    next_shard: usize,
    rates: Rates,
    queued: Arc<Queued>,
    seen: Seen,
}

impl Router {
    fn new(shared: &Arc<Shared>, senders: Queues, queued: Arc<Queued>) -> Router {
        let c = shared.keys.channels();
        Router {
            shared: shared.clone(),
            keys_channel: c.keys(),
            ticks_channel: c.ticks(),
            channels: [
                (c.registry(), Channel::Registry),
                (c.health(), Channel::Health),
                (c.fleet(), Channel::Fleet),
                (c.tasks(), Channel::Tasks),
                (c.results(), Channel::Results),
                (c.governance(), Channel::Governance),
            ],
            senders,
            max_bytes: shared.config().fleet.max_message_bytes,
            next_shard: 0,
            rates: Rates::new(shared.config().security.sender_rate_per_sec),
            queued,
            seen: Seen::default(),
        }
    }

    /// Counts one message from `sender`; true when it is heavy (over its
    /// rate this second) and has its share of the queues already.
    fn over_share(&mut self, sender: &str, now: u64) -> bool {
        self.rates.heavy(sender, now) && self.queued.count(sender) >= MAX_QUEUED_PER_HEAVY_SENDER
    }

    /// False when the handlers are gone.
    async fn route(&mut self, msg: &redis::Msg) -> bool {
        let name = msg.get_channel_name();
        let Some(channel) = self
            .channels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
        else {
            if name == self.ticks_channel {
                self.shared.heard.ticked(msg.get_payload_bytes());
            } else if name == self.keys_channel {
                self.shared.gate.changed.notify_one();
            }
            return true;
        };
        match self.admit(channel, name, msg.get_payload_bytes(), now_ms()) {
            Some(admitted) => self.enqueue(channel, admitted).await,
            None => true,
        }
    }

    /// The checks that need neither Redis nor a signature, in order of
    /// cost: the header and the gate's screen, a replay seen here, a sender
    /// over its share, the body's decoding, a signature required. None: the
    /// message was refused (counted and logged) or is the commander's own.
    fn admit(
        &mut self,
        channel: Channel,
        name: &str,
        payload: &[u8],
        now: u64,
    ) -> Option<Admitted> {
        let (body, signed) = match unframe(payload) {
            Ok(Unframed::Plain(b)) => (b, None),
            Ok(Unframed::Signed(s)) => {
                if let Err(e) = self.shared.gate.screen(s.kid, s.ts, now) {
                    refused(channel, e);
                    return None;
                }
                (s.body, Some(s))
            }
            Err(e) => {
                refused(channel, e);
                return None;
            }
        };
        if let Some(s) = &signed {
            if !self.seen.first(s.kid, s.nonce) {
                refused(channel, AuthError::Replay);
                return None;
            }
            // A flooder's surplus is shed before it costs a decode.
            if self.over_share(s.kid, now) {
                shed(channel, s.kid);
                return None;
            }
        }
        // The size limit is on the whole payload, header included.
        let limit = self.max_bytes.saturating_sub(payload.len() - body.len());
        let msg = match decode(channel, body, limit) {
            Ok(Decoded::Message(i)) => i,
            Ok(Decoded::Own) => return None,
            Err(rej) => {
                metrics::counter!(m::MESSAGES_REJECTED,
                    "channel" => channel.as_str(), "reason" => rej.label())
                .increment(1);
                if let Some(suppressed) = LOG_LIMIT.admit(channel, rej.label()) {
                    warn!(channel = channel.as_str(), reason = %rej, suppressed, "message refused");
                }
                return None;
            }
        };
        let seal = match (&signed, self.shared.gate.signed()) {
            (Some(s), true) => Some(Seal::new(name, s)),
            (None, true) => {
                refused(channel, AuthError::Unsigned);
                return None;
            }
            (_, false) => None,
        };
        let sender = match &signed {
            Some(s) => s.kid.to_string(),
            None => {
                let sender = msg.agent_id().unwrap_or("-");
                if self.over_share(sender, now) {
                    shed(channel, sender);
                    return None;
                }
                sender.to_string()
            }
        };
        Some(Admitted { msg, seal, sender })
    }

    /// Hands an admitted message to its agent's handler (one agent's
    /// messages always go to the same one, in order), a heartbeat to the
    /// heartbeats' handler; a heavy sender's is
    /// shed when that queue is full, anyone else's waits for room. False
    /// when the handlers are gone.
    async fn enqueue(&mut self, channel: Channel, a: Admitted) -> bool {
        let heavy = self.rates.is_heavy(&a.sender);
        let handlers = &self.senders.handlers;
        let n = handlers.len();
        let tx = if matches!(a.msg, Inbound::Heartbeat(_)) {
            &self.senders.heartbeats
        } else if let Some(id) = a.msg.agent_id() {
            let mut h = DefaultHasher::new();
            id.hash(&mut h);
            &handlers[h.finish() as usize % n]
        } else {
            self.next_shard = (self.next_shard + 1) % n;
            &handlers[self.next_shard]
        };
        let permit = match tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) if heavy => {
                shed(channel, &a.sender);
                return true;
            }
            Err(mpsc::error::TrySendError::Full(())) => match tx.reserve().await {
                Ok(p) => p,
                Err(_) => return false,
            },
            Err(mpsc::error::TrySendError::Closed(())) => return false,
        };
        let (seq, _) = self.shared.heard.read();
        permit.send(Envelope {
            msg: a.msg,
            seal: a.seal,
            channel,
            seq,
            _queued: self.queued.add(a.sender),
        });
        true
    }
}

/// A message past the subscriber's checks, and who sent it (key id, or
/// agent id unsigned).
struct Admitted {
    msg: Inbound,
    seal: Option<Seal>,
    sender: String,
}

/// The signature headers (key id and nonce, hashed) seen lately: the newest
/// [`Seen::CAPACITY`], a few MB, many seconds of any flood this machine
/// can carry.
#[derive(Default)]
struct Seen {
    set: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
    /// Keyed per process: nobody can aim a header at another's hash.
    keys: std::collections::hash_map::RandomState,
}

impl Seen {
    const CAPACITY: usize = 1 << 18;

    /// True the first time this key id and nonce are seen.
    fn first(&mut self, kid: &str, nonce: &str) -> bool {
        use std::hash::BuildHasher;
        let h = self.keys.hash_one((kid, nonce));
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// Messages per sender (key id, or agent id unsigned) in the current second:
/// who is over its sustained rate, to shed first when a queue is full.
/// Cleared every second, so it holds at most one second's senders.
struct Rates {
    counts: HashMap<String, u32>,
    since_ms: u64,
    limit: u32,
}

impl Rates {
    fn new(limit: f64) -> Rates {
        Rates {
            counts: HashMap::new(),
            since_ms: 0,
            limit: limit.ceil().max(1.0) as u32,
        }
    }

    /// Counts one message from `sender`; true when it is over its rate.
    fn heavy(&mut self, sender: &str, now: u64) -> bool {
        if now.saturating_sub(self.since_ms) >= 1000 {
            self.counts.clear();
            self.since_ms = now;
        }
        let n = match self.counts.get_mut(sender) {
            Some(n) => n,
            None => self.counts.entry(sender.to_string()).or_default(),
        };
        *n = n.saturating_add(1);
        *n > self.limit
    }

    /// Whether `sender` is over its rate this second (counts nothing).
    fn is_heavy(&self, sender: &str) -> bool {
        self.counts.get(sender).is_some_and(|n| *n > self.limit)
    }
}

/// Counts a message shed under overload (logged like a refusal).
fn shed(channel: Channel, sender: &str) {
    metrics::counter!(m::MESSAGES_REJECTED,
        "channel" => channel.as_str(), "reason" => "shed")
    .increment(1);
    if let Some(suppressed) = LOG_LIMIT.admit(channel, "shed") {
        warn!(
            channel = channel.as_str(),
            sender,
            suppressed,
            "message shed: its sender is over its rate and the commander is busy"
        );
    }
}

/// Counts and logs a message refused for who sent it.
pub(crate) fn refused(channel: Channel, e: AuthError) {
    metrics::counter!(m::MESSAGES_REJECTED,
        "channel" => channel.as_str(), "reason" => e.label())
    .increment(1);
    if let Some(suppressed) = LOG_LIMIT.admit(channel, e.label()) {
        warn!(
            channel = channel.as_str(),
            reason = e.label(),
            suppressed,
            "message refused: {e}"
        );
    }
}

/// Refusals are logged at most once a second per channel and reason, with
/// how many were not logged since (each one is counted in the metric): a
/// flood must not turn into a flood of log lines.
static LOG_LIMIT: LogLimit = LogLimit(std::sync::LazyLock::new(Default::default));

struct LogLimit(std::sync::LazyLock<std::sync::Mutex<HashMap<LogKey, (u64, u64)>>>);

/// A channel and a reason; per key: when last logged, how many since.
type LogKey = (&'static str, &'static str);

impl LogLimit {
    /// Some(refusals not logged since the last line) when this one may be logged.
    fn admit(&self, channel: Channel, reason: &'static str) -> Option<u64> {
        let now = now_ms();
        let mut map = self.0.lock().expect("no panics while held");
        let (last, suppressed) = map.entry((channel.as_str(), reason)).or_insert((0, 0));
        if now.saturating_sub(*last) >= 1000 {
            *last = now;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}
