//! The message handlers: one file per message kind (as mini-redis has one
//! per command). Each handler validates nothing that decoding already
//! checked, changes state with one script, and publishes replies and events
//! only after the script has returned.

mod deregister;
pub(crate) mod heartbeat;
mod misfit;
mod register;
mod status_request;
mod task_report;
pub(crate) mod task_submit;
mod vote;

use crate::auth::Admitted;
use crate::context::Shared;
use crate::subscriber::{refused, Envelope};
use fleet_protocol::auth::AuthError;
use fleet_protocol::{Inbound, PoolType};
use fleet_store::connection::Conn;
use fleet_store::StoreError;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{info_span, warn, Instrument};

/// One handler: takes its agents' messages in order until the subscriber
/// stops (on shutdown it works through what is queued, then returns).
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Envelope>) {
    let mut conn = shared.redis.clone();
    while let Some(env) = rx.recv().await {
        if matches!(env.msg, Inbound::Heartbeat(_)) {
            // The subscriber sends heartbeats to their own handler; one
            // that came here is recorded as a batch of one.
            if !heartbeat::record(&shared, &mut conn, vec![env]).await {
                return;
            }
            continue;
        }
        // Handled (for the failure detector's watermark) when this drops.
        let _heard = shared.heard.ticket(env.seq);
        let msg = env.msg;
        if shared.ended.get().is_some() {
            return; // the term is over: this commander may no longer write
        }
        let span = info_span!(
            "message",
            kind = msg.kind(),
            agent_id = msg.agent_id().unwrap_or("-"),
            task_id = msg.task_id().unwrap_or("-")
        );
        let kind = msg.kind();
        let work = async {
            let admitted = shared
                .gate
                .admit(
                    &mut conn,
                    &shared.sessions,
                    &shared.registry,
                    env.seal.as_ref(),
                    &msg,
                )
                .instrument(span.clone())
                .await;
            match admitted {
                Ok(admitted) => {
                    // A vote is kept as it was signed, for the decision's seal.
                    let signed = match &msg {
                        Inbound::Vote(_) => env.seal.as_ref().map(|s| s.message()),
                        _ => None,
                    };
                    handle(&shared, &mut conn, msg, admitted, signed)
                        .instrument(span)
                        .await
                }
                Err(crate::auth::Refusal::Refused(e)) => {
                    {
                        let _g = span.enter();
                        refused(env.channel, e);
                    }
                    match (e, msg.agent_id()) {
                        (AuthError::NoSession, Some(id)) => {
                            no_session(&shared, &mut conn, id).instrument(span).await
                        }
                        _ => Ok(()),
                    }
                }
                Err(crate::auth::Refusal::Store(e)) => Err(e),
            }
        };
        let (outcome, trips) = fleet_store::connection::count_round_trips(work).await;
        metrics::histogram!(crate::metrics::ROUND_TRIPS, "kind" => kind).record(f64::from(trips));
        match outcome {
            Ok(()) => {}
            // The script found the nonce recorded: a replay, nothing changed.
            Err(StoreError::Replay) => {
                refused(env.channel, fleet_protocol::auth::AuthError::Replay)
            }
            Err(StoreError::Fenced) => {
                shared.on_fenced();
                return;
            }
            Err(e) => {
                crate::metrics::redis_error("handle", &e);
                warn!(reason = e.reason(), error = %e, "handling failed; message dropped (agents retry)");
            }
        }
    }
}

async fn handle(
    shared: &Shared,
    conn: &mut Conn,
    msg: Inbound,
    admitted: Admitted,
    signed: Option<String>,
) -> Result<(), StoreError> {
    let (once, grants) = (admitted.once.as_ref(), admitted.grants);
    match msg {
        Inbound::Vote(v) => {
            // Security open: the vote's JSON stands for itself.
            let signed = signed.unwrap_or_else(|| serde_json::to_string(&v).unwrap_or_default());
            vote::handle(shared, conn, v, signed, &grants).await
        }
        Inbound::Register(r) => register::handle(shared, conn, r, once, &grants).await,
        Inbound::Deregister(d) => deregister::handle(shared, conn, d, once).await,
        // Never here: run() records heartbeats through heartbeat::record.
        Inbound::Heartbeat(_) => Ok(()),
        Inbound::TaskSubmit(req) => task_submit::handle(shared, conn, req).await,
        Inbound::Report(kind, r) => task_report::handle(shared, conn, kind, r, once).await,
        Inbound::StatusRequest(req) => status_request::handle(shared, conn, req).await,
        Inbound::Misfit(m) => misfit::handle(shared, conn, m).await,
    }
}

/// An agent MACed a message with a session this commander has no record of
/// (its record expired, or Redis lost it): it is told, signed and at most
/// once per [`crate::sessions::TELL_EVERY`], to register again.
async fn no_session(shared: &Shared, conn: &mut Conn, agent_id: &str) -> Result<(), StoreError> {
    if !shared.sessions.tell_now(agent_id) {
        return Ok(());
    }
    let reply = fleet_protocol::ToAgent::Reregister {
        v: fleet_protocol::VERSION,
        reason: "no_session".into(),
    };
    shared
        .send(conn, shared.keys.channels().agent(agent_id), &reply)
        .await
}

/// A task of `pool` went back to its queue (a retry).
fn wake(shared: &Shared, pool: Option<PoolType>) {
    match pool {
        Some(p) => shared.wake_pool(p),
        None => shared.wake_all(),
    }
}

/// The agent that reported freed a slot in `pool`.
fn freed(shared: &Shared, pool: Option<PoolType>) {
    match pool {
        Some(p) => shared.agent_free(p),
        None => shared.wake_all(),
    }
}
