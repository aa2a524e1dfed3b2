//! `heartbeat`: the agent is alive; a failed one recovers.
//!
//! Heartbeats have a handler of their own (the subscriber routes every
//! heartbeat to it), which records them in batches: the first waits up to
//! [`GATHER`] for others, and up to [`BATCH`] are recorded in one script
//! call. Each is admitted (its seal checked) and answered as if alone; only
//! the script call, its round trip and its fixed cost are shared. A
//! heartbeat sealed no later than its agent's last recorded one is a replay
//! (the script checks it against `sealedAt`): heartbeats keep no nonces. An
//! agent's heartbeats stay in order among themselves; against its other
//! messages they never had an order (they come on another channel, read on
//! another connection).

use super::no_session;
use crate::context::{publish, Shared};
use crate::metrics as m;
use crate::subscriber::{refused, Envelope};
use fleet_protocol::auth::AuthError;
use fleet_protocol::{now_ms, Channel, Event, Heartbeat, Inbound, ToAgent, VERSION};
use fleet_store::connection::Conn;
use fleet_store::registry::HeartbeatOutcome;
use fleet_store::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, info_span, warn};

/// The most heartbeats one script call records.
pub(crate) const BATCH: usize = 128;
/// How long the first heartbeat of a batch waits for others to join it.
pub(crate) const GATHER: Duration = Duration::from_millis(5);

/// The heartbeats' handler: gathers them into batches and records each
/// batch, until the subscriber stops (on shutdown it records what is
/// queued, then returns).
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Envelope>) {
    let mut conn = shared.redis.clone();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = Instant::now() + GATHER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(env)) => batch.push(env),
                Ok(None) | Err(_) => break,
            }
        }
        if !record(&shared, &mut conn, batch).await {
            return;
        }
    }
}

/// Admits and records `batch`, and answers each heartbeat as its outcome
/// says. False when this commander may no longer write (fenced, or its term
/// over): its handler stops.
pub(super) async fn record(shared: &Shared, conn: &mut Conn, batch: Vec<Envelope>) -> bool {
    if shared.ended.get().is_some() {
        return false; // the term is over: this commander may no longer write
    }
    let started = Instant::now();
    // Each handled (for the failure detector's watermark) when these drop.
    let _heard: Vec<_> = batch.iter().map(|e| shared.heard.ticket(e.seq)).collect();
    let n = batch.len();
    let mut queued = Vec::with_capacity(n);
    let work = async {
        let mut beats: Vec<(Heartbeat, Option<u64>, Channel)> = Vec::with_capacity(n);
        // Checked side by side: a check that reads Redis (a session derived
        // again after a takeover, a key not cached) holds up no other.
        let checks = futures_util::future::join_all(batch.iter().map(|env| {
            let mut c = conn.clone();
            async move {
                let (sessions, registry) = (&shared.sessions, &shared.registry);
                let seal = env.seal.as_ref();
                shared
                    .gate
                    .admit(&mut c, sessions, registry, seal, &env.msg)
                    .await
            }
        }))
        .await;
        for (env, admitted) in batch.into_iter().zip(checks) {
            // Off its sender's count once the batch is recorded.
            queued.push(env._queued);
            let Inbound::Heartbeat(hb) = env.msg else {
                continue; // the subscriber sends only heartbeats here
            };
            match admitted {
                Ok(a) => beats.push((hb, a.sealed_at, env.channel)),
                Err(crate::auth::Refusal::Refused(e)) => {
                    let span = info_span!("message", kind = "heartbeat", agent_id = %hb.agent_id);
                    span.in_scope(|| refused(env.channel, e));
                    if e == AuthError::NoSession {
                        no_session(shared, conn, &hb.agent_id).await?;
                    }
                }
                Err(crate::auth::Refusal::Store(e)) => return Err(e),
            }
        }
        if beats.is_empty() {
            return Ok(());
        }
        let pairs: Vec<_> = beats.iter().map(|(hb, at, _)| (hb, *at)).collect();
        let outcomes = shared.registry.heartbeats(conn, &pairs, now_ms()).await?;
        for ((hb, _, channel), outcome) in beats.into_iter().zip(outcomes) {
            answer(shared, conn, hb, channel, outcome).await?;
        }
        Ok(())
    };
    let (outcome, trips) = fleet_store::connection::count_round_trips(work).await;
    let per = f64::from(trips) / n as f64;
    for _ in 0..n {
        metrics::histogram!(m::ROUND_TRIPS, "kind" => "heartbeat").record(per);
        metrics::histogram!(m::HEARTBEAT_SECONDS).record(started.elapsed());
    }
    match outcome {
        Ok(()) => true,
        Err(StoreError::Fenced) => {
            shared.on_fenced();
            false
        }
        Err(e) => {
            m::redis_error("handle", &e);
            warn!(reason = e.reason(), error = %e, heartbeats = n,
                "recording heartbeats failed; they are dropped (agents heartbeat again)");
            true
        }
    }
}

/// Tells the agent and the fleet what its heartbeat did.
async fn answer(
    shared: &Shared,
    conn: &mut Conn,
    hb: Heartbeat,
    channel: Channel,
    outcome: HeartbeatOutcome,
) -> Result<(), StoreError> {
    let keys = &shared.keys;
    // Made only for what is logged: most heartbeats log nothing.
    let span = || info_span!("message", kind = "heartbeat", agent_id = %hb.agent_id);
    let ts = now_ms();
    if outcome != HeartbeatOutcome::Replay {
        metrics::counter!(m::HEARTBEATS).increment(1);
    }
    match outcome {
        HeartbeatOutcome::Ok => {}
        // Sealed no later than the agent's last recorded heartbeat: a
        // replay, nothing changed.
        HeartbeatOutcome::Replay => span().in_scope(|| refused(channel, AuthError::Replay)),
        HeartbeatOutcome::Resumed(resume) => {
            metrics::counter!(m::AGENTS_RESUMED).increment(1);
            span().in_scope(|| info!("budget window renewed: halted agent resumed"));
            shared.tell(conn, resume.into_iter().collect()).await?;
        }
        HeartbeatOutcome::Unknown => {
            let reply = ToAgent::Reregister {
                v: VERSION,
                reason: "unknown_agent".into(),
            };
            shared
                .send(conn, keys.channels().agent(&hb.agent_id), &reply)
                .await?;
        }
        HeartbeatOutcome::Recovering(pool) => {
            span().in_scope(|| info!(pool = %pool, "failed agent heard again: recovering"));
            let ev = Event::AgentRecovering {
                v: VERSION,
                agent_id: hb.agent_id,
                pool,
                ts,
            };
            publish(conn, keys.channels().health(), &ev).await?;
        }
        HeartbeatOutcome::Recovered(pool) => {
            metrics::counter!(m::AGENTS_RECOVERED, "pool" => pool.as_str()).increment(1);
            span().in_scope(|| info!(pool = %pool, "agent recovered"));
            let ev = Event::AgentRecovered {
                v: VERSION,
                agent_id: hb.agent_id,
                pool,
                ts,
            };
            publish(conn, keys.channels().health(), &ev).await?;
        }
    }
    Ok(())
}
