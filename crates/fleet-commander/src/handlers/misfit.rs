//! A `register` or `task_submit` whose fields do not parse (a mistyped
//! field) but whose sender can be answered: refused with `invalid_fields`
//! and the detail, counted and logged like any refused message.

use crate::context::Shared;
use crate::metrics as m;
use fleet_protocol::task::SubmitRefusal;
use fleet_protocol::{Misfit, RefusalReason, ToAgent, VERSION};
use fleet_store::connection::Conn;
use fleet_store::StoreError;
use tracing::warn;

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut Conn,
    misfit: Misfit,
) -> Result<(), StoreError> {
    match misfit {
        Misfit::Register {
            id,
            agent_id,
            detail,
        } => {
            count("registry", &detail);
            metrics::counter!(m::REGISTRATIONS, "result" => "rejected", "reason" => "invalid_fields")
                .increment(1);
            let reply = ToAgent::RegisterReply {
                v: VERSION,
                reply_to: id,
                accepted: false,
                re_registered: None,
                agent: None,
                heartbeat_interval_ms: None,
                reason: Some(RefusalReason::InvalidFields),
                detail: Some(detail),
                session_key: None,
            };
            shared
                .send(conn, shared.keys.channels().agent(&agent_id), &reply)
                .await
        }
        Misfit::TaskSubmit {
            id,
            reply_channel,
            detail,
        } => {
            count("tasks", &detail);
            metrics::counter!(m::TASKS_REJECTED, "reason" => "invalid_fields").increment(1);
            let refusal = Err((SubmitRefusal::InvalidFields, detail));
            super::task_submit::reply(shared, conn, id, reply_channel, refusal).await
        }
    }
}

fn count(channel: &'static str, detail: &str) {
    metrics::counter!(m::MESSAGES_REJECTED, "channel" => channel, "reason" => "invalid_fields")
        .increment(1);
    warn!(
        channel,
        reason = "invalid_fields",
        detail,
        "message refused; the sender is told why"
    );
}
