//! `heartbeat`: the agent is alive; a failed one recovers. Heartbeats
//! queued together are recorded in one script call (`batch`).

use crate::auth::Refusal;
use crate::context::{publish, Shared};
use crate::metrics as m;
use crate::subscriber::{refused, Envelope};
use fleet_protocol::auth::AuthError;
use fleet_protocol::{now_ms, Event, Heartbeat, Inbound, ToAgent, VERSION};
use fleet_store::connection::Conn;
use fleet_store::registry::HeartbeatOutcome;
use fleet_store::{Once, StoreError};
use std::time::Instant;
use tracing::{info, info_span, Instrument};

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut Conn,
    hb: Heartbeat,
    once: Option<&Once>,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let outcome = shared.registry.heartbeat(conn, &hb, now_ms(), once).await?;
    answer(shared, conn, hb, outcome, started).await
}

/// Heartbeats queued together (at most `HEARTBEAT_BATCH`): each admitted
/// as alone, then all recorded in one script call, in order, and each
/// answered as alone. False when this commander was fenced.
pub(super) async fn batch(shared: &Shared, conn: &mut Conn, batch: Vec<Envelope>) -> bool {
    // Handled (for the failure detector's watermark) when these drop: after
    // the script has recorded them.
    let _heard: Vec<_> = batch.iter().map(|e| shared.heard.ticket(e.seq)).collect();
    let n = batch.len();
    let span = info_span!("heartbeats", n);
    let channel = batch[0].channel;
    let work = async {
        let started = Instant::now();
        let mut admitted = Vec::with_capacity(n);
        // Each stays on its sender's count of queued messages until the
        // batch is recorded, as a message handled alone does: a flooder
        // draining faster in batches is still shed at its share.
        let mut queued = Vec::with_capacity(n);
        for env in batch {
            queued.push(env._queued);
            match shared.gate.admit(conn, env.seal.as_ref(), &env.msg).await {
                Ok(a) => {
                    if let Inbound::Heartbeat(hb) = env.msg {
                        admitted.push((hb, a.once, env.channel));
                    }
                }
                Err(Refusal::Refused(e)) => refused(env.channel, e),
                Err(Refusal::Store(e)) => return Err(e),
            }
        }
        if admitted.is_empty() {
            return Ok(());
        }
        let items: Vec<_> = admitted
            .iter()
            .map(|(hb, once, _)| (hb, once.as_ref()))
            .collect();
        let outcomes = shared.registry.heartbeats(conn, &items, now_ms()).await?;
        for ((hb, _, channel), outcome) in admitted.into_iter().zip(outcomes) {
            match outcome {
                Ok(o) => answer(shared, conn, hb, o, started).await?,
                Err(StoreError::Replay) => refused(channel, AuthError::Replay),
                Err(e) => return Err(e),
            }
        }
        drop(queued);
        Ok(())
    }
    .instrument(span);
    let (outcome, trips) = fleet_store::connection::count_round_trips(work).await;
    // Each heartbeat's share of the batch's round trips.
    let share = f64::from(trips) / n as f64;
    for _ in 0..n {
        metrics::histogram!(m::ROUND_TRIPS, "kind" => "heartbeat").record(share);
    }
    super::settled(shared, channel, outcome)
}

/// What the commander does once a heartbeat is recorded.
async fn answer(
    shared: &Shared,
    conn: &mut Conn,
    hb: Heartbeat,
    outcome: HeartbeatOutcome,
    started: Instant,
) -> Result<(), StoreError> {
    let keys = &shared.keys;
    metrics::counter!(m::HEARTBEATS).increment(1);
    let ts = now_ms();
    match outcome {
        HeartbeatOutcome::Ok => {}
        HeartbeatOutcome::Resumed(resume) => {
            metrics::counter!(m::AGENTS_RESUMED).increment(1);
            info!("budget window renewed: halted agent resumed");
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
            info!(pool = %pool, "failed agent heard again: recovering");
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
            info!(pool = %pool, "agent recovered");
            let ev = Event::AgentRecovered {
                v: VERSION,
                agent_id: hb.agent_id,
                pool,
                ts,
            };
            publish(conn, keys.channels().health(), &ev).await?;
        }
    }
    metrics::histogram!(m::HEARTBEAT_SECONDS).record(started.elapsed());
    Ok(())
}
