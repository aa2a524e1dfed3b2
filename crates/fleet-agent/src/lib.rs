//! fleet-agent: the Rust agent SDK. It speaks the protocol of `docs/PROTOCOL.md`:
//! register, heartbeat, receive commands, re-register when told, deregister.
//! [`Router`] shares a few pub/sub connections among many agents in one
//! process (the simulator's).

mod router;
pub use router::Router;

use fleet_protocol::agent::AgentRecord;
use fleet_protocol::auth::{unframe, CommanderCheck, Credential, Signer, Unframed};
use fleet_protocol::session::{Exchange, Session};
use fleet_protocol::{AgentStatus, Channels, PoolType};
use fleet_protocol::{
    Deregister, Heartbeat, RefusalReason, Register, ReportKind, Resources, TaskReport, ToAgent,
    VERSION,
};
use fleet_redis::Conn;
use futures_util::StreamExt;
use redis::aio::PubSubStream;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A request (register, deregister) with no reply yet is sent again this
/// often, as docs/PROTOCOL.md asks.
pub const REQUEST_RETRY: Duration = Duration::from_secs(2);

/// Who the agent is.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub id: String,
    pub pool: PoolType,
    pub priority: Option<u8>,
    pub capabilities: Vec<String>,
    pub resources: Resources,
    /// Tasks taken at once.
    pub capacity: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no reply from the commander within {0:?}")]
    Timeout(Duration),
    #[error("registration refused: {reason:?}: {detail}")]
    Refused {
        reason: RefusalReason,
        detail: String,
    },
    #[error("the agent's channel closed")]
    Closed,
}

/// Redis refused the user and password (WRONGPASS: no such user, or
/// another password).
fn refused_user(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || e.code() == Some("WRONGPASS")
        || e.to_string().contains("WRONGPASS")
}

/// An accepted registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub record: AgentRecord,
    pub re_registered: bool,
    pub heartbeat_interval: Duration,
}

/// One connected agent.
pub struct Agent {
    spec: AgentSpec,
    channels: Channels,
    publisher: Conn,
    inbox: Inbox,
    /// Messages that arrived while a reply was awaited (a task can be
    /// assigned before the register reply arrives): handled next.
    pending: std::collections::VecDeque<ToAgent>,
    seq: u64,
    /// When the last message was sealed (ms): the next is sealed later.
    sealed_at: u64,
    /// Deregistering or gone: a `reregister` now answers a heartbeat sent
    /// before leaving, and is ignored.
    deregistering: bool,
    /// This run of the agent: a restart registers with a new one.
    instance: String,
    /// Signs what the agent sends (None: the commander runs open).
    signer: Option<Signer>,
    /// This process's X25519 key, offered at registration for a session
    /// (None: no credential, or sessions turned off).
    exchange: Option<Exchange>,
    /// The session the commander agreed to: what the agent sends after
    /// registering is MACed with it (`FS1`) instead of signed.
    session: Option<Session>,
    /// Halted by the commander (its budget is spent) until resumed.
    halted: bool,
}

/// The agent's own channel: read in place (no relay task), resubscribed
/// after a lost connection.
struct Inbox {
    channel: String,
    source: Source,
    /// With a credential: only what the commander signed is taken.
    check: Option<CommanderCheck>,
    /// Messages refused as not from the commander.
    refused: u64,
}

/// Where the agent's channel is read from.
enum Source {
    /// A pub/sub connection of its own.
    Own {
        client: fleet_redis::Client,
        stream: Option<PubSubStream>,
        /// A resubscription in progress. It runs as its own task so that it
        /// survives `recv` being cancelled (as it is in `select!` on every
        /// tick).
        reconnect: Option<JoinHandle<Option<PubSubStream>>>,
    },
    /// A share of a [`Router`]'s connections (a simulator's many agents).
    Routed(router::Route),
}

impl Drop for Inbox {
    fn drop(&mut self) {
        if let Source::Own {
            reconnect: Some(r), ..
        } = &self.source
        {
            r.abort();
        }
    }
}

impl Inbox {
    /// A message's body if it is to be believed, parsed.
    fn open(&mut self, payload: &[u8]) -> Option<ToAgent> {
        let body = match &mut self.check {
            Some(c) => match c.check(&self.channel, payload, fleet_protocol::now_ms()) {
                Ok(b) => b,
                Err(e) => {
                    self.refused += 1;
                    warn!(
                        reason = e.label(),
                        "ignoring a message not from the commander: {e}"
                    );
                    return None;
                }
            },
            None => match unframe(payload) {
                Ok(Unframed::Plain(b)) => b,
                Ok(Unframed::Signed(s)) => s.body,
                Err(_) => return None,
            },
        };
        match serde_json::from_slice::<ToAgent>(body) {
            Ok(m) => Some(m),
            Err(e) => {
                debug!("ignoring message the client does not know: {e}");
                None
            }
        }
    }

    /// The next message the client understands; waits across reconnects.
    /// Cancel-safe.
    async fn recv(&mut self) -> ToAgent {
        loop {
            let payload = match &mut self.source {
                Source::Routed(route) => match route.rx.recv().await {
                    Some(p) => p,
                    // The router is gone: nothing will come.
                    None => std::future::pending().await,
                },
                Source::Own {
                    client,
                    stream,
                    reconnect,
                } => {
                    if let Some(s) = stream.as_mut() {
                        match s.next().await {
                            Some(msg) => msg.get_payload_bytes().to_vec(),
                            None => {
                                *stream = None;
                                continue;
                            }
                        }
                    } else {
                        let (client, channel) = (client.clone(), self.channel.clone());
                        let pending = reconnect.get_or_insert_with(|| {
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                let mut p = client.get_async_pubsub().await.ok()?;
                                p.subscribe(&channel).await.ok()?;
                                Some(p.into_on_message())
                            })
                        });
                        let result = pending.await;
                        *reconnect = None;
                        if let Ok(Some(s)) = result {
                            *stream = Some(s);
                        }
                        continue;
                    }
                }
            };
            if let Some(m) = self.open(&payload) {
                return m;
            }
        }
    }
}

impl Agent {
    /// Connects to Redis at `url` and subscribes, as [`Agent::connect`], and
    /// with a credential signs with it ([`Agent::with_credential`]). The
    /// connection is made as the credential's Redis ACL user, in place of
    /// any user the URL names (`fleet-commander acl --apply` creates those
    /// users). If Redis refuses that user (ACLs not applied yet), the agent
    /// connects as the URL says, and says so once. The Python SDK does the
    /// same.
    pub async fn open(
        url: &str,
        credential: Option<&Credential>,
        channels: Channels,
        spec: AgentSpec,
    ) -> Result<Agent, AgentError> {
        let mut target = url.to_string();
        if let Some(c) = credential {
            let as_user = c.redis_url(url);
            if as_user != url {
                match fleet_redis::connect(&as_user).await {
                    Ok(_) => target = as_user,
                    Err(e) if refused_user(&e.source) => warn!(
                        user = c.redis_user.as_deref().unwrap_or(""),
                        "Redis has no ACL user for this credential: connecting as the URL says; \
                         run `fleet-commander acl --apply` to confine the agent (docs/SECURITY.md)"
                    ),
                    Err(e) => return Err(e.source.into()),
                }
            }
        }
        let client = fleet_redis::client(&target)?;
        let publisher = fleet_redis::connect(&target).await.map_err(|e| e.source)?;
        let agent = Agent::connect(&client, publisher, channels, spec).await?;
        Ok(match credential {
            Some(c) => agent.with_credential(c),
            None => agent,
        })
    }

    /// Subscribes to `…:agent:{id}` first, so that no reply can be missed, and
    /// keeps that subscription alive across Redis reconnects.
    pub async fn connect(
        client: &fleet_redis::Client,
        publisher: Conn,
        channels: Channels,
        spec: AgentSpec,
    ) -> Result<Agent, AgentError> {
        let channel = channels.agent(&spec.id);
        let mut ps = client.get_async_pubsub().await?;
        ps.subscribe(&channel).await?;
        let source = Source::Own {
            client: client.clone(),
            stream: Some(ps.into_on_message()),
            reconnect: None,
        };
        Ok(Agent::with_source(
            channels, publisher, spec, channel, source,
        ))
    }

    /// As [`Agent::connect`], its channel read through `router`'s shared
    /// connections rather than one of its own: for running many agents in
    /// one process (the simulator).
    pub async fn connect_routed(
        router: &Router,
        publisher: Conn,
        channels: Channels,
        spec: AgentSpec,
    ) -> Result<Agent, AgentError> {
        let channel = channels.agent(&spec.id);
        let source = Source::Routed(router.attach(&channel).await?);
        Ok(Agent::with_source(
            channels, publisher, spec, channel, source,
        ))
    }

    fn with_source(
        channels: Channels,
        publisher: Conn,
        spec: AgentSpec,
        channel: String,
        source: Source,
    ) -> Agent {
        Agent {
            spec,
            channels,
            publisher,
            inbox: Inbox {
                channel,
                source,
                check: None,
                refused: 0,
            },
            signer: None,
            exchange: None,
            session: None,
            halted: false,
            pending: Default::default(),
            seq: 0,
            sealed_at: 0,
            deregistering: false,
            instance: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Signs every message with the credential's key and takes only what
    /// the commander signed (its public key is in the credential).
    ///
    /// It also offers a session at registration: once the commander agrees,
    /// both MAC (HMAC-SHA256) instead of signing, about 40 times cheaper to
    /// check (`docs/PROTOCOL.md`, "Sessions"). [`Agent::with_sessions`]
    /// turns that off.
    pub fn with_credential(mut self, c: &Credential) -> Agent {
        self.signer = Some(c.signer());
        self.inbox.check = Some(c.commander_check());
        self.exchange = Some(Exchange::random());
        self
    }

    /// Whether to offer a session at registration (on by default with a
    /// credential); off, every message is signed.
    pub fn with_sessions(mut self, on: bool) -> Agent {
        self.exchange = match (on, self.signer.is_some()) {
            (true, true) => self.exchange.or_else(|| Some(Exchange::random())),
            _ => None,
        };
        self
    }

    /// Whether the commander agreed to a session (what the agent sends is
    /// MACed).
    pub fn in_session(&self) -> bool {
        self.session.is_some()
    }

    /// Whether the commander has halted this agent (`halt`: its budget is
    /// spent) and not yet resumed it; [`Agent::run_with`] keeps track.
    pub fn halted(&self) -> bool {
        self.halted
    }

    /// Messages ignored because the commander did not sign them.
    pub fn refused(&self) -> u64 {
        self.inbox.refused
    }

    /// Becomes a new run of the agent, as after a process restart: the next
    /// registration tells the commander to give away what the old run held.
    pub fn new_instance(&mut self) {
        self.instance = uuid::Uuid::new_v4().simple().to_string();
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn spec(&self) -> &AgentSpec {
        &self.spec
    }

    /// Publishes `msg`: MACed in a session, else signed (plain without a
    /// credential).
    async fn send(&mut self, channel: String, msg: &impl Serialize) -> Result<(), AgentError> {
        self.publish(channel, msg, true).await
    }

    /// Publishes `msg`, signed even in a session (`register` and votes
    /// must be) unless `session_ok`.
    async fn publish(
        &mut self,
        channel: String,
        msg: &impl Serialize,
        session_ok: bool,
    ) -> Result<(), AgentError> {
        let body = serde_json::to_string(msg).expect("serializable");
        // Each message sealed later than the one before (a heartbeat sealed
        // no later than the last one is refused as a replay), even if the
        // clock steps back.
        let now = fleet_protocol::now_ms().max(self.sealed_at + 1);
        self.sealed_at = now;
        let payload = match (&self.signer, &self.session) {
            (Some(signer), Some(session)) if session_ok => {
                session.seal(signer.kid(), &channel, body.as_bytes(), now)
            }
            (Some(signer), _) => signer.sign(&channel, body.as_bytes(), now),
            (None, _) => body.into_bytes(),
        };
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut self.publisher)
            .await?;
        Ok(())
    }

    /// Registers (idempotent: safe to repeat after a restart or a lost reply).
    pub async fn register(&mut self, timeout: Duration) -> Result<Registration, AgentError> {
        self.deregistering = false;
        let id = uuid::Uuid::new_v4().to_string();
        let msg = Tagged {
            v: VERSION,
            kind: "register",
            body: Register {
                id: id.clone(),
                agent_id: self.spec.id.clone(),
                pool: self.spec.pool.as_str().to_string(),
                agent_type: None,
                priority: self.spec.priority,
                capabilities: self.spec.capabilities.clone(),
                resources: self.spec.resources,
                capacity: Some(self.spec.capacity),
                instance: Some(self.instance.clone()),
                session_key: self.exchange.as_ref().map(Exchange::public_b64),
            },
        };
        let reply = self
            .request(
                self.channels.registry(),
                &msg,
                false, // a session is set up by a signed registration
                timeout,
                |m| matches!(m, ToAgent::RegisterReply { reply_to, .. } if *reply_to == id),
            )
            .await?;
        match reply {
            ToAgent::RegisterReply {
                accepted: true,
                agent: Some(record),
                re_registered,
                heartbeat_interval_ms,
                session_key,
                ..
            } => {
                self.set_session(session_key.as_deref());
                Ok(Registration {
                    record: *record,
                    re_registered: re_registered.unwrap_or(false),
                    heartbeat_interval: Duration::from_millis(
                        heartbeat_interval_ms.unwrap_or(5000),
                    ),
                })
            }
            ToAgent::RegisterReply { reason, detail, .. } => Err(AgentError::Refused {
                reason: reason.unwrap_or(RefusalReason::InvalidFields),
                detail: detail.unwrap_or_default(),
            }),
            _ => unreachable!("filtered above"),
        }
    }

    /// The session the commander answered with (its key), or none.
    fn set_session(&mut self, commander: Option<&str>) {
        let own = self.exchange.as_ref();
        self.session = match (own, commander) {
            (Some(x), Some(c)) => {
                let s = x.session(c, &self.spec.id, &x.public_b64());
                if s.is_none() {
                    warn!("the commander's session key is unusable: signing everything");
                }
                s
            }
            _ => None,
        };
        if let Some(check) = &mut self.inbox.check {
            check.set_session(self.session.clone());
        }
    }

    /// Sends one heartbeat.
    pub async fn heartbeat(&mut self, status: AgentStatus, load: f64) -> Result<(), AgentError> {
        self.seq += 1;
        let msg = Tagged {
            v: VERSION,
            kind: "heartbeat",
            body: Heartbeat {
                agent_id: self.spec.id.clone(),
                status,
                load,
                resources: Some(self.spec.resources),
                seq: Some(self.seq),
            },
        };
        self.send(self.channels.health(), &msg).await
    }

    /// Leaves the fleet; true if the commander removed the agent.
    pub async fn deregister(&mut self, timeout: Duration) -> Result<bool, AgentError> {
        self.deregistering = true;
        let id = uuid::Uuid::new_v4().to_string();
        let msg = Tagged {
            v: VERSION,
            kind: "deregister",
            body: Deregister {
                id: id.clone(),
                agent_id: self.spec.id.clone(),
                reason: Some("shutdown".into()),
            },
        };
        match self
            .request(
                self.channels.registry(),
                &msg,
                true,
                timeout,
                |m| matches!(m, ToAgent::DeregisterReply { reply_to, .. } if *reply_to == id),
            )
            .await?
        {
            ToAgent::DeregisterReply { removed, .. } => {
                // The session ended with the record: sign until registered again.
                self.set_session(None);
                Ok(removed)
            }
            _ => unreachable!("filtered above"),
        }
    }

    /// The next message from the commander.
    pub async fn recv(&mut self) -> ToAgent {
        match self.pending.pop_front() {
            Some(m) => m,
            None => self.inbox.recv().await,
        }
    }

    /// Sends a request and waits up to `timeout` for the reply `want`
    /// picks, sending it again every [`REQUEST_RETRY`] meanwhile: pub/sub
    /// may lose the request or its reply, and requests are idempotent (every
    /// copy carries the same id; the first reply to any of them counts).
    async fn request(
        &mut self,
        channel: String,
        msg: &impl Serialize,
        session_ok: bool,
        timeout: Duration,
        want: impl Fn(&ToAgent) -> bool,
    ) -> Result<ToAgent, AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.publish(channel.clone(), msg, session_ok).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.await_reply(left.min(REQUEST_RETRY), &want).await {
                Err(AgentError::Timeout(_)) if tokio::time::Instant::now() < deadline => {
                    debug!(agent_id = %self.spec.id, "no reply yet: sending the request again");
                }
                Err(AgentError::Timeout(_)) => return Err(AgentError::Timeout(timeout)),
                other => return other,
            }
        }
    }

    async fn await_reply(
        &mut self,
        timeout: Duration,
        want: impl Fn(&ToAgent) -> bool,
    ) -> Result<ToAgent, AgentError> {
        let (inbox, pending) = (&mut self.inbox, &mut self.pending);
        let wait = async {
            loop {
                let m = inbox.recv().await;
                if want(&m) {
                    return Ok(m);
                }
                pending.push_back(m); // not for now: handled after the reply
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| AgentError::Timeout(timeout))?
    }

    /// `task_ack`: the attempt is taken; its lease becomes the task's
    /// timeout.
    pub async fn ack(&mut self, task_id: &str, attempt: u32) -> Result<(), AgentError> {
        let body = self.report_body(task_id, attempt, None, None);
        self.send_report(ReportKind::Ack, body).await
    }

    /// `task_complete` with the attempt's result.
    pub async fn complete(
        &mut self,
        task_id: &str,
        attempt: u32,
        result: Value,
    ) -> Result<(), AgentError> {
        let body = self.report_body(task_id, attempt, Some(result), None);
        self.send_report(ReportKind::Complete, body).await
    }

    /// `task_fail` with what went wrong (retried while retries are left).
    pub async fn fail(
        &mut self,
        task_id: &str,
        attempt: u32,
        error: impl Into<String>,
    ) -> Result<(), AgentError> {
        let body = self.report_body(task_id, attempt, None, Some(error.into()));
        self.send_report(ReportKind::Fail, body).await
    }

    /// `task_progress`: `step` must rise from one report to the next for
    /// the commander to count it as progress (see `progressTimeoutMs`).
    pub async fn progress(
        &mut self,
        task_id: &str,
        attempt: u32,
        fraction: Option<f64>,
        step: Option<u64>,
    ) -> Result<(), AgentError> {
        let mut body = self.report_body(task_id, attempt, None, None);
        body.progress = fraction;
        body.step = step;
        self.send_report(ReportKind::Progress, body).await
    }

    /// A validator's vote on a proposal (announced on the governance
    /// channel with its `hash`), signed like everything the agent sends.
    pub async fn vote(
        &mut self,
        proposal_id: &str,
        choice: fleet_protocol::governance::Choice,
        hash: &str,
        reason: &str,
    ) -> Result<(), AgentError> {
        let msg = Tagged {
            v: VERSION,
            kind: "vote",
            body: fleet_protocol::governance::Vote {
                proposal_id: proposal_id.into(),
                agent_id: self.spec.id.clone(),
                vote: choice,
                hash: hash.into(),
                reason: reason.into(),
            },
        };
        // Signed even in a session: the vote's signature is its proof.
        self.publish(self.channels.governance(), &msg, false).await
    }

    /// A report with every field the caller's to set (`usage`, `step`, ...).
    pub async fn send_report(
        &mut self,
        kind: ReportKind,
        body: TaskReport,
    ) -> Result<(), AgentError> {
        let msg = Tagged {
            v: VERSION,
            kind: kind.as_str(),
            body,
        };
        self.send(self.channels.results(), &msg).await
    }

    /// This agent's report on an attempt, with a result or an error.
    pub fn report_body(
        &self,
        task_id: &str,
        attempt: u32,
        result: Option<Value>,
        error: Option<String>,
    ) -> TaskReport {
        TaskReport {
            task_id: task_id.to_string(),
            attempt,
            agent_id: self.spec.id.clone(),
            progress: None,
            step: None,
            usage: None,
            result: result
                .as_ref()
                .map(fleet_protocol::task::RawJson::from_value),
            error,
        }
    }

    /// Heartbeats every `interval` (the first after `first_after`) until
    /// `stop`, re-registers when the commander asks, and completes every task
    /// it is given at once. Returns when stopped (the agent then simply goes
    /// silent, as a crashed agent would) or once drained and deregistered.
    pub async fn run(
        &mut self,
        interval: Duration,
        first_after: Duration,
        stop: CancellationToken,
    ) -> Exit {
        self.run_with(interval, first_after, stop, None).await
    }

    /// As [`Agent::run`], doing each task with `work` (acknowledged first,
    /// then reported as completed or failed). Results of work still running
    /// when `stop` comes are never sent, as with a crash.
    pub async fn run_with(
        &mut self,
        interval: Duration,
        first_after: Duration,
        stop: CancellationToken,
        work: Option<Work>,
    ) -> Exit {
        self.life(interval, first_after, stop, work, None).await
    }

    /// As [`Agent::run_with`], but `stop` is a request to leave, as on
    /// SIGTERM in a rolling restart: the agent takes no new task, keeps
    /// heartbeating while it finishes what it holds (and has its results
    /// acknowledged), then deregisters; work still running after `grace` is
    /// abandoned and handed back by the deregistration (at once, and no
    /// casualty of the task). Returns [`Exit::Left`].
    pub async fn serve(
        &mut self,
        interval: Duration,
        work: Option<Work>,
        stop: CancellationToken,
        grace: Duration,
    ) -> Exit {
        self.life(interval, Duration::ZERO, stop, work, Some(grace))
            .await
    }

    async fn life(
        &mut self,
        interval: Duration,
        first_after: Duration,
        stop: CancellationToken,
        work: Option<Work>,
        grace: Option<Duration>,
    ) -> Exit {
        let start = tokio::time::Instant::now() + first_after;
        let mut tick = tokio::time::interval_at(start, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut jobs = Jobs {
            done: done_tx,
            running: Default::default(),
            unacked: Default::default(),
            draining: false,
            leaving: None,
        };
        enum Wake {
            Stop,
            Beat,
            Message(ToAgent),
            Done((String, u32, Outcome)),
            Deadline,
        }
        loop {
            let leaving = jobs.leaving;
            let deadline = leaving.unwrap_or_else(tokio::time::Instant::now);
            let wake = match self.pending.pop_front() {
                Some(m) if !stop.is_cancelled() || leaving.is_some() => Wake::Message(m),
                _ => tokio::select! {
                    _ = stop.cancelled(), if leaving.is_none() => Wake::Stop,
                    _ = tokio::time::sleep_until(deadline), if leaving.is_some() => Wake::Deadline,
                    _ = tick.tick() => Wake::Beat,
                    m = self.inbox.recv() => Wake::Message(m),
                    Some(d) = done_rx.recv() => Wake::Done(d),
                },
            };
            match wake {
                Wake::Stop => {
                    let Some(grace) = grace else {
                        return Exit::Stopped;
                    };
                    info!(agent_id = %self.spec.id, tasks = jobs.running.len(), ?grace,
                        "leaving: finishing what is held, then deregistering");
                    jobs.leaving = Some(tokio::time::Instant::now() + grace);
                    jobs.draining = true;
                }
                Wake::Deadline => {
                    warn!(agent_id = %self.spec.id, tasks = jobs.running.len(),
                        "grace over: handing back unfinished work");
                    for (_, h) in jobs.running.drain() {
                        h.abort();
                    }
                    jobs.unacked.clear();
                }
                Wake::Beat => self.beat(&mut jobs).await,
                Wake::Message(m) => self.on_message(m, work.as_ref(), &mut jobs, interval).await,
                Wake::Done((task_id, attempt, outcome)) => {
                    jobs.running.remove(&(task_id.clone(), attempt));
                    self.finish(&task_id, attempt, &outcome).await;
                    if !outcome.silent() {
                        jobs.unacked.insert((task_id, attempt), (outcome, 1));
                    }
                }
            }
            if jobs.draining && jobs.running.is_empty() && jobs.unacked.is_empty() {
                match self.deregister(interval).await {
                    Ok(_) => info!(agent_id = %self.spec.id, "drained and deregistered"),
                    Err(e) => warn!(agent_id = %self.spec.id, error = %e, "deregistration failed"),
                }
                return if jobs.leaving.is_some() {
                    Exit::Left
                } else {
                    Exit::Drained
                };
            }
        }
    }

    /// A heartbeat with the real status and load, and the results not yet
    /// acknowledged sent again.
    async fn beat(&mut self, jobs: &mut Jobs) {
        let n = jobs.running.len() as u32;
        let capacity = self.spec.capacity.max(1);
        let status = if n >= capacity {
            AgentStatus::Busy
        } else if n > 0 {
            AgentStatus::Active
        } else {
            AgentStatus::Idle
        };
        // At most 1: an agent can hold more than its capacity for a while
        // (work still running from before a re-registration), and the
        // commander refuses a load above 1 as invalid.
        let load = (f64::from(n) / f64::from(capacity)).min(1.0);
        if let Err(e) = self.heartbeat(status, load).await {
            warn!(agent_id = %self.spec.id, error = %e, "heartbeat not sent");
        }
        self.resend(jobs).await;
    }

    /// What the commander said, acted on.
    async fn on_message(
        &mut self,
        m: ToAgent,
        work: Option<&Work>,
        jobs: &mut Jobs,
        interval: Duration,
    ) {
        match m {
            ToAgent::ResultAck {
                task_id, attempt, ..
            } => {
                jobs.unacked.remove(&(task_id, attempt));
            }
            // It answers a heartbeat sent before leaving.
            ToAgent::Reregister { .. } if self.deregistering => {}
            ToAgent::Reregister { reason, .. } => {
                info!(agent_id = %self.spec.id, reason, "commander asked to re-register");
                if let Err(e) = self.register(interval).await {
                    warn!(agent_id = %self.spec.id, error = %e, "re-registration failed");
                }
            }
            ToAgent::TaskAssign {
                task_id,
                attempt,
                pool,
                priority,
                timeout_ms,
                progress_timeout_ms,
                max_cost,
                payload,
                ..
            } => {
                if jobs.leaving.is_some() {
                    // Not taken: the deregistration hands it back.
                    debug!(agent_id = %self.spec.id, task_id, "leaving: task not taken");
                    return;
                }
                let a = Assignment {
                    task_id,
                    attempt,
                    pool,
                    priority,
                    timeout_ms,
                    progress_timeout_ms,
                    max_cost,
                    payload,
                };
                self.take(a, work, jobs).await;
            }
            ToAgent::TaskCancel {
                task_id, attempt, ..
            } => {
                jobs.unacked.remove(&(task_id.clone(), attempt));
                if let Some(h) = jobs.running.remove(&(task_id.clone(), attempt)) {
                    h.abort();
                    info!(agent_id = %self.spec.id, task_id, attempt, "task cancelled");
                }
            }
            ToAgent::Drain { reason, .. } => {
                info!(agent_id = %self.spec.id, reason, tasks = jobs.running.len(), "draining");
                jobs.draining = true;
            }
            ToAgent::Halt { balance, unit, .. } => {
                warn!(agent_id = %self.spec.id, balance, unit, "halted: budget below its minimum; no new work until resumed");
                self.halted = true;
            }
            ToAgent::Resume { balance, .. } => {
                info!(agent_id = %self.spec.id, balance, "resumed: budget above its minimum");
                self.halted = false;
            }
            other => debug!(?other, "message from the commander"),
        }
    }

    /// Starts an assignment. Work done at once needs no acknowledgement: the
    /// result itself ends the lease. Anything longer is acknowledged first,
    /// so that its lease becomes the task's timeout, and runs on its own task.
    async fn take(&mut self, a: Assignment, work: Option<&Work>, jobs: &mut Jobs) {
        let key = (a.task_id.clone(), a.attempt);
        let mut job = match work {
            None => {
                let echo = serde_json::json!({ "echo": a.payload });
                Box::pin(std::future::ready(Outcome::Complete(echo)))
            }
            Some(w) => w(a),
        };
        if let Some(out) = futures_util::FutureExt::now_or_never(&mut job) {
            let _ = jobs.done.send((key.0, key.1, out));
            return;
        }
        if let Err(e) = self.ack(&key.0, key.1).await {
            warn!(agent_id = %self.spec.id, error = %e, "ack not sent");
        }
        let tx = jobs.done.clone();
        let (id, attempt) = key.clone();
        let handle = tokio::spawn(async move {
            let out = job.await;
            let _ = tx.send((id, attempt, out));
        });
        jobs.running.insert(key, handle.abort_handle());
    }

    /// Re-sends each result not acknowledged since the last beat, up to
    /// `RESEND_TRIES` times in all (then the commander's lease decides).
    async fn resend(&mut self, jobs: &mut Jobs) {
        let due: Vec<_> = jobs.unacked.keys().cloned().collect();
        for key in due {
            let Some((outcome, tries)) = jobs.unacked.get_mut(&key) else {
                continue;
            };
            if *tries >= RESEND_TRIES {
                warn!(agent_id = %self.spec.id, task_id = key.0, attempt = key.1,
                    "result never acknowledged; given up");
                jobs.unacked.remove(&key);
                continue;
            }
            *tries += 1;
            let outcome = outcome.clone();
            debug!(agent_id = %self.spec.id, task_id = key.0, attempt = key.1, "re-sending a result");
            self.finish(&key.0, key.1, &outcome).await;
        }
    }

    /// Reports a finished attempt (a vanished one, never).
    async fn finish(&mut self, task_id: &str, attempt: u32, outcome: &Outcome) {
        let (outcome, usage) = match outcome {
            Outcome::Used(inner, usage) => (&**inner, Some(*usage)),
            o => (o, None),
        };
        let (kind, mut body) = match outcome {
            Outcome::Complete(v) => (
                ReportKind::Complete,
                self.report_body(task_id, attempt, Some(v.clone()), None),
            ),
            Outcome::Fail(e) => (
                ReportKind::Fail,
                self.report_body(task_id, attempt, None, Some(e.clone())),
            ),
            #[cfg(feature = "simulate")]
            Outcome::Vanish => return,
            Outcome::Used(..) => return,
        };
        body.usage = usage;
        let sent = self.send_report(kind, body).await;
        if let Err(e) = sent {
            warn!(agent_id = %self.spec.id, error = %e, "result not sent");
        }
    }
}

/// Work in progress: where finished work reports, and each running attempt
/// by task id and attempt, so that a cancel can stop it.
struct Jobs {
    done: tokio::sync::mpsc::UnboundedSender<(String, u32, Outcome)>,
    running: std::collections::HashMap<(String, u32), tokio::task::AbortHandle>,
    /// Results sent and not yet acknowledged (`result_ack`), with how many
    /// times each was sent: re-sent at every beat.
    unacked: std::collections::HashMap<(String, u32), (Outcome, u32)>,
    /// Told to drain: finish what is running, then deregister and return.
    draining: bool,
    /// Leaving (stop with a grace): as draining, until this deadline.
    leaving: Option<tokio::time::Instant>,
}

/// A result is sent at most this many times (once, then at each beat).
const RESEND_TRIES: u32 = 20;

/// Why [`Agent::run_with`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `stop` came (the agent goes silent, as a crashed one would).
    Stopped,
    /// The commander drained it: its work is done and it deregistered.
    Drained,
    /// It was asked to leave ([`Agent::serve`]): it finished or handed back
    /// its work and deregistered.
    Left,
}

/// A task handed to an agent.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub task_id: String,
    pub attempt: u32,
    pub pool: PoolType,
    pub priority: u8,
    pub timeout_ms: u64,
    /// Report a rising step at least this often (0: not watched).
    pub progress_timeout_ms: u64,
    /// The most usage the attempt may report.
    pub max_cost: Option<f64>,
    pub payload: Value,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Complete(Value),
    Fail(String),
    /// Say nothing (a crash mid-task): for tests and the simulator only,
    /// behind the `simulate` feature.
    #[cfg(feature = "simulate")]
    Vanish,
    /// A completion or failure that consumed this much of the agent's
    /// budget (`usage`, in the fleet's budget unit).
    Used(Box<Outcome>, f64),
}

impl Outcome {
    /// Nothing is reported (a simulated crash).
    fn silent(&self) -> bool {
        #[cfg(feature = "simulate")]
        if matches!(self, Outcome::Vanish) {
            return true;
        }
        false
    }
}

/// What an agent does with a task.
pub type Work = std::sync::Arc<
    dyn Fn(Assignment) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>
        + Send
        + Sync,
>;

/// A protocol message: `{"v":1,"type":…, …fields}`.
#[derive(Serialize)]
pub struct Tagged<T> {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten)]
    pub body: T,
}
