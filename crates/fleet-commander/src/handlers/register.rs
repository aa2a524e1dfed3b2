//! `register`: an agent joins its pool (or re-registers after a restart).
//!
//! The common case, a new agent, is answered by the script itself: the reply
//! and the event are rendered here and published by `register.lua` in the
//! same round trip. Every other outcome is answered after the script returns.
//! A reply is always signed, never MACed: it is how the agent learns the
//! commander's session key.

use crate::context::{json, Shared};
use crate::metrics as m;
use fleet_protocol::agent::AgentRecord;
use fleet_protocol::auth::Grants;
use fleet_protocol::session::Session;
use fleet_protocol::{
    check_registration, now_ms, Event, RefusalReason, Register, ToAgent, VERSION,
};
use fleet_store::connection::Conn;
use fleet_store::registry::{fresh_record, Announce, NewAgent, RegisterOutcome};
use fleet_store::{Notice, Once, StoreError};
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info, warn};

/// What the registration comes to.
enum Answer {
    /// The script registered the agent and published the reply and event.
    Announced,
    Accepted {
        record: Box<AgentRecord>,
        again: bool,
        /// Its budget is spent: the halt, sent after the reply.
        halt: Option<Notice>,
    },
    Refused(RefusalReason, String),
}

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut Conn,
    r: Register,
    once: Option<&Once>,
    grants: &Grants,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let answer = match check(shared, &r, grants) {
        Ok((new, session)) => store(shared, conn, &r, &new, session, once).await?,
        Err((reason, detail)) => Answer::Refused(reason, detail),
    };
    let channels = shared.keys.channels();
    match answer {
        Answer::Announced => {
            metrics::counter!(m::REGISTRATIONS, "result" => "accepted", "reason" => "none")
                .increment(1);
            debug!("registered");
        }
        Answer::Accepted {
            record,
            again,
            halt,
        } => {
            shared.agent_free(record.pool);
            let (reply, event) = accepted(shared, &r, *record, again);
            let mut p = redis::pipe();
            let ch = channels.agent(&r.agent_id);
            p.publish(&ch, shared.sign(&ch, json(&reply))).ignore();
            p.publish(channels.registry(), json(&event)).ignore();
            p.query_async::<()>(conn).await?;
            if let Some(halt) = halt {
                info!("registered with its budget below the minimum: halted");
                shared.tell(conn, vec![halt]).await?;
            }
            metrics::counter!(m::REGISTRATIONS, "result" => "accepted", "reason" => "none")
                .increment(1);
            debug!(again, "registered");
        }
        Answer::Refused(reason, detail) => {
            let reply = refused(&r, reason, detail.clone());
            let ch = channels.agent(&r.agent_id);
            redis::cmd("PUBLISH")
                .arg(&ch)
                .arg(shared.sign(&ch, json(&reply)))
                .query_async::<()>(conn)
                .await?;
            metrics::counter!(m::REGISTRATIONS, "result" => "rejected", "reason" => reason.as_str())
                .increment(1);
            if matches!(
                reason,
                RefusalReason::InvalidFields
                    | RefusalReason::NotGranted
                    | RefusalReason::UnknownPool
                    | RefusalReason::ResourcesExceedLimits
            ) {
                // A field out of its range, an unknown pool, or a claim
                // beyond the key's grants or the pool's limits, is a refused
                // message like any other (a full pool is not the sender's
                // fault, and is counted only as a refused registration).
                metrics::counter!(m::MESSAGES_REJECTED, "channel" => "registry", "reason" => reason.as_str())
                    .increment(1);
            }
            info!(reason = reason.as_str(), detail, "registration refused");
        }
    }
    metrics::histogram!(m::REGISTRATION_SECONDS).record(started.elapsed());
    Ok(())
}

/// Why a registration is refused, for the reply.
type Refused = (RefusalReason, String);

/// The registration's fields against the protocol, its key's grants and
/// the pool's limits; the new agent, and the session it offered (if any).
fn check<'a>(
    shared: &Shared,
    r: &'a Register,
    grants: &Grants,
) -> Result<(NewAgent<'a>, Option<Arc<Session>>), Refused> {
    let pool = check_registration(r).map_err(|x| (x.reason, x.detail))?;
    let Ok(session) = shared.sessions.offer(&r.agent_id, r.session_key.as_deref()) else {
        let detail = "sessionKey: not a usable X25519 public key (a low-order point)";
        return Err((RefusalReason::InvalidFields, detail.into()));
    };
    let config = shared.config();
    let pc = config.pool(pool);
    grants
        .allow(r, pc.priority_level)
        .map_err(|detail| (RefusalReason::NotGranted, detail))?;
    let (lim, res) = (pc.resource_limits, r.resources);
    if res.memory > lim.memory_mb || res.cpu > lim.cpu || res.network > lim.network_mbps {
        let detail = format!(
            "pool {pool} allows at most memory {} MB, cpu {}, network {} Mbps",
            lim.memory_mb, lim.cpu, lim.network_mbps
        );
        return Err((RefusalReason::ResourcesExceedLimits, detail));
    }
    let new = NewAgent {
        id: &r.agent_id,
        pool,
        agent_type: r.agent_type.as_deref().unwrap_or(pool.as_str()),
        priority: r.priority.unwrap_or(pc.priority_level),
        capabilities: &r.capabilities,
        resources: res,
        pool_max: pc.max_agents,
        fleet_max: config.fleet.max_agents,
        capacity: r.capacity.unwrap_or(1),
        instance: r.instance.as_deref().unwrap_or(""),
        session_key: shared.sessions.stored(r.session_key.as_deref()),
    };
    Ok((new, session))
}

/// Runs the register script, with the reply for a new agent pre-rendered.
async fn store(
    shared: &Shared,
    conn: &mut Conn,
    r: &Register,
    new: &NewAgent<'_>,
    session: Option<Arc<Session>>,
    once: Option<&Once>,
) -> Result<Answer, StoreError> {
    let now = now_ms();
    let (reply, event) = accepted(shared, r, fresh_record(new, now), false);
    let channels = shared.keys.channels();
    let (agent_channel, registry_channel) = (channels.agent(&r.agent_id), channels.registry());
    let (reply, event) = (shared.sign(&agent_channel, json(&reply)), json(&event));
    let announce = Announce {
        agent_channel: &agent_channel,
        reply: &reply,
        registry_channel: &registry_channel,
        event: &event,
    };
    let outcome = shared
        .registry
        .register(conn, new, now, Some(&announce), once)
        .await;
    let config = shared.config();
    let pool = new.pool;
    if matches!(
        outcome,
        Ok(RegisterOutcome::Registered { .. } | RegisterOutcome::ReRegistered { .. })
    ) {
        shared
            .sessions
            .registered(&r.agent_id, r.session_key.as_deref(), session);
    }
    Ok(match outcome {
        Ok(RegisterOutcome::Registered {
            announced,
            record,
            halt,
        }) => {
            crate::scaler::note_registered(shared, pool);
            if announced {
                shared.agent_free(pool);
                Answer::Announced
            } else {
                Answer::Accepted {
                    record: Box::new(record),
                    again: false,
                    halt,
                }
            }
        }
        Ok(RegisterOutcome::ReRegistered {
            record,
            orphans,
            halt,
        }) => {
            shared.on_orphans(orphans, "agent_restarted");
            Answer::Accepted {
                record: Box::new(record),
                again: true,
                halt,
            }
        }
        Ok(RegisterOutcome::PoolFull) => Answer::Refused(
            RefusalReason::PoolFull,
            format!("pool {pool} is at max_agents ({})", new.pool_max),
        ),
        Ok(RegisterOutcome::FleetFull) => Answer::Refused(
            RefusalReason::FleetFull,
            format!("fleet is at max_agents ({})", config.fleet.max_agents),
        ),
        Ok(RegisterOutcome::PoolMismatch(other)) => Answer::Refused(
            RefusalReason::PoolMismatch,
            format!("agent is registered in pool {other}; deregister first"),
        ),
        Err(e @ (StoreError::Fenced | StoreError::Replay)) => return Err(e),
        Err(e) => {
            crate::metrics::redis_error("register", &e);
            warn!(reason = e.reason(), error = %e, "registration failed in Redis");
            Answer::Refused(
                RefusalReason::Unavailable,
                "registry unavailable, retry".into(),
            )
        }
    })
}

/// The reply and the event for an accepted registration.
fn accepted(shared: &Shared, r: &Register, rec: AgentRecord, again: bool) -> (ToAgent, Event) {
    let event = Event::AgentRegistered {
        v: VERSION,
        agent_id: r.agent_id.clone(),
        pool: rec.pool,
        re_registered: again,
        ts: now_ms(),
    };
    let reply = ToAgent::RegisterReply {
        v: VERSION,
        reply_to: r.id.clone(),
        accepted: true,
        re_registered: Some(again),
        agent: Some(Box::new(rec)),
        heartbeat_interval_ms: Some(shared.config().fleet.heartbeat_interval_ms),
        reason: None,
        detail: None,
        session_key: shared.sessions.answer(r.session_key.as_deref()),
    };
    (reply, event)
}

fn refused(r: &Register, reason: RefusalReason, detail: String) -> ToAgent {
    ToAgent::RegisterReply {
        v: VERSION,
        reply_to: r.id.clone(),
        accepted: false,
        re_registered: None,
        agent: None,
        heartbeat_interval_ms: None,
        reason: Some(reason),
        detail: Some(detail),
        session_key: None,
    }
}
